//! A logged-in TCP connection living on the engine thread of its session: the thread polls its
//! socket in its ring, reads into the framer without blocking, runs the sans-IO core and its
//! commands, and writes the core's PDUs with non-blocking vectored writes (what the socket does
//! not take waits in the outbox for the next POLLOUT).
//!
//! Binding the session may wait up to 10 s for a reinstated session to close, so it happens on
//! a short-lived thread of its own before the connection moves to the engine thread.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::driver::Handoff;
use super::outbox::Outbox;
use crate::iscsi::framing::{FrameSettings, PduReader};
use crate::iscsi::tcp::{TcpAction, TcpConnection};
use crate::iscsi::{CloseReason, LoginStatus, TaskId};
use crate::scsi::ScsiOutcome;
use crate::server::admission::AdmissionTicket;
use crate::server::engine::{Interest, Residence, Resident, ThreadIo};
use crate::server::registry::SessionControl;
use crate::server::session::SessionSlot;
use crate::server::{ConnectionRegistration, ConnectionSet, Shared};

/// A send that cannot make progress for this long means the initiator is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one read may take from the socket.
const READ_CHUNK: usize = 256 * 1024;
/// Smallest new buffer a read is given: a new buffer follows the size of recent reads, so a
/// connection with small PDUs does not hold a large one.
const MIN_READ_CHUNK: usize = 16 * 1024;
/// Reads per readiness event: a peer that keeps its socket full gets its turn, then the
/// thread's other connections get theirs (the poll is armed again and fires at once).
const READS_PER_TURN: usize = 4;
/// Output not yet taken by the peer beyond which the connection stops reading: a peer that
/// sends commands without reading the answers is held back by TCP flow control instead of
/// growing the process's memory.
const BACKLOG_LIMIT: usize = 16 * READ_CHUNK;

/// Lets the registry and the server ask a resident connection to shut down.
struct ResidentControl {
    requested: AtomicBool,
    residence: Residence,
}

impl SessionControl for ResidentControl {
    fn request_shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.residence.poke();
    }
}

/// What the connection does first on its engine thread.
enum FirstStep {
    /// Hand the core the answer to its `BindSession`.
    Bound(Result<u16, LoginStatus>),
    /// Carry out the action that ended the login phase.
    Perform(TcpAction),
}

/// Moves a connection whose login the core accepted to an engine thread, binding its session
/// first on a short-lived thread when the core asks for that. The connection is registered for
/// shutdown before anything else, so a shutdown racing with the hand-over still reaches it.
pub(super) fn hand_over(handoff: Handoff, shared: Arc<Shared>) -> io::Result<()> {
    let residence = shared.engine.reserve_residence();
    let control = Arc::new(ResidentControl {
        requested: AtomicBool::new(false),
        residence: residence.clone(),
    });
    let registration = ConnectionSet::register(&shared.connections, control.clone());
    let Handoff {
        stream,
        peer,
        conn,
        reader,
        settings,
        unsent,
        first,
        ticket,
    } = handoff;
    let mut outbox = Outbox::default();
    outbox.push_bytes(unsent);
    let connection = TcpResident {
        conn,
        stream: Arc::new(stream),
        peer,
        settings,
        reader,
        shared,
        session: SessionSlot::default(),
        outbox,
        control,
        first: None,
        read_size: READ_CHUNK,
        read_armed: false,
        write_armed: false,
        closing: false,
        broken: false,
        released: false,
        shut: false,
        stalled_since: None,
        _registration: registration,
        _ticket: ticket,
    };
    let TcpAction::BindSession(request) = first else {
        let mut connection = connection;
        connection.first = Some(FirstStep::Perform(first));
        residence.attach(Box::new(connection));
        return Ok(());
    };
    std::thread::Builder::new()
        .name(format!("bind-{peer}"))
        .spawn(move || {
            let mut connection = connection;
            let control: Arc<dyn SessionControl> = connection.control.clone();
            let result =
                connection
                    .session
                    .bind_resident(&connection.shared, &request, control, &residence);
            connection.first = Some(FirstStep::Bound(result));
            residence.attach(Box::new(connection));
        })?;
    Ok(())
}

