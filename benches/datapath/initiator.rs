//! The benchmark's initiator: logs in and keeps READ(10)/WRITE(10) commands in flight over any
//! [`Wire`] (the in-memory target or a TCP socket), framing every PDU with the crate's own
//! `framing::encode` and `PduReader`. It checks every answer and panics on anything unexpected,
//! so a benchmark that prints figures has really moved the data.

use std::collections::HashMap;

use iser_target::iscsi::framing::{self, FrameSettings, PduReader};
use iser_target::iscsi::pdu::{
    self, DataOut, Header, LoginRequest, LogoutRequest, NopOut, Pdu, ScsiCommand, Stage,
    TaskAttribute, RESERVED_TAG,
};
use iser_target::iscsi::text;

/// Initiator name and session ID the benchmark logs in with.
const INITIATOR: &str = "iqn.2026-11.io.iser-target:bench-initiator";
const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a];
/// Logical block size of the benchmark LUN (the configuration default).
pub const BLOCK: usize = 512;
/// Bytes at the start of the LUN the commands cycle through.
pub const REGION: usize = 64 << 20;
/// Length of the data pattern; command lengths must divide it.
pub const PATTERN: usize = 128 << 10;
/// Our MaxRecvDataSegmentLength, and the largest PDU we accept.
const MAX_RECV: u32 = 262_144;

/// Moves bytes between the initiator and the target.
pub trait Wire {
    /// Delivers bytes to the target.
    fn send(&mut self, bytes: &[u8]);
    /// Bytes the target sent since the last call; waits for at least one.
    fn receive(&mut self) -> &[u8];
}

/// Direction of a benchmark command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// A command in flight.
struct Task {
    op: Op,
    /// Byte offset on the LUN.
    offset: usize,
    len: usize,
    /// Data-In bytes received (reads).
    received: usize,
    /// Next DataSN of each Data-Out sequence, keyed by TTT (counts from 0 per sequence).
    next_data_sn: HashMap<u32, u32>,
}

/// What the target agreed to at login.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    immediate_data: bool,
    initial_r2t: bool,
    first_burst: usize,
    /// The target's MaxRecvDataSegmentLength: our largest Data-Out.
    target_max_recv: usize,
}

/// A logged-in session of the benchmark initiator.
pub struct Initiator {
    settings: FrameSettings,
    reader: PduReader,
    out: Vec<u8>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    negotiated: Negotiated,
    tasks: HashMap<u32, Task>,
    /// Where the next command starts on the LUN.
    next_offset: usize,
    /// [`PATTERN`] bytes: byte `o` of the LUN holds `pattern[o % PATTERN]` once the region is
    /// filled, and every WRITE keeps it that way.
    pattern: Vec<u8>,
    /// Compare READ data with `pattern` (off while measuring).
    verify: bool,
    completed: u64,
}

