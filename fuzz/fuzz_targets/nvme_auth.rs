//! In-band authentication (DH-HMAC-CHAP, NVMe base 2.0 §8.13): arbitrary sequences of host
//! operations on a connected NVMe/TCP queue of a subsystem whose host must authenticate, the
//! admin queue or I/O queue 1 (its admin queue authenticated and enabled first).
//!
//! Input: a control byte, then operations, each an opcode byte (taken modulo 10) and its
//! arguments (bytes past the end read as 0; u16 and u32 little-endian). Control bits: 0 the
//! host's entry has a controller secret too (bidirectional; else one-way), 1 header digest,
//! 2 data digest, 3 SQ flow control disabled, 4 the I/O queue (else the admin queue).
//!
//! - 0 Negotiate: transaction u16, n (mod 8) hash IDs, n (mod 8) DH group IDs, SC_C.
//! - 1 Negotiate as Linux's host sends it: transaction u16.
//! - 2 the right Reply to the latest Challenge read (`testing::response_with`): flags (bit 0 carry
//!   a host challenge, bit 1 a wrong transaction), S2 u32, the byte C2 is filled with.
//! - 3 a Reply of fuzzed bytes: transaction u16 (XOR the latest), HL, CVALID, DHVLEN u16,
//!   SEQNUM u32, n, then n bytes of values.
//! - 4 Success2, 5 Failure2 (then its explanation byte): transaction u16 (XOR the latest).
//! - 6 AUTH_Send of arbitrary data: SECP, SPSP0, SPSP1 (each XOR the right one), TL u16 (XOR
//!   the data's length), n u16 (mod 2049), n bytes.
//! - 7 AUTH_Receive: AL u16 (XOR 4096), SECP (XOR E9h).
//! - 8 a probe, a command that needs authentication: Property Get CSTS, Property Set CC.EN or
//!   Identify Controller on the admin queue, Read or Flush on the I/O queue (by its byte).
//! - 9 time: its byte times 250 ms pass.
//!
//! Checks: no panic; no action after Close; every controller PDU well formed (`check_pdu`);
//! and a model of the exchange kept from the host's side, which is the oracle: a probe (or any
//! I/O) succeeds exactly when the harness has authenticated — sent the right Reply to the
//! latest Challenge it read, and, when that Reply carried a host challenge, read a Success1
//! with the right controller response (`testing::controller_response`) and then sent a
//! Success2 of the exchange's transaction; until then it fails with Authentication Required.
//! A Challenge comes only after a Negotiate, of its transaction, with a hash the host offered
//! and the NULL DH group when offered, else the host's first known group (the harness then does
//! the host's side of the DH exchange, and the right Reply carries its value);
//! a Success1 only after the right Reply, carrying the controller's response exactly when the
//! host asked and always the right one; a Failure1 ends the queue; a Negotiate a controller
//! can use is answered with a Challenge and the right Reply with a Success1 (or, one-way with
//! a host challenge, a Failure1). AUTH commands with a wrong SECP/SPSP/TL never succeed;
//! well-formed AUTH_Send always does. The queue closes for failed authentication, or at the
//! connect timeout when the host has not authenticated by then, and not earlier.
//!
//! The right responses come from the crate's own `Exchange` (through `testing`), so this
//! target checks the protocol around them, not what they hash; `auth::secret`'s unit tests pin
//! that (RFC 4231, nvme-cli's secrets).
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::backend::RamBackend;
use iser_target::nvme::auth::dh::DhGroup;
use iser_target::nvme::auth::testing::{self, Challenge, HOST_NQN, SUBSYSTEM_NQN};
use iser_target::nvme::auth::{HashFunction, HostSecrets};
use iser_target::nvme::{Action, AllowedHost, CloseReason, ControllerRegistry, NvmeConfig, Queue};
use iser_target_fuzz::nvme::{
    self, auth_sqe, check_pdu, connect_as, enable, handle_control, namespace, sqe, Host,
};
use libfuzzer_sys::fuzz_target;

const BLOCKS: u64 = 256;
const HOST_SECRET: u8 = 0x11;
const CONTROLLER_SECRET: u8 = 0x22;
/// Status (SCT, SC) of a command held until the queue authenticates.
const AUTH_REQUIRED: (u8, u8) = (1, 0x91);
const SUCCESS: (u8, u8) = (0, 0);
/// Connect's result: ATR, authentication required.
const ATR: u64 = 1 << 17;
/// The largest message the controller sends (a SHA-512 Success1), for the checks that expect
/// one to be read whole.
const LARGEST_MESSAGE: u32 = 16 + 64;

