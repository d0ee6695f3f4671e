//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, PDU definitions): the 8-byte common header, the
//! PDU-specific headers of what a host sends (ICReq, CapsuleCmd, H2CData, H2CTermReq) as typed
//! accessors over validated bytes, and encoders for what a controller sends (ICResp,
//! CapsuleResp, C2HData, R2T, C2HTermReq). All multi-byte fields are little-endian.
//!
//! Layout of every PDU (§3.6.1): common header (CH) and PDU-specific header (PSH), `HLEN` bytes
//! together; a header digest (HDGST) if negotiated; padding up to `PDO`; the data; a data digest
//! (DDGST) if negotiated and there is data. `PLEN` counts all of it.

use super::command::{Completion, Sqe, SQE_LEN};
use crate::iscsi::bytes::InlineBytes;

/// Length of the common header (common header).
pub const CH_LEN: usize = 8;
/// Length of a CRC32C digest.
pub const DIGEST_LEN: usize = 4;

/// PDU types (common header).
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags (common header).
pub mod flags {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 0x02;
    /// C2HData/H2CData: the last PDU of the data transfer (of a command, or of an R2T).
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command completed successfully; no CapsuleResp follows (C2HData PDU, only when
    /// SQ flow control is disabled).
    pub const SUCCESS: u8 = 0x08;
}

/// HLEN of each PDU type (each PDU's definition).
pub mod hlen {
    pub const IC: usize = 128;
    pub const TERM_REQ: usize = 24;
    pub const CAPSULE_CMD: usize = 8 + super::SQE_LEN;
    pub const CAPSULE_RESP: usize = 24;
    pub const DATA: usize = 24;
    pub const R2T: usize = 24;
}

/// Largest data a TermReq carries: the PDU header in error, up to a PLEN of 152 (TermReq PDUs;
/// Linux include/linux/nvme-tcp.h NVME_TCP_MAX_C2HTERM_PLEN).
pub const MAX_TERM_DATA: usize = 152 - hlen::TERM_REQ;

/// Fatal error status of a TermReq (NVMe/TCP 1.0 TermReq PDUs; Linux include/linux/nvme-tcp.h
/// enum nvme_tcp_fatal_error_status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fes {
    /// A PDU header field is invalid; FEI is its byte offset in the PDU.
    InvalidHeaderField = 0x01,
    /// A PDU arrived that is not valid at this point of the exchange.
    PduSequenceError = 0x02,
    /// The header digest did not match.
    HeaderDigestError = 0x03,
    /// H2CData outside the range an R2T asked for.
    DataOutOfRange = 0x04,
    /// H2CData longer than MAXH2CDATA (R2T limit / data transfer limit exceeded).
    DataLimitExceeded = 0x05,
    /// A parameter the controller does not support (e.g. PFV); FEI is its byte offset.
    UnsupportedParameter = 0x06,
}

/// The common header of a PDU (common header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    /// Length of CH + PSH.
    pub hlen: u8,
    /// Offset of the data from the start of the PDU; 0 when there is no data.
    pub pdo: u8,
    /// Length of the whole PDU.
    pub plen: u32,
}

impl CommonHeader {
    /// Byte offsets of the fields, for TermReq's FEI.
    pub const FLAGS_OFFSET: u32 = 1;
    pub const HLEN_OFFSET: u32 = 2;
    pub const PDO_OFFSET: u32 = 3;
    pub const PLEN_OFFSET: u32 = 4;

    /// Reads the common header at the start of `bytes` (at least [`CH_LEN`] long).
    pub fn parse(bytes: &[u8; CH_LEN]) -> Self {
        CommonHeader {
            pdu_type: bytes[0],
            flags: bytes[1],
            hlen: bytes[2],
            pdo: bytes[3],
            plen: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&[self.pdu_type, self.flags, self.hlen, self.pdo]);
        out[4..CH_LEN].copy_from_slice(&self.plen.to_le_bytes());
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// ICReq PDU: the host's connection parameters, the first PDU on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version; only 0 exists.
    pub pfv: u16,
    /// Host PDU data alignment: data in our PDUs must start at a multiple of (HPDA+1)×4 bytes.
    pub hpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Outstanding R2Ts per command the host accepts, 0's based.
    pub maxr2t: u32,
}

impl IcReq {
    pub const PFV_OFFSET: u32 = 8;
    pub const HPDA_OFFSET: u32 = 10;

