//! Sessions across connections: TSIH allocation, the session limits, and reinstatement of a
//! session whose initiator logs in again with the same ISID (RFC 7143 §6.3.5).
//!
//! Normal and discovery sessions have separate limits: a discovery session gives access to no
//! data and needs no authentication, so counting it against `max_sessions` would let anyone who
//! can reach a portal lock real initiators out by holding discovery sessions open.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::admission::LogThrottle;
use crate::config::Transport;
use crate::iscsi::{BindRequest, LoginStatus};

/// At most one line per interval about logins refused for a full session limit.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How a registered session can be told to end.
pub trait SessionControl: Send + Sync {
    /// Ask the session's connection to finish running commands and close.
    fn request_shutdown(&self);
}

/// The identity that decides reinstatement: initiator, ISID and target (RFC 7143 §4.4.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    initiator: String,
    isid: [u8; 6],
    target: Option<String>,
}

/// Where a session's connection comes from, for the status report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOrigin {
    /// `Tcp` or `Iser`.
    pub transport: Transport,
    /// The initiator's address.
    pub peer: String,
}

/// A live session as the status report lists it ([`SessionRegistry::list`]).
#[derive(Debug, Clone)]
pub struct SessionListing {
    pub tsih: u16,
    /// The initiator's name as it logged in.
    pub initiator: String,
    pub isid: [u8; 6],
    /// The target's name; `None` for a discovery session.
    pub target: Option<String>,
    pub origin: SessionOrigin,
    /// When the session was bound (its login completed).
    pub since: Instant,
}

struct Entry {
    key: SessionKey,
    control: Arc<dyn SessionControl>,
    /// What the status report shows (the key holds names folded to lower case).
    listing: SessionListing,
}

struct Sessions {
    next_tsih: u16,
    by_tsih: HashMap<u16, Entry>,
    /// Logins refused for a full session limit are reported at most once per interval.
    refusal_log: LogThrottle,
}

impl Sessions {
    /// Live discovery (`true`) or normal (`false`) sessions.
    fn count(&self, discovery: bool) -> usize {
        self.by_tsih
            .values()
            .filter(|e| e.key.target.is_none() == discovery)
            .count()
    }
}

/// All sessions of the process.
pub struct SessionRegistry {
    sessions: Mutex<Sessions>,
    changed: Condvar,
    max_sessions: usize,
    max_discovery_sessions: usize,
    reinstate_timeout: Duration,
}

/// Keeps a session registered; dropping it ends the registration.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    tsih: u16,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.registry.lock();
        sessions.by_tsih.remove(&self.tsih);
        drop(sessions);
        self.registry.changed.notify_all();
    }
}

