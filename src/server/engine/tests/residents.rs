//! Residents: connections that live on an engine thread, get their completions there and
//! are spun when busy polling is on.

use super::*;

/// What the test resident saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A completion: task, status, the session's outstanding count then, and the thread.
    Completed(TaskId, u8, usize, String),
    Poked,
    Dropped,
}

/// A connection without a socket: it runs its commands on its engine thread and reports.
struct TestResident {
    session: EngineSession,
    seen: Sender<Seen>,
    commands: usize,
    completed: usize,
    poked: bool,
}

impl Resident for TestResident {
    fn start(&mut self, io: &mut ThreadIo<'_>) {
        // Eight RAM writes finish inline on this thread; a COMPARE AND WRITE runs on the
        // blocking pool and comes back through the thread's inbox.
        for id in 0..8u64 {
            let task = ScsiTask {
                id,
                target: 0,
                lun: 0,
                cdb: write16(8 + id, 1, false).into(),
                data_out: mem_ffi::Buf::copy_from_slice(&[id as u8; BS]),
                expected_transfer_length: BS as u32,
                attribute: TaskAttr::Simple,
                kind: crate::iscsi::TaskKind::Command,
            };
            io.execute(&self.session, task);
        }
        let mut data = vec![0u8; BS];
        data.extend_from_slice(&[0x77; BS]);
        let task = ScsiTask {
            id: 100,
            target: 0,
            lun: 0,
            cdb: caw(0).into(),
            data_out: mem_ffi::Buf::copy_from_slice(&data),
            expected_transfer_length: 2 * BS as u32,
            attribute: TaskAttr::Simple,
            kind: crate::iscsi::TaskKind::Command,
        };
        io.execute(&self.session, task);
        self.commands = 9;
    }

    fn ready(&mut self, _: Interest, _: std::io::Result<usize>, _: &mut ThreadIo<'_>) {}

    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, _: &mut ThreadIo<'_>) {
        self.completed += 1;
        let thread = std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string();
        let outstanding = self.session.outstanding();
        let _ = self
            .seen
            .send(Seen::Completed(id, outcome.status, outstanding, thread));
    }

    fn poked(&mut self, _: &mut ThreadIo<'_>) {
        self.poked = true;
        let _ = self.seen.send(Seen::Poked);
    }

    fn timeout(&mut self, _: Instant, _: &mut ThreadIo<'_>) {}

    fn abort(&mut self, _: &mut ThreadIo<'_>) {}

    fn settle(&mut self, _: &mut ThreadIo<'_>) {}

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn is_finished(&self) -> bool {
        self.poked && self.completed == self.commands
    }
}

impl Drop for TestResident {
    fn drop(&mut self) {
        let _ = self.seen.send(Seen::Dropped);
    }
}

#[test]
fn a_resident_gets_its_completions_on_its_thread_with_the_count_already_down() {
    let engine = Engine::start(
        vec![target(Arc::new(RamBackend::new(1 << 20)), true)],
        2,
        IoMode::Auto,
    )
    .unwrap();
    assert!(engine.runs_connections());
    let residence = engine.reserve_residence();
    let nexus = Arc::new(Nexus::iscsi(
        "iqn.2026-11.test:resident",
        [0, 2, 0x3d, 0, 0, 9],
    ));
    let session = engine.resident_session(&residence, 0, nexus, false);
    let home = format!("io-engine-{}", residence.thread());
    let (seen, events) = crossbeam_channel::unbounded();
    residence.attach(Box::new(TestResident {
        session,
        seen,
        commands: 0,
        completed: 0,
        poked: false,
    }));
    let mut completions = Vec::new();
    while completions.len() < 9 {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            Seen::Completed(id, status, outstanding, thread) => {
                assert_eq!(status, status::GOOD, "task {id}");
                assert_eq!(thread, home, "task {id} completed off its thread");
                completions.push((id, outstanding));
            }
            other => panic!("{other:?} before the completions"),
        }
    }
    // The pool's completion arrives last, and only once nothing is outstanding: a resident
    // releases its session on seeing zero, and nothing else would wake it afterwards.
    let (last, outstanding) = *completions.last().unwrap();
    assert_eq!((last, outstanding), (100, 0));
    residence.poke();
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)).unwrap(),
        Seen::Poked
    );
    // Finished: the thread drops it.
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)).unwrap(),
        Seen::Dropped
    );
    engine.shutdown();
}

/// A resident with nothing to poll but its spins: it finds work on its third.
struct SpinResident {
    spins: Arc<AtomicUsize>,
    found: bool,
    seen: Sender<Seen>,
}

impl Resident for SpinResident {
    fn start(&mut self, _: &mut ThreadIo<'_>) {}
    fn ready(&mut self, _: Interest, _: std::io::Result<usize>, _: &mut ThreadIo<'_>) {}
    fn completed(&mut self, _: TaskId, _: ScsiOutcome, _: &mut ThreadIo<'_>) {}
    fn poked(&mut self, _: &mut ThreadIo<'_>) {
        let _ = self.seen.send(Seen::Poked);
    }
    fn timeout(&mut self, _: Instant, _: &mut ThreadIo<'_>) {}
    fn abort(&mut self, _: &mut ThreadIo<'_>) {}
    fn settle(&mut self, _: &mut ThreadIo<'_>) {}
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn is_finished(&self) -> bool {
        self.found
    }
    fn spin(&mut self, _: &mut ThreadIo<'_>) -> bool {
        self.found = self.spins.fetch_add(1, Ordering::SeqCst) + 1 >= 3;
        self.found
    }
}

impl Drop for SpinResident {
    fn drop(&mut self) {
        let _ = self.seen.send(Seen::Dropped);
    }
}

/// `limits.busy_poll_us`: without it a thread with residents sleeps and never spins them;
/// with it the thread polls them before sleeping, and one that finds work is settled (here:
/// found finished and dropped) with no wake-up from outside.
#[test]
fn busy_polling_spins_residents_only_when_set() {
    let engine = Engine::start(
        vec![target(Arc::new(RamBackend::new(1 << 20)), true)],
        1,
        IoMode::Auto,
    )
    .unwrap();
    assert!(engine.runs_connections());
    let residence = engine.reserve_residence();
    let spins = Arc::new(AtomicUsize::new(0));
    let (seen, events) = crossbeam_channel::unbounded();
    residence.attach(Box::new(SpinResident {
        spins: Arc::clone(&spins),
        found: false,
        seen,
    }));
    residence.poke();
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)).unwrap(),
        Seen::Poked
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(spins.load(Ordering::SeqCst), 0, "spun without busy_poll_us");
    engine.set_busy_poll(Duration::from_micros(500));
    residence.poke();
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)).unwrap(),
        Seen::Poked
    );
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)).unwrap(),
        Seen::Dropped
    );
    assert!(spins.load(Ordering::SeqCst) >= 3);
    engine.shutdown();
}
