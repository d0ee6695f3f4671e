//! The configuration document: its top-level keys, portals, targets and LUNs as serde reads
//! them (every field optional, unknown keys rejected), and their resolution into [`Config`],
//! including the checks that span entries (unique portals, names, NQNs, LUN ids, serials and
//! identifiers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value;

use super::backing::RawBacking;
use super::error::{err, CResult};
use super::identity::{derived_serial_and_identifier, parse_identifier, parse_serial};
use super::iscsi_name::check_iscsi_name;
use super::limits::RawLimits;
use super::{auth, nvme};
use super::{
    AluaState, Config, Limits, Lun, Portal, Target, Transport, DEFAULT_NVME_DISCOVERY_PORT,
    DEFAULT_NVME_TCP_PORT, DEFAULT_PORT, MAX_LUN_ID,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    portals: Option<Vec<RawPortal>>,
    targets: Option<Vec<RawTarget>>,
    limits: Option<RawLimits>,
    discovery_auth: Option<auth::RawAuth>,
    target_port_group: Option<u64>,
    alua_state: Option<String>,
    state_dir: Option<String>,
    metrics: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    address: Option<String>,
    port: Option<u64>,
    transport: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Option<String>,
    /// Bare names or `{ name, chap, mutual_chap }` mappings, told apart in [`auth`].
    allowed_initiators: Option<Vec<Value>>,
    luns: Option<Vec<RawLun>>,
    auth: Option<auth::RawAuth>,
    nqn: Option<String>,
    /// Host NQNs or `{ nqn, dhchap_secret, dhchap_ctrl_secret }` mappings, told apart in
    /// [`nvme`].
    allowed_hosts: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    id: Option<u64>,
    backing: Option<RawBacking>,
    block_size: Option<u64>,
    read_only: Option<bool>,
    write_cache: Option<bool>,
    serial: Option<Value>,
    identifier: Option<Value>,
}

impl RawConfig {
    pub(super) fn resolve(self) -> CResult<Config> {
        let raw_portals = self.portals.unwrap_or_default();
        if raw_portals.is_empty() {
            return err(
                "portals",
                "at least one portal is required, e.g. `- address: 0.0.0.0`",
            );
        }
        let mut portals: Vec<Portal> = Vec::with_capacity(raw_portals.len());
        for (i, rp) in raw_portals.into_iter().enumerate() {
            let path = format!("portals[{i}]");
            let p = rp.resolve(&path)?;
            // TCP and RDMA CM have separate port spaces: a TCP and an iSER portal may share an
            // address and port (Linux drivers/infiniband/core/cma.c `cma_get_port` allocates
            // from rdma_cm's own RDMA_PS_TCP space), two portals of the same port space may not
            // (iSCSI/TCP and NVMe/TCP are both TCP).
            let rdma = |t: Transport| t == Transport::Iser;
            if let Some(j) = portals.iter().position(|q| {
                q.address == p.address && q.port == p.port && rdma(q.transport) == rdma(p.transport)
            }) {
                return err(
                    &path,
                    format!(
                        "{} port {} is already used by portals[{j}]; each address/port pair can be bound once per transport",
                        p.address, p.port
                    ),
                );
            }
            portals.push(p);
        }

        let raw_targets = self.targets.unwrap_or_default();
        if raw_targets.is_empty() {
            return err("targets", "at least one target is required");
        }
        let mut targets: Vec<Target> = Vec::with_capacity(raw_targets.len());
        for (i, rt) in raw_targets.into_iter().enumerate() {
            let path = format!("targets[{i}]");
            let t = rt.resolve(&path)?;
            if let Some(j) = targets
                .iter()
                .position(|u| u.name.eq_ignore_ascii_case(&t.name))
            {
                return err(
                    &format!("{path}.name"),
                    format!(
                        "\"{}\" duplicates targets[{j}].name; target names must be unique",
                        t.name
                    ),
                );
            }
            if let Some(j) = targets.iter().position(|u| u.nqn == t.nqn) {
                return err(
                    &format!("{path}.nqn"),
                    format!(
                        "\"{}\" is already targets[{j}]'s NQN; subsystem NQNs must be unique",
                        t.nqn
                    ),
                );
            }
            targets.push(t);
        }

        // Identifiers and serials must be unique across the whole configuration:
        // multipath and udev (`/dev/disk/by-id`) treat equal ones as the same disk.
        let mut ids: HashMap<u64, String> = HashMap::new();
        let mut serials: HashMap<&str, String> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            for (k, l) in t.luns.iter().enumerate() {
                let here = format!("targets[{i}].luns[{k}]");
                if let Some(prev) = ids.insert(l.identifier, here.clone()) {
                    return err(
                        &format!("{here}.identifier"),
                        format!(
                            "{:016x} is already the identifier of {prev}; identifiers must be unique across the configuration",
                            l.identifier
                        ),
                    );
                }
                if let Some(prev) = serials.insert(&l.serial, here.clone()) {
                    return err(
                        &format!("{here}.serial"),
                        format!(
                            "\"{}\" is already the serial of {prev}; serials must be unique across the configuration",
                            l.serial
                        ),
                    );
                }
            }
        }

