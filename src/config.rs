//! The YAML configuration: what to listen on, which targets and LUNs to export,
//! and the protocol limits we offer.
//!
//! Parsing is two-step. The text is first read into private "raw" serde structs
//! (every field optional, sizes kept as YAML values, unknown keys rejected), then
//! resolved into the public structs below while validating. Doing it in two steps
//! lets every error name the full field path (`targets[1].luns[0].backing.size`)
//! and say what would have been accepted; serde alone can only report type
//! mismatches. The full reference is in `docs/configuration.md`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

pub use crate::iscsi::chap::{Authentication, Credentials, Secret};
pub use crate::scsi::AluaState;

mod auth;
pub use auth::MIN_SECRET_LEN;
mod nvme;
mod reload;
pub use nvme::{default_nqn, DEFAULT_NVME_DISCOVERY_PORT, DEFAULT_NVME_TCP_PORT};
pub use reload::Reload;

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
    /// Host NQNs allowed to connect over NVMe/TCP; empty means any host.
    pub allowed_hosts: Vec<String>,
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
        let raw: RawConfig = serde_yaml::from_str(text).map_err(ConfigError::from_yaml)?;
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

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration was rejected. `Display` is one line: the field path
/// (when there is one), the problem and what is allowed, then the file and
/// line/column when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    message: String,
    file: Option<PathBuf>,
    location: Option<(usize, usize)>,
    /// The message already says where (libyaml syntax errors do), so
    /// `Display` must not repeat the location.
    location_in_message: bool,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
            file: None,
            location: None,
            location_in_message: false,
        }
    }

    /// Turn a serde_yaml error into ours, splitting off the field path serde_yaml
    /// puts in front (`targets[0].luns[1]: unknown field ...`) and the trailing
    /// `at line L column C`, which we keep as structured data instead.
    fn from_yaml(err: serde_yaml::Error) -> Self {
        let mut text = err.to_string();
        let location = err.location().map(|l| (l.line(), l.column()));
        if let Some((line, column)) = location {
            let suffix = format!(" at line {line} column {column}");
            if let Some(stripped) = text.strip_suffix(&suffix) {
                text = stripped.to_string();
            }
        }
        // libyaml syntax errors carry their own marks ("... at line 2 column 1,
        // while parsing a flow sequence at line 1 column 10") and no path.
        if text.contains(" at line ") {
            return ConfigError {
                field: String::new(),
                message: format!("YAML syntax error: {text}"),
                file: None,
                location,
                location_in_message: true,
            };
        }
        let mut field = String::new();
        if let Some((head, rest)) = text.split_once(": ") {
            let looks_like_path = !head.is_empty()
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_[].-?".contains(c));
            if looks_like_path {
                field = head.to_string();
                text = rest.to_string();
            }
        }
        // Point unknown/duplicate-key errors at the key itself rather than its
        // parent, so `targets[0].luns[0].blocksize: unknown field ...` reads naturally.
        let key = ["unknown field `", "duplicate field `"]
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .and_then(|r| r.split_once('`'))
            .map(|(k, _)| k.to_string());
        if let Some(key) = key {
            field = if field.is_empty() {
                key
            } else {
                format!("{field}.{key}")
            };
        }
        // Do not leak our private type names into user-facing messages.
        for raw in [
            "RawConfig",
            "RawPortal",
            "RawTarget",
            "RawLun",
            "RawBacking",
            "RawLimits",
            "RawAuth",
            "RawCredentials",
        ] {
            text = text.replace(&format!("struct {raw}"), "a mapping");
        }
        // A YAML integer beyond u64 reaches serde_yaml::Value as u128.
        if let Some(n) = text
            .strip_prefix("invalid type: integer `")
            .and_then(|r| r.split_once("` as u128"))
            .map(|(n, _)| n.to_string())
        {
            text = format!("{n} is too large; numbers must fit in 64 bits");
        }
        ConfigError {
            field,
            message: text,
            file: None,
            location,
            location_in_message: false,
        }
    }

    /// Dotted path of the offending field, e.g. `targets[0].luns[1].backing.size`;
    /// empty when the error is not about one field (I/O, YAML syntax).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The problem and what is allowed, without the field path or location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The configuration file, when loaded with [`Config::load`].
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// 1-based (line, column) in the YAML text, when the parser reported one.
    pub fn location(&self) -> Option<(usize, usize)> {
        self.location
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        let location = self.location.filter(|_| !self.location_in_message);
        match (&self.file, location) {
            (Some(file), Some((l, c))) => {
                write!(f, " (in {} at line {l} column {c})", file.display())
            }
            (Some(file), None) => write!(f, " (in {})", file.display()),
            (None, Some((l, c))) => write!(f, " (at line {l} column {c})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for ConfigError {}

type CResult<T> = std::result::Result<T, ConfigError>;

fn err<T>(field: &str, message: impl Into<String>) -> CResult<T> {
    Err(ConfigError::new(field, message))
}

// ---------------------------------------------------------------------------
// Raw serde structs
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    portals: Option<Vec<RawPortal>>,
    targets: Option<Vec<RawTarget>>,
    limits: Option<RawLimits>,
    discovery_auth: Option<auth::RawAuth>,
    target_port_group: Option<u64>,
    alua_state: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    address: Option<String>,
    port: Option<u64>,
    transport: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Option<String>,
    /// Bare names or `{ name, chap, mutual_chap }` mappings, told apart in [`auth`].
    allowed_initiators: Option<Vec<Value>>,
    luns: Option<Vec<RawLun>>,
    auth: Option<auth::RawAuth>,
    nqn: Option<String>,
    allowed_hosts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    id: Option<u64>,
    backing: Option<RawBacking>,
    block_size: Option<u64>,
    read_only: Option<bool>,
    write_cache: Option<bool>,
    serial: Option<Value>,
    identifier: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBacking {
    #[serde(rename = "type")]
    kind: Option<String>,
    size: Option<Value>,
    path: Option<String>,
    create: Option<bool>,
    pool: Option<String>,
    image: Option<String>,
    conf: Option<String>,
    user: Option<String>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_sessions: Option<u64>,
    max_discovery_sessions: Option<u64>,
    max_connections_per_portal: Option<u64>,
    max_connections_per_source: Option<u64>,
    queue_depth: Option<u64>,
    max_burst_length: Option<u64>,
    first_burst_length: Option<u64>,
    max_recv_data_segment_length: Option<u64>,
    max_outstanding_r2t: Option<u64>,
    nop_interval_secs: Option<u64>,
    nop_timeout_secs: Option<u64>,
    login_timeout_secs: Option<u64>,
    discovery_idle_timeout_secs: Option<u64>,
    max_io_size: Option<u64>,
    io_threads: Option<u64>,
    busy_poll_us: Option<u64>,
}

// ---------------------------------------------------------------------------
// Resolution and validation
// ---------------------------------------------------------------------------

impl RawConfig {
    fn resolve(self) -> CResult<Config> {
        let raw_portals = self.portals.unwrap_or_default();
        if raw_portals.is_empty() {
            return err(
                "portals",
                "at least one portal is required, e.g. `- address: 0.0.0.0`",
            );
        }
        let mut portals: Vec<Portal> = Vec::with_capacity(raw_portals.len());
        for (i, rp) in raw_portals.into_iter().enumerate() {
            let path = format!("portals[{i}]");
            let p = rp.resolve(&path)?;
            // TCP and RDMA CM have separate port spaces: a TCP and an iSER portal may share an
            // address and port (brief §2.1), two portals of the same port space may not
            // (iSCSI/TCP and NVMe/TCP are both TCP).
            let rdma = |t: Transport| t == Transport::Iser;
            if let Some(j) = portals.iter().position(|q| {
                q.address == p.address && q.port == p.port && rdma(q.transport) == rdma(p.transport)
            }) {
                return err(
                    &path,
                    format!(
                        "{} port {} is already used by portals[{j}]; each address/port pair can be bound once per transport",
                        p.address, p.port
                    ),
                );
            }
            portals.push(p);
        }

        let raw_targets = self.targets.unwrap_or_default();
        if raw_targets.is_empty() {
            return err("targets", "at least one target is required");
        }
        let mut targets: Vec<Target> = Vec::with_capacity(raw_targets.len());
        for (i, rt) in raw_targets.into_iter().enumerate() {
            let path = format!("targets[{i}]");
            let t = rt.resolve(&path)?;
            if let Some(j) = targets
                .iter()
                .position(|u| u.name.eq_ignore_ascii_case(&t.name))
            {
                return err(
                    &format!("{path}.name"),
                    format!(
                        "\"{}\" duplicates targets[{j}].name; target names must be unique",
                        t.name
                    ),
                );
            }
            if let Some(j) = targets.iter().position(|u| u.nqn == t.nqn) {
                return err(
                    &format!("{path}.nqn"),
                    format!(
                        "\"{}\" is already targets[{j}]'s NQN; subsystem NQNs must be unique",
                        t.nqn
                    ),
                );
            }
            targets.push(t);
        }

        // Identifiers and serials must be unique across the whole configuration:
        // multipath and udev (`/dev/disk/by-id`) treat equal ones as the same disk.
        let mut ids: HashMap<u64, String> = HashMap::new();
        let mut serials: HashMap<&str, String> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            for (k, l) in t.luns.iter().enumerate() {
                let here = format!("targets[{i}].luns[{k}]");
                if let Some(prev) = ids.insert(l.identifier, here.clone()) {
                    return err(
                        &format!("{here}.identifier"),
                        format!(
                            "{:016x} is already the identifier of {prev}; identifiers must be unique across the configuration",
                            l.identifier
                        ),
                    );
                }
                if let Some(prev) = serials.insert(&l.serial, here.clone()) {
                    return err(
                        &format!("{here}.serial"),
                        format!(
                            "\"{}\" is already the serial of {prev}; serials must be unique across the configuration",
                            l.serial
                        ),
                    );
                }
            }
        }

        let limits = match self.limits {
            Some(rl) => rl.resolve("limits")?,
            None => Limits::default(),
        };

        let discovery_auth = match self.discovery_auth {
            Some(a) => Some(a.resolve("discovery_auth")?),
            None => None,
        };

        let target_port_group = match self.target_port_group {
            None => 1,
            Some(g @ 1..=65535) => g as u16,
            Some(g) => {
                return err(
                    "target_port_group",
                    format!("{g} is out of range; use 1..=65535 (default 1), different on each gateway of a LUN"),
                )
            }
        };
        let alua_state = match self.alua_state.as_deref() {
            None | Some("active-optimized") => AluaState::ActiveOptimized,
            Some("active-non-optimized") => AluaState::ActiveNonOptimized,
            Some("standby") => AluaState::Standby,
            Some(other) => {
                return err(
                    "alua_state",
                    format!("\"{other}\" is not an ALUA state; use active-optimized (default), active-non-optimized or standby"),
                )
            }
        };

        Ok(Config {
            portals,
            targets,
            limits,
            discovery_auth,
            target_port_group,
            alua_state,
        })
    }
}

impl RawPortal {
    fn resolve(self, path: &str) -> CResult<Portal> {
        let Some(addr_text) = self.address else {
            return err(
                &format!("{path}.address"),
                "required: an IPv4 or IPv6 address such as 0.0.0.0, 192.168.1.10 or \"::\"",
            );
        };
        let address: IpAddr = addr_text.trim().parse().or_else(|_| {
            err(
                &format!("{path}.address"),
                format!(
                    "\"{addr_text}\" is not an IP address; use IPv4 (0.0.0.0, 192.168.1.10) or IPv6 (\"::\", \"fd00::1\"); host names are not accepted"
                ),
            )
        })?;
        let transport = match self.transport.as_deref() {
            None | Some("tcp") => Transport::Tcp,
            Some("iser") => Transport::Iser,
            Some("nvme-tcp") => Transport::NvmeTcp,
            Some("nvme-tcp-discovery") => Transport::NvmeTcpDiscovery,
            Some(other) => {
                return err(
                    &format!("{path}.transport"),
                    format!(
                        "\"{other}\" is not a transport; use tcp, iser, nvme-tcp or \
                         nvme-tcp-discovery"
                    ),
                )
            }
        };
        let port = match self.port {
            None if transport == Transport::NvmeTcp => DEFAULT_NVME_TCP_PORT,
            None if transport == Transport::NvmeTcpDiscovery => DEFAULT_NVME_DISCOVERY_PORT,
            None => DEFAULT_PORT,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return err(
                    &format!("{path}.port"),
                    format!(
                        "{p} is out of range; use 1..=65535 (default 3260, 4420 for nvme-tcp, \
                         8009 for nvme-tcp-discovery)"
                    ),
                )
            }
        };
        Ok(Portal {
            address,
            port,
            transport,
        })
    }
}

impl RawTarget {
    fn resolve(self, path: &str) -> CResult<Target> {
        let name_path = format!("{path}.name");
        let Some(name) = self.name else {
            return err(
                &name_path,
                "required: an iSCSI name like iqn.2026-11.org.example:disk0",
            );
        };
        check_iscsi_name(&name_path, &name)?;

        let mut allowed_initiators = Vec::new();
        let mut initiator_auth = Vec::new();
        for (i, entry) in self
            .allowed_initiators
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let ipath = format!("{path}.allowed_initiators[{i}]");
            let (name, credentials) = auth::resolve_initiator(&ipath, entry)?;
            if let Some(j) = allowed_initiators
                .iter()
                .position(|n: &String| n.eq_ignore_ascii_case(&name))
            {
                return err(
                    &ipath,
                    format!("\"{name}\" is already {path}.allowed_initiators[{j}]"),
                );
            }
            if let Some(credentials) = credentials {
                initiator_auth.push((name.clone(), credentials));
            }
            allowed_initiators.push(name);
        }
        let auth = match self.auth {
            Some(a) => Some(a.resolve(&format!("{path}.auth"))?),
            None => None,
        };

        let raw_luns = self.luns.unwrap_or_default();
        if raw_luns.is_empty() {
            return err(&format!("{path}.luns"), "at least one LUN is required");
        }
        let mut luns: Vec<Lun> = Vec::with_capacity(raw_luns.len());
        for (k, rl) in raw_luns.into_iter().enumerate() {
            let lpath = format!("{path}.luns[{k}]");
            let lun = rl.resolve(&lpath, &name, k as u64)?;
            if let Some(j) = luns.iter().position(|l| l.id == lun.id) {
                return err(
                    &format!("{lpath}.id"),
                    format!(
                        "LUN id {} is already used by {path}.luns[{j}] (an omitted id defaults to the LUN's position in the list)",
                        lun.id
                    ),
                );
            }
            luns.push(lun);
        }
        let nqn = nvme::resolve_nqn(path, self.nqn, &name)?;
        let allowed_hosts = nvme::resolve_hosts(path, self.allowed_hosts)?;
        Ok(Target {
            name,
            allowed_initiators,
            luns,
            auth,
            initiator_auth,
            nqn,
            allowed_hosts,
        })
    }
}

