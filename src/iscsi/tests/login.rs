//! Login: stages, failures, digests, timeouts and discovery sessions.

use super::*;

#[test]
fn login_security_operational_full_feature() {
    let mut pair = Pair::new(config());
    let r = pair.login_step(
        Stage::Security,
        Some(Stage::Operational),
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ],
    );
    let Header::LoginResponse(h) = &r.header else {
        unreachable!()
    };
    assert_eq!((h.status_class, h.status_detail), (0, 0));
    assert!(h.transit);
    assert_eq!(h.current_stage, Stage::Security);
    assert_eq!(h.next_stage, Stage::Operational);
    assert_eq!(h.isid, ISID);
    assert_eq!(h.tsih, 0, "TSIH only in the final response");
    assert_eq!(h.itt, 0x77);
    assert_eq!(
        h.stat_sn, FIRST_STAT_SN,
        "StatSN starts at the initiator's ExpStatSN"
    );
    assert_eq!(h.exp_cmd_sn, FIRST_CMD_SN);
    assert_eq!(h.max_cmd_sn, FIRST_CMD_SN + 15);
    let keys = keys_of(&r);
    assert_eq!(keys["AuthMethod"], "None");
    assert_eq!(
        keys["TargetPortalGroupTag"], "1",
        "TPGT in the first response"
    );

    let r = pair.login_step(
        Stage::Operational,
        Some(Stage::FullFeature),
        &[
            ("MaxBurstLength", "131072"),
            ("MaxRecvDataSegmentLength", "65536"),
        ],
    );
    let Header::LoginResponse(h) = &r.header else {
        unreachable!()
    };
    assert!(h.transit);
    assert_eq!(h.next_stage, Stage::FullFeature);
    assert_eq!(h.tsih, 0x1234);
    assert_eq!(h.stat_sn, FIRST_STAT_SN + 1);
    let keys = keys_of(&r);
    assert_eq!(keys["MaxBurstLength"], "131072");
    assert_eq!(
        keys["MaxRecvDataSegmentLength"], "262144",
        "target declares its MRDSL"
    );
    assert!(!keys.contains_key("TargetPortalGroupTag"), "TPGT only once");
    assert_eq!(pair.bind_requests, 1);
    assert_eq!(
        pair.frame_settings_seen,
        vec![FrameSettings {
            header_digest: false,
            data_digest: false,
            max_data_segment_length: 262_144
        }]
    );
    assert!(pair.conn.core().is_full_feature());
    assert_eq!(pair.conn.core().params().max_burst_length, 131_072);
    assert_eq!(
        pair.conn
            .core()
            .params()
            .initiator_max_recv_data_segment_length,
        65_536
    );
    assert_eq!(
        pair.conn.poll_timeout(),
        Some(pair.now + Duration::from_secs(15))
    );
}

#[test]
fn login_straight_to_operational() {
    let mut pair = Pair::new(config());
    let r = pair.login_step(
        Stage::Operational,
        Some(Stage::FullFeature),
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    assert_eq!(login_status(&r), (0, 0));
    let keys = keys_of(&r);
    assert_eq!(keys["TargetPortalGroupTag"], "1");
    assert_eq!(keys["MaxRecvDataSegmentLength"], "262144");
    assert!(pair.conn.core().is_full_feature());
}

#[test]
fn login_with_continued_text() {
    let mut pair = Pair::new(config());
    let all = kv(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
    ]);
    let (first, second) = all.split_at(7); // split inside a key
    let mut req = pair.login_request(Stage::Security, None, true, &[]);
    req.data = first.to_vec();
    pair.send(req);
    let r = pair.take_one();
    assert_eq!(login_status(&r), (0, 0));
    assert!(r.data.is_empty(), "a C-bit request gets an empty response");
    let mut req = pair.login_request(Stage::Security, Some(Stage::Operational), false, &[]);
    req.data = second.to_vec();
    pair.send(req);
    let r = pair.take_one();
    assert_eq!(login_status(&r), (0, 0));
    assert_eq!(keys_of(&r)["AuthMethod"], "None");
    assert_eq!(sequence(&r).0, FIRST_STAT_SN + 1);
}