    /// Decodes the PDU header (HLEN bytes, already checked to be [`hlen::IC`] long).
    pub fn parse(header: &[u8]) -> Self {
        IcReq {
            pfv: le16(header, 8),
            hpda: header[10],
            header_digest: header[11] & 0x01 != 0,
            data_digest: header[11] & 0x02 != 0,
            maxr2t: le32(header, 12),
        }
    }
}

/// ICResp PDU: the controller's answer to ICReq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcResp {
    /// Controller PDU data alignment, 0's based dwords; Linux's host refuses anything but 0
    /// (drivers/nvme/host/tcp.c nvme_tcp_init_connection: "unsupported cpda").
    pub cpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest H2CData PDU data the controller accepts.
    pub maxh2cdata: u32,
}

impl IcResp {
    /// The whole PDU (no digests: they are not in effect until after the exchange).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; CH_LEN];
        CommonHeader {
            pdu_type: pdu_type::IC_RESP,
            flags: 0,
            hlen: hlen::IC as u8,
            pdo: 0,
            plen: hlen::IC as u32,
        }
        .write(&mut out);
        out.extend_from_slice(&0u16.to_le_bytes()); // PFV 0
        out.push(self.cpda);
        out.push(u8::from(self.header_digest) | u8::from(self.data_digest) << 1);
        out.extend_from_slice(&self.maxh2cdata.to_le_bytes());
        out.resize(hlen::IC, 0);
        out
    }
}

/// H2CData PDU header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2CDataHeader {
    /// Command capsule CID of the command this data belongs to.
    pub cccid: u16,
    /// Transfer tag from the R2T.
    pub ttag: u16,
    /// Offset of this data within the command's data.
    pub datao: u32,
    /// Length of this PDU's data.
    pub datal: u32,
    pub last: bool,
}

impl H2CDataHeader {
    pub const CCCID_OFFSET: u32 = 8;
    pub const TTAG_OFFSET: u32 = 10;
    pub const DATAO_OFFSET: u32 = 12;
    pub const DATAL_OFFSET: u32 = 16;

    /// Decodes the PDU header (HLEN bytes, already checked to be [`hlen::DATA`] long).
    pub fn parse(ch: &CommonHeader, header: &[u8]) -> Self {
        H2CDataHeader {
            cccid: le16(header, 8),
            ttag: le16(header, 10),
            datao: le32(header, 12),
            datal: le32(header, 16),
            last: ch.flags & flags::LAST_PDU != 0,
        }
    }
}

/// H2CTermReq PDU fields: why the host is ending the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReq {
    pub fes: u16,
    pub fei: u32,
}

impl TermReq {
    /// Decodes the PDU header (HLEN bytes, already checked to be [`hlen::TERM_REQ`] long).
    pub fn parse(header: &[u8]) -> Self {
        TermReq {
            fes: le16(header, 8),
            fei: le32(header, 10),
        }
    }
}

/// A PDU from the host, decoded. Its data (in-capsule or H2CData) is carried beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPdu {
    IcReq(IcReq),
    /// The SQE inline (64 bytes): receiving a command allocates nothing.
    CapsuleCmd(Sqe),
    H2CData(H2CDataHeader),
    H2CTermReq(TermReq),
}

/// Digest and alignment settings for the PDUs a controller sends, fixed by the ICReq exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendSettings {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Data in our PDUs starts at a multiple of this many bytes ((HPDA+1)×4).
    pub data_alignment: usize,
}

/// CRC32C as NVMe/TCP puts it on the wire: little-endian (Linux drivers/nvme/host/tcp.c
/// nvme_tcp_hdgst stores `cpu_to_le32` of the CRC).
pub fn digest(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// The bytes of a controller PDU before its data: CH, PSH and header digest (24 + 4 bytes at
/// most for CapsuleResp, R2T and C2HData), held inline; padding up to a PDO beyond that (a host
/// asking HPDA > 0) moves it to the heap.
pub type PduHead = InlineBytes<32>;

/// The data digest after a PDU's data, or nothing.
pub type PduTail = InlineBytes<{ DIGEST_LEN }>;

/// The bytes of a PDU that precede its data (CH, PSH, HDGST, padding up to PDO) and the data
/// digest that follows it: a transport writes `head`, the data, then `tail`, so read data need
/// not be copied into the PDU. Neither allocates (see [`PduHead`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub head: PduHead,
    pub tail: PduTail,
}

