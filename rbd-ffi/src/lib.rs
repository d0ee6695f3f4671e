//! `rbd-ffi`: a small safe layer over librados and librbd (Ceph's block images), the only
//! place of the RBD backend with `unsafe` code; every `unsafe` block has a `// SAFETY:` line.
//!
//! * [`Cluster::connect`]: a cluster handle from a `ceph.conf` and a cephx user id.
//! * [`Cluster::pool`] → [`Pool`]: an I/O context; [`Pool::create_image`], [`Pool::open_image`].
//! * [`Image`]: size (followed as others resize it: [`Image::watch_size`]), resizing, blocking
//!   I/O, and asynchronous I/O (`rbd_aio_*`).
//! * [`Pool::shared_object`] → [`SharedObject`]: one small RADOS object several processes keep
//!   a versioned record in, replaced by compare-and-swap and announced by watch/notify.
//!
//! # Asynchronous operations
//! Each `Image::aio_*` call takes its buffers by value and a `done` closure. The buffers belong
//! to the operation until librbd completes it; `done` then receives the result and the buffers
//! back. `done` runs exactly once: on one of librbd's threads after completion, or on the
//! calling thread if librbd refused the submission. It must not block for long (librbd's
//! completion threads are few) and must not drop the last handle of the image.
//!
//! `done` may submit further operations on the same image (to chain them).
//!
//! Dropping an [`Image`] waits until every submitted operation has called its `done`, then
//! closes it; dropped inside a `done`, it is closed on a thread of its own.

mod object;
mod sys;
mod watch;

pub use object::{SharedObject, WatchEvent};

use mem_ffi::Buf;
use std::ffi::{c_void, CString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex};

/// A failed librados/librbd call: which function, and the errno it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    op: &'static str,
    errno: i32,
}

impl Error {
    fn new(op: &'static str, ret: i64) -> Self {
        Error {
            op,
            errno: i32::try_from(-ret).unwrap_or(libc::EIO),
        }
    }

    /// The librados/librbd function that failed.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The (positive) errno of the failure.
    pub fn errno(&self) -> i32 {
        self.errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.op,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(
            io::Error::from_raw_os_error(e.errno).kind(),
            format!("{e} (os error {})", e.errno),
        )
    }
}

/// Turns a C return value into a result (negative values are `-errno`).
fn check(op: &'static str, ret: i64) -> Result<u64, Error> {
    u64::try_from(ret).map_err(|_| Error::new(op, ret))
}

/// A C string from Rust text; an interior NUL is EINVAL.
fn c_string(op: &'static str, s: &[u8]) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::new(op, -i64::from(libc::EINVAL)))
}

/// A connected librados cluster handle.
pub struct Cluster {
    handle: sys::RadosT,
}

// SAFETY: a connected rados_t is documented thread-safe (librados serialises internally).
unsafe impl Send for Cluster {}
// SAFETY: as above; every method takes &self and librados locks internally.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// This connection's client id: it is `client.<id>` to the cluster, in notify replies,
    /// `rados listwatchers` and `ceph osd blocklist ls`.
    pub fn instance_id(&self) -> u64 {
        // SAFETY: the handle is connected for as long as this Cluster lives.
        unsafe { sys::rados_get_instance_id(self.handle) }
    }
}

impl Cluster {
    /// Connects as cephx id `user` (without `client.`), reading `conf`, then applying
    /// `options` (Ceph option name, value) on top, e.g. `("rbd_cache", "false")`.
    pub fn connect(conf: &Path, user: &str, options: &[(&str, &str)]) -> Result<Arc<Self>, Error> {
        let id = c_string("rados_create", user.as_bytes())?;
        let mut handle: sys::RadosT = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; `id` is a NUL-terminated string.
        let ret = unsafe { sys::rados_create(&mut handle, id.as_ptr()) };
        check("rados_create", ret.into())?;
        // From here on, dropping `cluster` calls rados_shutdown, as librados requires.
        let cluster = Cluster { handle };
        let path = c_string("rados_conf_read_file", conf.as_os_str().as_bytes())?;
        // SAFETY: the handle is created and not connected; `path` is NUL-terminated.
        let ret = unsafe { sys::rados_conf_read_file(cluster.handle, path.as_ptr()) };
        check("rados_conf_read_file", ret.into())?;
        for (name, value) in options {
            let name = c_string("rados_conf_set", name.as_bytes())?;
            let value = c_string("rados_conf_set", value.as_bytes())?;
            // SAFETY: the handle is not connected yet; both strings are NUL-terminated.
            let ret = unsafe { sys::rados_conf_set(cluster.handle, name.as_ptr(), value.as_ptr()) };
            check("rados_conf_set", ret.into())?;
        }
        // SAFETY: the handle is configured and not yet connected.
        let ret = unsafe { sys::rados_connect(cluster.handle) };
        check("rados_connect", ret.into())?;
        Ok(Arc::new(cluster))
    }

