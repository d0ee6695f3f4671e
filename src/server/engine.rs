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
//!   when io_uring is unavailable.
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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mem_ffi::Buf;
use uring_ffi::{Completion, Ring, SetupError, Waker};

use self::aio::Planned;

use super::gate::{Access, IoGate};
use crate::backend::{AsyncReply, BackendError, FuaMethod};
use crate::iscsi::{ScsiTask, TaskId};
use crate::scsi::{
    finish, run, runs_exclusively, BlockReply, Nexus, Prepared, Primitive, ScsiOutcome,
    ScsiRequest, ScsiTarget,
};

mod resident;

pub(crate) use resident::{Interest, Residence, Resident, ThreadIo};

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
}

/// A command of a resident's session that finished on the resident's own thread.
type LocalCompletion = (u64, TaskId, ScsiOutcome);

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
    /// Run an admitted command of LU `lun_index` synchronously.
    Run {
        job: Job,
        access: Access,
        lun_index: usize,
    },
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
    /// One gate per LU: `gates[target][lun_index]`.
    gates: Vec<Vec<IoGate<Job>>>,
    inboxes: Vec<Inbox>,
    pool: Sender<PoolMessage>,
    pool_threads: usize,
    next_thread: AtomicUsize,
    /// Ids handed out to residents.
    next_resident: AtomicU64,
    /// Commands submitted to the engine and not yet completed.
    outstanding: AtomicUsize,
}

impl EngineShared {
    /// Reports `outcome`, releases the LU's gate (resubmitting what it admits) and accounts
    /// the command as finished. Called on whichever thread finished the I/O; an engine thread
    /// passes its index and its list of local completions, so a resident of that thread gets
    /// the outcome without an inbox hop.
    fn complete(
        &self,
        job: Job,
        outcome: ScsiOutcome,
        gate: Option<(Access, usize)>,
        local: Option<(usize, &mut Vec<LocalCompletion>)>,
    ) {
        let remote = match (&job.session.report, local) {
            (Report::Sink(sink), _) => {
                sink(job.task.id, outcome);
                None
            }
            (Report::Resident(id), Some((thread, local))) if thread == job.session.thread => {
                local.push((*id, job.task.id, outcome));
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
        if access == Access::Exclusive && !self.is_asynchronous(&job, lun_index) {
            self.to_pool(job, access, lun_index)
        } else {
            self.inboxes[job.session.thread].send(Message::Admitted(job, access, lun_index))
        }
    }

    /// Whether the job's LU has an asynchronous backend (whose exclusive commands are
    /// submitted from the engine thread like the others).
    fn is_asynchronous(&self, job: &Job, lun_index: usize) -> bool {
        self.targets[job.session.target].luns()[lun_index]
            .backend()
            .asynchronous()
            .is_some()
    }

    fn to_pool(&self, job: Job, access: Access, lun_index: usize) {
        // The pool outlives every job (it is stopped after the engine threads).
        let _ = self.pool.send(PoolMessage::Run {
            job,
            access,
            lun_index,
        });
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
                    Ok(ring) => rings.push(ring),
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
            gates,
            inboxes,
            pool,
            pool_threads,
            next_thread: AtomicUsize::new(0),
            next_resident: AtomicU64::new(1),
            outstanding: AtomicUsize::new(0),
        });
        let engine = Engine {
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::new()),
            uses_io_uring,
        };
        for (index, (queue, ring)) in queues.into_iter().enumerate() {
            let worker = EngineThread {
                index,
                shared: Arc::clone(&shared),
                ring,
                backlog: VecDeque::new(),
                completions: Vec::with_capacity(RING_SLOTS as usize),
                local: Vec::new(),
                residents: HashMap::new(),
                touched: Vec::new(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("io-engine-{index}"))
                .spawn(move || worker.run(&queue))?;
            engine.threads_mut().push(handle);
        }
        for index in 0..pool_threads {
            let shared = Arc::clone(&shared);
            let queue = pool_queue.clone();
            let handle = std::thread::Builder::new()
                .name(format!("io-blocking-{index}"))
                .spawn(move || blocking_worker(&shared, &queue))?;
            engine.threads_mut().push(handle);
        }
        Ok(engine)
    }

