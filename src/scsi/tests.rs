//! Command-level tests of the SCSI layer against RAM and file backends.

use super::sense::*;
use super::testutil::*;
use super::*;
use crate::backend::{FileBackend, RamBackend};
use std::sync::atomic::AtomicUsize;

/// A RAM backend that counts flushes, to check FUA / write-through behaviour.
struct CountingBackend {
    inner: RamBackend,
    flushes: AtomicUsize,
}

impl Backend for CountingBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError> {
        self.inner.write_at(data, offset)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.inner.discard(offset, len)
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, u8::from(evpd), page, a[0], a[1], 0]
}

fn write_blocks(lu: &LogicalUnit, lba: u64, data: &[u8]) {
    let blocks = (data.len() / lu.params().block_size as usize) as u32;
    assert_good(&exec(lu, &write16(lba, blocks, false), data));
}

fn read_blocks(lu: &LogicalUnit, lba: u64, blocks: u32) -> Vec<u8> {
    let o = exec(lu, &read16(lba, blocks), &[]);
    assert_good(&o);
    o.data_in.to_vec()
}

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
    assert_eq!(b0[5], super::block::limits::MAX_COMPARE_AND_WRITE);
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
    let be = Arc::new(CountingBackend {
        inner: RamBackend::new(1 << 20),
        flushes: AtomicUsize::new(0),
    });
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
    lu.set_write_cache(false);
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

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    d.extend_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(lba, n) in descs {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    d
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let l = (len as u16).to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
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

fn mode_sense6(flags: u8, page: u8, subpage: u8, alloc: u8) -> Vec<u8> {
    vec![0x1A, flags, page, subpage, alloc, 0]
}

fn mode_sense10(flags: u8, page: u8, subpage: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5A, flags, page, subpage, 0, 0, 0, a[0], a[1], 0]
}

/// Finds page `code` in MODE SENSE data after a header of `hdr` bytes + block descriptors.
fn find_page(d: &[u8], start: usize, code: u8) -> Option<Vec<u8>> {
    let mut pos = start;
    while pos + 2 <= d.len() {
        let len = 2 + usize::from(d[pos + 1]);
        if d[pos] & 0x3F == code {
            return Some(d[pos..pos + len].to_vec());
        }
        pos += len;
    }
    None
}

#[test]
fn mode_sense() {
    let lu = ram_lu(1000, 512);
    let o = exec(&lu, &mode_sense6(0, 0x3F, 0, 255), &[]);
    assert_good(&o);
    let d = &o.data_in.to_vec();
    assert_eq!(usize::from(d[0]), d.len() - 1);
    assert_eq!(d[2], 0x10, "DPOFUA, not WP");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &1000u32.to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0]);
    for code in [0x01, 0x08, 0x0A, 0x1C] {
        assert!(find_page(d, 12, code).is_some(), "page {code:#x}");
    }
    let caching = find_page(d, 12, 0x08).unwrap();
    assert_eq!(caching.len(), 20);
    assert_eq!(caching[2] & 0x04, 0x04);
    let control = find_page(d, 12, 0x0A).unwrap();
    assert_eq!((control.len(), control[2] & 0x04), (12, 0), "fixed sense");
    // Linux's first probe: 4 bytes of page 3Fh.
    assert_eq!(exec(&lu, &mode_sense6(0, 0x3F, 0, 4), &[]).data_in.len(), 4);
    // DBD, all subpages, a single page.
    let o = exec(&lu, &mode_sense6(0x08, 0x08, 0xFF, 255), &[]);
    assert_eq!(o.data_in.len(), 4 + 20);
    assert_eq!(o.data_in.to_vec()[3], 0);
    // Changeable: only WCE. Default follows the configured WCE.
    let o = exec(&lu, &mode_sense6(0x08, 0x40 | 0x08, 0, 255), &[]);
    assert_eq!(o.data_in.to_vec()[4 + 2], 0x04);
    assert!(o.data_in.to_vec()[4 + 3..].iter().all(|&b| b == 0));
    let o = exec(&lu, &mode_sense6(0x08, 0x40 | 0x0A, 0, 255), &[]);
    assert!(o.data_in.to_vec()[4 + 2..].iter().all(|&b| b == 0));
    assert_good(&exec(&lu, &mode_sense6(0x08, 0x80 | 0x3F, 0, 255), &[]));
    // Saved values: not supported.
    assert_check(
        &exec(&lu, &mode_sense6(0, 0xC0 | 0x08, 0, 255), &[]),
        ILLEGAL_REQUEST,
        SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    assert_check(
        &exec(&lu, &mode_sense6(0, 0x05, 0, 255), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &mode_sense6(0, 0x08, 1, 255), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // MODE SENSE(10), short and long (LLBAA) block descriptors.
    let o = exec(&lu, &mode_sense10(0, 0x08, 0, 512), &[]);
    let d = &o.data_in.to_vec();
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])), d.len() - 2);
    assert_eq!((d[4], d[7]), (0, 8));
    assert_eq!(d.len(), 8 + 8 + 20);
    let o = exec(&lu, &mode_sense10(0x10, 0x08, 0, 512), &[]);
    let d = &o.data_in.to_vec();
    assert_eq!((d[4], d[7]), (1, 16));
    assert_eq!(&d[8..16], &1000u64.to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    assert_eq!(
        exec(&lu, &mode_sense10(0, 0x3F, 0, 10), &[]).data_in.len(),
        10
    );
}

