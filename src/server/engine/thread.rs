//! An engine thread: its ring, its backlog of operations waiting for a ring slot, the commands
//! it plans and runs (inline on RAM, on the ring, on an asynchronous backend or the blocking
//! pool), and the loop that also runs the connections living on it (`resident.rs`).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mem_ffi::{Buf, Payload};
use uring_ffi::{Completion, Ring};

use super::aio::{self, Planned};
use super::resident::{Interest, Resident};
use super::{
    AsyncDone, EngineShared, Job, LocalCompletion, Message, OnThread, FILE_PAGES_MIN, RING_SLOTS,
};
use crate::backend::{BackendError, FuaMethod};
use crate::inthash::IntMap;
use crate::iscsi::TaskKind;
use crate::scsi::{
    finish, run, runs_exclusively, BlockReply, BlockRequest, Prepared, Primitive, ScsiOutcome,
    Transfer,
};
use crate::server::gate::Access;

/// A command whose I/O is in the ring (the ring's token).
pub(super) struct InFlight {
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
    /// Run on the blocking pool: the request as planned here when it borrows none of the
    /// command's buffers (with the Data-Out length), else planned again there.
    Pool(Option<(BlockRequest<'static>, u32)>),
}

/// What a ring operation of an engine thread is for.
pub(super) enum Token {
    /// A command's I/O.
    Io(InFlight),
    /// A resident's readiness poll.
    Poll(u64, Interest),
}

/// One engine thread: its ring (absent when io_uring is unavailable), its backlog of
/// operations waiting for a ring slot, a reusable completion buffer, and the connections
/// living on it.
pub(super) struct EngineThread {
    pub(super) index: usize,
    pub(super) shared: Arc<EngineShared>,
    pub(super) ring: Option<Ring<Token, Buf>>,
    backlog: VecDeque<Waiting>,
    completions: Vec<Completion<Token, Buf>>,
    /// Commands of residents that finished on this thread, not yet handed to them.
    pub(super) local: Vec<LocalCompletion>,
    /// The connections living here (`None` while one is being called), by the id the engine
    /// handed out (`Engine::reserve_residence`): no peer picks these keys, so the cheap hash
    /// ([`IntMap`]) is safe.
    pub(super) residents: IntMap<u64, Option<Box<dyn Resident>>>,
    /// Residents that had events this turn: they write their output and are checked for the
    /// end once the turn's events are all in.
    pub(super) touched: Vec<u64>,
    /// Resident ids of one busy-poll round (kept: no allocation per round).
    pub(super) spin_ids: Vec<u64>,
    /// When the thread last woke up: the time of this turn for timers and residents
    /// ([`super::ThreadIo::now`]). One clock read per wake-up: in a guest without a vDSO
    /// clock (QEMU/TCG) each read is a system call. Timers are coarse (seconds), so a wait
    /// bounded from this slightly old time ends at most one turn's work late.
    pub(super) now: Instant,
    /// The same on the engine's clock: when the commands of this turn arrived or completed.
    pub(super) now_nanos: u64,
}

impl EngineThread {
    /// Engine thread `index`, with its ring (absent when io_uring is unavailable).
    pub(super) fn new(
        index: usize,
        shared: Arc<EngineShared>,
        ring: Option<Ring<Token, Buf>>,
    ) -> EngineThread {
        let mut thread = EngineThread {
            index,
            shared,
            ring,
            backlog: VecDeque::new(),
            completions: Vec::with_capacity(RING_SLOTS as usize),
            local: Vec::new(),
            residents: IntMap::default(),
            touched: Vec::new(),
            spin_ids: Vec::new(),
            now: Instant::now(),
            now_nanos: 0,
        };
        thread.woke();
        thread
    }

    /// The thread woke up: the time of this turn.
    fn woke(&mut self) {
        self.now = Instant::now();
        self.now_nanos = self.shared.clock.nanos(self.now);
    }

    pub(super) fn run(mut self, queue: &Receiver<Message>) {
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
                .map(|due| due.saturating_duration_since(self.now));
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
            if self.busy_poll(queue, timeout) {
                // A resident found work while spinning: another turn without sleeping.
                continue;
            }
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            if let Err(e) = ring.wait_timeout(timeout) {
                log::error!("io_uring wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.woke();
            let Some(ring) = self.ring.as_mut() else {
                return;
            };
            ring.reap(&mut self.completions);
            let mut completions = std::mem::take(&mut self.completions);
            for completion in completions.drain(..) {
                match completion.token {
                    Token::Io(token) => self.finish_io(token, completion.result, completion.buf),
                    Token::Poll(id, interest) => self.poll_ready(id, interest, completion.result),
                }
            }
            self.completions = completions;
            self.fire_timers(self.now);
        }
    }

    /// With `limits.busy_poll_us` set and residents here, spins that long (at most until
    /// `timeout`) before the ring sleeps: submits what is queued, then polls the residents
    /// ([`Resident::spin`]), the ring's completions and the inbox without system calls.
    /// `true` when a resident found work (the caller settles it and turns again); `false` when
    /// the time is up or the ring or inbox has something (the ring's wait returns at once).
    fn busy_poll(&mut self, queue: &Receiver<Message>, timeout: Option<Duration>) -> bool {
        let spin = Duration::from_micros(self.shared.busy_poll_us.load(Ordering::Relaxed));
        if spin.is_zero() || self.residents.is_empty() {
            return false;
        }
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        if let Err(e) = ring.submit() {
            log::error!("io_uring submit failed: {e}");
            return false;
        }
        let start = Instant::now();
        let spin = timeout.map_or(spin, |t| t.min(spin));
        loop {
            if self.spin_residents() {
                self.woke();
                return true;
            }
            let ring_ready = self.ring.as_mut().is_some_and(Ring::has_completions);
            if ring_ready || !queue.is_empty() || start.elapsed() >= spin {
                return false;
            }
            std::hint::spin_loop();
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
                let local = Some(OnThread::new(self.index, &mut self.local, self.now_nanos));
                self.shared.complete(done.job, outcome, gate, local);
            }
            Message::Attach(id, resident) => self.attach(id, resident),
            Message::Completed(id, task, outcome) => self.local.push((id, task, outcome)),
            Message::Poke(id) => self.with_resident(id, |resident, io| resident.poked(io)),
            Message::Stop => {
                self.stop_residents();
                return false;
            }
            Message::Heartbeat(heartbeat) => heartbeat.answer(self.index),
        }
        true
    }

    /// Passes a new command through its LU's gate (commands for absent LUNs are answered at
    /// once: they touch no medium).
    pub(super) fn order(&mut self, job: Job) {
        let target = &self.shared.targets[job.session.target];
        let Some(lun_index) = target.lun_index(job.task.lun) else {
            let outcome = match target.prepare(&job.request()) {
                Prepared::Done(outcome) => outcome,
                // Unreachable: only an LU plans I/O. Answered as an internal target failure
                // rather than trusted.
                Prepared::Io { .. } => ScsiOutcome::check_condition(0x04, 0x44, 0x00),
            };
            let local = Some(OnThread::new(self.index, &mut self.local, self.now_nanos));
            self.shared.complete(job, outcome, None, local);
            return;
        };
        let resets = job.task.kind == TaskKind::LunReset;
        let access = if resets || runs_exclusively(&job.task.cdb) {
            Access::Exclusive
        } else {
            Access::Shared
        };
        let gate = &self.shared.gates[job.session.target][lun_index];
        if let Some(job) = gate.enter(access, job) {
            if resets {
                let local = Some(OnThread::new(self.index, &mut self.local, self.now_nanos));
                self.shared.reset(job, lun_index, local)
            } else if access == Access::Exclusive && !self.shared.is_asynchronous(&job, lun_index) {
                self.shared.to_pool(job, access, lun_index, None)
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
                let local = Some(OnThread::new(self.index, &mut self.local, self.now_nanos));
                self.shared.complete(job, outcome, gate, local)
            }
            Route::Pool(planned) => self.shared.to_pool(job, access, lun_index, planned),
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

    /// Plans a command and decides where it runs; RAM I/O is done here and now. Notes on the
    /// job the read or write it counts as, whose time the LU is told at completion.
    fn route(&self, job: &Job) -> Route {
        let target = &self.shared.targets[job.session.target];
        let (lu, request, data_out_length) = match target.prepare(&job.request()) {
            Prepared::Done(outcome) => {
                job.stamp.set(job.stamp.get().planned(None));
                return Route::Done(outcome);
            }
            Prepared::Io {
                lu,
                request,
                data_out_length,
                ..
            } => (lu, request, data_out_length),
        };
        job.stamp
            .set(job.stamp.get().planned(Transfer::of(&request)));
        let to_pool = |request: BlockRequest<'_>| {
            Route::Pool(request.detached().map(|r| (r, data_out_length)))
        };
        if lu.backend().asynchronous().is_some() {
            return match Planned::of(&request, &job.task.data_out) {
                Some(planned) => Route::Async(planned, data_out_length),
                None => to_pool(request),
            };
        }
        let Some(primitive) = request.primitive(&job.task.data_out) else {
            return to_pool(request);
        };
        let Some(files) = lu.backend().files().filter(|f| !f.in_memory()) else {
            // In memory (RAM, or a file in tmpfs or ramfs): completes inline on this thread. A
            // large READ of a file in memory is left in the file for a connection that sends
            // its pages to the socket itself: no copy into a buffer and out again.
            let span = match primitive {
                Primitive::Read { offset, len }
                    if job.session.file_pages && len >= FILE_PAGES_MIN =>
                {
                    lu.backend().files().and_then(|f| f.page_span(offset, len))
                }
                _ => None,
            };
            let result = match span {
                Some(span) => Ok(BlockReply::Data(Payload::File(span))),
                None => run(&**lu.backend(), &request),
            };
            return Route::Done(finish(&request, result, data_out_length));
        };
        if self.ring.is_none() {
            return to_pool(request);
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
            let local = Some(OnThread::new(self.index, &mut self.local, self.now_nanos));
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
        let local = Some(OnThread::new(self.index, &mut self.local, self.now_nanos));
        self.shared
            .complete(job, outcome, Some((Access::Shared, lun_index)), local);
    }
}
