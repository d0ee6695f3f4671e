//! A shared RADOS object ([`SharedObject`]): one small object in a pool that several
//! processes, on different hosts, keep one versioned record in (e.g. a logical unit's SCSI
//! persistent reservations, shared by the gateways exporting it). How it is stored, replaced
//! and watched is described on [`SharedObject`].

use std::cell::Cell;
use std::ffi::{c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{c_string, check, sys, Error, Pool};

/// The xattr holding the record's version (NUL-terminated for librados).
const VERSION_XATTR: &[u8] = b"version\0";

/// The first read's buffer: records are small; a larger object is read again at its size.
const FIRST_READ: usize = 4096;

/// Waits between attempts to register a lost watch again: doubling from the first to the
/// last.
const REWATCH_FIRST_DELAY: Duration = Duration::from_millis(100);
const REWATCH_MAX_DELAY: Duration = Duration::from_secs(2);

thread_local! {
    /// Whether this thread is running a watch's `on_event` (where `rados_watch_flush`, which
    /// waits for librados's callbacks, this one included, must not be called).
    static IN_WATCH_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// What a watch reports ([`SharedObject::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent<'a> {
    /// A notification's payload (from any process, this one included). The notifier's wait
    /// ends when the callback returns (it is acknowledged after the callback).
    Notified(&'a [u8]),
    /// The watch had been lost (librados's watch error callback: e.g. the OSD session reset
    /// or the watch timed out) and is registered again: notifications may have been missed
    /// in between, so the caller should read the object again.
    Reestablished,
}

/// A handle on one object of a pool that several processes (on different hosts) keep one
/// versioned record in, replaced by compare-and-swap on the version and announced to every
/// process watching it by watch/notify.
///
/// # Layout
/// The record is the object's data; its version is the xattr `version`, in canonical decimal
/// ASCII. Both are read by one `rados_read_op` and written by one `rados_write_op`, which the
/// OSD applies atomically, so a reader never sees a record with another record's version.
///
/// # Replacing
/// [`SharedObject::replace`] is a compare-and-swap on the version: the write op first checks
/// the version (`rados_write_op_cmpxattr`, or `rados_write_op_create` exclusive when the
/// object must not exist yet), then writes data and version. A failed check fails the whole
/// op, nothing written.
///
/// # Watching
/// [`SharedObject::watch`] registers a RADOS watch (`rados_watch2`); every
/// [`SharedObject::notify`] on the object, from any process, reaches each watcher, and the
/// notifier waits until all of them acknowledged. When librados reports the watch lost (its
/// error callback: the OSD session reset, the watch timed out), a thread of ours registers
/// it again and then reports [`WatchEvent::Reestablished`]: notifications may have been
/// missed in between.
///
/// Dropping the handle removes its watch (if any) and waits until librados has run the
/// callbacks queued on the connection (`rados_watch_flush`); the object itself stays.
pub struct SharedObject {
    pool: Arc<Pool>,
    oid: CString,
    /// The watch, once [`SharedObject::watch`] registered it.
    watch: Mutex<Option<Arc<WatchState>>>,
}

impl SharedObject {
    pub(crate) fn new(pool: Arc<Pool>, name: &str) -> Result<SharedObject, Error> {
        Ok(SharedObject {
            // Named after the first call every later one would fail the same way.
            oid: c_string("rados_read_op_operate", name.as_bytes())?,
            pool,
            watch: Mutex::new(None),
        })
    }

    /// The record and its version; `Ok(None)` when the object does not exist. Record and
    /// version come from one read op, so they belong together. An object without a valid
    /// version (not written by [`replace`](SharedObject::replace)) is EBADMSG.
    pub fn read(&self) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let mut capacity = FIRST_READ;
        loop {
            match self.read_once(capacity)? {
                ReadOnce::Missing => return Ok(None),
                ReadOnce::Read(version, data) => return Ok(Some((version, data))),
                // Grown past the buffer: read again, whole (a new op, consistent again).
                ReadOnce::Larger(size) => {
                    capacity = usize::try_from(size)
                        .map_err(|_| Error::new("rados_read_op_stat", -i64::from(libc::EFBIG)))?;
                }
            }
        }
    }

    /// One read op: size, up to `capacity` bytes of data, and the xattrs.
    fn read_once(&self, capacity: usize) -> Result<ReadOnce, Error> {
        let mut data = vec![0u8; capacity];
        let mut size = 0u64;
        let mut mtime: libc::time_t = 0;
        let mut stat_ret: libc::c_int = 0;
        let mut bytes_read: libc::size_t = 0;
        let mut read_ret: libc::c_int = 0;
        let mut xattrs: sys::RadosXattrsIterT = ptr::null_mut();
        let mut xattrs_ret: libc::c_int = 0;
        let op = ReadOp::new()?;
        // SAFETY: `op` is a fresh read op; every out-pointer and `data` (valid for writes of
        // `capacity` bytes) stays alive and unmoved until the op is released below.
        let ret = unsafe {
            sys::rados_read_op_stat(op.0, &mut size, &mut mtime, &mut stat_ret);
            sys::rados_read_op_read(
                op.0,
                0,
                capacity,
                data.as_mut_ptr().cast(),
                &mut bytes_read,
                &mut read_ret,
            );
            sys::rados_read_op_getxattrs(op.0, &mut xattrs, &mut xattrs_ret);
            sys::rados_read_op_operate(op.0, self.pool.handle, self.oid.as_ptr(), 0)
        };
        // The iterator is librados's allocation whatever the outcome: always ended, only
        // walked when the op and its getxattrs step succeeded.
        let xattrs = XattrsIter(xattrs);
        drop(op);
        if ret == -libc::ENOENT {
            return Ok(ReadOnce::Missing);
        }
        check("rados_read_op_operate", ret.into())?;
        check("rados_read_op_stat", stat_ret.into())?;
        check("rados_read_op_read", read_ret.into())?;
        check("rados_read_op_getxattrs", xattrs_ret.into())?;
        if size > capacity as u64 {
            return Ok(ReadOnce::Larger(size));
        }
        if bytes_read as u64 != size {
            return Err(Error::new("rados_read_op_read", -i64::from(libc::EIO)));
        }
        data.truncate(bytes_read);
        let version = xattrs.version()?;
        Ok(ReadOnce::Read(version, data))
    }

    /// Writes `record` as `version` if the object still holds version `expected` (`None`:
    /// only if it does not exist yet). `Ok(true)`: written; `Ok(false)`: another writer
    /// changed (or removed) it first, nothing written. Atomic in the OSD: one write op
    /// checks the version, writes the data and sets the version.
    pub fn replace(
        &self,
        expected: Option<u64>,
        version: u64,
        record: &[u8],
    ) -> Result<bool, Error> {
        let expected_text = expected.map(|v| v.to_string());
        let version_text = version.to_string();
        let op = WriteOp::new()?;
        // SAFETY: `op` is a fresh write op; the xattr name is NUL-terminated; every buffer
        // is passed with its length and outlives the op (librados copies them anyway).
        let ret = unsafe {
            match &expected_text {
                None => {
                    sys::rados_write_op_create(op.0, sys::LIBRADOS_CREATE_EXCLUSIVE, ptr::null())
                }
                Some(text) => sys::rados_write_op_cmpxattr(
                    op.0,
                    VERSION_XATTR.as_ptr().cast(),
                    sys::LIBRADOS_CMPXATTR_OP_EQ,
                    text.as_ptr().cast(),
                    text.len(),
                ),
            }
            sys::rados_write_op_write_full(op.0, record.as_ptr().cast(), record.len());
            sys::rados_write_op_setxattr(
                op.0,
                VERSION_XATTR.as_ptr().cast(),
                version_text.as_ptr().cast(),
                version_text.len(),
            );
            sys::rados_write_op_operate(
                op.0,
                self.pool.handle,
                self.oid.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        drop(op);
        // What a lost race returns on Ceph 16 (checked by tests/cluster.rs): an exclusive
        // create of an existing object fails with EEXIST; a version that differs fails
        // cmpxattr with ECANCELED; and cmpxattr on a removed object fails with ENOENT.
        match (expected, -ret) {
            (_, 0) => Ok(true),
            (None, libc::EEXIST) | (Some(_), libc::ECANCELED | libc::ENOENT) => Ok(false),
            _ => check("rados_write_op_operate", ret.into()).map(|_| true),
        }
    }

    /// Deletes the object (tests and cleanup; ENOENT when it does not exist).
    pub fn remove(&self) -> Result<(), Error> {
        // SAFETY: the context is open; the name is NUL-terminated.
        let ret = unsafe { sys::rados_remove(self.pool.handle, self.oid.as_ptr()) };
        check("rados_remove", ret.into()).map(drop)
    }

    /// Sends `payload` to every watcher of the object (this process's included) and returns
    /// once all acknowledged it, i.e. once their `on_event` returned: an empty list. When
    /// some did not within `timeout`, the client ids (`client.<id>`) of those that did not
    /// (a watcher [`client_id`](SharedObject::client_id) tells its own). Other failures are
    /// errors.
    ///
    /// librados hands the OSD whole seconds (`timeout_ms / 1000`, where 0 means its own
    /// default), so `timeout` is rounded up to whole seconds, at least one.
    pub fn notify(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u64>, Error> {
        let len = libc::c_int::try_from(payload.len())
            .map_err(|_| Error::new("rados_notify2", -i64::from(libc::EINVAL)))?;
        let mut reply: *mut libc::c_char = ptr::null_mut();
        let mut reply_len: libc::size_t = 0;
        // SAFETY: the context is open; the name is NUL-terminated; `payload` is valid for
        // reads of `len` bytes during the call; the reply out-pointers are valid.
        let ret = unsafe {
            sys::rados_notify2(
                self.pool.handle,
                self.oid.as_ptr(),
                payload.as_ptr().cast(),
                len,
                notify_timeout_ms(timeout),
                &mut reply,
                &mut reply_len,
            )
        };
        // The reply (who acknowledged, who timed out) is set even on ETIMEDOUT.
        let silent = if reply.is_null() {
            None
        } else {
            // SAFETY: librados allocated `reply_len` bytes at `reply` for us; they are read
            // here and freed once, below.
            let bytes = unsafe { std::slice::from_raw_parts(reply.cast::<u8>(), reply_len) };
            let silent = timed_out_clients(bytes);
            // SAFETY: as above; not used after this.
            unsafe { sys::rados_buffer_free(reply) };
            silent
        };
        match (ret, silent) {
            (0, _) => Ok(Vec::new()),
            (ret, Some(silent)) if ret == -libc::ETIMEDOUT && !silent.is_empty() => Ok(silent),
            (ret, _) => check("rados_notify2", ret.into()).map(|_| Vec::new()),
        }
    }

    /// The client id of this handle's cluster connection (`client.<id>`), as others'
    /// [`notify`](SharedObject::notify) name it when it does not acknowledge.
    pub fn client_id(&self) -> u64 {
        self.pool.cluster.instance_id()
    }

    /// Watches the object: `on_event` gets each notification ([`WatchEvent::Notified`], on
    /// a librados thread; acknowledged when it returns) and, after the watch was lost and
    /// registered again, [`WatchEvent::Reestablished`] (on a thread of ours, so it may run
    /// concurrently with a notification). Registering again is retried with a short backoff
    /// until it succeeds or this handle is dropped.
    ///
    /// Watching creates nothing: a missing object is ENOENT, so callers
    /// [`replace`](SharedObject::replace) first. One watch per handle: a second is EBUSY.
    ///
    /// `on_event` must return promptly (notifiers wait for it, and librados delivers every
    /// watch's callbacks of a cluster connection on one thread), must not call
    /// [`notify`](SharedObject::notify) (its own acknowledgement could not be sent), and
    /// must not panic (the process aborts).
    pub fn watch(
        &self,
        on_event: impl Fn(WatchEvent<'_>) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let mut slot = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(Error::new("rados_watch2", -i64::from(libc::EBUSY)));
        }
        let state = Arc::new(WatchState {
            pool: Arc::clone(&self.pool),
            oid: self.oid.clone(),
            on_event: Box::new(on_event),
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
        });
        let cookie = match state.register() {
            Ok(cookie) => cookie,
            Err(e) => {
                // No watch is registered, but librados may still have queued a callback
                // for this attempt: the state must outlive it.
                flush_or_leak(state);
                return Err(e);
            }
        };
        let mut inner = state.lock();
        inner.cookie = Some(cookie);
        inner.ready = true;
        if inner.lost {
            // Lost before we got here: the error callback left the re-watch to us.
            inner.thread = spawn_rewatch(Arc::clone(&state));
        }
        drop(inner);
        *slot = Some(state);
        Ok(())
    }
}

impl Drop for SharedObject {
    fn drop(&mut self) {
        let Some(state) = self
            .watch
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        if IN_WATCH_CALLBACK.with(Cell::get) {
            // Stopping waits for librados's callbacks, the one running here included.
            let keep = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("rados-unwatch".into())
                .spawn(move || stop(state));
            match spawned {
                Ok(_) => drop(keep),
                Err(e) => {
                    log::error!("cannot start a thread to remove a RADOS watch ({e}); leaking it");
                    std::mem::forget(keep);
                }
            }
        } else {
            stop(state);
        }
    }
}

/// What one read op found.
enum ReadOnce {
    Missing,
    Read(u64, Vec<u8>),
    /// The object holds more than the buffer: this many bytes.
    Larger(u64),
}

/// A read op, released when dropped.
struct ReadOp(sys::RadosReadOpT);

impl ReadOp {
    fn new() -> Result<ReadOp, Error> {
        // SAFETY: no arguments; a null result is an allocation failure.
        let op = unsafe { sys::rados_create_read_op() };
        if op.is_null() {
            return Err(Error::new("rados_create_read_op", -i64::from(libc::ENOMEM)));
        }
        Ok(ReadOp(op))
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_read_op, released once, not in use.
        unsafe { sys::rados_release_read_op(self.0) };
    }
}

/// A write op, released when dropped.
struct WriteOp(sys::RadosWriteOpT);

impl WriteOp {
    fn new() -> Result<WriteOp, Error> {
        // SAFETY: no arguments; a null result is an allocation failure.
        let op = unsafe { sys::rados_create_write_op() };
        if op.is_null() {
            return Err(Error::new(
                "rados_create_write_op",
                -i64::from(libc::ENOMEM),
            ));
        }
        Ok(WriteOp(op))
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op, released once, not in use.
        unsafe { sys::rados_release_write_op(self.0) };
    }
}

/// The xattrs a read op returned (maybe null when the op was never sent), ended when
/// dropped.
struct XattrsIter(sys::RadosXattrsIterT);

impl XattrsIter {
    /// The `version` xattr's value; EBADMSG when it is missing or not canonical decimal.
    /// Only called after the op and its getxattrs step succeeded.
    fn version(&self) -> Result<u64, Error> {
        let bad = || Error::new("rados_read_op_getxattrs", -i64::from(libc::EBADMSG));
        if self.0.is_null() {
            return Err(bad());
        }
        let wanted = &VERSION_XATTR[..VERSION_XATTR.len() - 1];
        loop {
            let mut name: *const libc::c_char = ptr::null();
            let mut value: *const libc::c_char = ptr::null();
            let mut len: libc::size_t = 0;
            // SAFETY: the iterator is valid (the op succeeded) and not ended; the
            // out-pointers are valid.
            let ret = unsafe { sys::rados_getxattrs_next(self.0, &mut name, &mut value, &mut len) };
            check("rados_getxattrs_next", ret.into())?;
            if name.is_null() {
                return Err(bad());
            }
            // SAFETY: a non-null name is NUL-terminated and valid until the iterator moves.
            if unsafe { CStr::from_ptr(name) }.to_bytes() != wanted {
                continue;
            }
            let value = if value.is_null() || len == 0 {
                &[][..]
            } else {
                // SAFETY: librados gives `len` bytes at `value`, valid until the iterator
                // moves on or ends (both after this use).
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len) }
            };
            return parse_version(value).ok_or_else(bad);
        }
    }
}

impl Drop for XattrsIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: librados's iterator, ended once.
            unsafe { sys::rados_getxattrs_end(self.0) };
        }
    }
}

