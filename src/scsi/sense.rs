//! Sense keys, additional sense codes and the fixed-format sense data builder (SPC-4 4.5.3).

/// Sense key: no error to report.
pub const NO_SENSE: u8 = 0x0;
/// Sense key: the device is not ready.
pub const NOT_READY: u8 = 0x2;
/// Sense key: unrecoverable medium (backend I/O) error.
pub const MEDIUM_ERROR: u8 = 0x3;
/// Sense key: internal target failure.
pub const HARDWARE_ERROR: u8 = 0x4;
/// Sense key: something in the CDB or parameter list is wrong.
pub const ILLEGAL_REQUEST: u8 = 0x5;
/// Sense key: unit attention (reset, parameters changed...).
pub const UNIT_ATTENTION: u8 = 0x6;
/// Sense key: write to a write-protected LU.
pub const DATA_PROTECT: u8 = 0x7;
/// Sense key: an EXTENDED COPY stopped after it had begun (SPC-4 6.4.5).
pub const COPY_ABORTED: u8 = 0xA;
/// Sense key: command aborted.
pub const ABORTED_COMMAND: u8 = 0xB;
/// Sense key: VERIFY / COMPARE AND WRITE data did not match the medium.
pub const MISCOMPARE: u8 = 0xE;

/// ASC/ASCQ: no additional sense information.
pub const NO_ADDITIONAL_SENSE: (u8, u8) = (0x00, 0x00);
/// ASC/ASCQ: operation in progress (an EXTENDED COPY with the list identifier of one still
/// running on the same I_T nexus).
pub const OPERATION_IN_PROGRESS: (u8, u8) = (0x00, 0x16);
/// ASC/ASCQ: logical unit communication failure (a PERSISTENT RESERVE OUT whose record could not
/// be saved, as LIO answers).
pub const LOGICAL_UNIT_COMMUNICATION_FAILURE: (u8, u8) = (0x08, 0x00);
/// ASC/ASCQ: write error.
pub const WRITE_ERROR: (u8, u8) = (0x0C, 0x00);
/// ASC/ASCQ: copy target device not reachable (an EXTENDED COPY names a logical unit or a range
/// the copy manager cannot reach).
pub const COPY_TARGET_DEVICE_NOT_REACHABLE: (u8, u8) = (0x0D, 0x02);
/// ASC/ASCQ: invalid field in command information unit (data-out shorter than the CDB needs).
pub const INVALID_FIELD_IN_CIU: (u8, u8) = (0x0E, 0x03);
/// ASC/ASCQ: unrecovered read error.
pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
/// ASC/ASCQ: parameter list length error.
pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1A, 0x00);
/// ASC/ASCQ: miscompare during verify operation.
pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1D, 0x00);
/// ASC/ASCQ: invalid command operation code (also used for unsupported service actions).
pub const INVALID_COMMAND_OPCODE: (u8, u8) = (0x20, 0x00);
/// ASC/ASCQ: logical block address out of range.
pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
/// ASC/ASCQ: invalid field in CDB.
pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
/// ASC/ASCQ: logical unit not supported.
pub const LU_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
/// ASC/ASCQ: invalid field in parameter list.
pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
/// ASC/ASCQ: more CSCD (target) descriptors than the copy manager takes.
pub const TOO_MANY_TARGET_DESCRIPTORS: (u8, u8) = (0x26, 0x06);
/// ASC/ASCQ: a CSCD (target) descriptor type the copy manager does not implement.
pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE: (u8, u8) = (0x26, 0x07);
/// ASC/ASCQ: more segment descriptors than the copy manager takes.
pub const TOO_MANY_SEGMENT_DESCRIPTORS: (u8, u8) = (0x26, 0x08);
/// ASC/ASCQ: a segment descriptor type the copy manager does not implement.
pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE: (u8, u8) = (0x26, 0x09);
/// ASC/ASCQ: invalid release of persistent reservation.
pub const INVALID_RELEASE_OF_PR: (u8, u8) = (0x26, 0x04);
/// ASC/ASCQ: write protected.
pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
/// ASC/ASCQ: space allocation failed write protect (thin backing store is full).
pub const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
/// ASC/ASCQ: bus device reset function occurred (unit attention after a LOGICAL UNIT RESET or a
/// target reset, SAM-5 6.3.3).
pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: (u8, u8) = (0x29, 0x03);
/// ASC/ASCQ: mode parameters changed (unit attention for the other I_T nexuses after a MODE
/// SELECT changed a value, SPC-4 5.14).
pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2A, 0x01);
/// ASC/ASCQ: reservations preempted (unit attention after another nexus's PERSISTENT RESERVE
/// OUT CLEAR).
pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2A, 0x03);
/// ASC/ASCQ: reservations released (unit attention after a registrants-only or all-registrants
/// reservation was released, or its type changed by PREEMPT).
pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2A, 0x04);
/// ASC/ASCQ: registrations preempted (unit attention for a nexus whose registration another
/// nexus's PREEMPT removed).
pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2A, 0x05);
/// ASC/ASCQ: capacity data has changed (unit attention after the LU was resized).
pub const CAPACITY_DATA_HAS_CHANGED: (u8, u8) = (0x2A, 0x09);
/// ASC/ASCQ: asymmetric access state changed (unit attention after the target port group's
/// ALUA state changed, SPC-4 5.15.2.3).
pub const ASYMMETRIC_ACCESS_STATE_CHANGED: (u8, u8) = (0x2A, 0x06);
/// ASC/ASCQ: saving parameters not supported.
pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
/// ASC/ASCQ: internal target failure.
pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);

