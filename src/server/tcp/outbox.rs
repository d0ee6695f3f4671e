//! PDUs framed for the socket but not written yet, kept as pieces (a header, a control PDU's
//! data, a slice of a task's read buffer, of a RAM LUN's lent memory or of a file's pages,
//! padding and digest) and written with vectored writes (`mem_ffi::send_pieces`, which takes
//! lent memory by address) and, for a file's pages, sendfile(2), so no data segment is ever
//! copied into a frame on its way out, and neither lent memory nor a file's pages into a buffer
//! of the target's own. Headers and trailers are held inline in the pieces and the I/O vectors
//! are built on the stack: queueing and writing a PDU allocates nothing once the list of pieces
//! has grown to its working size.

use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::AsFd;

use crate::iscsi::bytes::HeaderBytes;
use crate::iscsi::framing::{frame_parts, frame_parts_sized, FrameParts, FrameSettings};
use crate::iscsi::pdu::{Header, Pdu};
use crate::iscsi::tcp::DataInBuf;
use crate::server::engine::FILE_PAGES_MIN;
use mem_ffi::send::MAX_PIECES;
use mem_ffi::{Buf, FileSpan, SendPiece};
use std::sync::Arc;

/// Where an [`Outbox`] writes: a socket, or a stand-in for one.
pub(crate) trait Wire: Write {
    /// Writes `pieces` in order as a vectored write does (a short count when only some of
    /// them went), telling the socket when more follows at once (`more`, MSG_MORE), so a header
    /// leaves in one segment with the file pages after it. A stand-in writes the first piece
    /// that holds bytes, copying lent ones out.
    fn send_pieces(&mut self, pieces: &[SendPiece<'_>], _more: bool) -> io::Result<usize> {
        match pieces.iter().find(|piece| !piece.is_empty()) {
            None => Ok(0),
            Some(SendPiece::Bytes(bytes)) => self.write(bytes),
            Some(SendPiece::Lent { lent, start, len }) => {
                let mut bytes = vec![0; *len];
                lent.slice(*start..start + len).copy_to(&mut bytes);
                self.write(&bytes)
            }
        }
    }

    /// Sends up to `len` bytes of `file` from `offset` and says how many went.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
}

impl Wire for &TcpStream {
    /// One sendmsg(2) of all the pieces, lent memory by address (no copy in user space).
    fn send_pieces(&mut self, pieces: &[SendPiece<'_>], more: bool) -> io::Result<usize> {
        mem_ffi::send_pieces(self.as_fd(), pieces, more)
    }

    /// sendfile(2): the socket takes references to the file's pages, no copy in user space
    /// (nor in the kernel, for a loopback peer, until the receiver reads them).
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut offset = libc::off64_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
        Ok(nix::sys::sendfile::sendfile64(
            *self,
            file,
            Some(&mut offset),
            len,
        )?)
    }
}

impl Wire for TcpStream {
    fn send_pieces(&mut self, pieces: &[SendPiece<'_>], more: bool) -> io::Result<usize> {
        (&*self).send_pieces(pieces, more)
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        (&*self).send_file(file, offset, len)
    }
}

impl Wire for io::Sink {
    fn send_pieces(&mut self, pieces: &[SendPiece<'_>], _: bool) -> io::Result<usize> {
        Ok(pieces.iter().map(SendPiece::len).sum())
    }

    fn send_file(&mut self, _: &File, _: u64, len: usize) -> io::Result<usize> {
        Ok(len)
    }
}

/// One contiguous piece of the byte stream.
enum Piece {
    /// A header and its digest.
    Head(HeaderBytes),
    /// Padding and data digest after a data segment.
    Tail([u8; 7], u8),
    Owned(Vec<u8>),
    /// Bytes `range` of a read's data: in memory, lent memory, or a file's pages.
    Shared(DataInBuf, Range<usize>),
}

impl Piece {
    /// The bytes, when they are in the target's own memory (not lent memory nor a file's
    /// pages).
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Piece::Head(bytes) => Some(bytes),
            Piece::Tail(bytes, len) => Some(&bytes[..usize::from(*len)]),
            Piece::Owned(bytes) => Some(bytes),
            Piece::Shared(buffer, range) => buffer.bytes().map(|b| &b[range.clone()]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Piece::Shared(_, range) => range.len(),
            piece => piece.bytes().map_or(0, <[u8]>::len),
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
    /// The file span last read into memory, and its bytes: the span's later PDUs take their
    /// slices from them instead of reading again. Held until its last slice is queued.
    read_span: Option<(FileSpan, Arc<Buf>)>,
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
        self.read_span = None;
    }

