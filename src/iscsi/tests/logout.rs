//! Logout and shutdown while tasks still run.

use super::*;

#[test]
fn logout_waits_for_running_tasks() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    let logout_itt = pair.logout();
    assert!(pair.take().is_empty());
    assert!(pair.closed.is_none());
    // New commands are not taken any more.
    let cmd = pair.command(2, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    assert_eq!(pair.executed.len(), 1);
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    let pdus = pair.take();
    assert_eq!(pdus.len(), 2);
    assert_eq!(scsi_response(&pdus[0]).itt, 1);
    let Header::LogoutResponse(h) = &pdus[1].header else {
        panic!("{pdus:?}")
    };
    assert_eq!((h.itt, h.response), (logout_itt, 0));
    assert_eq!(h.stat_sn, FIRST_STAT_SN + 3);
    assert_eq!(pair.closed, Some(CloseReason::Logout));
}

#[test]
fn shutdown_drains_running_tasks() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    pair.conn.handle_shutdown();
    pair.pump();
    assert!(pair.closed.is_none());
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    assert_eq!(scsi_response(&pair.take_one()).itt, 1);
    assert_eq!(pair.closed, Some(CloseReason::Shutdown));
}
