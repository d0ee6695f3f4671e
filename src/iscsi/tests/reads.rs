//! Reads: Data-In split by MaxRecvDataSegmentLength, sense data and residuals.

use super::*;

#[test]
fn read_data_in_split_by_mrdsl_with_f_bits_at_bursts() {
    let mut pair = logged_in(&[
        ("MaxRecvDataSegmentLength", "4096"),
        ("MaxBurstLength", "8192"),
    ]);
    let data = pattern(20480, 5);
    pair.backend.luns.insert(0, {
        let mut d = vec![0; 64 * BLOCK];
        d[..20480].copy_from_slice(&data);
        d
    });
    let cmd = pair.command(4, read10(0, 40), true, false, 20480);
    pair.send_command(cmd, vec![]);
    let pdus = pair.take();
    assert_eq!(pdus.len(), 5);
    let mut got = Vec::new();
    for (i, p) in pdus.iter().enumerate() {
        let h = data_in(p);
        assert_eq!(h.data_sn, i as u32);
        assert_eq!(h.buffer_offset, 4096 * i as u32);
        assert_eq!(p.data.len(), 4096);
        assert_eq!(h.itt, 4);
        assert_eq!(h.ttt, RESERVED_TAG);
        let last = i == 4;
        assert_eq!(h.final_flag, i == 1 || i == 3 || last, "F bit on PDU {i}");
        assert_eq!(h.status_present, last);
        if last {
            assert_eq!(
                (h.status, h.stat_sn, h.residual_count),
                (0, FIRST_STAT_SN + 2, 0)
            );
            assert!(!h.overflow && !h.underflow);
        }
        got.extend_from_slice(&p.data);
    }
    assert_eq!(got, data);
}

#[test]
fn read_with_sense_sends_a_separate_response() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(4, read10(0, 2), true, false, 1024);
    pair.send_command(cmd, vec![]);
    let id = pair.deferred[0].id;
    let mut outcome = ScsiOutcome::check_condition(0x03, 0x11, 0x00);
    outcome.data_in = mem_ffi::Buf::copy_from_slice(&[7; 512]).into();
    pair.complete_deferred(id, outcome.clone());
    let pdus = pair.take();
    assert_eq!(pdus.len(), 2);
    let d = data_in(&pdus[0]);
    assert!(!d.status_present && d.final_flag);
    assert_eq!(pdus[0].data, vec![7; 512]);
    let h = scsi_response(&pdus[1]);
    assert_eq!(h.status, 2);
    assert_eq!(h.exp_data_sn, 1);
    assert!(h.underflow);
    assert_eq!(h.residual_count, 512);
    assert_eq!(h.stat_sn, FIRST_STAT_SN + 2);
    let mut expected = vec![0, 18];
    expected.extend_from_slice(&outcome.sense);
    assert_eq!(pdus[1].data, expected);
}

#[test]
fn read_residual_overflow_and_underflow() {
    let mut pair = logged_in(&[]);
    pair.auto_complete = false;
    let cmd = pair.command(1, read10(0, 4), true, false, 1024);
    pair.send_command(cmd, vec![]);
    let id = pair.deferred[0].id;
    pair.complete_deferred(
        id,
        ScsiOutcome {
            data_in: mem_ffi::Buf::copy_from_slice(&pattern(2048, 1)).into(),
            ..ScsiOutcome::good()
        },
    );
    let p = pair.take_one();
    let h = data_in(&p);
    assert_eq!(
        p.data,
        pattern(2048, 1)[..1024].to_vec(),
        "only EDTL bytes are sent"
    );
    assert!(h.status_present && h.overflow && !h.underflow);
    assert_eq!(h.residual_count, 1024);

    let cmd = pair.command(2, read10(0, 4), true, false, 2048);
    pair.send_command(cmd, vec![]);
    let id = pair.deferred[0].id;
    pair.complete_deferred(
        id,
        ScsiOutcome {
            data_in: mem_ffi::Buf::copy_from_slice(&pattern(1024, 1)).into(),
            ..ScsiOutcome::good()
        },
    );
    let p = pair.take_one();
    let h = data_in(&p);
    assert!(h.status_present && h.underflow && !h.overflow);
    assert_eq!(h.residual_count, 1024);

    // No data at all for a read: a SCSI Response with the whole EDTL as underflow.
    let cmd = pair.command(3, read10(0, 4), true, false, 2048);
    pair.send_command(cmd, vec![]);
    let id = pair.deferred[0].id;
    pair.complete_deferred(id, ScsiOutcome::good());
    let h = scsi_response(&pair.take_one()).clone();
    assert!(h.underflow);
    assert_eq!(h.residual_count, 2048);
}
