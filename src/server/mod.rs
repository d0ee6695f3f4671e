//! The running target: opens the backends, binds the portals, accepts connections and shuts down
//! cleanly. Transports only move bytes; every protocol decision is made in [`crate::iscsi`].

mod access;
mod admission;
mod control;
mod engine;
mod gate;
pub mod iser;
mod metrics;
mod nvme;
mod registry;
mod session;
mod state_dir;
mod tcp;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, FileBackend, RamBackend, RbdBackend, RbdReservationStore,
};
use crate::config::{Backing, Config, Transport};
use crate::iscsi::chap::RandomUnavailable;
use crate::iscsi::text::TargetPolicy;
use crate::iscsi::{CoreConfig, TargetDescriptor};
use crate::scsi::{
    AluaPort, AluaState, LogicalUnit, LunParams, ReservationStore, Reservations, ScsiTarget,
    SharedError, SharedReservationStore,
};
use access::{CurrentCore, Refusals};
use state_dir::StateDir;

pub use admission::{Admission, AdmissionTicket, PortalKey, Refusal};
pub use engine::Heartbeat;
pub use registry::{SessionControl, SessionGuard, SessionListing, SessionOrigin, SessionRegistry};

/// How long shutdown waits for connections to finish their running commands.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a reinstating login waits for the old session to close.
const REINSTATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A LUN's backing store could not be opened.
    #[error("target {target} LUN {lun}: {source}")]
    Backend {
        target: String,
        lun: u64,
        source: BackendError,
    },
    /// The state directory could not be used, or a LU's saved reservations not read back.
    #[error("state_dir: {0}")]
    StateDir(String),
    /// A portal could not be bound.
    #[error("portal {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The metrics endpoint (`metrics:`) could not be bound.
    #[error("metrics {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// An iSER portal could not be started (no RDMA device, address not on one...).
    #[error("iSER portal {addr}: {message}")]
    Rdma { addr: SocketAddr, message: String },
    /// iSER portals are configured but this host cannot serve them.
    #[error("iSER: {0}")]
    RdmaUnavailable(String),
    /// NVMe/TCP portals are configured but this host cannot serve them (no io_uring).
    #[error("NVMe/TCP: {0}")]
    NvmeUnavailable(String),
    /// Flushing the backends at shutdown failed: acknowledged writes may not be durable.
    #[error("flushing target {target}: {source}")]
    Flush {
        target: String,
        source: BackendError,
    },
    /// Any other I/O failure (thread creation).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Live connections, so shutdown can reach those still logging in.
pub(crate) struct ConnectionSet {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<dyn SessionControl>>>,
    emptied: Condvar,
}

/// Removes a connection from the set when its thread ends.
pub(crate) struct ConnectionRegistration {
    set: Arc<ConnectionSet>,
    id: u64,
}

impl Drop for ConnectionRegistration {
    fn drop(&mut self) {
        let mut live = self.set.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&self.id);
        if live.is_empty() {
            self.set.emptied.notify_all();
        }
    }
}

impl ConnectionSet {
    fn new() -> Arc<Self> {
        Arc::new(ConnectionSet {
            next_id: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            emptied: Condvar::new(),
        })
    }

    fn register(set: &Arc<Self>, control: Arc<dyn SessionControl>) -> ConnectionRegistration {
        let id = set.next_id.fetch_add(1, Ordering::Relaxed);
        set.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, control);
        ConnectionRegistration {
            set: Arc::clone(set),
            id,
        }
    }

    /// Asks every connection to finish and close; waits up to `grace`. Returns those left.
    fn shut_down_all(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for control in live.values() {
            control.request_shutdown();
        }
        while !live.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            live = self
                .emptied
                .wait_timeout(live, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        live.len()
    }
}

