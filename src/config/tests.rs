//! Unit tests for the configuration layer.

use super::identity::fnv1a64;
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
    // TCP and RDMA CM port spaces are separate (brief §2.1).
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

// --- LUNs -------------------------------------------------------------------

#[test]
fn luns_required() {
    fails(
        "portals: [{address: 0.0.0.0}]\ntargets: [{name: iqn.2026-11.org.example:t}]",
        "targets[0].luns",
        "at least one LUN",
    );
}

#[test]
fn lun_id_range() {
    ok(&with_lun("id: 16383, backing: {type: ram, size: 1M}"));
    fails(
        &with_lun("id: 16384, backing: {type: ram, size: 1M}"),
        "targets[0].luns[0].id",
        "0..=16383",
    );
}

#[test]
fn duplicate_lun_ids() {
    fails(
        "portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns:
      - backing: {type: ram, size: 1M}
      - id: 0
        backing: {type: ram, size: 1M}
",
        "targets[0].luns[1].id",
        "already used by targets[0].luns[0]",
    );
    // The same id in different targets is fine.
    ok("portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}}]
  - name: iqn.2026-11.org.example:u
    luns: [{backing: {type: ram, size: 1M}}]
");
}

#[test]
fn block_size_values() {
    ok(&with_lun(
        "block_size: 4096, backing: {type: ram, size: 4K}",
    ));
    fails(
        &with_lun("block_size: 1024, backing: {type: ram, size: 1M}"),
        "targets[0].luns[0].block_size",
        "use 512 or 4096",
    );
}

#[test]
fn backing_errors() {
    let p = "targets[0].luns[0]";
    fails(&with_lun("id: 0"), &format!("{p}.backing"), "required");
    fails(
        &with_lun("backing: {size: 1M}"),
        &format!("{p}.backing.type"),
        "ram, file, block or rbd",
    );
    fails(
        &with_lun("backing: {type: nvme}"),
        &format!("{p}.backing.type"),
        "use ram, file, block or rbd",
    );
    fails(
        &with_lun("backing: {type: ram}"),
        &format!("{p}.backing.size"),
        "required for type ram",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M, path: /x}"),
        &format!("{p}.backing.path"),
        "not used by type ram",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M, create: true}"),
        &format!("{p}.backing.create"),
        "not used by type ram",
    );
    fails(
        &with_lun("backing: {type: ram, size: 0}"),
        &format!("{p}.backing.size"),
        "greater than 0",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1000}"),
        &format!("{p}.backing.size"),
        "not a multiple of block_size 512",
    );
    fails(
        &with_lun("block_size: 4096, backing: {type: ram, size: 1536}"),
        &format!("{p}.backing.size"),
        "not a multiple of block_size 4096",
    );
    ok(&with_lun("backing: {type: ram, size: 1T}"));
    fails(
        &with_lun("backing: {type: ram, size: 1025G}"),
        &format!("{p}.backing.size"),
        "1 TiB",
    );
    fails(
        &with_lun("backing: {type: file}"),
        &format!("{p}.backing.path"),
        "required for type file",
    );
    fails(
        &with_lun("backing: {type: file, path: disk.img}"),
        &format!("{p}.backing.path"),
        "absolute path",
    );
    fails(
        &with_lun("backing: {type: file, path: /x.img, create: true}"),
        &format!("{p}.backing.size"),
        "create: true",
    );
    fails(
        &with_lun("backing: {type: file, path: /x.img, size: 12QB}"),
        &format!("{p}.backing.size"),
        "is not a size",
    );
    fails(
        &with_lun("backing: {type: block}"),
        &format!("{p}.backing.path"),
        "required for type block",
    );
    fails(
        &with_lun("backing: {type: block, path: /dev/sda, size: 1G}"),
        &format!("{p}.backing.size"),
        "its own size",
    );
    fails(
        &with_lun("backing: {type: block, path: /dev/sda, size: 1000}"),
        &format!("{p}.backing.size"),
        "its own size",
    );
    fails(
        &with_lun("backing: {type: block, path: /dev/sda, create: false}"),
        &format!("{p}.backing.create"),
        "not used by type block",
    );
}

