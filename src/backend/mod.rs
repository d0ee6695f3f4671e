//! Block storage backends: where the blocks of a logical unit live.
//!
//! Backends are byte-addressed and thread-safe; the SCSI layer converts LBAs to byte offsets
//! and range-checks every request before it reaches a backend, so backends only re-check
//! bounds defensively.

#![forbid(unsafe_code)]

mod file;
mod ram;
mod rbd;
mod rbd_reservations;

pub use file::{BackendFiles, FileBackend, FuaMethod};
pub use ram::RamBackend;
pub use rbd::RbdBackend;
pub use rbd_reservations::RbdReservationStore;

use mem_ffi::LentRanges;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use mem_ffi::Buf;

/// Errors from backing storage: the `io::Error` kind, OS error number and message, kept as
/// plain data so the error is `Clone` and can be mapped to sense data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend error ({kind:?}): {message}")]
pub struct BackendError {
    kind: io::ErrorKind,
    raw_os_error: Option<i32>,
    message: String,
}

impl BackendError {
    /// Builds an error from a kind and a human-readable message.
    pub fn new(kind: io::ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            raw_os_error: None,
            message: message.into(),
        }
    }

    /// The `io::ErrorKind` of the underlying failure.
    pub fn kind(&self) -> io::ErrorKind {
        self.kind
    }

    /// The OS error number (errno), when the failure came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.raw_os_error
    }

    /// Whether the failure was "no space left on device" (thin provisioning ran out),
    /// which SCSI reports differently from a plain write error.
    pub fn is_out_of_space(&self) -> bool {
        self.raw_os_error == Some(libc::ENOSPC)
    }

    /// The error for a request that falls outside the backend (a bug in the caller).
    fn out_of_range(offset: u64, len: u64, size: u64) -> Self {
        BackendError::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} outside backend of {size} bytes"),
        )
    }
}

impl From<io::Error> for BackendError {
    fn from(e: io::Error) -> Self {
        BackendError {
            kind: e.kind(),
            raw_os_error: e.raw_os_error(),
            message: e.to_string(),
        }
    }
}

impl From<nix::errno::Errno> for BackendError {
    fn from(e: nix::errno::Errno) -> Self {
        BackendError::from(io::Error::from(e))
    }
}

/// Block storage: byte-addressed, thread-safe (called concurrently from several worker threads).
pub trait Backend: Send + Sync {
    /// Capacity in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the whole range must lie inside the backend.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError>;
    /// Writes all of `data` at `offset`; the whole range must lie inside the backend.
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError>;
    /// Makes all completed writes durable (fdatasync; works on block devices too).
    fn flush(&self) -> Result<(), BackendError>;
    /// Deallocates a range; reads of it return zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError>;
    /// Sets a range to zeroes. The default writes zero buffers in 1 MiB pieces.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        write_zero_buffers(self, offset, len)
    }
    /// Provisioning status at `offset` (GET LBA STATUS): whether the byte there is backed by
    /// allocated storage, and how many bytes from `offset` (1..=`max_len`) share that
    /// status. The default reports everything as mapped.
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64), BackendError> {
        check_range(offset, max_len, self.size())?;
        Ok((true, max_len))
    }
    /// Whether `discard` really deallocates (advertised to initiators as thin provisioning).
    fn supports_discard(&self) -> bool;
    /// Bytes `offset..offset + len` lent from the backend's own memory, without a copy, when
    /// it keeps its blocks in shared pool memory (RAM): a transport sends them from there.
    /// `None` for backends whose data must be read into a buffer. The whole range must lie
    /// inside the backend.
    fn lend(&self, offset: u64, len: u64) -> Result<Option<LentRanges>, BackendError> {
        check_range(offset, len, self.size())?;
        Ok(None)
    }
    /// Grows the backend while it serves: to `size` bytes, or with `None` to what its file or
    /// device holds now (extended from outside). Returns the new size when it grew, `None`
    /// when it stayed; a smaller size is refused (blocks an initiator may use would vanish).
    /// The LU notices the new size at its next command ([`crate::scsi::LogicalUnit`] follows
    /// its backend). The default changes nothing: a RAM LUN keeps its size until a restart,
    /// and an RBD image's size is followed as the image changes.
    fn grow(&self, size: Option<u64>) -> Result<Option<u64>, BackendError> {
        let _ = size;
        Ok(None)
    }
    /// Measures a block device again (an LV extended, a disk grown): like `grow(None)`, for
    /// the backends whose size is their device's. Everything else keeps its size here: a
    /// file LUN exposes the `size` it was configured with, which may be less than the file.
    fn measure_device(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
    /// Short backend name for logs: "ram", "file" or "block".
    fn kind(&self) -> &'static str;
    /// The descriptors of a backend stored in a file or block device, for executors that
    /// submit reads, writes and syncs themselves (io_uring); `None` for in-memory backends,
    /// whose I/O completes inline.
    fn files(&self) -> Option<&BackendFiles> {
        None
    }
    /// The asynchronous interface of a backend whose I/O completes on threads of its own
    /// (RBD); `None` for the others.
    fn asynchronous(&self) -> Option<&dyn AsyncBackend> {
        None
    }
}

