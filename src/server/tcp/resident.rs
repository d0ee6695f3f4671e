//! A logged-in TCP connection living on the engine thread of its session: the thread polls its
//! socket in its ring, reads into the framer without blocking, runs the sans-IO core and its
//! commands, and writes the core's PDUs with non-blocking vectored writes (what the socket does
//! not take waits in the outbox for the next POLLOUT).
//!
//! Binding the session may wait up to 10 s for a reinstated session to close, so it happens on
//! a short-lived thread of its own before the connection moves to the engine thread.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use super::driver::Handoff;
use super::link::{read_turn, ResidentControl, SocketLink, TurnReader, MIN_READ_CHUNK, READ_CHUNK};
use crate::config::Transport;
use crate::iscsi::framing::{FrameSettings, PduReader};
use crate::iscsi::tcp::{TcpAction, TcpConnection};
use crate::iscsi::{CloseReason, LoginStatus, TaskId};
use crate::scsi::ScsiOutcome;
use crate::server::admission::AdmissionTicket;
use crate::server::engine::{Interest, Resident, ThreadIo};
use crate::server::registry::{SessionControl, SessionOrigin};
use crate::server::session::SessionSlot;
use crate::server::{ConnectionRegistration, ConnectionSet, Shared};

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
    let control = ResidentControl::new(residence.clone());
    let registration = ConnectionSet::register(&shared.connections, control.clone());
    let Handoff {
        stream,
        peer,
        conn,
        mut reader,
        settings,
        unsent,
        first,
        ticket,
    } = handoff;
    // This thread reads through the framer's `read_buffer`: the data of large Data-Out PDUs
    // and immediate data can go straight from the socket into their task's buffer.
    reader.set_direct_reads(true);
    let mut link = SocketLink::new(stream, peer, "initiator");
    link.outbox.push_bytes(unsent);
    let connection = TcpResident {
        conn,
        link,
        settings,
        reader,
        shared,
        session: SessionSlot::new(SessionOrigin {
            transport: Transport::Tcp,
            peer: peer.to_string(),
        }),
        control,
        first: None,
        read_size: READ_CHUNK,
        released: false,
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
            let result = connection.session.bind_resident(
                &connection.shared,
                &request,
                control,
                true,
                &residence,
            );
            connection.first = Some(FirstStep::Bound(result));
            residence.attach(Box::new(connection));
        })?;
    Ok(())
}

/// Everything a logged-in connection owns on its engine thread.
struct TcpResident {
    conn: TcpConnection,
    link: SocketLink,
    settings: FrameSettings,
    reader: PduReader,
    shared: Arc<Shared>,
    session: SessionSlot,
    control: Arc<ResidentControl>,
    first: Option<FirstStep>,
    /// Size of the next read's buffer when the framer needs a new one (follows recent reads).
    read_size: usize,
    /// The session has been released (commands drained, nexus lost, unregistered); a closing
    /// connection sends its last output only after that.
    released: bool,
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
        if self.shared.stopping() || self.control.requested() {
            self.conn.handle_shutdown();
        }
        self.carry_out_actions(io);
        // Anything the initiator sent right behind its last Login Request.
        self.consume_pdus(io.now(), io);
    }

    fn ready(&mut self, interest: Interest, result: io::Result<usize>, io: &mut ThreadIo<'_>) {
        if self.link.ready(interest, result) {
            read_turn(self, io);
        }
    }

    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, io: &mut ThreadIo<'_>) {
        if !self.link.closing {
            self.conn.handle_scsi_complete(id, outcome);
            self.carry_out_actions(io);
        }
    }

    fn poked(&mut self, io: &mut ThreadIo<'_>) {
        if !self.link.closing && self.control.requested() {
            self.conn.handle_shutdown();
            self.carry_out_actions(io);
        }
    }

    fn timeout(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        if self.link.check_stall(now) {
            return;
        }
        if !self.link.closing && self.conn.poll_timeout().is_some_and(|due| due <= now) {
            self.conn.handle_timeout(now);
            self.carry_out_actions(io);
        }
    }

    fn abort(&mut self, _io: &mut ThreadIo<'_>) {
        self.link.break_off();
    }

    fn settle(&mut self, io: &mut ThreadIo<'_>) {
        if self.link.closing && !self.released {
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
        self.link.settle(io);
    }

    fn deadline(&self) -> Option<Instant> {
        self.link.deadline(self.conn.poll_timeout())
    }

    fn is_finished(&self) -> bool {
        self.link.is_finished()
    }
}

impl TurnReader for TcpResident {
    fn link(&mut self) -> &mut SocketLink {
        &mut self.link
    }

    fn rooms(&mut self) -> (&TcpStream, &mut [u8], &mut [u8]) {
        let (first, second) = self.reader.read_buffers(self.read_size);
        (&self.link.stream, first, second)
    }

    fn received(&mut self, n: usize, room: usize, io: &mut ThreadIo<'_>) {
        self.reader.push_read(n);
        if n > 0 {
            // A new buffer follows the size of recent reads.
            self.read_size = if n == room {
                (room * 2).clamp(MIN_READ_CHUNK, READ_CHUNK)
            } else {
                (n * 2).clamp(MIN_READ_CHUNK, READ_CHUNK)
            };
            self.consume_pdus(io.now(), io);
        }
    }

    fn ended(&self) -> bool {
        self.conn.is_closed()
    }
}

impl TcpResident {
    /// Decodes every complete PDU buffered, applying the core's actions after each one so frame
    /// settings change exactly after the final Login Response. The data of a Data-Out the
    /// datamover expects, and immediate data, goes straight into its task's buffer: read there
    /// from the socket when its header came first (a large data segment), else copied from the
    /// received bytes.
    fn consume_pdus(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        while !self.link.closing {
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
                log::trace!("{} <- {header:?}", self.link.peer);
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
                log::trace!("{} -> {:?}", self.link.peer, pdu);
                self.link.outbox.push_pdu(pdu, &self.settings);
            }
            TcpAction::SendDataIn {
                header,
                data,
                range,
                ..
            } => {
                log::trace!("{} -> {:?} ({} bytes)", self.link.peer, header, range.len());
                let queued = self
                    .link
                    .outbox
                    .push_shared(&header, data, range, &self.settings);
                if let Err(e) = queued {
                    // The stream cannot go on without this PDU.
                    self.link
                        .fail(format_args!("reading Data-In from the backing file: {e}"));
                }
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
            TcpAction::Close(reason) => {
                self.shared.refusals.iscsi_closed(&reason);
                match reason {
                    CloseReason::Logout | CloseReason::Shutdown => {
                        log::debug!("{}: closing ({reason:?})", self.link.peer)
                    }
                    _ => log::warn!("{}: closing ({reason:?})", self.link.peer),
                }
                self.link.closing = true;
            }
        }
    }
}

impl Drop for TcpResident {
    fn drop(&mut self) {
        // Normally released in `settle`; a connection dropped unsettled (its thread stopped)
        // still unregisters its session.
        self.session.release(&self.shared);
        log::info!("connection from {} closed", self.link.peer);
    }
}
