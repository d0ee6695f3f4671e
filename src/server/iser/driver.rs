//! One iSER connection: a thread that sleeps on the completion channel of the connection's CQs
//! and on a doorbell (an eventfd rung by the I/O workers and the rdma_cm event thread), feeds
//! receives and RDMA Read completions to the sans-IO [`IserConnection`] and posts the fabric
//! operations it asks for.
//!
//! Resources: registered receive areas sliced into buffers — a couple for the login phase,
//! posted before `rdma_accept`, and the full-feature set posted before the final Login Response
//! — each re-posted as soon as its bytes are copied out, before the PDU is handled; a
//! registered staging arena, set up with the full-feature buffers, from which every Send takes
//! its bytes ring-fashion, since send-queue completions arrive in posting order (during login,
//! Sends register their bytes one by one); and registrations of the buffer pool's arenas
//! (`mem_ffi`), made the first time a task's buffer in one is met: RDMA Writes go straight from
//! a READ's buffer and RDMA Reads land straight in a WRITE's, with no copy. A buffer under a
//! posted WR is never recycled: an RDMA Write's source is held with the WR until its
//! completion, a WRITE's buffer by the adapter until its reads are reported, and both are
//! leaked if the QP cannot be drained at teardown. Sends are signaled, an RDMA Write chained
//! ahead of its response is not; at most `max_send_wr` are outstanding and at most
//! `max_rdma_reads` RDMA Reads. An operation that cannot be posted yet waits, with
//! everything behind it, until completions free room; an initiator that lets too many PDUs pile
//! up that way is dropped.
//!
//! Any failed or flushed completion outside teardown, and a fatal async event on the QP, end the
//! connection: the QP is in error and nothing more will move on it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mem_ffi::{Arena, ArenaId, Payload};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rdma_ffi::{
    Access, AsyncEventKind, CmEventKind, CompletionChannel, CompletionQueue, MemoryRegion,
    ProtectionDomain, QueuePair, SendOp, SendWr, WcStatus, WorkCompletion,
};

use super::ring::Ring;
use crate::iscsi::iser::{FabricOp, IserConnection};
use crate::iscsi::{CloseReason, CoreConfig, TaskId};
use crate::scsi::ScsiOutcome;
use crate::server::registry::SessionControl;
use crate::server::session::SessionSlot;
use crate::server::{ConnectionSet, Shared};

/// wr_id bit marking a receive; bits 32.. name the receive area, the low bits the slot.
const WR_RECV: u64 = 1 << 62;
/// Receive area of the login buffers.
pub(super) const LOGIN_AREA: u32 = 0;
/// Receive area of the full-feature buffers.
const FULL_FEATURE_AREA: u32 = 1;

/// The wr_id of receive buffer `slot` of `area`.
pub(super) fn recv_wr_id(area: u32, slot: u32) -> u64 {
    WR_RECV | (u64::from(area) << 32) | u64::from(slot)
}

/// (area, slot) of a receive wr_id.
fn recv_slot(wr_id: u64) -> (usize, usize) {
    (
        ((wr_id & !WR_RECV) >> 32) as usize,
        (wr_id & 0xffff_ffff) as usize,
    )
}
/// How long a closing connection waits for its last Sends (a Logout Response) to complete.
const LINGER: Duration = Duration::from_secs(2);
/// How long teardown waits for DISCONNECTED after `rdma_disconnect`.
const DISCONNECT_WAIT: Duration = Duration::from_secs(3);
/// Bound on flushing the QP at teardown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What wakes a connection's thread besides completions.
pub(super) enum Event {
    /// A SCSI command finished in the backend.
    Completed(TaskId, ScsiOutcome),
    /// Server stop or session reinstatement.
    Shutdown,
    /// An rdma_cm event for this connection's id.
    Cm(CmEventKind),
    /// An asynchronous event of this connection's QP.
    Async(AsyncEventKind),
}

/// An eventfd that wakes the connection's poll.
pub(super) struct Doorbell(EventFd);

impl Doorbell {
    pub(super) fn new() -> std::io::Result<Arc<Self>> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Doorbell(fd)))
    }

    fn ring(&self) {
        let _ = self.0.write(1);
    }

    fn clear(&self) {
        let _ = self.0.read();
    }
}

/// How other threads reach a connection: its event queue plus the doorbell.
#[derive(Clone)]
pub(super) struct Mailbox {
    pub(super) events: Sender<Event>,
    pub(super) bell: Arc<Doorbell>,
}

impl Mailbox {
    pub(super) fn post(&self, event: Event) {
        if self.events.send(event).is_ok() {
            self.bell.ring();
        }
    }
}

impl SessionControl for Mailbox {
    fn request_shutdown(&self) {
        self.post(Event::Shutdown);
    }
}

