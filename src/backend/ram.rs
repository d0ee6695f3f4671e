//! Sparse in-memory backend: chunks are allocated on first write, in pool memory that READs
//! are lent from.

use super::{check_range, Backend, BackendError};
use crate::stats::count_payload_copy;
use mem_ffi::shared::{zeroes, Region};
use mem_ffi::LentRanges;
use std::sync::RwLock;

/// Allocation unit of the RAM backend.
const CHUNK: u64 = 1 << 20;

/// A sparse RAM disk. Memory is allocated per 1 MiB chunk on first write, so an unwritten
/// LUN costs only its chunk table; each chunk has its own `RwLock`, so readers never
/// serialize and writers only contend on the chunks they touch.
///
/// Chunks are [`Region`]s of the global buffer pool, the memory iSER registers by arena: a READ
/// is lent ([`Backend::lend`]) and RDMA-written from the chunk itself, holes from the shared zero
/// region. A lent chunk stays alive after a discard until the transport is done with it; a
/// WRITE to a chunk while it is lent goes in by copy and a READ overlapping it may send, per
/// byte, the old or the new data, as any target may for overlapping commands (see
/// [`mem_ffi::shared`]). Pool memory is never returned to the system: freed chunks serve later
/// chunks and I/O buffers.
pub struct RamBackend {
    size: u64,
    chunks: Vec<RwLock<Option<Region>>>,
}

impl RamBackend {
    /// Creates a zero-filled RAM disk of `size` bytes (no chunk is allocated yet).
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK) as usize;
        RamBackend {
            size,
            chunks: (0..n).map(|_| RwLock::new(None)).collect(),
        }
    }

    /// Number of chunks currently holding memory (for tests and statistics).
    pub fn allocated_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.read().map(|g| g.is_some()).unwrap_or(true))
            .count()
    }

    /// Splits `offset..offset+len` into (chunk index, offset in chunk, length) pieces.
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (usize, usize, usize)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let idx = pos / CHUNK;
            let in_chunk = pos % CHUNK;
            let n = (CHUNK - in_chunk).min(end - pos);
            pos += n;
            Some((idx as usize, in_chunk as usize, n as usize))
        })
    }

    fn chunk(&self, idx: usize) -> Result<&RwLock<Option<Region>>, BackendError> {
        self.chunks
            .get(idx)
            .ok_or_else(|| BackendError::out_of_range(idx as u64 * CHUNK, CHUNK, self.size))
    }

    fn poisoned() -> BackendError {
        BackendError::new(std::io::ErrorKind::Other, "RAM chunk lock poisoned")
    }
}

