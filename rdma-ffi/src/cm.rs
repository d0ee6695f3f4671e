//! rdma_cm: event channels, ids and events.
//!
//! Matching events to ids: every [`CmId`] gets a process-unique `u64` handle,
//! stored in the id's `context` pointer. [`CmEvent::id`] is the handle of the
//! id the event is about. For a `ConnectRequest`, librdmacm creates a new id
//! (inheriting the listener's context); [`EventChannel::get_event`] gives it a
//! fresh handle and hands it over as [`CmEvent::new_id`], owned by the caller;
//! later events for that connection carry that handle.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdma_sys::*;

use crate::error::{check_rdma, Error, Result};
use crate::sockaddr::{from_raw, to_raw};
use crate::verbs::VerbsContext;
use crate::{dec, inc, LIVE_IDS};

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

fn next_handle() -> u64 {
    NEXT_HANDLE.fetch_add(1, Ordering::Relaxed)
}

pub(crate) struct ChannelInner {
    raw: NonNull<rdma_event_channel>,
}

// SAFETY: an rdma_event_channel is a file descriptor plus immutable data;
// librdmacm allows using it from any thread.
unsafe impl Send for ChannelInner {}
// SAFETY: as above; concurrent rdma_get_cm_event calls are serialised by the kernel.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: every CmId holds an Arc to this, so no id of the channel is
        // alive any more, and every event was acked in get_event.
        unsafe { rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// An rdma_cm event channel (`rdma_create_event_channel`). Ids created on it
/// keep it alive; it is destroyed after the last of them.
#[derive(Clone)]
pub struct EventChannel {
    inner: Arc<ChannelInner>,
}

/// Connection parameters as received in an event (depths are already swapped
/// by rdma_cm for the passive side: Linux drivers/infiniband/core/cm.c `cm_format_req_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventConnParams {
    /// Outstanding RDMA Reads/Atomics this side may issue.
    pub initiator_depth: u8,
    /// Incoming RDMA Reads/Atomics this side must serve.
    pub responder_resources: u8,
    /// Transport retry count.
    pub retry_count: u8,
    /// RNR retry count.
    pub rnr_retry_count: u8,
    /// Flow control flag.
    pub flow_control: u8,
    /// Peer uses an SRQ.
    pub srq: u8,
    /// Peer QP number.
    pub qp_num: u32,
}

/// Kind of an rdma_cm event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmEventKind {
    /// `rdma_resolve_addr` finished.
    AddrResolved,
    /// `rdma_resolve_addr` failed.
    AddrError,
    /// `rdma_resolve_route` finished.
    RouteResolved,
    /// `rdma_resolve_route` failed.
    RouteError,
    /// New connection on a listener; see [`CmEvent::new_id`].
    ConnectRequest,
    /// Response on an id without a QP (not used with QPs).
    ConnectResponse,
    /// Error while establishing.
    ConnectError,
    /// Remote unreachable.
    Unreachable,
    /// Peer rejected.
    Rejected,
    /// Connection established.
    Established,
    /// Disconnected (peer DREQ or our rdma_disconnect completed).
    Disconnected,
    /// The RDMA device is going away: release everything on it now.
    DeviceRemoval,
    /// Multicast join done.
    MulticastJoin,
    /// Multicast error.
    MulticastError,
    /// Local address changed.
    AddrChange,
    /// IB CM left time-wait.
    TimewaitExit,
    /// Any other event number.
    Other(u32),
}

impl CmEventKind {
    pub(crate) fn from_raw(t: u32) -> Self {
        use rdma_cm_event_type::*;
        match t {
            RDMA_CM_EVENT_ADDR_RESOLVED => Self::AddrResolved,
            RDMA_CM_EVENT_ADDR_ERROR => Self::AddrError,
            RDMA_CM_EVENT_ROUTE_RESOLVED => Self::RouteResolved,
            RDMA_CM_EVENT_ROUTE_ERROR => Self::RouteError,
            RDMA_CM_EVENT_CONNECT_REQUEST => Self::ConnectRequest,
            RDMA_CM_EVENT_CONNECT_RESPONSE => Self::ConnectResponse,
            RDMA_CM_EVENT_CONNECT_ERROR => Self::ConnectError,
            RDMA_CM_EVENT_UNREACHABLE => Self::Unreachable,
            RDMA_CM_EVENT_REJECTED => Self::Rejected,
            RDMA_CM_EVENT_ESTABLISHED => Self::Established,
            RDMA_CM_EVENT_DISCONNECTED => Self::Disconnected,
            RDMA_CM_EVENT_DEVICE_REMOVAL => Self::DeviceRemoval,
            RDMA_CM_EVENT_MULTICAST_JOIN => Self::MulticastJoin,
            RDMA_CM_EVENT_MULTICAST_ERROR => Self::MulticastError,
            RDMA_CM_EVENT_ADDR_CHANGE => Self::AddrChange,
            RDMA_CM_EVENT_TIMEWAIT_EXIT => Self::TimewaitExit,
            o => Self::Other(o),
        }
    }
}