#[test]
fn login_failures_carry_the_right_status() {
    let base = [("InitiatorName", INITIATOR), ("TargetName", TARGET)];
    let with = |extra: (&'static str, &'static str)| {
        let mut v = base.to_vec();
        v.push(extra);
        v
    };
    // Operational key in the security stage.
    let (s, _) = login_failure(config(), Stage::Security, &with(("MaxBurstLength", "512")));
    assert_eq!(s, (2, 0));
    let (s, _) = login_failure(
        config(),
        Stage::Security,
        &[("InitiatorName", INITIATOR), ("TargetName", "iqn.nope")],
    );
    assert_eq!(s, (2, 3));
    let (s, _) = login_failure(
        config(),
        Stage::Security,
        &[("InitiatorName", INITIATOR), ("TargetName", SECRET_TARGET)],
    );
    assert_eq!(s, (2, 2));
    let (s, _) = login_failure(config(), Stage::Security, &[("TargetName", TARGET)]);
    assert_eq!(s, (2, 7));
    let (s, _) = login_failure(config(), Stage::Security, &[("InitiatorName", INITIATOR)]);
    assert_eq!(s, (2, 7), "normal session needs TargetName");
    let (s, _) = login_failure(config(), Stage::Security, &with(("AuthMethod", "CHAP")));
    assert_eq!(s, (2, 1));
    let (s, _) = login_failure(config(), Stage::Security, &with(("SessionType", "Weird")));
    assert_eq!(s, (2, 9));
}

#[test]
fn login_rejects_unsupported_version() {
    let mut pair = Pair::new(config());
    let mut req = pair.login_request(
        Stage::Security,
        Some(Stage::Operational),
        false,
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    if let Header::LoginRequest(h) = &mut req.header {
        h.version_min = 1;
        h.version_max = 1;
    }
    pair.send(req);
    assert_eq!(login_status(&pair.take_one()), (2, 5));
    assert_eq!(refused_with(&pair.closed), Some((2, 5)));
}

#[test]
fn login_bind_failure_is_reported() {
    let mut pair = Pair::new(config());
    pair.bind_answer = Err(LoginStatus::TOO_MANY_CONNECTIONS);
    let r = pair.login_step(
        Stage::Operational,
        Some(Stage::FullFeature),
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    assert_eq!(login_status(&r), (2, 6));
    assert_eq!(refused_with(&pair.closed), Some((2, 6)));
    assert!(pair.frame_settings_seen.is_empty());
}

#[test]
fn non_login_pdu_before_login_closes_silently() {
    let mut pair = Pair::new(config());
    pair.nop_out(1, RESERVED_TAG, true, vec![]);
    assert!(pair.take().is_empty(), "no response before login");
    assert!(matches!(pair.closed, Some(CloseReason::ProtocolError(_))));
}

#[test]
fn digests_switch_on_after_the_final_response() {
    let mut pair = Pair::new(config());
    let r = pair.login_step(
        Stage::Security,
        Some(Stage::Operational),
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ],
    );
    assert_eq!(login_status(&r), (0, 0));
    let r = pair.login_step(
        Stage::Operational,
        Some(Stage::FullFeature),
        &[("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")],
    );
    let keys = keys_of(&r);
    assert_eq!(keys["HeaderDigest"], "CRC32C");
    assert_eq!(keys["DataDigest"], "CRC32C");
    assert_eq!(pair.frame_settings_seen.len(), 1);
    assert!(pair.settings.header_digest && pair.settings.data_digest);
    // From now on both directions carry digests: a ping round-trips through the framing.
    pair.nop_out(5, RESERVED_TAG, true, b"ping".to_vec());
    let r = pair.take_one();
    assert_eq!(r.data, b"ping");
    // A corrupted data digest is rejected with reason 0x02, the connection stays up.
    let nop = Pdu::with_data(
        Header::NopOut(NopOut {
            immediate: true,
            itt: 6,
            ttt: RESERVED_TAG,
            cmd_sn: pair.cmd_sn,
            ..Default::default()
        }),
        b"data".to_vec(),
    );
    let mut bytes = framing::encode(&nop, &pair.settings);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    pair.send_bytes(&bytes);
    assert_eq!(reject_reason(&pair.take_one()), 0x02);
    assert!(pair.closed.is_none());
    // A corrupted header digest is fatal.
    let mut bytes = framing::encode(&nop, &pair.settings);
    bytes[49] ^= 0xff;
    pair.send_bytes(&bytes);
    assert!(pair.take().is_empty());
    assert!(matches!(pair.closed, Some(CloseReason::ProtocolError(_))));
}

#[test]
fn login_times_out() {
    let mut pair = Pair::new(config());
    assert_eq!(
        pair.conn.poll_timeout(),
        Some(pair.base + Duration::from_secs(15))
    );
    pair.advance(Duration::from_secs(14));
    assert!(pair.closed.is_none());
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.closed, Some(CloseReason::Timeout));
    assert!(pair.take().is_empty());
}

