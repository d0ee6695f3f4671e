//! Completion channels, completion queues and the work completions polled
//! from them.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdma_sys::*;

use super::{lock, MemoryRegion, VerbsContext, MARKER_WR_ID};
use crate::cm::{poll_readable, set_fd_nonblocking};
use crate::error::{check_ibv, Error, Result};
use crate::tracker::{Pending, Queue, Tracker};
use crate::{dec, inc, LIVE_CQS};

static NEXT_CQ: AtomicU64 = AtomicU64::new(1);

/// A completion channel (`ibv_create_comp_channel`): a pollable fd that
/// signals CQs armed with [`CompletionQueue::req_notify`].
pub struct CompletionChannel {
    raw: NonNull<ibv_comp_channel>,
}

// SAFETY: a comp channel is an fd; ibv_get_cq_event is thread-safe.
unsafe impl Send for CompletionChannel {}
// SAFETY: as above.
unsafe impl Sync for CompletionChannel {}

impl CompletionChannel {
    /// `ibv_create_comp_channel`.
    pub fn new(ctx: &VerbsContext) -> Result<Arc<Self>> {
        // SAFETY: open context.
        let raw = unsafe { ibv_create_comp_channel(ctx.raw.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_comp_channel"))?;
        Ok(Arc::new(CompletionChannel { raw }))
    }

    /// Non-blocking mode for [`get_event`](Self::get_event).
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        set_fd_nonblocking(self.as_raw_fd(), nonblocking)
    }

    /// `ibv_get_cq_event` + `ibv_ack_cq_events(1)`: returns the
    /// [`CompletionQueue::handle`] of the CQ that fired; `Ok(None)` if
    /// nothing is pending in non-blocking mode. Re-arm the CQ and poll it.
    pub fn get_event(&self) -> Result<Option<u64>> {
        let mut cq: *mut ibv_cq = std::ptr::null_mut();
        let mut ctx: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: channel alive; valid out-pointers.
        if unsafe { ibv_get_cq_event(self.raw.as_ptr(), &mut cq, &mut ctx) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::Os {
                op: "ibv_get_cq_event",
                source: e,
            });
        }
        // SAFETY: `cq` cannot be destroyed before this ack (ibv_destroy_cq
        // waits for all its events to be acked).
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(Some(ctx as usize as u64))
    }

    /// Wait up to `timeout` for an event.
    pub fn get_event_timeout(&self, timeout: Duration) -> Result<Option<u64>> {
        if !poll_readable(self.as_raw_fd(), timeout)? {
            return Ok(None);
        }
        self.get_event()
    }
}

impl AsRawFd for CompletionChannel {
    fn as_raw_fd(&self) -> RawFd {
        // SAFETY: channel alive; plain field.
        unsafe { (*self.raw.as_ptr()).fd }
    }
}

impl AsFd for CompletionChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd lives as long as the channel.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

impl Drop for CompletionChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ on the channel holds an Arc to it, so none is left.
        let r = unsafe { ibv_destroy_comp_channel(self.raw.as_ptr()) };
        if let Err(e) = check_ibv("ibv_destroy_comp_channel", r) {
            log::error!("{e}");
        }
    }
}

/// Status of a work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    /// Success.
    Success,
    /// Local length error.
    LocLenErr,
    /// Local QP operation error.
    LocQpOpErr,
    /// Local protection error.
    LocProtErr,
    /// Flushed (QP in error state).
    WrFlushErr,
    /// Remote invalid request.
    RemInvReqErr,
    /// Remote access error.
    RemAccessErr,
    /// Remote operation error.
    RemOpErr,
    /// Transport retries exceeded.
    RetryExcErr,
    /// RNR retries exceeded.
    RnrRetryExcErr,
    /// Any other status.
    Other(u32),
}

impl WcStatus {
    pub(crate) fn from_raw(s: u32) -> Self {
        use ibv_wc_status::*;
        match s {
            IBV_WC_SUCCESS => Self::Success,
            IBV_WC_LOC_LEN_ERR => Self::LocLenErr,
            IBV_WC_LOC_QP_OP_ERR => Self::LocQpOpErr,
            IBV_WC_LOC_PROT_ERR => Self::LocProtErr,
            IBV_WC_WR_FLUSH_ERR => Self::WrFlushErr,
            IBV_WC_REM_INV_REQ_ERR => Self::RemInvReqErr,
            IBV_WC_REM_ACCESS_ERR => Self::RemAccessErr,
            IBV_WC_REM_OP_ERR => Self::RemOpErr,
            IBV_WC_RETRY_EXC_ERR => Self::RetryExcErr,
            IBV_WC_RNR_RETRY_EXC_ERR => Self::RnrRetryExcErr,
            o => Self::Other(o),
        }
    }
}

