//! The socket side of a TCP connection resident on an engine thread, the same for iSCSI/TCP and
//! NVMe/TCP: the read and write polls it has armed, the outbox and how much of it the peer has
//! not taken, the write stall deadline, the order in which a closing connection stops
//! reading, sends its last bytes and shuts the socket down, and a connection's turn of reads
//! ([`read_turn`]).

use std::io::{self, IoSliceMut, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outbox::Outbox;
use crate::server::engine::{Interest, Residence, ThreadIo};
use crate::server::registry::SessionControl;

/// A send that cannot make progress for this long means the peer is gone.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one read may take from the socket.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// Smallest new buffer a read is given: a new buffer follows the size of recent reads, so a
/// connection with small PDUs does not hold a large one.
pub(crate) const MIN_READ_CHUNK: usize = 16 * 1024;
/// Full reads' worth of bytes per readiness event: a peer that keeps its socket full gets its
/// turn, then the thread's other connections get theirs (the poll is armed again and fires at
/// once).
pub(crate) const READS_PER_TURN: usize = 4;
/// Output not yet taken by the peer beyond which the connection stops reading: a peer that
/// sends commands without reading the answers is held back by TCP flow control instead of
/// growing the process's memory.
pub(crate) const BACKLOG_LIMIT: usize = 16 * READ_CHUNK;

/// Lets the registry and the server ask a resident connection to shut down.
pub(crate) struct ResidentControl {
    pub(crate) requested: AtomicBool,
    residence: Residence,
}

impl ResidentControl {
    pub(crate) fn new(residence: Residence) -> Arc<ResidentControl> {
        Arc::new(ResidentControl {
            requested: AtomicBool::new(false),
            residence,
        })
    }

    /// Whether a shutdown was asked for.
    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

impl SessionControl for ResidentControl {
    fn request_shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.residence.poke();
    }
}

/// A resident connection's socket, its output and its closing state.
pub(crate) struct SocketLink {
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) peer: SocketAddr,
    /// What the peer is called in log lines ("initiator", "host").
    role: &'static str,
    pub(crate) outbox: Outbox,
    read_armed: bool,
    write_armed: bool,
    /// The connection is ending: no more reading; the last output goes out, then the socket
    /// is shut down.
    pub(crate) closing: bool,
    /// The peer is gone or unresponsive: unsent output is dropped.
    pub(crate) broken: bool,
    /// The socket has been shut down; the connection ends when its polls have completed.
    shut: bool,
    /// Since when output has been waiting without the peer taking any.
    stalled_since: Option<Instant>,
}

