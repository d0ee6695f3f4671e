//! READ and WRITE: every CDB size, transfer lengths, short Data-Out, FUA and write-through,
//! read-only LUNs.

use super::*;

#[test]
fn write_read_round_trip_all_sizes() {
    for bs in [512u32, 4096] {
        let lu = ram_lu(256, bs);
        let bsz = bs as usize;
        let data: Vec<u8> = (0..4 * bsz).map(|i| (i * 7 % 256) as u8).collect();
        // WRITE(10) at LBA 10, READ(12)/(16)/(10)/(6) back.
        let o = exec(&lu, &[0x2A, 0, 0, 0, 0, 10, 0, 0, 4, 0], &data);
        assert_good(&o);
        assert_eq!(o.data_out_length as usize, data.len());
        for cdb in [
            vec![0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0],
            vec![0xA8, 0, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0],
            read16(10, 4),
            vec![0x08, 0, 0, 10, 4, 0],
        ] {
            let o = exec(&lu, &cdb, &[]);
            assert_good(&o);
            assert_eq!(o.data_in, data, "cdb {cdb:02x?}");
            assert_eq!(o.data_out_length, 0);
        }
        // WRITE(12), WRITE(6), WRITE AND VERIFY(16).
        assert_good(&exec(
            &lu,
            &[0xAA, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0],
            &data[..bsz],
        ));
        assert_good(&exec(&lu, &[0x0A, 0, 0, 21, 1, 0], &data[bsz..2 * bsz]));
        let mut wv = write16(22, 1, false);
        wv[0] = 0x8E;
        assert_good(&exec(&lu, &wv, &data[2 * bsz..3 * bsz]));
        assert_eq!(read_blocks(&lu, 20, 3), data[..3 * bsz]);
        // Last block is fine, one past is out of range.
        write_blocks(&lu, 255, &data[..bsz]);
        assert_eq!(read_blocks(&lu, 255, 1), data[..bsz]);
        assert_check(
            &exec(&lu, &read16(255, 2), &[]),
            ILLEGAL_REQUEST,
            LBA_OUT_OF_RANGE,
        );
        assert_check(
            &exec(&lu, &write16(256, 1, false), &data[..bsz]),
            ILLEGAL_REQUEST,
            LBA_OUT_OF_RANGE,
        );
    }
}

#[test]
fn transfer_length_edge_cases() {
    let lu = ram_lu(512, 512);
    // Length 0: GOOD, no data (but READ(6) 0 means 256 blocks).
    let o = exec(&lu, &[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_good(&o);
    assert!(o.data_in.is_empty());
    assert_good(&exec(&lu, &read16(512, 0), &[]));
    assert_check(
        &exec(&lu, &read16(513, 0), &[]),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_eq!(
        exec(&lu, &[0x08, 0, 0, 0, 0, 0], &[]).data_in.len(),
        256 * 512
    );
    // Overflowing LBAs are out of range, not panics.
    assert_check(
        &exec(&lu, &read16(u64::MAX, 1), &[]),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_check(
        &exec(&lu, &read16(u64::MAX - 1, 2), &[]),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    // Beyond the VPD B0 maximum transfer length.
    let o = exec(&lu, &read16(0, 16385), &[]);
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
    assert_eq!(&o.sense[16..18], &[0, 10]);
    // RDPROTECT / WRPROTECT without protection information.
    assert_check(
        &exec(&lu, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &[0x2A, 0x40, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn write_with_short_data_out_writes_what_arrived() {
    let lu = ram_lu(16, 512);
    write_blocks(&lu, 0, &[b'a'; 1024]);
    // Two blocks requested, one block of Data-Out (EDTL = 512): GOOD, only block 0 written.
    let o = exec(&lu, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0], &[b'b'; 512]);
    assert_good(&o);
    assert_eq!(o.data_out_length, 1024);
    let d = read_blocks(&lu, 0, 2);
    assert!(d[..512].iter().all(|&b| b == b'b'));
    assert!(d[512..].iter().all(|&b| b == b'a'));
    // EDTL 0 and a partial block: GOOD, nothing written.
    assert_good(&exec(&lu, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
    assert_good(&exec(&lu, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[b'c'; 200]));
    assert_eq!(read_blocks(&lu, 0, 1), vec![b'b'; 512]);
    // More Data-Out than needed: only the CDB's blocks are written.
    assert_good(&exec(
        &lu,
        &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
        &[b'd'; 1024],
    ));
    assert_eq!(read_blocks(&lu, 2, 1), vec![0; 512]);
}

#[test]
fn fua_and_write_through_flush() {
    let be = Arc::new(ProbeBackend::new(1 << 20));
    let lu = LogicalUnit::new(params(0, 512), be.clone());
    let flushes = || be.flushes.load(Ordering::SeqCst);
    write_blocks(&lu, 0, &[1; 512]);
    assert_eq!(flushes(), 0, "WCE=1 without FUA does not flush");
    assert_good(&exec(&lu, &write16(0, 1, true), &[1; 512]));
    assert_eq!(flushes(), 1, "FUA flushes");
    assert_good(&exec(&lu, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(flushes(), 2, "SYNCHRONIZE CACHE flushes");
    assert_check(
        &exec(&lu, &[0x35, 0, 0, 0, 0x10, 0, 0, 0, 0, 0], &[]),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_check(
        &exec(
            &lu,
            &[0x91, 0, 0, 0, 0, 0, 0, 0, 0x07, 0xFF, 0, 0, 0, 2, 0, 0],
            &[],
        ),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    lu.set_write_cache(false, &TEST_NEXUS);
    write_blocks(&lu, 0, &[1; 512]);
    assert_eq!(flushes(), 3, "write-through flushes every write");
}

#[test]
fn read_only_lun() {
    let mut p = params(0, 512);
    p.read_only = true;
    let lu = LogicalUnit::new(p, Arc::new(RamBackend::new(1 << 20)));
    assert_good(&exec(&lu, &read16(0, 1), &[]));
    let prot = (0x27, 0x00);
    assert_check(
        &exec(&lu, &write16(0, 1, false), &[0; 512]),
        DATA_PROTECT,
        prot,
    );
    assert_check(
        &exec(&lu, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24]),
        DATA_PROTECT,
        prot,
    );
    assert_check(
        &exec(&lu, &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]),
        DATA_PROTECT,
        prot,
    );
    let mut caw = vec![0u8; 16];
    caw[0] = 0x89;
    caw[13] = 1;
    assert_check(&exec(&lu, &caw, &[0; 1024]), DATA_PROTECT, prot);
    let o = exec(&lu, &[0x1A, 0, 0x3F, 0, 4, 0], &[]);
    assert_eq!(o.data_in.to_vec()[2], 0x90, "WP and DPOFUA");
}
