//! Arbitrary bytes framed into PDUs and fed to a logged-in connection whose BindSession and
//! Execute actions are answered; every PDU the target sends must survive the wire format.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::iscsi::framing::{encode, FrameSettings, PduReader};
use iser_target::iscsi::pdu::{Header, LoginRequest, Pdu, Stage};
use iser_target::iscsi::{text, Action, Connection, CoreConfig, TargetDescriptor};
use iser_target::scsi::ScsiOutcome;
use libfuzzer_sys::fuzz_target;

struct Harness {
    conn: Connection,
    settings: FrameSettings,
    now: Instant,
    /// Tasks handed to the backend and not completed yet.
    running: Vec<(u64, u32)>,
    defer: bool,
    closed: bool,
    /// The target's latest ExpCmdSN, for fixing up commands in `steer` mode.
    exp_cmd_sn: u32,
    /// CDBs of WRITE-flagged SCSI Commands received; writes executed must come from these.
    write_cdbs: Vec<Vec<u8>>,
    /// Last StatSN a response took, and the last (ExpCmdSN, MaxCmdSN) seen.
    last_stat_sn: Option<u32>,
    last_window: Option<(u32, u32)>,
}

/// Serial number arithmetic: a < b.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

impl Harness {
    /// StatSN goes up by one per response that takes one; the CmdSN window never moves back.
    fn check_sequence(&mut self, header: &Header) {
        let (stat_sn, exp, max, takes) = match header {
            Header::ScsiResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::DataIn(h) if h.status_present => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::DataIn(h) => {
                self.window(h.exp_cmd_sn, h.max_cmd_sn);
                return;
            }
            Header::NopIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, h.itt != u32::MAX),
            Header::TaskMgmtResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::TextResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::LogoutResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::ReadyToTransfer(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, false),
            Header::Reject(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::LoginResponse(h) => {
                self.last_stat_sn = Some(h.stat_sn);
                return;
            }
            other => panic!("unexpected target PDU {other:?}"),
        };
        if let Some(last) = self.last_stat_sn {
            assert_eq!(stat_sn, last.wrapping_add(1), "StatSN sequence broken");
        }
        if takes {
            self.last_stat_sn = Some(stat_sn);
        }
        self.window(exp, max);
    }

    fn window(&mut self, exp: u32, max: u32) {
        if let Some((last_exp, last_max)) = self.last_window {
            assert!(!sn_lt(exp, last_exp), "ExpCmdSN went back");
            assert!(!sn_lt(max, last_max), "MaxCmdSN went back");
        }
        self.last_window = Some((exp, max));
        self.exp_cmd_sn = exp;
    }

    fn pump(&mut self) {
        while let Some(action) = self.conn.poll_action() {
            assert!(!self.closed, "action after Close");
            match action {
                Action::Send { pdu, .. } => {
                    let wide = FrameSettings {
                        max_data_segment_length: 1 << 24,
                        ..self.settings
                    };
                    let mut reader = PduReader::new();
                    reader.push(&encode(&pdu, &self.settings));
                    assert_eq!(reader.next_pdu(&wide).unwrap().unwrap(), pdu);
                    self.check_sequence(&pdu.header);
                }
                Action::SetFrameSettings(s) => self.settings = s,
                Action::BindSession(_) => self.conn.handle_session_bound(Ok(1)),
                Action::Execute(task) => {
                    assert!(task.data_out.len() as u64 <= task.expected_transfer_length as u64);
                    if task.cdb[0] == 0x2a && !task.data_out.is_empty() {
                        assert!(self.write_cdbs.contains(&task.cdb), "write without command");
                    }
                    if self.defer {
                        self.running.push((task.id, task.expected_transfer_length));
                    } else {
                        let outcome = outcome(task.expected_transfer_length, task.cdb[0]);
                        self.conn.handle_scsi_complete(task.id, outcome);
                    }
                }
                // No SCSI state to reset in the harness.
                Action::Reset { .. } => {}
                Action::Close(_) => self.closed = true,
            }
        }
    }
}

