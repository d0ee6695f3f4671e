//! The codec proper: lengths read from a BHS, and [`Header`]'s decoding and encoding of every
//! opcode's fields.

use super::*;

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
