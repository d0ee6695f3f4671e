//! CHAP exchanges: arbitrary sequences of Login Requests with arbitrary key=value text through the
//! security stage of a target that requires CHAP (one-way or mutual) and of a discovery session
//! that requires it too.
//!
//! Input: requests separated by 0xff bytes; each starts with a flags byte (bit 0 T, bit 1 CSG
//! operational, bit 2 NSG full feature, bit 3 C, bit 4 prepend the login identity keys), the rest
//! is the text. So that the fuzzer can get past the challenge, the value `@` of `CHAP_R` is
//! replaced by the right response to the target's latest challenge, and `@` of `CHAP_C` by the
//! target's own challenge (a reflection).
//!
//! Checks: no panic; no action after Close; the login leaves the security stage, or binds a
//! session, only after a correct CHAP_R was sent; a failed login carries no keys.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use iser_target::iscsi::chap::{
    decode_binary, encode_hex, Algorithm, Authentication, Credentials, RandomUnavailable, Secret,
};
use iser_target::iscsi::pdu::{Header, LoginRequest, Pdu, Stage};
use iser_target::iscsi::{text, Action, Connection, CoreConfig, TargetDescriptor};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"alice-secret-1234";

/// Deterministic challenges: the core has no RNG of its own.
fn pattern(buf: &mut [u8]) -> Result<(), RandomUnavailable> {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = 0x5a ^ (i as u8).wrapping_mul(31);
    }
    Ok(())
}

fn auth(mutual: bool) -> Authentication {
    Authentication {
        chap: Credentials {
            username: "alice".into(),
            secret: Secret::new(SECRET),
        },
        mutual_chap: mutual.then(|| Credentials {
            username: "tgt0".into(),
            secret: Secret::new("target-secret-5678"),
        }),
    }
}

fn config(mutual: bool) -> CoreConfig {
    CoreConfig {
        targets: vec![TargetDescriptor {
            name: "iqn.2026-01.fuzz:disk".into(),
            allowed_initiators: vec![],
            luns: vec![0],
            auth: Some(auth(mutual)),
            initiator_auth: vec![(
                "iqn.2026-01.fuzz:bob".into(),
                Authentication {
                    chap: Credentials {
                        username: "bob".into(),
                        secret: Secret::new(SECRET),
                    },
                    mutual_chap: None,
                },
            )],
        }],
        discovery_auth: Some(auth(mutual)),
        random: pattern,
        ..CoreConfig::default()
    }
}

fn stage(operational: bool) -> Stage {
    if operational {
        Stage::Operational
    } else {
        Stage::Security
    }
}

fuzz_target!(|data: &[u8]| {
    let mutual = data.first().is_some_and(|b| b & 0x80 != 0);
    let now = Instant::now();
    let mut conn = Connection::<()>::new(Arc::new(config(mutual)), None, now);
    // The target's latest CHAP_A, CHAP_I and CHAP_C.
    let mut challenge: Option<(Algorithm, u8, Vec<u8>)> = None;
    let mut proved = false;
    let mut closed = false;
    // The final Login Response went out: a further Login Request is a protocol error that the
    // core answers with a Reject (RFC 7143 §11.17.1), not a Login Response.
    let mut logged_in = false;
    for (n, piece) in data.split(|&b| b == 0xff).enumerate().take(16) {
        let Some((&flags, body)) = piece.split_first() else {
            continue;
        };
        let mut body = body.to_vec();
        if flags & 0x10 != 0 {
            let mut identity = text::encode(&[
                (
                    "InitiatorName".to_string(),
                    "iqn.2026-01.fuzz:host".to_string(),
                ),
                (
                    "TargetName".to_string(),
                    "iqn.2026-01.fuzz:disk".to_string(),
                ),
                ("AuthMethod".to_string(), "CHAP,None".to_string()),
            ]);
            identity.extend_from_slice(&body);
            body = identity;
        }
        let mut sent_right_response = false;
        if let Ok(mut pairs) = text::parse(&body) {
            let mut name_ok = false;
            for (key, value) in &mut pairs {
                match (key.as_str(), value.as_str(), &challenge) {
                    ("CHAP_N", "alice" | "bob", _) => name_ok = true,
                    ("CHAP_R", "@", Some((algorithm, id, c))) => {
                        *value = encode_hex(&algorithm.response(*id, SECRET, c));
                        sent_right_response = true;
                    }
                    ("CHAP_C", "@", Some((_, _, c))) => *value = encode_hex(c),
                    _ => {}
                }
            }
            sent_right_response &= name_ok;
            body = text::encode(&pairs);
        }
        let request = LoginRequest {
            transit: flags & 1 != 0,
            continue_flag: flags & 8 != 0,
            current_stage: stage(flags & 2 != 0),
            next_stage: if flags & 4 != 0 {
                Stage::FullFeature
            } else {
                Stage::Operational
            },
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: n as u32,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        };
        conn.handle_pdu(Pdu::with_data(Header::LoginRequest(request), body), now);
        while let Some(action) = conn.poll_action() {
            assert!(!closed, "action {action:?} after Close");
            match action {
                Action::Send(pdu) => {
                    if logged_in {
                        assert!(
                            matches!(&pdu.header, Header::Reject(r) if r.reason == 4),
                            "{pdu:?} after the login completed"
                        );
                        continue;
                    }
                    let Header::LoginResponse(r) = &pdu.header else {
                        panic!("{pdu:?} during login");
                    };
                    if r.status_class != 0 {
                        assert!(pdu.data.is_empty(), "a failed login says nothing more");
                        continue;
                    }
                    logged_in = r.transit && r.next_stage == Stage::FullFeature;
                    if r.current_stage == Stage::Security && r.transit {
                        assert!(proved || sent_right_response, "left security unproved");
                    }
                    let keys = text::parse(&pdu.data).expect("target text parses");
                    let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v);
                    if let (Some(a), Some(i), Some(c)) =
                        (get("CHAP_A"), get("CHAP_I"), get("CHAP_C"))
                    {
                        let algorithm = match a.as_str() {
                            "5" => Algorithm::Md5,
                            "6" => Algorithm::Sha1,
                            "7" => Algorithm::Sha256,
                            "8" => Algorithm::Sha3_256,
                            other => panic!("CHAP_A={other}"),
                        };
                        let c = decode_binary(c).expect("hex challenge");
                        assert_eq!(c.len(), algorithm.digest_size());
                        challenge = Some((algorithm, i.parse().expect("decimal CHAP_I"), c));
                    }
                }
                Action::BindSession(_) => {
                    assert!(proved || sent_right_response, "session bound without CHAP");
                    conn.handle_session_bound(Ok(1));
                }
                Action::Close(_) => closed = true,
                Action::SetFrameSettings(_)
                | Action::Execute(_)
                | Action::PutData { .. }
                | Action::GetData { .. }
                | Action::Respond { .. }
                | Action::Release(_) => {}
            }
        }
        proved |= sent_right_response;
        if closed {
            break;
        }
    }
});
