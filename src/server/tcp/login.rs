//! The listener thread of one TCP portal: accepts connections under the connection caps and
//! drives every connection that has not logged in yet from a single `poll` loop, with
//! non-blocking sockets. A connection leaves the loop closed (login failed, timed out, peer
//! gone, evicted) or handed over once the core asks to bind its session: to its session's
//! engine thread after binding (`resident.rs`), or, without io_uring, to a thread of its own.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::driver::{self, Handoff};
use super::resident;
use crate::iscsi::framing::{self, FrameSettings, PduReader};
use crate::iscsi::tcp::{TcpAction, TcpConnection};
use crate::iscsi::{CloseReason, LoginStatus};
use crate::server::admission::{AdmissionTicket, LogThrottle, PortalKey};
use crate::server::Shared;

/// Longest sleep in `poll`, so that shutdown is noticed without a self-connect trick.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Connections accepted per wake-up before the connections already logging in are served again.
const ACCEPT_BATCH: usize = 64;
/// Bytes read from one connection per wake-up: more than a login PDU (48-byte header and at most
/// 8 KiB of data while logging in, RFC 7143 §13.12), little enough to keep the loop fair.
const READ_CHUNK: usize = 16 * 1024;
/// After a failed accept (typically EMFILE: out of file descriptors) the listener is left alone
/// this long; the pending connection stays in the kernel's backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one line per interval about failed accepts or evictions, so that a client cycling
/// through connections cannot flood the log (failed logins: `Refusals::log`).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Where a connection stands after its latest input.
enum Progress {
    LoggingIn,
    /// The core asked for this action, which needs a thread of the connection's own.
    HandOff(TcpAction),
    /// Closed; the reason is `Some` when it is worth reporting (not a peer that simply left,
    /// such as a port probe or a health check, nor a shutdown).
    Closed(Option<String>),
}

/// A connection that has not completed login.
struct PendingLogin {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    conn: TcpConnection,
    reader: PduReader,
    settings: FrameSettings,
    /// Encoded PDUs the socket has not taken yet; nothing more is read until it has.
    outbox: Vec<u8>,
    ticket: AdmissionTicket,
    progress: Progress,
    /// The status the login failed with, when the core failed it.
    failed: Option<LoginStatus>,
}

impl PendingLogin {
    /// Reads what the socket has (at most `buf.len()` bytes) and feeds the core.
    fn read_and_absorb(&mut self, buf: &mut [u8], now: Instant) {
        match self.stream.read(buf) {
            Ok(0) => {
                log::debug!(
                    "{}: initiator closed the connection during login",
                    self.peer
                );
                self.progress = Progress::Closed(None);
            }
            Ok(n) => {
                self.reader.push(&buf[..n]);
                self.absorb(now);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => self.progress = Progress::Closed(Some(format!("read failed: {e}"))),
        }
    }

    /// Hands every complete PDU buffered to the core, stopping when it leaves the login loop.
    fn absorb(&mut self, now: Instant) {
        while matches!(self.progress, Progress::LoggingIn) {
            match self.reader.next_pdu(&self.settings) {
                Ok(Some(pdu)) => {
                    log::trace!("{} <- {:?}", self.peer, pdu);
                    self.conn.handle_pdu(pdu, now);
                }
                Ok(None) => return,
                Err(error) => self.conn.handle_frame_error(error, now),
            }
            self.take_actions();
        }
    }

    /// Fires the login deadline when it is due.
    fn check_deadline(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|due| due <= now) {
            self.conn.handle_timeout(now);
            self.take_actions();
        }
    }

