//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): a copy manager that moves
//! blocks between the logical units of one target inside the target, so the data never
//! crosses the network (VMware's VAAI full copy, sg3_utils' `sg_xcopy`).
//!
//! What is implemented: identification CSCD descriptors (E4h) that name a logical unit by its
//! NAA designator (VPD page 83h), and block-to-block segment descriptors (02h); RECEIVE COPY
//! RESULTS with OPERATING PARAMETERS and COPY STATUS. A copy target is only ever a LU of the
//! target the command came through, checked as a READ (source) or a WRITE (destination) from
//! the same I_T nexus would be: ALUA state, reservations, write protection. (LIO once let
//! XCOPY reach any device of the host, CVE-2020-28374.)
//!
//! The parameter list is decoded when the command is planned ([`decode`]), its copy targets
//! looked up among the target's LUs ([`CopyList::resolve`]) and the copy run on the blocking
//! pool ([`CopyJob::run`], `job.rs`).

mod job;

pub use job::CopyJob;
pub(super) use job::HeldCopies;

use super::cdb::Cdb;
use super::sense::{self, Sense};
use super::{inquiry, op, truncate, BlockRequest, CmdResult, LogicalUnit, Nexus, ScsiOutcome};
use job::{CopySegment, ListIdUsage};

/// Copy manager limits, reported by RECEIVE COPY RESULTS (OPERATING PARAMETERS).
mod limits {
    /// Most CSCD descriptors in one parameter list (a source and a destination need two).
    pub const MAX_CSCD_DESCRIPTORS: usize = 8;
    /// Most segment descriptors in one parameter list.
    pub const MAX_SEGMENT_DESCRIPTORS: usize = 16;
    /// Most bytes of CSCD and segment descriptors together.
    pub const MAX_DESCRIPTOR_LIST_BYTES: usize = 1024;
    /// Most bytes one segment copies: with [`MAX_SEGMENT_DESCRIPTORS`], at most 256 MiB per
    /// command, a few seconds of one blocking-pool thread.
    pub const MAX_SEGMENT_BYTES: u32 = 16 << 20;
    /// EXTENDED COPY commands one copy manager runs at the same time, reported as TOTAL and
    /// MAXIMUM CONCURRENT COPIES; more wait for the blocking pool.
    pub const CONCURRENT_COPIES: u8 = 16;
}

/// Parameter list header length (SPC-4 6.4.3).
const HEADER_LEN: usize = 16;
/// Length of every CSCD descriptor we accept (identification, E4h).
const CSCD_LEN: usize = 32;
/// Length of a block-to-block segment descriptor (02h).
const BLOCK_TO_BLOCK_LEN: usize = 28;
/// CSCD descriptor type code: identification descriptor (SPC-4 6.4.6.4).
const CSCD_IDENTIFICATION: u8 = 0xE4;
/// Segment descriptor type code: block device to block device (SPC-4 6.4.7.5).
const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
/// Longest designator an identification descriptor holds.
const MAX_DESIGNATOR_LEN: usize = 20;

/// RECEIVE COPY RESULTS service action: COPY STATUS.
pub(super) const SA_COPY_STATUS: u8 = 0x00;
/// RECEIVE COPY RESULTS service action: OPERATING PARAMETERS.
pub(super) const SA_OPERATING_PARAMETERS: u8 = 0x03;

/// A decoded EXTENDED COPY (LID1) parameter list: its shape and limits checked, its copy
/// targets not yet looked up.
#[derive(Debug)]
pub struct CopyList {
    list_id: u8,
    usage: ListIdUsage,
    cscds: Vec<Cscd>,
    segments: Vec<Segment>,
}

/// One identification CSCD descriptor: a logical unit named by a designator.
#[derive(Debug)]
struct Cscd {
    /// Offset of the descriptor in the parameter list (for field pointers).
    at: usize,
    code_set: u8,
    /// Association and designator type (byte 1 of the designation descriptor, PIV masked).
    association_and_type: u8,
    designator: Vec<u8>,
    /// DISK BLOCK LENGTH: the block size the initiator believes the LU has.
    block_length: u32,
}

