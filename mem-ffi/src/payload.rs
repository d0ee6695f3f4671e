//! What a command sends to the initiator: a pool buffer of its own, byte ranges lent from a
//! RAM LUN's memory (see [`crate::shared`]), or a span of a file whose pages are in memory.

use crate::pool::{global, Arena};
use crate::shared::Lent;
use crate::Buf;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A command's Data-In: the pool buffer a backend read into, or the ranges of a RAM LUN's memory
/// that hold the data, in order (a read may span chunks; holes are lent from the shared zero
/// region). Either way the transport sends from it by address; only [`LentRanges::to_buf`]
/// makes a CPU copy, for a transport that needs the bytes in a buffer of its own.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A buffer the command owns.
    Owned(Buf),
    /// Ranges lent from shared memory, to be sent one after the other.
    Lent(LentRanges),
    /// Bytes of a file not read yet: a TCP transport hands the file's pages to the socket
    /// (sendfile) without copying them through user space.
    File(FileSpan),
}

/// `len` bytes of `file` from `offset`, to be sent from the file's page cache. Only a backend
/// whose pages live in memory (tmpfs, ramfs) makes one, so sending it never waits for a device.
/// What is sent is what the pages hold when the socket takes them, which is before the
/// command's status leaves (it follows the data in the same stream).
#[derive(Debug, Clone)]
pub struct FileSpan {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

impl PartialEq for FileSpan {
    /// The same bytes of the same open file.
    fn eq(&self, other: &FileSpan) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && (self.offset, self.len) == (other.offset, other.len)
    }
}

impl Eq for FileSpan {}

impl FileSpan {
    /// Bytes `offset..offset + len` of `file`.
    pub fn new(file: Arc<File>, offset: u64, len: usize) -> FileSpan {
        FileSpan { file, offset, len }
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the span starts in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `range` of the span read into a pool buffer: a copy, for a sender that needs the
    /// bytes themselves (a data digest). A file shorter than the span is an error.
    pub fn read(&self, range: Range<usize>) -> io::Result<Buf> {
        if range.start > range.end || range.end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the file span",
            ));
        }
        let mut buf = global().alloc(range.len());
        self.file
            .read_exact_at(&mut buf, self.offset + range.start as u64)?;
        Ok(buf)
    }
}

/// Lent ranges in order, the first two held inline: a transfer of up to 1 MiB touches at most
/// two of a RAM LUN's 1 MiB chunks, so such a READ allocates nothing to say where its data is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LentRanges {
    inline: [Option<Lent>; 2],
    more: Vec<Lent>,
}

impl LentRanges {
    /// No ranges yet.
    pub fn new() -> LentRanges {
        LentRanges::default()
    }

    /// Appends a range after the others.
    pub fn push(&mut self, lent: Lent) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) if self.more.is_empty() => *slot = Some(lent),
            _ => self.more.push(lent),
        }
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = &Lent> {
        self.inline.iter().flatten().chain(&self.more)
    }

    /// How many ranges.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }

    /// The ranges' bytes copied, in order, into a new buffer of the global pool: for a
    /// transport that needs the bytes in a buffer of its own (a data digest).
    pub fn to_buf(&self) -> Buf {
        let mut buf = global().alloc(self.iter().map(Lent::len).sum());
        let mut at = 0;
        for lent in self.iter() {
            lent.copy_to(&mut buf[at..at + lent.len()]);
            at += lent.len();
        }
        buf
    }

    /// Bytes `range` of the ranges taken as one run of bytes, piece by piece in order: each
    /// range that holds some of them, and which of its own bytes those are.
    pub fn within(&self, range: Range<usize>) -> impl Iterator<Item = (&Lent, Range<usize>)> {
        let mut at = 0;
        self.iter().filter_map(move |lent| {
            let from = at;
            at += lent.len();
            let (start, end) = (range.start.max(from), range.end.min(at));
            (start < end).then(|| (lent, start - from..end - from))
        })
    }
}