impl RawLun {
    fn resolve(self, path: &str, target_name: &str, index: u64) -> CResult<Lun> {
        let id = self.id.unwrap_or(index);
        if id > MAX_LUN_ID {
            return err(
                &format!("{path}.id"),
                format!("{id} is out of range; use 0..=16383"),
            );
        }
        let block_size = match self.block_size {
            None => 512,
            Some(b @ (512 | 4096)) => b as u32,
            Some(b) => {
                return err(
                    &format!("{path}.block_size"),
                    format!("{b} is not supported; use 512 or 4096"),
                )
            }
        };
        let Some(rb) = self.backing else {
            return err(
                &format!("{path}.backing"),
                "required: one of {type: ram, size}, {type: file, path, size, create}, {type: block, path}, {type: rbd, pool, image, size, create, conf, user}",
            );
        };
        let backing = rb.resolve(&format!("{path}.backing"), block_size)?;

        let (derived_serial, derived_id) = derived_serial_and_identifier(target_name, id);
        let serial = match self.serial {
            None => derived_serial,
            Some(v) => parse_serial(&format!("{path}.serial"), &v)?,
        };
        let identifier = match self.identifier {
            None => derived_id,
            Some(v) => parse_identifier(&format!("{path}.identifier"), &v)?,
        };
        Ok(Lun {
            id,
            backing,
            block_size,
            read_only: self.read_only.unwrap_or(false),
            write_cache: self.write_cache.unwrap_or(true),
            serial,
            identifier,
        })
    }
}

