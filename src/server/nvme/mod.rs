//! NVMe/TCP portals. Each accepted connection is one queue of a controller (NVMe/TCP 1.0 §2.1)
//! and lives on an I/O engine thread from the start, like a logged-in iSCSI/TCP connection
//! ([`resident`]): the thread polls its socket in its ring, feeds the sans-IO [`Queue`], runs
//! its I/O on the namespace's LUN as the equivalent SCSI command ([`crate::nvme::scsi`]) and
//! writes the PDUs. There is no login phase to park, so a portal's listener thread only
//! accepts and applies the connection caps.
//!
//! What spans connections is [`NvmeState`]: the controller registry (dynamic controller
//! model) and the live queues by controller and queue ID, through which a controller's reset,
//! shutdown or death (its admin queue closed, keep-alive expired) ends its I/O queues.
//!
//! NVMe/TCP portals need io_uring (the engine threads wait for sockets in their rings); where
//! it is unavailable the server refuses to start them, saying so.

mod resident;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::admission::PortalKey;
use super::engine::Residence;
use super::registry::SessionControl;
use super::Shared;
use crate::config::{Backing, Config};
use crate::nvme::registry::gateway_cntlids;
use crate::nvme::{
    AddressFamily, AllowedHost, AnaGroup, AnaState, ConnectRefusal, ControllerRegistry,
    DiscoveryEntry, NamespaceCapacity, NamespaceDescriptor, NamespaceReservations, NvmeConfig,
    SubsystemDescriptor, DISCOVERY_NQN,
};
use crate::scsi::{AluaState, LogicalUnit, ReservationNotice, ScsiTarget};
use crate::status::NvmeControllerStatus;

/// How often the listener looks at the stop flag while no connection arrives.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// Where a namespace's I/O goes: the LUN behind it.
#[derive(Debug, Clone, Copy)]
pub(super) struct NamespaceLun {
    pub nsid: u32,
    pub lun: u64,
    pub block_size: u32,
}

/// The namespaces' LUNs, which the core asks for their current sizes (an RBD image may be
/// resized under a running target) and for their reservations' notices and persistence.
struct NamespaceLuns {
    /// Per subsystem (= target index): (NSID, the LUN).
    luns: Vec<Vec<(u32, Arc<LogicalUnit>)>>,
}

impl NamespaceLuns {
    fn lun(&self, subsystem: usize, nsid: u32) -> Option<&LogicalUnit> {
        let (_, lu) = self.luns.get(subsystem)?.iter().find(|(n, _)| *n == nsid)?;
        Some(lu)
    }
}

impl std::fmt::Debug for NamespaceLuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceLuns").finish_non_exhaustive()
    }
}

impl NamespaceCapacity for NamespaceLuns {
    fn bytes(&self, subsystem: usize, nsid: u32) -> Option<u64> {
        Some(self.lun(subsystem, nsid)?.backend().size())
    }

    fn measure(&self, subsystem: usize, nsid: u32) {
        if let Some(lu) = self.lun(subsystem, nsid) {
            lu.measure_device();
        }
    }
}

impl NamespaceReservations for NamespaceLuns {
    fn notices(
        &self,
        subsystem: usize,
        nsid: u32,
        host: [u8; 16],
        after: Option<u64>,
    ) -> Option<(Vec<ReservationNotice>, u64)> {
        Some(self.lun(subsystem, nsid)?.nvme_notices(host, after))
    }

    fn persists(&self, subsystem: usize, nsid: u32) -> Option<bool> {
        Some(self.lun(subsystem, nsid)?.reservations_persist())
    }
}

/// How a live queue is reached from other threads.
#[derive(Clone)]
pub(super) struct QueueHandle {
    /// Asks it to close.
    pub control: Arc<dyn SessionControl>,
    /// Its engine thread, poked to look at a changed ANA state.
    pub residence: Residence,
    /// The host's address, and when the queue joined its controller (the status report).
    pub peer: SocketAddr,
    pub since: Instant,
    /// How the host authenticated on the queue, once it has (the status report).
    pub authentication: Option<crate::nvme::Authentication>,
}