/// Frames a controller PDU: `psh` is the PDU-specific header (HLEN − 8 bytes), `data` its data
/// (possibly empty). Digests and padding follow `settings`.
pub fn frame(pdu_type: u8, pdu_flags: u8, psh: &[u8], data: &[u8], s: &SendSettings) -> Framed {
    let data_digest = (s.data_digest && !data.is_empty()).then(|| digest(data));
    frame_sized(pdu_type, pdu_flags, psh, data.len(), data_digest, s)
}

/// As [`frame`], for `data_len` bytes of data the caller holds elsewhere (a file's pages),
/// with their digest when the PDU carries one. The header digest follows `settings`.
pub fn frame_sized(
    pdu_type: u8,
    mut pdu_flags: u8,
    psh: &[u8],
    data_len: usize,
    data_digest: Option<[u8; 4]>,
    s: &SendSettings,
) -> Framed {
    let hlen = CH_LEN + psh.len();
    let hdgst = if s.header_digest { DIGEST_LEN } else { 0 };
    let ddgst = if data_digest.is_some() { DIGEST_LEN } else { 0 };
    let pdo = if data_len == 0 {
        0
    } else {
        (hlen + hdgst).next_multiple_of(s.data_alignment.max(4))
    };
    if hdgst > 0 {
        pdu_flags |= flags::HDGSTF;
    }
    if ddgst > 0 {
        pdu_flags |= flags::DDGSTF;
    }
    let plen = if data_len == 0 {
        hlen + hdgst
    } else {
        pdo + data_len + ddgst
    };
    let mut header = [0u8; CH_LEN + 16 + DIGEST_LEN];
    let header = &mut header[..hlen + hdgst];
    CommonHeader {
        pdu_type,
        flags: pdu_flags,
        hlen: hlen as u8,
        pdo: pdo as u8,
        plen: plen as u32,
    }
    .write(header);
    header[CH_LEN..hlen].copy_from_slice(psh);
    if hdgst > 0 {
        let d = digest(&header[..hlen]);
        header[hlen..].copy_from_slice(&d);
    }
    let mut head = PduHead::from(&header[..]);
    if pdo > head.len() {
        head.extend_from_slice(&[0; 128][..pdo - head.len()]);
    }
    let tail = data_digest.map(PduTail::from).unwrap_or_default();
    Framed { head, tail }
}

/// A CapsuleResp PDU carrying `cqe`, as bytes.
pub fn capsule_resp(cqe: &Completion, s: &SendSettings) -> PduHead {
    frame(pdu_type::CAPSULE_RESP, 0, &cqe.encode(), &[], s).head
}

/// The PSH of a C2HData PDU for `datal` bytes at `datao` of command `cccid`.
pub fn c2h_data_psh(cccid: u16, datao: u32, datal: u32) -> [u8; 16] {
    let mut psh = [0u8; 16];
    psh[0..2].copy_from_slice(&cccid.to_le_bytes());
    psh[4..8].copy_from_slice(&datao.to_le_bytes());
    psh[8..12].copy_from_slice(&datal.to_le_bytes());
    psh
}

/// An R2T PDU asking for `r2tl` bytes at `r2to` of command `cccid`, tagged `ttag`.
pub fn r2t(cccid: u16, ttag: u16, r2to: u32, r2tl: u32, s: &SendSettings) -> PduHead {
    let mut psh = [0u8; 16];
    psh[0..2].copy_from_slice(&cccid.to_le_bytes());
    psh[2..4].copy_from_slice(&ttag.to_le_bytes());
    psh[4..8].copy_from_slice(&r2to.to_le_bytes());
    psh[8..12].copy_from_slice(&r2tl.to_le_bytes());
    frame(pdu_type::R2T, 0, &psh, &[], s).head
}

