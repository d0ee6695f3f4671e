//! Ceph RBD images as LUNs, through librbd (`rbd-ffi`).
//!
//! The data path is asynchronous ([`AsyncBackend`]): reads, writes, flushes, discards, zeroing
//! and COMPARE AND WRITE are submitted to librbd and complete on librbd's threads. The
//! blocking [`Backend`] methods serve the rare commands the engine runs on its blocking pool
//! (WRITE SAME with a pattern, ORWRITE, VERIFY, WRITE ATOMIC).
//!
//! The image's size is followed as others resize it (`rbd resize`): [`Backend::size`] reports
//! the new size, which the SCSI layer turns into a new capacity and a CAPACITY DATA HAS
//! CHANGED unit attention.
//!
//! Durability follows the LUN's cache mode: with `write_cache: false` librbd's cache is off,
//! so librbd acknowledges a write only once the OSDs have it (a FUA write needs nothing
//! more); with the cache on, a write is in librbd's volatile cache until a flush
//! (SYNCHRONIZE CACHE, or the flush after a FUA write) completes.
//!
//! An operation the cluster does not answer within `timeout_secs` fails with ETIMEDOUT
//! (librados' op timeouts), which the SCSI layer answers BUSY: a stopped OSD delays the
//! commands of its LUN, never the other LUNs, and never forever.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use mem_ffi::Buf;
use rbd_ffi::{Cluster, Compared, Image};

use super::{
    check_range, AsyncBackend, AsyncDone, AsyncOp, AsyncReply, Backend, BackendError,
    RbdReservationStore,
};
use crate::config::RbdBacking;

/// How long start-up may take to reach the cluster, the pool and the image.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// The largest range librbd (Ceph 16) compares and writes atomically: one 512-byte sector
/// (`ImageCompareAndWriteRequest::prune_object_extents`, librbd/io/ImageRequest.cc).
const LIBRBD_CAW_SECTOR: u64 = 512;

/// A LUN whose blocks live in an RBD image.
pub struct RbdBackend {
    image: Arc<Image>,
    /// The image's size in bytes, updated by librbd's update watch.
    size: Arc<AtomicU64>,
    /// Whether librbd's cache is on: only then does a FUA write need a flush after it.
    cache: bool,
    /// The pool the image is in: the reservations object lives there too.
    pool: String,
    /// The image's name, for messages.
    image_name: String,
}

impl RbdBackend {
    /// Connects to the cluster of `spec.conf` as `spec.user`, opens (or, with `create`,
    /// creates) the image, within `OPEN_DEADLINE` (30 s). `write_cache` turns librbd's cache on.
    pub fn open(spec: &RbdBacking, write_cache: bool) -> Result<Self, BackendError> {
        Self::open_within(spec, write_cache, OPEN_DEADLINE)
    }

