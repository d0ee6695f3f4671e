//! Unit tests for the configuration layer.

use super::*;

/// A minimal valid configuration; tests splice into it.
const MINIMAL: &str = "
portals:
  - address: 0.0.0.0
targets:
  - name: iqn.2026-11.org.example:t
    luns:
      - backing: { type: ram, size: 1M }
";

fn ok(yaml: &str) -> Config {
    Config::from_yaml_str(yaml)
        .unwrap_or_else(|e| panic!("expected valid config, got: {e}\n{yaml}"))
}

/// Parse, expect failure, and check that the message starts with the field
/// path and contains `needle`.
fn fails(yaml: &str, field: &str, needle: &str) -> ConfigError {
    let e = match Config::from_yaml_str(yaml) {
        Ok(c) => panic!("expected error at {field}, got {c:?}\n{yaml}"),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert_eq!(e.field(), field, "wrong field in: {shown}");
    assert!(
        shown.starts_with(&format!("{field}: ")),
        "no path prefix: {shown}"
    );
    assert!(
        shown.contains(needle),
        "{shown:?} does not contain {needle:?}"
    );
    assert!(!shown.contains('\n'), "not one line: {shown:?}");
    e
}

/// A config with one target whose single LUN is `lun` (YAML flow mapping body).
fn with_lun(lun: &str) -> String {
    format!(
        "portals: [{{address: 0.0.0.0}}]\ntargets:\n  - name: iqn.2026-11.org.example:t\n    luns:\n      - {{{lun}}}\n"
    )
}

fn with_limits(limits: &str) -> String {
    format!("{MINIMAL}limits: {{{limits}}}\n")
}

// --- defaults -------------------------------------------------------------

#[test]
fn minimal_config_gets_all_defaults() {
    let c = ok(MINIMAL);
    assert_eq!(
        c.portals,
        vec![Portal {
            address: "0.0.0.0".parse().unwrap(),
            port: 3260,
            transport: Transport::Tcp
        }]
    );
    let t = &c.targets[0];
    assert!(t.allowed_initiators.is_empty());
    let l = &t.luns[0];
    assert_eq!(l.id, 0);
    assert_eq!(l.backing, Backing::Ram { size: 1 << 20 });
    assert_eq!(l.block_size, 512);
    assert!(!l.read_only);
    assert!(l.write_cache);
    assert_eq!(l.serial.len(), 16);
    assert_eq!(c.limits, Limits::default());
}

#[test]
fn limits_defaults_match_documentation() {
    let l = Limits::default();
    assert_eq!(l.max_sessions, 64);
    assert_eq!(l.max_discovery_sessions, 64);
    assert_eq!(l.max_connections_per_portal, 512);
    assert_eq!(l.max_connections_per_source, 64);
    assert_eq!(l.queue_depth, 128);
    assert_eq!(l.max_burst_length, 262_144);
    assert_eq!(l.first_burst_length, 65_536);
    assert_eq!(l.max_recv_data_segment_length, 262_144);
    assert_eq!(l.max_outstanding_r2t, 1);
    assert_eq!(l.nop_interval_secs, 15);
    assert_eq!(l.nop_timeout_secs, 30);
    assert_eq!(l.login_timeout_secs, 15);
    assert_eq!(l.discovery_idle_timeout_secs, 30);
    assert_eq!(l.max_io_size, 524_288);
    assert_eq!(l.busy_poll_us, 0);
}

#[test]
fn partial_limits_keep_other_defaults() {
    let c = ok(&with_limits("queue_depth: 32, nop_interval_secs: 0"));
    assert_eq!(c.limits.queue_depth, 32);
    assert_eq!(c.limits.nop_interval_secs, 0);
    assert_eq!(c.limits.max_sessions, 64);
}

#[test]
fn lun_ids_default_to_position() {
    let c = ok("
portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns:
      - backing: { type: ram, size: 1M }
      - backing: { type: ram, size: 1M }
      - id: 7
        backing: { type: ram, size: 1M }
");
    let ids: Vec<u64> = c.targets[0].luns.iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![0, 1, 7]);
}

#[test]
fn all_lun_fields_resolve() {
    let c = ok(&with_lun(
        "id: 3, backing: {type: file, path: /tmp/x.img, size: 8K, create: true}, block_size: 4096, \
         read_only: true, write_cache: false, serial: \"ABC 123\", identifier: \"5001405ABCDEF012\"",
    ));
    let l = &c.targets[0].luns[0];
    assert_eq!(l.id, 3);
    assert_eq!(
        l.backing,
        Backing::File {
            path: PathBuf::from("/tmp/x.img"),
            size: Some(8192),
            create: true
        }
    );
    assert_eq!(l.backing.configured_size(), Some(8192));
    assert_eq!(l.block_size, 4096);
    assert!(l.read_only);
    assert!(!l.write_cache);
    assert_eq!(l.serial, "ABC 123");
    assert_eq!(l.identifier, 0x5001_405a_bcde_f012);
}

#[test]
fn backing_variants() {
    let c = ok(&with_lun("backing: {type: file, path: /srv/a.img}"));
    assert_eq!(
        c.targets[0].luns[0].backing,
        Backing::File {
            path: "/srv/a.img".into(),
            size: None,
            create: false
        }
    );
    let c = ok(&with_lun("backing: {type: block, path: /dev/nvme0n1}"));
    assert_eq!(
        c.targets[0].luns[0].backing,
        Backing::Block {
            path: "/dev/nvme0n1".into()
        }
    );
    assert_eq!(c.targets[0].luns[0].backing.configured_size(), None);
}

#[test]
fn portals_accept_ipv6_and_iser() {
    let c = ok("
portals:
  - address: \"::\"
    transport: iser
  - address: fd00::1
    port: 3261
  - address: 192.168.1.10
targets:
  - name: eui.02004567A425678D
    luns: [{backing: {type: ram, size: 1M}}]
");
    assert_eq!(c.portals[0].address, "::".parse::<IpAddr>().unwrap());
    assert_eq!(c.portals[0].transport, Transport::Iser);
    assert_eq!(c.portals[1].address, "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(c.portals[1].port, 3261);
    assert_eq!(c.portals[2].transport, Transport::Tcp);
}

#[test]
fn tcp_and_iser_portals_may_share_an_address_and_port() {
    // TCP and RDMA CM port spaces are separate (Linux drivers/infiniband/core/cma.c
    // `cma_get_port`).
    let c = ok("
portals:
  - address: 192.168.77.1
  - address: 192.168.77.1
    transport: iser
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}}]
");
    assert_eq!(c.portals.len(), 2);
    assert_eq!(c.portals[0].port, c.portals[1].port);
    assert_eq!(c.portals[0].transport, Transport::Tcp);
    assert_eq!(c.portals[1].transport, Transport::Iser);
}

#[test]
fn default_ram_is_as_documented() {
    let c = Config::default_ram();
    assert_eq!(c.portals.len(), 1);
    assert_eq!(c.portals[0].address, IpAddr::from([0, 0, 0, 0]));
    assert_eq!(c.portals[0].port, 3260);
    assert_eq!(c.portals[0].transport, Transport::Tcp);
    assert_eq!(c.targets.len(), 1);
    assert_eq!(c.targets[0].name, "iqn.2026-11.io.iser-target:ram0");
    assert_eq!(c.targets[0].luns.len(), 1);
    assert_eq!(c.targets[0].luns[0].id, 0);
    assert_eq!(c.targets[0].luns[0].backing, Backing::Ram { size: 1 << 30 });
}

// --- example files ----------------------------------------------------------

#[test]
fn every_example_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 4, "expected at least 4 examples, found {seen}");
}