/// The fuzzed subsystem with the NQNs the test host's secrets are bound to: `testing::HOST_NQN`
/// its one host, with a secret, and a controller secret when `bidirectional`.
fn config(bidirectional: bool) -> NvmeConfig {
    let mut config = nvme::config(vec![namespace(1, 512, BLOCKS, false)]);
    config.subsystems[0].nqn = SUBSYSTEM_NQN.into();
    config.subsystems[0].allowed_hosts = vec![AllowedHost {
        nqn: HOST_NQN.into(),
        secrets: Some(Arc::new(HostSecrets {
            host: testing::secret(HOST_SECRET),
            controller: bidirectional.then(|| testing::secret(CONTROLLER_SECRET)),
            // NULL, the default: the NULL group when the host offers it, else the host's
            // first group (a Negotiate without NULL brings a DH exchange in).
            dh_group: DhGroup::Null,
            hash: None,
        })),
    }];
    config.random = testing::counting_random;
    config
}

/// Digest length of hash function `id` (NVMe base 2.0: 01h SHA-256, 02h SHA-384, 03h SHA-512).
fn digest_len(id: u8) -> Option<usize> {
    match id {
        1 => Some(32),
        2 => Some(48),
        3 => Some(64),
        _ => None,
    }
}

/// The operations' arguments; bytes past the end read as 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken.to_vec()
    }
}

/// What the controller answered one command.
#[derive(Debug, Default)]
struct Answer {
    /// The C2HData payload.
    data: Option<Vec<u8>>,
    /// (SCT, SC) of its completion (a C2HData with SUCCESS counts as one).
    status: Option<(u8, u8)>,
    dnr: bool,
    result: u64,
}

/// A host challenge: C2 and its sequence number S2.
type HostChallenge = (Vec<u8>, u32);

/// The exchange as the host sees it: what it sent that the controller took, and read.
#[derive(Debug, Default)]
struct Model {
    /// The latest Negotiate taken and not yet answered by a Challenge: its transaction, the
    /// hashes it offered (when the harness built it), and whether a controller that supports
    /// SHA-2 and the RFC 7919 groups can use it.
    negotiated: Option<(u16, Option<Vec<u8>>, bool)>,
    /// The DH groups of that Negotiate, when the harness built it.
    offered_groups: Option<Vec<u8>>,
    /// The latest Challenge read, until a Reply or a Negotiate.
    challenge: Option<Challenge>,
    /// The host's side of the latest Challenge's DH exchange (its public value and the shared
    /// secret); `None` with the NULL group.
    dh: Option<(Vec<u8>, Vec<u8>)>,
    /// The right Reply was taken: its host challenge (C2, S2), if it carried one. Until a
    /// Success1 is read.
    replied: Option<(Challenge, Option<HostChallenge>)>,
    /// A Success1 with the right controller response was read: a Success2 of this transaction
    /// completes the exchange.
    proved: Option<u16>,
    authenticated: bool,
}

struct Harness {
    queue: Queue,
    registry: ControllerRegistry,
    backend: RamBackend,
    host: Host,
    bidirectional: bool,
    /// The queue's Connect: the authentication deadline runs from it.
    connected_at: Instant,
    timeout: Duration,
    now: Instant,
    closed: Option<CloseReason>,
    next_cid: u16,
    model: Model,
}

