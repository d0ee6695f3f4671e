//! The iSER receive path: arbitrary Sends (login included) fed to `IserConnection::handle_receive`,
//! with the RDMA Reads, session binding and SCSI commands it asks for answered in an order the
//! input picks: completed, failed, late, or never. Checks that every operation stays inside what
//! the initiator advertised and that every Send is one the initiator can take.
//!
//! Input: one control byte, then records `[kind, length (2 bytes, big-endian), payload...]` (a
//! short last record takes what is left). The control byte:
//!
//! | bit | meaning |
//! |---|---|
//! | 0 | Send-with-Invalidate agreed in the CM exchange |
//! | 1 | log in first as ib_iser does; otherwise the Sends must log in themselves |
//! | 2 | point each non-immediate command's CmdSN at the target's ExpCmdSN |
//! | 3 | hold SCSI commands until a record completes them; otherwise complete them at once |
//! | 4 | refuse the session binding (the login fails) |
//!
//! Record kinds (`kind % 8`): 0–2 a Send of the payload bytes; 3 complete the pending RDMA Read
//! `payload[0]` picks; 4 fail it; 5 complete the held command `payload[0]` picks with the outcome
//! `payload[1]` picks; 6 let `payload[0]` seconds pass; 7 answer what is no longer asked for (a
//! read or command already completed), then shut down when `payload[0]` is odd.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::iscsi::connection::ISER_FULL_FEATURE_RESPONSE_DATA;
use iser_target::iscsi::iser::initiator::ib_iser_login;
use iser_target::iscsi::iser::{
    FabricOp, IserConnection, IserHeader, ISER_HEADER_LEN, RECV_DATA_CAPACITY,
};
use iser_target::iscsi::pdu::{self, Header, Pdu, Stage, BHS_LEN};
use iser_target::iscsi::text::TargetPolicy;
use iser_target::iscsi::{CoreConfig, LoginStatus, TargetDescriptor};
use iser_target_fuzz::{scsi_outcome, SequenceCheck};
use libfuzzer_sys::fuzz_target;

const TARGET: &str = "iqn.2026-01.fuzz:disk";
const QUEUE_DEPTH: u32 = 8;
const MAX_BURST: u32 = 256 * 1024;
/// Largest Login or Text Response an initiator's login buffer holds (Linux iscsi_iser.h
/// ISER_RX_LOGIN_SIZE).
const LOGIN_BUFFER_DATA: usize = 8192;

/// A buffer a SCSI Command advertised in its iSER header.
#[derive(Debug, Clone, Copy)]
struct Advertised {
    stag: u32,
    va: u64,
    /// Bytes the target may touch from `va` on.
    len: u64,
}

impl Advertised {
    fn holds(&self, stag: u32, va: u64, len: u64) -> bool {
        stag == self.stag
            && va
                .wrapping_sub(self.va)
                .checked_add(len)
                .is_some_and(|end| end <= self.len)
    }
}

struct Harness {
    conn: IserConnection,
    now: Instant,
    send_with_invalidate: bool,
    defer: bool,
    refuse_binding: bool,
    closed: bool,
    /// The adapter asked for the full-feature receive buffers (`FabricOp::EnterFullFeature`).
    entered_full_feature: bool,
    full_feature: bool,
    sequence: SequenceCheck,
    /// Read buffers (the target RDMA Writes into them) and write buffers (it RDMA Reads them).
    read_buffers: Vec<Advertised>,
    write_buffers: Vec<Advertised>,
    /// Commands that advertised each STag. A real initiator registers a fresh STag per command;
    /// the fuzzer may reuse one, and then which command an operation serves is ambiguous.
    advertisements: HashMap<u32, usize>,
    /// STags a SCSI Response invalidated.
    invalidated: HashSet<u32>,
    /// RDMA Reads posted and not answered: (token, len).
    reads: Vec<(u64, u32)>,
    /// Commands handed to the backend and not completed: (id, expected transfer length).
    running: Vec<(u64, u32)>,
    last_read_token: Option<u64>,
    last_task: Option<u64>,
}

impl Harness {
    fn receive(&mut self, message: &[u8]) {
        self.note_advertised(message);
        self.conn.handle_receive(message, self.now);
        self.pump();
    }

