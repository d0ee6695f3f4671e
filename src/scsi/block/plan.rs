//! Decoding SBC-3 block commands: each CDB (with its Data-Out) checked against the LU's
//! capacity, limits and protection, and turned into a [`BlockRequest`] to run, or answered at
//! once.

use super::{limits, limits_for, BlockRequest};
use crate::scsi::cdb::Cdb;
use crate::scsi::sense::{self, Sense};
use crate::scsi::{op, CmdResult, LogicalUnit, Plan, ScsiOutcome, ScsiRequest};

/// Decoded LBA/length fields of a READ/WRITE/VERIFY-style CDB.
struct Rw {
    lba: u64,
    blocks: u64,
    /// RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7..5); must be 0 without PI.
    protect: u8,
    /// FUA bit (byte 1 bit 3).
    fua: bool,
    /// CDB byte holding the transfer length (for the field pointer).
    len_at: u16,
}

/// Decodes the LBA and length of the 6/10/12/16-byte READ/WRITE/VERIFY/WRITE AND VERIFY.
fn decode_rw(cdb: Cdb<'_>) -> Rw {
    let b1 = cdb.byte(1);
    let (lba, blocks, len_at) = match cdb.opcode() >> 5 {
        0 => {
            // 6-byte: 21-bit LBA; length 0 means 256 blocks.
            let n = match cdb.byte(4) {
                0 => 256,
                n => u64::from(n),
            };
            return Rw {
                lba: u64::from(cdb.be24(1) & 0x1F_FFFF),
                blocks: n,
                protect: 0,
                fua: false,
                len_at: 4,
            };
        }
        1 => (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7),
        5 => (u64::from(cdb.be32(2)), u64::from(cdb.be32(6)), 6),
        _ => (cdb.be64(2), u64::from(cdb.be32(10)), 10),
    };
    Rw {
        lba,
        blocks,
        protect: b1 >> 5,
        fua: b1 & 0x08 != 0,
        len_at,
    }
}

fn lba_out_of_range() -> Sense {
    Sense::new(sense::ILLEGAL_REQUEST, sense::LBA_OUT_OF_RANGE)
}

fn write_protected() -> Sense {
    Sense::new(sense::DATA_PROTECT, sense::WRITE_PROTECTED)
}

/// Data-Out shorter than the command needs, for commands that cannot act on part of it.
/// libiscsi's residual tests accept ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION
/// UNIT (0Eh/03h) as the alternative to GOOD [lis: test-tool/test_write10_residuals.c].
fn short_data_out() -> Sense {
    Sense::new(sense::ILLEGAL_REQUEST, sense::INVALID_FIELD_IN_CIU)
}

impl LogicalUnit {
    /// Checks `lba..lba+blocks` against the capacity without overflow.
    fn check_range(&self, lba: u64, blocks: u64) -> CmdResult<()> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks() => Ok(()),
            _ => Err(lba_out_of_range()),
        }
    }

    /// Byte offset/length of a block range already checked against the capacity.
    fn bytes(&self, blocks: u64) -> CmdResult<u64> {
        blocks
            .checked_mul(self.block_size())
            .ok_or_else(lba_out_of_range)
    }

    /// Common READ/WRITE/VERIFY checks: protection field, transfer limit, LBA range.
    fn check_rw(&self, rw: &Rw) -> CmdResult<()> {
        if rw.protect != 0 {
            return Err(Sense::invalid_cdb_field(1, Some(7)));
        }
        if rw.blocks > u64::from(limits_for(self.params().block_size).max_transfer) {
            return Err(Sense::invalid_cdb_field(rw.len_at, None));
        }
        self.check_range(rw.lba, rw.blocks)
    }
}

/// Decodes the block commands (everything that may touch the medium).
pub(in crate::scsi) fn plan<'a>(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    req: &ScsiRequest<'a>,
) -> CmdResult<Plan<'a>> {
    let data_out = req.data_out;
    match cdb.opcode() {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => plan_read(lu, cdb),
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            plan_write(lu, cdb, data_out, false)
        }
        op::WRITE_VERIFY_10 | op::WRITE_VERIFY_12 | op::WRITE_VERIFY_16 => {
            plan_write(lu, cdb, data_out, true)
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => plan_verify(lu, cdb, data_out),
        op::SYNCHRONIZE_CACHE_10 => plan_sync(lu, u64::from(cdb.be32(2)), u64::from(cdb.be16(7))),
        op::SYNCHRONIZE_CACHE_16 => plan_sync(lu, cdb.be64(2), u64::from(cdb.be32(10))),
        op::UNMAP => plan_unmap(lu, cdb, data_out),
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => plan_write_same(lu, cdb, req),
        op::COMPARE_AND_WRITE => plan_compare_and_write(lu, cdb, req),
        op::PRE_FETCH_10 => plan_prefetch(lu, u64::from(cdb.be32(2)), u64::from(cdb.be16(7))),
        op::PRE_FETCH_16 => plan_prefetch(lu, cdb.be64(2), u64::from(cdb.be32(10))),
        op::ORWRITE_16 => plan_orwrite(lu, cdb, data_out),
        op::WRITE_ATOMIC_16 => plan_write_atomic(lu, cdb, data_out),
        op::SERVICE_ACTION_IN_16 if cdb.service_action() == op::SA_GET_LBA_STATUS => {
            plan_get_lba_status(lu, cdb)
        }
        _ => Err(Sense::new(
            sense::ILLEGAL_REQUEST,
            sense::INVALID_COMMAND_OPCODE,
        )),
    }
}

