use super::*;
use crate::backend::{
    AsyncBackend, AsyncDone as BackendDone, AsyncOp, Backend, FileBackend, RamBackend,
};
use crate::scsi::testutil::params;
use crate::scsi::{sense, status, LogicalUnit, TaskAttr};
use mem_ffi::Payload;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

const BS: usize = 512;

/// A scratch backing file on a disk file system (/var/tmp), so O_DIRECT may be used.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/var/tmp/iser-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// A target with one LU (LUN 0) over `backend`.
fn target(backend: Arc<dyn Backend>, write_cache: bool) -> Arc<ScsiTarget> {
    let mut p = params(0, BS as u32);
    p.write_cache = write_cache;
    Arc::new(ScsiTarget::new(vec![Arc::new(LogicalUnit::new(
        p, backend,
    ))]))
}

fn cdb16(opcode: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    cdb16(0x88, 0, lba, blocks)
}

fn write16(lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
    cdb16(0x8A, if fua { 0x08 } else { 0 }, lba, blocks)
}

fn caw(lba: u64) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

/// One session on the engine, collecting its completions.
struct Client {
    session: EngineSession,
    done: Receiver<(TaskId, ScsiOutcome)>,
    next_id: AtomicU64,
}

impl Client {
    fn new(engine: &Engine) -> Client {
        Client::with_file_pages(engine, false)
    }

    /// A session whose connection sends READs from a file's pages when left there (TCP).
    fn with_file_pages(engine: &Engine, file_pages: bool) -> Client {
        let (tx, done) = crossbeam_channel::unbounded();
        let sink: CompletionSink = Arc::new(move |id, outcome| {
            let _ = tx.send((id, outcome));
        });
        let nexus = Arc::new(Nexus {
            initiator_name: "iqn.2026-11.test:engine".into(),
            isid: [0, 2, 0x3d, 0, 0, 1],
        });
        Client {
            session: engine.session(0, nexus, file_pages, sink),
            done,
            next_id: AtomicU64::new(1),
        }
    }

    fn submit(&self, lun: u64, cdb: Vec<u8>, data_out: Vec<u8>) -> TaskId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let expected_transfer_length = data_out.len() as u32;
        self.session.submit(ScsiTask {
            id,
            target: 0,
            lun,
            cdb: cdb.into(),
            data_out: mem_ffi::Buf::copy_from_slice(&data_out),
            expected_transfer_length,
            attribute: TaskAttr::Simple,
        });
        id
    }

    fn exec(&self, cdb: Vec<u8>, data_out: Vec<u8>) -> ScsiOutcome {
        let id = self.submit(0, cdb, data_out);
        let (done, outcome) = self.done.recv().unwrap();
        assert_eq!(done, id);
        outcome
    }

    fn read(&self, lba: u64, blocks: u32) -> Vec<u8> {
        let o = self.exec(read16(lba, blocks), Vec::new());
        assert_eq!(o.status, status::GOOD, "{o:?}");
        o.data_in.to_vec()
    }
}

/// WRITE, FUA WRITE, READ, SYNCHRONIZE CACHE, and a batch of concurrent commands.
fn read_write_flush(engine: &Engine) {
    let c = Client::new(engine);
    let o = c.exec(write16(2, 2, false), vec![0xA1; 2 * BS]);
    assert_eq!(o.status, status::GOOD);
    assert_eq!(o.data_out_length as usize, 2 * BS);
    assert_eq!(
        c.exec(write16(4, 1, true), vec![0xB2; BS]).status,
        status::GOOD
    );
    let data = c.read(1, 4);
    assert_eq!(&data[..BS], &[0; BS][..]);
    assert!(data[BS..3 * BS].iter().all(|&b| b == 0xA1));
    assert!(data[3 * BS..].iter().all(|&b| b == 0xB2));
    let sync = cdb16(0x91, 0, 0, 0);
    assert_eq!(c.exec(sync, Vec::new()).status, status::GOOD);
    // Many commands in flight at once, page-aligned (O_DIRECT-eligible) and not.
    let ids: Vec<_> = (0..32u8)
        .map(|i| {
            c.submit(
                0,
                write16(64 + 8 * u64::from(i), 8, i % 4 == 0),
                vec![i; 8 * BS],
            )
        })
        .collect();
    let mut seen: Vec<_> = (0..ids.len()).map(|_| c.done.recv().unwrap()).collect();
    seen.sort_by_key(|(id, _)| *id);
    for ((id, o), want) in seen.into_iter().zip(&ids) {
        assert_eq!((id, o.status), (*want, status::GOOD));
    }
    for i in 0..32u8 {
        assert!(c.read(64 + 8 * u64::from(i), 8).iter().all(|&b| b == i));
    }
    // Non-I/O commands and absent LUNs complete too.
    let id = c.submit(7, read16(0, 1), Vec::new());
    let (done, o) = c.done.recv().unwrap();
    assert_eq!(done, id);
    assert_eq!(o.asc_ascq(), sense::LU_NOT_SUPPORTED);
    assert_eq!(c.exec(vec![0; 6], Vec::new()).status, status::GOOD);
    c.session.drain();
}

