//! Who may connect, as a reloaded configuration changes it: the core configuration each new
//! iSCSI connection starts with, and the sessions a new configuration no longer allows; and
//! how many logins and connects access control and authentication refused ([`Refusals`]).
//!
//! As in LIO, whose `allowed_initiators` counterpart is a node ACL: a login from now on is
//! checked against the new lists and credentials; a live session whose initiator is no longer
//! allowed is ended (removing an ACL ends its sessions, target_core_tpg.c
//! core_tpg_del_initiator_node_acl); a session that logged in with credentials since changed
//! keeps running until it logs in again.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::admission::LogThrottle;
use crate::config::Config;
use crate::iscsi::{CloseReason, CoreConfig, LoginStatus};
use crate::status::RefusalStatus;

/// The core configuration new connections of one transport start with. A reload that
/// changes access control replaces it; connections already running keep theirs.
pub(crate) struct CurrentCore(Mutex<Arc<CoreConfig>>);

impl CurrentCore {
    pub(crate) fn new(core: CoreConfig) -> Arc<Self> {
        Arc::new(CurrentCore(Mutex::new(Arc::new(core))))
    }

    /// What a connection accepted now starts with.
    pub(crate) fn get(&self) -> Arc<CoreConfig> {
        Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes `config`'s targets (ACLs and CHAP credentials) and discovery CHAP for the
    /// connections accepted from now on; `config` differs from the running one in nothing
    /// else the core sees ([`crate::config::Reload::access_changed`]). Returns the new one.
    pub(crate) fn set_access(&self, config: &Config) -> Arc<CoreConfig> {
        let mut current = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut core = CoreConfig::clone(&current);
        core.targets = config
            .targets
            .iter()
            .map(super::target_descriptor)
            .collect();
        core.discovery_auth = config.discovery_auth.clone();
        *current = Arc::new(core);
        Arc::clone(&current)
    }
}

/// Refused logins and connects logged per [`REFUSAL_LOG_INTERVAL`], over both fabrics and all
/// portals; the first line after a flood counts those held back.
const REFUSALS_LOGGED: u32 = 5;
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logins and connects refused since the start, by why: a monitoring system watches them for
/// guessed secrets and misconfigured initiators and hosts (`iser-target status`, the
/// `metrics` endpoint). The transports also log each one through [`Refusals::log`], which
/// keeps a flood of them (a password guesser, a scanner) from flooding the log.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    iscsi_authentication: AtomicU64,
    iscsi_authorization: AtomicU64,
    iscsi_not_found: AtomicU64,
    iscsi_other: AtomicU64,
    nvme_host_not_allowed: AtomicU64,
    nvme_authentication: AtomicU64,
    log: RefusalLog,
}

/// The process-wide rate limit of refusal lines.
#[derive(Debug)]
struct RefusalLog(Mutex<LogThrottle>);

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog(Mutex::new(LogThrottle::with_burst(
            REFUSAL_LOG_INTERVAL,
            REFUSALS_LOGGED,
        )))
    }
}

