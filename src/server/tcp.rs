//! iSCSI over TCP.
//!
//! Until a connection has logged in it costs no thread: each portal's listener thread accepts,
//! applies the connection caps ([`super::admission`]) and drives every connection still logging
//! in from one `poll` loop ([`login`]), each bounded by `limits.login_timeout_secs`. Only a
//! connection whose login the core accepts is handed to a thread of its own ([`driver`]), with a
//! reader thread feeding it the socket's bytes and a per-session worker pool running the
//! backend I/O. So a host that opens connections and never logs in holds a socket and a few
//! kilobytes each, within its caps, and cannot crowd out a real initiator's login.
//!
//! Threads rather than an event loop once logged in: a connection's work is dominated by
//! backend I/O and socket writes that may block (a slow initiator), and a thread per connection
//! confines each stall to the connection that caused it (docs/architecture.md).

mod driver;
mod login;
mod outbox;
mod resident;

use std::io;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::admission::PortalKey;
use super::Shared;
use crate::iscsi::CoreConfig;

/// Accepts connections on one TCP portal and carries them through login until `stop` is set.
pub(super) fn spawn_listener(
    listener: TcpListener,
    portal: PortalKey,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let local = listener.local_addr()?;
    let poller = login::LoginPoller::new(listener, portal, core, shared);
    std::thread::Builder::new()
        .name(format!("listen-{local}"))
        .spawn(move || poller.run(&stop))
}
