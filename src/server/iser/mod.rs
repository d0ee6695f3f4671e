//! iSCSI over RDMA (iSER, RFC 7145): one rdma_cm event thread per portal routes CM events and the
//! devices' asynchronous events; every connection runs on its own thread (module `driver`), which sets
//! the connection up, accepts it, and then moves bytes between the queue pair and the sans-IO
//! [`crate::iscsi::iser::IserConnection`].
//!
//! Accept (in the order of LIO's ib_isert.c `isert_connect_request`): PD per device (shared while
//! connections use it), one completion channel for the send and receive CQs, an RC QP sized from
//! the queue depth, the login receive buffers posted before `rdma_accept`, private data from
//! [`accept_private_data`], initiator depth limited by the device, responder resources 0. The
//! full-feature receive buffers and the staging arena are allocated only when the login succeeds,
//! so a connection that never logs in costs little.

mod driver;
mod ring;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use rdma_ffi::{
    Access, CmEvent, CmEventKind, CmId, CompletionChannel, CompletionQueue, ConnParams,
    EventChannel, EventConnParams, MemoryRegion, ProtectionDomain, QpCaps, QueuePair, VerbsContext,
};

use super::admission::PortalKey;
use super::{ServerError, Shared, SHUTDOWN_GRACE};
use crate::config::{Limits, Transport};
use crate::iscsi::iser::{
    accept_private_data, initiator_allows_send_with_invalidate, RECV_BUFFER_LEN,
};
use driver::{Doorbell, Event, Mailbox, Resources};

pub use crate::iscsi::iser::RECV_DATA_CAPACITY;

/// How to create a SoftRoCE device, for error messages.
pub const SOFTROCE_HINT: &str =
    "create a SoftRoCE device with `modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0` \
     (use the netdev that carries the portal address), or use `transport: tcp`";

/// Receive buffer stride: the adapter's buffer size rounded to 64 bytes.
const RECV_STRIDE: usize = RECV_BUFFER_LEN.div_ceil(64) * 64;
const _: () = assert!(RECV_STRIDE >= RECV_BUFFER_LEN && RECV_STRIDE % 64 == 0);
/// Receive buffers beyond the CmdSN window: immediate PDUs (NOP-Out, TMF, Logout, Text) and
/// NOP-Out answers to our pings (Linux drivers/scsi/libiscsi.c keeps at most one ping,
/// `ping_task`, and one TMF, `tmf_state`, outstanding).
const RECV_HEADROOM: u32 = 16;
/// Receive buffers posted at accept, for the login phase: the initiator sends one Login Request
/// at a time and waits for its response (RFC 7143 §6.2; Linux drivers/infiniband/ulp/iser/
/// iser_initiator.c keeps a single login buffer). One spare covers a request racing a response.
pub(super) const LOGIN_RECV_SLOTS: u32 = 2;
/// Send-queue room beyond two WRs per command (RDMA ops plus response).
const SEND_HEADROOM: u32 = 32;
/// Most RDMA Reads one connection keeps in flight, whatever the initiator allows.
const MAX_RDMA_READS: usize = 16;
/// How often a lost listener (device removed) is re-created.
const RELISTEN_INTERVAL: Duration = Duration::from_secs(1);

/// Sizes derived from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizing {
    /// Full-feature receive buffers, posted before the final Login Response.
    recv_slots: u32,
    max_send_wr: u32,
    arena: usize,
    /// Most target-to-initiator PDUs waiting for room on the send queue; an initiator that lets
    /// more pile up (it stopped reposting receives) is dropped.
    max_pending_sends: usize,
}

impl Sizing {
    pub(super) fn new(limits: &Limits) -> Self {
        let qd = limits.queue_depth;
        Sizing {
            recv_slots: qd + RECV_HEADROOM,
            max_send_wr: 2 * qd + SEND_HEADROOM,
            // Room for a few full bursts in flight; larger transfers register on the fly.
            arena: (4 * limits.max_io_size as usize).clamp(2 << 20, 64 << 20),
            // One response per command in the window plus the immediate PDUs, twice over.
            max_pending_sends: 2 * (qd + RECV_HEADROOM) as usize,
        }
    }
}

/// A listening iSER portal.
pub(super) struct Portal {
    pub(super) thread: JoinHandle<()>,
    pub(super) local: SocketAddr,
}

