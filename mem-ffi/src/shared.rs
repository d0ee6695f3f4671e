//! Pool memory that outlives its writer and can be lent to transports by address.
//!
//! A RAM LUN keeps its blocks in pool memory so that a READ can be sent straight from them: the
//! NIC reads them by RDMA Write (the arena registered as for any [`Buf`]) or the kernel by
//! sendmsg ([`crate::send`]), while the LUN may already take the next WRITE to the same blocks. No Rust reference
//! (`&[u8]` or `&mut [u8]`) is therefore ever made over this memory:
//!
//! - a [`Region`] is the one handle the CPU writes and reads through, by raw-pointer copies;
//!   `write` takes `&mut self` and `read_into` `&self`, so Rust's borrow rules keep CPU writers
//!   exclusive of CPU readers (the RAM backend holds each region under an `RwLock`);
//! - a [`Lent`] names a byte range of it for a transport: it keeps the memory alive (an `Arc`,
//!   so freeing the region, as UNMAP does, leaves lent memory mapped until the last lender is
//!   done) and gives its address and arena, never its bytes.
//!
//! A device that reads lent memory while the region's owner writes the same bytes sees, per
//! byte, the old or the new value (the kernel's copy into a socket holds the CPU read lock, so
//! it sees each write whole or not at all): as with any storage target, a READ that overlaps a
//! concurrent WRITE of the same blocks may return either. That reader is outside Rust's memory
//! model, so this is no data race in the language's sense.

use crate::pool::{global, Arena, Pool};
use crate::Buf;
use std::fmt;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, TryLockError};

/// Length of the shared zero region that [`zeroes`] lends from.
pub const ZEROES_LEN: usize = 1 << 20;

/// The memory behind a region and its lenders: a pool buffer, returned to its pool when the
/// last handle drops.
struct Memory {
    /// Start of the bytes (read once from the buffer; the buffer itself is never dereferenced).
    ptr: NonNull<u8>,
    len: usize,
    /// Held for writing by every CPU write and for reading by [`Lent::copy_to`] and by the
    /// sendmsg of [`crate::send`], so neither a CPU copy out of lent memory nor the kernel's
    /// races a CPU write into it.
    cpu: RwLock<()>,
    /// Owns the bytes; kept only so that dropping `Memory` gives them back to the pool.
    buffer: Buf,
}

// SAFETY: `Memory` is only an address and the pool buffer that owns it. CPU accesses to the
// bytes go through `Region`, whose `&`/`&mut` receivers keep writers exclusive; `Lent` exposes
// addresses only. Sharing or sending it between threads is therefore as sound as for a `Buf`.
unsafe impl Send for Memory {}
// SAFETY: as for `Send`: no method of `Memory` reachable through `&Memory` touches the bytes.
unsafe impl Sync for Memory {}

impl Memory {
    /// `len` zeroed bytes of `pool`.
    fn zeroed(pool: &'static Pool, len: usize) -> Memory {
        let mut buffer = pool.alloc(len);
        let ptr = NonNull::new(buffer.as_mut_ptr()).expect("a pool buffer is never null");
        // SAFETY: the buffer is fresh from the pool and owned here alone (no region or lender
        // exists yet); `ptr` points at `len` bytes of its mapped memory. The pool's memory is
        // stale, so zeroing it keeps another command's old bytes from any initiator.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Memory {
            ptr,
            len,
            cpu: RwLock::new(()),
            buffer,
        }
    }
}

/// Panics unless `start..start + len` lies in `0..total`, as slice indexing would.
fn check(start: usize, len: usize, total: usize) {
    assert!(
        start.checked_add(len).is_some_and(|end| end <= total),
        "range {start}+{len} outside a region of {total} bytes"
    );
}

/// The writer's handle of shared pool memory (see the module documentation): not `Clone`, so
/// there is one per memory, and it reads and writes only by copies.
pub struct Region {
    memory: Arc<Memory>,
}

