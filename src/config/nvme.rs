//! The NVMe side of the configuration: each target is also an NVM subsystem with an NQN and
//! a list of allowed hosts (`nqn:` and `allowed_hosts:` on a target), served on
//! `transport: nvme-tcp` portals (default port 4420), and discovery-only
//! `transport: nvme-tcp-discovery` portals (default port 8009).
//!
//! ```yaml
//! allowed_hosts:
//!   - nqn.2014-08.org.nvmexpress:uuid:...           # connects without authentication
//!   - nqn: nqn.2026-11.org.example:host1
//!     dhchap_secret: "DHHC-1:01:...:"               # the host proves itself (DH-HMAC-CHAP)
//!     dhchap_ctrl_secret: "DHHC-1:01:...:"          # optional: the target proves itself back
//! ```

use std::sync::Arc;

use serde::Deserialize;
use serde_yaml::Value;

use super::error::{err, CResult};
use crate::nvme::auth::dh::DhGroup;
use crate::nvme::auth::{DhchapSecret, HashFunction, HostSecrets};
use crate::nvme::{AllowedHost, DISCOVERY_NQN};

/// The IANA-registered NVMe/TCP port, used when an `nvme-tcp` portal omits `port`.
pub const DEFAULT_NVME_TCP_PORT: u16 = 4420;

/// The IANA-registered NVMe-oF discovery port (NVMe-oF 1.1 §7.4.4), used when an
/// `nvme-tcp-discovery` portal omits `port`.
pub const DEFAULT_NVME_DISCOVERY_PORT: u16 = 8009;

/// Longest NQN (NVMe base 2.0 §4.5: 223 bytes of UTF-8).
const MAX_NQN_LEN: usize = 223;

/// The subsystem NQN of a target that has no `nqn:`: an `iqn.` name becomes the same name
/// with `nqn.` (`iqn.2026-11.io.iser-target:ram0` → `nqn.2026-11.io.iser-target:ram0`, a valid
/// NQN of the same naming authority and date); an `eui.` or `naa.` name is appended to
/// `nqn.2026-11.io.iser-target:` (NQNs have no EUI or NAA form).
pub fn default_nqn(target_name: &str) -> String {
    match target_name.strip_prefix("iqn.") {
        Some(rest) => format!("nqn.{rest}"),
        None => format!(
            "nqn.2026-11.io.iser-target:{}",
            target_name.to_ascii_lowercase()
        ),
    }
}

/// Checks an NQN given in the configuration (NVMe base 2.0 §4.5: `nqn.yyyy-mm.domain:...` or
/// the UUID form `nqn.2014-08.org.nvmexpress:uuid:...`, at most 223 bytes).
pub fn check_nqn(field: &str, nqn: &str) -> CResult<()> {
    let why = if !nqn.starts_with("nqn.") {
        Some("it must start with \"nqn.\"")
    } else if nqn.len() > MAX_NQN_LEN {
        Some("it is longer than 223 bytes")
    } else if nqn
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("it contains spaces or control characters")
    } else if !date_and_domain_ok(nqn) {
        Some("\"nqn.\" must be followed by a date yyyy-mm and a reversed domain name")
    } else {
        None
    };
    match why {
        Some(why) => err(
            field,
            format!(
                "\"{nqn}\" is not an NVMe qualified name: {why}; use a name like \
                 nqn.2026-11.org.example:disk0"
            ),
        ),
        None => Ok(()),
    }
}

/// `nqn.yyyy-mm.domain...`.
fn date_and_domain_ok(nqn: &str) -> bool {
    let rest = &nqn[4..];
    let b = rest.as_bytes();
    b.len() > 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'.'
}

/// Resolves a target's `nqn` (or derives it) and checks it is not the discovery NQN.
pub fn resolve_nqn(path: &str, nqn: Option<String>, target_name: &str) -> CResult<String> {
    let field = format!("{path}.nqn");
    let nqn = match nqn {
        Some(nqn) => {
            check_nqn(&field, &nqn)?;
            nqn
        }
        None => {
            let nqn = default_nqn(target_name);
            check_nqn(&field, &nqn).map_err(|mut e| {
                e.message = format!(
                    "{}; the NQN derived from the target's name is not valid, so give `nqn:`",
                    e.message
                );
                e
            })?;
            nqn
        }
    };
    if nqn == DISCOVERY_NQN {
        return err(&field, "the discovery subsystem's NQN cannot name a target");
    }
    Ok(nqn)
}

