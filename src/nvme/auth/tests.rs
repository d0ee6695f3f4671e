//! The DH-HMAC-CHAP exchange of one queue, driven by the test host of `testing.rs`.

use std::sync::Arc;

use super::dh::DhGroup;
use super::testing::*;
use super::*;

fn queue_auth(controller: Option<DhchapSecret>) -> QueueAuthentication {
    queue_auth_in(controller, DhGroup::Null)
}

fn queue_auth_in(controller: Option<DhchapSecret>, dh_group: DhGroup) -> QueueAuthentication {
    let secrets = HostSecrets {
        host: secret(0x11),
        controller,
        dh_group,
        hash: None,
    };
    QueueAuthentication::new(Arc::new(secrets), HOST_NQN, SUBSYSTEM_NQN)
}

/// A host random source other than the controller's.
fn host_random(buf: &mut [u8]) -> Result<(), crate::random::RandomUnavailable> {
    buf.fill(0xA7);
    Ok(())
}

/// What an AUTH_Receive reads, its computation (if any) run here as the environment runs it.
fn read(auth: &mut QueueAuthentication) -> Received {
    loop {
        match auth.receive(counting_random).unwrap() {
            Received::Compute(work) => auth.computed(work.run()),
            received => return received,
        }
    }
}

/// An AUTH_Send of `m`, its computation (if any) run here and `m` sent again.
fn send(auth: &mut QueueAuthentication, m: &[u8]) -> Result<(), AuthError> {
    while let Some(work) = auth.send(m)? {
        auth.computed(work.run());
    }
    Ok(())
}

fn message(received: Received) -> Vec<u8> {
    match received {
        Received::Message(m) => m,
        other => panic!("not a message: {other:?}"),
    }
}

fn failure(received: Received) -> ((u8, u8), AuthError) {
    match received {
        Received::Failed(m, e) => (read_failure1(&m), e),
        other => panic!("not a failure: {other:?}"),
    }
}

/// Negotiate and read the challenge.
fn challenged(auth: &mut QueueAuthentication, transaction: u16) -> Challenge {
    auth.send(&negotiate(transaction)).unwrap();
    read_challenge(&message(read(auth)))
}

#[test]
fn a_host_with_the_right_secret_authenticates() {
    let mut auth = queue_auth(None);
    assert!(!auth.is_authenticated());
    let challenge = challenged(&mut auth, 7);
    // Linux's host offers SHA-256 first: we take it, with the NULL DH group.
    assert_eq!(
        (challenge.transaction, challenge.hash_id, challenge.dh_group),
        (7, 1, 0)
    );
    assert_eq!(challenge.value.len(), 32);
    assert_ne!(challenge.seqnum, 0);
    let r = response(&secret(0x11), &challenge);
    auth.send(&reply(7, &r, None)).unwrap();
    assert!(auth.is_authenticated());
    let (hl, controller) = read_success1(&message(read(&mut auth)));
    assert_eq!(
        (hl, controller),
        (32, None),
        "HL set even without a response"
    );
    let done = auth.completed().expect("authenticated");
    assert_eq!(
        (done.hash, done.dh_group, done.bidirectional),
        (HashFunction::Sha256, DhGroup::Null, false)
    );
}

#[test]
fn the_controller_proves_itself_when_the_host_asks() {
    let mut auth = queue_auth(Some(secret(0x22)));
    let challenge = challenged(&mut auth, 9);
    let r = response(&secret(0x11), &challenge);
    let c2 = [0xC2; 32];
    auth.send(&reply(9, &r, Some((&c2, 77)))).unwrap();
    assert!(
        !auth.is_authenticated(),
        "not before the host accepted our proof"
    );
    let (_, controller) = read_success1(&message(read(&mut auth)));
    let expected = controller_response(&secret(0x22), HashFunction::Sha256, &c2, 77, 9);
    assert_eq!(controller, Some(expected));
    auth.send(&success2(9)).unwrap();
    assert!(auth.completed().is_some_and(|done| done.bidirectional));
}