#[test]
fn size_error_message_matches_spec() {
    let e = fails(
        &with_lun("backing: {type: ram, size: 12QB}"),
        "targets[0].luns[0].backing.size",
        "is not a size",
    );
    assert_eq!(
        e.to_string(),
        "targets[0].luns[0].backing.size: \"12QB\" is not a size; use bytes or a suffix K, M, G, T (KiB-based) like 1G, 512MiB"
    );
}

#[test]
fn size_value_types() {
    let p = "targets[0].luns[0].backing.size";
    fails(
        &with_lun("backing: {type: ram, size: -512}"),
        p,
        "is not a size",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1.5}"),
        p,
        "is not a size",
    );
    fails(
        &with_lun("backing: {type: ram, size: true}"),
        p,
        "is not a size",
    );
    fails(
        &with_lun("backing: {type: ram, size: [1]}"),
        p,
        "is not a size",
    );
    fails(
        &with_lun("backing: {type: file, path: /x, size: 99999999999999999999}"),
        p,
        "",
    );
    fails(
        &with_lun("backing: {type: file, path: /x, size: \"17179869184T\"}"),
        p,
        "too large",
    );
    let c = ok(&with_lun("backing: {type: ram, size: 1048576}"));
    assert_eq!(c.targets[0].luns[0].backing, Backing::Ram { size: 1 << 20 });
}

#[test]
fn size_parsing() {
    assert_eq!(parse_size("0"), Some(0));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("4096B"), Some(4096));
    assert_eq!(parse_size("1K"), Some(1024));
    assert_eq!(parse_size("1k"), Some(1024));
    assert_eq!(parse_size("1KB"), Some(1024));
    assert_eq!(parse_size("1KiB"), Some(1024));
    assert_eq!(parse_size("512MiB"), Some(512 << 20));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("10 GiB"), Some(10 << 30));
    assert_eq!(parse_size(" 2T "), Some(2 << 40));
    assert_eq!(parse_size("16777215T"), Some(16_777_215u64 << 40));
    assert_eq!(parse_size("18446744073709551615"), Some(u64::MAX));
    // Overflow, in the digits and in the multiplication.
    assert_eq!(parse_size("18446744073709551616"), None);
    assert_eq!(parse_size("16777216T"), None);
    assert_eq!(parse_size("17179869184G"), None);
    // Malformed.
    for bad in [
        "", "G", "1.5G", "-1", "12QB", "1 G B", "1Gi", "1PB", "0x10", "1e9", "1 000",
    ] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
}

#[test]
fn serial_rules() {
    let p = "targets[0].luns[0].serial";
    ok(&with_lun(&format!(
        "backing: {{type: ram, size: 1M}}, serial: \"{}\"",
        "x".repeat(32)
    )));
    fails(
        &with_lun(&format!(
            "backing: {{type: ram, size: 1M}}, serial: \"{}\"",
            "x".repeat(33)
        )),
        p,
        "1 to 32 printable ASCII",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, serial: \"\""),
        p,
        "1 to 32 printable ASCII",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, serial: \"caf\u{e9}\""),
        p,
        "printable ASCII",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, serial: \"a\\tb\""),
        p,
        "printable ASCII",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, serial: 1234"),
        p,
        "quote the serial",
    );
}

#[test]
fn identifier_rules() {
    let p = "targets[0].luns[0].identifier";
    fails(
        &with_lun("backing: {type: ram, size: 1M}, identifier: \"3000\""),
        p,
        "16 hex digits",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, identifier: \"300000000000000G\""),
        p,
        "16 hex digits",
    );
    fails(
        &with_lun("backing: {type: ram, size: 1M}, identifier: 3000000000000001"),
        p,
        "quote the identifier",
    );
    let c = ok(&with_lun(
        "backing: {type: ram, size: 1M}, identifier: \"600140abcdef0123\"",
    ));
    assert_eq!(c.targets[0].luns[0].identifier, 0x6001_40ab_cdef_0123);
}