impl RawBacking {
    fn resolve(self, path: &str, block_size: u32) -> CResult<Backing> {
        // Block devices take no size; say so before complaining about its value.
        if self.kind.as_deref() == Some("block") && self.size.is_some() {
            return err(
                &format!("{path}.size"),
                "not used by type block; a block device reports its own size",
            );
        }
        let size = match &self.size {
            None => None,
            Some(v) => {
                let field = format!("{path}.size");
                let s = parse_size_value(&field, v)?;
                check_size_fits_blocks(&field, s, block_size)?;
                Some(s)
            }
        };
        let not_used = |field: &str, kind: &str, why: &str| {
            err::<Backing>(
                &format!("{path}.{field}"),
                format!("not used by type {kind}; {why}"),
            )
        };
        if self.kind.as_deref() != Some("rbd") {
            let rbd_only = [
                ("pool", self.pool.is_some()),
                ("image", self.image.is_some()),
                ("conf", self.conf.is_some()),
                ("user", self.user.is_some()),
                ("timeout_secs", self.timeout_secs.is_some()),
            ];
            if let Some((field, _)) = rbd_only.iter().find(|(_, set)| *set) {
                let kind = self.kind.as_deref().unwrap_or("(none)");
                return not_used(
                    field,
                    kind,
                    "only type rbd takes pool, image, conf, user and timeout_secs",
                );
            }
        }
        match self.kind.as_deref() {
            None => err(&format!("{path}.type"), "required: ram, file, block or rbd"),
            Some("ram") => {
                if self.path.is_some() {
                    return not_used("path", "ram", "ram takes only size");
                }
                if self.create.is_some() {
                    return not_used("create", "ram", "ram takes only size");
                }
                let Some(size) = size else {
                    return err(
                        &format!("{path}.size"),
                        "required for type ram, e.g. 1G or 512MiB",
                    );
                };
                if size > MAX_RAM_SIZE {
                    return err(
                        &format!("{path}.size"),
                        format!("{size} bytes is more than the 1 TiB limit for RAM LUNs"),
                    );
                }
                Ok(Backing::Ram { size })
            }
            Some("file") => {
                let file = check_abs_path(&format!("{path}.path"), self.path, "file")?;
                let create = self.create.unwrap_or(false);
                if create && size.is_none() {
                    return err(
                        &format!("{path}.size"),
                        "required when create: true, so the new file can be sized",
                    );
                }
                Ok(Backing::File {
                    path: file,
                    size,
                    create,
                })
            }
            Some("block") => {
                if self.create.is_some() {
                    return not_used("create", "block", "block devices are never created");
                }
                let dev = check_abs_path(&format!("{path}.path"), self.path, "block")?;
                Ok(Backing::Block { path: dev })
            }
            Some("rbd") => {
                if self.path.is_some() {
                    return not_used("path", "rbd", "an RBD image is named by pool and image");
                }
                let create = self.create.unwrap_or(false);
                if create && size.is_none() {
                    return err(
                        &format!("{path}.size"),
                        "required when create: true, so the new image can be sized",
                    );
                }
                let conf = match self.conf {
                    None => PathBuf::from(DEFAULT_CEPH_CONF),
                    Some(conf) => check_abs_path(&format!("{path}.conf"), Some(conf), "rbd")?,
                };
                Ok(Backing::Rbd(RbdBacking {
                    pool: check_rados_name(&format!("{path}.pool"), self.pool, "pool")?,
                    image: check_rados_name(&format!("{path}.image"), self.image, "image")?,
                    size,
                    create,
                    conf,
                    user: check_cephx_id(&format!("{path}.user"), self.user)?,
                    timeout_secs: ranged(
                        &format!("{path}.timeout_secs"),
                        self.timeout_secs,
                        DEFAULT_RBD_TIMEOUT_SECS,
                        1,
                        3600,
                    )?,
                }))
            }
            Some(other) => err(
                &format!("{path}.type"),
                format!("\"{other}\" is not a backing type; use ram, file, block or rbd"),
            ),
        }
    }
}