#[test]
fn default_yaml_equals_default_ram() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.yaml");
    assert_eq!(Config::load(&path).unwrap(), Config::default_ram());
}

// --- load() errors ----------------------------------------------------------

#[test]
fn load_missing_file_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/iser.yaml")).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("/nonexistent/iser.yaml"), "{s}");
    assert!(s.contains("cannot read"), "{s}");
}

#[test]
fn load_syntax_error_has_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("iser-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "portals:\n  - address: 0.0.0.0\n   port: [\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    let s = e.to_string();
    assert!(s.contains(path.to_str().unwrap()), "{s}");
    assert!(e.location().is_some(), "{s}");
    assert!(s.contains("line "), "{s}");
    assert!(s.contains("column "), "{s}");
    assert!(!s.contains('\n'), "{s}");
}

#[test]
fn load_validation_error_keeps_field_path_first() {
    let dir = std::env::temp_dir().join(format!("iser-config-test2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, MINIMAL.replace("0.0.0.0", "not-an-ip")).unwrap();
    let e = Config::load(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    let s = e.to_string();
    assert!(s.starts_with("portals[0].address: "), "{s}");
    assert!(s.contains(path.to_str().unwrap()), "{s}");
}

#[test]
fn type_errors_carry_path_and_location() {
    let e = fails(
        &with_lun("backing: {type: ram, size: 1M}, read_only: maybe"),
        "targets[0].luns[0].read_only",
        "invalid type",
    );
    assert!(e.location().is_some());
}

#[test]
fn empty_document_is_an_error() {
    let e = Config::from_yaml_str("").unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = Config::from_yaml_str("# only a comment\n").unwrap_err();
    assert!(e.to_string().starts_with("portals: "), "{e}");
}

// --- unknown keys -----------------------------------------------------------

#[test]
fn unknown_key_top_level() {
    fails(
        &format!("{MINIMAL}extra: 1\n"),
        "extra",
        "unknown field `extra`",
    );
}

#[test]
fn unknown_key_rejected_at_every_level() {
    fails(
        "portals: [{address: 0.0.0.0, prot: 1}]\ntargets: [{name: iqn.2026-11.org.example:t, luns: [{backing: {type: ram, size: 1M}}]}]",
        "portals[0].prot",
        "unknown field `prot`",
    );
    fails(
        "portals: [{address: 0.0.0.0}]\ntargets: [{name: iqn.2026-11.org.example:t, acl: [], luns: [{backing: {type: ram, size: 1M}}]}]",
        "targets[0].acl",
        "unknown field `acl`",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, blocksize: 512"),
        "targets[0].luns[0].blocksize",
        "unknown field `blocksize`",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M, sise: 2}"),
        "targets[0].luns[0].backing.sise",
        "unknown field `sise`",
    );
    fails(
        &with_limits("queue_dept: 4"),
        "limits.queue_dept",
        "unknown field `queue_dept`",
    );
}

#[test]
fn unknown_top_level_key_message() {
    // Root-level errors have no field path; the message still names the key.
    let e = Config::from_yaml_str(&format!("{MINIMAL}portal: []\n")).unwrap_err();
    assert!(e.to_string().contains("unknown field `portal`"), "{e}");
}

// --- portals ----------------------------------------------------------------

#[test]
fn portals_required() {
    fails(
        "targets: [{name: iqn.2026-11.org.example:t, luns: [{backing: {type: ram, size: 1M}}]}]",
        "portals",
        "at least one portal",
    );
    fails(
        "portals: []\ntargets: [{name: iqn.2026-11.org.example:t, luns: [{backing: {type: ram, size: 1M}}]}]",
        "portals",
        "at least one portal",
    );
}

#[test]
fn portal_errors() {
    let t =
        "targets: [{name: iqn.2026-11.org.example:t, luns: [{backing: {type: ram, size: 1M}}]}]";
    fails(
        &format!("portals: [{{port: 3260}}]\n{t}"),
        "portals[0].address",
        "required",
    );
    fails(
        &format!("portals: [{{address: 0.0.0.0}}, {{address: example.com}}]\n{t}"),
        "portals[1].address",
        "is not an IP address",
    );
    fails(
        &format!("portals: [{{address: 0.0.0.0, port: 0}}]\n{t}"),
        "portals[0].port",
        "1..=65535",
    );
    fails(
        &format!("portals: [{{address: 0.0.0.0, port: 65536}}]\n{t}"),
        "portals[0].port",
        "1..=65535",
    );
    fails(
        &format!("portals: [{{address: 0.0.0.0, transport: rdma}}]\n{t}"),
        "portals[0].transport",
        "use tcp, iser, nvme-tcp or nvme-tcp-discovery",
    );
    fails(
        &format!("portals: [{{address: 0.0.0.0}}, {{address: 0.0.0.0, port: 3260, transport: tcp}}]\n{t}"),
        "portals[1]",
        "already used by portals[0]",
    );
    fails(
        &format!("portals: [{{address: 0.0.0.0, transport: iser}}, {{address: 0.0.0.0, transport: iser}}]\n{t}"),
        "portals[1]",
        "already used by portals[0]",
    );
}

// --- targets ----------------------------------------------------------------

#[test]
fn targets_required() {
    fails(
        "portals: [{address: 0.0.0.0}]",
        "targets",
        "at least one target",
    );
    fails(
        "portals: [{address: 0.0.0.0}]\ntargets: []",
        "targets",
        "at least one target",
    );
}

#[test]
fn target_name_required_and_checked() {
    let t = |name: &str| {
        format!("portals: [{{address: 0.0.0.0}}]\ntargets: [{{name: \"{name}\", luns: [{{backing: {{type: ram, size: 1M}}}}]}}]")
    };
    fails(
        "portals: [{address: 0.0.0.0}]\ntargets: [{luns: [{backing: {type: ram, size: 1M}}]}]",
        "targets[0].name",
        "required",
    );
    fails(
        &t("iqn.2026-11.org.Example:x"),
        "targets[0].name",
        "lowercase",
    );
    fails(
        &t("disk0"),
        "targets[0].name",
        "must start with iqn., eui. or naa.",
    );
    fails(&t("eui.1234"), "targets[0].name", "16 hex digits");
}

#[test]
fn iscsi_name_syntax() {
    for good in [
        "iqn.2026-11.org.example",
        "iqn.2026-11.org.example:disk0",
        "iqn.1993-08.org.debian:01:1234567890ab",
        "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
        "iqn.2026-11.io.iser-target:ram0",
        "eui.02004567A425678D",
        "eui.02004567a425678d",
        "naa.52004567BA64678D",
        "naa.62004567BA64678D0123456789ABCDEF",
    ] {
        assert_eq!(validate_iscsi_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "iqn.",
        "iqn.2026-13.org.example",
        "iqn.2026-1.org.example",
        "iqn.26-11.org.example",
        "iqn.2026-11",
        "iqn.2026-11.",
        "iqn.2026-11:org.example",
        "iqn.2026-11.org..example",
        "iqn.2026-11.org.example:",
        "iqn.2026-11.org.example:UPPER",
        "iqn.2026-11.org.example:under_score",
        "iqn.2026-11.org.example:sp ace",
        "IQN.2026-11.org.example",
        "eui.02004567A425678",
        "eui.02004567A425678DX",
        "eui.0200456GA425678D",
        "naa.52004567BA64678",
        "naa.52004567BA64678D00",
        "foo.bar",
    ] {
        assert!(validate_iscsi_name(bad).is_err(), "{bad} accepted");
    }
    let long = format!("iqn.2026-11.org.example:{}", "a".repeat(200));
    assert!(validate_iscsi_name(&long).unwrap_err().contains("223"));
}

#[test]
fn duplicate_target_names() {
    fails(
        "portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}}]
  - name: iqn.2026-11.org.example:u
    luns: [{backing: {type: ram, size: 1M}}]
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}}]
",
        "targets[2].name",
        "duplicates targets[0].name",
    );
}

#[test]
fn allowed_initiators_checked_and_matched() {
    fails(
        "portals: [{address: 0.0.0.0}]\ntargets: [{name: iqn.2026-11.org.example:t, allowed_initiators: [iqn.1993-08.org.debian:01:ab, client1], luns: [{backing: {type: ram, size: 1M}}]}]",
        "targets[0].allowed_initiators[1]",
        "not an iSCSI name",
    );
    let c = ok("portals: [{address: 0.0.0.0}]\ntargets: [{name: iqn.2026-11.org.example:t, allowed_initiators: [iqn.1993-08.org.debian:01:ab, eui.02004567a425678d], luns: [{backing: {type: ram, size: 1M}}]}]");
    let t = &c.targets[0];
    assert!(t.is_allowed("iqn.1993-08.org.debian:01:ab"));
    assert!(Config::is_allowed(t, "eui.02004567A425678D"));
    assert!(!t.is_allowed("iqn.1993-08.org.debian:01:cd"));
    assert!(!t.is_allowed(""));
    let open = ok(MINIMAL);
    assert!(open.targets[0].is_allowed("iqn.1993-08.org.debian:01:anything"));
}

#[test]
fn find_target_by_name() {
    let c = ok(MINIMAL);
    assert!(c.find_target("iqn.2026-11.org.example:t").is_some());
    assert!(c.find_target("IQN.2026-11.ORG.EXAMPLE:T").is_some());
    assert!(c.find_target("iqn.2026-11.org.example:u").is_none());
}

// --- YAML-level errors ------------------------------------------------------

#[test]
fn serde_level_errors_read_well() {
    // Syntax errors: one location, prefixed as such.
    let e = Config::from_yaml_str("portals: [{address: 0.0.0.0}\n").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("YAML syntax error: "), "{s}");
    assert_eq!(s.matches("(at line").count(), 0, "{s}");
    assert!(e.location().is_some());
    // Duplicate keys name the key.
    fails(
        &format!("{MINIMAL}portals: []\n"),
        "portals",
        "duplicate field `portals`",
    );
    // Wrong shapes do not leak internal type names.
    let e = Config::from_yaml_str("- a\n- b\n").unwrap_err();
    assert!(!e.to_string().contains("Raw"), "{e}");
    assert!(e.to_string().contains("expected a mapping"), "{e}");
    // Integers beyond 64 bits.
    fails(
        &with_lun("backing: {type: file, path: /x, size: 99999999999999999999}"),
        "targets[0].luns[0].backing.size",
        "too large",
    );
}

