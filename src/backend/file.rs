//! Backends over a regular file or a block device. The synchronous methods use positioned I/O
//! (pread/pwrite); [`BackendFiles`] hands the same descriptors to the io_uring executor.

use super::{check_range, write_zero_buffers, Backend, BackendError};
use mem_ffi::FileSpan;
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Alignment of buffer address, offset and length for the O_DIRECT descriptor: 4096 is a
/// multiple of every logical block size we serve (512 and 4096) and of the usual file system
/// block, so it is safe on 512e and 4Kn devices alike.
const DIRECT_ALIGN: usize = 4096;

/// Opens `path` read-write, with O_DSYNC when `sync_writes` (write-through LUNs). A file
/// created here is its owner's alone (0600): it holds an initiator's whole disk, which the
/// process umask (commonly 022) would leave readable by every local user.
fn open_rw(path: &Path, create: bool, sync_writes: bool, extra_flags: i32) -> io::Result<File> {
    let mut flags = extra_flags;
    if sync_writes {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .truncate(false)
        .custom_flags(flags)
        .open(path)
}

/// Converts a byte offset/length to `off_t`, rejecting values that do not fit.
fn off_t(v: u64) -> Result<libc::off_t, BackendError> {
    libc::off_t::try_from(v)
        .map_err(|_| BackendError::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// The descriptors of a file or block device: a buffered one, and an O_DIRECT one for aligned
/// transfers (which bypass the page cache) where the file system or driver allows it. Both
/// are opened O_DSYNC for write-through LUNs.
#[derive(Debug)]
pub struct BackendFiles {
    buffered: Arc<File>,
    direct: Option<Arc<File>>,
    /// Opened O_DSYNC: every write is durable at completion.
    sync_writes: bool,
    /// A regular file (not a block device).
    regular: bool,
    /// A regular file in tmpfs or ramfs: its pages live in memory only.
    in_memory: bool,
}

/// How an asynchronous FUA write is made durable before it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuaMethod {
    /// Already: the descriptors are O_DSYNC (write cache off).
    Implied,
    /// RWF_DSYNC on the write itself (block devices).
    WriteFlag,
    /// fdatasync once the write has completed (regular files). io_uring runs buffered writes
    /// to one regular file one at a time on a worker hashed by inode (Linux
    /// io_uring/io_uring.c `io_prep_async_work`, `hash_reg_file`), so an RWF_DSYNC write would
    /// hold that worker through its journal commit; a separate fdatasync is not hashed and
    /// overlaps with the others, as concurrent O_DSYNC pwrites did.
    SyncAfter,
}

impl BackendFiles {
    fn open(path: &Path, create: bool, sync_writes: bool) -> io::Result<Self> {
        let buffered = Arc::new(open_rw(path, create, sync_writes, 0)?);
        let regular = buffered.metadata()?.file_type().is_file();
        let in_memory = regular && in_memory_file_system(&buffered);
        let direct = match open_rw(path, false, sync_writes, libc::O_DIRECT) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                // tmpfs and some drivers refuse O_DIRECT; buffered I/O is still correct.
                log::info!(
                    "{}: O_DIRECT unavailable ({e}); buffered I/O only",
                    path.display()
                );
                None
            }
        };
        Ok(BackendFiles {
            buffered,
            direct,
            sync_writes,
            regular,
            in_memory,
        })
    }

    /// Whether the file's pages live only in memory (a regular file in tmpfs or ramfs): its
    /// reads and writes are memory copies that never wait for a device, so an engine thread
    /// runs them inline, as for a RAM LUN, rather than paying an io_uring round trip (for a
    /// buffered write, a hand-off to a kernel worker) for each.
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// Bytes `offset..offset + len` as a span of the file that a TCP transport sends from the
    /// page cache, for a file in memory only: sending it never waits for a device, so the
    /// engine thread that sends it never blocks (a disk file's pages may have to be read in
    /// first; its reads keep going through io_uring into a pool buffer). The caller has
    /// checked the range against the LU's size.
    pub fn page_span(&self, offset: u64, len: usize) -> Option<FileSpan> {
        self.in_memory
            .then(|| FileSpan::new(Arc::clone(&self.buffered), offset, len))
    }

    /// How a FUA write submitted asynchronously becomes durable (see [`FuaMethod`]).
    pub fn fua_method(&self) -> FuaMethod {
        match (self.sync_writes, self.regular) {
            (true, _) => FuaMethod::Implied,
            (false, true) => FuaMethod::SyncAfter,
            (false, false) => FuaMethod::WriteFlag,
        }
    }

    /// The descriptor for a transfer of `len` bytes at `offset` from/to memory at `addr`:
    /// O_DIRECT when all three are multiples of 4096 and O_DIRECT is available.
    pub fn for_transfer(&self, addr: usize, len: usize, offset: u64) -> &Arc<File> {
        let aligned = addr % DIRECT_ALIGN == 0
            && len % DIRECT_ALIGN == 0
            && offset % DIRECT_ALIGN as u64 == 0;
        match &self.direct {
            Some(d) if aligned => {
                crate::stats::count_direct_transfer();
                d
            }
            _ => &self.buffered,
        }
    }

    /// The descriptor to fdatasync. One is enough: both descriptors share the inode (the
    /// block device's, for a device), whose dirty pages and device cache fdatasync flushes.
    pub fn sync_file(&self) -> &Arc<File> {
        &self.buffered
    }

    /// Whether aligned transfers bypass the page cache.
    pub fn has_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Copies `len` bytes at `source_offset` of `source` to `offset` of this file inside the
    /// kernel (copy_file_range(2)): no copy through user space, and a clone of the extents
    /// where the file system shares them (XFS, btrfs). `Ok(false)`, with nothing copied, when
    /// the kernel cannot do it for these two: not both regular files, different file systems,
    /// or overlapping ranges of one file (EINVAL, EXDEV, EOPNOTSUPP, ENOSYS); the caller then
    /// copies through memory. The caller has checked both ranges against the LUs' sizes.
    pub fn copy_in(
        &self,
        source: &BackendFiles,
        source_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<bool, BackendError> {
        if !(self.regular && source.regular) {
            return Ok(false);
        }
        let mut from = off_t(source_offset)?;
        let mut to = off_t(offset)?;
        let mut left = len;
        while left > 0 {
            let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
            let copied = match nix::fcntl::copy_file_range(
                &*source.buffered,
                Some(&mut from),
                &*self.buffered,
                Some(&mut to),
                chunk,
            ) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => n as u64,
                Err(Errno::EINVAL | Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS)
                    if left == len =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(io::Error::from(e).into()),
            };
            left -= copied.min(left);
        }
        Ok(true)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.for_transfer(buf.as_ptr() as usize, buf.len(), offset)
            .read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.for_transfer(data.as_ptr() as usize, data.len(), offset)
            .write_all_at(data, offset)
    }
}

