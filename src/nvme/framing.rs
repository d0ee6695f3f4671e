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
mod tests;
