//! A small safe wrapper over io_uring (the `io-uring` crate) for file and block-device I/O, and
//! readiness polls on sockets so one thread can wait for its I/O and its connections at once.
//!
//! Every operation owns what the kernel touches until its completion has been reaped: the
//! buffer (any [`IoBuf`]: a page-aligned `mem_ffi::Buf`, or a `Vec<u8>`) and the file (`Arc<File>`). Operations are pushed into
//! preallocated slots (no heap allocation per operation in steady state), submitted in batches
//! by one `io_uring_enter`, and reaped in batches as [`Completion`]s carrying the caller's token,
//! the result and the buffer. Short reads and writes are continued inside the ring, so a
//! completion is always all-or-error.
//!
//! A [`Waker`] (an eventfd polled by the ring) lets other threads interrupt [`Ring::wait`], so a
//! thread can sleep in one place for both its own I/O and new work from elsewhere.
//! [`Ring::push_poll`] adds one-shot readiness polls on any descriptor (a socket), and
//! [`Ring::wait_timeout`] bounds the sleep (a connection's timers).
//!
//! This is the only place of the project (besides the other `*-ffi` crates) with `unsafe`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};

/// A buffer the kernel may read from or write into while an operation is in flight.
///
/// # Safety
/// Implementors promise that the memory behind `io_ptr`/`io_mut_ptr` stays valid and at the
/// same address for `io_len` bytes while the value is alive, even when the value itself is
/// moved (a heap allocation, not inline storage), and that nothing else accesses it while the
/// ring owns the value.
pub unsafe trait IoBuf: Send + 'static {
    /// Start of the memory the kernel reads from (writes).
    fn io_ptr(&self) -> *const u8;
    /// Start of the memory the kernel writes into (reads).
    fn io_mut_ptr(&mut self) -> *mut u8;
    /// Number of bytes to transfer.
    fn io_len(&self) -> usize;
}