    /// Queues a PDU; its data segment is moved in, not copied.
    pub(super) fn push_pdu(&mut self, pdu: Pdu, settings: &FrameSettings) {
        let parts = frame_parts(&pdu.header, &pdu.data, settings);
        self.push(Piece::Head(parts.head.clone()));
        self.push(Piece::Owned(pdu.data));
        self.push_tail(&parts);
    }

    /// Queues a PDU whose data segment is bytes `range` of `buffer`. A file's pages are read
    /// into memory when they must be digested or the PDU's share of them is too small to be
    /// worth a sendfile of its own (an initiator with small data segments): the whole span at
    /// once, whose later PDUs then take their slices from that buffer. The error is that
    /// read's (the connection cannot go on without the PDU it has announced).
    pub(super) fn push_shared(
        &mut self,
        header: &Header,
        buffer: DataInBuf,
        range: Range<usize>,
        settings: &FrameSettings,
    ) -> io::Result<()> {
        let buffer = match buffer {
            DataInBuf::File(span) if settings.data_digest || range.len() < FILE_PAGES_MIN => {
                DataInBuf::Shared(self.span_bytes(span, range.end)?)
            }
            buffer => buffer,
        };
        debug_assert!(
            !(settings.data_digest && matches!(buffer, DataInBuf::Lent(_))),
            "lent memory is never sent with a data digest"
        );
        let parts = match buffer.bytes() {
            Some(bytes) => frame_parts(header, &bytes[range.clone()], settings),
            // Lent memory only without a data digest (`TcpConnection::put_data`), a file's
            // pages only then too (read into memory above otherwise).
            None => frame_parts_sized(header, range.len(), None, settings),
        };
        self.push(Piece::Head(parts.head.clone()));
        self.push(Piece::Shared(buffer, range));
        self.push_tail(&parts);
        Ok(())
    }

    /// The bytes of `span`, read once for all its PDUs; forgotten once the PDU ending at
    /// `end` is the span's last.
    fn span_bytes(&mut self, span: FileSpan, end: usize) -> io::Result<Arc<Buf>> {
        let bytes = match self.read_span.take() {
            Some((read, bytes)) if read == span => bytes,
            _ => Arc::new(span.read(0..span.len())?),
        };
        if end < span.len() {
            self.read_span = Some((span, Arc::clone(&bytes)));
        }
        Ok(bytes)
    }

    fn push_tail(&mut self, parts: &FrameParts) {
        let tail = parts.tail();
        let mut bytes = [0u8; 7];
        bytes[..tail.len()].copy_from_slice(tail);
        self.push(Piece::Tail(bytes, tail.len() as u8));
    }

    /// Queues bytes `range` of `buffer` as they are (a read buffer, lent memory or a file's
    /// pages framed by another transport: NVMe/TCP C2HData).
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
        let len = piece.len();
        if len > 0 {
            self.queued += len;
            self.pieces.push(piece);
        }
    }

    /// Writes everything queued (blocking), then forgets it; on error the rest is dropped.
    pub(super) fn write_to(&mut self, out: &mut impl Wire) -> io::Result<()> {
        let result = self.write_all(out);
        self.clear();
        result
    }

