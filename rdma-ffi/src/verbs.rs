//! Verbs objects: device context, PD, MR, completion channel, CQ, QP.

use std::alloc::Layout;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdma_sys::*;

use crate::cm::{poll_readable, set_fd_nonblocking, CmId};
use crate::error::{check_ibv, check_rdma, Error, Result};
use crate::tracker::{Pending, Queue, Tracker};
use crate::{dec, inc, LEAKED_MRS, LIVE_CQS, LIVE_MRS, LIVE_PDS, LIVE_QPS};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT_CQ: AtomicU64 = AtomicU64::new(1);

/// Reserved wr_id of the internal drain marker.
pub(crate) const MARKER_WR_ID: u64 = u64::MAX;

pub(crate) fn query_device_attr(ctx: *mut ibv_context) -> Result<ibv_device_attr> {
    // SAFETY: plain data; zero is valid.
    let mut a: ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `ctx` is an open context, `a` a valid out-pointer.
    check_ibv("ibv_query_device", unsafe { ibv_query_device(ctx, &mut a) })?;
    Ok(a)
}

/// A device context as returned by [`CmId::verbs`]. librdmacm owns and keeps
/// it open for the life of the process (it is only closed on device removal,
/// after every id on it is gone); this is a non-owning handle.
#[derive(Clone, Copy)]
pub struct VerbsContext {
    raw: NonNull<ibv_context>,
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
    /// [`CmId::notify_comm_est`].
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
    raw: NonNull<ibv_pd>,
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

/// Access flags of a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access(u32);

impl Access {
    /// Local write (needed for receives and RDMA Read targets).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Remote peer may RDMA Write.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Remote peer may RDMA Read.
    pub const REMOTE_READ: Access = Access(4);
    /// No flags (local read only).
    pub const NONE: Access = Access(0);

    /// Raw `ibv_access_flags` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// True if all flags in `other` are set.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any remote access is granted.
    pub fn is_remote(self) -> bool {
        self.0 & (Self::REMOTE_READ.0 | Self::REMOTE_WRITE.0) != 0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A registered memory region that owns its page-aligned, zero-initialised
/// buffer. See the crate docs for the lifetime and access rules.
pub struct MemoryRegion {
    mr: NonNull<ibv_mr>,
    buf: NonNull<u8>,
    len: usize,
    /// The allocation behind `buf` when the region owns it; `None` for a registered pool arena
    /// (memory of `mem_ffi`, mapped for the life of the process).
    layout: Option<Layout>,
    access: Access,
    /// Serialises CPU copies in/out of the buffer between threads.
    cpu: Mutex<()>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the buffer is only touched through raw-pointer copies under `cpu`,
// or through `&mut self`; the ibv_mr handle is immutable.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &self.addr())
            .field("len", &self.len)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl MemoryRegion {
    /// Allocate `len` bytes (page-aligned, zeroed) and register them on `pd`
    /// with `access`.
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize, access: Access) -> Result<Arc<Self>> {
        if len == 0 {
            return Err(Error::Invalid("memory region length 0".into()));
        }
        let page = page_size();
        let size = len
            .checked_add(page - 1)
            .ok_or_else(|| Error::Invalid("length overflow".into()))?
            & !(page - 1);
        let layout =
            Layout::from_size_align(size, page).map_err(|e| Error::Invalid(e.to_string()))?;
        // SAFETY: layout has non-zero size.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        let buf = NonNull::new(buf).ok_or_else(|| Error::from_errno("alloc", libc::ENOMEM))?;
        // SAFETY: `buf` is a live allocation of `size` >= `len` bytes that
        // outlives the registration (freed only after ibv_dereg_mr succeeds).
        let mr = unsafe {
            ibv_reg_mr(
                pd.raw.as_ptr(),
                buf.as_ptr() as *mut libc::c_void,
                len,
                access.0 as i32,
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            let e = Error::last_os("ibv_reg_mr");
            // SAFETY: registration failed, nothing references the buffer.
            unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
            return Err(e);
        };
        inc(&LIVE_MRS);
        Ok(Arc::new(MemoryRegion {
            mr,
            buf,
            len,
            layout: Some(layout),
            access,
            cpu: Mutex::new(()),
            _pd: pd.clone(),
        }))
    }

    /// Registers an arena of a `mem_ffi` buffer pool on `pd` with `access`, so work requests
    /// can move data straight from and into the pool's buffers (addressed by their offset in the
    /// arena, [`mem_ffi::Buf::arena_offset`]). The region does not own the memory: arenas stay
    /// mapped for the life of the process, so deregistering is all its drop does. It has no CPU
    /// accessors ([`MemoryRegion::read`], [`MemoryRegion::write`] and [`MemoryRegion::fill`]
    /// fail): the bytes belong to the buffers, and whoever posts a work request over a range
    /// must own the `Buf` there and keep it until the completion.
    pub fn register_arena(
        pd: &Arc<ProtectionDomain>,
        arena: &mem_ffi::Arena,
        access: Access,
    ) -> Result<Arc<Self>> {
        let buf = NonNull::new(arena.addr() as *mut u8)
            .ok_or_else(|| Error::Invalid("arena at address 0".into()))?;
        if arena.is_empty() {
            return Err(Error::Invalid("memory region length 0".into()));
        }
        // SAFETY: a `mem_ffi::Arena` is made only by its pool and names `len` bytes of mapped
        // memory that is never unmapped, so it outlives the registration.
        let mr = unsafe {
            ibv_reg_mr(
                pd.raw.as_ptr(),
                buf.as_ptr() as *mut libc::c_void,
                arena.len(),
                access.0 as i32,
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            return Err(Error::last_os("ibv_reg_mr"));
        };
        inc(&LIVE_MRS);
        Ok(Arc::new(MemoryRegion {
            mr,
            buf,
            len: arena.len(),
            layout: None,
            access,
            cpu: Mutex::new(()),
            _pd: pd.clone(),
        }))
    }

    /// CPU accessors work on regions that own their buffer only.
    fn check_cpu_range(&self, offset: usize, len: usize) -> Result<()> {
        if self.layout.is_none() {
            return Err(Error::Invalid(
                "a registered pool arena is accessed through its buffers".into(),
            ));
        }
        self.check_range(offset, len)
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is registered; plain field.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    /// Remote key (give it to the peer together with [`addr`](Self::addr)).
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    /// Virtual address of the buffer (what the peer uses for RDMA).
    pub fn addr(&self) -> u64 {
        self.buf.as_ptr() as u64
    }

    /// Registered length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (zero-length regions are rejected); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Access flags it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::Invalid(format!(
                "range {offset}+{len} outside memory region of {} bytes",
                self.len
            ))),
        }
    }

