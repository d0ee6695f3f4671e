//! End-to-end tests of the sans-IO core and its iSCSI/TCP datamover: a scripted in-memory
//! initiator drives a [`TcpConnection`] through login and full feature phase, every PDU crossing
//! the wire format (framing + digests).
//!
//! One file per area; the scripted initiator ([`Pair`]) and the helpers shared between
//! areas live here.

mod bad_input;
mod chap;
mod cmd_sn;
mod contexts;
mod edges;
mod fuzz_regressions;
mod login;
mod logout;
mod nop;
mod ordering;
mod pair;
mod random;
mod reads;
mod tmf;
mod writes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::chap::{
    decode_binary, encode_hex, no_random_source, Algorithm, Authentication, Credentials,
    RandomUnavailable, Secret,
};
use super::connection::{
    sn_lt, CloseReason, CoreConfig, LoginStatus, ScsiTask, TargetDescriptor, TaskId, TaskKind,
};
use super::framing::{self, FrameError, FrameSettings, PduReader};
use super::pdu::{
    self, DataOut, Header, LoginRequest, LogoutRequest, NopOut, Pdu, ScsiCommand, SnackRequest,
    Stage, TaskAttribute, TaskMgmtRequest, TextRequest, RESERVED_TAG,
};
use super::tcp::{DataInBuf, TcpAction, TcpConnection};
use super::text;
use crate::scsi::ScsiOutcome;
use crate::stats::{thread_payload_copies, CopyCounts};
use pair::Pair;

const TARGET: &str = "iqn.2026-01.test:disk";
const SECRET_TARGET: &str = "iqn.2026-01.test:secret";
const INITIATOR: &str = "iqn.2026-01.test:host";
const ISID: [u8; 6] = [0x80, 1, 2, 3, 4, 5];
const BLOCK: usize = 512;
/// StatSN the initiator expects first (the target starts its StatSN there).
const FIRST_STAT_SN: u32 = 0x100;
/// CmdSN of the login (and of the first command).
const FIRST_CMD_SN: u32 = 10;

