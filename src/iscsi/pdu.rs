//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, Additional Header Segments and the
//! data segment, for every opcode in both directions.
//!
//! Decoding is validating: a [`Pdu`] only exists if its opcode is known, its lengths are consistent and
//! the fields whose reserved values would change meaning are sane. Everything else about a PDU (is it
//! allowed in this phase, is its CmdSN in the window) is the session's business, not the codec's.
//! Framing (digests, padding, how many bytes to read) is in [`super::framing`].

use std::fmt;

pub use super::bytes::{CdbBytes, HeaderBytes};

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

/// TotalAHSLength in bytes (BHS byte 4 counts 4-byte words).
pub fn total_ahs_length(bhs: &[u8]) -> Result<usize, DecodeError> {
    if bhs.len() < BHS_LEN {
        return Err(DecodeError::ShortHeader(bhs.len()));
    }
    Ok(bhs[4] as usize * 4)
}

/// DataSegmentLength (BHS bytes 5–7), without padding.
pub fn data_segment_length(bhs: &[u8]) -> Result<u32, DecodeError> {
    if bhs.len() < BHS_LEN {
        return Err(DecodeError::ShortHeader(bhs.len()));
    }
    Ok(u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]))
}

/// Bytes of padding that follow a segment of `len` bytes to reach a 4-byte boundary.
pub fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn lun(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[8..16]);
    out
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

const FINAL: u8 = 0x80;
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LENGTH: u8 = 2;

/// What the AHS of a SCSI Command carried.
struct CommandAhs {
    extended_cdb: Vec<u8>,
    bidi_read_length: Option<u32>,
}

/// Walks the AHS list (RFC 7143 §11.2.2): 2-byte AHSLength, 1-byte type, specific bytes, padded to 4.
fn parse_command_ahs(ahs: &[u8]) -> Result<CommandAhs, DecodeError> {
    let mut out = CommandAhs {
        extended_cdb: Vec::new(),
        bidi_read_length: None,
    };
    let mut rest = ahs;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(DecodeError::BadLength("truncated AHS"));
        }
        let length = be16(rest, 0) as usize;
        let kind = rest[2];
        // AHSLength counts the bytes after the type byte, the first of which is specific.
        let total = 3 + length + padding(3 + length);
        if length == 0 || total > rest.len() {
            return Err(DecodeError::BadLength("AHS length exceeds TotalAHSLength"));
        }
        let specific = &rest[3..3 + length];
        match kind {
            AHS_EXTENDED_CDB => {
                // The first specific byte is reserved; the rest extend the CDB beyond 16 bytes.
                out.extended_cdb.extend_from_slice(&specific[1..]);
            }
            AHS_BIDI_READ_LENGTH => {
                if length != 5 {
                    return Err(DecodeError::BadLength("bidirectional read length AHS"));
                }
                out.bidi_read_length = Some(be32(specific, 1));
            }
            _ => return Err(DecodeError::InvalidField("unknown AHS type")),
        }
        rest = &rest[total..];
    }
    Ok(out)
}

impl Header {
    /// The opcode this header encodes.
    pub fn opcode(&self) -> Opcode {
        match self {
            Header::NopOut(_) => Opcode::NopOut,
            Header::ScsiCommand(_) => Opcode::ScsiCommand,
            Header::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Header::LoginRequest(_) => Opcode::LoginRequest,
            Header::TextRequest(_) => Opcode::TextRequest,
            Header::DataOut(_) => Opcode::DataOut,
            Header::LogoutRequest(_) => Opcode::LogoutRequest,
            Header::SnackRequest(_) => Opcode::SnackRequest,
            Header::NopIn(_) => Opcode::NopIn,
            Header::ScsiResponse(_) => Opcode::ScsiResponse,
            Header::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Header::LoginResponse(_) => Opcode::LoginResponse,
            Header::TextResponse(_) => Opcode::TextResponse,
            Header::DataIn(_) => Opcode::DataIn,
            Header::LogoutResponse(_) => Opcode::LogoutResponse,
            Header::ReadyToTransfer(_) => Opcode::ReadyToTransfer,
            Header::AsyncMessage(_) => Opcode::AsyncMessage,
            Header::Reject(_) => Opcode::Reject,
        }
    }