impl FromIterator<Lent> for LentRanges {
    fn from_iter<I: IntoIterator<Item = Lent>>(iter: I) -> LentRanges {
        let mut ranges = LentRanges::new();
        iter.into_iter().for_each(|lent| ranges.push(lent));
        ranges
    }
}

/// One contiguous piece of a payload as a device sees it: `len` bytes at `offset` of `arena`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The pool arena holding the bytes (what a transport registers).
    pub arena: Arena,
    /// Where the bytes start inside the arena.
    pub offset: usize,
    /// How many bytes.
    pub len: usize,
}

impl Payload {
    /// No data.
    pub const fn empty() -> Payload {
        Payload::Owned(Buf::empty())
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Owned(buf) => buf.len(),
            Payload::Lent(ranges) => ranges.iter().map(Lent::len).sum(),
            Payload::File(span) => span.len(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lent ranges, when the data is lent.
    pub fn lent(&self) -> Option<&LentRanges> {
        match self {
            Payload::Lent(ranges) => Some(ranges),
            Payload::Owned(_) | Payload::File(_) => None,
        }
    }

    /// Where bytes `range` of the payload lie, piece by piece in order (one per lent range it
    /// touches), or `None` when some of them are outside the pool (an empty buffer, a file).
    pub fn pieces(&self, range: Range<usize>) -> Option<Vec<Piece>> {
        let mut pieces = Vec::new();
        self.pieces_into(range, &mut pieces)?;
        Some(pieces)
    }

    /// As [`Payload::pieces`], into `pieces` (cleared first), whose capacity a caller keeps so
    /// that finding them allocates nothing per transfer.
    pub fn pieces_into(&self, range: Range<usize>, pieces: &mut Vec<Piece>) -> Option<()> {
        pieces.clear();
        let mut push = |arena: Option<Arena>, offset: Option<usize>, len: usize| {
            pieces.push(Piece {
                arena: arena?,
                offset: offset?,
                len,
            });
            Some(())
        };
        match self {
            Payload::Owned(buf) => {
                if range.end > buf.len() {
                    return None;
                }
                let start = buf.arena_offset().map(|o| o + range.start);
                push(buf.arena_extent(), start, range.len())?;
            }
            Payload::Lent(ranges) => {
                if range.end > self.len() {
                    return None;
                }
                for (lent, part) in ranges.within(range) {
                    let offset = lent.arena_offset().map(|o| o + part.start);
                    push(lent.arena_extent(), offset, part.len())?;
                }
            }
            Payload::File(_) => return None,
        }
        Some(())
    }
}

impl Payload {
    /// A copy of the bytes in a `Vec` (for tests and for replies inspected in memory); of a
    /// file span, the bytes that could be read (none when the read fails).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Payload::Owned(buf) => buf.to_vec(),
            Payload::File(span) => span
                .read(0..span.len())
                .map(|b| b.to_vec())
                .unwrap_or_default(),
            Payload::Lent(ranges) => ranges.to_buf().to_vec(),
        }
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::empty()
    }
}

impl From<Buf> for Payload {
    fn from(buf: Buf) -> Payload {
        Payload::Owned(buf)
    }
}

impl PartialEq for Payload {
    /// Equal contents, however held (for tests: it copies lent bytes out).
    fn eq(&self, other: &Payload) -> bool {
        self.len() == other.len() && self.to_vec() == other.to_vec()
    }
}

impl Eq for Payload {}

