//! CHAP authentication: one-way and mutual, per-initiator credentials, discovery.

use super::*;

const CHAP_USER: &str = "alice";
const CHAP_SECRET: &[u8] = b"alice-secret-1234";
const MUTUAL_USER: &str = "tgt0";
const MUTUAL_SECRET: &[u8] = b"target-secret-5678";
/// Our challenge with [`pattern_random`] for MD5: 16 bytes a0 a1 ... af, identifier 0xa0.
const PATTERN_ID: u8 = 0xa0;

/// A deterministic stand-in for the CSPRNG: a0 a1 a2 ...
fn pattern_random(buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = 0xa0 ^ i as u8;
    }
    Ok(())
}

fn credentials(username: &str, secret: &[u8]) -> Credentials {
    Credentials {
        username: username.into(),
        secret: Secret::new(secret),
    }
}

fn chap_auth(mutual: bool) -> Authentication {
    Authentication {
        chap: credentials(CHAP_USER, CHAP_SECRET),
        mutual_chap: mutual.then(|| credentials(MUTUAL_USER, MUTUAL_SECRET)),
    }
}

/// [`config`] with CHAP required on [`TARGET`].
fn chap_config(mutual: bool) -> CoreConfig {
    let mut cfg = config();
    cfg.random = pattern_random;
    cfg.targets[0].auth = Some(chap_auth(mutual));
    cfg
}

fn transit(pdu: &Pdu) -> bool {
    match &pdu.header {
        Header::LoginResponse(r) => r.transit,
        other => panic!("not a Login Response: {other:?}"),
    }
}

/// The keys of libiscsi's first Login Request with credentials (lib/login.c): identity and
/// `AuthMethod=CHAP,None`, with T=1 towards the operational stage.
fn chap_first_keys(initiator: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("InitiatorName", initiator),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP,None"),
    ]
}

impl Pair {
    /// AuthMethod and CHAP_A legs; returns the target's (CHAP_A, identifier, challenge).
    fn chap_challenge(
        &mut self,
        first: &[(&str, &str)],
        algorithms: &str,
    ) -> (Algorithm, u8, Vec<u8>) {
        let r = self.login_step(Stage::Security, Some(Stage::Operational), first);
        assert_eq!(login_status(&r), (0, 0));
        assert!(
            !transit(&r),
            "the target holds the login in the security stage"
        );
        assert_eq!(keys_of(&r)["AuthMethod"], "CHAP");
        let r = self.login_step(Stage::Security, None, &[("CHAP_A", algorithms)]);
        assert_eq!(login_status(&r), (0, 0));
        assert!(!transit(&r));
        let keys = keys_of(&r);
        let algorithm = match keys["CHAP_A"].as_str() {
            "5" => Algorithm::Md5,
            "6" => Algorithm::Sha1,
            "7" => Algorithm::Sha256,
            "8" => Algorithm::Sha3_256,
            other => panic!("CHAP_A={other}"),
        };
        let id: u8 = keys["CHAP_I"].parse().expect("decimal CHAP_I");
        let challenge = decode_binary(&keys["CHAP_C"]).expect("hex CHAP_C");
        assert!(keys["CHAP_C"].starts_with("0x"));
        (algorithm, id, challenge)
    }

    /// The CHAP_N/CHAP_R leg with T=1, as libiscsi and open-iscsi send it.
    fn chap_respond(&mut self, keys: &[(&str, &str)]) -> Pdu {
        self.login_step(Stage::Security, Some(Stage::Operational), keys)
    }

    /// Operational → full feature after a successful security stage.
    fn finish_operational(&mut self) {
        let r = self.login_step(Stage::Operational, Some(Stage::FullFeature), &[]);
        assert_eq!(login_status(&r), (0, 0));
        assert!(self.conn.core().is_full_feature());
    }
}

fn hex_response(algorithm: Algorithm, id: u8, secret: &[u8], challenge: &[u8]) -> String {
    encode_hex(&algorithm.response(id, secret, challenge))
}