    fn open_within(
        spec: &RbdBacking,
        write_cache: bool,
        deadline: Duration,
    ) -> Result<Self, BackendError> {
        let stage = Arc::new(Mutex::new("connecting to the cluster's monitors"));
        let (tx, rx) = mpsc::channel();
        let (spec_for_thread, stage_for_thread) = (spec.clone(), Arc::clone(&stage));
        // librados has its own timeouts for the monitors, but opening an image whose PGs are
        // inactive waits for the OSDs indefinitely: the whole open runs on a thread and is
        // abandoned at the deadline (start-up then fails and the process exits).
        std::thread::Builder::new()
            .name("rbd-open".into())
            .spawn(move || {
                let opened = open_image(&spec_for_thread, write_cache, deadline, |s| {
                    *stage_for_thread.lock().unwrap_or_else(|p| p.into_inner()) = s;
                });
                let _ = tx.send(opened);
            })?;
        let what = format!(
            "RBD image {}/{} (conf {}, user {})",
            spec.pool,
            spec.image,
            spec.conf.display(),
            spec.user
        );
        let image = match rx.recv_timeout(deadline) {
            Ok(Ok(image)) => image,
            Ok(Err((doing, e))) => {
                return Err(BackendError::new(
                    io::Error::from(e.clone()).kind(),
                    format!("{what}: failed {doing}: {e}"),
                ))
            }
            Err(_) => {
                let doing = *stage.lock().unwrap_or_else(|p| p.into_inner());
                return Err(BackendError::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no answer after {}s {doing}", deadline.as_secs()),
                ));
            }
        };
        let size = image
            .size()
            .map_err(|e| BackendError::new(io::ErrorKind::Other, format!("{what}: size: {e}")))?;
        if let Some(wanted) = spec.size.filter(|&s| s != size) {
            log::info!(
                "{what}: existing image of {size} bytes kept (size: {wanted} is for creating it)"
            );
        }
        let followed = Arc::new(AtomicU64::new(size));
        let (setter, image_name) = (Arc::clone(&followed), what.clone());
        image
            .watch_size(move |new| {
                log::info!("{image_name}: resized to {new} bytes");
                setter.store(new, Ordering::Relaxed);
            })
            .map_err(|e| {
                BackendError::new(
                    io::ErrorKind::Other,
                    format!("{what}: watching its size: {e}"),
                )
            })?;
        Ok(RbdBackend {
            image: Arc::new(image),
            size: followed,
            cache: write_cache,
            pool: spec.pool.clone(),
            image_name: spec.image.clone(),
        })
    }

    /// The persistent reservations every gateway of this image shares: the object beside
    /// the image that holds them ([`RbdReservationStore`]).
    pub fn reservation_store(&self) -> Result<RbdReservationStore, BackendError> {
        let fail = |doing: &str, e: rbd_ffi::Error| {
            BackendError::new(
                io::Error::from(e.clone()).kind(),
                format!("RBD image {}/{}: {doing}: {e}", self.pool, self.image_name),
            )
        };
        let id = self.image.id().map_err(|e| fail("reading its id", e))?;
        let name = super::rbd_reservations::object_name(&id);
        let object = self
            .image
            .pool()
            .shared_object(&name)
            .map_err(|e| fail("the reservations object", e))?;
        Ok(RbdReservationStore::new(object, &self.pool, name))
    }
}

/// Connects, opens the pool, opens or creates the image; on failure says which step failed.
fn open_image(
    spec: &RbdBacking,
    write_cache: bool,
    deadline: Duration,
    stage: impl Fn(&'static str),
) -> Result<Image, (&'static str, rbd_ffi::Error)> {
    let timeout = deadline.as_secs().max(1).to_string();
    let op_timeout = spec.timeout_secs.to_string();
    let options = [
        ("rbd_cache", if write_cache { "true" } else { "false" }),
        // Without librbd's cache, let it send a write's data from our buffer instead of
        // copying it first (Ceph's default copies). Safe: librbd holds back an asynchronous
        // write's completion until it has dropped its last reference to the caller's memory
        // (librbd.cc, `UserBufferDeleter`), and rbd-ffi owns the buffer until that completion.
        // With the cache on, librbd keeps written data after completing the write: sharing our
        // buffer would hold each completion back until write-back, so it keeps its copy.
        (
            "rbd_disable_zero_copy_writes",
            if write_cache { "true" } else { "false" },
        ),
        // The target advertises LBPRZ (unmapped blocks read as zeroes): librbd must zero
        // the parts of a discard that do not cover whole objects instead of skipping them.
        ("rbd_skip_partial_discard", "false"),
        ("client_mount_timeout", timeout.as_str()),
        // An operation the OSDs (or monitors) do not answer in time fails with ETIMEDOUT
        // instead of waiting for them forever; the command is then answered BUSY.
        ("rados_osd_op_timeout", op_timeout.as_str()),
        ("rados_mon_op_timeout", op_timeout.as_str()),
    ];
    let connecting = "connecting to the cluster's monitors";
    let cluster =
        Cluster::connect(&spec.conf, &spec.user, &options).map_err(|e| (connecting, e))?;
    stage("opening the pool");
    let pool = cluster
        .pool(&spec.pool)
        .map_err(|e| ("opening the pool", e))?;
    stage("opening the image");
    match pool.open_image(&spec.image) {
        Err(e) if e.errno() == libc::ENOENT && spec.create => {
            let size = spec.size.unwrap_or_default();
            stage("creating the image");
            match pool.create_image(&spec.image, size) {
                Ok(()) => log::info!(
                    "created RBD image {}/{}, {size} bytes",
                    spec.pool,
                    spec.image
                ),
                // Created meanwhile by another gateway: open that one.
                Err(e) if e.errno() == libc::EEXIST => {}
                Err(e) => return Err(("creating the image", e)),
            }
            stage("opening the image");
            pool.open_image(&spec.image)
                .map_err(|e| ("opening the image", e))
        }
        opened => opened.map_err(|e| ("opening the image", e)),
    }
}

fn backend_error(e: rbd_ffi::Error) -> BackendError {
    BackendError::from(io::Error::from(e))
}

impl Backend for RbdBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.image.read(offset, buf).map_err(backend_error)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError> {
        check_range(offset, data.len() as u64, self.size())?;
        self.image.write(offset, data).map_err(backend_error)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.image.flush().map_err(backend_error)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size())?;
        self.image.discard(offset, len).map_err(backend_error)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size())?;
        self.image.write_zeroes(offset, len).map_err(backend_error)
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "rbd"
    }

    fn asynchronous(&self) -> Option<&dyn AsyncBackend> {
        Some(self)
    }
}