/// Binds and listens on `addr`, then serves it on a new thread until `stop` is set and its
/// connections are gone.
pub(super) fn start_portal(
    addr: SocketAddr,
    shared: Arc<Shared>,
    sizing: Sizing,
    stop: Arc<AtomicBool>,
) -> Result<Portal, ServerError> {
    let rdma = |source: rdma_ffi::Error| ServerError::Rdma {
        addr,
        message: describe_bind_error(addr, &source),
    };
    let channel = EventChannel::new().map_err(rdma)?;
    channel.set_nonblocking(true).map_err(rdma)?;
    let listener = listen(&channel, addr).map_err(rdma)?;
    let local = listener.local_addr().unwrap_or(addr);
    let mut portal = Listener {
        addr,
        channel,
        listener: Some(listener),
        shared,
        sizing,
        stop,
        routes: Arc::new(Mutex::new(Routes::default())),
        pds: Arc::new(Mutex::new(HashMap::new())),
        devices: HashMap::new(),
        relisten_at: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("iser-{addr}"))
        .spawn(move || portal.run())?;
    Ok(Portal { thread, local })
}

fn listen(channel: &EventChannel, addr: SocketAddr) -> rdma_ffi::Result<CmId> {
    let id = CmId::create(channel)?;
    id.bind(addr)?;
    id.listen(64)?;
    Ok(id)
}

/// Turns a bind/listen failure into advice.
fn describe_bind_error(addr: SocketAddr, e: &rdma_ffi::Error) -> String {
    match e.errno() {
        Some(libc::ENODEV) | Some(libc::EADDRNOTAVAIL) => format!(
            "{} is not an address of an RDMA device ({e}); give the portal the address of a \
             netdev with an RDMA link (see `iser-target devices` and `rdma link`), or {SOFTROCE_HINT}",
            addr.ip()
        ),
        Some(libc::EADDRINUSE) => {
            format!("another RDMA listener (LIO's ib_isert?) already uses {addr} ({e})")
        }
        Some(libc::ENOENT) | Some(libc::ENOSYS) => {
            format!("rdma_cm is not available ({e}): load rdma_ucm and {SOFTROCE_HINT}")
        }
        _ => format!("{e}"),
    }
}

/// Where the event thread sends what it learns about a connection: rdma_cm events by id handle,
/// async QP events by (device, QP number) — the device context and its async fd are shared by
/// every connection on the device.
#[derive(Default)]
struct Routes {
    by_id: HashMap<u64, Mailbox>,
    by_qp: HashMap<(String, u32), Mailbox>,
}

type SharedRoutes = Arc<Mutex<Routes>>;

/// Removes a connection's routes when its thread ends (only its own: a QP number can be reused
/// by a newer connection once the QP is destroyed).
struct RouteGuard {
    routes: SharedRoutes,
    handle: u64,
    qp: Option<(String, u32)>,
    bell: Arc<Doorbell>,
}

