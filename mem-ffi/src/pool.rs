//! A pool of page-aligned I/O buffers, recycled so that steady state allocates nothing per
//! command.
//!
//! Memory comes from anonymous `mmap` arenas (page-aligned, never unmapped: a transport may have
//! registered them with a NIC) carved into power-of-two size classes from 4 KiB up. An arena of a
//! class holds [`ARENA_BYTES`] worth of buffers (one buffer when the class is larger). Freed
//! buffers go back to their class's free list (one lock per class) and are handed out again.
//!
//! A [`Buf`] is the unique owner of its bytes. It derefs to `[u8]` over its current length, which
//! [`Buf::set_len`] moves anywhere within its capacity.
//!
//! **Contents.** The bytes of a buffer fresh from the pool are whatever the previous owner left
//! there (zeroes for a new arena): always initialized memory, never another live buffer's, but
//! unspecified. Every path that creates a buffer and lets its bytes reach an initiator must fill
//! all of them first (a read fills the whole buffer or fails; a write buffer exposes only the
//! bytes that arrived). [`Buf::copy_from_slice`] builds a buffer of exactly some bytes.
//!
//! The pool keeps its high-water mark: memory is never given back to the system (a transport
//! may have registered it), so its size is that of the most buffers ever live at once.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

/// Alignment of every buffer: the page size, which O_DIRECT and memory registration want.
pub const PAGE: usize = 4096;

/// Bytes of one arena of the small classes (a class larger than this gets one buffer per arena).
pub const ARENA_BYTES: usize = 4 << 20;

/// Size classes: 4 KiB · 2^k for k in 0..CLASSES, i.e. up to 4 KiB · 2^15 = 128 MiB.
const CLASSES: usize = 16;

/// The identity of an arena of a pool: stable for the life of the process, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArenaId(pub u32);

/// One arena: its id and the memory it spans (`len` bytes from `addr`, page-aligned, mapped
/// for the life of the process). Only a pool makes them, so an `Arena` always names memory that
/// stays mapped: what lets `rdma-ffi` register it safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arena {
    id: ArenaId,
    addr: usize,
    len: usize,
}

impl Arena {
    /// Its stable id.
    pub fn id(&self) -> ArenaId {
        self.id
    }

    /// Address of its first byte (page-aligned).
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it spans no bytes (never, for a pool's arena).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A free buffer: its start and the arena it belongs to.
#[derive(Clone, Copy)]
struct Slot {
    ptr: NonNull<u8>,
    arena: ArenaId,
}

// SAFETY: a free slot is only an address of pool memory nobody uses; the class's lock decides
// who takes it, so moving it between threads is sound.
unsafe impl Send for Slot {}

/// A pool of page-aligned buffers. Pools live for the whole process (their memory may be
/// registered with devices), so they are created as `&'static`.
pub struct Pool {
    classes: [Mutex<Vec<Slot>>; CLASSES],
    arenas: Mutex<Vec<Arena>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("arenas", &self.arenas().len())
            .finish()
    }
}

static GLOBAL: OnceLock<&'static Pool> = OnceLock::new();

/// The process-wide pool every command's buffers come from.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(Pool::new)
}

/// Class index and size for a request of `len` bytes (`len` ≥ 1).
fn class_of(len: usize) -> Option<(usize, usize)> {
    let size = len.max(PAGE).checked_next_power_of_two()?;
    let class = (size / PAGE).trailing_zeros() as usize;
    (class < CLASSES).then_some((class, size))
}

