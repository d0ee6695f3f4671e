//! What re-reading the configuration file (SIGHUP) may change in a running gateway: its ALUA
//! state, which is how a gateway is drained for maintenance (docs/multipath.md), the size of
//! file LUNs, which grow while served, and who may connect: each target's
//! `allowed_initiators`, CHAP credentials and NVMe `allowed_hosts` (with their DH-HMAC-CHAP
//! secrets), and `discovery_auth`. Every other difference takes a restart; the caller reports
//! it and leaves it unapplied.

use super::{AluaState, Backing, Config, Target};

/// The difference between the running configuration and the one re-read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The new ALUA state, when it differs from the running one: applied live.
    pub alua_state: Option<AluaState>,
    /// The targets differ in the `size` of file LUNs (and perhaps in access control, nothing
    /// else): applied live by growing them.
    pub file_sizes_changed: bool,
    /// Who may connect changed (a target's `allowed_initiators`, `auth`, `allowed_hosts`, or
    /// `discovery_auth`), and the targets differ in nothing else but file sizes: applied live
    /// to logins and connects from then on, and sessions no longer allowed are ended. With
    /// another change to the targets, all of it waits for the restart that change takes.
    pub access_changed: bool,
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
        let live = without_access(&without_file_sizes(targets));
        let same_shape = live == without_access(&without_file_sizes(&self.targets));
        differs("targets", same_shape);
        let file_sizes_changed =
            same_shape && without_access(targets) != without_access(&self.targets);
        // Access control is applied to the targets as they run, so only with them unchanged
        // otherwise; with a restart pending it waits for that restart.
        let access_differs = *discovery_auth != self.discovery_auth
            || without_file_sizes(targets) != without_file_sizes(&self.targets);
        let access_changed = same_shape && access_differs;
        differs(
            "discovery_auth",
            same_shape || *discovery_auth == self.discovery_auth,
        );
        differs("limits", *limits == self.limits);
        differs(
            "target_port_group",
            *target_port_group == self.target_port_group,
        );
        differs("state_dir", *state_dir == self.state_dir);
        differs("metrics", *metrics == self.metrics);
        Reload {
            alua_state: (*alua_state != self.alua_state).then_some(*alua_state),
            file_sizes_changed,
            access_changed,
            needs_restart,
        }
    }

    /// Takes `new`'s access control (see [`Reload::access_changed`]) into this running
    /// configuration, whose targets are `new`'s but for it and file sizes: each target
    /// becomes `new`'s with its running LUNs (which hold the sizes in force).
    pub fn adopt_access(&mut self, new: &Config) {
        for (running, new) in self.targets.iter_mut().zip(&new.targets) {
            let luns = std::mem::take(&mut running.luns);
            *running = Target {
                luns,
                ..new.clone()
            };
        }
        self.discovery_auth = new.discovery_auth.clone();
    }
}

/// `targets` with their access control left out, to tell a change of who may connect from
/// other changes.
fn without_access(targets: &[Target]) -> Vec<Target> {
    let mut targets = targets.to_vec();
    for target in &mut targets {
        target.allowed_initiators.clear();
        target.auth = None;
        target.initiator_auth.clear();
        target.allowed_hosts.clear();
    }
    targets
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
                access_changed: false,
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

    /// Who may connect (initiators, hosts, their secrets, discovery CHAP) is applied live,
    /// alone or beside a file LUN's new size; with any other change to the targets it waits
    /// for the restart that change takes.
    #[test]
    fn access_control_is_applied_live() {
        let target = |access: &str, size: &str, id: u32| {
            parse(&format!(
                "portals: [{{ address: 127.0.0.1 }}]\n\
                 targets: [{{ name: iqn.2026-12.org.example:t, {access} luns: [{{ id: {id}, \
                 backing: {{ type: file, path: /srv/t.img, size: {size} }} }}] }}]\n"
            ))
        };
        let open = target("", "1G", 0);
        let closed = target(
            "allowed_initiators: [iqn.2026-12.org.example:host1], \
             allowed_hosts: [{ nqn: nqn.2014-08.org.nvmexpress:uuid:1, \
             dhchap_secret: \"DHHC-1:01:vwrbGqSjhSqqA1A6Tt77S25TczwykKkNX9SFPXd8VStD7hJ0:\" }], \
             auth: { chap: { username: alice, secret: a-secret-of-12-to-16 } },",
            "1G",
            0,
        );
        let reload = open.reload_to(&closed);
        assert!(reload.access_changed);
        assert!(!reload.file_sizes_changed);
        assert!(reload.needs_restart.is_empty());
        assert!(closed.reload_to(&open).access_changed);

        let grown = target(
            "allowed_initiators: [iqn.2026-12.org.example:host1],",
            "2G",
            0,
        );
        let reload = open.reload_to(&grown);
        assert!(reload.access_changed && reload.file_sizes_changed);
        assert!(reload.needs_restart.is_empty());

        let renumbered = target(
            "allowed_initiators: [iqn.2026-12.org.example:host1],",
            "1G",
            1,
        );
        let reload = open.reload_to(&renumbered);
        assert!(!reload.access_changed && !reload.file_sizes_changed);
        assert_eq!(reload.needs_restart, ["targets"]);

        let discovery_auth =
            "discovery_auth: { chap: { username: disc, secret: discovery-secret-16 } }\n";
        let discovery = parse(&format!("{BASE}{discovery_auth}"));
        let reload = parse(BASE).reload_to(&discovery);
        assert!(reload.access_changed);
        assert!(reload.needs_restart.is_empty());
        let discovery_and_more = parse(&format!(
            "{}{discovery_auth}",
            BASE.replace("size: 1M", "size: 2M")
        ));
        let reload = parse(BASE).reload_to(&discovery_and_more);
        assert!(!reload.access_changed);
        assert_eq!(reload.needs_restart, ["targets", "discovery_auth"]);

        let mut running = open.clone();
        running.adopt_access(&closed);
        assert_eq!(running, closed);
    }
}