/// ramfs's file system type (Linux include/uapi/linux/magic.h; not in the libc crate).
const RAMFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x8584_58f6);

/// Whether `file` lies in tmpfs or ramfs (memory only, never written to a device).
fn in_memory_file_system(file: &File) -> bool {
    nix::sys::statfs::fstatfs(file).is_ok_and(|fs| {
        let kind = fs.filesystem_type();
        kind == nix::sys::statfs::TMPFS_MAGIC || kind == RAMFS_MAGIC
    })
}

/// Runs fallocate with `mode | KEEP_SIZE`; `Ok(false)` means the file system or device does
/// not support it and the caller should fall back to writing zeroes.
fn try_fallocate(
    file: &File,
    mode: FallocateFlags,
    offset: u64,
    len: u64,
) -> Result<bool, BackendError> {
    if len == 0 {
        return Ok(true);
    }
    match fallocate(
        file.as_raw_fd(),
        mode | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off_t(offset)?,
        off_t(len)?,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) | Err(Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A LUN stored in a regular (usually sparse) file, or on a whole block device. Aligned
/// requests (offset, length and buffer address all multiples of 4096) go through the O_DIRECT
/// descriptor to bypass the page cache; everything else uses the buffered descriptor. The two
/// kinds differ only in how they are opened and sized, and in that a device has no holes to
/// report.
pub struct FileBackend {
    files: BackendFiles,
    /// Bytes exposed; grows with [`Backend::grow`].
    size: AtomicU64,
    /// Opened as a block device ([`FileBackend::open_device`]).
    device: bool,
}

/// The bytes a backend over `file` exposes, at opening and again when it grows: a device's
/// size (found by seeking to its end); a file's `size`, extended sparsely first when the file
/// is shorter (a longer file keeps its length); without `size`, the file's length.
fn exposed_bytes(file: &File, device: bool, size: Option<u64>) -> io::Result<u64> {
    if device {
        return (&*file).seek(SeekFrom::End(0));
    }
    let length = file.metadata()?.len();
    match size {
        Some(wanted) => {
            if length < wanted {
                file.set_len(wanted)?;
            }
            Ok(wanted)
        }
        None => Ok(length),
    }
}

impl FileBackend {
    /// Opens (or with `create`, creates) a backing file.
    ///
    /// With `size`, a smaller file is extended sparsely to `size` bytes (a larger file keeps
    /// its length but only `size` bytes are exposed); without it the current file size is
    /// used and an empty file is an error. `sync_writes` opens with O_DSYNC (write-through,
    /// used when the LUN's write cache is off).
    pub fn open(
        path: &Path,
        size: Option<u64>,
        create: bool,
        sync_writes: bool,
    ) -> Result<Self, BackendError> {
        let files = BackendFiles::open(path, create, sync_writes)?;
        let size = exposed_bytes(&files.buffered, false, size)?;
        FileBackend::sized(files, size, false, path)
    }

    /// Opens a block device read-write; its size is found by seeking to the end.
    /// If O_DIRECT cannot be opened (some drivers refuse it) only the buffered path is used.
    pub fn open_device(path: &Path, sync_writes: bool) -> Result<Self, BackendError> {
        let files = BackendFiles::open(path, false, sync_writes)?;
        let size = exposed_bytes(&files.buffered, true, None)?;
        FileBackend::sized(files, size, true, path)
    }

    /// The backend over `files` exposing `size` bytes, opened from `path`; nothing to expose
    /// is an error.
    fn sized(
        files: BackendFiles,
        size: u64,
        device: bool,
        path: &Path,
    ) -> Result<Self, BackendError> {
        if size == 0 {
            let what = if device { "device" } else { "backing file" };
            return Err(BackendError::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {what} has size 0", path.display()),
            ));
        }
        Ok(FileBackend {
            files,
            size: AtomicU64::new(size),
            device,
        })
    }

    /// Deallocates (`PUNCH_HOLE`) or zeroes (`ZERO_RANGE`) a range; where the file system or
    /// device cannot, writes zero buffers instead. Reads of the range return zeroes afterwards
    /// either way.
    fn fallocate_or_write_zeroes(
        &self,
        mode: FallocateFlags,
        offset: u64,
        len: u64,
    ) -> Result<(), BackendError> {
        check_range(offset, len, self.size())?;
        if try_fallocate(&self.files.buffered, mode, offset, len)? {
            Ok(())
        } else {
            write_zero_buffers(self, offset, len)
        }
    }
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size())?;
        Ok(self.files.read_at(buf, offset)?)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError> {
        check_range(offset, data.len() as u64, self.size())?;
        Ok(self.files.write_at(data, offset)?)
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(self.files.sync_file().sync_data()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.fallocate_or_write_zeroes(FallocateFlags::FALLOC_FL_PUNCH_HOLE, offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.fallocate_or_write_zeroes(FallocateFlags::FALLOC_FL_ZERO_RANGE, offset, len)
    }

    /// A file's holes and data via lseek(SEEK_DATA/SEEK_HOLE); file systems without support
    /// report everything as data, which is correct (just not thin). A device is all data.
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64), BackendError> {
        check_range(offset, max_len, self.size())?;
        if self.device {
            return Ok((true, max_len));
        }
        let fd = self.files.buffered.as_raw_fd();
        let end = offset + max_len;
        let clamp = |pos: libc::off_t| (u64::try_from(pos).unwrap_or(end)).min(end);
        match nix::unistd::lseek(fd, off_t(offset)?, nix::unistd::Whence::SeekData) {
            Ok(data) if clamp(data) > offset => Ok((false, clamp(data) - offset)),
            Ok(_) => match nix::unistd::lseek(fd, off_t(offset)?, nix::unistd::Whence::SeekHole) {
                Ok(hole) if clamp(hole) > offset => Ok((true, clamp(hole) - offset)),
                _ => Ok((true, max_len)),
            },
            // ENXIO: no data at or after offset.
            Err(Errno::ENXIO) => Ok((false, max_len)),
            Err(_) => Ok((true, max_len)),
        }
    }

    fn supports_discard(&self) -> bool {
        true
    }

    /// A device is measured again (an LV extended, a disk grown); a file is extended sparsely to
    /// `size` when that is given, else measured again (grown with `truncate` from outside).
    /// Growth and I/O may run at once: the file is extended before the new size is exposed.
    fn grow(&self, size: Option<u64>) -> Result<Option<u64>, BackendError> {
        let now = exposed_bytes(&self.files.buffered, self.device, size)?;
        let before = self.size();
        if now < before {
            let what = if self.device {
                "the device"
            } else {
                "the file"
            };
            return Err(BackendError::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} would shrink from {before} to {now} bytes: a LUN only grows while \
                     it is served"
                ),
            ));
        }
        self.size.store(now, Ordering::Release);
        Ok((now > before).then_some(now))
    }

    fn measure_device(&self) -> Result<Option<u64>, BackendError> {
        if self.device {
            self.grow(None)
        } else {
            Ok(None)
        }
    }

    fn kind(&self) -> &'static str {
        if self.device {
            "block"
        } else {
            "file"
        }
    }

    fn files(&self) -> Option<&BackendFiles> {
        Some(&self.files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iser-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A file in /dev/shm (tmpfs) is in memory; one in /var/tmp (a disk file system, which the
    /// O_DIRECT tests rely on too) is not.
    #[test]
    fn files_in_tmpfs_are_in_memory() {
        let shm = PathBuf::from(format!("/dev/shm/iser-file-{}.img", std::process::id()));
        let b = FileBackend::open(&shm, Some(1 << 20), true, false).unwrap();
        assert!(b.files().unwrap().in_memory());
        // Its READs may be sent from the page cache: the span reads back what was written.
        b.write_at(b"page cache", 8192).unwrap();
        let span = b
            .files()
            .unwrap()
            .page_span(8192, 10)
            .expect("a span of a tmpfs file");
        assert_eq!((span.offset(), span.len()), (8192, 10));
        assert_eq!(&span.read(0..10).unwrap()[..], b"page cache");
        assert!(span.read(5..11).is_err(), "past the span");
        drop(b);
        std::fs::remove_file(&shm).unwrap();
        let dir = PathBuf::from(format!("/var/tmp/iser-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        let b = FileBackend::open(&disk, Some(1 << 20), true, false).unwrap();
        assert!(!b.files().unwrap().in_memory());
        assert!(b.files().unwrap().page_span(0, 4096).is_none());
        drop(b);
        std::fs::remove_file(&disk).unwrap();
    }

    /// copy_file_range between two files, and the refusal (nothing copied) for overlapping
    /// ranges of one file, which the caller then copies through memory.
    #[test]
    fn copies_between_files_inside_the_kernel() {
        let (a, b) = (temp_path("copy-a.img"), temp_path("copy-b.img"));
        let from = FileBackend::open(&a, Some(4 << 20), true, false).unwrap();
        let to = FileBackend::open(&b, Some(4 << 20), true, false).unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i / 4096) as u8).collect();
        from.write_at(&data, 4096).unwrap();
        let (ff, tf) = (from.files().unwrap(), to.files().unwrap());
        assert!(tf.copy_in(ff, 4096, 8192, 3 << 20).unwrap());
        let mut back = vec![0u8; 3 << 20];
        to.read_at(&mut back, 8192).unwrap();
        assert!(back == data);
        assert!(
            !ff.copy_in(ff, 4096, 8192, 1 << 20).unwrap(),
            "overlapping ranges"
        );
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
    }

    #[test]
    fn allocation_reports_data_and_holes() {
        let p = temp_path("alloc.img");
        let b = FileBackend::open(&p, Some(8 << 20), true, false).unwrap();
        b.write_at(&[0xAB; 4096], 4 << 20).unwrap();
        // Written data is always reported mapped, whatever the file system supports.
        let (mapped, len) = b.allocation(4 << 20, 4096).unwrap();
        assert!(mapped);
        assert_eq!(len, 4096);
        // A hole is reported deallocated where SEEK_HOLE works, up to the data at most.
        let (mapped, len) = b.allocation(0, 8 << 20).unwrap();
        assert!(len > 0 && len <= 8 << 20);
        if !mapped {
            assert!(len <= 4 << 20);
        }
        let (_, len) = b.allocation((4 << 20) + 4096, 100).unwrap();
        assert!(len > 0 && len <= 100);
        assert!(b.allocation(8 << 20, 1).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn create_sparse_and_round_trip() {
        let p = temp_path("rt.img");
        let b = FileBackend::open(&p, Some(8 << 20), true, false).unwrap();
        assert_eq!(b.size(), 8 << 20);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "a created disk image is its owner's alone"
        );
        b.write_at(&[0xAB; 4096], 4096).unwrap();
        b.flush().unwrap();
        let mut buf = [0u8; 8192];
        b.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 0));
        assert!(buf[4096..].iter().all(|&x| x == 0xAB));
        b.discard(4096, 4096).unwrap();
        b.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        b.write_at(&[1; 512], 0).unwrap();
        b.write_zeroes(0, 512).unwrap();
        b.read_at(&mut buf[..512], 0).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 0));
        assert!(b.read_at(&mut buf, (8 << 20) - 100).is_err());
        drop(b);
        // Reopen without size: keeps the file size; a bigger size extends it.
        let b = FileBackend::open(&p, None, false, true).unwrap();
        assert_eq!(b.size(), 8 << 20);
        // Write-through descriptors make FUA implicit; otherwise a file syncs after the write.
        assert_eq!(b.files().unwrap().fua_method(), FuaMethod::Implied);
        let b = FileBackend::open(&p, Some(16 << 20), false, false).unwrap();
        assert_eq!(b.size(), 16 << 20);
        assert_eq!(b.files().unwrap().fua_method(), FuaMethod::SyncAfter);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn empty_or_missing_file_is_an_error() {
        let p = temp_path("empty.img");
        assert!(FileBackend::open(&p, None, false, false).is_err());
        assert!(FileBackend::open(&p, None, true, false).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn block_backend_logic_on_a_regular_file() {
        // No block devices on the test host; the code paths are the same on a file.
        let p = temp_path("blk.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let b = FileBackend::open_device(&p, false).unwrap();
        assert_eq!(b.size(), 1 << 20);
        assert_eq!(b.kind(), "block");
        // Opened as a device, the sparse file has no holes to report.
        assert_eq!(b.allocation(0, 1 << 20).unwrap(), (true, 1 << 20));
        // Unaligned (buffered) and possibly aligned (direct) transfers.
        b.write_at(&[5u8; 100], 10).unwrap();
        let mut v = vec![0u8; 3 * DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - v.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        let aligned = &mut v[start..start + DIRECT_ALIGN];
        aligned.fill(9);
        b.write_at(aligned, 8192).unwrap();
        aligned.fill(0);
        b.read_at(aligned, 8192).unwrap();
        assert!(aligned.iter().all(|&x| x == 9));
        let mut small = [0u8; 110];
        b.read_at(&mut small, 0).unwrap();
        assert!(small[10..110].iter().all(|&x| x == 5));
        b.discard(8192, 4096).unwrap();
        b.read_at(&mut small, 8192).unwrap();
        assert!(small.iter().all(|&x| x == 0));
        b.flush().unwrap();
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_file_grows_while_served_and_never_shrinks() {
        let p = temp_path("grow.img");
        let b = FileBackend::open(&p, Some(1 << 20), true, false).unwrap();
        assert_eq!(b.grow(Some(1 << 20)).unwrap(), None, "same size: no change");
        assert_eq!(b.grow(Some(2 << 20)).unwrap(), Some(2 << 20));
        assert_eq!(
            (b.size(), std::fs::metadata(&p).unwrap().len()),
            (2 << 20, 2 << 20)
        );
        b.write_at(b"past the old end", (2 << 20) - 16).unwrap();
        let shrink = b.grow(Some(1 << 20)).unwrap_err();
        assert!(shrink.to_string().contains("only grows"), "{shrink}");
        assert_eq!(b.size(), 2 << 20);
        // `truncate -s`, from outside.
        let extend = |len: u64| {
            let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            file.set_len(len).unwrap();
        };
        // Without a configured size the file is measured again.
        extend(3 << 20);
        assert_eq!(b.grow(None).unwrap(), Some(3 << 20));
        // A device is measured again whatever the configuration says, and by READ
        // CAPACITY's `measure_device`; a file keeps the size it exposes.
        let d = FileBackend::open_device(&p, false).unwrap();
        extend(4 << 20);
        assert_eq!(d.grow(Some(1)).unwrap(), Some(4 << 20));
        extend(5 << 20);
        assert_eq!(d.measure_device().unwrap(), Some(5 << 20));
        assert_eq!(b.measure_device().unwrap(), None);
        assert_eq!(b.size(), 3 << 20);
        std::fs::remove_file(&p).unwrap();
    }
}
