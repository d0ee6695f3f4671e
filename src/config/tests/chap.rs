//! CHAP: a target's `auth`, `discovery_auth` and per-initiator credentials.

use super::*;

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