impl Region {
    /// `len` zeroed bytes of `pool`.
    ///
    /// # Panics
    /// As [`Pool::alloc`], when `len` exceeds the pool's largest buffer.
    pub fn zeroed(pool: &'static Pool, len: usize) -> Region {
        Region {
            memory: Arc::new(Memory::zeroed(pool, len)),
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.memory.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.memory.len == 0
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// # Panics
    /// When the range lies outside the region.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        check(offset, data.len(), self.len());
        let _cpu = self.memory.cpu.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the range is inside the region's mapped memory (checked above) and cannot
        // overlap `data` (a caller's slice, never a reference into shared memory, which is
        // never lent as one). `&mut self` excludes every other CPU access through this region
        // and the lock every `Lent::copy_to`; lenders otherwise only hand the address to
        // devices and the kernel (see the module docs).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.memory.ptr.as_ptr().add(offset),
                data.len(),
            )
        };
    }

    /// Sets `len` bytes from `offset` to zero.
    ///
    /// # Panics
    /// When the range lies outside the region.
    pub fn zero(&mut self, offset: usize, len: usize) {
        check(offset, len, self.len());
        let _cpu = self.memory.cpu.write().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as for `write`: in bounds, and `&mut self` with the lock is the only CPU
        // access.
        unsafe { std::ptr::write_bytes(self.memory.ptr.as_ptr().add(offset), 0, len) };
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    ///
    /// # Panics
    /// When the range lies outside the region.
    pub fn read_into(&self, offset: usize, dst: &mut [u8]) {
        check(offset, dst.len(), self.len());
        // SAFETY: in bounds (checked above); `&self` excludes a CPU write through the region
        // meanwhile (writes need `&mut`), and `dst` is the caller's own slice, so no overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.memory.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
    }

    /// Lends bytes `range` to a transport: the memory stays alive while the [`Lent`] does.
    ///
    /// # Panics
    /// When the range lies outside the region.
    pub fn lend(&self, range: Range<usize>) -> Lent {
        check(range.start, range.len(), self.len());
        Lent {
            memory: Arc::clone(&self.memory),
            range,
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("len", &self.len()).finish()
    }
}

/// A byte range of shared pool memory lent to a transport (see the module documentation): its
/// address and arena, so the NIC or the kernel can read it, and never its bytes.
#[derive(Clone)]
pub struct Lent {
    memory: Arc<Memory>,
    range: Range<usize>,
}

impl Lent {
    /// Bytes lent.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether no bytes are lent.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// Address of the first byte lent, for a device or a system call to read from.
    pub fn as_ptr(&self) -> *const u8 {
        // `range.start` lies inside the memory (checked when lent); plain address arithmetic.
        self.memory.ptr.as_ptr().wrapping_add(self.range.start)
    }

    /// The pool arena holding the memory, so a transport can find or make the registration
    /// that covers it.
    pub fn arena_extent(&self) -> Option<Arena> {
        self.memory.buffer.arena_extent()
    }

    /// Where the lent bytes start inside their arena.
    pub fn arena_offset(&self) -> Option<usize> {
        let arena = self.arena_extent()?;
        Some(self.as_ptr() as usize - arena.addr())
    }

    /// Copies the lent bytes into `dst` (of the same length), for a transport that must have
    /// them in its own buffer (a TCP transport with a data digest, which needs the bytes). Waits for a CPU
    /// write of the memory in progress, so the copy sees, per write, all of it or none.
    ///
    /// # Panics
    /// When `dst` is not as long as the lent range.
    pub fn copy_to(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len(),
            "copy of lent bytes to a slice of another length"
        );
        let _cpu = self.read_lock();
        // SAFETY: the lent range is mapped memory kept alive by `self.memory`; the lock keeps
        // every CPU write out while it is read; `dst` is the caller's own slice, no overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr(), dst.as_mut_ptr(), dst.len()) };
    }

    /// Bytes `range` of the lent range (counted from its start), lent on their own.
    ///
    /// # Panics
    /// When `range` lies outside the lent range.
    pub fn slice(&self, range: Range<usize>) -> Lent {
        check(range.start, range.len(), self.len());
        let start = self.range.start + range.start;
        Lent {
            memory: Arc::clone(&self.memory),
            range: start..start + range.len(),
        }
    }

    /// The memory's CPU read lock, which keeps CPU writes of it out while held.
    pub(crate) fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.memory.cpu.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The memory's CPU read lock if it can be had without waiting.
    pub(crate) fn try_read_lock(&self) -> Option<RwLockReadGuard<'_, ()>> {
        match self.memory.cpu.try_read() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The memory's CPU write lock, as a CPU write holds it (for tests of lock holders).
    #[cfg(test)]
    pub(crate) fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.memory.cpu.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this and `other` lend from the same memory (for tests and statistics).
    pub fn same_memory(&self, other: &Lent) -> bool {
        Arc::ptr_eq(&self.memory, &other.memory)
    }
}

impl PartialEq for Lent {
    /// The same bytes of the same memory (not equal contents).
    fn eq(&self, other: &Lent) -> bool {
        self.same_memory(other) && self.range == other.range
    }
}

impl Eq for Lent {}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent")
            .field("addr", &self.as_ptr())
            .field("range", &self.range)
            .finish()
    }
}

