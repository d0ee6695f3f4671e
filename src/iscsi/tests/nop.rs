//! NOP-Out / NOP-In pings from either side.

use super::*;

#[test]
fn initiator_ping_is_echoed() {
    let mut pair = logged_in(&[]);
    pair.nop_out(5, RESERVED_TAG, false, b"hello".to_vec());
    let r = pair.take_one();
    let Header::NopIn(h) = &r.header else {
        panic!("{r:?}")
    };
    assert_eq!((h.itt, h.ttt), (5, RESERVED_TAG));
    assert_eq!(r.data, b"hello");
    assert_eq!(
        sequence(&r),
        (FIRST_STAT_SN + 2, FIRST_CMD_SN + 1, FIRST_CMD_SN + 16)
    );
}

#[test]
fn target_ping_answered_keeps_the_connection() {
    let mut pair = logged_in(&[]);
    pair.advance(Duration::from_secs(14));
    assert!(pair.take().is_empty());
    pair.advance(Duration::from_secs(1));
    let r = pair.take_one();
    let Header::NopIn(h) = r.header.clone() else {
        panic!("{r:?}")
    };
    assert_eq!(h.itt, RESERVED_TAG);
    assert_ne!(h.ttt, RESERVED_TAG);
    assert!(r.data.is_empty());
    assert_eq!(
        h.stat_sn,
        FIRST_STAT_SN + 2,
        "a ping does not take a StatSN"
    );
    assert_eq!(
        pair.conn.poll_timeout(),
        Some(pair.now + Duration::from_secs(30))
    );
    pair.nop_out(RESERVED_TAG, h.ttt, true, vec![]);
    assert!(pair.take().is_empty(), "a ping answer is not answered");
    pair.advance(Duration::from_secs(30));
    assert!(pair.closed.is_none());
    // Idle again: another ping.
    assert!(matches!(pair.take_one().header, Header::NopIn(_)));
}

#[test]
fn target_ping_unanswered_closes() {
    let mut pair = logged_in(&[]);
    pair.advance(Duration::from_secs(15));
    assert_eq!(pair.take().len(), 1);
    // Other traffic is not an answer.
    pair.nop_out(5, RESERVED_TAG, true, vec![]);
    pair.take();
    pair.advance(Duration::from_secs(29));
    assert!(pair.closed.is_none());
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.closed, Some(CloseReason::Timeout));
}