/// Asserts the last response failed the login with `status` and nothing reached a LUN.
fn assert_refused(pair: &Pair, r: &Pdu, status: (u8, u8)) {
    assert_eq!(login_status(r), status);
    assert!(!transit(r));
    assert_eq!(refused_with(&pair.closed), Some((status.0, status.1)));
    assert!(!pair.conn.core().is_full_feature());
    assert_eq!(pair.bind_requests, 0, "never reaches session binding");
    assert!(pair.executed.is_empty());
}

#[test]
fn chap_md5_login_as_libiscsi_does_it() {
    let mut pair = Pair::new(chap_config(false));
    let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    assert_eq!(algorithm, Algorithm::Md5);
    assert_eq!(id, PATTERN_ID);
    // Linux's target sends 16 bytes for MD5; so do we.
    let expected: Vec<u8> = (0..16).map(|i| 0xa0 ^ i).collect();
    assert_eq!(challenge, expected);
    // MD5(a0 || "alice-secret-1234" || a0 a1 ... af), computed independently with
    // `(printf '\xa0alice-secret-1234'; printf '\xa0\xa1...\xaf') | md5sum`.
    let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
    assert_eq!(response, "0x297cca53bd2f20508cd7590ea81ee66f");
    let r = pair.chap_respond(&[("CHAP_N", CHAP_USER), ("CHAP_R", &response)]);
    assert_eq!(login_status(&r), (0, 0));
    assert!(transit(&r), "authenticated: on to the operational stage");
    assert!(
        keys_of(&r).is_empty(),
        "one-way CHAP: no CHAP_N/CHAP_R back"
    );
    pair.finish_operational();
    pair.take();
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    assert_eq!(pair.executed.len(), 1);
}

#[test]
fn chap_picks_the_strongest_algorithm_offered() {
    // open-iscsi's default node.session.auth.chap_algs order, libiscsi's 5 only, and libiscsi
    // iscsi-test-cu iSCSICHAP's "5,6,7,8" (test-tool/test_iscsi_chap.c, newer than 1.19).
    for (offer, chosen) in [
        ("8,7,6,5", Algorithm::Sha3_256),
        ("5,6,7,8", Algorithm::Sha3_256),
        ("5", Algorithm::Md5),
        ("6", Algorithm::Sha1),
        ("7", Algorithm::Sha256),
        ("8", Algorithm::Sha3_256),
        ("5,99,6", Algorithm::Sha1),
    ] {
        let mut pair = Pair::new(chap_config(true));
        let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), offer);
        assert_eq!(algorithm, chosen, "offer {offer}");
        assert_eq!(challenge.len(), algorithm.digest_size(), "offer {offer}");
        let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
        let r = pair.chap_respond(&[
            ("CHAP_N", CHAP_USER),
            ("CHAP_R", &response),
            ("CHAP_I", "7"),
            ("CHAP_C", "0x0102030405060708"),
        ]);
        assert_eq!(login_status(&r), (0, 0), "offer {offer}");
        let keys = keys_of(&r);
        assert_eq!(keys["CHAP_N"], MUTUAL_USER);
        let ours = hex_response(algorithm, 7, MUTUAL_SECRET, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(keys["CHAP_R"], ours, "offer {offer}");
        pair.finish_operational();
    }
}

#[test]
fn chap_mutual_and_one_way_on_a_target_with_mutual_credentials() {
    // Mutual: the target's CHAP_N/CHAP_R come in the response that ends the security stage, where
    // libiscsi expects them (lib/login.c: must_have_chap_n when T=1 and CSG=0).
    let mut pair = Pair::new(chap_config(true));
    let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
    let r = pair.chap_respond(&[
        ("CHAP_N", CHAP_USER),
        ("CHAP_R", &response),
        ("CHAP_I", "0x2a"),
        ("CHAP_C", "0bAAECAwQFBgcICQoLDA0ODw=="),
    ]);
    assert_eq!(login_status(&r), (0, 0));
    assert!(transit(&r));
    let keys = keys_of(&r);
    assert_eq!(keys["CHAP_N"], MUTUAL_USER);
    let their: Vec<u8> = (0..16).collect();
    assert_eq!(
        keys["CHAP_R"],
        hex_response(Algorithm::Md5, 42, MUTUAL_SECRET, &their)
    );
    pair.finish_operational();

    // One-way on the same target: mutual CHAP is the initiator's choice (LIO and tgt accept it).
    let mut pair = Pair::new(chap_config(true));
    let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
    let r = pair.chap_respond(&[("CHAP_N", CHAP_USER), ("CHAP_R", &response)]);
    assert_eq!(login_status(&r), (0, 0));
    assert!(keys_of(&r).is_empty());
    pair.finish_operational();
}

