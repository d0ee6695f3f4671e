//! The I/O engine: a fixed, process-wide set of threads that run every session's SCSI
//! commands asynchronously, created once at server start (no per-session threads).
//!
//! Each engine thread owns an io_uring ([`uring_ffi::Ring`]) and an inbox (a channel whose
//! sender wakes the ring). A command is planned on the engine thread (pure), then:
//! - READ, WRITE and SYNCHRONIZE CACHE on file and block backends are submitted to the ring
//!   (O_DIRECT when buffer, offset and length are 4096-aligned; FUA: RWF_DSYNC on block
//!   devices, an fdatasync after the write on files, nothing more on O_DSYNC descriptors;
//!   fdatasync for SYNCHRONIZE CACHE) and finished when their completion is reaped;
//! - READ, WRITE and SYNCHRONIZE CACHE on RAM run inline on the engine thread;
//! - on asynchronous backends (RBD), READ, WRITE, SYNCHRONIZE CACHE, UNMAP, WRITE SAME of
//!   zeroes and COMPARE AND WRITE are submitted from the engine thread; the backend's
//!   completion, on its own thread, posts the command back to the engine thread's inbox,
//!   where it is finished (see `engine/aio.rs`);
//! - everything rare (UNMAP, WRITE SAME, COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, GET LBA
//!   STATUS, VERIFY) runs on a small process-wide blocking pool, as does all file and block I/O
//!   when io_uring is unavailable;
//! - EXTENDED COPY, which may move up to 256 MiB, runs on a copy pool of its own, so that copies
//!   never hold up the rare commands of other LUs.
//!
//! COMPARE AND WRITE, ORWRITE and WRITE ATOMIC run alone on their LU: every command passes the
//! LU's [`IoGate`], which parks work instead of blocking a thread (see `gate.rs`).
//!
//! Sessions are spread over engine threads round-robin; a session's outstanding commands are
//! bounded by its CmdSN window, and a ring's slots beyond that wait in a per-thread backlog.
//!
//! Logged-in TCP connections live on the engine thread of their session ([`Resident`]): their
//! socket readiness comes from polls in the same ring, their commands are ordered without an
//! inbox hop and their completions are handed straight back to them (see `resident.rs`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use uring_ffi::{Ring, SetupError, Sleep, Waker};

use super::gate::{Access, IoGate};
use crate::backend::{AsyncReply, BackendError};
use crate::iscsi::{ScsiTask, TaskId, TaskKind};
use crate::scsi::{
    finish, is_extended_copy, run, BlockRequest, Nexus, Prepared, ScsiOutcome, ScsiRequest,
    ScsiTarget, Transfer,
};

mod heartbeat;
mod resident;
mod stamp;

pub use heartbeat::Heartbeat;
pub(crate) use resident::{Interest, Residence, Resident, ThreadIo};
use stamp::{EngineClock, JobStamp};

/// Where finished commands are reported (the connection's event queue).
pub type CompletionSink = Arc<dyn Fn(TaskId, ScsiOutcome) + Send + Sync>;

/// How a session's finished commands reach its connection.
enum Report {
    /// Through the connection's own sink (connections with threads of their own: iSER).
    Sink(CompletionSink),
    /// To the [`Resident`] with this id on the session's engine thread, directly when the
    /// command finished there, else through the thread's inbox.
    Resident(u64),
}

/// Operation slots of each engine thread's ring (more commands wait in its backlog).
const RING_SLOTS: u32 = 256;
/// Blocking-pool threads while io_uring is in use (the pool only runs rare commands then).
const BLOCKING_THREADS: usize = 2;
/// Copy-pool threads: EXTENDED COPY commands running at once; more wait their turn.
const COPY_THREADS: usize = 2;
/// Threads that run the Diffie-Hellman exponentiations of NVMe in-band authentication
/// ([`Engine::compute`]): a pool of their own, so that a storm of connects neither stalls the
/// connections' engine threads nor holds up the rare commands of the blocking pool.
const AUTH_THREADS: usize = 2;