/// A version as written by [`SharedObject::replace`]: canonical decimal (the compare is
/// bytewise, so "07" would never match version 7 and is refused).
fn parse_version(text: &[u8]) -> Option<u64> {
    let version: u64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    (version.to_string().as_bytes() == text).then_some(version)
}

/// `timeout` as `rados_notify2` wants it: librados passes the OSD `timeout_ms / 1000`
/// seconds in 32 bits, and 0 means librados's default (`client_notify_timeout`). Rounded
/// up to whole seconds, at least one, at most `u32::MAX`.
/// The client ids listed as timed out in a notify reply (librados.h, `rados_notify2`):
/// `le32 acks, {le64 gid, le64 cookie, le32 len, len bytes}*, le32 timeouts, {le64 gid,
/// le64 cookie}*`. `None` when the reply is cut short.
fn timed_out_clients(reply: &[u8]) -> Option<Vec<u64>> {
    let mut at = 0usize;
    let mut take = |n: usize| {
        let bytes = reply.get(at..at.checked_add(n)?)?;
        at += n;
        Some(bytes)
    };
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize;
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let acks = le32(take(4)?);
    for _ in 0..acks {
        take(16)?;
        let len = le32(take(4)?);
        take(len)?;
    }
    let timeouts = le32(take(4)?);
    let mut clients = Vec::new();
    for _ in 0..timeouts {
        let gid = le64(take(8)?);
        take(8)?;
        if !clients.contains(&gid) {
            clients.push(gid);
        }
    }
    Some(clients)
}

