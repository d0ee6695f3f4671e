//! RAM and file LUNs through the engine: read, write and flush on io_uring, inline and on
//! the blocking fallback, O_DIRECT for aligned pool buffers, short reads, backend errors as
//! sense, COMPARE AND WRITE atomicity, PREEMPT AND ABORT waiting for the preempted commands,
//! sessions spread over threads and the drain at shutdown.

use super::*;

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

/// PERSISTENT RESERVE OUT with the basic parameter list (reservation key, service action
/// reservation key).
fn prout(action: u8, rtype: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5F, action, rtype, 0, 0, 0, 0, 0, 24, 0];
    let mut list = key.to_be_bytes().to_vec();
    list.extend_from_slice(&sa_key.to_be_bytes());
    list.resize(24, 0);
    (cdb, list)
}

/// An engine of two threads serving one LU (LUN 0) whose READs wait in its backend until
/// that is opened.
fn gated_engine() -> (Arc<crate::scsi::testutil::ProbeBackend>, Engine) {
    let slow = Arc::new(crate::scsi::testutil::ProbeBackend::gated(1 << 20));
    let lu = LogicalUnit::new(params(0, BS as u32), Arc::clone(&slow) as Arc<dyn Backend>);
    let target = Arc::new(ScsiTarget::new(vec![Arc::new(lu)]));
    (slow, Engine::start(vec![target], 2, IoMode::Auto).unwrap())
}

/// Submits a READ of `client` and waits until it is held in `slow`'s backend: its id.
fn read_held_in(slow: &crate::scsi::testutil::ProbeBackend, client: &Client) -> TaskId {
    let held = client.submit(0, read16(0, 1), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.waiting.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the READ never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    held
}

/// A LUN reset (the core's [`TaskKind::LunReset`] for LOGICAL UNIT RESET or a target reset)
/// completes only once no session has a command in flight on the LU: another initiator's READ
/// held in the backend holds it up. Then the LU is reset (every nexus hears of it once) and
/// a command sent while the reset waited runs after it.
#[test]
fn a_lun_reset_waits_for_every_sessions_commands_in_flight() {
    use crate::iscsi::TaskKind;
    let (slow, engine) = gated_engine();
    let _unstick = OpenOnDrop(&slow);
    let (resetter, other) = (
        Client::of_initiator_port(&engine, 1),
        Client::of_initiator_port(&engine, 2),
    );
    // Each nexus has seen (and cleared) its first unit attention, if any, before the reset.
    resetter.exec(vec![0; 6], Vec::new());
    other.exec(vec![0; 6], Vec::new());
    let held = read_held_in(&slow, &other);
    let reset = resetter.next_id.fetch_add(1, Ordering::Relaxed);
    resetter.session.submit(ScsiTask {
        id: reset,
        target: 0,
        lun: 0,
        cdb: Default::default(),
        data_out: mem_ffi::Buf::empty(),
        expected_transfer_length: 0,
        attribute: TaskAttr::Simple,
        kind: TaskKind::LunReset,
    });
    // Parked behind the reset: it runs after it, and hears of it.
    let later = resetter.submit(0, vec![0; 6], Vec::new());
    assert!(
        resetter
            .done
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "the reset completed while another session's READ was in flight"
    );
    slow.open();
    let (id, o) = other.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (id, o.status),
        (held, status::GOOD),
        "the READ itself completes"
    );
    let (id, o) = resetter.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((id, o.status), (reset, status::GOOD), "{o:?}");
    let (id, o) = resetter.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(id, later);
    assert_eq!(
        o.asc_ascq(),
        sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
        "{o:?}"
    );
    let o = other.exec(vec![0; 6], Vec::new());
    assert_eq!(
        o.asc_ascq(),
        sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
        "{o:?}"
    );
    assert_eq!(other.exec(vec![0; 6], Vec::new()).status, status::GOOD);
}

/// PREEMPT AND ABORT completes only once the preempted initiator's command in flight has:
/// after it, nothing that initiator sent before can still reach the medium (a fenced node's
/// writes stop there).
#[test]
fn preempt_and_abort_waits_for_the_preempted_commands_in_flight() {
    let (slow, engine) = gated_engine();
    // Dropped before the engine, whose shutdown waits for the held READ.
    let _unstick = OpenOnDrop(&slow);
    let (fencer, fenced) = (
        Client::of_initiator_port(&engine, 1),
        Client::of_initiator_port(&engine, 2),
    );
    for (client, key) in [(&fencer, 0xA), (&fenced, 0xB)] {
        let (cdb, list) = prout(0x00, 0, 0, key);
        assert_eq!(client.exec(cdb, list).status, status::GOOD, "REGISTER");
    }
    let (cdb, list) = prout(0x01, 0x01, 0xA, 0);
    assert_eq!(fencer.exec(cdb, list).status, status::GOOD, "RESERVE");
    // The fenced initiator's READ waits in the backend.
    let held = read_held_in(&slow, &fenced);
    let (cdb, list) = prout(0x05, 0x01, 0xA, 0xB);
    let preempt = fencer.submit(0, cdb, list);
    assert!(
        fencer
            .done
            .recv_timeout(Duration::from_millis(300))
            .is_err(),
        "PREEMPT AND ABORT completed while the preempted READ was in flight"
    );
    slow.open();
    let (id, o) = fenced.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((id, o.status), (held, status::GOOD));
    let (id, o) = fencer.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((id, o.status), (preempt, status::GOOD), "{o:?}");
    // Its next command hears REGISTRATIONS PREEMPTED; the one after meets the reservation.
    let o = fenced.exec(write16(0, 1, false), vec![1; BS]);
    assert_eq!(o.asc_ascq(), sense::REGISTRATIONS_PREEMPTED, "{o:?}");
    let o = fenced.exec(write16(0, 1, false), vec![1; BS]);
    assert_eq!(o.status, status::RESERVATION_CONFLICT);
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

/// Answers to `heartbeat` once those that can answer have (a stuck thread never will).
fn silent_after_a_while(heartbeat: &Heartbeat, expected: &[usize]) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let silent = heartbeat.silent();
        if silent == expected || Instant::now() > deadline {
            return silent;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A thread held in a backend call does not answer a heartbeat (the watchdog's question);
/// the other thread does, and so does the held one once the call returns.
#[test]
fn a_heartbeat_goes_unanswered_by_a_thread_stuck_in_its_backend() {
    let (slow, engine) = gated_engine();
    let _unstick = OpenOnDrop(&slow);
    assert_eq!(
        silent_after_a_while(&engine.heartbeat(), &[]),
        Vec::<usize>::new()
    );
    let client = Client::new(&engine);
    let held = read_held_in(&slow, &client);
    let stuck = client.session.context.thread;
    let during = engine.heartbeat();
    assert_eq!(silent_after_a_while(&during, &[stuck]), [stuck]);
    // A little longer: still no answer while the READ is held.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(during.silent(), [stuck]);
    slow.open();
    let (id, o) = client.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((id, o.status), (held, status::GOOD));
    assert_eq!(silent_after_a_while(&during, &[]), Vec::<usize>::new());
}