        let limits = match self.limits {
            Some(rl) => rl.resolve("limits")?,
            None => Limits::default(),
        };

        let discovery_auth = match self.discovery_auth {
            Some(a) => Some(a.resolve("discovery_auth")?),
            None => None,
        };

        let target_port_group = match self.target_port_group {
            None => 1,
            Some(g @ 1..=65535) => g as u16,
            Some(g) => {
                return err(
                    "target_port_group",
                    format!("{g} is out of range; use 1..=65535 (default 1), different on each gateway of a LUN"),
                )
            }
        };
        let alua_state = match self.alua_state.as_deref() {
            None | Some("active-optimized") => AluaState::ActiveOptimized,
            Some("active-non-optimized") => AluaState::ActiveNonOptimized,
            Some("standby") => AluaState::Standby,
            Some(other) => {
                return err(
                    "alua_state",
                    format!("\"{other}\" is not an ALUA state; use active-optimized (default), active-non-optimized or standby"),
                )
            }
        };

        let state_dir = match self.state_dir {
            None => None,
            Some(dir) if dir.trim().is_empty() => {
                return err(
                    "state_dir",
                    "empty; give a directory this process alone uses, such as /var/lib/iser-target, or leave the key out",
                )
            }
            Some(dir) => Some(PathBuf::from(dir)),
        };

        let metrics = match self.metrics {
            None => None,
            Some(text) => match text.trim().parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    return err(
                        "metrics",
                        format!(
                            "\"{text}\" is not an address and port; use e.g. 127.0.0.1:9469 \
                             or [::1]:9469"
                        ),
                    )
                }
            },
        };

        Ok(Config {
            portals,
            targets,
            limits,
            discovery_auth,
            target_port_group,
            alua_state,
            state_dir,
            metrics,
        })
    }
}

impl RawPortal {
    fn resolve(self, path: &str) -> CResult<Portal> {
        let Some(addr_text) = self.address else {
            return err(
                &format!("{path}.address"),
                "required: an IPv4 or IPv6 address such as 0.0.0.0, 192.168.1.10 or \"::\"",
            );
        };
        let address: IpAddr = addr_text.trim().parse().or_else(|_| {
            err(
                &format!("{path}.address"),
                format!(
                    "\"{addr_text}\" is not an IP address; use IPv4 (0.0.0.0, 192.168.1.10) or IPv6 (\"::\", \"fd00::1\"); host names are not accepted"
                ),
            )
        })?;
        let transport = match self.transport.as_deref() {
            None | Some("tcp") => Transport::Tcp,
            Some("iser") => Transport::Iser,
            Some("nvme-tcp") => Transport::NvmeTcp,
            Some("nvme-tcp-discovery") => Transport::NvmeTcpDiscovery,
            Some(other) => {
                return err(
                    &format!("{path}.transport"),
                    format!(
                        "\"{other}\" is not a transport; use tcp, iser, nvme-tcp or \
                         nvme-tcp-discovery"
                    ),
                )
            }
        };
        let port = match self.port {
            None if transport == Transport::NvmeTcp => DEFAULT_NVME_TCP_PORT,
            None if transport == Transport::NvmeTcpDiscovery => DEFAULT_NVME_DISCOVERY_PORT,
            None => DEFAULT_PORT,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return err(
                    &format!("{path}.port"),
                    format!(
                        "{p} is out of range; use 1..=65535 (default 3260, 4420 for nvme-tcp, \
                         8009 for nvme-tcp-discovery)"
                    ),
                )
            }
        };
        Ok(Portal {
            address,
            port,
            transport,
        })
    }
}

