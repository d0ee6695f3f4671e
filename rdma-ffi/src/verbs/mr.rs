//! Memory registration: access flags and registered memory regions.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdma_sys::*;

use super::{lock, ProtectionDomain};
use crate::error::{check_ibv, Error, Result};
use crate::{dec, inc, LEAKED_MRS, LIVE_MRS};

/// Access flags of a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access(u32);

impl Access {
    /// Local write (needed for receives and RDMA Read targets).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Remote peer may RDMA Write.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Remote peer may RDMA Read.
    pub const REMOTE_READ: Access = Access(4);
    /// No flags (local read only).
    pub const NONE: Access = Access(0);

    /// Raw `ibv_access_flags` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// True if all flags in `other` are set.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any remote access is granted.
    pub fn is_remote(self) -> bool {
        self.0 & (Self::REMOTE_READ.0 | Self::REMOTE_WRITE.0) != 0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A registered memory region that owns its page-aligned, zero-initialised
/// buffer. See the crate docs for the lifetime and access rules.
pub struct MemoryRegion {
    mr: NonNull<ibv_mr>,
    buf: NonNull<u8>,
    len: usize,
    /// The allocation behind `buf` when the region owns it; `None` for a registered pool arena
    /// (memory of `mem_ffi`, mapped for the life of the process).
    layout: Option<Layout>,
    access: Access,
    /// Serialises CPU copies in/out of the buffer between threads.
    cpu: Mutex<()>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the buffer is only touched through raw-pointer copies under `cpu`,
// or through `&mut self`; the ibv_mr handle is immutable.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above.
unsafe impl Sync for MemoryRegion {}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &self.addr())
            .field("len", &self.len)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl MemoryRegion {
    /// Allocate `len` bytes (page-aligned, zeroed) and register them on `pd`
    /// with `access`.
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize, access: Access) -> Result<Arc<Self>> {
        if len == 0 {
            return Err(Error::Invalid("memory region length 0".into()));
        }
        let page = page_size();
        let size = len
            .checked_add(page - 1)
            .ok_or_else(|| Error::Invalid("length overflow".into()))?
            & !(page - 1);
        let layout =
            Layout::from_size_align(size, page).map_err(|e| Error::Invalid(e.to_string()))?;
        // SAFETY: layout has non-zero size.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        let buf = NonNull::new(buf).ok_or_else(|| Error::from_errno("alloc", libc::ENOMEM))?;
        // SAFETY: `buf` is a live allocation of `size` >= `len` bytes that
        // outlives the registration (freed only after ibv_dereg_mr succeeds).
        let mr = unsafe {
            ibv_reg_mr(
                pd.raw.as_ptr(),
                buf.as_ptr() as *mut libc::c_void,
                len,
                access.0 as i32,
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            let e = Error::last_os("ibv_reg_mr");
            // SAFETY: registration failed, nothing references the buffer.
            unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
            return Err(e);
        };
        inc(&LIVE_MRS);
        Ok(Arc::new(MemoryRegion {
            mr,
            buf,
            len,
            layout: Some(layout),
            access,
            cpu: Mutex::new(()),
            _pd: pd.clone(),
        }))
    }

    /// Registers an arena of a `mem_ffi` buffer pool on `pd` with `access`, so work requests
    /// can move data straight from and into the pool's buffers (addressed by their offset in the
    /// arena, [`mem_ffi::Buf::arena_offset`]). The region does not own the memory: arenas stay
    /// mapped for the life of the process, so deregistering is all its drop does. It has no CPU
    /// accessors ([`MemoryRegion::read`], [`MemoryRegion::write`] and [`MemoryRegion::fill`]
    /// fail): the bytes belong to the buffers, and whoever posts a work request over a range
    /// must own the `Buf` there and keep it until the completion.
    pub fn register_arena(
        pd: &Arc<ProtectionDomain>,
        arena: &mem_ffi::Arena,
        access: Access,
    ) -> Result<Arc<Self>> {
        let buf = NonNull::new(arena.addr() as *mut u8)
            .ok_or_else(|| Error::Invalid("arena at address 0".into()))?;
        if arena.is_empty() {
            return Err(Error::Invalid("memory region length 0".into()));
        }
        // SAFETY: a `mem_ffi::Arena` is made only by its pool and names `len` bytes of mapped
        // memory that is never unmapped, so it outlives the registration.
        let mr = unsafe {
            ibv_reg_mr(
                pd.raw.as_ptr(),
                buf.as_ptr() as *mut libc::c_void,
                arena.len(),
                access.0 as i32,
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            return Err(Error::last_os("ibv_reg_mr"));
        };
        inc(&LIVE_MRS);
        Ok(Arc::new(MemoryRegion {
            mr,
            buf,
            len: arena.len(),
            layout: None,
            access,
            cpu: Mutex::new(()),
            _pd: pd.clone(),
        }))
    }

    /// CPU accessors work on regions that own their buffer only.
    fn check_cpu_range(&self, offset: usize, len: usize) -> Result<()> {
        if self.layout.is_none() {
            return Err(Error::Invalid(
                "a registered pool arena is accessed through its buffers".into(),
            ));
        }
        self.check_range(offset, len)
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is registered; plain field.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    /// Remote key (give it to the peer together with [`addr`](Self::addr)).
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    /// Virtual address of the buffer (what the peer uses for RDMA).
    pub fn addr(&self) -> u64 {
        self.buf.as_ptr() as u64
    }

    /// Registered length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (zero-length regions are rejected); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Access flags it was registered with.
    pub fn access(&self) -> Access {
        self.access
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::Invalid(format!(
                "range {offset}+{len} outside memory region of {} bytes",
                self.len
            ))),
        }
    }

    /// Copy `out.len()` bytes starting at `offset` out of the buffer. If a WR
    /// or a remote peer writes the same bytes concurrently the copy sees some
    /// mix of old and new bytes (no undefined behaviour: no reference to the
    /// shared memory is ever formed).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_cpu_range(offset, out.len())?;
        let _g = lock(&self.cpu);
        // SAFETY: range checked; source is our live allocation, destination
        // a distinct Rust slice; CPU writers are excluded by `cpu`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.buf.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Copy `data` into the buffer at `offset`. Writing bytes that a posted
    /// WR is sending/receiving gives unspecified (but not undefined) results.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_cpu_range(offset, data.len())?;
        let _g = lock(&self.cpu);
        // SAFETY: range checked; destination is our live allocation, source a
        // distinct Rust slice; other CPU accessors are excluded by `cpu`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.as_ptr().add(offset), data.len())
        };
        Ok(())
    }

