//! Byte-stream framing of PDUs for iSCSI over TCP (RFC 7143 §11.2): BHS, AHS, optional header
//! digest, data segment padded to 4 bytes, optional data digest. CRC32C digests are stored
//! little-endian, as Linux (`cpu_to_le32`) and libiscsi put them on the wire.
//!
//! [`PduReader`] is sans-IO: the transport pushes whatever bytes it read, and pulls whole PDUs;
//! with direct reads on ([`PduReader::set_direct_reads`]) it also yields the header of a PDU
//! whose large data segment is still coming, so the transport can read that data straight
//! into where it belongs ([`PduReader::place_data`]).

mod direct;

use std::collections::VecDeque;

use super::pdu::{self, DecodeError, HeaderBytes, Pdu, BHS_LEN};
use crate::stats::count_payload_copy;
use direct::Direct;
pub use direct::{Arrival, DIRECT_MIN};

/// Digest and size settings that change when login completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSettings {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we accept (our MaxRecvDataSegmentLength).
    pub max_data_segment_length: u32,
}

impl Default for FrameSettings {
    /// Login-phase settings: no digests, 8192-byte data segments (RFC 7143 default).
    fn default() -> Self {
        FrameSettings {
            header_digest: false,
            data_digest: false,
            max_data_segment_length: 8192,
        }
    }
}

/// A framing failure. [`FrameError::is_fatal`] tells whether the stream is still in sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The PDU was consumed whole but its header does not decode; answer with a Reject.
    #[error("malformed PDU: {error}")]
    Malformed { header: Vec<u8>, error: DecodeError },
    /// The data digest did not match; the PDU was dropped (Reject reason 0x02).
    #[error("data digest mismatch")]
    DataDigest { header: Vec<u8> },
    /// The header digest did not match: lengths cannot be trusted, the connection must close.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// A data segment larger than negotiated: a protocol error that ends the connection.
    #[error("data segment of {length} bytes exceeds the negotiated {limit}")]
    DataTooLong { length: u32, limit: u32 },
}

impl FrameError {
    /// True when the byte stream can no longer be parsed and the connection must be closed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::HeaderDigest | FrameError::DataTooLong { .. }
        )
    }
}

/// CRC32C as iSCSI transmits it.
pub fn digest(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// A received buffer shorter than this is appended to the previous chunk.
const SMALL_CHUNK: usize = 512;
/// Small buffers are appended to a chunk until it holds this many bytes.
const COALESCED_CHUNK: usize = 64 * 1024;
/// [`PduReader::read_buffer`] reads into the free end of the last read buffer while it has at
/// least this much room (a peer trickling its bytes fills buffers rather than starting new ones).
const MIN_TAIL_ROOM: usize = 4096;

/// Received bytes: `bytes[..filled]` arrived; a read buffer's `bytes[filled..]` is room for more.
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    filled: usize,
    /// Copied in by [`PduReader::push`] or [`PduReader::push_owned`] (counted as a copy).
    copied: bool,
}

/// Accumulates stream bytes and yields complete PDUs.
///
/// The bytes are kept in the chunks they arrived in, and a data segment is copied once, out of
/// the chunks into where it belongs: a new `Vec` for [`PduReader::next_pdu`], or a buffer of the
/// caller's choosing for [`PduReader::take_data_into`] (a write task's buffer). A transport
/// reads straight into the reader ([`PduReader::read_buffer`], [`PduReader::push_read`]): into
/// the free end of the last buffer, else into a fresh one; a buffer whose bytes are all consumed
/// is kept (one at most) for the next read, so a connection in steady state allocates nothing
/// to receive.
#[derive(Debug, Default)]
pub struct PduReader {
    /// Received bytes, oldest first.
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already consumed.
    front_offset: usize,
    /// Bytes buffered and not consumed.
    len: usize,
    /// A consumed read buffer (its whole length initialized), for the next read.
    spare: Option<Vec<u8>>,
    /// [`PduReader::next_frame`] yields partial frames ([`Arrival::Partial`]).
    direct_reads: bool,
    /// The front PDU's taker wants it whole ([`PduReader::wait_whole`]).
    whole_wanted: bool,
    /// A data segment being read straight into its destination.
    direct: Option<Direct>,
    /// The next read at a PDU boundary should bring only a header: right after a direct
    /// transfer (large PDUs tend to follow each other), or while one is expected.
    header_first: bool,
    /// A data segment of [`DIRECT_MIN`] bytes or more is expected (an R2T is outstanding).
    data_expected: bool,
    /// Header and header digest length of the last settings seen: what a header-first read
    /// takes.
    header_len: usize,
    /// The last [`PduReader::read_buffers`] gave a second room after a direct transfer's.
    second_room: bool,
}

