//! PDUs framed for the socket but not written yet, kept as pieces (a header, a control PDU's
//! data, a slice of a task's read buffer, padding and digest) and written with vectored writes,
//! so no data segment is ever copied into a frame on its way out. Headers and trailers are held
//! inline in the pieces and the I/O vectors are built on the stack: queueing and writing a PDU
//! allocates nothing once the list of pieces has grown to its working size.

use std::io::{self, IoSlice, Write};
use std::ops::Range;

use crate::iscsi::bytes::HeaderBytes;
use crate::iscsi::framing::{frame_parts, FrameParts, FrameSettings};
use crate::iscsi::pdu::{Header, Pdu};
use crate::iscsi::tcp::DataInBuf;

/// Pieces one `writev` takes at most (Linux UIO_MAXIOV is 1024; this many fit on the stack).
const MAX_IOVECS: usize = 64;

/// One contiguous piece of the byte stream.
enum Piece {
    /// A header and its digest.
    Head(HeaderBytes),
    /// Padding and data digest after a data segment.
    Tail([u8; 7], u8),
    Owned(Vec<u8>),
    Shared(DataInBuf, Range<usize>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Head(bytes) => bytes,
            Piece::Tail(bytes, len) => &bytes[..usize::from(*len)],
            Piece::Owned(bytes) => bytes,
            Piece::Shared(buffer, range) => &buffer[range.clone()],
        }
    }
}

/// Framed PDUs waiting to be written, in order.
#[derive(Default)]
pub(crate) struct Outbox {
    pieces: Vec<Piece>,
    /// Bytes of `pieces[0]` already written.
    written: usize,
    /// Bytes queued and not written yet.
    queued: usize,
}

