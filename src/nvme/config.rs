//! What the NVMe/TCP core needs from configuration: subsystems with their namespaces and allowed
//! hosts, the discovery log entries, and queue limits. Shared by every queue of a portal.

use super::auth::HostSecrets;
use crate::random::{no_random_source, RandomSource};
use crate::scsi::ReservationNotice;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

/// The NQN of the discovery subsystem (NVMe-oF 1.1 §7.2.2).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// One namespace of a subsystem: its size and identity. The identifiers must be stable across
/// restarts (hosts match multipath devices and filesystems by them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDescriptor {
    /// Namespace ID, 1-based.
    pub nsid: u32,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub blocks: u64,
    /// Writes fail with Namespace Is Write Protected.
    pub read_only: bool,
    /// The backend acknowledges writes before they are durable; Flush and FUA make them so.
    pub volatile_write_cache: bool,
    /// The backend really deallocates (thin provisioning; NSFEAT THINP).
    pub thin: bool,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
    /// Its reservations can persist through a restart (a state directory keeps them):
    /// RESCAP's PTPLS, and what Register's CPTPL can turn on.
    pub persistent_reservations: bool,
}

impl NamespaceDescriptor {
    /// log2 of the block size (LBADS).
    pub fn lba_shift(&self) -> u32 {
        self.block_size.trailing_zeros()
    }
}

/// An NVM subsystem as the core needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemDescriptor {
    pub nqn: String,
    /// Hosts allowed to connect; empty means any host, none authenticated.
    pub allowed_hosts: Vec<AllowedHost>,
    pub namespaces: Vec<NamespaceDescriptor>,
    /// Serial number reported by Identify Controller (ASCII, up to 20 characters).
    pub serial: String,
    /// Model number (ASCII, up to 40 characters).
    pub model: String,
    /// Firmware revision (ASCII, up to 8 characters).
    pub firmware: String,
}

impl SubsystemDescriptor {
    /// Whether `host_nqn` may connect.
    pub fn allows(&self, host_nqn: &str) -> bool {
        AllowedHost::admit(&self.allowed_hosts, host_nqn)
    }

    /// The secrets `host_nqn` authenticates with, if its entry has them.
    pub fn host_secrets(&self, host_nqn: &str) -> Option<Arc<HostSecrets>> {
        let host = self.allowed_hosts.iter().find(|h| h.nqn == host_nqn)?;
        host.secrets.clone()
    }

    /// The namespace with this NSID.
    pub fn namespace(&self, nsid: u32) -> Option<&NamespaceDescriptor> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }
}

/// A host allowed to connect to a subsystem, and the secrets it must authenticate with (none: it
/// connects without authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub nqn: String,
    pub secrets: Option<Arc<HostSecrets>>,
}

impl AllowedHost {
    /// Whether a subsystem whose allowed hosts are `hosts` lets `host_nqn` connect: an empty
    /// list lets any host.
    pub fn admit(hosts: &[AllowedHost], host_nqn: &str) -> bool {
        hosts.is_empty() || hosts.iter().any(|h| h.nqn == host_nqn)
    }

    /// A host that connects without authentication.
    pub fn open(nqn: &str) -> Self {
        AllowedHost {
            nqn: nqn.to_string(),
            secrets: None,
        }
    }
}

/// Address family of a discovery log entry (NVMe-oF 1.1 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    Ipv4 = 1,
    Ipv6 = 2,
}

/// One entry of the discovery log page: a subsystem reachable at a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    pub subsystem_nqn: String,
    /// The NVM subsystem port ID.
    pub port_id: u16,
    pub address_family: AddressFamily,
    /// Transport address, e.g. "192.0.2.1".
    pub address: String,
    /// Transport service ID: the TCP port, e.g. "4420".
    pub service_id: String,
}

/// The Asymmetric Namespace Access state of an ANA group as a controller reports it (NVMe base
/// 2.0 §8.1.1; the ANA Group Descriptor's ANAS field). Only the states a configuration can
/// choose exist here: Persistent Loss and Change are never reported (see [`AnaGroup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnaState {
    Optimized = 0x01,
    NonOptimized = 0x02,
    Inaccessible = 0x03,
}

/// The ANA group every namespace of this target process belongs to, and its state on this
/// process's controllers. A gateway's group is its ALUA target port group and its state the
/// gateway's ALUA state (docs/multipath.md), so NVMe hosts see what SCSI initiators see. The
/// state changes when the gateway reloads its configuration: the environment hands the new
/// group to every admin queue ([`super::Queue::handle_ana_changed`]), which sends the ANA
/// change notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnaGroup {
    /// ANAGRPID, 1..=[`ANA_GROUP_MAX`].
    pub id: u32,
    pub state: AnaState,
    /// How many times the state changed since the process started: the ANA log's CHGCNT.
    pub change_count: u64,
}

/// The largest ANA group ID (Identify Controller ANAGRPMAX): a target port group is 16 bits.
pub const ANA_GROUP_MAX: u32 = 0xFFFF;

impl Default for AnaGroup {
    fn default() -> Self {
        AnaGroup {
            id: 1,
            state: AnaState::Optimized,
            change_count: 0,
        }
    }
}

/// Where the core reads a namespace's current size: the LUN's backend, whose size may change
/// under a running target (an RBD image resized). Read for Identify Namespace, for the range
/// checks of I/O commands and, on each admin command, to notice a change (NVMe base 2.0 §5.2:
/// Namespace Attribute Changed).
pub trait NamespaceCapacity: Send + Sync + Debug {
    /// The size in bytes of namespace `nsid` of subsystem `subsystem` (an index into
    /// [`NvmeConfig::subsystems`]), if it has one.
    fn bytes(&self, subsystem: usize, nsid: u32) -> Option<u64>;
    /// Measures the namespace again where its size is its device's (a block LUN whose LV was
    /// extended): called on each admin command, before the sizes are compared, never on the
    /// I/O path. The default has nothing to measure.
    fn measure(&self, subsystem: usize, nsid: u32) {
        let _ = (subsystem, nsid);
    }
}

