//! iSCSI over RDMA (iSER, RFC 7145): one rdma_cm event thread per portal accepts connections and
//! routes later CM events; every connection then runs on its own thread ([`driver`]) that moves
//! bytes between the queue pair and the sans-IO [`crate::iscsi::iser::IserConnection`].
//!
//! Accept (brief §2.3): PD per device (shared while connections use it), one completion channel
//! for the send and receive CQs, an RC QP sized from the queue depth, every receive buffer posted
//! before `rdma_accept`, private data from [`accept_private_data`], initiator depth limited by
//! the device, responder resources 0.

mod driver;
mod ring;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdma_ffi::{
    Access, CmEvent, CmEventKind, CmId, CompletionChannel, CompletionQueue, ConnParams,
    EventChannel, MemoryRegion, ProtectionDomain, QpCaps, QueuePair,
};

use super::{ServerError, Shared, SHUTDOWN_GRACE};
use crate::config::Limits;
use crate::iscsi::iser::{
    accept_private_data, initiator_allows_send_with_invalidate, RECV_BUFFER_LEN,
};
use crate::iscsi::CoreConfig;
use driver::{Doorbell, Event, Mailbox, Resources, WR_RECV};

pub use crate::iscsi::iser::RECV_DATA_CAPACITY;

/// How to create a SoftRoCE device, for error messages.
pub const SOFTROCE_HINT: &str =
    "create a SoftRoCE device with `modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0` \
     (use the netdev that carries the portal address), or use `transport: tcp`";

/// Receive buffer stride: the adapter's buffer size rounded to 64 bytes.
const RECV_STRIDE: usize = RECV_BUFFER_LEN.div_ceil(64) * 64;
const _: () = assert!(RECV_STRIDE >= RECV_BUFFER_LEN && RECV_STRIDE % 64 == 0);
/// Receive buffers beyond the CmdSN window: immediate PDUs (NOP-Out, TMF, Logout, Text) and
/// NOP-Out answers to our pings (brief §4.3).
const RECV_HEADROOM: u32 = 16;
/// Send-queue room beyond two WRs per command (RDMA ops plus response).
const SEND_HEADROOM: u32 = 32;
/// Most RDMA Reads one connection keeps in flight, whatever the initiator allows.
const MAX_RDMA_READS: usize = 16;
/// How often a lost listener (device removed) is re-created.
const RELISTEN_INTERVAL: Duration = Duration::from_secs(1);

/// Sizes derived from the configuration.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizing {
    recv_slots: u32,
    max_send_wr: u32,
    arena: usize,
}