    /// Copy `out.len()` bytes starting at `offset` out of the buffer. If a WR
    /// or a remote peer writes the same bytes concurrently the copy sees some
    /// mix of old and new bytes (no undefined behaviour: no reference to the
    /// shared memory is ever formed).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_cpu_range(offset, out.len())?;
        let _g = lock(&self.cpu);
        // SAFETY: range checked; source is our live allocation, destination
        // a distinct Rust slice; CPU writers are excluded by `cpu`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.buf.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Copy `data` into the buffer at `offset`. Writing bytes that a posted
    /// WR is sending/receiving gives unspecified (but not undefined) results.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_cpu_range(offset, data.len())?;
        let _g = lock(&self.cpu);
        // SAFETY: range checked; destination is our live allocation, source a
        // distinct Rust slice; other CPU accessors are excluded by `cpu`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Fill `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        self.check_cpu_range(offset, len)?;
        let _g = lock(&self.cpu);
        // SAFETY: range checked; our live allocation; CPU accessors excluded.
        unsafe { std::ptr::write_bytes(self.buf.as_ptr().add(offset), byte, len) };
        Ok(())
    }

    /// The buffer as a slice. Needs `&mut self`, i.e. `Arc::get_mut`, which
    /// only succeeds while no posted WR holds a reference; `None` for regions
    /// with remote access (a peer may write them at any time).
    pub fn as_slice(&mut self) -> Option<&[u8]> {
        self.as_mut_slice().map(|s| &*s)
    }