#[test]
fn with_a_dh_group_the_challenges_are_augmented_by_the_shared_secret() {
    let mut auth = queue_auth_in(Some(secret(0x22)), DhGroup::Ffdhe2048);
    let challenge = challenged(&mut auth, 12);
    assert_eq!((challenge.dh_group, challenge.dh_value.len()), (1, 256));
    let (public, session) = host_dh(&challenge, host_random).unwrap();
    // The NULL group's response does not do.
    let plain = response(&secret(0x11), &challenge);
    let with_dh = response_with(
        &secret(0x11),
        &challenge,
        Some(&session),
        HOST_NQN,
        SUBSYSTEM_NQN,
    );
    assert_ne!(plain, with_dh);
    let c2 = [0x2C; 32];
    send(
        &mut auth,
        &reply_with_dh(12, &with_dh, Some((&c2, 3)), &public),
    )
    .unwrap();
    let (_, controller) = read_success1(&message(read(&mut auth)));
    let expected = controller_response_with(
        &secret(0x22),
        HashFunction::Sha256,
        &c2,
        3,
        12,
        Some(&session),
    );
    assert_eq!(controller, Some(expected));
    auth.send(&success2(12)).unwrap();
    assert!(auth.is_authenticated());
    assert_eq!(
        auth.completed().map(|done| done.dh_group),
        Some(DhGroup::Ffdhe2048)
    );
}

#[test]
fn dh_exponentiations_are_handed_out_and_nothing_runs_while_one_is_out() {
    let mut auth = queue_auth_in(None, DhGroup::Ffdhe2048);
    auth.send(&negotiate(5)).unwrap();
    // Our key pair: the Challenge waits for it, and any message meanwhile ends the exchange.
    let Received::Compute(generate) = auth.receive(counting_random).unwrap() else {
        panic!("the challenge needs our key pair first");
    };
    assert!(matches!(
        auth.receive(counting_random),
        Ok(Received::Failed(_, AuthError::NothingToRead))
    ));
    assert!(matches!(
        auth.send(&negotiate(6)),
        Err(AuthError::OutOfSequence { .. })
    ));
    auth.computed(generate.run());
    let challenge = read_challenge(&message(auth.receive(counting_random).unwrap()));
    assert_eq!(challenge.dh_value.len(), 256);
    // The shared secret: the Reply waits for it, then the same Reply goes through.
    let (public, session) = host_dh(&challenge, host_random).unwrap();
    let r = response_with(
        &secret(0x11),
        &challenge,
        Some(&session),
        HOST_NQN,
        SUBSYSTEM_NQN,
    );
    let m = reply_with_dh(5, &r, None, &public);
    let shared = auth
        .send(&m)
        .unwrap()
        .expect("the shared secret to compute");
    assert!(!auth.is_authenticated());
    auth.computed(shared.run());
    assert_eq!(auth.send(&m), Ok(None));
    assert!(auth.is_authenticated());
    // No random bytes for our key: no challenge, and the step is kept.
    let mut auth = queue_auth_in(None, DhGroup::Ffdhe2048);
    auth.send(&negotiate(7)).unwrap();
    assert!(auth.receive(crate::random::no_random_source).is_err());
    assert_eq!(read_challenge(&message(read(&mut auth))).dh_group, 1);
}

#[test]
fn a_configured_hash_is_used_when_offered_else_refused() {
    let secrets = |hash| {
        Arc::new(HostSecrets {
            host: secret(0x11),
            controller: None,
            dh_group: DhGroup::Null,
            hash: Some(hash),
        })
    };
    let mut auth = QueueAuthentication::new(secrets(HashFunction::Sha384), HOST_NQN, SUBSYSTEM_NQN);
    let challenge = challenged(&mut auth, 1);
    assert_eq!((challenge.hash_id, challenge.value.len()), (2, 48));
    auth.send(&reply(1, &response(&secret(0x11), &challenge), None))
        .unwrap();
    assert!(auth.is_authenticated());

    let mut auth = QueueAuthentication::new(secrets(HashFunction::Sha512), HOST_NQN, SUBSYSTEM_NQN);
    auth.send(&negotiate_with(1, &[1, 2], &[0], 0)).unwrap();
    let ((_, explanation), _) = failure(read(&mut auth));
    assert_eq!(explanation, message::failure::HASH_UNUSABLE);
    assert_eq!(
        HashFunction::from_name("hmac(sha512)"),
        Some(HashFunction::Sha512)
    );
    assert_eq!(
        HashFunction::from_name("sha384"),
        Some(HashFunction::Sha384)
    );
    assert_eq!(HashFunction::from_name("md5"), None);
}

