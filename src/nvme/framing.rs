//! Splitting the host's byte stream into NVMe/TCP PDUs (NVMe/TCP 1.0 §3.6.1), sans-IO: the
//! transport pushes what it read, [`PduReader::next_pdu`] yields whole, validated PDUs.
//!
//! Every malformation is a [`FrameError`] carrying the fatal error status and field offset a
//! C2HTermReq reports: after it the stream cannot be trusted and the connection
//! ends. A data digest mismatch is not fatal (the lengths were protected by the header): the
//! PDU is delivered with [`Received::data_digest_ok`] false and its command fails.

use super::command::{Sqe, SQE_LEN};
use super::pdu::{
    digest, flags, hlen, pdu_type, CommonHeader, Fes, H2CDataHeader, HostPdu, IcReq, TermReq,
    CH_LEN, DIGEST_LEN, MAX_TERM_DATA,
};
use crate::stats::count_payload_copy;
use crate::Buf;

/// What the framer accepts; set by the queue as the ICReq exchange and Connect settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Header digests were negotiated (from the PDU after ICReq on).
    pub header_digest: bool,
    /// Data digests were negotiated.
    pub data_digest: bool,
    /// Largest in-capsule data of a CapsuleCmd.
    pub max_in_capsule: u32,
    /// Largest data of an H2CData PDU (the MAXH2CDATA we announced).
    pub max_h2c_data: u32,
}

/// A fatal framing error: what the C2HTermReq says before the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{fes:?} at byte {fei} of a PDU header")]
pub struct FrameError {
    pub fes: Fes,
    /// Field error information: the byte offset of the offending field (0 when none applies).
    pub fei: u32,
    /// The offending PDU header as far as it arrived, echoed in the C2HTermReq.
    pub header: Vec<u8>,
}

/// A whole PDU from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub pdu: HostPdu,
    /// The PDU header (CH + PSH), for a C2HTermReq about it.
    pub header: Vec<u8>,
    /// In-capsule data or H2CData data (empty when none), in a pool buffer that goes on to
    /// the backend.
    pub data: Buf,
    /// False when a data digest was present and did not match.
    pub data_digest_ok: bool,
}

/// Accumulates stream bytes and yields complete PDUs.
#[derive(Debug, Default)]
pub struct PduReader {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already consumed.
    consumed: usize,
}

/// The PDU header length each host PDU type must have; `None` for types a host never sends.
fn expected_hlen(pdu_type: u8) -> Option<usize> {
    match pdu_type {
        pdu_type::IC_REQ => Some(hlen::IC),
        pdu_type::H2C_TERM_REQ => Some(hlen::TERM_REQ),
        pdu_type::CAPSULE_CMD => Some(hlen::CAPSULE_CMD),
        pdu_type::H2C_DATA => Some(hlen::DATA),
        _ => None,
    }
}

impl PduReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed * 2 >= self.buffer.len() {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.consumed
    }

    /// The next whole PDU, `Ok(None)` while more bytes are needed, or the fatal error in the
    /// stream. After an error the reader must not be used again.
    pub fn next_pdu(&mut self, limits: &FrameLimits) -> Result<Option<Received>, FrameError> {
        let pending = &self.buffer[self.consumed..];
        let Some(ch_bytes) = pending.get(..CH_LEN) else {
            return Ok(None);
        };
        let ch = CommonHeader::parse(ch_bytes.try_into().expect("CH_LEN bytes"));
        let layout = check_common_header(&ch, limits).map_err(|(fes, fei)| FrameError {
            fes,
            fei,
            header: pending[..pending.len().min(ch.hlen as usize).max(CH_LEN)].to_vec(),
        })?;
        let plen = ch.plen as usize;
        if pending.len() < plen {
            return Ok(None);
        }
        let pdu = &pending[..plen];
        let hlen = ch.hlen as usize;
        let header = pdu[..hlen].to_vec();
        let fail = |fes, fei| FrameError {
            fes,
            fei,
            header: header.clone(),
        };
        if layout.header_digest && pdu[hlen..hlen + DIGEST_LEN] != digest(&header) {
            return Err(fail(Fes::HeaderDigestError, 0));
        }
        let data_range = layout.data_start..plen - layout.data_digest_len;
        let data_digest_ok = layout.data_digest_len == 0
            || pdu[data_range.end..plen] == digest(&pdu[data_range.clone()]);
        let host_pdu = match ch.pdu_type {
            pdu_type::IC_REQ => HostPdu::IcReq(IcReq::parse(&header)),
            pdu_type::H2C_TERM_REQ => HostPdu::H2CTermReq(TermReq::parse(&header)),
            pdu_type::CAPSULE_CMD => {
                let sqe: [u8; SQE_LEN] = header[CH_LEN..].try_into().expect("HLEN checked");
                HostPdu::CapsuleCmd(Box::new(Sqe(sqe)))
            }
            _ => {
                let h = H2CDataHeader::parse(&ch, &header);
                if h.datal as usize != data_range.len() {
                    return Err(fail(Fes::InvalidHeaderField, H2CDataHeader::DATAL_OFFSET));
                }
                HostPdu::H2CData(h)
            }
        };
        let data = Buf::copy_from_slice(&pdu[data_range]);
        count_payload_copy(data.len());
        self.consumed += plen;
        Ok(Some(Received {
            pdu: host_pdu,
            header,
            data,
            data_digest_ok,
        }))
    }
}