impl SocketLink {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, role: &'static str) -> SocketLink {
        SocketLink {
            stream: Arc::new(stream),
            peer,
            role,
            outbox: Outbox::default(),
            read_armed: false,
            write_armed: false,
            closing: false,
            broken: false,
            shut: false,
            stalled_since: None,
        }
    }

    /// A poll armed by this link completed; true when the socket should now be read.
    pub(crate) fn ready(&mut self, interest: Interest, result: io::Result<usize>) -> bool {
        match interest {
            Interest::Read => {
                self.read_armed = false;
                if let Err(e) = result {
                    self.fail(format_args!("poll failed: {e}"));
                    false
                } else {
                    !self.closing
                }
            }
            // The next settle writes what the socket now takes.
            Interest::Write => {
                self.write_armed = false;
                false
            }
        }
    }

    /// Whether another read may be taken now (not closing, output not backed up).
    pub(crate) fn may_read(&self) -> bool {
        !self.closing && self.outbox.queued() < BACKLOG_LIMIT
    }

    /// Ends the connection when its output has been stalled past [`WRITE_TIMEOUT`] at `now`;
    /// true when it did.
    pub(crate) fn check_stall(&mut self, now: Instant) -> bool {
        if self
            .stalled_since
            .is_some_and(|since| now >= since + WRITE_TIMEOUT)
        {
            let role = self.role;
            self.fail(format_args!(
                "send failed: the {role} took nothing for {WRITE_TIMEOUT:?}"
            ));
            return true;
        }
        false
    }

    /// The earlier of the write stall deadline and `core`'s (ignored once closing).
    pub(crate) fn deadline(&self, core: Option<Instant>) -> Option<Instant> {
        let write = self.stalled_since.map(|since| since + WRITE_TIMEOUT);
        let core = core.filter(|_| !self.closing);
        match (write, core) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes what the socket takes, then shuts a closing connection's socket down once its
    /// output is gone, or arms the next read.
    pub(crate) fn settle(&mut self, io: &mut ThreadIo<'_>) {
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

    /// Writes what the socket takes; the rest waits for POLLOUT.
    fn write(&mut self, io: &mut ThreadIo<'_>) {
        if self.broken {
            self.outbox.clear();
        }
        if self.outbox.is_empty() {
            self.stalled_since = None;
            return;
        }
        if self.write_armed {
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
    pub(crate) fn fail(&mut self, why: std::fmt::Arguments<'_>) {
        if !self.broken {
            log::warn!("{}: {why}", self.peer);
        }
        self.closing = true;
        self.broken = true;
    }

    /// The peer closed its side (a read found the end of the stream): end the connection, and
    /// say so in the log unless the protocol had `ended` it already.
    fn peer_closed(&mut self, ended: bool) {
        if !ended {
            log::info!("{}: {} closed the connection", self.peer, self.role);
        }
        self.break_off();
    }

    /// The peer closed or the connection was aborted: end it, dropping unsent output.
    pub(crate) fn break_off(&mut self) {
        self.closing = true;
        self.broken = true;
    }

    /// The socket is shut down and no poll is armed any more.
    pub(crate) fn is_finished(&self) -> bool {
        self.shut && !self.read_armed && !self.write_armed
    }
}

/// A resident connection as its turn of reads sees it ([`read_turn`]): where the socket's next
/// read goes and what runs on what it brought.
pub(crate) trait TurnReader {
    /// The connection's socket side.
    fn link(&mut self) -> &mut SocketLink;
    /// The socket and the rooms of its next vectored read, filled in order: the framer's (a
    /// command's buffer for a large payload, with room for the next header behind it).
    fn rooms(&mut self) -> (&TcpStream, &mut [u8], &mut [u8]);
    /// The read put `n` bytes into the rooms (`room` bytes in all; `n` is 0 after the end of
    /// the stream or an error, which gives the rooms back): the framer takes them and what
    /// they complete runs.
    fn received(&mut self, n: usize, room: usize, io: &mut ThreadIo<'_>);
    /// The protocol has ended the connection: the peer's close is expected, not news.
    fn ended(&self) -> bool;
}

/// Reads what the socket of `conn` has (a few buffers' worth at most) and runs what it
/// completes, read by read. The turn's share is counted in bytes, [`READS_PER_TURN`] full
/// buffers: direct reads end at each large PDU's data, so counting reads would cut a turn of
/// large writes to half the bytes and double the polls per PDU.
pub(crate) fn read_turn(conn: &mut impl TurnReader, io: &mut ThreadIo<'_>) {
    let mut budget = READS_PER_TURN * READ_CHUNK;
    for _ in 0..READS_PER_TURN * 4 {
        if !conn.link().may_read() || budget == 0 {
            return;
        }
        // The socket is read straight into the framer's buffers or a command's buffer, with
        // the next header behind it in one vectored read: received bytes are not copied on
        // their way to the core.
        let (mut stream, first, second) = conn.rooms();
        let room = first.len() + second.len();
        let result = stream.read_vectored(&mut [IoSliceMut::new(first), IoSliceMut::new(second)]);
        conn.received(*result.as_ref().unwrap_or(&0), room, io);
        match result {
            Ok(0) => {
                let ended = conn.ended();
                conn.link().peer_closed(ended);
                return;
            }
            Ok(n) => {
                budget = budget.saturating_sub(n);
                if n < room {
                    // The socket is very likely empty: wait for the next poll rather than
                    // spend a read on EAGAIN.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                conn.link().fail(format_args!("read failed: {e}"));
                return;
            }
        }
    }
}