/// Smallest READ of a file in memory that the engine leaves in the file ([`Payload::File`]) for
/// a connection that sends its pages, and smallest piece of such a READ the TCP outbox sends
/// with sendfile(2) (`server/tcp/outbox.rs`; a smaller piece, as an initiator with small data
/// segments asks for, has the whole span read into a buffer once).
///
/// Why 16 KiB: a piece sent from the pages costs a system call of its own (sendfile, after its
/// header's `sendmsg` with `MSG_MORE`), where a buffer leaves with the PDU around it in one
/// `writev`; below 16 KiB copying it (`pread`, then `writev`) costs less than that call, and
/// 8 KiB data segments would turn a 128 KiB READ into 16 sendmsg+sendfile pairs where `pread`
/// and `writev` take two calls. It is the size from which the receive side, too, reads payloads
/// in place rather than copying them (`iscsi::framing::direct::DIRECT_MIN`,
/// `nvme::framing::DIRECT_MIN`); no benchmark has swept it.
///
/// [`Payload::File`]: mem_ffi::Payload::File
pub(crate) const FILE_PAGES_MIN: usize = 16 << 10;

/// How the engine does file and block I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoMode {
    /// io_uring where the kernel allows it, else the blocking pool.
    Auto,
    /// Always the blocking pool (tests of the fallback).
    #[cfg(test)]
    Blocking,
}

/// One session's link to the engine.
struct SessionContext {
    /// Index of the session's target in the engine's targets.
    target: usize,
    nexus: Arc<Nexus>,
    /// Whether its connection sends a READ's data from a file's pages ([`mem_ffi::Payload::File`]):
    /// TCP connections do, iSER (which RDMA-writes from registered memory) does not.
    file_pages: bool,
    report: Report,
    /// The engine thread running this session's commands.
    thread: usize,
    /// Commands submitted and not yet reported to `sink`.
    outstanding: Mutex<Outstanding>,
    drained: Condvar,
}

/// A session's commands in the engine, and whether anyone waits for them to drain (the
/// condition variable is signalled only then: a signal is a system call, and a session whose
/// commands finish one by one would otherwise pay one per command).
#[derive(Default)]
struct Outstanding {
    commands: usize,
    drainers: usize,
}

/// A command and the session it belongs to.
struct Job {
    task: ScsiTask,
    session: Arc<SessionContext>,
    /// When the engine took the command (its thread's last wake-up), and whether it has been
    /// planned (counted by its LU) as a read, a write or neither: the LU is told how long a read
    /// or write took. A cell: the plan borrows the job while it is noted.
    stamp: Cell<JobStamp>,
}

impl Job {
    fn request(&self) -> ScsiRequest<'_> {
        ScsiRequest {
            nexus: &self.session.nexus,
            lun: self.task.lun,
            cdb: &self.task.cdb,
            data_out: &self.task.data_out,
            expected_transfer_length: self.task.expected_transfer_length,
            task_attr: self.task.attribute,
        }
    }
}

/// What an engine thread receives.
enum Message {
    /// A new command: to be ordered by its LU's gate.
    Run(Job),
    /// A command the gate has admitted after parking it.
    Admitted(Job, Access, usize),
    /// A command whose asynchronous backend operation has completed.
    AsyncDone(AsyncDone),
    /// A connection moving in to run on this thread.
    Attach(u64, Box<dyn Resident>),
    /// A resident's command finished on another thread (the blocking pool).
    Completed(u64, TaskId, ScsiOutcome),
    /// Something outside asks a resident to look at its state (shutdown, reinstatement).
    Poke(u64),
    /// Close every resident, and leave once nothing is in flight.
    Stop,
    /// Answer that this thread still turns.
    Heartbeat(Arc<Heartbeat>),
}

/// A command of a resident's session that finished on the resident's own thread.
type LocalCompletion = (u64, TaskId, ScsiOutcome);

/// The engine thread a command finishes on: its index, the completions it hands to its
/// residents after the current event, and when it last woke up (on the [`EngineClock`]).
struct OnThread<'a> {
    index: usize,
    local: &'a mut Vec<LocalCompletion>,
    now: u64,
}

impl<'a> OnThread<'a> {
    fn new(index: usize, local: &'a mut Vec<LocalCompletion>, now: u64) -> Self {
        OnThread { index, local, now }
    }
}

/// A finished asynchronous backend operation, on its way back to the command's engine thread.
struct AsyncDone {
    job: Job,
    access: Access,
    lun_index: usize,
    is_read: bool,
    data_out_length: u32,
    result: Result<AsyncReply, BackendError>,
}

