//! Sending a sequence of pieces, some of them lent memory, to a socket with one system call.
//!
//! A TCP transport frames a READ's data with headers and digests of its own and sends them all
//! with one vectored write. When the data is lent (a RAM LUN's memory, see [`crate::shared`]),
//! its I/O vectors are built here from the lent addresses, so the kernel's copy into the socket
//! is the only one and no Rust reference over lent memory is ever made.
//!
//! Locking: while the kernel reads lent memory, this holds the CPU read lock of every memory
//! the call sends from, as [`Lent::copy_to`] does for its copy. TCP copies the bytes into its
//! own buffers inside the system call (no `MSG_ZEROCOPY`), so the bytes one call sends see a
//! WRITE of the same blocks whole or not at all. (Bytes a full socket takes only in a later call
//! may see a WRITE that came in between, as a device reading lent memory may: a READ overlapping
//! a WRITE in flight may return either data, see [`crate::shared`].) The call never waits with
//! a lock held: it sends with `MSG_DONTWAIT`, and on a blocking socket that is full it lets go
//! of the locks, waits for room with poll(2) (for at most the socket's send timeout, which the
//! connection threads of the blocking fallback set) and tries again. A non-blocking socket takes what fits at once, so a writer of the same memory waits
//! at most for the copy of a socket buffer's worth of bytes.
//!
//! Only the first lock is waited for; the others are tried, and a piece whose memory a writer
//! holds (or waits for) ends the call's vector there (the caller sends the rest next time). A
//! thread never waits for a lock while holding another, so two senders and two writers can
//! never wait for each other in a circle.

use crate::shared::Lent;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::RwLockReadGuard;

/// Pieces one call sends at most (Linux UIO_MAXIOV is 1024; this many fit on the stack).
pub const MAX_PIECES: usize = 64;

/// Distinct lent memories one call sends from at most (a RAM LUN's 1 MiB chunks: eight
/// commands' worth at least, which one call rarely holds).
const MAX_MEMORIES: usize = 8;

/// One piece of the byte stream: bytes in memory the caller owns, or bytes lent.
#[derive(Debug, Clone, Copy)]
pub enum SendPiece<'a> {
    /// Bytes in the caller's memory.
    Bytes(&'a [u8]),
    /// Bytes `start..start + len` of a lent range (counted from the start of the range).
    Lent {
        /// The lent range.
        lent: &'a Lent,
        /// First byte to send, from the start of `lent`.
        start: usize,
        /// How many bytes.
        len: usize,
    },
}

impl SendPiece<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            SendPiece::Bytes(bytes) => bytes.len(),
            SendPiece::Lent { len, .. } => *len,
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends `pieces` in order to the socket `fd` with one sendmsg(2) (`MSG_MORE` when `more`:
/// further bytes follow at once), and says how many bytes went, as a vectored write does: a
/// partial send is a short count. At most [`MAX_PIECES`] pieces go per call, fewer when a
/// lent piece's memory is being written (see the module documentation) or is the ninth
/// distinct memory of the call. A full non-blocking socket is [`io::ErrorKind::WouldBlock`]; a
/// blocking one is waited for without locks held, for at most its send timeout (`SO_SNDTIMEO`,
/// as a blocking write would: then [`io::ErrorKind::WouldBlock`] too).
///
/// # Panics
/// When a lent piece names bytes outside its range.
pub fn send_pieces(fd: BorrowedFd<'_>, pieces: &[SendPiece<'_>], more: bool) -> io::Result<usize> {
    loop {
        match send_once(fd, pieces, more) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !nonblocking(fd)? => {
                if !wait_for_room(fd)? {
                    return Err(e);
                }
            }
            result => return result,
        }
    }
}