impl AsyncBackend for RbdBackend {
    fn submit(&self, op: AsyncOp, done: AsyncDone) {
        let (offset, len) = op_range(&op);
        if let Err(e) = check_range(offset, len, self.size()) {
            return done(Err(e));
        }
        let image = Arc::clone(&self.image);
        // With librbd's cache off, a write completes once the OSDs have it (durable): FUA
        // needs no flush after it.
        let flush_after = |fua: bool| fua && self.cache;
        match op {
            AsyncOp::Read { offset, len } => {
                self.image
                    .aio_read(offset, mem_ffi::pool::global().alloc(len), move |r, buf| {
                        done(r.map(|()| AsyncReply::Data(buf)).map_err(backend_error))
                    })
            }
            AsyncOp::Write { offset, data, fua } => {
                let flush = flush_after(fua);
                self.image.aio_write(offset, data, move |r, _| {
                    then_flush_if(flush, &image, r, done)
                })
            }
            AsyncOp::Flush => self
                .image
                .aio_flush(move |r| done(r.map(|()| AsyncReply::Done).map_err(backend_error))),
            AsyncOp::Discard { ranges } => discard_all(&self.image, ranges, done),
            AsyncOp::WriteZeroes { offset, len, fua } => {
                let flush = flush_after(fua);
                self.image
                    .aio_write_zeroes(offset, len, move |r| then_flush_if(flush, &image, r, done))
            }
            AsyncOp::CompareAndWrite {
                offset,
                compare,
                data,
                fua,
            } => compare_and_write(image, offset, compare, data, flush_after(fua), done),
        }
    }
}

/// The byte range an operation touches (empty for a flush).
fn op_range(op: &AsyncOp) -> (u64, u64) {
    match op {
        AsyncOp::Read { offset, len } => (*offset, *len as u64),
        AsyncOp::Write { offset, data, .. } => (*offset, data.len() as u64),
        AsyncOp::Flush => (0, 0),
        AsyncOp::Discard { ranges } => {
            let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
            let end = ranges
                .iter()
                .map(|r| r.0.saturating_add(r.1))
                .max()
                .unwrap_or(0);
            (start, end.saturating_sub(start))
        }
        AsyncOp::WriteZeroes { offset, len, .. } => (*offset, *len),
        AsyncOp::CompareAndWrite { offset, data, .. } => (*offset, data.len() as u64),
    }
}

/// Reports a completed write; with `flush`, only after a flush has made it durable.
fn then_flush_if(flush: bool, image: &Image, written: Result<(), rbd_ffi::Error>, done: AsyncDone) {
    match written {
        Err(e) => done(Err(backend_error(e))),
        Ok(()) if flush => {
            image.aio_flush(move |r| done(r.map(|()| AsyncReply::Done).map_err(backend_error)))
        }
        Ok(()) => done(Ok(AsyncReply::Done)),
    }
}

