//! iSCSI over TCP.
//!
//! Until a connection has logged in it costs no thread: each portal's listener thread accepts,
//! applies the connection caps ([`super::admission`]) and drives every connection still logging
//! in from one `poll` loop ([`login`]), each bounded by `limits.login_timeout_secs`. So a host
//! that opens connections and never logs in holds a socket and a few kilobytes each, within its
//! caps, and cannot crowd out a real initiator's login.
//!
//! A connection whose login the core accepts has its session bound on a short-lived thread
//! (binding may wait for a reinstated session to close) and then moves to the I/O engine thread
//! that runs its session's commands ([`resident`]): from then on that thread polls its socket,
//! runs the core and writes, without blocking, alongside the other connections living there
//! (docs/architecture.md). Where io_uring is unavailable the engine threads cannot wait for
//! sockets, and a logged-in connection gets a thread of its own and a reader thread instead
//! ([`driver`]).

mod driver;
pub(super) mod link;
mod login;
pub(super) mod outbox;
mod resident;

use std::io;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::admission::PortalKey;
use super::Shared;

/// Accepts connections on one TCP portal and carries them through login until `stop` is set.
pub(super) fn spawn_listener(
    listener: TcpListener,
    portal: PortalKey,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let local = listener.local_addr()?;
    let poller = login::LoginPoller::new(listener, portal, shared);
    std::thread::Builder::new()
        .name(format!("listen-{local}"))
        .spawn(move || poller.run(&stop))
}