impl RouteGuard {
    /// Routes the QP's async events to this connection.
    fn route_qp(&mut self, device: String, qp_num: u32, mailbox: &Mailbox) {
        let key = (device, qp_num);
        lock(&self.routes)
            .by_qp
            .insert(key.clone(), mailbox.clone());
        self.qp = Some(key);
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        let ours = |m: &Mailbox| Arc::ptr_eq(&m.bell, &self.bell);
        if routes.by_id.get(&self.handle).is_some_and(ours) {
            routes.by_id.remove(&self.handle);
        }
        if let Some(key) = &self.qp {
            if routes.by_qp.get(key).is_some_and(ours) {
                routes.by_qp.remove(key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Protection domains by device name, shared by that device's connections.
type Pds = Arc<Mutex<HashMap<String, Weak<ProtectionDomain>>>>;

struct Listener {
    addr: SocketAddr,
    channel: EventChannel,
    listener: Option<CmId>,
    shared: Arc<Shared>,
    sizing: Sizing,
    stop: Arc<AtomicBool>,
    routes: SharedRoutes,
    pds: Pds,
    /// Device contexts whose async events are read here, by device name.
    devices: HashMap<String, VerbsContext>,
    relisten_at: Option<Instant>,
}

impl Listener {
    fn run(&mut self) {
        log::info!("listening on {} (iser)", self.addr);
        let mut stopped_at: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                let since = *stopped_at.get_or_insert_with(|| {
                    // Stop accepting at once; keep routing events to closing connections.
                    self.listener = None;
                    Instant::now()
                });
                if lock(&self.routes).by_id.is_empty() {
                    break;
                }
                if since.elapsed() > SHUTDOWN_GRACE + Duration::from_secs(10) {
                    log::warn!("{}: connections still open at shutdown", self.addr);
                    break;
                }
            } else if self.listener.is_none() {
                self.relisten();
            }
            self.wait_and_dispatch();
        }
        log::debug!("{}: iSER event thread finished", self.addr);
    }

    /// Sleeps until a CM event or a device's async event arrives (at most 200 ms), then routes
    /// whatever is pending.
    fn wait_and_dispatch(&mut self) {
        let names: Vec<String> = self.devices.keys().cloned().collect();
        let ready = {
            let mut fds = vec![PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                names
                    .iter()
                    .map(|n| PollFd::new(self.devices[n].async_fd_borrowed(), PollFlags::POLLIN)),
            );
            match nix::poll::poll(&mut fds, PollTimeout::from(200u8)) {
                Ok(_) => fds
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    if e != nix::errno::Errno::EINTR {
                        log::error!("{}: poll: {e}", self.addr);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    return;
                }
            }
        };
        for (name, revents) in names.iter().zip(&ready[1..]) {
            if revents.intersects(PollFlags::POLLNVAL | PollFlags::POLLERR) {
                self.devices.remove(name);
            } else if revents.contains(PollFlags::POLLIN) {
                self.on_async_events(name);
            }
        }
        loop {
            match self.channel.get_event() {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => break,
                Err(e) => {
                    log::error!("{}: rdma_cm event channel: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
            }
        }
    }

    /// Routes a device's QP events to their connections.
    fn on_async_events(&mut self, device: &str) {
        let Some(ctx) = self.devices.get(device).copied() else {
            return;
        };
        loop {
            match ctx.get_async_event() {
                Ok(Some(event)) => {
                    let route = event.qp_num.and_then(|qp| {
                        lock(&self.routes)
                            .by_qp
                            .get(&(device.to_string(), qp))
                            .cloned()
                    });
                    match route {
                        Some(mailbox) => mailbox.post(Event::Async(event.kind)),
                        None => log::debug!("{device}: async event {event:?}"),
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    log::warn!("{device}: reading async events: {e}");
                    self.devices.remove(device);
                    return;
                }
            }
        }
    }

    /// Starts reading the async events of the device behind a new connection.
    fn watch_device(&mut self, ctx: VerbsContext) {
        let name = ctx.device_name();
        if self.devices.contains_key(&name) {
            return;
        }
        match ctx.set_async_nonblocking(true) {
            Ok(()) => {
                self.devices.insert(name, ctx);
            }
            Err(e) => log::warn!("{name}: cannot watch async events: {e}"),
        }
    }

    fn relisten(&mut self) {
        if self.relisten_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // librdmacm may close the contexts of removed devices below: stop polling their fds.
        self.devices.clear();
        // Lets librdmacm close its context on a removed device; `rdma link delete` waits for it.
        rdma_ffi::refresh_cm_devices();
        match listen(&self.channel, self.addr) {
            Ok(id) => {
                log::info!("listening on {} (iser) again", self.addr);
                self.listener = Some(id);
                self.relisten_at = None;
            }
            Err(e) => {
                if self.relisten_at.is_none() {
                    log::warn!(
                        "{}: cannot listen yet: {}",
                        self.addr,
                        describe_bind_error(self.addr, &e)
                    );
                }
                self.relisten_at = Some(Instant::now() + RELISTEN_INTERVAL);
            }
        }
    }

    fn on_event(&mut self, mut event: CmEvent) {
        let listener = self.listener.as_ref().map(CmId::handle);
        match event.kind {
            CmEventKind::ConnectRequest => {
                let Some(id) = event.new_id.take() else {
                    return;
                };
                if self.stop.load(Ordering::SeqCst) || self.shared.stopping() {
                    log::info!("rejecting an iSER connection: shutting down");
                    let _ = id.reject(&[]);
                    return;
                }
                self.hand_over(id, event);
            }
            CmEventKind::DeviceRemoval | CmEventKind::AddrChange if Some(event.id) == listener => {
                log::warn!(
                    "{}: {:?} on the listener; listening again when the address is back",
                    self.addr,
                    event.kind
                );
                self.listener = None;
                self.devices.clear();
                self.relisten_at = Some(Instant::now() + RELISTEN_INTERVAL);
            }
            kind => {
                if kind == CmEventKind::DeviceRemoval {
                    self.devices.clear();
                }
                let route = lock(&self.routes).by_id.get(&event.id).cloned();
                match route {
                    Some(mailbox) => mailbox.post(Event::Cm(kind)),
                    None => log::debug!("{}: {kind:?} for a finished connection", self.addr),
                }
            }
        }
    }

    /// Hands a connect request to a new connection thread, which sets it up and accepts or
    /// rejects it: registering memory and creating verbs objects stay off this thread. The
    /// route exists before the thread starts, so no CM event for the new id is lost.
    fn hand_over(&mut self, id: CmId, event: CmEvent) {
        // The connection caps of `limits` hold for iSER as for TCP: a refused request costs no
        // thread and no verbs objects (admission logs why, rate-limited).
        let portal = PortalKey {
            transport: Transport::Iser,
            addr: self.addr,
        };
        let Some(source) = id.peer_addr().map(|a| a.ip()) else {
            log::warn!(
                "{}: a connect request without a peer address; rejecting",
                self.addr
            );
            let _ = id.reject(&[]);
            return;
        };
        let ticket = match self.shared.admission.admit(portal, source, || false) {
            Ok(ticket) => ticket,
            Err(_) => {
                let _ = id.reject(&[]);
                return;
            }
        };
        if let Some(ctx) = id.verbs() {
            self.watch_device(ctx);
        }
        let handle = id.handle();
        let (events, inbox) = crossbeam_channel::unbounded();
        let bell = match Doorbell::new() {
            Ok(b) => b,
            Err(e) => {
                log::error!("eventfd for a new iSER connection: {e}; rejecting");
                let _ = id.reject(&[]);
                return;
            }
        };
        let mailbox = Mailbox { events, bell };
        lock(&self.routes).by_id.insert(handle, mailbox.clone());
        let guard = RouteGuard {
            routes: Arc::clone(&self.routes),
            handle,
            qp: None,
            bell: Arc::clone(&mailbox.bell),
        };
        let request = ConnectRequest {
            private_data: event.private_data,
            conn: event.conn,
        };
        let core = self.shared.iser_core.get();
        let shared = Arc::clone(&self.shared);
        let pds = Arc::clone(&self.pds);
        let sizing = self.sizing;
        let spawned = std::thread::Builder::new()
            .name("iser-conn".into())
            .spawn(move || {
                let mut guard = guard;
                if let Some(res) =
                    set_up_and_accept(id, &request, &pds, sizing, &mailbox, &mut guard)
                {
                    // Held for the connection's life: its place under the caps, its routes.
                    let held = Box::new((ticket, guard));
                    driver::serve(res, core, shared, mailbox, inbox, held);
                }
            });
        if let Err(e) = spawned {
            // The id went with the closure: dropping it rejects the request.
            log::error!("cannot start a thread for an iSER connection: {e}");
        }
    }
}

/// What a connection thread needs from its CONNECT_REQUEST event.
struct ConnectRequest {
    private_data: Vec<u8>,
    conn: EventConnParams,
}

fn protection_domain(pds: &Pds, ctx: &VerbsContext) -> rdma_ffi::Result<Arc<ProtectionDomain>> {
    let name = ctx.device_name();
    let mut pds = lock(pds);
    if let Some(pd) = pds.get(&name).and_then(Weak::upgrade) {
        return Ok(pd);
    }
    let pd = ProtectionDomain::new(ctx)?;
    pds.retain(|_, w| w.strong_count() > 0);
    pds.insert(name, Arc::downgrade(&pd));
    Ok(pd)
}

/// Sets up and accepts (or rejects) one connect request; `None` when it was rejected.
fn set_up_and_accept(
    id: CmId,
    request: &ConnectRequest,
    pds: &Pds,
    sizing: Sizing,
    mailbox: &Mailbox,
    guard: &mut RouteGuard,
) -> Option<Resources> {
    let peer = id
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    // rdma_cm swaps the depths for the passive side (Linux drivers/infiniband/core/cm.c
    // `cm_format_req_event`): our initiator_depth is the initiator's responder_resources, the RDMA
    // Reads it lets us have outstanding. Without any, no WRITE beyond its immediate data could
    // ever be fetched.
    if request.conn.initiator_depth == 0 {
        log::warn!(
            "{peer}: the initiator offers no RDMA Read resources (responder_resources 0); \
             iSER needs RDMA Read to fetch write data: rejecting the connection"
        );
        let _ = id.reject(&[]);
        return None;
    }
    match set_up(id, request, pds, sizing) {
        Ok((res, params)) => {
            guard.route_qp(res.device.clone(), res.qp.qp_num(), mailbox);
            if let Err(e) = res.qp.id().accept(&params) {
                log::warn!("{peer}: rdma_accept: {e}");
                return None;
            }
            log::debug!(
                "{peer}: accepted (initiator_depth {}, {} login receive buffers, {} send WRs)",
                params.initiator_depth,
                LOGIN_RECV_SLOTS,
                res.max_send_wr
            );
            Some(res)
        }
        Err((e, id)) => {
            log::warn!("{peer}: cannot set up the connection: {e}; rejecting");
            if let Some(id) = id {
                let _ = id.reject(&[]);
            }
            None
        }
    }
}

/// Creates the connection's verbs objects and posts the login receive buffers. The QP and CQs
/// are sized for full feature phase; its buffers come at login ([`Resources::full_feature`]).
#[allow(clippy::type_complexity)]
fn set_up(
    id: CmId,
    request: &ConnectRequest,
    pds: &Pds,
    sizing: Sizing,
) -> Result<(Resources, ConnParams), (String, Option<CmId>)> {
    let Some(ctx) = id.verbs() else {
        return Err(("no RDMA device behind the connection".into(), Some(id)));
    };
    macro_rules! try_id {
        ($e:expr, $what:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((format!("{}: {e}", $what), Some(id))),
            }
        };
    }
    let attrs = try_id!(ctx.attrs(), "querying the device");
    let pd = try_id!(protection_domain(pds, &ctx), "allocating a PD");
    let max_wr = attrs.max_qp_wr.max(1) as u32;
    let login_slots = LOGIN_RECV_SLOTS.min(max_wr);
    let recv_slots = sizing.recv_slots.min(max_wr - login_slots);
    // One WR of the send queue is kept for the drain marker.
    let max_send_wr = sizing.max_send_wr.min(max_wr - 1).max(1);
    let max_cqe = attrs.max_cqe.max(1);
    let channel = try_id!(
        CompletionChannel::new(&ctx),
        "creating a completion channel"
    );
    try_id!(channel.set_nonblocking(true), "completion channel");
    let send_cq = try_id!(
        CompletionQueue::new(&ctx, (max_send_wr as i32 + 1).min(max_cqe), Some(&channel)),
        "creating the send CQ"
    );
    let recv_cq = try_id!(
        CompletionQueue::new(
            &ctx,
            ((recv_slots + login_slots) as i32).min(max_cqe),
            Some(&channel)
        ),
        "creating the receive CQ"
    );
    let caps = QpCaps {
        max_send_wr: max_send_wr + 1,
        max_recv_wr: recv_slots + login_slots,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let qp = match QueuePair::create(id, &pd, &send_cq, &recv_cq, caps) {
        Ok(qp) => qp,
        Err(e) => return Err((format!("creating the QP: {}", e.error), Some(e.id))),
    };
    let fail = |what: &str, e: rdma_ffi::Error| {
        let _ = qp.id().reject(&[]);
        (format!("{what}: {e}"), None)
    };
    // The login receive buffers are posted before rdma_accept, as LIO's ib_isert.c
    // `isert_connect_request` does (`isert_login_post_recv`), since the first Login Request can
    // arrive before ESTABLISHED.
    let login_mr = MemoryRegion::new(&pd, login_slots as usize * RECV_STRIDE, Access::LOCAL_WRITE)
        .map_err(|e| fail("registering login receive buffers", e))?;
    for slot in 0..login_slots {
        qp.post_recv(
            driver::recv_wr_id(driver::LOGIN_AREA, slot),
            &login_mr,
            slot as usize * RECV_STRIDE,
            RECV_STRIDE,
        )
        .map_err(|e| fail("posting receive buffers", e))?;
    }
    let initiator_depth = (request.conn.initiator_depth as i32)
        .min(attrs.max_qp_init_rd_atom)
        .clamp(1, u8::MAX as i32) as u8;
    let params = ConnParams {
        private_data: accept_private_data(&request.private_data).to_vec(),
        initiator_depth,
        responder_resources: 0,
        retry_count: 7,
        rnr_retry_count: 7,
    };
    let res = Resources {
        device: ctx.device_name(),
        qp,
        send_cq,
        recv_cq,
        channel,
        pd,
        recv_areas: vec![login_mr],
        recv_stride: RECV_STRIDE,
        full_recv_slots: recv_slots,
        arena_len: sizing.arena,
        max_send_wr: max_send_wr as usize,
        max_rdma_reads: (initiator_depth as usize).min(MAX_RDMA_READS),
        max_pending_sends: sizing.max_pending_sends,
        send_with_invalidate: initiator_allows_send_with_invalidate(&request.private_data),
    };
    Ok((res, params))
}

/// Checks that this host has an RDMA device before an iSER portal is started.
pub(super) fn check_devices() -> Result<(), String> {
    match rdma_ffi::list_devices() {
        Ok(devices) if !devices.is_empty() => Ok(()),
        Ok(_) => Err(format!("no RDMA device found; {SOFTROCE_HINT}")),
        Err(e) => Err(format!("cannot list RDMA devices ({e}); {SOFTROCE_HINT}")),
    }
}

/// True when some RDMA device has an active port (the default configuration then adds an iSER
/// portal).
pub fn rdma_available() -> bool {
    rdma_ffi::list_devices().is_ok_and(|devices| {
        devices.iter().any(|d| {
            d.ports
                .iter()
                .any(|p| p.state == rdma_ffi::PortState::Active)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_follows_the_limits() {
        let s = Sizing::new(&Limits::default());
        assert_eq!(s.recv_slots, 128 + RECV_HEADROOM);
        assert_eq!(s.max_send_wr, 2 * 128 + SEND_HEADROOM);
        assert_eq!(s.arena, 2 << 20, "4 x 512 KiB");
        assert_eq!(s.max_pending_sends, 2 * (128 + RECV_HEADROOM) as usize);
        let big = Sizing::new(&Limits {
            max_io_size: 16 << 20,
            ..Limits::default()
        });
        assert_eq!(big.arena, 64 << 20, "clamped");
    }

    #[test]
    fn bind_errors_say_what_is_missing() {
        let addr: SocketAddr = "192.0.2.1:3260".parse().unwrap();
        let os = |errno| rdma_ffi::Error::Os {
            op: "rdma_bind_addr",
            source: std::io::Error::from_raw_os_error(errno),
        };
        for errno in [libc::ENODEV, libc::EADDRNOTAVAIL] {
            let m = describe_bind_error(addr, &os(errno));
            assert!(m.contains("not an address of an RDMA device"), "{m}");
            assert!(m.contains("rdma link add rxe0 type rxe"), "{m}");
        }
        assert!(describe_bind_error(addr, &os(libc::EADDRINUSE)).contains("already uses"));
    }

    /// An iSER portal starts only on a host with an RDMA device. Without one (CI) start-up fails
    /// with advice instead of serving TCP only; with one, the device check lets it through.
    #[test]
    fn iser_portal_starts_only_with_an_rdma_device() {
        let config = crate::config::Config::from_yaml_str(
            "portals: [{address: 127.0.0.1, port: 1, transport: iser}]\n\
             targets: [{name: iqn.2026-11.org.example:t, luns: [{backing: {type: ram, size: 1M}}]}]\n",
        )
        .unwrap();
        let devices = rdma_ffi::list_devices();
        let start = crate::server::Server::start(&config).map(|server| server.shutdown());
        match devices {
            Ok(devices) if !devices.is_empty() => {
                assert_eq!(check_devices(), Ok(()));
                if let Err(e) = start {
                    // 127.0.0.1:1 need not be a usable RDMA address; the device check passed.
                    assert!(!matches!(e, ServerError::RdmaUnavailable(_)), "{e}");
                }
            }
            listing => {
                let err = start
                    .expect_err("started without an RDMA device")
                    .to_string();
                let wanted = match listing {
                    Ok(_) => "no RDMA device found",
                    Err(_) => "cannot list RDMA devices",
                };
                assert!(err.contains(wanted), "{err}");
                assert!(err.contains("rdma link add"), "{err}");
            }
        }
    }
}
