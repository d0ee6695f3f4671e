//! One iSER connection: it logs in on a thread of its own, which sleeps on the completion
//! channel of the connection's CQs and on a doorbell (an eventfd rung by the rdma_cm event
//! thread and by shutdown); once its session is bound it moves to that session's engine thread
//! ([`resident`]), which polls the same two descriptors through an epoll set in its ring and
//! runs the connection's commands without a thread hop. Either way it feeds receives and RDMA
//! Read completions ([`completions`], polled [`CQ_BATCH`] at a time) to the sans-IO
//! [`IserConnection`] and posts the fabric operations it asks for ([`post`]). Without io_uring the connection stays on its
//! own thread to the end, its commands reporting through its mailbox.
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
//! connection: the QP is in error and nothing more will move on it. Teardown (disconnect, the
//! wait for DISCONNECTED, the QP drain) blocks, so a resident hands it to a short-lived thread.

mod completions;
mod post;
mod resident;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mem_ffi::ArenaId;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rdma_ffi::{
    Access, AsyncEventKind, CmEventKind, CompletionChannel, CompletionQueue, MemoryRegion,
    ProtectionDomain, QueuePair, SendList, WorkCompletion,
};

use super::ring::Ring;
use crate::config::Transport;
use crate::inthash::IntMap;
use crate::iscsi::iser::{FabricOp, IserConnection};
use crate::iscsi::{CloseReason, CoreConfig, ScsiTask, TaskId};
use crate::scsi::ScsiOutcome;
use crate::server::engine::Residence;
use crate::server::registry::{SessionControl, SessionOrigin};
use crate::server::session::SessionSlot;
use crate::server::{ConnectionRegistration, ConnectionSet, Shared};
use post::{Backlog, Buffer, InFlight, ReadWr};

/// Completions taken from a CQ per `ibv_poll_cq`.
const CQ_BATCH: usize = 32;
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

/// An eventfd that wakes the connection (its thread's poll, or its engine thread's epoll set),
/// with a flag so that a wake-up reads the eventfd only when it was rung.
pub(super) struct Doorbell {
    fd: EventFd,
    rung: AtomicBool,
}