// SAFETY: a Vec's elements live in a heap allocation that does not move when the Vec is moved;
// the ring owns the Vec for the whole operation, so it is neither resized nor accessed.
unsafe impl IoBuf for Vec<u8> {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: a pool buffer's bytes live in an arena that is never unmapped and does not move when
// the `Buf` is moved; the ring owns the `Buf` for the whole operation, so nothing else touches
// them and the pool does not hand them out again until the `Buf` is dropped after completion.
unsafe impl IoBuf for mem_ffi::Buf {
    fn io_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn io_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn io_len(&self) -> usize {
        self.len()
    }
}

/// Why a ring could not be created.
#[derive(Debug)]
pub enum SetupError {
    /// The kernel has no io_uring, or it is forbidden here (ENOSYS, EPERM from seccomp or the
    /// `kernel.io_uring_disabled` sysctl, or an opcode we need is missing). Callers fall back to
    /// blocking I/O.
    Unavailable(io::Error),
    /// io_uring exists but setup failed for another reason (e.g. out of memory, RLIMIT_MEMLOCK).
    Failed(io::Error),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Unavailable(e) => write!(f, "io_uring unavailable: {e}"),
            SetupError::Failed(e) => write!(f, "io_uring setup failed: {e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// A finished operation.
#[derive(Debug)]
pub struct Completion<T, B> {
    /// The token given when the operation was pushed.
    pub token: T,
    /// Bytes transferred (the whole buffer for reads and writes), the ready events of a poll,
    /// or the error.
    pub result: io::Result<usize>,
    /// The buffer handed over with the operation (`None` for fsync and polls).
    pub buf: Option<B>,
}

/// An operation the ring could not take because all its slots are in use; the caller keeps
/// ownership and retries after reaping completions.
#[derive(Debug)]
pub struct Full<T, B> {
    /// The token of the refused operation.
    pub token: T,
    /// Its buffer, if it had one.
    pub buf: Option<B>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write {
        dsync: bool,
    },
    DataSync,
    /// A one-shot poll for these `poll(2)` events.
    Poll {
        events: u32,
    },
}

/// A descriptor an operation keeps open until it completes (a file, a socket).
type Descriptor = Arc<dyn AsRawFd + Send + Sync>;

/// One operation in flight: everything the kernel may touch is owned here until completion.
struct Slot<T, B> {
    token: T,
    kind: Kind,
    file: Descriptor,
    buf: Option<B>,
    offset: u64,
    /// Bytes already transferred (a short read or write is continued from here).
    done: usize,
}

/// Wakes a thread blocked in [`Ring::wait`] from any thread.
#[derive(Debug)]
pub struct Waker {
    eventfd: File,
}

impl Waker {
    fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let eventfd = unsafe { File::from_raw_fd(fd) };
        Ok(Waker { eventfd })
    }

    /// Makes the ring's next (or current) [`Ring::wait`] return.
    pub fn wake(&self) {
        // EAGAIN means the counter is saturated: a wake-up is pending anyway.
        let _ = (&self.eventfd).write(&1u64.to_ne_bytes());
    }

    fn reset(&self) {
        let mut value = [0u8; 8];
        let _ = (&self.eventfd).read(&mut value);
    }
}

/// user_data of the waker's poll; slot indexes are always smaller.
const WAKER_TOKEN: u64 = u64::MAX;

/// How [`Ring::wait`] and [`Ring::wait_timeout`] wait for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sleep {
    /// In `io_uring_enter` until a completion arrives (the normal mode).
    #[default]
    Block,
    /// Submit without waiting, then wait in `poll(2)` on the ring's descriptor, which is
    /// readable while completions are queued. One system call more per wait; for running
    /// under valgrind, which does not return from an `io_uring_enter` that waits for
    /// completions (valgrind 3.19 on Linux 6.1) but follows `poll`.
    Poll,
}

/// An io_uring instance with a fixed number of operation slots.
pub struct Ring<T, B: IoBuf = Vec<u8>> {
    ring: IoUring,
    sleep: Sleep,
    slots: Vec<Option<Slot<T, B>>>,
    free: Vec<u32>,
    waker: Arc<Waker>,
    waker_armed: bool,
    /// Reused buffer of reaped (user_data, result) pairs.
    reaped: Vec<(u64, i32)>,
}

impl<T, B: IoBuf> Ring<T, B> {
    /// Creates a ring with `slots` operation slots (1..=4096), and arms its waker.
    pub fn new(slots: u32) -> Result<Self, SetupError> {
        let slots = slots.clamp(1, 4096);
        // Room for every slot plus the waker's poll, so the completion queue (twice the
        // submission queue) never overflows.
        let ring = IoUring::new((slots + 1).next_power_of_two()).map_err(classify)?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(classify)?;
        for code in [
            opcode::Read::CODE,
            opcode::Write::CODE,
            opcode::Fsync::CODE,
            opcode::PollAdd::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(SetupError::Unavailable(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported by this kernel"),
                )));
            }
        }
        // Timed waits pass their timeout to io_uring_enter (IORING_FEAT_EXT_ARG, Linux 5.11),
        // which also guarantees no completion is ever dropped (IORING_FEAT_NODROP, Linux 5.5):
        // polls are not bounded by the slot count.
        if !ring.params().is_feature_ext_arg() {
            return Err(SetupError::Unavailable(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring without IORING_FEAT_EXT_ARG (Linux < 5.11)",
            )));
        }
        let waker = Arc::new(Waker::new().map_err(SetupError::Failed)?);
        let mut ring = Ring {
            ring,
            sleep: Sleep::Block,
            slots: (0..slots).map(|_| None).collect(),
            free: (0..slots).rev().collect(),
            waker,
            waker_armed: false,
            reaped: Vec::with_capacity(slots as usize + 1),
        };
        ring.arm_waker();
        Ok(ring)
    }

    /// Chooses how waits wait (see [`Sleep`]).
    pub fn set_sleep(&mut self, sleep: Sleep) {
        self.sleep = sleep;
    }

    /// The waker other threads use to interrupt [`Ring::wait`].
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Operations pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether every slot is in use.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Queues a read of `buf.io_len()` bytes at `offset` into `buf`.
    pub fn push_read(
        &mut self,
        token: T,
        file: Arc<File>,
        offset: u64,
        buf: B,
    ) -> Result<(), Full<T, B>> {
        self.push(token, Kind::Read, file, offset, Some(buf))
    }

    /// Queues a write of `buf` at `offset`; with `dsync` (FUA) the write is durable at
    /// completion (RWF_DSYNC).
    pub fn push_write(
        &mut self,
        token: T,
        file: Arc<File>,
        offset: u64,
        buf: B,
        dsync: bool,
    ) -> Result<(), Full<T, B>> {
        self.push(token, Kind::Write { dsync }, file, offset, Some(buf))
    }

    /// Queues an fdatasync of `file`.
    pub fn push_datasync(&mut self, token: T, file: Arc<File>) -> Result<(), Full<T, B>> {
        self.push(token, Kind::DataSync, file, 0, None)
    }

    /// Queues a one-shot poll of `fd` for `events` (`libc::POLLIN`, `libc::POLLOUT`...); it
    /// completes with the events that are ready (`Ok(revents)`), also `POLLHUP`/`POLLERR` when
    /// the descriptor is shut down. `fd` stays open until then, so a pending poll is ended by
    /// `shutdown(2)` on a socket, not by dropping it. Polls never find the ring full: they get
    /// slots beyond the fixed ones (a connection holds at most a poll or two).
    pub fn push_poll(&mut self, token: T, fd: Descriptor, events: u32) {
        if self.free.is_empty() {
            self.free.push(self.slots.len() as u32);
            self.slots.push(None);
        }
        // A free slot exists now, so this cannot be refused.
        let _ = self.push(token, Kind::Poll { events }, fd, 0, None);
    }

    fn push(
        &mut self,
        token: T,
        kind: Kind,
        file: Descriptor,
        offset: u64,
        buf: Option<B>,
    ) -> Result<(), Full<T, B>> {
        let Some(index) = self.free.pop() else {
            return Err(Full { token, buf });
        };
        self.slots[index as usize] = Some(Slot {
            token,
            kind,
            file,
            buf,
            offset,
            done: 0,
        });
        self.push_slot(index);
        Ok(())
    }

    /// Builds the submission entry for the untransferred part of slot `index` and queues it.
    fn push_slot(&mut self, index: u32) {
        let entry = {
            let slot = self.slots[index as usize]
                .as_mut()
                .expect("pushed slot is occupied");
            let fd = types::Fd(slot.file.as_raw_fd());
            let offset = slot.offset + slot.done as u64;
            let done = slot.done;
            match (slot.kind, slot.buf.as_mut()) {
                (Kind::Read, Some(buf)) => {
                    let left = chunk_len(buf.io_len() - done);
                    // SAFETY: `done <= io_len`, so the pointer stays inside the buffer.
                    let ptr = unsafe { buf.io_mut_ptr().add(done) };
                    opcode::Read::new(fd, ptr, left).offset(offset).build()
                }
                (Kind::Write { dsync }, Some(buf)) => {
                    let left = chunk_len(buf.io_len() - done);
                    // SAFETY: `done <= io_len`, so the pointer stays inside the buffer.
                    let ptr = unsafe { buf.io_ptr().add(done) };
                    let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                    opcode::Write::new(fd, ptr, left)
                        .offset(offset)
                        .rw_flags(flags)
                        .build()
                }
                (Kind::Poll { events }, _) => opcode::PollAdd::new(fd, events).build(),
                _ => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
        };
        self.push_entry(&entry.user_data(u64::from(index)));
    }

    /// Queues one entry, submitting first if the submission queue is full.
    fn push_entry(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry references only memory and descriptors owned by a slot (or
            // the waker's eventfd, owned by `self`), which stay alive until the operation's
            // completion is reaped (`Drop` waits for all of them).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // The submission queue holds at least `slots + 1` entries, so one submit makes
            // room; an error here (e.g. EINTR) is retried by the loop.
            let _ = self.ring.submit();
        }
    }

    fn arm_waker(&mut self) {
        let poll = opcode::PollAdd::new(
            types::Fd(self.waker.eventfd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(WAKER_TOKEN);
        self.push_entry(&poll);
        self.waker_armed = true;
    }

    /// Whether completions wait to be reaped (no system call: for a thread that busy-polls).
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Submits everything queued (one `io_uring_enter`); returns how many entries were taken.
    pub fn submit(&mut self) -> io::Result<usize> {
        loop {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                other => return other,
            }
        }
    }

    /// Submits everything queued and sleeps until at least one operation completes or the
    /// [`Waker`] is woken (a wake-up that happened before the call returns at once).
    pub fn wait(&mut self) -> io::Result<()> {
        if self.sleep == Sleep::Poll {
            return self.poll_wait(None);
        }
        if !self.ring.completion().is_empty() {
            return self.submit().map(drop);
        }
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            // EINTR: a signal; EBUSY: completions to reap first. Both just return.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Like [`Ring::wait`], but returns after `timeout` at the latest (`None`: no limit).
    pub fn wait_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let Some(timeout) = timeout else {
            return self.wait();
        };
        if self.sleep == Sleep::Poll {
            return self.poll_wait(Some(timeout));
        }
        if !self.ring.completion().is_empty() || timeout.is_zero() {
            return self.submit().map(drop);
        }
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            // ETIME: the timeout passed; EINTR: a signal; EBUSY: completions to reap first.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// [`Sleep::Poll`]'s wait: submits, then `poll(2)`s the ring's descriptor, readable while
    /// the completion queue holds entries, until a completion or the timeout.
    fn poll_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.submit()?;
        if !self.ring.completion().is_empty() {
            return Ok(());
        }
        // Rounded up: a timed wait does not return before its time.
        let ms = timeout.map_or(-1, |t| {
            t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        });
        let mut fd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd that outlives the call; the ring's descriptor stays
        // open while `self` is borrowed.
        if unsafe { libc::poll(&mut fd, 1, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Moves every finished operation into `out` (continuing short transfers in the ring).
    /// Returns how many were added.
    pub fn reap(&mut self, out: &mut Vec<Completion<T, B>>) -> usize {
        let before = out.len();
        loop {
            self.reaped.clear();
            self.reaped.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            if self.reaped.is_empty() {
                break;
            }
            for i in 0..self.reaped.len() {
                let (user_data, result) = self.reaped[i];
                if user_data == WAKER_TOKEN {
                    self.waker.reset();
                    self.waker_armed = false;
                    continue;
                }
                if let Some(done) = self.complete_slot(user_data as u32, result) {
                    out.push(done);
                }
            }
        }
        if !self.waker_armed {
            self.arm_waker();
        }
        out.len() - before
    }

    /// Accounts one completion of slot `index`: continues a short transfer, or frees the slot.
    fn complete_slot(&mut self, index: u32, result: i32) -> Option<Completion<T, B>> {
        let slot = self.slots[index as usize]
            .as_mut()
            .expect("completion for an occupied slot");
        let total = slot.buf.as_ref().map_or(0, IoBuf::io_len);
        let outcome = match (slot.kind, result) {
            (_, r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
            (Kind::DataSync, _) => Ok(0),
            (Kind::Poll { .. }, revents) => Ok(revents as usize),
            (Kind::Read, 0) if slot.done < total => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            )),
            (Kind::Write { .. }, 0) if slot.done < total => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write transferred nothing",
            )),
            (_, r) => {
                slot.done += r as usize;
                if slot.done < total {
                    self.push_slot(index);
                    return None;
                }
                Ok(slot.done)
            }
        };
        let slot = self.slots[index as usize].take().expect("slot is occupied");
        self.free.push(index);
        Some(Completion {
            token: slot.token,
            result: outcome,
            buf: slot.buf,
        })
    }
}

/// Largest length one read/write entry carries (the length field is 32 bits).
fn chunk_len(left: usize) -> u32 {
    u32::try_from(left).unwrap_or(1 << 30)
}

/// Sorts setup errors into "io_uring is not usable here" and other failures.
fn classify(e: io::Error) -> SetupError {
    match e.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EOPNOTSUPP) => {
            SetupError::Unavailable(e)
        }
        _ => SetupError::Failed(e),
    }
}

impl<T, B: IoBuf> AsRawFd for Ring<T, B> {
    /// The io_uring descriptor: readable (POLLIN) when completions are waiting, for epoll.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl<T, B: IoBuf> Drop for Ring<T, B> {
    /// Waits for every operation in flight: the kernel may still be using their buffers.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while self.in_flight() > 0 {
            if self.wait().is_err() {
                // The ring is unusable; leak the slots rather than free memory the kernel
                // may still write.
                for slot in self.slots.drain(..) {
                    std::mem::forget(slot);
                }
                return;
            }
            self.reap(&mut sink);
            sink.clear();
        }
    }
}

#[cfg(test)]
mod tests;