impl PartialEq<[u8]> for Payload {
    fn eq(&self, other: &[u8]) -> bool {
        self.len() == other.len() && self.to_vec() == other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Payload {
    fn eq(&self, other: &[u8; N]) -> bool {
        *self == other[..]
    }
}

impl PartialEq<Vec<u8>> for Payload {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self == other[..]
    }
}

impl PartialEq<&[u8]> for Payload {
    fn eq(&self, other: &&[u8]) -> bool {
        *self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::{zeroes, Region};
    use crate::Pool;

    /// A byte range of several lent ranges names, in order, the part of each it covers.
    #[test]
    fn within_names_the_part_of_each_range_a_byte_range_covers() {
        let pool = Pool::new();
        let region = Region::zeroed(pool, 8192);
        let ranges: LentRanges = [0..100, 1000..1050, 2000..2100]
            .into_iter()
            .map(|r| region.lend(r))
            .collect();
        let parts: Vec<(usize, Range<usize>)> = ranges
            .within(90..160)
            .map(|(lent, part)| (lent.len(), part))
            .collect();
        assert_eq!(parts, [(100, 90..100), (50, 0..50), (100, 0..10)]);
        assert_eq!(
            ranges.within(100..150).count(),
            1,
            "exactly the middle range"
        );
        assert_eq!(ranges.within(250..300).count(), 0, "past the end");
    }

    #[test]
    fn lent_ranges_keep_their_order_past_the_inline_ones() {
        let pool = Pool::new();
        let region = Region::zeroed(pool, 8192);
        let ranges: LentRanges = (0..5)
            .map(|i| region.lend(i * 1000..i * 1000 + 10))
            .collect();
        assert_eq!(ranges.len(), 5);
        let starts: Vec<usize> = ranges
            .iter()
            .map(|l| l.as_ptr() as usize - region.lend(0..0).as_ptr() as usize)
            .collect();
        assert_eq!(starts, vec![0, 1000, 2000, 3000, 4000]);
        assert!(LentRanges::new().is_empty() && !ranges.is_empty());
    }

    #[test]
    fn pieces_follow_lent_ranges_and_owned_buffers() {
        let pool = Pool::new();
        let mut region = Region::zeroed(pool, 1 << 20);
        region.write((1 << 20) - 4096, &[9u8; 4096]);
        let lent = [region.lend((1 << 20) - 4096..1 << 20), zeroes(8192)];
        let payload = Payload::Lent(lent.into_iter().collect());
        assert_eq!(payload.len(), 12288);
        let pieces = payload.pieces(1000..10000).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len, 3096);
        assert_eq!(pieces[1].len, 5904);
        let lent = payload.lent().unwrap().iter().next().unwrap();
        assert_eq!(pieces[0].offset, lent.arena_offset().unwrap() + 1000);
        assert_eq!(pieces[1].offset, zeroes(1).arena_offset().unwrap());
        assert!(payload.pieces(0..12289).is_none());
        let mut expected = vec![9u8; 4096];
        expected.resize(12288, 0);
        assert_eq!(*payload.lent().unwrap().to_buf(), expected[..]);
        assert_eq!(payload, Payload::from(Buf::copy_from_slice(&expected)));
        assert_eq!(payload.lent().map(LentRanges::len), Some(2));

        let owned = Payload::from(pool.alloc(8192));
        let Payload::Owned(buf) = &owned else {
            panic!()
        };
        let whole = owned.pieces(4096..8192).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].offset, buf.arena_offset().unwrap() + 4096);
        assert!(Payload::empty().pieces(0..1).is_none());
    }

    /// A file span is a payload with a length but no memory: no pieces for a device, no
    /// buffer without a read, its bytes only through reading the file.
    #[test]
    fn a_file_span_is_sent_by_the_file_not_from_memory() {
        let path = std::env::temp_dir().join(format!("mem-ffi-span-{}.img", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let file = Arc::new(file);
        let span = FileSpan::new(Arc::clone(&file), 2, 6);
        let payload = Payload::File(span.clone());
        assert_eq!(payload.len(), 6);
        assert!(payload.lent().is_none() && payload.pieces(0..6).is_none());
        assert_eq!(payload.to_vec(), b"234567");
        assert_eq!(&span.read(1..3).unwrap()[..], b"34");
        assert!(span.read(4..7).is_err(), "past the span");
        assert!(
            FileSpan::new(Arc::clone(&file), 8, 6).read(0..6).is_err(),
            "past the file"
        );
        assert_ne!(span, FileSpan::new(file, 2, 5));
    }
}
