//! A target's logical units as one: commands routed to their LU by LUN, the target-level
//! ones (REPORT LUNS, commands to absent LUNs) answered here, and the SAM LUN encoding.

use std::sync::Arc;

use super::cdb::Cdb;
use super::sense::{self, Sense};
use super::{
    cdb_too_short, finish, inquiry, op, request_sense, truncate, BlockRequest, CmdResult,
    LogicalUnit, Nexus, Plan, ScsiOutcome, ScsiRequest,
};
use crate::backend::BackendError;

/// Encodes a LUN number as the 8-byte SAM LUN: peripheral addressing below 256, flat
/// addressing below 16384, extended flat space (0xD2, 24-bit) above.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        b[0] = 0xD2;
        b[1..4].copy_from_slice(&(lun as u32 & 0xFF_FFFF).to_be_bytes()[1..]);
    }
    b
}

/// Decodes the 8-byte SAM LUN forms produced by [`encode_lun`]; anything else is `u64::MAX`.
pub fn decode_lun(b: &[u8; 8]) -> u64 {
    let rest_zero = |from: usize| b[from..].iter().all(|&x| x == 0);
    match b[0] >> 6 {
        0 if b[0] == 0 && rest_zero(2) => u64::from(b[1]),
        1 if rest_zero(2) => (u64::from(b[0] & 0x3F) << 8) | u64::from(b[1]),
        3 if b[0] == 0xD2 && rest_zero(4) => {
            (u64::from(b[1]) << 16) | (u64::from(b[2]) << 8) | u64::from(b[3])
        }
        _ => u64::MAX,
    }
}

/// A command decoded against a target, before any backend I/O (see [`ScsiTarget::prepare`]).
pub enum Prepared<'t, 'a> {
    /// The command is complete.
    Done(ScsiOutcome),
    /// Run `request` on the LU at position `lun_index` of [`ScsiTarget::luns`], then
    /// [`finish`].
    Io {
        /// The addressed logical unit.
        lu: &'t Arc<LogicalUnit>,
        /// Its index in [`ScsiTarget::luns`].
        lun_index: usize,
        /// The block operation to perform.
        request: BlockRequest<'a>,
        /// Data-Out bytes the command called for, passed through to the outcome.
        data_out_length: u32,
    },
}

/// The set of LUNs one iSCSI target exposes; executes commands (REPORT LUNS and unknown
/// LUNs are handled here).
pub struct ScsiTarget {
    luns: Vec<Arc<LogicalUnit>>,
}

impl ScsiTarget {
    /// A target over `luns` (kept in ascending LUN order for REPORT LUNS).
    pub fn new(mut luns: Vec<Arc<LogicalUnit>>) -> Self {
        luns.sort_by_key(|l| l.params.lun);
        ScsiTarget { luns }
    }

    /// The logical units, in ascending LUN order.
    pub fn luns(&self) -> &[Arc<LogicalUnit>] {
        &self.luns
    }

    /// The position in [`ScsiTarget::luns`] of the LU with LUN number `lun`, if any.
    pub fn lun_index(&self, lun: u64) -> Option<usize> {
        self.luns.iter().position(|l| l.params.lun == lun)
    }

    /// The LU with LUN number `lun`, if any.
    pub fn lun(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns.iter().find(|l| l.params.lun == lun)
    }

    /// Executes one command to completion, synchronously (backend I/O on the calling thread,
    /// under the LU's I/O lock). Safe to call concurrently.
    pub fn execute(&self, req: &ScsiRequest<'_>) -> ScsiOutcome {
        match self.prepare(req) {
            Prepared::Done(outcome) => outcome,
            Prepared::Io {
                lu,
                request,
                data_out_length,
                ..
            } => finish(&request, lu.run(&request), data_out_length),
        }
    }

    /// Decodes one command (pure: no backend I/O): target-level commands and unknown LUNs are
    /// answered here, everything else is planned by its LU.
    pub fn prepare<'t, 'a>(&'t self, req: &ScsiRequest<'a>) -> Prepared<'t, 'a> {
        self.prepare_counted(req, true)
    }

