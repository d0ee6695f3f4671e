//! Writes: immediate and unsolicited data, R2T sequences, data-phase errors, residuals
//! and the payload copies of the TCP transport.

use super::*;

/// Payload copies the target makes while `f` runs, the harness's own left out.
fn target_copies(pair: &mut Pair, f: impl FnOnce(&mut Pair)) -> CopyCounts {
    let harness = pair.harness_copies;
    let before = thread_payload_copies();
    f(pair);
    (thread_payload_copies() - before) - (pair.harness_copies - harness)
}

/// What the iSCSI/TCP transport (core, datamover, framing; the test backend copies nothing it
/// counts) copies per command: a READ nothing, its Data-In PDUs going out as slices of the read
/// buffer; a WRITE each byte once, from the received bytes into the task's buffer, whether it
/// came as immediate data or in Data-Out PDUs.
#[test]
fn tcp_transport_copies_reads_never_and_writes_once() {
    let mut pair = logged_in(&[
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "8192"),
        ("MaxRecvDataSegmentLength", "4096"),
    ]);
    let data = pattern(16384, 3);
    let write = target_copies(&mut pair, |pair| {
        let cmd = pair.command(1, write10(0, 32), false, true, 16384);
        pair.send_command(cmd, data[..4096].to_vec());
        let first = r2t(&pair.take_one()).clone();
        assert_eq!((first.buffer_offset, first.desired_length), (4096, 8192));
        pair.data_out(1, first.ttt, 4096, data[4096..8192].to_vec(), false);
        pair.data_out(1, first.ttt, 8192, data[8192..12288].to_vec(), true);
        let second = r2t(&pair.take_one()).clone();
        assert_eq!((second.buffer_offset, second.desired_length), (12288, 4096));
        pair.data_out(1, second.ttt, 12288, data[12288..].to_vec(), true);
        assert_eq!(scsi_response(&pair.take_one()).status, 0);
    });
    assert_eq!(pair.executed[0].data_out, data);
    assert_eq!(
        write,
        CopyCounts {
            copies: 4,
            bytes: 16384
        }
    );
    let mut back = Vec::new();
    let read = target_copies(&mut pair, |pair| back = read_back(pair, 0, 32));
    assert_eq!(back, data);
    assert_eq!(read, CopyCounts::default());
}

/// A large WRITE read as a resident connection reads its socket (direct reads): once a PDU's
/// header is in, the rest of its data goes from the socket straight into the task's buffer,
/// immediate data and Data-Out alike, the data digest checked over it in place. Only data
/// that arrived in the same read as its header is copied: here the whole first PDU (its header
/// and immediate data fit the first read), then nothing, because while an R2T is outstanding
/// a read at a PDU boundary takes only a header's worth.
#[test]
fn tcp_transport_reads_large_write_data_in_place() {
    for digest in ["None", "CRC32C"] {
        let mut pair = logged_in(&[
            ("ImmediateData", "Yes"),
            ("FirstBurstLength", "65536"),
            ("MaxBurstLength", "65536"),
            ("HeaderDigest", digest),
            ("DataDigest", digest),
        ]);
        pair.read_directly(256 << 10);
        pair.backend.luns.insert(0, vec![0; 384 * BLOCK]);
        let data = pattern(192 << 10, 9);
        let write = target_copies(&mut pair, |pair| {
            let cmd = pair.command(1, write10(0, 384), false, true, 192 << 10);
            pair.send_command(cmd, data[..64 << 10].to_vec());
            for offset in [64 << 10, 128 << 10] {
                let r2t = r2t(&pair.take_one()).clone();
                assert_eq!(r2t.buffer_offset, offset);
                let end = offset as usize + (64 << 10);
                let chunk = data[offset as usize..end].to_vec();
                pair.data_out(1, r2t.ttt, offset, chunk, true);
            }
            assert_eq!(scsi_response(&pair.take_one()).status, 0);
        });
        assert_eq!(pair.executed[0].data_out, data, "digest {digest}");
        assert_eq!(
            write,
            CopyCounts {
                copies: 1,
                bytes: 64 << 10
            },
            "digest {digest}"
        );
        // The next large WRITE, right after a direct transfer: its header is read on its own
        // and every byte of its data lands in place.
        let write = target_copies(&mut pair, |pair| {
            let cmd = pair.command(2, write10(0, 128), false, true, 64 << 10);
            pair.send_command(cmd, data[..64 << 10].to_vec());
            assert_eq!(scsi_response(&pair.take_one()).status, 0);
        });
        assert_eq!(pair.executed[1].data_out, data[..64 << 10]);
        assert_eq!(write, CopyCounts::default(), "digest {digest}");
    }
}