/// State shared by all connections.
pub(crate) struct Shared {
    pub(crate) targets: Vec<crate::config::Target>,
    pub(crate) scsi_targets: Vec<Arc<ScsiTarget>>,
    pub(crate) registry: Arc<SessionRegistry>,
    pub(crate) connections: Arc<ConnectionSet>,
    /// Connection caps per portal and per source address.
    pub(crate) admission: Arc<Admission>,
    /// The process-wide I/O engine running every session's commands.
    pub(crate) engine: engine::Engine,
    /// What new iSCSI/TCP and iSER connections start with (access control changes on reload).
    pub(crate) tcp_core: Arc<CurrentCore>,
    pub(crate) iser_core: Arc<CurrentCore>,
    /// Logins and connects refused, counted for the status report and the metrics.
    pub(crate) refusals: Refusals,
    stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether `initiator` may log in to target `target` under the access control in force
    /// now (both transports' cores carry the same target descriptors).
    pub(crate) fn allows(&self, target: usize, initiator: &str) -> bool {
        self.tcp_core
            .get()
            .targets
            .get(target)
            .is_some_and(|t| t.allows(initiator))
    }
}

/// Logged once [`Server::start`] has started every portal and service thread.
pub const READY_LINE: &str = "ready: every portal accepts connections";

/// A started target: listening on its portals until [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    stop_accepting: Arc<AtomicBool>,
    listeners: Vec<JoinHandle<()>>,
    /// iSER event threads; they outlive the TCP listeners so closing connections still get
    /// their rdma_cm events.
    iser_portals: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// The NVMe/TCP view (its ANA state follows the ALUA state).
    nvme: Arc<nvme::NvmeState>,
    /// The state directory, locked for as long as the server runs.
    state_dir: Option<StateDir>,
}

/// Opens one LUN's backing store, and for an RBD image the persistent reservations its
/// gateways share. With the write cache off, files and devices are opened write-through
/// (O_DSYNC) so every write is durable before GOOD.
fn open_backend(
    lun: &crate::config::Lun,
) -> Result<(Arc<dyn Backend>, Option<RbdReservationStore>), BackendError> {
    let write_through = !lun.write_cache;
    Ok(match &lun.backing {
        Backing::Ram { size } => (Arc::new(RamBackend::new(*size)), None),
        Backing::File { path, size, create } => (
            Arc::new(FileBackend::open(path, *size, *create, write_through)?),
            None,
        ),
        Backing::Block { path } => (
            Arc::new(FileBackend::open_device(path, write_through)?),
            None,
        ),
        Backing::Rbd(rbd) => {
            let backend = RbdBackend::open(rbd, lun.write_cache)?;
            let shared = backend.reservation_store()?;
            (Arc::new(backend), Some(shared))
        }
    })
}

/// Whether NVMe/TCP portals can be served here: they need io_uring (the engine threads wait
/// for their sockets in their rings).
pub fn nvme_tcp_available() -> bool {
    uring_ffi::Ring::<mem_ffi::Buf>::new(8).is_ok()
}

/// Builds the SCSI view of every configured target. With a `state_dir`, each LU's
/// reservations persist there when an initiator asks (APTPL), restored from what it holds.
pub fn build_scsi_targets(config: &Config) -> Result<Vec<Arc<ScsiTarget>>, ServerError> {
    build_scsi_targets_in(config, open_state_dir(config)?.as_ref())
}

/// The configured state directory, opened and locked.
fn open_state_dir(config: &Config) -> Result<Option<StateDir>, ServerError> {
    config
        .state_dir
        .as_deref()
        .map(StateDir::open)
        .transpose()
        .map_err(|e| ServerError::StateDir(e.to_string()))
}