#[test]
fn ram_lun_read_write_flush() {
    let engine = Engine::start(
        vec![target(Arc::new(RamBackend::new(1 << 20)), true)],
        2,
        IoMode::Auto,
    )
    .unwrap();
    read_write_flush(&engine);
    // Inline on the engine thread, a RAM READ comes back lent from the LUN's memory, not copied.
    let c = Client::new(&engine);
    let o = c.exec(read16(2, 2), Vec::new());
    let lent = o.data_in.lent().expect("a RAM READ is lent");
    assert!(lent.iter().all(|l| l.arena_extent().is_some()));
    assert_eq!(o.data_in.to_vec(), vec![0xA1; 2 * BS]);
    c.session.drain();
}

#[test]
fn file_lun_read_write_flush_through_io_uring() {
    let path = scratch("rw.img");
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
    let engine = Engine::start(vec![target(backend, true)], 2, IoMode::Auto).unwrap();
    // This host's kernel has io_uring; a CI host without it fails here rather than silently
    // testing only the fallback.
    assert!(engine.uses_io_uring());
    read_write_flush(&engine);
    engine.shutdown();
    // What the engine acknowledged is in the file.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[2 * BS..4 * BS].iter().all(|&b| b == 0xA1));
    assert!(bytes[4 * BS..5 * BS].iter().all(|&b| b == 0xB2));
    std::fs::remove_file(&path).unwrap();
}

/// A file in tmpfs runs inline on the engine thread, like a RAM LUN, and what it acknowledged
/// is in the file.
#[test]
fn tmpfs_file_lun_runs_inline() {
    let path = PathBuf::from(format!("/dev/shm/iser-engine-{}.img", std::process::id()));
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
    assert!(backend.files().is_some_and(|f| f.in_memory()));
    let engine = Engine::start(vec![target(backend, true)], 2, IoMode::Auto).unwrap();
    read_write_flush(&engine);
    engine.shutdown();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[2 * BS..4 * BS].iter().all(|&b| b == 0xA1));
    assert!(bytes[4 * BS..5 * BS].iter().all(|&b| b == 0xB2));
    std::fs::remove_file(&path).unwrap();
}

/// A large READ of a file in memory is left in the file for a session whose connection sends
/// file pages (TCP): the outcome names the span and the bytes read from it are the file's. A
/// small READ, and any READ for a session that cannot send pages (iSER), is read into a buffer.
#[test]
fn tmpfs_file_reads_are_left_in_the_file_for_tcp_sessions() {
    let path = PathBuf::from(format!(
        "/dev/shm/iser-engine-span-{}.img",
        std::process::id()
    ));
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
    let engine = Engine::start(vec![target(backend, true)], 1, IoMode::Auto).unwrap();
    let tcp = Client::with_file_pages(&engine, true);
    let data: Vec<u8> = (0..64 * BS as u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        tcp.exec(write16(8, 64, false), data.clone()).status,
        status::GOOD
    );
    let large = tcp.exec(read16(8, 64), Vec::new());
    assert_eq!(large.status, status::GOOD);
    match &large.data_in {
        Payload::File(span) => assert_eq!((span.offset(), span.len()), (8 * BS as u64, data.len())),
        other => panic!("expected a file span, got {other:?}"),
    }
    assert_eq!(large.data_in.to_vec(), data);
    let small = tcp.exec(read16(8, 8), Vec::new());
    assert!(
        matches!(small.data_in, Payload::Owned(_)),
        "4 KiB is copied"
    );
    assert_eq!(small.data_in.to_vec(), data[..8 * BS]);
    let iser = Client::new(&engine);
    let large = iser.exec(read16(8, 64), Vec::new());
    assert!(matches!(large.data_in, Payload::Owned(_)));
    assert_eq!(large.data_in.to_vec(), data);
    engine.shutdown();
    std::fs::remove_file(&path).unwrap();
}

