//! A DH-HMAC-CHAP host for tests (the unit tests and the whole-binary ones): its messages built
//! byte by byte from the layouts in NVMe base 2.0 §8.13.5 (Linux include/linux/nvme.h), not
//! with the controller's codec, and the controller's read back the same way.

use super::dh::{DhGroup, KeyPair};
use super::secret::{DhchapSecret, Exchange, HashFunction};
use crate::random::RandomSource;

pub const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
pub const SUBSYSTEM_NQN: &str = "nqn.2026-01.test:disk";

/// A secret of 32 bytes of `fill`, with the SHA-256 transform.
pub fn secret(fill: u8) -> DhchapSecret {
    DhchapSecret::parse(&secret_text(fill)).expect("a valid secret")
}

/// [`secret`] as configuration text.
pub fn secret_text(fill: u8) -> String {
    DhchapSecret::encode(Some(HashFunction::Sha256), &[fill; 32])
}

/// Negotiate as Linux's host sends it (drivers/nvme/host/auth.c
/// `nvme_auth_set_dhchap_negotiate_data`): SHA-256/384/512, DH groups NULL and 2048..8192
/// from byte 30 of the list, no secure channel.
pub fn negotiate(transaction: u16) -> Vec<u8> {
    negotiate_with(transaction, &[1, 2, 3], &[0, 1, 2, 3, 4, 5], 0)
}

pub fn negotiate_with(transaction: u16, hashes: &[u8], groups: &[u8], sc_c: u8) -> Vec<u8> {
    let mut m = vec![0u8; 8 + 64];
    m[0] = 0x00;
    m[1] = 0x00;
    m[4..6].copy_from_slice(&transaction.to_le_bytes());
    m[6] = sc_c;
    m[7] = 1;
    let d = &mut m[8..];
    d[0] = 0x01;
    d[2] = hashes.len() as u8;
    d[3] = groups.len() as u8;
    d[4..4 + hashes.len()].copy_from_slice(hashes);
    d[34..34 + groups.len()].copy_from_slice(groups);
    m
}

/// The controller's Challenge, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub transaction: u16,
    pub hash_id: u8,
    pub dh_group: u8,
    pub seqnum: u32,
    pub value: Vec<u8>,
    /// The controller's DH public value (empty with the NULL group).
    pub dh_value: Vec<u8>,
}

pub fn read_challenge(m: &[u8]) -> Challenge {
    assert_eq!((m[0], m[1]), (0x01, 0x01), "a Challenge");
    let hl = usize::from(m[6]);
    let dh_len = usize::from(u16::from_le_bytes([m[10], m[11]]));
    Challenge {
        transaction: u16::from_le_bytes([m[4], m[5]]),
        hash_id: m[8],
        dh_group: m[9],
        seqnum: u32::from_le_bytes(m[12..16].try_into().expect("4 bytes")),
        value: m[16..16 + hl].to_vec(),
        dh_value: m[16 + hl..16 + hl + dh_len].to_vec(),
    }
}

/// The host's side of the DH exchange `challenge` asks for: its public value (from
/// `random`) and the shared secret; `None` with the NULL group.
pub fn host_dh(challenge: &Challenge, random: RandomSource) -> Option<(Vec<u8>, Vec<u8>)> {
    let group = DhGroup::from_id(challenge.dh_group).expect("a known group");
    if group == DhGroup::Null {
        return None;
    }
    let key_pair = KeyPair::generate(group, random).expect("random bytes");
    let session_key = key_pair
        .shared_secret(&challenge.dh_value)
        .expect("the controller's value is in the group");
    Some((key_pair.public_value().to_vec(), session_key))
}

/// The response of host `host_nqn` to `challenge` with `secret`, for subsystem
/// `subsystem_nqn`, with the DH shared secret when the group is not NULL.
pub fn response_with(
    secret: &DhchapSecret,
    challenge: &Challenge,
    session_key: Option<&[u8]>,
    host_nqn: &str,
    subsystem_nqn: &str,
) -> Vec<u8> {
    Exchange {
        hash: HashFunction::from_id(challenge.hash_id).expect("a known hash"),
        challenge: &challenge.value,
        session_key,
        seqnum: challenge.seqnum,
        transaction: challenge.transaction,
        host_nqn,
        subsystem_nqn,
    }
    .host_response(secret)
}