/// Everything created for a connection at accept time.
///
/// Field order is drop order, and it matters: `qp` owns the connection's rdma_cm id, and
/// librdmacm closes a removed device's context as soon as the last id on it is destroyed
/// (librdmacm cma.c, ucma_put_device). Every verbs object must be released before that, or its
/// destroy call fails with EBADF and its registered memory leaks: the receive areas first, then
/// the queue pair, whose own drop destroys the QP, its CQs, channel and PD and the id last.
pub(super) struct Resources {
    /// Name of the RDMA device.
    pub(super) device: String,
    /// Receive areas by index: the login buffers, then (from login on) the full-feature ones.
    pub(super) recv_areas: Vec<Arc<MemoryRegion>>,
    pub(super) send_cq: Arc<CompletionQueue>,
    pub(super) recv_cq: Arc<CompletionQueue>,
    pub(super) channel: Arc<CompletionChannel>,
    pub(super) pd: Arc<ProtectionDomain>,
    pub(super) recv_stride: usize,
    /// Full-feature receive buffers to post at login.
    pub(super) full_recv_slots: u32,
    /// Bytes of the staging arena to register at login.
    pub(super) arena_len: usize,
    pub(super) max_send_wr: usize,
    /// Most PDUs that may wait for room on the send queue.
    pub(super) max_pending_sends: usize,
    pub(super) max_rdma_reads: usize,
    /// The CM exchange agreed to Send-with-Invalidate.
    pub(super) send_with_invalidate: bool,
    /// Last: see the drop order above.
    pub(super) qp: QueuePair,
}

/// Operations waiting to be posted, in order, with a bound on the Sends among them.
struct Backlog {
    ops: VecDeque<FabricOp>,
    sends: usize,
    max_sends: usize,
}

impl Backlog {
    fn new(max_sends: usize) -> Self {
        Backlog {
            ops: VecDeque::new(),
            sends: 0,
            max_sends,
        }
    }

    /// Queues `op`; fails when more Sends wait than the initiator could ever have asked for.
    fn push_back(&mut self, op: FabricOp) -> Result<(), String> {
        if matches!(op, FabricOp::Send { .. }) {
            if self.sends >= self.max_sends {
                return Err(format!(
                    "{} PDUs are waiting to be sent: the initiator stopped taking them",
                    self.sends
                ));
            }
            self.sends += 1;
        }
        self.ops.push_back(op);
        Ok(())
    }

    fn pop_front(&mut self) -> Option<FabricOp> {
        let op = self.ops.pop_front()?;
        if matches!(op, FabricOp::Send { .. }) {
            self.sends -= 1;
        }
        Some(op)
    }

    /// Puts back an op that could not be posted yet.
    fn push_front(&mut self, op: FabricOp) {
        if matches!(op, FabricOp::Send { .. }) {
            self.sends += 1;
        }
        self.ops.push_front(op);
    }

    fn clear(&mut self) {
        self.ops.clear();
        self.sends = 0;
    }
}

/// Bytes of a Send staged in registered memory.
enum Staged {
    Arena(usize),
    /// A one-off registration for a Send larger than the arena (and those of the login phase).
    OneOff(Arc<MemoryRegion>),
}

/// Where a posted send-queue WR keeps its bytes.
enum Buffer {
    /// A Send's bytes, copied into registered memory.
    Staged(Staged),
    /// A task's read data, the source of its RDMA Writes: held by the last of them until the
    /// completion, so the pool does not hand it out (nor a RAM LUN free it) while the NIC
    /// reads it.
    Task(Payload),
    /// An RDMA Write of a piece of read data whose later Write of the same chain holds it.
    Chained,
    /// A task's write buffer, the target of an RDMA Read: the adapter keeps it until the read
    /// is reported (see [`IserConnection::rdma_read_placement`]).
    InTask,
}

enum Kind {
    Send,
    Write,
    Read { token: u64 },
}

struct InFlight {
    wr_id: u64,
    buffer: Buffer,
    kind: Kind,
}

/// Why the connection is going away.
enum Ending {
    /// The core closed it (Logout, shutdown, protocol error...): let its last Sends go out first.
    Core(CloseReason, Instant),
    /// The fabric failed or the peer disconnected: stop at once.
    Fabric(String),
}

enum Posted {
    Yes,
    /// Not enough room yet; retry after completions.
    Later,
}

struct Driver {
    conn: IserConnection,
    /// The staging arena and its allocator, from login on. Before `res`: registered memory is
    /// released before the connection's rdma_cm id (see [`Resources`]).
    arena: Option<(Arc<MemoryRegion>, Ring)>,
    /// Registrations of the buffer pool's arenas on this connection's PD, made the first time
    /// a task's buffer in the arena is met; RDMA Writes and Reads go straight from and into the
    /// tasks' buffers through them. Before `res`, as `arena`.
    pool_mrs: HashMap<ArenaId, Arc<MemoryRegion>>,
    inflight: VecDeque<InFlight>,
    res: Resources,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Receiver<Event>,
    session: SessionSlot,
    pending: Backlog,
    next_wr: u64,
    reads: usize,
    ending: Option<Ending>,
    done: bool,
    disconnected: bool,
    peer: String,
    wcs: Vec<WorkCompletion>,
    /// The last received Send, copied out of its receive buffer (reused: no allocation per PDU).
    received: Vec<u8>,
}

