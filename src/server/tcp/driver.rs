//! A logged-in TCP connection where io_uring is unavailable (the engine threads then cannot
//! wait for sockets; see `resident.rs` for the normal case): its own thread drives the sans-IO
//! core, a reader thread feeds it the bytes the socket delivers, the engine runs its commands.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::outbox::Outbox;
use crate::config::Transport;
use crate::iscsi::framing::{FrameSettings, PduReader};
use crate::iscsi::tcp::{TcpAction, TcpConnection};
use crate::iscsi::{CloseReason, TaskId};
use crate::scsi::ScsiOutcome;
use crate::server::admission::AdmissionTicket;
use crate::server::registry::{SessionControl, SessionOrigin};
use crate::server::session::SessionSlot;
use crate::server::{ConnectionSet, Shared};

/// A send that cannot make progress for this long means the initiator is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one read may take from the socket.
const READ_CHUNK: usize = 256 * 1024;
/// Smallest buffer a read is given: the buffer follows the size of recent reads, so a connection
/// with small PDUs does not zero a large buffer per read.
const MIN_READ_CHUNK: usize = 16 * 1024;
/// Bytes read but not yet taken by the connection thread beyond which the reader stops reading.
const BACKLOG_LIMIT: usize = 16 * READ_CHUNK;

/// What wakes a connection's thread.
enum Event {
    Bytes(Vec<u8>),
    ReadClosed(Option<io::Error>),
    Completed(TaskId, ScsiOutcome),
    Shutdown,
}

/// Lets the registry and the server ask a connection to shut down.
struct ChannelControl(Sender<Event>);

impl SessionControl for ChannelControl {
    fn request_shutdown(&self) {
        let _ = self.0.send(Event::Shutdown);
    }
}

/// A connection whose login the core has accepted, as the login poller hands it over: the core
/// has just asked for something only a thread of its own may do (bind the session, which can
/// wait for a reinstated session to close).
pub(super) struct Handoff {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) conn: TcpConnection,
    /// Bytes received but not yet framed.
    pub(super) reader: PduReader,
    pub(super) settings: FrameSettings,
    /// Encoded PDUs the poller could not send yet; they go first.
    pub(super) unsent: Vec<u8>,
    /// The action that made the poller hand the connection over; carried out first.
    pub(super) first: TcpAction,
    /// The connection's place under the connection caps, held until it closes.
    pub(super) ticket: AdmissionTicket,
}

/// Starts the thread of a logged-in connection. The connection is registered for shutdown
/// before the thread starts, so a shutdown racing with the hand-over still reaches it.
pub(super) fn spawn(handoff: Handoff, shared: Arc<Shared>) -> io::Result<()> {
    let (events, inbox) = crossbeam_channel::unbounded();
    let registration = ConnectionSet::register(
        &shared.connections,
        Arc::new(ChannelControl(events.clone())),
    );
    let peer = handoff.peer;
    std::thread::Builder::new()
        .name(format!("conn-{peer}"))
        .spawn(move || {
            let _registration = registration;
            if let Err(e) = run_connection(handoff, shared, events, inbox) {
                log::warn!("connection from {peer}: {e}");
            }
        })?;
    Ok(())
}

