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
    pub header: PduHeader,
    /// In-capsule data or H2CData data (empty when none), in a pool buffer that goes on to
    /// the backend.
    pub data: Buf,
    /// False when a data digest was present and did not match.
    pub data_digest_ok: bool,
}

/// H2CData payloads at least this long that have not fully arrived with their header are read
/// by the transport straight into the command's pool buffer ([`PduReader::read_buffer`]) rather
/// than through the reader's buffer and a copy: under emulation (TCG guests) a 128 KiB copy costs
/// as much guest CPU as a whole small command. Smaller payloads are copied, which saves the
/// extra small read a direct transfer costs.
pub const DIRECT_MIN: usize = 16 * 1024;

/// A received PDU header (CH and PSH, at most an ICReq's 128 bytes), held inline: receiving a
/// PDU allocates nothing for it.
#[derive(Clone, PartialEq, Eq)]
pub struct PduHeader {
    bytes: [u8; hlen::IC],
    len: u8,
}

impl PduHeader {
    /// The header `bytes` (at most 128).
    ///
    /// # Panics
    /// When `bytes` is longer than an ICReq header; the framer checks HLEN first.
    pub fn new(bytes: &[u8]) -> PduHeader {
        let mut header = PduHeader {
            bytes: [0; hlen::IC],
            len: bytes.len() as u8,
        };
        header.bytes[..bytes.len()].copy_from_slice(bytes);
        header
    }
}