/// Direct reads keep the protocol's answers to bad Data-Out: the same script gets the same
/// PDUs back whether the stream is read whole or directly. A Data-Out with a bad data digest is
/// dropped with a Reject (and its data asked again by the initiator), one for an unknown ITT
/// or beyond its R2T is read whole and answered as always.
#[test]
fn direct_reads_answer_bad_data_out_as_before() {
    fn script(pair: &mut Pair) -> Vec<Vec<Pdu>> {
        let mut answers = Vec::new();
        let data = pattern(64 << 10, 4);
        let data_out = |itt: u32, ttt: u32, data: &[u8]| {
            Pdu::with_data(
                Header::DataOut(DataOut {
                    final_flag: true,
                    lun: pdu::encode_lun(0),
                    itt,
                    ttt,
                    ..Default::default()
                }),
                data.to_vec(),
            )
        };
        let cmd = pair.command(1, write10(0, 128), false, true, 64 << 10);
        pair.send_command(cmd, vec![]);
        let first = r2t(&pair.take_one()).clone();
        let mut bytes = framing::encode(&data_out(1, first.ttt, &data), &pair.settings);
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        pair.send_bytes(&bytes);
        answers.push(pair.take());
        pair.data_out(1, first.ttt, 0, data.clone(), true);
        answers.push(pair.take());
        // Unknown ITT.
        pair.send_bytes(&framing::encode(&data_out(77, 5, &data), &pair.settings));
        answers.push(pair.take());
        // Beyond its R2T.
        let cmd = pair.command(2, write10(0, 64), false, true, 32 << 10);
        pair.send_command(cmd, vec![]);
        let second = r2t(&pair.take_one()).clone();
        pair.data_out(2, second.ttt, 0, data.clone(), true);
        answers.push(pair.take());
        answers
    }
    let keys = [
        ("ImmediateData", "No"),
        ("MaxBurstLength", "65536"),
        ("DataDigest", "CRC32C"),
    ];
    let mut whole = logged_in(&keys);
    let mut direct = logged_in(&keys);
    for pair in [&mut whole, &mut direct] {
        pair.backend.luns.insert(0, vec![0; 128 * BLOCK]);
    }
    direct.read_directly(256 << 10);
    let expected = script(&mut whole);
    assert!(
        matches!(&expected[0][..], [p] if matches!(p.header, Header::Reject(ref r) if r.reason == 0x02)),
        "{:?}",
        expected[0]
    );
    assert_eq!(script(&mut direct), expected);
    assert_eq!(direct.executed.len(), whole.executed.len());
}