    /// Carries out the core's actions that need no thread; stops at the first one that does.
    fn take_actions(&mut self) {
        while let Some(action) = self.conn.poll_action() {
            match action {
                TcpAction::Send { pdu, .. } => {
                    log::trace!("{} -> {:?}", self.peer, pdu);
                    self.outbox
                        .extend_from_slice(&framing::encode(&pdu, &self.settings));
                }
                // PDUs are framed as they are queued, so later ones simply use the new settings.
                TcpAction::SetFrameSettings(settings) => self.settings = settings,
                TcpAction::Close(reason) => {
                    // A login reject is a few hundred bytes: the socket buffer takes it.
                    self.send_outbox();
                    if let CloseReason::LoginFailed(refusal) = &reason {
                        self.failed = Some(refusal.status);
                    }
                    self.progress = Progress::Closed(match reason {
                        CloseReason::Shutdown => None,
                        reason => Some(reason.during_login()),
                    });
                    return;
                }
                other => {
                    self.progress = Progress::HandOff(other);
                    return;
                }
            }
        }
        self.send_outbox();
    }

    /// Writes as much of the outbox as the socket takes without blocking.
    fn send_outbox(&mut self) {
        while !self.outbox.is_empty() {
            match self.stream.write(&self.outbox) {
                Ok(0) => {
                    self.progress = Progress::Closed(Some("send failed".into()));
                    return;
                }
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.progress = Progress::Closed(Some(format!("send failed: {e}")));
                    return;
                }
            }
        }
    }

    /// What to wait for: room to send while output is pending, input otherwise.
    fn interest(&self) -> PollFlags {
        if self.outbox.is_empty() {
            PollFlags::POLLIN
        } else {
            PollFlags::POLLOUT
        }
    }
}

/// One TCP portal's accept and login loop.
pub(super) struct LoginPoller {
    listener: TcpListener,
    portal: PortalKey,
    shared: Arc<Shared>,
    /// Oldest first.
    pending: VecDeque<PendingLogin>,
    /// Set after a failed accept: the listener is not polled before then.
    accept_paused_until: Option<Instant>,
    accept_errors: LogThrottle,
    evictions: LogThrottle,
}

impl LoginPoller {
    pub(super) fn new(listener: TcpListener, portal: PortalKey, shared: Arc<Shared>) -> Self {
        LoginPoller {
            listener,
            portal,
            shared,
            pending: VecDeque::new(),
            accept_paused_until: None,
            accept_errors: LogThrottle::new(LOG_INTERVAL),
            evictions: LogThrottle::new(LOG_INTERVAL),
        }
    }

