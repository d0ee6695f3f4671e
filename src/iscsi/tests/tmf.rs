//! Task management functions: aborts, task-set functions and resets.

use super::*;

#[test]
fn abort_task_awaiting_r2t_data() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    let cmd = pair.command(1, write10(0, 4), false, true, 2048);
    pair.send_command(cmd, vec![]);
    let ttt = r2t(&pair.take_one()).ttt;
    let tmf_itt = pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    let r = pair.take_one();
    let h = tmf_response(&r);
    assert_eq!((h.itt, h.response), (tmf_itt, 0));
    assert_eq!(
        sequence(&r),
        (FIRST_STAT_SN + 2, FIRST_CMD_SN + 1, FIRST_CMD_SN + 16)
    );
    // Data the initiator had in flight is dropped; no SCSI Response ever comes.
    pair.data_out(1, ttt, 0, vec![0; 2048], true);
    assert!(pair.take().is_empty());
    assert!(pair.executed.is_empty());
}

#[test]
fn abort_running_task_holds_the_tmf_response() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    let id = pair.deferred[0].id;
    let tmf_itt = pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    assert!(pair.take().is_empty(), "TMF response waits for the backend");
    pair.complete_deferred(
        id,
        ScsiOutcome {
            data_in: mem_ffi::Buf::copy_from_slice(&[1; 512]).into(),
            ..ScsiOutcome::good()
        },
    );
    let r = pair.take_one();
    let h = tmf_response(&r);
    assert_eq!(
        (h.itt, h.response, h.stat_sn),
        (tmf_itt, 0, FIRST_STAT_SN + 2)
    );
    // The ITT is free again.
    let cmd = pair.command(1, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    assert_eq!(pair.deferred.len(), 1);
}

/// fuzz connection: an ABORT TASK held for a running task, then the connection closed (its
/// ping unanswered) before the backend finished: the TMF response must not follow the Close
/// (the pair fails on any action after Close).
#[test]
fn a_held_tmf_response_does_not_follow_the_close() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    let id = pair.deferred[0].id;
    pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    assert!(pair.take().is_empty(), "TMF response waits for the backend");
    pair.advance(Duration::from_secs(15));
    pair.take();
    pair.advance(Duration::from_secs(30));
    assert_eq!(pair.closed, Some(CloseReason::Timeout));
    pair.complete_deferred(id, ScsiOutcome::good());
    assert!(pair.take().is_empty());
}

#[test]
fn tmfs_piling_up_behind_a_running_task_are_rejected() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    let limit = 16 + crate::iscsi::commands::IMMEDIATE_COMMAND_HEADROOM;
    for _ in 0..limit {
        pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    }
    assert!(
        pair.take().is_empty(),
        "every abort waits for the running read"
    );
    let rejected = pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    let r = pair.take_one();
    assert_eq!(
        (tmf_response(&r).itt, tmf_response(&r).response),
        (rejected, 255)
    );
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    let answers = pair.take();
    assert_eq!(answers.len(), limit as usize);
    assert!(answers.iter().all(|p| tmf_response(p).response == 0));
    assert!(pair.closed.is_none());
}

#[test]
fn abort_unknown_task_follows_ref_cmd_sn() {
    let mut pair = logged_in(&[]);
    let pdu = tur(&mut pair, 1, FIRST_CMD_SN, false);
    pair.send(pdu);
    pair.take();
    // RFC 7143 §11.6.1 c): RefCmdSN below the window, the task completed before the abort
    // arrived: TASK DOES NOT EXIST (what libiscsi's AbortTaskSimpleAsync expects).
    pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    assert_eq!(tmf_response(&pair.take_one()).response, 1);
    // Inside the window but not before the TMF's own CmdSN: never sent, does not exist.
    pair.tmf(ABORT_TASK, 0, 77, FIRST_CMD_SN + 5);
    assert_eq!(tmf_response(&pair.take_one()).response, 1);
    assert_eq!(pair.executed.len(), 1);
}

