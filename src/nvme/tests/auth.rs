//! In-band authentication through a queue: Connect's ATR bit, AUTH_Send and AUTH_Receive
//! carrying the exchange, everything else held with Authentication Required until it is
//! done, and the queue closed when it fails or does not end in time.

use std::time::Duration;

use super::*;
use crate::nvme::auth::dh::DhGroup;
use crate::nvme::auth::testing as host;
use crate::nvme::auth::{DhchapSecret, HostSecrets};

/// The test configuration with HOST the only host of SUBSYSTEM, holding secret 0x11 (and the
/// controller secret 0x22 when `controller`).
fn auth_pair(controller: bool) -> Pair {
    auth_pair_in(controller, DhGroup::Null)
}

fn auth_pair_in(controller: bool, dh_group: DhGroup) -> Pair {
    let mut config = config();
    config.subsystems[0].allowed_hosts = vec![AllowedHost {
        nqn: HOST.into(),
        secrets: Some(Arc::new(HostSecrets {
            host: host::secret(0x11),
            controller: controller.then(|| host::secret(0x22)),
            dh_group,
            hash: None,
        })),
    }];
    config.random = host::counting_random;
    let env = env(&config);
    Pair::new(Arc::new(config), env, Instant::now())
}

/// AUTH_Send / AUTH_Receive SQEs as Linux's host builds them (drivers/nvme/host/auth.c
/// `nvme_auth_submit`): SECP E9h, SPSP0 and SPSP1 01h, TL / AL in CDW11.
fn auth_sqe(fctype: u8, cid: u16, length: u32, in_capsule: bool) -> Sqe {
    Sqe::fabrics(fctype, cid)
        .byte(41, 1)
        .byte(42, 1)
        .byte(43, 0xE9)
        .cdw(11, length)
        .sgl(length, in_capsule)
}

fn auth_send(pair: &mut Pair, message: &[u8]) -> Cqe {
    let cid = pair.cid();
    pair.resp(&auth_sqe(0x05, cid, message.len() as u32, true), message)
}

/// AUTH_Receive with Linux's 4 KiB buffer (CHAP_BUF_SIZE).
fn auth_receive(pair: &mut Pair) -> Vec<u8> {
    let cid = pair.cid();
    let (data, cqe) = pair.data_in(&auth_sqe(0x06, cid, 4096, false));
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(data.len(), 4096, "the whole allocation comes back");
    data
}

/// The host's side of a unidirectional exchange with `secret`.
fn authenticate(pair: &mut Pair, secret: &DhchapSecret) {
    assert_eq!(auth_send(pair, &host::negotiate(1)).status, (0, 0));
    let challenge = host::read_challenge(&auth_receive(pair));
    let response = host::response(secret, &challenge);
    assert_eq!(
        auth_send(pair, &host::reply(1, &response, None)).status,
        (0, 0)
    );
}

/// The host's Reply with secret 0x11 to a Challenge in a DH group.
fn dh_reply(challenge: &host::Challenge) -> Vec<u8> {
    let (secret, random) = (host::secret(0x11), host::counting_random);
    host::reply_to(&secret, challenge, HOST, SUBSYSTEM, random)
}

const AUTH_REQUIRED: (u8, u8) = (1, 0x91);
const ATR: u64 = 1 << 17;

#[test]
fn a_host_with_a_secret_authenticates_before_anything_else() {
    let mut admin = auth_pair(false);
    let cqe = admin.connect_admin_to(SUBSYSTEM, 5000);
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(cqe.result & ATR, ATR, "Connect asks for authentication");
    let cntlid = cqe.result as u16;
    assert_ne!(cntlid, 0);
    let held = admin.get_property(0x1C, false);
    assert_eq!((held.status, held.dnr), (AUTH_REQUIRED, true));

    authenticate(&mut admin, &host::secret(0x11));
    let (hl, response) = host::read_success1(&auth_receive(&mut admin));
    assert_eq!((hl, response), (32, None));
    let how = admin.authenticated.expect("the environment is told");
    assert_eq!(how.to_string(), "DH-HMAC-CHAP SHA-256");
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));
    assert_eq!(admin.get_property(0x1C, false).result & 1, 1, "CSTS.RDY");
    assert!(admin.closed.is_none());
}