/// State shared by every NVMe/TCP connection of the process.
pub(crate) struct NvmeState {
    /// Subsystems, limits and the discovery log (with the portals' configured addresses); each
    /// connection gets a copy with the ANA group as it is then ([`NvmeState::config_for`]).
    config: NvmeConfig,
    /// The same for the discovery-only portals: only the discovery subsystem is connectable.
    discovery_config: NvmeConfig,
    /// The NVMe/TCP I/O portals, with the ports bound (port IDs 1, 2...).
    io_portals: Vec<SocketAddr>,
    /// The discovery-only portals, with the ports bound (port IDs after the I/O portals').
    discovery_portals: Vec<SocketAddr>,
    registry: Mutex<ControllerRegistry>,
    /// Live queues by (controller ID, queue ID).
    queues: Mutex<HashMap<(u16, u16), QueueHandle>>,
    /// The gateway's ANA group and its state now.
    ana: Mutex<AnaGroup>,
    /// Per subsystem (= target index): the hosts allowed now, which a reload may change
    /// ([`NvmeState::set_allowed_hosts`]); connections accepted from then on see them.
    allowed_hosts: Mutex<Vec<Vec<AllowedHost>>>,
    /// Per subsystem (= target index): its namespaces' LUNs.
    namespaces: Vec<Vec<NamespaceLun>>,
}

impl NvmeState {
    /// The NVMe view of `config`, whose LUNs are `scsi_targets`.
    /// `portals` are the NVMe/TCP I/O portals' addresses as configured, with the ports bound
    /// (the discovery log lists every subsystem on each); `discovery_portals` the
    /// discovery-only ones.
    pub(crate) fn new(
        config: &Config,
        scsi_targets: &[Arc<ScsiTarget>],
        portals: &[SocketAddr],
        discovery_portals: &[SocketAddr],
    ) -> Arc<NvmeState> {
        let mut subsystems = Vec::new();
        let mut namespaces = Vec::new();
        let mut namespace_luns = Vec::new();
        for (target, scsi) in config.targets.iter().zip(scsi_targets) {
            let mut descriptors = Vec::new();
            let mut luns = Vec::new();
            let mut target_luns = Vec::new();
            for lun in &target.luns {
                let nsid = (lun.id + 1) as u32;
                let lu = scsi.luns().iter().find(|lu| lu.params().lun == lun.id);
                let size = lu.map_or(0, |lu| lu.backend().size());
                target_luns.extend(lu.map(|lu| (nsid, Arc::clone(lu))));
                let mut descriptor = namespace_descriptor(lun, nsid, size);
                descriptor.persistent_reservations =
                    lu.is_some_and(|lu| lu.reservations_can_persist());
                descriptors.push(descriptor);
                luns.push(NamespaceLun {
                    nsid,
                    lun: lun.id,
                    block_size: lun.block_size,
                });
            }
            subsystems.push(SubsystemDescriptor {
                nqn: target.nqn.clone(),
                allowed_hosts: target.allowed_hosts.clone(),
                namespaces: descriptors,
                serial: format!("{:016x}", fnv(target.nqn.as_bytes())),
                model: "iser-target".into(),
                firmware: env!("CARGO_PKG_VERSION").chars().take(8).collect(),
            });
            namespaces.push(luns);
            namespace_luns.push(target_luns);
        }
        let mut discovery = Vec::new();
        for (index, portal) in portals.iter().enumerate() {
            for target in &config.targets {
                discovery.push(DiscoveryEntry {
                    subsystem_nqn: target.nqn.clone(),
                    port_id: index as u16 + 1,
                    address_family: family(portal.ip()),
                    address: portal.ip().to_string(),
                    service_id: portal.port().to_string(),
                });
            }
        }
        let defaults = NvmeConfig::default();
        let namespace_luns = Arc::new(NamespaceLuns {
            luns: namespace_luns,
        });
        // The gateway's ALUA target port group is its ANA group, in the state that matches its
        // ALUA state.
        let ana = AnaGroup {
            id: u32::from(config.target_port_group),
            state: ana_state_of(config.alua_state),
            change_count: 0,
        };
        let nvme = NvmeConfig {
            subsystems,
            ana,
            capacity: Some(namespace_luns.clone()),
            reservations: Some(namespace_luns),
            discovery,
            // One R2T and one H2CData PDU for a whole write (Linux's nvmet announces 4 MiB):
            // the PDU's buffer is then the command's, with no gathering copy.
            max_h2c_data: defaults.max_transfer,
            max_queue_size: config.limits.nvme_queue_size,
            max_io_queues: config.limits.nvme_io_queues,
            in_capsule_data: config.limits.nvme_in_capsule_data,
            random: super::os_random,
            ..defaults
        };
        let discovery_config = NvmeConfig {
            discovery_only: true,
            ..nvme.clone()
        };
        let allowed_hosts = nvme
            .subsystems
            .iter()
            .map(|s| s.allowed_hosts.clone())
            .collect();
        Arc::new(NvmeState {
            allowed_hosts: Mutex::new(allowed_hosts),
            config: nvme,
            discovery_config,
            io_portals: portals.to_vec(),
            discovery_portals: discovery_portals.to_vec(),
            registry: Mutex::new(ControllerRegistry::with_cntlids(gateway_cntlids(
                config.target_port_group,
            ))),
            queues: Mutex::new(HashMap::new()),
            ana: Mutex::new(ana),
            namespaces,
        })
    }

