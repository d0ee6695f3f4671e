//! Tests of the I/O engine: LUNs, backends and residents driven through its threads.
//!
//! One file per kind of user of the engine; the helpers they share live here.

mod async_backend;
mod copies;
mod luns;
mod residents;

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

/// Opens a gated backend when dropped, so that a failing test does not leave commands waiting
/// in it (and the engine's shutdown with them).
struct OpenOnDrop<'a>(&'a crate::scsi::testutil::ProbeBackend);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.open();
    }
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
        Client::session(engine, file_pages, 1)
    }

    /// A session of another initiator port (its ISID ends in `isid`), for reservations.
    fn of_initiator_port(engine: &Engine, isid: u8) -> Client {
        Client::session(engine, false, isid)
    }

    fn session(engine: &Engine, file_pages: bool, isid: u8) -> Client {
        let (tx, done) = crossbeam_channel::unbounded();
        let sink: CompletionSink = Arc::new(move |id, outcome| {
            let _ = tx.send((id, outcome));
        });
        let nexus = Arc::new(Nexus::iscsi(
            "iqn.2026-11.test:engine",
            [0, 2, 0x3d, 0, 0, isid],
        ));
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
            kind: crate::iscsi::TaskKind::Command,
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
    // Each command counted once by LUN 0, wherever it ran (a plan that cannot travel to the
    // blocking pool is made again there), and every read and write timed.
    let totals = engine.shared.targets[0].luns()[0].io_totals();
    let (writes, reads) = (2 + 32, 1 + 32);
    assert_eq!(
        (totals.commands, totals.writes, totals.reads),
        (writes + reads + 2, writes, reads),
        "{totals:?}"
    );
    assert!(
        totals.read_nanos > 0 && totals.write_nanos > 0,
        "{totals:?}"
    );
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
