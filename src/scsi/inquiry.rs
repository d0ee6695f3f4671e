//! INQUIRY: standard data and the VPD pages Linux and iscsi-test-cu read (SPC-4 6.6, 7.8).

use super::block::{limits, limits_for};
use super::cdb::Cdb;
use super::sense::Sense;
use super::{truncate, CmdResult, LogicalUnit};

/// Designation descriptor code set: binary.
pub(super) const CODE_SET_BINARY: u8 = 0x01;
/// Designation descriptor byte 1 of the LU's NAA designator: association 00b (the logical
/// unit), designator type 3 (NAA).
pub(super) const NAA_LU_DESIGNATOR: u8 = 0x03;

/// Length of our standard INQUIRY data (with version descriptors).
const STD_LEN: usize = 96;
/// VPD pages we support, ascending (iscsi-test-cu checks the order).
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Copies `s` into `dst` as ASCII, space padded / truncated to the field width.
fn ascii_field(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = if c.is_ascii_graphic() || c == b' ' {
            c
        } else {
            b'_'
        };
    }
}

/// Standard INQUIRY data for a LU; `byte0` carries peripheral qualifier and device type.
fn standard(lu: Option<&LogicalUnit>, byte0: u8) -> Vec<u8> {
    let mut d = vec![0u8; STD_LEN];
    d[0] = byte0;
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HiSup | response data format 2
    d[4] = (STD_LEN - 5) as u8;
    if lu.is_some() {
        // TPGS; 3PC: the LU is a copy manager (EXTENDED COPY, xcopy.rs).
        d[5] = super::alua::TPGS_IMPLICIT | 0x08;
    }
    d[7] = 0x02; // CmdQue
    if let Some(lu) = lu {
        let p = lu.params();
        ascii_field(&mut d[8..16], &p.vendor);
        ascii_field(&mut d[16..32], &p.product);
        ascii_field(&mut d[32..36], &p.revision);
    } else {
        d[8..36].fill(b' ');
    }
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// INQUIRY data for a LUN that does not exist: PQ 3, device type 1Fh.
pub(super) fn not_present(cdb: Cdb<'_>) -> Vec<u8> {
    truncate(standard(None, 0x7F), usize::from(cdb.be16(3)))
}

/// INQUIRY for an existing LU: standard data or a VPD page, cut to the allocation length.
pub(super) fn inquiry(lu: &LogicalUnit, cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
    let flags = cdb.byte(1);
    let page = cdb.byte(2);
    let alloc = usize::from(cdb.be16(3));
    if flags & 0x02 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(1))); // CmdDt is obsolete
    }
    if flags & 0x01 == 0 {
        if page != 0 {
            return Err(Sense::invalid_cdb_field(2, None));
        }
        return Ok(truncate(standard(Some(lu), 0x00), alloc));
    }
    let body = match page {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => lu.params().serial.bytes().take(252).collect(),
        0x83 => device_identification(lu),
        0xB0 => block_limits(lu),
        0xB1 => block_characteristics(),
        0xB2 => provisioning(lu),
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    };
    let mut d = vec![0x00, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    Ok(truncate(d, alloc))
}

/// VPD 0x83 descriptors: NAA 5 (binary, LU association), T10 vendor ID (ASCII), then the
/// relative target port and target port group of this gateway (see [`super::alua`]).
fn device_identification(lu: &LogicalUnit) -> Vec<u8> {
    let p = lu.params();
    let mut d = vec![CODE_SET_BINARY, NAA_LU_DESIGNATOR, 0x00, 0x08];
    d.extend_from_slice(&p.naa_designator());
    let mut t10 = vec![0u8; 8];
    ascii_field(&mut t10, &p.vendor);
    t10.extend(p.serial.bytes().filter(u8::is_ascii_graphic).take(64));
    d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    d.extend_from_slice(&t10);
    d.extend_from_slice(&p.alua.designators());
    d
}

/// VPD 0xB0 Block Limits body (page length 0x3C).
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let bs = lu.params().block_size;
    let l = limits_for(bs);
    let mut d = vec![0u8; 0x3C];
    let put32 =
        |d: &mut Vec<u8>, at: usize, v: u32| d[at..at + 4].copy_from_slice(&v.to_be_bytes());
    // Offsets below are page offsets minus the 4-byte header.
    d[0] = 0x01; // WSNZ: WRITE SAME with 0 blocks is rejected
    d[1] = limits::MAX_COMPARE_AND_WRITE;
    d[2..4].copy_from_slice(&(l.granularity as u16).to_be_bytes());
    put32(&mut d, 4, l.max_transfer);
    put32(&mut d, 8, l.optimal_transfer);
    if lu.backend().supports_discard() {
        put32(&mut d, 16, l.max_unmap_lbas);
        put32(&mut d, 20, limits::MAX_UNMAP_DESCRIPTORS);
        put32(&mut d, 24, l.granularity);
    }
    d[32..40].copy_from_slice(&u64::from(l.max_write_same).to_be_bytes());
    // WRITE ATOMIC: MAXIMUM ATOMIC TRANSFER LENGTH; alignment, granularity and the atomic
    // boundary fields stay 0 (no restrictions / boundaries unsupported).
    put32(&mut d, 40, l.max_atomic);
    d
}

/// VPD 0xB1 Block Device Characteristics body: non-rotational medium.
fn block_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[1] = 0x01; // MEDIUM ROTATION RATE = 1: non-rotating (solid state)
    d
}

/// VPD 0xB2 Logical Block Provisioning body.
fn provisioning(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    if lu.backend().supports_discard() {
        d[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ
        d[2] = 0x02; // thin provisioned
    }
    d
}
