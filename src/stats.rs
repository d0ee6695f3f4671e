//! Counters of payload bytes copied in user space: SCSI data and PDU data segments, not headers;
//! and of file and block transfers that take the O_DIRECT path.
//!
//! Every place on the data path that copies payload from one buffer of ours to another calls
//! [`count_payload_copy`], so a benchmark can print bytes copied per command and show what each
//! change to the data path saves. Copies the kernel makes (`read`, `write`, `pread`, `pwrite`)
//! and zero-filling are not counted. The counters are kept for the whole process and per thread;
//! counting is one relaxed atomic addition and one thread-local addition per copy, small next to
//! the copy itself.

use std::cell::Cell;
use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};

/// Payload copies counted: how many copy operations and how many bytes they moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyCounts {
    /// Copy operations (one per `copy_from_slice`, `to_vec`, `extend_from_slice`, ...).
    pub copies: u64,
    /// Payload bytes those operations copied.
    pub bytes: u64,
}

impl Sub for CopyCounts {
    type Output = CopyCounts;

    /// What was counted between two readings (`later - earlier`).
    fn sub(self, earlier: CopyCounts) -> CopyCounts {
        CopyCounts {
            copies: self.copies.wrapping_sub(earlier.copies),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }
}

impl Add for CopyCounts {
    type Output = CopyCounts;

    /// Both stretches of work together.
    fn add(self, other: CopyCounts) -> CopyCounts {
        CopyCounts {
            copies: self.copies.wrapping_add(other.copies),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

static GLOBAL_COPIES: AtomicU64 = AtomicU64::new(0);
static GLOBAL_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_COPIES: Cell<u64> = const { Cell::new(0) };
    static THREAD_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Lent memory copied into a buffer of its own, for a transport that needs the bytes (a data
/// digest), counted as one copy per lent range.
pub fn copy_lent(ranges: &mem_ffi::LentRanges) -> mem_ffi::Buf {
    ranges.iter().for_each(|l| count_payload_copy(l.len()));
    ranges.to_buf()
}

/// Records one user-space copy of `bytes` payload bytes (nothing for an empty copy).
pub fn count_payload_copy(bytes: usize) {
    if bytes == 0 {
        return;
    }
    let bytes = bytes as u64;
    GLOBAL_COPIES.fetch_add(1, Ordering::Relaxed);
    GLOBAL_BYTES.fetch_add(bytes, Ordering::Relaxed);
    // `try_with`: a copy made while the thread is being torn down is still counted globally.
    let _ = THREAD_COPIES.try_with(|c| c.set(c.get().wrapping_add(1)));
    let _ = THREAD_BYTES.try_with(|c| c.set(c.get().wrapping_add(bytes)));
}

static DIRECT_TRANSFERS: AtomicU64 = AtomicU64::new(0);

/// Records one file or block transfer that goes through the O_DIRECT descriptor (buffer,
/// offset and length aligned), bypassing the page cache.
pub fn count_direct_transfer() {
    DIRECT_TRANSFERS.fetch_add(1, Ordering::Relaxed);
}

/// O_DIRECT transfers chosen by every thread since the process started.
pub fn global_direct_transfers() -> u64 {
    DIRECT_TRANSFERS.load(Ordering::Relaxed)
}

/// Payload copies made by every thread since the process started.
pub fn global_payload_copies() -> CopyCounts {
    CopyCounts {
        copies: GLOBAL_COPIES.load(Ordering::Relaxed),
        bytes: GLOBAL_BYTES.load(Ordering::Relaxed),
    }
}

/// Payload copies made by the calling thread since it started (or its last
/// [`reset_thread_payload_copies`]).
pub fn thread_payload_copies() -> CopyCounts {
    CopyCounts {
        copies: THREAD_COPIES.with(Cell::get),
        bytes: THREAD_BYTES.with(Cell::get),
    }
}

/// Sets the calling thread's payload copy counters to zero.
pub fn reset_thread_payload_copies() {
    THREAD_COPIES.with(|c| c.set(0));
    THREAD_BYTES.with(|c| c.set(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_thread_and_globally() {
        reset_thread_payload_copies();
        let global = global_payload_copies();
        count_payload_copy(4096);
        count_payload_copy(0);
        count_payload_copy(100);
        assert_eq!(
            thread_payload_copies(),
            CopyCounts {
                copies: 2,
                bytes: 4196
            }
        );
        let other = std::thread::spawn(|| {
            count_payload_copy(7);
            thread_payload_copies()
        })
        .join()
        .unwrap();
        assert_eq!(
            other,
            CopyCounts {
                copies: 1,
                bytes: 7
            }
        );
        assert_eq!(
            thread_payload_copies().bytes,
            4196,
            "not this thread's copy"
        );
        // Tests run concurrently: the global count holds at least these copies.
        let delta = global_payload_copies() - global;
        assert!(delta.copies >= 3 && delta.bytes >= 4203);
    }
}