fn plan_read<'a>(lu: &LogicalUnit, cdb: Cdb<'_>) -> CmdResult<Plan<'a>> {
    let rw = decode_rw(cdb);
    lu.check_rw(&rw)?;
    if rw.blocks == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    let len = usize::try_from(lu.bytes(rw.blocks)?).map_err(|_| lba_out_of_range())?;
    Ok(Plan::Io {
        request: BlockRequest::Read {
            offset: lu.bytes(rw.lba)?,
            len,
        },
        data_out_length: 0,
    })
}

/// WRITE and WRITE AND VERIFY. When Data-Out is shorter than the CDB's transfer length we
/// write only the whole blocks that arrived and answer GOOD (the iSCSI layer reports the
/// overflow residual from `data_out_length`): libiscsi's test_write10_residuals.c requires
/// GOOD for EDTL=0 and for EDTL of one block with a two-block CDB, with only EDTL bytes
/// written; for a partial block (EDTL=200) it accepts GOOD, and we write nothing of it.
fn plan_write<'a>(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    data_out: &'a [u8],
    verify: bool,
) -> CmdResult<Plan<'a>> {
    let rw = decode_rw(cdb);
    lu.check_rw(&rw)?;
    if lu.params().read_only {
        return Err(write_protected());
    }
    let need = lu.bytes(rw.blocks)?;
    let data_out_length = u32::try_from(need).map_err(|_| lba_out_of_range())?;
    let bs = lu.block_size();
    let usable = (data_out.len() as u64).min(need) / bs * bs;
    if usable == 0 {
        return Ok(Plan::Done(
            ScsiOutcome::good().with_data_out_length(data_out_length),
        ));
    }
    Ok(Plan::Io {
        request: BlockRequest::Write {
            offset: lu.bytes(rw.lba)?,
            data: data_out.get(..usable as usize).unwrap_or_default(),
            // WRITE AND VERIFY: the data must be on the medium to be verified.
            fua: rw.fua || verify || !lu.write_cache_enabled(),
        },
        data_out_length,
    })
}

/// VERIFY: BYTCHK 00b is a range check only; 01b compares Data-Out with the medium.
/// BYTCHK 11b (compare one block against each) is not supported: INVALID FIELD IN CDB.
fn plan_verify<'a>(lu: &LogicalUnit, cdb: Cdb<'_>, data_out: &'a [u8]) -> CmdResult<Plan<'a>> {
    let rw = decode_rw(cdb);
    let bytchk = (cdb.byte(1) >> 1) & 0x03;
    if bytchk > 1 {
        return Err(Sense::invalid_cdb_field(1, Some(2)));
    }
    lu.check_rw(&rw)?;
    if rw.blocks == 0 || bytchk == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    let need = lu.bytes(rw.blocks)?;
    let data_out_length = u32::try_from(need).map_err(|_| lba_out_of_range())?;
    let expected = data_out.get(..need as usize).ok_or_else(short_data_out)?;
    Ok(Plan::Io {
        request: BlockRequest::Compare {
            offset: lu.bytes(rw.lba)?,
            expected,
        },
        data_out_length,
    })
}

/// SYNCHRONIZE CACHE: range-checked (0 blocks = to the end), then a whole-backend flush.
fn plan_sync<'a>(lu: &LogicalUnit, lba: u64, blocks: u64) -> CmdResult<Plan<'a>> {
    if blocks == 0 {
        if lba > lu.num_blocks() {
            return Err(lba_out_of_range());
        }
    } else {
        lu.check_range(lba, blocks)?;
    }
    Ok(Plan::Io {
        request: BlockRequest::Flush,
        data_out_length: 0,
    })
}

