//! Verbs objects: device context, PD, MR, completion channel, CQ, QP.
//!
//! This module holds the device context and the protection domain; memory
//! registration lives in `mr`, completion channels and queues in `cq`, queue
//! pairs and their work requests in `qp`.

mod cq;
mod mr;
mod qp;

use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use rdma_sys::*;

use crate::cm::set_fd_nonblocking;
use crate::error::{check_ibv, Error, Result};
use crate::{dec, inc, LIVE_PDS};

pub(crate) use cq::SharedTracker;
pub use cq::{CompletionChannel, CompletionQueue, WcOpcode, WcStatus, WorkCompletion};
pub use mr::{Access, MemoryRegion};
pub use qp::{CreateQpError, QpCaps, QueuePair, SendOp, SendWr};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reserved wr_id of the internal drain marker.
pub(crate) const MARKER_WR_ID: u64 = u64::MAX;

pub(crate) fn query_device_attr(ctx: *mut ibv_context) -> Result<ibv_device_attr> {
    // SAFETY: plain data; zero is valid.
    let mut a: ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `ctx` is an open context, `a` a valid out-pointer.
    check_ibv("ibv_query_device", unsafe { ibv_query_device(ctx, &mut a) })?;
    Ok(a)
}

/// A device context as returned by [`CmId::verbs`](crate::CmId::verbs). librdmacm owns and keeps
/// it open for the life of the process (it is only closed on device removal,
/// after every id on it is gone); this is a non-owning handle.
#[derive(Clone, Copy)]
pub struct VerbsContext {
    pub(super) raw: NonNull<ibv_context>,
}

// SAFETY: ibv_context is thread-safe per libibverbs' threading rules.
unsafe impl Send for VerbsContext {}
// SAFETY: as above.
unsafe impl Sync for VerbsContext {}

/// Device limits relevant to sizing QPs and RDMA depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttrs {
    /// Largest registrable region.
    pub max_mr_size: u64,
    /// Max WRs per work queue.
    pub max_qp_wr: i32,
    /// Max SGEs per WR.
    pub max_sge: i32,
    /// Max CQ entries.
    pub max_cqe: i32,
    /// Max incoming RDMA Reads per QP (responder resources).
    pub max_qp_rd_atom: i32,
    /// Max outstanding RDMA Reads per QP (initiator depth).
    pub max_qp_init_rd_atom: i32,
}

/// Kind of an asynchronous device event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEventKind {
    /// Communication established (data before RTU): call
    /// [`CmId::notify_comm_est`](crate::CmId::notify_comm_est).
    CommEst,
    /// QP fatal error.
    QpFatal,
    /// Invalid request on the QP (the peer sent a request we could not serve).
    QpRequestError,
    /// Access violation on the QP (e.g. an RDMA operation with a bad rkey).
    QpAccessError,
    /// Last WQE reached (SRQ).
    QpLastWqeReached,
    /// CQ error.
    CqErr,
    /// Port went active.
    PortActive,
    /// Port error.
    PortErr,
    /// Device fatal.
    DeviceFatal,
    /// Any other event.
    Other(u32),
}

/// An asynchronous device event (copied and acked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// What happened.
    pub kind: AsyncEventKind,
    /// QP number for QP events.
    pub qp_num: Option<u32>,
}

impl VerbsContext {
    pub(crate) fn from_raw(raw: NonNull<ibv_context>) -> Self {
        VerbsContext { raw }
    }

    /// Device limits (`ibv_query_device`).
    pub fn attrs(&self) -> Result<DeviceAttrs> {
        let a = query_device_attr(self.raw.as_ptr())?;
        Ok(DeviceAttrs {
            max_mr_size: a.max_mr_size,
            max_qp_wr: a.max_qp_wr,
            max_sge: a.max_sge,
            max_cqe: a.max_cqe,
            max_qp_rd_atom: a.max_qp_rd_atom,
            max_qp_init_rd_atom: a.max_qp_init_rd_atom,
        })
    }

    /// Device name.
    pub fn device_name(&self) -> String {
        // SAFETY: the context is open; `device` and its name are valid.
        unsafe { std::ffi::CStr::from_ptr(ibv_get_device_name((*self.raw.as_ptr()).device)) }
            .to_string_lossy()
            .into_owned()
    }

    /// The async event fd (poll it, then call [`get_async_event`](Self::get_async_event)).
    pub fn async_fd(&self) -> RawFd {
        // SAFETY: the context is open; plain field.
        unsafe { (*self.raw.as_ptr()).async_fd }
    }

    /// The async event fd, borrowed for polling. It stays open as long as librdmacm keeps the
    /// context, i.e. until the device is removed and [`crate::refresh_cm_devices`] runs: drop
    /// the handle before that.
    pub fn async_fd_borrowed(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the fd belongs to the open context, which outlives this borrow of the handle
        // as documented above.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.async_fd()) }
    }

    /// Set the async fd non-blocking.
    pub fn set_async_nonblocking(&self, nonblocking: bool) -> Result<()> {
        set_fd_nonblocking(self.async_fd(), nonblocking)
    }