    /// Serves the portal until `stop` is set; connections still logging in are then closed.
    pub(super) fn run(mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; READ_CHUNK];
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            for pending in &mut self.pending {
                pending.check_deadline(now);
            }
            self.settle();
            if self
                .accept_paused_until
                .is_some_and(|until| until <= Instant::now())
            {
                self.accept_paused_until = None;
            }
            let (listener_ready, ready) = match self.wait(Instant::now()) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("poll on {}: {e}", self.portal);
                    std::thread::sleep(POLL_INTERVAL);
                    continue;
                }
            };
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let now = Instant::now();
            for (index, revents) in ready {
                let pending = &mut self.pending[index];
                if !pending.outbox.is_empty() {
                    pending.send_outbox();
                } else if revents
                    .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                {
                    pending.read_and_absorb(&mut buf, now);
                }
            }
            self.settle();
            if listener_ready {
                self.accept_batch(now);
            }
        }
    }

    /// Sleeps until the listener or a pending connection is ready, a login deadline is due or
    /// the poll interval passes. Returns whether the listener is ready and which pending
    /// connections (by index) are, with their events.
    fn wait(&self, now: Instant) -> nix::Result<(bool, Vec<(usize, PollFlags)>)> {
        let listen = self.accept_paused_until.is_none();
        let mut wake = now + POLL_INTERVAL;
        if let Some(until) = self.accept_paused_until {
            wake = wake.min(until);
        }
        for pending in &self.pending {
            if let Some(due) = pending.conn.poll_timeout() {
                wake = wake.min(due);
            }
        }
        let mut fds = Vec::with_capacity(self.pending.len() + 1);
        fds.push(PollFd::new(
            self.listener.as_fd(),
            if listen {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            },
        ));
        fds.extend(
            self.pending
                .iter()
                .map(|p| PollFd::new(p.stream.as_fd(), p.interest())),
        );
        // Round up so that a deadline a fraction of a millisecond away does not spin.
        let millis = wake
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        let timeout = PollTimeout::from(u16::try_from(millis).unwrap_or(u16::MAX));
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok((false, Vec::new())),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        let listener_ready = listen
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN));
        let ready = fds[1..]
            .iter()
            .enumerate()
            .filter_map(|(i, fd)| fd.revents().filter(|r| !r.is_empty()).map(|r| (i, r)))
            .collect();
        Ok((listener_ready, ready))
    }

    /// Closes the connections that are done and hands the logged-in ones over.
    fn settle(&mut self) {
        if self
            .pending
            .iter()
            .all(|p| matches!(p.progress, Progress::LoggingIn))
        {
            return;
        }
        let (still, done): (VecDeque<_>, VecDeque<_>) = self
            .pending
            .drain(..)
            .partition(|p| matches!(p.progress, Progress::LoggingIn));
        self.pending = still;
        let now = Instant::now();
        for pending in done {
            if let Some(status) = pending.failed {
                self.shared.refusals.iscsi_login_failed(status);
            }
            // Closed: dropping the socket closes it and frees its place.
            let first = match pending.progress {
                Progress::HandOff(first) => first,
                Progress::Closed(Some(reason)) => {
                    self.shared.refusals.log(
                        now,
                        format_args!("{} on {}: {reason}", pending.peer, self.portal),
                    );
                    continue;
                }
                Progress::Closed(None) | Progress::LoggingIn => continue,
            };
            let peer = pending.peer;
            log::info!("connection from {peer}: login negotiated");
            let handoff = Handoff {
                stream: pending.stream,
                peer,
                conn: pending.conn,
                reader: pending.reader,
                settings: pending.settings,
                unsent: pending.outbox,
                first,
                ticket: pending.ticket,
            };
            let shared = Arc::clone(&self.shared);
            let handed = if shared.engine.runs_connections() {
                resident::hand_over(handoff, shared)
            } else {
                driver::spawn(handoff, shared)
            };
            if let Err(e) = handed {
                log::error!("cannot start a thread for {peer}: {e}");
            }
        }
    }

    /// Accepts the connections waiting in the backlog, up to [`ACCEPT_BATCH`].
    fn accept_batch(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Some(held_back) = self.accept_errors.permit(now) {
                        log::warn!(
                            "accept on {}: {e} ({held_back} similar errors since the last report)",
                            self.portal
                        );
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Applies the connection caps to a new connection. A refused one is closed at once (the
    /// admission logs why); when the portal is full, the oldest connection still logging in is
    /// closed to make room, so connections that never log in cannot keep a real initiator out.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        let portal = self.portal;
        let pending = &mut self.pending;
        let evictions = &mut self.evictions;
        let make_room = || {
            let Some(oldest) = pending.pop_front() else {
                return false;
            };
            if let Some(held_back) = evictions.permit(now) {
                log::warn!(
                    "portal {} is full: closed the connection from {}, still not logged in \
                     after {:?}, to admit {} ({held_back} more evicted since the last report)",
                    portal.addr,
                    oldest.peer,
                    now.saturating_duration_since(oldest.accepted),
                    peer.ip(),
                );
            }
            true
        };
        let Ok(ticket) = self
            .shared
            .admission
            .admit(self.portal, peer.ip(), make_room)
        else {
            return; // Dropping the stream closes it.
        };
        if let Err(e) = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
        {
            log::warn!("{peer}: cannot set up the socket: {e}");
            return;
        }
        log::debug!("connection from {peer}");
        let local = stream.local_addr().ok();
        self.pending.push_back(PendingLogin {
            conn: TcpConnection::new(self.shared.tcp_core.get(), local, now),
            stream,
            peer,
            accepted: now,
            reader: PduReader::new(),
            settings: FrameSettings::default(),
            outbox: Vec::new(),
            ticket,
            progress: Progress::LoggingIn,
            failed: None,
        });
    }
}
