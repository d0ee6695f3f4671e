//! REPORT SUPPORTED OPERATION CODES and the housekeeping commands: REQUEST SENSE,
//! START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL.

use super::*;

fn rsoc(options: u8, opcode: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, 0x0C, options, opcode];
    c.extend_from_slice(&sa.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn report_supported_operation_codes() {
    let lu = ram_lu(100, 512);
    let o = exec(&lu, &rsoc(0, 0, 0, 65535), &[]);
    assert_good(&o);
    let d = &o.data_in.to_vec();
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(d.len(), len + 4);
    assert_eq!(len % 8, 0);
    for desc in d[4..].chunks(8) {
        let opcode = desc[0];
        let servactv = desc[5] & 0x01 != 0;
        let sa = u16::from_be_bytes([desc[2], desc[3]]);
        let cdb_len = u16::from_be_bytes([desc[6], desc[7]]);
        let one = exec(
            &lu,
            &rsoc(if servactv { 2 } else { 1 }, opcode, sa, 64),
            &[],
        );
        assert_good(&one);
        assert_eq!(one.data_in.to_vec()[1] & 0x03, 0x03, "opcode {opcode:#x}");
        assert_eq!(
            u16::from_be_bytes([one.data_in.to_vec()[2], one.data_in.to_vec()[3]]),
            cdb_len
        );
        assert_eq!(one.data_in.to_vec()[4], opcode);
        assert_eq!(one.data_in.len(), 4 + usize::from(cdb_len));
        // Everything listed really is implemented (no INVALID COMMAND OPERATION CODE).
        let mut probe = vec![0u8; 16];
        probe[0] = opcode;
        probe[1] = sa as u8;
        let t = ScsiTarget::new(vec![lu.clone()]);
        let r = t.execute(&req(0, &probe, &[]));
        assert_ne!(r.asc_ascq(), INVALID_COMMAND_OPCODE, "opcode {opcode:#x}");
    }
    assert!(d[4..]
        .chunks(8)
        .any(|c| c[0] == 0x9E && c[2..4] == [0, 0x10] && c[5] & 1 == 1));
    // With RCTD: 20-byte descriptors with CTDP and a timeouts descriptor.
    let o = exec(&lu, &rsoc(0x80, 0, 0, 65535), &[]);
    let d = &o.data_in.to_vec();
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize % 20,
        0
    );
    assert_eq!(d[4 + 5] & 0x02, 0x02);
    assert_eq!(&d[4 + 8..4 + 10], &[0, 0x0A]);
    // Linux's WRITE SAME probe: reporting option 1, allocation = CDB size + 4.
    let o = exec(&lu, &rsoc(1, 0x93, 0, 20), &[]);
    assert_eq!(o.data_in.to_vec()[1] & 3, 3);
    assert_eq!(o.data_in.len(), 20);
    let o = exec(&lu, &rsoc(0x81, 0x28, 0, 64), &[]);
    assert_eq!(o.data_in.to_vec()[1], 0x83);
    assert_eq!(o.data_in.len(), 4 + 10 + 12);
    // Not supported, wrong option for the opcode, bad option, tiny allocation.
    assert_eq!(exec(&lu, &rsoc(1, 0x3C, 0, 64), &[]).data_in, [0, 1, 0, 0]);
    assert_eq!(
        exec(&lu, &rsoc(2, 0x9E, 0x13, 64), &[]).data_in,
        [0, 1, 0, 0]
    );
    assert_eq!(
        exec(&lu, &rsoc(3, 0x28, 0x55, 64), &[]).data_in.to_vec()[1] & 3,
        3
    );
    assert_check(
        &exec(&lu, &rsoc(1, 0x9E, 0, 64), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &rsoc(2, 0x28, 0, 64), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &rsoc(4, 0, 0, 64), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_eq!(exec(&lu, &rsoc(0, 0, 0, 2), &[]).data_in.len(), 2);
}

#[test]
fn misc_commands() {
    let lu = ram_lu(100, 512);
    let o = exec(&lu, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_good(&o);
    assert_eq!(o.data_in.len(), 18);
    assert_eq!(
        (
            o.data_in.to_vec()[0],
            o.data_in.to_vec()[2],
            o.data_in.to_vec()[12]
        ),
        (0x70, 0, 0)
    );
    assert_eq!(exec(&lu, &[0x03, 1, 0, 0, 8, 0], &[]).data_in.len(), 8);
    assert_good(&exec(&lu, &[0x1B, 0, 0, 0, 1, 0], &[]));
    assert_good(&exec(&lu, &[0x1B, 1, 0, 0, 0x13, 0], &[]));
    assert_check(
        &exec(&lu, &[0x1B, 1, 0, 0, 0x02, 0], &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_good(&exec(&lu, &[0x1B, 1, 0, 0, 0x13, 0], &[]));
    assert_check(
        &exec(&lu, &[0x1B, 1, 0, 0, 0x02, 0], &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_good(&exec(&lu, &[0x1E, 0, 0, 0, 1, 0], &[]));
    assert_check(
        &exec(&lu, &[0x1E, 0, 0, 0, 2, 0], &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
}