    /// `ibv_get_async_event` + `ibv_ack_async_event`; `Ok(None)` if none
    /// pending in non-blocking mode.
    pub fn get_async_event(&self) -> Result<Option<AsyncEvent>> {
        // SAFETY: plain data; zero is valid.
        let mut ev: ibv_async_event = unsafe { std::mem::zeroed() };
        // SAFETY: open context; valid out-pointer.
        if unsafe { ibv_get_async_event(self.raw.as_ptr(), &mut ev) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::Os {
                op: "ibv_get_async_event",
                source: e,
            });
        }
        use ibv_event_type::*;
        let (kind, is_qp) = match ev.event_type {
            IBV_EVENT_COMM_EST => (AsyncEventKind::CommEst, true),
            IBV_EVENT_QP_FATAL => (AsyncEventKind::QpFatal, true),
            IBV_EVENT_QP_REQ_ERR => (AsyncEventKind::QpRequestError, true),
            IBV_EVENT_QP_ACCESS_ERR => (AsyncEventKind::QpAccessError, true),
            IBV_EVENT_QP_LAST_WQE_REACHED => (AsyncEventKind::QpLastWqeReached, true),
            IBV_EVENT_CQ_ERR => (AsyncEventKind::CqErr, false),
            IBV_EVENT_PORT_ACTIVE => (AsyncEventKind::PortActive, false),
            IBV_EVENT_PORT_ERR => (AsyncEventKind::PortErr, false),
            IBV_EVENT_DEVICE_FATAL => (AsyncEventKind::DeviceFatal, false),
            other => (AsyncEventKind::Other(other as u32), false),
        };
        // SAFETY: for QP events the element is a QP that cannot be destroyed
        // before this event is acked (ibv_destroy_qp waits for it).
        let qp_num = if is_qp {
            unsafe { Some((*ev.element.qp).qp_num) }
        } else {
            None
        };
        // SAFETY: acked exactly once; nothing from it is used afterwards.
        unsafe { ibv_ack_async_event(&mut ev) };
        Ok(Some(AsyncEvent { kind, qp_num }))
    }
}

/// A protection domain (`ibv_alloc_pd`), shared by `Arc`. Memory regions and
/// queue pairs keep it alive.
pub struct ProtectionDomain {
    pub(super) raw: NonNull<ibv_pd>,
}

// SAFETY: PDs are immutable handles usable from any thread.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// `ibv_alloc_pd` on a device context.
    pub fn new(ctx: &VerbsContext) -> Result<Arc<Self>> {
        // SAFETY: open context.
        let raw = unsafe { ibv_alloc_pd(ctx.raw.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_alloc_pd"))?;
        inc(&LIVE_PDS);
        Ok(Arc::new(ProtectionDomain { raw }))
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: every MR/QP on this PD holds an Arc to it, so none is left.
        let r = unsafe { ibv_dealloc_pd(self.raw.as_ptr()) };
        if let Err(e) = check_ibv("ibv_dealloc_pd", r) {
            log::error!("{e}");
        }
        dec(&LIVE_PDS);
    }
}

#[cfg(test)]
mod tests {
    use super::cq::{IBV_WC_WITH_IMM_BIT, IBV_WC_WITH_INV_BIT};
    use super::*;

    #[test]
    fn status_and_opcode_mapping() {
        assert_eq!(WcStatus::from_raw(0), WcStatus::Success);
        assert_eq!(WcStatus::from_raw(5), WcStatus::WrFlushErr);
        assert_eq!(WcStatus::from_raw(10), WcStatus::RemAccessErr);
        assert_eq!(WcStatus::from_raw(12), WcStatus::RetryExcErr);
        assert_eq!(WcStatus::from_raw(13), WcStatus::RnrRetryExcErr);
        assert_eq!(WcStatus::from_raw(1), WcStatus::LocLenErr);
        assert_eq!(WcStatus::from_raw(77), WcStatus::Other(77));
        assert_eq!(WcOpcode::from_raw(128), WcOpcode::Recv);
        assert_eq!(WcOpcode::from_raw(2), WcOpcode::RdmaRead);
        assert_eq!(WcOpcode::from_raw(129), WcOpcode::RecvRdmaWithImm);
    }

    #[test]
    fn access_flags_match_verbs() {
        assert_eq!(
            Access::LOCAL_WRITE.bits(),
            ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0
        );
        assert_eq!(
            Access::REMOTE_WRITE.bits(),
            ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0
        );
        assert_eq!(
            Access::REMOTE_READ.bits(),
            ibv_access_flags::IBV_ACCESS_REMOTE_READ.0
        );
        let a = Access::LOCAL_WRITE | Access::REMOTE_READ;
        assert!(a.contains(Access::LOCAL_WRITE) && a.is_remote());
        assert!(!Access::LOCAL_WRITE.is_remote());
        assert_eq!(ibv_send_flags::IBV_SEND_SIGNALED.0, 2);
        assert_eq!(ibv_wc_flags::IBV_WC_WITH_INV.0, IBV_WC_WITH_INV_BIT);
        assert_eq!(ibv_wc_flags::IBV_WC_WITH_IMM.0, IBV_WC_WITH_IMM_BIT);
    }
}