impl RawLimits {
    fn resolve(self, path: &str) -> CResult<Limits> {
        let d = Limits::default();
        let f = |name: &str| format!("{path}.{name}");
        let l = Limits {
            max_sessions: ranged(
                &f("max_sessions"),
                self.max_sessions,
                d.max_sessions,
                1,
                4096,
            )?,
            max_discovery_sessions: ranged(
                &f("max_discovery_sessions"),
                self.max_discovery_sessions,
                d.max_discovery_sessions,
                1,
                4096,
            )?,
            max_connections_per_portal: ranged(
                &f("max_connections_per_portal"),
                self.max_connections_per_portal,
                d.max_connections_per_portal,
                1,
                65536,
            )?,
            max_connections_per_source: ranged(
                &f("max_connections_per_source"),
                self.max_connections_per_source,
                d.max_connections_per_source,
                1,
                65536,
            )?,
            queue_depth: ranged(&f("queue_depth"), self.queue_depth, d.queue_depth, 1, 1024)?,
            max_burst_length: ranged(
                &f("max_burst_length"),
                self.max_burst_length,
                d.max_burst_length,
                512,
                16_777_215,
            )?,
            first_burst_length: ranged(
                &f("first_burst_length"),
                self.first_burst_length,
                d.first_burst_length,
                512,
                16_777_215,
            )?,
            max_recv_data_segment_length: ranged(
                &f("max_recv_data_segment_length"),
                self.max_recv_data_segment_length,
                d.max_recv_data_segment_length,
                512,
                16_777_215,
            )?,
            max_outstanding_r2t: ranged(
                &f("max_outstanding_r2t"),
                self.max_outstanding_r2t,
                d.max_outstanding_r2t,
                1,
                65535,
            )?,
            nop_interval_secs: ranged(
                &f("nop_interval_secs"),
                self.nop_interval_secs,
                d.nop_interval_secs,
                0,
                3600,
            )?,
            nop_timeout_secs: ranged(
                &f("nop_timeout_secs"),
                self.nop_timeout_secs,
                d.nop_timeout_secs,
                1,
                3600,
            )?,
            login_timeout_secs: ranged(
                &f("login_timeout_secs"),
                self.login_timeout_secs,
                d.login_timeout_secs,
                1,
                3600,
            )?,
            discovery_idle_timeout_secs: ranged(
                &f("discovery_idle_timeout_secs"),
                self.discovery_idle_timeout_secs,
                d.discovery_idle_timeout_secs,
                1,
                3600,
            )?,
            max_io_size: ranged(
                &f("max_io_size"),
                self.max_io_size,
                d.max_io_size,
                4096,
                16 << 20,
            )?,
            io_threads: ranged(&f("io_threads"), self.io_threads, d.io_threads, 1, 256)?,
            busy_poll_us: ranged(
                &f("busy_poll_us"),
                self.busy_poll_us,
                d.busy_poll_us,
                0,
                1000,
            )?,
        };
        if l.first_burst_length > l.max_burst_length {
            return err(
                &f("first_burst_length"),
                format!(
                    "{} is larger than max_burst_length {}; FirstBurstLength must not exceed MaxBurstLength (RFC 7143)",
                    l.first_burst_length, l.max_burst_length
                ),
            );
        }
        if l.max_io_size % 4096 != 0 {
            return err(
                &f("max_io_size"),
                format!("{} is not a multiple of 4096", l.max_io_size),
            );
        }
        Ok(l)
    }
}

