//! What a running target reports of itself to `iser-target status`: its portals, its targets'
//! LUNs with their I/O counts and reservations, and who is connected (iSCSI sessions, NVMe
//! controllers). The server answers on its control socket with a [`StatusReport`] as JSON
//! (`src/server/control.rs`); [`query`] fetches one and [`StatusReport::render`] prints it.
//!
//! The control socket is `control` in the state directory (`state_dir:`), which only its
//! owner can enter: whoever can read the reservations there can see the status too.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The one request the control socket understands today, a line of its own.
pub const STATUS_REQUEST: &str = "status\n";

/// How long [`query`] waits for the target's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of the process that owns `state_dir`.
pub fn control_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("control")
}

/// A running target as it reports itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The target's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Its process ID.
    pub pid: u32,
    /// Seconds since it started serving.
    pub uptime_secs: u64,
    /// The portals it listens on, with the ports bound.
    pub portals: Vec<PortalStatus>,
    pub targets: Vec<TargetStatus>,
    /// Live iSCSI sessions, discovery sessions included, by TSIH.
    pub iscsi_sessions: Vec<IscsiSessionStatus>,
    /// Live NVMe/TCP controllers, by controller ID.
    pub nvme_controllers: Vec<NvmeControllerStatus>,
    /// Logins and connects refused since the start.
    #[serde(default)]
    pub refusals: RefusalStatus,
}

/// Logins and connects refused since the target started, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalStatus {
    /// iSCSI logins that failed CHAP (status 0201h).
    pub iscsi_authentication: u64,
    /// iSCSI logins of initiators the target does not allow (0202h).
    pub iscsi_authorization: u64,
    /// iSCSI logins to a target that is not there (0203h, 0204h).
    pub iscsi_not_found: u64,
    /// iSCSI logins refused for anything else: bad requests, limits.
    pub iscsi_other: u64,
    /// NVMe/TCP Connects from a host the subsystem does not allow (Connect Invalid Host).
    pub nvme_host_not_allowed: u64,
    /// NVMe/TCP queues whose DH-HMAC-CHAP exchange failed or did not end in time.
    pub nvme_authentication: u64,
}

/// A portal: its transport as the configuration names it, and its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalStatus {
    pub transport: String,
    pub address: SocketAddr,
}

/// A target (also an NVMe subsystem when NVMe/TCP is served).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub nqn: String,
    pub luns: Vec<LunStatus>,
}

/// A LUN as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunStatus {
    pub id: u64,
    /// What holds its blocks: `ram`, `file <path>`, `block <path>`, `rbd <pool>/<image>`.
    pub backing: String,
    /// The capacity reported now (blocks × block size).
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// The write cache as initiators see it now (MODE SELECT can change it).
    pub write_cache: bool,
    /// This gateway's ALUA state (`active-optimized`, `active-non-optimized`, `standby`).
    pub alua_state: String,
    pub io: IoStatus,
    pub reservations: ReservationStatus,
}

/// What a LUN has been asked to do since the target started, over every fabric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoStatus {
    /// Every command addressed to the LUN, whatever its outcome.
    pub commands: u64,
    /// Reads that passed their checks and went to the backend, and their bytes.
    pub reads: u64,
    pub read_bytes: u64,
    /// Commands with data to write that passed their checks, and their bytes.
    pub writes: u64,
    pub write_bytes: u64,
    /// The time those reads took, summed, in nanoseconds: each from its arrival at the I/O
    /// engine to its completion. Over `reads`, their mean latency. (Absent from the reports of
    /// targets that predate it: 0.)
    #[serde(default)]
    pub read_time_ns: u64,
    /// The same for the writes.
    #[serde(default)]
    pub write_time_ns: u64,
}

impl IoStatus {
    /// The mean latency of the reads, if there were any.
    pub fn mean_read(&self) -> Option<Duration> {
        mean(self.read_time_ns, self.reads)
    }

    /// The mean latency of the writes, if there were any.
    pub fn mean_write(&self) -> Option<Duration> {
        mean(self.write_time_ns, self.writes)
    }
}

fn mean(total_ns: u64, count: u64) -> Option<Duration> {
    total_ns.checked_div(count).map(Duration::from_nanos)
}