/// One block-to-block segment descriptor.
#[derive(Debug)]
struct Segment {
    /// Offset of the descriptor in the parameter list (for field pointers).
    at: usize,
    source: usize,
    destination: usize,
    /// DC: the number of blocks counts destination blocks, not source blocks.
    destination_blocks: bool,
    blocks: u16,
    source_lba: u64,
    destination_lba: u64,
}

fn list_length_error() -> Sense {
    Sense::new(sense::ILLEGAL_REQUEST, sense::PARAMETER_LIST_LENGTH_ERROR)
}

/// COPY ABORTED / COPY TARGET DEVICE NOT REACHABLE: a segment names a descriptor that is not
/// in the list, a LU the target does not have, or blocks past a LU's end. LIO answers every
/// copy it cannot carry out so (`target_xcopy_do_work`, drivers/target/target_core_xcopy.c),
/// and libiscsi's ExtendedCopy.ValidSegDescr accepts only this ASC or none
/// (test_extendedcopy_validate_seg_descr.c).
fn unreachable_target() -> Sense {
    Sense::new(sense::COPY_ABORTED, sense::COPY_TARGET_DEVICE_NOT_REACHABLE)
}

/// Decodes EXTENDED COPY (LID1)'s parameter list from its Data-Out; `Ok(None)` when the
/// PARAMETER LIST LENGTH is zero (nothing to copy, SPC-4 6.4.1).
pub(super) fn decode(cdb: Cdb<'_>, data_out: &[u8]) -> CmdResult<Option<CopyList>> {
    let plen = cdb.be32(10) as usize;
    if plen == 0 {
        return Ok(None);
    }
    let list = data_out.get(..plen).ok_or_else(list_length_error)?;
    if plen < HEADER_LEN {
        return Err(list_length_error());
    }
    let header = Cdb::new(list);
    let list_id = header.byte(0);
    let usage = match (header.byte(1) >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::NoHold,
        // LIST ID USAGE 11b: no list identifier, which must then be zero.
        0b11 if list_id == 0 => ListIdUsage::Unused,
        0b11 => return Err(Sense::invalid_param_field(0)),
        _ => return Err(Sense::invalid_param_field(1)),
    };
    let cscd_bytes = usize::from(header.be16(2));
    let segment_bytes = header.be32(8) as usize;
    if header.be32(12) != 0 {
        return Err(Sense::invalid_param_field(12)); // no inline data is accepted
    }
    // Descriptors beyond MAXIMUM DESCRIPTOR LIST LENGTH, or beyond the list itself, are a
    // PARAMETER LIST LENGTH ERROR (SPC-4 6.4.3.5, 6.4.1).
    let descriptors_end = HEADER_LEN + cscd_bytes + segment_bytes;
    if cscd_bytes + segment_bytes > limits::MAX_DESCRIPTOR_LIST_BYTES || descriptors_end > plen {
        return Err(list_length_error());
    }
    if cscd_bytes % CSCD_LEN != 0 {
        return Err(Sense::invalid_param_field(2));
    }
    if cscd_bytes / CSCD_LEN > limits::MAX_CSCD_DESCRIPTORS {
        return Err(Sense::new(
            sense::ILLEGAL_REQUEST,
            sense::TOO_MANY_TARGET_DESCRIPTORS,
        ));
    }
    let cscds = (HEADER_LEN..HEADER_LEN + cscd_bytes)
        .step_by(CSCD_LEN)
        .map(|at| decode_cscd(list, at))
        .collect::<CmdResult<Vec<_>>>()?;
    let mut segments = Vec::new();
    let mut at = HEADER_LEN + cscd_bytes;
    while at < descriptors_end {
        if segments.len() == limits::MAX_SEGMENT_DESCRIPTORS {
            return Err(Sense::new(
                sense::ILLEGAL_REQUEST,
                sense::TOO_MANY_SEGMENT_DESCRIPTORS,
            ));
        }
        segments.push(decode_segment(&list[at..descriptors_end], at)?);
        at += BLOCK_TO_BLOCK_LEN;
    }
    Ok(Some(CopyList {
        list_id,
        usage,
        cscds,
        segments,
    }))
}

