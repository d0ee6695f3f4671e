//! Bad input: rejected opcodes, duplicate ITTs and frame errors.

use super::*;

#[test]
fn snack_and_target_opcodes_are_rejected() {
    let mut pair = logged_in(&[]);
    pair.send(Pdu::new(Header::SnackRequest(SnackRequest {
        itt: 3,
        ..Default::default()
    })));
    let r = pair.take_one();
    assert_eq!(reject_reason(&r), 0x03);
    assert_eq!(sequence(&r).0, FIRST_STAT_SN + 2);
    assert_eq!(
        r.data.len(),
        pdu::BHS_LEN,
        "the Reject carries the offending header"
    );
    assert_eq!(r.data[0] & 0x3f, 0x10);
    pair.send(Pdu::new(Header::NopIn(pdu::NopIn::default())));
    assert_eq!(reject_reason(&pair.take_one()), 0x04);
    pair.send(Pdu::new(Header::ScsiResponse(pdu::ScsiResponse::default())));
    assert_eq!(reject_reason(&pair.take_one()), 0x04);
    assert!(pair.closed.is_none());
}

#[test]
fn duplicate_itt_is_rejected() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    let cmd = pair.command(1, vec![0; 16], false, false, 0);
    pair.send_command(cmd, vec![]);
    assert_eq!(reject_reason(&pair.take_one()), 0x09);
    assert_eq!(pair.executed.len(), 1);
}

#[test]
fn frame_errors_reject_or_close() {
    let mut pair = logged_in(&[]);
    let mut bytes = framing::encode(&Pdu::new(Header::NopOut(NopOut::default())), &pair.settings);
    bytes[0] = 0x1d; // unknown opcode
    pair.send_bytes(&bytes);
    assert_eq!(reject_reason(&pair.take_one()), 0x05);
    let mut bytes = framing::encode(&Pdu::new(Header::NopOut(NopOut::default())), &pair.settings);
    bytes[0] = 0x03 | 0x40; // login stage 2 is reserved
    bytes[1] = 0x80 | (2 << 2) | 3;
    pair.send_bytes(&bytes);
    assert_eq!(reject_reason(&pair.take_one()), 0x09);
    assert!(pair.closed.is_none());
    let mut bytes = framing::encode(&Pdu::new(Header::NopOut(NopOut::default())), &pair.settings);
    bytes[5..8].copy_from_slice(&[0x10, 0, 0]); // 1 MiB data segment > 256 KiB
    pair.conn.handle_frame_error(
        PduReader::new_with(&bytes)
            .next_pdu(&pair.settings)
            .unwrap_err(),
        pair.now,
    );
    pair.pump();
    assert!(pair.take().is_empty());
    assert!(matches!(pair.closed, Some(CloseReason::ProtocolError(_))));
}

#[test]
fn frame_error_is_fatal_during_login() {
    let mut pair = Pair::new(config());
    pair.conn.handle_frame_error(
        FrameError::DataDigest {
            header: vec![0; 48],
        },
        pair.now,
    );
    pair.pump();
    assert!(matches!(pair.closed, Some(CloseReason::ProtocolError(_))));
}