/// Pool buffers are page-aligned, so a READ or WRITE of whole 4 KiB pages at an aligned offset
/// takes the file's O_DIRECT descriptor through io_uring (with `Vec` buffers it never did: their
/// addresses were not page-aligned).
#[test]
fn aligned_transfers_in_pool_buffers_take_o_direct() {
    let path = scratch("direct.img");
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
    assert!(
        backend.files().is_some_and(|f| f.has_direct()),
        "/var/tmp must be a disk file system that allows O_DIRECT"
    );
    let engine = Engine::start(vec![target(backend, true)], 1, IoMode::Auto).unwrap();
    assert!(engine.uses_io_uring());
    let c = Client::new(&engine);
    let before = crate::stats::global_direct_transfers();
    let page = 4096 / BS as u32;
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        c.exec(write16(8, page, false), data.clone()).status,
        status::GOOD
    );
    assert_eq!(c.read(8, page), data);
    // Other tests run concurrently: at least these two went direct.
    assert!(crate::stats::global_direct_transfers() - before >= 2);
    c.session.drain();
    engine.shutdown();
    assert_eq!(std::fs::read(&path).unwrap()[4096..8192], data[..]);
    std::fs::remove_file(&path).unwrap();
}

/// A recycled pool buffer holds another command's bytes, so a read that comes back short must
/// fail whole: here the file shrinks under the LU, and the READ past its new end is a MEDIUM
/// ERROR with no data, on the ring and on the blocking path alike.
#[test]
fn a_short_read_is_an_error_and_exposes_no_stale_bytes() {
    for mode in [IoMode::Auto, IoMode::Blocking] {
        let path = scratch(&format!("short-{mode:?}.img"));
        let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
        let engine = Engine::start(vec![target(backend, true)], 1, mode).unwrap();
        let c = Client::new(&engine);
        // Leave secrets in the pool's free 4 KiB buffers.
        let secrets: Vec<_> = (0..64)
            .map(|_| mem_ffi::Buf::copy_from_slice(&[0xEE; 4096]))
            .collect();
        drop(secrets);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2048)
            .unwrap();
        let o = c.exec(read16(0, 8), Vec::new());
        assert_eq!(o.status, status::CHECK_CONDITION, "{mode:?}");
        assert_eq!(o.sense_key(), sense::MEDIUM_ERROR, "{mode:?}");
        assert!(o.data_in.is_empty(), "{mode:?}: no data with the error");
        c.session.drain();
        drop(engine);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn file_lun_write_through_and_the_blocking_fallback() {
    let path = scratch("fallback.img");
    // Write cache off: opened O_DSYNC, every write planned FUA.
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, true).unwrap());
    let engine = Engine::start(vec![target(backend, false)], 2, IoMode::Blocking).unwrap();
    assert!(!engine.uses_io_uring());
    read_write_flush(&engine);
    drop(engine);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[2 * BS..4 * BS].iter().all(|&b| b == 0xA1));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn backend_errors_become_sense_data() {
    // The file shrinks under the LU: ring reads hit end of file -> MEDIUM ERROR.
    let path = scratch("shrunk.img");
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    for mode in [IoMode::Auto, IoMode::Blocking] {
        let engine = Engine::start(vec![target(backend.clone(), true)], 1, mode).unwrap();
        let c = Client::new(&engine);
        let o = c.exec(read16(8, 1), Vec::new());
        assert_eq!(o.status, status::CHECK_CONDITION, "{mode:?}");
        assert_eq!(o.sense_key(), sense::MEDIUM_ERROR);
        assert_eq!(o.asc_ascq(), sense::UNRECOVERED_READ_ERROR);
    }
    std::fs::remove_file(&path).unwrap();
}

/// Each client increments a counter in block 0 by read + COMPARE AND WRITE (retrying on
/// miscompare) while other clients write and read elsewhere on the LU; a CAW that was not
/// atomic against the others would lose increments.
fn caw_is_atomic(engine: &Engine) {
    let counters = 4;
    let per_client = 60u64;
    std::thread::scope(|s| {
        for _ in 0..counters {
            s.spawn(|| {
                let c = Client::new(engine);
                let mut done = 0;
                while done < per_client {
                    let current = c.read(0, 1);
                    let v = u64::from_le_bytes(current[..8].try_into().unwrap());
                    let mut data = current.clone();
                    data.extend_from_slice(&(v + 1).to_le_bytes());
                    data.resize(2 * BS, 0);
                    let o = c.exec(caw(0), data);
                    if o.status == status::GOOD {
                        done += 1;
                    } else {
                        assert_eq!(o.sense_key(), sense::MISCOMPARE, "{o:?}");
                    }
                }
            });
        }
        for w in 0..2u8 {
            s.spawn(move || {
                let c = Client::new(engine);
                for i in 0..100u64 {
                    let lba = 1 + (i * 2 + u64::from(w)) % 60;
                    let ids: Vec<_> = (0..4)
                        .map(|k| c.submit(0, write16(lba + 64 * k, 1, false), vec![w; BS]))
                        .collect();
                    for _ in ids {
                        assert_eq!(c.done.recv().unwrap().1.status, status::GOOD);
                    }
                }
            });
        }
    });
    let c = Client::new(engine);
    let v = u64::from_le_bytes(c.read(0, 1)[..8].try_into().unwrap());
    assert_eq!(v, counters * per_client);
}