/// What a controller asks of its namespaces' reservations, which live with their LUNs in the
/// environment (`crate::scsi::LogicalUnit`): the notices for its host (the Reservation
/// Notification log page) and the persistence state (feature 83h).
pub trait NamespaceReservations: Send + Sync + Debug {
    /// The notices for host `host` on namespace `nsid` of subsystem `subsystem` numbered after
    /// `after`, oldest first, and the number to ask after next time; with `after` `None` (a
    /// controller's first look) only that number. `None` when there is no such namespace.
    fn notices(
        &self,
        subsystem: usize,
        nsid: u32,
        host: [u8; 16],
        after: Option<u64>,
    ) -> Option<(Vec<ReservationNotice>, u64)>;
    /// Whether the namespace's reservations persist through power loss (PTPL).
    fn persists(&self, subsystem: usize, nsid: u32) -> Option<bool>;
}

/// Everything the core needs from configuration.
#[derive(Debug, Clone)]
pub struct NvmeConfig {
    pub subsystems: Vec<SubsystemDescriptor>,
    /// The ANA group of every namespace and its state on this process's controllers when a
    /// queue is created.
    pub ana: AnaGroup,
    /// The namespaces' current sizes; `None`: [`NamespaceDescriptor::blocks`] for ever.
    pub capacity: Option<Arc<dyn NamespaceCapacity>>,
    /// The namespaces' reservations; `None`: no notices, persistence off.
    pub reservations: Option<Arc<dyn NamespaceReservations>>,
    /// A discovery-only portal (port 8009): Connect to an NVM subsystem is refused, only the
    /// discovery subsystem is served.
    pub discovery_only: bool,
    /// The discovery log page, as the environment computes it for this portal.
    pub discovery: Vec<DiscoveryEntry>,
    /// The port this connection arrived on, with the discovery subsystem's NQN: the discovery
    /// log's first entry, the current discovery subsystem (subtype 3, NVMe-oF TP 8013), as
    /// Linux's nvmet lists it (drivers/nvme/target/discovery.c
    /// nvmet_execute_disc_get_log_page). `None`: no such entry.
    pub current_port: Option<DiscoveryEntry>,
    /// Largest I/O submission queue (entries); CAP.MQES is one less.
    pub max_queue_size: u16,
    /// I/O queues a controller may have.
    pub max_io_queues: u16,
    /// Largest in-capsule data of an I/O command (IOCCSZ is this plus the SQE, in 16-byte
    /// units).
    pub in_capsule_data: u32,
    /// MAXH2CDATA announced in ICResp: the largest H2CData PDU and R2T (see
    /// [`NvmeConfig::maxh2cdata`]).
    pub max_h2c_data: u32,
    /// Largest data transfer of one command (MDTS), a power of two times 4 KiB.
    pub max_transfer: u32,
    /// Keep alive timeout of a discovery controller whose host asked for none: Linux's
    /// nvme-cli connects discovery controllers with KATO 0, and a forgotten one must not live
    /// for ever (Linux drivers/nvme/target/core.c uses NVMET_DISC_KATO_MS, 120 s).
    pub discovery_kato: Duration,
    /// Bound on the time between accepting a connection and a completed Connect, and between
    /// Connect and a completed authentication.
    pub connect_timeout: Duration,
    /// Where DH-HMAC-CHAP challenges come from (the server passes the operating system's
    /// CSPRNG; the default fails every authentication).
    pub random: RandomSource,
}

impl NvmeConfig {
    /// The MAXH2CDATA we announce: `max_h2c_data` rounded down to a multiple of 4 and at least
    /// 4096, as Linux's host requires (drivers/nvme/host/tcp.c nvme_tcp_init_connection: "invalid
    /// maxh2cdata returned").
    pub fn maxh2cdata(&self) -> u32 {
        (self.max_h2c_data & !3).max(4096)
    }
}

impl Default for NvmeConfig {
    fn default() -> Self {
        NvmeConfig {
            subsystems: Vec::new(),
            ana: AnaGroup::default(),
            capacity: None,
            reservations: None,
            discovery_only: false,
            discovery: Vec::new(),
            current_port: None,
            max_queue_size: 128,
            max_io_queues: 64,
            in_capsule_data: 8192,
            max_h2c_data: 128 * 1024,
            max_transfer: 1 << 20,
            discovery_kato: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
            random: no_random_source,
        }
    }
}

/// Largest in-capsule data on an admin queue: Linux sends admin commands' data (Connect's
/// 1024 bytes among them) in the capsule up to this size (include/linux/nvme-tcp.h
/// NVME_TCP_ADMIN_CCSZ, 8 KiB).
pub const ADMIN_IN_CAPSULE_DATA: u32 = 8192;

/// Admin submission queue entries at most (Linux's host asks for NVME_AQ_DEPTH, 32).
pub const MAX_ADMIN_QUEUE_SIZE: u16 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxh2cdata_is_what_linux_accepts() {
        let with = |max_h2c_data| NvmeConfig {
            max_h2c_data,
            ..NvmeConfig::default()
        };
        assert_eq!(with(131_072).maxh2cdata(), 131_072);
        assert_eq!(with(10_001).maxh2cdata(), 10_000);
        assert_eq!(with(512).maxh2cdata(), 4096);
    }
}