    /// An I/O context on pool `name` (ENOENT when the pool does not exist).
    pub fn pool(self: &Arc<Self>, name: &str) -> Result<Arc<Pool>, Error> {
        let pool = c_string("rados_ioctx_create", name.as_bytes())?;
        let mut handle: sys::RadosIoctxT = ptr::null_mut();
        // SAFETY: the cluster is connected; `pool` is NUL-terminated; `handle` is an out-pointer.
        let ret = unsafe { sys::rados_ioctx_create(self.handle, pool.as_ptr(), &mut handle) };
        check("rados_ioctx_create", ret.into())?;
        Ok(Arc::new(Pool {
            handle,
            cluster: Arc::clone(self),
        }))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: every Pool holds an Arc of this cluster, so none is left; the handle was
        // created by rados_create and is shut down once.
        unsafe { sys::rados_shutdown(self.handle) };
    }
}

/// A librados I/O context: one pool of a cluster.
pub struct Pool {
    handle: sys::RadosIoctxT,
    /// Keeps the cluster connected while the context lives.
    cluster: Arc<Cluster>,
}

// SAFETY: librados I/O contexts may be used from several threads (librbd does so itself).
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    /// Creates image `name` of `size` bytes with the cluster's default features and object
    /// size (EEXIST when it exists).
    pub fn create_image(&self, name: &str, size: u64) -> Result<(), Error> {
        let name = c_string("rbd_create", name.as_bytes())?;
        let mut order: libc::c_int = 0;
        // SAFETY: the context is open; `name` is NUL-terminated; order 0 asks for the default.
        let ret = unsafe { sys::rbd_create(self.handle, name.as_ptr(), size, &mut order) };
        check("rbd_create", ret.into()).map(drop)
    }

    /// Opens image `name` for reading and writing (ENOENT when it does not exist).
    pub fn open_image(self: &Arc<Self>, name: &str) -> Result<Image, Error> {
        let cname = c_string("rbd_open", name.as_bytes())?;
        let mut handle: sys::RbdImageT = ptr::null_mut();
        // SAFETY: the context is open; `cname` is NUL-terminated; no snapshot (NULL).
        let ret = unsafe { sys::rbd_open(self.handle, cname.as_ptr(), &mut handle, ptr::null()) };
        check("rbd_open", ret.into())?;
        Ok(Image {
            handle,
            in_flight: Arc::new(InFlight::default()),
            watch: Mutex::new(None),
            pool: Arc::clone(self),
        })
    }

    /// A handle on object `name` in this pool (the object need not exist yet): a record
    /// several processes share, see [`SharedObject`]. An interior NUL in `name` is EINVAL.
    pub fn shared_object(self: &Arc<Self>, name: &str) -> Result<SharedObject, Error> {
        SharedObject::new(Arc::clone(self), name)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: every Image holds an Arc of this pool, so none is open; destroyed once.
        unsafe { sys::rados_ioctx_destroy(self.handle) };
    }
}

/// Asynchronous operations submitted and not yet completed, for [`Image`]'s drop.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn begin(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn end(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count -= 1;
        if *count == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            count = self.idle.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What COMPARE AND WRITE found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// The medium matched; the new data is written.
    Written,
    /// The medium differs, first at this byte offset from the start of the compared range;
    /// nothing is written.
    Mismatch { offset: u64 },
}

/// Receives an asynchronous operation's raw return value, the mismatch offset librbd
/// reported (compare-and-write only) and the operation's two buffers.
type Finish = Box<dyn FnOnce(i64, u64, Buf, Buf) + Send>;

