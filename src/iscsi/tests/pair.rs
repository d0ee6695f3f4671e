//! The scripted initiator: a [`Pair`] of test initiator and target connection over a RAM
//! disk, pumped by hand.

use super::*;

/// A RAM disk backend for READ(10)/WRITE(10); any other CDB completes GOOD without data.
#[derive(Default)]
pub(super) struct RamBackend {
    pub(super) luns: HashMap<u64, Vec<u8>>,
}

impl RamBackend {
    pub(super) fn run(&mut self, task: &ScsiTask) -> ScsiOutcome {
        let cdb = &task.cdb;
        if cdb.len() < 10 {
            return ScsiOutcome::good();
        }
        let disk = self
            .luns
            .entry(task.lun)
            .or_insert_with(|| vec![0; 64 * BLOCK]);
        let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as usize;
        let blocks = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
        let range = lba * BLOCK..(lba + blocks) * BLOCK;
        if cdb.len() < 10 || range.end > disk.len() {
            return ScsiOutcome::check_condition(0x05, 0x21, 0x00);
        }
        if cdb[0] == 0x2a && task.data_out.len() < range.len() {
            return ScsiOutcome::check_condition(0x05, 0x24, 0x00);
        }
        match cdb[0] {
            0x28 => ScsiOutcome {
                data_in: mem_ffi::Buf::copy_from_slice(&disk[range]).into(),
                ..ScsiOutcome::good()
            },
            0x2a => {
                disk[range.clone()].copy_from_slice(&task.data_out[..range.len()]);
                ScsiOutcome {
                    data_out_length: range.len() as u32,
                    ..ScsiOutcome::good()
                }
            }
            _ => ScsiOutcome::good(),
        }
    }
}

/// Test initiator + target connection + fake backend, pumped by hand.
///
/// Every PDU the initiator sends goes in with a fresh transport context, an `Arc` holding a serial
/// number: the serial tells which command a context came with, the `Arc`'s count whether the core
/// still holds it.
pub(super) struct Pair {
    pub(super) conn: TcpConnection<Arc<u64>>,
    pub(super) base: Instant,
    pub(super) now: Instant,
    /// Frame settings in force (digests apply both ways; the limit is the target's receive size).
    pub(super) settings: FrameSettings,
    /// What the target sent, decoded from the wire.
    pub(super) inbox: VecDeque<Pdu>,
    /// BindSession answer.
    pub(super) bind_answer: Result<u16, LoginStatus>,
    pub(super) bind_requests: usize,
    /// Complete Execute actions immediately through the backend.
    pub(super) auto_complete: bool,
    /// Executes not completed yet (when `auto_complete` is false).
    pub(super) deferred: Vec<ScsiTask>,
    /// Every Execute the target issued.
    pub(super) executed: Vec<ScsiTask>,
    /// The LUNs of the logical unit resets handed to the backend, in order (not in
    /// `executed`; completed like commands, deferred too when `auto_complete` is off).
    pub(super) resets: Vec<u64>,
    pub(super) backend: RamBackend,
    pub(super) closed: Option<CloseReason>,
    pub(super) frame_settings_seen: Vec<FrameSettings>,
    /// Last StatSN taken by a response, and the highest ExpCmdSN/MaxCmdSN seen.
    pub(super) last_stat_sn: Option<u32>,
    pub(super) last_window: Option<(u32, u32)>,
    // initiator state
    pub(super) cmd_sn: u32,
    pub(super) exp_stat_sn: u32,
    pub(super) next_itt: u32,
    /// Next DataSN of each Data-Out sequence, keyed by (ITT, TTT); counts from 0 per sequence.
    pub(super) data_sns: HashMap<(u32, u32), u32>,
    // transport contexts
    pub(super) next_context: u64,
    /// Every context handed to the target, to see which it still holds.
    pub(super) contexts: Vec<Weak<u64>>,
    /// ITT of the SCSI Command each context came with.
    pub(super) command_contexts: HashMap<u64, u32>,
    /// Contexts whose task ended with a status-bearing PDU.
    pub(super) ended_contexts: HashSet<u64>,
    /// Context of each PDU in `inbox`.
    pub(super) inbox_contexts: VecDeque<Option<u64>>,
    /// Payload copies the harness made itself (encoding the initiator's PDUs, checking the
    /// target's on the wire), to tell the target's own apart.
    pub(super) harness_copies: CopyCounts,
    /// Data-In PDUs sent from a buffer they own, and from one they share.
    pub(super) data_in_buffers: (usize, usize),
    /// Data-In PDUs sent from a file's pages.
    pub(super) data_in_files: usize,
    /// Data-In PDUs sent from lent memory.
    pub(super) data_in_lent: usize,
    /// Reads the stream as a resident connection does, when set: through one reader with
    /// direct reads on, at most this many bytes per read.
    pub(super) direct: Option<(PduReader, usize)>,
}

