//! Whole-binary CHAP tests: `iser-target serve` with CHAP credentials, driven over TCP on
//! 127.0.0.1 by libiscsi's `iscsi-inq` and `iscsi-ls` with right, wrong and missing credentials.
//!
//! libiscsi's URL forms (lib/init.c, iscsi_parse_url): `iscsi://USER%SECRET@HOST:PORT/IQN/LUN` for
//! one-way CHAP; `?target_user=NAME&target_password=SECRET` after the LUN for mutual CHAP, which
//! libiscsi 1.19 checks (it refuses a target whose CHAP_N or CHAP_R is wrong, lib/login.c).
//! libiscsi offers MD5 only (`CHAP_A=5`). libiscsi 1.19's iscsi-test-cu has no iSCSICHAP suite
//! (it came with 1.20), so its cases are pinned as unit tests in src/iscsi/tests/chap.rs instead.

#[macro_use]
mod common;

use std::fs;
use std::process::{Command, Output};
use std::time::Duration;

use common::{run, LunSpec, Server, TargetSpec, TempDir};

const QUICK: Duration = Duration::from_secs(30);
const IQN: &str = "iqn.2026-11.io.iser-target:secure";
const USER: &str = "alice";
const SECRET: &str = "a-secret-of-12-to-16";
const TARGET_USER: &str = "tgt0";
const TARGET_SECRET: &str = "another-secret-12";

fn secure_target() -> TargetSpec {
    TargetSpec::new(IQN, vec![LunSpec::ram(0, "16M")]).with_yaml(&format!(
        "auth: {{ chap: {{ username: {USER}, secret: {SECRET} }}, \
         mutual_chap: {{ username: {TARGET_USER}, secret: {TARGET_SECRET} }} }}"
    ))
}

/// `iscsi://USER%SECRET@127.0.0.1:PORT/IQN/0` plus an optional query.
fn url(server: &Server, credentials: Option<(&str, &str)>, query: &str) -> String {
    let who = credentials
        .map(|(u, s)| format!("{u}%{s}@"))
        .unwrap_or_default();
    format!("iscsi://{who}127.0.0.1:{}/{IQN}/0{query}", server.port())
}