#[test]
fn chap_response_in_base64_and_in_a_request_without_transit() {
    let mut pair = Pair::new(chap_config(false));
    let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "7");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(algorithm.response(
        id,
        CHAP_SECRET,
        &challenge,
    ));
    let r = pair.login_step(
        Stage::Security,
        None,
        &[("CHAP_N", CHAP_USER), ("CHAP_R", &format!("0b{b64}"))],
    );
    assert_eq!(login_status(&r), (0, 0));
    assert!(!transit(&r));
    // Authenticated: a later request may leave the security stage.
    let r = pair.login_step(Stage::Security, Some(Stage::Operational), &[]);
    assert_eq!(login_status(&r), (0, 0));
    assert!(transit(&r));
    pair.finish_operational();
}

#[test]
fn chap_wrong_name_or_response_fails_with_0201() {
    let good =
        |algorithm, id, challenge: &[u8]| hex_response(algorithm, id, CHAP_SECRET, challenge);
    type Case = fn(Algorithm, u8, &[u8], String) -> Vec<(&'static str, String)>;
    let cases: [(&str, Case); 5] = [
        ("wrong name", |_, _, _, r| {
            vec![("CHAP_N", "bob".into()), ("CHAP_R", r)]
        }),
        ("name differs in case", |_, _, _, r| {
            vec![("CHAP_N", "Alice".into()), ("CHAP_R", r)]
        }),
        ("wrong secret", |a, id, c, _| {
            vec![
                ("CHAP_N", CHAP_USER.into()),
                ("CHAP_R", hex_response(a, id, b"not-the-secret!!", c)),
            ]
        }),
        ("wrong identifier", |a, id, c, _| {
            vec![
                ("CHAP_N", CHAP_USER.into()),
                (
                    "CHAP_R",
                    hex_response(a, id.wrapping_add(1), CHAP_SECRET, c),
                ),
            ]
        }),
        ("truncated response", |_, _, _, r| {
            vec![
                ("CHAP_N", CHAP_USER.into()),
                ("CHAP_R", r[..r.len() - 2].into()),
            ]
        }),
    ];
    for (what, keys) in cases {
        let mut pair = Pair::new(chap_config(false));
        let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
        let keys = keys(algorithm, id, &challenge, good(algorithm, id, &challenge));
        let keys: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = pair.chap_respond(&keys);
        assert_refused(&pair, &r, (2, 1));
        assert!(keys_of(&r).is_empty(), "{what}: nothing but the status");
    }
}

/// The core leaves the log to the transport: the close says who was refused and why, in the
/// words the operator reads (and scripts/guest/chap.sh looks for).
#[test]
fn chap_refusal_names_the_initiator_and_why() {
    let mut pair = Pair::new(chap_config(false));
    let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let wrong = hex_response(algorithm, id, b"not-the-secret!!", &challenge);
    pair.chap_respond(&[("CHAP_N", CHAP_USER), ("CHAP_R", &wrong)]);
    let Some(CloseReason::LoginFailed(refusal)) = &pair.closed else {
        panic!("not refused: {:?}", pair.closed);
    };
    assert_eq!(refusal.initiator.as_deref(), Some(INITIATOR));
    assert_eq!(
        refusal.to_string(),
        format!(
            "login of {INITIATOR} to {TARGET} refused with status 0x0201: CHAP: CHAP_R is wrong"
        )
    );
    // A discovery login that skips the CHAP its portal asks for.
    let mut cfg = config();
    cfg.discovery_auth = Some(chap_auth(false));
    let mut pair = Pair::new(cfg);
    pair.login_step(
        Stage::Operational,
        Some(Stage::FullFeature),
        &[("InitiatorName", INITIATOR), ("SessionType", "Discovery")],
    );
    let Some(CloseReason::LoginFailed(refusal)) = &pair.closed else {
        panic!("not refused: {:?}", pair.closed);
    };
    assert_eq!(
        refusal.to_string(),
        format!(
            "discovery login of {INITIATOR} refused with status 0x0201: skips the CHAP \
             authentication it needs"
        )
    );
}

#[test]
fn chap_target_refuses_logins_that_do_not_authenticate() {
    let base = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    // libiscsi without credentials: its first request is already in the operational stage
    // (lib/login.c); tgt answers 0x0201 and so do we.
    let (s, pair) = login_failure(chap_config(false), Stage::Operational, &with(&[]));
    assert_eq!(s, (2, 1));
    assert_eq!(pair.bind_requests, 0);
    // None only offered.
    let (s, _) = login_failure(
        chap_config(false),
        Stage::Security,
        &with(&[("AuthMethod", "None")]),
    );
    assert_eq!(s, (2, 1));
    // Leaving the security stage without any AuthMethod.
    let (s, _) = login_failure(chap_config(false), Stage::Security, &with(&[]));
    assert_eq!(s, (2, 1));
    // Methods we do not do.
    let (s, _) = login_failure(
        chap_config(false),
        Stage::Security,
        &with(&[("AuthMethod", "SRP,KRB5")]),
    );
    assert_eq!(s, (2, 1));
    // CHAP keys on a target without credentials, or before AuthMethod=CHAP is settled.
    let (s, _) = login_failure(
        config(),
        Stage::Security,
        &with(&[("AuthMethod", "None"), ("CHAP_A", "5")]),
    );
    assert_eq!(s, (2, 1));
    let (s, _) = login_failure(
        chap_config(false),
        Stage::Security,
        &with(&[("CHAP_A", "5")]),
    );
    assert_eq!(s, (2, 1));
    // The ACL is checked before authentication: a refused initiator learns nothing about CHAP.
    let mut cfg = chap_config(false);
    cfg.targets[0].allowed_initiators = vec!["iqn.2026-01.test:other".into()];
    let (s, _) = login_failure(cfg, Stage::Security, &with(&[("AuthMethod", "CHAP")]));
    assert_eq!(s, (2, 2));
}

#[test]
fn chap_operational_keys_and_stage_skips_during_chap_are_initiator_errors() {
    // Operational keys in the security stage are a protocol error (0x0200).
    let mut pair = Pair::new(chap_config(false));
    pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let r = pair.login_step(Stage::Security, None, &[("MaxBurstLength", "4096")]);
    assert_refused(&pair, &r, (2, 0));
    // Skipping to the operational stage after the challenge, as tgt also refuses with 0x0200.
    let mut pair = Pair::new(chap_config(false));
    pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let r = pair.login_step(Stage::Operational, Some(Stage::FullFeature), &[]);
    assert_refused(&pair, &r, (2, 0));
    // AuthMethod offered again after CHAP was settled.
    let mut pair = Pair::new(chap_config(false));
    pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let r = pair.login_step(Stage::Security, None, &[("AuthMethod", "None")]);
    assert_refused(&pair, &r, (2, 0));
}

#[test]
fn chap_mutual_refusals() {
    let mutual_keys = |pair: &mut Pair, i: &str, c: &str| {
        let mut pair_keys = Vec::new();
        let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
        pair_keys.push(("CHAP_N".to_string(), CHAP_USER.to_string()));
        pair_keys.push((
            "CHAP_R".to_string(),
            hex_response(algorithm, id, CHAP_SECRET, &challenge),
        ));
        if !i.is_empty() {
            pair_keys.push(("CHAP_I".to_string(), i.to_string()));
        }
        if !c.is_empty() {
            let c = if c == "reflect" {
                encode_hex(&challenge)
            } else {
                c.to_string()
            };
            pair_keys.push(("CHAP_C".to_string(), c));
        }
        let keys: Vec<(&str, &str)> = pair_keys
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pair.chap_respond(&keys)
    };
    for (mutual, i, c, what) in [
        // A reflected challenge (RFC 7143 §12.1.3; LIO refuses it too).
        (true, "1", "reflect", "reflected challenge"),
        // Mutual CHAP asked of a target that has no mutual credentials.
        (false, "1", "0x01020304", "no mutual credentials"),
        (true, "1", "", "CHAP_I without CHAP_C"),
        (true, "", "0x01020304", "CHAP_C without CHAP_I"),
        (true, "256", "0x01020304", "identifier above 255"),
        (true, "one", "0x01020304", "identifier not a number"),
        (true, "1", "0x", "empty challenge"),
        (true, "1", "0x0g", "bad hex"),
        (true, "1", "01020304", "no encoding prefix"),
    ] {
        let mut pair = Pair::new(chap_config(mutual));
        let r = mutual_keys(&mut pair, i, c);
        assert_eq!(login_status(&r), (2, 1), "{what}");
        assert!(keys_of(&r).is_empty(), "{what}: no CHAP_R leaks out");
        assert_eq!(refused_with(&pair.closed), Some((2, 1)), "{what}");
    }
    // Initiator challenges longer than Linux's target accepts (1024 bytes) are refused too.
    let mut pair = Pair::new(chap_config(true));
    let long = encode_hex(&[7u8; 1025]);
    let r = mutual_keys(&mut pair, "1", &long);
    assert_eq!(login_status(&r), (2, 1));
}

#[test]
fn chap_malformed_values_fail_with_0201() {
    // CHAP_A: empty and "56" are what libiscsi's iSCSICHAP.Invalid sends
    // (test-tool/test_iscsi_chap.c, newer than 1.19).
    for algorithms in ["", "56", "MD5", "5,", "0x"] {
        let mut pair = Pair::new(chap_config(false));
        let r = pair.login_step(
            Stage::Security,
            Some(Stage::Operational),
            &chap_first_keys(INITIATOR),
        );
        assert_eq!(keys_of(&r)["AuthMethod"], "CHAP");
        let r = pair.login_step(Stage::Security, None, &[("CHAP_A", algorithms)]);
        assert_refused(&pair, &r, (2, 1));
    }
    // The wrong keys at the algorithm step.
    for keys in [
        vec![("CHAP_N", CHAP_USER), ("CHAP_R", "0x00")],
        vec![("CHAP_A", "5"), ("CHAP_N", CHAP_USER)],
        vec![("CHAP_X", "1")],
    ] {
        let mut pair = Pair::new(chap_config(false));
        pair.login_step(
            Stage::Security,
            Some(Stage::Operational),
            &chap_first_keys(INITIATOR),
        );
        let r = pair.login_step(Stage::Security, None, &keys);
        assert_refused(&pair, &r, (2, 1));
    }
    // The wrong keys or values at the response step.
    let responses: [&[(&str, &str)]; 7] = [
        &[("CHAP_N", CHAP_USER)],
        &[("CHAP_R", "0x00112233445566778899aabbccddeeff")],
        &[("CHAP_N", CHAP_USER), ("CHAP_R", "not-binary")],
        &[("CHAP_N", CHAP_USER), ("CHAP_R", "0x0011223")],
        &[("CHAP_N", CHAP_USER), ("CHAP_R", "0b*")],
        &[("CHAP_A", "5")],
        &[("CHAP_N", CHAP_USER), ("CHAP_N", CHAP_USER)],
    ];
    for keys in responses {
        let mut pair = Pair::new(chap_config(false));
        pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
        let r = pair.chap_respond(keys);
        assert_refused(&pair, &r, (2, 1));
    }
}

#[test]
fn chap_without_a_random_source_is_a_target_error() {
    let mut cfg = chap_config(false);
    cfg.random = no_random_source;
    let mut pair = Pair::new(cfg);
    pair.login_step(
        Stage::Security,
        Some(Stage::Operational),
        &chap_first_keys(INITIATOR),
    );
    let r = pair.login_step(Stage::Security, None, &[("CHAP_A", "5")]);
    assert_refused(&pair, &r, (3, 0));
}

#[test]
fn chap_for_discovery_sessions() {
    let discovery = [
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("AuthMethod", "CHAP,None"),
    ];
    let mut cfg = config();
    cfg.random = pattern_random;
    cfg.discovery_auth = Some(chap_auth(false));
    // Without CHAP: refused, as a skipped security stage is.
    let (s, _) = login_failure(
        cfg.clone(),
        Stage::Operational,
        &[("InitiatorName", INITIATOR), ("SessionType", "Discovery")],
    );
    assert_eq!(s, (2, 1));
    // With CHAP: SendTargets works afterwards.
    let mut pair = Pair::new(cfg.clone());
    let (algorithm, id, challenge) = pair.chap_challenge(&discovery, "5");
    let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
    let r = pair.chap_respond(&[("CHAP_N", CHAP_USER), ("CHAP_R", &response)]);
    assert_eq!(login_status(&r), (0, 0));
    pair.finish_operational();
    pair.take();
    pair.text(9, RESERVED_TAG, kv(&[("SendTargets", "All")]));
    let r = pair.take_one();
    assert!(keys_of(&r).contains_key("TargetName"));
    // Discovery credentials do not open normal sessions, which need none here.
    let mut pair = Pair::new(cfg);
    pair.login(&[]);
}

#[test]
fn chap_per_initiator_credentials_win() {
    const BOB: &str = "iqn.2026-01.test:bob";
    let bob = Authentication {
        chap: credentials("bob", b"bobs-own-secret-99"),
        mutual_chap: None,
    };
    // A target without auth of its own: only bob must authenticate.
    let mut cfg = config();
    cfg.random = pattern_random;
    cfg.targets[0].initiator_auth = vec![(BOB.to_string(), bob.clone())];
    let mut pair = Pair::new(cfg.clone());
    pair.login(&[]);
    let (s, _) = login_failure(
        cfg.clone(),
        Stage::Security,
        &[
            ("InitiatorName", BOB),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(s, (2, 1));
    // A target with auth: bob's entry wins, the target's credentials fail for him.
    cfg.targets[0].auth = Some(chap_auth(false));
    for (user, secret, status) in [
        ("bob", &b"bobs-own-secret-99"[..], (0, 0)),
        (CHAP_USER, CHAP_SECRET, (2, 1)),
    ] {
        let mut pair = Pair::new(cfg.clone());
        let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(BOB), "5");
        let response = hex_response(algorithm, id, secret, &challenge);
        let r = pair.chap_respond(&[("CHAP_N", user), ("CHAP_R", &response)]);
        assert_eq!(login_status(&r), status, "{user}");
    }
    // Everyone else still uses the target's.
    let mut pair = Pair::new(cfg);
    let (algorithm, id, challenge) = pair.chap_challenge(&chap_first_keys(INITIATOR), "5");
    let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
    let r = pair.chap_respond(&[("CHAP_N", CHAP_USER), ("CHAP_R", &response)]);
    assert_eq!(login_status(&r), (0, 0));
}

#[test]
fn chap_discovery_straight_from_security_to_full_feature() {
    // open-iscsi's discovery over iSER (8192-byte MaxRecvDataSegmentLength, no digests) goes from
    // the security stage straight to full feature (usr/login.c fill_security_params_text) and
    // refuses any non-security key in that last security-stage response.
    let mut cfg = config();
    cfg.random = pattern_random;
    cfg.discovery_auth = Some(chap_auth(false));
    let mut pair = Pair::new(cfg);
    let (algorithm, id, challenge) = pair.chap_challenge(
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "CHAP"),
        ],
        "5",
    );
    let response = hex_response(algorithm, id, CHAP_SECRET, &challenge);
    let r = pair.login_step(
        Stage::Security,
        Some(Stage::FullFeature),
        &[("CHAP_N", CHAP_USER), ("CHAP_R", &response)],
    );
    assert_eq!(login_status(&r), (0, 0));
    assert!(transit(&r));
    assert!(
        keys_of(&r).is_empty(),
        "security keys only: {:?}",
        keys_of(&r)
    );
    assert!(pair.conn.core().is_full_feature());
    assert_eq!(
        pair.conn
            .core()
            .params()
            .target_max_recv_data_segment_length,
        8192
    );
    pair.take();
    pair.text(9, RESERVED_TAG, kv(&[("SendTargets", "All")]));
    assert!(keys_of(&pair.take_one()).contains_key("TargetName"));
}