/// Discards every range at once; reports when the last completes (the first error wins).
fn discard_all(image: &Image, ranges: Vec<(u64, u64)>, done: AsyncDone) {
    let ranges: Vec<_> = ranges.into_iter().filter(|r| r.1 > 0).collect();
    if ranges.is_empty() {
        return done(Ok(AsyncReply::Done));
    }
    struct Join {
        left: AtomicUsize,
        error: Mutex<Option<BackendError>>,
        done: Mutex<Option<AsyncDone>>,
    }
    let join = Arc::new(Join {
        left: AtomicUsize::new(ranges.len()),
        error: Mutex::new(None),
        done: Mutex::new(Some(done)),
    });
    for (offset, len) in ranges {
        let join = Arc::clone(&join);
        image.aio_discard(offset, len, move |r| {
            if let Err(e) = r {
                join.error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(backend_error(e));
            }
            if join.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let error = join.error.lock().unwrap_or_else(|p| p.into_inner()).take();
                let done = join.done.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(done) = done {
                    done(error.map_or(Ok(AsyncReply::Done), Err));
                }
            }
        });
    }
}

/// Whether librbd compares and writes `len` bytes at `offset` itself (within one sector).
fn fits_librbd_compare_and_write(offset: u64, len: u64) -> bool {
    offset % LIBRBD_CAW_SECTOR + len <= LIBRBD_CAW_SECTOR
}

/// COMPARE AND WRITE. Within one 512-byte sector librbd does it atomically in the OSD, which
/// holds across gateways too. Longer ranges, which Ceph 16 refuses, are read, compared and
/// written here: atomic against this process's I/O because the engine runs the command
/// alone on its LU, but not against another gateway writing the same image. `flush`: make
/// the write durable (FUA with librbd's cache on) before reporting.
fn compare_and_write(
    image: Arc<Image>,
    offset: u64,
    compare: Buf,
    data: Buf,
    flush: bool,
    done: AsyncDone,
) {
    if fits_librbd_compare_and_write(offset, compare.len() as u64) {
        let flusher = Arc::clone(&image);
        image.aio_compare_and_write(offset, compare, data, move |r, _, _| match r {
            Ok(Compared::Mismatch { offset }) => done(Ok(AsyncReply::Miscompare { offset })),
            Ok(Compared::Written) => then_flush_if(flush, &flusher, Ok(()), done),
            Err(e) => done(Err(backend_error(e))),
        });
        return;
    }
    let reader = Arc::clone(&image);
    reader.aio_read(
        offset,
        mem_ffi::pool::global().alloc(compare.len()),
        move |r, medium| {
            if let Err(e) = r {
                return done(Err(backend_error(e)));
            }
            if let Some(at) = medium.iter().zip(compare.iter()).position(|(m, c)| m != c) {
                return done(Ok(AsyncReply::Miscompare { offset: at as u64 }));
            }
            let flusher = Arc::clone(&image);
            image.aio_write(offset, data, move |r, _| {
                then_flush_if(flush, &flusher, r, done)
            });
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_sector_goes_to_librbd_compare_and_write() {
        assert!(fits_librbd_compare_and_write(0, 512));
        assert!(fits_librbd_compare_and_write(4096 + 512, 512));
        assert!(!fits_librbd_compare_and_write(0, 1024));
        assert!(!fits_librbd_compare_and_write(256, 512));
    }

    #[test]
    fn operation_ranges_cover_every_byte_touched() {
        let discard = AsyncOp::Discard {
            ranges: vec![(8192, 512), (1024, 512)],
        };
        assert_eq!(op_range(&discard), (1024, 7680));
        assert_eq!(op_range(&AsyncOp::Flush), (0, 0));
        let write = AsyncOp::Write {
            offset: 4096,
            data: Buf::copy_from_slice(&[0; 1024]),
            fua: false,
        };
        assert_eq!(op_range(&write), (4096, 1024));
        let caw = AsyncOp::CompareAndWrite {
            offset: 512,
            compare: Buf::copy_from_slice(&[0; 512]),
            data: Buf::copy_from_slice(&[1; 512]),
            fua: true,
        };
        assert_eq!(op_range(&caw), (512, 512));
    }
}