/// Length of fixed-format sense data as we build it.
pub const FIXED_SENSE_LEN: usize = 18;

/// Sense-key-specific field pointer for ILLEGAL REQUEST: which byte (and bit) is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the field is in the CDB, false when in the parameter list (C/D bit).
    pub in_cdb: bool,
    /// Byte offset of the bad field.
    pub byte: u16,
    /// Bit position (0..=7) of the bad field's most significant bit, when known.
    pub bit: Option<u8>,
}

/// One sense condition, before encoding: the unit of failure inside the SCSI layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key (bits 3..0 of byte 2).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (sets VALID); e.g. the miscompare offset.
    pub information: Option<u32>,
    /// Field pointer for ILLEGAL REQUEST (sets SKSV).
    pub field: Option<FieldPointer>,
}

impl Sense {
    /// A sense condition from a key and an (ASC, ASCQ) pair.
    pub const fn new(key: u8, (asc, ascq): (u8, u8)) -> Self {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`) of the CDB.
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::new(ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` of the list.
    pub fn invalid_param_field(byte: u16) -> Self {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit: None,
            }),
            ..Sense::new(ILLEGAL_REQUEST, INVALID_FIELD_IN_PARAMETER_LIST)
        }
    }

    /// Encodes as 18 bytes of fixed-format (0x70, current error) sense data.
    pub fn to_fixed(&self) -> Vec<u8> {
        self.encode_fixed().to_vec()
    }

    /// As [`Sense::to_fixed`], held inline.
    pub fn to_sense_data(&self) -> SenseData {
        SenseData {
            bytes: self.encode_fixed(),
            len: FIXED_SENSE_LEN as u8,
        }
    }

    fn encode_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut s = [0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        if let Some(info) = self.information {
            s[0] |= 0x80;
            s[3..7].copy_from_slice(&info.to_be_bytes());
        }
        s[2] = self.key & 0x0F;
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        if let Some(fp) = self.field {
            s[15] = 0x80 | if fp.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = fp.bit {
                s[15] |= 0x08 | (bit & 0x07);
            }
            s[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        }
        s
    }
}

/// The sense data of a command's outcome: fixed-format (18 bytes) or none, held inline so that
/// neither costs an allocation. Reads as `&[u8]`, empty for none.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct SenseData {
    bytes: [u8; FIXED_SENSE_LEN],
    len: u8,
}

impl std::ops::Deref for SenseData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for SenseData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// Fixed-format sense data for a key and ASC/ASCQ with no extra fields.
pub fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    Sense::new(key, (asc, ascq)).to_fixed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layout() {
        let s = fixed(ILLEGAL_REQUEST, 0x20, 0x00);
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 5);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x20, 0));
        assert_eq!(s[15], 0);
    }

    #[test]
    fn information_and_field_pointer() {
        let s = Sense {
            information: Some(0x1234),
            ..Sense::new(MISCOMPARE, MISCOMPARE_DURING_VERIFY)
        }
        .to_fixed();
        assert_eq!(s[0], 0xF0);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        let s = Sense::invalid_cdb_field(2, Some(7)).to_fixed();
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 7);
        assert_eq!(&s[16..18], &[0, 2]);
        let s = Sense::invalid_param_field(300).to_fixed();
        assert_eq!(s[15], 0x80);
        assert_eq!(&s[16..18], &300u16.to_be_bytes());
    }

    #[test]
    fn inline_sense_data_is_the_fixed_format() {
        let sense = Sense::invalid_cdb_field(2, Some(7));
        assert_eq!(&*sense.to_sense_data(), &sense.to_fixed()[..]);
        assert!(SenseData::default().is_empty());
    }
}