/// An rdma_cm event, copied out of the library's event and already acked.
#[derive(Debug)]
pub struct CmEvent {
    /// What happened.
    pub kind: CmEventKind,
    /// Handle of the id the event is about (for `ConnectRequest`: the new id).
    pub id: u64,
    /// For `ConnectRequest`: handle of the listening id.
    pub listen_id: Option<u64>,
    /// The event's status (negative errno, or a reject reason for `Rejected`).
    pub status: i32,
    /// Private data as delivered. On IB/RoCE the passive side sees it padded
    /// (e.g. 56 bytes for a 4-byte REQ payload): parse from the start.
    pub private_data: Vec<u8>,
    /// Connection parameters carried by the event (zeroes if none).
    pub conn: EventConnParams,
    /// For `ConnectRequest`: the new connection's id, owned by the caller.
    /// Dropping it without `accept` destroys it (the peer sees a reject).
    pub new_id: Option<CmId>,
}

impl EventChannel {
    /// `rdma_create_event_channel`.
    pub fn new() -> Result<Self> {
        // SAFETY: no arguments; the result is checked for NULL.
        let raw = unsafe { rdma_create_event_channel() };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("rdma_create_event_channel"))?;
        Ok(EventChannel {
            inner: Arc::new(ChannelInner { raw }),
        })
    }

    /// Switch the channel's fd between blocking and non-blocking mode. In
    /// non-blocking mode [`get_event`](Self::get_event) returns `Ok(None)`
    /// when no event is pending.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        set_fd_nonblocking(self.as_raw_fd(), nonblocking)
    }

    /// Get the next event (blocking unless non-blocking mode is set), copy
    /// everything out of it and ack it.
    pub fn get_event(&self) -> Result<Option<CmEvent>> {
        let mut ev: *mut rdma_cm_event = std::ptr::null_mut();
        // SAFETY: the channel is alive (we hold it); `ev` is a valid out-pointer.
        let r = unsafe { rdma_get_cm_event(self.inner.raw.as_ptr(), &mut ev) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::Os {
                op: "rdma_get_cm_event",
                source: e,
            });
        }
        // SAFETY: on success `ev` points to a valid event until it is acked
        // below; we only read from it, and the private data buffer
        // (`private_data_len` bytes) is valid for the same time.
        let out = unsafe {
            let e = &*ev;
            let kind = CmEventKind::from_raw(e.event);
            // rdma_cm ids in RDMA_PS_TCP (the only space we create) carry conn params.
            let c = e.param.conn;
            let private_data = if c.private_data.is_null() || c.private_data_len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(c.private_data as *const u8, c.private_data_len as usize)
                    .to_vec()
            };
            let conn = EventConnParams {
                initiator_depth: c.initiator_depth,
                responder_resources: c.responder_resources,
                retry_count: c.retry_count,
                rnr_retry_count: c.rnr_retry_count,
                flow_control: c.flow_control,
                srq: c.srq,
                qp_num: c.qp_num,
            };
            let (id, listen_id, new_id) = if kind == CmEventKind::ConnectRequest && !e.id.is_null()
            {
                let handle = next_handle();
                (*e.id).context = handle as usize as *mut libc::c_void;
                inc(&LIVE_IDS);
                let new = CmId {
                    raw: NonNull::new_unchecked(e.id),
                    handle,
                    _channel: self.inner.clone(),
                };
                let listen = if e.listen_id.is_null() {
                    None
                } else {
                    Some((*e.listen_id).context as usize as u64)
                };
                (handle, listen, Some(new))
            } else if e.id.is_null() {
                (0, None, None)
            } else {
                ((*e.id).context as usize as u64, None, None)
            };
            CmEvent {
                kind,
                id,
                listen_id,
                status: e.status,
                private_data,
                conn,
                new_id,
            }
        };
        // SAFETY: `ev` came from rdma_get_cm_event and is acked exactly once;
        // nothing borrowed from it is used afterwards.
        let r = unsafe { rdma_ack_cm_event(ev) };
        if r != 0 {
            log::warn!(
                "rdma_ack_cm_event failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Some(out))
    }

    /// Wait up to `timeout` for the next event (uses poll(2); works in both modes).
    pub fn get_event_timeout(&self, timeout: Duration) -> Result<Option<CmEvent>> {
        if !poll_readable(self.as_raw_fd(), timeout)? {
            return Ok(None);
        }
        self.get_event()
    }
}