/// The Reply of host `host_nqn` to `challenge` with `secret`, for subsystem `subsystem_nqn`,
/// asking nothing of the controller: with the DH exchange the challenge's group asks for (the
/// host's key pair from `random`) and the response augmented by its shared secret.
pub fn reply_to(
    secret: &DhchapSecret,
    challenge: &Challenge,
    host_nqn: &str,
    subsystem_nqn: &str,
    random: RandomSource,
) -> Vec<u8> {
    let dh = host_dh(challenge, random);
    let (public, session) = match &dh {
        Some((public, session)) => (public.as_slice(), Some(session.as_slice())),
        None => (&[][..], None),
    };
    let response = response_with(secret, challenge, session, host_nqn, subsystem_nqn);
    reply_with_dh(challenge.transaction, &response, None, public)
}

/// [`response_with`] of [`HOST_NQN`] for [`SUBSYSTEM_NQN`], with the NULL DH group.
pub fn response(secret: &DhchapSecret, challenge: &Challenge) -> Vec<u8> {
    response_with(secret, challenge, None, HOST_NQN, SUBSYSTEM_NQN)
}

/// Reply: the response, and the host's own challenge C2 with S2 when it asks the controller
/// to authenticate (zeros and S2 0 otherwise, as Linux sends it), with the NULL DH group.
pub fn reply(transaction: u16, response: &[u8], host_challenge: Option<(&[u8], u32)>) -> Vec<u8> {
    reply_with_dh(transaction, response, host_challenge, &[])
}

/// [`reply`] with the host's DH public value after the challenge.
pub fn reply_with_dh(
    transaction: u16,
    response: &[u8],
    host_challenge: Option<(&[u8], u32)>,
    dh_value: &[u8],
) -> Vec<u8> {
    let hl = response.len();
    let mut m = vec![0u8; 16 + 2 * hl];
    m[0] = 0x01;
    m[1] = 0x02;
    m[4..6].copy_from_slice(&transaction.to_le_bytes());
    m[6] = hl as u8;
    m[10..12].copy_from_slice(&(dh_value.len() as u16).to_le_bytes());
    m[16..16 + hl].copy_from_slice(response);
    if let Some((c2, s2)) = host_challenge {
        m[8] = 1;
        m[12..16].copy_from_slice(&s2.to_le_bytes());
        m[16 + hl..16 + 2 * hl].copy_from_slice(c2);
    }
    m.extend_from_slice(dh_value);
    m
}

/// The controller's Success1, read: HL and the controller's response, if there is one.
pub fn read_success1(m: &[u8]) -> (usize, Option<Vec<u8>>) {
    assert_eq!((m[0], m[1]), (0x01, 0x03), "a Success1");
    let hl = usize::from(m[6]);
    (hl, (m[8] == 1).then(|| m[16..16 + hl].to_vec()))
}

/// A Failure1, read: (reason code, explanation).
pub fn read_failure1(m: &[u8]) -> (u8, u8) {
    assert_eq!((m[0], m[1]), (0x00, 0xF1), "a Failure1");
    (m[6], m[7])
}

pub fn success2(transaction: u16) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m[0] = 0x01;
    m[1] = 0x04;
    m[4..6].copy_from_slice(&transaction.to_le_bytes());
    m
}

pub fn failure2(transaction: u16, explanation: u8) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    m[1] = 0xF0;
    m[4..6].copy_from_slice(&transaction.to_le_bytes());
    m[6] = 0x01;
    m[7] = explanation;
    m
}

/// The controller's response the host expects for its challenge, with the NULL DH group.
pub fn controller_response(
    secret: &DhchapSecret,
    hash: HashFunction,
    challenge: &[u8],
    seqnum: u32,
    transaction: u16,
) -> Vec<u8> {
    controller_response_with(secret, hash, challenge, seqnum, transaction, None)
}

/// [`controller_response`] with the DH shared secret.
pub fn controller_response_with(
    secret: &DhchapSecret,
    hash: HashFunction,
    challenge: &[u8],
    seqnum: u32,
    transaction: u16,
    session_key: Option<&[u8]>,
) -> Vec<u8> {
    Exchange {
        hash,
        challenge,
        session_key,
        seqnum,
        transaction,
        host_nqn: HOST_NQN,
        subsystem_nqn: SUBSYSTEM_NQN,
    }
    .controller_response(secret)
}

/// A deterministic random source.
pub fn counting_random(buf: &mut [u8]) -> Result<(), crate::random::RandomUnavailable> {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    Ok(())
}
