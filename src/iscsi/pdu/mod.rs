//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, Additional Header Segments and the
//! data segment, for every opcode in both directions.
//!
//! Decoding is validating: a [`Pdu`] only exists if its opcode is known, its lengths are consistent and
//! the fields whose reserved values would change meaning are sane. Everything else about a PDU (is it
//! allowed in this phase, is its CmdSN in the window) is the session's business, not the codec's.
//! Framing (digests, padding, how many bytes to read) is in [`super::framing`].

use std::fmt;

pub use super::bytes::{CdbBytes, HeaderBytes};

mod codec;

pub use codec::{data_segment_length, padding, total_ahs_length};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Reserved task tag value ("no task").
pub const RESERVED_TAG: u32 = 0xFFFF_FFFF;

/// Why a header could not be decoded. Each maps to a Reject reason or a connection close upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a BHS.
    #[error("header is {0} bytes, a BHS needs 48")]
    ShortHeader(usize),
    /// The opcode is not one RFC 7143 defines.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A length field disagrees with the bytes supplied.
    #[error("{0}")]
    BadLength(&'static str),
    /// A field holds a value the protocol forbids.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

/// Every iSCSI opcode (RFC 7143 §11.1.1), initiator opcodes 0x00–0x1f, target opcodes 0x20–0x3f.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    /// Parses the low six bits of BHS byte 0.
    pub fn from_u8(value: u8) -> Result<Self, DecodeError> {
        use Opcode::*;
        Ok(match value & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => ReadyToTransfer,
            0x32 => AsyncMessage,
            0x3f => Reject,
            other => return Err(DecodeError::UnknownOpcode(other)),
        })
    }
}

/// Login stages (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    fn from_bits(bits: u8) -> Result<Self, DecodeError> {
        match bits & 3 {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(DecodeError::InvalidField("login stage 2 is reserved")),
        }
    }
}

/// SAM task attribute of a SCSI Command (ATTR field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttribute {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

/// SCSI Command (opcode 0x01, RFC 7143 §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_flag: bool,
    pub read: bool,
    pub write: bool,
    pub attribute: TaskAttribute,
    pub lun: [u8; 8],
    pub itt: u32,
    pub expected_data_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The CDB: 16 bytes from the BHS followed by any Extended CDB AHS bytes.
    pub cdb: CdbBytes,
    /// Expected Bidirectional Read Data Length AHS, if present.
    pub bidi_read_length: Option<u32>,
}

/// SCSI Response (opcode 0x21, RFC 7143 §11.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI service response: 0 = command completed at target.
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub residual_count: u32,
}

/// Task Management Function Request (opcode 0x02, RFC 7143 §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Task Management Function Response (opcode 0x22, RFC 7143 §11.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-Out (opcode 0x05, RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_flag: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// SCSI Data-In (opcode 0x25, RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_flag: bool,
    pub acknowledge: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// Status is present (S bit); then `status` and the residual are valid.
    pub status_present: bool,
    pub status: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual_count: u32,
}

/// Ready To Transfer (opcode 0x31, RFC 7143 §11.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadyToTransfer {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

/// Asynchronous Message (opcode 0x32, RFC 7143 §11.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: [u8; 8],
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vendor_code: u8,
    pub parameters: [u16; 3],
}

/// Text Request (opcode 0x04, RFC 7143 §11.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_flag: bool,
    pub continue_flag: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Response (opcode 0x24, RFC 7143 §11.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_flag: bool,
    pub continue_flag: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Request (opcode 0x03, RFC 7143 §11.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_flag: bool,
    pub current_stage: Stage,
    pub next_stage: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Login Response (opcode 0x23, RFC 7143 §11.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_flag: bool,
    pub current_stage: Stage,
    pub next_stage: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Logout Request (opcode 0x06, RFC 7143 §11.14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Logout Response (opcode 0x26, RFC 7143 §11.15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// SNACK Request (opcode 0x10, RFC 7143 §11.16). Only meaningful at ErrorRecoveryLevel > 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub snack_type: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// Reject (opcode 0x3f, RFC 7143 §11.17). The data segment carries the rejected header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// NOP-Out (opcode 0x00, RFC 7143 §11.18).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// NOP-In (opcode 0x20, RFC 7143 §11.19).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// A decoded Basic Header Segment (plus what the AHS contributed), one variant per opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    ReadyToTransfer(ReadyToTransfer),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

/// A whole PDU: header and data segment (without padding or digests).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub header: Header,
    pub data: Vec<u8>,
}

impl fmt::Debug for Pdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} +{} data bytes", self.header, self.data.len())
    }
}

impl Pdu {
    /// A PDU with no data segment.
    pub fn new(header: Header) -> Self {
        Pdu {
            header,
            data: Vec::new(),
        }
    }

    /// A PDU carrying a data segment.
    pub fn with_data(header: Header, data: Vec<u8>) -> Self {
        Pdu { header, data }
    }

    /// The opcode of this PDU.
    pub fn opcode(&self) -> Opcode {
        self.header.opcode()
    }

    /// Encodes the BHS and AHS (no data segment). The DataSegmentLength field is taken from `data_len`.
    pub fn encode_header(&self) -> Vec<u8> {
        self.header.encode(self.data.len())
    }

    /// Decodes a PDU from its BHS, AHS bytes and (unpadded) data segment.
    pub fn decode(bhs: &[u8], ahs: &[u8], data: Vec<u8>) -> Result<Pdu, DecodeError> {
        let header = Header::decode(bhs, ahs)?;
        let declared = data_segment_length(bhs)? as usize;
        if declared != data.len() {
            return Err(DecodeError::BadLength(
                "data segment shorter or longer than declared",
            ));
        }
        Ok(Pdu { header, data })
    }
}

/// Decodes an 8-byte LUN field (SAM-5 §4.7) into a LUN number: peripheral (00b) and flat (01b)
/// single-level addressing. Returns `None` for formats this target never hands out.
pub fn decode_lun(lun: &[u8; 8]) -> Option<u64> {
    if lun[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match lun[0] >> 6 {
        0 if lun[0] == 0 => Some(lun[1] as u64),
        1 => Some(((lun[0] as u64 & 0x3f) << 8) | lun[1] as u64),
        _ => None,
    }
}

/// Encodes a LUN number the way [`decode_lun`] reads it: peripheral below 256, flat above.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    if lun < 256 {
        out[1] = lun as u8;
    } else {
        out[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        out[1] = lun as u8;
    }
    out
}

#[cfg(test)]
mod tests;