#[test]
fn a_dh_exchange_fails_without_the_shared_secret_or_a_good_value() {
    // The NULL group's response to a DH challenge.
    let mut auth = queue_auth_in(None, DhGroup::Ffdhe2048);
    let challenge = challenged(&mut auth, 1);
    let (public, _) = host_dh(&challenge, host_random).unwrap();
    let r = response(&secret(0x11), &challenge);
    send(&mut auth, &reply_with_dh(1, &r, None, &public)).unwrap();
    assert_eq!(failure(read(&mut auth)).1, AuthError::WrongResponse);
    // No DH value, or one outside the group.
    for value in [vec![], vec![0u8; 256], vec![0xFF; 256]] {
        let mut auth = queue_auth_in(None, DhGroup::Ffdhe2048);
        let challenge = challenged(&mut auth, 1);
        let r = response(&secret(0x11), &challenge);
        send(&mut auth, &reply_with_dh(1, &r, None, &value)).unwrap();
        let ((_, explanation), _) = failure(read(&mut auth));
        let expected = if value.is_empty() {
            message::failure::INCORRECT_PAYLOAD
        } else {
            message::failure::DHGROUP_UNUSABLE
        };
        assert_eq!(explanation, expected, "{}", value.len());
    }
}

#[test]
fn the_configured_group_must_be_offered_and_null_falls_back_to_the_hosts() {
    let mut auth = queue_auth_in(None, DhGroup::Ffdhe8192);
    auth.send(&negotiate_with(1, &[1], &[0, 1], 0)).unwrap();
    let ((_, explanation), _) = failure(read(&mut auth));
    assert_eq!(explanation, message::failure::DHGROUP_UNUSABLE);

    let mut auth = queue_auth(None);
    auth.send(&negotiate_with(1, &[1], &[2], 0)).unwrap();
    let challenge = read_challenge(&message(read(&mut auth)));
    assert_eq!((challenge.dh_group, challenge.dh_value.len()), (2, 384));
}

#[test]
fn a_wrong_response_fails_the_exchange() {
    let mut auth = queue_auth(None);
    let challenge = challenged(&mut auth, 1);
    let wrong = response(&secret(0x12), &challenge);
    auth.send(&reply(1, &wrong, None)).unwrap();
    assert!(!auth.is_authenticated());
    assert_eq!(
        failure(read(&mut auth)),
        ((0x01, message::failure::FAILED), AuthError::WrongResponse)
    );
}

#[test]
fn a_host_asking_for_a_proof_we_cannot_give_fails() {
    let mut auth = queue_auth(None);
    let challenge = challenged(&mut auth, 2);
    let r = response(&secret(0x11), &challenge);
    auth.send(&reply(2, &r, Some((&[1; 32], 5)))).unwrap();
    assert_eq!(failure(read(&mut auth)).1, AuthError::NoControllerSecret);
}

#[test]
fn a_host_challenge_with_sequence_number_zero_asks_for_nothing() {
    let mut auth = queue_auth(Some(secret(0x22)));
    let challenge = challenged(&mut auth, 3);
    let r = response(&secret(0x11), &challenge);
    auth.send(&reply(3, &r, Some((&[1; 32], 0)))).unwrap();
    assert!(auth.completed().is_some_and(|done| !done.bidirectional));
    assert_eq!(read_success1(&message(read(&mut auth))).1, None);
}