/// UNMAP (SBC-3 5.28): parameter list header (8 bytes) then 16-byte block descriptors.
fn plan_unmap<'a>(lu: &LogicalUnit, cdb: Cdb<'_>, data_out: &'a [u8]) -> CmdResult<Plan<'a>> {
    if cdb.byte(1) & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0))); // ANCHOR: ANC_SUP = 0
    }
    let plen = usize::from(cdb.be16(7));
    if plen == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    if lu.params().read_only {
        return Err(write_protected());
    }
    let list_error = || Sense::new(sense::ILLEGAL_REQUEST, sense::PARAMETER_LIST_LENGTH_ERROR);
    if plen < 8 {
        return Err(list_error());
    }
    let list = Cdb::new(data_out.get(..plen).ok_or_else(list_error)?);
    // A trailing partial descriptor is ignored (SBC-3 5.28.2).
    let bdl = usize::from(list.be16(2)).min(plen - 8);
    let count = bdl / 16;
    if count > limits::MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2));
    }
    let max_lbas = u64::from(limits_for(lu.params().block_size).max_unmap_lbas);
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + 16 * i;
        let lba = list.be64(at);
        let blocks = u64::from(list.be32(at + 8));
        if blocks > max_lbas {
            return Err(Sense::invalid_param_field((at + 8) as u16));
        }
        lu.check_range(lba, blocks)?;
        if blocks > 0 {
            ranges.push((lu.bytes(lba)?, lu.bytes(blocks)?));
        }
    }
    let data_out_length = plen as u32;
    if ranges.is_empty() {
        return Ok(Plan::Done(
            ScsiOutcome::good().with_data_out_length(data_out_length),
        ));
    }
    Ok(Plan::Io {
        request: BlockRequest::Unmap { ranges },
        data_out_length,
    })
}

/// WRITE SAME(10/16), with UNMAP and (16 only) NDOB. WSNZ=1: zero blocks is rejected.
/// Unless NDOB, the expected transfer length must be exactly one block:
/// libiscsi's test_writesame10_invalid_dataout_size.c requires failure for half a block
/// and for two blocks, reported here as INVALID FIELD IN CDB.
fn plan_write_same<'a>(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    req: &ScsiRequest<'a>,
) -> CmdResult<Plan<'a>> {
    let ws16 = cdb.opcode() == op::WRITE_SAME_16;
    let flags = cdb.byte(1);
    let (lba, blocks, len_at) = if ws16 {
        (cdb.be64(2), u64::from(cdb.be32(10)), 10)
    } else {
        (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7)
    };
    if flags >> 5 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    if flags & 0x10 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(4))); // ANCHOR
    }
    let unmap = flags & 0x08 != 0;
    let ndob = ws16 && flags & 0x01 != 0;
    // Range first: libiscsi's test_writesame10_0blocks.c expects LBA OUT OF RANGE for
    // 0 blocks past the end, and INVALID FIELD (WSNZ=1) only for 0 blocks in range.
    lu.check_range(lba, blocks)?;
    if blocks == 0 || blocks > u64::from(limits_for(lu.params().block_size).max_write_same) {
        return Err(Sense::invalid_cdb_field(len_at, None));
    }
    if lu.params().read_only {
        return Err(write_protected());
    }
    let bs = lu.block_size();
    let (pattern, data_out_length) = if ndob {
        (None, 0)
    } else {
        if u64::from(req.expected_transfer_length) != bs {
            return Err(Sense::invalid_cdb_field(len_at, None));
        }
        let block = req.data_out.get(..bs as usize).ok_or_else(short_data_out)?;
        (Some(block), lu.params().block_size)
    };
    Ok(Plan::Io {
        request: BlockRequest::WriteSame {
            offset: lu.bytes(lba)?,
            len: lu.bytes(blocks)?,
            pattern,
            unmap,
            fua: !lu.write_cache_enabled(),
        },
        data_out_length,
    })
}

/// COMPARE AND WRITE (SBC-3 5.2): Data-Out is the compare blocks followed by the write
/// blocks. NUMBER OF LOGICAL BLOCKS = 0 is not an error and does nothing. The expected
/// transfer length must be exactly 2 × blocks: libiscsi's
/// test_compareandwrite_invalid_dataout_size.c requires failure for both a too small and a
/// too large Data-Out, so a mismatch is INVALID FIELD IN CDB (NUMBER OF LOGICAL BLOCKS).
fn plan_compare_and_write<'a>(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    req: &ScsiRequest<'a>,
) -> CmdResult<Plan<'a>> {
    let flags = cdb.byte(1);
    if flags >> 5 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    let lba = cdb.be64(2);
    let blocks = cdb.byte(13);
    if blocks > limits::MAX_COMPARE_AND_WRITE {
        return Err(Sense::invalid_cdb_field(13, None));
    }
    lu.check_range(lba, u64::from(blocks))?;
    let half = lu.bytes(u64::from(blocks))? as usize;
    let bad_length = || Sense::invalid_cdb_field(13, None);
    // The Data-Out must be exactly both halves, even for 0 blocks: libiscsi's
    // test_compareandwrite_simple.c sends "256 blocks" (byte 13 wraps to 0) with 256 blocks of
    // data and expects INVALID FIELD IN CDB; LIO checks the length the same way.
    if req.expected_transfer_length as usize != 2 * half {
        return Err(bad_length());
    }
    if blocks == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    if lu.params().read_only {
        return Err(write_protected());
    }
    let data = req.data_out.get(..2 * half).ok_or_else(bad_length)?;
    let (compare, write) = data.split_at(half);
    Ok(Plan::Io {
        request: BlockRequest::CompareAndWrite {
            offset: lu.bytes(lba)?,
            compare,
            write,
            fua: flags & 0x08 != 0 || !lu.write_cache_enabled(),
        },
        data_out_length: (2 * half) as u32,
    })
}