    fn threads_mut(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
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
    /// its commands run on the next engine thread in turn and report to `sink`.
    pub(crate) fn session(
        &self,
        target: usize,
        nexus: Arc<Nexus>,
        sink: CompletionSink,
    ) -> EngineSession {
        self.session_on(self.next_thread(), target, nexus, Report::Sink(sink))
    }

    /// Attaches a session whose connection will live at `residence`: its commands run on that
    /// engine thread and report to the resident there.
    pub(crate) fn resident_session(
        &self,
        residence: &Residence,
        target: usize,
        nexus: Arc<Nexus>,
    ) -> EngineSession {
        self.session_on(
            residence.thread(),
            target,
            nexus,
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
        report: Report,
    ) -> EngineSession {
        EngineSession {
            shared: Arc::clone(&self.shared),
            context: Arc::new(SessionContext {
                target,
                nexus,
                report,
                thread,
                outstanding: Mutex::default(),
                drained: Condvar::new(),
            }),
        }
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
        let job = self.job(task);
        self.shared.inboxes[self.context.thread].send(Message::Run(job));
    }

    /// Accounts a command as outstanding and makes it a job of this session.
    fn job(&self, task: ScsiTask) -> Job {
        self.context
            .outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .commands += 1;
        self.shared.outstanding.fetch_add(1, Ordering::SeqCst);
        Job {
            task,
            session: Arc::clone(&self.context),
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

/// A command whose I/O is in the ring (the ring's token).
struct InFlight {
    job: Job,
    primitive: Primitive,
    data_out_length: u32,
    lun_index: usize,
    /// A FUA write's fdatasync, submitted once the write has completed.
    sync_after: Option<Arc<File>>,
}

/// What to push into the ring for an operation.
enum Submission {
    Read { offset: u64, buf: Buf },
    Write { offset: u64, buf: Buf, dsync: bool },
    DataSync,
}

/// An operation waiting for a free ring slot.
struct Waiting {
    token: InFlight,
    file: Arc<File>,
    submission: Submission,
}

/// A ring operation decided by planning (the command travels separately; a write's buffer,
/// the command's Data-Out, is filled in when the command is handed over).
struct RingOp {
    primitive: Primitive,
    data_out_length: u32,
    file: Arc<File>,
    submission: Submission,
    sync_after: Option<Arc<File>>,
}

/// Where an admitted command goes after planning.
enum Route {
    /// Finished (no I/O, or done inline).
    Done(ScsiOutcome),
    /// Submit to the ring.
    Ring(RingOp),
    /// Submit to the LU's asynchronous backend (with the command's Data-Out length).
    Async(Planned, u32),
    /// Run on the blocking pool.
    Pool,
}

/// What a ring operation of an engine thread is for.
enum Token {
    /// A command's I/O.
    Io(InFlight),
    /// A resident's readiness poll.
    Poll(u64, Interest),
}

/// One engine thread: its ring (absent when io_uring is unavailable), its backlog of
/// operations waiting for a ring slot, a reusable completion buffer, and the connections
/// living on it.
struct EngineThread {
    index: usize,
    shared: Arc<EngineShared>,
    ring: Option<Ring<Token, Buf>>,
    backlog: VecDeque<Waiting>,
    completions: Vec<Completion<Token, Buf>>,
    /// Commands of residents that finished on this thread, not yet handed to them.
    local: Vec<LocalCompletion>,
    /// The connections living here (`None` while one is being called).
    residents: HashMap<u64, Option<Box<dyn Resident>>>,
    /// Residents that had events this turn: they write their output and are checked for the
    /// end once the turn's events are all in.
    touched: Vec<u64>,
}

impl EngineThread {
    fn run(mut self, queue: &Receiver<Message>) {
        if self.ring.is_none() {
            for message in queue {
                if !self.handle(message) {
                    return;
                }
            }
            return;
        }
        let mut stopping = false;
        loop {
            while let Ok(message) = queue.try_recv() {
                stopping |= !self.handle(message);
            }
            self.settle_residents();
            self.submit_backlog();
            let timeout = self
                .next_deadline()
                .map(|due| due.saturating_duration_since(Instant::now()));
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            if stopping
                && ring.in_flight() == 0
                && self.backlog.is_empty()
                && self.residents.is_empty()
            {
                return;
            }
            if let Err(e) = ring.wait_timeout(timeout) {
                log::error!("io_uring wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            ring.reap(&mut self.completions);
            let mut completions = std::mem::take(&mut self.completions);
            for completion in completions.drain(..) {
                match completion.token {
                    Token::Io(token) => self.finish_io(token, completion.result, completion.buf),
                    Token::Poll(id, interest) => self.poll_ready(id, interest, completion.result),
                }
            }
            self.completions = completions;
            self.fire_timers(Instant::now());
        }
    }

    /// Handles one inbox message; `false` for Stop.
    fn handle(&mut self, message: Message) -> bool {
        match message {
            Message::Run(job) => self.order(job),
            Message::Admitted(job, access, lun_index) => self.start(job, access, lun_index),
            Message::AsyncDone(done) => {
                let outcome = aio::outcome(done.is_read, done.result, done.data_out_length);
                let gate = Some((done.access, done.lun_index));
                let local = Some((self.index, &mut self.local));
                self.shared.complete(done.job, outcome, gate, local);
            }
            Message::Attach(id, resident) => self.attach(id, resident),
            Message::Completed(id, task, outcome) => self.local.push((id, task, outcome)),
            Message::Poke(id) => self.with_resident(id, |resident, io| resident.poked(io)),
            Message::Stop => {
                self.stop_residents();
                return false;
            }
        }
        true
    }

    /// Passes a new command through its LU's gate (commands for absent LUNs are answered at
    /// once: they touch no medium).
    fn order(&mut self, job: Job) {
        let target = &self.shared.targets[job.session.target];
        let Some(lun_index) = target.lun_index(job.task.lun) else {
            let outcome = match target.prepare(&job.request()) {
                Prepared::Done(outcome) => outcome,
                // Unreachable: only an LU plans I/O. Answered as an internal target failure
                // rather than trusted.
                Prepared::Io { .. } => ScsiOutcome::check_condition(0x04, 0x44, 0x00),
            };
            let local = Some((self.index, &mut self.local));
            self.shared.complete(job, outcome, None, local);
            return;
        };
        let access = if runs_exclusively(&job.task.cdb) {
            Access::Exclusive
        } else {
            Access::Shared
        };
        let gate = &self.shared.gates[job.session.target][lun_index];
        if let Some(job) = gate.enter(access, job) {
            if access == Access::Exclusive && !self.shared.is_asynchronous(&job, lun_index) {
                self.shared.to_pool(job, access, lun_index)
            } else {
                self.start(job, access, lun_index)
            }
        }
    }

    /// Plans an admitted command and runs it: inline, on the ring, on an asynchronous
    /// backend, or on the pool.
    fn start(&mut self, mut job: Job, access: Access, lun_index: usize) {
        let gate = Some((access, lun_index));
        let route = self.route(&job);
        match route {
            Route::Done(outcome) => {
                let local = Some((self.index, &mut self.local));
                self.shared.complete(job, outcome, gate, local)
            }
            Route::Pool => self.shared.to_pool(job, access, lun_index),
            Route::Async(planned, data_out_length) => {
                self.submit_async(job, access, lun_index, planned, data_out_length)
            }
            Route::Ring(mut op) => {
                if let (Primitive::Write { len, .. }, Submission::Write { buf, .. }) =
                    (op.primitive, &mut op.submission)
                {
                    // The written range is a prefix of Data-Out: hand the buffer itself over.
                    *buf = std::mem::take(&mut job.task.data_out);
                    buf.truncate(len);
                }
                self.backlog.push_back(Waiting {
                    token: InFlight {
                        job,
                        primitive: op.primitive,
                        data_out_length: op.data_out_length,
                        lun_index,
                        sync_after: op.sync_after,
                    },
                    file: op.file,
                    submission: op.submission,
                });
                self.submit_backlog();
            }
        }
    }

    /// Decides where a command runs; RAM I/O is done here and now.
    fn route(&self, job: &Job) -> Route {
        let target = &self.shared.targets[job.session.target];
        let (lu, request, data_out_length) = match target.prepare(&job.request()) {
            Prepared::Done(outcome) => return Route::Done(outcome),
            Prepared::Io {
                lu,
                request,
                data_out_length,
                ..
            } => (lu, request, data_out_length),
        };
        if lu.backend().asynchronous().is_some() {
            return match Planned::of(&request, &job.task.data_out) {
                Some(planned) => Route::Async(planned, data_out_length),
                None => Route::Pool,
            };
        }
        let Some(primitive) = request.primitive(&job.task.data_out) else {
            return Route::Pool;
        };
        let Some(files) = lu.backend().files() else {
            // In memory: completes inline on this thread.
            let result = run(&**lu.backend(), &request);
            return Route::Done(finish(&request, result, data_out_length));
        };
        if self.ring.is_none() {
            return Route::Pool;
        }
        let mut sync_after = None;
        let (file, submission) = match primitive {
            Primitive::Read { offset, len } => {
                // Page-aligned, so O_DIRECT applies when offset and length are aligned too. The
                // ring fills it whole or fails (short reads are continued, EOF is an error): no
                // old bytes of the pool reach the initiator.
                let buf = mem_ffi::pool::global().alloc(len);
                let file = files.for_transfer(buf.as_ptr() as usize, len, offset);
                (file, Submission::Read { offset, buf })
            }
            Primitive::Write { offset, len, fua } => {
                let dsync = fua && files.fua_method() == FuaMethod::WriteFlag;
                if fua && files.fua_method() == FuaMethod::SyncAfter {
                    sync_after = Some(Arc::clone(files.sync_file()));
                }
                let file = files.for_transfer(job.task.data_out.as_ptr() as usize, len, offset);
                let buf = Buf::empty();
                (file, Submission::Write { offset, buf, dsync })
            }
            Primitive::Flush => (files.sync_file(), Submission::DataSync),
        };
        Route::Ring(RingOp {
            primitive,
            data_out_length,
            file: Arc::clone(file),
            submission,
            sync_after,
        })
    }

    /// Hands a command's operation to its LU's asynchronous backend. The completion posts the
    /// command back to this thread's inbox, where [`Message::AsyncDone`] finishes it.
    fn submit_async(
        &mut self,
        mut job: Job,
        access: Access,
        lun_index: usize,
        planned: Planned,
        data_out_length: u32,
    ) {
        let is_read = planned.is_read();
        let op = planned.into_op(std::mem::take(&mut job.task.data_out));
        let lu = Arc::clone(&self.shared.targets[job.session.target].luns()[lun_index]);
        let Some(backend) = lu.backend().asynchronous() else {
            // Unreachable: routed here only for asynchronous backends. Answered as an
            // internal target failure rather than trusted.
            let outcome = ScsiOutcome::check_condition(0x04, 0x44, 0x00);
            let local = Some((self.index, &mut self.local));
            return self
                .shared
                .complete(job, outcome, Some((access, lun_index)), local);
        };
        let shared = Arc::clone(&self.shared);
        backend.submit(
            op,
            Box::new(move |result| {
                let thread = job.session.thread;
                shared.inboxes[thread].send(Message::AsyncDone(AsyncDone {
                    job,
                    access,
                    lun_index,
                    is_read,
                    data_out_length,
                    result,
                }));
            }),
        );
    }

    /// Pushes backlogged operations into free ring slots. They are submitted, all at once, by
    /// the `io_uring_enter` that next waits for completions.
    fn submit_backlog(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        while let Some(Waiting {
            token,
            file,
            submission,
        }) = self.backlog.pop_front()
        {
            let refused = match submission {
                Submission::Read { offset, buf } => ring
                    .push_read(Token::Io(token), Arc::clone(&file), offset, buf)
                    .map_err(|full| {
                        (
                            full.token,
                            Submission::Read {
                                offset,
                                buf: full.buf.unwrap_or_default(),
                            },
                        )
                    }),
                Submission::Write { offset, buf, dsync } => ring
                    .push_write(Token::Io(token), Arc::clone(&file), offset, buf, dsync)
                    .map_err(|full| {
                        let buf = full.buf.unwrap_or_default();
                        (full.token, Submission::Write { offset, buf, dsync })
                    }),
                Submission::DataSync => ring
                    .push_datasync(Token::Io(token), Arc::clone(&file))
                    .map_err(|full| (full.token, Submission::DataSync)),
            };
            if let Err((token, submission)) = refused {
                // Every slot is busy: retry after the next completions. (The token comes back
                // as it was pushed: command I/O.)
                if let Token::Io(token) = token {
                    self.backlog.push_front(Waiting {
                        token,
                        file,
                        submission,
                    });
                }
                break;
            }
        }
    }

    /// Finishes a command whose ring operation completed.
    fn finish_io(&mut self, mut token: InFlight, result: std::io::Result<usize>, buf: Option<Buf>) {
        if result.is_ok() {
            if let Some(file) = token.sync_after.take() {
                // A FUA write on a regular file: durable only after this fdatasync.
                self.backlog.push_back(Waiting {
                    token,
                    file,
                    submission: Submission::DataSync,
                });
                self.submit_backlog();
                return;
            }
        }
        let InFlight {
            job,
            primitive,
            data_out_length,
            lun_index,
            ..
        } = token;
        let result = match result {
            Ok(_) => Ok(match (primitive, buf) {
                (Primitive::Read { .. }, Some(data)) => BlockReply::Data(data.into()),
                _ => BlockReply::Done,
            }),
            Err(e) => Err(BackendError::from(e)),
        };
        let outcome = primitive.finish(result, data_out_length);
        let local = Some((self.index, &mut self.local));
        self.shared
            .complete(job, outcome, Some((Access::Shared, lun_index)), local);
    }
}

/// A blocking-pool thread: runs admitted commands synchronously, then completes them.
fn blocking_worker(shared: &EngineShared, queue: &Receiver<PoolMessage>) {
    for message in queue {
        let PoolMessage::Run {
            job,
            access,
            lun_index,
        } = message
        else {
            return;
        };
        let target = &shared.targets[job.session.target];
        // Planned again here: the plan borrows the command's buffers, which travel by value.
        let outcome = match target.prepare(&job.request()) {
            Prepared::Done(outcome) => outcome,
            Prepared::Io {
                lu,
                request,
                data_out_length,
                ..
            } => finish(&request, run(&**lu.backend(), &request), data_out_length),
        };
        shared.complete(job, outcome, Some((access, lun_index)), None);
    }
}

mod aio;
#[cfg(test)]
mod tests;