/// A LUN's reservations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationStatus {
    /// Registered I_T nexuses (persistent reservations).
    pub registrations: usize,
    /// The persistent reservation's type, if one is held.
    pub reservation_type: Option<String>,
    /// Its holder's initiator port, unless every registrant holds it.
    pub holder: Option<String>,
    /// Whether the state survives a restart (an initiator set APTPL).
    pub persists: bool,
    /// The initiator port holding an SPC-2 RESERVE(6), if any.
    pub spc2_holder: Option<String>,
    /// Where the persistent reservations the LU's gateways share live (an RBD LUN's object).
    #[serde(default)]
    pub shared_in: Option<String>,
}

/// A live iSCSI session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IscsiSessionStatus {
    pub tsih: u16,
    /// The initiator's name, as it logged in.
    pub initiator: String,
    /// The initiator session ID, 12 hex digits.
    pub isid: String,
    /// The target logged in to; `None` for a discovery session.
    pub target: Option<String>,
    /// `tcp` or `iser`.
    pub transport: String,
    /// The initiator's address.
    pub peer: String,
    /// Seconds since the login completed.
    pub connected_secs: u64,
}

/// A live NVMe/TCP controller (its admin queue and I/O queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmeControllerStatus {
    pub cntlid: u16,
    pub host_nqn: String,
    /// The subsystem's NQN (the discovery subsystem's for a discovery controller).
    pub subsystem: String,
    /// I/O queues connected now.
    pub io_queues: usize,
    /// The host's address, as its admin queue connected from.
    pub peer: String,
    /// Seconds since the admin queue connected.
    pub connected_secs: u64,
    /// How the host authenticated on the admin queue ("DH-HMAC-CHAP SHA-256"); `None`: it
    /// did not have to.
    #[serde(default)]
    pub authentication: Option<String>,
}

/// Why [`query`] found no report.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing listens on the socket (no target runs with this state directory).
    #[error("cannot reach {path}: {source} (is an iser-target serving with this state_dir?)")]
    Connect { path: PathBuf, source: io::Error },
    /// The conversation broke off.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The answer is not a report this version understands.
    #[error("{path}: unreadable answer: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Asks the target listening on `socket` for its status: the raw JSON answer and its reading.
pub fn query(socket: &Path) -> Result<(String, StatusReport), QueryError> {
    let io_error = |source| QueryError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| QueryError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(QUERY_TIMEOUT))
        .map_err(io_error)?;
    stream
        .write_all(STATUS_REQUEST.as_bytes())
        .map_err(io_error)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(io_error)?;
    let report = serde_json::from_str(&answer).map_err(|source| QueryError::Decode {
        path: socket.to_path_buf(),
        source,
    })?;
    Ok((answer, report))
}

impl StatusReport {
    /// The report as JSON, one document (what the control socket sends).
    pub fn to_json(&self) -> String {
        // Plain structs of strings and integers always serialize.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report for a person to read.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "iser-target {}, pid {}, up {}",
            self.version,
            self.pid,
            duration(self.uptime_secs)
        );
        let _ = writeln!(out, "\nportals:");
        for p in &self.portals {
            let _ = writeln!(out, "  {:<19} {}", p.transport, p.address);
        }
        for t in &self.targets {
            let _ = writeln!(out, "\ntarget {}\n  nqn {}", t.name, t.nqn);
            for l in &t.luns {
                render_lun(&mut out, l);
            }
        }
        let _ = writeln!(out, "\niSCSI sessions: {}", self.iscsi_sessions.len());
        for s in &self.iscsi_sessions {
            let _ = writeln!(
                out,
                "  tsih {} {} (isid {})\n    {} from {} to {}, up {}",
                s.tsih,
                s.initiator,
                s.isid,
                s.transport,
                s.peer,
                s.target.as_deref().unwrap_or("discovery"),
                duration(s.connected_secs)
            );
        }
        let _ = writeln!(
            out,
            "\nNVMe/TCP controllers: {}",
            self.nvme_controllers.len()
        );
        for c in &self.nvme_controllers {
            let _ = write!(
                out,
                "  cntlid {} {}\n    from {} to {}, {} I/O queue(s), up {}",
                c.cntlid,
                c.host_nqn,
                c.peer,
                c.subsystem,
                c.io_queues,
                duration(c.connected_secs)
            );
            match &c.authentication {
                Some(how) => {
                    let _ = writeln!(out, ", authenticated ({how})");
                }
                None => out.push('\n'),
            }
        }
        let r = &self.refusals;
        let _ = writeln!(
            out,
            "\nrefused since the start:\n  iSCSI logins: {} authentication, {} authorization, \
             {} target not found, {} other\n  NVMe/TCP: {} connects of hosts not allowed, {} \
             failed authentications",
            r.iscsi_authentication,
            r.iscsi_authorization,
            r.iscsi_not_found,
            r.iscsi_other,
            r.nvme_host_not_allowed,
            r.nvme_authentication
        );
        out
    }
}