/// A structured `allowed_hosts` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    nqn: Option<String>,
    dhchap_secret: Option<String>,
    dhchap_ctrl_secret: Option<String>,
    dhchap_dhgroup: Option<String>,
    dhchap_hash: Option<String>,
}

/// Resolves `allowed_hosts`: host NQNs, or `{ nqn, dhchap_secret, dhchap_ctrl_secret }`
/// mappings, each host once.
pub fn resolve_hosts(path: &str, hosts: Option<Vec<Value>>) -> CResult<Vec<AllowedHost>> {
    let mut out: Vec<AllowedHost> = Vec::new();
    for (i, entry) in hosts.unwrap_or_default().into_iter().enumerate() {
        let field = format!("{path}.allowed_hosts[{i}]");
        let host = resolve_host(&field, entry)?;
        if let Some(j) = out.iter().position(|h| h.nqn == host.nqn) {
            return err(
                &field,
                format!("\"{}\" is already {path}.allowed_hosts[{j}]", host.nqn),
            );
        }
        out.push(host);
    }
    Ok(out)
}

fn resolve_host(field: &str, entry: Value) -> CResult<AllowedHost> {
    let raw = match entry {
        Value::String(nqn) => {
            check_nqn(field, &nqn)?;
            return Ok(AllowedHost::open(&nqn));
        }
        Value::Mapping(_) => super::values::from_mapping::<RawHost>(field, entry, "RawHost")?,
        other => {
            return err(
                field,
                format!(
                    "{} is not a host; use a host NQN or {{ nqn: NQN, dhchap_secret: DHHC-1:... }}",
                    super::values::describe_value(&other)
                ),
            )
        }
    };
    let Some(nqn) = raw.nqn else {
        return err(&format!("{field}.nqn"), "required: the host's NQN");
    };
    check_nqn(&format!("{field}.nqn"), &nqn)?;
    let secret = |key: &str, text: Option<String>| -> CResult<Option<DhchapSecret>> {
        text.map(|t| {
            DhchapSecret::parse(&t).map_err(|e| {
                super::error::ConfigError::new(
                    format!("{field}.{key}"),
                    format!("not a DH-HMAC-CHAP secret: {e}; make one with `nvme gen-dhchap-key`"),
                )
            })
        })
        .transpose()
    };
    let host = secret("dhchap_secret", raw.dhchap_secret)?;
    let controller = secret("dhchap_ctrl_secret", raw.dhchap_ctrl_secret)?;
    let dh_group = match raw.dhchap_dhgroup {
        None => DhGroup::Null,
        Some(_) if host.is_none() => {
            return err(
                &format!("{field}.dhchap_dhgroup"),
                "needs dhchap_secret: the group is that of the host's authentication",
            )
        }
        Some(name) => DhGroup::from_name(&name).ok_or_else(|| {
            super::error::ConfigError::new(
                format!("{field}.dhchap_dhgroup"),
                format!(
                    "\"{name}\" is not a DH group; use one of null, ffdhe2048, ffdhe3072, \
                     ffdhe4096, ffdhe6144, ffdhe8192"
                ),
            )
        })?,
    };
    let hash = match raw.dhchap_hash {
        None => None,
        Some(_) if host.is_none() => {
            return err(
                &format!("{field}.dhchap_hash"),
                "needs dhchap_secret: the hash is that of the host's authentication",
            )
        }
        Some(name) => Some(HashFunction::from_name(&name).ok_or_else(|| {
            super::error::ConfigError::new(
                format!("{field}.dhchap_hash"),
                format!("\"{name}\" is not a DH-HMAC-CHAP hash; use sha256, sha384 or sha512"),
            )
        })?),
    };
    let secrets = match (host, controller) {
        (None, None) => None,
        (None, Some(_)) => {
            return err(
                &format!("{field}.dhchap_ctrl_secret"),
                "needs dhchap_secret: the controller proves itself only to a host that proved itself",
            )
        }
        (Some(host), Some(controller)) if host == controller => {
            return err(
                &format!("{field}.dhchap_ctrl_secret"),
                "must differ from dhchap_secret (one secret for both sides lets a response be reflected)",
            )
        }
        (Some(host), controller) => Some(Arc::new(HostSecrets {
            host,
            controller,
            dh_group,
            hash,
        })),
    };
    Ok(AllowedHost { nqn, secrets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_nqn_follows_the_target_name() {
        assert_eq!(
            default_nqn("iqn.2026-11.io.iser-target:ram0"),
            "nqn.2026-11.io.iser-target:ram0"
        );
        assert_eq!(
            default_nqn("eui.02004567A425678D"),
            "nqn.2026-11.io.iser-target:eui.02004567a425678d"
        );
        for name in ["iqn.2026-11.io.iser-target:ram0", "naa.52004567BA64678D"] {
            check_nqn("t", &default_nqn(name)).unwrap();
        }
    }

    #[test]
    fn a_discovery_portal_defaults_to_port_8009() {
        use crate::config::{Config, Transport};
        let c = Config::from_yaml_str(
            "portals:\n  - { address: 0.0.0.0, transport: nvme-tcp-discovery }\n  \
             - { address: 0.0.0.0, transport: nvme-tcp }\ntargets:\n  \
             - name: iqn.2026-11.org.example:a\n    luns: [{ backing: { type: ram, size: 1M } }]\n",
        )
        .unwrap();
        assert_eq!(c.portals[0].transport, Transport::NvmeTcpDiscovery);
        assert_eq!(c.portals[0].port, DEFAULT_NVME_DISCOVERY_PORT);
        assert!(c.portals[0].transport.is_nvme() && c.portals[1].transport.is_nvme());
        assert!(!Transport::Tcp.is_nvme());
    }

    #[test]
    fn nvme_tcp_portals_and_subsystem_keys() {
        use crate::config::{Config, Transport};
        let yaml = |target_keys: &str| {
            format!(
                "portals:\n  - {{ address: 0.0.0.0, transport: nvme-tcp }}\n  - {{ address: 0.0.0.0 }}\n\
                 targets:\n  - name: iqn.2026-11.org.example:a\n{target_keys}    luns: [{{ backing: {{ type: ram, size: 1M }} }}]\n"
            )
        };
        let c = Config::from_yaml_str(&yaml("")).unwrap();
        assert_eq!(c.portals[0].transport, Transport::NvmeTcp);
        assert_eq!(c.portals[0].port, DEFAULT_NVME_TCP_PORT);
        assert_eq!(c.portals[1].port, 3260);
        assert_eq!(c.targets[0].nqn, "nqn.2026-11.org.example:a");
        assert!(c.targets[0].allowed_hosts.is_empty());
        let host = "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let keys = format!("    nqn: nqn.2026-11.org.example:sub\n    allowed_hosts: [{host}]\n");
        let c = Config::from_yaml_str(&yaml(&keys)).unwrap();
        assert_eq!(c.targets[0].nqn, "nqn.2026-11.org.example:sub");
        assert_eq!(c.targets[0].allowed_hosts, vec![AllowedHost::open(host)]);
        let e = Config::from_yaml_str(&yaml("    nqn: iqn.2026-11.org.example:x\n")).unwrap_err();
        assert!(e.to_string().contains("targets[0].nqn"), "{e}");
        let e = Config::from_yaml_str(&yaml("    allowed_hosts: [host1]\n")).unwrap_err();
        assert!(e.to_string().contains("targets[0].allowed_hosts[0]"), "{e}");
        // Two targets with one NQN.
        let two = yaml("    nqn: nqn.2026-11.org.example:same\n").replace(
            "targets:\n",
            "targets:\n  - { name: iqn.2026-11.org.example:b, nqn: nqn.2026-11.org.example:same, \
             luns: [{ backing: { type: ram, size: 1M } }] }\n",
        );
        let e = Config::from_yaml_str(&two).unwrap_err();
        assert!(e.to_string().contains("targets[1].nqn"), "{e}");
        // iSCSI/TCP and NVMe/TCP share the TCP port space.
        let clash = yaml("").replace("{ address: 0.0.0.0 }", "{ address: 0.0.0.0, port: 4420 }");
        let e = Config::from_yaml_str(&clash).unwrap_err();
        assert!(e.to_string().contains("portals[1]"), "{e}");
    }

    #[test]
    fn hosts_with_dh_hmac_chap_secrets() {
        use crate::nvme::auth::HashFunction;
        let host_secret = DhchapSecret::encode(Some(HashFunction::Sha256), &[1; 32]);
        let ctrl_secret = DhchapSecret::encode(None, &[2; 48]);
        let entry = |keys: &str| {
            let yaml = format!(
                "portals: [{{ address: 0.0.0.0, transport: nvme-tcp }}]\n\
                 targets:\n  - name: iqn.2026-11.org.example:a\n    allowed_hosts:\n      \
                 - nqn.2026-11.org.example:open\n      - {{ nqn: nqn.2026-11.org.example:h{keys} }}\n    \
                 luns: [{{ backing: {{ type: ram, size: 1M }} }}]\n"
            );
            crate::config::Config::from_yaml_str(&yaml)
        };
        let c = entry(&format!(
            ", dhchap_secret: \"{host_secret}\", dhchap_ctrl_secret: \"{ctrl_secret}\", \
             dhchap_dhgroup: ffdhe3072, dhchap_hash: \"hmac(sha512)\""
        ))
        .unwrap();
        let hosts = &c.targets[0].allowed_hosts;
        assert_eq!(hosts[0], AllowedHost::open("nqn.2026-11.org.example:open"));
        let secrets = hosts[1].secrets.as_ref().unwrap();
        assert_eq!(secrets.host, DhchapSecret::parse(&host_secret).unwrap());
        assert_eq!(secrets.controller, DhchapSecret::parse(&ctrl_secret).ok());
        assert_eq!(secrets.dh_group, DhGroup::Ffdhe3072);
        assert_eq!(secrets.hash, Some(HashFunction::Sha512));
        assert!(entry("").unwrap().targets[0].allowed_hosts[1]
            .secrets
            .is_none());

        for (keys, field, words) in [
            (
                format!(", dhchap_ctrl_secret: \"{ctrl_secret}\""),
                "allowed_hosts[1].dhchap_ctrl_secret",
                "needs dhchap_secret",
            ),
            (
                format!(
                    ", dhchap_secret: \"{host_secret}\", dhchap_ctrl_secret: \"{host_secret}\""
                ),
                "allowed_hosts[1].dhchap_ctrl_secret",
                "must differ",
            ),
            (
                ", dhchap_secret: \"DHHC-1:01:abc:\"".to_string(),
                "allowed_hosts[1].dhchap_secret",
                "nvme gen-dhchap-key",
            ),
            (", secret: x".to_string(), "allowed_hosts[1]", "secret"),
            (
                format!(", dhchap_secret: \"{host_secret}\", dhchap_dhgroup: ffdhe1024"),
                "allowed_hosts[1].dhchap_dhgroup",
                "ffdhe2048",
            ),
            (
                ", dhchap_dhgroup: ffdhe2048".to_string(),
                "allowed_hosts[1].dhchap_dhgroup",
                "needs dhchap_secret",
            ),
            (
                format!(", dhchap_secret: \"{host_secret}\", dhchap_hash: md5"),
                "allowed_hosts[1].dhchap_hash",
                "sha384",
            ),
        ] {
            let e = entry(&keys).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(words), "{keys}: {e}");
        }
        let e = crate::config::Config::from_yaml_str(
            "portals: [{ address: 0.0.0.0 }]\ntargets:\n  - name: iqn.2026-11.org.example:a\n    \
             allowed_hosts: [[x]]\n    \
             luns: [{ backing: { type: ram, size: 1M } }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a host"), "{e}");
    }

    #[test]
    fn bad_nqns_are_refused() {
        for bad in [
            "iqn.2026-11.org.example:x",
            "nqn.x",
            "nqn.2026-11.org ex",
            "",
        ] {
            assert!(check_nqn("t", bad).is_err(), "{bad}");
        }
        let long = format!("nqn.2026-11.org.example:{}", "x".repeat(200));
        assert!(check_nqn("t", &long).is_err());
        check_nqn(
            "t",
            "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        )
        .unwrap();
        assert!(resolve_nqn("t", Some(DISCOVERY_NQN.into()), "x").is_err());
        let dup = vec![Value::String("nqn.2026-11.org.example:h".into()); 2];
        assert!(resolve_hosts("t", Some(dup)).is_err());
    }
}