/// Opcode of a work completion (valid for successful completions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    /// Send.
    Send,
    /// RDMA Write.
    RdmaWrite,
    /// RDMA Read.
    RdmaRead,
    /// Local invalidate.
    LocalInv,
    /// Receive.
    Recv,
    /// Receive of RDMA Write with immediate.
    RecvRdmaWithImm,
    /// Any other opcode.
    Other(u32),
}

impl WcOpcode {
    pub(crate) fn from_raw(o: u32) -> Self {
        use ibv_wc_opcode::*;
        match o {
            IBV_WC_SEND => Self::Send,
            IBV_WC_RDMA_WRITE => Self::RdmaWrite,
            IBV_WC_RDMA_READ => Self::RdmaRead,
            IBV_WC_LOCAL_INV => Self::LocalInv,
            IBV_WC_RECV => Self::Recv,
            IBV_WC_RECV_RDMA_WITH_IMM => Self::RecvRdmaWithImm,
            o => Self::Other(o),
        }
    }
}

/// A polled work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The caller's wr_id.
    pub wr_id: u64,
    /// Status.
    pub status: WcStatus,
    /// Opcode (only meaningful when `status == Success`).
    pub opcode: WcOpcode,
    /// Bytes received (receives) / transferred.
    pub byte_len: u32,
    /// Local QP number.
    pub qp_num: u32,
    /// Vendor error code (for failed completions).
    pub vendor_err: u32,
    /// Raw `ibv_wc_flags`.
    pub wc_flags: u32,
    /// rkey invalidated by a received Send-with-Invalidate.
    pub invalidated_rkey: Option<u32>,
    /// Immediate data (network byte order) if present.
    pub imm_data: Option<u32>,
}

pub(super) const IBV_WC_WITH_IMM_BIT: u32 = 2;
pub(super) const IBV_WC_WITH_INV_BIT: u32 = 8;

impl WorkCompletion {
    fn from_raw(wc: &ibv_wc) -> Self {
        // SAFETY: both union members are u32; reading either is valid.
        let u = unsafe { wc.imm_data_invalidated_rkey_union.imm_data };
        WorkCompletion {
            wr_id: wc.wr_id,
            status: WcStatus::from_raw(wc.status),
            opcode: WcOpcode::from_raw(wc.opcode),
            byte_len: wc.byte_len,
            qp_num: wc.qp_num,
            vendor_err: wc.vendor_err,
            wc_flags: wc.wc_flags,
            invalidated_rkey: (wc.wc_flags & IBV_WC_WITH_INV_BIT != 0).then_some(u),
            imm_data: (wc.wc_flags & IBV_WC_WITH_IMM_BIT != 0).then_some(u),
        }
    }
}

pub(crate) type SharedTracker = Arc<Mutex<Tracker<Arc<MemoryRegion>>>>;

/// A completion queue (`ibv_create_cq`), shared by `Arc` between the QPs
/// using it. Polling it also retires the outstanding-WR entries (and so
/// releases the memory-region references) of the QPs it serves.
pub struct CompletionQueue {
    pub(super) raw: NonNull<ibv_cq>,
    handle: u64,
    /// qp_num -> (tracker, which queue of that QP this CQ serves)
    qps: Mutex<HashMap<u32, (SharedTracker, Queue)>>,
    /// Completions polled by a QP drain that belong to other QPs.
    stash: Mutex<Vec<WorkCompletion>>,
    /// Entries retired by a poll, dropped outside the locks (kept: no allocation per poll).
    retired: Mutex<Vec<Pending<Arc<MemoryRegion>>>>,
    _channel: Option<Arc<CompletionChannel>>,
}

