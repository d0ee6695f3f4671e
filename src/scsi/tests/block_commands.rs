//! Block commands beyond READ and WRITE: PRE-FETCH, GET LBA STATUS, ORWRITE, WRITE ATOMIC,
//! READ DEFECT DATA, UNMAP, WRITE SAME, COMPARE AND WRITE and VERIFY.

use super::*;

fn cdb16(opcode: u8, flags: u8, lba: u64, len_at: usize, len: &[u8]) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[len_at..len_at + len.len()].copy_from_slice(len);
    c
}

#[test]
fn prefetch() {
    let lu = ram_lu(100, 512);
    let pf10 = |lba: u32, n: u16, immed: bool| {
        let mut c = vec![0x34, if immed { 2 } else { 0 }];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(3); // group number: ignored
        c.extend_from_slice(&n.to_be_bytes());
        c.push(0);
        c
    };
    assert_good(&exec(&lu, &pf10(0, 100, false), &[]));
    assert_good(&exec(&lu, &pf10(99, 1, true), &[]));
    assert_good(&exec(&lu, &pf10(0, 0, false), &[]));
    assert_good(&exec(&lu, &pf10(100, 0, false), &[]));
    for c in [
        pf10(99, 2, false),
        pf10(101, 0, false),
        pf10(u32::MAX, 1, false),
    ] {
        assert_check(&exec(&lu, &c, &[]), ILLEGAL_REQUEST, LBA_OUT_OF_RANGE);
    }
    assert_good(&exec(
        &lu,
        &cdb16(0x90, 2, 50, 10, &50u32.to_be_bytes()),
        &[],
    ));
    let o = exec(&lu, &cdb16(0x90, 0, u64::MAX, 10, &2u32.to_be_bytes()), &[]);
    assert_check(&o, ILLEGAL_REQUEST, LBA_OUT_OF_RANGE);
}

#[test]
fn get_lba_status() {
    // 4 MiB RAM LU: 1 MiB chunks = 2048 blocks of 512 bytes each.
    let lu = ram_lu(8192, 512);
    let gls =
        |lba: u64, alloc: u32| exec(&lu, &cdb16(0x9E, 0x12, lba, 10, &alloc.to_be_bytes()), &[]);
    let descs = |d: &[u8]| -> Vec<(u64, u32, u8)> {
        assert_eq!(
            u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
            d.len() - 4
        );
        d[8..]
            .chunks(16)
            .map(|c| {
                (
                    u64::from_be_bytes(c[0..8].try_into().unwrap()),
                    u32::from_be_bytes(c[8..12].try_into().unwrap()),
                    c[12],
                )
            })
            .collect()
    };
    let o = gls(5, 1024);
    assert_good(&o);
    assert_eq!(descs(&o.data_in.to_vec()), vec![(5, 8187, 1)]);
    write_blocks(&lu, 2048 + 7, &[1u8; 512]);
    let o = gls(0, 1024);
    assert_eq!(
        descs(&o.data_in.to_vec()),
        vec![(0, 2048, 1), (2048, 2048, 0), (4096, 4096, 1)]
    );
    // Allocation length for one descriptor; a tiny one truncates.
    assert_eq!(
        descs(&gls(2050, 24).data_in.to_vec()),
        vec![(2050, 2046, 0)]
    );
    assert_eq!(gls(0, 4).data_in.len(), 4);
    assert_good(&gls(0, 0));
    assert_eq!(descs(&gls(8191, 24).data_in.to_vec()), vec![(8191, 1, 1)]);
    // UNMAP of a whole chunk deallocates it again.
    let list = unmap_list(&[(2048, 2048)]);
    assert_good(&exec(&lu, &unmap_cdb(list.len()), &list));
    assert_eq!(descs(&gls(0, 1024).data_in.to_vec()), vec![(0, 8192, 1)]);
    assert_check(&gls(8192, 24), ILLEGAL_REQUEST, LBA_OUT_OF_RANGE);
    assert_check(&gls(u64::MAX, 24), ILLEGAL_REQUEST, LBA_OUT_OF_RANGE);
}