    /// Mutable variant of [`as_slice`](Self::as_slice), same conditions.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.access.is_remote() || self.layout.is_none() {
            return None;
        }
        // SAFETY: `&mut self` proves no QP holds a clone of the Arc (so no
        // WR references the buffer) and no other CPU access exists; without
        // remote access nothing else writes it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), self.len) })
    }

    pub(crate) fn sge(&self, offset: usize, len: usize) -> Result<ibv_sge> {
        self.check_range(offset, len)?;
        let length =
            u32::try_from(len).map_err(|_| Error::Invalid("WR length exceeds u32".into()))?;
        Ok(ibv_sge {
            addr: self.addr() + offset as u64,
            length,
            lkey: self.lkey(),
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: no WR references the region (QPs hold Arcs until the
        // completion is polled or the drain finished); deregistered once.
        let r = unsafe { ibv_dereg_mr(self.mr.as_ptr()) };
        if let Err(e) = check_ibv("ibv_dereg_mr", r) {
            log::error!(
                "{e}; leaking the buffer of {} bytes rather than freeing registered memory",
                self.len
            );
            LEAKED_MRS.fetch_add(1, Ordering::SeqCst);
        } else if let Some(layout) = self.layout {
            // SAFETY: deregistered: the device can no longer touch it; allocated with `layout`.
            unsafe { std::alloc::dealloc(self.buf.as_ptr(), layout) };
        }
        dec(&LIVE_MRS);
    }
}

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

const IBV_WC_WITH_IMM_BIT: u32 = 2;
const IBV_WC_WITH_INV_BIT: u32 = 8;

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
    raw: NonNull<ibv_cq>,
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
    fn poll_raw(
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

    fn register(&self, qp_num: u32, tracker: SharedTracker, queue: Queue) {
        lock(&self.qps).insert(qp_num, (tracker, queue));
    }

    fn unregister(&self, qp_num: u32) {
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

/// Queue-pair capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline data size (0 = none).
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_data: 0,
        }
    }
}

/// Error of [`QueuePair::create`]: gives the id back so it can be rejected.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CreateQpError {
    /// Why it failed.
    #[source]
    pub error: Error,
    /// The id, unchanged.
    pub id: CmId,
}

impl From<CreateQpError> for Error {
    fn from(e: CreateQpError) -> Error {
        e.error
    }
}

/// What one WR of [`QueuePair::post_list`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// A Send, or a Send-with-Invalidate of the peer's rkey `invalidate`.
    Send {
        /// The peer's rkey to invalidate, if any.
        invalidate: Option<u32>,
    },
    /// An RDMA Write to the peer's `remote_addr`/`rkey`.
    RdmaWrite {
        /// Address in the peer's memory.
        remote_addr: u64,
        /// The peer's rkey of that memory.
        rkey: u32,
    },
    /// An RDMA Read from the peer's `remote_addr`/`rkey` into the WR's local
    /// memory (which needs [`Access::LOCAL_WRITE`]).
    RdmaRead {
        /// Address in the peer's memory.
        remote_addr: u64,
        /// The peer's rkey of that memory.
        rkey: u32,
    },
}

/// One WR of a chained [`crate::SendList`]: `len` bytes at
/// `offset` of `mr`.
#[derive(Debug, Clone, Copy)]
pub struct SendWr<'a> {
    /// The caller's id, reported in the completion.
    pub wr_id: u64,
    /// What the WR does.
    pub op: SendOp,
    /// The local memory the bytes are in (or, for a Send, come from).
    pub mr: &'a Arc<MemoryRegion>,
    /// Where in `mr`.
    pub offset: usize,
    /// How many bytes.
    pub len: usize,
    /// Whether the WR produces a completion of its own; an unsignaled one is
    /// retired by the next signaled completion of the send queue.
    pub signaled: bool,
}

/// An RC queue pair created on a [`CmId`] with `rdma_create_qp`; it owns the
/// id. Dropping it: `rdma_disconnect` (errors ignored), QP to ERROR, drain
/// (bounded), `rdma_destroy_qp`, release MR references (or leak them if the
/// drain failed), then the id, CQs and PD references.
pub struct QueuePair {
    qp_num: u32,
    pub(crate) tracker: SharedTracker,
    closing: AtomicBool,
    drained: AtomicBool,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    _pd: Arc<ProtectionDomain>,
    // Dropped last (after the QP was destroyed in Drop::drop).
    id: CmId,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.qp_num)
            .field("id", &self.id)
            .finish()
    }
}

impl QueuePair {
    /// `rdma_create_qp` (RC) on `id` with separate send and receive CQs.
    pub fn create(
        id: CmId,
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: QpCaps,
    ) -> std::result::Result<QueuePair, CreateQpError> {
        if Arc::ptr_eq(send_cq, recv_cq) {
            return Err(CreateQpError {
                error: Error::Invalid("send and receive CQ must differ".into()),
                id,
            });
        }
        // SAFETY: plain data; zero is valid.
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = send_cq.raw.as_ptr();
        attr.recv_cq = recv_cq.raw.as_ptr();
        attr.cap = ibv_qp_cap {
            max_send_wr: caps.max_send_wr,
            max_recv_wr: caps.max_recv_wr,
            max_send_sge: caps.max_send_sge,
            max_recv_sge: caps.max_recv_sge,
            max_inline_data: caps.max_inline_data,
        };
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        // SAFETY: valid id, PD and CQs (kept alive by the Arcs we store).
        let r = unsafe { rdma_create_qp(id.as_ptr(), pd.raw.as_ptr(), &mut attr) };
        if let Err(error) = check_rdma("rdma_create_qp", r) {
            return Err(CreateQpError { error, id });
        }
        // SAFETY: rdma_create_qp succeeded, so id->qp is a valid QP.
        let qp_num = unsafe { (*(*id.as_ptr()).qp).qp_num };
        inc(&LIVE_QPS);
        let tracker: SharedTracker = Arc::new(Mutex::new(Tracker::default()));
        send_cq.register(qp_num, tracker.clone(), Queue::Send);
        recv_cq.register(qp_num, tracker.clone(), Queue::Recv);
        Ok(QueuePair {
            qp_num,
            tracker,
            closing: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            _pd: pd.clone(),
            id,
        })
    }

