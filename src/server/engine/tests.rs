use super::*;
use crate::backend::{Backend, FileBackend, RamBackend};
use crate::scsi::testutil::params;
use crate::scsi::{sense, status, LogicalUnit, TaskAttr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

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
        let (tx, done) = crossbeam_channel::unbounded();
        let sink: CompletionSink = Arc::new(move |id, outcome| {
            let _ = tx.send((id, outcome));
        });
        let nexus = Arc::new(Nexus {
            initiator_name: "iqn.2026-11.test:engine".into(),
            isid: [0, 2, 0x3d, 0, 0, 1],
        });
        Client {
            session: engine.session(0, nexus, sink),
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
            cdb,
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