#[test]
fn compare_and_write_is_atomic_on_ram() {
    let engine = Engine::start(
        vec![target(Arc::new(RamBackend::new(1 << 20)), true)],
        2,
        IoMode::Auto,
    )
    .unwrap();
    caw_is_atomic(&engine);
}

#[test]
fn compare_and_write_is_atomic_on_a_file_through_io_uring() {
    let path = scratch("caw.img");
    let backend = Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap());
    let engine = Engine::start(vec![target(backend, true)], 2, IoMode::Auto).unwrap();
    assert!(engine.uses_io_uring());
    caw_is_atomic(&engine);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sessions_spread_over_threads_and_shutdown_drains() {
    let path = scratch("drain.img");
    let backend = Arc::new(FileBackend::open(&path, Some(4 << 20), true, false).unwrap());
    let engine = Engine::start(vec![target(backend, true)], 3, IoMode::Auto).unwrap();
    let clients: Vec<_> = (0..3).map(|_| Client::new(&engine)).collect();
    let threads: Vec<_> = clients.iter().map(|c| c.session.context.thread).collect();
    assert_eq!(threads, vec![0, 1, 2]);
    for (i, c) in clients.iter().enumerate() {
        for k in 0..20u64 {
            c.submit(
                0,
                write16(k * 16 + i as u64 * 4, 4, false),
                vec![i as u8 + 1; 4 * BS],
            );
        }
    }
    // Shutdown waits for every accepted command before stopping the threads.
    engine.shutdown();
    for c in &clients {
        assert_eq!(c.done.try_iter().count(), 20);
    }
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[..4 * BS].iter().all(|&b| b == 1));
    std::fs::remove_file(&path).unwrap();
}