    /// The Initiator Task Tag, for PDUs that carry one.
    pub fn itt(&self) -> u32 {
        match self {
            Header::NopOut(h) => h.itt,
            Header::ScsiCommand(h) => h.itt,
            Header::TaskMgmtRequest(h) => h.itt,
            Header::LoginRequest(h) => h.itt,
            Header::TextRequest(h) => h.itt,
            Header::DataOut(h) => h.itt,
            Header::LogoutRequest(h) => h.itt,
            Header::SnackRequest(h) => h.itt,
            Header::NopIn(h) => h.itt,
            Header::ScsiResponse(h) => h.itt,
            Header::TaskMgmtResponse(h) => h.itt,
            Header::LoginResponse(h) => h.itt,
            Header::TextResponse(h) => h.itt,
            Header::DataIn(h) => h.itt,
            Header::LogoutResponse(h) => h.itt,
            Header::ReadyToTransfer(h) => h.itt,
            Header::AsyncMessage(_) | Header::Reject(_) => RESERVED_TAG,
        }
    }

    /// Decodes a BHS (exactly its first 48 bytes are used) and the AHS that followed it.
    pub fn decode(bhs: &[u8], ahs: &[u8]) -> Result<Header, DecodeError> {
        if bhs.len() < BHS_LEN {
            return Err(DecodeError::ShortHeader(bhs.len()));
        }
        let b = &bhs[..BHS_LEN];
        if b[0] & 0x80 != 0 {
            return Err(DecodeError::InvalidField("BHS byte 0 bit 7 is reserved"));
        }
        if total_ahs_length(b)? != ahs.len() {
            return Err(DecodeError::BadLength(
                "AHS bytes differ from TotalAHSLength",
            ));
        }
        let opcode = Opcode::from_u8(b[0])?;
        let immediate = b[0] & 0x40 != 0;
        let flags = b[1];
        let is_final = flags & FINAL != 0;
        if opcode != Opcode::ScsiCommand && !ahs.is_empty() {
            return Err(DecodeError::InvalidField("AHS on a PDU that takes none"));
        }
        Ok(match opcode {
            Opcode::NopOut => Header::NopOut(NopOut {
                immediate,
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::ScsiCommand => {
                let extra = parse_command_ahs(ahs)?;
                let cdb = CdbBytes::concat(&b[32..48], &extra.extended_cdb);
                let attribute = match flags & 7 {
                    0 => TaskAttribute::Untagged,
                    1 => TaskAttribute::Simple,
                    2 => TaskAttribute::Ordered,
                    3 => TaskAttribute::HeadOfQueue,
                    4 => TaskAttribute::Aca,
                    _ => return Err(DecodeError::InvalidField("task attribute")),
                };
                Header::ScsiCommand(ScsiCommand {
                    immediate,
                    final_flag: is_final,
                    read: flags & 0x40 != 0,
                    write: flags & 0x20 != 0,
                    attribute,
                    lun: lun(b),
                    itt: be32(b, 16),
                    expected_data_length: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    cdb,
                    bidi_read_length: extra.bidi_read_length,
                })
            }
            Opcode::TaskMgmtRequest => {
                if !is_final {
                    return Err(DecodeError::InvalidField("TMF request without F bit"));
                }
                Header::TaskMgmtRequest(TaskMgmtRequest {
                    immediate,
                    function: flags & 0x7f,
                    lun: lun(b),
                    itt: be32(b, 16),
                    referenced_task_tag: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    ref_cmd_sn: be32(b, 32),
                    exp_data_sn: be32(b, 36),
                })
            }
            Opcode::LoginRequest => {
                let transit = flags & 0x80 != 0;
                let continue_flag = flags & 0x40 != 0;
                if transit && continue_flag {
                    return Err(DecodeError::InvalidField("login T and C bits both set"));
                }
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Header::LoginRequest(LoginRequest {
                    transit,
                    continue_flag,
                    current_stage: Stage::from_bits(flags >> 2)?,
                    next_stage: Stage::from_bits(flags)?,
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: be16(b, 14),
                    itt: be32(b, 16),
                    cid: be16(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                })
            }
            Opcode::TextRequest => {
                let continue_flag = flags & 0x40 != 0;
                if is_final && continue_flag {
                    return Err(DecodeError::InvalidField("text F and C bits both set"));
                }
                Header::TextRequest(TextRequest {
                    immediate,
                    final_flag: is_final,
                    continue_flag,
                    lun: lun(b),
                    itt: be32(b, 16),
                    ttt: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                })
            }
            Opcode::DataOut => Header::DataOut(DataOut {
                final_flag: is_final,
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            Opcode::LogoutRequest => {
                if !is_final {
                    return Err(DecodeError::InvalidField("logout request without F bit"));
                }
                Header::LogoutRequest(LogoutRequest {
                    immediate,
                    reason: flags & 0x7f,
                    itt: be32(b, 16),
                    cid: be16(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                })
            }
            Opcode::SnackRequest => Header::SnackRequest(SnackRequest {
                snack_type: flags & 0x0f,
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            Opcode::NopIn => Header::NopIn(NopIn {
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::ScsiResponse => Header::ScsiResponse(ScsiResponse {
                overflow: flags & 0x04 != 0,
                underflow: flags & 0x02 != 0,
                response: b[2],
                status: b[3],
                itt: be32(b, 16),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
                residual_count: be32(b, 44),
            }),
            Opcode::TaskMgmtResponse => Header::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt: be32(b, 16),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::LoginResponse => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Header::LoginResponse(LoginResponse {
                    transit: flags & 0x80 != 0,
                    continue_flag: flags & 0x40 != 0,
                    current_stage: Stage::from_bits(flags >> 2)?,
                    next_stage: Stage::from_bits(flags)?,
                    version_max: b[2],
                    version_active: b[3],
                    isid,
                    tsih: be16(b, 14),
                    itt: be32(b, 16),
                    stat_sn: be32(b, 24),
                    exp_cmd_sn: be32(b, 28),
                    max_cmd_sn: be32(b, 32),
                    status_class: b[36],
                    status_detail: b[37],
                })
            }
            Opcode::TextResponse => Header::TextResponse(TextResponse {
                final_flag: is_final,
                continue_flag: flags & 0x40 != 0,
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::DataIn => Header::DataIn(DataIn {
                final_flag: is_final,
                acknowledge: flags & 0x40 != 0,
                overflow: flags & 0x04 != 0,
                underflow: flags & 0x02 != 0,
                status_present: flags & 0x01 != 0,
                // Byte 3 is reserved unless the S bit is set (RFC 7143 §11.7.4).
                status: if flags & 0x01 != 0 { b[3] } else { 0 },
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual_count: be32(b, 44),
            }),
            Opcode::LogoutResponse => Header::LogoutResponse(LogoutResponse {
                response: b[2],
                itt: be32(b, 16),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            }),
            Opcode::ReadyToTransfer => Header::ReadyToTransfer(ReadyToTransfer {
                lun: lun(b),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                r2t_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_length: be32(b, 44),
            }),
            Opcode::AsyncMessage => Header::AsyncMessage(AsyncMessage {
                lun: lun(b),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                event: b[36],
                vendor_code: b[37],
                parameters: [be16(b, 38), be16(b, 40), be16(b, 42)],
            }),
            Opcode::Reject => Header::Reject(Reject {
                reason: b[2],
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
            }),
        })
    }

    /// Encodes the BHS followed by any AHS; `data_len` fills DataSegmentLength.
    pub fn encode(&self, data_len: usize) -> Vec<u8> {
        self.encode_bytes(data_len).to_vec()
    }

    /// As [`Header::encode`], inline (no allocation) unless there is an AHS.
    pub fn encode_bytes(&self, data_len: usize) -> HeaderBytes {
        let mut b = [0u8; BHS_LEN];
        let mut ahs = Vec::new();
        b[0] = self.opcode() as u8;
        match self {
            Header::NopOut(h) => {
                b[0] |= (h.immediate as u8) << 6;
                b[1] = FINAL;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::ScsiCommand(h) => {
                b[0] |= (h.immediate as u8) << 6;
                b[1] = (h.final_flag as u8) << 7
                    | (h.read as u8) << 6
                    | (h.write as u8) << 5
                    | h.attribute as u8;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.expected_data_length);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
                let base = h.cdb.len().min(16);
                b[32..32 + base].copy_from_slice(&h.cdb[..base]);
                if h.cdb.len() > 16 {
                    let extra = &h.cdb[16..];
                    let length = (extra.len() + 1) as u16;
                    ahs.extend_from_slice(&length.to_be_bytes());
                    ahs.push(AHS_EXTENDED_CDB);
                    ahs.push(0);
                    ahs.extend_from_slice(extra);
                    ahs.resize(ahs.len() + padding(ahs.len()), 0);
                }
                if let Some(length) = h.bidi_read_length {
                    ahs.extend_from_slice(&5u16.to_be_bytes());
                    ahs.push(AHS_BIDI_READ_LENGTH);
                    ahs.push(0);
                    ahs.extend_from_slice(&length.to_be_bytes());
                }
            }
            Header::TaskMgmtRequest(h) => {
                b[0] |= (h.immediate as u8) << 6;
                b[1] = FINAL | (h.function & 0x7f);
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.referenced_task_tag);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 32, h.ref_cmd_sn);
                put32(&mut b, 36, h.exp_data_sn);
            }
            Header::LoginRequest(h) => {
                b[0] |= 0x40;
                b[1] = (h.transit as u8) << 7
                    | (h.continue_flag as u8) << 6
                    | (h.current_stage as u8) << 2
                    | h.next_stage as u8;
                b[2] = h.version_max;
                b[3] = h.version_min;
                b[8..14].copy_from_slice(&h.isid);
                put16(&mut b, 14, h.tsih);
                put32(&mut b, 16, h.itt);
                put16(&mut b, 20, h.cid);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::TextRequest(h) => {
                b[0] |= (h.immediate as u8) << 6;
                b[1] = (h.final_flag as u8) << 7 | (h.continue_flag as u8) << 6;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::DataOut(h) => {
                b[1] = (h.final_flag as u8) << 7;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 36, h.data_sn);
                put32(&mut b, 40, h.buffer_offset);
            }
            Header::LogoutRequest(h) => {
                b[0] |= (h.immediate as u8) << 6;
                b[1] = FINAL | (h.reason & 0x7f);
                put32(&mut b, 16, h.itt);
                put16(&mut b, 20, h.cid);
                put32(&mut b, 24, h.cmd_sn);
                put32(&mut b, 28, h.exp_stat_sn);
            }
            Header::SnackRequest(h) => {
                b[1] = FINAL | (h.snack_type & 0x0f);
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 28, h.exp_stat_sn);
                put32(&mut b, 40, h.beg_run);
                put32(&mut b, 44, h.run_length);
            }
            Header::NopIn(h) => {
                b[1] = FINAL;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::ScsiResponse(h) => {
                b[1] = FINAL | (h.overflow as u8) << 2 | (h.underflow as u8) << 1;
                b[2] = h.response;
                b[3] = h.status;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.exp_data_sn);
                put32(&mut b, 44, h.residual_count);
            }
            Header::TaskMgmtResponse(h) => {
                b[1] = FINAL;
                b[2] = h.response;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::LoginResponse(h) => {
                b[1] = (h.transit as u8) << 7
                    | (h.continue_flag as u8) << 6
                    | (h.current_stage as u8) << 2
                    | h.next_stage as u8;
                b[2] = h.version_max;
                b[3] = h.version_active;
                b[8..14].copy_from_slice(&h.isid);
                put16(&mut b, 14, h.tsih);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                b[36] = h.status_class;
                b[37] = h.status_detail;
            }
            Header::TextResponse(h) => {
                b[1] = (h.final_flag as u8) << 7 | (h.continue_flag as u8) << 6;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
            }
            Header::DataIn(h) => {
                b[1] = (h.final_flag as u8) << 7
                    | (h.acknowledge as u8) << 6
                    | (h.overflow as u8) << 2
                    | (h.underflow as u8) << 1
                    | h.status_present as u8;
                b[3] = if h.status_present { h.status } else { 0 };
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.data_sn);
                put32(&mut b, 40, h.buffer_offset);
                put32(&mut b, 44, h.residual_count);
            }
            Header::LogoutResponse(h) => {
                b[1] = FINAL;
                b[2] = h.response;
                put32(&mut b, 16, h.itt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put16(&mut b, 40, h.time2wait);
                put16(&mut b, 42, h.time2retain);
            }
            Header::ReadyToTransfer(h) => {
                b[1] = FINAL;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, h.itt);
                put32(&mut b, 20, h.ttt);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.r2t_sn);
                put32(&mut b, 40, h.buffer_offset);
                put32(&mut b, 44, h.desired_length);
            }
            Header::AsyncMessage(h) => {
                b[1] = FINAL;
                b[8..16].copy_from_slice(&h.lun);
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                b[36] = h.event;
                b[37] = h.vendor_code;
                put16(&mut b, 38, h.parameters[0]);
                put16(&mut b, 40, h.parameters[1]);
                put16(&mut b, 42, h.parameters[2]);
            }
            Header::Reject(h) => {
                b[1] = FINAL;
                b[2] = h.reason;
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, h.stat_sn);
                put32(&mut b, 28, h.exp_cmd_sn);
                put32(&mut b, 32, h.max_cmd_sn);
                put32(&mut b, 36, h.data_sn);
            }
        }
        b[4] = (ahs.len() / 4) as u8;
        let dsl = (data_len as u32).to_be_bytes();
        b[5..8].copy_from_slice(&dsl[1..4]);
        HeaderBytes::concat(&b, &ahs)
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
mod tests {
    use super::*;

    fn round_trip(header: Header) {
        let bytes = header.encode(0);
        let ahs_len = total_ahs_length(&bytes).unwrap();
        let decoded =
            Header::decode(&bytes[..BHS_LEN], &bytes[BHS_LEN..BHS_LEN + ahs_len]).unwrap();
        assert_eq!(decoded, header);
    }

    #[test]
    fn every_opcode_round_trips() {
        let lun = encode_lun(3);
        round_trip(Header::NopOut(NopOut {
            immediate: true,
            lun,
            itt: 1,
            ttt: RESERVED_TAG,
            cmd_sn: 5,
            exp_stat_sn: 6,
        }));
        round_trip(Header::ScsiCommand(ScsiCommand {
            immediate: false,
            final_flag: true,
            read: true,
            write: false,
            attribute: TaskAttribute::Ordered,
            lun,
            itt: 0x1000_0001,
            expected_data_length: 4096,
            cmd_sn: 9,
            exp_stat_sn: 10,
            cdb: CdbBytes::from((0..32).collect::<Vec<u8>>()),
            bidi_read_length: Some(512),
        }));
        round_trip(Header::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: 1,
            lun,
            itt: 2,
            referenced_task_tag: 3,
            cmd_sn: 4,
            exp_stat_sn: 5,
            ref_cmd_sn: 6,
            exp_data_sn: 7,
        }));
        round_trip(Header::LoginRequest(LoginRequest {
            transit: true,
            continue_flag: false,
            current_stage: Stage::Operational,
            next_stage: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0, 2, 0x3d, 0, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }));
        round_trip(Header::TextRequest(TextRequest {
            final_flag: true,
            itt: 7,
            ttt: RESERVED_TAG,
            ..Default::default()
        }));
        round_trip(Header::DataOut(DataOut {
            final_flag: true,
            lun,
            itt: 1,
            ttt: 2,
            exp_stat_sn: 3,
            data_sn: 4,
            buffer_offset: 8192,
        }));
        round_trip(Header::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 8,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 2,
        }));
        round_trip(Header::SnackRequest(SnackRequest {
            snack_type: 1,
            itt: 3,
            beg_run: 1,
            run_length: 2,
            ..Default::default()
        }));
        round_trip(Header::NopIn(NopIn {
            itt: RESERVED_TAG,
            ttt: 4,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
            ..Default::default()
        }));
        round_trip(Header::ScsiResponse(ScsiResponse {
            underflow: true,
            status: 2,
            itt: 1,
            residual_count: 10,
            ..Default::default()
        }));
        round_trip(Header::TaskMgmtResponse(TaskMgmtResponse {
            response: 0,
            itt: 1,
            stat_sn: 2,
            exp_cmd_sn: 3,
            max_cmd_sn: 4,
        }));
        round_trip(Header::LoginResponse(LoginResponse {
            transit: true,
            continue_flag: false,
            current_stage: Stage::Security,
            next_stage: Stage::Operational,
            version_max: 0,
            version_active: 0,
            isid: [1, 2, 3, 4, 5, 6],
            tsih: 9,
            itt: 3,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
            status_class: 2,
            status_detail: 1,
        }));
        round_trip(Header::TextResponse(TextResponse {
            final_flag: true,
            itt: 1,
            ttt: RESERVED_TAG,
            ..Default::default()
        }));
        round_trip(Header::DataIn(DataIn {
            final_flag: true,
            status_present: true,
            status: 0,
            underflow: true,
            residual_count: 12,
            itt: 5,
            ttt: RESERVED_TAG,
            buffer_offset: 4096,
            ..Default::default()
        }));
        round_trip(Header::LogoutResponse(LogoutResponse {
            itt: 1,
            time2wait: 2,
            time2retain: 20,
            ..Default::default()
        }));
        round_trip(Header::ReadyToTransfer(ReadyToTransfer {
            itt: 1,
            ttt: 2,
            r2t_sn: 1,
            buffer_offset: 65536,
            desired_length: 65536,
            ..Default::default()
        }));
        round_trip(Header::AsyncMessage(AsyncMessage {
            event: 1,
            parameters: [1, 2, 3],
            ..Default::default()
        }));
        round_trip(Header::Reject(Reject {
            reason: 4,
            stat_sn: 1,
            ..Default::default()
        }));
    }

    #[test]
    fn rejects_unknown_opcode_and_short_headers() {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = 0x1c;
        assert_eq!(
            Header::decode(&bhs, &[]),
            Err(DecodeError::UnknownOpcode(0x1c))
        );
        assert_eq!(
            Header::decode(&bhs[..20], &[]),
            Err(DecodeError::ShortHeader(20))
        );
        bhs[0] = 0x80;
        assert!(Header::decode(&bhs, &[]).is_err());
    }

    #[test]
    fn rejects_inconsistent_ahs() {
        let mut bhs = Header::ScsiCommand(ScsiCommand {
            immediate: false,
            final_flag: true,
            read: false,
            write: false,
            attribute: TaskAttribute::Simple,
            lun: [0; 8],
            itt: 1,
            expected_data_length: 0,
            cmd_sn: 1,
            exp_stat_sn: 1,
            cdb: CdbBytes::from([0; 16]),
            bidi_read_length: None,
        })
        .encode(0);
        bhs[4] = 1;
        // Declared one AHS word but none supplied.
        assert!(Header::decode(&bhs, &[]).is_err());
        // An AHS whose own length runs past TotalAHSLength.
        assert!(Header::decode(&bhs, &[0, 9, 1, 0]).is_err());
        // AHS on an opcode that takes none.
        let mut nop = Header::NopOut(NopOut::default()).encode(0);
        nop[4] = 1;
        assert!(Header::decode(&nop, &[0, 1, 1, 0]).is_err());
    }

    #[test]
    fn lun_encoding() {
        for lun in [0u64, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(&encode_lun(lun)), Some(lun));
        }
        assert_eq!(decode_lun(&[0, 0, 1, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[0x80, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
