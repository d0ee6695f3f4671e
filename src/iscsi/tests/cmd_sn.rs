//! The CmdSN window: commands in and out of order, immediate commands, MaxCmdSN.

use super::*;

#[test]
fn commands_in_order_advance_exp_cmd_sn_and_stat_sn() {
    let mut pair = logged_in(&[]);
    for i in 0..3u32 {
        let pdu = tur(&mut pair, 100 + i, FIRST_CMD_SN + i, false);
        pair.send(pdu);
        let r = pair.take_one();
        assert_eq!(scsi_response(&r).itt, 100 + i);
        assert_eq!(
            sequence(&r),
            (
                FIRST_STAT_SN + 2 + i,
                FIRST_CMD_SN + 1 + i,
                FIRST_CMD_SN + 16 + i
            )
        );
    }
}

#[test]
fn immediate_commands_do_not_advance_exp_cmd_sn() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let pdu = tur(&mut pair, 1, FIRST_CMD_SN, true);
    pair.send(pdu);
    assert_eq!(pair.deferred.len(), 1);
    pair.nop_out(50, RESERVED_TAG, true, vec![]);
    let (_, exp, max) = sequence(&pair.take_one());
    // NOTE: immediate commands sit outside the CmdSN window and so outside queue_depth.
    assert_eq!((exp, max), (FIRST_CMD_SN, FIRST_CMD_SN + 15));
    pair.auto_complete = true;
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    assert_eq!(sequence(&pair.take_one()).1, FIRST_CMD_SN);
    let pdu = tur(&mut pair, 2, FIRST_CMD_SN, false);
    pair.send(pdu);
    assert_eq!(sequence(&pair.take_one()).1, FIRST_CMD_SN + 1);
}

#[test]
fn out_of_window_commands_are_dropped_silently() {
    let mut pair = logged_in(&[]);
    // Behind the window (already used) and beyond MaxCmdSN.
    for sn in [FIRST_CMD_SN - 1, FIRST_CMD_SN + 16, FIRST_CMD_SN + 1000] {
        let pdu = tur(&mut pair, 7, sn, false);
        pair.send(pdu);
        assert!(pair.take().is_empty(), "CmdSN {sn} must be ignored");
    }
    assert!(pair.executed.is_empty());
    assert!(pair.closed.is_none());
}

#[test]
fn command_ahead_of_exp_cmd_sn_waits_for_the_gap() {
    let mut pair = logged_in(&[]);
    let later = tur(&mut pair, 2, FIRST_CMD_SN + 1, false);
    pair.send(later);
    assert!(pair.take().is_empty());
    assert!(pair.executed.is_empty());
    // An immediate NOP shows the window did not move or shrink.
    pair.nop_out(50, RESERVED_TAG, true, vec![]);
    let (_, exp, max) = sequence(&pair.take_one());
    assert_eq!((exp, max), (FIRST_CMD_SN, FIRST_CMD_SN + 15));
    let first = tur(&mut pair, 1, FIRST_CMD_SN, false);
    pair.send(first);
    let r = pair.take();
    let itts: Vec<u32> = r.iter().map(|p| scsi_response(p).itt).collect();
    assert_eq!(itts, vec![1, 2]);
    assert_eq!(sequence(&r[1]).1, FIRST_CMD_SN + 2);
}