    /// Fill `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        self.check_cpu_range(offset, len)?;
        let _g = lock(&self.cpu);
        // SAFETY: range checked; our live allocation; CPU accessors excluded.
        unsafe { std::ptr::write_bytes(self.buf.as_ptr().add(offset), byte, len) };
        Ok(())
    }

    /// The buffer as a slice. Needs `&mut self`, i.e. `Arc::get_mut`, which
    /// only succeeds while no posted WR holds a reference; `None` for regions
    /// with remote access (a peer may write them at any time).
    pub fn as_slice(&mut self) -> Option<&[u8]> {
        self.as_mut_slice().map(|s| &*s)
    }

    /// Mutable variant of [`as_slice`](Self::as_slice), same conditions.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if self.access.is_remote() || self.layout.is_none() {
            return None;
        }
        // SAFETY: `&mut self` proves no QP holds a clone of the Arc (so no
        // WR references the buffer) and no other CPU access exists; without
        // remote access nothing else writes it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), self.len) })
    }

    pub(crate) fn sge(&self, offset: usize, len: usize) -> Result<ibv_sge> {
        self.check_range(offset, len)?;
        let length =
            u32::try_from(len).map_err(|_| Error::Invalid("WR length exceeds u32".into()))?;
        Ok(ibv_sge {
            addr: self.addr() + offset as u64,
            length,
            lkey: self.lkey(),
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: no WR references the region (QPs hold Arcs until the
        // completion is polled or the drain finished); deregistered once.
        let r = unsafe { ibv_dereg_mr(self.mr.as_ptr()) };
        if let Err(e) = check_ibv("ibv_dereg_mr", r) {
            log::error!(
                "{e}; leaking the buffer of {} bytes rather than freeing registered memory",
                self.len
            );
            LEAKED_MRS.fetch_add(1, Ordering::SeqCst);
        } else if let Some(layout) = self.layout {
            // SAFETY: deregistered: the device can no longer touch it; allocated with `layout`.
            unsafe { std::alloc::dealloc(self.buf.as_ptr(), layout) };
        }
        dec(&LIVE_MRS);
    }
}
