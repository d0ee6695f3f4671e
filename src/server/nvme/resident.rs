//! One NVMe/TCP queue connection living on an engine thread: the thread polls its socket in
//! its ring, hands what it reads to the sans-IO [`Queue`], carries out the queue's actions
//! (controller creation and joins against the shared registry, I/O as SCSI commands on the
//! namespace's LUN, PDUs into the outbox) and writes with non-blocking vectored writes.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NvmeState;
use crate::iscsi::tcp::DataInBuf;
use crate::iscsi::TaskId;
use crate::nvme::{Action, CloseReason, Queue, DISCOVERY_SUBSYSTEM};
use crate::scsi::{Nexus, ScsiOutcome};
use crate::server::admission::AdmissionTicket;
use crate::server::engine::{EngineSession, Interest, Residence, Resident, ThreadIo};
use crate::server::registry::SessionControl;
use crate::server::tcp::outbox::Outbox;
use crate::server::{ConnectionRegistration, ConnectionSet, Shared};

/// A send that cannot make progress for this long means the host is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes one read takes from the socket at most.
const READ_CHUNK: usize = 256 * 1024;
/// Reads per readiness event, so one busy host cannot starve the thread's other connections.
const READS_PER_TURN: usize = 4;
/// Output not yet taken by the host beyond which the connection stops reading (TCP flow
/// control then holds the host back).
const BACKLOG_LIMIT: usize = 16 * READ_CHUNK;

/// Lets the server (shutdown) and the controller's admin queue (reset, death) end a queue.
struct QueueControl {
    requested: AtomicBool,
    residence: Residence,
}

impl SessionControl for QueueControl {
    fn request_shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.residence.poke();
    }
}

/// Moves a freshly accepted connection to an engine thread.
pub(super) fn start(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: AdmissionTicket,
    nvme: Arc<NvmeState>,
    shared: Arc<Shared>,
) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let residence = shared.engine.reserve_residence();
    let control = Arc::new(QueueControl {
        requested: AtomicBool::new(false),
        residence: residence.clone(),
    });
    let registration = ConnectionSet::register(&shared.connections, control.clone());
    log::debug!("NVMe/TCP connection from {peer}");
    let queue = Queue::new(nvme.config_for(local), Instant::now());
    residence.attach(Box::new(NvmeResident {
        queue,
        stream: Arc::new(stream),
        peer,
        nvme,
        shared,
        residence: residence.clone(),
        control,
        outbox: Outbox::default(),
        read_buf: Vec::new(),
        engine: None,
        place: None,
        read_armed: false,
        write_armed: false,
        closing: false,
        broken: false,
        released: false,
        shut: false,
        stalled_since: None,
        _registration: registration,
        _ticket: ticket,
    }));
    Ok(())
}

/// The engine session running a queue's I/O, the subsystem it belongs to and its I_T nexus.
struct Attached {
    session: EngineSession,
    subsystem: usize,
    nexus: Arc<Nexus>,
}

struct NvmeResident {
    queue: Queue,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    nvme: Arc<NvmeState>,
    shared: Arc<Shared>,
    residence: Residence,
    control: Arc<QueueControl>,
    outbox: Outbox,
    read_buf: Vec<u8>,
    /// Once connected to an NVM subsystem's controller.
    engine: Option<Attached>,
    /// (controller ID, queue ID) once connected, until released.
    place: Option<(u16, u16)>,
    read_armed: bool,
    write_armed: bool,
    /// The queue is ending: no more reading; released once its I/O is reported.
    closing: bool,
    /// The host is gone or unresponsive: unsent output is dropped.
    broken: bool,
    /// Its I/O drained and its place in the controller given up.
    released: bool,
    shut: bool,
    stalled_since: Option<Instant>,
    _registration: ConnectionRegistration,
    _ticket: AdmissionTicket,
}

