//! A global allocator that counts: how many allocations and how many bytes, for the whole process
//! and for the calling thread, on top of the system allocator.
//!
//! Counting costs two relaxed atomic additions and two thread-local additions per allocation,
//! which is why only benchmark binaries install it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations and bytes allocated, as counted by [`CountingAllocator`]. A reallocation counts as
/// one allocation of its new size (it may move the block); frees are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocCounts {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    pub allocations: u64,
    /// Bytes requested by those calls.
    pub bytes: u64,
}

impl Sub for AllocCounts {
    type Output = AllocCounts;

    /// What was counted between two readings (`later - earlier`).
    fn sub(self, earlier: AllocCounts) -> AllocCounts {
        AllocCounts {
            allocations: self.allocations.wrapping_sub(earlier.allocations),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }
}

impl Add for AllocCounts {
    type Output = AllocCounts;

    /// Both stretches of work together.
    fn add(self, other: AllocCounts) -> AllocCounts {
        AllocCounts {
            allocations: self.allocations.wrapping_add(other.allocations),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

static GLOBAL_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static GLOBAL_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading or writing it never allocates, so the
    // allocator can use it, even while the thread is being torn down.
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static THREAD_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting. Install it in a benchmark binary with
/// `#[global_allocator] static ALLOC: CountingAllocator = CountingAllocator;` and read the
/// counters with [`CountingAllocator::global`] and [`CountingAllocator::thread`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

impl CountingAllocator {
    /// Counts of every thread of the process since it started; take differences of readings to
    /// count a stretch of work. All zero when the allocator is not installed.
    pub fn global() -> AllocCounts {
        AllocCounts {
            allocations: GLOBAL_ALLOCATIONS.load(Ordering::Relaxed),
            bytes: GLOBAL_BYTES.load(Ordering::Relaxed),
        }
    }

    /// Counts of the calling thread since it started (or its last [`Self::reset_thread`]).
    pub fn thread() -> AllocCounts {
        AllocCounts {
            allocations: THREAD_ALLOCATIONS.with(Cell::get),
            bytes: THREAD_BYTES.with(Cell::get),
        }
    }

    /// Sets the calling thread's counters to zero.
    pub fn reset_thread() {
        THREAD_ALLOCATIONS.with(|c| c.set(0));
        THREAD_BYTES.with(|c| c.set(0));
    }

    fn count(bytes: usize) {
        GLOBAL_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        GLOBAL_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        // `try_with`: never panic inside the allocator, whatever state the thread is in.
        let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get().wrapping_add(1)));
        let _ = THREAD_BYTES.try_with(|c| c.set(c.get().wrapping_add(bytes as u64)));
    }
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees (and the caller's obligations) carry over unchanged; counting touches only atomics
// and const-initialised thread-locals, which never allocate or unwind.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which is
        // the one `System.alloc` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: as for `alloc`: the caller's layout meets `System.alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`, as the
        // caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size);
        // SAFETY: `ptr` came from `System` with `layout` and `new_size` is valid for it, as the
        // caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    #[global_allocator]
    static ALLOC: CountingAllocator = CountingAllocator;

    #[test]
    fn counts_one_allocation_of_its_size_on_this_thread() {
        let before = CountingAllocator::thread();
        let v: Vec<u8> = black_box(Vec::with_capacity(4096));
        let after = CountingAllocator::thread();
        drop(v);
        assert_eq!(
            after - before,
            AllocCounts {
                allocations: 1,
                bytes: 4096
            }
        );
        // Freeing is not an allocation.
        assert_eq!(CountingAllocator::thread() - after, AllocCounts::default());
    }

    #[test]
    fn zeroed_and_grown_buffers_count_and_empty_ones_do_not() {
        let before = CountingAllocator::thread();
        let empty: Vec<u64> = black_box(Vec::new());
        assert_eq!(CountingAllocator::thread() - before, AllocCounts::default());
        let mut zeroed = black_box(vec![0u8; 100]);
        zeroed.reserve_exact(900);
        black_box(&zeroed);
        let counted = CountingAllocator::thread() - before;
        assert_eq!(counted.allocations, 2, "alloc_zeroed, then realloc");
        assert_eq!(counted.bytes, 100 + 1000);
        drop((empty, zeroed));
    }

    #[test]
    fn other_threads_count_globally_but_not_here() {
        let here = CountingAllocator::thread();
        let global = CountingAllocator::global();
        const BIG: usize = 3 << 20;
        let theirs = std::thread::spawn(|| {
            let before = CountingAllocator::thread();
            black_box(vec![1u8; BIG]);
            CountingAllocator::thread() - before
        })
        .join()
        .unwrap();
        assert_eq!(
            theirs,
            AllocCounts {
                allocations: 1,
                bytes: BIG as u64
            }
        );
        // Other tests run concurrently, so the global count is at least what that thread did.
        let global_delta = CountingAllocator::global() - global;
        assert!(global_delta.allocations >= 1 && global_delta.bytes >= BIG as u64);
        // Spawning and joining allocate on this thread too, but far less than that buffer.
        let mine = CountingAllocator::thread() - here;
        assert!(mine.bytes < BIG as u64);
    }

    #[test]
    fn resetting_the_thread_counters_starts_them_from_zero() {
        black_box(vec![0u8; 10]);
        CountingAllocator::reset_thread();
        assert_eq!(CountingAllocator::thread(), AllocCounts::default());
        black_box(Box::new(7u32));
        assert_eq!(
            CountingAllocator::thread(),
            AllocCounts {
                allocations: 1,
                bytes: 4
            }
        );
    }
}
