//! Submission and completion queue entries (NVMe base 2.0 §4.2, §4.6; NVMe over Fabrics 1.1
//! §2.1 capsules), NVMe status codes (base §4.6.1.2) and the SGL descriptor of a fabrics
//! command (base §4.3.2). The 64-byte SQE is read through named accessors, never by offsets in
//! the command handlers.

/// Length of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Length of a completion queue entry.
pub const CQE_LEN: usize = 16;

/// A submission queue entry as received in a CapsuleCmd.
#[derive(Clone, PartialEq, Eq)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqe")
            .field("opcode", &self.opcode())
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .finish()
    }
}

/// The fabrics command opcode (NVMe-oF 1.1 §3.1); the command type is in [`Sqe::fctype`].
pub const FABRICS_OPCODE: u8 = 0x7F;

/// Byte offsets of SQE fields, for Connect's "invalid parameter offset" (NVMe-oF 1.1 §3.3).
pub mod sqe_offset {
    pub const QID: u16 = 42;
    pub const SQSIZE: u16 = 44;
    pub const CATTR: u16 = 46;
    pub const RECFMT: u16 = 40;
}

impl Sqe {
    fn le16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    fn le32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }

    fn le64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Command dword 0 bits 7:0.
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }

    /// PRP or SGL for data transfer (PSDT, CDW0 bits 15:14); fabrics commands must use SGLs
    /// (NVMe-oF 1.1 §2.3.1), i.e. a non-zero value.
    pub fn psdt(&self) -> u8 {
        self.0[1] >> 6
    }

    /// Command identifier.
    pub fn cid(&self) -> u16 {
        self.le16(2)
    }

    /// Namespace identifier.
    pub fn nsid(&self) -> u32 {
        self.le32(4)
    }

    /// Command dword `n` (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        debug_assert!((10..=15).contains(&n));
        self.le32(n * 4)
    }

    /// Command dwords 10 and 11 as one 64-bit value (the starting LBA of I/O commands).
    pub fn cdw10_11(&self) -> u64 {
        self.le64(40)
    }

    /// The data SGL descriptor (SGL1, bytes 24..40).
    pub fn sgl(&self) -> SglDescriptor {
        SglDescriptor {
            address: self.le64(24),
            length: self.le32(32),
            descriptor_type: self.0[39],
        }
    }

    /// Fabrics command type (NVMe-oF 1.1 §2.1, byte 4 of a fabrics command).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }

    /// Fabrics: record format (Connect, Disconnect).
    pub fn recfmt(&self) -> u16 {
        self.le16(40)
    }

    /// Connect: queue identifier.
    pub fn connect_qid(&self) -> u16 {
        self.le16(42)
    }

    /// Connect: submission queue size, 0's based.
    pub fn connect_sqsize(&self) -> u16 {
        self.le16(44)
    }

    /// Connect: connect attributes (bit 2: disable SQ flow control).
    pub fn connect_cattr(&self) -> u8 {
        self.0[46]
    }

    /// Connect: keep alive timeout in milliseconds.
    pub fn connect_kato(&self) -> u32 {
        self.le32(48)
    }

    /// Property Get/Set: the property size (0: 4 bytes, 1: 8 bytes).
    pub fn property_size(&self) -> u8 {
        self.0[40] & 0x07
    }

    /// Property Get/Set: offset of the property.
    pub fn property_offset(&self) -> u32 {
        self.le32(44)
    }

    /// Property Set: the value.
    pub fn property_value(&self) -> u64 {
        self.le64(48)
    }

    /// AUTH_Send / AUTH_Receive: (SECP, SPSP0, SPSP1), the security protocol and its
    /// specific fields (NVMe base 2.0 §6.2, §6.3; Linux `nvmf_auth_send_command`).
    pub fn auth_protocol(&self) -> (u8, u8, u8) {
        (self.0[43], self.0[41], self.0[42])
    }

    /// AUTH_Send's TL (transfer length) or AUTH_Receive's AL (allocation length).
    pub fn auth_length(&self) -> u32 {
        self.le32(44)
    }
}

