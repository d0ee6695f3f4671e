//! The table of supported commands and REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).

use super::cdb::Cdb;
use super::op;
use super::sense::Sense;
use super::{truncate, CmdResult};

/// One supported command: opcode, service action (for 0x9E/0xA3) and CDB usage bitmap
/// (byte 0 is the opcode, then the bits the device server looks at; length = CDB length).
struct OpInfo {
    opcode: u8,
    service_action: Option<u8>,
    usage: &'static [u8],
}

const fn e(opcode: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action: None,
        usage,
    }
}

const fn sa(opcode: u8, service_action: u8, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action: Some(service_action),
        usage,
    }
}

const FF: u8 = 0xFF;

/// Every command we implement, ascending by opcode. A bit is set in a usage map only when
/// the command decodes that bit (fields we reject when non-zero, like RDPROTECT, are 0).
static COMMANDS: &[OpInfo] = &[
    e(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0]),
    e(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, FF, 0]),
    e(op::READ_6, &[0x08, 0x1F, FF, FF, FF, 0]),
    e(op::WRITE_6, &[0x0A, 0x1F, FF, FF, FF, 0]),
    e(op::INQUIRY, &[0x12, 0x01, FF, FF, FF, 0]),
    e(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, FF, 0]),
    e(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0]),
    e(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0]),
    e(op::MODE_SENSE_6, &[0x1A, 0x08, FF, FF, FF, 0]),
    e(op::START_STOP_UNIT, &[0x1B, 0x01, 0, 0x0F, 0xF7, 0]),
    e(op::PREVENT_ALLOW, &[0x1E, 0, 0, 0, 0x03, 0]),
    e(
        op::READ_CAPACITY_10,
        &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, 0],
    ),
    e(op::READ_10, &[0x28, 0x18, FF, FF, FF, FF, 0, FF, FF, 0]),
    e(op::WRITE_10, &[0x2A, 0x18, FF, FF, FF, FF, 0, FF, FF, 0]),
    e(
        op::WRITE_VERIFY_10,
        &[0x2E, 0x12, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    e(op::VERIFY_10, &[0x2F, 0x16, FF, FF, FF, FF, 0, FF, FF, 0]),
    e(
        op::PRE_FETCH_10,
        &[0x34, 0x02, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    e(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x02, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    e(
        op::READ_DEFECT_DATA_10,
        &[0x37, 0, 0x1F, 0, 0, 0, 0, FF, FF, 0],
    ),
    e(
        op::WRITE_SAME_10,
        &[0x41, 0x08, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    e(op::UNMAP, &[0x42, 0, 0, 0, 0, 0, 0, FF, FF, 0]),
    e(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, 0]),
    e(op::MODE_SENSE_10, &[0x5A, 0x18, FF, FF, 0, 0, 0, FF, FF, 0]),
    sa(
        op::PERSISTENT_RESERVE_IN,
        0,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        1,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        2,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_IN,
        3,
        &[0x5E, 0x1F, 0, 0, 0, 0, 0, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        0,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        1,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        2,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        3,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        4,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        5,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::PERSISTENT_RESERVE_OUT,
        6,
        &[0x5F, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
    ),
    sa(
        op::EXTENDED_COPY,
        0x00, // LID1
        &[0x83, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    sa(
        op::RECEIVE_COPY_RESULTS,
        crate::scsi::xcopy::SA_COPY_STATUS,
        &[0x84, 0x1F, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    sa(
        op::RECEIVE_COPY_RESULTS,
        crate::scsi::xcopy::SA_OPERATING_PARAMETERS,
        &[0x84, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    e(
        op::READ_16,
        &[
            0x88, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::COMPARE_AND_WRITE,
        &[
            0x89, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0, 0,
        ],
    ),
    e(
        op::WRITE_16,
        &[
            0x8A, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::ORWRITE_16,
        &[
            0x8B, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::WRITE_VERIFY_16,
        &[
            0x8E, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::VERIFY_16,
        &[
            0x8F, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::PRE_FETCH_16,
        &[
            0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::WRITE_SAME_16,
        &[
            0x93, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::WRITE_ATOMIC_16,
        &[
            0x9C, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    OpInfo {
        opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(op::SA_READ_CAPACITY_16),
        usage: &[
            0x9E, 0x1F, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    },
    sa(
        op::SERVICE_ACTION_IN_16,
        op::SA_GET_LBA_STATUS,
        &[
            0x9E, 0x1F, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    e(
        op::REPORT_LUNS,
        &[0xA0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    sa(
        op::MAINTENANCE_IN,
        super::alua::SA_REPORT_TARGET_PORT_GROUPS,
        &[0xA3, 0xFF, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    OpInfo {
        opcode: op::MAINTENANCE_IN,
        service_action: Some(op::SA_REPORT_SUPPORTED_OPCODES),
        usage: &[0xA3, 0x1F, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    },
    e(
        op::READ_12,
        &[0xA8, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    e(
        op::WRITE_12,
        &[0xAA, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    e(
        op::WRITE_VERIFY_12,
        &[0xAE, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    e(
        op::VERIFY_12,
        &[0xAF, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    e(
        op::READ_DEFECT_DATA_12,
        &[0xB7, 0x1F, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
];

/// True when `opcode` has service actions (so RSOC must be asked with one).
fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// Looks up a command; `sa` is only compared for opcodes that have service actions.
fn find(opcode: u8, sa: u8) -> Option<&'static OpInfo> {
    COMMANDS
        .iter()
        .find(|c| c.opcode == opcode && c.service_action.map_or(true, |s| s == sa))
}

/// Whether the LU-level dispatcher implements `opcode` (with service action `sa`).
/// REPORT LUNS is implemented at target level but listed here so RSOC reports it.
/// PERSISTENT RESERVE IN/OUT accept every service action here and reject the unknown ones
/// with INVALID FIELD IN CDB (libiscsi's test_prin_serviceaction_range.c), not as an
/// unsupported command.
pub(super) fn is_supported(opcode: u8, sa: u8) -> bool {
    opcode != op::REPORT_LUNS
        && (find(opcode, sa).is_some()
            || matches!(
                opcode,
                op::PERSISTENT_RESERVE_IN | op::PERSISTENT_RESERVE_OUT
            ))
}

/// The 12-byte command timeouts descriptor (no timeouts specified).
const TIMEOUTS: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES: reporting options 0 (all), 1 (opcode), 2 (opcode +
/// service action) and 3 (opcode, service action if it has any); RCTD adds timeouts.
pub(super) fn report_supported(cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
    let rctd = cdb.byte(2) & 0x80 != 0;
    let options = cdb.byte(2) & 0x07;
    let req_op = cdb.byte(3);
    let req_sa = cdb.be16(4);
    let alloc = cdb.be32(6) as usize;
    let d = match options {
        0 => {
            let desc_len = if rctd { 20 } else { 8 };
            let count = COMMANDS.len();
            let mut d = ((count * desc_len) as u32).to_be_bytes().to_vec();
            for c in COMMANDS {
                d.push(c.opcode);
                d.push(0);
                d.extend_from_slice(&u16::from(c.service_action.unwrap_or(0)).to_be_bytes());
                d.push(0);
                d.push(if rctd { 0x02 } else { 0 } | u8::from(c.service_action.is_some()));
                d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                if rctd {
                    d.extend_from_slice(&TIMEOUTS);
                }
            }
            d
        }
        1..=3 => {
            let with_sa = has_service_actions(req_op);
            match (options, with_sa) {
                (1, true) => return Err(Sense::invalid_cdb_field(2, Some(2))),
                (2, false) if find(req_op, 0).is_some() => {
                    return Err(Sense::invalid_cdb_field(2, Some(2)))
                }
                _ => {}
            }
            let sa = if with_sa {
                u8::try_from(req_sa).ok()
            } else {
                Some(0)
            };
            match sa.and_then(|sa| find(req_op, sa)) {
                Some(c) => {
                    let mut d = vec![0, if rctd { 0x80 } else { 0 } | 0x03];
                    d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    d.extend_from_slice(c.usage);
                    if rctd {
                        d.extend_from_slice(&TIMEOUTS);
                    }
                    d
                }
                None => vec![0, 0x01, 0, 0],
            }
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
    };
    Ok(truncate(d, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_consistent() {
        for w in COMMANDS.windows(2) {
            let key = |c: &OpInfo| (c.opcode, c.service_action);
            assert!(key(&w[0]) < key(&w[1]));
            // An opcode has service actions in every entry or in none.
            if w[0].opcode == w[1].opcode {
                assert!(w[0].service_action.is_some() && w[1].service_action.is_some());
            }
        }
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode);
            assert_eq!(Some(c.usage.len()), super::super::cdb::cdb_length(c.opcode));
        }
    }
}