fn notify_timeout_ms(timeout: Duration) -> u64 {
    let secs = timeout
        .as_secs()
        .saturating_add(u64::from(timeout.subsec_nanos() > 0));
    secs.clamp(1, u64::from(u32::MAX)) * 1000
}

/// A watch: what librados's callbacks get as their argument (`Arc::as_ptr`), shared with
/// the re-watch thread. It is freed only after every watch registered with it was removed
/// and `rados_watch_flush` returned ([`stop`]).
struct WatchState {
    pool: Arc<Pool>,
    oid: CString,
    on_event: Box<dyn Fn(WatchEvent<'_>) + Send + Sync>,
    inner: Mutex<Inner>,
    /// Wakes the re-watch thread: the watch was lost, or the handle is being dropped.
    wake: Condvar,
}

/// A watch's changing part.
#[derive(Default)]
struct Inner {
    /// The registered watch's cookie; `None` while registering (again).
    cookie: Option<u64>,
    /// Whether `SharedObject::watch` has stored the first cookie (until then, it and not
    /// the error callback starts the re-watch thread).
    ready: bool,
    /// librados reported the watch lost; not registered again yet.
    lost: bool,
    /// The handle is being dropped: no more registering.
    stopping: bool,
    /// The re-watch thread, started on the first loss.
    thread: Option<JoinHandle<()>>,
}

impl WatchState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a watch with this state as the callbacks' argument; its cookie.
    fn register(self: &Arc<Self>) -> Result<u64, Error> {
        let mut cookie = 0u64;
        // SAFETY: the context is open; the name is NUL-terminated; the callbacks match
        // rados_watchcb2_t and rados_watcherrcb_t; the argument stays valid until the watch
        // is removed and the callbacks flushed (see `stop`).
        let ret = unsafe {
            sys::rados_watch2(
                self.pool.handle,
                self.oid.as_ptr(),
                &mut cookie,
                Some(notified),
                Some(watch_error),
                Arc::as_ptr(self).cast_mut().cast(),
            )
        };
        check("rados_watch2", ret.into())?;
        Ok(cookie)
    }

