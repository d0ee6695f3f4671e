//! Data movement: READ data by RDMA Write, WRITE data by RDMA Read, into and out of the task's
//! own buffers, and the STags a SCSI Response invalidates.

use super::*;

#[test]
fn read_becomes_rdma_write_then_response() {
    let (mut conn, now) = logged_in(true);
    let iser = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_RSV,
        read_stag: 0xabc,
        read_va: 0x7000_0000,
        ..IserHeader::default()
    };
    let cmd = Pdu::new(Header::ScsiCommand(command(
        0x1000_0001,
        100,
        true,
        false,
        4096,
        0x28,
    )));
    conn.handle_receive(&send_bytes(iser, &cmd), now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    // The command produced 8 KiB but the initiator's buffer is 4 KiB: overflow.
    let outcome = ScsiOutcome {
        status: 0,
        sense: Default::default(),
        data_in: mem_ffi::Buf::copy_from_slice(&[0x5a; 8192]).into(),
        data_out_length: 0,
    };
    conn.handle_scsi_complete(task.id, outcome);
    let ops = drain(&mut conn);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(
        ops[0],
        FabricOp::RdmaWrite {
            stag: 0xabc,
            va: 0x7000_0000,
            data: mem_ffi::Buf::copy_from_slice(&[0x5a; 8192]).into(),
            range: 0..4096,
        }
    );
    let FabricOp::Send { bytes, invalidate } = &ops[1] else {
        panic!()
    };
    let Header::ScsiResponse(resp) = sent_pdu(bytes).header else {
        panic!()
    };
    assert_eq!(
        resp.itt, 0x1000_0001,
        "ITT echoed verbatim (Linux libiscsi.c iscsi_verify_itt checks its age bits)"
    );
    assert!(resp.overflow && !resp.underflow);
    assert_eq!(resp.residual_count, 4096);
    assert_eq!(
        *invalidate,
        Some(0xabc),
        "the response invalidates the read STag"
    );
}

/// Sends a command with the given iSER header and completes it with `outcome`; returns the
/// `invalidate` of the SCSI Response's Send.
fn response_invalidation(swi: bool, iser: IserHeader, read: bool, write: bool) -> Option<u32> {
    let (mut conn, now) = logged_in(swi);
    let edtl = if read || write { 512 } else { 0 };
    let data = if write { vec![7u8; 512] } else { vec![] };
    let cmd = command(
        0x50,
        100,
        read,
        write,
        edtl,
        if write { 0x2a } else { 0x28 },
    );
    conn.handle_receive(
        &send_bytes(iser, &Pdu::with_data(Header::ScsiCommand(cmd), data)),
        now,
    );
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let outcome = ScsiOutcome {
        status: 0,
        sense: Default::default(),
        data_in: mem_ffi::Buf::copy_from_slice(&if read { vec![1; 512] } else { vec![] }).into(),
        data_out_length: if write { 512 } else { 0 },
    };
    conn.handle_scsi_complete(task.id, outcome);
    let ops = drain(&mut conn);
    match ops.last() {
        Some(FabricOp::Send { invalidate, .. }) => *invalidate,
        other => panic!("{other:?}"),
    }
}

#[test]
fn send_with_invalidate_only_when_agreed_and_unambiguous() {
    let write = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV,
        write_stag: 0x11,
        write_va: 0x1000,
        ..IserHeader::default()
    };
    // libiscsi sets WSV even when all data was immediate: the STag is still its to free.
    assert_eq!(response_invalidation(true, write, false, true), Some(0x11));
    assert_eq!(
        response_invalidation(false, write, false, true),
        None,
        "not agreed"
    );
    let both = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV | ISER_RSV,
        read_stag: 0x22,
        read_va: 0x2000,
        ..write
    };
    assert_eq!(
        response_invalidation(true, both, true, false),
        None,
        "two STags"
    );
    assert_eq!(
        response_invalidation(true, IserHeader::CONTROL, false, false),
        None,
        "no STag"
    );
}