    /// Records the buffers a SCSI Command's iSER header advertises, read straight off the bytes.
    fn note_advertised(&mut self, message: &[u8]) {
        let Some(iser) = IserHeader::decode(message) else {
            return;
        };
        let Some(bhs) = message.get(ISER_HEADER_LEN..ISER_HEADER_LEN + BHS_LEN) else {
            return;
        };
        if bhs[0] & 0x3f != pdu::Opcode::ScsiCommand as u8 {
            return;
        }
        let edtl = u64::from(u32::from_be_bytes([bhs[20], bhs[21], bhs[22], bhs[23]]));
        let immediate = u64::from(u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]));
        if iser.flags & 0x04 != 0 {
            *self.advertisements.entry(iser.read_stag).or_default() += 1;
            self.read_buffers.push(Advertised {
                stag: iser.read_stag,
                va: iser.read_va,
                len: edtl,
            });
        }
        if iser.flags & 0x08 != 0 {
            *self.advertisements.entry(iser.write_stag).or_default() += 1;
            // WriteVA points past the immediate data (RFC 7145 §7.3.1).
            self.write_buffers.push(Advertised {
                stag: iser.write_stag,
                va: iser.write_va,
                len: edtl.saturating_sub(immediate),
            });
        }
    }

    fn pump(&mut self) {
        while let Some(op) = self.conn.poll_op() {
            assert!(!self.closed, "{op:?} after Close");
            match op {
                FabricOp::Send { bytes, invalidate } => {
                    self.check_send(&bytes.to_vec(), invalidate)
                }
                FabricOp::EnterFullFeature => {
                    assert!(!self.entered_full_feature, "EnterFullFeature twice");
                    self.entered_full_feature = true;
                }
                FabricOp::RdmaWrite {
                    stag,
                    va,
                    data,
                    range,
                } => {
                    assert!(!range.is_empty(), "empty RDMA Write");
                    assert!(range.end <= data.len(), "RDMA Write beyond its buffer");
                    self.check_valid(stag);
                    assert!(
                        self.read_buffers.iter().any(|b| b.holds(stag, va, range.len() as u64)),
                        "RDMA Write of {} bytes at {stag:#x}:{va:#x} outside every advertised read buffer {:?}",
                        range.len(),
                        self.read_buffers
                    );
                }
                FabricOp::RdmaRead {
                    token,
                    stag,
                    va,
                    len,
                } => {
                    assert!(len > 0 && len <= MAX_BURST, "RDMA Read of {len} bytes");
                    self.check_valid(stag);
                    assert!(
                        self.write_buffers.iter().any(|b| b.holds(stag, va, u64::from(len))),
                        "RDMA Read of {len} bytes at {stag:#x}:{va:#x} outside every advertised write buffer {:?}",
                        self.write_buffers
                    );
                    assert!(
                        self.reads.iter().all(|&(t, _)| t != token),
                        "token {token} reused"
                    );
                    self.reads.push((token, len));
                }
                FabricOp::BindSession(_) => {
                    let answer = if self.refuse_binding {
                        Err(LoginStatus::TOO_MANY_CONNECTIONS)
                    } else {
                        Ok(1)
                    };
                    self.conn.handle_session_bound(answer);
                }
                FabricOp::Execute(task) => {
                    assert!(task.data_out.len() as u64 <= u64::from(task.expected_transfer_length));
                    if self.defer {
                        self.running.push((task.id, task.expected_transfer_length));
                    } else {
                        // A logical unit reset has no CDB; its outcome is not looked at.
                        let opcode = task.cdb.first().copied().unwrap_or_default();
                        let outcome = scsi_outcome(task.expected_transfer_length, opcode);
                        self.last_task = Some(task.id);
                        self.conn.handle_scsi_complete(task.id, outcome);
                    }
                }
                FabricOp::Close(_) => {
                    self.closed = true;
                    assert!(self.conn.is_closed());
                }
            }
        }
    }

    /// An STag one command advertised is dead once a SCSI Response invalidated it.
    fn check_valid(&self, stag: u32) {
        assert!(
            !self.invalidated.contains(&stag) || self.advertisements[&stag] > 1,
            "RDMA operation on STag {stag:#x} after its command's response invalidated it"
        );
    }

    /// A Send must be one whole control-type PDU from target to initiator that fits the receive
    /// buffer the initiator has posted for it; Send-with-Invalidate only ends a command.
    fn check_send(&mut self, bytes: &[u8], invalidate: Option<u32>) {
        assert_eq!(IserHeader::decode(bytes), Some(IserHeader::CONTROL));
        let rest = &bytes[ISER_HEADER_LEN..];
        assert!(rest.len() >= BHS_LEN, "Send without a whole BHS");
        assert_eq!(pdu::total_ahs_length(rest), Ok(0), "AHS in a target PDU");
        let data_len = pdu::data_segment_length(rest).unwrap() as usize;
        assert_eq!(
            rest.len(),
            BHS_LEN + data_len + pdu::padding(data_len),
            "Send length"
        );
        let pdu = Pdu::decode(
            &rest[..BHS_LEN],
            &[],
            rest[BHS_LEN..BHS_LEN + data_len].to_vec(),
        )
        .expect("target PDU decodes");
        self.sequence.check(&pdu.header);
        let limit = match &pdu.header {
            Header::LoginResponse(h) => {
                if h.transit && h.next_stage == Stage::FullFeature && h.status_class == 0 {
                    // The initiator may send full-feature PDUs as soon as it has this response:
                    // our receive buffers for them must already be posted.
                    assert!(
                        self.entered_full_feature,
                        "final Login Response before EnterFullFeature"
                    );
                    self.full_feature = true;
                }
                LOGIN_BUFFER_DATA
            }
            // A discovery session's Text Responses land in the login buffer.
            Header::TextResponse(_) => LOGIN_BUFFER_DATA,
            _ if self.full_feature => ISER_FULL_FEATURE_RESPONSE_DATA,
            _ => LOGIN_BUFFER_DATA,
        };
        assert!(
            data_len <= limit,
            "{data_len} data bytes in {:?}",
            pdu.header
        );
        assert!(
            !matches!(pdu.header, Header::DataIn(_) | Header::ReadyToTransfer(_)),
            "{:?} over iSER",
            pdu.header
        );
        if let Some(stag) = invalidate {
            assert!(self.send_with_invalidate, "Send-with-Invalidate not agreed");
            assert!(
                matches!(pdu.header, Header::ScsiResponse(_)),
                "invalidation by {:?}",
                pdu.header
            );
            assert!(
                self.read_buffers
                    .iter()
                    .chain(&self.write_buffers)
                    .any(|b| b.stag == stag),
                "invalidates STag {stag:#x} never advertised"
            );
            self.invalidated.insert(stag);
        }
    }

    fn complete_read(&mut self, pick: u8) {
        if self.reads.is_empty() {
            return;
        }
        let (token, len) = self.reads.remove(pick as usize % self.reads.len());
        self.last_read_token = Some(token);
        // As the driver does: the bytes land in the task's buffer, then the read is reported.
        if let Some(destination) = self.conn.rdma_read_destination(token) {
            assert_eq!(
                destination.len(),
                len as usize,
                "destination of the read's length"
            );
            destination.fill(0x3c);
        }
        self.conn.handle_rdma_read_complete(token, self.now);
        self.pump();
    }

    fn fail_read(&mut self, pick: u8) {
        if self.reads.is_empty() {
            return;
        }
        let (token, _) = self.reads.remove(pick as usize % self.reads.len());
        self.conn.handle_rdma_read_failed(token);
        self.pump();
        assert!(self.closed, "a failed RDMA Read closes the connection");
    }

    fn complete_task(&mut self, pick: u8, selector: u8) {
        if self.running.is_empty() {
            return;
        }
        let (id, edtl) = self.running.remove(pick as usize % self.running.len());
        self.last_task = Some(id);
        self.conn
            .handle_scsi_complete(id, scsi_outcome(edtl, selector));
        self.pump();
    }

    /// Late answers: the transport may report completions for work the connection dropped.
    fn answer_stale(&mut self) {
        if let Some(token) = self.last_read_token {
            if let Some(destination) = self.conn.rdma_read_destination(token) {
                destination.fill(0);
            }
            self.conn.handle_rdma_read_complete(token, self.now);
            self.pump();
        }
        if let Some(id) = self.last_task {
            self.conn.handle_scsi_complete(id, scsi_outcome(512, 1));
            self.pump();
        }
    }
}