#[test]
fn mode_select_toggles_wce() {
    let lu = ram_lu(100, 512);
    let caching = |lu: &LogicalUnit| {
        let o = exec(lu, &mode_sense6(0x08, 0x08, 0, 255), &[]);
        o.data_in.to_vec()[4..].to_vec()
    };
    // MODE SELECT(6) with the caching page, WCE cleared (as Linux's cache_type does).
    let mut page = caching(&lu);
    page[2] &= !0x04;
    let mut list = vec![0, 0, 0, 0];
    list.extend_from_slice(&page);
    let o = exec(&lu, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert_good(&o);
    assert_eq!(o.data_out_length as usize, list.len());
    assert!(!lu.write_cache_enabled());
    assert_eq!(caching(&lu)[2] & 0x04, 0);
    // MODE SELECT(10) with a block descriptor turns it back on.
    page[2] |= 0x04;
    let mut list = vec![0, 0, 0, 0, 0, 0, 0, 8];
    list.extend_from_slice(&100u32.to_be_bytes());
    list.extend_from_slice(&[0, 0, 2, 0]);
    list.extend_from_slice(&page);
    let l = (list.len() as u16).to_be_bytes();
    assert_good(&exec(
        &lu,
        &[0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0],
        &list,
    ));
    assert!(lu.write_cache_enabled());
    // Changing a non-changeable field is rejected, and nothing is applied.
    let mut bad = vec![0, 0, 0, 0];
    let mut p = page.clone();
    p[2] = 0x01; // RCD, WCE off
    bad.extend_from_slice(&p);
    let o = exec(&lu, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad);
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_PARAMETER_LIST);
    assert!(lu.write_cache_enabled());
    // Unknown page, wrong length, wrong block size, SP, short list.
    let mut unk = vec![0, 0, 0, 0, 0x07, 2, 0, 0];
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, unk.len() as u8, 0], &unk),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    unk[4] = 0x08;
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, unk.len() as u8, 0], &unk),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    let mut bd = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, bd.len() as u8, 0], &bd),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    bd[10] = 0x02;
    assert_good(&exec(&lu, &[0x15, 0x10, 0, 0, bd.len() as u8, 0], &bd));
    assert_check(
        &exec(&lu, &[0x15, 0x11, 0, 0, 4, 0], &[0; 4]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, 24, 0], &[0; 4]),
        ILLEGAL_REQUEST,
        PARAMETER_LIST_LENGTH_ERROR,
    );
    assert_good(&exec(&lu, &[0x15, 0x10, 0, 0, 0, 0], &[]));
}

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

#[test]
fn plan_is_pure_and_run_finish_complete_it() {
    let lu = ram_lu(100, 512);
    let cdb = read16(3, 2);
    let r = req(0, &cdb, &[]);
    let Plan::Io {
        request,
        data_out_length,
    } = lu.plan(&r)
    else {
        panic!("READ must need I/O");
    };
    assert_eq!(
        request,
        BlockRequest::Read {
            offset: 1536,
            len: 1024
        }
    );
    assert!(!request.needs_exclusive());
    assert!(!runs_exclusively(r.cdb));
    assert_eq!(
        request.primitive(r.data_out),
        Some(Primitive::Read {
            offset: 1536,
            len: 1024
        })
    );
    let reply = run(&**lu.backend(), &request);
    let o = finish(&request, reply, data_out_length);
    assert_eq!(o.data_in, vec![0; 1024]);
    // Backend failures become sense data.
    let o = finish(
        &request,
        Err(BackendError::new(std::io::ErrorKind::Other, "boom")),
        0,
    );
    assert_check(&o, MEDIUM_ERROR, UNRECOVERED_READ_ERROR);
    let w = BlockRequest::Flush;
    let o = finish(
        &w,
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into()),
        0,
    );
    assert_check(&o, DATA_PROTECT, SPACE_ALLOCATION_FAILED);
    let o = finish(
        &w,
        Err(std::io::Error::from_raw_os_error(libc::EIO).into()),
        0,
    );
    assert_check(&o, MEDIUM_ERROR, WRITE_ERROR);
    assert!(matches!(lu.plan(&req(0, &[0x00; 6], &[])), Plan::Done(_)));
}