#[test]
fn write_reads_solicited_data_past_the_immediate_bytes() {
    let (mut conn, now) = logged_in(false);
    conn.handle_receive(&write_with_immediate_data(0x22), now);
    let ops = drain(&mut conn);
    let [FabricOp::RdmaRead {
        token,
        stag,
        va,
        len,
    }] = ops.as_slice()
    else {
        panic!("{ops:?}")
    };
    // WriteVA already points past the 4096 immediate bytes (Linux iser_initiator.c
    // `iser_prepare_write_cmd`).
    assert_eq!((*stag, *va, *len), (0x77, 0x9000_1000, 8192));
    complete_read(&mut conn, *token, vec![2u8; 8192], now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    assert_eq!(&task.data_out[..4096], &[1u8; 4096][..]);
    assert_eq!(&task.data_out[4096..], &[2u8; 8192][..]);
}

/// The adapter itself copies no read data (its buffer moves into the RDMA Write) and no RDMA
/// Read data (the NIC places it straight into the task's buffer); only immediate data is
/// copied, once, out of the receive buffer into the task's buffer. The driver copies no
/// payload either (it posts from and into the task buffers), so a READ and a WRITE fetched
/// by RDMA Read cost no copy.
#[test]
fn the_adapter_copies_only_immediate_data() {
    use crate::stats::{thread_payload_copies, CopyCounts};
    let (mut conn, now) = logged_in(false);
    let send = write_with_immediate_data(0x22);
    let before = thread_payload_copies();
    conn.handle_receive(&send, now);
    let ops = drain(&mut conn);
    let [FabricOp::RdmaRead { token, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    complete_read(&mut conn, *token, vec![2u8; 8192], now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let id = task.id;
    let read = Pdu::new(Header::ScsiCommand(command(
        0x23, 101, true, false, 8192, 0x28,
    )));
    conn.handle_receive(&send_bytes(both_stags(), &read), now);
    conn.handle_scsi_complete(id, ScsiOutcome::good());
    let ops = drain(&mut conn);
    let Some(FabricOp::Execute(read_task)) =
        ops.iter().find(|op| matches!(op, FabricOp::Execute(_)))
    else {
        panic!("{ops:?}")
    };
    conn.handle_scsi_complete(
        read_task.id,
        ScsiOutcome {
            data_in: mem_ffi::Buf::copy_from_slice(&[3; 8192]).into(),
            ..ScsiOutcome::good()
        },
    );
    assert!(drain(&mut conn)
        .iter()
        .any(|op| matches!(op, FabricOp::RdmaWrite { data, .. } if data.len() == 8192)));
    assert_eq!(
        thread_payload_copies() - before,
        CopyCounts {
            copies: 1,
            bytes: 4096
        }
    );
}

/// A READ from a RAM LUN is RDMA-written straight from the LUN's memory: the SCSI outcome
/// lends the chunks, the core and the adapter pass them on, and nothing copies a byte. A
/// 128 KiB READ over the end of a written chunk into an unwritten one goes out as one RDMA
/// Write per piece: the chunk's last block, then the shared zero region.
#[test]
fn a_ram_read_is_rdma_written_from_the_lun_memory_without_a_copy() {
    use crate::scsi::testutil::{assert_good, exec, ram_lu, read16, write16};
    use crate::stats::{thread_payload_copies, CopyCounts};
    let lu = ram_lu(512, 4096);
    assert_good(&exec(&lu, &write16(255, 1, false), &[6u8; 4096]));
    let (mut conn, now) = logged_in(false);
    let iser = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_RSV,
        write_stag: 0,
        write_va: 0,
        read_stag: 0x78,
        read_va: 0x7000_0000,
    };
    let read = Pdu::new(Header::ScsiCommand(command(
        0x31,
        100,
        true,
        false,
        128 << 10,
        0x88,
    )));
    conn.handle_receive(&send_bytes(iser, &read), now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let before = thread_payload_copies();
    let outcome = exec(&lu, &read16(255, 32), &[]);
    assert_good(&outcome);
    conn.handle_scsi_complete(task.id, outcome);
    let ops = drain(&mut conn);
    assert_eq!(thread_payload_copies() - before, CopyCounts::default());
    let Some(FabricOp::RdmaWrite {
        stag,
        va,
        data,
        range,
    }) = ops.first()
    else {
        panic!("{ops:?}")
    };
    assert_eq!(
        (*stag, *va, range.clone()),
        (0x78, 0x7000_0000, 0..128 << 10)
    );
    let lent = data.lent().expect("lent from the LUN, not copied");
    let pieces = data.pieces(range.clone()).expect("all in pool arenas");
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert_eq!((pieces[0].len, pieces[1].len), (4096, (128 << 10) - 4096));
    assert_eq!(
        pieces[0].arena,
        lent.iter().next().unwrap().arena_extent().unwrap()
    );
    let zeroes = mem_ffi::shared::zeroes(1);
    assert_eq!(pieces[1].arena, zeroes.arena_extent().unwrap());
    assert_eq!(pieces[1].offset, zeroes.arena_offset().unwrap());
    let mut expected = vec![6u8; 4096];
    expected.resize(128 << 10, 0);
    assert_eq!(data.to_vec(), expected);
    assert!(matches!(ops.get(1), Some(FabricOp::Send { .. })), "{ops:?}");
}

/// A WRITE larger than MaxBurstLength is fetched with all its RDMA Reads at once, no round
/// trip through the core per burst; pieces landing out of order are reported in order.
#[test]
fn a_large_write_is_fetched_with_all_its_reads_at_once() {
    let (mut conn, now) = logged_in(false);
    let burst = 512 * 1024;
    let iser = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV,
        write_stag: 0x55,
        write_va: 0x10_0000,
        ..IserHeader::default()
    };
    let cmd = command(0x40, 100, false, true, 3 * burst, 0x2a);
    conn.handle_receive(&send_bytes(iser, &Pdu::new(Header::ScsiCommand(cmd))), now);
    let ops = drain(&mut conn);
    let reads: Vec<(u64, u64, u32)> = ops
        .iter()
        .map(|op| match op {
            FabricOp::RdmaRead { token, va, len, .. } => (*token, *va, *len),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reads.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![
            (0x10_0000, burst),
            (0x10_0000 + u64::from(burst), burst),
            (0x10_0000 + 2 * u64::from(burst), burst)
        ]
    );
    complete_read(&mut conn, reads[1].0, vec![2; burst as usize], now);
    complete_read(&mut conn, reads[2].0, vec![3; burst as usize], now);
    assert!(drain(&mut conn).is_empty(), "the first piece is still out");
    complete_read(&mut conn, reads[0].0, vec![1; burst as usize], now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let b = burst as usize;
    assert!(task.data_out[..b].iter().all(|&x| x == 1));
    assert!(task.data_out[b..2 * b].iter().all(|&x| x == 2));
    assert!(task.data_out[2 * b..].iter().all(|&x| x == 3));
}

/// Zero copy: an RDMA Read lands in the WRITE's own pool buffer (past its immediate data),
/// the very buffer the backend then gets as `data_out`; the RDMA Write of READ data is
/// posted from the outcome's buffer itself.
#[test]
fn rdma_moves_data_straight_between_initiator_and_task_buffers() {
    let (mut conn, now) = logged_in(false);
    let send = write_with_immediate_data(0x90);
    conn.handle_receive(&send, now);
    let ops = drain(&mut conn);
    let [FabricOp::RdmaRead { token, len, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let place = conn.rdma_read_placement(*token).expect("a read in flight");
    assert_eq!(place.len, *len as usize);
    assert_eq!(
        place.offset % 4096,
        0,
        "page-aligned: past one page of immediate data"
    );
    complete_read(&mut conn, *token, vec![2u8; 8192], now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    assert_eq!(task.data_out.arena_extent(), Some(place.arena));
    assert_eq!(task.data_out.arena_offset().unwrap() + 4096, place.offset);
    assert_eq!(&task.data_out[..4096], &[1u8; 4096][..]);
    assert_eq!(&task.data_out[4096..], &[2u8; 8192][..]);
    let id = task.id;
    conn.handle_scsi_complete(id, ScsiOutcome::good());
    drain(&mut conn);

    let read = Pdu::new(Header::ScsiCommand(command(
        0x91, 101, true, false, 8192, 0x28,
    )));
    conn.handle_receive(&send_bytes(both_stags(), &read), now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let data = Buf::copy_from_slice(&[3u8; 8192]);
    let source = data.as_ptr();
    conn.handle_scsi_complete(task.id, ScsiOutcome::with_buf(data));
    let ops = drain(&mut conn);
    let Some(FabricOp::RdmaWrite { data, range, .. }) = ops.first() else {
        panic!("{ops:?}")
    };
    let Payload::Owned(data) = data else {
        panic!("{data:?}")
    };
    assert_eq!((data.as_ptr(), range.clone()), (source, 0..8192));
}

/// A command the core drops (CmdSN outside the window) that reuses a live task's ITT must
/// not redirect that task's data to its own STag.
#[test]
fn a_dropped_command_reusing_an_itt_leaves_the_live_tasks_stags_alone() {
    let (mut conn, now) = logged_in(false);
    let read_header = |stag: u32| IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_RSV,
        read_stag: stag,
        read_va: 0x7000_0000,
        ..IserHeader::default()
    };
    let cmd = |cmd_sn| {
        Pdu::new(Header::ScsiCommand(command(
            0x80, cmd_sn, true, false, 512, 0x28,
        )))
    };
    conn.handle_receive(&send_bytes(read_header(0xa), &cmd(100)), now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    // Far outside the window: silently dropped by the core (RFC 7143 §4.2.2.1).
    conn.handle_receive(&send_bytes(read_header(0xb), &cmd(5000)), now);
    assert!(drain(&mut conn).is_empty());
    conn.handle_scsi_complete(
        task.id,
        ScsiOutcome {
            status: 0,
            sense: Default::default(),
            data_in: mem_ffi::Buf::copy_from_slice(&[1; 512]).into(),
            data_out_length: 0,
        },
    );
    let ops = drain(&mut conn);
    assert!(
        matches!(ops.first(), Some(FabricOp::RdmaWrite { stag: 0xa, .. })),
        "{ops:?}"
    );
}

#[test]
fn data_in_without_read_stag_closes() {
    let (mut conn, now) = logged_in(false);
    let cmd = Pdu::new(Header::ScsiCommand(command(
        0x44, 100, true, false, 512, 0x28,
    )));
    conn.handle_receive(&ctrl(&cmd), now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    conn.handle_scsi_complete(
        task.id,
        ScsiOutcome {
            status: 0,
            sense: Default::default(),
            data_in: mem_ffi::Buf::copy_from_slice(&[0; 512]).into(),
            data_out_length: 0,
        },
    );
    let ops = drain(&mut conn);
    assert!(matches!(ops.as_slice(), [FabricOp::Close(_)]), "{ops:?}");
}