/// An operation for an [`AsyncBackend`]; buffers travel with the operation.
#[derive(Debug, PartialEq, Eq)]
pub enum AsyncOp {
    /// Read `len` bytes at `offset`; replies [`AsyncReply::Data`].
    Read { offset: u64, len: usize },
    /// Write `data` at `offset`; `fua`: durable before completion.
    Write { offset: u64, data: Buf, fua: bool },
    /// Make every completed write durable.
    Flush,
    /// Deallocate each (offset, length) byte range; they read back as zeroes.
    Discard { ranges: Vec<(u64, u64)> },
    /// Set `len` bytes at `offset` to zeroes; `fua`: durable before completion.
    WriteZeroes { offset: u64, len: u64, fua: bool },
    /// Atomically with respect to this process's other I/O to the LU (the engine runs it
    /// alone): if the medium at `offset` equals `compare`, write `data` (same length).
    CompareAndWrite {
        offset: u64,
        compare: Buf,
        data: Buf,
        fua: bool,
    },
}

/// What a successful [`AsyncOp`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsyncReply {
    /// Completed; nothing to return.
    Done,
    /// The bytes read.
    Data(Buf),
    /// COMPARE AND WRITE found a difference at this byte offset of the compared range.
    Miscompare { offset: u64 },
}

/// Receives the result of an [`AsyncOp`], on whichever thread completed it.
pub type AsyncDone = Box<dyn FnOnce(Result<AsyncReply, BackendError>) + Send>;

/// A backend that takes operations and reports their completion later, from its own
/// threads, instead of blocking the caller.
pub trait AsyncBackend: Send + Sync {
    /// Starts `op`; `done` runs exactly once with its result (on the calling thread when
    /// the operation could not be started). `done` must not block.
    fn submit(&self, op: AsyncOp, done: AsyncDone);
}

/// A new file in the temporary directory, already unlinked, holding `data` at offset `at`
/// (tests of READs sent from a file's pages).
#[cfg(test)]
pub(crate) fn unlinked_file(data: &[u8], at: u64) -> Arc<std::fs::File> {
    use std::os::unix::fs::FileExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("iser-unlinked-{}-{n}.img", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create a scratch file");
    std::fs::remove_file(&path).expect("unlink the scratch file");
    file.write_all_at(data, at).expect("fill the scratch file");
    Arc::new(file)
}

/// Size of the zero buffer used when zeroing by writing.
const ZERO_CHUNK: u64 = 1 << 20;

/// Zeroes `len` bytes at `offset` by plain writes; shared by the default `write_zeroes` and
/// by the fallbacks of backends whose fallocate is unsupported.
fn write_zero_buffers<B: Backend + ?Sized>(
    b: &B,
    offset: u64,
    len: u64,
) -> Result<(), BackendError> {
    check_range(offset, len, b.size())?;
    let zeroes = vec![0u8; ZERO_CHUNK.min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK);
        b.write_at(&zeroes[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// Checks that `offset..offset+len` lies inside a backend of `size` bytes, without overflow.
fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BackendError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::out_of_range(offset, len, size)),
    }
}

/// Opens a file or block device by path, choosing the backend from the file type.
///
/// Block devices ignore `size` and `create`; regular files follow [`FileBackend::open`].
pub fn open_path(
    path: &Path,
    size: Option<u64>,
    create: bool,
    sync_writes: bool,
) -> Result<Arc<dyn Backend>, BackendError> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            Ok(Arc::new(FileBackend::open_device(path, sync_writes)?))
        }
        Ok(_) => Ok(Arc::new(FileBackend::open(
            path,
            size,
            create,
            sync_writes,
        )?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => Ok(Arc::new(FileBackend::open(
            path,
            size,
            create,
            sync_writes,
        )?)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_handles_overflow() {
        assert!(check_range(0, 10, 10).is_ok());
        assert!(check_range(1, 10, 10).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn error_from_io_keeps_kind_and_errno() {
        let e = BackendError::from(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.is_out_of_space());
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn open_path_picks_file_backend() {
        let dir = std::env::temp_dir().join(format!("iser-be-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("open_path.img");
        let _ = std::fs::remove_file(&p);
        let b = open_path(&p, Some(1 << 20), true, false).unwrap();
        assert_eq!(b.kind(), "file");
        assert_eq!(b.size(), 1 << 20);
        assert!(open_path(&dir.join("missing.img"), None, false, false).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