/// Where a metric's samples come from.
enum Samples {
    /// Samples of the whole process: each with its labels (`{...}` or empty).
    Process(fn(&StatusReport) -> Vec<(String, u64)>),
    /// One sample per LUN, labelled with its target and LUN ID.
    Lun(fn(&LunStatus) -> u64),
    /// One sample per LUN in seconds, from nanoseconds.
    LunSeconds(fn(&LunStatus) -> u64),
}

/// A metric [`StatusReport::to_prometheus`] writes: name, type, help line and samples.
struct Metric(&'static str, &'static str, &'static str, Samples);

const METRICS: [Metric; 16] = [
    Metric(
        "iser_target_uptime_seconds",
        "gauge",
        "Seconds since the target started serving.",
        Samples::Process(|r| vec![(String::new(), r.uptime_secs)]),
    ),
    Metric(
        "iser_target_lun_size_bytes",
        "gauge",
        "Capacity of the LUN as reported now.",
        Samples::Lun(|l| l.size_bytes),
    ),
    Metric(
        "iser_target_lun_commands_total",
        "counter",
        "Commands addressed to the LUN, over every fabric.",
        Samples::Lun(|l| l.io.commands),
    ),
    Metric(
        "iser_target_lun_reads_total",
        "counter",
        "Reads that went to the LUN's backend.",
        Samples::Lun(|l| l.io.reads),
    ),
    Metric(
        "iser_target_lun_read_bytes_total",
        "counter",
        "Bytes those reads asked for.",
        Samples::Lun(|l| l.io.read_bytes),
    ),
    Metric(
        "iser_target_lun_writes_total",
        "counter",
        "Commands with data written to the LUN's backend.",
        Samples::Lun(|l| l.io.writes),
    ),
    Metric(
        "iser_target_lun_written_bytes_total",
        "counter",
        "Bytes those commands wrote.",
        Samples::Lun(|l| l.io.write_bytes),
    ),
    Metric(
        "iser_target_lun_read_time_seconds_total",
        "counter",
        "Time the LUN's reads took, summed, each from arrival at the I/O engine to completion \
         (over the reads: their mean latency).",
        Samples::LunSeconds(|l| l.io.read_time_ns),
    ),
    Metric(
        "iser_target_lun_write_time_seconds_total",
        "counter",
        "Time the LUN's writes took, summed, each from arrival at the I/O engine to completion.",
        Samples::LunSeconds(|l| l.io.write_time_ns),
    ),
    Metric(
        "iser_target_lun_write_cache_enabled",
        "gauge",
        "1 when the LUN's write cache is on.",
        Samples::Lun(|l| u64::from(l.write_cache)),
    ),
    Metric(
        "iser_target_lun_reservation_registrations",
        "gauge",
        "Persistent reservation registrations on the LUN.",
        Samples::Lun(|l| l.reservations.registrations as u64),
    ),
    Metric(
        "iser_target_lun_reserved",
        "gauge",
        "1 when a persistent reservation is held on the LUN.",
        Samples::Lun(|l| u64::from(l.reservations.reservation_type.is_some())),
    ),
    Metric(
        "iser_target_iscsi_sessions",
        "gauge",
        "Live iSCSI sessions by transport (discovery sessions included).",
        Samples::Process(|r| {
            let count = |transport| {
                let n = r.iscsi_sessions.iter().filter(|s| s.transport == transport);
                n.count() as u64
            };
            labelled(
                "transport",
                &[("tcp", count("tcp")), ("iser", count("iser"))],
            )
        }),
    ),
    Metric(
        "iser_target_nvme_controllers",
        "gauge",
        "Live NVMe/TCP controllers.",
        Samples::Process(|r| vec![(String::new(), r.nvme_controllers.len() as u64)]),
    ),
    Metric(
        "iser_target_iscsi_login_failures_total",
        "counter",
        "iSCSI logins refused, by reason (authentication: CHAP failed; authorization: initiator \
         not allowed; not_found: no such target; other).",
        Samples::Process(|r| {
            let f = &r.refusals;
            labelled(
                "reason",
                &[
                    ("authentication", f.iscsi_authentication),
                    ("authorization", f.iscsi_authorization),
                    ("not_found", f.iscsi_not_found),
                    ("other", f.iscsi_other),
                ],
            )
        }),
    ),
    Metric(
        "iser_target_nvme_refusals_total",
        "counter",
        "NVMe/TCP connects refused, by reason (host_not_allowed: not in allowed_hosts; \
         authentication: DH-HMAC-CHAP failed or not done in time).",
        Samples::Process(|r| {
            let f = &r.refusals;
            labelled(
                "reason",
                &[
                    ("host_not_allowed", f.nvme_host_not_allowed),
                    ("authentication", f.nvme_authentication),
                ],
            )
        }),
    ),
];

impl StatusReport {
    /// The report in Prometheus' text exposition format (version 0.0.4): what a monitoring
    /// system scrapes from `metrics:` (docs/configuration.md). LUNs are labelled with their
    /// target's name and LUN ID.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for Metric(name, kind, help, samples) in &METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match samples {
                Samples::Process(of) => {
                    for (labels, value) in of(self) {
                        let _ = writeln!(out, "{name}{labels} {value}");
                    }
                }
                Samples::Lun(of) => self.lun_samples(&mut out, name, |l| of(l).to_string()),
                Samples::LunSeconds(of) => self.lun_samples(&mut out, name, |l| {
                    let ns = of(l);
                    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
                }),
            }
        }
        out
    }
}