impl Backend for RamBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        for (idx, off, n) in Self::pieces(offset, buf.len() as u64) {
            let guard = self.chunk(idx)?.read().map_err(|_| Self::poisoned())?;
            let dst = &mut buf[done..done + n];
            match guard.as_ref() {
                Some(c) => {
                    c.read_into(off, dst);
                    count_payload_copy(n);
                }
                None => dst.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError> {
        check_range(offset, data.len() as u64, self.size)?;
        let mut done = 0usize;
        for (idx, off, n) in Self::pieces(offset, data.len() as u64) {
            let mut guard = self.chunk(idx)?.write().map_err(|_| Self::poisoned())?;
            let c = guard
                .get_or_insert_with(|| Region::zeroed(mem_ffi::pool::global(), CHUNK as usize));
            c.write(off, &data[done..done + n]);
            count_payload_copy(n);
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn lend(&self, offset: u64, len: u64) -> Result<Option<LentRanges>, BackendError> {
        check_range(offset, len, self.size)?;
        let mut lent = LentRanges::new();
        for (idx, off, n) in Self::pieces(offset, len) {
            let guard = self.chunk(idx)?.read().map_err(|_| Self::poisoned())?;
            lent.push(match guard.as_ref() {
                Some(c) => c.lend(off..off + n),
                // A piece never exceeds a chunk, and the zero region is a chunk long.
                None => zeroes(n),
            });
        }
        Ok(Some(lent))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size)?;
        for (idx, off, n) in Self::pieces(offset, len) {
            let mut guard = self.chunk(idx)?.write().map_err(|_| Self::poisoned())?;
            if off == 0 && n as u64 == CHUNK {
                *guard = None;
            } else if let Some(c) = guard.as_mut() {
                c.zero(off, n);
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        // Unallocated chunks already read as zeroes, so zeroing is discarding.
        self.discard(offset, len)
    }

    fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64), BackendError> {
        check_range(offset, max_len, self.size)?;
        let allocated = |idx: usize| -> Result<bool, BackendError> {
            Ok(self
                .chunk(idx)?
                .read()
                .map_err(|_| Self::poisoned())?
                .is_some())
        };
        let first = (offset / CHUNK) as usize;
        let state = allocated(first)?;
        let end = offset + max_len;
        let mut idx = first + 1;
        while (idx as u64) * CHUNK < end && allocated(idx)? == state {
            idx += 1;
        }
        Ok((state, ((idx as u64) * CHUNK).min(end) - offset))
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "ram"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unwritten_reads_zero_and_costs_nothing() {
        let b = RamBackend::new(1 << 30);
        assert_eq!(b.allocated_chunks(), 0);
        let mut buf = vec![1u8; 4096];
        b.read_at(&mut buf, 12345).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        assert_eq!(b.allocated_chunks(), 0);
    }

    #[test]
    fn write_read_across_chunks() {
        let b = RamBackend::new(4 * CHUNK);
        let data: Vec<u8> = (0..3 * CHUNK as usize).map(|i| (i % 251) as u8).collect();
        b.write_at(&data, CHUNK / 2).unwrap();
        assert_eq!(b.allocated_chunks(), 4);
        let mut back = vec![0u8; data.len()];
        b.read_at(&mut back, CHUNK / 2).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn copies_counted_per_chunk_piece_and_not_for_holes() {
        use crate::stats::{thread_payload_copies, CopyCounts};
        let b = RamBackend::new(4 * CHUNK);
        let before = thread_payload_copies();
        // Straddles chunks 0 and 1: two pieces, each copied once.
        b.write_at(&[7u8; 8192], CHUNK - 4096).unwrap();
        let mut back = vec![0u8; 8192];
        b.read_at(&mut back, CHUNK - 4096).unwrap();
        // A hole is zero-filled, not copied.
        b.read_at(&mut back, 3 * CHUNK).unwrap();
        assert_eq!(
            thread_payload_copies() - before,
            CopyCounts {
                copies: 4,
                bytes: 2 * 8192
            }
        );
    }

    #[test]
    fn discard_frees_whole_chunks_and_zeroes_partial() {
        let b = RamBackend::new(3 * CHUNK);
        b.write_at(&vec![7u8; 3 * CHUNK as usize], 0).unwrap();
        b.discard(CHUNK / 2, 2 * CHUNK).unwrap();
        assert_eq!(b.allocated_chunks(), 2);
        let mut back = vec![0u8; 3 * CHUNK as usize];
        b.read_at(&mut back, 0).unwrap();
        let half = (CHUNK / 2) as usize;
        assert!(back[..half].iter().all(|&x| x == 7));
        assert!(back[half..half + 2 * CHUNK as usize]
            .iter()
            .all(|&x| x == 0));
        assert!(back[half + 2 * CHUNK as usize..].iter().all(|&x| x == 7));
        b.write_zeroes(0, CHUNK).unwrap();
        assert_eq!(b.allocated_chunks(), 1);
    }

    #[test]
    fn allocation_follows_chunks() {
        let b = RamBackend::new(4 * CHUNK);
        assert_eq!(
            b.allocation(10, 4 * CHUNK - 10).unwrap(),
            (false, 4 * CHUNK - 10)
        );
        b.write_at(&[1], CHUNK + 5).unwrap();
        b.write_at(&[1], 2 * CHUNK).unwrap();
        assert_eq!(b.allocation(0, 4 * CHUNK).unwrap(), (false, CHUNK));
        assert_eq!(
            b.allocation(CHUNK + 7, 3 * CHUNK - 7).unwrap(),
            (true, 2 * CHUNK - 7)
        );
        assert_eq!(b.allocation(CHUNK, 100).unwrap(), (true, 100));
        assert_eq!(b.allocation(3 * CHUNK, CHUNK).unwrap(), (false, CHUNK));
        assert!(b.allocation(3 * CHUNK, CHUNK + 1).is_err());
    }

    /// What a NIC would send from the lent ranges, in order.
    fn sent(lent: &LentRanges) -> Vec<u8> {
        mem_ffi::Payload::Lent(lent.clone()).to_vec()
    }

    #[test]
    fn reads_are_lent_from_chunks_and_the_zero_region_without_a_copy() {
        use crate::stats::thread_payload_copies;
        let b = RamBackend::new(4 * CHUNK);
        b.write_at(&[5u8; 4096], CHUNK - 4096).unwrap();
        let before = thread_payload_copies();
        // 128 KiB over the end of chunk 0 (written) into chunk 1 (a hole).
        let lent = b.lend(CHUNK - 4096, 128 << 10).unwrap().unwrap();
        assert_eq!(thread_payload_copies(), before, "lending copies nothing");
        assert_eq!(lent.len(), 2);
        assert_eq!(
            lent.iter().nth(1).unwrap().as_ptr(),
            zeroes(1).as_ptr(),
            "the hole is the zero region"
        );
        assert!(
            lent.iter().all(|l| l.arena_extent().is_some()),
            "registrable"
        );
        let mut expected = vec![5u8; 4096];
        expected.resize(128 << 10, 0);
        assert_eq!(sent(&lent), expected);
        assert_eq!(b.allocated_chunks(), 1, "lending a hole allocates nothing");
        assert!(b.lend(4 * CHUNK - 1, 2).is_err());
    }

    #[test]
    fn a_lent_chunk_survives_unmap_and_later_writes_land_in_a_new_chunk() {
        let b = RamBackend::new(2 * CHUNK);
        b.write_at(&[3u8; 8192], 0).unwrap();
        let lent = b.lend(0, 8192).unwrap().unwrap();
        b.discard(0, CHUNK).unwrap();
        assert_eq!(b.allocated_chunks(), 0);
        b.write_at(&[4u8; 8192], 0).unwrap();
        assert_eq!(
            sent(&lent),
            vec![3u8; 8192],
            "the unmapped chunk is still lent whole"
        );
        let again = b.lend(0, 8192).unwrap().unwrap();
        assert_eq!(sent(&again), vec![4u8; 8192]);
    }

    #[test]
    fn writes_to_a_lent_chunk_show_in_later_reads_of_it() {
        // The per-block semantics of a READ racing a WRITE: the lent range names the chunk's
        // memory, so what is sent is what the chunk holds when the transport sends it.
        let b = RamBackend::new(CHUNK);
        b.write_at(&[1u8; 4096], 0).unwrap();
        let lent = b.lend(0, 4096).unwrap().unwrap();
        b.write_at(&[2u8; 4096], 0).unwrap();
        assert_eq!(sent(&lent), vec![2u8; 4096]);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let b = RamBackend::new(1000);
        let mut buf = [0u8; 10];
        assert!(b.read_at(&mut buf, 995).is_err());
        assert!(b.write_at(&buf, u64::MAX - 2).is_err());
        assert!(b.discard(0, 1001).is_err());
    }

    #[test]
    fn concurrent_writers_on_distinct_ranges() {
        let b = Arc::new(RamBackend::new(8 * CHUNK));
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..64u64 {
                        let off = (t as u64 * 64 + i) * 4096;
                        b.write_at(&[t + 1; 4096], off).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut buf = [0u8; 4096];
        for t in 0..4u8 {
            b.read_at(&mut buf, t as u64 * 64 * 4096).unwrap();
            assert!(buf.iter().all(|&x| x == t + 1));
        }
    }
}