/// An operation in flight: owns its buffers and the place librbd writes a mismatch offset.
/// Leaked to librbd as the completion's argument and reclaimed in [`complete`].
struct Pending {
    first: Buf,
    second: Buf,
    mismatch: u64,
    finish: Finish,
    in_flight: Arc<InFlight>,
}

impl Pending {
    fn run(self, ret: i64) {
        let Pending {
            first,
            second,
            mismatch,
            finish,
            in_flight,
        } = self;
        finish(ret, mismatch, first, second);
        in_flight.end();
    }
}

thread_local! {
    /// Whether this thread is running a `done` closure (inside librbd's callback).
    static IN_COMPLETION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// librbd's completion callback (on a librbd thread).
unsafe extern "C" fn complete(c: sys::RbdCompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the Box<Pending> leaked by `Image::submit` for this completion, and
    // librbd calls this callback exactly once per completion.
    let pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
    // SAFETY: `c` is the completion this callback is for; it has completed.
    let ret = unsafe { sys::rbd_aio_get_return_value(c) };
    // SAFETY: nothing refers to the completion after this (librbd allows release here).
    unsafe { sys::rbd_aio_release(c) };
    // Unwinding out of an extern "C" function is undefined behaviour: stop instead.
    IN_COMPLETION.with(|flag| flag.set(true));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pending.run(ret as i64)));
    IN_COMPLETION.with(|flag| flag.set(false));
    if run.is_err() {
        eprintln!("rbd-ffi: an I/O completion handler panicked; aborting");
        std::process::abort();
    }
}

/// An open RBD image.
pub struct Image {
    handle: sys::RbdImageT,
    in_flight: Arc<InFlight>,
    /// The size watch, once [`Image::watch_size`] registered it.
    watch: Mutex<Option<watch::SizeWatch>>,
    /// Keeps the I/O context open while the image is.
    pool: Arc<Pool>,
}

// SAFETY: librbd image handles are thread-safe (ImageCtx locks internally; QEMU and tgt
// submit to one handle from several threads).
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// The raw pointers of an operation's buffers, read before the operation is handed over.
struct Buffers {
    first: *mut libc::c_char,
    second: *const libc::c_char,
    mismatch: *mut u64,
}

