//! Execution: the plan / run / finish split, file-backed LUNs, the backends' payload copies,
//! random CDBs and backend timeouts.

use super::*;
use std::time::Duration;

#[test]
fn plan_is_pure_and_run_finish_complete_it() {
    let lu = ram_lu(100, 512);
    let cdb = read16(3, 2);
    let r = req(0, &cdb, &[]);
    let Plan::Io {
        request,
        data_out_length,
    } = lu.plan(&r)
    else {
        panic!("READ must need I/O");
    };
    assert_eq!(
        request,
        BlockRequest::Read {
            offset: 1536,
            len: 1024
        }
    );
    assert!(!request.needs_exclusive());
    assert!(!runs_exclusively(r.cdb));
    assert_eq!(
        request.primitive(r.data_out),
        Some(Primitive::Read {
            offset: 1536,
            len: 1024
        })
    );
    let reply = run(&**lu.backend(), &request);
    let o = finish(&request, reply, data_out_length);
    assert_eq!(o.data_in, vec![0; 1024]);
    // Backend failures become sense data.
    let o = finish(
        &request,
        Err(BackendError::new(std::io::ErrorKind::Other, "boom")),
        0,
    );
    assert_check(&o, MEDIUM_ERROR, UNRECOVERED_READ_ERROR);
    let w = BlockRequest::Flush;
    let o = finish(
        &w,
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into()),
        0,
    );
    assert_check(&o, DATA_PROTECT, SPACE_ALLOCATION_FAILED);
    let o = finish(
        &w,
        Err(std::io::Error::from_raw_os_error(libc::EIO).into()),
        0,
    );
    assert_check(&o, MEDIUM_ERROR, WRITE_ERROR);
    assert!(matches!(lu.plan(&req(0, &[0x00; 6], &[])), Plan::Done(_)));
}