/// Apply a default and an inclusive range check, converting to the field's type.
fn ranged<T>(field: &str, value: Option<u64>, default: T, min: u64, max: u64) -> CResult<T>
where
    T: TryFrom<u64>,
{
    let Some(v) = value else {
        return Ok(default);
    };
    if v < min || v > max {
        return err(field, format!("{v} is out of range; use {min}..={max}"));
    }
    T::try_from(v).or_else(|_| err(field, format!("{v} is out of range; use {min}..={max}")))
}

fn check_abs_path(field: &str, path: Option<String>, kind: &str) -> CResult<PathBuf> {
    let Some(p) = path else {
        return err(field, format!("required for type {kind}: an absolute path"));
    };
    let pb = PathBuf::from(&p);
    if p.is_empty() || !pb.is_absolute() {
        return err(
            field,
            format!("\"{p}\" is not an absolute path; use a path starting with /"),
        );
    }
    Ok(pb)
}

/// The ceph.conf an RBD backing uses when `conf` is not given.
const DEFAULT_CEPH_CONF: &str = "/etc/ceph/ceph.conf";
/// The cephx id an RBD backing uses when `user` is not given.
const DEFAULT_CEPH_USER: &str = "admin";

/// A pool or image name: required, printable ASCII without spaces, and without the `/` and
/// `@` that the `rbd` tool reads as pool and snapshot separators.
fn check_rados_name(field: &str, name: Option<String>, what: &str) -> CResult<String> {
    let Some(name) = name else {
        return err(field, format!("required for type rbd: the {what} name"));
    };
    let bad = name
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '/' || c == '@');
    if name.is_empty() || name.len() > 255 || bad.is_some() {
        return err(
            field,
            format!(
                "\"{name}\" is not a usable {what} name; use 1-255 printable ASCII characters \
                 without spaces, '/' or '@'"
            ),
        );
    }
    Ok(name)
}

