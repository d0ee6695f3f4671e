//! I/O commands over an I/O queue: data by in-capsule, R2T/H2CData and C2HData, and the
//! statuses of failures.

use super::*;
use crate::backend::BackendError;
use crate::Buf;

/// Writes `data` at `lba` of namespace 1 through R2T/H2CData, the host sending each R2T's data
/// in `pieces` H2CData PDUs. Returns the final completion.
fn write_by_r2t(io: &mut Pair, cid: u16, lba: u64, data: &[u8], pieces: usize) -> Cqe {
    let blocks = (data.len() / 512) as u32;
    let sqe = Sqe::new(0x01, cid, 1)
        .slba(lba)
        .cdw(12, blocks - 1)
        .sgl(data.len() as u32, false);
    let mut got = io.command(&sqe, &[]);
    loop {
        match got.as_slice() {
            [Got::R2T {
                cid: c,
                ttag,
                offset,
                length,
            }] => {
                assert_eq!(*c, cid);
                assert!(*length <= MAX_H2C);
                let window = &data[*offset as usize..(*offset + *length) as usize];
                let step = window.len().div_ceil(pieces);
                let chunks: Vec<&[u8]> = window.chunks(step).collect();
                let mut at = *offset;
                for (i, chunk) in chunks.iter().enumerate() {
                    let last = i + 1 == chunks.len();
                    let bytes = io.host.h2c_data(cid, *ttag, at, chunk, last);
                    io.send(&bytes);
                    at += chunk.len() as u32;
                }
                got = io.take();
            }
            [Got::Resp(cqe)] => return *cqe,
            other => panic!("{other:?}"),
        }
    }
}

fn read(io: &mut Pair, cid: u16, nsid: u32, lba: u64, len: usize) -> (Vec<u8>, Cqe) {
    let block = if nsid == 2 { 4096 } else { 512 };
    let sqe = Sqe::new(0x02, cid, nsid)
        .slba(lba)
        .cdw(12, (len / block) as u32 - 1)
        .sgl(len as u32, false);
    io.data_in(&sqe)
}

#[test]
fn write_in_capsule_and_read_back() {
    let (_admin, mut io) = admin_and_io();
    let data = vec![0xC3u8; 4096];
    let sqe = Sqe::new(0x01, 5, 1)
        .slba(10)
        .cdw(12, 7 | 1 << 30)
        .sgl(4096, true);
    let cqe = io.resp(&sqe, &data);
    assert_eq!((cqe.status, cqe.cid, cqe.sqid), ((0, 0), 5, 1));
    let (back, cqe) = read(&mut io, 6, 1, 10, 4096);
    assert_eq!(back, data);
    assert_eq!(cqe.status, (0, 0));
    let mut medium = vec![0u8; 4096];
    io.backend(1).read_at(&mut medium, 10 * 512).unwrap();
    assert_eq!(medium, data);
}

#[test]
fn large_write_by_r2t_in_several_h2c_data_pdus() {
    let (_admin, mut io) = admin_and_io();
    let data: Vec<u8> = (0..65536).map(|i| (i % 253) as u8).collect();
    let cqe = write_by_r2t(&mut io, 9, 100, &data, 3);
    assert_eq!(cqe.status, (0, 0));
    let (back, _) = read(&mut io, 10, 1, 100, 65536);
    assert_eq!(back, data);
}