fn inq(url: &str) -> Output {
    run(Command::new("iscsi-inq").arg(url), QUICK)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out` is a successful INQUIRY; otherwise the failure shows the server's log beside it.
fn assert_inquiry_ok(out: &Output, server: &Server) {
    let ok = out.status.success() && String::from_utf8_lossy(&out.stdout).contains("DIRECT_ACCESS");
    assert!(ok, "{}--- server log ---\n{}", text(out), server.log());
}

fn assert_refused(out: &Output) {
    assert!(!out.status.success(), "login should fail: {}", text(out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("DIRECT_ACCESS"),
        "{}",
        text(out)
    );
}

#[test]
fn one_way_and_mutual_chap_with_iscsi_inq() {
    require_tools!("iscsi-inq");
    let mut server = Server::start(&[secure_target()]);
    assert_inquiry_ok(&inq(&url(&server, Some((USER, SECRET)), "")), &server);
    let mutual = format!("?target_user={TARGET_USER}&target_password={TARGET_SECRET}");
    assert_inquiry_ok(&inq(&url(&server, Some((USER, SECRET)), &mutual)), &server);
    server.assert_alive();
    server.stop();
}

#[test]
fn wrong_and_missing_credentials_are_refused() {
    require_tools!("iscsi-inq");
    let mut server = Server::start(&[secure_target()]);
    // No credentials: libiscsi skips the security stage and gets 0x0201.
    let out = inq(&url(&server, None, ""));
    assert_refused(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uthentication"),
        "libiscsi names the authentication failure: {}",
        text(&out)
    );
    assert_refused(&inq(&url(&server, Some((USER, "wrong-secret-1234")), "")));
    assert_refused(&inq(&url(&server, Some(("mallory", SECRET)), "")));
    // The target proves itself with its own credentials: libiscsi refuses it when it expects
    // others.
    let wrong_target = format!("?target_user={TARGET_USER}&target_password=not-the-target-1");
    assert_refused(&inq(&url(&server, Some((USER, SECRET)), &wrong_target)));
    let log = server.log();
    assert!(log.contains("CHAP"), "{log}");
    for secret in [SECRET, TARGET_SECRET] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
    server.assert_alive();
    server.stop();
}

/// A secret rotated by editing the file and SIGHUP: logins from then on need the new one, with
/// no restart; an open target made secure likewise.
#[test]
fn a_secret_changed_by_sighup_applies_to_the_next_login() {
    require_tools!("iscsi-inq");
    let mut server = Server::start(&[secure_target()]);
    let config = fs::read_to_string(server.config_path()).unwrap();
    const ROTATED: &str = "a-rotated-secret-16";
    let said = server.reload(&config.replace(SECRET, ROTATED));
    assert!(said.contains("access control"), "{said}");
    assert_refused(&inq(&url(&server, Some((USER, SECRET)), "")));
    assert_inquiry_ok(&inq(&url(&server, Some((USER, ROTATED)), "")), &server);

    let open = config
        .lines()
        .filter(|l| !l.contains("auth:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(open, config.trim_end());
    server.reload(&open);
    assert_inquiry_ok(&inq(&url(&server, None, "")), &server);
    server.reload(&config);
    assert_refused(&inq(&url(&server, None, "")));
    assert_inquiry_ok(&inq(&url(&server, Some((USER, SECRET)), "")), &server);
    server.stop();
}

#[test]
fn mutual_chap_is_refused_without_mutual_credentials() {
    require_tools!("iscsi-inq");
    let one_way = TargetSpec::new(IQN, vec![LunSpec::ram(0, "16M")]).with_yaml(&format!(
        "auth: {{ chap: {{ username: {USER}, secret: {SECRET} }} }}"
    ));
    let server = Server::start(&[one_way]);
    assert_inquiry_ok(&inq(&url(&server, Some((USER, SECRET)), "")), &server);
    let mutual = format!("?target_user={TARGET_USER}&target_password={TARGET_SECRET}");
    assert_refused(&inq(&url(&server, Some((USER, SECRET)), &mutual)));
    server.stop();
}

#[test]
fn per_initiator_credentials_and_discovery_auth() {
    require_tools!("iscsi-inq", "iscsi-ls");
    let bob = "iqn.2026-11.test:bob";
    let carol = "iqn.2026-11.test:carol";
    let target = TargetSpec::new(IQN, vec![LunSpec::ram(0, "16M")])
        .allow(&format!(
            "{{ name: {bob}, chap: {{ username: bob, secret: bobs-own-secret-99 }} }}"
        ))
        .allow(carol);
    let server = Server::start_with(
        &[target],
        "discovery_auth: { chap: { username: disc, secret: discovery-secret-1 } }\n",
    );
    // bob must authenticate with his own credentials; carol needs none.
    let as_bob = |creds| {
        run(
            Command::new("iscsi-inq")
                .args(["-i", bob])
                .arg(url(&server, creds, "")),
            QUICK,
        )
    };
    assert_inquiry_ok(&as_bob(Some(("bob", "bobs-own-secret-99"))), &server);
    assert_refused(&as_bob(None));
    assert_refused(&as_bob(Some((USER, SECRET))));
    let as_carol = run(
        Command::new("iscsi-inq")
            .args(["-i", carol])
            .arg(url(&server, None, "")),
        QUICK,
    );
    assert_inquiry_ok(&as_carol, &server);
    // Discovery needs the discovery credentials.
    let portal = |who: &str| format!("iscsi://{who}127.0.0.1:{}", server.port());
    let ls = |who: &str| {
        run(
            Command::new("iscsi-ls")
                .args(["-i", carol])
                .arg(portal(who)),
            QUICK,
        )
    };
    let out = ls("disc%discovery-secret-1@");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(IQN),
        "{}",
        text(&out)
    );
    let out = ls("");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(IQN),
        "{}",
        text(&out)
    );
    server.stop();
}

#[test]
fn check_config_warns_about_short_secrets_and_names_missing_secret_files() {
    let dir = TempDir::new("chap-config");
    let yaml = |auth: &str| {
        format!(
            "portals: [{{ address: 127.0.0.1, port: 3260 }}]\ntargets:\n  - name: {IQN}\n    \
             luns: [{{ backing: {{ type: ram, size: 1M }} }}]\n    auth: {auth}\n"
        )
    };
    let check = |name: &str, text: String| {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        run(
            Command::new(common::binary())
                .arg("check-config")
                .arg(&path),
            QUICK,
        )
    };
    let out = check(
        "short.yaml",
        yaml("{ chap: { username: a, secret: pw-x9 } }"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("targets[0].auth.chap.secret") && stderr.contains("RFC 7143 §9.2.1"),
        "{}",
        text(&out)
    );
    assert!(
        !stderr.contains("pw-x9"),
        "the secret itself is not shown: {stderr}"
    );
    let missing = dir.path().join("no-such-secret");
    let out = check(
        "missing.yaml",
        yaml(&format!(
            "{{ chap: {{ username: a, secret_file: {} }} }}",
            missing.display()
        )),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("targets[0].auth.chap.secret_file"),
        "{}",
        text(&out)
    );
}