/// One sendmsg(2) with `MSG_DONTWAIT`, under the read locks of the lent memory it sends from.
fn send_once(fd: BorrowedFd<'_>, pieces: &[SendPiece<'_>], more: bool) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovecs = [empty; MAX_PIECES];
    // The memories locked and their guards; a piece from one more memory ends the vector.
    let mut locks: [Option<(&Lent, RwLockReadGuard<'_, ()>)>; MAX_MEMORIES] = Default::default();
    let (mut count, mut held) = (0, 0);
    for piece in pieces.iter().take(MAX_PIECES) {
        let (base, len) = match *piece {
            SendPiece::Bytes(bytes) => (bytes.as_ptr(), bytes.len()),
            SendPiece::Lent { lent, start, len } => {
                assert!(
                    start.checked_add(len).is_some_and(|end| end <= lent.len()),
                    "piece {start}+{len} outside a lent range of {}",
                    lent.len()
                );
                let mut locked = locks[..held].iter().flatten();
                if !locked.any(|(l, _)| l.same_memory(lent)) {
                    let guard = match held {
                        0 => Some(lent.read_lock()),
                        MAX_MEMORIES => None,
                        _ => lent.try_read_lock(),
                    };
                    let Some(guard) = guard else { break };
                    locks[held] = Some((lent, guard));
                    held += 1;
                }
                (lent.as_ptr().wrapping_add(start), len)
            }
        };
        iovecs[count] = libc::iovec {
            iov_base: base.cast_mut().cast(),
            iov_len: len,
        };
        count += 1;
    }
    // SAFETY: an all-zero `msghdr` is valid (no name, no control data); its vector is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_mut_ptr();
    msg.msg_iovlen = count as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: every iovec names memory that stays mapped for the call: a caller's slice it
    // borrows, or lent memory kept alive by the `Lent` it borrows, inside its range (asserted
    // above). The kernel only reads it, and every lent memory's CPU read lock is held in
    // `locks` until the call returns, so no CPU write of it runs meanwhile.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    drop(locks);
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Whether the socket is in non-blocking mode.
fn nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFL reads the descriptor's flags; `fd` is open for the borrow.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// Waits until the socket has room to send (or an error to report), for at most its send
/// timeout (none: for ever). `false` when the timeout passed first.
fn wait_for_room(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: SO_SNDTIMEO is a `timeval`; `timeout` and `len` are valid for the call to write.
    let got = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&mut timeout as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let ms = timeout.tv_sec * 1000 + (timeout.tv_usec + 999) / 1000;
    let ms = if ms == 0 {
        -1
    } else {
        ms.min(i64::from(i32::MAX)) as i32
    };
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid `pollfd` for an open descriptor, the count given is 1.
    match unsafe { libc::poll(&mut poll, 1, ms) } {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::{zeroes, Region};
    use crate::Pool;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn region_with(pool: &'static Pool, bytes: &[u8]) -> Region {
        let mut region = Region::zeroed(pool, 1 << 20);
        region.write(0, bytes);
        region
    }

    #[test]
    fn bytes_and_lent_pieces_arrive_in_order() {
        let pool = Pool::new();
        let data: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
        let region = region_with(pool, &data);
        let lent = region.lend(1000..9000);
        let zero = zeroes(100);
        let (a, mut b) = UnixStream::pair().unwrap();
        let pieces = [
            SendPiece::Bytes(b"head"),
            SendPiece::Lent {
                lent: &lent,
                start: 500,
                len: 3000,
            },
            SendPiece::Lent {
                lent: &zero,
                start: 0,
                len: 100,
            },
            SendPiece::Lent {
                lent: &lent,
                start: 3500,
                len: 10,
            },
            SendPiece::Bytes(b"tail"),
        ];
        let total: usize = pieces.iter().map(SendPiece::len).sum();
        assert_eq!(send_pieces(a.as_fd(), &pieces, true).unwrap(), total);
        let mut got = vec![0; total];
        b.read_exact(&mut got).unwrap();
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&data[1500..4500]);
        expected.extend_from_slice(&[0; 100]);
        expected.extend_from_slice(&data[4500..4510]);
        expected.extend_from_slice(b"tail");
        assert_eq!(got, expected);
    }

    /// Pieces from more distinct memories than one call locks end the call before the first
    /// piece of one too many; pieces of memories already locked go on.
    #[test]
    fn one_call_sends_from_at_most_eight_memories() {
        let pool = Pool::new();
        let regions: Vec<Region> = (0..10u8).map(|i| region_with(pool, &[i; 10])).collect();
        let lents: Vec<Lent> = regions.iter().map(|r| r.lend(0..10)).collect();
        let mut pieces: Vec<SendPiece> = lents
            .iter()
            .map(|lent| SendPiece::Lent {
                lent,
                start: 0,
                len: 10,
            })
            .collect();
        pieces.insert(1, SendPiece::Bytes(b"x"));
        let (a, mut b) = UnixStream::pair().unwrap();
        assert_eq!(send_pieces(a.as_fd(), &pieces, false).unwrap(), 81);
        assert_eq!(send_pieces(a.as_fd(), &pieces[9..], false).unwrap(), 20);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 101);
        assert_eq!(&got[..11], b"\0\0\0\0\0\0\0\0\0\0x");
        assert!(got[81..91].iter().all(|&x| x == 8));
    }

    /// A piece whose memory a CPU writer holds ends the call's vector before it (only the
    /// first memory is waited for), so the sender never waits for a lock while holding one.
    #[test]
    fn a_memory_being_written_ends_the_vector() {
        let pool = Pool::new();
        let (first, second) = (region_with(pool, &[1; 10]), region_with(pool, &[2; 10]));
        let (a, b) = (first.lend(0..10), second.lend(0..10));
        let piece = |lent| SendPiece::Lent {
            lent,
            start: 0,
            len: 10,
        };
        let pieces = [piece(&a), SendPiece::Bytes(b"x"), piece(&b), piece(&a)];
        let (tx, mut rx) = UnixStream::pair().unwrap();
        let writer = b.write_lock();
        assert_eq!(send_pieces(tx.as_fd(), &pieces, false).unwrap(), 11);
        drop(writer);
        assert_eq!(send_pieces(tx.as_fd(), &pieces[2..], false).unwrap(), 20);
        drop(tx);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        let mut expected = vec![1; 10];
        expected.push(b'x');
        expected.extend_from_slice(&[2; 10]);
        expected.extend_from_slice(&[1; 10]);
        assert_eq!(got, expected);
    }

    /// A full non-blocking socket takes part of the pieces and says how much; the rest is
    /// sent from there once the peer has read.
    #[test]
    fn a_full_socket_reports_a_partial_send() {
        let pool = Pool::new();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
        let region = region_with(pool, &data);
        let lent = region.lend(0..1 << 20);
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut sent = 0;
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        let mut partial = false;
        while sent < data.len() {
            let piece = SendPiece::Lent {
                lent: &lent,
                start: sent,
                len: data.len() - sent,
            };
            match send_pieces(a.as_fd(), &[piece], false) {
                Ok(n) => {
                    partial |= n < data.len() - sent;
                    sent += n;
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    let n = b.read(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
            }
        }
        drop(a);
        b.read_to_end(&mut got).unwrap();
        assert!(partial, "1 MiB does not fit a socket buffer at once");
        assert_eq!(got, data);
    }

    /// A blocking socket that is full is waited for, with the locks let go meanwhile: a writer
    /// of the lent memory gets through while the sender waits for the reader.
    #[test]
    fn a_blocking_send_waits_without_holding_the_lock() {
        let pool = Pool::new();
        let mut region = region_with(pool, &[5; 1 << 20]);
        let lent = region.lend(0..1 << 20);
        let (a, mut b) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < lent.len() {
                let piece = SendPiece::Lent {
                    lent: &lent,
                    start: sent,
                    len: lent.len() - sent,
                };
                sent += send_pieces(a.as_fd(), &[piece], false).unwrap();
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The sender is blocked on the full socket by now; the write must not wait for it.
        region.write(0, &[6; 16]);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert_eq!(got.len(), 1 << 20);
    }

    /// A blocking socket whose peer never reads gives up after its send timeout, as a
    /// blocking write does: a connection thread is not held for ever by a silent initiator.
    #[test]
    fn a_blocking_send_gives_up_after_the_send_timeout() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_write_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let bytes = vec![1u8; 1 << 20];
        let started = std::time::Instant::now();
        let error = loop {
            match send_pieces(a.as_fd(), &[SendPiece::Bytes(&bytes)], false) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    }
}