/// SGL descriptor types a fabrics host uses (base 2.0 §4.3.2; NVMe/TCP 1.0 §3.3.2).
pub mod sgl_type {
    /// Data Block, sub type Offset: the data is in the capsule at `address`.
    pub const IN_CAPSULE: u8 = 0x01;
    /// Transport SGL Data Block, transport specific: the data moves by C2HData / R2T+H2CData.
    pub const TRANSPORT: u8 = 0x5A;
}

/// SGL1 of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    /// Type (bits 7:4) and sub type (bits 3:0).
    pub descriptor_type: u8,
}

/// An NVMe status: type, code and Do Not Retry (base 2.0 §4.6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Status code type.
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do not retry: the same command would fail again.
    pub dnr: bool,
}

impl Status {
    const fn new(sct: u8, sc: u8, dnr: bool) -> Self {
        Status { sct, sc, dnr }
    }

    pub const SUCCESS: Self = Self::new(0, 0x00, false);
    pub const INVALID_OPCODE: Self = Self::new(0, 0x01, true);
    pub const INVALID_FIELD: Self = Self::new(0, 0x02, true);
    pub const COMMAND_ID_CONFLICT: Self = Self::new(0, 0x03, true);
    pub const DATA_TRANSFER_ERROR: Self = Self::new(0, 0x04, false);
    pub const INTERNAL_ERROR: Self = Self::new(0, 0x06, false);
    pub const ABORTED_SQ_DELETION: Self = Self::new(0, 0x08, false);
    pub const INVALID_NAMESPACE: Self = Self::new(0, 0x0B, true);
    pub const COMMAND_SEQUENCE_ERROR: Self = Self::new(0, 0x0C, true);
    pub const DATA_SGL_LENGTH_INVALID: Self = Self::new(0, 0x0F, true);
    pub const SGL_TYPE_INVALID: Self = Self::new(0, 0x11, true);
    pub const SGL_OFFSET_INVALID: Self = Self::new(0, 0x16, true);
    pub const NAMESPACE_WRITE_PROTECTED: Self = Self::new(0, 0x20, true);
    /// A data digest error (NVMe/TCP 1.0 H2CData PDU): the host may retry.
    pub const TRANSIENT_TRANSPORT_ERROR: Self = Self::new(0, 0x22, false);
    pub const LBA_OUT_OF_RANGE: Self = Self::new(0, 0x80, true);
    pub const CAPACITY_EXCEEDED: Self = Self::new(0, 0x81, true);
    /// The namespace cannot take commands now; the host may retry (DNR clear).
    pub const NAMESPACE_NOT_READY: Self = Self::new(0, 0x82, false);
    /// A reservation held over another fabric (SCSI persistent reservations) fences the
    /// namespace.
    pub const RESERVATION_CONFLICT: Self = Self::new(0, 0x83, true);
    /// A Reservation Report without the extended data structure: this subsystem's Host
    /// Identifiers are 128 bits (NVMe-oF 1.1 §3.3), which only that structure holds.
    pub const HOST_ID_INCONSISTENT_FORMAT: Self = Self::new(0, 0x18, true);
    pub const INVALID_QUEUE_IDENTIFIER: Self = Self::new(1, 0x01, true);
    pub const ASYNC_EVENT_LIMIT_EXCEEDED: Self = Self::new(1, 0x05, true);
    pub const INVALID_LOG_PAGE: Self = Self::new(1, 0x09, true);
    pub const FEATURE_NOT_SAVEABLE: Self = Self::new(1, 0x0D, true);
    pub const FEATURE_NOT_CHANGEABLE: Self = Self::new(1, 0x0E, true);
    /// Fabrics Connect: a record format we do not know.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Self = Self::new(1, 0x80, true);
    /// Fabrics Connect: no controller can be created now.
    pub const CONNECT_CONTROLLER_BUSY: Self = Self::new(1, 0x81, false);
    /// Fabrics Connect: a parameter is invalid; DW0 says which (NVMe-oF 1.1 §3.3).
    pub const CONNECT_INVALID_PARAMETERS: Self = Self::new(1, 0x82, true);
    /// Fabrics Connect: the host NQN is not allowed on the subsystem.
    pub const CONNECT_INVALID_HOST: Self = Self::new(1, 0x84, true);
    /// The queue must authenticate first (NVMe base 2.0 §8.13; Linux NVME_SC_AUTH_REQUIRED).
    pub const AUTH_REQUIRED: Self = Self::new(1, 0x91, true);
    /// Path related: the namespace is not accessible through this controller (base 2.0
    /// Asymmetric Access Inaccessible); a multipathing host tries another path.
    pub const ASYMMETRIC_ACCESS_INACCESSIBLE: Self = Self::new(3, 0x02, false);
    pub const WRITE_FAULT: Self = Self::new(2, 0x80, false);
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(2, 0x81, false);
    pub const COMPARE_FAILURE: Self = Self::new(2, 0x85, true);