    /// Every live controller for the status report: its host, subsystem and queues, and where
    /// and when its admin queue connected.
    pub(crate) fn controllers(&self, now: Instant) -> Vec<NvmeControllerStatus> {
        let listed = self.lock_registry().list();
        let queues = self.lock_queues();
        listed
            .into_iter()
            .map(|c| {
                let admin = queues.get(&(c.cntlid, 0));
                let subsystem = match self.config.subsystems.get(c.subsystem) {
                    Some(s) => s.nqn.clone(),
                    None => DISCOVERY_NQN.to_string(),
                };
                NvmeControllerStatus {
                    cntlid: c.cntlid,
                    host_nqn: c.host_nqn,
                    subsystem,
                    io_queues: c.io_queues,
                    peer: admin.map_or_else(|| "?".into(), |q| q.peer.to_string()),
                    connected_secs: admin.map_or(0, |q| now.duration_since(q.since).as_secs()),
                    authentication: admin.and_then(|q| q.authentication).map(|a| a.to_string()),
                }
            })
            .collect()
    }

    /// The gateway's ANA group as it is now.
    pub(super) fn ana(&self) -> AnaGroup {
        *self.ana.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the gateway's ANA group to the state of ALUA state `alua` (a reloaded
    /// configuration): connections accepted from now on start in it, and every admin queue's
    /// thread is poked to hand it to its queue, which reports it with an incremented change
    /// count and an ANA change notice. Returns whether the state changed.
    pub(crate) fn set_alua_state(&self, alua: AluaState) -> bool {
        {
            let mut ana = self.ana.lock().unwrap_or_else(|p| p.into_inner());
            let state = ana_state_of(alua);
            if ana.state == state {
                return false;
            }
            ana.state = state;
            ana.change_count += 1;
        }
        // A queue that joins its controller after this loop reads the new group itself
        // (resident.rs, after the join).
        for ((_, qid), handle) in self.lock_queues().iter() {
            if *qid == 0 {
                handle.residence.poke();
            }
        }
        true
    }

    /// Takes the `allowed_hosts` of `config`'s targets (whose subsystems are this state's):
    /// connections accepted from now on are checked against them, and every queue of a
    /// controller whose host they no longer allow is asked to close, each controller logged.
    /// A host still allowed keeps its controllers whatever its secrets now (as nvmet: a host
    /// proves itself again when its queues connect again).
    pub(crate) fn set_allowed_hosts(&self, config: &Config) {
        for (hosts, target) in self.lock_allowed_hosts().iter_mut().zip(&config.targets) {
            hosts.clone_from(&target.allowed_hosts);
        }
        // The registry's lock, then the hosts' (as `admit`): a queue whose Connect checked the
        // old hosts either took its controller before this scan, which ends it, or is refused.
        let registry = self.lock_registry();
        let allowed = self.lock_allowed_hosts();
        let mut refused = Vec::new();
        for controller in registry.list() {
            let Some(subsystem) = self.config.subsystems.get(controller.subsystem) else {
                continue; // A discovery controller.
            };
            if !AllowedHost::admit(&allowed[controller.subsystem], &controller.host_nqn) {
                log::warn!(
                    "ending NVMe controller {} of {} on {}: the host is no longer in its \
                     allowed_hosts",
                    controller.cntlid,
                    controller.host_nqn,
                    subsystem.nqn
                );
                refused.push(controller.cntlid);
            }
        }
        drop((allowed, registry));
        // The rest hear of the new lists (a discovery controller's host may see other
        // subsystems now: `Queue::handle_allowed_hosts_changed`). A discovery queue that joins
        // its controller after this loop reads them itself (resident.rs, after the join).
        for ((cntlid, qid), queue) in self.lock_queues().iter() {
            if refused.contains(cntlid) {
                queue.control.request_shutdown();
            } else if *qid == 0 {
                queue.residence.poke();
            }
        }
    }

    /// The configuration a connection accepted at `local` sees: a discovery-only portal's
    /// when `local` is one, and a discovery entry of a wildcard portal (0.0.0.0, ::) names the
    /// address the host reached instead, which is one it can connect to (0.0.0.0 would make
    /// it connect to itself). A wildcard portal listens on that address too, whichever port
    /// the host reached (a discovery portal's, say): an IPv4 one if the address is IPv4, an
    /// IPv6 one (dual-stack) always. The port reached, with its port ID, is the discovery
    /// log's current discovery subsystem entry, as nvmet names the port of the request
    /// (drivers/nvme/target/discovery.c nvmet_set_disc_traddr: the address reached when the
    /// port listens on any).
    fn config_for(&self, local: SocketAddr) -> Arc<NvmeConfig> {
        let serves = |p: &SocketAddr| {
            p.port() == local.port()
                && (p.ip().is_unspecified() || p.ip().to_canonical() == local.ip().to_canonical())
        };
        let discovery_portal = self.discovery_portals.iter().position(serves);
        let port_id = match discovery_portal {
            // Discovery-only portals are numbered after the I/O portals.
            Some(index) => self.io_portals.len() + index + 1,
            None => self.io_portals.iter().position(serves).map_or(1, |i| i + 1),
        };
        let base = if discovery_portal.is_some() {
            &self.discovery_config
        } else {
            &self.config
        };
        let mut config = base.clone();
        config.ana = self.ana();
        let allowed = self.lock_allowed_hosts();
        for (subsystem, hosts) in config.subsystems.iter_mut().zip(allowed.iter()) {
            subsystem.allowed_hosts = hosts.clone();
        }
        drop(allowed);
        let reached = local.ip().to_canonical();
        let reachable = |entry: &DiscoveryEntry| match entry.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a.is_unspecified() && reached.is_ipv4(),
            Ok(IpAddr::V6(a)) => a.is_unspecified(),
            Err(_) => false,
        };
        for entry in &mut config.discovery {
            if reachable(entry) {
                entry.address = reached.to_string();
                entry.address_family = family(reached);
            }
        }
        config.current_port = Some(DiscoveryEntry {
            subsystem_nqn: DISCOVERY_NQN.into(),
            port_id: port_id as u16,
            address_family: family(reached),
            address: reached.to_string(),
            service_id: local.port().to_string(),
        });
        Arc::new(config)
    }

