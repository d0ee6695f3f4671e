//! The YAML configuration: what to listen on, which targets and LUNs to export,
//! and the protocol limits we offer.
//!
//! Parsing is two-step. The text is first read into private "raw" serde structs
//! (every field optional, sizes kept as YAML values, unknown keys rejected), then
//! resolved into the public structs below while validating. Doing it in two steps
//! lets every error name the full field path (`targets[1].luns[0].backing.size`)
//! and say what would have been accepted; serde alone can only report type
//! mismatches. The full reference is in `docs/configuration.md`.
//!
//! This file holds the resolved types and the entry points. The raw shapes and their
//! resolution live by section: `document` (top level, portals, targets, LUNs), `backing`,
//! `limits`, `auth` (CHAP) and `nvme` (NQNs); shared value parsers in `values` (sizes,
//! ranges, paths), `identity` (serials, identifiers) and `iscsi_name`; errors in `error`;
//! what a reload may change in `reload`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use crate::iscsi::chap::{Authentication, Credentials, Secret};
pub use crate::scsi::AluaState;

mod auth;
mod backing;
mod document;
mod error;
mod identity;
mod iscsi_name;
mod limits;
mod nvme;
mod reload;
mod values;
pub use auth::MIN_SECRET_LEN;
pub use error::ConfigError;
pub use identity::derived_serial_and_identifier;
pub use iscsi_name::validate_iscsi_name;
pub use nvme::{default_nqn, DEFAULT_NVME_DISCOVERY_PORT, DEFAULT_NVME_TCP_PORT};
pub use reload::Reload;
pub use values::parse_size;

// ---------------------------------------------------------------------------
// Public, resolved configuration
// ---------------------------------------------------------------------------

/// A complete, validated configuration. Every default is filled in, so consumers
/// never have to re-apply defaults or re-check ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to listen on; at least one.
    pub portals: Vec<Portal>,
    /// Exported targets; at least one, names unique.
    pub targets: Vec<Target>,
    /// Session and protocol limits shared by the whole process.
    pub limits: Limits,
    /// CHAP that discovery sessions must pass; `None`: discovery needs no authentication.
    pub discovery_auth: Option<Authentication>,
    /// This gateway's ALUA target port group (1..=65535, default 1): also its relative target
    /// port identifier and iSCSI target portal group tag. Gateways exporting one LU need
    /// different ones (docs/multipath.md).
    pub target_port_group: u16,
    /// The asymmetric access state this gateway reports for its LUs (default active/optimized).
    pub alua_state: AluaState,
    /// Where the process keeps what must outlive it (`state_dir:`): persistent reservations
    /// set with APTPL. `None`: nothing is kept, and REGISTER with APTPL is refused.
    pub state_dir: Option<PathBuf>,
    /// Where to serve Prometheus metrics over HTTP (`metrics: ADDRESS:PORT`): the status
    /// report's LUN counts, sessions and controllers. `None`: not served.
    pub metrics: Option<std::net::SocketAddr>,
}

/// One listening endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// IP address to bind (v4 or v6; `0.0.0.0` / `::` for all interfaces).
    pub address: IpAddr,
    /// TCP port, 1..=65535 (default 3260, the IANA iSCSI port; 4420 for `nvme-tcp`).
    pub port: u16,
    /// How PDUs are carried on this portal.
    pub transport: Transport,
}

/// Wire transport of a portal. The config accepts both; the server decides
/// whether it can actually serve iSER on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// iSCSI over TCP (RFC 7143).
    Tcp,
    /// iSCSI Extensions for RDMA (RFC 7145).
    Iser,
    /// NVMe/TCP (NVMe/TCP transport specification 1.0): every target is an NVM subsystem.
    NvmeTcp,
    /// NVMe/TCP for discovery only (default port 8009, NVMe-oF 1.1 §7.4.4): only the
    /// discovery subsystem can be connected; its log lists every subsystem on every `nvme-tcp`
    /// portal.
    NvmeTcpDiscovery,
}

impl Transport {
    /// Whether the portal speaks NVMe/TCP (for I/O or for discovery only).
    pub fn is_nvme(self) -> bool {
        matches!(self, Transport::NvmeTcp | Transport::NvmeTcpDiscovery)
    }

    /// The name a portal's `transport:` gives it in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Iser => "iser",
            Transport::NvmeTcp => "nvme-tcp",
            Transport::NvmeTcpDiscovery => "nvme-tcp-discovery",
        }
    }
}

/// One iSCSI target: a name initiators log in to, an access list and its LUNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// iSCSI name (`iqn.`, `eui.` or `naa.` form), validated.
    pub name: String,
    /// Initiator names allowed to log in; empty means any initiator.
    pub allowed_initiators: Vec<String>,
    /// Logical units, at least one, ids unique within the target.
    pub luns: Vec<Lun>,
    /// CHAP every login must pass (`auth`); `None`: no authentication.
    pub auth: Option<Authentication>,
    /// Credentials of the `allowed_initiators` entries that carry their own; they win over
    /// `auth` for that initiator.
    pub initiator_auth: Vec<(String, Authentication)>,
    /// NVMe subsystem NQN (`nqn:`; default [`default_nqn`] of the name), unique.
    pub nqn: String,
    /// Hosts allowed to connect over NVMe/TCP, with the secrets they authenticate with; empty
    /// means any host.
    pub allowed_hosts: Vec<crate::nvme::AllowedHost>,
}