#[test]
fn negotiation_takes_the_hosts_first_usable_hash_or_refuses() {
    let mut auth = queue_auth(None);
    auth.send(&negotiate_with(4, &[9, 3, 1], &[0], 0)).unwrap();
    let challenge = read_challenge(&message(read(&mut auth)));
    assert_eq!((challenge.hash_id, challenge.value.len()), (3, 64));
    let r = response(&secret(0x11), &challenge);
    auth.send(&reply(4, &r, None)).unwrap();
    assert!(auth.is_authenticated());

    for (negotiate, explanation) in [
        (
            negotiate_with(5, &[1], &[6, 7], 0),
            message::failure::DHGROUP_UNUSABLE,
        ),
        (
            negotiate_with(5, &[7, 8], &[0], 0),
            message::failure::HASH_UNUSABLE,
        ),
        (
            negotiate_with(5, &[1], &[0], 1),
            message::failure::CONCAT_MISMATCH,
        ),
        (
            negotiate(5)[..40].to_vec(),
            message::failure::INCORRECT_PAYLOAD,
        ),
    ] {
        let mut auth = queue_auth(None);
        auth.send(&negotiate).unwrap();
        let ((reason, got), _) = failure(read(&mut auth));
        assert_eq!((reason, got), (0x01, explanation));
    }
}

#[test]
fn a_dh_list_right_after_the_hashes_still_offers_null() {
    // Linux's host as its DH-HMAC-CHAP patch series was first posted put the DH group IDs at
    // idlist[3..]; the specification's place, and today's host's, is idlist[30..]. Bytes 30
    // on are then zeros, which read as NULL groups, so the NULL group is found either way.
    let mut m = negotiate_with(6, &[1, 2, 3], &[], 0);
    m[8 + 3] = 6;
    m[8 + 4 + 3..8 + 4 + 9].copy_from_slice(&[0, 1, 2, 3, 4, 5]);
    let mut auth = queue_auth(None);
    auth.send(&m).unwrap();
    assert_eq!(read_challenge(&message(read(&mut auth))).dh_group, 0);
}

#[test]
fn messages_out_of_order_end_the_exchange() {
    let mut auth = queue_auth(None);
    assert!(matches!(
        auth.send(&reply(1, &[0; 32], None)),
        Err(AuthError::OutOfSequence { .. })
    ));
    assert!(matches!(
        auth.send(&success2(1)),
        Err(AuthError::OutOfSequence { .. })
    ));
    assert_eq!(auth.send(&failure2(1, 4)), Err(AuthError::HostRejected(4)));
    assert_eq!(auth.send(&[1, 2]), Err(AuthError::IncorrectPayload));
    // An AUTH_Receive with nothing to read gets a Failure1.
    assert_eq!(failure(read(&mut auth)).1, AuthError::NothingToRead);
}

#[test]
fn a_reply_of_another_transaction_fails() {
    let mut auth = queue_auth(None);
    let challenge = challenged(&mut auth, 10);
    let r = response(&secret(0x11), &challenge);
    auth.send(&reply(11, &r, None)).unwrap();
    assert_eq!(
        failure(read(&mut auth)),
        (
            (0x01, message::failure::INCORRECT_PAYLOAD),
            AuthError::IncorrectPayload
        )
    );
}

#[test]
fn a_new_negotiate_authenticates_again() {
    let mut auth = queue_auth(None);
    for transaction in [1, 2] {
        let challenge = challenged(&mut auth, transaction);
        let r = response(&secret(0x11), &challenge);
        auth.send(&reply(transaction, &r, None)).unwrap();
        read_success1(&message(read(&mut auth)));
        assert!(auth.is_authenticated());
    }
}

#[test]
fn no_random_bytes_no_challenge() {
    let mut auth = queue_auth(None);
    auth.send(&negotiate(1)).unwrap();
    assert!(auth.receive(crate::random::no_random_source).is_err());
    // The step is kept: the next AUTH_Receive gets the challenge.
    read_challenge(&message(read(&mut auth)));
}

#[test]
fn random_messages_never_panic_nor_authenticate() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut auth = queue_auth(Some(secret(0x22)));
        let challenge = challenged(&mut auth, 1);
        let mut m = reply(1, &[0; 32], Some((&[3; 32], 9)));
        let len = (next() % 120) as usize;
        m.resize(len, 0);
        for b in m.iter_mut().skip(2) {
            if next() % 4 == 0 {
                *b = next() as u8;
            }
        }
        let _ = auth.send(&m);
        let _ = auth.receive(counting_random);
        assert!(!auth.is_authenticated(), "{challenge:?} {m:?}");
    }
}