/// A WRITE whose immediate data the datamover placed in its pool buffer on receipt, but whose
/// CmdSN is ahead of ExpCmdSN, waits for the gap like any command and keeps its data.
#[test]
fn held_write_keeps_its_immediate_data() {
    let mut pair = logged_in(&[("ImmediateData", "Yes")]);
    let data = pattern(1024, 7);
    let first = pair.command(1, read10(0, 1), true, false, 512);
    let mut write = pair.command(2, write10(0, 2), false, true, 1024);
    write.cmd_sn = FIRST_CMD_SN + 1;
    pair.send_command(write, data.clone());
    assert!(pair.take().is_empty(), "held for the gap");
    pair.send_command(first, vec![]);
    let statuses: Vec<u8> = pair
        .take()
        .iter()
        .filter_map(|p| match &p.header {
            Header::ScsiResponse(h) => Some(h.status),
            Header::DataIn(h) if h.status_present => Some(h.status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, vec![0, 0]);
    assert_eq!(pair.executed[1].data_out, data);
    assert_eq!(read_back(&mut pair, 0, 2), data);
}

#[test]
fn max_cmd_sn_never_decreases_and_tracks_queue_depth() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let mut last_max = FIRST_CMD_SN + 15;
    let check = |pdus: &[Pdu], last_max: &mut u32| {
        for p in pdus {
            let (_, exp, max) = sequence(p);
            assert!(
                !crate::iscsi::connection::sn_lt(max, *last_max),
                "MaxCmdSN went back"
            );
            assert!(!crate::iscsi::connection::sn_lt(max.wrapping_add(1), exp));
            *last_max = max;
        }
    };
    // Fill the queue with 16 running commands; each response to a ping shows the window shrink.
    for i in 0..16u32 {
        let pdu = tur(&mut pair, 100 + i, FIRST_CMD_SN + i, false);
        pair.send(pdu);
        pair.nop_out(500 + i, RESERVED_TAG, true, vec![]);
        let r = pair.take();
        check(&r, &mut last_max);
        // Window: ExpCmdSN advanced by one per command, room shrank by one: MaxCmdSN constant.
        assert_eq!(sequence(&r[0]).2, FIRST_CMD_SN + 15);
    }
    assert_eq!(pair.deferred.len(), 16);
    // The queue is full: MaxCmdSN = ExpCmdSN - 1 closes the window, a 17th command is dropped.
    let (_, exp, max) = {
        pair.nop_out(600, RESERVED_TAG, true, vec![]);
        sequence(&pair.take_one())
    };
    assert_eq!(exp, FIRST_CMD_SN + 16);
    assert_eq!(max, exp - 1, "full queue closes the window");
    let extra = tur(&mut pair, 200, FIRST_CMD_SN + 16, false);
    pair.send(extra);
    assert_eq!(pair.deferred.len(), 16, "queue_depth respected");
    // Immediate commands with ITTs held, held commands, completions: MaxCmdSN only grows.
    let held = tur(&mut pair, 201, FIRST_CMD_SN + 17, false);
    pair.send(held);
    for task in pair.deferred.clone() {
        pair.complete_deferred(task.id, ScsiOutcome::good());
        let r = pair.take();
        check(&r, &mut last_max);
    }
    assert_eq!(last_max, FIRST_CMD_SN + 16 + 15);
}

#[test]
fn immediate_commands_beyond_the_headroom_are_rejected() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let limit = 16 + crate::iscsi::commands::IMMEDIATE_COMMAND_HEADROOM;
    // A full queue of ordinary commands, then immediate ones up to the limit, all running.
    for itt in 0..16 {
        let pdu = tur(&mut pair, itt, FIRST_CMD_SN + itt, false);
        pair.send(pdu);
    }
    for itt in 16..limit {
        let pdu = tur(&mut pair, itt, FIRST_CMD_SN + 16, true);
        pair.send(pdu);
    }
    assert_eq!(pair.conn.core().running_tasks(), limit as usize);
    assert!(pair.take().is_empty());
    let pdu = tur(&mut pair, 1000, FIRST_CMD_SN + 16, true);
    pair.send(pdu);
    let sent = pair.take_with_contexts();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        reject_reason(&sent[0].0),
        0x06,
        "too many immediate commands"
    );
    assert_eq!(sent[0].1, None);
    assert_eq!(
        pair.conn.core().running_tasks(),
        limit as usize,
        "no task for it"
    );
    assert_eq!(
        pair.live_contexts(),
        limit as usize,
        "its context is dropped"
    );
    // One task finishes: an immediate command fits again.
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    pair.take();
    let pdu = tur(&mut pair, 1001, FIRST_CMD_SN + 16, true);
    pair.send(pdu);
    assert!(pair.take().is_empty());
    assert_eq!(pair.conn.core().running_tasks(), limit as usize);
    assert!(pair.closed.is_none());
}