/// [`build_scsi_targets`] with the state directory already open.
fn build_scsi_targets_in(
    config: &Config,
    state_dir: Option<&StateDir>,
) -> Result<Vec<Arc<ScsiTarget>>, ServerError> {
    let mut out = Vec::new();
    for target in &config.targets {
        let mut luns = Vec::new();
        for lun in &target.luns {
            let failed = |source| ServerError::Backend {
                target: target.name.clone(),
                lun: lun.id,
                source,
            };
            let (backend, shared) = open_backend(lun).map_err(failed)?;
            let port = config.target_port_group;
            let shared_failed = |store: &RbdReservationStore, e: SharedError| {
                let kind = match &e {
                    SharedError::Store(e) => e.kind(),
                    SharedError::Saved(_) => std::io::ErrorKind::InvalidData,
                };
                failed(BackendError::new(
                    kind,
                    format!("persistent reservations in {}: {e}", store.location()),
                ))
            };
            let params = LunParams {
                lun: lun.id,
                block_size: lun.block_size,
                read_only: lun.read_only,
                write_cache: lun.write_cache,
                serial: lun.serial.clone(),
                naa_id: lun.identifier,
                vendor: "ISERTGT".into(),
                product: "iser-target".into(),
                revision: format!(
                    "{}.{}",
                    env!("CARGO_PKG_VERSION_MAJOR"),
                    env!("CARGO_PKG_VERSION_MINOR")
                ),
                alua: AluaPort {
                    group: config.target_port_group,
                    state: config.alua_state,
                },
            };
            log::info!(
                "{} LUN {}: {} backend, {} bytes{}",
                target.name,
                lun.id,
                backend.kind(),
                backend.size(),
                if lun.read_only { ", read-only" } else { "" }
            );
            let reservations = match (&shared, state_dir) {
                // The image's gateways share its reservations; they persist with the image.
                // A record this gateway saved before is where the first gateway starts from.
                (Some(store), dir) => {
                    let saved = match dir {
                        Some(dir) => {
                            dir.reservation_store(params.naa_designator())
                                .map_err(|e| ServerError::StateDir(e.to_string()))?
                                .1
                        }
                        None => None,
                    };
                    Reservations::shared(port, Box::new(store.clone()), saved.as_deref())
                        .map_err(|e| shared_failed(store, e))?
                }
                (None, Some(dir)) => {
                    let (store, saved) = dir
                        .reservation_store(params.naa_designator())
                        .map_err(|e| ServerError::StateDir(e.to_string()))?;
                    let location = store.location();
                    Reservations::persistent(port, Box::new(store), saved.as_deref()).map_err(
                        |e| {
                            ServerError::StateDir(format!(
                                "{location}: {e} (the saved persistent reservations of {} LUN {}; \
                             move the file away to start without them)",
                                target.name, lun.id
                            ))
                        },
                    )?
                }
                (None, None) => Reservations::in_memory(port),
            };
            let lu = Arc::new(LogicalUnit::with_reservations(
                params,
                backend,
                reservations,
            ));
            if let Some(store) = &shared {
                store
                    .deliver_to(&lu)
                    .map_err(|e| shared_failed(store, e.into()))?;
                log::info!(
                    "{} LUN {}: persistent reservations shared with the image's other \
                     gateways in {} (this gateway is client.{} there)",
                    target.name,
                    lun.id,
                    store.location(),
                    store.client_id()
                );
            }
            luns.push(lu);
        }
        out.push(Arc::new(ScsiTarget::new(luns)));
    }
    Ok(out)
}

/// The core's view of one target: its name, ACL, CHAP credentials and LUN numbers.
fn target_descriptor(target: &crate::config::Target) -> TargetDescriptor {
    TargetDescriptor {
        name: target.name.clone(),
        allowed_initiators: target.allowed_initiators.clone(),
        luns: target.luns.iter().map(|l| l.id).collect(),
        auth: target.auth.clone(),
        initiator_auth: target.initiator_auth.clone(),
    }
}