impl Initiator {
    /// Logs in to `target` over `wire` as a normal session, offering what open-iscsi's
    /// iscsid.conf offers by default (etc/iscsid.conf: MaxRecvDataSegmentLength 262144,
    /// FirstBurstLength 262144, MaxBurstLength 16776192, ImmediateData Yes, InitialR2T No).
    pub fn login(wire: &mut dyn Wire, target: &str) -> Initiator {
        let mut me = Initiator {
            settings: FrameSettings {
                max_data_segment_length: MAX_RECV,
                ..FrameSettings::default()
            },
            reader: PduReader::new(),
            out: Vec::new(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            next_itt: 1,
            negotiated: Negotiated {
                immediate_data: false,
                initial_r2t: true,
                first_burst: 0,
                target_max_recv: 8192,
            },
            tasks: HashMap::new(),
            next_offset: 0,
            pattern: (0..PATTERN).map(|i| (i % 251) as u8).collect(),
            verify: true,
            completed: 0,
        };
        me.login_step(
            wire,
            Stage::Security,
            Stage::Operational,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", target),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        );
        let max_recv = MAX_RECV.to_string();
        let keys = me.login_step(
            wire,
            Stage::Operational,
            Stage::FullFeature,
            &[
                ("HeaderDigest", "None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", &max_recv),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("FirstBurstLength", "262144"),
                ("MaxBurstLength", "16776192"),
                ("MaxOutstandingR2T", "1"),
                ("MaxConnections", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("DataPDUInOrder", "Yes"),
                ("DataSequenceInOrder", "Yes"),
                ("DefaultTime2Wait", "2"),
                ("DefaultTime2Retain", "0"),
            ],
        );
        let number = |key: &str| -> usize {
            keys.get(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("login answer lacks a number for {key}: {keys:?}"))
        };
        me.negotiated = Negotiated {
            immediate_data: keys.get("ImmediateData").map(String::as_str) == Some("Yes"),
            initial_r2t: keys.get("InitialR2T").map(String::as_str) != Some("No"),
            first_burst: number("FirstBurstLength"),
            target_max_recv: number("MaxRecvDataSegmentLength"),
        };
        me
    }

    /// One login request and its (single, successful) answer's keys.
    fn login_step(
        &mut self,
        wire: &mut dyn Wire,
        current: Stage,
        next: Stage,
        keys: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let pairs: Vec<text::KeyValue> = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let request = Pdu::with_data(
            Header::LoginRequest(LoginRequest {
                transit: true,
                continue_flag: false,
                current_stage: current,
                next_stage: next,
                version_max: 0,
                version_min: 0,
                isid: ISID,
                tsih: 0,
                itt: 0,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            text::encode(&pairs),
        );
        self.out = framing::encode(&request, &self.settings);
        wire.send(&self.out);
        self.out.clear();
        let response = self.next_pdu(wire);
        match &response.header {
            Header::LoginResponse(r) if r.status_class == 0 && r.transit => {
                self.exp_stat_sn = r.stat_sn.wrapping_add(1);
            }
            other => panic!("login {current:?} -> {next:?} failed: {other:?}"),
        }
        text::parse(&response.data)
            .expect("login answer keys")
            .into_iter()
            .collect()
    }

    /// The next PDU from the target, waiting for it.
    fn next_pdu(&mut self, wire: &mut dyn Wire) -> Pdu {
        loop {
            if let Some(pdu) = self
                .reader
                .next_pdu(&self.settings)
                .expect("target framing")
            {
                return pdu;
            }
            self.reader.push(wire.receive());
        }
    }

    /// Compare READ data with the pattern the region was filled with (on by default).
    pub fn set_verify(&mut self, verify: bool) {
        self.verify = verify;
    }

    /// Writes the pattern over the whole region in 128 KiB commands, so READs copy real data.
    pub fn fill_region(&mut self, wire: &mut dyn Wire) {
        self.next_offset = 0;
        self.run(wire, Op::Write, PATTERN, 8, (REGION / PATTERN) as u64);
        self.next_offset = 0;
    }

    /// Runs `count` commands of `len` bytes, `queue_depth` at a time, cycling through the region.
    pub fn run(&mut self, wire: &mut dyn Wire, op: Op, len: usize, queue_depth: usize, count: u64) {
        assert!(
            len % BLOCK == 0 && PATTERN % len == 0,
            "{len} bytes do not divide the pattern"
        );
        // Commands start at multiples of their length (see `data_at`).
        self.next_offset = self.next_offset.next_multiple_of(len) % REGION;
        let goal = self.completed + count;
        let mut issued = 0u64;
        while self.completed < goal {
            while self.tasks.len() < queue_depth && issued < count {
                self.issue(op, len);
                issued += 1;
            }
            if !self.out.is_empty() {
                wire.send(&self.out);
                self.out.clear();
            }
            self.reader.push(wire.receive());
            while let Some(pdu) = self
                .reader
                .next_pdu(&self.settings)
                .expect("target framing")
            {
                self.handle(pdu);
            }
        }
    }

    /// Logs out and waits for the Logout Response.
    pub fn logout(mut self, wire: &mut dyn Wire) {
        let request = Pdu::new(Header::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt: self.itt(),
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }));
        wire.send(&framing::encode(&request, &self.settings));
        match self.next_pdu(wire).header {
            Header::LogoutResponse(r) if r.response == 0 => {}
            other => panic!("logout failed: {other:?}"),
        }
    }

    /// What `len` bytes at LUN byte `offset` hold (a command never crosses a pattern boundary:
    /// its length divides the pattern and its offset is a multiple of its length).
    fn data_at(&self, offset: usize, len: usize) -> &[u8] {
        let base = offset % PATTERN;
        &self.pattern[base..base + len]
    }

    fn itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1).max(1);
        itt
    }

    /// Queues one READ(10) or WRITE(10) with its immediate and unsolicited data.
    fn issue(&mut self, op: Op, len: usize) {
        let offset = self.next_offset;
        self.next_offset = (offset + len) % REGION;
        let itt = self.itt();
        let mut cdb = [0u8; 16];
        cdb[0] = if op == Op::Read { 0x28 } else { 0x2a };
        cdb[2..6].copy_from_slice(&((offset / BLOCK) as u32).to_be_bytes());
        cdb[7..9].copy_from_slice(&((len / BLOCK) as u16).to_be_bytes());
        let command = ScsiCommand {
            immediate: false,
            final_flag: true,
            read: op == Op::Read,
            write: op == Op::Write,
            attribute: TaskAttribute::Simple,
            lun: pdu::encode_lun(0),
            itt,
            expected_data_length: len as u32,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb.into(),
            bidi_read_length: None,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let n = self.negotiated;
        // RFC 7143 §13.8/§13.10: immediate data and unsolicited Data-Out together stop at
        // FirstBurstLength; each PDU at the target's MaxRecvDataSegmentLength.
        let unsolicited = if op == Op::Write && !n.initial_r2t {
            len.min(n.first_burst)
        } else {
            0
        };
        let immediate = if op == Op::Write && n.immediate_data {
            len.min(n.first_burst).min(n.target_max_recv)
        } else {
            0
        };
        let command = Pdu::with_data(
            Header::ScsiCommand(command),
            self.data_at(offset, immediate).to_vec(),
        );
        self.out
            .extend_from_slice(&framing::encode(&command, &self.settings));
        self.tasks.insert(
            itt,
            Task {
                op,
                offset,
                len,
                received: 0,
                next_data_sn: HashMap::new(),
            },
        );
        if unsolicited > immediate {
            self.data_out(itt, RESERVED_TAG, immediate, unsolicited - immediate);
        }
    }

    /// Queues Data-Out PDUs for `len` bytes at `offset` of task `itt`, in sequence `ttt`.
    fn data_out(&mut self, itt: u32, ttt: u32, offset: usize, len: usize) {
        let max = self.negotiated.target_max_recv;
        let task = self.tasks.get_mut(&itt).expect("task in flight");
        let base = task.offset % PATTERN;
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(max);
            let data_sn = task.next_data_sn.entry(ttt).or_insert(0);
            let pdu = Pdu::with_data(
                Header::DataOut(DataOut {
                    final_flag: at + n == offset + len,
                    lun: pdu::encode_lun(0),
                    itt,
                    ttt,
                    exp_stat_sn: self.exp_stat_sn,
                    data_sn: *data_sn,
                    buffer_offset: at as u32,
                }),
                self.pattern[base + at..base + at + n].to_vec(),
            );
            *data_sn += 1;
            self.out
                .extend_from_slice(&framing::encode(&pdu, &self.settings));
            at += n;
        }
    }

    fn handle(&mut self, pdu: Pdu) {
        match pdu.header {
            Header::DataIn(h) => {
                let task = self
                    .tasks
                    .get_mut(&h.itt)
                    .expect("Data-In for a known task");
                assert_eq!(task.op, Op::Read);
                assert_eq!(h.buffer_offset as usize, task.received, "Data-In in order");
                let start = task.received;
                task.received += pdu.data.len();
                assert!(task.received <= task.len, "Data-In beyond the transfer");
                if self.verify {
                    let base = task.offset % PATTERN;
                    assert!(
                        pdu.data == self.pattern[base + start..base + task.received],
                        "READ at byte {} returned other data than written",
                        task.offset + start
                    );
                }
                if h.status_present {
                    assert_eq!(h.status, 0, "READ status");
                    self.exp_stat_sn = h.stat_sn.wrapping_add(1);
                    self.finish(h.itt);
                }
            }
            Header::ScsiResponse(h) => {
                assert_eq!(
                    (h.response, h.status),
                    (0, 0),
                    "command failed, sense {:02x?}",
                    pdu.data
                );
                self.exp_stat_sn = h.stat_sn.wrapping_add(1);
                self.finish(h.itt);
            }
            Header::ReadyToTransfer(h) => {
                self.data_out(
                    h.itt,
                    h.ttt,
                    h.buffer_offset as usize,
                    h.desired_length as usize,
                );
            }
            Header::NopIn(h) if h.ttt != RESERVED_TAG => {
                // A ping from the target: answer it (RFC 7143 §11.18).
                let answer = Pdu::new(Header::NopOut(NopOut {
                    immediate: true,
                    lun: h.lun,
                    itt: RESERVED_TAG,
                    ttt: h.ttt,
                    cmd_sn: self.cmd_sn,
                    exp_stat_sn: self.exp_stat_sn,
                }));
                self.out
                    .extend_from_slice(&framing::encode(&answer, &self.settings));
            }
            other => panic!("unexpected PDU from the target: {other:?}"),
        }
    }

    fn finish(&mut self, itt: u32) {
        let task = self.tasks.remove(&itt).expect("response for a known task");
        if task.op == Op::Read {
            assert_eq!(task.received, task.len, "READ returned all its data");
        }
        self.completed += 1;
    }
}