    /// Removes watch `cookie`; librados forgets it locally whatever the OSD answers, so
    /// each cookie is removed exactly once (a cookie names librados's watch object).
    fn unregister(&self, cookie: u64) {
        // SAFETY: the context is open; `cookie` is a registered watch, removed once.
        let ret = unsafe { sys::rados_unwatch2(self.pool.handle, cookie) };
        if ret < 0 {
            log::warn!(
                "removing the watch on RADOS object {:?}: {}",
                self.oid,
                Error::new("rados_unwatch2", ret.into())
            );
        }
    }

    /// Runs `on_event`; a panic aborts (it must not unwind into librados).
    fn deliver(&self, event: WatchEvent<'_>) {
        let outer = IN_WATCH_CALLBACK.with(|flag| flag.replace(true));
        let run = catch_unwind(AssertUnwindSafe(|| (self.on_event)(event)));
        IN_WATCH_CALLBACK.with(|flag| flag.set(outer));
        if run.is_err() {
            eprintln!("rbd-ffi: a shared object's watch handler panicked; aborting");
            std::process::abort();
        }
    }
}

/// librados's notification callback (on a librados thread): reports the payload, then
/// acknowledges it, which ends the notifier's wait.
unsafe extern "C" fn notified(
    arg: *mut c_void,
    notify_id: u64,
    handle: u64,
    _notifier_id: u64,
    data: *mut c_void,
    data_len: libc::size_t,
) {
    // SAFETY: `arg` is `Arc::as_ptr` of a WatchState whose Arc is kept until the watch is
    // removed and librados's callbacks flushed.
    let state = unsafe { &*arg.cast::<WatchState>() };
    let payload = if data.is_null() || data_len == 0 {
        &[][..]
    } else {
        // SAFETY: librados gives `data_len` bytes at `data` for the callback's duration.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), data_len) }
    };
    state.deliver(WatchEvent::Notified(payload));
    // SAFETY: the context is open (the state holds the pool); the name is NUL-terminated;
    // `notify_id` and `handle` are this notification's; no reply payload.
    let ret = unsafe {
        sys::rados_notify_ack(
            state.pool.handle,
            state.oid.as_ptr(),
            notify_id,
            handle,
            ptr::null(),
            0,
        )
    };
    if ret < 0 {
        log::warn!("{}", Error::new("rados_notify_ack", ret.into()));
    }
}