/// What the blocking pool receives.
enum PoolMessage {
    /// Run an admitted command of LU `lun_index` synchronously: `planned` when the engine
    /// thread's plan could travel (see [`BlockRequest::detached`]), else planned again.
    Run {
        job: Job,
        access: Access,
        lun_index: usize,
        planned: Option<(BlockRequest<'static>, u32)>,
    },
    /// Run this computation ([`Engine::compute`]).
    Call(Box<dyn FnOnce() + Send>),
    Stop,
}

/// An engine thread's inbox: a channel, and the waker of the thread's ring (if it has one).
struct Inbox {
    sender: Sender<Message>,
    waker: Option<Arc<Waker>>,
}

impl Inbox {
    fn send(&self, message: Message) {
        // The receiver lives until the thread ends, which is after every job has completed.
        let _ = self.sender.send(message);
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }
}

/// State shared by the engine threads, the blocking pool and the sessions.
struct EngineShared {
    targets: Vec<Arc<ScsiTarget>>,
    /// The clock of jobs' arrivals and completions.
    clock: EngineClock,
    /// One gate per LU: `gates[target][lun_index]`.
    gates: Vec<Vec<IoGate<Job>>>,
    inboxes: Vec<Inbox>,
    pool: Sender<PoolMessage>,
    pool_threads: usize,
    /// The copy pool's queue ([`COPY_THREADS`] threads run EXTENDED COPY).
    copy_pool: Sender<PoolMessage>,
    /// The authentication pool's queue ([`AUTH_THREADS`]).
    auth_pool: Sender<PoolMessage>,
    next_thread: AtomicUsize,
    /// Ids handed out to residents.
    next_resident: AtomicU64,
    /// Commands submitted to the engine and not yet completed.
    outstanding: AtomicUsize,
    /// How long an engine thread with residents busy-polls before sleeping (µs; 0: never).
    busy_poll_us: AtomicU64,
}

impl EngineShared {
    /// Gives every LU a way to wait for its commands in flight here, which it uses when
    /// another gateway preempts and aborts ([`LogicalUnit::set_in_flight_waiter`]).
    fn wait_in_flight_on_abort(self: &Arc<Self>) {
        for (target, scsi) in self.targets.iter().enumerate() {
            for (lun_index, lu) in scsi.luns().iter().enumerate() {
                let engine = Arc::downgrade(self);
                lu.set_in_flight_waiter(Box::new(move || {
                    if let Some(engine) = engine.upgrade() {
                        let admitted = engine.gates[target][lun_index].drain();
                        for (access, job) in admitted {
                            engine.run_admitted(access, lun_index, job);
                        }
                    }
                }));
            }
        }
    }

    /// Reports `outcome`, releases the LU's gate (resubmitting what it admits) and accounts
    /// the command as finished. Called on whichever thread finished the I/O; an engine thread
    /// passes its index and its list of local completions, so a resident of that thread gets
    /// the outcome without an inbox hop.
    fn complete(
        &self,
        job: Job,
        outcome: ScsiOutcome,
        gate: Option<(Access, usize)>,
        on_thread: Option<OnThread<'_>>,
    ) {
        let stamp = job.stamp.get();
        if let (Some(transfer), Some((_, lun_index))) = (stamp.transfer(), gate) {
            // At the engine's wake-up granularity, without a clock read per command: a command
            // finished in the turn it arrived (RAM, a file in memory) took no time.
            let now = match &on_thread {
                Some(here) => here.now,
                None => self.clock.nanos(Instant::now()),
            };
            let lu = &self.targets[job.session.target].luns()[lun_index];
            lu.count_time(transfer, stamp.taken_by(now));
        }
        let remote = match (&job.session.report, on_thread) {
            (Report::Sink(sink), _) => {
                sink(job.task.id, outcome);
                None
            }
            (Report::Resident(id), Some(here)) if here.index == job.session.thread => {
                here.local.push((*id, job.task.id, outcome));
                None
            }
            (Report::Resident(id), _) => Some(Message::Completed(*id, job.task.id, outcome)),
        };
        if let Some((access, lun_index)) = gate {
            let admitted = self.gates[job.session.target][lun_index].leave(access);
            for (access, next) in admitted {
                self.run_admitted(access, lun_index, next);
            }
        }
        let session = job.session;
        let mut outstanding = session
            .outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        outstanding.commands -= 1;
        if outstanding.commands == 0 && outstanding.drainers > 0 {
            session.drained.notify_all();
        }
        drop(outstanding);
        if let Some(message) = remote {
            // Sent only now: a resident releases its session once it sees no command
            // outstanding, so the count must be down when it gets this completion.
            self.inboxes[session.thread].send(message);
        }
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
    }