#[test]
fn file_backed_lun() {
    let dir = std::env::temp_dir().join(format!("iser-scsi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lun.img");
    let _ = std::fs::remove_file(&path);
    let be = Arc::new(FileBackend::open(&path, Some(4 << 20), true, false).unwrap());
    let lu = LogicalUnit::new(params(0, 4096), be);
    assert_eq!(lu.num_blocks(), 1024);
    let data: Vec<u8> = (0..8 * 4096).map(|i| (i % 253) as u8).collect();
    write_blocks(&lu, 100, &data);
    assert_good(&exec(&lu, &write16(200, 1, true), &data[..4096]));
    assert_eq!(read_blocks(&lu, 100, 8), data);
    let list = unmap_list(&[(101, 2)]);
    assert_good(&exec(&lu, &unmap_cdb(list.len()), &list));
    let d = read_blocks(&lu, 100, 4);
    assert_eq!(d[..4096], data[..4096]);
    assert!(d[4096..3 * 4096].iter().all(|&b| b == 0));
    assert_eq!(d[3 * 4096..], data[3 * 4096..4 * 4096]);
    assert_good(&exec(
        &lu,
        &[0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
    ));
    std::fs::remove_file(&path).unwrap();
}

/// Payload copies the SCSI layer and backends make per READ and WRITE (the transports' own are
/// pinned beside them): a file or block LU reads into the command's pool buffer and writes from
/// it through the kernel, no copy in user space; a RAM LU copies once each way between its
/// chunks and the buffer (registering the RAM LU's memory for RDMA is what would remove the
/// READ copy).
#[test]
fn backend_payload_copies_per_read_and_write() {
    use crate::stats::{reset_thread_payload_copies, thread_payload_copies, CopyCounts};
    let dir = std::env::temp_dir().join(format!("iser-scsi-copies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lun.img");
    let _ = std::fs::remove_file(&path);
    let file = LogicalUnit::new(
        params(0, 4096),
        Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap()),
    );
    let ram = ram_lu(256, 4096);
    let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 251) as u8).collect();
    // File: the backend writes from and reads into the command's buffer. RAM: a WRITE copies
    // into the chunk once; a READ lends the chunk itself (a transport sends from it).
    for (lu, write_copies, read_copies) in [(&file, 0, 0), (&ram, 1, 0)] {
        let counts = |copies: u64| CopyCounts {
            copies,
            bytes: copies * data.len() as u64,
        };
        reset_thread_payload_copies();
        assert_good(&exec(lu, &write16(4, 2, false), &data));
        let write = thread_payload_copies();
        reset_thread_payload_copies();
        let read = exec(lu, &read16(4, 2), &[]);
        let read_counts = thread_payload_copies();
        assert_good(&read);
        assert_eq!(read.data_in.lent().is_some(), lu.backend().kind() == "ram");
        assert_eq!(read.data_in.to_vec(), data);
        assert_eq!(
            (write, read_counts),
            (counts(write_copies), counts(read_copies)),
            "{}",
            lu.backend().kind()
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn random_cdbs_never_panic() {
    let lu = ram_lu(64, 512);
    let t = ScsiTarget::new(vec![lu.clone()]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let data = vec![0u8; 70 * 1024];
    for opcode in 0..=255u8 {
        for _ in 0..200 {
            let len = (rng.next() % 33) as usize;
            let mut cdb: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(b) = cdb.first_mut() {
                *b = opcode;
            }
            // Bias towards small LBAs/lengths so the I/O paths are reached too.
            if rng.next() % 2 == 0 {
                for b in cdb.iter_mut().skip(2).take(8) {
                    *b &= 0x01;
                }
            }
            let dl = (rng.next() % data.len() as u64) as usize;
            let lun = rng.next() % 3;
            assert_well_formed(&t.execute(&req(lun, &cdb, &data[..dl])));
        }
    }
}

#[test]
fn a_timed_out_backend_operation_is_answered_busy_other_errors_check_condition() {
    let lu = ram_lu(64, 512);
    let cdb = read16(0, 8);
    let Plan::Io { request, .. } = lu.plan(&req(0, &cdb, &[])) else {
        panic!("READ(16) plans I/O");
    };
    let timed_out = BackendError::new(std::io::ErrorKind::TimedOut, "rbd_aio_read: timed out");
    let o = finish(&request, Err(timed_out), 0);
    assert_eq!(o.status, status::BUSY);
    assert!(o.sense.is_empty());
    let failed = BackendError::new(std::io::ErrorKind::Other, "rbd_aio_read: I/O error");
    assert_check(
        &finish(&request, Err(failed), 0),
        MEDIUM_ERROR,
        UNRECOVERED_READ_ERROR,
    );
}

#[test]
fn every_command_is_counted_with_the_reads_and_writes_and_their_bytes() {
    let lu = ram_lu(64, 512);
    assert_good(&exec(&lu, &write16(0, 2, false), &[7; 1024]));
    assert_good(&exec(&lu, &read16(0, 3), &[]));
    assert_good(&exec(&lu, &[0; 6], &[])); // TEST UNIT READY
                                           // Past the end: counted as a command, not as a read.
    assert_check(&exec(&lu, &read16(64, 1), &[]), 0x05, (0x21, 0x00));
    let totals = lu.io_totals();
    assert_eq!(
        totals,
        IoTotals {
            commands: 4,
            reads: 1,
            read_bytes: 1536,
            writes: 1,
            write_bytes: 1024,
            read_nanos: 0,
            write_nanos: 0,
        }
    );
    // The engine measures times and adds them; they sum like the rest.
    lu.count_time(Transfer::Read, Duration::from_micros(30));
    lu.count_time(Transfer::Read, Duration::from_micros(50));
    lu.count_time(Transfer::Write, Duration::from_millis(2));
    let timed = lu.io_totals();
    assert_eq!((timed.read_nanos, timed.write_nanos), (80_000, 2_000_000));
    // Threads add to shards of their own; the reading sums them all.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    assert_good(&exec(&lu, &read16(1, 1), &[]));
                }
            });
        }
    });
    let after = lu.io_totals();
    assert_eq!((after.commands, after.reads), (404, 401));
    assert_eq!(after.read_bytes, 1536 + 400 * 512);
}