/// Everything a logged-in connection owns on its engine thread.
struct TcpResident {
    conn: TcpConnection,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    settings: FrameSettings,
    reader: PduReader,
    shared: Arc<Shared>,
    session: SessionSlot,
    outbox: Outbox,
    control: Arc<ResidentControl>,
    first: Option<FirstStep>,
    /// Size of the next read's buffer when the framer needs a new one (follows recent reads).
    read_size: usize,
    read_armed: bool,
    write_armed: bool,
    /// The connection is ending: no more reading; the session is released once its commands
    /// are reported, then the last output goes out and the socket is shut down.
    closing: bool,
    /// The peer is gone or unresponsive: unsent output is dropped.
    broken: bool,
    /// The session has been released (commands drained, nexus lost, unregistered).
    released: bool,
    /// The socket has been shut down; the connection ends when its polls have completed.
    shut: bool,
    /// Since when output has been waiting without the peer taking any.
    stalled_since: Option<Instant>,
    _registration: ConnectionRegistration,
    _ticket: AdmissionTicket,
}

impl Resident for TcpResident {
    fn start(&mut self, io: &mut ThreadIo<'_>) {
        match self.first.take() {
            Some(FirstStep::Bound(result)) => self.conn.handle_session_bound(result),
            Some(FirstStep::Perform(action)) => self.perform(action, io),
            None => {}
        }
        if self.shared.stopping() || self.control.requested.load(Ordering::SeqCst) {
            self.conn.handle_shutdown();
        }
        self.carry_out_actions(io);
        // Anything the initiator sent right behind its last Login Request.
        self.consume_pdus(Instant::now(), io);
    }

