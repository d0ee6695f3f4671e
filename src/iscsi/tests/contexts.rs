//! Transport contexts: task PDUs come back with their command's context, which is
//! dropped with its task.

use super::*;

/// Serial of the context the latest SCSI Command with this ITT came with.
fn context_of(pair: &Pair, itt: u32) -> u64 {
    pair.command_contexts
        .iter()
        .filter(|(_, &i)| i == itt)
        .map(|(&serial, _)| serial)
        .max()
        .expect("a command with this ITT was sent")
}

#[test]
fn task_pdus_come_back_with_their_commands_context() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    let write = pair.command(1, write10(0, 1), false, true, 512);
    let read = pair.command(2, read10(8, 1), true, false, 512);
    // The read arrives first and waits for the write's CmdSN, its context with it.
    pair.send_command(read, vec![]);
    assert!(pair.take().is_empty());
    pair.send_command(write, vec![]);
    let (write_context, read_context) = (context_of(&pair, 1), context_of(&pair, 2));
    let sent = pair.take_with_contexts();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let ttt = r2t(&sent[0].0).ttt;
    assert_eq!(sent[0].1, Some(write_context), "R2T");
    assert!(data_in(&sent[1].0).status_present);
    assert_eq!(sent[1].1, Some(read_context), "Data-In with status");
    pair.data_out(1, ttt, 0, pattern(512, 3), true);
    let sent = pair.take_with_contexts();
    assert_eq!(scsi_response(&sent[0].0).itt, 1);
    assert_eq!(sent[0].1, Some(write_context), "SCSI Response");
    // PDUs of no task carry none.
    pair.nop_out(50, RESERVED_TAG, true, vec![]);
    let sent = pair.take_with_contexts();
    assert!(matches!(sent[0].0.header, Header::NopIn(_)));
    assert_eq!(sent[0].1, None);
    assert_eq!(pair.live_contexts(), 0, "finished tasks keep no context");
}

#[test]
fn contexts_are_dropped_with_their_tasks() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    pair.auto_complete = false;
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    assert_eq!(
        pair.live_contexts(),
        1,
        "the running task holds its context"
    );
    // A duplicate ITT is rejected and never becomes a task.
    let cmd = pair.command(1, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    let sent = pair.take_with_contexts();
    assert_eq!(reject_reason(&sent[0].0), 0x09);
    assert_eq!(sent[0].1, None, "a Reject belongs to no task");
    assert_eq!(pair.live_contexts(), 1, "duplicate dropped");
    // A command outside the window is ignored.
    let sn = pair.cmd_sn;
    let pdu = tur(&mut pair, 7, sn + 1000, false);
    pair.cmd_sn = sn;
    pair.send(pdu);
    assert_eq!(pair.live_contexts(), 1, "out-of-window command dropped");
    // A write waiting for data, aborted.
    let cmd = pair.command(2, write10(0, 4), false, true, 2048);
    pair.send_command(cmd, vec![]);
    assert_eq!(pair.live_contexts(), 2);
    pair.take();
    pair.tmf(ABORT_TASK, 0, 2, sn);
    assert_eq!(tmf_response(&pair.take_one()).response, 0);
    assert_eq!(pair.live_contexts(), 1, "aborted write dropped");
    // A write ended by a data-phase error.
    let cmd = pair.command(3, write10(0, 4), false, true, 2048);
    pair.send_command(cmd, vec![]);
    let ttt = r2t(&pair.take_one()).ttt;
    pair.data_out(3, ttt ^ 0x55, 0, vec![0; 512], false);
    let sent = pair.take_with_contexts();
    assert_data_phase_error(
        &sent.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
        3,
        "wrong TTT",
    );
    assert_eq!(sent[1].1, Some(context_of(&pair, 3)));
    assert_eq!(pair.live_contexts(), 1, "failed write dropped");
    // The running read, aborted: its context goes when the backend gives it back.
    pair.tmf(ABORT_TASK, 0, 1, FIRST_CMD_SN);
    assert_eq!(pair.live_contexts(), 1);
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    assert_eq!(tmf_response(&pair.take_one()).response, 0);
    assert_eq!(
        pair.live_contexts(),
        0,
        "aborted read dropped on completion"
    );
    // A command held for a CmdSN gap, dropped by logout.
    let sn = pair.cmd_sn;
    let pdu = tur(&mut pair, 4, sn + 1, false);
    pair.send(pdu);
    assert_eq!(
        pair.live_contexts(),
        1,
        "the held command keeps its context"
    );
    pair.logout();
    assert!(matches!(pair.take_one().header, Header::LogoutResponse(_)));
    assert_eq!(pair.live_contexts(), 0, "held command dropped at logout");
}
