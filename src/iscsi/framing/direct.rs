//! Direct reads: once the header of a PDU with a large data segment has arrived and its taker
//! knows where the data belongs (a write task's pool buffer), the transport reads the rest of
//! the data from the socket straight into that buffer ([`PduReader::read_buffer`] gives it the
//! buffer's room), and the data digest, when negotiated, is computed over each read as it
//! lands. Only the data bytes that came in the same read as the header are copied.

use mem_ffi::Buf;

use super::{pdu, Frame, PduReader};
use crate::stats::count_payload_copy;

/// Data segments of at least this many bytes are read straight into their destination when
/// their header arrives first. Smaller ones are copied out of the reader: a direct read costs
/// one more socket read than taking the data with its header.
pub const DIRECT_MIN: usize = 16 * 1024;

/// How much of a [`Frame`]'s data segment has arrived, and where.
#[derive(Debug)]
pub enum Arrival {
    /// All of it, in the reader: take it with [`PduReader::take_data_into`] or
    /// [`PduReader::take_pdu`].
    Whole,
    /// Only the header (direct reads only, a data segment of [`DIRECT_MIN`] bytes or more):
    /// give the reader its destination ([`PduReader::place_data`]) or ask for the PDU whole
    /// ([`PduReader::wait_whole`]).
    Partial,
    /// The data segment has been read into the buffer given to [`PduReader::place_data`]
    /// (appended to what it held); the PDU is consumed. On a data digest mismatch the buffer
    /// is back to its length before.
    Placed {
        buffer: mem_ffi::Buf,
        digest_ok: bool,
    },
}

/// A data segment being read straight into its destination.
#[derive(Debug)]
pub(super) struct Direct {
    /// The PDU's header ([`Arrival::Partial`] until it is handed back placed).
    frame: Frame,
    /// The destination, its length already extended by the data segment's length.
    buffer: Buf,
    /// The destination's length before: the data goes to `buffer[start..]`.
    start: usize,
    /// `buffer[..filled]` holds what it held and what has arrived.
    filled: usize,
    /// CRC32C of `buffer[start..filled]` (with DataDigest).
    crc: u32,
}

impl Direct {
    /// Data bytes still to come, `None` once all arrived.
    pub(super) fn room(&self) -> Option<usize> {
        (self.filled < self.buffer.len()).then(|| self.buffer.len() - self.filled)
    }

    /// Where the next read goes: the rest of the data segment.
    pub(super) fn room_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.filled..]
    }

    /// `n` bytes were read into [`Direct::room_mut`].
    pub(super) fn filled(&mut self, n: usize) {
        let end = self.buffer.len().min(self.filled + n);
        if self.frame.data_digest {
            // CRC32C over the bytes just read, while they are in the cache.
            self.crc = crc32c::crc32c_append(self.crc, &self.buffer[self.filled..end]);
        }
        self.filled = end;
    }

    /// Stream bytes after the data segment: padding and data digest.
    pub(super) fn trailer_len(&self) -> usize {
        pdu::padding(self.frame.data_len) + if self.frame.data_digest { 4 } else { 0 }
    }

    /// Data bytes placed so far.
    pub(super) fn placed(&self) -> usize {
        self.filled - self.start
    }
}

impl PduReader {
    /// Whether a data segment of [`DIRECT_MIN`] bytes or more is due (the datamover has an R2T
    /// outstanding for that much): reads at a PDU boundary then take only a header's worth.
    pub fn expect_data(&mut self, expected: bool) {
        self.data_expected = expected;
    }

    /// With direct reads on, [`PduReader::next_frame`] yields the header of a PDU whose data
    /// segment of [`DIRECT_MIN`] bytes or more is still coming ([`Arrival::Partial`]); the
    /// taker then places it ([`PduReader::place_data`]) or waits for it whole
    /// ([`PduReader::wait_whole`]). Only for a transport that reads through
    /// [`PduReader::read_buffer`].
    pub fn set_direct_reads(&mut self, on: bool) {
        self.direct_reads = on;
    }