/// PRE-FETCH(10/16): range-checked (0 blocks = to the end of the LU). There is no cache to
/// load, so the answer is GOOD ("will not fit"), never CONDITION MET; IMMED changes nothing.
fn plan_prefetch<'a>(lu: &LogicalUnit, lba: u64, blocks: u64) -> CmdResult<Plan<'a>> {
    if blocks == 0 {
        if lba > lu.num_blocks() {
            return Err(lba_out_of_range());
        }
    } else {
        lu.check_range(lba, blocks)?;
    }
    Ok(Plan::Done(ScsiOutcome::good()))
}

/// ORWRITE(16) (SBC-3 5.8): ORs Data-Out into the medium under the LU's exclusive lock.
/// ORPROTECT must be 0; the whole Data-Out must be present.
fn plan_orwrite<'a>(lu: &LogicalUnit, cdb: Cdb<'_>, data_out: &'a [u8]) -> CmdResult<Plan<'a>> {
    let rw = decode_rw(cdb);
    lu.check_rw(&rw)?;
    if lu.params().read_only {
        return Err(write_protected());
    }
    let need = lu.bytes(rw.blocks)?;
    let data_out_length = u32::try_from(need).map_err(|_| lba_out_of_range())?;
    if rw.blocks == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    let data = data_out.get(..need as usize).ok_or_else(short_data_out)?;
    Ok(Plan::Io {
        request: BlockRequest::OrWrite {
            offset: lu.bytes(rw.lba)?,
            data,
            fua: rw.fua || !lu.write_cache_enabled(),
        },
        data_out_length,
    })
}

/// WRITE ATOMIC(16) (SBC-4 5.48): a WRITE of at most MAXIMUM ATOMIC TRANSFER LENGTH blocks
/// done under the LU's exclusive lock. Atomic boundaries are not supported (VPD B0h
/// MAXIMUM ATOMIC BOUNDARY SIZE = 0), so ATOMIC BOUNDARY must be 0.
fn plan_write_atomic<'a>(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    data_out: &'a [u8],
) -> CmdResult<Plan<'a>> {
    let flags = cdb.byte(1);
    if flags >> 5 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    if cdb.be16(10) != 0 {
        return Err(Sense::invalid_cdb_field(10, None));
    }
    let lba = cdb.be64(2);
    let blocks = u64::from(cdb.be16(12));
    if blocks > u64::from(limits_for(lu.params().block_size).max_atomic) {
        return Err(Sense::invalid_cdb_field(12, None));
    }
    lu.check_range(lba, blocks)?;
    if lu.params().read_only {
        return Err(write_protected());
    }
    let need = lu.bytes(blocks)?;
    let data_out_length = u32::try_from(need).map_err(|_| lba_out_of_range())?;
    if blocks == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    // All or nothing: a short Data-Out cannot be written atomically.
    let data = data_out.get(..need as usize).ok_or_else(short_data_out)?;
    Ok(Plan::Io {
        request: BlockRequest::AtomicWrite {
            offset: lu.bytes(lba)?,
            data,
            fua: flags & 0x08 != 0 || !lu.write_cache_enabled(),
        },
        data_out_length,
    })
}

/// GET LBA STATUS (SBC-3 5.6): STARTING LBA beyond the last LBA is LBA OUT OF RANGE.
fn plan_get_lba_status<'a>(lu: &LogicalUnit, cdb: Cdb<'_>) -> CmdResult<Plan<'a>> {
    let lba = cdb.be64(2);
    let alloc = cdb.be32(10) as usize;
    if lba >= lu.num_blocks() {
        return Err(lba_out_of_range());
    }
    if alloc == 0 {
        return Ok(Plan::Done(ScsiOutcome::good()));
    }
    Ok(Plan::Io {
        request: BlockRequest::LbaStatus {
            lba,
            num_blocks: lu.num_blocks(),
            block_size: lu.block_size(),
            alloc,
        },
        data_out_length: 0,
    })
}
