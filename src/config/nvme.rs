//! The NVMe side of the configuration: each target is also an NVM subsystem with an NQN and
//! a list of allowed host NQNs (`nqn:` and `allowed_hosts:` on a target), served on
//! `transport: nvme-tcp` portals (default port 4420), and discovery-only
//! `transport: nvme-tcp-discovery` portals (default port 8009).

use super::error::{err, CResult};
use crate::nvme::DISCOVERY_NQN;

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

/// Resolves `allowed_hosts`: host NQNs, each once.
pub fn resolve_hosts(path: &str, hosts: Option<Vec<String>>) -> CResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, host) in hosts.unwrap_or_default().into_iter().enumerate() {
        let field = format!("{path}.allowed_hosts[{i}]");
        check_nqn(&field, &host)?;
        if let Some(j) = out.iter().position(|h| *h == host) {
            return err(
                &field,
                format!("\"{host}\" is already {path}.allowed_hosts[{j}]"),
            );
        }
        out.push(host);
    }
    Ok(out)
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
        assert_eq!(c.targets[0].allowed_hosts, vec![host.to_string()]);
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
        let dup = vec!["nqn.2026-11.org.example:h".to_string(); 2];
        assert!(resolve_hosts("t", Some(dup)).is_err());
    }
}