impl StatusReport {
    /// One sample of `name` per LUN, labelled with its target and LUN ID.
    fn lun_samples(&self, out: &mut String, name: &str, value: impl Fn(&LunStatus) -> String) {
        for t in &self.targets {
            for l in &t.luns {
                let target = label_value(&t.name);
                let _ = writeln!(
                    out,
                    "{name}{{target=\"{target}\",lun=\"{}\"}} {}",
                    l.id,
                    value(l)
                );
            }
        }
    }
}

/// One sample per `(value, n)`, labelled `key="value"` (values that need no escaping).
fn labelled(key: &str, samples: &[(&str, u64)]) -> Vec<(String, u64)> {
    (samples.iter())
        .map(|(value, n)| (format!("{{{key}=\"{value}\"}}"), *n))
        .collect()
}

/// A label value with `\`, `"` and line feeds escaped, as the exposition format asks.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_lun(out: &mut String, l: &LunStatus) {
    let _ = writeln!(
        out,
        "  LUN {}: {}, {} ({} bytes), {}-byte blocks, write cache {}{}, {}",
        l.id,
        l.backing,
        bytes(l.size_bytes),
        l.size_bytes,
        l.block_size,
        if l.write_cache { "on" } else { "off" },
        if l.read_only { ", read-only" } else { "" },
        l.alua_state
    );
    let io = &l.io;
    let mean = |mean: Option<Duration>| {
        let micros = |d: Duration| d.as_nanos() as f64 / 1000.0;
        mean.map(|d| format!(", mean {:.1} µs", micros(d)))
            .unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "    {} commands; {} reads ({}{}), {} writes ({}{})",
        io.commands,
        io.reads,
        bytes(io.read_bytes),
        mean(io.mean_read()),
        io.writes,
        bytes(io.write_bytes),
        mean(io.mean_write())
    );
    let r = &l.reservations;
    if r.registrations > 0 || r.reservation_type.is_some() {
        let _ = write!(out, "    {} registration(s)", r.registrations);
        if let Some(kind) = &r.reservation_type {
            let _ = write!(out, ", reserved {kind}");
            if let Some(holder) = &r.holder {
                let _ = write!(out, " by {holder}");
            }
        }
        let kept = match &r.shared_in {
            Some(location) => format!(", shared by the gateways in {location}"),
            None if r.persists => ", kept through restarts".to_string(),
            None => String::new(),
        };
        let _ = writeln!(out, "{kept}");
    }
    if let Some(holder) = &r.spc2_holder {
        let _ = writeln!(out, "    reserved (RESERVE(6)) by {holder}");
    }
}

