//! Identification: TEST UNIT READY, INQUIRY and its VPD pages, REPORT LUNS and LUN
//! encoding, READ CAPACITY.

use super::*;

#[test]
fn test_unit_ready_and_unknown_opcodes() {
    let lu = ram_lu(64, 512);
    assert_good(&exec(&lu, &[0x00], &[]));
    for cdb in [
        &[0x7Fu8][..],
        &[0xC0],
        &[0x9E, 0x13],
        &[0xA3, 0x05],
        &[0x3C],
        &[0xA0],
    ] {
        assert_check(
            &exec(&lu, cdb, &[]),
            ILLEGAL_REQUEST,
            INVALID_COMMAND_OPCODE,
        );
    }
    // A CDB shorter than its opcode's length is rejected, not decoded.
    let o = lu.execute(&req(0, &[0x28, 0, 0], &[]));
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
    let o = lu.execute(&req(0, &[], &[]));
    assert_check(&o, ILLEGAL_REQUEST, INVALID_COMMAND_OPCODE);
}

#[test]
fn standard_inquiry() {
    let lu = ram_lu(64, 512);
    let o = exec(&lu, &inquiry(false, 0, 255), &[]);
    assert_good(&o);
    let d = &o.data_in.to_vec();
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 0x06);
    assert_eq!(d[3], 0x12);
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"ISERTGT ");
    assert_eq!(&d[16..32], b"RAMDISK         ");
    assert_eq!(&d[32..36], b"0001");
    assert!(d[58..74].windows(2).any(|w| w == [0x04, 0xC0]));
    assert_eq!(exec(&lu, &inquiry(false, 0, 36), &[]).data_in.len(), 36);
    assert_eq!(exec(&lu, &inquiry(false, 0, 0), &[]).data_in.len(), 0);
    // CmdDt, or a page code without EVPD, is an invalid field.
    let o = exec(&lu, &[0x12, 0x02, 0, 0, 96, 0], &[]);
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
    assert_eq!(o.sense[15] & 0xC0, 0xC0);
    assert_check(
        &exec(&lu, &inquiry(false, 0x80, 96), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn vpd_pages() {
    let lu = ram_lu(64, 512);
    let vpd = |page| {
        let o = exec(&lu, &inquiry(true, page, 1024), &[]);
        assert_good(&o);
        let d = o.data_in.to_vec();
        assert_eq!(d[1], page);
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        assert_eq!(d.len(), len + 4);
        d
    };
    let p0 = vpd(0x00);
    assert_eq!(&p0[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    for &page in &p0[4..] {
        vpd(page);
    }
    assert_eq!(&vpd(0x80)[4..], b"SER00000");
    let p83 = vpd(0x83);
    assert_eq!(&p83[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(p83[8] >> 4, 5, "NAA 5");
    assert_eq!(&p83[12..16], &[0, 0, 0, 0]);
    assert_eq!(&p83[16..20], &[0x02, 0x01, 0x00, 16]);
    assert_eq!(&p83[20..28], b"ISERTGT ");
    let b0 = vpd(0xB0);
    assert_eq!(b0.len(), 64);
    assert_eq!(b0[4] & 1, 1, "WSNZ");
    assert_eq!(b0[5], crate::scsi::block::limits::MAX_COMPARE_AND_WRITE);
    let be32 = |at: usize| u32::from_be_bytes([b0[at], b0[at + 1], b0[at + 2], b0[at + 3]]);
    assert_eq!(be32(8), (8 << 20) / 512);
    assert!(be32(12) > 0);
    assert!(be32(20) > 0, "max unmap lba count");
    assert_eq!(be32(24), 256, "max unmap descriptors");
    assert!(u64::from_be_bytes(b0[36..44].try_into().unwrap()) > 0);
    let b1 = vpd(0xB1);
    assert_eq!(b1.len(), 64);
    assert_eq!(&b1[4..6], &[0, 1]);
    let b2 = vpd(0xB2);
    assert_eq!(b2.len(), 8);
    assert_eq!(b2[5] & 0xE4, 0xE4);
    assert_check(
        &exec(&lu, &inquiry(true, 0x89, 255), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // Allocation length is honoured.
    assert_eq!(exec(&lu, &inquiry(true, 0xB0, 16), &[]).data_in.len(), 16);
}

#[test]
fn missing_lun_and_report_luns() {
    let mk = |lun| {
        Arc::new(LogicalUnit::new(
            params(lun, 512),
            Arc::new(RamBackend::new(1 << 20)),
        ))
    };
    let t = ScsiTarget::new(vec![mk(300), mk(0), mk(5)]);
    assert_eq!(
        t.luns().iter().map(|l| l.params().lun).collect::<Vec<_>>(),
        [0, 5, 300]
    );
    let inq = inquiry(false, 0, 96);
    let o = t.execute(&req(7, &inq, &[]));
    assert_good(&o);
    assert_eq!(o.data_in.to_vec()[0], 0x7F);
    assert_check(
        &t.execute(&req(7, &[0; 16], &[])),
        ILLEGAL_REQUEST,
        LU_NOT_SUPPORTED,
    );
    assert_check(
        &t.execute(&req(u64::MAX, &[0; 16], &[])),
        ILLEGAL_REQUEST,
        LU_NOT_SUPPORTED,
    );
    let o = t.execute(&req(7, &[0x03, 0, 0, 0, 18, 0], &[]));
    assert_good(&o);
    assert_eq!(
        (o.data_in.to_vec()[12], o.data_in.to_vec()[2]),
        (0x25, ILLEGAL_REQUEST)
    );
    assert_good(&t.execute(&req(5, &[0; 16], &[])));

    let rl = |select: u8, alloc: u32| {
        let mut c = vec![0xA0, 0, select, 0, 0, 0];
        c.extend_from_slice(&alloc.to_be_bytes());
        c.extend_from_slice(&[0, 0]);
        c
    };
    // REPORT LUNS works whatever LUN it is addressed to.
    let o = t.execute(&req(99, &rl(0, 4096), &[]));
    assert_good(&o);
    assert_eq!(&o.data_in.to_vec()[0..4], &24u32.to_be_bytes());
    assert_eq!(&o.data_in.to_vec()[8..16], &[0; 8]);
    assert_eq!(&o.data_in.to_vec()[16..24], &[0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&o.data_in.to_vec()[24..32], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    assert_eq!(t.execute(&req(0, &rl(2, 16), &[])).data_in.len(), 16);
    let o = t.execute(&req(0, &rl(1, 16), &[]));
    assert_eq!(&o.data_in.to_vec()[0..4], &[0; 4]);
    assert_check(
        &t.execute(&req(0, &rl(0, 15), &[])),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &t.execute(&req(0, &rl(3, 64), &[])),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    t.flush_all().unwrap();
}

#[test]
fn lun_encoding_round_trips() {
    for lun in [0u64, 1, 255, 256, 300, 16383, 16384, 0xFF_FFFF] {
        assert_eq!(decode_lun(&encode_lun(lun)), lun);
    }
    assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode_lun(300), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    assert_eq!(decode_lun(&[0x80, 0, 0, 0, 0, 0, 0, 0]), u64::MAX);
    assert_eq!(decode_lun(&[0, 1, 0, 0, 0, 0, 0, 1]), u64::MAX);
}

#[test]
fn read_capacity() {
    let lu = ram_lu(1000, 4096);
    let o = exec(&lu, &[0x25], &[]);
    assert_good(&o);
    assert_eq!(o.data_in, [0, 0, 0x03, 0xE7, 0, 0, 0x10, 0]);
    assert_check(
        &exec(&lu, &[0x25, 0, 0, 0, 0, 1], &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    let o = exec(&lu, &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32], &[]);
    assert_good(&o);
    assert_eq!(o.data_in.len(), 32);
    assert_eq!(&o.data_in.to_vec()[0..8], &999u64.to_be_bytes());
    assert_eq!(&o.data_in.to_vec()[8..12], &4096u32.to_be_bytes());
    assert_eq!(o.data_in.to_vec()[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let o = exec(&lu, &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12], &[]);
    assert_eq!(o.data_in.len(), 12);
}