impl Sizing {
    pub(super) fn new(limits: &Limits) -> Self {
        let qd = limits.queue_depth;
        Sizing {
            recv_slots: qd + RECV_HEADROOM,
            max_send_wr: 2 * qd + SEND_HEADROOM,
            // Room for a few full bursts in flight; larger transfers register on the fly.
            arena: (4 * limits.max_io_size as usize).clamp(2 << 20, 64 << 20),
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
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    sizing: Sizing,
    stop: Arc<AtomicBool>,
) -> Result<Portal, ServerError> {
    let rdma = |source: rdma_ffi::Error| ServerError::Rdma {
        addr,
        message: describe_bind_error(addr, &source),
    };
    let channel = EventChannel::new().map_err(rdma)?;
    let listener = listen(&channel, addr).map_err(rdma)?;
    let local = listener.local_addr().unwrap_or(addr);
    let mut portal = Listener {
        addr,
        channel,
        listener: Some(listener),
        core,
        shared,
        sizing,
        stop,
        routes: Arc::new(Mutex::new(HashMap::new())),
        pds: HashMap::new(),
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

type Routes = Arc<Mutex<HashMap<u64, Mailbox>>>;

/// Removes a connection's route when its thread ends.
struct RouteGuard {
    routes: Routes,
    handle: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.handle);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Listener {
    addr: SocketAddr,
    channel: EventChannel,
    listener: Option<CmId>,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    sizing: Sizing,
    stop: Arc<AtomicBool>,
    routes: Routes,
    /// Protection domains by device name, shared by that device's connections.
    pds: HashMap<String, Weak<ProtectionDomain>>,
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
                if lock(&self.routes).is_empty() {
                    break;
                }
                if since.elapsed() > SHUTDOWN_GRACE + Duration::from_secs(10) {
                    log::warn!("{}: connections still open at shutdown", self.addr);
                    break;
                }
            } else if self.listener.is_none() {
                self.relisten();
            }
            match self.channel.get_event_timeout(Duration::from_millis(200)) {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => {}
                Err(e) => {
                    log::error!("{}: rdma_cm event channel: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        log::debug!("{}: iSER event thread finished", self.addr);
    }

    fn relisten(&mut self) {
        if self.relisten_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
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
                self.accept(id, &event);
            }
            CmEventKind::DeviceRemoval | CmEventKind::AddrChange if Some(event.id) == listener => {
                log::warn!(
                    "{}: {:?} on the listener; listening again when the address is back",
                    self.addr,
                    event.kind
                );
                self.listener = None;
                self.relisten_at = Some(Instant::now() + RELISTEN_INTERVAL);
            }
            kind => {
                let route = lock(&self.routes).get(&event.id).cloned();
                match route {
                    Some(mailbox) => mailbox.post(Event::Cm(kind)),
                    None => log::debug!("{}: {kind:?} for a finished connection", self.addr),
                }
            }
        }
    }

    fn protection_domain(
        &mut self,
        ctx: &rdma_ffi::VerbsContext,
    ) -> rdma_ffi::Result<Arc<ProtectionDomain>> {
        let name = ctx.device_name();
        if let Some(pd) = self.pds.get(&name).and_then(Weak::upgrade) {
            return Ok(pd);
        }
        let pd = ProtectionDomain::new(ctx)?;
        self.pds.retain(|_, w| w.strong_count() > 0);
        self.pds.insert(name, Arc::downgrade(&pd));
        Ok(pd)
    }

    fn accept(&mut self, id: CmId, event: &CmEvent) {
        let peer = id
            .peer_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let handle = id.handle();
        match self.set_up(id, event) {
            Ok((res, params)) => {
                let (events, inbox) = crossbeam_channel::unbounded();
                let bell = match Doorbell::new() {
                    Ok(b) => b,
                    Err(e) => {
                        log::error!("{peer}: eventfd: {e}");
                        let _ = res.qp.id().reject(&[]);
                        return;
                    }
                };
                let mailbox = Mailbox { events, bell };
                // Routed before accept: ESTABLISHED may be the very next event.
                lock(&self.routes).insert(handle, mailbox.clone());
                let guard = RouteGuard {
                    routes: Arc::clone(&self.routes),
                    handle,
                };
                if let Err(e) = res.qp.id().accept(&params) {
                    log::warn!("{peer}: rdma_accept: {e}");
                    return;
                }
                log::debug!(
                    "{peer}: accepted (initiator_depth {}, {} receive buffers, {} send WRs)",
                    params.initiator_depth,
                    self.sizing.recv_slots,
                    res.max_send_wr
                );
                let core = Arc::clone(&self.core);
                let shared = Arc::clone(&self.shared);
                let spawned = std::thread::Builder::new()
                    .name(format!("iser-conn-{peer}"))
                    .spawn(move || {
                        let _guard = guard;
                        driver::serve(res, core, shared, mailbox, inbox);
                    });
                if let Err(e) = spawned {
                    log::error!("cannot start a thread for {peer}: {e}");
                }
            }
            Err((e, id)) => {
                log::warn!("{peer}: cannot set up the connection: {e}; rejecting");
                if let Some(id) = id {
                    let _ = id.reject(&[]);
                }
            }
        }
    }

    /// Creates the connection's verbs objects and posts every receive buffer.
    #[allow(clippy::type_complexity)]
    fn set_up(
        &mut self,
        id: CmId,
        event: &CmEvent,
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
        let pd = try_id!(self.protection_domain(&ctx), "allocating a PD");
        let max_wr = attrs.max_qp_wr.max(1) as u32;
        let recv_slots = self.sizing.recv_slots.min(max_wr);
        // One WR of the send queue is kept for the drain marker.
        let max_send_wr = self.sizing.max_send_wr.min(max_wr - 1).max(1);
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
            CompletionQueue::new(&ctx, (recv_slots as i32).min(max_cqe), Some(&channel)),
            "creating the receive CQ"
        );
        let caps = QpCaps {
            max_send_wr: max_send_wr + 1,
            max_recv_wr: recv_slots,
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
        let recv_mr =
            MemoryRegion::new(&pd, recv_slots as usize * RECV_STRIDE, Access::LOCAL_WRITE)
                .map_err(|e| fail("registering receive buffers", e))?;
        let arena = MemoryRegion::new(&pd, self.sizing.arena, Access::LOCAL_WRITE)
            .map_err(|e| fail("registering the staging arena", e))?;
        for slot in 0..recv_slots as usize {
            qp.post_recv(
                WR_RECV | slot as u64,
                &recv_mr,
                slot * RECV_STRIDE,
                RECV_STRIDE,
            )
            .map_err(|e| fail("posting receive buffers", e))?;
        }
        let initiator_depth = (event.conn.initiator_depth as i32)
            .min(attrs.max_qp_init_rd_atom)
            .clamp(1, u8::MAX as i32) as u8;
        let params = ConnParams {
            private_data: accept_private_data(&event.private_data).to_vec(),
            initiator_depth,
            responder_resources: 0,
            retry_count: 7,
            rnr_retry_count: 7,
        };
        let res = Resources {
            qp,
            send_cq,
            recv_cq,
            channel,
            pd,
            recv_mr,
            recv_stride: RECV_STRIDE,
            arena,
            max_send_wr: max_send_wr as usize,
            max_rdma_reads: (initiator_depth as usize).min(MAX_RDMA_READS),
            send_with_invalidate: initiator_allows_send_with_invalidate(&event.private_data),
        };
        Ok((res, params))
    }
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