fn discovery_pair(config: CoreConfig, mrdsl: &str) -> Pair {
    let mut pair = Pair::new(config);
    let r = pair.login_step(
        Stage::Operational,
        Some(Stage::FullFeature),
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("MaxRecvDataSegmentLength", mrdsl),
        ],
    );
    assert_eq!(login_status(&r), (0, 0));
    pair
}

#[test]
fn discovery_lists_allowed_targets_with_the_local_address() {
    let mut cfg = config();
    cfg.portals.push("[2001:db8::1]:3261".parse().unwrap());
    let mut pair = discovery_pair(cfg, "8192");
    pair.text(9, RESERVED_TAG, kv(&[("SendTargets", "All")]));
    let r = pair.take_one();
    let Header::TextResponse(h) = &r.header else {
        panic!("{r:?}")
    };
    assert!(h.final_flag && !h.continue_flag);
    assert_eq!(h.itt, 9);
    assert_eq!(h.ttt, RESERVED_TAG);
    let pairs = text::parse(&r.data).unwrap();
    let expected: Vec<(String, String)> = vec![
        ("TargetName".into(), TARGET.into()),
        ("TargetAddress".into(), "192.0.2.7:3260,1".into()),
        ("TargetAddress".into(), "[2001:db8::1]:3261,1".into()),
    ];
    assert_eq!(pairs, expected, "the secret target is hidden");
    // Discovery sessions carry no SCSI commands.
    let cmd = pair.command(1, read10(0, 1), true, false, 512);
    pair.send_command(cmd, vec![]);
    assert_eq!(reject_reason(&pair.take_one()), 0x04);
    assert!(pair.executed.is_empty());
}

#[test]
fn long_send_targets_is_continued() {
    let mut cfg = config();
    for i in 0..40 {
        cfg.targets.push(TargetDescriptor {
            name: format!("iqn.2026-01.test:a-rather-long-target-name-number-{i:03}"),
            allowed_initiators: vec![],
            luns: vec![0],
            auth: None,
            initiator_auth: vec![],
        });
    }
    let mut pair = discovery_pair(cfg, "512");
    pair.text(9, RESERVED_TAG, kv(&[("SendTargets", "All")]));
    let mut body = Vec::new();
    let mut pieces = 0;
    loop {
        let r = pair.take_one();
        let Header::TextResponse(h) = r.header.clone() else {
            panic!("{r:?}")
        };
        assert!(r.data.len() <= 512);
        assert_eq!(h.itt, 9);
        body.extend_from_slice(&r.data);
        pieces += 1;
        if h.final_flag {
            assert!(!h.continue_flag);
            assert_eq!(h.ttt, RESERVED_TAG);
            break;
        }
        assert!(h.continue_flag);
        assert_ne!(h.ttt, RESERVED_TAG);
        pair.text(9, h.ttt, vec![]);
    }
    assert!(pieces > 3);
    let pairs = text::parse(&body).unwrap();
    let names = pairs.iter().filter(|(k, _)| k == "TargetName").count();
    assert_eq!(names, 41);
    // A continuation with a stale TTT is rejected.
    pair.text(9, 0x4444, vec![]);
    assert_eq!(reject_reason(&pair.take_one()), 0x09);
}

#[test]
fn idle_discovery_session_is_closed_without_pings() {
    let mut cfg = config();
    cfg.discovery_idle_timeout = Duration::from_secs(30);
    cfg.nop_interval = Some(Duration::from_secs(5));
    let mut pair = discovery_pair(cfg, "8192");
    pair.take();
    assert_eq!(
        pair.conn.poll_timeout(),
        Some(pair.now + Duration::from_secs(30))
    );
    pair.advance(Duration::from_secs(29));
    assert!(pair.closed.is_none());
    // A request restarts the clock.
    pair.text(9, RESERVED_TAG, kv(&[("SendTargets", "All")]));
    assert!(matches!(pair.take_one().header, Header::TextResponse(_)));
    assert_eq!(
        pair.conn.poll_timeout(),
        Some(pair.now + Duration::from_secs(30))
    );
    pair.advance(Duration::from_secs(29));
    assert!(
        pair.closed.is_none(),
        "58 s in, 29 s after the last request"
    );
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.closed, Some(CloseReason::Timeout));
    assert!(
        pair.take().is_empty(),
        "no NOP-In ever went to the discovery session"
    );
}

#[test]
fn normal_sessions_are_not_closed_for_idleness() {
    let mut cfg = config();
    cfg.discovery_idle_timeout = Duration::from_secs(1);
    cfg.nop_interval = None;
    let mut pair = logged_in_with(cfg, &[]);
    assert_eq!(pair.conn.poll_timeout(), None);
    pair.advance(Duration::from_secs(3600));
    assert!(pair.closed.is_none());
}