impl Refusals {
    /// Logs one refused or failed login or connect at warn, unless more than a few came in the
    /// last interval; returns whether the line was logged.
    pub(crate) fn log(&self, now: Instant, line: fmt::Arguments<'_>) -> bool {
        let permit = self
            .log
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .permit(now);
        let Some(held_back) = permit else {
            return false;
        };
        if held_back > 0 {
            log::warn!(
                "{held_back} more failed logins and connects were not logged (at most \
                 {REFUSALS_LOGGED} per {}s; the counts are in `iser-target status`)",
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        }
        log::warn!("{line}");
        true
    }

    /// An iSCSI connection ended for `reason`: counted when its login failed.
    pub(crate) fn iscsi_closed(&self, reason: &CloseReason) {
        if let CloseReason::LoginFailed(refusal) = reason {
            self.iscsi_login_failed(refusal.status);
        }
    }

    /// An iSCSI login failed with `status` (RFC 7143 §11.13.5).
    pub(crate) fn iscsi_login_failed(&self, status: LoginStatus) {
        let counter = match status {
            LoginStatus::AUTHENTICATION_FAILED => &self.iscsi_authentication,
            LoginStatus::AUTHORIZATION_FAILED => &self.iscsi_authorization,
            LoginStatus::NOT_FOUND | LoginStatus::TARGET_REMOVED => &self.iscsi_not_found,
            _ => &self.iscsi_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An NVMe/TCP Connect named a host the subsystem does not allow.
    pub(crate) fn nvme_host_not_allowed(&self) {
        self.nvme_host_not_allowed.fetch_add(1, Ordering::Relaxed);
    }

    /// An NVMe/TCP queue's DH-HMAC-CHAP exchange failed or did not end in time.
    pub(crate) fn nvme_authentication_failed(&self) {
        self.nvme_authentication.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> RefusalStatus {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RefusalStatus {
            iscsi_authentication: get(&self.iscsi_authentication),
            iscsi_authorization: get(&self.iscsi_authorization),
            iscsi_not_found: get(&self.iscsi_not_found),
            iscsi_other: get(&self.iscsi_other),
            nvme_host_not_allowed: get(&self.nvme_host_not_allowed),
            nvme_authentication: get(&self.nvme_authentication),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::LoginRefusal;

    #[test]
    fn new_connections_see_the_new_access_control_and_old_ones_keep_theirs() {
        let mut config = Config::default_ram();
        let current = CurrentCore::new(crate::server::tcp_core_config(&config));
        let before = current.get();
        assert!(before.targets[0].allows("iqn.2026-12.org.example:anyone"));
        config.targets[0].allowed_initiators = vec!["iqn.2026-12.org.example:host1".into()];
        let after = current.set_access(&config);
        assert!(Arc::ptr_eq(&after, &current.get()));
        assert!(!after.targets[0].allows("iqn.2026-12.org.example:anyone"));
        assert!(after.targets[0].allows("iqn.2026-12.org.example:host1"));
        // What the core negotiates is untouched.
        assert_eq!(after.queue_depth, before.queue_depth);
        assert_eq!(after.portals, before.portals);
        assert!(before.targets[0].allows("iqn.2026-12.org.example:anyone"));
    }

    #[test]
    fn refusal_lines_are_limited_across_the_process() {
        let refusals = Refusals::default();
        let start = Instant::now();
        let logged = (0..20)
            .filter(|i| {
                let at = start + Duration::from_millis(i * 100);
                refusals.log(at, format_args!("refusal {i}"))
            })
            .count();
        assert_eq!(logged, REFUSALS_LOGGED as usize);
        assert!(refusals.log(start + REFUSAL_LOG_INTERVAL, format_args!("later")));
    }

    #[test]
    fn refusals_are_counted_by_why() {
        let refusals = Refusals::default();
        for status in [
            LoginStatus::AUTHENTICATION_FAILED,
            LoginStatus::AUTHENTICATION_FAILED,
            LoginStatus::AUTHORIZATION_FAILED,
            LoginStatus::NOT_FOUND,
            LoginStatus::TARGET_REMOVED,
            LoginStatus::TOO_MANY_CONNECTIONS,
        ] {
            refusals.iscsi_closed(&CloseReason::LoginFailed(LoginRefusal {
                status,
                initiator: None,
                target: None,
                discovery: false,
                why: String::new(),
            }));
        }
        // Connections that end otherwise are no refusals.
        refusals.iscsi_closed(&CloseReason::Logout);
        refusals.iscsi_closed(&CloseReason::Timeout);
        refusals.nvme_host_not_allowed();
        refusals.nvme_authentication_failed();
        refusals.nvme_authentication_failed();
        assert_eq!(
            refusals.status(),
            RefusalStatus {
                iscsi_authentication: 2,
                iscsi_authorization: 1,
                iscsi_not_found: 2,
                iscsi_other: 1,
                nvme_host_not_allowed: 1,
                nvme_authentication: 2,
            }
        );
    }
}