/// Random WRITEs (immediate data, R2T'd Data-Out in PDUs of random sizes, several commands in
/// one stream read) get the same answers and write the same bytes whether the stream is read
/// whole or directly, whatever the reads' sizes and with or without digests.
#[test]
fn direct_reads_match_whole_reads_on_random_writes() {
    fn script(pair: &mut Pair, seed: u64) -> Vec<Vec<Pdu>> {
        let mut rng = Rng(seed);
        let mut answers = Vec::new();
        let mut lba = 0u32;
        for round in 0..12 {
            let batch = 1 + rng.below(3) as usize;
            if round % 2 == 0 {
                // Several whole-immediate WRITEs back to back in one stream read.
                let mut bytes = Vec::new();
                for _ in 0..batch {
                    let blocks = 1 + rng.below(128) as u16;
                    let data = pattern(blocks as usize * BLOCK, rng.next() as u8);
                    let itt = pair.itt();
                    let len = data.len() as u32;
                    let cmd = pair.command(itt, write10(lba % 512, blocks), false, true, len);
                    let pdu = Pdu::with_data(Header::ScsiCommand(cmd), data);
                    bytes.extend(framing::encode(&pdu, &pair.settings));
                    lba += blocks as u32;
                }
                pair.send_bytes(&bytes);
                answers.push(pair.take());
                continue;
            }
            // Immediate data, then R2Ts answered in Data-Out PDUs of random sizes.
            let blocks = 129 + rng.below(300) as u16;
            let len = blocks as usize * BLOCK;
            let data = pattern(len, rng.next() as u8);
            let immediate = (rng.below(65) as usize * BLOCK).min(len);
            let itt = pair.itt();
            let cmd = pair.command(itt, write10(lba % 512, blocks), false, true, len as u32);
            lba += blocks as u32;
            pair.send_command(cmd, data[..immediate].to_vec());
            loop {
                let got = pair.take();
                let Some(Header::ReadyToTransfer(r2t)) = got.last().map(|p| &p.header) else {
                    answers.push(got);
                    break;
                };
                let (ttt, mut at) = (r2t.ttt, r2t.buffer_offset as usize);
                let end = at + r2t.desired_length as usize;
                answers.push(got);
                while at < end {
                    let piece = ((1 + rng.below(128)) as usize * BLOCK).min(end - at);
                    let chunk = data[at..at + piece].to_vec();
                    pair.data_out(itt, ttt, at as u32, chunk, at + piece == end);
                    at += piece;
                }
            }
        }
        answers
    }
    for seed in 1..=6u64 {
        let digest = if seed % 2 == 0 { "CRC32C" } else { "None" };
        let keys = [
            ("ImmediateData", "Yes"),
            ("FirstBurstLength", "65536"),
            ("MaxBurstLength", "65536"),
            ("HeaderDigest", digest),
            ("DataDigest", digest),
        ];
        let mut whole = logged_in(&keys);
        let mut direct = logged_in(&keys);
        direct.read_directly([1000, 4096, 65536, 256 << 10][seed as usize % 4]);
        for pair in [&mut whole, &mut direct] {
            pair.backend.luns.insert(0, vec![0; 1024 * BLOCK]);
        }
        let before = thread_payload_copies();
        let expected = script(&mut whole, seed * 7919);
        let between = thread_payload_copies();
        assert_eq!(script(&mut direct, seed * 7919), expected, "seed {seed}");
        // The same script, the harness's copies alike: direct reads copied less.
        let (read_whole, read_direct) = (between - before, thread_payload_copies() - between);
        assert!(read_direct.bytes < read_whole.bytes, "seed {seed}");
        let written =
            |p: &Pair| -> Vec<Vec<u8>> { p.executed.iter().map(|t| t.data_out.to_vec()).collect() };
        assert_eq!(written(&direct), written(&whole), "seed {seed}");
        assert!(whole.executed.len() >= 12, "seed {seed}");
    }
}

/// A READ from a RAM LUN reaches the iSCSI/TCP datamover as the LUN's memory lent. Without a
/// data digest its Data-In PDUs name the lent memory and the connection sends it from there
/// (`server::tcp::outbox`): no copy in user space. A data digest needs the bytes: the datamover
/// copies them into a buffer of its own, once, the one copy of such a READ.
#[test]
fn tcp_transport_copies_a_lent_ram_read_only_for_a_data_digest() {
    use crate::scsi::testutil::{assert_good, exec, ram_lu, read16, write16};
    let lu = ram_lu(64, BLOCK as u32);
    let data = pattern(8192, 5);
    assert_good(&exec(&lu, &write16(0, 16, false), &data));
    for (digest, copies) in [("None", 0), ("CRC32C", 1)] {
        let mut pair = logged_in(&[("DataDigest", digest)]);
        pair.auto_complete = false;
        let mut back = Vec::new();
        let read = target_copies(&mut pair, |pair| {
            let cmd = pair.command(1, read10(0, 16), true, false, 8192);
            pair.send_command(cmd, vec![]);
            let task = pair.deferred.pop().expect("the READ was executed");
            let outcome = exec(&lu, &read16(0, 16), &[]);
            assert!(outcome.data_in.lent().is_some(), "lent by the RAM LUN");
            pair.complete_deferred(task.id, outcome);
            for p in pair.take() {
                back.extend_from_slice(&p.data);
            }
        });
        assert_eq!(back, data, "DataDigest={digest}");
        assert_eq!(
            read,
            CopyCounts {
                copies,
                bytes: copies * 8192
            },
            "DataDigest={digest}"
        );
        assert_eq!(
            pair.data_in_lent,
            1 - copies as usize,
            "DataDigest={digest}"
        );
    }
}