/// `n` bytes in the largest binary unit that keeps a whole part (`1.5 GiB`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds as `3d 4h`, `2h 5m`, `7m 30s` or `12s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            version: "0.1.0".into(),
            pid: 42,
            uptime_secs: 3725,
            portals: vec![PortalStatus {
                transport: "tcp".into(),
                address: "127.0.0.1:3260".parse().unwrap(),
            }],
            targets: vec![TargetStatus {
                name: "iqn.2026-11.io.iser-target:disk".into(),
                nqn: "nqn.2026-11.io.iser-target:disk".into(),
                luns: vec![LunStatus {
                    id: 0,
                    backing: "file /srv/disk.img".into(),
                    size_bytes: 3 << 29,
                    block_size: 512,
                    read_only: false,
                    write_cache: true,
                    alua_state: "active-optimized".into(),
                    io: IoStatus {
                        commands: 10,
                        reads: 4,
                        read_bytes: 16384,
                        writes: 2,
                        write_bytes: 1024,
                        read_time_ns: 1_000_100,
                        write_time_ns: 2_500_000_001,
                    },
                    reservations: ReservationStatus {
                        registrations: 2,
                        reservation_type: Some("write exclusive".into()),
                        holder: Some("iqn.a,i,0x023d00000001".into()),
                        persists: true,
                        spc2_holder: None,
                        shared_in: None,
                    },
                }],
            }],
            iscsi_sessions: vec![IscsiSessionStatus {
                tsih: 1,
                initiator: "iqn.a".into(),
                isid: "023d00000001".into(),
                target: None,
                transport: "tcp".into(),
                peer: "127.0.0.1:50000".into(),
                connected_secs: 59,
            }],
            nvme_controllers: vec![NvmeControllerStatus {
                cntlid: 1,
                host_nqn: "nqn.2014-08.org.nvmexpress:uuid:h".into(),
                subsystem: "nqn.2026-11.io.iser-target:disk".into(),
                io_queues: 2,
                peer: "127.0.0.1:50001".into(),
                connected_secs: 90061,
                authentication: Some("DH-HMAC-CHAP SHA-256".into()),
            }],
            refusals: RefusalStatus {
                iscsi_authentication: 3,
                iscsi_authorization: 1,
                nvme_host_not_allowed: 2,
                ..RefusalStatus::default()
            },
        }
    }

    #[test]
    fn json_round_trips() {
        let report = report();
        let back: StatusReport = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn rendering_names_every_part() {
        let text = report().render();
        for expected in [
            "iser-target 0.1.0, pid 42, up 1h 2m",
            "  tcp                 127.0.0.1:3260",
            "target iqn.2026-11.io.iser-target:disk",
            "LUN 0: file /srv/disk.img, 1.5 GiB (1610612736 bytes), 512-byte blocks, \
             write cache on, active-optimized",
            "10 commands; 4 reads (16.0 KiB, mean 250.0 µs), 2 writes (1.0 KiB, mean 1250000.0 µs)",
            "2 registration(s), reserved write exclusive by iqn.a,i,0x023d00000001, kept \
             through restarts",
            "tsih 1 iqn.a (isid 023d00000001)\n    tcp from 127.0.0.1:50000 to discovery, up 59s",
            "cntlid 1 nqn.2014-08.org.nvmexpress:uuid:h\n    from 127.0.0.1:50001 to \
             nqn.2026-11.io.iser-target:disk, 2 I/O queue(s), up 1d 1h, authenticated \
             (DH-HMAC-CHAP SHA-256)\n",
            "iSCSI logins: 3 authentication, 1 authorization, 0 target not found, 0 other\n",
            "NVMe/TCP: 2 connects of hosts not allowed, 0 failed authentications\n",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn shared_reservations_say_where_they_live() {
        let mut report = report();
        report.targets[0].luns[0].reservations.shared_in =
            Some("rbd/iser-target.reservations.10ab".into());
        let text = report.render();
        assert!(
            text.contains(
                "2 registration(s), reserved write exclusive by iqn.a,i,0x023d00000001, shared \
                 by the gateways in rbd/iser-target.reservations.10ab\n"
            ),
            "{text}"
        );
        // A report from a target that predates the field still reads.
        let mut json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let reservations = &mut json["targets"][0]["luns"][0]["reservations"];
        assert!(reservations
            .as_object_mut()
            .unwrap()
            .remove("shared_in")
            .is_some());
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.targets[0].luns[0].reservations.shared_in, None);
    }

    #[test]
    fn a_report_without_io_times_reads_as_zero() {
        // From a target that predates the fields.
        let mut json: serde_json::Value = serde_json::from_str(&report().to_json()).unwrap();
        let io = json["targets"][0]["luns"][0]["io"].as_object_mut().unwrap();
        assert!(io.remove("read_time_ns").is_some() && io.remove("write_time_ns").is_some());
        let back: StatusReport = serde_json::from_value(json).unwrap();
        let io = back.targets[0].luns[0].io;
        assert_eq!((io.read_time_ns, io.write_time_ns), (0, 0));
        assert_eq!(IoStatus::default().mean_read(), None, "no reads, no mean");
    }

    #[test]
    fn a_report_without_refusals_reads_as_none() {
        // From a target that predates the field.
        let mut json: serde_json::Value = serde_json::from_str(&report().to_json()).unwrap();
        assert!(json.as_object_mut().unwrap().remove("refusals").is_some());
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.refusals, RefusalStatus::default());
    }

    #[test]
    fn prometheus_exposition_has_every_metric_once_with_labels() {
        let text = report().to_prometheus();
        for Metric(name, kind, _, _) in &METRICS {
            assert_eq!(
                text.matches(&format!("# TYPE {name} {kind}\n")).count(),
                1,
                "{name}"
            );
        }
        for expected in [
            "iser_target_uptime_seconds 3725\n",
            "iser_target_lun_commands_total{target=\"iqn.2026-11.io.iser-target:disk\",lun=\"0\"} 10\n",
            "iser_target_lun_read_bytes_total{target=\"iqn.2026-11.io.iser-target:disk\",lun=\"0\"} 16384\n",
            "iser_target_lun_written_bytes_total{target=\"iqn.2026-11.io.iser-target:disk\",lun=\"0\"} 1024\n",
            "iser_target_lun_reserved{target=\"iqn.2026-11.io.iser-target:disk\",lun=\"0\"} 1\n",
            "iser_target_lun_read_time_seconds_total{target=\"iqn.2026-11.io.iser-target:disk\",lun=\"0\"} 0.001000100\n",
            "iser_target_lun_write_time_seconds_total{target=\"iqn.2026-11.io.iser-target:disk\",lun=\"0\"} 2.500000001\n",
            "iser_target_iscsi_sessions{transport=\"tcp\"} 1\n",
            "iser_target_iscsi_sessions{transport=\"iser\"} 0\n",
            "iser_target_nvme_controllers 1\n",
            "iser_target_iscsi_login_failures_total{reason=\"authentication\"} 3\n",
            "iser_target_iscsi_login_failures_total{reason=\"other\"} 0\n",
            "iser_target_nvme_refusals_total{reason=\"host_not_allowed\"} 2\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        // Every sample line is a name, optional labels and a number (seconds with decimals).
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
        }
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(450), "7m 30s");
        assert_eq!(duration(7500), "2h 5m");
    }

    #[test]
    fn a_missing_target_is_a_clear_error() {
        let err = query(Path::new("/nonexistent/iser-target/control")).unwrap_err();
        assert!(matches!(err, QueryError::Connect { .. }));
        assert!(err.to_string().contains("/nonexistent/iser-target/control"));
    }
}
