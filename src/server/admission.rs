//! Admission control: caps on the connections open at once per portal and per source address,
//! checked the moment a connection arrives, before a thread, a buffer or a queue pair is spent
//! on it. A host that floods us with connections can then hold at most its own share of a
//! portal, and the process as a whole a bounded number of sockets.
//!
//! The TCP listener asks it about every accepted socket. [`Admission::admit`] takes nothing but a
//! portal and a source address, so an iSER connect-request handler can ask the same before it
//! creates a queue pair. The [`AdmissionTicket`] returned for an admitted connection holds its
//! place and gives it back when dropped, so a connection counts exactly as long as it lives.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Limits, Transport};

/// At most one refusal line per this interval; the line counts those left out.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A portal as admission counts it: TCP and iSER have separate port spaces, so the same address
/// and port may be two portals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortalKey {
    /// Transport of the portal.
    pub transport: Transport,
    /// The address the portal listens on, as configured (a wildcard stays a wildcard).
    pub addr: SocketAddr,
}

impl fmt::Display for PortalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.transport.name())
    }
}

/// Why a connection was not admitted: which cap it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The portal already holds `limits.max_connections_per_portal` connections.
    PortalFull { limit: usize },
    /// The source address already holds `limits.max_connections_per_source` connections.
    SourceFull { limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::PortalFull { limit } => write!(
                f,
                "the portal already has {limit} connections (limits.max_connections_per_portal)"
            ),
            Refusal::SourceFull { limit } => write!(
                f,
                "that address already has {limit} connections (limits.max_connections_per_source)"
            ),
        }
    }
}