#[test]
fn block_style_ipv6_needs_no_quotes() {
    let c = ok("
portals:
  - address: ::1
  - address: fe80::1
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}}]
");
    assert_eq!(c.portals[0].address, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(c.portals[1].address, "fe80::1".parse::<IpAddr>().unwrap());
}

// --- ALUA -------------------------------------------------------------------

#[test]
fn alua_port_defaults_and_choices() {
    let c = ok(MINIMAL);
    assert_eq!(c.target_port_group, 1);
    assert_eq!(c.alua_state, AluaState::ActiveOptimized);
    let c = ok(&format!(
        "{MINIMAL}target_port_group: 2\nalua_state: active-non-optimized\n"
    ));
    assert_eq!(c.target_port_group, 2);
    assert_eq!(c.alua_state, AluaState::ActiveNonOptimized);
    let c = ok(&format!("{MINIMAL}alua_state: standby\n"));
    assert_eq!(c.alua_state, AluaState::Standby);
    fails(
        &format!("{MINIMAL}target_port_group: 0\n"),
        "target_port_group",
        "1..=65535",
    );
    fails(
        &format!("{MINIMAL}target_port_group: 65536\n"),
        "target_port_group",
        "1..=65535",
    );
    fails(
        &format!("{MINIMAL}alua_state: offline\n"),
        "alua_state",
        "active-optimized",
    );
}

#[test]
fn metrics_is_an_address_and_port() {
    assert_eq!(ok(MINIMAL).metrics, None);
    let c = ok(&format!("{MINIMAL}metrics: 127.0.0.1:9469\n"));
    assert_eq!(c.metrics, Some("127.0.0.1:9469".parse().unwrap()));
    let c = ok(&format!("{MINIMAL}metrics: \"[::1]:9469\"\n"));
    assert_eq!(c.metrics, Some("[::1]:9469".parse().unwrap()));
    fails(
        &format!("{MINIMAL}metrics: 9469\n"),
        "metrics",
        "127.0.0.1:9469",
    );
}

#[test]
fn state_dir_is_optional_and_not_empty() {
    assert_eq!(ok(MINIMAL).state_dir, None);
    let c = ok(&format!("{MINIMAL}state_dir: /var/lib/iser-target\n"));
    assert_eq!(
        c.state_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/iser-target"))
    );
    fails(
        &format!("{MINIMAL}state_dir: \"  \"\n"),
        "state_dir",
        "empty",
    );
}

mod chap;
mod limits;
mod luns;