/// Decodes the CSCD descriptor at `at` (32 bytes, inside the list: checked by the caller).
fn decode_cscd(list: &[u8], at: usize) -> CmdResult<Cscd> {
    let d = Cdb::new(&list[at..at + CSCD_LEN]);
    let field = |offset: usize| Sense::invalid_param_field((at + offset) as u16);
    if d.byte(0) != CSCD_IDENTIFICATION {
        return Err(Sense::new(
            sense::ILLEGAL_REQUEST,
            sense::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE,
        ));
    }
    // Byte 1: LU ID TYPE and NUL are ignored (SPC-4 made NUL obsolete; an identification
    // descriptor names its LU by the designator); the peripheral device type must be a block
    // device, the only kind we have.
    if d.byte(1) & 0x1F != 0 {
        return Err(field(1));
    }
    let len = usize::from(d.byte(7));
    if len > MAX_DESIGNATOR_LEN {
        return Err(field(7));
    }
    Ok(Cscd {
        at,
        code_set: d.byte(4) & 0x0F,
        association_and_type: d.byte(5) & 0x3F,
        designator: list[at + 8..at + 8 + len].to_vec(),
        block_length: d.be24(29),
    })
}

/// Decodes the segment descriptor starting `rest` (at offset `at` of the list).
fn decode_segment(rest: &[u8], at: usize) -> CmdResult<Segment> {
    let d = Cdb::new(rest);
    if d.byte(0) != SEGMENT_BLOCK_TO_BLOCK {
        return Err(Sense::new(
            sense::ILLEGAL_REQUEST,
            sense::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE,
        ));
    }
    // DESCRIPTOR LENGTH counts the bytes after byte 3.
    if rest.len() < BLOCK_TO_BLOCK_LEN || usize::from(d.be16(2)) != BLOCK_TO_BLOCK_LEN - 4 {
        return Err(Sense::invalid_param_field((at + 2) as u16));
    }
    Ok(Segment {
        at,
        source: usize::from(d.be16(4)),
        destination: usize::from(d.be16(6)),
        destination_blocks: d.byte(1) & 0x02 != 0,
        blocks: d.be16(10),
        source_lba: d.be64(12),
        destination_lba: d.be64(20),
    })
}

impl Cscd {
    /// Whether the descriptor names `lu`: its NAA designator, with logical-unit association.
    fn names(&self, lu: &LogicalUnit) -> bool {
        self.code_set == inquiry::CODE_SET_BINARY
            && self.association_and_type == inquiry::NAA_LU_DESIGNATOR
            && self.designator == lu.params().naa_designator()
    }
}

impl CopyList {
    /// Looks up the copy targets among `luns` (the LUs of the target the command came
    /// through) and checks each as a READ from its source and a WRITE to its destination sent
    /// by `nexus` would be; the block request that runs the copy, which records its status
    /// with `manager`, the LU that received the command. Every check is made before any block
    /// moves.
    pub(super) fn resolve<'l>(
        self,
        manager: &LogicalUnit,
        luns: impl Iterator<Item = &'l LogicalUnit> + Clone,
        nexus: &Nexus,
    ) -> Result<BlockRequest<'static>, ScsiOutcome> {
        let failed = |s: Sense| ScsiOutcome::from_sense(&s);
        let lookup = |index: usize| -> Result<&'l LogicalUnit, ScsiOutcome> {
            let cscd = self
                .cscds
                .get(index)
                .ok_or_else(|| failed(unreachable_target()))?;
            let lu = luns.clone().find(|lu| cscd.names(lu)).ok_or_else(|| {
                log::warn!("EXTENDED COPY names a logical unit this target does not have");
                failed(unreachable_target())
            })?;
            if cscd.block_length != lu.params().block_size {
                return Err(failed(Sense::invalid_param_field((cscd.at + 29) as u16)));
            }
            Ok(lu)
        };
        let mut segments = Vec::with_capacity(self.segments.len());
        for seg in &self.segments {
            let source = lookup(seg.source)?;
            let destination = lookup(seg.destination)?;
            check_access(source, nexus, false)?;
            check_access(destination, nexus, true)?;
            let (source_bs, destination_bs) = (source.block_size(), destination.block_size());
            let unit = if seg.destination_blocks {
                destination_bs
            } else {
                source_bs
            };
            let len = u64::from(seg.blocks) * unit;
            if len % source_bs != 0
                || len % destination_bs != 0
                || len > u64::from(limits::MAX_SEGMENT_BYTES)
            {
                return Err(failed(Sense::invalid_param_field((seg.at + 10) as u16)));
            }
            let source_offset = byte_range(source, seg.source_lba, len)?;
            let destination_offset = byte_range(destination, seg.destination_lba, len)?;
            segments.push(CopySegment {
                source: std::sync::Arc::clone(source.backend()),
                source_offset,
                destination: std::sync::Arc::clone(destination.backend()),
                destination_offset,
                len,
                // With the write cache off a write is durable when it completes.
                flush: !destination.write_cache_enabled(),
            });
        }
        Ok(BlockRequest::Copy(Box::new(CopyJob::new(
            manager.held_copies_handle(),
            nexus.clone(),
            self.list_id,
            self.usage,
            segments,
        ))))
    }
}