impl std::ops::Deref for PduHeader {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for PduHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Accumulates stream bytes and yields complete PDUs. The transport either pushes bytes it read
/// ([`PduReader::push`]) or reads into [`PduReader::read_buffer`] and reports how much it read
/// with [`PduReader::push_read`]: then nothing is copied on the way in except small PDUs' data.
#[derive(Debug, Default)]
pub struct PduReader {
    /// Received bytes in `buffer[consumed..filled]`; the rest is room for the next read (its
    /// bytes initialized, old).
    buffer: Vec<u8>,
    filled: usize,
    /// Bytes of `buffer` already consumed.
    consumed: usize,
    /// An H2CData whose header arrived and whose payload is being read straight into its buffer.
    direct: Option<Direct>,
    /// The next read should bring only a header: right after a direct transfer.
    header_first: bool,
    /// Header digests are on (as of the last [`PduReader::next_pdu`]): an H2CData header is
    /// followed by one.
    header_digest: bool,
    /// An H2CData payload of at least [`DIRECT_MIN`] bytes is due (an R2T is outstanding): a
    /// read at a PDU boundary brings only a header, so that payload can go direct.
    data_expected: bool,
    /// The last rooms given were a direct transfer's payload and a second room behind it
    /// ([`PduReader::read_buffers`]).
    second_room: bool,
}

/// An H2CData PDU in the middle of a direct transfer.
#[derive(Debug)]
struct Direct {
    pdu: HostPdu,
    header: PduHeader,
    /// Sized to the payload; `data[..filled]` has arrived.
    data: Buf,
    filled: usize,
    /// Length of the data digest that follows the payload in the stream (0 or 4).
    digest_len: usize,
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
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.read_buffer(bytes.len());
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.push_read(n);
            bytes = &bytes[n..];
        }
    }

    /// Room for the transport's next read, at most `size` bytes (at least one): the rest of a
    /// direct transfer's payload, or room in the reader's buffer (only the next PDU header's
    /// worth right after a direct transfer). Report what was read with
    /// [`PduReader::push_read`] before using the reader otherwise.
    pub fn read_buffer(&mut self, size: usize) -> &mut [u8] {
        let size = size.max(1);
        if self
            .direct
            .as_ref()
            .is_some_and(|d| d.filled < d.data.len())
        {
            let direct = self.direct.as_mut().expect("checked above");
            let end = direct.data.len().min(direct.filled + size);
            return &mut direct.data[direct.filled..end];
        }
        // At a PDU boundary where an H2CData payload may come (right after a direct transfer,
        // or while an R2T is outstanding) only the rest of the last PDU (a direct transfer's
        // data digest) and the next H2CData header: a large payload behind it can go direct.
        let header_due = self.header_first || self.data_expected || self.direct.is_some();
        let size = if self.consumed == self.filled && header_due {
            size.min(self.header_room())
        } else {
            size
        };
        let room = self.room(size);
        &mut self.buffer[room]
    }

    /// Rooms for the transport's next vectored read, filled in order: while a direct transfer's
    /// payload is still due, the whole rest of it and then room in the reader's buffer for its
    /// data digest and the next PDU's header (an H2CData header, so a large payload behind it
    /// can go direct too), no more; else [`PduReader::read_buffer`]'s room and an empty one.
    /// The read that ends a payload then also takes what follows it, rather than stopping at
    /// the payload's end and costing a header-sized read of its own.
    pub fn read_buffers(&mut self, size: usize) -> (&mut [u8], &mut [u8]) {
        if !self
            .direct
            .as_ref()
            .is_some_and(|d| d.filled < d.data.len())
        {
            return (self.read_buffer(size), &mut []);
        }
        let room = self.room(self.header_room());
        self.second_room = true;
        let direct = self.direct.as_mut().expect("checked above");
        (&mut direct.data[direct.filled..], &mut self.buffer[room])
    }

    /// What a read at a PDU boundary takes when a header is due: a direct transfer's data
    /// digest, if one is still to come, and an H2CData header with its digest.
    fn header_room(&self) -> usize {
        let trailer = self.direct.as_ref().map_or(0, |d| d.digest_len);
        trailer + hlen::DATA + if self.header_digest { DIGEST_LEN } else { 0 }
    }

    /// Makes room for `size` bytes behind the received ones and returns where it is.
    fn room(&mut self, size: usize) -> std::ops::Range<usize> {
        if self.consumed == self.filled {
            self.consumed = 0;
            self.filled = 0;
        } else if self.consumed > 0 && self.buffer.len() - self.filled < size {
            // What is left of a partly received PDU moves to the front.
            self.buffer.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        if self.buffer.len() - self.filled < size {
            self.buffer.resize(self.filled + size, 0);
        }
        self.filled..self.filled + size
    }

    /// Whether an H2CData payload of at least [`DIRECT_MIN`] bytes is due: the queue says so
    /// while it has an R2T outstanding for that much.
    pub fn expect_data(&mut self, expected: bool) {
        self.data_expected = expected;
    }

    /// The transport read `n` bytes into the rooms [`PduReader::read_buffer`] or
    /// [`PduReader::read_buffers`] gave it.
    pub fn push_read(&mut self, mut n: usize) {
        let second_room = std::mem::take(&mut self.second_room);
        if let Some(direct) = &mut self.direct {
            let room = direct.data.len() - direct.filled;
            if room > 0 {
                direct.filled += n.min(room);
                if !second_room {
                    return;
                }
                n -= n.min(room);
            }
        }
        self.filled = (self.filled + n).min(self.buffer.len());
        if n > 0 {
            self.header_first = false;
        }
    }

    /// Bytes buffered and not yet consumed (a direct transfer's payload included).
    pub fn buffered(&self) -> usize {
        self.filled - self.consumed + self.direct.as_ref().map_or(0, |d| d.filled)
    }

    /// The next whole PDU, `Ok(None)` while more bytes are needed, or the fatal error in the
    /// stream. After an error the reader must not be used again.
    pub fn next_pdu(&mut self, limits: &FrameLimits) -> Result<Option<Received>, FrameError> {
        self.header_digest = limits.header_digest;
        if self.direct.is_some() {
            return Ok(self.finish_direct());
        }
        let pending = &self.buffer[self.consumed..self.filled];
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
        let hlen = ch.hlen as usize;
        let data_range = layout.data_start..plen - layout.data_digest_len;
        let whole = pending.len() >= plen;
        // A large H2CData payload still to come goes straight into its buffer once the header
        // is in.
        let direct = !whole
            && ch.pdu_type == pdu_type::H2C_DATA
            && data_range.len() >= DIRECT_MIN
            && pending.len() >= layout.data_start;
        if !whole && !direct {
            return Ok(None);
        }
        let header = PduHeader::new(&pending[..hlen]);
        let fail = |fes, fei| FrameError {
            fes,
            fei,
            header: header.to_vec(),
        };
        if layout.header_digest && pending[hlen..hlen + DIGEST_LEN] != digest(&header) {
            return Err(fail(Fes::HeaderDigestError, 0));
        }
        let host_pdu = match ch.pdu_type {
            pdu_type::IC_REQ => HostPdu::IcReq(IcReq::parse(&header)),
            pdu_type::H2C_TERM_REQ => HostPdu::H2CTermReq(TermReq::parse(&header)),
            pdu_type::CAPSULE_CMD => {
                let sqe: [u8; SQE_LEN] = header[CH_LEN..].try_into().expect("HLEN checked");
                HostPdu::CapsuleCmd(Sqe(sqe))
            }
            _ => {
                let h = H2CDataHeader::parse(&ch, &header);
                if h.datal as usize != data_range.len() {
                    return Err(fail(Fes::InvalidHeaderField, H2CDataHeader::DATAL_OFFSET));
                }
                HostPdu::H2CData(h)
            }
        };
        if direct {
            // The payload bytes that came with the header are copied; the rest is read in place.
            let arrived = &pending[data_range.start..];
            let mut data = mem_ffi::pool::global().alloc(data_range.len());
            data[..arrived.len()].copy_from_slice(arrived);
            count_payload_copy(arrived.len());
            self.direct = Some(Direct {
                pdu: host_pdu,
                header,
                filled: arrived.len(),
                data,
                digest_len: layout.data_digest_len,
            });
            self.consumed = self.filled;
            return Ok(None);
        }
        let pdu = &pending[..plen];
        let data_digest_ok = layout.data_digest_len == 0
            || pdu[data_range.end..plen] == digest(&pdu[data_range.clone()]);
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

    /// The PDU of a direct transfer once its payload and data digest are in.
    fn finish_direct(&mut self) -> Option<Received> {
        let direct = self.direct.as_ref()?;
        let pending = &self.buffer[self.consumed..self.filled];
        if direct.filled < direct.data.len() || pending.len() < direct.digest_len {
            return None;
        }
        let data_digest_ok =
            direct.digest_len == 0 || pending[..direct.digest_len] == digest(&direct.data);
        self.consumed += direct.digest_len;
        // Only a header's worth next, unless the read that ended the payload brought (part of)
        // the next PDU already: then a read completes it.
        self.header_first = self.consumed == self.filled;
        let Direct {
            pdu, header, data, ..
        } = self.direct.take()?;
        Some(Received {
            pdu,
            header,
            data,
            data_digest_ok,
        })
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
        with_digests_and_data(b, data, hd > 0, dd > 0)
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

    /// An H2CData PDU (CCCID 1, TTAG 1, DATAO 0) carrying `data`, LAST_PDU set.
    /// Appends the header digest (when `hd`), `data` and its data digest (when `dd`) to `header`.
    fn with_digests_and_data(mut header: Vec<u8>, data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
        if hd {
            let d = digest(&header);
            header.extend_from_slice(&d);
        }
        header.extend_from_slice(data);
        if dd {
            header.extend_from_slice(&digest(data));
        }
        header
    }

    fn h2c_data(data: &[u8], limits: &FrameLimits) -> Vec<u8> {
        let hd = if limits.header_digest { 4 } else { 0 };
        let dd = if limits.data_digest { 4 } else { 0 };
        let pdo = 24 + hd;
        let f = u8::from(hd > 0) | if dd > 0 { 2 } else { 0 } | 4;
        let mut b = ch(6, f, 24, pdo as u8, (pdo + data.len() + dd) as u32);
        b.resize(24, 0);
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&1u16.to_le_bytes());
        b[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        with_digests_and_data(b, data, hd > 0, dd > 0)
    }

    /// Feeds `stream` through `read_buffer`/`push_read` as a socket would, `chunk` bytes at
    /// most per read; returns the PDUs and the size of every read's room.
    fn read_through(
        r: &mut PduReader,
        stream: &[u8],
        chunk: usize,
        limits: &FrameLimits,
    ) -> (Vec<Received>, Vec<usize>) {
        let (mut got, mut rooms, mut at) = (Vec::new(), Vec::new(), 0);
        while at < stream.len() {
            let room = r.read_buffer(chunk);
            let n = room.len().min(stream.len() - at);
            rooms.push(room.len());
            room[..n].copy_from_slice(&stream[at..at + n]);
            r.push_read(n);
            at += n;
            while let Some(pdu) = r.next_pdu(limits).unwrap() {
                got.push(pdu);
            }
        }
        (got, rooms)
    }

    #[test]
    fn large_h2c_data_is_read_straight_into_its_buffer() {
        for (header_digest, data_digest) in [(false, false), (true, true)] {
            let limits = FrameLimits {
                header_digest,
                data_digest,
                max_h2c_data: 128 * 1024,
                ..LIMITS
            };
            let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 7) as u8).collect();
            let mut stream = h2c_data(&payload, &limits);
            stream.extend(h2c_data(&payload, &limits));
            stream.extend(capsule(&[3u8; 100], &limits));
            let mut r = PduReader::new();
            let (got, rooms) = read_through(&mut r, &stream, 4096, &limits);
            assert_eq!(got.len(), 3);
            for pdu in &got[..2] {
                assert!(matches!(pdu.pdu, HostPdu::H2CData(ref h) if h.datal == 64 * 1024));
                assert_eq!(&pdu.data[..], &payload[..]);
                assert!(pdu.data_digest_ok);
            }
            assert_eq!(&got[2].data[..], &[3u8; 100][..]);
            assert_eq!(r.buffered(), 0);
            // After the first 4 KiB read, the payload's reads are the payload's rest (at most a
            // chunk each); after it only its data digest and the next header are read.
            let digests = usize::from(header_digest) * 4 + usize::from(data_digest) * 4;
            assert!(rooms.contains(&(hlen::DATA + digests)), "{rooms:?}");
        }
    }

    /// The transport's vectored reads (`read_buffers`): the read that ends a direct payload
    /// takes its data digest and the next H2CData header with it, so a stream of large
    /// H2CData PDUs costs one read each and none of their payload is copied; what follows (a
    /// command capsule) still arrives whole.
    #[test]
    fn the_read_that_ends_a_payload_takes_the_next_header() {
        for (header_digest, data_digest) in [(false, false), (true, true), (false, true)] {
            let limits = FrameLimits {
                header_digest,
                data_digest,
                max_h2c_data: 128 * 1024,
                ..LIMITS
            };
            let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 11) as u8).collect();
            let mut stream = h2c_data(&payload, &limits).repeat(3);
            stream.extend(capsule(&[4u8; 100], &limits));
            let mut r = PduReader::new();
            // The reader learns the header digest setting from the PDUs before (ICReq, Connect).
            assert_eq!(r.next_pdu(&limits), Ok(None));
            r.expect_data(true);
            let (mut got, mut rooms, mut at) = (Vec::new(), Vec::new(), 0);
            let copies = crate::stats::thread_payload_copies();
            while at < stream.len() {
                let (first, second) = r.read_buffers(256 * 1024);
                rooms.push((first.len(), second.len()));
                let mut n = 0;
                for room in [first, second] {
                    let k = room.len().min(stream.len() - at - n);
                    room[..k].copy_from_slice(&stream[at + n..at + n + k]);
                    n += k;
                }
                r.push_read(n);
                at += n;
                while let Some(pdu) = r.next_pdu(&limits).unwrap() {
                    got.push(pdu);
                }
            }
            let copied = crate::stats::thread_payload_copies() - copies;
            assert_eq!(got.len(), 4, "{rooms:?}");
            for pdu in &got[..3] {
                assert_eq!(&pdu.data[..], &payload[..]);
                assert!(pdu.data_digest_ok);
            }
            assert_eq!(&got[3].data[..], &[4u8; 100][..]);
            assert_eq!(r.buffered(), 0);
            // A header-sized read, then one read per payload whose second room is its digest
            // and the next H2CData header, then the capsule's rest.
            let hd = usize::from(header_digest) * DIGEST_LEN;
            let trailer = usize::from(data_digest) * DIGEST_LEN + hlen::DATA + hd;
            assert_eq!(rooms.len(), 5, "{rooms:?}");
            assert_eq!(rooms[0], (hlen::DATA + hd, 0));
            assert_eq!(rooms[1..4], [(payload.len(), trailer); 3]);
            // No payload byte came with a header: only the capsule's data is copied.
            assert_eq!(copied.bytes, 100);
        }
    }

    #[test]
    fn a_direct_transfer_gets_the_whole_rest_of_its_payload_in_one_read() {
        let limits = FrameLimits {
            max_h2c_data: 128 * 1024,
            ..LIMITS
        };
        let payload = vec![5u8; 128 * 1024];
        let stream = h2c_data(&payload, &limits);
        let mut r = PduReader::new();
        let (got, rooms) = read_through(&mut r, &stream, 256 * 1024, &limits);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].data[..], &payload[..]);
        // The whole PDU fits the first read: nothing goes direct.
        assert_eq!(rooms, vec![256 * 1024]);
        let mut r = PduReader::new();
        let (got, rooms) = read_through(&mut r, &stream, 1000, &limits);
        assert_eq!(&got[0].data[..], &payload[..]);
        // The first read brings the header and 976 bytes; then the payload's rest 1000 at a time.
        assert_eq!(rooms[1], 1000);
        assert!(rooms.iter().sum::<usize>() >= stream.len());
    }

    #[test]
    fn direct_transfer_digest_mismatch_is_reported_not_fatal() {
        let limits = FrameLimits {
            data_digest: true,
            max_h2c_data: 128 * 1024,
            ..LIMITS
        };
        let mut stream = h2c_data(&[8u8; 32 * 1024], &limits);
        let n = stream.len();
        stream[n - 1] ^= 0xFF;
        stream.extend(capsule(&[], &limits));
        let mut r = PduReader::new();
        let (got, _) = read_through(&mut r, &stream, 512, &limits);
        assert_eq!(got.len(), 2);
        assert!(!got[0].data_digest_ok);
        assert!(matches!(got[1].pdu, HostPdu::CapsuleCmd(_)));
    }

    #[test]
    fn direct_transfer_header_errors_come_with_the_header() {
        let limits = FrameLimits {
            header_digest: true,
            max_h2c_data: 128 * 1024,
            ..LIMITS
        };
        let mut stream = h2c_data(&[1u8; 32 * 1024], &limits);
        stream[24] ^= 1;
        let mut r = PduReader::new();
        r.push(&stream[..100]);
        assert_eq!(r.next_pdu(&limits).unwrap_err().fes, Fes::HeaderDigestError);
    }

    #[test]
    fn an_expected_payload_makes_reads_at_a_boundary_header_sized() {
        let limits = FrameLimits {
            max_h2c_data: 128 * 1024,
            ..LIMITS
        };
        let payload = vec![6u8; 128 * 1024];
        let mut r = PduReader::new();
        assert_eq!(r.read_buffer(256 * 1024).len(), 256 * 1024);
        r.push_read(0);
        r.expect_data(true);
        // At a PDU boundary: a header's worth only, so the payload can go direct.
        assert_eq!(r.read_buffer(256 * 1024).len(), hlen::DATA);
        r.push_read(0);
        let (got, rooms) = read_through(&mut r, &h2c_data(&payload, &limits), 256 * 1024, &limits);
        assert_eq!(&got[0].data[..], &payload[..]);
        assert_eq!(rooms, vec![hlen::DATA, 128 * 1024]);
        r.expect_data(false);
        assert_eq!(
            r.read_buffer(256 * 1024).len(),
            hlen::DATA,
            "right after a direct one"
        );
        r.push_read(0);
    }
}
