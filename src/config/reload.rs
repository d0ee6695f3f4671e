//! What re-reading the configuration file (SIGHUP) may change in a running gateway: only its
//! ALUA state, which is how a gateway is drained for maintenance (docs/multipath.md). Every
//! other difference takes a restart; the caller reports it and leaves it unapplied.

use super::{AluaState, Config};

/// The difference between the running configuration and the one re-read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The new ALUA state, when it differs from the running one: applied live.
    pub alua_state: Option<AluaState>,
    /// The top-level settings that differ otherwise, by their key in the file: they take a
    /// restart.
    pub needs_restart: Vec<&'static str>,
}

impl Config {
    /// Compares the running configuration (`self`) with `new`, re-read from the same file.
    pub fn reload_to(&self, new: &Config) -> Reload {
        // Destructured, so that a new setting cannot be forgotten here.
        let Config {
            portals,
            targets,
            limits,
            discovery_auth,
            target_port_group,
            alua_state,
            state_dir,
        } = new;
        let mut needs_restart = Vec::new();
        let mut differs = |key: &'static str, same: bool| {
            if !same {
                needs_restart.push(key);
            }
        };
        differs("portals", *portals == self.portals);
        differs("targets", *targets == self.targets);
        differs("limits", *limits == self.limits);
        differs("discovery_auth", *discovery_auth == self.discovery_auth);
        differs(
            "target_port_group",
            *target_port_group == self.target_port_group,
        );
        differs("state_dir", *state_dir == self.state_dir);
        Reload {
            alua_state: (*alua_state != self.alua_state).then_some(*alua_state),
            needs_restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Config {
        Config::from_yaml_str(yaml).expect("valid configuration")
    }

    const BASE: &str = "portals: [{ address: 127.0.0.1, port: 3260 }]\n\
        targets: [{ name: iqn.2026-12.org.example:t, luns: [{ id: 0, backing: { type: ram, size: 1M } }] }]\n";

    #[test]
    fn only_the_alua_state_is_applied_live() {
        let running = parse(BASE);
        let same = running.reload_to(&parse(BASE));
        assert_eq!(
            same,
            Reload {
                alua_state: None,
                needs_restart: vec![]
            }
        );
        let standby = parse(&format!("{BASE}alua_state: standby\n"));
        assert_eq!(
            running.reload_to(&standby).alua_state,
            Some(AluaState::Standby)
        );
        assert!(running.reload_to(&standby).needs_restart.is_empty());

        let other = parse(
            "portals: [{ address: 127.0.0.1, port: 3261 }]\n\
             targets: [{ name: iqn.2026-12.org.example:t, luns: [{ id: 0, backing: { type: ram, size: 2M } }] }]\n\
             target_port_group: 2\nalua_state: active-non-optimized\nlimits: { max_sessions: 3 }\n\
             state_dir: /var/lib/iser-target\n",
        );
        let reload = running.reload_to(&other);
        assert_eq!(reload.alua_state, Some(AluaState::ActiveNonOptimized));
        assert_eq!(
            reload.needs_restart,
            [
                "portals",
                "targets",
                "limits",
                "target_port_group",
                "state_dir"
            ]
        );
    }
}