#[test]
fn write_with_digests_and_sq_flow_control_disabled() {
    let (admin, _) = admin_and_io();
    let cntlid = admin.queue.cntlid().unwrap();
    let mut io = admin.sibling();
    io.send(&ic_req(0, 0, true, true));
    io.take();
    io.host = HostFramer {
        header_digest: true,
        data_digest: true,
    };
    // CATTR bit 2: SQ flow control disabled; reads then end with C2HData SUCCESS alone.
    let cqe = io.resp(
        &connect_sqe(1, 2, 15, 0).byte(46, 4),
        &connect_data(cntlid, SUBSYSTEM, HOST),
    );
    assert_eq!(cqe.status, (0, 0));
    let data = vec![0x42u8; 32768];
    assert_eq!(write_by_r2t(&mut io, 2, 0, &data, 1).status, (0, 0));
    let sqe = Sqe::new(0x02, 3, 1).cdw(12, 63).sgl(32768, false);
    match io.command(&sqe, &[]).as_slice() {
        [Got::C2HData { flags, data: d, .. }] => {
            assert_eq!(flags & 0x0C, 0x0C, "LAST_PDU and SUCCESS");
            assert_eq!(d, &data);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn flush_write_zeroes_deallocate_compare() {
    let (_admin, mut io) = admin_and_io();
    let pattern = fill(&io.backend(1), 1 << 20);
    assert_eq!(io.resp(&Sqe::new(0x00, 1, 1), &[]).status, (0, 0));
    // Write Zeroes of blocks 8..16 with DEAC.
    let wz = Sqe::new(0x08, 2, 1).slba(8).cdw(12, 7 | 1 << 25);
    assert_eq!(io.resp(&wz, &[]).status, (0, 0));
    // Dataset Management, deallocate blocks 32..40 and 64..65.
    let mut ranges = vec![0u8; 32];
    ranges[4..8].copy_from_slice(&8u32.to_le_bytes());
    ranges[8..16].copy_from_slice(&32u64.to_le_bytes());
    ranges[20..24].copy_from_slice(&1u32.to_le_bytes());
    ranges[24..32].copy_from_slice(&64u64.to_le_bytes());
    let dsm = Sqe::new(0x09, 3, 1).cdw(10, 1).cdw(11, 4).sgl(32, true);
    assert_eq!(io.resp(&dsm, &ranges).status, (0, 0));
    let (back, _) = read(&mut io, 4, 1, 0, 65536);
    let mut expected = pattern[..65536].to_vec();
    expected[8 * 512..16 * 512].fill(0);
    expected[32 * 512..40 * 512].fill(0);
    expected[64 * 512..65 * 512].fill(0);
    assert_eq!(back, expected);
    // Compare: equal, then different.
    let cmp = Sqe::new(0x05, 5, 1).slba(1).cdw(12, 0).sgl(512, true);
    assert_eq!(io.resp(&cmp, &pattern[512..1024]).status, (0, 0));
    let cqe = io.resp(&cmp, &[0xEE; 512]);
    assert_eq!((cqe.status, cqe.dnr), ((2, 0x85), true));
}

/// Linux sends a Dataset Management range list of 4 KiB whatever NR says
/// (drivers/nvme/host/core.c nvme_setup_discard); only NR's ranges count.
#[test]
fn dataset_management_takes_linux_4k_range_buffer() {
    let (_admin, mut io) = admin_and_io();
    let pattern = fill(&io.backend(1), 1 << 20);
    let mut list = vec![0xFFu8; 4096]; // beyond NR: garbage that would be out of range
    list[..16].fill(0);
    list[4..8].copy_from_slice(&2u32.to_le_bytes());
    list[8..16].copy_from_slice(&10u64.to_le_bytes());
    let dsm = Sqe::new(0x09, 1, 1).cdw(10, 0).cdw(11, 4).sgl(4096, true);
    assert_eq!(io.resp(&dsm, &list).status, (0, 0));
    let (back, _) = read(&mut io, 2, 1, 0, 8192);
    let mut expected = pattern[..8192].to_vec();
    expected[10 * 512..12 * 512].fill(0);
    assert_eq!(back, expected);
    // Shorter than NR's ranges, or longer than 256 ranges: the SGL length is wrong.
    let short = Sqe::new(0x09, 3, 1).cdw(10, 1).cdw(11, 4).sgl(16, true);
    assert_eq!(io.resp(&short, &list[..16]).status, (0, 0x0F));
    let long = Sqe::new(0x09, 4, 1).cdw(10, 0).cdw(11, 4).sgl(4112, false);
    assert_eq!(io.resp(&long, &[]).status, (0, 0x0F));
}

#[test]
fn failures_map_to_nvme_status_codes() {
    let (mut admin, mut io) = admin_and_io();
    let read_sqe = |cid, nsid, lba: u64, nlb0: u32, len| {
        Sqe::new(0x02, cid, nsid)
            .slba(lba)
            .cdw(12, nlb0)
            .sgl(len, false)
    };
    // LBA out of range, also by overflow.
    let cqe = io.resp(&read_sqe(1, 1, NS1_BLOCKS - 1, 1, 1024), &[]);
    assert_eq!((cqe.status, cqe.dnr), ((0, 0x80), true));
    assert_eq!(
        io.resp(&read_sqe(2, 1, u64::MAX, 0, 512), &[]).status,
        (0, 0x80)
    );
    // A namespace that does not exist.
    assert_eq!(io.resp(&read_sqe(3, 9, 0, 0, 512), &[]).status, (0, 0x0B));
    // The SGL length disagrees with NLB.
    assert_eq!(io.resp(&read_sqe(4, 1, 0, 0, 1024), &[]).status, (0, 0x0F));
    // Beyond MDTS.
    let big = MAX_TRANSFER / 512;
    assert_eq!(
        io.resp(&read_sqe(5, 1, 0, big, (big + 1) * 512), &[])
            .status,
        (0, 0x02)
    );
    // Writes to the read-only namespace.
    let w = Sqe::new(0x01, 6, 2).cdw(12, 0).sgl(4096, true);
    assert_eq!(io.resp(&w, &[0; 4096]).status, (0, 0x20));
    let wz = Sqe::new(0x08, 7, 2).cdw(12, 0);
    assert_eq!(io.resp(&wz, &[]).status, (0, 0x20));
    // Reading it is fine.
    assert_eq!(read(&mut io, 8, 2, 0, 4096).1.status, (0, 0));
    // Unknown I/O opcode.
    assert_eq!(io.resp(&Sqe::new(0x7E, 9, 1), &[]).status, (0, 0x01));
    // In-capsule data with a descriptor pointing past it.
    let bad = Sqe::new(0x01, 10, 1).cdw(12, 0).sgl(512, true).byte(24, 16);
    assert_eq!(io.resp(&bad, &[0; 512]).status, (0, 0x16));
    // A keyed SGL (RDMA) on TCP.
    let keyed = Sqe::new(0x02, 11, 1)
        .cdw(12, 0)
        .sgl(512, false)
        .byte(39, 0x40);
    assert_eq!(io.resp(&keyed, &[]).status, (0, 0x11));
    // The errors went to the controller's error log.
    let (log, _) = admin.data_in(&Sqe::new(0x02, 90, 0).cdw(10, 1 | 15 << 16).sgl(64, false));
    assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 10);
    assert_eq!((le16(&log, 8), le16(&log, 10)), (1, 11));
}

#[test]
fn backend_errors_are_media_errors() {
    let (mut admin, mut io) = admin_and_io();
    io.defer_io = true;
    let cqe_for = |io: &mut Pair, sqe: &Sqe, data: &[u8], err: BackendError| {
        assert!(io.command(sqe, data).is_empty());
        let cmd = io.deferred.pop().unwrap();
        io.queue.handle_io_complete(cmd.id, Err(err));
        io.pump();
        match io.take().as_slice() {
            [Got::Resp(cqe)] => *cqe,
            other => panic!("{other:?}"),
        }
    };
    let eio = || BackendError::from(std::io::Error::from_raw_os_error(libc::EIO));
    let read = Sqe::new(0x02, 1, 1).cdw(12, 0).sgl(512, false);
    assert_eq!(cqe_for(&mut io, &read, &[], eio()).status, (2, 0x81));
    let write = Sqe::new(0x01, 2, 1).cdw(12, 0).sgl(512, true);
    assert_eq!(cqe_for(&mut io, &write, &[1; 512], eio()).status, (2, 0x80));
    let nospace = BackendError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert_eq!(
        cqe_for(&mut io, &write, &[1; 512], nospace).status,
        (0, 0x81)
    );
    let (smart, _) = admin.data_in(&Sqe::new(0x02, 91, 0).cdw(10, 2 | 127 << 16).sgl(512, false));
    assert_eq!(smart[160], 2, "media errors");
}

#[test]
fn sq_head_advances_and_wraps() {
    let (_admin, mut io) = admin_and_io();
    // The queue has 16 entries; Connect took the first.
    let heads: Vec<u16> = (0..17)
        .map(|i| io.resp(&Sqe::new(0x00, 100 + i, 1), &[]).sqhd)
        .collect();
    let expected: Vec<u16> = (2..19).map(|h| h % 16).collect();
    assert_eq!(heads, expected);
}

#[test]
fn commands_complete_out_of_order_and_cids_must_be_unique() {
    let (_admin, mut io) = admin_and_io();
    fill(&io.backend(1), 8192);
    io.defer_io = true;
    let r1 = Sqe::new(0x02, 1, 1).cdw(12, 0).sgl(512, false);
    let r2 = Sqe::new(0x02, 2, 1).slba(1).cdw(12, 0).sgl(512, false);
    assert!(io.command(&r1, &[]).is_empty());
    assert!(io.command(&r2, &[]).is_empty());
    assert_eq!(io.queue.running(), 2);
    // CID 1 is outstanding.
    assert_eq!(io.resp(&r1, &[]).status, (0, 0x03));
    let second = io.deferred.pop().unwrap();
    let result = io.run(&second);
    io.queue.handle_io_complete(second.id, result);
    io.pump();
    assert!(matches!(
        io.take().as_slice(),
        [Got::C2HData { cid: 2, .. }, Got::Resp(Cqe { cid: 2, .. })]
    ));
    let first = io.deferred.pop().unwrap();
    let result = io.run(&first);
    io.queue.handle_io_complete(first.id, result);
    io.pump();
    assert!(matches!(
        io.take().as_slice(),
        [Got::C2HData { cid: 1, .. }, Got::Resp(Cqe { cid: 1, .. })]
    ));
    // A completion for an unknown I/O changes nothing.
    io.queue.handle_io_complete(999, Ok(BlockReply::Done));
    io.pump();
    assert!(io.take().is_empty());
}

#[test]
fn data_digest_errors_fail_the_command_not_the_connection() {
    let (admin, _) = admin_and_io();
    let cntlid = admin.queue.cntlid().unwrap();
    let mut io = admin.sibling();
    io.send(&ic_req(0, 0, false, true));
    io.take();
    io.host.data_digest = true;
    let cqe = io.resp(
        &connect_sqe(1, 2, 15, 0),
        &connect_data(cntlid, SUBSYSTEM, HOST),
    );
    assert_eq!(cqe.status, (0, 0));
    // In-capsule data with a wrong digest.
    let mut bytes = io
        .host
        .capsule(&Sqe::new(0x01, 2, 1).cdw(12, 0).sgl(512, true), &[7; 512]);
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    io.send(&bytes);
    match io.take().as_slice() {
        [Got::Resp(cqe)] => assert_eq!((cqe.status, cqe.dnr), ((0, 0x22), false)),
        other => panic!("{other:?}"),
    }
    // H2CData with a wrong digest: the command fails once its data is all in.
    let got = io.command(&Sqe::new(0x01, 3, 1).cdw(12, 31).sgl(16384, false), &[]);
    let [Got::R2T { ttag, .. }] = got.as_slice() else {
        panic!("{got:?}")
    };
    let mut bytes = io.host.h2c_data(3, *ttag, 0, &[9; 16384], true);
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    io.send(&bytes);
    match io.take().as_slice() {
        [Got::Resp(cqe)] => assert_eq!(cqe.status, (0, 0x22)),
        other => panic!("{other:?}"),
    }
    let mut medium = vec![0u8; 512];
    io.backend(1).read_at(&mut medium, 0).unwrap();
    assert_eq!(medium, vec![0; 512], "nothing written");
    assert!(io.closed.is_none());
}

#[test]
fn payload_copies_per_command() {
    use crate::stats::{reset_thread_payload_copies, thread_payload_copies, CopyCounts};
    let (_admin, mut io) = admin_and_io();
    io.defer_io = true;
    // In-capsule write: the framer's one copy out of the stream; the data then moves.
    reset_thread_payload_copies();
    io.command(&Sqe::new(0x01, 1, 1).cdw(12, 7).sgl(4096, true), &[1; 4096]);
    let write = io.deferred.pop().unwrap();
    assert_eq!(write.data.len(), 4096);
    assert_eq!(
        thread_payload_copies(),
        CopyCounts {
            copies: 1,
            bytes: 4096
        }
    );
    io.queue.handle_io_complete(write.id, Ok(BlockReply::Done));
    io.pump();
    io.take();
    // A write in two R2Ts: the framer's copy of each H2CData, then each into the command's
    // buffer, sized for the whole transfer, which goes to the backend as it is. (A write whose
    // data comes in one H2CData keeps that PDU's buffer: one copy, as in-capsule.)
    reset_thread_payload_copies();
    let data = vec![2u8; 2 * MAX_H2C as usize];
    let sqe = Sqe::new(0x01, 2, 1)
        .cdw(12, 2 * MAX_H2C / 512 - 1)
        .sgl(data.len() as u32, false);
    io.command(&sqe, &[]);
    for (offset, chunk) in data.chunks(MAX_H2C as usize).enumerate() {
        let bytes = io.host.h2c_data(2, 2, offset as u32 * MAX_H2C, chunk, true);
        io.send(&bytes);
    }
    assert_eq!(io.deferred.pop().unwrap().data, data);
    assert_eq!(
        thread_payload_copies(),
        CopyCounts {
            copies: 4,
            bytes: 4 * u64::from(MAX_H2C)
        }
    );
    // A read: the backend's buffer goes out in the C2HData action as it is.
    io.take();
    io.command(&Sqe::new(0x02, 3, 1).cdw(12, 7).sgl(4096, false), &[]);
    let read = io.deferred.pop().unwrap();
    reset_thread_payload_copies();
    io.queue.handle_io_complete(
        read.id,
        Ok(BlockReply::Data(Buf::copy_from_slice(&[3; 4096]).into())),
    );
    io.pump();
    assert_eq!(thread_payload_copies(), CopyCounts::default());
}

/// Feeds `bytes` as the resident reads the socket (`Queue::read_buffers`, one vectored read at a
/// time), each read cut short at a pseudo-random length from `rng` (1 B to 40 KB), so reads end
/// anywhere: in a header, in a payload read in place, in the next header behind it.
fn feed_in_vectored_reads(io: &mut Pair, bytes: &[u8], rng: &mut u64) {
    let mut at = 0;
    while at < bytes.len() {
        *rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let limit = 1 + (*rng >> 33) as usize % 40_000;
        let (first, second) = io.queue.read_buffers(256 * 1024);
        let mut n = 0;
        for room in [first, second] {
            let k = room.len().min(bytes.len() - at - n).min(limit - n);
            room[..k].copy_from_slice(&bytes[at + n..at + n + k]);
            n += k;
        }
        io.queue.handle_read(n, io.now);
        io.pump();
        at += n;
    }
}

/// Writes whose H2CData PDUs (large enough to be read in place) come back to back, read in
/// vectored reads of random sizes: every command completes and writes its own bytes.
#[test]
fn vectored_reads_of_any_size_place_every_payload() {
    for seed in 1..=8u64 {
        let (_admin, mut io) = admin_and_io();
        let mut rng = seed;
        let writes: Vec<(u16, Vec<u8>)> = (0..4u16)
            .map(|i| {
                let data = (0..32768u64).map(|b| (b * seed + u64::from(i)) as u8);
                (10 + i, data.collect())
            })
            .collect();
        let mut stream = Vec::new();
        for (i, (cid, _)) in writes.iter().enumerate() {
            let sqe = Sqe::new(0x01, *cid, 1)
                .slba(i as u64 * 64)
                .cdw(12, 63)
                .sgl(32768, false);
            stream.extend(io.host.capsule(&sqe, &[]));
        }
        let mut done = 0;
        while !stream.is_empty() {
            feed_in_vectored_reads(&mut io, &stream, &mut rng);
            stream.clear();
            for got in io.take() {
                match got {
                    Got::R2T {
                        cid,
                        ttag,
                        offset,
                        length,
                    } => {
                        let data = &writes.iter().find(|w| w.0 == cid).expect("a write").1;
                        let window = &data[offset as usize..(offset + length) as usize];
                        stream.extend(io.host.h2c_data(cid, ttag, offset, window, true));
                    }
                    Got::Resp(cqe) => {
                        assert_eq!(cqe.status, (0, 0), "seed {seed}");
                        done += 1;
                    }
                    other => panic!("seed {seed}: {other:?}"),
                }
            }
        }
        assert_eq!(done, writes.len(), "seed {seed}");
        for (i, (_, data)) in writes.iter().enumerate() {
            let (read_back, cqe) = read(&mut io, 99, 1, i as u64 * 64, 32768);
            assert_eq!(cqe.status, (0, 0));
            assert!(read_back == *data, "seed {seed}, write {i}");
        }
        assert!(io.closed.is_none());
    }
}

/// A span of `data` in an unlinked temporary file.
fn file_span(data: &[u8]) -> mem_ffi::FileSpan {
    mem_ffi::FileSpan::new(crate::backend::unlinked_file(data, 0), 0, data.len())
}

/// Reads `len` bytes at LBA 0 of namespace 1 as command `cid` on a deferring queue, completes
/// the read with `payload` and returns what the queue sent.
fn read_answered_with(io: &mut Pair, cid: u16, len: usize, payload: mem_ffi::Payload) -> Vec<Got> {
    io.defer_io = true;
    let blocks = (len / 512) as u32;
    let sqe = Sqe::new(0x02, cid, 1)
        .cdw(12, blocks - 1)
        .sgl(len as u32, false);
    assert!(io.command(&sqe, &[]).is_empty());
    let read = io.deferred.pop().unwrap();
    io.queue
        .handle_io_complete(read.id, Ok(BlockReply::Data(payload)));
    io.pump();
    io.take()
}

/// The admin pair's controller's I/O queue 2, connected with a data digest.
fn data_digest_queue(admin: &Pair) -> Pair {
    let cntlid = admin.queue.cntlid().unwrap();
    let mut io = admin.sibling();
    io.send(&ic_req(0, 0, false, true));
    io.take();
    io.host = HostFramer {
        header_digest: false,
        data_digest: true,
    };
    let cqe = io.resp(
        &connect_sqe(1, 2, 15, 0),
        &connect_data(cntlid, SUBSYSTEM, HOST),
    );
    assert_eq!(cqe.status, (0, 0));
    io
}

/// `got` is one C2HData PDU of command `cid` carrying `data`, then a successful completion.
fn assert_data_then_success(got: &[Got], cid: u16, data: &[u8]) {
    match got {
        [Got::C2HData {
            cid: c, data: d, ..
        }, Got::Resp(cqe)] => {
            assert_eq!((*c, d.as_slice()), (cid, data));
            assert_eq!(cqe.status, (0, 0));
        }
        other => panic!("{other:?}"),
    }
}

/// A READ left in a file's pages goes out as one C2HData PDU naming the span (the resident
/// sends it with sendfile), copied nowhere in user space. A queue with data digests is never
/// given one (`sends_file_pages`); if it were, the command fails, not the stream.
#[test]
fn file_pages_go_out_as_c2hdata_only_without_a_data_digest() {
    use crate::stats::{reset_thread_payload_copies, thread_payload_copies, CopyCounts};
    let data: Vec<u8> = (0..32768u32).map(|i| (i % 249) as u8).collect();
    let span = || mem_ffi::Payload::File(file_span(&data));
    let (admin, mut io) = admin_and_io();
    assert!(io.queue.sends_file_pages());
    reset_thread_payload_copies();
    let got = read_answered_with(&mut io, 1, data.len(), span());
    assert_eq!(thread_payload_copies(), CopyCounts::default());
    assert_data_then_success(&got, 1, &data);

    let mut io = data_digest_queue(&admin);
    assert!(!io.queue.sends_file_pages());
    match read_answered_with(&mut io, 2, data.len(), span()).as_slice() {
        [Got::Resp(cqe)] => assert_eq!(cqe.status, (0, 0x06), "internal error"),
        other => panic!("{other:?}"),
    }
}

/// A READ of a RAM namespace comes as its memory lent. Without a data digest its C2HData PDU
/// names the lent memory (the resident sends it from there by address): no copy in user space.
/// With a data digest, which needs the bytes, the queue copies them into a buffer once.
#[test]
fn lent_memory_goes_out_as_c2hdata_copied_only_for_a_data_digest() {
    use crate::stats::{reset_thread_payload_copies, thread_payload_copies, CopyCounts};
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 247) as u8).collect();
    let mut region = mem_ffi::Region::zeroed(mem_ffi::pool::global(), 1 << 20);
    region.write(4096, &data);
    let lent = || {
        let ranges = [region.lend(4096..8192), region.lend(8192..12288)];
        mem_ffi::Payload::Lent(ranges.into_iter().collect())
    };
    let (admin, mut io) = admin_and_io();
    reset_thread_payload_copies();
    let got = read_answered_with(&mut io, 1, data.len(), lent());
    assert_eq!(thread_payload_copies(), CopyCounts::default());
    assert_data_then_success(&got, 1, &data);

    let mut io = data_digest_queue(&admin);
    reset_thread_payload_copies();
    let got = read_answered_with(&mut io, 2, data.len(), lent());
    assert_eq!(
        thread_payload_copies(),
        CopyCounts {
            copies: 2,
            bytes: 8192
        },
        "one copy of each lent range"
    );
    assert_data_then_success(&got, 2, &data);
}