/// The core's view of the configuration for the portals of one transport.
fn core_config(
    config: &Config,
    transport: Transport,
    policy: TargetPolicy,
    max_transfer_length: u32,
) -> CoreConfig {
    let limits = &config.limits;
    let portals = config
        .portals
        .iter()
        .filter(|p| p.transport == transport)
        .map(|p| SocketAddr::new(p.address, p.port))
        .collect();
    CoreConfig {
        targets: config.targets.iter().map(target_descriptor).collect(),
        portals,
        // One port per gateway process: its portal group tag is its target port group.
        portal_group_tag: config.target_port_group,
        policy,
        queue_depth: limits.queue_depth,
        max_transfer_length,
        nop_interval: (limits.nop_interval_secs > 0)
            .then(|| Duration::from_secs(limits.nop_interval_secs)),
        nop_timeout: Duration::from_secs(limits.nop_timeout_secs),
        login_timeout: Duration::from_secs(limits.login_timeout_secs),
        discovery_idle_timeout: Duration::from_secs(limits.discovery_idle_timeout_secs),
        discovery_auth: config.discovery_auth.clone(),
        random: os_random,
    }
}

/// CHAP identifiers and challenges (iSCSI's and NVMe's) come from the operating system's CSPRNG
/// (getrandom(2)).
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    getrandom::fill(buf).map_err(|e| RandomUnavailable(e.to_string()))
}

/// The core configuration of the TCP portals (public so the data-path benchmark drives the core
/// exactly as the server configures it).
pub fn tcp_core_config(config: &Config) -> CoreConfig {
    let limits = &config.limits;
    let policy = TargetPolicy {
        max_recv_data_segment_length: limits.max_recv_data_segment_length,
        max_burst_length: limits.max_burst_length,
        first_burst_length: limits.first_burst_length,
        max_outstanding_r2t: limits.max_outstanding_r2t,
        digests_allowed: true,
        require_initial_r2t: false,
        iser: false,
    };
    core_config(
        config,
        Transport::Tcp,
        policy,
        crate::scsi::MAX_TRANSFER_BYTES,
    )
}

/// The core configuration of the iSER portals: no digests (RFC 7145 §6.1), InitialR2T=Yes (see
/// [`TargetPolicy::require_initial_r2t`]), receive-buffer-sized data segments, bursts of at most
/// `max_io_size`. Public, as [`tcp_core_config`], for the data-path benchmark.
pub fn iser_core_config(config: &Config) -> CoreConfig {
    let limits = &config.limits;
    let max_io = limits.max_io_size;
    let policy = TargetPolicy {
        max_recv_data_segment_length: iser::RECV_DATA_CAPACITY as u32,
        max_burst_length: max_io,
        first_burst_length: limits.first_burst_length.min(max_io),
        max_outstanding_r2t: limits.max_outstanding_r2t,
        digests_allowed: false,
        require_initial_r2t: true,
        iser: true,
    };
    // RDMA moves data straight from and into the commands' pool buffers, whatever their size.
    core_config(
        config,
        Transport::Iser,
        policy,
        crate::scsi::MAX_TRANSFER_BYTES,
    )
}