    /// [`ScsiTarget::prepare`] for a command prepared once already whose plan could not travel
    /// with it (it borrows the command's buffers): planned again where it runs, and not
    /// counted again in its LU's [`LogicalUnit::io_totals`].
    pub fn prepare_again<'t, 'a>(&'t self, req: &ScsiRequest<'a>) -> Prepared<'t, 'a> {
        self.prepare_counted(req, false)
    }

    #[inline(always)]
    fn prepare_counted<'t, 'a>(&'t self, req: &ScsiRequest<'a>, count: bool) -> Prepared<'t, 'a> {
        let cdb = Cdb::new(req.cdb);
        if cdb.opcode() == op::REPORT_LUNS && !cdb.is_empty() {
            return Prepared::Done(match self.report_luns(cdb) {
                Ok(d) => ScsiOutcome::with_data(d),
                Err(s) => ScsiOutcome::from_sense(&s),
            });
        }
        if let Some(lun_index) = self.lun_index(req.lun) {
            let lu = &self.luns[lun_index];
            let plan = if count {
                lu.plan(req)
            } else {
                lu.plan_again(req)
            };
            return match plan {
                Plan::Done(outcome) => Prepared::Done(outcome),
                Plan::Io {
                    request,
                    data_out_length,
                } => Prepared::Io {
                    lu,
                    lun_index,
                    request,
                    data_out_length,
                },
                Plan::Copy {
                    list,
                    data_out_length,
                } => match list.resolve(lu, self.luns.iter().map(|l| &**l), req.nexus) {
                    Ok(request) => Prepared::Io {
                        lu,
                        lun_index,
                        request,
                        data_out_length,
                    },
                    Err(outcome) => Prepared::Done(outcome.with_data_out_length(data_out_length)),
                },
            };
        }
        Prepared::Done(Self::absent_lun(cdb))
    }

    /// The answer of a command addressed to a LUN the target does not have.
    fn absent_lun(cdb: Cdb<'_>) -> ScsiOutcome {
        let not_supported = Sense::new(sense::ILLEGAL_REQUEST, sense::LU_NOT_SUPPORTED);
        match cdb.opcode() {
            // SPC-4 6.6.2: INQUIRY to a LUN that is not there answers PQ=3, type 1Fh.
            op::INQUIRY if !cdb.is_empty() && cdb.byte(1) & 0x03 == 0 => {
                ScsiOutcome::with_data(inquiry::not_present(cdb))
            }
            op::REQUEST_SENSE if !cdb.is_empty() => request_sense(cdb, Some(not_supported)),
            _ => ScsiOutcome::from_sense(&not_supported),
        }
    }

    /// REPORT LUNS parameter data (SPC-4 6.33).
    fn report_luns(&self, cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
        if cdb_too_short(cdb) {
            return Err(Sense::invalid_cdb_field(0, None));
        }
        let alloc = cdb.be32(6);
        if alloc < 16 {
            return Err(Sense::invalid_cdb_field(6, None));
        }
        let luns: Vec<u64> = match cdb.byte(2) {
            0 | 2 => self.luns.iter().map(|l| l.params.lun).collect(),
            1 => Vec::new(), // well-known LUNs only: we have none
            _ => return Err(Sense::invalid_cdb_field(2, None)),
        };
        let mut d = Vec::with_capacity(8 + luns.len() * 8);
        d.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for l in luns {
            d.extend_from_slice(&encode_lun(l));
        }
        Ok(truncate(d, alloc as usize))
    }

    /// I_T nexus loss (session ended): drops the SPC-2 reservations `nexus` holds on every
    /// LU. Persistent reservation registrations are kept.
    pub fn release_nexus(&self, nexus: &Nexus) {
        for lu in &self.luns {
            lu.release_nexus(nexus);
        }
    }

    /// Flush every LUN's backend (used at shutdown); reports the first failure.
    pub fn flush_all(&self) -> Result<(), BackendError> {
        let mut first = Ok(());
        for lu in &self.luns {
            if let Err(e) = lu.backend.flush() {
                log::error!("flush of LUN {} failed: {e}", lu.params.lun);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
