//! The order of Sends behind RDMA Reads (only a fenced WR waits for earlier RDMA Reads on an RC
//! QP, see `ReadFence`): a Send that lets the initiator free a
//! buffer waits for the reads of it in flight, and buffers under reads stay out of the pool.

use super::*;

#[test]
fn tmf_response_waits_for_rdma_reads_in_flight() {
    let (mut conn, now) = logged_in(false);
    let iser = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV,
        write_stag: 1,
        write_va: 0x1000,
        ..IserHeader::default()
    };
    let pdu = Pdu::new(Header::ScsiCommand(command(
        0x33, 100, false, true, 4096, 0x2a,
    )));
    conn.handle_receive(&send_bytes(iser, &pdu), now);
    let ops = drain(&mut conn);
    let [FabricOp::RdmaRead { token, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let abort = Header::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: 1,
        lun: [0; 8],
        itt: 0x34,
        referenced_task_tag: 0x33,
        cmd_sn: 101,
        exp_stat_sn: 8,
        ref_cmd_sn: 100,
        exp_data_sn: 0,
    });
    conn.handle_receive(&ctrl(&Pdu::new(abort)), now);
    assert!(
        drain(&mut conn).is_empty(),
        "held while the RDMA Read may still touch the buffer"
    );
    complete_read(&mut conn, *token, vec![0; 4096], now);
    let ops = drain(&mut conn);
    let [FabricOp::Send { bytes, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let Header::TaskMgmtResponse(resp) = sent_pdu(bytes).header else {
        panic!()
    };
    assert_eq!((resp.itt, resp.response), (0x34, 0));
}

/// Linux sends ABORT TASK after a command timeout while other writes go on: a read created
/// while the TMF Response is held must neither wait behind it nor keep it held.
#[test]
fn reads_created_behind_a_held_tmf_response_do_not_stall_it() {
    let (mut conn, now) = logged_in(false);
    let first = write_needing_read(&mut conn, 0x33, 100, now);
    conn.handle_receive(&abort_task(0x34, 0x33, 101), now);
    assert!(drain(&mut conn).is_empty(), "TMF Response held");
    // A later WRITE's read goes out at once.
    let second = write_needing_read(&mut conn, 0x35, 101, now);
    complete_read(&mut conn, first, vec![0; 4096], now);
    let ops = drain(&mut conn);
    let headers = sent_headers(&ops);
    assert!(
        matches!(
            headers.as_slice(),
            [Header::TaskMgmtResponse(TaskMgmtResponse { itt: 0x34, .. })]
        ),
        "{ops:?}"
    );
    // Nothing is held any more: the second write completes normally.
    complete_read(&mut conn, second, vec![3; 4096], now);
    let ops = drain(&mut conn);
    let [FabricOp::Execute(task)] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    assert_eq!(task.data_out, vec![3; 4096]);
}

/// Sends that end no task are not held by reads: a NOP-In answer goes out at once.
#[test]
fn nop_in_does_not_wait_for_reads() {
    let (mut conn, now) = logged_in(false);
    write_needing_read(&mut conn, 0x40, 100, now);
    let ping = Header::NopOut(NopOut {
        immediate: true,
        lun: [0; 8],
        itt: 9,
        ttt: u32::MAX,
        cmd_sn: 101,
        exp_stat_sn: 8,
    });
    conn.handle_receive(&ctrl(&Pdu::new(ping)), now);
    let headers = sent_headers(&drain(&mut conn));
    assert!(
        matches!(headers.as_slice(), [Header::NopIn(_)]),
        "{headers:?}"
    );
}

/// The initiator frees every buffer once it has the Logout Response: it waits for all reads,
/// and the connection closes only after it.
#[test]
fn logout_response_waits_for_every_read() {
    let (mut conn, now) = logged_in(false);
    let token = write_needing_read(&mut conn, 0x50, 100, now);
    let logout = close_session_request(0x51);
    conn.handle_receive(&ctrl(&Pdu::new(logout)), now);
    let ops = drain(&mut conn);
    assert!(
        !ops.iter()
            .any(|op| matches!(op, FabricOp::Send { .. } | FabricOp::Close(_))),
        "{ops:?}"
    );
    complete_read(&mut conn, token, vec![0; 4096], now);
    let ops = drain(&mut conn);
    let logout_at = ops
        .iter()
        .position(|op| {
            matches!(op, FabricOp::Send { bytes, .. }
                if matches!(sent_pdu(bytes).header, Header::LogoutResponse(_)))
        })
        .unwrap_or_else(|| panic!("no Logout Response: {ops:?}"));
    assert!(
        matches!(ops.last(), Some(FabricOp::Close(CloseReason::Logout))),
        "{ops:?}"
    );
    assert!(logout_at < ops.len() - 1);
}

/// A bad Data-Out that came in a Send ends the task early, while its RDMA Read is still in
/// flight: the SCSI Response (which lets the initiator free the buffer) waits for the read.
#[test]
fn early_response_waits_for_its_tasks_reads() {
    let (mut conn, now) = logged_in(false);
    let token = write_needing_read(&mut conn, 0x60, 100, now);
    end_write_early(&mut conn, 0x60, now);
    let headers = sent_headers(&drain(&mut conn));
    assert!(
        !headers.iter().any(|h| matches!(h, Header::ScsiResponse(_))),
        "response overtook the read: {headers:?}"
    );
    complete_read(&mut conn, token, vec![0; 4096], now);
    let headers = sent_headers(&drain(&mut conn));
    assert!(
        matches!(
            headers.as_slice(),
            [Header::ScsiResponse(pdu::ScsiResponse {
                itt: 0x60,
                status: 2,
                ..
            })]
        ),
        "{headers:?}"
    );
}

/// A WRITE that ends while its RDMA Read is in flight keeps its buffer out of the pool until
/// the read completes (the NIC may still be writing it); a read of an ended task that was
/// not posted yet has no place to land.
#[test]
fn an_ended_writes_buffer_is_not_recycled_under_its_read() {
    let (mut conn, now) = logged_in(false);
    let token = write_needing_read(&mut conn, 0x92, 100, now);
    let place = conn.rdma_read_placement(token).unwrap();
    let span = place.arena.addr() + place.offset..place.arena.addr() + place.offset + place.len;
    end_write_early(&mut conn, 0x92, now);
    drain(&mut conn);
    assert_eq!(conn.rdma_read_placement(token), None, "the task is gone");
    assert_eq!(conn.retired.len(), 1, "its buffer is held for the read");
    let others: Vec<Buf> = (0..256)
        .map(|_| mem_ffi::pool::global().alloc(4096))
        .collect();
    for other in &others {
        let start = other.as_ptr() as usize;
        assert!(
            !span.contains(&start),
            "the pool handed out a buffer under a read in flight"
        );
    }
    complete_read(&mut conn, token, vec![0; 4096], now);
    assert!(
        conn.retired.is_empty(),
        "released once the read is reported"
    );
}

/// Reads completing out of order, several per task: an early SCSI Response waits for the
/// last of its task's reads, a TMF Response for every read in flight when it was queued
/// (not one made later), and an ended write's buffer stays out of the pool until its last
/// read; a teardown whose drain failed leaks the buffers reads may still write.
#[test]
fn held_sends_and_retired_buffers_follow_reads_completing_out_of_order() {
    let (mut conn, now) = logged_in(false);
    let burst = 512 * 1024;
    let iser = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV,
        write_stag: 0x80,
        write_va: 0x10_0000,
        ..IserHeader::default()
    };
    let cmd = command(0x80, 100, false, true, 3 * burst, 0x2a);
    conn.handle_receive(&send_bytes(iser, &Pdu::new(Header::ScsiCommand(cmd))), now);
    let a: Vec<u64> = drain(&mut conn)
        .iter()
        .map(|op| match op {
            FabricOp::RdmaRead { token, .. } => *token,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(a.len(), 3);
    let b = write_needing_read(&mut conn, 0x81, 101, now);
    end_write_early(&mut conn, 0x80, now);
    let headers = sent_headers(&drain(&mut conn));
    assert!(
        !headers.iter().any(|h| matches!(h, Header::ScsiResponse(_))),
        "response held: {headers:?}"
    );
    let burst = burst as usize;
    complete_read(&mut conn, a[2], vec![0; burst], now);
    complete_read(&mut conn, a[0], vec![0; burst], now);
    assert!(drain(&mut conn).is_empty(), "one of its reads is still out");
    assert_eq!(conn.retired.len(), 1);
    conn.handle_receive(&abort_task(0x82, 0x81, 102), now);
    assert!(drain(&mut conn).is_empty(), "TMF Response held");
    complete_read(&mut conn, a[1], vec![0; burst], now);
    let headers = sent_headers(&drain(&mut conn));
    assert!(
        matches!(
            headers.as_slice(),
            [Header::ScsiResponse(pdu::ScsiResponse { itt: 0x80, .. })]
        ),
        "{headers:?}"
    );
    assert_eq!(conn.retired.len(), 1, "only the aborted WRITE's buffer");
    let c = write_needing_read(&mut conn, 0x83, 102, now);
    complete_read(&mut conn, b, vec![0; 4096], now);
    let headers = sent_headers(&drain(&mut conn));
    assert!(
        matches!(
            headers.as_slice(),
            [Header::TaskMgmtResponse(TaskMgmtResponse { itt: 0x82, .. })]
        ),
        "not held behind the later read: {headers:?}"
    );
    assert!(conn.retired.is_empty());
    assert!(conn.rdma_read_placement(c).is_some());
    conn.leak_buffers_under_reads();
    assert!(conn.writes.is_empty() && conn.rdma_read_placement(c).is_none());
}

/// A failed RDMA Read closes at once, even with a Logout Response held behind reads.
#[test]
fn failed_read_closes_despite_held_logout() {
    let (mut conn, now) = logged_in(false);
    let token = write_needing_read(&mut conn, 0x70, 100, now);
    let logout = close_session_request(0x71);
    conn.handle_receive(&ctrl(&Pdu::new(logout)), now);
    drain(&mut conn);
    conn.handle_rdma_read_failed(token);
    let ops = drain(&mut conn);
    assert!(
        matches!(
            ops.as_slice(),
            [FabricOp::Close(CloseReason::ProtocolError(_))]
        ),
        "{ops:?}"
    );
    assert!(conn.is_closed());
}

/// Ends WRITE `itt` early: an unsolicited Data-Out although InitialR2T=Yes, which the core
/// rejects by ending the task at once (its RDMA Reads may still be in flight).
fn end_write_early(conn: &mut IserConnection, itt: u32, now: Instant) {
    let data_out = Header::DataOut(DataOut {
        final_flag: true,
        lun: [0; 8],
        itt,
        ttt: u32::MAX,
        exp_stat_sn: 8,
        data_sn: 0,
        buffer_offset: 0,
    });
    conn.handle_receive(&ctrl(&Pdu::with_data(data_out, vec![0; 512])), now);
}