/// `len` zero bytes lent from one process-wide zero region of the global pool (never written:
/// no [`Region`] handle of it exists), so reading a hole costs neither memory nor a copy.
///
/// # Panics
/// When `len` exceeds [`ZEROES_LEN`].
pub fn zeroes(len: usize) -> Lent {
    static ZEROES: OnceLock<Arc<Memory>> = OnceLock::new();
    let memory = ZEROES.get_or_init(|| Arc::new(Memory::zeroed(global(), ZEROES_LEN)));
    check(0, len, ZEROES_LEN);
    Lent {
        memory: Arc::clone(memory),
        range: 0..len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_read(lent: &Lent) -> Vec<u8> {
        let mut out = vec![0u8; lent.len()];
        lent.copy_to(&mut out);
        out
    }

    #[test]
    fn a_fresh_region_is_zero_even_on_recycled_pool_memory() {
        let pool = Pool::new();
        let mut stale = pool.alloc(1 << 20);
        stale.fill(0xEE);
        drop(stale);
        let region = Region::zeroed(pool, 1 << 20);
        let mut back = vec![1u8; 1 << 20];
        region.read_into(0, &mut back);
        assert!(back.iter().all(|&b| b == 0));
    }

    #[test]
    fn writes_reads_and_zeroing_go_by_copies() {
        let pool = Pool::new();
        let mut region = Region::zeroed(pool, 8192);
        region.write(4000, &[7u8; 200]);
        let mut back = [0u8; 300];
        region.read_into(3950, &mut back);
        assert!(back[..50].iter().all(|&b| b == 0));
        assert!(back[50..250].iter().all(|&b| b == 7));
        assert!(back[250..].iter().all(|&b| b == 0));
        region.zero(4100, 50);
        region.read_into(4000, &mut back[..200]);
        assert!(back[..100].iter().all(|&b| b == 7));
        assert!(back[100..150].iter().all(|&b| b == 0));
        assert!(back[150..200].iter().all(|&b| b == 7));
    }

    #[test]
    fn out_of_range_accesses_panic() {
        let pool = Pool::new();
        let region = Region::zeroed(pool, 4096);
        assert!(std::panic::catch_unwind(|| region.lend(4000..4097)).is_err());
        assert!(std::panic::catch_unwind(|| region.read_into(4095, &mut [0u8; 2])).is_err());
        let mut region = region;
        let result = std::panic::catch_unwind(move || region.write(usize::MAX, &[1]));
        assert!(result.is_err());
        assert!(std::panic::catch_unwind(|| zeroes(ZEROES_LEN + 1)).is_err());
    }

    #[test]
    fn lent_memory_names_its_arena_and_outlives_the_region() {
        let pool = Pool::new();
        let mut region = Region::zeroed(pool, 1 << 20);
        region.write(4096, b"lent bytes");
        let lent = region.lend(4096..4106);
        let arena = lent.arena_extent().expect("pool memory has an arena");
        let offset = lent.arena_offset().unwrap();
        assert_eq!(arena.addr() + offset, lent.as_ptr() as usize);
        assert!(offset + lent.len() <= arena.len());
        // Freeing the region (UNMAP) while the bytes are lent keeps them mapped and unchanged:
        // the pool cannot hand them to anyone else yet.
        drop(region);
        let other = pool.alloc(1 << 20);
        assert_ne!(other.as_ptr(), lent.as_ptr().wrapping_sub(4096));
        assert_eq!(device_read(&lent), b"lent bytes");
        let addr = lent.as_ptr().wrapping_sub(4096);
        drop(lent);
        drop(other);
        // Both returned; the lent memory came back to the pool only with its last lender.
        let again: Vec<_> = (0..2).map(|_| pool.alloc(1 << 20)).collect();
        assert!(again.iter().any(|b| b.as_ptr() == addr));
    }

    #[test]
    fn a_cpu_copy_of_lent_bytes_sees_each_write_whole() {
        // The writer keeps the region (`&mut`), a transport thread copies the lent bytes out:
        // the chunk's CPU lock orders them, so every copy holds one write's bytes, never a mix.
        let pool = Pool::new();
        let mut region = Region::zeroed(pool, 64 << 10);
        let lent = region.lend(0..64 << 10);
        let reader = std::thread::spawn(move || {
            let mut out = vec![0u8; lent.len()];
            for _ in 0..200 {
                lent.copy_to(&mut out);
                assert!(out.iter().all(|&b| b == out[0]), "a torn copy");
            }
        });
        for round in 0..200u32 {
            region.write(0, &vec![round as u8; 64 << 10]);
        }
        reader.join().unwrap();
    }

    #[test]
    fn zeroes_are_one_shared_registered_region() {
        let a = zeroes(4096);
        let b = zeroes(ZEROES_LEN);
        assert!(a.same_memory(&b));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(
            a.arena_extent().is_some(),
            "from the global pool, so registrable"
        );
        assert!(device_read(&b).iter().all(|&x| x == 0));
    }
}