/// Runs one accepted connection to its end on the calling thread.
pub(super) fn serve(
    res: Resources,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Receiver<Event>,
) {
    let peer = res
        .qp
        .id()
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a: SocketAddr| a.to_string());
    let local = res.qp.id().local_addr();
    let _registration = ConnectionSet::register(&shared.connections, Arc::new(mailbox.clone()));
    log::info!(
        "iSER connection from {peer} (Send-with-Invalidate {})",
        if res.send_with_invalidate {
            "on"
        } else {
            "off"
        }
    );
    let pending = Backlog::new(res.max_pending_sends);
    let mut driver = Driver {
        conn: IserConnection::new(core, local, res.send_with_invalidate, Instant::now()),
        res,
        shared,
        mailbox,
        inbox,
        session: SessionSlot::default(),
        arena: None,
        pool_mrs: HashMap::new(),
        pending,
        inflight: VecDeque::new(),
        next_wr: 1,
        reads: 0,
        ending: None,
        done: false,
        disconnected: false,
        peer,
        wcs: Vec::with_capacity(32),
        received: Vec::new(),
    };
    if driver.shared.stopping() {
        driver.conn.handle_shutdown();
    }
    driver.run();
    driver.teardown();
    log::info!("iSER connection from {} closed", driver.peer);
}