impl Image {
    /// The image's pool, so a caller can keep an object beside the image (e.g. a
    /// [`SharedObject`] named after [`Image::id`]).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The image's id (`rbd_get_id`): unlike its name, stable across renames. Old-format
    /// (v1) images have none: EINVAL.
    pub fn id(&self) -> Result<String, Error> {
        // Ids are short (a dozen hex digits); ERANGE asks for a larger buffer.
        let mut len = 64;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: the image is open; `buf` is valid for writes of `len` bytes, and librbd
            // writes at most `len` bytes, NUL included.
            let ret = unsafe { sys::rbd_get_id(self.handle, buf.as_mut_ptr().cast(), len) };
            if ret == -libc::ERANGE && len < 1 << 16 {
                len *= 4;
                continue;
            }
            check("rbd_get_id", ret.into())?;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(len);
            buf.truncate(end);
            return String::from_utf8(buf)
                .map_err(|_| Error::new("rbd_get_id", -i64::from(libc::EILSEQ)));
        }
    }

    /// The image's size in bytes.
    pub fn size(&self) -> Result<u64, Error> {
        let mut size = 0u64;
        // SAFETY: the image is open; `size` is a valid out-pointer.
        let ret = unsafe { sys::rbd_get_size(self.handle, &mut size) };
        check("rbd_get_size", ret.into())?;
        Ok(size)
    }

    /// Resizes the image to `size` bytes (blocking); shrinking discards the data past it.
    pub fn resize(&self, size: u64) -> Result<(), Error> {
        // SAFETY: the image is open; no buffers are involved.
        let ret = unsafe { sys::rbd_resize(self.handle, size) };
        check("rbd_resize", ret.into()).map(drop)
    }

    /// Calls `on_change` with the new size each time the image's size changes, whoever
    /// resized it (this process or another client), until the image is dropped. It runs on
    /// a thread of its own and must not drop the image. A second watch is EBUSY.
    pub fn watch_size(&self, on_change: impl Fn(u64) + Send + 'static) -> Result<(), Error> {
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if watch.is_some() {
            return Err(Error::new("rbd_update_watch", -i64::from(libc::EBUSY)));
        }
        *watch = Some(watch::SizeWatch::start(
            self.handle,
            self.size()?,
            Box::new(on_change),
        )?);
        Ok(())
    }

    /// Fills `buf` from `offset` (blocking).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        // SAFETY: the image is open; `buf` is valid for writes of its length during the call.
        let ret = unsafe { sys::rbd_read(self.handle, offset, buf.len(), buf.as_mut_ptr().cast()) };
        expect_len("rbd_read", ret as i64, buf.len())
    }

    /// Writes `data` at `offset` (blocking).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        // SAFETY: the image is open; `data` is valid for reads of its length during the call.
        let ret = unsafe { sys::rbd_write(self.handle, offset, data.len(), data.as_ptr().cast()) };
        check("rbd_write", ret as i64).map(drop)
    }

    /// Waits until every completed write is durable in the cluster (blocking).
    pub fn flush(&self) -> Result<(), Error> {
        // SAFETY: the image is open.
        let ret = unsafe { sys::rbd_flush(self.handle) };
        check("rbd_flush", ret.into()).map(drop)
    }

    /// Deallocates `len` bytes at `offset` (blocking).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        // SAFETY: the image is open; no buffers are involved.
        let ret = unsafe { sys::rbd_discard(self.handle, offset, len) };
        check("rbd_discard", ret.into()).map(drop)
    }

    /// Sets `len` bytes at `offset` to zeroes (blocking).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        let len = to_size("rbd_write_zeroes", len)?;
        // SAFETY: the image is open; no buffers are involved; no flags.
        let ret = unsafe { sys::rbd_write_zeroes(self.handle, offset, len, 0, 0) };
        check("rbd_write_zeroes", ret as i64).map(drop)
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`; `done` gets the result and `buf`.
    pub fn aio_read<F>(&self, offset: u64, buf: Buf, done: F)
    where
        F: FnOnce(Result<(), Error>, Buf) + Send + 'static,
    {
        let len = buf.len();
        let finish: Finish =
            Box::new(move |ret, _, buf, _| done(expect_len("rbd_aio_read", ret, len), buf));
        self.submit("rbd_aio_read", buf, Buf::empty(), finish, |image, b, c| {
            // SAFETY: `b.first` points at `len` writable bytes owned by the operation until
            // its completion; `c` is a fresh completion.
            i64::from(unsafe { sys::rbd_aio_read(image, offset, len, b.first, c) })
        });
    }

    /// Writes all of `data` at `offset`; `done` gets the result and `data` back.
    pub fn aio_write<F>(&self, offset: u64, data: Buf, done: F)
    where
        F: FnOnce(Result<(), Error>, Buf) + Send + 'static,
    {
        let len = data.len();
        let finish: Finish =
            Box::new(move |ret, _, data, _| done(check("rbd_aio_write", ret).map(drop), data));
        self.submit(
            "rbd_aio_write",
            data,
            Buf::empty(),
            finish,
            |image, b, c| {
                // SAFETY: `b.first` points at `len` bytes owned by the operation until its
                // completion; `c` is a fresh completion.
                i64::from(unsafe { sys::rbd_aio_write(image, offset, len, b.first, c) })
            },
        );
    }

    /// Makes every write completed before the call durable (librbd's cache flushed).
    pub fn aio_flush<F>(&self, done: F)
    where
        F: FnOnce(Result<(), Error>) + Send + 'static,
    {
        let finish: Finish =
            Box::new(move |ret, _, _, _| done(check("rbd_aio_flush", ret).map(drop)));
        self.submit(
            "rbd_aio_flush",
            Buf::empty(),
            Buf::empty(),
            finish,
            |image, _, c| {
                // SAFETY: the image is open; `c` is a fresh completion.
                i64::from(unsafe { sys::rbd_aio_flush(image, c) })
            },
        );
    }

    /// Deallocates `len` bytes at `offset`.
    pub fn aio_discard<F>(&self, offset: u64, len: u64, done: F)
    where
        F: FnOnce(Result<(), Error>) + Send + 'static,
    {
        let finish: Finish =
            Box::new(move |ret, _, _, _| done(check("rbd_aio_discard", ret).map(drop)));
        self.submit(
            "rbd_aio_discard",
            Buf::empty(),
            Buf::empty(),
            finish,
            |image, _, c| {
                // SAFETY: the image is open; no buffers; `c` is a fresh completion.
                i64::from(unsafe { sys::rbd_aio_discard(image, offset, len, c) })
            },
        );
    }

    /// Sets `len` bytes at `offset` to zeroes.
    pub fn aio_write_zeroes<F>(&self, offset: u64, len: u64, done: F)
    where
        F: FnOnce(Result<(), Error>) + Send + 'static,
    {
        let finish: Finish =
            Box::new(move |ret, _, _, _| done(check("rbd_aio_write_zeroes", ret).map(drop)));
        let len = match to_size("rbd_aio_write_zeroes", len) {
            Ok(len) => len,
            Err(e) => return finish(-i64::from(e.errno), 0, Buf::empty(), Buf::empty()),
        };
        self.submit(
            "rbd_aio_write_zeroes",
            Buf::empty(),
            Buf::empty(),
            finish,
            |image, _, c| {
                // SAFETY: the image is open; no buffers; `c` is a fresh completion; no flags.
                i64::from(unsafe { sys::rbd_aio_write_zeroes(image, offset, len, c, 0, 0) })
            },
        );
    }

    /// Atomically: if the image at `offset` equals `compare`, writes `data` (same length)
    /// there. `done` gets what was found and both buffers back. librbd (Ceph 16) refuses
    /// with EINVAL a range that does not lie within one 512-byte sector
    /// (`ImageCompareAndWriteRequest::prune_object_extents` in librbd/io/ImageRequest.cc).
    pub fn aio_compare_and_write<F>(&self, offset: u64, compare: Buf, data: Buf, done: F)
    where
        F: FnOnce(Result<Compared, Error>, Buf, Buf) + Send + 'static,
    {
        let len = compare.len();
        let finish: Finish = Box::new(move |ret, mismatch, compare, data| {
            let result = if ret == -i64::from(libc::EILSEQ) {
                Ok(Compared::Mismatch {
                    offset: mismatch_in_range(mismatch, offset, len),
                })
            } else {
                check("rbd_aio_compare_and_write", ret).map(|_| Compared::Written)
            };
            done(result, compare, data)
        });
        if data.len() != len {
            return finish(-i64::from(libc::EINVAL), 0, compare, data);
        }
        self.submit(
            "rbd_aio_compare_and_write",
            compare,
            data,
            finish,
            |image, b, c| {
                // SAFETY: both buffers hold `len` bytes and `mismatch` a u64, all owned by the
                // operation until its completion; `c` is a fresh completion; no flags.
                let ret = unsafe {
                    sys::rbd_aio_compare_and_write(
                        image, offset, len, b.first, b.second, c, b.mismatch, 0,
                    )
                };
                ret as i64
            },
        );
    }

    /// Hands an operation to librbd: `first`/`second` are its buffers, `call` starts it.
    /// On refusal, `finish` runs here with librbd's error.
    fn submit(
        &self,
        op: &'static str,
        first: Buf,
        second: Buf,
        finish: Finish,
        call: impl FnOnce(sys::RbdImageT, &Buffers, sys::RbdCompletionT) -> i64,
    ) {
        let pending = Box::into_raw(Box::new(Pending {
            first,
            second,
            mismatch: 0,
            finish,
            in_flight: Arc::clone(&self.in_flight),
        }));
        // SAFETY: `pending` was just leaked from a Box and nothing else refers to it yet; the
        // pointers taken point into heap allocations that stay put until it is reclaimed.
        let buffers = unsafe {
            Buffers {
                first: (*pending).first.as_mut_ptr().cast(),
                second: (*pending).second.as_ptr().cast(),
                mismatch: ptr::addr_of_mut!((*pending).mismatch),
            }
        };
        let mut completion: sys::RbdCompletionT = ptr::null_mut();
        // SAFETY: `complete` matches rbd_callback_t; `pending` stays valid until it runs.
        let ret = unsafe {
            sys::rbd_aio_create_completion(pending.cast(), Some(complete), &mut completion)
        };
        if ret < 0 {
            // SAFETY: the completion was not created, so librbd never saw `pending`.
            let pending = unsafe { Box::from_raw(pending) };
            pending.in_flight.begin();
            return pending.run(ret.into());
        }
        self.in_flight.begin();
        let ret = call(self.handle, &buffers, completion);
        if ret < 0 {
            // SAFETY: librbd refused the operation, so it will never complete it: the
            // completion is released unused and `pending` is ours again.
            let pending = unsafe {
                sys::rbd_aio_release(completion);
                Box::from_raw(pending)
            };
            log::debug!("{op} refused: {}", Error::new(op, ret));
            pending.run(ret);
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let closer = Closer {
            handle: self.handle,
            watch: self
                .watch
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            in_flight: Arc::clone(&self.in_flight),
            _pool: Arc::clone(&self.pool),
        };
        if IN_COMPLETION.with(|flag| flag.get()) {
            // Closing waits for librbd's callbacks, this one included: not on this thread.
            let spawned = std::thread::Builder::new()
                .name("rbd-close".into())
                .spawn(move || closer.close());
            if let Err(e) = spawned {
                log::error!("cannot start a thread to close an RBD image ({e}); leaking it");
            }
        } else {
            closer.close();
        }
    }
}

/// What closing an image needs, movable to another thread.
struct Closer {
    handle: sys::RbdImageT,
    watch: Option<watch::SizeWatch>,
    in_flight: Arc<InFlight>,
    _pool: Arc<Pool>,
}

// SAFETY: the handle is only used by `close`, once, after the Image that owned it is gone.
unsafe impl Send for Closer {}

impl Closer {
    fn close(self) {
        if let Some(watch) = self.watch {
            watch.stop();
        }
        self.in_flight.wait_idle();
        // SAFETY: the Image is gone, no operation is in flight, the handle is closed once.
        let ret = unsafe { sys::rbd_close(self.handle) };
        if ret < 0 {
            log::warn!("{}", Error::new("rbd_close", ret.into()));
        }
    }
}

/// The mismatch offset librbd reported, relative to the compared range. Ceph 16 reports it
/// relative to the range (librbd/io/ObjectRequest.cc `ObjectCompareAndWriteRequest`); later
/// releases may report the image offset. Both are accepted: a value inside
/// `offset..offset + len` is taken as an image offset. The two readings agree when `offset` is
/// 0, and a relative value (< `len` ≤ 512) cannot fall inside the range otherwise when the
/// range starts at a multiple of 512.
fn mismatch_in_range(mismatch: u64, offset: u64, len: usize) -> u64 {
    match mismatch.checked_sub(offset) {
        Some(relative) if relative < len as u64 => relative,
        _ => mismatch,
    }
}

/// A length as `size_t` (only fails on 32-bit hosts).
fn to_size(op: &'static str, len: u64) -> Result<usize, Error> {
    usize::try_from(len).map_err(|_| Error::new(op, -i64::from(libc::EINVAL)))
}

/// A read or write that must have moved exactly `len` bytes.
fn expect_len(op: &'static str, ret: i64, len: usize) -> Result<(), Error> {
    let n = check(op, ret)?;
    if n == len as u64 {
        Ok(())
    } else {
        Err(Error::new(op, -i64::from(libc::EIO)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_offset_accepts_relative_and_image_offsets() {
        assert_eq!(mismatch_in_range(100, 12800, 512), 100);
        assert_eq!(mismatch_in_range(12900, 12800, 512), 100);
        assert_eq!(mismatch_in_range(7, 0, 512), 7);
    }

    #[test]
    fn errors_name_the_call_and_keep_errno() {
        let e = check("rbd_open", -i64::from(libc::ENOENT)).unwrap_err();
        assert_eq!((e.op(), e.errno()), ("rbd_open", libc::ENOENT));
        assert!(e.to_string().starts_with("rbd_open: "), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
        assert_eq!(check("rbd_read", 4096), Ok(4096));
        assert!(expect_len("rbd_read", 100, 4096).is_err());
    }
}