    /// Hands an admitted command to the place it runs: exclusive ones to the blocking pool
    /// (unless their LU's backend is asynchronous), the others back to their session's engine
    /// thread.
    fn run_admitted(&self, access: Access, lun_index: usize, job: Job) {
        if job.task.kind == TaskKind::LunReset {
            self.reset(job, lun_index, None)
        } else if access == Access::Exclusive && !self.is_asynchronous(&job, lun_index) {
            self.to_pool(job, access, lun_index, None)
        } else {
            self.inboxes[job.session.thread].send(Message::Admitted(job, access, lun_index))
        }
    }

    /// Runs a logical unit reset the LU's gate has admitted: alone, once no command of any
    /// session is in flight on the LU (SAM-5 7.8). Resetting is quick (the SPC-2 reservation,
    /// the held copy results, the unit attention), so it runs on whichever thread admitted it.
    fn reset(&self, job: Job, lun_index: usize, on_thread: Option<OnThread<'_>>) {
        let lu = &self.targets[job.session.target].luns()[lun_index];
        lu.reset();
        log::info!(
            "LUN {}: reset by {}; no command of any session was left in flight",
            lu.params().lun,
            job.session.nexus.initiator_name
        );
        let gate = Some((Access::Exclusive, lun_index));
        self.complete(job, ScsiOutcome::good(), gate, on_thread)
    }

    /// Whether the job's LU has an asynchronous backend (whose exclusive commands are
    /// submitted from the engine thread like the others).
    fn is_asynchronous(&self, job: &Job, lun_index: usize) -> bool {
        self.targets[job.session.target].luns()[lun_index]
            .backend()
            .asynchronous()
            .is_some()
    }

    fn to_pool(
        &self,
        job: Job,
        access: Access,
        lun_index: usize,
        planned: Option<(BlockRequest<'static>, u32)>,
    ) {
        let pool = if is_extended_copy(&job.task.cdb) {
            &self.copy_pool
        } else {
            &self.pool
        };
        // The pools outlive every job (they are stopped after the engine threads).
        let _ = pool.send(PoolMessage::Run {
            job,
            access,
            lun_index,
            planned,
        });
    }
}

/// How engine threads wait for their ring: `ISER_TARGET_RING_SLEEP=poll` makes them wait in
/// `poll(2)` on the ring's descriptor instead of in `io_uring_enter`, which valgrind cannot
/// follow (the datapath benchmark's `--callgrind-report` over TCP sets it).
fn ring_sleep() -> Sleep {
    match std::env::var("ISER_TARGET_RING_SLEEP").as_deref() {
        Ok("poll") => Sleep::Poll,
        _ => Sleep::Block,
    }
}

/// The process-wide engine. Dropping it (or [`Engine::shutdown`]) waits for every command.
pub(crate) struct Engine {
    shared: Arc<EngineShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    uses_io_uring: bool,
}

impl Engine {
    /// Starts `threads` engine threads (at least one) and the blocking pool, for commands to
    /// `targets`. Falls back to the blocking pool for file and block I/O when io_uring is
    /// unavailable (logged once).
    pub(crate) fn start(
        targets: Vec<Arc<ScsiTarget>>,
        threads: usize,
        mode: IoMode,
    ) -> std::io::Result<Engine> {
        let threads = threads.max(1);
        let mut rings = Vec::with_capacity(threads);
        if mode == IoMode::Auto {
            for _ in 0..threads {
                match Ring::new(RING_SLOTS) {
                    Ok(mut ring) => {
                        ring.set_sleep(ring_sleep());
                        rings.push(ring)
                    }
                    Err(SetupError::Unavailable(e)) => {
                        log::warn!(
                            "io_uring unavailable ({e}); file and block I/O runs on a blocking \
                             pool of {} threads",
                            threads.max(BLOCKING_THREADS)
                        );
                        rings.clear();
                        break;
                    }
                    Err(SetupError::Failed(e)) => return Err(e),
                }
            }
        }
        let uses_io_uring = !rings.is_empty();
        let pool_threads = if uses_io_uring {
            BLOCKING_THREADS
        } else {
            threads.max(BLOCKING_THREADS)
        };
        let (pool, pool_queue) = crossbeam_channel::unbounded();
        let (copy_pool, copy_queue) = crossbeam_channel::unbounded();
        let (auth_pool, auth_queue) = crossbeam_channel::unbounded();
        let mut inboxes = Vec::with_capacity(threads);
        let mut queues = Vec::with_capacity(threads);
        let mut rings = rings.into_iter();
        for _ in 0..threads {
            let (sender, queue) = crossbeam_channel::unbounded();
            let ring = rings.next();
            inboxes.push(Inbox {
                sender,
                waker: ring.as_ref().map(Ring::waker),
            });
            queues.push((queue, ring));
        }
        let gates = targets
            .iter()
            .map(|t| t.luns().iter().map(|_| IoGate::new()).collect())
            .collect();
        let shared = Arc::new(EngineShared {
            targets,
            clock: EngineClock::start(),
            gates,
            inboxes,
            pool,
            pool_threads,
            copy_pool,
            auth_pool,
            next_thread: AtomicUsize::new(0),
            next_resident: AtomicU64::new(1),
            outstanding: AtomicUsize::new(0),
            busy_poll_us: AtomicU64::new(0),
        });
        shared.wait_in_flight_on_abort();
        let engine = Engine {
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::new()),
            uses_io_uring,
        };
        for (index, (queue, ring)) in queues.into_iter().enumerate() {
            let worker = EngineThread::new(index, Arc::clone(&shared), ring);
            let handle = std::thread::Builder::new()
                .name(format!("io-engine-{index}"))
                .spawn(move || worker.run(&queue))?;
            engine.threads_mut().push(handle);
        }
        let pools = [
            ("io-blocking", pool_threads, pool_queue),
            ("io-copy", COPY_THREADS, copy_queue),
            ("auth", AUTH_THREADS, auth_queue),
        ];
        for (name, count, queue) in pools {
            for index in 0..count {
                let shared = Arc::clone(&shared);
                let queue = queue.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn(move || blocking_worker(&shared, &queue))?;
                engine.threads_mut().push(handle);
            }
        }
        Ok(engine)
    }

