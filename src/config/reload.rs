//! What re-reading the configuration file (SIGHUP) may change in a running gateway: its ALUA
//! state, which is how a gateway is drained for maintenance (docs/multipath.md), and the size
//! of file LUNs, which grow while served. Every other difference takes a restart; the caller
//! reports it and leaves it unapplied.

use super::{AluaState, Backing, Config, Target};

/// The difference between the running configuration and the one re-read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The new ALUA state, when it differs from the running one: applied live.
    pub alua_state: Option<AluaState>,
    /// The targets differ only in the `size` of file LUNs: applied live by growing them.
    pub file_sizes_changed: bool,
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
            metrics,
        } = new;
        let mut needs_restart = Vec::new();
        let mut differs = |key: &'static str, same: bool| {
            if !same {
                needs_restart.push(key);
            }
        };
        differs("portals", *portals == self.portals);
        let same_targets = *targets == self.targets;
        let file_sizes_changed =
            !same_targets && without_file_sizes(targets) == without_file_sizes(&self.targets);
        differs("targets", same_targets || file_sizes_changed);
        differs("limits", *limits == self.limits);
        differs("discovery_auth", *discovery_auth == self.discovery_auth);
        differs(
            "target_port_group",
            *target_port_group == self.target_port_group,
        );
        differs("state_dir", *state_dir == self.state_dir);
        differs("metrics", *metrics == self.metrics);
        Reload {
            alua_state: (*alua_state != self.alua_state).then_some(*alua_state),
            file_sizes_changed,
            needs_restart,
        }
    }
}

/// `targets` with every file LUN's `size` left out, to tell a resize from other changes.
fn without_file_sizes(targets: &[Target]) -> Vec<Target> {
    let mut targets = targets.to_vec();
    for lun in targets.iter_mut().flat_map(|t| t.luns.iter_mut()) {
        if let Backing::File { size, .. } = &mut lun.backing {
            *size = None;
        }
    }
    targets
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
                file_sizes_changed: false,
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
        // A RAM LUN's size takes a restart (above); a file LUN's grows live.
        assert!(!reload.file_sizes_changed);
    }

    #[test]
    fn a_file_lun_size_is_applied_live() {
        let file = |size: &str| {
            parse(&format!(
                "portals: [{{ address: 127.0.0.1 }}]\n\
                 targets: [{{ name: iqn.2026-12.org.example:t, luns: [{{ id: 0, backing: \
                 {{ type: file, path: /srv/t.img, size: {size} }} }}] }}]\n"
            ))
        };
        let reload = file("1G").reload_to(&file("2G"));
        assert!(reload.file_sizes_changed);
        assert!(reload.needs_restart.is_empty());
        assert!(!file("1G").reload_to(&file("1G")).file_sizes_changed);
        let moved = parse(
            "portals: [{ address: 127.0.0.1 }]\n\
             targets: [{ name: iqn.2026-12.org.example:t, luns: [{ id: 0, backing: \
             { type: file, path: /srv/other.img, size: 2G } }] }]\n",
        );
        let reload = file("1G").reload_to(&moved);
        assert!(!reload.file_sizes_changed);
        assert_eq!(reload.needs_restart, ["targets"]);
    }
}