/// Where a PDU's parts are, from its common header.
struct Layout {
    header_digest: bool,
    data_start: usize,
    data_digest_len: usize,
}

/// Checks a common header against the PDU type and the limits; the error is (FES, FEI).
fn check_common_header(ch: &CommonHeader, limits: &FrameLimits) -> Result<Layout, (Fes, u32)> {
    let invalid = |fei| Err((Fes::InvalidHeaderField, fei));
    let Some(hlen) = expected_hlen(ch.pdu_type) else {
        return invalid(0);
    };
    if ch.hlen as usize != hlen {
        return invalid(CommonHeader::HLEN_OFFSET);
    }
    // Digests apply to neither the ICReq (they are not negotiated yet) nor a TermReq (TermReq PDUs:
    // HDGSTF and DDGSTF are cleared so a peer can read it whatever failed).
    let digestible = matches!(ch.pdu_type, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA);
    let header_digest = limits.header_digest && digestible;
    if (ch.flags & flags::HDGSTF != 0) != header_digest {
        return invalid(CommonHeader::FLAGS_OFFSET);
    }
    let header_end = hlen + if header_digest { DIGEST_LEN } else { 0 };
    let plen = ch.plen as usize;
    if ch.pdo == 0 {
        // No data: ICReq always, a CapsuleCmd without in-capsule data. H2CData without data
        // is meaningless.
        if ch.flags & flags::DDGSTF != 0 {
            return invalid(CommonHeader::FLAGS_OFFSET);
        }
        if plen != header_end || ch.pdu_type == pdu_type::H2C_DATA {
            return invalid(CommonHeader::PLEN_OFFSET);
        }
        return Ok(Layout {
            header_digest,
            data_start: plen,
            data_digest_len: 0,
        });
    }
    let pdo = ch.pdo as usize;
    // Our ICResp says CPDA 0: host data is dword aligned, after the header and its digest.
    if ch.pdu_type == pdu_type::IC_REQ || pdo < header_end || pdo % 4 != 0 {
        return invalid(CommonHeader::PDO_OFFSET);
    }
    let data_digest = limits.data_digest && digestible;
    if (ch.flags & flags::DDGSTF != 0) != data_digest {
        return invalid(CommonHeader::FLAGS_OFFSET);
    }
    let data_digest_len = if data_digest { DIGEST_LEN } else { 0 };
    let Some(data_len) = plen
        .checked_sub(pdo + data_digest_len)
        .filter(|&len| len > 0)
    else {
        return invalid(CommonHeader::PLEN_OFFSET);
    };
    match ch.pdu_type {
        pdu_type::CAPSULE_CMD if data_len > limits.max_in_capsule as usize => {
            invalid(CommonHeader::PLEN_OFFSET)
        }
        pdu_type::H2C_DATA if data_len > limits.max_h2c_data as usize => {
            Err((Fes::DataLimitExceeded, CommonHeader::PLEN_OFFSET))
        }
        pdu_type::H2C_TERM_REQ if data_len > MAX_TERM_DATA => invalid(CommonHeader::PLEN_OFFSET),
        _ => Ok(Layout {
            header_digest,
            data_start: pdo,
            data_digest_len,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        header_digest: false,
        data_digest: false,
        max_in_capsule: 8192,
        max_h2c_data: 4096,
    };

    fn ch(pdu_type: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
        let mut b = vec![pdu_type, flags, hlen, pdo];
        b.extend_from_slice(&plen.to_le_bytes());
        b
    }

    fn capsule(data: &[u8], limits: &FrameLimits) -> Vec<u8> {
        let hd = if limits.header_digest { 4 } else { 0 };
        let dd = if limits.data_digest && !data.is_empty() {
            4
        } else {
            0
        };
        let pdo = if data.is_empty() { 0 } else { 72 + hd };
        let plen = 72 + hd + data.len() + dd;
        let f = u8::from(hd > 0) | if dd > 0 { 2 } else { 0 };
        let mut b = ch(4, f, 72, pdo as u8, plen as u32);
        b.resize(72, 0);
        b[8] = 0x02;
        if hd > 0 {
            let d = digest(&b);
            b.extend_from_slice(&d);
        }
        b.extend_from_slice(data);
        if dd > 0 {
            b.extend_from_slice(&digest(data));
        }
        b
    }

    fn error_of(bytes: &[u8], limits: &FrameLimits) -> (Fes, u32) {
        let mut r = PduReader::new();
        r.push(bytes);
        let e = r.next_pdu(limits).unwrap_err();
        (e.fes, e.fei)
    }

    #[test]
    fn capsule_arrives_in_pieces_with_digests() {
        let limits = FrameLimits {
            header_digest: true,
            data_digest: true,
            ..LIMITS
        };
        let bytes = capsule(&[9u8; 100], &limits);
        let mut r = PduReader::new();
        for b in &bytes[..bytes.len() - 1] {
            r.push(std::slice::from_ref(b));
            assert_eq!(r.next_pdu(&limits).unwrap(), None);
        }
        r.push(&bytes[bytes.len() - 1..]);
        let got = r.next_pdu(&limits).unwrap().unwrap();
        assert!(matches!(got.pdu, HostPdu::CapsuleCmd(ref s) if s.opcode() == 2));
        assert_eq!(&got.data[..], &[9u8; 100][..]);
        assert!(got.data_digest_ok);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn data_digest_mismatch_is_reported_not_fatal() {
        let limits = FrameLimits {
            data_digest: true,
            ..LIMITS
        };
        let mut bytes = capsule(&[1u8; 8], &limits);
        let n = bytes.len();
        bytes[n - 1] ^= 0xFF;
        let mut r = PduReader::new();
        r.push(&bytes);
        assert!(!r.next_pdu(&limits).unwrap().unwrap().data_digest_ok);
    }

    #[test]
    fn header_digest_mismatch_is_fatal() {
        let limits = FrameLimits {
            header_digest: true,
            ..LIMITS
        };
        let mut bytes = capsule(&[], &limits);
        bytes[72] ^= 1;
        assert_eq!(error_of(&bytes, &limits), (Fes::HeaderDigestError, 0));
    }

    #[test]
    fn malformed_common_headers_name_the_field() {
        // A controller-to-host type from the host.
        assert_eq!(
            error_of(&ch(5, 0, 24, 0, 24), &LIMITS),
            (Fes::InvalidHeaderField, 0)
        );
        // Wrong HLEN for a CapsuleCmd.
        assert_eq!(
            error_of(&ch(4, 0, 64, 0, 64), &LIMITS),
            (Fes::InvalidHeaderField, 2)
        );
        // PLEN shorter than the header.
        assert_eq!(
            error_of(&ch(4, 0, 72, 0, 40), &LIMITS),
            (Fes::InvalidHeaderField, 4)
        );
        // PDO inside the header.
        assert_eq!(
            error_of(&ch(4, 0, 72, 8, 200), &LIMITS),
            (Fes::InvalidHeaderField, 3)
        );
        // A header digest flag that was not negotiated.
        assert_eq!(
            error_of(&ch(4, 1, 72, 0, 76), &LIMITS),
            (Fes::InvalidHeaderField, 1)
        );
        // In-capsule data beyond the limit, refused before it is buffered.
        assert_eq!(
            error_of(&ch(4, 0, 72, 72, 72 + 8193), &LIMITS),
            (Fes::InvalidHeaderField, 4)
        );
        // H2CData beyond MAXH2CDATA.
        assert_eq!(
            error_of(&ch(6, 4, 24, 24, 24 + 4097), &LIMITS),
            (Fes::DataLimitExceeded, 4)
        );
        // An ICReq with PDO.
        assert_eq!(
            error_of(&ch(0, 0, 128, 128, 200), &LIMITS),
            (Fes::InvalidHeaderField, 3)
        );
    }

    #[test]
    fn h2c_data_length_must_match_datal() {
        let mut b = ch(6, 4, 24, 24, 24 + 8);
        b.resize(24, 0);
        b[16..20].copy_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        assert_eq!(error_of(&b, &LIMITS), (Fes::InvalidHeaderField, 16));
    }
}