impl Server {
    /// Opens every backend, binds every portal and starts accepting.
    pub fn start(config: &Config) -> Result<Server, ServerError> {
        let wants_iser = config
            .portals
            .iter()
            .any(|p| p.transport == Transport::Iser);
        if wants_iser {
            iser::check_devices().map_err(ServerError::RdmaUnavailable)?;
            match rdma_ffi::raise_memlock_limit() {
                Ok(u64::MAX) => {}
                Ok(limit) if limit < 64 << 20 => log::warn!(
                    "RLIMIT_MEMLOCK is only {limit} bytes; iSER connections may fail to register \
                     buffers (raise it with `ulimit -l unlimited` or LimitMEMLOCK=infinity)"
                ),
                Ok(_) => {}
                Err(e) => {
                    return Err(ServerError::RdmaUnavailable(format!(
                        "cannot raise RLIMIT_MEMLOCK ({e}); registering RDMA buffers needs \
                         locked memory: run with `ulimit -l unlimited` or LimitMEMLOCK=infinity"
                    )))
                }
            }
        }
        let descriptors = admission::descriptors_needed(config.portals.len(), &config.limits);
        match admission::raise_open_file_limit(descriptors) {
            Ok(limit) if limit < descriptors => log::warn!(
                "the open-file limit is {limit} descriptors, fewer than the {descriptors} the \
                 connection caps can take; connections beyond it fail with EMFILE (raise it with \
                 `ulimit -n` or LimitNOFILE=)"
            ),
            Ok(_) => {}
            Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
        }
        let started = Instant::now();
        let state_dir = open_state_dir(config)?;
        let scsi_targets = build_scsi_targets_in(config, state_dir.as_ref())?;
        let engine = engine::Engine::start(
            scsi_targets.clone(),
            config.limits.io_threads as usize,
            engine::IoMode::Auto,
        )?;
        engine.set_busy_poll(Duration::from_micros(config.limits.busy_poll_us.into()));
        log::info!(
            "I/O engine: {} thread(s), file and block I/O {}",
            config.limits.io_threads,
            if engine.uses_io_uring() {
                "through io_uring"
            } else {
                "on the blocking pool (no io_uring)"
            }
        );
        let shared = Arc::new(Shared {
            targets: config.targets.clone(),
            scsi_targets,
            registry: SessionRegistry::new(
                config.limits.max_sessions as usize,
                config.limits.max_discovery_sessions as usize,
                REINSTATE_TIMEOUT,
            ),
            connections: ConnectionSet::new(),
            admission: Admission::new(&config.limits),
            engine,
            tcp_core: CurrentCore::new(tcp_core_config(config)),
            iser_core: CurrentCore::new(iser_core_config(config)),
            refusals: Refusals::default(),
            stopping: AtomicBool::new(false),
        });
        let sizing = iser::Sizing::new(&config.limits);
        let wants_nvme = config.portals.iter().any(|p| p.transport.is_nvme());
        if wants_nvme {
            nvme::check_available(&shared).map_err(ServerError::NvmeUnavailable)?;
        }
        // NVMe/TCP portals are bound first: the discovery log names their real ports.
        let mut nvme_listeners = Vec::new();
        for portal in config.portals.iter().filter(|p| p.transport.is_nvme()) {
            let addr = SocketAddr::new(portal.address, portal.port);
            let listener =
                TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
            listener.set_nonblocking(true)?;
            let bound = SocketAddr::new(portal.address, listener.local_addr()?.port());
            nvme_listeners.push((portal.transport, bound, listener));
        }
        let bound = |kind: Transport| -> Vec<SocketAddr> {
            let of_kind = nvme_listeners.iter().filter(|(t, _, _)| *t == kind);
            of_kind.map(|(_, a, _)| *a).collect()
        };
        let nvme_state = nvme::NvmeState::new(
            config,
            &shared.scsi_targets,
            &bound(Transport::NvmeTcp),
            &bound(Transport::NvmeTcpDiscovery),
        );
        let mut nvme_listeners = nvme_listeners.into_iter();
        let stop_accepting = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            shared,
            stop_accepting,
            listeners: Vec::new(),
            iser_portals: Vec::new(),
            local_addrs: Vec::new(),
            nvme: Arc::clone(&nvme_state),
            state_dir,
        };
        for portal in &config.portals {
            let addr = SocketAddr::new(portal.address, portal.port);
            let started = match portal.transport {
                Transport::Tcp => server.start_tcp(addr),
                Transport::Iser => iser::start_portal(
                    addr,
                    Arc::clone(&server.shared),
                    sizing,
                    Arc::clone(&server.stop_accepting),
                )
                .map(|p| {
                    server.local_addrs.push(p.local);
                    server.iser_portals.push(p.thread);
                }),
                Transport::NvmeTcp | Transport::NvmeTcpDiscovery => match nvme_listeners.next() {
                    Some((transport, _, listener)) => {
                        server.start_nvme(listener, transport, addr, &nvme_state)
                    }
                    None => Ok(()),
                },
            };
            if let Err(e) = started {
                // Do not leave the portals already started running.
                let _ = server.shutdown();
                return Err(e);
            }
        }
        if let Err(e) = server.start_control(config, started) {
            let _ = server.shutdown();
            return Err(e);
        }
        // Every listener, control and metrics thread runs by now; scripts and tests wait for it.
        log::info!("{READY_LINE}");
        Ok(server)
    }

    /// Answers `iser-target status` on the state directory's control socket (none without a
    /// state directory), and serves Prometheus metrics where `metrics:` says.
    fn start_control(&mut self, config: &Config, started: Instant) -> Result<(), ServerError> {
        let source = Arc::new(control::StatusSource {
            shared: Arc::clone(&self.shared),
            nvme: Arc::clone(&self.nvme),
            // Every portal bound one address, in the configuration's order.
            portals: config
                .portals
                .iter()
                .map(|p| p.transport)
                .zip(self.local_addrs.iter().copied())
                .collect(),
            started,
        });
        if let Some(dir) = &self.state_dir {
            let path = crate::status::control_socket(dir.path());
            let stop = Arc::clone(&self.stop_accepting);
            let thread = control::spawn(path, Arc::clone(&source), stop)
                .map_err(|e| ServerError::StateDir(e.to_string()))?;
            self.listeners.push(thread);
        }
        if let Some(addr) = config.metrics {
            let stop = Arc::clone(&self.stop_accepting);
            let thread = metrics::spawn(addr, source, stop)
                .map_err(|source| ServerError::Metrics { addr, source })?;
            self.listeners.push(thread);
        }
        Ok(())
    }

    fn start_tcp(&mut self, addr: SocketAddr) -> Result<(), ServerError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        listener.set_nonblocking(true)?;
        self.local_addrs.push(listener.local_addr()?);
        log::info!("listening on {addr} (tcp)");
        self.listeners.push(tcp::spawn_listener(
            listener,
            PortalKey {
                transport: Transport::Tcp,
                addr,
            },
            Arc::clone(&self.shared),
            Arc::clone(&self.stop_accepting),
        )?);
        Ok(())
    }

    fn start_nvme(
        &mut self,
        listener: TcpListener,
        transport: Transport,
        addr: SocketAddr,
        state: &Arc<nvme::NvmeState>,
    ) -> Result<(), ServerError> {
        self.local_addrs.push(listener.local_addr()?);
        let key = PortalKey { transport, addr };
        log::info!("listening on {key}");
        self.listeners.push(nvme::spawn_listener(
            listener,
            key,
            Arc::clone(state),
            Arc::clone(&self.shared),
            Arc::clone(&self.stop_accepting),
        )?);
        Ok(())
    }

    /// Applies a reloaded configuration's access control (see
    /// [`crate::config::Reload::access_changed`]; `config` differs from the running one in
    /// nothing else but file sizes): logins and NVMe connects from now on are checked against
    /// its `allowed_initiators`, CHAP credentials, `discovery_auth` and `allowed_hosts`, and
    /// the iSCSI sessions and NVMe controllers of initiators and hosts it no longer allows are
    /// ended, each logged. Sessions of initiators still allowed keep running, whatever their
    /// credentials now (they prove themselves again at their next login, as in LIO and nvmet).
    /// A discovery session ends too when its initiator may no longer see a target it could
    /// (SendTargets would still list it) or when `discovery_auth` changed: it logs in again
    /// under the new lists and credentials.
    pub fn set_access(&self, config: &Config) {
        let before = self.shared.tcp_core.get();
        let core = self.shared.tcp_core.set_access(config);
        self.shared.iser_core.set_access(config);
        let may_see = |core: &CoreConfig, target: &str, initiator: &str| {
            core.targets
                .iter()
                .any(|t| t.name.eq_ignore_ascii_case(target) && t.allows(initiator))
        };
        let refused = |session: &SessionListing| match session.target.as_deref() {
            Some(name) => !may_see(&core, name, &session.initiator),
            None => {
                core.discovery_auth != before.discovery_auth
                    || before.targets.iter().any(|t| {
                        t.allows(&session.initiator) && !may_see(&core, &t.name, &session.initiator)
                    })
            }
        };
        for session in self.shared.registry.shut_down_where(refused) {
            match session.target {
                Some(target) => log::warn!(
                    "ending the session of {} on {target} (TSIH {}): the initiator is no \
                     longer in its allowed_initiators",
                    session.initiator,
                    session.tsih
                ),
                None => log::info!(
                    "ending the discovery session of {} (TSIH {}): the targets it may see or \
                     discovery_auth changed",
                    session.initiator,
                    session.tsih
                ),
            }
        }
        self.nvme.set_allowed_hosts(config);
    }

    /// Asks every engine thread to answer from its loop (see [`Heartbeat`]): the answers
    /// arrive in the returned value while the threads turn.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        self.shared.engine.heartbeat()
    }

    /// Changes this gateway's ALUA state while it runs (a reloaded configuration, to drain
    /// the gateway for maintenance or bring it back): every LU reports it through REPORT
    /// TARGET PORT GROUPS and its standby gating, with an ASYMMETRIC ACCESS STATE CHANGED
    /// unit attention for the I_T nexuses it has; NVMe/TCP controllers report the matching
    /// ANA state with an ANA change notice. Returns whether the state changed.
    pub fn set_alua_state(&self, state: AluaState) -> bool {
        let mut changed = false;
        for target in &self.shared.scsi_targets {
            for lu in target.luns() {
                changed |= lu.set_alua_state(state);
            }
        }
        changed |= self.nvme.set_alua_state(state);
        changed
    }

    /// Grows file and block LUNs while they serve (SIGHUP): a file LUN to the `size` `config`
    /// gives it, or without one to the file's length now; a block LUN to its device's size
    /// now. LUNs are matched by target name, LUN id and backing path. Each LU reports its new
    /// capacity from its next command (a CAPACITY DATA HAS CHANGED unit attention; over
    /// NVMe/TCP a Namespace Attribute Changed notice). Returns false when a LUN could not
    /// grow (asked to shrink, or the file could not be extended): the others still do.
    pub fn grow_luns(&self, config: &Config) -> bool {
        let mut all_grew = true;
        for (running, scsi) in self.shared.targets.iter().zip(&self.shared.scsi_targets) {
            let Some(wanted) = config.targets.iter().find(|t| t.name == running.name) else {
                continue;
            };
            for lun in &running.luns {
                let Some(new) = wanted.luns.iter().find(|l| l.id == lun.id) else {
                    continue;
                };
                let size = match (&lun.backing, &new.backing) {
                    (Backing::File { path: a, .. }, Backing::File { path: b, size, .. })
                        if a == b =>
                    {
                        *size
                    }
                    (Backing::Block { path: a }, Backing::Block { path: b }) if a == b => None,
                    _ => continue,
                };
                let Some(lu) = scsi.lun(lun.id) else {
                    continue;
                };
                match lu.backend().grow(size) {
                    Ok(Some(bytes)) => {
                        log::info!("{} LUN {}: grew to {bytes} bytes", running.name, lun.id)
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::error!("{} LUN {}: {e}", running.name, lun.id);
                        all_grew = false;
                    }
                }
            }
        }
        all_grew
    }

    /// The bound portal addresses (with the real port when 0 was configured).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, lets connections finish their running commands and close, drains the
    /// I/O engine, then flushes every backend so acknowledged writes are durable.
    pub fn shutdown(self) -> Result<(), ServerError> {
        self.stop_accepting.store(true, Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        for handle in self.listeners {
            let _ = handle.join();
        }
        self.shared.registry.shutdown_all();
        let left = self.shared.connections.shut_down_all(SHUTDOWN_GRACE);
        if left > 0 {
            log::warn!("{left} connection(s) did not finish within {SHUTDOWN_GRACE:?}");
        }
        for handle in self.iser_portals {
            let _ = handle.join();
        }
        // Every command the engine accepted completes before the backends are flushed, so a
        // write acknowledged at the last moment is covered by the flush.
        self.shared.engine.shutdown();
        for (target, scsi) in self.shared.targets.iter().zip(&self.shared.scsi_targets) {
            scsi.flush_all().map_err(|source| ServerError::Flush {
                target: target.name.clone(),
                source,
            })?;
        }
        Ok(())
    }
}