/// A READ left in a file in memory (the engine does so for TCP connections) goes out as
/// Data-In PDUs that each name a slice of the file: the core copies nothing, and the PDUs carry
/// the file's bytes. (The connection's outbox sends large slices from the file's pages and
/// reads the span once for small ones like these: `server::tcp::outbox`'s tests.)
#[test]
fn tcp_transport_sends_a_file_read_from_its_pages() {
    use mem_ffi::{FileSpan, Payload};
    let data = pattern(32768, 9);
    let span = FileSpan::new(crate::backend::unlinked_file(&data, 4096), 4096, data.len());
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let mut back = Vec::new();
    let read = target_copies(&mut pair, |pair| {
        let cmd = pair.command(1, read10(0, 64), true, false, 32768);
        pair.send_command(cmd, vec![]);
        let task = pair.deferred.pop().expect("the READ was executed");
        pair.complete_deferred(task.id, ScsiOutcome::with_buf(Payload::File(span)));
        for p in pair.take() {
            back.extend_from_slice(&p.data);
        }
    });
    assert_eq!(back, data);
    // 32 KiB in the initiator's 8 KiB data segments, none of them through a buffer.
    assert_eq!(pair.data_in_files, 4);
    assert_eq!(pair.data_in_buffers, (0, 0));
    assert_eq!(read, CopyCounts::default());
}

/// A READ that one Data-In PDU answers hands its buffer to the transport by value (no
/// allocation); only a READ split into several PDUs shares it, through one `Arc`.
#[test]
fn one_data_in_pdu_owns_its_read_buffer() {
    let mut pair = logged_in(&[]);
    // The initiator's MaxRecvDataSegmentLength is the default 8192 bytes.
    assert_eq!(read_back(&mut pair, 0, 16).len(), 8192);
    assert_eq!(pair.data_in_buffers, (1, 0));
    assert_eq!(read_back(&mut pair, 0, 64).len(), 32768);
    assert_eq!(pair.data_in_buffers, (1, 4));
}

#[test]
fn write_with_immediate_data_only() {
    let mut pair = logged_in(&[]);
    let data = pattern(1024, 1);
    let cmd = pair.command(1, write10(3, 2), false, true, 1024);
    pair.send_command(cmd, data.clone());
    let r = pair.take_one();
    let h = scsi_response(&r);
    assert_eq!((h.itt, h.status, h.response), (1, 0, 0));
    assert!(!h.overflow && !h.underflow);
    assert_eq!(h.residual_count, 0);
    assert_eq!(h.stat_sn, FIRST_STAT_SN + 2);
    assert_eq!(pair.executed[0].data_out, data);
    assert_eq!(pair.executed[0].expected_transfer_length, 1024);
    assert_eq!(read_back(&mut pair, 3, 2), data);
}

#[test]
fn unsolicited_data_out_up_to_first_burst_then_r2ts() {
    let mut pair = logged_in(&[
        ("InitialR2T", "No"),
        ("FirstBurstLength", "4096"),
        ("MaxBurstLength", "8192"),
    ]);
    let data = pattern(20480, 7);
    let mut cmd = pair.command(1, write10(0, 40), false, true, 20480);
    cmd.final_flag = false;
    pair.send_command(cmd, data[..1024].to_vec());
    assert!(pair.take().is_empty(), "waiting for unsolicited data");
    pair.data_out(1, RESERVED_TAG, 1024, data[1024..2048].to_vec(), false);
    pair.data_out(1, RESERVED_TAG, 2048, data[2048..4096].to_vec(), true);
    let r = pair.take_one();
    let h = r2t(&r).clone();
    assert_eq!(
        (h.itt, h.r2t_sn, h.buffer_offset, h.desired_length),
        (1, 0, 4096, 8192)
    );
    assert_ne!(h.ttt, RESERVED_TAG);
    // R2T carries the current StatSN without taking it.
    assert_eq!(h.stat_sn, FIRST_STAT_SN + 2);
    pair.data_out(1, h.ttt, 4096, data[4096..12288].to_vec(), true);
    let h2 = r2t(&pair.take_one()).clone();
    assert_eq!(
        (h2.r2t_sn, h2.buffer_offset, h2.desired_length),
        (1, 12288, 8192)
    );
    assert_ne!(h2.ttt, h.ttt);
    pair.data_out(1, h2.ttt, 12288, data[12288..].to_vec(), true);
    let r = pair.take_one();
    assert_eq!(scsi_response(&r).status, 0);
    assert_eq!(sequence(&r).0, FIRST_STAT_SN + 2);
    assert_eq!(pair.executed[0].data_out, data);
    assert_eq!(read_back(&mut pair, 0, 40), data);
}