/// Lets a few lines through per interval and counts the ones held back, so that a flood of
/// events (refused connections, failing accepts, refused logins) cannot flood the log.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    /// Lines let through per interval.
    burst: u32,
    /// When the current interval began, with its first line.
    window_start: Option<Instant>,
    /// Lines let through since `window_start`.
    in_window: u32,
    held_back: u64,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self::with_burst(interval, 1)
    }

    /// A throttle letting `burst` lines through per `interval`: the first few of a flood say
    /// what it is, the rest are counted.
    pub(crate) fn with_burst(interval: Duration, burst: u32) -> Self {
        LogThrottle {
            interval,
            burst: burst.max(1),
            window_start: None,
            in_window: 0,
            held_back: 0,
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since the last
    /// one; `None` if this one must be held back.
    pub(crate) fn permit(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.interval => {
                if self.in_window < self.burst {
                    self.in_window += 1;
                    Some(0)
                } else {
                    self.held_back += 1;
                    None
                }
            }
            _ => {
                self.window_start = Some(now);
                self.in_window = 1;
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    by_portal: HashMap<PortalKey, usize>,
    by_source: HashMap<IpAddr, usize>,
}

/// The connection caps of the whole process.
pub struct Admission {
    max_per_portal: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
    refusal_log: Mutex<LogThrottle>,
}

/// An admitted connection's place; dropping it frees the place.
#[must_use = "the connection counts only while its ticket is held"]
pub struct AdmissionTicket {
    admission: Arc<Admission>,
    portal: PortalKey,
    source: IpAddr,
}

impl fmt::Debug for AdmissionTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdmissionTicket({} -> {})", self.source, self.portal)
    }
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        release(&mut counts.by_portal, &self.portal);
        release(&mut counts.by_source, &self.source);
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// IPv4 clients of a dual-stack (`::`) portal appear as `::ffff:a.b.c.d`; count them as the
/// IPv4 address they are, so one host has one count whichever portal it reaches.
fn canonical(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Admission {
    /// Caps from the `limits` section of the configuration.
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Admission {
            max_per_portal: limits.max_connections_per_portal as usize,
            max_per_source: limits.max_connections_per_source as usize,
            counts: Mutex::new(Counts::default()),
            refusal_log: Mutex::new(LogThrottle::new(REFUSAL_LOG_INTERVAL)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every update is a few integer operations that cannot panic half-way.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source` to `portal`, or refuses it with a (rate-limited) log
    /// line naming the source and the cap. A transport calls this on every new connection,
    /// before spending anything on it, and closes the connection at once when refused.
    ///
    /// `make_room` is called when the portal is full: it may close one of the portal's
    /// connections that has not logged in yet and return true, and admission is tried once
    /// more; a transport that cannot do that passes `|| false`.
    pub fn admit(
        self: &Arc<Self>,
        portal: PortalKey,
        source: IpAddr,
        make_room: impl FnOnce() -> bool,
    ) -> Result<AdmissionTicket, Refusal> {
        let mut result = self.try_admit(portal, source);
        if matches!(result, Err(Refusal::PortalFull { .. })) && make_room() {
            result = self.try_admit(portal, source);
        }
        result.map_err(|refusal| {
            self.report_refusal(portal, source, refusal, Instant::now());
            refusal
        })
    }

    fn try_admit(
        self: &Arc<Self>,
        portal: PortalKey,
        source: IpAddr,
    ) -> Result<AdmissionTicket, Refusal> {
        let source = canonical(source);
        let mut counts = self.lock();
        let on_source = counts.by_source.get(&source).copied().unwrap_or(0);
        if on_source >= self.max_per_source {
            return Err(Refusal::SourceFull {
                limit: self.max_per_source,
            });
        }
        let on_portal = counts.by_portal.get(&portal).copied().unwrap_or(0);
        if on_portal >= self.max_per_portal {
            return Err(Refusal::PortalFull {
                limit: self.max_per_portal,
            });
        }
        *counts.by_source.entry(source).or_default() += 1;
        *counts.by_portal.entry(portal).or_default() += 1;
        Ok(AdmissionTicket {
            admission: Arc::clone(self),
            portal,
            source,
        })
    }

    /// Logs a refusal, at most one line per interval for the whole process.
    fn report_refusal(&self, portal: PortalKey, source: IpAddr, refusal: Refusal, now: Instant) {
        let permit = self
            .refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .permit(now);
        if let Some(held_back) = permit {
            let more = if held_back > 0 {
                format!(" ({held_back} more refused since the last report)")
            } else {
                String::new()
            };
            log::warn!(
                "refused a connection from {} to portal {portal}: {refusal}{more}",
                canonical(source)
            );
        }
    }
}

/// Descriptors one admitted connection may hold at once: a TCP socket, or an iSER connection's
/// rdma_cm id, completion channel and eventfd, with room to spare.
const DESCRIPTORS_PER_CONNECTION: u64 = 4;
/// Descriptors for everything else: listeners, backing files, io_uring instances and their
/// eventfds, the log.
const DESCRIPTORS_BASE: u64 = 256;

/// Open descriptors the process needs for every portal to reach its connection cap.
pub(crate) fn descriptors_needed(portals: usize, limits: &Limits) -> u64 {
    let per_portal = u64::from(limits.max_connections_per_portal) * DESCRIPTORS_PER_CONNECTION;
    DESCRIPTORS_BASE + portals as u64 * per_portal
}

/// Raises the soft RLIMIT_NOFILE towards `needed` (never above the hard limit, never lower than
/// it was) so that the connection caps, not EMFILE, decide who is refused: the usual soft limit
/// of 1024 is below what 512 connections on each of two portals take. Returns the soft limit
/// in force afterwards.
pub(crate) fn raise_open_file_limit(needed: u64) -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = needed.min(hard);
    if target <= soft {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn admission(per_portal: u32, per_source: u32) -> Arc<Admission> {
        Admission::new(&Limits {
            max_connections_per_portal: per_portal,
            max_connections_per_source: per_source,
            ..Limits::default()
        })
    }

    fn portal(transport: Transport, port: u16) -> PortalKey {
        PortalKey {
            transport,
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        }
    }

    impl Admission {
        fn on_portal(&self, portal: PortalKey) -> usize {
            self.lock().by_portal.get(&portal).copied().unwrap_or(0)
        }

        fn on_source(&self, source: IpAddr) -> usize {
            self.lock().by_source.get(&source).copied().unwrap_or(0)
        }
    }

    fn host(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn source_cap_spans_portals_and_frees_on_drop() {
        let a = admission(100, 2);
        let tcp = portal(Transport::Tcp, 3260);
        let iser = portal(Transport::Iser, 3260);
        let first = a.try_admit(tcp, host(1)).unwrap();
        let _second = a.try_admit(iser, host(1)).unwrap();
        assert_eq!(
            a.try_admit(tcp, host(1)).unwrap_err(),
            Refusal::SourceFull { limit: 2 }
        );
        // Another host is not affected.
        let _other = a.try_admit(tcp, host(2)).unwrap();
        drop(first);
        assert_eq!(a.on_source(host(1)), 1);
        let _again = a.try_admit(tcp, host(1)).unwrap();
        assert_eq!(a.on_portal(tcp), 2);
        assert_eq!(a.on_portal(iser), 1);
    }

    #[test]
    fn portal_cap_counts_tcp_and_iser_portals_apart() {
        let a = admission(2, 100);
        let tcp = portal(Transport::Tcp, 3260);
        let iser = portal(Transport::Iser, 3260);
        let _t1 = a.try_admit(tcp, host(1)).unwrap();
        let t2 = a.try_admit(tcp, host(2)).unwrap();
        assert_eq!(
            a.try_admit(tcp, host(3)).unwrap_err(),
            Refusal::PortalFull { limit: 2 }
        );
        let _i = a.try_admit(iser, host(3)).unwrap();
        drop(t2);
        let _t3 = a.try_admit(tcp, host(3)).unwrap();
    }

    #[test]
    fn a_full_portal_asks_to_make_room_once() {
        let a = admission(1, 100);
        let tcp = portal(Transport::Tcp, 3260);
        let oldest = std::cell::RefCell::new(Some(a.try_admit(tcp, host(1)).unwrap()));
        // Nothing to evict: refused.
        assert_eq!(
            a.admit(tcp, host(2), || false).unwrap_err(),
            Refusal::PortalFull { limit: 1 }
        );
        // Evicting the oldest makes room for the newcomer.
        let newcomer = a.admit(tcp, host(2), || oldest.borrow_mut().take().is_some());
        assert!(newcomer.is_ok());
        assert_eq!(a.on_source(host(1)), 0);
        // A full source is never a reason to evict anyone.
        let b = admission(100, 1);
        let _held = b.try_admit(tcp, host(3)).unwrap();
        let refused = b.admit(tcp, host(3), || panic!("must not be asked"));
        assert_eq!(refused.unwrap_err(), Refusal::SourceFull { limit: 1 });
    }

    #[test]
    fn counts_return_to_zero() {
        let a = admission(4, 4);
        let tcp = portal(Transport::Tcp, 3260);
        let tickets: Vec<_> = (0..4).map(|_| a.try_admit(tcp, host(1)).unwrap()).collect();
        drop(tickets);
        assert_eq!(a.on_portal(tcp), 0);
        assert_eq!(a.on_source(host(1)), 0);
        assert!(a.lock().by_portal.is_empty() && a.lock().by_source.is_empty());
    }

    #[test]
    fn ipv4_mapped_sources_count_as_ipv4() {
        let a = admission(100, 1);
        let tcp = portal(Transport::Tcp, 3260);
        let _v4 = a.try_admit(tcp, host(7)).unwrap();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(
            a.try_admit(tcp, mapped).unwrap_err(),
            Refusal::SourceFull { limit: 1 }
        );
        // A real IPv6 host is its own source.
        let _v6 = a.try_admit(tcp, IpAddr::V6(Ipv6Addr::LOCALHOST)).unwrap();
    }

    #[test]
    fn refusal_names_the_config_key() {
        let portal_full = Refusal::PortalFull { limit: 512 }.to_string();
        assert!(portal_full.contains("512") && portal_full.contains("max_connections_per_portal"));
        let source_full = Refusal::SourceFull { limit: 64 }.to_string();
        assert!(source_full.contains("64") && source_full.contains("max_connections_per_source"));
    }

    #[test]
    fn throttle_lets_one_line_per_interval_and_counts_the_rest() {
        let start = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.permit(start), Some(0));
        for i in 1..=500 {
            assert_eq!(throttle.permit(start + Duration::from_millis(i)), None);
        }
        assert_eq!(throttle.permit(start + Duration::from_secs(10)), Some(500));
        assert_eq!(throttle.permit(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.permit(start + Duration::from_secs(21)), Some(1));
    }

    #[test]
    fn throttle_with_a_burst_lets_that_many_lines_per_interval() {
        let start = Instant::now();
        let mut throttle = LogThrottle::with_burst(Duration::from_secs(10), 3);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(throttle.permit(at(0)), Some(0));
        assert_eq!(throttle.permit(at(1)), Some(0));
        assert_eq!(throttle.permit(at(2)), Some(0));
        for ms in 3..100 {
            assert_eq!(throttle.permit(at(ms)), None);
        }
        // The next interval's first line counts the 97 held back; its burst starts afresh.
        assert_eq!(throttle.permit(at(10_000)), Some(97));
        assert_eq!(throttle.permit(at(10_001)), Some(0));
        assert_eq!(throttle.permit(at(10_002)), Some(0));
        assert_eq!(throttle.permit(at(10_003)), None);
        assert_eq!(throttle.permit(at(30_000)), Some(1));
    }

    #[test]
    fn descriptors_cover_every_portal_at_its_cap() {
        let limits = Limits::default();
        let one = descriptors_needed(1, &limits);
        assert_eq!(one, 256 + 512 * 4);
        assert_eq!(descriptors_needed(3, &limits) - one, 2 * 512 * 4);
    }

    #[test]
    fn open_file_limit_is_raised_within_the_hard_limit_and_never_lowered() {
        use nix::sys::resource::{getrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Asking for less than what is in force changes nothing.
        assert_eq!(raise_open_file_limit(1).unwrap(), soft);
        let wanted = soft.saturating_add(16);
        let now = raise_open_file_limit(wanted).unwrap();
        assert_eq!(now, wanted.min(hard));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (now, hard));
    }
}