/// One logical unit of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    /// LUN number, 0..=16383 (flat/peripheral addressing range).
    pub id: u64,
    /// Where the blocks live.
    pub backing: Backing,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Refuse writes (write-protected in MODE SENSE, writes fail with DATA PROTECT).
    pub read_only: bool,
    /// Advertise a volatile write cache (WCE=1): writes are durable only after
    /// SYNCHRONIZE CACHE or FUA. When false, every write is durable before GOOD.
    pub write_cache: bool,
    /// Unit serial number (VPD page 0x80); configured or derived stably.
    pub serial: String,
    /// 8-byte NAA designator (VPD page 0x83); configured or derived stably,
    /// unique across the whole configuration.
    pub identifier: u64,
}

/// Storage behind a LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory; contents are lost on exit. `size` is in bytes.
    Ram {
        /// Size in bytes, a multiple of the block size, at most 1 TiB.
        size: u64,
    },
    /// A regular file.
    File {
        /// Absolute path of the file.
        path: PathBuf,
        /// Size in bytes; `None` means use the existing file's size.
        size: Option<u64>,
        /// Create the file (sized to `size`) if it does not exist.
        create: bool,
    },
    /// A block device; its size comes from the device.
    Block {
        /// Absolute path of the device node.
        path: PathBuf,
    },
    /// A Ceph RBD image, reached through librbd.
    Rbd(RbdBacking),
}

/// Where an RBD image lives and how to reach it (`backing: {type: rbd, ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdBacking {
    /// The RADOS pool holding the image.
    pub pool: String,
    /// The image's name within the pool.
    pub image: String,
    /// Size for a newly created image; `None` means the image must exist. An existing
    /// image keeps its own size.
    pub size: Option<u64>,
    /// Create the image (sized to `size`) if it does not exist.
    pub create: bool,
    /// Absolute path of the ceph.conf naming the monitors (and the keyring).
    pub conf: PathBuf,
    /// The cephx id to connect as, without the `client.` prefix.
    pub user: String,
    /// Seconds an operation may wait on the OSDs or monitors (`rados_osd_op_timeout`,
    /// `rados_mon_op_timeout`) before it fails and the command is answered BUSY.
    pub timeout_secs: u64,
}

/// Default of [`RbdBacking::timeout_secs`].
pub const DEFAULT_RBD_TIMEOUT_SECS: u64 = 20;

impl Backing {
    /// The configured size in bytes, if the configuration fixes one
    /// (`None` for block devices and for files sized by the existing file).
    pub fn configured_size(&self) -> Option<u64> {
        match self {
            Backing::Ram { size } => Some(*size),
            Backing::File { size, .. } => *size,
            Backing::Block { .. } => None,
            Backing::Rbd(rbd) => rbd.size,
        }
    }
}

/// Limits offered in login negotiation and enforced by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum concurrent sessions for the whole process (1..=4096).
    pub max_sessions: u32,
    /// Maximum concurrent discovery sessions for the whole process, counted apart from
    /// `max_sessions` so that discovery cannot crowd out normal logins (1..=4096).
    pub max_discovery_sessions: u32,
    /// Maximum TCP connections open at once on one portal, logged in or not (1..=65536).
    pub max_connections_per_portal: u32,
    /// Maximum connections open at once from one initiator IP address, over all portals
    /// (1..=65536).
    pub max_connections_per_source: u32,
    /// Commands in flight per session, i.e. the CmdSN window (1..=1024).
    pub queue_depth: u32,
    /// Offered MaxBurstLength in bytes (512..=16777215).
    pub max_burst_length: u32,
    /// Offered FirstBurstLength in bytes (512..=16777215, <= max_burst_length).
    pub first_burst_length: u32,
    /// Our MaxRecvDataSegmentLength in bytes (512..=16777215).
    pub max_recv_data_segment_length: u32,
    /// Offered MaxOutstandingR2T (1..=65535).
    pub max_outstanding_r2t: u16,
    /// Seconds of idleness before a target-initiated NOP-In ping; 0 disables (0..=3600).
    pub nop_interval_secs: u64,
    /// Seconds to wait for the NOP-Out answer before dropping the connection (1..=3600).
    pub nop_timeout_secs: u64,
    /// Seconds allowed from TCP accept to full feature phase (1..=3600).
    pub login_timeout_secs: u64,
    /// Seconds a discovery session may go without a PDU from the initiator before it is
    /// closed (1..=3600).
    pub discovery_idle_timeout_secs: u64,
    /// iSER: largest single data transfer staged through registered buffers
    /// (4096..=16 MiB, multiple of 4096).
    pub max_io_size: u32,
    /// Threads of the process-wide I/O engine that runs every session's commands
    /// (1..=256; default: the number of CPUs).
    pub io_threads: u32,
    /// Microseconds an engine thread with iSER connections polls their completion queues
    /// before it sleeps (0..=1000; default 0: it sleeps at once). Trades a core's time for
    /// latency.
    pub busy_poll_us: u32,
    /// NVMe/TCP: entries of the largest I/O queue a host may create (CAP.MQES + 1 and MAXCMD;
    /// 16..=1024, default 128, Linux's default queue size).
    pub nvme_queue_size: u16,
    /// NVMe/TCP: I/O queues a controller may have (1..=128, default 64).
    pub nvme_io_queues: u16,
    /// NVMe/TCP: largest in-capsule data of an I/O command, in bytes (IOCCSZ; 4096..=131072,
    /// a multiple of 16, default 8192).
    pub nvme_in_capsule_data: u32,
}