impl Pool {
    /// A new, empty pool (arenas are mapped as buffers are first needed).
    pub fn new() -> &'static Pool {
        Box::leak(Box::new(Pool {
            classes: std::array::from_fn(|_| Mutex::new(Vec::new())),
            arenas: Mutex::new(Vec::new()),
        }))
    }

    /// The largest buffer the pool hands out.
    pub const MAX_BUFFER: usize = PAGE << (CLASSES - 1);

    /// A buffer of `len` bytes (capacity: `len` rounded up to its size class). Its contents are
    /// unspecified old bytes: the caller fills all of them before they reach anyone (see the
    /// module documentation). `len` 0 gives an empty buffer that holds no pool memory.
    ///
    /// # Panics
    /// When `len` exceeds [`Pool::MAX_BUFFER`] or the system refuses memory for a new arena
    /// (as `Vec` aborts when memory runs out).
    pub fn alloc(&'static self, len: usize) -> Buf {
        if len == 0 {
            return Buf::empty();
        }
        let (class, size) = class_of(len)
            .unwrap_or_else(|| panic!("buffer of {len} bytes exceeds the pool's largest class"));
        let slot = self.take(class, size);
        Buf {
            ptr: slot.ptr,
            len,
            capacity: size,
            arena: slot.arena,
            owner: Some((self, class as u8)),
        }
    }

    /// An empty buffer (length 0) able to grow to `capacity` bytes with [`Buf::extend_from_slice`].
    pub fn with_capacity(&'static self, capacity: usize) -> Buf {
        let mut buf = self.alloc(capacity);
        buf.len = 0;
        buf
    }

    /// Every arena mapped so far, in the order they were mapped.
    pub fn arenas(&self) -> Vec<Arena> {
        self.arenas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn take(&'static self, class: usize, size: usize) -> Slot {
        let mut free = self.classes[class]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = free.pop() {
            return slot;
        }
        // A new arena for this class: rare (the pool only grows to its high-water mark).
        let arena_len = size.max(ARENA_BYTES);
        let addr = map_arena(arena_len);
        let id = {
            let mut arenas = self.arenas.lock().unwrap_or_else(|p| p.into_inner());
            let id = ArenaId(arenas.len() as u32);
            arenas.push(Arena {
                id,
                addr: addr.as_ptr() as usize,
                len: arena_len,
            });
            id
        };
        let count = arena_len / size;
        free.reserve(count);
        // Hand out low addresses first: push the rest from the top down.
        for index in (1..count).rev() {
            // SAFETY: `index * size < arena_len`, so the pointer stays inside the mapping.
            let ptr = unsafe { NonNull::new_unchecked(addr.as_ptr().add(index * size)) };
            free.push(Slot { ptr, arena: id });
        }
        Slot {
            ptr: addr,
            arena: id,
        }
    }

    fn give_back(&self, class: usize, slot: Slot) {
        self.classes[class]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }
}

/// Maps `len` bytes of zeroed, page-aligned, private anonymous memory.
fn map_arena(len: usize) -> NonNull<u8> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked before use.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        let error = std::io::Error::last_os_error();
        panic!("cannot map a buffer arena of {len} bytes: {error}");
    }
    NonNull::new(addr.cast()).expect("mmap never returns null on success")
}

/// A page-aligned buffer from a [`Pool`], the unique owner of its bytes; back to its pool on drop.
pub struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    arena: ArenaId,
    /// The pool and class to return to; `None` for an empty buffer that holds no memory.
    owner: Option<(&'static Pool, u8)>,
}

// SAFETY: a Buf owns its bytes exclusively (the pool hands a slot to one Buf at a time and takes
// it back only on drop), like a Box<[u8]>; sending or sharing it is as sound as for a Box.
unsafe impl Send for Buf {}
// SAFETY: shared access only reads through `&[u8]`, as for a Box<[u8]>.
unsafe impl Sync for Buf {}

impl Buf {
    /// An empty buffer of capacity 0 that holds no pool memory.
    pub const fn empty() -> Buf {
        Buf {
            ptr: NonNull::dangling(),
            len: 0,
            capacity: 0,
            arena: ArenaId(u32::MAX),
            owner: None,
        }
    }