/// A C2HTermReq PDU with the offending PDU header (cut to [`MAX_TERM_DATA`]). It never
/// carries digests: the host must be able to read it whatever went wrong (Linux
/// drivers/nvme/host/tcp.c reads a C2HTermReq without checking a digest).
pub fn c2h_term_req(fes: Fes, fei: u32, offending: &[u8]) -> Vec<u8> {
    let mut psh = [0u8; 16];
    psh[0..2].copy_from_slice(&(fes as u16).to_le_bytes());
    psh[2..6].copy_from_slice(&fei.to_le_bytes());
    let data = &offending[..offending.len().min(MAX_TERM_DATA)];
    let framed = frame(
        pdu_type::C2H_TERM_REQ,
        0,
        &psh,
        data,
        &SendSettings {
            data_alignment: 4,
            ..SendSettings::default()
        },
    );
    [&framed.head[..], data].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ic_resp_layout() {
        let b = IcResp {
            cpda: 0,
            header_digest: true,
            data_digest: false,
            maxh2cdata: 0x2_0000,
        }
        .encode();
        assert_eq!(b.len(), 128);
        assert_eq!(&b[0..8], &[1, 0, 128, 0, 128, 0, 0, 0]);
        assert_eq!(&b[8..12], &[0, 0, 0, 1]);
        assert_eq!(&b[12..16], &0x2_0000u32.to_le_bytes());
    }

    #[test]
    fn ic_req_fields() {
        let mut h = vec![0u8; 128];
        h[8] = 0;
        h[10] = 3;
        h[11] = 3;
        h[12] = 7;
        let r = IcReq::parse(&h);
        assert_eq!(
            r,
            IcReq {
                pfv: 0,
                hpda: 3,
                header_digest: true,
                data_digest: true,
                maxr2t: 7
            }
        );
    }

    #[test]
    fn framed_pdu_has_digests_and_alignment() {
        let s = SendSettings {
            header_digest: true,
            data_digest: true,
            data_alignment: 32,
        };
        let data = [7u8; 10];
        let f = frame(
            pdu_type::C2H_DATA,
            flags::LAST_PDU,
            &c2h_data_psh(5, 0, 10),
            &data,
            &s,
        );
        let ch = CommonHeader::parse(f.head[..8].try_into().unwrap());
        assert_eq!(ch.flags, flags::LAST_PDU | flags::HDGSTF | flags::DDGSTF);
        assert_eq!(ch.hlen, 24);
        assert_eq!(ch.pdo, 32);
        assert_eq!(ch.plen, 32 + 10 + 4);
        assert_eq!(f.head.len(), 32);
        assert_eq!(&f.head[24..28], &digest(&f.head[..24]));
        assert_eq!(&f.tail[..], &digest(&data));
    }

    #[test]
    fn pdu_without_data_has_no_data_digest_and_zero_pdo() {
        let s = SendSettings {
            header_digest: false,
            data_digest: true,
            data_alignment: 4,
        };
        let b = r2t(1, 2, 4096, 8192, &s);
        assert_eq!(b.len(), 24);
        assert_eq!(&b[0..8], &[9, 0, 24, 0, 24, 0, 0, 0]);
        assert_eq!(le16(&b, 8), 1);
        assert_eq!(le16(&b, 10), 2);
        assert_eq!(le32(&b, 12), 4096);
        assert_eq!(le32(&b, 16), 8192);
    }

    #[test]
    fn term_req_carries_the_offending_header_cut_to_152_bytes() {
        let b = c2h_term_req(Fes::InvalidHeaderField, 2, &[0xAA; 300]);
        assert_eq!(b.len(), 152);
        let ch = CommonHeader::parse(b[..8].try_into().unwrap());
        assert_eq!((ch.pdu_type, ch.hlen, ch.pdo, ch.plen), (3, 24, 24, 152));
        assert_eq!(le16(&b, 8), 1);
        assert_eq!(le32(&b, 10), 2);
    }

    #[test]
    fn digest_is_crc32c_little_endian() {
        // RFC 3720 B.4 test vector: 32 bytes of zeroes -> 0x8a9136aa.
        assert_eq!(digest(&[0u8; 32]), 0x8a91_36aau32.to_le_bytes());
    }
}