    fn threads_mut(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets engine threads that run connections poll them for `spin` before sleeping
    /// (`limits.busy_poll_us`; zero: sleep at once).
    pub(crate) fn set_busy_poll(&self, spin: Duration) {
        let us = u64::try_from(spin.as_micros()).unwrap_or(u64::MAX);
        self.shared.busy_poll_us.store(us, Ordering::Relaxed);
    }

    /// Whether file and block I/O goes through io_uring (else the blocking pool).
    pub(crate) fn uses_io_uring(&self) -> bool {
        self.uses_io_uring
    }

    /// Whether engine threads can run connections ([`Resident`]s): they need the ring to wait
    /// for sockets; without io_uring connections keep threads of their own.
    pub(crate) fn runs_connections(&self) -> bool {
        self.uses_io_uring
    }

    /// Attaches a session of target `target` (index into the engine's targets) for `nexus`;
    /// its commands run on the next engine thread in turn and report to `sink`. `file_pages`:
    /// its connection can send a READ's data from a file's pages ([`mem_ffi::Payload::File`]).
    pub(crate) fn session(
        &self,
        target: usize,
        nexus: Arc<Nexus>,
        file_pages: bool,
        sink: CompletionSink,
    ) -> EngineSession {
        let thread = self.next_thread();
        self.session_on(thread, target, nexus, file_pages, Report::Sink(sink))
    }

    /// Attaches a session whose connection will live at `residence`: its commands run on that
    /// engine thread and report to the resident there. `file_pages` as for
    /// [`Engine::session`].
    pub(crate) fn resident_session(
        &self,
        residence: &Residence,
        target: usize,
        nexus: Arc<Nexus>,
        file_pages: bool,
    ) -> EngineSession {
        self.session_on(
            residence.thread(),
            target,
            nexus,
            file_pages,
            Report::Resident(residence.id()),
        )
    }

    /// Reserves a place for a connection on the next engine thread in turn (see
    /// [`Engine::runs_connections`]).
    pub(crate) fn reserve_residence(&self) -> Residence {
        let id = self.shared.next_resident.fetch_add(1, Ordering::Relaxed);
        Residence::new(Arc::clone(&self.shared), self.next_thread(), id)
    }

    fn next_thread(&self) -> usize {
        self.shared.next_thread.fetch_add(1, Ordering::Relaxed) % self.shared.inboxes.len()
    }

    fn session_on(
        &self,
        thread: usize,
        target: usize,
        nexus: Arc<Nexus>,
        file_pages: bool,
        report: Report,
    ) -> EngineSession {
        EngineSession {
            shared: Arc::clone(&self.shared),
            context: Arc::new(SessionContext {
                target,
                nexus,
                file_pages,
                report,
                thread,
                outstanding: Mutex::default(),
                drained: Condvar::new(),
            }),
        }
    }

    /// Runs `work` on the authentication pool ([`AUTH_THREADS`]): an NVMe queue's DH
    /// exponentiations, too slow for a thread that serves connections. `work` tells its
    /// connection itself, by poking its [`Residence`]. Work still queued at shutdown runs
    /// before the pool stops.
    pub(crate) fn compute(&self, work: impl FnOnce() + Send + 'static) {
        let _ = self
            .shared
            .auth_pool
            .send(PoolMessage::Call(Box::new(work)));
    }

    /// Asks every engine thread to answer between two turns of its loop; the answers
    /// accumulate in the returned [`Heartbeat`].
    pub(crate) fn heartbeat(&self) -> Arc<Heartbeat> {
        let heartbeat = Arc::new(Heartbeat::new(self.shared.inboxes.len()));
        for inbox in &self.shared.inboxes {
            inbox.send(Message::Heartbeat(Arc::clone(&heartbeat)));
        }
        heartbeat
    }

    /// Waits for every submitted command to complete, then stops the threads. Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut threads = self.threads_mut();
        if threads.is_empty() {
            return;
        }
        while self.shared.outstanding.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        for inbox in &self.shared.inboxes {
            inbox.send(Message::Stop);
        }
        for _ in 0..self.shared.pool_threads {
            let _ = self.shared.pool.send(PoolMessage::Stop);
        }
        for _ in 0..AUTH_THREADS {
            let _ = self.shared.auth_pool.send(PoolMessage::Stop);
        }
        for _ in 0..COPY_THREADS {
            let _ = self.shared.copy_pool.send(PoolMessage::Stop);
        }
        for handle in threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A session's handle on the engine (see [`Engine::session`]).
pub(crate) struct EngineSession {
    shared: Arc<EngineShared>,
    context: Arc<SessionContext>,
}

impl EngineSession {
    /// Queues a command; its outcome goes to the session's sink.
    pub(crate) fn submit(&self, task: ScsiTask) {
        let job = self.job(task, self.shared.clock.nanos(Instant::now()));
        self.shared.inboxes[self.context.thread].send(Message::Run(job));
    }

    /// Accounts a command arrived at `arrived` (on the [`EngineClock`]) as outstanding and
    /// makes it a job of this session.
    fn job(&self, task: ScsiTask, arrived: u64) -> Job {
        self.context
            .outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .commands += 1;
        self.shared.outstanding.fetch_add(1, Ordering::SeqCst);
        Job {
            task,
            session: Arc::clone(&self.context),
            stamp: Cell::new(JobStamp::arrived(arrived)),
        }
    }

    /// Commands submitted and not yet reported.
    pub(crate) fn outstanding(&self) -> usize {
        self.context
            .outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .commands
    }

    /// Waits until every command of the session has been reported to its sink.
    pub(crate) fn drain(&self) {
        let mut outstanding = self
            .context
            .outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        outstanding.drainers += 1;
        while outstanding.commands > 0 {
            outstanding = self
                .context
                .drained
                .wait(outstanding)
                .unwrap_or_else(|p| p.into_inner());
        }
        outstanding.drainers -= 1;
    }
}

/// A blocking-pool or copy-pool thread: runs admitted commands synchronously, then completes
/// them.
fn blocking_worker(shared: &EngineShared, queue: &Receiver<PoolMessage>) {
    for message in queue {
        let (job, access, lun_index, planned) = match message {
            PoolMessage::Run {
                job,
                access,
                lun_index,
                planned,
            } => (job, access, lun_index, planned),
            PoolMessage::Call(work) => {
                work();
                continue;
            }
            PoolMessage::Stop => return,
        };
        let target = &shared.targets[job.session.target];
        if let Some((request, data_out_length)) = planned {
            let backend = target.luns()[lun_index].backend();
            let outcome = finish(&request, run(&**backend, &request), data_out_length);
            shared.complete(job, outcome, Some((access, lun_index)), None);
            continue;
        }
        // Planned here, or again (the plan borrows the command's buffers, which travel by value).
        let prepared = if job.stamp.get().is_planned() {
            target.prepare_again(&job.request())
        } else {
            target.prepare(&job.request())
        };
        let outcome = match prepared {
            Prepared::Done(outcome) => outcome,
            Prepared::Io {
                lu,
                request,
                data_out_length,
                ..
            } => {
                job.stamp
                    .set(job.stamp.get().planned(Transfer::of(&request)));
                finish(&request, run(&**lu.backend(), &request), data_out_length)
            }
        };
        shared.complete(job, outcome, Some((access, lun_index)), None);
    }
}

mod aio;
#[cfg(test)]
mod tests;
mod thread;

use thread::EngineThread;