    /// A buffer of the global pool holding a copy of `data` (for small replies built elsewhere).
    pub fn copy_from_slice(data: &[u8]) -> Buf {
        let mut buf = global().with_capacity(data.len());
        buf.extend_from_slice(data);
        buf
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets the length to `len` bytes. Bytes beyond the old length are whatever the buffer held
    /// (initialized, unspecified; see the module documentation).
    ///
    /// # Panics
    /// When `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "length {len} beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Shortens the buffer to `len` bytes (no effect when it is not longer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `data` after the current length.
    ///
    /// # Panics
    /// When the result would exceed the capacity.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let start = self.len;
        self.set_len(start + data.len());
        self[start..].copy_from_slice(data);
    }

    /// Start of the buffer (page-aligned unless empty).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Start of the buffer, for writing through (e.g. by a device).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The arena holding this buffer (`None` for an empty buffer).
    pub fn arena(&self) -> Option<ArenaId> {
        self.owner.map(|_| self.arena)
    }

    /// The arena holding this buffer with its extent, so a transport can find or make the
    /// memory registration that covers it (`None` for an empty buffer).
    pub fn arena_extent(&self) -> Option<Arena> {
        let (pool, _) = self.owner?;
        let arenas = pool.arenas.lock().unwrap_or_else(|p| p.into_inner());
        arenas.get(self.arena.0 as usize).copied()
    }

    /// Where the buffer starts inside its arena, in bytes (`None` for an empty buffer).
    pub fn arena_offset(&self) -> Option<usize> {
        let arena = self.arena_extent()?;
        Some(self.ptr.as_ptr() as usize - arena.addr)
    }
}

impl Default for Buf {
    fn default() -> Buf {
        Buf::empty()
    }
}

impl Deref for Buf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points at `capacity` bytes of mapped, initialized memory owned by this
        // Buf alone (or is dangling with `len` 0), and `len <= capacity`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some((pool, class)) = self.owner {
            pool.give_back(
                class as usize,
                Slot {
                    ptr: self.ptr,
                    arena: self.arena,
                },
            );
        }
    }
}

impl Clone for Buf {
    /// A new buffer of the same pool with the same bytes.
    fn clone(&self) -> Buf {
        match self.owner {
            None => Buf::empty(),
            Some((pool, _)) => {
                let mut copy = pool.with_capacity(self.len);
                copy.extend_from_slice(self);
                copy
            }
        }
    }
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("arena", &self.arena())
            .finish()
    }
}

impl PartialEq for Buf {
    /// Equal contents (over the current length).
    fn eq(&self, other: &Buf) -> bool {
        **self == **other
    }
}

impl Eq for Buf {}