impl Pair {
    pub(super) fn new(config: CoreConfig) -> Self {
        let base = Instant::now();
        let local: SocketAddr = "192.0.2.7:3260".parse().unwrap();
        Pair {
            conn: TcpConnection::new(Arc::new(config), Some(local), base),
            base,
            now: base,
            settings: FrameSettings::default(),
            inbox: VecDeque::new(),
            bind_answer: Ok(0x1234),
            bind_requests: 0,
            auto_complete: true,
            deferred: Vec::new(),
            executed: Vec::new(),
            resets: Vec::new(),
            backend: RamBackend::default(),
            closed: None,
            frame_settings_seen: Vec::new(),
            last_stat_sn: None,
            last_window: None,
            cmd_sn: FIRST_CMD_SN,
            exp_stat_sn: FIRST_STAT_SN,
            next_itt: 1,
            data_sns: HashMap::new(),
            next_context: 1,
            contexts: Vec::new(),
            command_contexts: HashMap::new(),
            ended_contexts: HashSet::new(),
            inbox_contexts: VecDeque::new(),
            harness_copies: CopyCounts::default(),
            data_in_buffers: (0, 0),
            data_in_files: 0,
            data_in_lent: 0,
            direct: None,
        }
    }

    /// From now on the stream is read as a resident connection reads its socket (see
    /// [`Pair::direct`]).
    pub(super) fn read_directly(&mut self, read_size: usize) {
        let mut reader = PduReader::new();
        reader.set_direct_reads(true);
        self.direct = Some((reader, read_size));
    }

    /// A fresh context for a PDU with this header.
    pub(super) fn fresh_context(&mut self, header: Option<&Header>) -> Arc<u64> {
        let serial = self.next_context;
        self.next_context += 1;
        if let Some(Header::ScsiCommand(h)) = header {
            self.command_contexts.insert(serial, h.itt);
        }
        let context = Arc::new(serial);
        self.contexts.push(Arc::downgrade(&context));
        context
    }

    /// Contexts the target still holds.
    pub(super) fn live_contexts(&self) -> usize {
        self.contexts
            .iter()
            .filter(|c| c.strong_count() > 0)
            .count()
    }

    /// Data-In, R2Ts and SCSI Responses carry the context of the SCSI Command they belong to, and
    /// nothing of a task follows the PDU that ended it; every other PDU carries no context.
    pub(super) fn check_context(&mut self, pdu: &Pdu, context: Option<&Arc<u64>>) {
        let (itt, ends_task) = match &pdu.header {
            Header::DataIn(h) => (h.itt, h.status_present),
            Header::ReadyToTransfer(h) => (h.itt, false),
            Header::ScsiResponse(h) => (h.itt, true),
            _ => {
                assert!(context.is_none(), "context on a PDU of no task: {pdu:?}");
                return;
            }
        };
        let serial = **context.unwrap_or_else(|| panic!("task PDU without a context: {pdu:?}"));
        assert_eq!(
            self.command_contexts.get(&serial),
            Some(&itt),
            "context of another PDU on {pdu:?}"
        );
        assert!(
            !self.ended_contexts.contains(&serial),
            "PDU after its task ended: {pdu:?}"
        );
        if ends_task {
            self.ended_contexts.insert(serial);
        }
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.now += by;
        self.conn.handle_timeout(self.now);
        self.pump();
    }