#[test]
fn abort_of_a_command_not_yet_arrived_takes_its_cmd_sn() {
    let mut pair = logged_in(&[]);
    let first = FIRST_CMD_SN;
    // CmdSN `first` is lost on the way; `first + 1` waits for it.
    let held = tur(&mut pair, 2, first + 1, false);
    pair.send(held);
    assert!(pair.take().is_empty());
    // RFC 7143 §11.6.1 b): the initiator aborts the held command (RefCmdSN inside the window,
    // before the TMF's CmdSN): done, and the held command never runs.
    pair.cmd_sn = first + 2;
    pair.tmf(ABORT_TASK, 0, 2, first + 1);
    let r = pair.take_one();
    assert_eq!(tmf_response(&r).response, 0);
    assert_eq!(sequence(&r).1, first, "the gap is still open");
    assert_eq!(pair.live_contexts(), 0, "the held command is gone");
    // Then aborts the lost one: its CmdSN counts as received and ExpCmdSN moves past both.
    pair.tmf(ABORT_TASK, 0, 1, first);
    let r = pair.take_one();
    assert_eq!(tmf_response(&r).response, 0);
    assert_eq!(sequence(&r).1, first + 2);
    // The lost command turning up late is outside the window.
    let late = tur(&mut pair, 1, first, false);
    pair.send(late);
    assert!(pair.take().is_empty());
    assert!(pair.executed.is_empty());
    // The session goes on from ExpCmdSN.
    let next = tur(&mut pair, 3, first + 2, false);
    pair.send(next);
    assert_eq!(scsi_response(&pair.take_one()).itt, 3);
}

#[test]
fn task_set_tmfs_on_missing_lun_and_target_reset() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    pair.auto_complete = false;
    pair.tmf(ABORT_TASK_SET, 5, RESERVED_TAG, 0);
    assert_eq!(tmf_response(&pair.take_one()).response, 2);
    pair.tmf(LOGICAL_UNIT_RESET, 5, RESERVED_TAG, 0);
    assert_eq!(tmf_response(&pair.take_one()).response, 2);
    assert!(
        pair.resets.is_empty(),
        "no reset of a LUN that does not exist"
    );
    // A running read and a write waiting for data on LUN 0.
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    let cmd = pair.command(2, write10(0, 1), false, true, 512);
    pair.send_command(cmd, vec![]);
    assert!(matches!(pair.take_one().header, Header::ReadyToTransfer(_)));
    // A reset of LUN 1 touches neither. It goes to the backend, which runs it once no
    // session has a command in flight on LUN 1; the response waits for that.
    let read = pair.deferred[0].id;
    let lun_reset_itt = pair.tmf(LOGICAL_UNIT_RESET, 1, RESERVED_TAG, 0);
    assert_eq!(pair.resets, vec![1], "the backend resets LUN 1");
    assert!(pair.take().is_empty(), "no response before the LU is reset");
    let reset = pair.deferred[1].id;
    assert_eq!(
        (
            pair.deferred[1].kind,
            pair.deferred[1].lun,
            pair.deferred[1].cdb.len()
        ),
        (TaskKind::LunReset, 1, 0)
    );
    pair.complete_deferred(reset, ScsiOutcome::good());
    let r = pair.take_one();
    assert_eq!(
        (tmf_response(&r).itt, tmf_response(&r).response),
        (lun_reset_itt, 0)
    );
    assert_eq!(pair.conn.core().running_tasks(), 1);
    // A target reset resets every LU of the target, and answers once they and the running
    // read (aborted) have all left the backend, in any order.
    let reset_itt = pair.tmf(TARGET_WARM_RESET, 0, RESERVED_TAG, 0);
    assert_eq!(pair.resets, vec![1, 0, 1], "then the whole target");
    let resets: Vec<TaskId> = pair.deferred[1..].iter().map(|t| t.id).collect();
    for id in resets {
        pair.complete_deferred(id, ScsiOutcome::good());
        assert!(
            pair.take().is_empty(),
            "the aborted read is still in the backend"
        );
    }
    pair.complete_deferred(read, ScsiOutcome::good());
    let r = pair.take_one();
    assert_eq!(
        (tmf_response(&r).itt, tmf_response(&r).response),
        (reset_itt, 0)
    );
    assert_eq!(pair.conn.core().running_tasks(), 0);
    // Both ITTs are free: the write was dropped too.
    let cmd = pair.command(2, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    assert!(pair.take().is_empty());
    assert_eq!(pair.deferred.len(), 1);
}