/// An asynchronous backend for the engine's side of asynchronous I/O (RBD's is tested
/// against Ceph in rbd-ffi/tests and tests/rbd.rs): RAM whose operations complete on a
/// thread of its own, recording which thread submitted each operation and every blocking
/// call.
struct CompletesElsewhere {
    ram: RamBackend,
    queue: Mutex<Sender<(AsyncOp, BackendDone)>>,
    /// (submitting thread's name, operation kind), in submission order.
    submitted: Mutex<Vec<(String, &'static str)>>,
    blocking_calls: AtomicU64,
}

impl CompletesElsewhere {
    fn start(size: u64) -> Arc<CompletesElsewhere> {
        let (tx, rx) = crossbeam_channel::unbounded::<(AsyncOp, BackendDone)>();
        let backend = Arc::new(CompletesElsewhere {
            ram: RamBackend::new(size),
            queue: Mutex::new(tx),
            submitted: Mutex::new(Vec::new()),
            blocking_calls: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&backend);
        std::thread::Builder::new()
            .name("completer".into())
            .spawn(move || {
                for (op, done) in rx {
                    let Some(backend) = weak.upgrade() else {
                        return;
                    };
                    done(backend.execute(op));
                }
            })
            .unwrap();
        backend
    }

    fn execute(&self, op: AsyncOp) -> Result<AsyncReply, BackendError> {
        let ram = &self.ram;
        match op {
            AsyncOp::Read { offset, len } => {
                let mut buf = mem_ffi::pool::global().alloc(len);
                ram.read_at(&mut buf, offset)?;
                Ok(AsyncReply::Data(buf))
            }
            AsyncOp::Write { offset, data, .. } => {
                ram.write_at(&data, offset).map(|()| AsyncReply::Done)
            }
            AsyncOp::Flush => ram.flush().map(|()| AsyncReply::Done),
            AsyncOp::Discard { ranges } => {
                for (offset, len) in ranges {
                    ram.discard(offset, len)?;
                }
                Ok(AsyncReply::Done)
            }
            AsyncOp::WriteZeroes { offset, len, .. } => {
                ram.write_zeroes(offset, len).map(|()| AsyncReply::Done)
            }
            AsyncOp::CompareAndWrite {
                offset,
                compare,
                data,
                ..
            } => {
                let mut medium = vec![0; compare.len()];
                ram.read_at(&mut medium, offset)?;
                if let Some(at) = medium.iter().zip(compare.iter()).position(|(m, c)| m != c) {
                    return Ok(AsyncReply::Miscompare { offset: at as u64 });
                }
                ram.write_at(&data, offset).map(|()| AsyncReply::Done)
            }
        }
    }

    fn kinds_submitted(&self) -> Vec<&'static str> {
        let submitted = self.submitted.lock().unwrap();
        for (thread, kind) in submitted.iter() {
            assert!(thread.starts_with("io-engine-"), "{kind} from {thread}");
        }
        submitted.iter().map(|(_, kind)| *kind).collect()
    }
}

impl AsyncBackend for CompletesElsewhere {
    fn submit(&self, op: AsyncOp, done: BackendDone) {
        let kind = match &op {
            AsyncOp::Read { .. } => "read",
            AsyncOp::Write { .. } => "write",
            AsyncOp::Flush => "flush",
            AsyncOp::Discard { .. } => "discard",
            AsyncOp::WriteZeroes { .. } => "write-zeroes",
            AsyncOp::CompareAndWrite { .. } => "compare-and-write",
        };
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.submitted.lock().unwrap().push((thread, kind));
        self.queue.lock().unwrap().send((op, done)).unwrap();
    }
}

impl Backend for CompletesElsewhere {
    fn size(&self) -> u64 {
        self.ram.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.blocking_calls.fetch_add(1, Ordering::SeqCst);
        self.ram.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError> {
        self.blocking_calls.fetch_add(1, Ordering::SeqCst);
        self.ram.write_at(data, offset)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.blocking_calls.fetch_add(1, Ordering::SeqCst);
        self.ram.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.blocking_calls.fetch_add(1, Ordering::SeqCst);
        self.ram.discard(offset, len)
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn kind(&self) -> &'static str {
        "completes-elsewhere"
    }
    fn asynchronous(&self) -> Option<&dyn AsyncBackend> {
        Some(self)
    }
}

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
fn asynchronous_backends_complete_through_the_engine_thread_inbox() {
    let backend = CompletesElsewhere::start(1 << 20);
    let engine = Engine::start(vec![target(backend.clone(), true)], 2, IoMode::Auto).unwrap();
    read_write_flush(&engine);
    let c = Client::new(&engine);
    // UNMAP of blocks 64..72 and WRITE SAME(16) with UNMAP of 72..80: discards.
    let mut unmap = vec![0u8; 10];
    unmap[0] = 0x42;
    unmap[8] = 24;
    let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&64u64.to_be_bytes());
    list.extend_from_slice(&8u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    assert_eq!(c.exec(unmap, list).status, status::GOOD);
    let write_same_unmap = cdb16(0x93, 0x08, 72, 8);
    assert_eq!(c.exec(write_same_unmap, vec![0; BS]).status, status::GOOD);
    // WRITE SAME(16) of zeroes without UNMAP: write-zeroes.
    assert_eq!(
        c.exec(cdb16(0x93, 0, 80, 8), vec![0; BS]).status,
        status::GOOD
    );
    assert!(c.read(64, 24).iter().all(|&b| b == 0));
    // COMPARE AND WRITE: a match writes, a mismatch reports MISCOMPARE with the offset.
    let mut data = c.read(100, 1);
    data.extend_from_slice(&[0x5A; BS]);
    assert_eq!(c.exec(caw(100), data).status, status::GOOD);
    let mut stale = vec![0x5A; BS];
    stale[7] = 0;
    stale.extend_from_slice(&[1; BS]);
    let o = c.exec(caw(100), stale);
    assert_eq!(o.sense_key(), sense::MISCOMPARE);
    assert_eq!(o.sense[3..7], 7u32.to_be_bytes(), "INFORMATION: the offset");
    assert_eq!(c.read(100, 1), vec![0x5A; BS]);
    caw_is_atomic(&engine);
    c.session.drain();
    engine.shutdown();

    let kinds = backend.kinds_submitted();
    for kind in [
        "read",
        "write",
        "flush",
        "discard",
        "write-zeroes",
        "compare-and-write",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert_eq!(
        backend.blocking_calls.load(Ordering::SeqCst),
        0,
        "nothing ran on the blocking pool"
    );
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
    let nexus = Arc::new(Nexus {
        initiator_name: "iqn.2026-11.test:resident".into(),
        isid: [0, 2, 0x3d, 0, 0, 9],
    });
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