impl Resident for NvmeResident {
    fn start(&mut self, io: &mut ThreadIo<'_>) {
        if self.shared.stopping() || self.control.requested.load(Ordering::SeqCst) {
            self.queue.handle_shutdown();
            self.carry_out_actions(io);
        }
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
            Interest::Write => self.write_armed = false,
        }
    }

    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, io: &mut ThreadIo<'_>) {
        if !self.closing {
            self.queue.handle_scsi_complete(id, outcome);
            self.carry_out_actions(io);
        }
    }

    fn poked(&mut self, io: &mut ThreadIo<'_>) {
        if !self.closing && self.control.requested.load(Ordering::SeqCst) {
            self.queue.handle_shutdown();
            self.carry_out_actions(io);
        }
    }

    fn timeout(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        if self
            .stalled_since
            .is_some_and(|since| now >= since + WRITE_TIMEOUT)
        {
            self.fail(format_args!(
                "send failed: the host took nothing for {WRITE_TIMEOUT:?}"
            ));
            return;
        }
        if !self.closing && self.queue.poll_timeout().is_some_and(|due| due <= now) {
            self.queue.handle_timeout(now);
            self.carry_out_actions(io);
        }
    }

    fn abort(&mut self, _io: &mut ThreadIo<'_>) {
        self.closing = true;
        self.broken = true;
    }

    fn settle(&mut self, io: &mut ThreadIo<'_>) {
        if self.closing && !self.released {
            if self
                .engine
                .as_ref()
                .is_some_and(|e| e.session.outstanding() > 0)
            {
                // Released when the last I/O is reported (a later settle).
                return;
            }
            self.release();
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
            self.queue.poll_timeout()
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

impl NvmeResident {
    /// Reads what the socket has (a few buffers at most) and hands it to the queue.
    fn read(&mut self, io: &mut ThreadIo<'_>) {
        for _ in 0..READS_PER_TURN {
            if self.closing || self.outbox.queued() >= BACKLOG_LIMIT {
                return;
            }
            self.read_buf.resize(READ_CHUNK, 0);
            match (&*self.stream).read(&mut self.read_buf) {
                Ok(0) => {
                    if !self.queue.is_closed() {
                        log::info!("{}: NVMe/TCP host closed the connection", self.peer);
                    }
                    self.closing = true;
                    self.broken = true;
                    return;
                }
                Ok(n) => {
                    self.queue.handle_bytes(&self.read_buf[..n], Instant::now());
                    self.carry_out_actions(io);
                    if n < READ_CHUNK {
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

    fn carry_out_actions(&mut self, io: &mut ThreadIo<'_>) {
        while let Some(action) = self.queue.poll_action() {
            self.perform(action, io);
        }
    }

    fn perform(&mut self, action: Action, io: &mut ThreadIo<'_>) {
        match action {
            Action::Send(bytes) => self.outbox.push_bytes(bytes),
            Action::SendData {
                head,
                data,
                range,
                tail,
            } => {
                self.outbox.push_bytes(head);
                self.outbox.push_buffer(DataInBuf::Shared(data), range);
                self.outbox.push_bytes(tail);
            }
            Action::CreateController(request) => {
                let result = self.nvme.lock_registry().create(&request);
                if let Ok((cntlid, _)) = &result {
                    self.join(*cntlid, 0, request.subsystem, &request.host_nqn);
                }
                self.queue.handle_controller_created(result, Instant::now());
            }
            Action::JoinController(request) => {
                let result = self.nvme.lock_registry().join(&request);
                if result.is_ok() {
                    self.join(
                        request.cntlid,
                        request.qid,
                        request.subsystem,
                        &request.host_nqn,
                    );
                }
                self.queue.handle_controller_joined(result, Instant::now());
            }
            Action::ControllerChanged { cntlid, state } => {
                let ended = self.nvme.lock_registry().update(cntlid, state);
                self.nvme.shut_down_queues(cntlid, &ended);
            }
            Action::Execute(command) => {
                let id = command.id;
                let target = self.engine.as_ref().and_then(|e| {
                    let ns = self.nvme.namespace(e.subsystem, command.nsid)?;
                    Some((e, ns))
                });
                match target {
                    Some((attached, ns)) => {
                        let task = crate::nvme::scsi::lower(
                            command,
                            attached.subsystem,
                            ns.lun,
                            ns.block_size,
                        );
                        io.execute(&attached.session, task);
                    }
                    // The core checks the namespace before it executes; this cannot happen
                    // on a connected I/O queue, and fails the command if it does.
                    None => self
                        .queue
                        .handle_scsi_complete(id, ScsiOutcome::check_condition(0x04, 0x44, 0)),
                }
            }
            Action::Close(reason) => {
                match &reason {
                    CloseReason::Disconnect | CloseReason::Shutdown => {
                        log::debug!("{}: NVMe/TCP queue closing ({reason:?})", self.peer)
                    }
                    CloseReason::HostTerminated { .. } => {
                        log::info!("{}: NVMe/TCP queue closing ({reason:?})", self.peer)
                    }
                    _ => log::warn!("{}: NVMe/TCP queue closing ({reason:?})", self.peer),
                }
                self.closing = true;
            }
        }
    }

    /// The queue is now queue `qid` of controller `cntlid`: it can be reached to shut down,
    /// and an NVM subsystem's queue gets an engine session for its I/O. The I_T nexus of a
    /// controller is its host NQN and controller ID.
    fn join(&mut self, cntlid: u16, qid: u16, subsystem: usize, host_nqn: &str) {
        self.place = Some((cntlid, qid));
        let control: Arc<dyn SessionControl> = self.control.clone();
        self.nvme.lock_queues().insert((cntlid, qid), control);
        if subsystem != DISCOVERY_SUBSYSTEM {
            let [hi, lo] = cntlid.to_be_bytes();
            let nexus = Arc::new(Nexus {
                initiator_name: host_nqn.to_string(),
                isid: [0, 0, 0, 0, hi, lo],
            });
            let session =
                self.shared
                    .engine
                    .resident_session(&self.residence, subsystem, Arc::clone(&nexus));
            self.engine = Some(Attached {
                session,
                subsystem,
                nexus,
            });
        }
    }

    /// Gives up the queue's place: an admin queue's controller ends with its I/O queues, an
    /// I/O queue leaves its controller. Called once no I/O is outstanding.
    fn release(&mut self) {
        self.released = true;
        if let Some(attached) = self.engine.take() {
            // I_T nexus loss, as an iSCSI session's end: the LUs forget the nexus (its unit
            // attention queue), or every controller ever connected would stay listed there.
            // Sibling queues of the controller that still run are registered again by their
            // next command (losing a pending unit attention, which NVMe hosts cannot read).
            drop(attached.session);
            self.shared.scsi_targets[attached.subsystem].release_nexus(&attached.nexus);
        }
        let Some((cntlid, qid)) = self.place.take() else {
            return;
        };
        {
            // Only this queue's own entry: after a controller reset a new queue with the same
            // ID may have joined while this one was still closing.
            let mut queues = self.nvme.lock_queues();
            let mine: Arc<dyn SessionControl> = self.control.clone();
            if queues
                .get(&(cntlid, qid))
                .is_some_and(|c| Arc::ptr_eq(c, &mine))
            {
                queues.remove(&(cntlid, qid));
            }
        }
        if qid == 0 {
            let ended = self.nvme.lock_registry().remove(cntlid);
            self.nvme.shut_down_queues(cntlid, &ended);
        } else {
            self.nvme.lock_registry().leave(cntlid, qid);
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

    fn fail(&mut self, why: std::fmt::Arguments<'_>) {
        if !self.broken {
            log::warn!("{}: {why}", self.peer);
        }
        self.closing = true;
        self.broken = true;
    }
}

impl Drop for NvmeResident {
    fn drop(&mut self) {
        if !self.released {
            // Dropped unsettled (its thread stopped): its I/O is over with the engine.
            self.release();
        }
        log::debug!("NVMe/TCP connection from {} closed", self.peer);
    }
}