/// The byte offset of `len` bytes from block `lba` of `lu`, when they lie inside it.
fn byte_range(lu: &LogicalUnit, lba: u64, len: u64) -> Result<u64, ScsiOutcome> {
    let offset = lba.checked_mul(lu.block_size());
    match offset.and_then(|o| Some((o, o.checked_add(len)?))) {
        Some((offset, end)) if end <= lu.num_blocks() * lu.block_size() => Ok(offset),
        _ => {
            log::warn!("EXTENDED COPY past the end of LUN {}", lu.params().lun);
            Err(ScsiOutcome::from_sense(&unreachable_target()))
        }
    }
}

/// Whether `nexus` may read (or, with `write`, write) `lu` the way a copy does: the answer a
/// READ(16) or WRITE(16) from it would get for its ALUA state, reservations and protection.
fn check_access(lu: &LogicalUnit, nexus: &Nexus, write: bool) -> Result<(), ScsiOutcome> {
    let mut cdb = [0u8; 16];
    cdb[0] = if write { op::WRITE_16 } else { op::READ_16 };
    lu.admits(Cdb::new(&cdb), nexus)?;
    if write && lu.params().read_only {
        return Err(ScsiOutcome::from_sense(&Sense::new(
            sense::DATA_PROTECT,
            sense::WRITE_PROTECTED,
        )));
    }
    Ok(())
}

/// RECEIVE COPY RESULTS (LID1): the copy manager's OPERATING PARAMETERS, or the COPY STATUS
/// held for `nexus` under the CDB's list identifier (INVALID FIELD IN CDB when none is).
pub(super) fn receive_copy_results(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    nexus: &Nexus,
) -> CmdResult<Vec<u8>> {
    let data = match cdb.service_action() {
        SA_OPERATING_PARAMETERS => operating_parameters(lu.params().block_size),
        SA_COPY_STATUS => lu
            .held_copies()
            .copy_status(nexus, cdb.byte(2))
            .ok_or_else(|| Sense::invalid_cdb_field(2, None))?
            .to_vec(),
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    Ok(truncate(data, cdb.be32(10) as usize))
}

/// OPERATING PARAMETERS data (SPC-4 6.18.4): the limits above, then the descriptor type
/// codes implemented.
fn operating_parameters(block_size: u32) -> Vec<u8> {
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
    d[8..10].copy_from_slice(&(limits::MAX_CSCD_DESCRIPTORS as u16).to_be_bytes());
    d[10..12].copy_from_slice(&(limits::MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
    d[12..16].copy_from_slice(&(limits::MAX_DESCRIPTOR_LIST_BYTES as u32).to_be_bytes());
    d[16..20].copy_from_slice(&limits::MAX_SEGMENT_BYTES.to_be_bytes());
    // Inline data, held data and stream transfers: none (bytes 20..32 stay zero).
    d[34..36].copy_from_slice(&u16::from(limits::CONCURRENT_COPIES).to_be_bytes());
    d[36] = limits::CONCURRENT_COPIES;
    // DATA SEGMENT GRANULARITY: segments copy whole blocks.
    d[37] = block_size.max(1).trailing_zeros() as u8;
    let implemented = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
    d[43] = implemented.len() as u8;
    d.extend_from_slice(&implemented);
    let available = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&available.to_be_bytes());
    d
}