/// librados's watch error callback (on a librados thread): the watch is lost. Wakes (or
/// starts) the re-watch thread; never blocks on librados.
unsafe extern "C" fn watch_error(arg: *mut c_void, cookie: u64, err: libc::c_int) {
    let ptr = arg.cast::<WatchState>().cast_const();
    // SAFETY: as in `notified`: `ptr` is `Arc::as_ptr` of a WatchState whose Arc is alive
    // until the callbacks are flushed, so taking one more reference is sound.
    let state = unsafe {
        Arc::increment_strong_count(ptr);
        Arc::from_raw(ptr)
    };
    let mut inner = state.lock();
    if inner.stopping || inner.cookie.is_some_and(|current| current != cookie) {
        // Being dropped, or an error of a watch already replaced.
        return;
    }
    log::warn!(
        "watch on RADOS object {:?} lost ({}); registering it again",
        state.oid,
        Error::new("rados_watch2", err.into())
    );
    inner.lost = true;
    state.wake.notify_all();
    if inner.ready && inner.thread.is_none() {
        inner.thread = spawn_rewatch(Arc::clone(&state));
    }
}

/// Starts the re-watch thread (`None`, logged, when no thread can be started: the watch
/// then stays lost until a later error tries again).
fn spawn_rewatch(state: Arc<WatchState>) -> Option<JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("rados-rewatch".into())
        .spawn(move || rewatch(&state));
    match spawned {
        Ok(thread) => Some(thread),
        Err(e) => {
            log::error!("cannot start a thread to register a lost RADOS watch again: {e}");
            None
        }
    }
}