impl AsRawFd for EventChannel {
    fn as_raw_fd(&self) -> RawFd {
        // SAFETY: the channel is alive; `fd` is a plain field.
        unsafe { (*self.inner.raw.as_ptr()).fd }
    }
}

impl AsFd for EventChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open as long as the channel (and so `self`) lives.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

pub(crate) fn set_fd_nonblocking(fd: RawFd, nonblocking: bool) -> Result<()> {
    // SAFETY: fcntl on an fd we own; F_GETFL has no pointer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(Error::last_os("fcntl(F_GETFL)"));
    }
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(Error::last_os("fcntl(F_SETFL)"));
    }
    Ok(())
}

/// poll(2) one fd for readability; `Ok(false)` on timeout.
pub(crate) fn poll_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `pfd` is one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Os {
                op: "poll",
                source: e,
            });
        }
        return Ok(r > 0);
    }
}

/// Parameters for `rdma_accept` / `rdma_connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnParams {
    /// Private data (REQ: at most 56 bytes on IB/RoCE; REP: at most 196).
    pub private_data: Vec<u8>,
    /// Outstanding RDMA Reads/Atomics we issue (QP `max_rd_atomic`).
    pub initiator_depth: u8,
    /// RDMA Reads/Atomics we serve (QP `max_dest_rd_atomic`).
    pub responder_resources: u8,
    /// Transport retry count (0..7).
    pub retry_count: u8,
    /// RNR retry count (0..7, 7 = infinite).
    pub rnr_retry_count: u8,
}

impl ConnParams {
    fn to_raw(&self) -> Result<rdma_conn_param> {
        let len = u8::try_from(self.private_data.len()).map_err(|_| {
            Error::Invalid(format!(
                "private data too long ({} bytes)",
                self.private_data.len()
            ))
        })?;
        if self.retry_count > 7 || self.rnr_retry_count > 7 {
            return Err(Error::Invalid(
                "retry_count / rnr_retry_count must be 0..=7".into(),
            ));
        }
        Ok(rdma_conn_param {
            private_data: if len == 0 {
                std::ptr::null()
            } else {
                self.private_data.as_ptr() as *const libc::c_void
            },
            private_data_len: len,
            responder_resources: self.responder_resources,
            initiator_depth: self.initiator_depth,
            flow_control: 1,
            retry_count: self.retry_count,
            rnr_retry_count: self.rnr_retry_count,
            srq: 0,
            qp_num: 0,
        })
    }
}

/// Makes librdmacm re-read the device list (`rdma_get_devices` + `rdma_free_devices`).
///
/// librdmacm keeps its own context open on every device an id was ever bound to, and only
/// closes the context of a removed device when it re-reads the list. The kernel's
/// `rdma link delete` (and any hot-unplug of a device without context disassociation, such as
/// rxe) waits until every context is closed, so a long-running process should call this after
/// a `DeviceRemoval` once its own ids and verbs objects on that device are gone. librdmacm 44
/// cannot notice the removal of the *last* device (it gives up on an empty list).
/// Returns the number of devices librdmacm now knows.
pub fn refresh_cm_devices() -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: valid out-pointer; the returned NULL-terminated array is ours until
    // rdma_free_devices, and we do not look inside it.
    let list = unsafe { rdma_get_devices(&mut n) };
    if !list.is_null() {
        // SAFETY: `list` came from rdma_get_devices and is released exactly once.
        unsafe { rdma_free_devices(list) };
    }
    n.max(0) as usize
}

