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
//!
//! With `WatchdogSec=` the manager also expects `WATCHDOG=1` more often than that period
//! (`$WATCHDOG_USEC`) and restarts a service that falls silent; the target sends it only while
//! every engine thread answers (`server::Heartbeat`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};

use crate::server::Heartbeat;

/// The environment variable naming the manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog period in microseconds, when the manager keeps one (`WatchdogSec=`).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog period is meant for, when set.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// The service manager that started this process, reached through its notification socket.
#[derive(Debug)]
pub struct ServiceManager {
    socket: UnixDatagram,
    address: SocketAddr,
    /// How often the manager wants to hear `WATCHDOG=1`; `None`: it keeps no watchdog.
    watchdog: Option<Duration>,
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
            Ok(mut manager) => {
                let variable = |name| std::env::var(name).ok();
                manager.watchdog = watchdog_period(
                    variable(WATCHDOG_USEC).as_deref(),
                    variable(WATCHDOG_PID).as_deref(),
                    std::process::id(),
                );
                Some(manager)
            }
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
            watchdog: None,
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

    /// The period within which the manager wants to hear [`ServiceManager::alive`], if it
    /// keeps a watchdog.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The target still serves: feeds the manager's watchdog.
    pub fn alive(&self) {
        self.send("WATCHDOG=1");
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

/// Feeds the service manager's watchdog (`WatchdogSec=`) while every engine thread answers a
/// [`Heartbeat`]: three rounds per period, each checking the answers to the one before, so a
/// stuck thread leaves the manager unfed within the period and it restarts the target.
#[derive(Debug)]
pub struct Watchdog<'a> {
    manager: &'a ServiceManager,
    round: Duration,
    next: Instant,
    asked: Arc<Heartbeat>,
}

impl<'a> Watchdog<'a> {
    /// The watchdog `manager` keeps, if any, its first round started at `now` by `asked`.
    pub fn start(
        manager: &'a ServiceManager,
        now: Instant,
        asked: Arc<Heartbeat>,
    ) -> Option<Watchdog<'a>> {
        let period = manager.watchdog_period()?;
        let round = period / 3;
        log::info!(
            "watchdog: every engine thread answers within {round:?}, or the service manager \
             is no longer told that the target serves (WatchdogSec {period:?})"
        );
        Some(Watchdog {
            manager,
            round,
            next: now + round,
            asked,
        })
    }

    /// How long until the round ends and [`Watchdog::tick`] has work.
    pub fn time_left(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// Once the round has ended: tells the manager the target is alive if every engine thread
    /// answered (else logs which did not), and starts the next round with `ask`.
    pub fn tick(&mut self, now: Instant, ask: impl FnOnce() -> Arc<Heartbeat>) {
        if now < self.next {
            return;
        }
        let silent = self.asked.silent();
        if silent.is_empty() {
            self.manager.alive();
        } else {
            let names: Vec<String> = silent.iter().map(|i| format!("io-engine-{i}")).collect();
            log::error!(
                "watchdog: {} did not answer within {:?}: not telling the service manager \
                 that the target serves",
                names.join(", "),
                self.round
            );
        }
        self.asked = ask();
        self.next = now + self.round;
    }
}

/// The watchdog period of `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` names another process (a
/// child that inherited the variables from the service's main process): sd_watchdog_enabled(3).
fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if pid.is_some_and(|pid| pid.parse() != Ok(own_pid)) {
        return None;
    }
    let usec: u64 = usec?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
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
    fn the_watchdog_is_fed_only_while_every_engine_thread_answers() {
        let name = format!("iser-target-watchdog-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&abstract_address(name.as_bytes()).unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut manager = ServiceManager::connect(OsStr::new(&format!("@{name}"))).unwrap();
        manager.watchdog = Some(Duration::from_secs(30));
        let heard = || {
            let mut buf = [0u8; 64];
            let mut said = Vec::new();
            while let Ok(n) = listener.recv(&mut buf) {
                said.push(String::from_utf8(buf[..n].to_vec()).unwrap());
            }
            said
        };
        // Two engine threads; a round of questions answered by those in `answering`.
        let round = |answering: &[usize]| {
            let heartbeat = Arc::new(Heartbeat::new(2));
            for &index in answering {
                heartbeat.answer(index);
            }
            heartbeat
        };
        let start = Instant::now();
        let mut watchdog = Watchdog::start(&manager, start, round(&[0, 1])).unwrap();
        assert_eq!(watchdog.time_left(start), Duration::from_secs(10));

        watchdog.tick(start + Duration::from_secs(9), || unreachable!("mid-round"));
        assert!(heard().is_empty(), "fed before the round ended");
        // Both answered the first round; thread 1 sits on the second.
        watchdog.tick(start + Duration::from_secs(10), || round(&[0]));
        assert_eq!(heard(), ["WATCHDOG=1"]);
        watchdog.tick(start + Duration::from_secs(20), || round(&[0, 1]));
        assert!(heard().is_empty(), "fed while io-engine-1 was silent");
        watchdog.tick(start + Duration::from_secs(30), || round(&[0, 1]));
        assert_eq!(heard(), ["WATCHDOG=1"], "fed again once it answers");
    }

    #[test]
    fn a_manager_without_a_watchdog_gets_none() {
        let manager = ServiceManager::connect(OsStr::new("@unused")).unwrap();
        assert!(Watchdog::start(&manager, Instant::now(), Arc::new(Heartbeat::new(1))).is_none());
    }

    #[test]
    fn the_watchdog_period_is_for_this_process_only() {
        let period = |usec, pid| watchdog_period(usec, pid, 42);
        assert_eq!(
            period(Some("30000000"), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            period(Some("500000"), Some("42")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            period(Some("500000"), Some("43")),
            None,
            "another process's"
        );
        assert_eq!(period(Some("0"), None), None);
        assert_eq!(period(Some("soon"), None), None);
        assert_eq!(period(None, Some("42")), None);
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
