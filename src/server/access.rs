//! Who may connect, as a reloaded configuration changes it: the core configuration each new
//! iSCSI connection starts with, and the sessions a new configuration no longer allows.
//!
//! As in LIO, whose `allowed_initiators` counterpart is a node ACL: a login from now on is
//! checked against the new lists and credentials; a live session whose initiator is no longer
//! allowed is ended (removing an ACL ends its sessions, target_core_tpg.c
//! core_tpg_del_initiator_node_acl); a session that logged in with credentials since changed
//! keeps running until it logs in again.

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::iscsi::CoreConfig;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