    /// Runs `take` (a controller's creation, or a queue joining one) on the registry if
    /// `host_nqn` may still connect to `subsystem` (a discovery controller's always may): the
    /// queue's Connect checked the hosts its connection started with, and a reload may have
    /// changed them since.
    pub(super) fn admit<T>(
        &self,
        subsystem: usize,
        host_nqn: &str,
        take: impl FnOnce(&mut ControllerRegistry) -> Result<T, ConnectRefusal>,
    ) -> Result<T, ConnectRefusal> {
        let mut registry = self.lock_registry();
        let allowed = self.lock_allowed_hosts();
        if !allowed
            .get(subsystem)
            .map_or(true, |hosts| AllowedHost::admit(hosts, host_nqn))
        {
            return Err(ConnectRefusal::HostNotAllowed);
        }
        drop(allowed);
        take(&mut registry)
    }

    fn lock_allowed_hosts(&self) -> std::sync::MutexGuard<'_, Vec<Vec<AllowedHost>>> {
        self.allowed_hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, ControllerRegistry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<(u16, u16), QueueHandle>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the I/O queues `qids` of controller `cntlid` to close.
    fn shut_down_queues(&self, cntlid: u16, qids: &[u16]) {
        let queues = self.lock_queues();
        for qid in qids {
            if let Some(handle) = queues.get(&(cntlid, *qid)) {
                handle.control.request_shutdown();
            }
        }
    }