/// Bytes the reader has forwarded that the connection thread has not taken yet. While the
/// connection thread is blocked (writing to a peer that does not read, for up to
/// [`WRITE_TIMEOUT`]) the reader stops at [`BACKLOG_LIMIT`], and TCP flow control holds the peer
/// back, so a peer that sends without reading cannot grow the process's memory.
#[derive(Default)]
struct Backlog {
    /// Bytes in flight, and whether the connection thread has finished.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the backlog is under the limit; false once the connection has finished.
    fn wait_for_room(&self) -> bool {
        let mut state = self.lock();
        while state.0 >= BACKLOG_LIMIT && !state.1 {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        !state.1
    }

    fn add(&self, bytes: usize) {
        self.lock().0 += bytes;
    }

    fn take(&self, bytes: usize) {
        let mut state = self.lock();
        state.0 = state.0.saturating_sub(bytes);
        drop(state);
        self.changed.notify_all();
    }

    fn finish(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// Reads the socket and forwards raw bytes; framing happens on the connection thread so that
/// digest settings switch exactly where the core says.
fn spawn_reader(
    mut stream: TcpStream,
    events: Sender<Event>,
    backlog: Arc<Backlog>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("conn-reader".into())
        .spawn(move || {
            // Each read gets a buffer of its own that is handed over whole: the bytes are not
            // copied on their way to the connection thread.
            let mut size = READ_CHUNK;
            while backlog.wait_for_room() {
                let mut buf = vec![0u8; size];
                match stream.read(&mut buf) {
                    Ok(0) => {
                        let _ = events.send(Event::ReadClosed(None));
                        return;
                    }
                    Ok(n) => {
                        backlog.add(n);
                        buf.truncate(n);
                        if n * 4 < buf.capacity() {
                            // Mostly empty: give the rest back, so a peer that trickles bytes
                            // cannot make each of them hold a whole buffer.
                            buf.shrink_to_fit();
                        }
                        size = if n == size {
                            (size * 2).min(READ_CHUNK)
                        } else {
                            (n * 2).clamp(MIN_READ_CHUNK, READ_CHUNK)
                        };
                        if events.send(Event::Bytes(buf)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = events.send(Event::ReadClosed(Some(e)));
                        return;
                    }
                }
            }
        })
}

/// Everything one connection thread owns.
struct Driver {
    conn: TcpConnection,
    stream: TcpStream,
    peer: SocketAddr,
    settings: FrameSettings,
    reader: PduReader,
    shared: Arc<Shared>,
    events: Sender<Event>,
    backlog: Arc<Backlog>,
    session: SessionSlot,
    closed: bool,
}

fn run_connection(
    handoff: Handoff,
    shared: Arc<Shared>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
) -> io::Result<()> {
    let Handoff {
        stream,
        peer,
        conn,
        reader,
        settings,
        unsent,
        first,
        ticket: _ticket,
    } = handoff;
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let backlog = Arc::new(Backlog::default());
    let reader_thread = spawn_reader(stream.try_clone()?, events.clone(), Arc::clone(&backlog))?;
    let mut driver = Driver {
        conn,
        stream,
        peer,
        settings,
        reader,
        shared,
        events,
        backlog,
        session: SessionSlot::new(SessionOrigin {
            transport: Transport::Tcp,
            peer: peer.to_string(),
        }),
        closed: false,
    };
    if driver.shared.stopping() {
        driver.conn.handle_shutdown();
    } else {
        let mut out = Outbox::default();
        out.push_bytes(unsent);
        driver.perform(first, &mut out);
        driver.flush(&mut out);
        // Anything the initiator sent right behind its last Login Request.
        driver.consume_pdus(Instant::now());
    }
    driver.run(&inbox);
    let _ = driver.stream.shutdown(Shutdown::Both);
    driver.backlog.finish();
    // Let running commands finish before the session is unregistered (reinstatement waits on it).
    driver.session.release(&driver.shared);
    let _ = reader_thread.join();
    log::info!("connection from {peer} closed");
    Ok(())
}

impl Driver {
    fn run(&mut self, inbox: &Receiver<Event>) {
        while !self.closed {
            self.carry_out_actions();
            if self.closed {
                break;
            }
            let event = match self.conn.poll_timeout() {
                Some(deadline) => match inbox.recv_deadline(deadline) {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match inbox.recv() {
                    Ok(event) => Some(event),
                    Err(_) => return,
                },
            };
            let now = Instant::now();
            match event {
                None => self.conn.handle_timeout(now),
                Some(Event::Bytes(bytes)) => {
                    self.backlog.take(bytes.len());
                    self.reader.push_owned(bytes);
                    self.consume_pdus(now);
                }
                Some(Event::ReadClosed(error)) => {
                    match error {
                        Some(e) => log::warn!("{}: read failed: {e}", self.peer),
                        None if !self.conn.is_closed() => {
                            log::info!("{}: initiator closed the connection", self.peer)
                        }
                        None => {}
                    }
                    self.closed = true;
                }
                Some(Event::Completed(id, outcome)) => self.conn.handle_scsi_complete(id, outcome),
                Some(Event::Shutdown) => self.conn.handle_shutdown(),
            }
            // A peer that keeps the inbox busy must not keep a due timer from firing.
            if self.conn.poll_timeout().is_some_and(|due| due <= now) {
                self.conn.handle_timeout(now);
            }
        }
    }

    /// Decodes every complete PDU buffered, applying the core's actions after each one so frame
    /// settings change exactly after the final Login Response. The data of a Data-Out the
    /// datamover expects is copied from the received bytes straight into its task's buffer.
    fn consume_pdus(&mut self, now: Instant) {
        while !self.closed {
            let frame = match self.reader.next_frame(&self.settings) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => {
                    self.conn.handle_frame_error(error, now);
                    self.carry_out_actions();
                    continue;
                }
            };
            if let Ok(header) = &frame.header {
                log::trace!("{} <- {header:?}", self.peer);
            }
            self.conn.receive_frame(&mut self.reader, frame, now, ());
            self.carry_out_actions();
        }
    }

    fn carry_out_actions(&mut self) {
        let mut out = Outbox::default();
        while let Some(action) = self.conn.poll_action() {
            self.perform(action, &mut out);
            if self.closed {
                return;
            }
        }
        self.flush(&mut out);
    }

    /// Carries out one action; PDUs to send are framed into `out`, written at the latest when
    /// the frame settings change or the connection closes.
    fn perform(&mut self, action: TcpAction, out: &mut Outbox) {
        match action {
            TcpAction::Send { pdu, .. } => {
                log::trace!("{} -> {:?}", self.peer, pdu);
                out.push_pdu(pdu, &self.settings);
            }
            TcpAction::SendDataIn {
                header,
                data,
                range,
                ..
            } => {
                log::trace!("{} -> {:?} ({} bytes)", self.peer, header, range.len());
                if let Err(e) = out.push_shared(&header, data, range, &self.settings) {
                    // The stream cannot go on without this PDU.
                    log::warn!("{}: reading Data-In from the backing file: {e}", self.peer);
                    self.closed = true;
                }
            }
            TcpAction::SetFrameSettings(settings) => {
                // Everything queued so far was framed with the old settings; send it first.
                self.flush(out);
                self.settings = settings;
            }
            TcpAction::BindSession(request) => {
                let control = Arc::new(ChannelControl(self.events.clone()));
                let events = self.events.clone();
                let sink: crate::server::session::CompletionSink = Arc::new(move |id, outcome| {
                    let _ = events.send(Event::Completed(id, outcome));
                });
                let result = self
                    .session
                    .bind(&self.shared, &request, control, true, sink);
                self.conn.handle_session_bound(result);
            }
            TcpAction::Execute(task) => {
                if let Some((id, outcome)) = self.session.execute(task) {
                    self.conn.handle_scsi_complete(id, outcome);
                }
            }
            TcpAction::Close(reason) => {
                // I_T nexus loss before the last PDUs (a Logout Response) go out: an initiator
                // that logs in again at once must not meet this session's SPC-2 reservation
                // (libiscsi's Reserve6.Logout does exactly that).
                self.session.release(&self.shared);
                self.flush(out);
                self.shared.refusals.iscsi_closed(&reason);
                match reason {
                    CloseReason::Logout | CloseReason::Shutdown => {
                        log::debug!("{}: closing ({reason:?})", self.peer)
                    }
                    _ => log::warn!("{}: closing ({reason:?})", self.peer),
                }
                self.closed = true;
            }
        }
    }

    fn flush(&mut self, out: &mut Outbox) {
        if out.is_empty() {
            return;
        }
        if self.closed {
            out.write_to(&mut io::sink()).ok();
            return;
        }
        if let Err(e) = out.write_to(&mut self.stream) {
            log::warn!("{}: send failed: {e}", self.peer);
            self.closed = true;
        }
    }
}