fn config() -> Arc<CoreConfig> {
    Arc::new(CoreConfig {
        targets: vec![TargetDescriptor {
            name: TARGET.into(),
            allowed_initiators: vec![],
            luns: vec![0, 1],
            auth: None,
            initiator_auth: vec![],
        }],
        portals: vec!["0.0.0.0:3260".parse().unwrap()],
        policy: TargetPolicy {
            max_recv_data_segment_length: RECV_DATA_CAPACITY as u32,
            max_burst_length: MAX_BURST,
            first_burst_length: 65536,
            max_outstanding_r2t: 1,
            digests_allowed: false,
            require_initial_r2t: true,
            iser: true,
        },
        queue_depth: QUEUE_DEPTH,
        max_transfer_length: 1 << 20,
        nop_interval: Some(Duration::from_secs(15)),
        ..CoreConfig::default()
    })
}

/// The single operational-stage Login Request ib_iser sends, as the Send that carries it.
fn ib_iser_login_send() -> Vec<u8> {
    let pdu = ib_iser_login("iqn.2026-01.fuzz:host", TARGET, [0, 2, 0x3d, 0, 0, 1], 0);
    let mut bytes = IserHeader::CONTROL.encode().to_vec();
    bytes.extend_from_slice(&pdu.encode_header());
    bytes.extend_from_slice(&pdu.data);
    bytes
}