#[test]
fn unsolicited_data_beyond_first_burst_is_rejected() {
    let mut pair = logged_in(&[("InitialR2T", "No"), ("FirstBurstLength", "4096")]);
    let mut cmd = pair.command(1, write10(0, 16), false, true, 8192);
    cmd.final_flag = false;
    pair.send_command(cmd, vec![]);
    pair.data_out(1, RESERVED_TAG, 0, vec![1; 8192], true);
    assert_data_phase_error(&pair.take(), 1, "beyond FirstBurstLength");
    assert!(pair.executed.is_empty());
}

#[test]
fn r2t_sequences_split_by_max_burst_with_several_outstanding() {
    let mut cfg = config();
    cfg.policy.max_outstanding_r2t = 4;
    let mut pair = logged_in_with(
        cfg,
        &[
            ("ImmediateData", "No"),
            ("MaxBurstLength", "4096"),
            ("FirstBurstLength", "4096"),
            ("MaxOutstandingR2T", "2"),
        ],
    );
    assert_eq!(pair.conn.core().params().max_outstanding_r2t, 2);
    let data = pattern(16384 + 1024, 3);
    let cmd = pair.command(1, write10(0, 34), false, true, data.len() as u32);
    pair.send_command(cmd, vec![]);
    let r2ts: Vec<_> = pair.take().iter().map(|p| r2t(p).clone()).collect();
    assert_eq!(r2ts.len(), 2);
    assert_eq!(
        (
            r2ts[0].r2t_sn,
            r2ts[0].buffer_offset,
            r2ts[0].desired_length
        ),
        (0, 0, 4096)
    );
    assert_eq!(
        (
            r2ts[1].r2t_sn,
            r2ts[1].buffer_offset,
            r2ts[1].desired_length
        ),
        (1, 4096, 4096)
    );
    assert_ne!(r2ts[0].ttt, r2ts[1].ttt);
    // Answer the first R2T in two PDUs; only the F bit ends the sequence and frees a slot.
    pair.data_out(1, r2ts[0].ttt, 0, data[..2048].to_vec(), false);
    assert!(pair.take().is_empty());
    pair.data_out(1, r2ts[0].ttt, 2048, data[2048..4096].to_vec(), true);
    let third = r2t(&pair.take_one()).clone();
    assert_eq!(
        (third.r2t_sn, third.buffer_offset, third.desired_length),
        (2, 8192, 4096)
    );
    pair.data_out(1, r2ts[1].ttt, 4096, data[4096..8192].to_vec(), true);
    let fourth = r2t(&pair.take_one()).clone();
    assert_eq!(
        (fourth.r2t_sn, fourth.buffer_offset, fourth.desired_length),
        (3, 12288, 4096)
    );
    pair.data_out(1, third.ttt, 8192, data[8192..12288].to_vec(), true);
    let fifth = r2t(&pair.take_one()).clone();
    assert_eq!(
        (fifth.r2t_sn, fifth.buffer_offset, fifth.desired_length),
        (4, 16384, 1024)
    );
    pair.data_out(1, fourth.ttt, 12288, data[12288..16384].to_vec(), true);
    assert!(pair.take().is_empty());
    pair.data_out(1, fifth.ttt, 16384, data[16384..].to_vec(), true);
    assert_eq!(scsi_response(&pair.take_one()).status, 0);
    assert_eq!(pair.executed[0].data_out, data);
}