/// The re-watch thread: each time the watch is lost, removes it, registers it again
/// (retrying with a backoff) and reports [`WatchEvent::Reestablished`]. Ends when the handle
/// is dropped.
fn rewatch(state: &Arc<WatchState>) {
    let mut inner = state.lock();
    loop {
        while !inner.lost && !inner.stopping {
            inner = state.wake.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        if inner.stopping {
            return;
        }
        inner.lost = false;
        let old = inner.cookie.take();
        drop(inner);
        if let Some(old) = old {
            state.unregister(old);
        }
        let mut delay = REWATCH_FIRST_DELAY;
        let cookie = loop {
            match state.register() {
                Ok(cookie) => break cookie,
                Err(e) => {
                    log::warn!("registering the watch on {:?} again: {e}", state.oid);
                    let guard = state.lock();
                    let (guard, _) = state
                        .wake
                        .wait_timeout_while(guard, delay, |i| !i.stopping)
                        .unwrap_or_else(|p| p.into_inner());
                    if guard.stopping {
                        return;
                    }
                    delay = (delay * 2).min(REWATCH_MAX_DELAY);
                }
            }
        };
        inner = state.lock();
        // Stored even when stopping: the drop removes it.
        inner.cookie = Some(cookie);
        if inner.stopping {
            return;
        }
        drop(inner);
        state.deliver(WatchEvent::Reestablished);
        inner = state.lock();
    }
}

/// Tears a watch down: ends the re-watch thread, removes the watch, waits until librados
/// has run every callback queued for it, then frees the state.
fn stop(state: Arc<WatchState>) {
    let thread = {
        let mut inner = state.lock();
        inner.stopping = true;
        state.wake.notify_all();
        inner.thread.take()
    };
    if let Some(thread) = thread {
        if thread.join().is_err() {
            log::error!("the RADOS re-watch thread panicked");
        }
    }
    // The thread is gone and the error callback registers nothing once stopping: this is
    // the only watch left.
    let cookie = state.lock().cookie.take();
    if let Some(cookie) = cookie {
        state.unregister(cookie);
    }
    flush_or_leak(state);
}

/// Waits until librados has run every queued watch callback, then drops `state`. Called
/// from a watch callback (where that wait would never end) it leaks `state` instead.
fn flush_or_leak(state: Arc<WatchState>) {
    if IN_WATCH_CALLBACK.with(Cell::get) {
        log::error!("RADOS watch state released inside a watch callback; leaking it");
        std::mem::forget(state);
        return;
    }
    // SAFETY: the cluster is connected (the state's pool holds it).
    let ret = unsafe { sys::rados_watch_flush(state.pool.cluster.handle) };
    if ret < 0 {
        // Callbacks may still be queued: the state must outlive them.
        log::error!(
            "{}; leaking the watch state",
            Error::new("rados_watch_flush", ret.into())
        );
        std::mem::forget(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notify reply as librados.h lays it out: acknowledgements with payloads, then the
    /// watchers that timed out (one client twice: two watches of one connection).
    #[test]
    fn a_notify_reply_names_the_clients_that_timed_out() {
        let mut reply = 2u32.to_le_bytes().to_vec();
        for (gid, payload) in [(4101u64, &b""[..]), (4102, b"ack")] {
            reply.extend_from_slice(&gid.to_le_bytes());
            reply.extend_from_slice(&7u64.to_le_bytes());
            reply.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            reply.extend_from_slice(payload);
        }
        reply.extend_from_slice(&3u32.to_le_bytes());
        for (gid, cookie) in [(4200u64, 1u64), (4300, 2), (4200, 3)] {
            reply.extend_from_slice(&gid.to_le_bytes());
            reply.extend_from_slice(&cookie.to_le_bytes());
        }
        assert_eq!(timed_out_clients(&reply), Some(vec![4200, 4300]));
        for cut in 0..reply.len() {
            assert_eq!(timed_out_clients(&reply[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            timed_out_clients(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Some(vec![]),
            "nobody acknowledged, nobody timed out"
        );
    }

    #[test]
    fn versions_are_canonical_decimal() {
        assert_eq!(parse_version(b"0"), Some(0));
        assert_eq!(parse_version(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"07",
            b"+7",
            b"7 ",
            b"-1",
            b"x",
            b"18446744073709551616",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn notify_timeouts_are_whole_seconds_at_least_one() {
        assert_eq!(notify_timeout_ms(Duration::ZERO), 1000);
        assert_eq!(notify_timeout_ms(Duration::from_millis(1)), 1000);
        assert_eq!(notify_timeout_ms(Duration::from_secs(1)), 1000);
        assert_eq!(notify_timeout_ms(Duration::from_millis(1500)), 2000);
        assert_eq!(notify_timeout_ms(Duration::MAX), u64::from(u32::MAX) * 1000);
    }

    #[test]
    fn shared_objects_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SharedObject>();
    }
}