#[test]
fn each_io_queue_authenticates_too() {
    let mut admin = auth_pair(false);
    let cntlid = admin.connect_admin_to(SUBSYSTEM, 5000).result as u16;
    authenticate(&mut admin, &host::secret(0x11));
    auth_receive(&mut admin);
    admin.set_cc(LINUX_CC);
    let cid = admin.cid();
    let cqe = admin.resp(&Sqe::new(0x09, cid, 0).cdw(10, 0x07).cdw(11, 0), &[]);
    assert_eq!(cqe.status, (0, 0));

    let mut io = admin.sibling();
    let cqe = io.connect_io(cntlid, 1, 15);
    assert_eq!((cqe.status, cqe.result), ((0, 0), u64::from(cntlid) | ATR));
    let read = Sqe::new(0x02, 3, 1).slba(0).cdw(12, 0).sgl(512, false);
    assert_eq!(io.resp(&read, &[]).status, AUTH_REQUIRED);
    authenticate(&mut io, &host::secret(0x11));
    auth_receive(&mut io);
    let (data, cqe) = io.data_in(&Sqe::new(0x02, 4, 1).slba(0).cdw(12, 0).sgl(512, false));
    assert_eq!((cqe.status, data.len()), ((0, 0), 512));
}

#[test]
fn a_dh_group_exchange_through_the_queue() {
    let mut admin = auth_pair_in(false, DhGroup::Ffdhe3072);
    admin.connect_admin_to(SUBSYSTEM, 5000);
    auth_send(&mut admin, &host::negotiate(2));
    let challenge = host::read_challenge(&auth_receive(&mut admin));
    let reply = dh_reply(&challenge);
    assert_eq!(auth_send(&mut admin, &reply).status, (0, 0));
    host::read_success1(&auth_receive(&mut admin));
    assert_eq!(
        admin.authenticated.map(|a| a.to_string()).as_deref(),
        Some("DH-HMAC-CHAP SHA-256, ffdhe3072")
    );
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));
}

#[test]
fn dh_computations_leave_the_queue_and_an_auth_command_meanwhile_ends_it() {
    let mut admin = auth_pair_in(false, DhGroup::Ffdhe2048);
    admin.connect_admin_to(SUBSYSTEM, 5000);
    auth_send(&mut admin, &host::negotiate(2));
    admin.defer_compute = true;
    // The Challenge waits for our key pair, computed elsewhere: nothing comes back yet.
    let cid = admin.cid();
    assert!(admin
        .command(&auth_sqe(0x06, cid, 4096, false), &[])
        .is_empty());
    let work = admin.computations.pop().expect("our key pair to compute");
    admin.queue.handle_computed(work.run(), admin.now);
    admin.pump();
    let challenge = match admin.take().as_slice() {
        [Got::C2HData { data, .. }, Got::Resp(cqe)] if cqe.cid == cid => host::read_challenge(data),
        other => panic!("expected the Challenge, got {other:?}"),
    };
    // The Reply waits for the shared secret; an AUTH command meanwhile ends the queue.
    let reply = dh_reply(&challenge);
    let cid = admin.cid();
    assert!(admin
        .command(&auth_sqe(0x05, cid, reply.len() as u32, true), &reply)
        .is_empty());
    assert_eq!(admin.computations.len(), 1);
    let meanwhile = admin.cid();
    admin.command(&auth_sqe(0x06, meanwhile, 4096, false), &[]);
    assert!(matches!(
        admin.closed,
        Some(CloseReason::AuthenticationFailed(_))
    ));
    // Its result, come late, is dropped.
    let work = admin.computations.pop().unwrap();
    admin.queue.handle_computed(work.run(), admin.now);
    assert!(admin.queue.poll_action().is_none());
}

#[test]
fn a_wrong_secret_reads_failure1_and_the_queue_closes() {
    let mut admin = auth_pair(false);
    admin.connect_admin_to(SUBSYSTEM, 5000);
    authenticate(&mut admin, &host::secret(0x12));
    assert!(admin.closed.is_none());
    assert_eq!(host::read_failure1(&auth_receive(&mut admin)), (0x01, 0x01));
    assert!(matches!(
        admin.closed,
        Some(CloseReason::AuthenticationFailed(ref why)) if why.contains("does not match")
    ));
    assert!(
        admin.env.borrow().registry.is_empty(),
        "the controller went with it"
    );
}