/// An rdma_cm id (`rdma_create_id`, `RDMA_PS_TCP`). Dropping it calls
/// `rdma_destroy_id`. An id that carries a QP is owned by its
/// [`QueuePair`](crate::QueuePair), which destroys the QP first.
pub struct CmId {
    raw: NonNull<rdma_cm_id>,
    handle: u64,
    _channel: Arc<ChannelInner>,
}

// SAFETY: librdmacm operations on an id are system calls on the channel fd
// with kernel-side locking; the user-space struct is only mutated by
// rdma_create_qp/rdma_destroy_qp, which need ownership (QueuePair).
unsafe impl Send for CmId {}
// SAFETY: see above.
unsafe impl Sync for CmId {}

impl std::fmt::Debug for CmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmId")
            .field("handle", &self.handle)
            .finish()
    }
}

fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

impl CmId {
    /// `rdma_create_id(channel, RDMA_PS_TCP)`; events for it arrive on `channel`.
    pub fn create(channel: &EventChannel) -> Result<Self> {
        let handle = next_handle();
        let mut raw: *mut rdma_cm_id = std::ptr::null_mut();
        // SAFETY: the channel is alive; `raw` is a valid out-pointer; the
        // context is an opaque integer we never dereference.
        let r = unsafe {
            rdma_create_id(
                channel.inner.raw.as_ptr(),
                &mut raw,
                handle as usize as *mut libc::c_void,
                rdma_port_space::RDMA_PS_TCP,
            )
        };
        check_rdma("rdma_create_id", r)?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::Invalid("rdma_create_id returned NULL".into()))?;
        inc(&LIVE_IDS);
        Ok(CmId {
            raw,
            handle,
            _channel: channel.inner.clone(),
        })
    }

    /// The opaque handle events for this id carry in [`CmEvent::id`].
    pub fn handle(&self) -> u64 {
        self.handle
    }

    pub(crate) fn as_ptr(&self) -> *mut rdma_cm_id {
        self.raw.as_ptr()
    }

    /// `rdma_bind_addr`. Binding to a specific IP selects the device owning it.
    pub fn bind(&self, addr: SocketAddr) -> Result<()> {
        let mut sa = to_raw(addr);
        // SAFETY: valid id; `sa` is a complete socket address for the call.
        check_rdma("rdma_bind_addr", unsafe {
            rdma_bind_addr(self.as_ptr(), sa.as_mut_ptr())
        })
    }

    /// `rdma_listen`.
    pub fn listen(&self, backlog: i32) -> Result<()> {
        // SAFETY: valid id.
        check_rdma("rdma_listen", unsafe {
            rdma_listen(self.as_ptr(), backlog)
        })
    }

    /// `rdma_resolve_addr` (active side); completes with `AddrResolved`.
    pub fn resolve_addr(
        &self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<()> {
        let mut s = src.map(to_raw);
        let mut d = to_raw(dst);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), |s| s.as_mut_ptr());
        // SAFETY: valid id; both addresses live across the call (src may be NULL).
        check_rdma("rdma_resolve_addr", unsafe {
            rdma_resolve_addr(self.as_ptr(), sp, d.as_mut_ptr(), ms(timeout))
        })
    }

    /// `rdma_resolve_route` (active side); completes with `RouteResolved`.
    pub fn resolve_route(&self, timeout: Duration) -> Result<()> {
        // SAFETY: valid id.
        check_rdma("rdma_resolve_route", unsafe {
            rdma_resolve_route(self.as_ptr(), ms(timeout))
        })
    }

    /// `rdma_connect` (active side, after the QP is created on this id).
    pub fn connect(&self, params: &ConnParams) -> Result<()> {
        let mut p = params.to_raw()?;
        // SAFETY: valid id; `p` and the private data it points to live across the call.
        check_rdma("rdma_connect", unsafe {
            rdma_connect(self.as_ptr(), &mut p)
        })
    }

    /// `rdma_accept` (passive side). Post receive buffers before calling it.
    pub fn accept(&self, params: &ConnParams) -> Result<()> {
        let mut p = params.to_raw()?;
        // SAFETY: valid id; `p` and its private data live across the call.
        check_rdma("rdma_accept", unsafe { rdma_accept(self.as_ptr(), &mut p) })
    }

    /// `rdma_reject` with optional private data.
    pub fn reject(&self, private_data: &[u8]) -> Result<()> {
        let len = u8::try_from(private_data.len())
            .map_err(|_| Error::Invalid("private data too long".into()))?;
        let ptr = if len == 0 {
            std::ptr::null()
        } else {
            private_data.as_ptr() as *const libc::c_void
        };
        // SAFETY: valid id; the buffer lives across the call.
        check_rdma("rdma_reject", unsafe {
            rdma_reject(self.as_ptr(), ptr, len)
        })
    }

    /// `rdma_disconnect`: moves the QP to ERROR (flushing posted WRs) and
    /// sends a DREQ; `Disconnected` follows on the event channel.
    pub fn disconnect(&self) -> Result<()> {
        // SAFETY: valid id.
        check_rdma("rdma_disconnect", unsafe { rdma_disconnect(self.as_ptr()) })
    }

    /// `rdma_notify(IBV_EVENT_COMM_EST)`: tell rdma_cm the connection is
    /// established because data arrived before the RTU (async event COMM_EST).
    pub fn notify_comm_est(&self) -> Result<()> {
        // SAFETY: valid id.
        check_rdma("rdma_notify", unsafe {
            rdma_notify(self.as_ptr(), ibv_event_type::IBV_EVENT_COMM_EST)
        })
    }

    /// Local address (after bind / resolve / connect request).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: valid id; the route's address union is a sockaddr_storage.
        unsafe { from_raw(rdma_get_local_addr(&*self.as_ptr())) }
    }

    /// Peer address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as above.
        unsafe { from_raw(rdma_get_peer_addr(&*self.as_ptr())) }
    }

    /// The verbs context of the device this id is bound to (`None` before
    /// bind/resolve, or for a wildcard listener). Create PDs/CQs on it.
    pub fn verbs(&self) -> Option<VerbsContext> {
        // SAFETY: valid id; `verbs` is a plain field.
        let v = unsafe { (*self.as_ptr()).verbs };
        NonNull::new(v).map(VerbsContext::from_raw)
    }

    /// Port number on the device.
    pub fn port_num(&self) -> u8 {
        // SAFETY: valid id; plain field.
        unsafe { (*self.as_ptr()).port_num }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the id is valid and owned; a QueuePair destroys its QP
        // before dropping the id; all events were acked by get_event.
        let r = unsafe { rdma_destroy_id(self.as_ptr()) };
        if r != 0 {
            log::warn!(
                "rdma_destroy_id failed: {}",
                std::io::Error::last_os_error()
            );
        }
        dec(&LIVE_IDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds() {
        assert_eq!(CmEventKind::from_raw(4), CmEventKind::ConnectRequest);
        assert_eq!(CmEventKind::from_raw(10), CmEventKind::Disconnected);
        assert_eq!(CmEventKind::from_raw(15), CmEventKind::TimewaitExit);
        assert_eq!(CmEventKind::from_raw(99), CmEventKind::Other(99));
    }

    #[test]
    fn conn_params_validation() {
        let p = ConnParams {
            private_data: vec![0x80, 0, 0, 0],
            retry_count: 7,
            rnr_retry_count: 7,
            ..Default::default()
        };
        let raw = p.to_raw().unwrap();
        assert_eq!(raw.private_data_len, 4);
        assert!(ConnParams {
            private_data: vec![0; 256],
            ..Default::default()
        }
        .to_raw()
        .is_err());
        assert!(ConnParams {
            retry_count: 8,
            ..Default::default()
        }
        .to_raw()
        .is_err());
    }

    #[test]
    fn channel_without_rdma_is_a_clean_error_or_works() {
        // On a host without /dev/infiniband/rdma_cm this must be an error
        // carrying an errno, not a crash.
        match EventChannel::new() {
            Ok(ch) => {
                ch.set_nonblocking(true).unwrap();
                assert!(ch.get_event().unwrap().is_none());
            }
            Err(e) => assert!(e.errno().is_some(), "{e}"),
        }
    }
}