    /// The LUN of namespace `nsid` of subsystem `subsystem`.
    fn namespace(&self, subsystem: usize, nsid: u32) -> Option<NamespaceLun> {
        self.namespaces
            .get(subsystem)?
            .iter()
            .find(|n| n.nsid == nsid)
            .copied()
    }
}

/// The ANA state of a gateway in ALUA state `alua`: a standby port refuses media access, as
/// Inaccessible does (base 2.0 §8.1.1.4), and a multipathing host keeps the path to use once
/// it changes (Persistent Loss would make it drop the path for good).
pub(crate) fn ana_state_of(alua: AluaState) -> AnaState {
    match alua {
        AluaState::ActiveOptimized => AnaState::Optimized,
        AluaState::ActiveNonOptimized => AnaState::NonOptimized,
        AluaState::Standby => AnaState::Inaccessible,
    }
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Ipv4,
        IpAddr::V6(_) => AddressFamily::Ipv6,
    }
}

/// FNV-1a, for stable identifiers derived from names.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A LUN as a namespace. Its identifiers come from the LUN's 8-byte NAA identifier, the one
/// SCSI VPD page 83h shows: EUI-64 is those 8 bytes, NGUID those 8 bytes followed by 8 zero
/// bytes, and the UUID those 8 bytes and their FNV hash, marked as an RFC 9562 version 8
/// UUID. So the namespace keeps its identity across restarts and matches the LUN's.
fn namespace_descriptor(lun: &crate::config::Lun, nsid: u32, size: u64) -> NamespaceDescriptor {
    let naa = lun.identifier.to_be_bytes();
    let mut nguid = [0u8; 16];
    nguid[..8].copy_from_slice(&naa);
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&naa);
    uuid[8..].copy_from_slice(&fnv(&naa).to_be_bytes());
    uuid[6] = (uuid[6] & 0x0F) | 0x80;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    NamespaceDescriptor {
        nsid,
        block_size: lun.block_size,
        blocks: size / u64::from(lun.block_size),
        read_only: lun.read_only,
        volatile_write_cache: lun.write_cache,
        // Every backing but a plain block device really frees deallocated blocks.
        thin: !matches!(lun.backing, Backing::Block { .. }),
        nguid,
        eui64: naa,
        uuid,
        persistent_reservations: false,
    }
}

/// Fails when NVMe/TCP portals cannot be served here: they need io_uring.
pub(super) fn check_available(shared: &Shared) -> Result<(), String> {
    if shared.engine.runs_connections() {
        Ok(())
    } else {
        Err(
            "NVMe/TCP portals need io_uring, which this kernel or its settings refuse (see \
             the io_uring warning above: kernel.io_uring_disabled, a seccomp filter, or a \
             kernel older than 5.11); remove the nvme-tcp portals or allow io_uring"
                .into(),
        )
    }
}