impl Doorbell {
    pub(super) fn new() -> std::io::Result<Arc<Self>> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Doorbell {
            fd,
            rung: AtomicBool::new(false),
        }))
    }

    fn ring(&self) {
        // Written before the flag is set: a clear that misses the flag leaves the eventfd
        // readable, so the next wake-up comes at once and finds it set.
        let _ = self.fd.write(1);
        self.rung.store(true, Ordering::Release);
    }

    fn clear(&self) {
        if self.rung.load(Ordering::Acquire) && self.rung.swap(false, Ordering::AcqRel) {
            let _ = self.fd.read();
        }
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

/// Why the connection is going away.
enum Ending {
    /// The core closed it (Logout, shutdown, protocol error...): let its last Sends go out first.
    Core(CloseReason, Instant),
    /// The fabric failed or the peer disconnected: stop at once.
    Fabric(String),
}

struct Driver {
    conn: IserConnection,
    /// The staging arena and its allocator, from login on. Before `res`: registered memory is
    /// released before the connection's rdma_cm id (see [`Resources`]).
    arena: Option<(Arc<MemoryRegion>, Ring)>,
    /// Registrations of the buffer pool's arenas on this connection's PD, made the first time
    /// a task's buffer in the arena is met; RDMA Writes and Reads go straight from and into the
    /// tasks' buffers through them. Before `res`, as `arena`. Arena ids are the pool's own
    /// (no peer picks them), so the cheap hash ([`IntMap`]) is safe.
    pool_mrs: IntMap<ArenaId, Arc<MemoryRegion>>,
    inflight: VecDeque<InFlight>,
    res: Resources,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Receiver<Event>,
    session: SessionSlot,
    /// The place reserved for the connection on an engine thread, where it moves once its
    /// session is bound (`None` without io_uring: it stays on its own thread).
    residence: Option<Residence>,
    /// The session is bound at `residence`: the connection thread hands the driver over.
    moving_in: bool,
    /// The login completed: a close from now on is a session's end, not a failed login.
    logged_in: bool,
    /// Commands the core asked to run, for the resident to hand to its engine thread.
    to_execute: Vec<ScsiTask>,
    /// RDMA Reads being gathered into one post (kept: no allocation per WRITE).
    read_batch: Vec<ReadWr>,
    /// Send-queue WRs gathered for the next `ibv_post_send` (kept: no allocation per post).
    sq: SendList,
    /// Where a READ's data lies and the registrations its RDMA Writes go from (kept: no
    /// allocation per READ; see [`Driver::write_sources`]).
    write_pieces: Vec<mem_ffi::payload::Piece>,
    write_sources: Vec<(Arc<MemoryRegion>, usize, usize)>,
    /// The receive CQ is armed: its next completion raises a channel event.
    recv_armed: bool,
    /// The send CQ is armed. It is armed only while something waits for a send completion
    /// (see [`Driver::wants_send_events`]); otherwise send completions are reaped by the next
    /// turn, sparing a wake-up, a channel read and a re-arm per command. Both are re-armed at
    /// the end of a turn ([`Driver::arm_cqs`]).
    send_armed: bool,
    /// On an engine thread the core closed the connection while commands were outstanding:
    /// the session is released (I_T nexus loss) once they are reported, and nothing more is
    /// posted until then.
    release_pending: bool,
    pending: Backlog,
    next_wr: u64,
    reads: usize,
    ending: Option<Ending>,
    done: bool,
    disconnected: bool,
    peer: String,
    /// The time of the current turn (see [`Driver::now`]); `None` between turns.
    now: Option<Instant>,
    wcs: Vec<WorkCompletion>,
    /// The last received Send, copied out of its receive buffer (reused: no allocation per PDU).
    received: Vec<u8>,
    /// The connection's place under the connection caps, its routes and its registration for
    /// shutdown: held until teardown is over.
    _held: Box<dyn Send>,
    _registration: ConnectionRegistration,
}

/// Runs one accepted connection: its login on the calling thread, then (when the engine runs
/// connections) on an engine thread as a [`resident::IserResident`], else to its end here.
/// `held` lives as long as the connection.
pub(super) fn serve(
    res: Resources,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Receiver<Event>,
    held: Box<dyn Send>,
) {
    let peer = res
        .qp
        .id()
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a: SocketAddr| a.to_string());
    let local = res.qp.id().local_addr();
    let registration = ConnectionSet::register(&shared.connections, Arc::new(mailbox.clone()));
    log::info!(
        "iSER connection from {peer} (Send-with-Invalidate {})",
        if res.send_with_invalidate {
            "on"
        } else {
            "off"
        }
    );
    let pending = Backlog::new(res.max_pending_sends);
    let residence = shared
        .engine
        .runs_connections()
        .then(|| shared.engine.reserve_residence());
    let mut driver = Driver {
        conn: IserConnection::new(core, local, res.send_with_invalidate, Instant::now()),
        res,
        shared,
        mailbox,
        inbox,
        session: SessionSlot::new(SessionOrigin {
            transport: Transport::Iser,
            peer: peer.clone(),
        }),
        residence,
        moving_in: false,
        logged_in: false,
        to_execute: Vec::new(),
        read_batch: Vec::new(),
        sq: SendList::new(),
        write_pieces: Vec::new(),
        write_sources: Vec::new(),
        recv_armed: false,
        send_armed: false,
        release_pending: false,
        arena: None,
        pool_mrs: IntMap::default(),
        pending,
        inflight: VecDeque::new(),
        next_wr: 1,
        reads: 0,
        ending: None,
        done: false,
        disconnected: false,
        peer,
        now: None,
        wcs: Vec::with_capacity(CQ_BATCH),
        received: Vec::new(),
        _held: held,
        _registration: registration,
    };
    if driver.shared.stopping() {
        driver.conn.handle_shutdown();
    }
    driver.run();
    if driver.moving_in && !driver.done {
        if let Some(residence) = driver.residence.clone() {
            resident::move_in(driver, &residence);
            return;
        }
    }
    driver.finish();
}

impl Driver {
    /// Runs the connection on this thread until it ends or moves to its engine thread.
    fn run(&mut self) {
        if let Err(e) = self.arm() {
            self.fail(format!("arming the CQs: {e}"));
            return;
        }
        loop {
            self.turn();
            if self.done || self.moving_in {
                return;
            }
            match self.arm_cqs() {
                Ok(false) => {}
                // Completions that came before the arming raise no event: look again.
                Ok(true) => continue,
                Err(e) => return self.fail(format!("arming the CQs: {e}")),
            }
            let now = Instant::now();
            let timeout = match self.deadline() {
                Some(d) => {
                    let ms = d.saturating_duration_since(now).as_millis();
                    PollTimeout::try_from(ms.min(60_000) as u32 + 1).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(self.res.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.mailbox.bell.fd.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    self.fail(format!("poll: {e}"));
                    return;
                }
            }
        }
    }

    /// Everything one wake-up calls for: completion-channel events acknowledged (and the CQs
    /// re-armed), completions polled in batches, events from other threads, the core's
    /// operations posted, timers.
    fn turn(&mut self) {
        if self.done {
            return;
        }
        self.mailbox.bell.clear();
        if let Err(e) = self.ack_channel() {
            return self.fail(format!("completion channel: {e}"));
        }
        self.poll_cqs();
        self.drain_inbox();
        self.pump();
        self.post_pending();
        let now = self.now();
        self.check_timers(now);
        self.now = None;
    }

    /// The time of the current turn: on an engine thread the thread's wake-up time (set by the
    /// resident), else read from the clock the first time it is needed (in a guest without a
    /// vDSO clock each read is a system call).
    fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// Whether a send completion must wake the connection: RDMA Reads are outstanding (a
    /// WRITE waits for its data), operations wait for room on the send queue or in the
    /// staging arena, the connection is closing (it waits for its last Sends), or it is still
    /// logging in. Otherwise a completed Send or RDMA Write only frees what the next turn frees
    /// as well — the next command's arrival wakes the connection anyway.
    fn wants_send_events(&self) -> bool {
        !self.inflight.is_empty()
            && (self.reads > 0
                || !self.pending.is_empty()
                || self.ending.is_some()
                || self.arena.is_none())
    }

    /// Arms the CQs at the end of a turn, once its answers are posted (so arming is not on the
    /// way of a response): the receive CQ if it fired, the send CQ if a send completion must
    /// wake the connection. `true` when one was armed, and the caller polls the CQs once more
    /// (completions that came before the arming raise no event).
    fn arm_cqs(&mut self) -> rdma_ffi::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let mut armed = false;
        if !self.recv_armed {
            self.arm()?;
            armed = true;
        }
        if !self.send_armed && self.wants_send_events() {
            self.res.send_cq.req_notify(false)?;
            self.send_armed = true;
            armed = true;
        }
        Ok(armed)
    }