impl Harness {
    /// Carries out the queue's actions, collecting what it answered.
    fn pump(&mut self, answer: &mut Answer) {
        while let Some(action) = self.queue.poll_action() {
            assert!(self.closed.is_none(), "{action:?} after Close");
            match action {
                Action::Execute(io) => {
                    assert!(self.model.authenticated, "I/O ran before authentication");
                    let result = io.execute(&self.backend);
                    self.queue.handle_io_complete(io.id, result);
                }
                Action::Close(reason) => self.closed = Some(reason),
                other => {
                    if let Some(pdu) = other.pdu_bytes() {
                        check_pdu(&pdu, &self.host);
                        read_pdu(&pdu, answer);
                    }
                    handle_control(
                        other,
                        &mut self.queue,
                        &mut self.registry,
                        &self.host,
                        self.now,
                    );
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Answer {
        let mut answer = Answer::default();
        self.queue.handle_bytes(bytes, self.now);
        self.pump(&mut answer);
        answer
    }

    fn command(&mut self, mut sqe: [u8; 64], data: &[u8]) -> Answer {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        let capsule = self.host.capsule(&sqe, data);
        let answer = self.send(&capsule);
        assert!(
            answer.status.is_some() || self.closed.is_some(),
            "command {sqe:02x?} not answered"
        );
        answer
    }

    /// AUTH_Send of `message`, its SECP, SPSP0, SPSP1 XOR `protocol` and TL XOR `tl`.
    fn auth_send(&mut self, message: &[u8], protocol: [u8; 3], tl: u32) -> Answer {
        let len = message.len() as u32;
        let mut s = auth_sqe(0x05, 0, len);
        s[41] ^= protocol[1];
        s[42] ^= protocol[2];
        s[43] ^= protocol[0];
        s[44..48].copy_from_slice(&(len ^ tl).to_le_bytes());
        let answer = self.command(s, message);
        let well_formed = protocol == [0; 3] && len != 0 && tl == 0;
        if !well_formed {
            assert_ne!(
                answer.status,
                Some(SUCCESS),
                "a malformed AUTH_Send succeeded"
            );
            return answer;
        }
        assert_eq!(answer.status, Some(SUCCESS), "AUTH_Send answers success");
        if self.closed.is_none() {
            self.sent(message);
        }
        answer
    }

    /// The controller took `m` and goes on: a Negotiate, a Reply while it waits for one, or
    /// the Success2 it waits for (anything else ends the queue).
    fn sent(&mut self, m: &[u8]) {
        assert!(
            m.len() >= 6,
            "the queue goes on after a {}-byte message",
            m.len()
        );
        let transaction = u16::from_le_bytes([m[4], m[5]]);
        let model = &mut self.model;
        match (m[0], m[1]) {
            (0x00, 0x00) => {
                model.negotiated = Some((transaction, None, false));
                model.offered_groups = None;
                model.dh = None;
                model.challenge = None;
                model.replied = None;
                model.proved = None;
            }
            (0x01, 0x02) => {
                let c = model
                    .challenge
                    .take()
                    .expect("a Reply taken with no Challenge read");
                model.replied =
                    right_reply(m, &c, model.dh.as_ref()).map(|host_challenge| (c, host_challenge));
                if let Some((_, None)) = model.replied {
                    model.authenticated = true;
                }
            }
            (0x01, 0x04) => {
                let proved = model.proved.take();
                assert_eq!(proved, Some(transaction), "a Success2 taken");
                model.authenticated = true;
            }
            // A Failure2 or anything else ends the queue.
            (auth_type, auth_id) => {
                panic!("the queue goes on after message {auth_type:#04x}/{auth_id:#04x}")
            }
        }
    }

    /// AUTH_Receive with allocation length `al`, SECP XOR `secp`.
    fn auth_receive(&mut self, al: u32, secp: u8) {
        let mut s = auth_sqe(0x06, 0, al);
        s[43] ^= secp;
        // What the host may expect to read, if the controller takes the command.
        let expected = if al < LARGEST_MESSAGE {
            None
        } else if let Some((_, _, true)) = self.model.negotiated {
            Some(0x01)
        } else if let Some((_, c2)) = &self.model.replied {
            Some(if c2.is_none() || self.bidirectional {
                0x03
            } else {
                0xF1
            })
        } else {
            None
        };
        let answer = self.command(s, &[]);
        if secp != 0 || al == 0 {
            assert_ne!(
                answer.status,
                Some(SUCCESS),
                "a malformed AUTH_Receive succeeded"
            );
            assert!(answer.data.is_none());
            return;
        }
        let Some(m) = answer.data else {
            // Only a buffer too small for the message fails, and ends the queue.
            assert_eq!(answer.status, Some((0, 0x02)), "AUTH_Receive failed");
            assert!(matches!(
                self.closed,
                Some(CloseReason::AuthenticationFailed(_))
            ));
            return;
        };
        assert_eq!(answer.status, Some(SUCCESS));
        assert_eq!(m.len(), al as usize, "the whole allocation comes back");
        assert!(m.len() >= 8, "a message");
        if let Some(id) = expected {
            assert_eq!(m[1], id, "read {:02x?} for {id:#04x}", &m[..8]);
        }
        let transaction = u16::from_le_bytes([m[4], m[5]]);
        let model = &mut self.model;
        match (m[0], m[1]) {
            (0x01, 0x01) => {
                let (negotiated, offered, _) = model
                    .negotiated
                    .take()
                    .expect("a Challenge without a Negotiate");
                assert_eq!(transaction, negotiated, "the Challenge's transaction");
                let (hl, hash) = (usize::from(m[6]), m[8]);
                assert_eq!(Some(hl), digest_len(hash), "HL of hash {hash}");
                if let Some(offered) = offered {
                    assert!(offered.contains(&hash), "hash {hash} not offered");
                }
                // The NULL group when the host offers it, else the host's first known group.
                let group = DhGroup::from_id(m[9]).expect("a known DH group");
                if let Some(groups) = &model.offered_groups {
                    let expected = if groups.contains(&0) {
                        Some(0)
                    } else {
                        groups
                            .iter()
                            .copied()
                            .find(|&g| DhGroup::from_id(g).is_some())
                    };
                    assert_eq!(Some(m[9]), expected, "the DH group of {groups:?}");
                }
                let dh_len = usize::from(u16::from_le_bytes([m[10], m[11]]));
                assert_eq!(dh_len, group.value_len(), "DHVLEN of group {}", m[9]);
                assert!(m.len() >= 16 + hl + dh_len);
                let challenge = testing::read_challenge(&m);
                assert_ne!(challenge.seqnum, 0);
                model.dh = testing::host_dh(&challenge, host_random);
                model.challenge = Some(challenge);
                assert!(self.closed.is_none());
            }
            (0x01, 0x03) => {
                let (challenge, c2) = model.replied.take().expect("a Success1 without a Reply");
                assert_eq!(transaction, challenge.transaction);
                // The response, when RVALID says there is one, follows the 16 bytes.
                let with_response = 16 + if m[8] & 1 != 0 { usize::from(m[6]) } else { 0 };
                assert!(m.len() >= with_response, "a Success1 cut short");
                let (hl, response) = testing::read_success1(&m);
                assert_eq!(Some(hl), digest_len(challenge.hash_id), "Success1's HL");
                match (c2, response) {
                    (None, None) => {}
                    (Some((c2, s2)), Some(response)) => {
                        assert!(self.bidirectional, "a response without a controller secret");
                        let hash = HashFunction::from_id(challenge.hash_id).expect("known");
                        let secret = testing::secret(CONTROLLER_SECRET);
                        let right = testing::controller_response_with(
                            &secret,
                            hash,
                            &c2,
                            s2,
                            challenge.transaction,
                            model.dh.as_ref().map(|(_, session)| &session[..]),
                        );
                        assert_eq!(response, right, "the controller's response");
                        model.proved = Some(challenge.transaction);
                    }
                    (c2, response) => {
                        panic!("host challenge {c2:?}, Success1 response {response:?}")
                    }
                }
                assert!(self.closed.is_none());
            }
            (0x00, 0xF1) => {
                assert_eq!(testing::read_failure1(&m).0, 0x01, "reason code");
                assert!(
                    matches!(self.closed, Some(CloseReason::AuthenticationFailed(_))),
                    "a Failure1 ends the queue"
                );
            }
            _ => panic!("read {:02x?}", &m[..8]),
        }
    }

    /// A command that needs authentication, picked by `selector`.
    fn probe(&mut self, selector: u8) {
        let io_queue = self.queue.qid() != 0;
        let s = match (io_queue, selector % 3) {
            (false, 0) => {
                let mut s = sqe(0x7F, 0x04, 0);
                s[44..48].copy_from_slice(&0x1Cu32.to_le_bytes());
                s
            }
            (false, 1) => {
                let mut s = sqe(0x7F, 0x00, 0);
                s[44..48].copy_from_slice(&0x14u32.to_le_bytes());
                s[48..56].copy_from_slice(&(1u64 | 6 << 16 | 4 << 20).to_le_bytes());
                s
            }
            (false, _) => {
                let mut s = sqe(0x06, 0, 0);
                s[32..36].copy_from_slice(&4096u32.to_le_bytes());
                s[39] = 0x5A;
                s[40] = 1;
                s
            }
            (true, 0) => {
                let mut s = sqe(0x02, 0, 0);
                s[4..8].copy_from_slice(&1u32.to_le_bytes());
                s[32..36].copy_from_slice(&512u32.to_le_bytes());
                s[39] = 0x5A;
                s
            }
            (true, _) => {
                let mut s = sqe(0x00, 0, 0);
                s[4..8].copy_from_slice(&1u32.to_le_bytes());
                s
            }
        };
        let answer = self.command(s, &[]);
        let status = answer.status.expect("the probe is answered");
        if self.model.authenticated {
            assert_ne!(status, AUTH_REQUIRED, "held after authentication");
        } else {
            assert_eq!(
                (status, answer.dnr),
                (AUTH_REQUIRED, true),
                "answered before authentication"
            );
        }
        assert!(self.closed.is_none(), "a probe closed the queue");
    }
}

/// Reads one controller PDU (already checked well formed) into `answer`.
fn read_pdu(b: &[u8], answer: &mut Answer) {
    match b[0] {
        // CapsuleResp: the CQE.
        5 => {
            let sf = u16::from_le_bytes([b[22], b[23]]);
            answer.result = u64::from_le_bytes(b[8..16].try_into().unwrap());
            answer.status = Some((((sf >> 9) & 7) as u8, (sf >> 1) as u8));
            answer.dnr = sf & 0x8000 != 0;
        }
        // C2HData: one PDU carries a command's whole data here.
        7 => {
            let pdo = usize::from(b[3]);
            let datao = u32::from_le_bytes(b[12..16].try_into().unwrap());
            let datal = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
            assert_eq!(datao, 0);
            assert!(answer.data.is_none());
            answer.data = Some(b[pdo..pdo + datal].to_vec());
            if b[1] & 0x08 != 0 {
                answer.status = Some(SUCCESS);
            }
        }
        _ => {}
    }
}

/// Whether `m` is the right Reply to `challenge` (NVMe base 2.0 Figure DH-HMAC-CHAP_Reply: HL
/// byte 6, CVALID byte 8 bit 0, DHVLEN bytes 10-11, SEQNUM bytes 12-15, then the response,
/// C2 and the DH value): `Some` of its host challenge (none when absent or S2 is 0).
fn right_reply(
    m: &[u8],
    challenge: &Challenge,
    dh: Option<&(Vec<u8>, Vec<u8>)>,
) -> Option<Option<HostChallenge>> {
    let hl = usize::from(*m.get(6)?);
    let public = dh.map_or(&[][..], |(public, _)| &public[..]);
    let right = m.len() >= 16 + 2 * hl
        && u16::from_le_bytes([m[4], m[5]]) == challenge.transaction
        && Some(hl) == digest_len(challenge.hash_id)
        && usize::from(u16::from_le_bytes([m[10], m[11]])) == public.len()
        && m.get(16 + 2 * hl..16 + 2 * hl + public.len()) == Some(public)
        && m[16..16 + hl] == expected_response(challenge, dh)[..];
    let s2 = u32::from_le_bytes(m.get(12..16)?.try_into().unwrap());
    right.then(|| (m[8] & 1 != 0 && s2 != 0).then(|| (m[16 + hl..16 + 2 * hl].to_vec(), s2)))
}

fn expected_response(challenge: &Challenge, dh: Option<&(Vec<u8>, Vec<u8>)>) -> Vec<u8> {
    let secret = testing::secret(HOST_SECRET);
    let session = dh.map(|(_, session)| &session[..]);
    testing::response_with(&secret, challenge, session, HOST_NQN, SUBSYSTEM_NQN)
}

/// The host's random source for its DH key pairs (the controller's is `counting_random`).
fn host_random(buf: &mut [u8]) -> Result<(), iser_target::random::RandomUnavailable> {
    buf.fill(0x77);
    Ok(())
}

/// `response` as a Reply carrying the host's DH value, if the exchange has one.
fn reply_for(
    transaction: u16,
    response: &[u8],
    host_challenge: Option<(&[u8], u32)>,
    dh: Option<&(Vec<u8>, Vec<u8>)>,
) -> Vec<u8> {
    let public = dh.map_or(&[][..], |(public, _)| &public[..]);
    testing::reply_with_dh(transaction, response, host_challenge, public)
}

/// A queue of `config` for `host`, ICReq and Connect (to controller `cntlid` for queue `qid`)
/// done: the controller asks for authentication.
fn connected(
    config: &Arc<NvmeConfig>,
    registry: ControllerRegistry,
    host: Host,
    qid: u16,
    cntlid: u16,
    cattr: u8,
    now: Instant,
) -> Harness {
    let secrets = config.subsystems[0].allowed_hosts[0].secrets.as_ref();
    let bidirectional = secrets.is_some_and(|s| s.controller.is_some());
    let mut h = Harness {
        queue: Queue::new(config.clone(), now),
        registry,
        backend: RamBackend::new(BLOCKS * 512),
        host,
        bidirectional,
        connected_at: now,
        timeout: config.connect_timeout,
        now,
        closed: None,
        next_cid: 0,
        model: Model::default(),
    };
    h.send(&host.ic_req());
    let connect = connect_as(&host, qid, cntlid, cattr, SUBSYSTEM_NQN, HOST_NQN);
    let answer = h.send(&connect);
    assert_eq!(answer.status, Some(SUCCESS), "Connect");
    assert_eq!(answer.result & ATR, ATR, "Connect asks for authentication");
    assert!(h.queue.is_live() && h.closed.is_none());
    h
}

/// The host's side of a one-way exchange, the way Linux's host runs it.
fn authenticate(h: &mut Harness) {
    h.auth_send(&testing::negotiate(1), [0; 3], 0);
    h.auth_receive(4096, 0);
    let challenge = h.model.challenge.clone().expect("a Challenge");
    let dh = h.model.dh.clone();
    let reply = reply_for(
        1,
        &expected_response(&challenge, dh.as_ref()),
        None,
        dh.as_ref(),
    );
    h.auth_send(&reply, [0; 3], 0);
    h.auth_receive(4096, 0);
    assert!(h.model.authenticated && h.closed.is_none());
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, ops)) = data.split_first() else {
        return;
    };
    let bidirectional = control & 1 != 0;
    let host = Host {
        header_digest: control & 2 != 0,
        data_digest: control & 4 != 0,
    };
    let cattr = if control & 8 != 0 { 4 } else { 0 };
    let config = Arc::new(config(bidirectional));
    let now = Instant::now();
    let mut h = if control & 16 != 0 {
        // The admin queue authenticated and enabled with two I/O queues, then I/O queue 1.
        let plain = Host {
            header_digest: false,
            data_digest: false,
        };
        let registry = ControllerRegistry::new();
        let mut admin = connected(&config, registry, plain, 0, 0xFFFF, 0, now);
        authenticate(&mut admin);
        admin.send(&enable(&plain));
        let cntlid = admin.queue.cntlid().expect("connected");
        let registry = std::mem::take(&mut admin.registry);
        connected(&config, registry, host, 1, cntlid, cattr, now)
    } else {
        connected(
            &config,
            ControllerRegistry::new(),
            host,
            0,
            0xFFFF,
            cattr,
            now,
        )
    };

    let mut input = Input(ops);
    for _ in 0..64 {
        let Some(&op) = input.0.first() else {
            break;
        };
        input.byte();
        let latest = h.model.challenge.as_ref().map_or(0, |c| c.transaction);
        match op % 10 {
            0 => {
                let transaction = input.u16();
                let n = usize::from(input.byte() % 8);
                let hashes = input.bytes(n);
                let n = usize::from(input.byte() % 8);
                let groups = input.bytes(n);
                let sc_c = input.byte();
                let m = testing::negotiate_with(transaction, &hashes, &groups, sc_c);
                h.auth_send(&m, [0; 3], 0);
                if let Some(negotiated) = h.model.negotiated.as_mut() {
                    let usable = hashes.iter().any(|&id| digest_len(id).is_some())
                        && groups.iter().any(|&g| DhGroup::from_id(g).is_some())
                        && sc_c == 0;
                    *negotiated = (transaction, Some(hashes), usable);
                    h.model.offered_groups = Some(groups);
                }
            }
            1 => {
                let transaction = input.u16();
                h.auth_send(&testing::negotiate(transaction), [0; 3], 0);
                if let Some(negotiated) = h.model.negotiated.as_mut() {
                    *negotiated = (transaction, Some(vec![1, 2, 3]), true);
                    h.model.offered_groups = Some(vec![0, 1, 2, 3, 4, 5]);
                }
            }
            2 => {
                let flags = input.byte();
                let s2 = input.u32();
                let fill = input.byte();
                // Before any Challenge: the response to one the controller never sent.
                let challenge = h.model.challenge.clone().unwrap_or(Challenge {
                    transaction: 0,
                    hash_id: 1,
                    dh_group: 0,
                    seqnum: 1,
                    value: vec![0; 32],
                    dh_value: Vec::new(),
                });
                let dh = h.model.dh.clone();
                let response = expected_response(&challenge, dh.as_ref());
                let c2 = vec![fill; response.len()];
                let host_challenge = (flags & 1 != 0).then_some((&c2[..], s2));
                let transaction = challenge.transaction ^ u16::from(flags >> 1 & 1);
                let m = reply_for(transaction, &response, host_challenge, dh.as_ref());
                h.auth_send(&m, [0; 3], 0);
            }
            3 => {
                let transaction = latest ^ input.u16();
                let mut m = vec![0x01, 0x02, 0, 0];
                m.extend_from_slice(&transaction.to_le_bytes());
                m.extend_from_slice(&[input.byte(), 0, input.byte(), 0]);
                m.extend_from_slice(&input.u16().to_le_bytes());
                m.extend_from_slice(&input.u32().to_le_bytes());
                let n = usize::from(input.byte());
                m.extend(input.bytes(n));
                h.auth_send(&m, [0; 3], 0);
            }
            4 => {
                let transaction = latest_transaction(&h.model) ^ input.u16();
                h.auth_send(&testing::success2(transaction), [0; 3], 0);
            }
            5 => {
                let transaction = latest_transaction(&h.model) ^ input.u16();
                let m = testing::failure2(transaction, input.byte());
                h.auth_send(&m, [0; 3], 0);
                assert!(
                    matches!(h.closed, Some(CloseReason::AuthenticationFailed(_))),
                    "a Failure2 ends the queue"
                );
            }
            6 => {
                let protocol = [input.byte(), input.byte(), input.byte()];
                let tl = u32::from(input.u16());
                let n = usize::from(input.u16() % 2049);
                let m = input.bytes(n);
                h.auth_send(&m, protocol, tl);
            }
            7 => {
                let al = u32::from(input.u16() ^ 4096);
                let secp = input.byte();
                h.auth_receive(al, secp);
            }
            8 => {
                let selector = input.byte();
                h.probe(selector);
            }
            _ => {
                h.now += Duration::from_millis(u64::from(input.byte()) * 250);
                h.queue.handle_timeout(h.now);
                let mut answer = Answer::default();
                h.pump(&mut answer);
                let late = h.now >= h.connected_at + h.timeout;
                if !h.model.authenticated {
                    assert_eq!(h.closed.is_some(), late, "closed at the connect timeout");
                } else if h.queue.qid() != 0 {
                    assert!(
                        h.closed.is_none(),
                        "an authenticated I/O queue has no deadline"
                    );
                }
            }
        }
        match &h.closed {
            None => {}
            Some(CloseReason::AuthenticationFailed(_)) => break,
            Some(CloseReason::KeepAliveExpired) if h.model.authenticated => break,
            Some(other) => panic!("closed: {other:?}"),
        }
    }
    if h.closed.is_none() {
        h.queue.handle_shutdown();
        let mut answer = Answer::default();
        h.pump(&mut answer);
        assert_eq!(h.closed, Some(CloseReason::Shutdown));
    }
    // Closed, the queue does nothing more (`pump` checks).
    let mut probe = sqe(0x7F, 0x04, 0xFFFF);
    probe[44..48].copy_from_slice(&0x1Cu32.to_le_bytes());
    h.send(&h.host.capsule(&probe, &[]));
    h.queue.handle_timeout(h.now + Duration::from_secs(3600));
    h.pump(&mut Answer::default());
});

/// The transaction a Success2 or Failure2 answers: the latest exchange's.
fn latest_transaction(model: &Model) -> u16 {
    if let Some(t) = model.proved {
        return t;
    }
    model
        .replied
        .as_ref()
        .map(|(c, _)| c.transaction)
        .or(model.challenge.as_ref().map(|c| c.transaction))
        .unwrap_or(0)
}