impl Default for Limits {
    /// The documented defaults (see `docs/configuration.md`).
    fn default() -> Self {
        Limits {
            max_sessions: 64,
            max_discovery_sessions: 64,
            max_connections_per_portal: 512,
            max_connections_per_source: 64,
            queue_depth: 128,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            max_recv_data_segment_length: 262_144,
            max_outstanding_r2t: 1,
            nop_interval_secs: 15,
            nop_timeout_secs: 30,
            login_timeout_secs: 15,
            discovery_idle_timeout_secs: 30,
            max_io_size: 524_288,
            io_threads: default_io_threads(),
            busy_poll_us: 0,
            nvme_queue_size: 128,
            nvme_io_queues: 64,
            nvme_in_capsule_data: 8192,
        }
    }
}

/// One I/O engine thread per CPU the process may run on (1 if that cannot be determined).
fn default_io_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(256) as u32)
}

impl Target {
    /// Whether `initiator_name` may log in to this target. An empty allow-list
    /// admits everyone. Names compare ASCII case-insensitively, because iSCSI
    /// names are case-folded (RFC 3722) and EUI/NAA hex may arrive in either case.
    pub fn is_allowed(&self, initiator_name: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|n| n.eq_ignore_ascii_case(initiator_name))
    }
}

/// Name of the target in [`Config::default_ram`].
pub const DEFAULT_TARGET_NAME: &str = "iqn.2026-11.io.iser-target:ram0";
/// The IANA-registered iSCSI port, used when a portal omits `port`.
pub const DEFAULT_PORT: u16 = 3260;
/// Largest RAM LUN we accept (1 TiB): a guard against typos like `10T`.
pub const MAX_RAM_SIZE: u64 = 1 << 40;
/// Highest LUN id we accept (flat space addressing limit, SAM-5).
pub const MAX_LUN_ID: u64 = 16383;

impl Config {
    /// Parse and validate a configuration from YAML text.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::new(
                "",
                "the configuration is empty; it needs at least `portals` and `targets`",
            ));
        }
        let raw: document::RawConfig =
            serde_yaml::from_str(text).map_err(ConfigError::from_yaml)?;
        raw.resolve()
    }

    /// Read, parse and validate a configuration file. Errors mention the file
    /// path and, when known, the line and column.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            field: String::new(),
            message: format!("cannot read configuration file: {e}"),
            file: Some(path.to_path_buf()),
            location: None,
            location_in_message: false,
        })?;
        Config::from_yaml_str(&text).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// The embedded default: one target `iqn.2026-11.io.iser-target:ram0` with
    /// one 1 GiB RAM LUN (id 0), portal TCP 0.0.0.0:3260, default limits.
    /// Identical to what `config/default.yaml` resolves to.
    pub fn default_ram() -> Config {
        let (serial, identifier) = derived_serial_and_identifier(DEFAULT_TARGET_NAME, 0);
        Config {
            portals: vec![Portal {
                address: IpAddr::from([0, 0, 0, 0]),
                port: DEFAULT_PORT,
                transport: Transport::Tcp,
            }],
            targets: vec![Target {
                name: DEFAULT_TARGET_NAME.to_string(),
                allowed_initiators: Vec::new(),
                luns: vec![Lun {
                    id: 0,
                    backing: Backing::Ram { size: 1 << 30 },
                    block_size: 512,
                    read_only: false,
                    write_cache: true,
                    serial,
                    identifier,
                }],
                auth: None,
                initiator_auth: Vec::new(),
                nqn: default_nqn(DEFAULT_TARGET_NAME),
                allowed_hosts: Vec::new(),
            }],
            limits: Limits::default(),
            discovery_auth: None,
            target_port_group: 1,
            alua_state: AluaState::ActiveOptimized,
            state_dir: None,
            metrics: None,
        }
    }

    /// Whether `initiator_name` may log in to `target`; see [`Target::is_allowed`].
    pub fn is_allowed(target: &Target, initiator_name: &str) -> bool {
        target.is_allowed(initiator_name)
    }

    /// The target with this name (ASCII case-insensitive), as asked for in a
    /// login's `TargetName`.
    pub fn find_target(&self, name: &str) -> Option<&Target> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests;