/// Two targets: one open to all with LUNs 0 and 1, one restricted to another initiator.
fn config() -> CoreConfig {
    CoreConfig {
        targets: vec![
            TargetDescriptor {
                name: TARGET.into(),
                allowed_initiators: vec![],
                luns: vec![0, 1],
                auth: None,
                initiator_auth: vec![],
            },
            TargetDescriptor {
                name: SECRET_TARGET.into(),
                allowed_initiators: vec!["iqn.2026-01.test:other".into()],
                luns: vec![0],
                auth: None,
                initiator_auth: vec![],
            },
        ],
        portals: vec!["0.0.0.0:3260".parse().unwrap()],
        queue_depth: 16,
        max_transfer_length: 1 << 20,
        ..CoreConfig::default()
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let owned: Vec<text::KeyValue> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    text::encode(&owned)
}

fn keys_of(pdu: &Pdu) -> HashMap<String, String> {
    text::parse(&pdu.data).unwrap().into_iter().collect()
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = read10(lba, blocks);
    cdb[0] = 0x2a;
    cdb
}

fn login_status(pdu: &Pdu) -> (u8, u8) {
    match &pdu.header {
        Header::LoginResponse(r) => (r.status_class, r.status_detail),
        other => panic!("not a Login Response: {other:?}"),
    }
}

fn logged_in(operational: &[(&str, &str)]) -> Pair {
    let mut pair = Pair::new(config());
    pair.login(operational);
    pair.take();
    pair
}

/// (StatSN, ExpCmdSN, MaxCmdSN) of any response that carries them.
fn sequence(pdu: &Pdu) -> (u32, u32, u32) {
    match &pdu.header {
        Header::ScsiResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::DataIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::NopIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::TaskMgmtResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::TextResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::LogoutResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::ReadyToTransfer(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::Reject(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        Header::LoginResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn),
        other => panic!("no sequence numbers in {other:?}"),
    }
}

fn scsi_response(pdu: &Pdu) -> &pdu::ScsiResponse {
    match &pdu.header {
        Header::ScsiResponse(h) => h,
        other => panic!("not a SCSI Response: {other:?}"),
    }
}

fn r2t(pdu: &Pdu) -> &pdu::ReadyToTransfer {
    match &pdu.header {
        Header::ReadyToTransfer(h) => h,
        other => panic!("not an R2T: {other:?}"),
    }
}

fn data_in(pdu: &Pdu) -> &pdu::DataIn {
    match &pdu.header {
        Header::DataIn(h) => h,
        other => panic!("not a Data-In: {other:?}"),
    }
}

fn reject_reason(pdu: &Pdu) -> u8 {
    match &pdu.header {
        Header::Reject(h) => h.reason,
        other => panic!("not a Reject: {other:?}"),
    }
}

fn tmf_response(pdu: &Pdu) -> &pdu::TaskMgmtResponse {
    match &pdu.header {
        Header::TaskMgmtResponse(h) => h,
        other => panic!("not a TMF Response: {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The login status (`class`, `detail`) a connection closed with, if its login was refused.
fn refused_with(closed: &Option<CloseReason>) -> Option<(u8, u8)> {
    match closed {
        Some(CloseReason::LoginFailed(refusal)) => {
            Some((refusal.status.class, refusal.status.detail))
        }
        _ => None,
    }
}

fn login_failure(config: CoreConfig, stage: Stage, keys: &[(&str, &str)]) -> ((u8, u8), Pair) {
    let mut pair = Pair::new(config);
    let next = if stage == Stage::Security {
        Stage::Operational
    } else {
        Stage::FullFeature
    };
    let r = pair.login_step(stage, Some(next), keys);
    assert_eq!(refused_with(&pair.closed), Some(login_status(&r)));
    let Header::LoginResponse(h) = &r.header else {
        unreachable!()
    };
    assert!(!h.transit);
    (login_status(&r), pair)
}

/// A no-data command (TEST UNIT READY) with the given CmdSN.
fn tur(pair: &mut Pair, itt: u32, cmd_sn: u32, immediate: bool) -> Pdu {
    let mut cmd = pair.command(itt, vec![0u8; 16], false, false, 0);
    cmd.cmd_sn = cmd_sn;
    cmd.immediate = immediate;
    Pdu::new(Header::ScsiCommand(cmd))
}

fn logged_in_with(cfg: CoreConfig, operational: &[(&str, &str)]) -> Pair {
    let mut pair = Pair::new(cfg);
    pair.login(operational);
    pair.take();
    pair
}

/// Reads `blocks` blocks at `lba` back through the target (collapsed Data-In).
fn read_back(pair: &mut Pair, lba: u32, blocks: u16) -> Vec<u8> {
    let itt = pair.itt();
    let len = blocks as u32 * BLOCK as u32;
    let cmd = pair.command(itt, read10(lba, blocks), true, false, len);
    pair.send_command(cmd, vec![]);
    let mut out = Vec::new();
    for p in pair.take() {
        out.extend_from_slice(&p.data);
        assert!(data_in(&p).itt == itt);
    }
    out
}

/// Asserts the answer to a Data-Out sequence error: a Reject (protocol error) carrying the
/// Data-Out, then the task ends with ABORTED COMMAND / DATA PHASE ERROR (4Bh/00h).
fn assert_data_phase_error(pdus: &[Pdu], itt: u32, what: &str) {
    assert_eq!(pdus.len(), 2, "{what}: {pdus:?}");
    assert_eq!(reject_reason(&pdus[0]), 0x04, "{what}");
    let response = scsi_response(&pdus[1]);
    assert_eq!((response.itt, response.status), (itt, 2), "{what}");
    let sense = &pdus[1].data[2..];
    assert_eq!(
        (sense[2] & 0x0f, sense[12], sense[13]),
        (0x0b, 0x4b, 0x00),
        "{what}"
    );
}

const ABORT_TASK: u8 = 1;
const ABORT_TASK_SET: u8 = 2;
const LOGICAL_UNIT_RESET: u8 = 5;
const TARGET_WARM_RESET: u8 = 6;

trait ReaderExt {
    fn new_with(bytes: &[u8]) -> Self;
}

impl ReaderExt for PduReader {
    fn new_with(bytes: &[u8]) -> Self {
        let mut r = PduReader::new();
        r.push(bytes);
        r
    }
}

/// xorshift64*: deterministic, dependency-free randomness for property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max as u64 + 1) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// A sequence number near `base`, sometimes far off.
    fn near(&mut self, base: u32) -> u32 {
        if self.chance(10) {
            self.next() as u32
        } else {
            base.wrapping_add(self.below(6) as u32).wrapping_sub(2)
        }
    }
}