    /// Carries out every pending action.
    pub(super) fn pump(&mut self) {
        while let Some(action) = self.conn.poll_action() {
            assert!(self.closed.is_none(), "action {action:?} after Close");
            match action {
                TcpAction::Send { pdu, context } => self.receive(pdu, context),
                TcpAction::SendDataIn {
                    header,
                    data,
                    range,
                    context,
                } => {
                    // The wire bytes a vectored write of header and buffer slice (or sendfile
                    // of the file's pages) produces.
                    let bytes = match &data {
                        DataInBuf::Whole(buf) => {
                            self.data_in_buffers.0 += 1;
                            buf[range].to_vec()
                        }
                        DataInBuf::Shared(buf) => {
                            self.data_in_buffers.1 += 1;
                            buf[range].to_vec()
                        }
                        DataInBuf::File(span) => {
                            self.data_in_files += 1;
                            span.read(range).expect("the span's file reads").to_vec()
                        }
                        DataInBuf::Lent(ranges) => {
                            self.data_in_lent += 1;
                            mem_ffi::Payload::Lent(ranges.clone()).to_vec()[range].to_vec()
                        }
                    };
                    let pdu = Pdu::with_data(header, bytes);
                    self.receive(pdu, Some(context));
                }
                TcpAction::SetFrameSettings(s) => {
                    self.settings = s;
                    self.frame_settings_seen.push(s);
                }
                TcpAction::BindSession(_) => {
                    self.bind_requests += 1;
                    self.conn.handle_session_bound(self.bind_answer);
                }
                TcpAction::Execute(task) => {
                    if task.kind == TaskKind::LunReset {
                        self.resets.push(task.lun);
                    } else {
                        self.executed.push(task.clone());
                    }
                    if self.auto_complete {
                        let outcome = match task.kind {
                            TaskKind::Command => self.backend.run(&task),
                            TaskKind::LunReset => ScsiOutcome::good(),
                        };
                        self.conn.handle_scsi_complete(task.id, outcome);
                    } else {
                        self.deferred.push(task);
                    }
                }
                TcpAction::Close(reason) => self.closed = Some(reason),
            }
        }
    }

    /// One PDU the target sent, checked as it crosses the wire.
    pub(super) fn receive(&mut self, pdu: Pdu, context: Option<Arc<u64>>) {
        let copies = thread_payload_copies();
        let bytes = framing::encode(&pdu, &self.settings);
        let mut reader = PduReader::new();
        reader.push(&bytes);
        let wide = FrameSettings {
            max_data_segment_length: 1 << 24,
            ..self.settings
        };
        let decoded = reader.next_pdu(&wide).unwrap().unwrap();
        assert_eq!(decoded, pdu, "target PDU survives the wire");
        assert_eq!(reader.buffered(), 0);
        self.check_sequence(&decoded);
        self.check_context(&decoded, context.as_ref());
        self.inbox_contexts.push_back(context.map(|c| *c));
        self.inbox.push_back(decoded);
        self.harness_copies = self.harness_copies + (thread_payload_copies() - copies);
    }