/// The header of the next PDU, all of whose bytes have arrived; its data is still in the reader
/// and must be taken with [`PduReader::take_data_into`] or [`PduReader::take_pdu`].
#[derive(Debug)]
pub struct Frame {
    /// BHS and AHS as received.
    pub raw_header: HeaderBytes,
    /// The decoded header, or why it does not decode.
    pub header: Result<pdu::Header, DecodeError>,
    /// Length of the data segment (without padding).
    pub data_len: usize,
    /// Stream bytes between the header and the data (the header digest).
    data_start: usize,
    /// Stream bytes of the whole PDU.
    total: usize,
    data_digest: bool,
    /// Whether the data segment is in the reader, still coming, or already placed.
    pub arrival: Arrival,
}

/// Where [`PduReader::take_data_into`] appends a PDU's data: a `Vec`, or a command's pool
/// buffer with room for it.
pub trait DataSink {
    /// Bytes held so far.
    fn held(&self) -> usize;
    /// Appends `bytes`.
    fn append(&mut self, bytes: &[u8]);
    /// Drops everything from `len` on.
    fn truncate(&mut self, len: usize);
}

impl DataSink for Vec<u8> {
    fn held(&self) -> usize {
        Vec::len(self)
    }
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

impl DataSink for mem_ffi::Buf {
    fn held(&self) -> usize {
        <[u8]>::len(self)
    }
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn truncate(&mut self, len: usize) {
        mem_ffi::Buf::truncate(self, len);
    }
}

impl PduReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the transport (copying them).
    pub fn push(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(Chunk {
                bytes: bytes.to_vec(),
                filled: bytes.len(),
                copied: true,
            });
        }
    }

    /// Appends a buffer the transport read into, without copying it. A small one is appended to
    /// the last chunk instead, so bytes that trickle in one by one cost no chunk each.
    pub fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.len() < SMALL_CHUNK {
            if let Some(last) = self.chunks.back_mut() {
                if last.filled < COALESCED_CHUNK {
                    self.len += bytes.len();
                    last.bytes.truncate(last.filled);
                    last.bytes.extend_from_slice(&bytes);
                    last.filled = last.bytes.len();
                    last.copied = true;
                    return;
                }
            }
        }
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.chunks.push_back(Chunk {
                filled: bytes.len(),
                bytes,
                copied: false,
            });
        }
    }

    /// Room for the transport to read into; report what it read with
    /// [`PduReader::push_read`] before using the reader otherwise. The rest of a data segment
    /// being placed ([`PduReader::place_data`]); else the free end of the last read buffer when
    /// it has room enough, else the kept buffer when it holds at least `size` bytes, else a new
    /// buffer of `size` bytes (at least one). Where a large data segment may come next (see
    /// [`PduReader::expect_data`]), a read at a PDU boundary takes only a header's worth, so
    /// that data can go direct.
    pub fn read_buffer(&mut self, size: usize) -> &mut [u8] {
        if self.direct.as_ref().is_some_and(|d| d.room().is_some()) {
            return self.direct.as_mut().expect("checked above").room_mut();
        }
        let header_due = self.header_first || self.data_expected || self.direct.is_some();
        let limit = if self.len == 0 && header_due {
            // What is left of a placed PDU (padding, data digest) and the next header.
            self.direct.as_ref().map_or(0, Direct::trailer_len) + self.header_len
        } else {
            usize::MAX
        };
        Self::chunk_room(&mut self.chunks, &mut self.spare, size, limit)
    }

    /// Room at the end of the read buffers, at most `limit` bytes: the free end of the last one
    /// when it has room enough, else the kept buffer when it holds at least `size` bytes, else
    /// a new buffer of `size` bytes (at least one). A limited read still gets a buffer of full
    /// size, so that buffer serves later reads too.
    fn chunk_room<'a>(
        chunks: &'a mut VecDeque<Chunk>,
        spare: &mut Option<Vec<u8>>,
        size: usize,
        limit: usize,
    ) -> &'a mut [u8] {
        let tail_room = chunks
            .back()
            .is_some_and(|last| !last.copied && last.bytes.len() - last.filled >= MIN_TAIL_ROOM);
        if !tail_room {
            let bytes = match spare.take() {
                Some(spare) if spare.len() >= size => spare,
                _ => vec![0; size.max(1)],
            };
            chunks.push_back(Chunk {
                bytes,
                filled: 0,
                copied: false,
            });
        }
        let last = chunks.back_mut().expect("a read buffer");
        let end = last.bytes.len().min(last.filled.saturating_add(limit));
        &mut last.bytes[last.filled..end]
    }

    /// The transport read `n` bytes into the room [`PduReader::read_buffer`] (or
    /// [`PduReader::read_buffers`], in order) gave it.
    pub fn push_read(&mut self, mut n: usize) {
        if let Some(direct) = &mut self.direct {
            if let Some(room) = direct.room() {
                direct.filled(n.min(room));
                if !std::mem::take(&mut self.second_room) {
                    return;
                }
                n -= n.min(room);
            }
        }
        let Some(last) = self.chunks.back_mut() else {
            return;
        };
        let n = n.min(last.bytes.len() - last.filled);
        last.filled += n;
        self.len += n;
        if n > 0 {
            self.header_first = false;
        }
        if last.filled == 0 {
            // Nothing arrived in a buffer of its own: keep it for the next read.
            if let Some(chunk) = self.chunks.pop_back() {
                self.keep(chunk);
            }
        }
    }

    /// Keeps a read buffer none of whose bytes are needed any more for the next read.
    fn keep(&mut self, chunk: Chunk) {
        if !chunk.copied {
            self.spare = Some(chunk.bytes);
        }
    }

    /// Bytes buffered but not yet consumed (a data segment being placed included).
    pub fn buffered(&self) -> usize {
        self.len + self.direct.as_ref().map_or(0, Direct::placed)
    }

    /// Calls `f` with the buffered bytes `start..start + len` (relative to the first unconsumed
    /// byte), piece by piece, each with whether it was copied in by `push`.
    fn for_each_piece(&self, start: usize, len: usize, mut f: impl FnMut(&[u8], bool)) {
        let mut skip = start + self.front_offset;
        let mut left = len;
        for chunk in &self.chunks {
            if left == 0 {
                return;
            }
            if skip >= chunk.filled {
                skip -= chunk.filled;
                continue;
            }
            let piece = &chunk.bytes[skip..chunk.filled.min(skip + left)];
            skip = 0;
            left -= piece.len();
            f(piece, chunk.copied);
        }
    }

    /// Copies buffered bytes `start..start + out.len()` into `out` (headers and digests).
    fn copy_out(&self, start: usize, out: &mut [u8]) {
        let mut at = 0;
        self.for_each_piece(start, out.len(), |piece, _| {
            out[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        });
    }

    /// Drops the first `n` buffered bytes; a read buffer emptied is kept for the next read.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("n <= len").filled - self.front_offset;
            if n >= front {
                n -= front;
                let chunk = self.chunks.pop_front().expect("a front chunk");
                self.keep(chunk);
                self.front_offset = 0;
            } else {
                self.front_offset += n;
                n = 0;
            }
        }
    }

    /// The header of the next PDU, once all of its bytes have arrived (or, with direct reads,
    /// once its header has, see [`Arrival`]). A header digest mismatch or an oversized data
    /// segment is fatal ([`FrameError::is_fatal`]).
    pub fn next_frame(&mut self, settings: &FrameSettings) -> Result<Option<Frame>, FrameError> {
        if self.direct.is_some() {
            return Ok(self.finish_direct());
        }
        if self.len < BHS_LEN {
            return Ok(None);
        }
        let mut bhs = [0u8; BHS_LEN];
        self.copy_out(0, &mut bhs);
        let ahs_len = pdu::total_ahs_length(&bhs).expect("a whole BHS");
        let data_len = pdu::data_segment_length(&bhs).expect("a whole BHS");
        if data_len > settings.max_data_segment_length {
            return Err(FrameError::DataTooLong {
                length: data_len,
                limit: settings.max_data_segment_length,
            });
        }
        let header_end = BHS_LEN + ahs_len;
        let hd = if settings.header_digest { 4 } else { 0 };
        self.header_len = BHS_LEN + hd;
        let data_start = header_end + hd;
        let padded = data_len as usize + pdu::padding(data_len as usize);
        let data_digest = settings.data_digest && data_len > 0;
        let total = data_start + padded + if data_digest { 4 } else { 0 };
        let arrival = if self.len >= total {
            Arrival::Whole
        } else if self.direct_reads
            && !self.whole_wanted
            && data_len as usize >= DIRECT_MIN
            && self.len >= data_start
        {
            Arrival::Partial
        } else {
            return Ok(None);
        };
        let mut raw_header = HeaderBytes::from(bhs);
        if ahs_len > 0 {
            let mut ahs = vec![0u8; ahs_len];
            self.copy_out(BHS_LEN, &mut ahs);
            raw_header.extend_from_slice(&ahs);
        }
        if settings.header_digest {
            let mut received = [0u8; 4];
            self.copy_out(header_end, &mut received);
            if received != digest(&raw_header) {
                return Err(FrameError::HeaderDigest);
            }
        }
        let header = pdu::Header::decode(&raw_header[..BHS_LEN], &raw_header[BHS_LEN..]);
        Ok(Some(Frame {
            raw_header,
            header,
            data_len: data_len as usize,
            data_start,
            total,
            data_digest,
            arrival,
        }))
    }

    /// Consumes `frame` (the one [`PduReader::next_frame`] just returned, nothing taken since,
    /// all of it arrived: [`Arrival::Whole`]), appending its data segment to `out`:
    /// the one copy of those bytes. On a data digest mismatch `out` is left as it was.
    pub fn take_data_into(
        &mut self,
        frame: &Frame,
        out: &mut impl DataSink,
    ) -> Result<(), FrameError> {
        debug_assert!(matches!(frame.arrival, Arrival::Whole));
        self.whole_wanted = false;
        let before = out.held();
        let mut crc = 0u32;
        let mut copied_in = false;
        self.for_each_piece(frame.data_start, frame.data_len, |piece, copied| {
            out.append(piece);
            // CRC32C costs about a quarter of an instruction per byte: only with DataDigest.
            if frame.data_digest {
                crc = crc32c::crc32c_append(crc, piece);
            }
            copied_in |= copied;
        });
        count_payload_copy(frame.data_len);
        if copied_in {
            // `push` copied these bytes once already.
            count_payload_copy(frame.data_len);
        }
        if frame.data_digest {
            let pad = pdu::padding(frame.data_len);
            let mut trailer = [0u8; 7];
            self.copy_out(frame.data_start + frame.data_len, &mut trailer[..pad + 4]);
            crc = crc32c::crc32c_append(crc, &trailer[..pad]);
            if trailer[pad..pad + 4] != crc.to_le_bytes() {
                out.truncate(before);
                self.consume(frame.total);
                return Err(FrameError::DataDigest {
                    header: frame.raw_header.to_vec(),
                });
            }
        }
        self.consume(frame.total);
        Ok(())
    }

    /// Consumes `frame` as a whole PDU, its data in a new `Vec`.
    pub fn take_pdu(&mut self, frame: Frame) -> Result<Pdu, FrameError> {
        let mut data = Vec::with_capacity(frame.data_len);
        self.take_data_into(&frame, &mut data)?;
        match frame.header {
            Ok(header) => Ok(Pdu { header, data }),
            Err(error) => Err(FrameError::Malformed {
                header: frame.raw_header.to_vec(),
                error,
            }),
        }
    }

    /// Takes the next complete PDU, if all its bytes have arrived.
    pub fn next_pdu(&mut self, settings: &FrameSettings) -> Result<Option<Pdu>, FrameError> {
        match self.next_frame(settings)? {
            Some(frame) => self.take_pdu(frame).map(Some),
            None => Ok(None),
        }
    }
}