// SAFETY: ibv_poll_cq / ibv_req_notify_cq are thread-safe in libibverbs
// providers; our own state is behind mutexes.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// `ibv_create_cq` with at least `size` entries, optionally attached to
    /// a completion channel.
    pub fn new(
        ctx: &VerbsContext,
        size: i32,
        channel: Option<&Arc<CompletionChannel>>,
    ) -> Result<Arc<Self>> {
        let handle = NEXT_CQ.fetch_add(1, Ordering::Relaxed);
        let ch = channel.map_or(std::ptr::null_mut(), |c| c.raw.as_ptr());
        // SAFETY: open context; the channel (if any) outlives the CQ (Arc held).
        let raw = unsafe {
            ibv_create_cq(
                ctx.raw.as_ptr(),
                size,
                handle as usize as *mut libc::c_void,
                ch,
                0,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_create_cq"))?;
        inc(&LIVE_CQS);
        Ok(Arc::new(CompletionQueue {
            raw,
            handle,
            qps: Mutex::new(HashMap::new()),
            stash: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            _channel: channel.cloned(),
        }))
    }

    /// Handle returned by [`CompletionChannel::get_event`] for this CQ.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// Arm the CQ (`ibv_req_notify_cq`): the next completion signals the channel.
    pub fn req_notify(&self, solicited_only: bool) -> Result<()> {
        // SAFETY: valid CQ.
        check_ibv("ibv_req_notify_cq", unsafe {
            ibv_req_notify_cq(self.raw.as_ptr(), solicited_only as i32)
        })
    }

    /// Poll up to `max` completions, appending them to `out`; returns how
    /// many were appended.
    pub fn poll(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        let mut n = 0;
        {
            let mut stash = lock(&self.stash);
            let take = stash.len().min(max);
            out.extend(stash.drain(..take));
            n += take;
        }
        while n < max {
            let got = self.poll_raw(out, (max - n).min(16), None)?;
            n += got;
            if got == 0 {
                break;
            }
        }
        Ok(n)
    }

    /// Poll the hardware CQ; completions for `only_qp` (if set) go to `out`,
    /// the rest to the stash. Returns the number of completions seen.
    pub(super) fn poll_raw(
        &self,
        out: &mut Vec<WorkCompletion>,
        max: usize,
        only_qp: Option<u32>,
    ) -> Result<usize> {
        // SAFETY: ibv_wc is plain data; zero is valid.
        let mut wcs: [ibv_wc; 16] = unsafe { std::mem::zeroed() };
        let max = max.min(16) as i32;
        // SAFETY: valid CQ; `wcs` has room for `max` entries.
        let r = unsafe { ibv_poll_cq(self.raw.as_ptr(), max, wcs.as_mut_ptr()) };
        if r < 0 {
            return Err(Error::from_errno("ibv_poll_cq", -r));
        }
        let mut retired = std::mem::take(&mut *lock(&self.retired));
        for wc in &wcs[..r as usize] {
            let c = WorkCompletion::from_raw(wc);
            let entry = lock(&self.qps).get(&c.qp_num).map(|(t, q)| (t.clone(), *q));
            let mut ours = true;
            if let Some((t, q)) = entry {
                let marker = c.wr_id == MARKER_WR_ID && q == Queue::Send;
                let caller = lock(&t).complete(q, c.wr_id, marker, &mut retired);
                ours = caller;
                if !caller && !marker {
                    log::warn!(
                        "completion for unknown wr_id {} on QP {}",
                        c.wr_id,
                        c.qp_num
                    );
                    ours = true;
                }
            }
            if ours {
                match only_qp {
                    Some(q) if q != c.qp_num => lock(&self.stash).push(c),
                    _ => out.push(c),
                }
            }
        }
        retired.clear(); // releases MR references outside the locks
        *lock(&self.retired) = retired;
        Ok(r as usize)
    }

    pub(super) fn register(&self, qp_num: u32, tracker: SharedTracker, queue: Queue) {
        lock(&self.qps).insert(qp_num, (tracker, queue));
    }

    pub(super) fn unregister(&self, qp_num: u32) {
        lock(&self.qps).remove(&qp_num);
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: every QP using the CQ holds an Arc to it, so none is left;
        // channel events were acked in get_event.
        let r = unsafe { ibv_destroy_cq(self.raw.as_ptr()) };
        if let Err(e) = check_ibv("ibv_destroy_cq", r) {
            log::error!("{e}");
        }
        dec(&LIVE_CQS);
    }
}
