//! Arbitrary bytes framed into PDUs and fed to a logged-in connection whose BindSession and
//! Execute actions are answered; every PDU the target sends must survive the wire format.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::iscsi::framing::{encode, FrameSettings, PduReader};
use iser_target::iscsi::pdu::{Header, LoginRequest, Pdu, Stage};
use iser_target::iscsi::tcp::{TcpAction, TcpConnection};
use iser_target::iscsi::{text, CoreConfig, TargetDescriptor};
use iser_target_fuzz::{scsi_outcome, SequenceCheck};
use libfuzzer_sys::fuzz_target;

struct Harness {
    conn: TcpConnection,
    settings: FrameSettings,
    now: Instant,
    /// Tasks handed to the backend and not completed yet.
    running: Vec<(u64, u32)>,
    defer: bool,
    closed: bool,
    sequence: SequenceCheck,
    /// CDBs of WRITE-flagged SCSI Commands received; writes executed must come from these.
    write_cdbs: Vec<Vec<u8>>,
}

impl Harness {
    /// A PDU the target sent must survive the wire format and keep the sequence numbers.
    fn check_sent(&mut self, pdu: Pdu) {
        let wide = FrameSettings {
            max_data_segment_length: 1 << 24,
            ..self.settings
        };
        let mut reader = PduReader::new();
        reader.push(&encode(&pdu, &self.settings));
        assert_eq!(reader.next_pdu(&wide).unwrap().unwrap(), pdu);
        self.sequence.check(&pdu.header);
    }

    fn pump(&mut self) {
        while let Some(action) = self.conn.poll_action() {
            assert!(!self.closed, "action after Close");
            match action {
                TcpAction::SendDataIn {
                    header,
                    data,
                    range,
                    ..
                } => {
                    // `scsi_outcome` answers with buffers only, never lent memory or files.
                    let bytes = data.bytes().expect("Data-In from a buffer");
                    self.check_sent(Pdu::with_data(header, bytes[range].to_vec()))
                }
                TcpAction::Send { pdu, .. } => self.check_sent(pdu),
                TcpAction::SetFrameSettings(s) => self.settings = s,
                TcpAction::BindSession(_) => self.conn.handle_session_bound(Ok(1)),
                TcpAction::Execute(task) => {
                    assert!(task.data_out.len() as u64 <= task.expected_transfer_length as u64);
                    // A logical unit reset has no CDB (nor data); its outcome is not looked at.
                    let opcode = task.cdb.first().copied().unwrap_or_default();
                    if opcode == 0x2a && !task.data_out.is_empty() {
                        assert!(
                            self.write_cdbs.contains(&task.cdb.to_vec()),
                            "write without command"
                        );
                    }
                    if self.defer {
                        self.running.push((task.id, task.expected_transfer_length));
                    } else {
                        let outcome = scsi_outcome(task.expected_transfer_length, opcode);
                        self.conn.handle_scsi_complete(task.id, outcome);
                    }
                }
                TcpAction::Close(_) => self.closed = true,
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
        conn: TcpConnection::new(
            Arc::new(config),
            Some("192.0.2.1:3260".parse().unwrap()),
            now,
        ),
        settings: FrameSettings::default(),
        now,
        running: Vec::new(),
        defer: control & 1 != 0,
        closed: false,
        sequence: SequenceCheck::new(8),
        write_cdbs: Vec::new(),
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
    assert!(h.conn.core().is_full_feature());

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
                        steer(&mut pdu.header, h.sequence.exp_cmd_sn());
                    }
                    if let Header::ScsiCommand(c) = &pdu.header {
                        if c.write {
                            h.write_cdbs.push(c.cdb.to_vec());
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
            h.conn
                .handle_scsi_complete(id, scsi_outcome(edtl, piece[0]));
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
        h.conn.handle_scsi_complete(id, scsi_outcome(edtl, 0));
        h.pump();
    }
    assert!(h.closed, "shutdown with no running tasks closes");
});