/// The bytes that frame a data segment on the stream: the header (+ header digest) that goes
/// before it and the padding (+ data digest) that goes after, so the data itself can be written
/// from wherever it lies (a vectored write), never copied into a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameParts {
    /// Header and header digest, inline for every PDU without an AHS.
    pub head: HeaderBytes,
    tail: [u8; 7],
    tail_len: usize,
}

impl FrameParts {
    /// Padding and data digest, to write after the data segment.
    pub fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }
}

/// Frames `header` around a data segment of `data` (see [`FrameParts`]).
pub fn frame_parts(header: &pdu::Header, data: &[u8], settings: &FrameSettings) -> FrameParts {
    let data_crc = settings.data_digest.then(|| crc32c::crc32c(data));
    frame_parts_sized(header, data.len(), data_crc, settings)
}

/// As [`frame_parts`], for `len` bytes of data held elsewhere (a file's pages), with the CRC32C
/// of those bytes when the PDU carries a data digest (`settings.data_digest` is not consulted
/// for it; the header digest follows `settings`).
pub fn frame_parts_sized(
    header: &pdu::Header,
    len: usize,
    data_crc: Option<u32>,
    settings: &FrameSettings,
) -> FrameParts {
    let mut head = header.encode_bytes(len);
    if settings.header_digest {
        let d = digest(&head);
        head.extend_from_slice(&d);
    }
    let mut tail = [0u8; 7];
    let mut tail_len = 0;
    if len > 0 {
        let pad = pdu::padding(len);
        tail_len = pad;
        if let Some(crc) = data_crc {
            let crc = crc32c::crc32c_append(crc, &tail[..pad]);
            tail[pad..pad + 4].copy_from_slice(&crc.to_le_bytes());
            tail_len += 4;
        }
    }
    FrameParts {
        head,
        tail,
        tail_len,
    }
}

/// Serialises a PDU for the stream: header (+digest), data padded to 4 bytes (+digest).
pub fn encode(pdu: &Pdu, settings: &FrameSettings) -> Vec<u8> {
    let mut out = pdu.encode_header();
    if settings.header_digest {
        let d = digest(&out);
        out.extend_from_slice(&d);
    }
    if !pdu.data.is_empty() {
        let start = out.len();
        out.extend_from_slice(&pdu.data);
        count_payload_copy(pdu.data.len());
        out.resize(out.len() + pdu::padding(pdu.data.len()), 0);
        if settings.data_digest {
            let d = digest(&out[start..]);
            out.extend_from_slice(&d);
        }
    }
    out
}

#[cfg(test)]
mod tests;