impl Outbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Bytes queued and not written yet.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Forgets everything queued.
    pub(crate) fn clear(&mut self) {
        self.pieces.clear();
        self.written = 0;
        self.queued = 0;
    }

    /// Queues a PDU; its data segment is moved in, not copied.
    pub(super) fn push_pdu(&mut self, pdu: Pdu, settings: &FrameSettings) {
        let parts = frame_parts(&pdu.header, &pdu.data, settings);
        self.push(Piece::Head(parts.head.clone()));
        self.push(Piece::Owned(pdu.data));
        self.push_tail(&parts);
    }

    /// Queues a PDU whose data segment is bytes `range` of `buffer`.
    pub(super) fn push_shared(
        &mut self,
        header: &Header,
        buffer: DataInBuf,
        range: Range<usize>,
        settings: &FrameSettings,
    ) {
        let parts = frame_parts(header, &buffer[range.clone()], settings);
        self.push(Piece::Head(parts.head.clone()));
        self.push(Piece::Shared(buffer, range));
        self.push_tail(&parts);
    }

    fn push_tail(&mut self, parts: &FrameParts) {
        let tail = parts.tail();
        let mut bytes = [0u8; 7];
        bytes[..tail.len()].copy_from_slice(tail);
        self.push(Piece::Tail(bytes, tail.len() as u8));
    }

    /// Queues bytes `range` of `buffer` as they are (a read buffer framed by another
    /// transport: NVMe/TCP C2HData).
    pub(crate) fn push_buffer(&mut self, buffer: DataInBuf, range: Range<usize>) {
        self.push(Piece::Shared(buffer, range));
    }

    /// Queues a few bytes framed by another transport (NVMe/TCP headers and digests), held
    /// inline: a header of up to 52 bytes or a digest costs no allocation.
    pub(crate) fn push_head(&mut self, bytes: &[u8]) {
        if bytes.len() <= 7 {
            let mut tail = [0u8; 7];
            tail[..bytes.len()].copy_from_slice(bytes);
            self.push(Piece::Tail(tail, bytes.len() as u8));
        } else {
            self.push(Piece::Head(HeaderBytes::from(bytes)));
        }
    }

    /// Queues raw stream bytes (PDUs framed before the connection got its own thread).
    pub(crate) fn push_bytes(&mut self, bytes: Vec<u8>) {
        self.push(Piece::Owned(bytes));
    }

    fn push(&mut self, piece: Piece) {
        let len = piece.bytes().len();
        if len > 0 {
            self.queued += len;
            self.pieces.push(piece);
        }
    }

    /// Writes everything queued (blocking), then forgets it; on error the rest is dropped.
    pub(super) fn write_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        let result = self.write_all(out);
        self.clear();
        result
    }

    /// Writes as much as `out` takes without blocking (a non-blocking socket); what it does not
    /// take stays queued. `Ok(true)` when everything is written, `Ok(false)` when `out` is full.
    pub(crate) fn send(&mut self, out: &mut impl Write) -> io::Result<bool> {
        match self.write_all(out) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes until everything is written or `out` fails; written pieces are dropped either way.
    fn write_all(&mut self, out: &mut impl Write) -> io::Result<()> {
        let mut first = 0;
        let result = self.write_pieces(out, &mut first);
        self.pieces.drain(..first);
        result
    }

    fn write_pieces(&mut self, out: &mut impl Write, first: &mut usize) -> io::Result<()> {
        while *first < self.pieces.len() {
            let first_index = *first;
            let end = (first_index + MAX_IOVECS).min(self.pieces.len());
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            for (i, (slice, piece)) in slices
                .iter_mut()
                .zip(&self.pieces[first_index..end])
                .enumerate()
            {
                let bytes = piece.bytes();
                *slice = IoSlice::new(if i == 0 {
                    &bytes[self.written..]
                } else {
                    bytes
                });
            }
            let slices = &slices[..end - first_index];
            let mut n = match out.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // Skip what went out: whole pieces, then part of the next.
            self.queued -= n;
            while n > 0 {
                let left = self.pieces[*first].bytes().len() - self.written;
                if n >= left {
                    n -= left;
                    *first += 1;
                    self.written = 0;
                } else {
                    self.written += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::framing;
    use crate::iscsi::pdu::{DataIn, NopIn};
    use mem_ffi::Buf;
    use std::sync::Arc;

    /// A writer that takes at most a few bytes per call, to exercise partial vectored writes.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_vectored_writes_produce_the_encoded_stream() {
        let settings = FrameSettings {
            header_digest: true,
            data_digest: true,
            max_data_segment_length: 8192,
        };
        let nop = Pdu::with_data(Header::NopIn(NopIn::default()), b"ping!".to_vec());
        let buffer = Arc::new(Buf::copy_from_slice(&(0..=255u8).collect::<Vec<u8>>()));
        let data_in = Header::DataIn(DataIn {
            buffer_offset: 10,
            ..DataIn::default()
        });
        let mut outbox = Outbox::default();
        outbox.push_pdu(nop.clone(), &settings);
        outbox.push_shared(
            &data_in,
            DataInBuf::Shared(Arc::clone(&buffer)),
            10..111,
            &settings,
        );
        let mut wire = Trickle(Vec::new());
        outbox.write_to(&mut wire).unwrap();
        assert!(outbox.is_empty());
        let mut expected = framing::encode(&nop, &settings);
        let slice = Pdu::with_data(data_in, buffer[10..111].to_vec());
        expected.extend_from_slice(&framing::encode(&slice, &settings));
        assert_eq!(wire.0, expected);
    }

    /// A non-blocking socket whose send buffer takes `room` more bytes.
    struct Full {
        wire: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room).min(7);
            self.room -= n;
            self.wire.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_socket_keeps_the_rest_queued_for_the_next_send() {
        let settings = FrameSettings::default();
        let first = Pdu::with_data(Header::NopIn(NopIn::default()), vec![1; 100]);
        let second = Pdu::with_data(Header::NopIn(NopIn::default()), vec![2; 300]);
        let mut expected = framing::encode(&first, &settings);
        expected.extend_from_slice(&framing::encode(&second, &settings));
        let mut outbox = Outbox::default();
        outbox.push_pdu(first, &settings);
        outbox.push_pdu(second, &settings);
        assert_eq!(outbox.queued(), expected.len());
        let mut socket = Full {
            wire: Vec::new(),
            room: 150,
        };
        assert!(!outbox.send(&mut socket).unwrap(), "the socket took it all");
        assert_eq!(outbox.queued(), expected.len() - 150);
        assert!(!outbox.is_empty());
        socket.room = usize::MAX;
        assert!(outbox.send(&mut socket).unwrap());
        assert!(outbox.is_empty());
        assert_eq!(outbox.queued(), 0);
        assert_eq!(socket.wire, expected);
    }
}