    /// [`PduReader::read_buffer`] for a vectored read: while a data segment is being placed,
    /// its rest and then room for what follows it in the stream (its padding and data digest
    /// and the next PDU's header, no more), so one read takes the data and the next header
    /// without the next PDU's data landing in the reader. Otherwise the second room is empty.
    pub fn read_buffers(&mut self, size: usize) -> (&mut [u8], &mut [u8]) {
        let Some(trailer) = self
            .direct
            .as_ref()
            .filter(|d| d.room().is_some())
            .map(Direct::trailer_len)
        else {
            return (self.read_buffer(size), &mut []);
        };
        let limit = trailer + self.header_len;
        let second = Self::chunk_room(&mut self.chunks, &mut self.spare, size, limit);
        self.second_room = true;
        let first = self.direct.as_mut().expect("checked above").room_mut();
        (first, second)
    }

    /// The taker of a partial `frame` wants it whole: [`PduReader::next_frame`] yields it again
    /// once all its bytes have arrived.
    pub fn wait_whole(&mut self, frame: Frame) {
        debug_assert!(matches!(frame.arrival, Arrival::Partial));
        self.whole_wanted = true;
    }

    /// The data segment of the partial `frame` goes to the end of `buffer` (whose capacity must
    /// hold it): the data bytes already buffered are copied there (the only copy), the rest is
    /// read into it ([`PduReader::read_buffer`]), and [`PduReader::next_frame`] yields the frame
    /// again, [`Arrival::Placed`] with `buffer`, once the data and its digest are in.
    pub fn place_data(&mut self, frame: Frame, mut buffer: Buf) {
        debug_assert!(matches!(frame.arrival, Arrival::Partial));
        let start = buffer.len();
        buffer.set_len(start + frame.data_len);
        let arrived = (self.len - frame.data_start).min(frame.data_len);
        let (mut at, mut crc, mut copied_in) = (start, 0u32, false);
        self.for_each_piece(frame.data_start, arrived, |piece, copied| {
            buffer[at..at + piece.len()].copy_from_slice(piece);
            if frame.data_digest {
                crc = crc32c::crc32c_append(crc, piece);
            }
            at += piece.len();
            copied_in |= copied;
        });
        if arrived > 0 {
            count_payload_copy(arrived);
            if copied_in {
                // `push` copied these bytes once already.
                count_payload_copy(arrived);
            }
        }
        self.consume(frame.data_start + arrived);
        self.whole_wanted = false;
        self.direct = Some(Direct {
            frame,
            buffer,
            start,
            filled: start + arrived,
            crc,
        });
    }