#[test]
fn file_backed_lun() {
    let dir = std::env::temp_dir().join(format!("iser-scsi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lun.img");
    let _ = std::fs::remove_file(&path);
    let be = Arc::new(FileBackend::open(&path, Some(4 << 20), true, false).unwrap());
    let lu = LogicalUnit::new(params(0, 4096), be);
    assert_eq!(lu.num_blocks(), 1024);
    let data: Vec<u8> = (0..8 * 4096).map(|i| (i % 253) as u8).collect();
    write_blocks(&lu, 100, &data);
    assert_good(&exec(&lu, &write16(200, 1, true), &data[..4096]));
    assert_eq!(read_blocks(&lu, 100, 8), data);
    let list = unmap_list(&[(101, 2)]);
    assert_good(&exec(&lu, &unmap_cdb(list.len()), &list));
    let d = read_blocks(&lu, 100, 4);
    assert_eq!(d[..4096], data[..4096]);
    assert!(d[4096..3 * 4096].iter().all(|&b| b == 0));
    assert_eq!(d[3 * 4096..], data[3 * 4096..4 * 4096]);
    assert_good(&exec(
        &lu,
        &[0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
    ));
    std::fs::remove_file(&path).unwrap();
}

/// Payload copies the SCSI layer and backends make per READ and WRITE (the transports' own are
/// pinned beside them): a file or block LU reads into the command's pool buffer and writes from
/// it through the kernel, no copy in user space; a RAM LU copies once each way between its
/// chunks and the buffer (registering the RAM LU's memory for RDMA is what would remove the
/// READ copy).
#[test]
fn backend_payload_copies_per_read_and_write() {
    use crate::stats::{reset_thread_payload_copies, thread_payload_copies, CopyCounts};
    let dir = std::env::temp_dir().join(format!("iser-scsi-copies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lun.img");
    let _ = std::fs::remove_file(&path);
    let file = LogicalUnit::new(
        params(0, 4096),
        Arc::new(FileBackend::open(&path, Some(1 << 20), true, false).unwrap()),
    );
    let ram = ram_lu(256, 4096);
    let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 251) as u8).collect();
    // File: the backend writes from and reads into the command's buffer. RAM: a WRITE copies
    // into the chunk once; a READ lends the chunk itself (a transport sends from it).
    for (lu, write_copies, read_copies) in [(&file, 0, 0), (&ram, 1, 0)] {
        let counts = |copies: u64| CopyCounts {
            copies,
            bytes: copies * data.len() as u64,
        };
        reset_thread_payload_copies();
        assert_good(&exec(lu, &write16(4, 2, false), &data));
        let write = thread_payload_copies();
        reset_thread_payload_copies();
        let read = exec(lu, &read16(4, 2), &[]);
        let read_counts = thread_payload_copies();
        assert_good(&read);
        assert_eq!(read.data_in.lent().is_some(), lu.backend().kind() == "ram");
        assert_eq!(read.data_in.to_vec(), data);
        assert_eq!(
            (write, read_counts),
            (counts(write_copies), counts(read_copies)),
            "{}",
            lu.backend().kind()
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn random_cdbs_never_panic() {
    let lu = ram_lu(64, 512);
    let t = ScsiTarget::new(vec![lu.clone()]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let data = vec![0u8; 70 * 1024];
    for opcode in 0..=255u8 {
        for _ in 0..200 {
            let len = (rng.next() % 33) as usize;
            let mut cdb: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(b) = cdb.first_mut() {
                *b = opcode;
            }
            // Bias towards small LBAs/lengths so the I/O paths are reached too.
            if rng.next() % 2 == 0 {
                for b in cdb.iter_mut().skip(2).take(8) {
                    *b &= 0x01;
                }
            }
            let dl = (rng.next() % data.len() as u64) as usize;
            let lun = rng.next() % 3;
            let o = t.execute(&req(lun, &cdb, &data[..dl]));
            match o.status {
                status::GOOD | status::RESERVATION_CONFLICT => assert!(o.sense.is_empty()),
                status::CHECK_CONDITION => assert_eq!(o.sense.len(), 18),
                s => panic!("unexpected status {s:#x}"),
            }
        }
    }
}

#[test]
fn a_timed_out_backend_operation_is_answered_busy_other_errors_check_condition() {
    let lu = ram_lu(64, 512);
    let cdb = read16(0, 8);
    let Plan::Io { request, .. } = lu.plan(&req(0, &cdb, &[])) else {
        panic!("READ(16) plans I/O");
    };
    let timed_out = BackendError::new(std::io::ErrorKind::TimedOut, "rbd_aio_read: timed out");
    let o = finish(&request, Err(timed_out), 0);
    assert_eq!(o.status, status::BUSY);
    assert!(o.sense.is_empty());
    let failed = BackendError::new(std::io::ErrorKind::Other, "rbd_aio_read: I/O error");
    assert_check(
        &finish(&request, Err(failed), 0),
        MEDIUM_ERROR,
        UNRECOVERED_READ_ERROR,
    );
}
