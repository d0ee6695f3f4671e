//! Telling a service manager what the target is doing, so that systemd's `Type=notify` (or
//! anything else speaking its readiness protocol) knows when the target serves: ready once
//! every portal listens, reloading while SIGHUP is applied, stopping while in-flight commands
//! finish. Without it a manager would call the target started as soon as the process exists,
//! and start the units ordered after it (mounts of its own LUNs, say) before a login can work.
//!
//! The protocol (sd_notify(3)): each state is one datagram of newline-separated `KEY=VALUE`
//! lines sent to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`, a file-system path or, with a
//! leading `@`, a name in Linux's abstract namespace. Nothing answers; a manager that is gone
//! costs a logged warning, never the service.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// The environment variable naming the manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The service manager that started this process, reached through its notification socket.
#[derive(Debug)]
pub struct ServiceManager {
    socket: UnixDatagram,
    address: SocketAddr,
    /// Only the first failure to send is logged: a manager that went away stays away.
    failed: AtomicBool,
}

impl ServiceManager {
    /// The manager named by `$NOTIFY_SOCKET`; `None` when the variable is unset or empty (the
    /// process was not started by one), or when it names no usable socket (logged).
    pub fn from_environment() -> Option<ServiceManager> {
        let name = std::env::var_os(NOTIFY_SOCKET)?;
        if name.is_empty() {
            return None;
        }
        match ServiceManager::connect(&name) {
            Ok(manager) => Some(manager),
            Err(e) => {
                log::warn!(
                    "{NOTIFY_SOCKET}={}: not a usable notification socket ({e}); the service \
                     manager will not hear when the target is ready",
                    name.to_string_lossy()
                );
                None
            }
        }
    }

    /// A manager listening on `name`: a path, or `@` and an abstract name.
    pub fn connect(name: &OsStr) -> io::Result<ServiceManager> {
        let address = socket_address(name)?;
        Ok(ServiceManager {
            socket: UnixDatagram::unbound()?,
            address,
            failed: AtomicBool::new(false),
        })
    }

    /// The target serves: every portal listens. `status` is the one-line state that
    /// `systemctl status` shows.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A SIGHUP is being applied; [`ServiceManager::ready`] follows when it is done. The
    /// timestamp is what systemd's `Type=notify-reload` matches against the reload it asked for.
    pub fn reloading(&self) {
        let mut message = String::from("RELOADING=1");
        if let Some(now) = monotonic_now() {
            message.push_str(&format!("\nMONOTONIC_USEC={}", now.as_micros()));
        }
        self.send(&message);
    }

    /// The target is shutting down: in-flight commands finish, then the backends are flushed.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: finishing in-flight commands");
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!("cannot notify the service manager ({NOTIFY_SOCKET}): {e}");
            }
        }
    }
}

/// The socket address `$NOTIFY_SOCKET` names: a path (absolute, as systemd sets it), or `@`
/// followed by a name in the abstract namespace (sd_notify(3)).
fn socket_address(name: &OsStr) -> io::Result<SocketAddr> {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((b'@', abstract_name)) => abstract_address(abstract_name),
        Some((b'/', _)) => SocketAddr::from_pathname(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name (@...)",
        )),
    }
}

fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

/// CLOCK_MONOTONIC, the clock systemd's reload timestamps use.
fn monotonic_now() -> Option<Duration> {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .map(Duration::from)
}

/// A status fits on one line: a newline would start another `KEY=VALUE` assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manager's end of the protocol: a bound datagram socket and what arrived on it.
    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// A socket path of this test process's own.
    fn scratch_path(tag: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn each_state_is_one_datagram_to_a_path() {
        let path = scratch_path("path");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let manager = ServiceManager::connect(path.as_os_str()).unwrap();

        manager.ready("serving 1 target\non 2 portals");
        assert_eq!(
            receive(&listener),
            "READY=1\nSTATUS=serving 1 target on 2 portals"
        );
        manager.reloading();
        let reloading = receive(&listener);
        let mut lines = reloading.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("a monotonic timestamp")
            .parse()
            .unwrap();
        assert!(usec > 0);
        manager.stopping();
        assert!(receive(&listener).starts_with("STOPPING=1\n"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_abstract_name_is_written_with_a_leading_at() {
        let name = format!("iser-target-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&abstract_address(name.as_bytes()).unwrap()).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let manager = ServiceManager::connect(OsStr::new(&format!("@{name}"))).unwrap();
        manager.ready("serving");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn a_relative_or_empty_name_is_refused() {
        for name in ["notify", "", "./notify"] {
            assert_eq!(
                ServiceManager::connect(OsStr::new(name))
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::InvalidInput,
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_manager_gone_away_costs_nothing_but_a_warning() {
        let path = scratch_path("gone");
        drop(UnixDatagram::bind(&path).unwrap());
        let manager = ServiceManager::connect(path.as_os_str()).unwrap();
        manager.ready("serving");
        manager.stopping();
        assert!(manager.failed.load(Ordering::Relaxed));
        std::fs::remove_file(&path).unwrap();
    }
}