    fn ready(&mut self, interest: Interest, result: io::Result<usize>, io: &mut ThreadIo<'_>) {
        match interest {
            Interest::Read => {
                self.read_armed = false;
                if let Err(e) = result {
                    self.fail(format_args!("poll failed: {e}"));
                } else if !self.closing {
                    self.read(io);
                }
            }
            // The next settle writes what the socket now takes.
            Interest::Write => self.write_armed = false,
        }
    }

    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, io: &mut ThreadIo<'_>) {
        if !self.closing {
            self.conn.handle_scsi_complete(id, outcome);
            self.carry_out_actions(io);
        }
    }

    fn poked(&mut self, io: &mut ThreadIo<'_>) {
        if !self.closing && self.control.requested.load(Ordering::SeqCst) {
            self.conn.handle_shutdown();
            self.carry_out_actions(io);
        }
    }

    fn timeout(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        if self
            .stalled_since
            .is_some_and(|since| now >= since + WRITE_TIMEOUT)
        {
            self.fail(format_args!(
                "send failed: the initiator took nothing for {WRITE_TIMEOUT:?}"
            ));
            return;
        }
        if !self.closing && self.conn.poll_timeout().is_some_and(|due| due <= now) {
            self.conn.handle_timeout(now);
            self.carry_out_actions(io);
        }
    }

    fn abort(&mut self, _io: &mut ThreadIo<'_>) {
        self.closing = true;
        self.broken = true;
    }

    fn settle(&mut self, io: &mut ThreadIo<'_>) {
        if self.closing && !self.released {
            if self.session.outstanding() > 0 {
                // Released when the last command is reported (a later settle).
                return;
            }
            // I_T nexus loss before the last PDUs (a Logout Response) go out: an initiator
            // that logs in again at once must not meet this session's SPC-2 reservation
            // (libiscsi's Reserve6.Logout does exactly that). Nothing waits here: no command
            // is outstanding.
            self.session.release(&self.shared);
            self.released = true;
        }
        self.write(io);
        if self.closing {
            if !self.shut && (self.broken || self.outbox.is_empty()) {
                // Ends the polls still armed (they complete with POLLHUP).
                let _ = self.stream.shutdown(Shutdown::Both);
                self.shut = true;
            }
        } else if !self.read_armed && self.outbox.queued() < BACKLOG_LIMIT {
            self.read_armed = true;
            io.poll(self.stream.clone(), Interest::Read);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let write = self.stalled_since.map(|since| since + WRITE_TIMEOUT);
        let core = if self.closing {
            None
        } else {
            self.conn.poll_timeout()
        };
        match (write, core) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_finished(&self) -> bool {
        self.shut && !self.read_armed && !self.write_armed
    }
}

impl TcpResident {
    /// Reads what the socket has (a few buffers at most) and runs the PDUs it completes.
    fn read(&mut self, io: &mut ThreadIo<'_>) {
        for _ in 0..READS_PER_TURN {
            if self.closing || self.outbox.queued() >= BACKLOG_LIMIT {
                return;
            }
            // The socket is read straight into the framer's buffers (reused once consumed):
            // received bytes are not copied on their way to the core.
            let buf = self.reader.read_buffer(self.read_size);
            let room = buf.len();
            let result = (&*self.stream).read(buf);
            self.reader.push_read(*result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) => {
                    if !self.conn.is_closed() {
                        log::info!("{}: initiator closed the connection", self.peer);
                    }
                    self.closing = true;
                    self.broken = true;
                    return;
                }
                Ok(n) => {
                    // A new buffer follows the size of recent reads.
                    self.read_size = if n == room {
                        (room * 2).clamp(MIN_READ_CHUNK, READ_CHUNK)
                    } else {
                        (n * 2).clamp(MIN_READ_CHUNK, READ_CHUNK)
                    };
                    self.consume_pdus(Instant::now(), io);
                    if n < room {
                        // The socket is very likely empty: wait for the next poll rather than
                        // spend a read on EAGAIN.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(format_args!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Decodes every complete PDU buffered, applying the core's actions after each one so frame
    /// settings change exactly after the final Login Response. The data of a Data-Out the
    /// datamover expects is copied from the received bytes straight into its task's buffer.
    fn consume_pdus(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        while !self.closing {
            let frame = match self.reader.next_frame(&self.settings) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => {
                    self.conn.handle_frame_error(error, now);
                    self.carry_out_actions(io);
                    continue;
                }
            };
            if let Ok(header) = &frame.header {
                log::trace!("{} <- {header:?}", self.peer);
            }
            self.conn.receive_frame(&mut self.reader, frame, now, ());
            self.carry_out_actions(io);
        }
    }

    fn carry_out_actions(&mut self, io: &mut ThreadIo<'_>) {
        while let Some(action) = self.conn.poll_action() {
            self.perform(action, io);
        }
    }

    /// Carries out one action; PDUs are framed into the outbox, written when the turn ends.
    fn perform(&mut self, action: TcpAction, io: &mut ThreadIo<'_>) {
        match action {
            TcpAction::Send { pdu, .. } => {
                log::trace!("{} -> {:?}", self.peer, pdu);
                self.outbox.push_pdu(pdu, &self.settings);
            }
            TcpAction::SendDataIn {
                header,
                data,
                range,
                ..
            } => {
                log::trace!("{} -> {:?} ({} bytes)", self.peer, header, range.len());
                self.outbox
                    .push_shared(&header, data, range, &self.settings);
            }
            // PDUs are framed as they are queued, so later ones simply use the new settings.
            TcpAction::SetFrameSettings(settings) => self.settings = settings,
            TcpAction::BindSession(_) => {
                // The login phase binds the session before the connection moves here; a
                // second request is answered as the internal error it is.
                self.conn
                    .handle_session_bound(Err(LoginStatus::TARGET_ERROR));
            }
            TcpAction::Execute(task) => {
                if let Some((id, outcome)) = self.session.execute_here(task, io) {
                    self.conn.handle_scsi_complete(id, outcome);
                }
            }
            TcpAction::Reset { lun } => self.session.reset(&self.shared, lun),
            TcpAction::Close(reason) => {
                match reason {
                    CloseReason::Logout | CloseReason::Shutdown => {
                        log::debug!("{}: closing ({reason:?})", self.peer)
                    }
                    _ => log::warn!("{}: closing ({reason:?})", self.peer),
                }
                self.closing = true;
            }
        }
    }

    /// Writes what the socket takes; the rest waits for POLLOUT. Output waits while the
    /// connection is closing and its session is not released yet (see `settle`).
    fn write(&mut self, io: &mut ThreadIo<'_>) {
        if self.broken {
            self.outbox.clear();
        }
        if self.outbox.is_empty() {
            self.stalled_since = None;
            return;
        }
        if (self.closing && !self.released) || self.write_armed {
            return;
        }
        let before = self.outbox.queued();
        let mut stream: &TcpStream = &self.stream;
        match self.outbox.send(&mut stream) {
            Ok(true) => self.stalled_since = None,
            Ok(false) => {
                if self.outbox.queued() < before || self.stalled_since.is_none() {
                    self.stalled_since = Some(Instant::now());
                }
                self.write_armed = true;
                io.poll(self.stream.clone(), Interest::Write);
            }
            Err(e) => {
                self.fail(format_args!("send failed: {e}"));
                self.outbox.clear();
            }
        }
    }

    /// The connection cannot go on: log why and end it without sending more.
    fn fail(&mut self, why: std::fmt::Arguments<'_>) {
        if !self.broken {
            log::warn!("{}: {why}", self.peer);
        }
        self.closing = true;
        self.broken = true;
    }
}

impl Drop for TcpResident {
    fn drop(&mut self) {
        // Normally released in `settle`; a connection dropped unsettled (its thread stopped)
        // still unregisters its session.
        self.session.release(&self.shared);
        log::info!("connection from {} closed", self.peer);
    }
}