    /// StatSN goes up by one per status-bearing response (R2Ts and pings carry the next one
    /// without taking it); ExpCmdSN and MaxCmdSN never move backwards.
    pub(super) fn check_sequence(&mut self, pdu: &Pdu) {
        let takes_stat_sn = match &pdu.header {
            Header::DataIn(h) if !h.status_present => return,
            Header::NopIn(h) => h.itt != RESERVED_TAG,
            Header::ReadyToTransfer(_) => false,
            Header::LoginResponse(h) if h.status_class != 0 => return,
            _ => true,
        };
        let (stat_sn, exp, max) = sequence(pdu);
        if let Some(last) = self.last_stat_sn {
            assert_eq!(
                stat_sn,
                last.wrapping_add(1),
                "StatSN sequence broken at {pdu:?}"
            );
        }
        if takes_stat_sn {
            self.last_stat_sn = Some(stat_sn);
        }
        if matches!(pdu.header, Header::LoginResponse(_)) {
            return;
        }
        if let Some((last_exp, last_max)) = self.last_window {
            assert!(!sn_lt(exp, last_exp), "ExpCmdSN went back at {pdu:?}");
            assert!(!sn_lt(max, last_max), "MaxCmdSN went back at {pdu:?}");
        }
        self.last_window = Some((exp, max));
    }

    /// Sends one PDU from the initiator over the wire.
    pub(super) fn send(&mut self, pdu: Pdu) {
        let copies = thread_payload_copies();
        let bytes = framing::encode(&pdu, &self.settings);
        self.harness_copies = self.harness_copies + (thread_payload_copies() - copies);
        self.receive_stream(bytes);
    }

    /// Feeds raw bytes as a stream, as a transport would.
    pub(super) fn send_bytes(&mut self, bytes: &[u8]) {
        self.receive_stream(bytes.to_vec());
    }

    /// The target's side of a socket read: the buffer is handed over whole, framed, and each PDU
    /// taken out of it by the datamover, as the TCP driver does (Data-Out data straight into its
    /// task's buffer).
    pub(super) fn receive_stream(&mut self, bytes: Vec<u8>) {
        if let Some((mut reader, size)) = self.direct.take() {
            // The socket's reads (the kernel's copy) into the reader's buffers or straight
            // into a task's, each read's PDUs taken before the next.
            let mut rest = &bytes[..];
            while !rest.is_empty() && self.closed.is_none() {
                let room = reader.read_buffer(size);
                let n = room.len().min(rest.len());
                room[..n].copy_from_slice(&rest[..n]);
                reader.push_read(n);
                rest = &rest[n..];
                self.consume_frames(&mut reader);
            }
            self.direct = Some((reader, size));
            return;
        }
        let mut reader = PduReader::new();
        reader.push_owned(bytes);
        self.consume_frames(&mut reader);
    }