/// Points a command's CmdSN at the target's ExpCmdSN so it lands in the window.
fn steer(header: &mut Header, exp: u32) {
    match header {
        Header::ScsiCommand(h) if !h.immediate => h.cmd_sn = exp,
        Header::TaskMgmtRequest(h) if !h.immediate => h.cmd_sn = exp,
        Header::TextRequest(h) if !h.immediate => h.cmd_sn = exp,
        Header::NopOut(h) if !h.immediate => h.cmd_sn = exp,
        _ => {}
    }
}

fn outcome(edtl: u32, selector: u8) -> ScsiOutcome {
    match selector % 4 {
        0 => ScsiOutcome::good(),
        1 => ScsiOutcome {
            data_in: vec![0xa5; (edtl as usize).min(70_000) + selector as usize % 3 * 100],
            ..ScsiOutcome::good()
        },
        2 => ScsiOutcome::check_condition(5, 0x24, 0),
        _ => ScsiOutcome {
            data_out_length: edtl / 2,
            ..ScsiOutcome::good()
        },
    }
}

fn login_keys(digests: bool) -> Vec<u8> {
    let digest = if digests { "CRC32C" } else { "None" };
    let pairs: Vec<(String, String)> = [
        ("InitiatorName", "iqn.2026-01.fuzz:host"),
        ("TargetName", "iqn.2026-01.fuzz:disk"),
        ("HeaderDigest", digest),
        ("DataDigest", digest),
        ("InitialR2T", "No"),
        ("MaxOutstandingR2T", "4"),
        ("MaxRecvDataSegmentLength", "4096"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    text::encode(&pairs)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let config = CoreConfig {
        targets: vec![TargetDescriptor {
            name: "iqn.2026-01.fuzz:disk".into(),
            allowed_initiators: vec![],
            luns: vec![0, 1],
            auth: None,
            initiator_auth: vec![],
        }],
        portals: vec!["0.0.0.0:3260".parse().unwrap()],
        queue_depth: 8,
        max_transfer_length: 1 << 20,
        ..CoreConfig::default()
    };
    let mut config = config;
    config.policy.max_outstanding_r2t = 4;
    let now = Instant::now();
    let mut h = Harness {
        conn: Connection::new(
            Arc::new(config),
            Some("192.0.2.1:3260".parse().unwrap()),
            now,
        ),
        settings: FrameSettings::default(),
        now,
        running: Vec::new(),
        defer: control & 1 != 0,
        closed: false,
        exp_cmd_sn: 0,
        write_cdbs: Vec::new(),
        last_stat_sn: None,
        last_window: None,
    };
    let steering = control & 4 != 0;
    let login = Pdu::with_data(
        Header::LoginRequest(LoginRequest {
            transit: true,
            continue_flag: false,
            current_stage: Stage::Operational,
            next_stage: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
        }),
        login_keys(control & 2 != 0),
    );
    h.conn.handle_pdu(login, now);
    h.pump();
    assert!(h.conn.is_full_feature());

    // The stream arrives in chunks whose sizes the control byte picks; between chunks, time
    // passes and deferred tasks complete.
    let chunk = 1 + (control as usize >> 3) * 7;
    let mut reader = PduReader::new();
    for piece in stream.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_pdu(&h.settings) {
                Ok(Some(mut pdu)) => {
                    if steering {
                        steer(&mut pdu.header, h.exp_cmd_sn);
                    }
                    if let Header::ScsiCommand(c) = &pdu.header {
                        if c.write {
                            h.write_cdbs.push(c.cdb.clone());
                        }
                    }
                    h.conn.handle_pdu(pdu, h.now)
                }
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    h.conn.handle_frame_error(e, h.now);
                    if fatal {
                        h.pump();
                        return;
                    }
                }
            }
            h.pump();
            if h.closed {
                return;
            }
        }
        if let Some((id, edtl)) = h.running.pop() {
            h.conn.handle_scsi_complete(id, outcome(edtl, piece[0]));
            h.pump();
        }
        h.now += Duration::from_secs(piece[0] as u64 / 16);
        h.conn.handle_timeout(h.now);
        h.pump();
        if h.closed {
            return;
        }
    }
    h.conn.handle_shutdown();
    h.pump();
    while let Some((id, edtl)) = h.running.pop() {
        h.conn.handle_scsi_complete(id, outcome(edtl, 0));
        h.pump();
    }
    assert!(h.closed, "shutdown with no running tasks closes");
});