#[test]
fn identifier_and_serial_are_stable() {
    // Pinned: FNV-1a 64 of "iqn.2026-11.io.iser-target:ram0\0" "0" is
    // 0xb44497dd9f81ecc9. Changing these values changes every disk's WWN and
    // breaks initiators' multipath and by-id links; do not.
    let c = Config::default_ram();
    let l = &c.targets[0].luns[0];
    assert_eq!(l.serial, "b44497dd9f81ecc9");
    assert_eq!(l.identifier, 0x3b44_497d_d9f8_1ecc);
    assert_eq!(
        derived_serial_and_identifier("iqn.2026-11.org.example:t", 1),
        ("3566198346348f4f".to_string(), 0x3356_6198_3463_48f4)
    );
    // Same inputs, same result; case of the name does not matter.
    assert_eq!(
        derived_serial_and_identifier("IQN.2026-11.io.iser-target:RAM0", 0),
        derived_serial_and_identifier(DEFAULT_TARGET_NAME, 0)
    );
    // FNV-1a 64 reference vectors.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    // Derived ids are NAA locally assigned (first nibble 3).
    assert_eq!(l.identifier >> 60, 3);
}

#[test]
fn derived_values_differ_between_luns_and_targets() {
    let c = ok("portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}}, {backing: {type: ram, size: 1M}}]
  - name: iqn.2026-11.org.example:u
    luns: [{backing: {type: ram, size: 1M}}]
");
    let mut ids: Vec<u64> = c
        .targets
        .iter()
        .flat_map(|t| t.luns.iter().map(|l| l.identifier))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[test]
fn duplicate_identifiers_across_targets() {
    fails(
        "portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{backing: {type: ram, size: 1M}, identifier: \"3000000000000001\"}]
  - name: iqn.2026-11.org.example:u
    luns:
      - backing: {type: ram, size: 1M}
      - backing: {type: ram, size: 1M}
        identifier: \"3000000000000001\"
",
        "targets[1].luns[1].identifier",
        "already the identifier of targets[0].luns[0]",
    );
    // An explicit identifier that collides with a derived one is also caught.
    let derived = derived_serial_and_identifier("iqn.2026-11.org.example:t", 0).1;
    fails(
        &format!(
            "portals: [{{address: 0.0.0.0}}]
targets:
  - name: iqn.2026-11.org.example:t
    luns: [{{backing: {{type: ram, size: 1M}}}}]
  - name: iqn.2026-11.org.example:u
    luns: [{{backing: {{type: ram, size: 1M}}, identifier: \"{derived:016x}\"}}]
"
        ),
        "targets[1].luns[0].identifier",
        "already the identifier of targets[0].luns[0]",
    );
}

#[test]
fn duplicate_serials() {
    fails(
        "portals: [{address: 0.0.0.0}]
targets:
  - name: iqn.2026-11.org.example:t
    luns:
      - {backing: {type: ram, size: 1M}, serial: SAME}
      - {backing: {type: ram, size: 1M}, serial: SAME}
",
        "targets[0].luns[1].serial",
        "already the serial of targets[0].luns[0]",
    );
}

// --- limits -----------------------------------------------------------------

#[test]
fn limits_ranges() {
    let cases: &[(&str, u64, u64)] = &[
        ("max_sessions", 1, 4096),
        ("max_discovery_sessions", 1, 4096),
        ("max_connections_per_portal", 1, 65536),
        ("max_connections_per_source", 1, 65536),
        ("queue_depth", 1, 1024),
        ("max_burst_length", 512, 16_777_215),
        ("max_recv_data_segment_length", 512, 16_777_215),
        ("max_outstanding_r2t", 1, 65535),
        ("nop_interval_secs", 0, 3600),
        ("nop_timeout_secs", 1, 3600),
        ("login_timeout_secs", 1, 3600),
        ("discovery_idle_timeout_secs", 1, 3600),
        ("max_io_size", 4096, 16 << 20),
        ("busy_poll_us", 0, 1000),
    ];
    for &(key, min, max) in cases {
        ok(&with_limits(&format!(
            "{key}: {min}, first_burst_length: 512"
        )));
        ok(&with_limits(&format!("{key}: {max}")));
        let range = format!("{min}..={max}");
        if min > 0 {
            fails(
                &with_limits(&format!("{key}: {}", min - 1)),
                &format!("limits.{key}"),
                &range,
            );
        }
        fails(
            &with_limits(&format!("{key}: {}", max + 1)),
            &format!("limits.{key}"),
            &range,
        );
    }
    fails(
        &with_limits("first_burst_length: 511"),
        "limits.first_burst_length",
        "512..=16777215",
    );
    fails(
        &with_limits("first_burst_length: 16777216"),
        "limits.first_burst_length",
        "512..=16777215",
    );
}

#[test]
fn first_burst_not_above_max_burst() {
    ok(&with_limits(
        "max_burst_length: 65536, first_burst_length: 65536",
    ));
    fails(
        &with_limits("max_burst_length: 8192, first_burst_length: 65536"),
        "limits.first_burst_length",
        "max_burst_length 8192",
    );
}

#[test]
fn max_io_size_multiple_of_4096() {
    fails(
        &with_limits("max_io_size: 6000"),
        "limits.max_io_size",
        "multiple of 4096",
    );
}

#[test]
fn negative_limit_is_a_type_error_with_path() {
    fails(&with_limits("queue_depth: -1"), "limits.queue_depth", "-1");
}

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

// --- CHAP -------------------------------------------------------------------

/// [`MINIMAL`]'s target with `extra` (YAML lines at the target's indentation) added.
fn with_target_keys(extra: &str) -> String {
    format!(
        "portals: [{{address: 0.0.0.0}}]\ntargets:\n  - name: iqn.2026-11.org.example:t\n    luns: [{{backing: {{type: ram, size: 1M}}}}]\n{extra}"
    )
}

fn secret_of(c: &Credentials) -> Secret {
    c.secret.clone()
}

#[test]
fn chap_auth_resolves() {
    let c = ok(&with_target_keys(
        "    auth:\n      chap: { username: alice, secret: a-secret-of-12-to-16 }\n      mutual_chap: { username: tgt0, secret: another-secret-12 }\n",
    ));
    let auth = c.targets[0].auth.as_ref().unwrap();
    assert_eq!(auth.chap.username, "alice");
    assert_eq!(secret_of(&auth.chap), Secret::new("a-secret-of-12-to-16"));
    let mutual = auth.mutual_chap.as_ref().unwrap();
    assert_eq!(mutual.username, "tgt0");
    assert_eq!(secret_of(mutual), Secret::new("another-secret-12"));
    assert_eq!(c.discovery_auth, None);
    // Debug output of the whole configuration never shows a secret.
    let shown = format!("{c:?}");
    assert!(!shown.contains("a-secret-of-12-to-16") && !shown.contains("another-secret-12"));
    assert!(shown.contains("alice"));
    // One-way only.
    let c = ok(&with_target_keys(
        "    auth: { chap: { username: alice, secret: a-secret-of-12-to-16 } }\n",
    ));
    assert_eq!(c.targets[0].auth.as_ref().unwrap().mutual_chap, None);
}

#[test]
fn chap_discovery_auth_and_per_initiator_entries() {
    let yaml = format!(
        "{}discovery_auth:\n  chap: {{ username: disc, secret: discovery-secret-1 }}\n",
        with_target_keys(
            "    allowed_initiators:\n      - iqn.1993-08.org.debian:01:plain\n      - name: iqn.1993-08.org.debian:01:bob\n        chap: { username: bob, secret: bobs-own-secret-99 }\n        mutual_chap: { username: tgt-bob, secret: tgt-secret-for-bob }\n      - { name: iqn.1993-08.org.debian:01:named }\n",
        )
    );
    let c = ok(&yaml);
    let t = &c.targets[0];
    assert_eq!(
        t.allowed_initiators,
        vec![
            "iqn.1993-08.org.debian:01:plain",
            "iqn.1993-08.org.debian:01:bob",
            "iqn.1993-08.org.debian:01:named"
        ]
    );
    assert_eq!(t.initiator_auth.len(), 1);
    let (name, bob) = &t.initiator_auth[0];
    assert_eq!(name, "iqn.1993-08.org.debian:01:bob");
    assert_eq!(bob.chap.username, "bob");
    assert_eq!(bob.mutual_chap.as_ref().unwrap().username, "tgt-bob");
    assert_eq!(c.discovery_auth.as_ref().unwrap().chap.username, "disc");
}

#[test]
fn chap_secret_file_is_read_without_its_trailing_newline() {
    let dir = std::env::temp_dir().join(format!("iser-chap-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "from-a-file-12345\n").unwrap();
    let c = ok(&with_target_keys(&format!(
        "    auth: {{ chap: {{ username: alice, secret_file: {} }} }}\n",
        file.display()
    )));
    let auth = c.targets[0].auth.as_ref().unwrap();
    assert_eq!(secret_of(&auth.chap), Secret::new("from-a-file-12345"));
    let missing = dir.join("missing");
    let e = fails(
        &with_target_keys(&format!(
            "    auth: {{ chap: {{ username: alice, secret_file: {} }} }}\n",
            missing.display()
        )),
        "targets[0].auth.chap.secret_file",
        "cannot read",
    );
    assert!(e.to_string().contains(&missing.display().to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
    fails(
        &with_target_keys("    auth: { chap: { username: alice, secret_file: relative/path } }\n"),
        "targets[0].auth.chap.secret_file",
        "not an absolute path",
    );
}

#[test]
fn chap_config_errors_name_the_field() {
    let cases = [
        (
            "    auth: { chap: { username: alice, secret: a-secret-of-12-to-16, colour: red } }\n",
            "targets[0].auth.chap.colour",
            "unknown field",
        ),
        (
            "    auth: { chap: { username: alice, secret: a-secret-of-12-to-16 }, kerberos: {} }\n",
            "targets[0].auth.kerberos",
            "unknown field",
        ),
        (
            "    auth: { chap: { secret: a-secret-of-12-to-16 } }\n",
            "targets[0].auth.chap.username",
            "required",
        ),
        (
            "    auth: { chap: { username: alice } }\n",
            "targets[0].auth.chap.secret",
            "required",
        ),
        (
            "    auth: { chap: { username: alice, secret: a-secret-of-12-to-16, secret_file: /etc/x } }\n",
            "targets[0].auth.chap.secret_file",
            "not both",
        ),
        (
            "    auth: { chap: { username: alice, secret: \"\" } }\n",
            "targets[0].auth.chap.secret",
            "1 to 255 bytes",
        ),
        (
            "    auth: { mutual_chap: { username: t, secret: a-secret-of-12-to-16 } }\n",
            "targets[0].auth.mutual_chap",
            "needs `chap` too",
        ),
        (
            "    auth: {}\n",
            "targets[0].auth.chap",
            "required",
        ),
        (
            "    auth: { chap: { username: a, secret: same-secret-both }, mutual_chap: { username: t, secret: same-secret-both } }\n",
            "targets[0].auth.mutual_chap.secret",
            "RFC 7143 §12.1.3",
        ),
        (
            "    allowed_initiators: [{ name: iqn.1993-08.org.debian:01:x, chap: { username: x, secret: a-secret-of-12-to-16 }, extra: 1 }]\n",
            "targets[0].allowed_initiators[0].extra",
            "unknown field",
        ),
        (
            "    allowed_initiators: [{ chap: { username: x, secret: a-secret-of-12-to-16 } }]\n",
            "targets[0].allowed_initiators[0].name",
            "required",
        ),
        (
            "    allowed_initiators: [{ name: Not-An-IQN }]\n",
            "targets[0].allowed_initiators[0].name",
            "",
        ),
        (
            "    allowed_initiators: [{ name: iqn.1993-08.org.debian:01:x, chap: { username: x } }]\n",
            "targets[0].allowed_initiators[0].chap.secret",
            "required",
        ),
        (
            "    allowed_initiators: [7]\n",
            "targets[0].allowed_initiators[0]",
            "not an initiator",
        ),
        (
            "    allowed_initiators: [iqn.1993-08.org.debian:01:x, { name: iqn.1993-08.org.debian:01:x }]\n",
            "targets[0].allowed_initiators[1]",
            "already",
        ),
    ];
    for (extra, field, needle) in cases {
        fails(&with_target_keys(extra), field, needle);
    }
    fails(
        &format!("{MINIMAL}discovery_auth: {{ chap: {{ username: d }} }}\n"),
        "discovery_auth.chap.secret",
        "required",
    );
}

#[test]
fn rbd_backing_resolves_with_defaults_and_in_full() {
    let c = ok(&with_lun("backing: {type: rbd, pool: rbd, image: disk0}"));
    assert_eq!(
        c.targets[0].luns[0].backing,
        Backing::Rbd(RbdBacking {
            pool: "rbd".into(),
            image: "disk0".into(),
            size: None,
            create: false,
            conf: "/etc/ceph/ceph.conf".into(),
            user: "admin".into(),
            timeout_secs: 20,
        })
    );
    let c = ok(&with_lun(
        "backing: {type: rbd, pool: rbd, image: disk0, size: 100G, create: true, \
         conf: /etc/ceph/ceph.conf, user: iscsi-gw, timeout_secs: 5}",
    ));
    let backing = &c.targets[0].luns[0].backing;
    assert_eq!(backing.configured_size(), Some(100 << 30));
    assert!(matches!(backing, Backing::Rbd(r) if r.create && r.user == "iscsi-gw"));
    assert!(matches!(backing, Backing::Rbd(r) if r.timeout_secs == 5));
}

#[test]
fn rbd_backing_errors_name_the_field() {
    let p = "targets[0].luns[0].backing";
    let cases = [
        ("{type: rbd, image: disk0}", "pool", "required for type rbd"),
        ("{type: rbd, pool: rbd}", "image", "required for type rbd"),
        (
            "{type: rbd, pool: \"a b\", image: x}",
            "pool",
            "not a usable pool name",
        ),
        (
            "{type: rbd, pool: rbd, image: a/b}",
            "image",
            "not a usable image name",
        ),
        (
            "{type: rbd, pool: rbd, image: x, create: true}",
            "size",
            "required when create",
        ),
        (
            "{type: rbd, pool: rbd, image: x, size: 1000}",
            "size",
            "multiple of block_size",
        ),
        (
            "{type: rbd, pool: rbd, image: x, conf: ceph.conf}",
            "conf",
            "not an absolute path",
        ),
        (
            "{type: rbd, pool: rbd, image: x, user: client.admin}",
            "user",
            "without \"client.\"",
        ),
        (
            "{type: rbd, pool: rbd, image: x, path: /x}",
            "path",
            "not used by type rbd",
        ),
        (
            "{type: rbd, pool: rbd, image: x, secret: y}",
            "",
            "unknown field",
        ),
        (
            "{type: file, path: /x, pool: rbd}",
            "pool",
            "not used by type file",
        ),
        (
            "{type: ram, size: 1M, user: admin}",
            "user",
            "not used by type ram",
        ),
        (
            "{type: rbd, pool: rbd, image: x, timeout_secs: 0}",
            "timeout_secs",
            "out of range",
        ),
        (
            "{type: ram, size: 1M, timeout_secs: 5}",
            "timeout_secs",
            "not used by type ram",
        ),
    ];
    for (backing, field, needle) in cases {
        let yaml = with_lun(&format!("backing: {backing}"));
        if field.is_empty() {
            let e = Config::from_yaml_str(&yaml).expect_err(backing);
            assert!(e.to_string().contains(needle), "{e}");
        } else {
            fails(&yaml, &format!("{p}.{field}"), needle);
        }
    }
}

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