#[test]
fn the_controller_proves_itself_and_the_host_confirms() {
    let mut admin = auth_pair(true);
    admin.connect_admin_to(SUBSYSTEM, 5000);
    auth_send(&mut admin, &host::negotiate(3));
    let challenge = host::read_challenge(&auth_receive(&mut admin));
    let response = host::response(&host::secret(0x11), &challenge);
    let c2 = [0x5C; 32];
    auth_send(&mut admin, &host::reply(3, &response, Some((&c2, 1234))));
    assert_eq!(admin.get_property(0x1C, false).status, AUTH_REQUIRED);
    let (_, proof) = host::read_success1(&auth_receive(&mut admin));
    let expected = host::controller_response(
        &host::secret(0x22),
        crate::nvme::auth::HashFunction::Sha256,
        &c2,
        1234,
        3,
    );
    assert_eq!(proof, Some(expected));
    assert!(admin.authenticated.is_none(), "not before Success2");
    assert_eq!(auth_send(&mut admin, &host::success2(3)).status, (0, 0));
    assert_eq!(
        admin.authenticated.map(|a| a.to_string()).as_deref(),
        Some("DH-HMAC-CHAP SHA-256, bidirectional")
    );
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));
}

#[test]
fn a_host_rejecting_the_controller_ends_the_queue() {
    let mut admin = auth_pair(true);
    admin.connect_admin_to(SUBSYSTEM, 5000);
    auth_send(&mut admin, &host::negotiate(3));
    let challenge = host::read_challenge(&auth_receive(&mut admin));
    let response = host::response(&host::secret(0x11), &challenge);
    auth_send(&mut admin, &host::reply(3, &response, Some((&[1; 32], 9))));
    auth_receive(&mut admin);
    assert_eq!(auth_send(&mut admin, &host::failure2(3, 1)).status, (0, 0));
    assert!(matches!(
        admin.closed,
        Some(CloseReason::AuthenticationFailed(_))
    ));
}

#[test]
fn no_authentication_within_the_connect_timeout_closes_the_queue() {
    let mut admin = auth_pair(false);
    admin.connect_admin_to(SUBSYSTEM, 0);
    let timeout = admin.queue.config.connect_timeout;
    admin.advance(timeout + Duration::from_secs(1));
    assert!(matches!(
        admin.closed,
        Some(CloseReason::AuthenticationFailed(ref why)) if why.contains("in time")
    ));

    // Authenticated in time, the deadline is keep alive's again: none with KATO 0.
    let mut admin = auth_pair(false);
    admin.connect_admin_to(SUBSYSTEM, 0);
    authenticate(&mut admin, &host::secret(0x11));
    admin.advance(timeout * 4);
    assert!(admin.closed.is_none());
}

#[test]
fn auth_commands_are_checked_as_nvmet_checks_them() {
    let mut admin = auth_pair(false);
    admin.connect_admin_to(SUBSYSTEM, 5000);
    let negotiate = host::negotiate(1);
    let len = negotiate.len() as u32;
    for (sqe, status) in [
        (auth_sqe(0x05, 20, len, true).byte(43, 0xEA), (0, 0x02)),
        (auth_sqe(0x05, 21, len, true).byte(41, 0), (0, 0x02)),
        (auth_sqe(0x05, 22, len, true).cdw(11, 0), (0, 0x02)),
        (auth_sqe(0x05, 23, len, true).cdw(11, len + 1), (0, 0x0F)),
    ] {
        let cqe = admin.resp(&sqe, &negotiate);
        assert_eq!(
            (cqe.status, cqe.dnr),
            (status, true),
            "{:?}",
            &sqe.0[40..48]
        );
    }
    // A Receive too small for the Challenge: the exchange cannot go on.
    auth_send(&mut admin, &negotiate);
    let cqe = admin.resp(&auth_sqe(0x06, 30, 16, false), &[]);
    assert_eq!(cqe.status, (0, 0x02));
    assert!(matches!(
        admin.closed,
        Some(CloseReason::AuthenticationFailed(_))
    ));

    // On a queue with nothing to authenticate, AUTH commands are out of sequence.
    let mut plain = Pair::fresh();
    assert_eq!(plain.connect_admin_to(SUBSYSTEM, 5000).result & ATR, 0);
    assert_eq!(auth_send(&mut plain, &negotiate).status, (0, 0x0C));
}

#[test]
fn hosts_without_a_secret_and_unlisted_hosts_are_as_before() {
    let mut config = config();
    config.subsystems[0].allowed_hosts = vec![AllowedHost::open(HOST)];
    let env = env(&config);
    let mut admin = Pair::new(Arc::new(config.clone()), env.clone(), Instant::now());
    let cqe = admin.connect_admin_to(SUBSYSTEM, 5000);
    assert_eq!((cqe.status, cqe.result & ATR), ((0, 0), 0));
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));

    config.subsystems[0].allowed_hosts = vec![AllowedHost::open("nqn.2026-01.test:someone")];
    let mut refused = Pair::new(Arc::new(config), env, Instant::now());
    assert_eq!(refused.connect_admin_to(SUBSYSTEM, 5000).status, (1, 0x84));
}