impl Driver {
    fn run(&mut self) {
        if let Err(e) = self.arm() {
            self.fail(format!("arming the CQs: {e}"));
            return;
        }
        while !self.done {
            self.poll_cqs();
            self.drain_inbox();
            self.pump();
            self.post_pending();
            if self.done {
                break;
            }
            let now = Instant::now();
            let mut deadline = self.conn.poll_timeout();
            if let Some(Ending::Core(_, since)) = &self.ending {
                let linger = *since + LINGER;
                deadline = Some(deadline.map_or(linger, |d| d.min(linger)));
            }
            let timeout = match deadline {
                Some(d) => {
                    let ms = d.saturating_duration_since(now).as_millis();
                    PollTimeout::try_from(ms.min(60_000) as u32 + 1).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(self.res.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.mailbox.bell.0.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    self.fail(format!("poll: {e}"));
                    break;
                }
            }
            self.mailbox.bell.clear();
            if let Err(e) = self.ack_channel() {
                self.fail(format!("completion channel: {e}"));
                break;
            }
            let now = Instant::now();
            if self.conn.poll_timeout().is_some_and(|d| d <= now) {
                self.conn.handle_timeout(now);
            }
            if let Some(Ending::Core(reason, since)) = &self.ending {
                if now >= *since + LINGER {
                    log::debug!(
                        "{}: closing ({reason:?}) with {} WRs still outstanding",
                        self.peer,
                        self.inflight.len()
                    );
                    self.done = true;
                }
            }
        }
    }

    /// Re-arms both CQs; completions that raced the arming are found by the next poll.
    fn arm(&self) -> rdma_ffi::Result<()> {
        self.res.recv_cq.req_notify(false)?;
        self.res.send_cq.req_notify(false)
    }

    /// Consumes completion-channel events and re-arms.
    fn ack_channel(&self) -> rdma_ffi::Result<()> {
        let mut fired = false;
        while self.res.channel.get_event()?.is_some() {
            fired = true;
        }
        if fired {
            self.arm()?;
        }
        Ok(())
    }

    fn poll_cqs(&mut self) {
        loop {
            let mut seen = 0;
            self.wcs.clear();
            match self.res.recv_cq.poll(&mut self.wcs, 32) {
                Ok(n) => seen += n,
                Err(e) => return self.fail(format!("polling the receive CQ: {e}")),
            }
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                self.on_recv(wc);
            }
            self.wcs = wcs;
            self.wcs.clear();
            match self.res.send_cq.poll(&mut self.wcs, 32) {
                Ok(n) => seen += n,
                Err(e) => return self.fail(format!("polling the send CQ: {e}")),
            }
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                self.on_send(wc);
            }
            self.wcs = wcs;
            if seen == 0 || self.done {
                return;
            }
            // Completions free room: post what waited, and handle what the core produced.
            self.pump();
            self.post_pending();
        }
    }

    fn on_recv(&mut self, wc: &WorkCompletion) {
        if wc.status != WcStatus::Success {
            // A flush outside teardown means the QP went into error (the peer broke it).
            self.fail(format!("receive completion {:?}", wc.status));
            return;
        }
        let (area, slot) = recv_slot(wc.wr_id);
        let Some(mr) = self.res.recv_areas.get(area).cloned() else {
            return self.fail(format!("receive completion for unknown area {area}"));
        };
        let offset = slot * self.res.recv_stride;
        let len = (wc.byte_len as usize).min(self.res.recv_stride);
        if self.received.len() < len {
            self.received.resize(self.res.recv_stride, 0);
        }
        if let Err(e) = mr.read(offset, &mut self.received[..len]) {
            return self.fail(format!("reading receive buffer {slot}: {e}"));
        }
        // Re-post before the PDU is handled, so the buffer is back before any response leaves.
        if self.ending.is_none() {
            if let Err(e) = self
                .res
                .qp
                .post_recv(wc.wr_id, &mr, offset, self.res.recv_stride)
            {
                return self.fail(format!("re-posting receive buffer {slot}: {e}"));
            }
        }
        if self.ending.is_some() {
            return;
        }
        log::trace!("{} <- {len} bytes", self.peer);
        self.conn
            .handle_receive(&self.received[..len], Instant::now());
    }

    fn on_send(&mut self, wc: &WorkCompletion) {
        let Some(pos) = self.inflight.iter().position(|f| f.wr_id == wc.wr_id) else {
            log::warn!("{}: completion for unknown wr_id {}", self.peer, wc.wr_id);
            return;
        };
        // Unsignaled WRs posted before this one (RDMA Writes chained ahead of their response)
        // completed with it: a send queue completes in posting order.
        for _ in 0..pos {
            if let Some(earlier) = self.inflight.pop_front() {
                if let Buffer::Staged(Staged::Arena(start)) = earlier.buffer {
                    self.free_staged(start);
                }
            }
        }
        let pos = 0;
        let Some(done) = self.inflight.remove(pos) else {
            return;
        };
        if let Buffer::Staged(Staged::Arena(start)) = &done.buffer {
            self.free_staged(*start);
        }
        if let Kind::Read { token } = done.kind {
            self.reads -= 1;
            if self.ending.is_none() {
                // The data landed in the task's buffer itself: nothing to copy.
                if wc.status == WcStatus::Success {
                    self.conn.handle_rdma_read_complete(token, Instant::now());
                } else {
                    self.conn.handle_rdma_read_failed(token);
                }
            }
        }
        // An RDMA Write's source buffer goes back to the pool only now.
        drop(done);
        // A flush outside teardown means the QP went into error (the peer broke it).
        if wc.status != WcStatus::Success {
            self.fail(format!(
                "send-queue completion {:?} (vendor error {:#x})",
                wc.status, wc.vendor_err
            ));
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(event) = self.inbox.try_recv() {
            match event {
                Event::Completed(id, outcome) => {
                    if self.ending.is_none() {
                        self.conn.handle_scsi_complete(id, outcome);
                    }
                }
                Event::Shutdown => {
                    if self.ending.is_none() {
                        self.conn.handle_shutdown();
                    }
                }
                Event::Cm(kind) => self.on_cm(kind),
                Event::Async(kind) => self.on_async(kind),
            }
        }
    }

    fn on_async(&mut self, kind: AsyncEventKind) {
        match kind {
            // Data arrived before the RTU: tell rdma_cm the connection is up (LIO
            // isert_qp_event_callback does the same), or it may time the connection out.
            AsyncEventKind::CommEst => {
                if let Err(e) = self.res.qp.id().notify_comm_est() {
                    log::debug!("{}: rdma_notify: {e}", self.peer);
                }
            }
            AsyncEventKind::QpFatal
            | AsyncEventKind::QpRequestError
            | AsyncEventKind::QpAccessError => self.fail(format!("QP async event {kind:?}")),
            other => log::debug!("{}: async event {other:?}", self.peer),
        }
    }

    fn on_cm(&mut self, kind: CmEventKind) {
        match kind {
            CmEventKind::Established => log::debug!("{}: established", self.peer),
            CmEventKind::Disconnected | CmEventKind::TimewaitExit => {
                self.disconnected = true;
                if self.ending.is_none() {
                    log::info!("{}: initiator disconnected", self.peer);
                }
                self.fail_quietly("disconnected");
            }
            other => self.fail(format!("rdma_cm event {other:?}")),
        }
    }

    /// Takes the core's operations: session and SCSI requests run now, fabric operations queue
    /// up in order.
    fn pump(&mut self) {
        while let Some(op) = self.conn.poll_op() {
            match op {
                FabricOp::BindSession(request) => {
                    let control = Arc::new(self.mailbox.clone());
                    let mailbox = self.mailbox.clone();
                    let sink: crate::server::session::CompletionSink =
                        Arc::new(move |id, outcome| mailbox.post(Event::Completed(id, outcome)));
                    let result = self.session.bind(&self.shared, &request, control, sink);
                    self.conn.handle_session_bound(result);
                }
                FabricOp::Execute(task) => {
                    if let Some((id, outcome)) = self.session.execute(task) {
                        self.conn.handle_scsi_complete(id, outcome);
                    }
                }
                FabricOp::Reset { lun } => self.session.reset(&self.shared, lun),
                FabricOp::EnterFullFeature => {
                    if let Err(e) = self.enter_full_feature() {
                        return self.fail(e);
                    }
                }
                FabricOp::Close(reason) => {
                    // I_T nexus loss before the Logout Response queued ahead of this Close is
                    // posted: an initiator that logs in again at once must not meet this
                    // session's SPC-2 reservation (libiscsi's Reserve6.Logout).
                    self.session.release(&self.shared);
                    if let Err(e) = self.pending.push_back(FabricOp::Close(reason)) {
                        return self.fail(e);
                    }
                }
                op => {
                    if let Err(e) = self.pending.push_back(op) {
                        return self.fail(e);
                    }
                }
            }
        }
    }

    /// Posts the full-feature receive buffers and registers the staging arena; called before
    /// the final Login Response is queued.
    fn enter_full_feature(&mut self) -> Result<(), String> {
        if self.arena.is_some() {
            return Ok(());
        }
        let slots = self.res.full_recv_slots;
        let stride = self.res.recv_stride;
        let mr = MemoryRegion::new(&self.res.pd, slots as usize * stride, Access::LOCAL_WRITE)
            .map_err(|e| format!("registering receive buffers: {e}"))?;
        for slot in 0..slots {
            self.res
                .qp
                .post_recv(
                    recv_wr_id(FULL_FEATURE_AREA, slot),
                    &mr,
                    slot as usize * stride,
                    stride,
                )
                .map_err(|e| format!("posting receive buffers: {e}"))?;
        }
        debug_assert_eq!(self.res.recv_areas.len(), FULL_FEATURE_AREA as usize);
        self.res.recv_areas.push(mr);
        let arena = MemoryRegion::new(&self.res.pd, self.res.arena_len, Access::LOCAL_WRITE)
            .map_err(|e| format!("registering the staging arena: {e}"))?;
        let ring = Ring::new(arena.len());
        self.arena = Some((arena, ring));
        log::debug!(
            "{}: full feature phase, {slots} receive buffers posted",
            self.peer
        );
        Ok(())
    }

    fn post_pending(&mut self) {
        while !self.done {
            let Some(op) = self.pending.pop_front() else {
                return;
            };
            if matches!(op, FabricOp::RdmaWrite { .. })
                && matches!(self.pending.ops.front(), Some(FabricOp::Send { .. }))
            {
                // READ data and the Send behind it (its response, as a rule) go as one chain.
                let send = self.pending.pop_front().expect("peeked");
                match self.post_write_and_send(op, send) {
                    Ok(None) => continue,
                    Ok(Some((write, send))) => {
                        self.pending.push_front(send);
                        self.pending.push_front(write);
                        return;
                    }
                    Err(e) => return self.fail(e),
                }
            }
            match self.post(op) {
                Ok((Posted::Yes, _)) => {}
                Ok((Posted::Later, Some(op))) => {
                    self.pending.push_front(op);
                    return;
                }
                Ok((Posted::Later, None)) => return,
                Err(e) => return self.fail(e),
            }
        }
    }

    fn room(&self) -> bool {
        self.inflight.len() < self.res.max_send_wr
    }

    /// Stages `len` bytes: arena space, or a one-off registration for oversized transfers and
    /// for the Sends of the login phase.
    fn stage(&mut self, len: usize) -> Result<Option<Staged>, String> {
        if let Some((_, ring)) = self.arena.as_mut().filter(|(_, ring)| ring.fits(len)) {
            Ok(ring.alloc(len).map(Staged::Arena))
        } else {
            MemoryRegion::new(&self.res.pd, len, Access::LOCAL_WRITE)
                .map(|mr| Some(Staged::OneOff(mr)))
                .map_err(|e| format!("registering a {len}-byte staging buffer: {e}"))
        }
    }

    fn buffer_mr(&self, buffer: &Staged) -> (Arc<MemoryRegion>, usize) {
        match (buffer, &self.arena) {
            (Staged::Arena(start), Some((arena, _))) => (Arc::clone(arena), *start),
            (Staged::OneOff(mr), _) => (Arc::clone(mr), 0),
            (Staged::Arena(_), None) => {
                unreachable!("arena space is handed out only with an arena")
            }
        }
    }

    fn unstage(&mut self, buffer: &Staged) {
        if let Staged::Arena(start) = buffer {
            self.free_staged(*start);
        }
    }

    fn free_staged(&mut self, start: usize) {
        if let Some((_, ring)) = &mut self.arena {
            ring.free(start);
        }
    }

    /// Posts one operation, or hands it back when it has to wait.
    fn post(&mut self, op: FabricOp) -> Result<(Posted, Option<FabricOp>), String> {
        match op {
            FabricOp::Close(reason) => {
                if self.ending.is_none() {
                    match &reason {
                        CloseReason::Logout | CloseReason::Shutdown => {
                            log::debug!("{}: closing ({reason:?})", self.peer)
                        }
                        _ => log::warn!("{}: closing ({reason:?})", self.peer),
                    }
                    self.ending = Some(Ending::Core(reason.clone(), Instant::now()));
                }
                if self.inflight.is_empty() {
                    self.done = true;
                    Ok((Posted::Yes, None))
                } else {
                    // Wait for the last Sends (e.g. the Logout Response) to complete.
                    Ok((Posted::Later, Some(FabricOp::Close(reason))))
                }
            }
            FabricOp::Send { bytes, invalidate } => {
                if !self.room() {
                    return Ok((Posted::Later, Some(FabricOp::Send { bytes, invalidate })));
                }
                let Some(buffer) = self.stage(bytes.len())? else {
                    return Ok((Posted::Later, Some(FabricOp::Send { bytes, invalidate })));
                };
                let (mr, offset) = self.buffer_mr(&buffer);
                let wr_id = self.next_wr();
                let posted = mr
                    .write(offset, &bytes)
                    .and_then(|()| {
                        self.res
                            .qp
                            .post_send(wr_id, &mr, offset, bytes.len(), true, invalidate)
                    })
                    .map_err(|e| format!("posting a Send: {e}"));
                self.track(posted, wr_id, Buffer::Staged(buffer), Kind::Send)
            }
            FabricOp::RdmaWrite {
                stag,
                va,
                data,
                range,
            } => {
                if range.is_empty() {
                    return Ok((Posted::Yes, None));
                }
                // Straight from the task's read buffer or the RAM LUN's memory: no copy.
                let sources = self.write_sources(&data, range.clone())?;
                if !self.room_for(sources.len()) {
                    let op = FabricOp::RdmaWrite {
                        stag,
                        va,
                        data,
                        range,
                    };
                    return Ok((Posted::Later, Some(op)));
                }
                let writes = self.write_wrs(&sources, va, stag, true);
                let posted = self
                    .res
                    .qp
                    .post_send_list(&writes)
                    .map_err(|e| format!("posting RDMA Writes: {e}"));
                // Tracked even when refused: a list may be refused part way, and the teardown
                // that follows keeps (or leaks) the data of whatever the device may still read.
                self.track_writes(writes.iter().map(|w| w.wr_id), data);
                posted.map(|()| (Posted::Yes, None))
            }
            FabricOp::RdmaRead {
                token,
                stag,
                va,
                len,
            } => {
                if !self.room() || self.reads >= self.res.max_rdma_reads {
                    let op = FabricOp::RdmaRead {
                        token,
                        stag,
                        va,
                        len,
                    };
                    return Ok((Posted::Later, Some(op)));
                }
                let Some(place) = self.conn.rdma_read_placement(token) else {
                    // Its task ended before the read went out: nothing to fetch. Reported done
                    // so the Sends that wait for it may go.
                    self.conn.handle_rdma_read_complete(token, Instant::now());
                    self.pump();
                    return Ok((Posted::Yes, None));
                };
                // Straight into the task's write buffer: no staging, no copy.
                let mr = self.arena_mr(&place.arena)?;
                let wr_id = self.next_wr();
                let posted = self
                    .res
                    .qp
                    .post_rdma_read(wr_id, &mr, place.offset, place.len, va, stag, true)
                    .map_err(|e| format!("posting an RDMA Read: {e}"));
                if posted.is_ok() {
                    self.reads += 1;
                }
                self.track(posted, wr_id, Buffer::InTask, Kind::Read { token })
            }
            FabricOp::BindSession(_)
            | FabricOp::Execute(_)
            | FabricOp::Reset { .. }
            | FabricOp::EnterFullFeature => {
                unreachable!("handled in pump")
            }
        }
    }

    /// Posts an RDMA Write and the Send that follows it as one chained `ibv_post_send`, only
    /// the Send signaled: its completion retires the Write too (RC completes a send queue in
    /// order). The Write goes straight from the task's read buffer. Hands both back when they
    /// do not fit yet.
    fn post_write_and_send(
        &mut self,
        write: FabricOp,
        send: FabricOp,
    ) -> Result<Option<(FabricOp, FabricOp)>, String> {
        let (
            FabricOp::RdmaWrite {
                stag,
                va,
                data,
                range,
            },
            FabricOp::Send { bytes, invalidate },
        ) = (write, send)
        else {
            unreachable!("called with an RDMA Write and a Send")
        };
        if range.is_empty() {
            self.pending
                .push_front(FabricOp::Send { bytes, invalidate });
            return Ok(None);
        }
        let hand_back = |data, range, bytes, invalidate| {
            Ok(Some((
                FabricOp::RdmaWrite {
                    stag,
                    va,
                    data,
                    range,
                },
                FabricOp::Send { bytes, invalidate },
            )))
        };
        let sources = self.write_sources(&data, range.clone())?;
        if !self.room_for(sources.len() + 1) {
            return hand_back(data, range, bytes, invalidate);
        }
        let Some(send_buffer) = self.stage(bytes.len())? else {
            return hand_back(data, range, bytes, invalidate);
        };
        let (send_mr, send_offset) = self.buffer_mr(&send_buffer);
        let mut chain = self.write_wrs(&sources, va, stag, false);
        let send_wr = self.next_wr();
        chain.push(SendWr {
            wr_id: send_wr,
            op: SendOp::Send { invalidate },
            mr: &send_mr,
            offset: send_offset,
            len: bytes.len(),
            signaled: true,
        });
        let posted = send_mr
            .write(send_offset, &bytes)
            .and_then(|()| self.res.qp.post_send_list(&chain))
            .map_err(|e| format!("posting RDMA Writes and a Send: {e}"));
        // The Writes are tracked even when the list is refused (it may be refused part way):
        // the teardown that follows keeps (or leaks) the data the device may still read.
        self.track_writes(chain[..chain.len() - 1].iter().map(|w| w.wr_id), data);
        if let Err(e) = posted {
            // A refused list leaves the connection failing; the staged bytes go with it.
            self.unstage(&send_buffer);
            return Err(e);
        }
        self.inflight.push_back(InFlight {
            wr_id: send_wr,
            buffer: Buffer::Staged(send_buffer),
            kind: Kind::Send,
        });
        Ok(None)
    }

    /// The registration of a pool arena on this connection's PD, made on first use. Arenas
    /// stay mapped for the life of the process, so a registration stays valid as long as the
    /// connection keeps it.
    fn arena_mr(&mut self, arena: &Arena) -> Result<Arc<MemoryRegion>, String> {
        if let Some(mr) = self.pool_mrs.get(&arena.id()) {
            return Ok(Arc::clone(mr));
        }
        let mr = MemoryRegion::register_arena(&self.res.pd, arena, Access::LOCAL_WRITE)
            .map_err(|e| format!("registering buffer arena of {} bytes: {e}", arena.len()))?;
        log::debug!(
            "{}: registered buffer arena {:?} ({} bytes)",
            self.peer,
            arena.id(),
            arena.len()
        );
        self.pool_mrs.insert(arena.id(), Arc::clone(&mr));
        Ok(mr)
    }

    /// Whether `wrs` more send-queue WRs fit now. The largest READ (8 MiB, lent from a RAM
    /// LUN as at most 9 pieces of its 1 MiB chunks) and its Send fit within the queue's
    /// headroom, so a chain that does not fit only waits for completions.
    fn room_for(&self, wrs: usize) -> bool {
        self.inflight.len() + wrs <= self.res.max_send_wr
    }

    /// The sources of the RDMA Writes for bytes `range` of a task's Data-In: one registration
    /// (of the arena holding it), offset in it and length per piece (one for a pool buffer, one
    /// per chunk or hole for a RAM LUN's lent memory).
    fn write_sources(
        &mut self,
        data: &Payload,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<(Arc<MemoryRegion>, usize, usize)>, String> {
        let pieces = data
            .pieces(range)
            .ok_or("an RDMA transfer of memory outside the pool")?;
        pieces
            .iter()
            .map(|piece| Ok((self.arena_mr(&piece.arena)?, piece.offset, piece.len)))
            .collect()
    }

    /// One RDMA Write per source, to consecutive remote addresses from `va`, chained in order;
    /// only the last is signaled when `signal_last` (a Send that follows signals instead).
    fn write_wrs<'a>(
        &mut self,
        sources: &'a [(Arc<MemoryRegion>, usize, usize)],
        va: u64,
        stag: u32,
        signal_last: bool,
    ) -> Vec<SendWr<'a>> {
        let mut remote = va;
        let last = sources.len().saturating_sub(1);
        sources
            .iter()
            .enumerate()
            .map(|(i, (mr, offset, len))| {
                let wr = SendWr {
                    wr_id: self.next_wr(),
                    op: SendOp::RdmaWrite {
                        remote_addr: remote,
                        rkey: stag,
                    },
                    mr,
                    offset: *offset,
                    len: *len,
                    signaled: signal_last && i == last,
                };
                remote = remote.wrapping_add(*len as u64);
                wr
            })
            .collect()
    }

    /// Tracks posted RDMA Writes of `data`: the last holds it until its completion.
    fn track_writes(&mut self, wr_ids: impl ExactSizeIterator<Item = u64>, data: Payload) {
        let mut data = Some(data);
        let last = wr_ids.len().saturating_sub(1);
        for (i, wr_id) in wr_ids.enumerate() {
            let buffer = match data.take() {
                Some(data) if i == last => Buffer::Task(data),
                kept => {
                    data = kept;
                    Buffer::Chained
                }
            };
            self.inflight.push_back(InFlight {
                wr_id,
                buffer,
                kind: Kind::Write,
            });
        }
    }

    fn next_wr(&mut self) -> u64 {
        let id = self.next_wr;
        self.next_wr += 1;
        id
    }

    fn track(
        &mut self,
        posted: Result<(), String>,
        wr_id: u64,
        buffer: Buffer,
        kind: Kind,
    ) -> Result<(Posted, Option<FabricOp>), String> {
        match posted {
            Ok(()) => {
                self.inflight.push_back(InFlight {
                    wr_id,
                    buffer,
                    kind,
                });
                Ok((Posted::Yes, None))
            }
            Err(e) => {
                if let Buffer::Staged(staged) = &buffer {
                    self.unstage(staged);
                }
                Err(e)
            }
        }
    }

    /// The fabric failed: stop at once.
    fn fail(&mut self, why: String) {
        if self.ending.is_none() {
            log::warn!("{}: {why}; closing the connection", self.peer);
        }
        self.fail_quietly(&why);
    }

    fn fail_quietly(&mut self, why: &str) {
        if !matches!(self.ending, Some(Ending::Fabric(_))) {
            self.ending = Some(Ending::Fabric(why.to_string()));
        }
        self.done = true;
    }

    /// §12.1: disconnect, wait (bounded) for DISCONNECTED, flush every WR, then let running
    /// commands finish and release the session. Verbs objects are freed when `res` drops.
    fn teardown(&mut self) {
        if let Some(Ending::Fabric(why)) = &self.ending {
            log::debug!("{}: tearing down ({why})", self.peer);
        }
        if let Err(e) = self.res.qp.id().disconnect() {
            log::debug!("{}: rdma_disconnect: {e}", self.peer);
        }
        let deadline = Instant::now() + DISCONNECT_WAIT;
        while !self.disconnected {
            match self.inbox.recv_deadline(deadline) {
                Ok(Event::Cm(
                    CmEventKind::Disconnected
                    | CmEventKind::TimewaitExit
                    | CmEventKind::DeviceRemoval,
                )) => self.disconnected = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match self.res.qp.drain(DRAIN_TIMEOUT) {
            Ok(flushed) => log::debug!("{}: drained {} WRs", self.peer, flushed.len()),
            Err(e) => {
                // The device may still read or write the buffers of posted WRs: leak them
                // rather than let the pool hand them to another command.
                log::warn!(
                    "{}: draining the QP: {e}; leaking the buffers of posted work requests",
                    self.peer
                );
                for posted in self.inflight.drain(..) {
                    if let Buffer::Task(buf) = posted.buffer {
                        std::mem::forget(buf);
                    }
                }
                self.conn.leak_buffers_under_reads();
            }
        }
        self.inflight.clear();
        self.pending.clear();
        self.session.release(&self.shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send() -> FabricOp {
        FabricOp::Send {
            bytes: vec![0; 76],
            invalidate: None,
        }
    }

    #[test]
    fn backlog_bounds_the_sends_waiting() {
        let mut backlog = Backlog::new(2);
        backlog.push_back(send()).unwrap();
        // RDMA operations are bounded by the command window, not here.
        for _ in 0..10 {
            backlog
                .push_back(FabricOp::RdmaWrite {
                    stag: 1,
                    va: 0,
                    data: mem_ffi::Payload::empty(),
                    range: 0..0,
                })
                .unwrap();
        }
        backlog.push_back(send()).unwrap();
        let err = backlog.push_back(send()).unwrap_err();
        assert!(err.contains("stopped taking them"), "{err}");
        // Posting one makes room; putting it back (not posted yet) takes it again.
        let first = backlog.pop_front().unwrap();
        backlog.push_back(send()).unwrap();
        backlog.push_front(first);
        assert!(backlog.push_back(send()).is_err());
        backlog.clear();
        backlog.push_back(send()).unwrap();
    }

    #[test]
    fn receive_wr_ids_name_area_and_slot() {
        let id = recv_wr_id(FULL_FEATURE_AREA, 143);
        assert_eq!(recv_slot(id), (1, 143));
        assert_eq!(recv_slot(recv_wr_id(LOGIN_AREA, 1)), (0, 1));
        assert_ne!(id & WR_RECV, 0);
    }
}