impl SessionRegistry {
    /// A registry admitting at most `max_sessions` normal and `max_discovery_sessions` discovery
    /// sessions; a reinstatement waits at most `reinstate_timeout` for the old session to close.
    pub fn new(
        max_sessions: usize,
        max_discovery_sessions: usize,
        reinstate_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(SessionRegistry {
            sessions: Mutex::new(Sessions {
                next_tsih: 1,
                by_tsih: HashMap::new(),
                refusal_log: LogThrottle::new(REFUSAL_LOG_INTERVAL),
            }),
            changed: Condvar::new(),
            max_sessions,
            max_discovery_sessions,
            reinstate_timeout,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // A panic while holding the lock leaves the map consistent (every update is one insert or
        // remove), so poisoning can be ignored.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().by_tsih.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Binds a login to a session. `target_name` is `None` for discovery sessions. Blocks while an
    /// old session with the same identity is being torn down (reinstatement).
    pub fn bind(
        self: &Arc<Self>,
        request: &BindRequest,
        target_name: Option<&str>,
        control: Arc<dyn SessionControl>,
        origin: SessionOrigin,
    ) -> Result<SessionGuard, LoginStatus> {
        if request.tsih != 0 {
            // Adding a connection to an existing session: we allow one connection per session.
            let sessions = self.lock();
            return Err(if sessions.by_tsih.contains_key(&request.tsih) {
                LoginStatus::TOO_MANY_CONNECTIONS
            } else {
                LoginStatus::SESSION_DOES_NOT_EXIST
            });
        }
        let key = SessionKey {
            initiator: request.initiator_name.to_ascii_lowercase(),
            isid: request.isid,
            target: target_name.map(|t| t.to_ascii_lowercase()),
        };
        let deadline = Instant::now() + self.reinstate_timeout;
        let mut sessions = self.lock();
        let mut asked = false;
        // Reinstatement: end the old session with this identity before admitting the new one.
        while let Some(old) = sessions.by_tsih.values().find(|e| e.key == key) {
            if !asked && target_name.is_some() {
                log::info!(
                    "reinstating session of {} (ISID {:02x?})",
                    request.initiator_name,
                    request.isid
                );
                old.control.request_shutdown();
                asked = true;
            } else if target_name.is_none() {
                // Discovery sessions are not reinstated; a duplicate is simply another session.
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                // SERVICE UNAVAILABLE (0x0301, RFC 7143 §11.13.5) tells the initiator to retry later
                // rather than make it wait forever.
                return Err(LoginStatus::SERVICE_UNAVAILABLE);
            }
            sessions = self
                .changed
                .wait_timeout(sessions, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let discovery = key.target.is_none();
        let (live, limit) = if discovery {
            (sessions.count(true), self.max_discovery_sessions)
        } else {
            (sessions.count(false), self.max_sessions)
        };
        if live >= limit {
            if let Some(held_back) = sessions.refusal_log.permit(Instant::now()) {
                let (kind, key) = if discovery {
                    ("discovery", "max_discovery_sessions")
                } else {
                    ("normal", "max_sessions")
                };
                log::warn!(
                    "refused a {kind} session of {}: {limit} are already open (limits.{key}; \
                     {held_back} more refused since the last report)",
                    request.initiator_name,
                );
            }
            return Err(LoginStatus::OUT_OF_RESOURCES);
        }
        let mut tsih = sessions.next_tsih;
        while tsih == 0 || sessions.by_tsih.contains_key(&tsih) {
            tsih = tsih.wrapping_add(1);
        }
        sessions.next_tsih = tsih.wrapping_add(1);
        let listing = SessionListing {
            tsih,
            initiator: request.initiator_name.clone(),
            isid: request.isid,
            target: target_name.map(str::to_string),
            origin,
            since: Instant::now(),
        };
        sessions.by_tsih.insert(
            tsih,
            Entry {
                key,
                control,
                listing,
            },
        );
        Ok(SessionGuard {
            registry: Arc::clone(self),
            tsih,
        })
    }

    /// Every live session, by TSIH.
    pub fn list(&self) -> Vec<SessionListing> {
        let mut all: Vec<SessionListing> = self
            .lock()
            .by_tsih
            .values()
            .map(|e| e.listing.clone())
            .collect();
        all.sort_by_key(|l| l.tsih);
        all
    }

    /// Asks every session for which `ends` holds to end (access revoked by a reload), and
    /// returns them.
    pub fn shut_down_where(&self, ends: impl Fn(&SessionListing) -> bool) -> Vec<SessionListing> {
        let mut ended: Vec<SessionListing> = Vec::new();
        for entry in self.lock().by_tsih.values() {
            if ends(&entry.listing) {
                entry.control.request_shutdown();
                ended.push(entry.listing.clone());
            }
        }
        ended.sort_by_key(|l| l.tsih);
        ended
    }

    /// Asks every session to end (server shutdown).
    pub fn shutdown_all(&self) {
        for entry in self.lock().by_tsih.values() {
            entry.control.request_shutdown();
        }
    }
}

impl SessionGuard {
    /// The TSIH assigned to the session.
    pub fn tsih(&self) -> u16 {
        self.tsih
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter(AtomicUsize);
    impl SessionControl for Counter {
        fn request_shutdown(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn origin() -> SessionOrigin {
        SessionOrigin {
            transport: Transport::Tcp,
            peer: "127.0.0.1:50000".into(),
        }
    }

    fn request(isid: u8) -> BindRequest {
        BindRequest {
            initiator_name: "iqn.2026-11.test:init".into(),
            isid: [0, 2, 0x3d, 0, 0, isid],
            tsih: 0,
            target: Some(0),
        }
    }

    #[test]
    fn allocates_distinct_tsihs_and_enforces_the_limit() {
        let registry = SessionRegistry::new(2, 2, Duration::from_millis(50));
        let a = registry
            .bind(
                &request(1),
                Some("t"),
                Arc::new(Counter::default()),
                origin(),
            )
            .unwrap();
        let b = registry
            .bind(
                &request(2),
                Some("t"),
                Arc::new(Counter::default()),
                origin(),
            )
            .unwrap();
        assert_ne!(a.tsih(), b.tsih());
        assert!(matches!(
            registry.bind(
                &request(3),
                Some("t"),
                Arc::new(Counter::default()),
                origin()
            ),
            Err(LoginStatus::OUT_OF_RESOURCES)
        ));
        drop(a);
        assert!(registry
            .bind(
                &request(3),
                Some("t"),
                Arc::new(Counter::default()),
                origin()
            )
            .is_ok());
    }

    #[test]
    fn discovery_sessions_have_their_own_limit() {
        let registry = SessionRegistry::new(1, 2, Duration::from_millis(50));
        let discovery = |isid| {
            let mut r = request(isid);
            r.target = None;
            r
        };
        let _d1 = registry
            .bind(&discovery(1), None, Arc::new(Counter::default()), origin())
            .unwrap();
        let _d2 = registry
            .bind(&discovery(2), None, Arc::new(Counter::default()), origin())
            .unwrap();
        assert!(matches!(
            registry.bind(&discovery(3), None, Arc::new(Counter::default()), origin()),
            Err(LoginStatus::OUT_OF_RESOURCES)
        ));
        // Full discovery slots leave the normal session slot free.
        let _normal = registry
            .bind(
                &request(4),
                Some("t"),
                Arc::new(Counter::default()),
                origin(),
            )
            .unwrap();
        assert!(matches!(
            registry.bind(
                &request(5),
                Some("t"),
                Arc::new(Counter::default()),
                origin()
            ),
            Err(LoginStatus::OUT_OF_RESOURCES)
        ));
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn reinstatement_shuts_down_the_old_session_first() {
        let registry = SessionRegistry::new(8, 8, Duration::from_secs(5));
        let old_control = Arc::new(Counter::default());
        let old = registry
            .bind(&request(1), Some("t"), old_control.clone(), origin())
            .unwrap();
        let releaser = std::thread::spawn(move || {
            while old_control.0.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        });
        let new = registry.bind(
            &request(1),
            Some("t"),
            Arc::new(Counter::default()),
            origin(),
        );
        assert!(new.is_ok());
        releaser.join().unwrap();
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn reinstatement_times_out_with_a_retry_status() {
        let registry = SessionRegistry::new(8, 8, Duration::from_millis(30));
        let _stuck = registry
            .bind(
                &request(1),
                Some("t"),
                Arc::new(Counter::default()),
                origin(),
            )
            .unwrap();
        assert!(matches!(
            registry.bind(
                &request(1),
                Some("t"),
                Arc::new(Counter::default()),
                origin()
            ),
            Err(LoginStatus::SERVICE_UNAVAILABLE)
        ));
    }

    #[test]
    fn nonzero_tsih_is_refused() {
        let registry = SessionRegistry::new(8, 8, Duration::from_millis(30));
        let a = registry
            .bind(
                &request(1),
                Some("t"),
                Arc::new(Counter::default()),
                origin(),
            )
            .unwrap();
        let mut join = request(1);
        join.tsih = a.tsih();
        assert!(matches!(
            registry.bind(&join, Some("t"), Arc::new(Counter::default()), origin()),
            Err(LoginStatus::TOO_MANY_CONNECTIONS)
        ));
        join.tsih = a.tsih().wrapping_add(100);
        assert!(matches!(
            registry.bind(&join, Some("t"), Arc::new(Counter::default()), origin()),
            Err(LoginStatus::SESSION_DOES_NOT_EXIST)
        ));
    }

    #[test]
    fn sessions_are_listed_as_their_initiators_named_them() {
        let registry = SessionRegistry::new(8, 8, Duration::from_secs(5));
        let mut named = request(2);
        named.initiator_name = "iqn.2026-11.Test:Mixed".into();
        let _b = registry
            .bind(
                &named,
                Some("Target"),
                Arc::new(Counter::default()),
                origin(),
            )
            .unwrap();
        let _a = registry
            .bind(&request(1), None, Arc::new(Counter::default()), origin())
            .unwrap();
        let listed = registry.list();
        let names: Vec<_> = listed
            .iter()
            .map(|l| (l.tsih, l.initiator.as_str(), l.target.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                (1, "iqn.2026-11.Test:Mixed", Some("Target")),
                (2, "iqn.2026-11.test:init", None)
            ]
        );
        assert_eq!(listed[0].origin, origin());
        assert_eq!(listed[0].isid, [0, 2, 0x3d, 0, 0, 2]);
    }
}