#[test]
fn bad_data_out_ends_the_task_and_later_data_is_dropped() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    // Each case gets a fresh WRITE: (what, the TTT to send given the R2T's, offset, length).
    type TttChoice = fn(u32) -> u32;
    let cases: [(&str, TttChoice, u32, usize); 4] = [
        ("wrong TTT", |ttt| ttt ^ 0x55, 0, 512),
        ("offset beyond the R2T", |ttt| ttt, 2048, 512),
        ("more than the R2T asked", |ttt| ttt, 0, 4096),
        ("unsolicited with InitialR2T=Yes", |_| RESERVED_TAG, 0, 512),
    ];
    for (index, (what, choose_ttt, offset, len)) in cases.into_iter().enumerate() {
        let itt = 10 + index as u32;
        let cmd = pair.command(itt, write10(0, 4), false, true, 2048);
        pair.send_command(cmd, vec![]);
        let ttt = choose_ttt(r2t(&pair.take_one()).ttt);
        pair.data_out(itt, ttt, offset, vec![0; len], false);
        assert_data_phase_error(&pair.take(), itt, what);
        // The initiator may still be sending for the dead task: dropped quietly.
        pair.data_out(itt, ttt, 0, vec![0; 512], true);
        assert!(pair.take().is_empty(), "{what}: late data is dropped");
    }
    // A DataSN out of sequence (RFC 7143 §11.7.5; libiscsi iSCSIDataSnInvalid).
    let cmd = pair.command(20, write10(0, 4), false, true, 2048);
    pair.send_command(cmd, vec![]);
    let ttt = r2t(&pair.take_one()).ttt;
    pair.send(Pdu::with_data(
        Header::DataOut(DataOut {
            final_flag: false,
            lun: pdu::encode_lun(0),
            itt: 20,
            ttt,
            exp_stat_sn: pair.exp_stat_sn,
            data_sn: 1,
            buffer_offset: 0,
        }),
        vec![0; 512],
    ));
    assert_data_phase_error(&pair.take(), 20, "DataSN 1 first");
    pair.data_out(99, ttt, 0, vec![0; 512], true);
    assert!(pair.take().is_empty(), "data for an unknown ITT is dropped");
    assert!(pair.executed.is_empty(), "no bad write reached the backend");
    // The session goes on: a good write completes.
    let cmd = pair.command(30, write10(0, 4), false, true, 2048);
    pair.send_command(cmd, vec![]);
    let ttt = r2t(&pair.take_one()).ttt;
    pair.data_out(30, ttt, 0, vec![9; 2048], true);
    assert_eq!(scsi_response(&pair.take_one()).status, 0);
    assert_eq!(pair.executed[0].data_out, vec![9; 2048]);
}

#[test]
fn transfer_beyond_max_transfer_length_fails_with_sense() {
    let mut pair = logged_in(&[]);
    let cmd = pair.command(1, write10(0, 4096), false, true, (1 << 20) + 512);
    pair.send_command(cmd, vec![]);
    let r = pair.take_one();
    let h = scsi_response(&r);
    assert_eq!(h.status, 2);
    assert_eq!(
        sequence(&r),
        (FIRST_STAT_SN + 2, FIRST_CMD_SN + 1, FIRST_CMD_SN + 16)
    );
    assert_eq!(&r.data[..2], &[0, 18]);
    assert_eq!(
        (r.data[2 + 2], r.data[2 + 12], r.data[2 + 13]),
        (0x05, 0x24, 0x00)
    );
    assert!(pair.executed.is_empty());
    // Its Data-Out, if any arrives, is dropped.
    pair.data_out(1, RESERVED_TAG, 0, vec![0; 512], true);
    assert!(pair.take().is_empty());
}

#[test]
fn write_residuals_follow_data_out_length() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    // EDTL 1024 each time: (the CDB's Data-Out, underflow, overflow, residual).
    for (itt, (wanted, underflow, overflow, residual)) in
        [(512, true, false, 512), (4096, false, true, 3072)]
            .into_iter()
            .enumerate()
    {
        let cmd = pair.command(itt as u32 + 1, vec![0x8a; 16], false, true, 1024);
        pair.send_command(cmd, vec![1; 1024]);
        let id = pair.deferred[0].id;
        pair.complete_deferred(
            id,
            ScsiOutcome {
                data_out_length: wanted,
                ..ScsiOutcome::good()
            },
        );
        let h = scsi_response(&pair.take_one()).clone();
        assert_eq!(
            (h.underflow, h.overflow),
            (underflow, overflow),
            "wanted {wanted}"
        );
        assert_eq!(h.residual_count, residual, "wanted {wanted}");
    }
}
