//! Space allocation in a connection's registered staging arena.
//!
//! Every work request on a send queue completes in posting order (RC), so the bytes they use can
//! be handed out like a ring: allocate at the head, free at the tail. Frees may still be reported
//! out of order (a drain, a defensive caller); the tail only moves past ranges already freed.

use std::collections::VecDeque;

/// A ring allocator over `len` bytes; allocations are 64-byte aligned and contiguous.
#[derive(Debug)]
pub(super) struct Ring {
    len: usize,
    /// Next free byte.
    head: usize,
    /// Live and freed-but-not-yet-retired ranges, oldest first: (start, end, freed).
    ranges: VecDeque<(usize, usize, bool)>,
}

const ALIGN: usize = 64;

impl Ring {
    pub(super) fn new(len: usize) -> Self {
        Ring {
            len,
            head: 0,
            ranges: VecDeque::new(),
        }
    }

    /// Whether a request of `size` bytes can ever fit.
    pub(super) fn fits(&self, size: usize) -> bool {
        size <= self.len
    }

    /// Reserves `size` bytes; `None` while not enough contiguous space is free.
    pub(super) fn alloc(&mut self, size: usize) -> Option<usize> {
        let size = size.max(1).div_ceil(ALIGN) * ALIGN;
        if size > self.len {
            return None;
        }
        let start = match self.ranges.front() {
            None => {
                self.head = 0;
                0
            }
            Some(&(tail, _, _)) => {
                if self.head > tail {
                    // Free space: [head, len) and [0, tail).
                    if self.len - self.head >= size {
                        self.head
                    } else if tail >= size {
                        0
                    } else {
                        return None;
                    }
                } else if tail - self.head >= size {
                    // Wrapped: free space is [head, tail).
                    self.head
                } else {
                    return None;
                }
            }
        };
        self.head = start + size;
        self.ranges.push_back((start, start + size, false));
        Some(start)
    }

    /// Returns the range that starts at `start`.
    pub(super) fn free(&mut self, start: usize) {
        if let Some(r) = self.ranges.iter_mut().find(|r| r.0 == start && !r.2) {
            r.2 = true;
        }
        while matches!(self.ranges.front(), Some(&(_, _, true))) {
            self.ranges.pop_front();
        }
    }

    /// Bytes in use (including space skipped at the end when wrapping).
    #[cfg(test)]
    fn live(&self) -> usize {
        self.ranges.iter().map(|r| r.1 - r.0).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_in_order_and_wraps() {
        let mut r = Ring::new(1024);
        let a = r.alloc(400).unwrap();
        let b = r.alloc(400).unwrap();
        assert_eq!((a, b), (0, 448));
        assert_eq!(r.alloc(400), None, "only 128 bytes left at the end");
        r.free(a);
        // The end has 128 bytes, the start 448: wrap.
        assert_eq!(r.alloc(400), Some(0));
        assert_eq!(r.alloc(100), None);
        r.free(b);
        assert_eq!(r.alloc(500), Some(448));
        assert_eq!(r.live(), 448 + 512);
    }

    #[test]
    fn out_of_order_frees_wait_for_the_tail() {
        let mut r = Ring::new(256);
        let a = r.alloc(64).unwrap();
        let b = r.alloc(64).unwrap();
        let c = r.alloc(128).unwrap();
        r.free(b);
        r.free(c);
        assert_eq!(r.alloc(64), None, "the tail is still held by a");
        r.free(a);
        assert_eq!(r.live(), 0);
        assert_eq!(r.alloc(256), Some(0));
    }

    #[test]
    fn too_large_never_fits() {
        let mut r = Ring::new(128);
        assert!(!r.fits(129));
        assert_eq!(r.alloc(129), None);
        assert_eq!(r.alloc(128), Some(0));
    }
}