    /// The frame of a direct transfer once its data, padding and digest are in.
    pub(super) fn finish_direct(&mut self) -> Option<Frame> {
        let direct = self.direct.as_ref()?;
        let trailer = direct.trailer_len();
        if direct.room().is_some() || self.len < trailer {
            return None;
        }
        let mut bytes = [0u8; 7];
        self.copy_out(0, &mut bytes[..trailer]);
        self.consume(trailer);
        let Direct {
            mut frame,
            mut buffer,
            start,
            crc,
            ..
        } = self.direct.take()?;
        let pad = pdu::padding(frame.data_len);
        let digest_ok = !frame.data_digest
            || crc32c::crc32c_append(crc, &bytes[..pad]).to_le_bytes() == bytes[pad..pad + 4];
        if !digest_ok {
            buffer.truncate(start);
        }
        // Large PDUs tend to follow each other: the next read brings only the next header.
        self.header_first = true;
        frame.arrival = Arrival::Placed { buffer, digest_ok };
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{encode, FrameSettings};
    use super::*;
    use crate::iscsi::pdu::{self, Header, NopOut, Pdu};
    use crate::stats::{thread_payload_copies, CopyCounts};

    fn settings(digests: bool) -> FrameSettings {
        FrameSettings {
            header_digest: digests,
            data_digest: digests,
            max_data_segment_length: 1 << 20,
        }
    }

    fn nop(len: usize, seed: u8) -> Pdu {
        let data = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        Pdu::with_data(
            Header::NopOut(NopOut {
                itt: 1,
                ttt: pdu::RESERVED_TAG,
                ..Default::default()
            }),
            data,
        )
    }

    /// What [`feed`] got: whole PDUs, placed data segments (without the buffer's first 10
    /// bytes) with their digest verdict, and the two rooms of every read.
    #[derive(Default)]
    struct Fed {
        whole: Vec<Pdu>,
        placed: Vec<(Vec<u8>, bool)>,
        rooms: Vec<(usize, usize)>,
    }

    /// Reads `stream` as a socket would, `step` bytes per read at most, placing every partial
    /// frame in a buffer that already holds 10 bytes (or waiting for it whole when `whole`).
    fn feed(r: &mut PduReader, stream: &[u8], step: usize, s: &FrameSettings, whole: bool) -> Fed {
        let mut fed = Fed::default();
        let mut at = 0;
        while at < stream.len() {
            // A vectored read: the first room, then the second.
            let (first, second) = r.read_buffers(step);
            fed.rooms.push((first.len(), second.len()));
            let mut n = 0;
            for room in [first, second] {
                let k = room.len().min(step - n).min(stream.len() - at - n);
                room[..k].copy_from_slice(&stream[at + n..at + n + k]);
                n += k;
            }
            r.push_read(n);
            at += n;
            while let Some(frame) = r.next_frame(s).unwrap() {
                match frame.arrival {
                    Arrival::Whole => fed.whole.push(r.take_pdu(frame).unwrap()),
                    Arrival::Partial if whole => r.wait_whole(frame),
                    Arrival::Partial => {
                        let mut buffer = mem_ffi::pool::global().with_capacity(10 + frame.data_len);
                        buffer.extend_from_slice(&[0xee; 10]);
                        r.place_data(frame, buffer);
                    }
                    Arrival::Placed { buffer, digest_ok } => {
                        assert_eq!(&buffer[..10], &[0xee; 10]);
                        fed.placed.push((buffer[10..].to_vec(), digest_ok));
                    }
                }
            }
        }
        fed
    }

    #[test]
    fn large_data_is_read_straight_into_its_buffer() {
        for digests in [false, true] {
            let s = settings(digests);
            for len in [DIRECT_MIN, 40_001] {
                let (a, b, small) = (nop(len, 3), nop(len, 5), nop(100, 7));
                let stream = [encode(&a, &s), encode(&b, &s), encode(&small, &s)].concat();
                let mut r = PduReader::new();
                r.set_direct_reads(true);
                let before = thread_payload_copies();
                let fed = feed(&mut r, &stream, 4096, &s, false);
                let copies = thread_payload_copies() - before;
                assert_eq!(fed.placed, vec![(a.data.clone(), true), (b.data, true)]);
                assert_eq!(fed.whole, vec![small]);
                assert_eq!(r.buffered(), 0);
                // The first read brought a's header and the start of its data (copied); the
                // read that ended a's data took its padding and digest and b's header in its
                // second room, no more, so none of b's data was copied; then the small PDU,
                // copied.
                let header = 48 + if digests { 4 } else { 0 };
                let trailer = pdu::padding(len) + if digests { 4 } else { 0 };
                let seconds: Vec<usize> = fed.rooms.iter().map(|r| r.1).collect();
                assert!(seconds.contains(&(trailer + header)), "{:?}", fed.rooms);
                assert_eq!(
                    copies,
                    CopyCounts {
                        copies: 2,
                        bytes: (4096 - header + 100) as u64
                    }
                );
            }
        }
    }

    #[test]
    fn a_bad_data_digest_restores_the_buffer_and_the_stream_goes_on() {
        let s = settings(true);
        let mut stream = encode(&nop(DIRECT_MIN + 3, 9), &s);
        let n = stream.len();
        stream[n - 6] ^= 1; // the last data byte
        stream.extend(encode(&nop(10, 1), &s));
        let mut r = PduReader::new();
        r.set_direct_reads(true);
        let fed = feed(&mut r, &stream, 1000, &s, false);
        assert_eq!(fed.placed.len(), 1);
        assert_eq!(fed.placed[0], (Vec::new(), false));
        assert_eq!(fed.whole, vec![nop(10, 1)]);
    }

    #[test]
    fn a_partial_frame_waited_for_comes_back_whole() {
        let s = settings(false);
        let big = nop(DIRECT_MIN * 2, 11);
        let stream = [encode(&big, &s), encode(&nop(5, 2), &s)].concat();
        let mut r = PduReader::new();
        r.set_direct_reads(true);
        let fed = feed(&mut r, &stream, 3000, &s, true);
        assert!(fed.placed.is_empty());
        assert_eq!(fed.whole, vec![big, nop(5, 2)]);
        // Without direct reads nothing is ever partial.
        let mut r = PduReader::new();
        let fed = feed(&mut r, &stream, 3000, &s, false);
        assert_eq!(fed.whole.len(), 2);
    }
}