/// A cephx id such as `admin` or `iscsi-gw` (without the `client.` prefix).
fn check_cephx_id(field: &str, user: Option<String>) -> CResult<String> {
    let Some(user) = user else {
        return Ok(DEFAULT_CEPH_USER.to_string());
    };
    if let Some(id) = user.strip_prefix("client.") {
        return err(
            field,
            format!("\"{user}\": give the cephx id without \"client.\", e.g. {id}"),
        );
    }
    if user.is_empty() || user.len() > 255 || !user.chars().all(|c| c.is_ascii_graphic()) {
        return err(
            field,
            format!("\"{user}\" is not a cephx id; use printable ASCII without spaces"),
        );
    }
    Ok(user)
}

fn check_size_fits_blocks(field: &str, size: u64, block_size: u32) -> CResult<()> {
    if size == 0 {
        return err(field, "must be greater than 0");
    }
    if size % u64::from(block_size) != 0 {
        return err(
            field,
            format!("{size} bytes is not a multiple of block_size {block_size}"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

const SIZE_HELP: &str = "use bytes or a suffix K, M, G, T (KiB-based) like 1G, 512MiB";

/// Parse a size: a plain number of bytes, or a number followed by an optional
/// space and a 1024-based suffix `K`, `M`, `G`, `T`, each optionally followed by
/// `B` or `iB` (`1G`, `512MiB`, `10 GiB`, `4096B`). Suffixes are
/// case-insensitive. Returns `None` for malformed text or overflow.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = t[..digits_end].parse().ok()?;
    let suffix = t[digits_end..].trim_start().to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

fn parse_size_value(field: &str, v: &Value) -> CResult<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| ConfigError::new(field, format!("{n} is not a size; {SIZE_HELP}"))),
        Value::String(s) => parse_size(s).ok_or_else(|| {
            if parse_size_overflows(s.trim()) {
                ConfigError::new(
                    field,
                    format!("\"{s}\" is too large; sizes must fit in 64 bits"),
                )
            } else {
                ConfigError::new(field, format!("\"{s}\" is not a size; {SIZE_HELP}"))
            }
        }),
        other => err(
            field,
            format!("{} is not a size; {SIZE_HELP}", describe_value(other)),
        ),
    }
}

/// True when `text` is well-formed (digits, known suffix), so a failed parse
/// can only have been an overflow.
fn parse_size_overflows(text: &str) -> bool {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let suffix = text[digits_end..].trim_start().to_ascii_lowercase();
    let known = matches!(
        suffix.as_str(),
        "" | "b"
            | "k"
            | "kb"
            | "kib"
            | "m"
            | "mb"
            | "mib"
            | "g"
            | "gb"
            | "gib"
            | "t"
            | "tb"
            | "tib"
    );
    digits_end > 0 && known
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "an empty value".to_string(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("\"{s}\""),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(_) => "a tagged value".to_string(),
    }
}

// ---------------------------------------------------------------------------
// Serial numbers and identifiers
// ---------------------------------------------------------------------------

/// FNV-1a, 64-bit: tiny, fixed and platform-independent, so derived serials and
/// identifiers are the same on every machine and every release.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Default serial and identifier for a LUN, derived from the target name
/// (ASCII-lowercased) and LUN id. The hash input is `"<name>\0<id in decimal>"`.
/// The serial is the hash as 16 lowercase hex digits; the identifier is an NAA
/// "locally assigned" designator (NAA = 3h, SPC-4 7.8.6.6.3) holding the top
/// 60 bits of the hash, so no IEEE OUI is claimed.
pub fn derived_serial_and_identifier(target_name: &str, lun_id: u64) -> (String, u64) {
    let input = format!("{}\0{lun_id}", target_name.to_ascii_lowercase());
    let h = fnv1a64(input.as_bytes());
    (format!("{h:016x}"), (0x3u64 << 60) | (h >> 4))
}

fn parse_serial(field: &str, v: &Value) -> CResult<String> {
    let Value::String(s) = v else {
        return err(
            field,
            format!(
                "{} is not a string; quote the serial (e.g. serial: \"0042\") so YAML keeps it as text",
                describe_value(v)
            ),
        );
    };
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return err(
            field,
            format!("\"{s}\" is not allowed; use 1 to 32 printable ASCII characters"),
        );
    }
    Ok(s.clone())
}