    /// Writes as much as `out` takes without blocking (a non-blocking socket); what it does not
    /// take stays queued. `Ok(true)` when everything is written, `Ok(false)` when `out` is full.
    pub(crate) fn send(&mut self, out: &mut impl Wire) -> io::Result<bool> {
        match self.write_all(out) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes until everything is written or `out` fails; written pieces are dropped either way.
    fn write_all(&mut self, out: &mut impl Wire) -> io::Result<()> {
        let mut first = 0;
        let result = self.write_pieces(out, &mut first);
        self.pieces.drain(..first);
        result
    }

    fn write_pieces(&mut self, out: &mut impl Wire, first: &mut usize) -> io::Result<()> {
        while *first < self.pieces.len() {
            let n = match self.write_some(out, *first) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // Skip what went out: whole pieces, then part of the next.
            self.queued -= n;
            let mut n = n;
            while n > 0 {
                let left = self.pieces[*first].len() - self.written;
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

    /// One write from piece `first` on: sendfile when it is a file's pages, else one vectored
    /// write of the pieces in memory (lent memory by address) up to the next file's (with
    /// MSG_MORE before one). A file that ends before its span is an error: the PDU around it
    /// has been announced.
    fn write_some(&self, out: &mut impl Wire, first: usize) -> io::Result<usize> {
        if let Piece::Shared(DataInBuf::File(span), range) = &self.pieces[first] {
            let at = range.start + self.written;
            let n = out.send_file(span.file(), span.offset() + at as u64, range.end - at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backing file ends before the data being sent",
                ));
            }
            return Ok(n);
        }
        // As many pieces as one `send_pieces` call takes, on the stack.
        let mut slices = [SendPiece::Bytes(&[]); MAX_PIECES];
        let mut count = 0;
        let mut file_next = false;
        for (i, piece) in self.pieces[first..].iter().enumerate() {
            let skip = if i == 0 { self.written } else { 0 };
            match piece {
                Piece::Shared(DataInBuf::File(_), _) => {
                    file_next = true;
                    break;
                }
                Piece::Shared(DataInBuf::Lent(ranges), range) => {
                    let parts = ranges.within(range.start + skip..range.end);
                    for (lent, part) in parts.take(MAX_PIECES - count) {
                        slices[count] = SendPiece::Lent {
                            lent,
                            start: part.start,
                            len: part.len(),
                        };
                        count += 1;
                    }
                }
                piece => {
                    let bytes = piece.bytes().expect("a piece in memory");
                    slices[count] = SendPiece::Bytes(&bytes[skip..]);
                    count += 1;
                }
            }
            if count == MAX_PIECES {
                break;
            }
        }
        out.send_pieces(&slices[..count], file_next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::framing;
    use crate::iscsi::pdu::{DataIn, NopIn};
    use mem_ffi::{Buf, FileSpan};
    use std::os::unix::fs::FileExt;
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

    impl Wire for Trickle {
        fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
            let mut bytes = vec![0; len.min(7)];
            let n = file.read_at(&mut bytes, offset)?;
            self.0.extend_from_slice(&bytes[..n]);
            Ok(n)
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
        outbox
            .push_shared(
                &data_in,
                DataInBuf::Shared(Arc::clone(&buffer)),
                10..111,
                &settings,
            )
            .unwrap();
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

    impl Wire for Full {
        fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut bytes = vec![0; len.min(self.room).min(7)];
            let n = file.read_at(&mut bytes, offset)?;
            self.room -= n;
            self.wire.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
    }

    /// A file holding `data` at offset 4096, already unlinked.
    fn file_with(data: &[u8]) -> Arc<File> {
        crate::backend::unlinked_file(data, 4096)
    }

    /// Data-In from a file's pages produces on the wire what the same PDU from a buffer does,
    /// with and without digests (with a data digest the pages are read into a buffer, since
    /// the digest needs the bytes), written in pieces as small as a socket may take.
    #[test]
    fn file_pages_go_out_as_the_encoded_pdu() {
        let data: Vec<u8> = (0..40000u32).map(|i| (i % 251) as u8).collect();
        let span = FileSpan::new(file_with(&data), 4096, data.len());
        let header = Header::DataIn(DataIn {
            buffer_offset: 100,
            ..DataIn::default()
        });
        let slice = 100..20103;
        for (header_digest, data_digest) in [(false, false), (true, false), (true, true)] {
            let settings = FrameSettings {
                header_digest,
                data_digest,
                max_data_segment_length: 1 << 20,
            };
            let mut outbox = Outbox::default();
            let file = DataInBuf::File(span.clone());
            outbox
                .push_shared(&header, file, slice.clone(), &settings)
                .unwrap();
            let mut expected = framing::encode(
                &Pdu::with_data(header.clone(), data[slice.clone()].to_vec()),
                &settings,
            );
            assert_eq!(outbox.queued(), expected.len());
            let nop = Pdu::with_data(Header::NopIn(NopIn::default()), vec![7]);
            outbox.push_pdu(nop.clone(), &settings);
            expected.extend_from_slice(&framing::encode(&nop, &settings));
            let mut wire = Trickle(Vec::new());
            outbox.write_to(&mut wire).unwrap();
            assert_eq!(wire.0, expected, "digests {header_digest}/{data_digest}");
        }
    }

    /// PDUs too small to be worth a sendfile each (an initiator's 8 KiB data segments) take
    /// their slices from one read of the whole span: a change to the file after the first PDU
    /// was queued shows in none of them.
    #[test]
    fn small_pdus_of_a_span_share_one_read() {
        let data: Vec<u8> = (0..32768u32).map(|i| (i % 253) as u8).collect();
        let file = file_with(&data);
        let span = FileSpan::new(Arc::clone(&file), 4096, data.len());
        let settings = FrameSettings::default();
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for (i, at) in (0..data.len()).step_by(8192).enumerate() {
            let header = Header::DataIn(DataIn {
                buffer_offset: at as u32,
                data_sn: i as u32,
                ..DataIn::default()
            });
            let file_pages = DataInBuf::File(span.clone());
            outbox
                .push_shared(&header, file_pages, at..at + 8192, &settings)
                .unwrap();
            file.write_all_at(&[0xEE; 32768], 4096).unwrap();
            let pdu = Pdu::with_data(header, data[at..at + 8192].to_vec());
            expected.extend_from_slice(&framing::encode(&pdu, &settings));
        }
        assert!(
            outbox.read_span.is_none(),
            "released with the span's last PDU"
        );
        let mut wire = Trickle(Vec::new());
        outbox.write_to(&mut wire).unwrap();
        assert_eq!(wire.0, expected);
    }

    /// A file's pages that the socket takes only part of stay queued from where it stopped.
    #[test]
    fn a_full_socket_resumes_inside_file_pages() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 13) as u8).collect();
        let span = FileSpan::new(file_with(&data), 4096, data.len());
        let settings = FrameSettings::default();
        let header = Header::DataIn(DataIn::default());
        let mut outbox = Outbox::default();
        outbox
            .push_shared(&header, DataInBuf::File(span), 0..20000, &settings)
            .unwrap();
        let expected = framing::encode(&Pdu::with_data(header, data), &settings);
        let mut socket = Full {
            wire: Vec::new(),
            room: 1000,
        };
        assert!(!outbox.send(&mut socket).unwrap());
        assert_eq!(outbox.queued(), expected.len() - 1000);
        socket.room = usize::MAX;
        assert!(outbox.send(&mut socket).unwrap());
        assert_eq!(socket.wire, expected);
    }

    /// A backing file cut shorter than a span already announced in a PDU header is an error
    /// of the write (the connection ends), never a short PDU on the wire.
    #[test]
    fn a_file_shorter_than_its_span_fails_the_write() {
        let span = FileSpan::new(file_with(&[1; 100]), 4096, 32768);
        let mut outbox = Outbox::default();
        let header = Header::DataIn(DataIn::default());
        let settings = FrameSettings::default();
        outbox
            .push_shared(&header, DataInBuf::File(span.clone()), 0..32768, &settings)
            .unwrap();
        let err = outbox.write_to(&mut Trickle(Vec::new())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // Pages read into memory (a data digest) are read when queued: the failure is there.
        let digests = FrameSettings {
            data_digest: true,
            ..FrameSettings::default()
        };
        assert!(outbox
            .push_shared(&header, DataInBuf::File(span), 0..32768, &digests)
            .is_err());
        assert!(outbox.is_empty());
    }

    /// Over a real loopback socket: the header leaves with MSG_MORE, the pages by sendfile,
    /// and the peer reads the encoded PDU.
    #[test]
    fn a_socket_receives_file_pages_by_sendfile() {
        use std::io::Read;
        use std::net::TcpListener;
        let data: Vec<u8> = (0..70000u32).map(|i| (i % 241) as u8).collect();
        let span = FileSpan::new(file_with(&data), 4096, data.len());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let settings = FrameSettings {
            header_digest: true,
            data_digest: false,
            max_data_segment_length: 1 << 20,
        };
        let header = Header::DataIn(DataIn::default());
        let mut outbox = Outbox::default();
        outbox
            .push_shared(&header, DataInBuf::File(span), 0..70000, &settings)
            .unwrap();
        let expected = framing::encode(&Pdu::with_data(header, data), &settings);
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; expected.len()];
            receiver.read_exact(&mut got).unwrap();
            got == expected
        });
        let mut wire = &sender;
        outbox.write_to(&mut wire).unwrap();
        assert!(reader.join().unwrap());
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

    /// Lent ranges of `data` (from two regions, so a PDU's data spans both) as one payload.
    fn lent_payload(data: &[u8]) -> (Vec<mem_ffi::Region>, mem_ffi::LentRanges) {
        let half = data.len() / 2;
        let regions: Vec<_> = [&data[..half], &data[half..]]
            .into_iter()
            .map(|part| {
                let mut region = mem_ffi::Region::zeroed(mem_ffi::pool::global(), 1 << 20);
                region.write(100, part);
                region
            })
            .collect();
        let ranges = regions
            .iter()
            .zip([half, data.len() - half])
            .map(|(region, len)| region.lend(100..100 + len))
            .collect();
        (regions, ranges)
    }

    /// Data-In from lent memory spanning two regions produces the encoded PDU, written in
    /// pieces as small as a socket may take, and a full socket resumes inside a lent range.
    #[test]
    fn lent_memory_goes_out_as_the_encoded_pdu_across_partial_writes() {
        let data: Vec<u8> = (0..30000u32).map(|i| (i % 239) as u8).collect();
        let (_regions, ranges) = lent_payload(&data);
        let settings = FrameSettings {
            header_digest: true,
            data_digest: false,
            max_data_segment_length: 1 << 20,
        };
        let mut expected = Vec::new();
        let mut outbox = Outbox::default();
        // Two PDUs: one inside the first range, one across both.
        for (sn, slice) in [(0u32, 0..10001), (1, 10001..30000)] {
            let header = Header::DataIn(DataIn {
                buffer_offset: slice.start as u32,
                data_sn: sn,
                ..DataIn::default()
            });
            let lent = DataInBuf::Lent(ranges.clone());
            outbox
                .push_shared(&header, lent, slice.clone(), &settings)
                .unwrap();
            let pdu = Pdu::with_data(header, data[slice].to_vec());
            expected.extend_from_slice(&framing::encode(&pdu, &settings));
        }
        assert_eq!(outbox.queued(), expected.len());
        let mut socket = Full {
            wire: Vec::new(),
            room: 15000,
        };
        assert!(!outbox.send(&mut socket).unwrap());
        assert_eq!(outbox.queued(), expected.len() - 15000);
        socket.room = usize::MAX;
        assert!(outbox.send(&mut socket).unwrap());
        assert_eq!(socket.wire, expected);
    }

    /// Over a real socket: lent memory goes out by address (`mem_ffi::send_pieces`), a full
    /// non-blocking socket resumes where it stopped, and the peer reads the encoded PDUs.
    #[test]
    fn a_socket_receives_lent_memory() {
        use std::io::Read;
        use std::net::TcpListener;
        let data: Vec<u8> = (0..(600u32 << 10)).map(|i| (i % 241) as u8).collect();
        let (_regions, ranges) = lent_payload(&data);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        sender.set_nonblocking(true).unwrap();
        let settings = FrameSettings::default();
        let mut outbox = Outbox::default();
        let mut expected = Vec::new();
        for (sn, at) in (0..data.len()).step_by(256 << 10).enumerate() {
            let slice = at..(at + (256 << 10)).min(data.len());
            let header = Header::DataIn(DataIn {
                buffer_offset: at as u32,
                data_sn: sn as u32,
                ..DataIn::default()
            });
            outbox
                .push_shared(
                    &header,
                    DataInBuf::Lent(ranges.clone()),
                    slice.clone(),
                    &settings,
                )
                .unwrap();
            let pdu = Pdu::with_data(header, data[slice].to_vec());
            expected.extend_from_slice(&framing::encode(&pdu, &settings));
        }
        let mut got = Vec::new();
        let mut buf = vec![0; 64 << 10];
        let mut wire = &sender;
        while !outbox.send(&mut wire).unwrap() {
            let n = receiver.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        drop(sender);
        receiver.read_to_end(&mut got).unwrap();
        assert_eq!(got, expected);
    }
}