    /// The 15-bit status field (SC bits 7:0, SCT bits 10:8, DNR bit 14).
    pub fn field(&self) -> u16 {
        u16::from(self.sc) | u16::from(self.sct & 7) << 8 | u16::from(self.dnr) << 14
    }

    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
}

/// A completion queue entry as carried in a CapsuleResp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Command specific dwords 0 and 1.
    pub result: u64,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier (the queue's QID).
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
}

impl Completion {
    /// The 16 bytes of the CQE. The phase tag is 0: fabrics have no phase (NVMe-oF 1.1 §2.2).
    pub fn encode(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        b[0..8].copy_from_slice(&self.result.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&(self.status.field() << 1).to_le_bytes());
        b
    }
}

/// Admin command opcodes (base 2.0 §5).
pub mod admin_opcode {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// NVM command set I/O opcodes (NVM Command Set 1.0 §3).
pub mod io_opcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    pub const RESERVATION_REGISTER: u8 = 0x0D;
    pub const RESERVATION_REPORT: u8 = 0x0E;
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    pub const RESERVATION_RELEASE: u8 = 0x15;
}

/// Fabrics command types (NVMe-oF 1.1 §3).
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTH_SEND: u8 = 0x05;
    pub const AUTH_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_accessors_read_the_spec_offsets() {
        let mut b = [0u8; 64];
        b[0] = 0x7F;
        b[1] = 0x40;
        b[2..4].copy_from_slice(&0x1234u16.to_le_bytes());
        b[4] = 0x01;
        b[24..32].copy_from_slice(&7u64.to_le_bytes());
        b[32..36].copy_from_slice(&1024u32.to_le_bytes());
        b[39] = 0x01;
        b[42..44].copy_from_slice(&3u16.to_le_bytes());
        b[44..46].copy_from_slice(&127u16.to_le_bytes());
        b[46] = 4;
        b[48..52].copy_from_slice(&5000u32.to_le_bytes());
        let s = Sqe(b);
        assert_eq!(
            (s.opcode(), s.psdt(), s.cid(), s.fctype()),
            (0x7F, 1, 0x1234, 1)
        );
        assert_eq!(
            s.sgl(),
            SglDescriptor {
                address: 7,
                length: 1024,
                descriptor_type: 1
            }
        );
        assert_eq!(
            (s.connect_qid(), s.connect_sqsize(), s.connect_cattr()),
            (3, 127, 4)
        );
        assert_eq!(s.connect_kato(), 5000);
        let mut b = [0u8; 64];
        b[41..44].copy_from_slice(&[1, 2, 0xE9]);
        b[44..48].copy_from_slice(&4096u32.to_le_bytes());
        let s = Sqe(b);
        assert_eq!((s.auth_protocol(), s.auth_length()), ((0xE9, 1, 2), 4096));
    }

    #[test]
    fn cqe_status_is_shifted_past_the_phase_bit() {
        let c = Completion {
            result: 0x1_0000_0002,
            sqhd: 3,
            sqid: 1,
            cid: 9,
            status: Status::LBA_OUT_OF_RANGE,
        };
        let b = c.encode();
        assert_eq!(&b[0..8], &0x1_0000_0002u64.to_le_bytes());
        assert_eq!(&b[8..14], &[3, 0, 1, 0, 9, 0]);
        // SC 0x80, SCT 0, DNR: field 0x4080, shifted left once.
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 0x8100);
    }
}