impl PartialEq<[u8]> for Buf {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Buf {
    fn eq(&self, other: &[u8; N]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for Buf {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<u8>> for Buf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn buffers_are_page_aligned_in_every_class() {
        let pool = Pool::new();
        for len in [1, 512, 4096, 4097, 65536, 1 << 20, (1 << 20) + 1, 8 << 20] {
            let buf = pool.alloc(len);
            assert_eq!(buf.as_ptr() as usize % PAGE, 0, "len {len}");
            assert_eq!(buf.len(), len);
            assert!(buf.capacity() >= len && buf.capacity().is_power_of_two());
        }
    }

    #[test]
    fn freed_buffers_are_reused_without_new_arenas() {
        let pool = Pool::new();
        let first = pool.alloc(4096);
        let addr = first.as_ptr();
        drop(first);
        let again = pool.alloc(3000);
        assert_eq!(again.as_ptr(), addr, "the freed buffer comes back");
        drop(again);
        let arenas = pool.arenas().len();
        for _ in 0..1000 {
            let a = pool.alloc(4096);
            let b = pool.alloc(128 << 10);
            drop((a, b));
        }
        assert_eq!(
            pool.arenas().len(),
            arenas + 1,
            "one arena for the 128 KiB class only"
        );
    }

    #[test]
    fn live_buffers_never_alias() {
        let pool = Pool::new();
        let mut bufs: Vec<Buf> = (0..3000)
            .map(|i| pool.alloc([4096, 8192, 65536][i % 3]))
            .collect();
        for (i, buf) in bufs.iter_mut().enumerate() {
            buf.fill(i as u8);
        }
        let mut spans = Vec::new();
        for (i, buf) in bufs.iter().enumerate() {
            assert!(buf.iter().all(|&b| b == i as u8), "buffer {i} overwritten");
            spans.push((buf.as_ptr() as usize, buf.capacity()));
        }
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap {pair:?}");
        }
    }

    #[test]
    fn large_classes_reach_the_largest_transfer_and_get_an_arena_each() {
        let pool = Pool::new();
        let big = pool.alloc(8 << 20);
        let bigger = pool.alloc(8 << 20);
        assert_eq!(big.capacity(), 8 << 20);
        let extents: HashSet<_> = [&big, &bigger]
            .iter()
            .map(|b| b.arena_extent().unwrap())
            .collect();
        assert_eq!(extents.len(), 2);
        for extent in extents {
            assert_eq!(extent.len(), 8 << 20);
        }
    }

    #[test]
    fn a_buffer_dropped_on_another_thread_returns_to_its_pool() {
        let pool = Pool::new();
        let buf = pool.alloc(16384);
        let addr = buf.as_ptr() as usize;
        std::thread::spawn(move || drop(buf)).join().unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let mut b = pool.alloc(16384);
                        b[0] = 1;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let again = pool.alloc(16384);
        assert_eq!(pool.arenas().len(), 1, "threads shared one arena");
        let arena = again.arena_extent().unwrap();
        assert!((arena.addr()..arena.addr() + arena.len()).contains(&addr));
    }

    #[test]
    fn arena_extent_covers_the_buffer_and_ids_are_stable() {
        let pool = Pool::new();
        let a = pool.alloc(4096);
        let b = pool.alloc(2 << 20);
        let ea = a.arena_extent().unwrap();
        let eb = b.arena_extent().unwrap();
        assert_ne!(ea.id(), eb.id());
        for (buf, extent) in [(&a, ea), (&b, eb)] {
            let start = buf.as_ptr() as usize;
            assert!(
                start >= extent.addr() && start + buf.capacity() <= extent.addr() + extent.len()
            );
            assert_eq!(extent.addr() % PAGE, 0);
            assert_eq!(buf.arena_offset(), Some(start - extent.addr()));
        }
        assert_eq!(pool.arenas(), vec![ea, eb]);
    }

    #[test]
    fn recycled_contents_are_stale_until_filled() {
        // What the pool promises and the data path relies on: an allocation exposes old bytes,
        // so only a buffer that was filled completely may go to an initiator.
        let pool = Pool::new();
        let mut secret = pool.alloc(4096);
        secret.fill(0xA5);
        drop(secret);
        let reused = pool.alloc(4096);
        assert!(
            reused.iter().all(|&b| b == 0xA5),
            "old bytes, as documented"
        );
        drop(reused);
        let mut fresh = pool.with_capacity(4096);
        assert!(fresh.is_empty(), "with_capacity exposes nothing");
        fresh.extend_from_slice(&[1, 2, 3]);
        assert_eq!(&fresh[..], &[1, 2, 3]);
    }

    #[test]
    fn empty_buffers_hold_no_memory_and_lengths_stay_in_capacity() {
        let pool = Pool::new();
        let empty = pool.alloc(0);
        assert!(empty.is_empty() && empty.arena().is_none());
        assert!(pool.arenas().is_empty());
        let mut buf = pool.alloc(100);
        buf.set_len(4096);
        assert_eq!(buf.len(), 4096);
        let overflow = std::panic::catch_unwind(move || buf.set_len(4097));
        assert!(overflow.is_err());
        let copy = Buf::copy_from_slice(b"abc");
        assert_eq!(copy.clone(), copy);
        assert_eq!(copy, b"abc".to_vec());
    }
}