fn parse_identifier(field: &str, v: &Value) -> CResult<u64> {
    let Value::String(s) = v else {
        return err(
            field,
            format!(
                "{} is not a string; quote the identifier (e.g. identifier: \"3000000000000001\") so YAML keeps it as 16 hex digits",
                describe_value(v)
            ),
        );
    };
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return err(
            field,
            format!("\"{s}\" is not an identifier; use exactly 16 hex digits, e.g. \"3000000000000001\""),
        );
    }
    let id = u64::from_str_radix(s, 16)
        .or_else(|_| err(field, format!("\"{s}\" is not 16 hex digits")))?;
    if !matches!(id >> 60, 2 | 3 | 5) {
        log::warn!(
            "{field}: {s} does not start with 2, 3 or 5, so it is not a well-formed 8-byte NAA designator"
        );
    }
    Ok(id)
}

// ---------------------------------------------------------------------------
// iSCSI names (RFC 3720 3.2.6 / RFC 7143 4.2.7)
// ---------------------------------------------------------------------------

const NAME_HELP: &str = "use iqn.YYYY-MM.reversed.domain[:suffix] (lowercase a-z 0-9 - . :), eui. + 16 hex digits, or naa. + 16 or 32 hex digits";

/// Check an iSCSI name: `iqn.YYYY-MM.reversed.domain[:anything]` (lowercase,
/// characters a-z 0-9 `-` `.` `:`), `eui.` + 16 hex digits, or `naa.` + 16 or
/// 32 hex digits; at most 223 bytes. Returns a human-readable reason on failure.
pub fn validate_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err(format!(
            "is {} bytes long; iSCSI names are at most 223",
            name.len()
        ));
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        return if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("eui. must be followed by exactly 16 hex digits".to_string())
        };
    }
    if let Some(hex) = name.strip_prefix("naa.") {
        return if (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(())
        } else {
            Err("naa. must be followed by exactly 16 or 32 hex digits".to_string())
        };
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return Err("must start with iqn., eui. or naa.".to_string());
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')))
    {
        return Err(format!(
            "contains '{bad}'; iqn names use only lowercase a-z, 0-9, '-', '.' and ':'"
        ));
    }
    let b = rest.as_bytes();
    let date_ok = b.len() >= 7
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if !date_ok {
        return Err("iqn. must be followed by a year and month, YYYY-MM".to_string());
    }
    let after_date = &rest[7..];
    let Some(after_dot) = after_date.strip_prefix('.') else {
        return Err("the date must be followed by '.' and a reversed domain name".to_string());
    };
    let (domain, suffix) = match after_dot.split_once(':') {
        Some((d, s)) => (d, Some(s)),
        None => (after_dot, None),
    };
    if domain.is_empty() || domain.split('.').any(str::is_empty) {
        return Err(
            "the reversed domain name (like org.example) must have non-empty labels".to_string(),
        );
    }
    if suffix == Some("") {
        return Err("nothing follows ':'; drop the ':' or add a suffix".to_string());
    }
    Ok(())
}

fn check_iscsi_name(field: &str, name: &str) -> CResult<()> {
    validate_iscsi_name(name).or_else(|why| {
        err(
            field,
            format!("\"{name}\" is not an iSCSI name: {why}; {NAME_HELP}"),
        )
    })
}

#[cfg(test)]
mod tests;