impl RawTarget {
    fn resolve(self, path: &str) -> CResult<Target> {
        let name_path = format!("{path}.name");
        let Some(name) = self.name else {
            return err(
                &name_path,
                "required: an iSCSI name like iqn.2026-11.org.example:disk0",
            );
        };
        check_iscsi_name(&name_path, &name)?;

        let mut allowed_initiators = Vec::new();
        let mut initiator_auth = Vec::new();
        for (i, entry) in self
            .allowed_initiators
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let ipath = format!("{path}.allowed_initiators[{i}]");
            let (name, credentials) = auth::resolve_initiator(&ipath, entry)?;
            if let Some(j) = allowed_initiators
                .iter()
                .position(|n: &String| n.eq_ignore_ascii_case(&name))
            {
                return err(
                    &ipath,
                    format!("\"{name}\" is already {path}.allowed_initiators[{j}]"),
                );
            }
            if let Some(credentials) = credentials {
                initiator_auth.push((name.clone(), credentials));
            }
            allowed_initiators.push(name);
        }
        let auth = match self.auth {
            Some(a) => Some(a.resolve(&format!("{path}.auth"))?),
            None => None,
        };

        let raw_luns = self.luns.unwrap_or_default();
        if raw_luns.is_empty() {
            return err(&format!("{path}.luns"), "at least one LUN is required");
        }
        let mut luns: Vec<Lun> = Vec::with_capacity(raw_luns.len());
        for (k, rl) in raw_luns.into_iter().enumerate() {
            let lpath = format!("{path}.luns[{k}]");
            let lun = rl.resolve(&lpath, &name, k as u64)?;
            if let Some(j) = luns.iter().position(|l| l.id == lun.id) {
                return err(
                    &format!("{lpath}.id"),
                    format!(
                        "LUN id {} is already used by {path}.luns[{j}] (an omitted id defaults to the LUN's position in the list)",
                        lun.id
                    ),
                );
            }
            luns.push(lun);
        }
        let nqn = nvme::resolve_nqn(path, self.nqn, &name)?;
        let allowed_hosts = nvme::resolve_hosts(path, self.allowed_hosts)?;
        Ok(Target {
            name,
            allowed_initiators,
            luns,
            auth,
            initiator_auth,
            nqn,
            allowed_hosts,
        })
    }
}

impl RawLun {
    fn resolve(self, path: &str, target_name: &str, index: u64) -> CResult<Lun> {
        let id = self.id.unwrap_or(index);
        if id > MAX_LUN_ID {
            return err(
                &format!("{path}.id"),
                format!("{id} is out of range; use 0..=16383"),
            );
        }
        let block_size = match self.block_size {
            None => 512,
            Some(b @ (512 | 4096)) => b as u32,
            Some(b) => {
                return err(
                    &format!("{path}.block_size"),
                    format!("{b} is not supported; use 512 or 4096"),
                )
            }
        };
        let Some(rb) = self.backing else {
            return err(
                &format!("{path}.backing"),
                "required: one of {type: ram, size}, {type: file, path, size, create}, {type: block, path}, {type: rbd, pool, image, size, create, conf, user}",
            );
        };
        let backing = rb.resolve(&format!("{path}.backing"), block_size)?;

        let (derived_serial, derived_id) = derived_serial_and_identifier(target_name, id);
        let serial = match self.serial {
            None => derived_serial,
            Some(v) => parse_serial(&format!("{path}.serial"), &v)?,
        };
        let identifier = match self.identifier {
            None => derived_id,
            Some(v) => parse_identifier(&format!("{path}.identifier"), &v)?,
        };
        Ok(Lun {
            id,
            backing,
            block_size,
            read_only: self.read_only.unwrap_or(false),
            write_cache: self.write_cache.unwrap_or(true),
            serial,
            identifier,
        })
    }
}
