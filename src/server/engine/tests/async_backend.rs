//! An asynchronous backend: every operation submitted from an engine thread and completed
//! through its inbox, none run on the blocking pool.

use super::*;

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
