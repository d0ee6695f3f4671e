//! LUNs: ids, block sizes, backings (RAM, file, block device, RBD), sizes, serials and
//! identifiers.

use super::*;
use crate::config::identity::fnv1a64;

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
