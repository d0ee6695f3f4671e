//! The control socket: `control` in the state directory, where `iser-target status` asks the
//! running target what it serves and who is connected ([`crate::status`]). One thread accepts
//! and answers each request from a snapshot taken then; nothing on the data path waits on it
//! (it takes the session and controller registries' locks briefly, as a login does).
//!
//! Only the state directory's owner can reach the socket (the directory is 0700). A stale
//! socket left by a process that died is replaced: the state directory's lock, taken before,
//! proves no live process listens on it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::nvme::NvmeState;
use super::Shared;
use crate::config::{Backing, Transport};
use crate::status::{
    IoStatus, IscsiSessionStatus, LunStatus, PortalStatus, ReservationStatus, StatusReport,
    TargetStatus, STATUS_REQUEST,
};

/// How often the thread looks at the stop flag while no request arrives.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read.
const MAX_REQUEST: usize = 64;

/// What the status report is made from.
pub(super) struct StatusSource {
    pub shared: Arc<Shared>,
    pub nvme: Arc<NvmeState>,
    /// Each portal's transport and bound address.
    pub portals: Vec<(Transport, SocketAddr)>,
    pub started: Instant,
}

impl StatusSource {
    /// The target as it is now.
    pub(super) fn report(&self) -> StatusReport {
        let now = Instant::now();
        let targets = self
            .shared
            .targets
            .iter()
            .zip(&self.shared.scsi_targets)
            .map(|(target, scsi)| TargetStatus {
                name: target.name.clone(),
                nqn: target.nqn.clone(),
                luns: target
                    .luns
                    .iter()
                    .filter_map(|lun| Some(lun_status(lun, scsi.lun(lun.id)?)))
                    .collect(),
            })
            .collect();
        let iscsi_sessions = self
            .shared
            .registry
            .list()
            .into_iter()
            .map(|s| IscsiSessionStatus {
                tsih: s.tsih,
                initiator: s.initiator,
                isid: crate::hex(&s.isid),
                target: s.target,
                transport: s.origin.transport.name().to_string(),
                peer: s.origin.peer,
                connected_secs: now.duration_since(s.since).as_secs(),
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: now.duration_since(self.started).as_secs(),
            portals: self
                .portals
                .iter()
                .map(|(transport, address)| PortalStatus {
                    transport: transport.name().to_string(),
                    address: *address,
                })
                .collect(),
            targets,
            iscsi_sessions,
            nvme_controllers: self.nvme.controllers(now),
            refusals: self.shared.refusals.status(),
        }
    }
}

fn lun_status(lun: &crate::config::Lun, lu: &crate::scsi::LogicalUnit) -> LunStatus {
    let backing = match &lun.backing {
        Backing::Ram { .. } => "ram".to_string(),
        Backing::File { path, .. } => format!("file {}", path.display()),
        Backing::Block { path } => format!("block {}", path.display()),
        Backing::Rbd(rbd) => format!("rbd {}/{}", rbd.pool, rbd.image),
    };
    let io = lu.io_totals();
    let pr = lu.reservation_summary();
    let (reservation_type, holder) = match pr.reservation {
        Some((kind, holder)) => (Some(kind.to_string()), holder),
        None => (None, None),
    };
    LunStatus {
        id: lun.id,
        backing,
        size_bytes: lu.num_blocks() * u64::from(lun.block_size),
        block_size: lun.block_size,
        read_only: lun.read_only,
        write_cache: lu.write_cache_enabled(),
        alua_state: lu.alua_port().state.to_string(),
        io: IoStatus {
            commands: io.commands,
            reads: io.reads,
            read_bytes: io.read_bytes,
            writes: io.writes,
            write_bytes: io.write_bytes,
            read_time_ns: io.read_nanos,
            write_time_ns: io.write_nanos,
        },
        reservations: ReservationStatus {
            registrations: pr.registrations,
            reservation_type,
            holder,
            persists: pr.persists,
            spc2_holder: pr.spc2_holder,
            shared_in: pr.shared_in,
        },
    }
}

/// Listens on `path` (replacing a stale socket) and answers requests until `stop` is set;
/// the socket file is removed when the thread ends.
pub(super) fn spawn(
    path: PathBuf,
    source: Arc<StatusSource>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    match std::fs::remove_file(&path) {
        Ok(()) => log::debug!("removed the stale control socket {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e, &path)),
    }
    let listener = UnixListener::bind(&path).map_err(|e| context(e, &path))?;
    listener.set_nonblocking(true)?;
    log::info!("status: `iser-target status` asks {}", path.display());
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            serve(&listener, &source, &stop);
            let _ = std::fs::remove_file(&path);
        })
}

fn context(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))
}

fn serve(listener: &UnixListener, source: &StatusSource, stop: &AtomicBool) {
    answer_one_at_a_time(
        "control socket",
        listener,
        || listener.accept().map(|(stream, _)| stream),
        |stream| answer(stream, source),
        stop,
    );
}

/// Accepts connections on the non-blocking `listener` with `accept` and hands each to
/// `answer`, one at a time, until `stop` is set (looked at every [`ACCEPT_POLL`]). `what`
/// names the listener in the log. For the status and metrics endpoints, whose answers are
/// small and quick.
pub(super) fn answer_one_at_a_time<S>(
    what: &str,
    listener: &impl AsFd,
    accept: impl Fn() -> io::Result<S>,
    answer: impl Fn(S) -> io::Result<()>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(ACCEPT_POLL).unwrap_or(PollTimeout::NONE);
        if nix::poll::poll(&mut fds, timeout).is_err() {
            continue;
        }
        match accept() {
            Ok(stream) => {
                if let Err(e) = answer(stream) {
                    log::debug!("{what}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("{what}: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// Reads one request line and answers it: `status` with the report; anything else with an
/// error line.
fn answer(mut stream: UnixStream, source: &StatusSource) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while request.len() < MAX_REQUEST && !request.ends_with(b"\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        request.push(byte[0]);
    }
    if request == STATUS_REQUEST.as_bytes() {
        stream.write_all(source.report().to_json().as_bytes())
    } else {
        stream.write_all(b"error: unknown request (this target answers `status`)\n")
    }
}