    /// When the connection next needs [`Driver::check_timers`]: the core's timer (NOP-In), or
    /// the end of the linger of a closing connection.
    fn deadline(&self) -> Option<Instant> {
        let mut deadline = self.conn.poll_timeout();
        if let Some(Ending::Core(_, since)) = &self.ending {
            let linger = *since + LINGER;
            deadline = Some(deadline.map_or(linger, |d| d.min(linger)));
        }
        deadline
    }

    /// Fires the core's timer and ends a closing connection whose linger is over.
    fn check_timers(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.conn.poll_timeout().is_some_and(|d| d <= now) {
            self.conn.handle_timeout(now);
            self.pump();
            self.post_pending();
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

    /// Once the core's Close waited for the session's commands: releases the session (nothing
    /// waits, none is outstanding) and posts what waited behind it.
    fn release_if_idle(&mut self) {
        if self.release_pending && self.session.outstanding() == 0 {
            self.session.release(&self.shared);
            self.release_pending = false;
            self.post_pending();
        }
    }

    /// Tears the connection down on the calling thread (which may block: not an engine thread).
    fn finish(mut self) {
        self.teardown();
        log::info!("iSER connection from {} closed", self.peer);
    }

    /// Arms the receive CQ; completions that raced the arming are found by the next poll.
    fn arm(&mut self) -> rdma_ffi::Result<()> {
        self.res.recv_cq.req_notify(false)?;
        self.recv_armed = true;
        Ok(())
    }

    /// Consumes completion-channel events; the CQs that fired are re-armed after the turn
    /// ([`Driver::arm_cqs`]; one that did not is still armed: a CQ is disarmed only by the
    /// event it raises, which saves a system call per wake-up on providers that arm through
    /// the kernel, rxe). A CQ raises at most one event per arming, so reading stops once every
    /// armed CQ has reported: the read that would only find the channel empty is spared too.
    fn ack_channel(&mut self) -> rdma_ffi::Result<()> {
        while self.recv_armed || self.send_armed {
            let Some(cq) = self.res.channel.get_event()? else {
                break;
            };
            if cq == self.res.recv_cq.handle() {
                self.recv_armed = false;
            } else if cq == self.res.send_cq.handle() {
                self.send_armed = false;
            }
        }
        Ok(())
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
                    let result = match &self.residence {
                        Some(residence) => {
                            let result = self.session.bind_resident(
                                &self.shared,
                                &request,
                                control,
                                false,
                                residence,
                            );
                            // Bound to run on that engine thread: the connection moves there
                            // once this turn is over.
                            self.moving_in = result.is_ok();
                            result
                        }
                        None => {
                            let mailbox = self.mailbox.clone();
                            let sink: crate::server::session::CompletionSink =
                                Arc::new(move |id, outcome| {
                                    mailbox.post(Event::Completed(id, outcome))
                                });
                            self.session
                                .bind(&self.shared, &request, control, false, sink)
                        }
                    };
                    self.conn.handle_session_bound(result);
                }
                FabricOp::Execute(task) => {
                    if self.residence.is_some() {
                        // Run by the resident on its engine thread when this call returns.
                        self.to_execute.push(task);
                    } else if let Some((id, outcome)) = self.session.execute(task) {
                        self.conn.handle_scsi_complete(id, outcome);
                    }
                }
                FabricOp::EnterFullFeature => {
                    if let Err(e) = self.enter_full_feature() {
                        return self.fail(e);
                    }
                    self.logged_in = true;
                }
                FabricOp::Close(reason) => {
                    // I_T nexus loss before the Logout Response queued ahead of this Close is
                    // posted: an initiator that logs in again at once must not meet this
                    // session's SPC-2 reservation (libiscsi's Reserve6.Logout). On an engine
                    // thread that waits (without blocking) for the session's commands.
                    if self.residence.is_some() && self.session.outstanding() > 0 {
                        self.release_pending = true;
                    } else {
                        self.session.release(&self.shared);
                    }
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
mod tests;