/// Accepts connections on one NVMe/TCP portal until `stop` is set; each goes straight to an
/// engine thread.
pub(super) fn spawn_listener(
    listener: TcpListener,
    portal: PortalKey,
    nvme: Arc<NvmeState>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name(format!("nvme-{local}"))
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let timeout = PollTimeout::try_from(ACCEPT_POLL).unwrap_or(PollTimeout::NONE);
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log::warn!("poll on NVMe/TCP portal {local}: {e}");
                        std::thread::sleep(ACCEPT_POLL);
                        continue;
                    }
                }
                loop {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            let Ok(ticket) = shared.admission.admit(portal, peer.ip(), || false)
                            else {
                                continue; // dropping the stream closes it
                            };
                            if let Err(e) = resident::start(
                                stream,
                                peer,
                                ticket,
                                Arc::clone(&nvme),
                                Arc::clone(&shared),
                            ) {
                                log::warn!("NVMe/TCP connection from {peer}: {e}");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("accept on NVMe/TCP portal {local}: {e}");
                            std::thread::sleep(ACCEPT_POLL);
                            break;
                        }
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Portal, Transport};

    #[test]
    fn a_wildcard_portal_is_named_by_the_address_the_host_reached() {
        let mut config = Config::default_ram();
        config.portals.push(Portal {
            address: IpAddr::from([0, 0, 0, 0]),
            port: 4420,
            transport: Transport::NvmeTcp,
        });
        let scsi = crate::server::build_scsi_targets(&config).unwrap();
        let portals = [SocketAddr::from(([0, 0, 0, 0], 4420))];
        let state = NvmeState::new(&config, &scsi, &portals, &[]);
        let base = &state.config.discovery;
        assert_eq!(base.len(), 1);
        assert_eq!(base[0].subsystem_nqn, "nqn.2026-11.io.iser-target:ram0");
        let seen = state.config_for(SocketAddr::from(([192, 0, 2, 7], 4420)));
        assert_eq!(seen.discovery[0].address, "192.0.2.7");
        assert_eq!(seen.discovery[0].service_id, "4420");
        let current = seen
            .current_port
            .as_ref()
            .expect("the current discovery subsystem");
        assert_eq!(
            (
                &*current.subsystem_nqn,
                current.port_id,
                &*current.address,
                &*current.service_id
            ),
            (DISCOVERY_NQN, 1, "192.0.2.7", "4420")
        );
        // The namespace: LUN 0 as NSID 1, its EUI-64 the LUN's NAA identifier.
        let ns = &seen.subsystems[0].namespaces[0];
        assert_eq!((ns.nsid, ns.blocks), (1, (1 << 30) / 512));
        assert_eq!(ns.eui64, config.targets[0].luns[0].identifier.to_be_bytes());
        assert_eq!(ns.nguid[..8], ns.eui64);
        assert_eq!(ns.uuid[6] >> 4, 8, "UUID version 8");
        assert!(!seen.discovery_only);
    }

    #[test]
    fn a_discovery_portal_lists_the_io_portals_and_serves_discovery_only() {
        let config = Config::default_ram();
        let scsi = crate::server::build_scsi_targets(&config).unwrap();
        let io = [SocketAddr::from(([0, 0, 0, 0], 4420))];
        let discovery = [SocketAddr::from(([0, 0, 0, 0], 8009))];
        let state = NvmeState::new(&config, &scsi, &io, &discovery);
        let seen = state.config_for(SocketAddr::from(([192, 0, 2, 7], 8009)));
        assert!(seen.discovery_only);
        assert_eq!(seen.discovery.len(), 1, "the I/O portal only");
        assert_eq!(seen.discovery[0].address, "192.0.2.7");
        assert_eq!(seen.discovery[0].service_id, "4420");
        let current = seen.current_port.as_ref().unwrap();
        assert_eq!(
            (current.port_id, &*current.service_id),
            (2, "8009"),
            "the discovery portal, numbered after the I/O portal"
        );
        assert!(
            !state
                .config_for(SocketAddr::from(([192, 0, 2, 7], 4420)))
                .discovery_only
        );
    }
}