/// Points a non-immediate command's CmdSN (BHS bytes 24..28 of every request that has one) at
/// the target's ExpCmdSN so it lands in the window.
fn steer(message: &mut [u8], exp_cmd_sn: u32) {
    let Some(bhs) = message.get_mut(ISER_HEADER_LEN..ISER_HEADER_LEN + BHS_LEN) else {
        return;
    };
    let immediate = bhs[0] & 0x40 != 0;
    // NOP-Out, SCSI Command, Task Management, Text, Logout.
    if !immediate && matches!(bhs[0] & 0x3f, 0x00 | 0x01 | 0x02 | 0x04 | 0x06) {
        bhs[24..28].copy_from_slice(&exp_cmd_sn.to_be_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut records)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let send_with_invalidate = control & 1 != 0;
    let mut h = Harness {
        conn: IserConnection::new(
            config(),
            Some("192.0.2.1:3260".parse().unwrap()),
            send_with_invalidate,
            now,
        ),
        now,
        send_with_invalidate,
        defer: control & 8 != 0,
        refuse_binding: control & 16 != 0,
        closed: false,
        entered_full_feature: false,
        full_feature: false,
        sequence: SequenceCheck::new(QUEUE_DEPTH),
        read_buffers: Vec::new(),
        write_buffers: Vec::new(),
        advertisements: HashMap::new(),
        invalidated: HashSet::new(),
        reads: Vec::new(),
        running: Vec::new(),
        last_read_token: None,
        last_task: None,
    };
    if control & 2 != 0 {
        h.receive(&ib_iser_login_send());
        assert_eq!(h.full_feature, !h.refuse_binding);
    }
    let steering = control & 4 != 0;
    while let [kind, length_high, length_low, rest @ ..] = records {
        let length = usize::from(u16::from_be_bytes([*length_high, *length_low]));
        let (payload, next) = rest.split_at(length.min(rest.len()));
        records = next;
        let byte = |i: usize| payload.get(i).copied().unwrap_or(0);
        match kind % 8 {
            0..=2 => {
                let mut message = payload.to_vec();
                if steering && h.full_feature {
                    steer(&mut message, h.sequence.exp_cmd_sn());
                }
                h.receive(&message);
            }
            3 => h.complete_read(byte(0)),
            4 => h.fail_read(byte(0)),
            5 => h.complete_task(byte(0), byte(1)),
            6 => {
                h.now += Duration::from_secs(u64::from(byte(0)));
                h.conn.handle_timeout(h.now);
                h.pump();
            }
            _ => {
                h.answer_stale();
                if byte(0) & 1 != 0 {
                    h.conn.handle_shutdown();
                    h.pump();
                }
            }
        }
        if h.closed {
            return;
        }
    }
    // Shutdown lets the commands in the backend finish, then closes. The fabric completes every
    // RDMA Read still posted (ops queued behind one are held until then).
    h.conn.handle_shutdown();
    h.pump();
    while !h.closed {
        if !h.reads.is_empty() {
            h.complete_read(0);
        } else if !h.running.is_empty() {
            h.complete_task(0, 0);
        } else {
            panic!("shutdown with no RDMA Read or command outstanding did not close");
        }
    }
});
