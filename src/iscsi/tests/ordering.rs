//! Task attributes: what ORDERED, HEAD OF QUEUE and SIMPLE tasks wait for.

use super::*;

fn send_with_attribute(pair: &mut Pair, itt: u32, attribute: TaskAttribute) {
    let mut cmd = pair.command(itt, vec![0u8; 16], false, false, 0);
    cmd.attribute = attribute;
    pair.send_command(cmd, vec![]);
}

fn executed_itts(pair: &Pair, itts: &HashMap<TaskId, u32>) -> Vec<u32> {
    pair.executed.iter().map(|t| itts[&t.id]).collect()
}

#[test]
fn ordered_task_waits_for_earlier_and_blocks_later_ones() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    send_with_attribute(&mut pair, 1, TaskAttribute::Simple);
    send_with_attribute(&mut pair, 2, TaskAttribute::Ordered);
    send_with_attribute(&mut pair, 3, TaskAttribute::Simple);
    assert_eq!(pair.executed.len(), 1, "only the first simple task runs");
    let first = pair.executed[0].id;
    pair.complete_deferred(first, ScsiOutcome::good());
    assert_eq!(pair.executed.len(), 2);
    assert_eq!(pair.executed[1].attribute, crate::scsi::TaskAttr::Ordered);
    let ordered = pair.executed[1].id;
    pair.complete_deferred(ordered, ScsiOutcome::good());
    assert_eq!(pair.executed.len(), 3);
    let itts: Vec<u32> = pair.take().iter().map(|p| scsi_response(p).itt).collect();
    assert_eq!(itts, vec![1, 2]);
}

#[test]
fn head_of_queue_starts_at_once() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let mut itts = HashMap::new();
    send_with_attribute(&mut pair, 1, TaskAttribute::Simple);
    send_with_attribute(&mut pair, 2, TaskAttribute::Ordered);
    send_with_attribute(&mut pair, 3, TaskAttribute::HeadOfQueue);
    for (task, itt) in pair.executed.iter().zip([1, 3]) {
        itts.insert(task.id, itt);
    }
    assert_eq!(
        pair.executed.len(),
        2,
        "HEAD OF QUEUE passes the waiting ORDERED task"
    );
    assert_eq!(executed_itts(&pair, &itts), vec![1, 3]);
    assert_eq!(
        pair.executed[1].attribute,
        crate::scsi::TaskAttr::HeadOfQueue
    );
}

/// A command marked by its ITT in the last CDB byte, so executed tasks can be told apart: a
/// one-block WRITE(10) when `write`, else TEST UNIT READY.
fn send_marked(pair: &mut Pair, itt: u32, attribute: TaskAttribute, write: bool) {
    let mut cdb = if write { write10(0, 1) } else { vec![0u8; 16] };
    cdb[15] = itt as u8;
    let edtl = if write { BLOCK as u32 } else { 0 };
    let mut cmd = pair.command(itt, cdb, false, write, edtl);
    cmd.attribute = attribute;
    pair.send_command(cmd, vec![]);
}

/// Marks of the commands the target handed to the backend, in order.
fn executed_marks(pair: &Pair) -> Vec<u32> {
    pair.executed.iter().map(|t| t.cdb[15] as u32).collect()
}

fn complete_marked(pair: &mut Pair, itt: u32) {
    let task = pair
        .deferred
        .iter()
        .find(|t| t.cdb[15] as u32 == itt)
        .unwrap_or_else(|| panic!("command {itt} is not running"))
        .clone();
    let outcome = pair.backend.run(&task);
    pair.complete_deferred(task.id, outcome);
}

#[test]
fn ordering_with_writes_waiting_for_data_and_successive_ordered_tasks() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    pair.auto_complete = false;
    send_marked(&mut pair, 1, TaskAttribute::Simple, true);
    let ttt = r2t(&pair.take_one()).ttt;
    send_marked(&mut pair, 2, TaskAttribute::Ordered, false);
    send_marked(&mut pair, 3, TaskAttribute::Simple, false);
    send_marked(&mut pair, 4, TaskAttribute::HeadOfQueue, false);
    send_marked(&mut pair, 5, TaskAttribute::Ordered, false);
    send_marked(&mut pair, 6, TaskAttribute::Simple, false);
    assert_eq!(executed_marks(&pair), vec![4], "only HEAD OF QUEUE passes");
    // The write's data completes it: no ORDERED task is ahead of it, so it starts.
    pair.data_out(1, ttt, 0, vec![7; BLOCK], true);
    assert_eq!(executed_marks(&pair), vec![4, 1]);
    complete_marked(&mut pair, 4);
    assert_eq!(
        executed_marks(&pair),
        vec![4, 1],
        "HEAD OF QUEUE held nothing back"
    );
    complete_marked(&mut pair, 1);
    assert_eq!(
        executed_marks(&pair),
        vec![4, 1, 2],
        "the first ORDERED task's turn"
    );
    complete_marked(&mut pair, 2);
    assert_eq!(
        executed_marks(&pair),
        vec![4, 1, 2, 3],
        "the task between the ORDERED ones, not the second ORDERED one"
    );
    complete_marked(&mut pair, 3);
    assert_eq!(executed_marks(&pair), vec![4, 1, 2, 3, 5]);
    complete_marked(&mut pair, 5);
    assert_eq!(executed_marks(&pair), vec![4, 1, 2, 3, 5, 6]);
    complete_marked(&mut pair, 6);
    assert_eq!(pair.conn.core().running_tasks(), 0);
    assert_eq!(pair.live_contexts(), 0);
}

#[test]
fn aborting_a_waiting_ordered_task_releases_the_tasks_behind_it() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    pair.auto_complete = false;
    send_marked(&mut pair, 1, TaskAttribute::Simple, true);
    pair.take();
    send_marked(&mut pair, 2, TaskAttribute::Ordered, false);
    send_marked(&mut pair, 3, TaskAttribute::Simple, false);
    send_marked(&mut pair, 4, TaskAttribute::Untagged, false);
    assert!(pair.executed.is_empty());
    pair.tmf(ABORT_TASK, 0, 2, FIRST_CMD_SN + 1);
    assert_eq!(tmf_response(&pair.take_one()).response, 0);
    assert_eq!(
        executed_marks(&pair),
        vec![3, 4],
        "in arrival order, the write still waiting for its data"
    );
    assert_eq!(pair.conn.core().running_tasks(), 2);
}

#[test]
fn an_ordered_write_at_the_front_starts_when_its_data_is_in() {
    let mut pair = logged_in(&[("ImmediateData", "No")]);
    pair.auto_complete = false;
    send_marked(&mut pair, 1, TaskAttribute::Ordered, true);
    let ttt = r2t(&pair.take_one()).ttt;
    send_marked(&mut pair, 2, TaskAttribute::Simple, false);
    assert!(pair.executed.is_empty(), "held back by the ORDERED write");
    pair.data_out(1, ttt, 0, vec![7; BLOCK], true);
    assert_eq!(executed_marks(&pair), vec![1]);
    complete_marked(&mut pair, 1);
    assert_eq!(executed_marks(&pair), vec![1, 2]);
}