    /// The connection's id (accept, connect, disconnect, notify, addresses).
    pub fn id(&self) -> &CmId {
        &self.id
    }

    /// QP number.
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// Outstanding (send, receive) WRs whose completion was not polled yet.
    pub fn outstanding(&self) -> (usize, usize) {
        lock(&self.tracker).outstanding()
    }

    pub(crate) fn qp(&self) -> *mut ibv_qp {
        // SAFETY: the QP exists from create until Drop.
        unsafe { (*self.id.as_ptr()).qp }
    }

    pub(crate) fn check_open(&self, wr_id: u64) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::from_errno("post (QP draining)", libc::ESHUTDOWN));
        }
        if wr_id == MARKER_WR_ID {
            return Err(Error::Invalid("wr_id u64::MAX is reserved".into()));
        }
        Ok(())
    }

    /// Post a receive of up to `len` bytes at `offset` of `mr`.
    pub fn post_recv(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        self.check_open(wr_id)?;
        let mut sge = mr.sge(offset, len)?;
        let mut wr = ibv_recv_wr {
            wr_id,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        let mut t = lock(&self.tracker);
        t.recv.push_back(Pending {
            wr_id,
            marker: false,
            hold: Some(mr.clone()),
        });
        // SAFETY: valid QP; `wr` and `sge` live across the call; the MR stays
        // registered because the tracker holds an Arc until completion.
        let r = unsafe { ibv_post_recv(self.qp(), &mut wr, &mut bad) };
        if r != 0 {
            t.recv.pop_back();
        }
        check_ibv("ibv_post_recv", r)
    }

    #[allow(clippy::too_many_arguments)]
    fn post_send_wr(
        &self,
        wr_id: u64,
        opcode: u32,
        mr: Option<&Arc<MemoryRegion>>,
        offset: usize,
        len: usize,
        signaled: bool,
        remote: Option<(u64, u32)>,
        invalidate: Option<u32>,
        marker: bool,
    ) -> Result<()> {
        if !marker {
            self.check_open(wr_id)?;
        }
        let mut sge = match mr {
            Some(mr) => mr.sge(offset, len)?,
            None => ibv_sge {
                addr: 0,
                length: 0,
                lkey: 0,
            },
        };
        // SAFETY: plain data (unions of integers/pointers); zero is valid.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = if mr.is_some() && len > 0 { 1 } else { 0 };
        wr.opcode = opcode;
        wr.send_flags = if signaled { 2 } else { 0 }; // IBV_SEND_SIGNALED
        if let Some(rkey) = invalidate {
            wr.imm_data_invalidated_rkey_union.invalidated_rkey = rkey;
        }
        if let Some((remote_addr, rkey)) = remote {
            wr.wr.rdma = rdma_t { remote_addr, rkey };
        }
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        let mut t = lock(&self.tracker);
        t.send.push_back(Pending {
            wr_id,
            marker,
            hold: mr.cloned(),
        });
        // SAFETY: valid QP; `wr`/`sge` live across the call; the MR stays
        // registered while the tracker holds its Arc.
        let r = unsafe { ibv_post_send(self.qp(), &mut wr, &mut bad) };
        if r != 0 {
            t.send.pop_back();
        }
        check_ibv("ibv_post_send", r)
    }

    /// Post a Send (or Send-with-Invalidate of `invalidate`) of `len` bytes at
    /// `offset` of `mr`.
    pub fn post_send(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
        signaled: bool,
        invalidate: Option<u32>,
    ) -> Result<()> {
        let op = if invalidate.is_some() {
            ibv_wr_opcode::IBV_WR_SEND_WITH_INV
        } else {
            ibv_wr_opcode::IBV_WR_SEND
        };
        self.post_send_wr(
            wr_id,
            op,
            Some(mr),
            offset,
            len,
            signaled,
            None,
            invalidate,
            false,
        )
    }

    /// Post an RDMA Write of `len` bytes at `offset` of `mr` to the peer's
    /// `remote_addr`/`rkey`.
    #[allow(clippy::too_many_arguments)]
    pub fn post_rdma_write(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: u32,
        signaled: bool,
    ) -> Result<()> {
        let op = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
        self.post_send_wr(
            wr_id,
            op,
            Some(mr),
            offset,
            len,
            signaled,
            Some((remote_addr, rkey)),
            None,
            false,
        )
    }

    /// Post an RDMA Read of `len` bytes from the peer's `remote_addr`/`rkey`
    /// into `offset` of `mr` (which needs [`Access::LOCAL_WRITE`]).
    #[allow(clippy::too_many_arguments)]
    pub fn post_rdma_read(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: u32,
        signaled: bool,
    ) -> Result<()> {
        let op = ibv_wr_opcode::IBV_WR_RDMA_READ;
        self.post_send_wr(
            wr_id,
            op,
            Some(mr),
            offset,
            len,
            signaled,
            Some((remote_addr, rkey)),
            None,
            false,
        )
    }

    /// Move the QP to the ERROR state (flushes every posted WR).
    pub fn set_error(&self) -> Result<()> {
        // SAFETY: plain data; zero is valid.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: valid QP and attr; mask IBV_QP_STATE only.
        check_ibv("ibv_modify_qp(ERR)", unsafe {
            ibv_modify_qp(self.qp(), &mut attr, 1)
        })
    }

    /// Stop posting, move the QP to ERROR and wait (up to `timeout`) until
    /// every posted WR has completed, polling both CQs. Returns the
    /// completions of this QP seen while draining (mostly `WrFlushErr`);
    /// completions of other QPs sharing the CQs are kept for their next poll.
    /// Call it after `disconnect` and the `Disconnected` event for an orderly
    /// teardown (§12.1); Drop does it too, bounded, if you did not.
    pub fn drain(&self, timeout: Duration) -> Result<Vec<WorkCompletion>> {
        self.closing.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        if self.drained.load(Ordering::SeqCst) {
            return Ok(out);
        }
        self.set_error()?;
        // A signaled marker: unsignaled sends produce no flush completion of
        // their own on every provider; the marker's retires them all.
        let need_marker = !lock(&self.tracker).send.is_empty();
        if need_marker {
            self.post_send_wr(
                MARKER_WR_ID,
                ibv_wr_opcode::IBV_WR_SEND,
                None,
                0,
                0,
                true,
                None,
                None,
                true,
            )?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.send_cq.poll_raw(&mut out, 16, Some(self.qp_num))?
                + self.recv_cq.poll_raw(&mut out, 16, Some(self.qp_num))?;
            if lock(&self.tracker).is_empty() {
                self.drained.store(true, Ordering::SeqCst);
                return Ok(out);
            }
            if Instant::now() >= deadline {
                let (s, r) = self.outstanding();
                log::error!(
                    "QP {}: drain timed out with {s} send / {r} receive WRs outstanding",
                    self.qp_num
                );
                return Err(Error::Timeout("QP drain"));
            }
            if seen == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let mut ok = self.drained.load(Ordering::SeqCst);
        if !ok {
            // Ignore errors: the id may never have been connected.
            // SAFETY: valid id.
            let _ = unsafe { rdma_disconnect(self.id.as_ptr()) };
            match self.drain(Duration::from_secs(5)) {
                Ok(_) => ok = true,
                Err(e) => log::error!("QP {}: drain on drop failed: {e}", self.qp_num),
            }
        }
        // SAFETY: the QP is valid; after this no WR of it is processed.
        unsafe { rdma_destroy_qp(self.id.as_ptr()) };
        dec(&LIVE_QPS);
        self.send_cq.unregister(self.qp_num);
        self.recv_cq.unregister(self.qp_num);
        let mut t = lock(&self.tracker);
        let mut left: Vec<_> = t.send.drain(..).filter_map(|p| p.hold).collect();
        left.extend(t.recv.drain(..).filter_map(|p| p.hold));
        drop(t);
        if !ok && !left.is_empty() {
            log::error!(
                "QP {}: leaking {} memory-region references of WRs that never completed",
                self.qp_num,
                left.len()
            );
            LEAKED_MRS.fetch_add(left.len(), Ordering::SeqCst);
            std::mem::forget(left);
        }
        // `id` (rdma_destroy_id), CQ and PD references drop after this.
    }
}

#[cfg(test)]
mod tests {
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
