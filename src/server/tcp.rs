//! iSCSI over TCP: a thread per connection drives the sans-IO core; a reader thread feeds it the
//! bytes the socket delivers; a per-session worker pool runs the backend I/O.
//!
//! Threads rather than an event loop: a connection's work is dominated by backend I/O and socket
//! writes that may block (a slow initiator), and a thread per connection confines each stall to
//! the connection that caused it (docs/architecture.md).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::registry::SessionControl;
use super::session::SessionSlot;
use super::{ConnectionSet, Shared};
use crate::iscsi::framing::{self, FrameSettings, PduReader};
use crate::iscsi::{Action, CloseReason, Connection, CoreConfig, TaskId};
use crate::scsi::ScsiOutcome;

/// A send that cannot make progress for this long means the initiator is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What wakes a connection's thread.
pub(super) enum Event {
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

/// Accepts connections on one TCP portal until `stop` is set.
pub(super) fn spawn_listener(
    listener: TcpListener,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name(format!("listen-{local}"))
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // Wake up periodically to notice shutdown without a self-connect trick.
                let mut fds = [nix::poll::PollFd::new(
                    listener.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log::error!("poll on {local}: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let core = Arc::clone(&core);
                        let shared = Arc::clone(&shared);
                        let spawned = std::thread::Builder::new()
                            .name(format!("conn-{peer}"))
                            .spawn(move || serve_connection(stream, peer, core, shared));
                        if let Err(e) = spawned {
                            log::error!("cannot start a thread for {peer}: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        log::warn!("accept on {local}: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
}

/// Reads the socket and forwards raw bytes; framing happens on the connection thread so that
/// digest settings switch exactly where the core says.
fn spawn_reader(mut stream: TcpStream, events: Sender<Event>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("conn-reader".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        let _ = events.send(Event::ReadClosed(None));
                        return;
                    }
                    Ok(n) => {
                        if events.send(Event::Bytes(buf[..n].to_vec())).is_err() {
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
    conn: Connection,
    stream: TcpStream,
    peer: SocketAddr,
    settings: FrameSettings,
    reader: PduReader,
    shared: Arc<Shared>,
    events: Sender<Event>,
    session: SessionSlot,
    closed: bool,
}

fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
) {
    let (events, inbox) = crossbeam_channel::unbounded();
    let control = Arc::new(ChannelControl(events.clone()));
    let _registration = ConnectionSet::register(&shared.connections, control);
    if let Err(e) = run_connection(stream, peer, core, shared, events, inbox) {
        log::warn!("connection from {peer}: {e}");
    }
}

fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let local = stream.local_addr().ok();
    let reader_thread = spawn_reader(stream.try_clone()?, events.clone())?;
    log::info!("connection from {peer}");
    let mut driver = Driver {
        conn: Connection::new(core, local, Instant::now()),
        stream,
        peer,
        settings: FrameSettings::default(),
        reader: PduReader::new(),
        shared,
        events,
        session: SessionSlot::default(),
        closed: false,
    };
    if driver.shared.stopping() {
        driver.conn.handle_shutdown();
    }
    driver.run(&inbox);
    let _ = driver.stream.shutdown(Shutdown::Both);
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
                    self.reader.push(&bytes);
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
        }
    }

    /// Decodes every complete PDU buffered, applying the core's actions after each one so frame
    /// settings change exactly after the final Login Response.
    fn consume_pdus(&mut self, now: Instant) {
        while !self.closed {
            match self.reader.next_pdu(&self.settings) {
                Ok(Some(pdu)) => {
                    log::trace!("{} <- {:?}", self.peer, pdu);
                    self.conn.handle_pdu(pdu, now);
                }
                Ok(None) => return,
                Err(error) => self.conn.handle_frame_error(error, now),
            }
            self.carry_out_actions();
        }
    }

    fn carry_out_actions(&mut self) {
        let mut out = Vec::new();
        while let Some(action) = self.conn.poll_action() {
            match action {
                Action::Send { pdu, .. } => {
                    log::trace!("{} -> {:?}", self.peer, pdu);
                    out.extend_from_slice(&framing::encode(&pdu, &self.settings));
                }
                Action::SetFrameSettings(settings) => {
                    // Everything queued so far was framed with the old settings; send it first.
                    self.flush(&mut out);
                    self.settings = settings;
                }
                Action::BindSession(request) => {
                    let control = Arc::new(ChannelControl(self.events.clone()));
                    let events = self.events.clone();
                    let sink: super::io::CompletionSink = Arc::new(move |id, outcome| {
                        let _ = events.send(Event::Completed(id, outcome));
                    });
                    let result = self.session.bind(&self.shared, &request, control, sink);
                    self.conn.handle_session_bound(result);
                }
                Action::Execute(task) => {
                    if let Some((id, outcome)) = self.session.execute(task) {
                        self.conn.handle_scsi_complete(id, outcome);
                    }
                }
                Action::Reset { lun } => self.session.reset(&self.shared, lun),
                Action::Close(reason) => {
                    self.flush(&mut out);
                    match reason {
                        CloseReason::Logout | CloseReason::Shutdown => {
                            log::debug!("{}: closing ({reason:?})", self.peer)
                        }
                        _ => log::warn!("{}: closing ({reason:?})", self.peer),
                    }
                    self.closed = true;
                    return;
                }
            }
        }
        self.flush(&mut out);
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() || self.closed {
            out.clear();
            return;
        }
        if let Err(e) = self.stream.write_all(out) {
            log::warn!("{}: send failed: {e}", self.peer);
            self.closed = true;
        }
        out.clear();
    }
}