#[test]
fn orwrite() {
    let lu = ram_lu(100, 512);
    let orw = |lba: u64, n: u32, flags: u8| cdb16(0x8B, flags, lba, 10, &n.to_be_bytes());
    let data: Vec<u8> = (0..1024).map(|i| (i % 7) as u8).collect();
    write_blocks(&lu, 98, &data);
    let mask = vec![0x50u8; 1024];
    let o = exec(&lu, &orw(98, 2, 0x18), &mask);
    assert_good(&o);
    assert_eq!(o.data_out_length, 1024);
    let expect: Vec<u8> = data.iter().map(|b| b | 0x50).collect();
    assert_eq!(read_blocks(&lu, 98, 2), expect);
    assert_good(&exec(&lu, &orw(0, 0, 0), &[]));
    assert_check(
        &exec(&lu, &orw(99, 2, 0), &mask),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_check(
        &exec(&lu, &orw(0, 1, 0x20), &mask),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &orw(0, 2, 0), &mask[..512]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CIU,
    );
    let c = orw(0, 1, 0);
    let r = lu.plan(&req(0, &c, &mask));
    let Plan::Io { request, .. } = r else {
        panic!("ORWRITE needs I/O")
    };
    assert!(request.needs_exclusive());
    assert!(runs_exclusively(&c));
}

#[test]
fn write_atomic() {
    let lu = ram_lu(4096, 512);
    let wa = |lba: u64, n: u16, flags: u8| cdb16(0x9C, flags, lba, 12, &n.to_be_bytes());
    let data = vec![0x5Au8; 1024];
    assert_good(&exec(&lu, &wa(10, 2, 0x08), &data));
    assert_eq!(read_blocks(&lu, 10, 2), data);
    assert_good(&exec(&lu, &wa(0, 0, 0), &[]));
    assert_check(
        &exec(&lu, &wa(4095, 2, 0), &data),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_check(
        &exec(&lu, &wa(0, 1, 0x40), &data),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // Atomic boundary unsupported; length above MAXIMUM ATOMIC TRANSFER LENGTH.
    let mut c = wa(0, 1, 0);
    c[11] = 1;
    assert_check(&exec(&lu, &c, &data), ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
    assert_check(
        &exec(&lu, &wa(0, 2049, 0), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // VPD B0h reports the limit it enforces (bytes 44..48).
    let o = exec(&lu, &inquiry(true, 0xB0, 64), &[]);
    assert_eq!(
        u32::from_be_bytes(o.data_in.to_vec()[44..48].try_into().unwrap()),
        2048
    );
    let c = wa(0, 1, 0);
    let Plan::Io { request, .. } = lu.plan(&req(0, &c, &data)) else {
        panic!("WRITE ATOMIC needs I/O")
    };
    assert!(request.needs_exclusive());
    assert!(runs_exclusively(&c));
    let mut p = params(0, 512);
    p.read_only = true;
    let ro = LogicalUnit::new(p, Arc::new(RamBackend::new(1 << 20)));
    assert_check(&exec(&ro, &wa(0, 1, 0), &data), DATA_PROTECT, (0x27, 0));
    assert_check(
        &exec(&ro, &cdb16(0x8B, 0, 0, 10, &1u32.to_be_bytes()), &data),
        DATA_PROTECT,
        (0x27, 0),
    );
}

#[test]
fn read_defect_data() {
    let lu = ram_lu(100, 512);
    let o = exec(&lu, &[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 32, 0], &[]);
    assert_good(&o);
    assert_eq!(o.data_in, [0, 0x1D, 0, 0]);
    let o = exec(&lu, &[0x37, 0, 0x05, 0, 0, 0, 0, 0, 2, 0], &[]);
    assert_eq!(o.data_in, [0, 0x05]);
    let o = exec(&lu, &[0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[]);
    assert_good(&o);
    assert_eq!(o.data_in, [0, 0x0C, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn unmap() {
    let lu = ram_lu(16384, 512);
    write_blocks(&lu, 0, &vec![0xEE; 64 * 512]);
    let list = unmap_list(&[(1, 2), (10, 0), (20, 5)]);
    let o = exec(&lu, &unmap_cdb(list.len()), &list);
    assert_good(&o);
    assert_eq!(o.data_out_length as usize, list.len());
    let d = read_blocks(&lu, 0, 30);
    for (i, blk) in d.chunks(512).enumerate() {
        let zero = (1..3).contains(&i) || (20..25).contains(&i);
        assert!(
            blk.iter().all(|&b| b == if zero { 0 } else { 0xEE }),
            "block {i}"
        );
    }
    // Whole-chunk discards free memory: write 4 MiB and unmap it all.
    write_blocks(&lu, 2048, &vec![1; 4 << 20]);
    let list = unmap_list(&[(0, 16384)]);
    assert_good(&exec(&lu, &unmap_cdb(list.len()), &list));
    assert!(read_blocks(&lu, 2048, 16).iter().all(|&b| b == 0));
    // Errors.
    let list = unmap_list(&[(16383, 2)]);
    assert_check(
        &exec(&lu, &unmap_cdb(list.len()), &list),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    let list = unmap_list(&vec![(0, 1); 257]);
    assert_check(
        &exec(&lu, &unmap_cdb(list.len()), &list),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    assert_check(
        &exec(&lu, &unmap_cdb(4), &[0; 4]),
        ILLEGAL_REQUEST,
        PARAMETER_LIST_LENGTH_ERROR,
    );
    assert_check(
        &exec(&lu, &unmap_cdb(24), &[0; 8]),
        ILLEGAL_REQUEST,
        PARAMETER_LIST_LENGTH_ERROR,
    );
    assert_check(
        &exec(&lu, &[0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0], &list),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_good(&exec(&lu, &unmap_cdb(0), &[]));
    let small = ram_lu(1 << 22, 512);
    let list = unmap_list(&[(0, (1 << 20) + 1)]);
    assert_check(
        &exec(&small, &unmap_cdb(list.len()), &list),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
}

#[test]
fn write_same() {
    let lu = ram_lu(1024, 512);
    let pattern: Vec<u8> = (0..512).map(|i| i as u8).collect();
    // WRITE SAME(10): 8 blocks of the pattern.
    let o = exec(&lu, &[0x41, 0, 0, 0, 0, 4, 0, 0, 8, 0], &pattern);
    assert_good(&o);
    assert_eq!(o.data_out_length, 512);
    let d = read_blocks(&lu, 3, 10);
    assert!(d[..512].iter().all(|&b| b == 0));
    for blk in d[512..9 * 512].chunks(512) {
        assert_eq!(blk, &pattern[..]);
    }
    // WRITE SAME(16) with UNMAP and zero data deallocates.
    let mut ws16 = vec![0u8; 16];
    ws16[0] = 0x93;
    ws16[1] = 0x08;
    ws16[9] = 4;
    ws16[13] = 8;
    assert_good(&exec(&lu, &ws16, &[0; 512]));
    assert!(read_blocks(&lu, 4, 8).iter().all(|&b| b == 0));
    // NDOB: no Data-Out, zeroes.
    assert_good(&exec(&lu, &[0x41, 0, 0, 0, 0, 100, 0, 0, 2, 0], &pattern));
    ws16[1] = 0x01;
    ws16[9] = 100;
    ws16[13] = 2;
    let o = exec(&lu, &ws16, &[]);
    assert_good(&o);
    assert_eq!(o.data_out_length, 0);
    assert!(read_blocks(&lu, 100, 2).iter().all(|&b| b == 0));
    // Data-Out must be exactly one block.
    let two = [pattern.clone(), pattern.clone()].concat();
    assert_check(
        &exec(&lu, &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], &two),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // Zero blocks past the end is out of range, not a WSNZ violation.
    assert_check(
        &exec(&lu, &[0x41, 0, 0, 0, 0x04, 0x01, 0, 0, 0, 0], &pattern),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    // Errors: zero blocks (WSNZ), beyond the end, ANCHOR, missing data.
    assert_check(
        &exec(&lu, &[0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0], &pattern),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &[0x41, 0, 0, 0, 0x03, 0xFF, 0, 0, 2, 0], &pattern),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_check(
        &exec(&lu, &[0x41, 0x10, 0, 0, 0, 0, 0, 0, 1, 0], &pattern),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], &pattern[..100]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
}

fn caw_cdb(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

#[test]
fn compare_and_write() {
    let lu = ram_lu(64, 512);
    write_blocks(&lu, 5, &[b'a'; 1024]);
    let mut buf = vec![b'a'; 1024];
    buf.extend(vec![b'b'; 1024]);
    let o = exec(&lu, &caw_cdb(5, 2), &buf);
    assert_good(&o);
    assert_eq!(o.data_out_length, 2048);
    assert_eq!(read_blocks(&lu, 5, 2), vec![b'b'; 1024]);
    // Miscompare: INFORMATION = offset of the first differing byte; nothing written.
    let mut buf = vec![b'b'; 1024];
    buf[700] = b'x';
    buf.extend(vec![b'c'; 1024]);
    let o = exec(&lu, &caw_cdb(5, 2), &buf);
    assert_check(&o, MISCOMPARE, MISCOMPARE_DURING_VERIFY);
    assert_eq!(o.sense[0], 0xF0);
    assert_eq!(&o.sense[3..7], &700u32.to_be_bytes());
    assert_eq!(read_blocks(&lu, 5, 2), vec![b'b'; 1024]);
    // Limits and short data.
    assert_good(&exec(&lu, &caw_cdb(5, 0), &[]));
    // libiscsi's "256 blocks" wraps byte 13 to 0 but still sends data: a length mismatch.
    assert_check(
        &exec(&lu, &caw_cdb(5, 0), &buf[..1024]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &caw_cdb(63, 2), &buf),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    assert_check(
        &exec(&lu, &caw_cdb(0, 129), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &caw_cdb(5, 2), &buf[..2000]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // Too much Data-Out is rejected as well (EDTL must be exactly 2 x blocks).
    assert_check(
        &exec(&lu, &caw_cdb(5, 1), &buf),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_eq!(read_blocks(&lu, 5, 2), vec![b'b'; 1024]);
}

#[test]
fn compare_and_write_is_atomic() {
    // Each thread increments a counter in block 0 with read + COMPARE AND WRITE, retrying
    // on miscompare; any non-atomic CAW would lose increments.
    let lu = ram_lu(64, 512);
    let threads = 4;
    let per_thread = 200u64;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut done = 0;
                while done < per_thread {
                    let cur = read_blocks(&lu, 0, 1);
                    let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
                    let mut buf = cur.clone();
                    buf.extend_from_slice(&(v + 1).to_le_bytes());
                    buf.resize(1024, 0);
                    let o = exec(&lu, &caw_cdb(0, 1), &buf);
                    if o.status == status::GOOD {
                        done += 1;
                    } else {
                        assert_eq!(o.sense_key(), MISCOMPARE);
                    }
                }
            });
        }
        // Concurrent plain writers elsewhere on the LU.
        s.spawn(|| {
            for i in 0..200 {
                write_blocks(&lu, 1 + i % 60, &[i as u8; 512]);
            }
        });
    });
    let d = read_blocks(&lu, 0, 1);
    assert_eq!(
        u64::from_le_bytes(d[..8].try_into().unwrap()),
        threads * per_thread
    );
}

#[test]
fn verify() {
    let lu = ram_lu(64, 512);
    write_blocks(&lu, 2, &[7; 1024]);
    // BYTCHK 0: range check only.
    assert_good(&exec(&lu, &[0x2F, 0, 0, 0, 0, 2, 0, 0, 2, 0], &[]));
    assert_check(
        &exec(&lu, &[0x2F, 0, 0, 0, 0, 63, 0, 0, 2, 0], &[]),
        ILLEGAL_REQUEST,
        LBA_OUT_OF_RANGE,
    );
    // BYTCHK 1: compare.
    let o = exec(&lu, &[0x2F, 0x02, 0, 0, 0, 2, 0, 0, 2, 0], &[7; 1024]);
    assert_good(&o);
    assert_eq!(o.data_out_length, 1024);
    let mut d = vec![7u8; 1024];
    d[600] = 8;
    let o = exec(&lu, &[0xAF, 0x02, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0], &d);
    assert_check(&o, MISCOMPARE, MISCOMPARE_DURING_VERIFY);
    assert_eq!(&o.sense[3..7], &600u32.to_be_bytes());
    let mut v16 = read16(2, 2);
    v16[0] = 0x8F;
    v16[1] = 0x02;
    assert_check(
        &exec(&lu, &v16, &d[..512]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CIU,
    );
    v16[1] = 0x06;
    assert_check(&exec(&lu, &v16, &d), ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
}