    /// Every PDU (or partial PDU) `reader` holds, through the datamover.
    pub(super) fn consume_frames(&mut self, reader: &mut PduReader) {
        loop {
            match reader.next_frame(&self.settings) {
                Ok(Some(frame)) => {
                    let context = self.fresh_context(frame.header.as_ref().ok());
                    self.conn.receive_frame(reader, frame, self.now, context);
                }
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    self.conn.handle_frame_error(e, self.now);
                    if fatal {
                        break;
                    }
                }
            }
            self.pump();
        }
        self.pump();
    }

    pub(super) fn complete_deferred(&mut self, id: TaskId, outcome: ScsiOutcome) {
        self.deferred.retain(|t| t.id != id);
        self.conn.handle_scsi_complete(id, outcome);
        self.pump();
    }

    pub(super) fn take(&mut self) -> Vec<Pdu> {
        self.inbox_contexts.clear();
        self.inbox.drain(..).collect()
    }

    /// What the target sent, each PDU with the serial of the context it came back with.
    pub(super) fn take_with_contexts(&mut self) -> Vec<(Pdu, Option<u64>)> {
        let contexts = std::mem::take(&mut self.inbox_contexts);
        self.inbox.drain(..).zip(contexts).collect()
    }

    pub(super) fn take_one(&mut self) -> Pdu {
        let all = self.take();
        assert_eq!(all.len(), 1, "expected one PDU, got {all:?}");
        all.into_iter().next().unwrap()
    }

    pub(super) fn itt(&mut self) -> u32 {
        let itt = self.next_itt;
        self.next_itt += 1;
        itt
    }

    pub(super) fn login_request(
        &mut self,
        current: Stage,
        next: Option<Stage>,
        continue_flag: bool,
        keys: &[(&str, &str)],
    ) -> Pdu {
        Pdu::with_data(
            Header::LoginRequest(LoginRequest {
                transit: next.is_some(),
                continue_flag,
                current_stage: current,
                next_stage: next.unwrap_or(current),
                version_max: 0,
                version_min: 0,
                isid: ISID,
                tsih: 0,
                itt: 0x77,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            kv(keys),
        )
    }

    /// One login request; returns the target's response (asserting there is exactly one).
    pub(super) fn login_step(
        &mut self,
        current: Stage,
        next: Option<Stage>,
        keys: &[(&str, &str)],
    ) -> Pdu {
        let req = self.login_request(current, next, false, keys);
        self.send(req);
        let resp = self.take_one();
        if let Header::LoginResponse(r) = &resp.header {
            self.exp_stat_sn = r.stat_sn.wrapping_add(1);
        }
        resp
    }

    /// Security → operational → full feature for a normal session, with extra operational keys.
    pub(super) fn login(&mut self, operational: &[(&str, &str)]) -> HashMap<String, String> {
        let r = self.login_step(
            Stage::Security,
            Some(Stage::Operational),
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", TARGET),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        );
        assert_eq!(login_status(&r), (0, 0));
        let r = self.login_step(Stage::Operational, Some(Stage::FullFeature), operational);
        assert_eq!(login_status(&r), (0, 0));
        assert!(self.conn.core().is_full_feature());
        keys_of(&r)
    }

    pub(super) fn command(
        &mut self,
        itt: u32,
        cdb: Vec<u8>,
        read: bool,
        write: bool,
        edtl: u32,
    ) -> ScsiCommand {
        let cmd = ScsiCommand {
            immediate: false,
            final_flag: true,
            read,
            write,
            attribute: TaskAttribute::Simple,
            lun: pdu::encode_lun(0),
            itt,
            expected_data_length: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb.into(),
            bidi_read_length: None,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        cmd
    }

    pub(super) fn send_command(&mut self, cmd: ScsiCommand, data: Vec<u8>) {
        self.send(Pdu::with_data(Header::ScsiCommand(cmd), data));
    }

    pub(super) fn data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        offset: u32,
        data: Vec<u8>,
        final_flag: bool,
    ) {
        let next = self.data_sns.entry((itt, ttt)).or_insert(0);
        let data_sn = *next;
        *next += 1;
        if final_flag {
            self.data_sns.remove(&(itt, ttt));
        }
        self.send(Pdu::with_data(
            Header::DataOut(DataOut {
                final_flag,
                lun: pdu::encode_lun(0),
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: offset,
            }),
            data,
        ));
    }

    pub(super) fn nop_out(&mut self, itt: u32, ttt: u32, immediate: bool, data: Vec<u8>) {
        let cmd_sn = self.cmd_sn;
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.send(Pdu::with_data(
            Header::NopOut(NopOut {
                immediate,
                lun: [0; 8],
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            data,
        ));
    }

    pub(super) fn tmf(&mut self, function: u8, lun: u64, referenced: u32, ref_cmd_sn: u32) -> u32 {
        let itt = self.itt();
        let tmf = TaskMgmtRequest {
            immediate: true,
            function,
            lun: pdu::encode_lun(lun),
            itt,
            referenced_task_tag: referenced,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        self.send(Pdu::new(Header::TaskMgmtRequest(tmf)));
        itt
    }

    pub(super) fn logout(&mut self) -> u32 {
        let itt = self.itt();
        let req = LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(Pdu::new(Header::LogoutRequest(req)));
        itt
    }

    pub(super) fn text(&mut self, itt: u32, ttt: u32, body: Vec<u8>) {
        let req = TextRequest {
            immediate: false,
            final_flag: true,
            continue_flag: false,
            lun: [0; 8],
            itt,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(Pdu::with_data(Header::TextRequest(req), body));
    }
}
