//! One iSCSI connection (and, at ERL 0 with MaxConnections=1, its whole session) as a state machine.
//!
//! Inputs: [`Connection::handle_pdu`], [`Connection::handle_frame_error`],
//! [`Connection::handle_session_bound`], [`Connection::handle_scsi_complete`],
//! [`Connection::handle_timeout`], [`Connection::handle_shutdown`]. Outputs: [`Action`]s drained with
//! [`Connection::poll_action`], and the next deadline from [`Connection::poll_timeout`]. Time is
//! always passed in.
//!
//! This module holds the connection's state and its inputs; what the core and its transports
//! exchange (configuration, actions, task descriptions) is in `interface.rs`, the session-level
//! PDUs (NOP, Text, Logout) in `session_pdus.rs`, SCSI commands and task management in
//! `../commands.rs`, the task table in `../tasks.rs`, the login phase in `../login.rs`.
//!
//! The core never speaks Data-In or R2T PDUs: it says what data must move ([`Action::PutData`],
//! [`Action::GetData`]) and what status ends a task ([`Action::Respond`]), and a datamover
//! ([`super::tcp`] for iSCSI/TCP, [`super::iser`] for iSER) carries that out and reports the
//! data-out it brought in with [`Connection::handle_data_received`] (RFC 5047's split).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::commands::PendingTmf;
use super::framing::{FrameError, FrameSettings};
use super::login::LoginState;
use super::pdu::{
    self, Header, LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu, Reject, ScsiCommand,
    TextRequest, TextResponse, RESERVED_TAG,
};
use super::tasks::{TaskState, TaskTable};
use super::text::{self, KeyAnswer, KeyPhase, Negotiator, SessionParams};
use mem_ffi::Buf;

mod interface;
mod session_pdus;

pub use interface::*;

/// Reject reasons (RFC 7143 §11.17.1).
pub(super) mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const TOO_MANY_IMMEDIATE_COMMANDS: u8 = 0x06;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// Serial number arithmetic (RFC 1982, 32 bits): a < b.
pub(super) fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// A Text Response too long for one PDU, sent in pieces as the initiator asks (C bit, TTT).
#[derive(Debug)]
struct PendingText {
    ttt: u32,
    remaining: Vec<u8>,
}

/// Phases of the connection.
#[derive(Debug)]
pub(super) enum Phase {
    Login(Box<LoginState>),
    /// Waiting for [`Connection::handle_session_bound`].
    Binding(Box<LoginState>),
    FullFeature,
    /// Logout or shutdown accepted: finishing running tasks, then close.
    Draining(CloseReason),
    Closed,
}

/// The state of one connection and its session.
///
/// `C` is an opaque per-task context the transport hands in with each SCSI Command PDU and gets
/// back with every PDU of that task (an iSER transport keeps the initiator's STags there); the
/// core only stores and returns it. TCP uses `()`.
#[derive(Debug)]
pub struct Connection<C = ()> {
    pub(super) config: Arc<CoreConfig>,
    pub(super) local_addr: Option<SocketAddr>,
    pub(super) phase: Phase,
    pub(super) actions: VecDeque<Action<C>>,
    pub(super) params: SessionParams,
    pub(super) negotiator: Option<Negotiator>,
    /// Index of the target of a normal session.
    pub(super) target: Option<usize>,
    pub(super) discovery: bool,
    pub(super) initiator_name: String,
    pub(super) tsih: u16,
    pub(super) stat_sn: u32,
    pub(super) exp_cmd_sn: u32,
    pub(super) login_deadline: Instant,
    /// A Close action has been emitted.
    close_emitted: bool,
    pub(super) tasks: TaskTable<C>,
    /// Tasks about to start, kept between events so scheduling does not allocate.
    pub(super) starting: Vec<TaskId>,
    /// Commands received ahead of ExpCmdSN, with their contexts (held until the gap fills);
    /// `None` for a CmdSN given up by an ABORT TASK.
    held: BTreeMap<u32, Option<(Pdu, C)>>,
    pub(super) next_ttt: u32,
    pub(super) pending_tmfs: Vec<PendingTmf>,
    /// The task id of the next logical unit reset handed to the backend (from
    /// [`FIRST_RESET_ID`](super::commands) on, apart from the task table's).
    pub(super) next_reset_id: TaskId,
    pending_text: Option<PendingText>,
    /// Logout response to send once running tasks finish.
    pending_logout: Option<u32>,
    last_activity: Instant,
    ping_outstanding: Option<(u32, Instant)>,
}

impl<C: Clone + Debug> Connection<C> {
    /// A new connection in the login phase. `local_addr` is the address the initiator connected to
    /// (used for SendTargets when the portal is a wildcard).
    pub fn new(config: Arc<CoreConfig>, local_addr: Option<SocketAddr>, now: Instant) -> Self {
        let login = LoginState::new(&config);
        Connection {
            login_deadline: now + config.login_timeout,
            config,
            close_emitted: false,
            local_addr,
            phase: Phase::Login(Box::new(login)),
            actions: VecDeque::new(),
            params: SessionParams::default(),
            negotiator: None,
            target: None,
            discovery: false,
            initiator_name: String::new(),
            tsih: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            tasks: TaskTable::new(),
            starting: Vec::new(),
            held: BTreeMap::new(),
            next_ttt: 1,
            pending_tmfs: Vec::new(),
            next_reset_id: super::commands::FIRST_RESET_ID,
            pending_text: None,
            pending_logout: None,
            last_activity: now,
            ping_outstanding: None,
        }
    }

    /// The next effect to carry out.
    pub fn poll_action(&mut self) -> Option<Action<C>> {
        self.actions.pop_front()
    }

    /// Negotiated parameters (valid once in full feature phase).
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// True once the connection has nothing more to do.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// True in full feature phase of a normal or discovery session.
    pub fn is_full_feature(&self) -> bool {
        matches!(self.phase, Phase::FullFeature)
    }

    /// Commands currently handed to the backend.
    pub fn running_tasks(&self) -> usize {
        self.tasks.running()
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Login(_) => Some(self.login_deadline),
            Phase::FullFeature if self.discovery => {
                Some(self.last_activity + self.config.discovery_idle_timeout)
            }
            Phase::FullFeature => {
                if let Some((_, sent)) = self.ping_outstanding {
                    Some(sent + self.config.nop_timeout)
                } else {
                    self.config.nop_interval.map(|i| self.last_activity + i)
                }
            }
            _ => None,
        }
    }

    /// Timers: login deadline, NOP-In pings on idle connections, ping timeout, idle discovery
    /// sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            // The transport logs a close during login, with a rate limit.
            Phase::Login(_) if now >= self.login_deadline => {
                self.close(CloseReason::Timeout);
            }
            Phase::FullFeature
                if self.discovery
                    && now >= self.last_activity + self.config.discovery_idle_timeout =>
            {
                log::info!(
                    "closing discovery session of {}: idle for {:?}",
                    self.initiator_name,
                    self.config.discovery_idle_timeout
                );
                self.close(CloseReason::Timeout);
            }
            Phase::FullFeature if self.discovery => {}
            Phase::FullFeature => {
                if let Some((_, sent)) = self.ping_outstanding {
                    if now >= sent + self.config.nop_timeout {
                        log::warn!(
                            "initiator {} did not answer a NOP-In in {:?}",
                            self.initiator_name,
                            self.config.nop_timeout
                        );
                        self.close(CloseReason::Timeout);
                    }
                } else if let Some(interval) = self.config.nop_interval {
                    if now >= self.last_activity + interval {
                        self.send_ping(now);
                    }
                }
            }
            _ => {}
        }
    }

    /// Target-initiated NOP-In: ITT reserved, a fresh TTT, no data (RFC 7143 §11.19; Linux
    /// drivers/scsi/libiscsi.c fails the connection on such a NOP-In with data).
    fn send_ping(&mut self, now: Instant) {
        let ttt = self.fresh_ttt();
        self.ping_outstanding = Some((ttt, now));
        let header = Header::NopIn(NopIn {
            lun: [0; 8],
            itt: RESERVED_TAG,
            ttt,
            // A ping does not advance StatSN (RFC 7143 §11.19: StatSN not incremented).
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        });
        self.send(Pdu::new(header));
    }

    fn fresh_ttt(&mut self) -> u32 {
        next_tag(&mut self.next_ttt)
    }

    /// MaxCmdSN: the window shrinks by the commands in flight so a session never holds more than
    /// `queue_depth`, and never moves backwards (Linux drivers/scsi/libiscsi.c
    /// `__iscsi_update_cmdsn` only ever raises its copy).
    ///
    /// Only tasks that consumed a CmdSN below ExpCmdSN count: held commands already sit inside the
    /// window, and immediate ones take no CmdSN, so counting either would pull MaxCmdSN back
    /// without ExpCmdSN moving. A full queue closes the window (MaxCmdSN = ExpCmdSN - 1).
    pub(super) fn max_cmd_sn(&self) -> u32 {
        let room = self.config.queue_depth.saturating_sub(self.tasks.queued());
        self.exp_cmd_sn.wrapping_add(room).wrapping_sub(1)
    }

    /// Takes StatSN for a response and advances it.
    pub(super) fn next_stat_sn(&mut self) -> u32 {
        let sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        sn
    }

    /// Queues a PDU that belongs to no task.
    pub(super) fn send(&mut self, pdu: Pdu) {
        self.actions.push_back(Action::Send(pdu));
    }

    /// StatSN (current, not advanced), ExpCmdSN and MaxCmdSN now: what a datamover puts in the
    /// R2Ts it issues between the core's actions.
    pub fn sequence_numbers(&self) -> SequenceNumbers {
        SequenceNumbers {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        }
    }

    /// A fresh target transfer tag (never the reserved one), from the counter NOP-In pings and
    /// Text continuations use too.
    pub fn take_target_transfer_tag(&mut self) -> u32 {
        self.fresh_ttt()
    }

    /// A datamover handled a PDU itself (Data-Out): the connection is not idle.
    pub fn record_activity(&mut self, now: Instant) {
        self.last_activity = now;
    }

    pub(super) fn close(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        if !self.close_emitted {
            self.close_emitted = true;
            self.actions.push_back(Action::Close(reason));
        }
    }

    /// The server is stopping or this session is being reinstated: stop taking commands, let the
    /// running ones finish (their responses are sent), then close.
    pub fn handle_shutdown(&mut self) {
        match self.phase {
            Phase::FullFeature => {
                self.drop_waiting_commands();
                self.phase = Phase::Draining(CloseReason::Shutdown);
                self.maybe_finish_draining();
            }
            Phase::Draining(_) | Phase::Closed => {}
            Phase::Login(_) | Phase::Binding(_) => self.close(CloseReason::Shutdown),
        }
    }

    /// The transport found the connection unusable (a failed RDMA operation, a malformed Send):
    /// close at once, without answering.
    pub fn handle_transport_error(&mut self, reason: CloseReason) {
        log::warn!("closing connection: {reason:?}");
        self.close(reason);
    }

    /// A framing problem reported by the transport.
    pub fn handle_frame_error(&mut self, error: FrameError, now: Instant) {
        self.last_activity = now;
        if error.is_fatal() || !matches!(self.phase, Phase::FullFeature) {
            // The transport logs a close during login, with a rate limit.
            if !matches!(self.phase, Phase::Login(_)) {
                log::warn!("closing connection: {error}");
            }
            self.close(CloseReason::ProtocolError(error.to_string()));
            return;
        }
        match error {
            FrameError::DataDigest { header } => {
                self.send_reject(reject_reason::DATA_DIGEST_ERROR, &header)
            }
            FrameError::Malformed { header, error } => {
                log::warn!("rejecting malformed PDU: {error}");
                let reason = match error {
                    pdu::DecodeError::UnknownOpcode(_) => reject_reason::COMMAND_NOT_SUPPORTED,
                    _ => reject_reason::INVALID_PDU_FIELD,
                };
                self.send_reject(reason, &header)
            }
            FrameError::HeaderDigest | FrameError::DataTooLong { .. } => unreachable!("fatal"),
        }
    }

    /// Reject carrying the offending header (RFC 7143 §11.17). Like LIO, it takes a StatSN.
    pub(super) fn send_reject(&mut self, reason: u8, header: &[u8]) {
        let bhs = header[..header.len().min(pdu::BHS_LEN)].to_vec();
        let reject = Header::Reject(Reject {
            reason,
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            data_sn: 0,
        });
        // RFC 7143 §11.17: a Reject takes a StatSN like any response.
        self.stat_sn = self.stat_sn.wrapping_add(1);
        self.send(Pdu::with_data(reject, bhs));
    }

    pub(super) fn reject_pdu(&mut self, reason: u8, pdu: &Pdu) {
        let header = pdu.encode_header();
        self.send_reject(reason, &header);
    }

    /// One PDU from the initiator, with the transport's context for it. The context of a SCSI
    /// Command PDU stays with the command (while it waits for its CmdSN, and in its task) and comes
    /// back in [`Action::Send`] with every PDU of the task; the context of any other PDU, or of a
    /// command that never becomes a task, is dropped here.
    pub fn handle_pdu_with_context(&mut self, pdu: Pdu, now: Instant, context: C) {
        self.last_activity = now;
        match &mut self.phase {
            Phase::Login(_) => self.handle_login_pdu(pdu),
            Phase::Binding(_) => {
                self.close(CloseReason::ProtocolError(
                    "PDU while the login response is pending".into(),
                ));
            }
            Phase::FullFeature => self.handle_full_feature_pdu(pdu, context),
            Phase::Draining(_) => {
                // Only answers to our pings matter now; everything else is dropped.
            }
            Phase::Closed => {}
        }
    }

    /// A SCSI Command PDU whose immediate data the transport has already placed in `buffer`
    /// (see [`Connection::command_buffer_capacity`]), so it is not copied again. A command that
    /// is not dispatched at once (a CmdSN gap, not full feature phase, a discovery session)
    /// takes the path of [`Connection::handle_pdu_with_context`].
    pub fn handle_scsi_command_with_buffer(
        &mut self,
        h: ScsiCommand,
        buffer: Buf,
        now: Instant,
        context: C,
    ) {
        let dispatchable = matches!(self.phase, Phase::FullFeature)
            && !self.discovery
            && (h.immediate
                || (h.cmd_sn == self.exp_cmd_sn && !sn_lt(self.max_cmd_sn(), h.cmd_sn)));
        if !dispatchable {
            let pdu = Pdu::with_data(Header::ScsiCommand(h), buffer.to_vec());
            self.handle_pdu_with_context(pdu, now, context);
            return;
        }
        self.last_activity = now;
        if !h.immediate {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        }
        self.handle_scsi_command(h, buffer, context);
        if !matches!(self.phase, Phase::FullFeature) {
            return;
        }
        self.dispatch_held();
    }

    /// Capacity of the buffer for a command's data-out whose immediate data is `immediate_len`
    /// bytes: the whole transfer of a write (bounded by the transfer limit; a longer one is
    /// refused anyway), else just the data that came.
    pub fn command_buffer_capacity(&self, h: &ScsiCommand, immediate_len: usize) -> usize {
        let whole = if h.write {
            h.expected_data_length.min(self.config.max_transfer_length) as usize
        } else {
            0
        };
        whole.max(immediate_len)
    }

    /// The pool buffer for a command that arrived as a whole PDU: its immediate data copied in
    /// (the one copy of those bytes in the core), room for the rest of the transfer.
    fn command_buffer(&self, h: &ScsiCommand, data: &[u8]) -> Buf {
        let capacity = self.command_buffer_capacity(h, data.len());
        if capacity == 0 {
            return Buf::empty();
        }
        let mut buffer = mem_ffi::pool::global().with_capacity(capacity);
        buffer.extend_from_slice(data);
        crate::stats::count_payload_copy(data.len());
        buffer
    }

    /// Answer to [`Action::BindSession`].
    pub fn handle_session_bound(&mut self, result: Result<u16, LoginStatus>) {
        let state = match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Binding(state) => state,
            other => {
                self.phase = other;
                return;
            }
        };
        self.finish_login(*state, result);
    }

    fn handle_full_feature_pdu(&mut self, pdu: Pdu, context: C) {
        if self.discovery {
            // Discovery sessions carry only Text and Logout (RFC 7143 §6.3).
            match pdu.header {
                Header::TextRequest(_) | Header::LogoutRequest(_) => {}
                _ => {
                    self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                    return;
                }
            }
        }
        // DataOut, and NopOut answering our ping, are not ordered by CmdSN.
        match &pdu.header {
            Header::DataOut(h) => {
                let itt = h.itt;
                self.handle_stray_data_out(itt, &pdu);
                return;
            }
            Header::NopOut(h) if h.itt == RESERVED_TAG => {
                if self.ping_outstanding.is_some_and(|(ttt, _)| ttt == h.ttt) {
                    self.ping_outstanding = None;
                }
                return;
            }
            Header::SnackRequest(_) => {
                // SNACK needs ErrorRecoveryLevel > 0; we negotiate 0.
                self.reject_pdu(reject_reason::SNACK_REJECT, &pdu);
                return;
            }
            Header::LoginRequest(_) => {
                self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                return;
            }
            Header::ScsiCommand(_)
            | Header::TaskMgmtRequest(_)
            | Header::TextRequest(_)
            | Header::LogoutRequest(_)
            | Header::NopOut(_) => {}
            _ => {
                // A target opcode sent by the initiator.
                self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                return;
            }
        }
        let (immediate, cmd_sn) = command_sequencing(&pdu.header);
        if immediate {
            self.dispatch_command(pdu, context);
            return;
        }
        let window_open = !sn_lt(self.max_cmd_sn(), self.exp_cmd_sn);
        if cmd_sn == self.exp_cmd_sn && window_open {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch_command(pdu, context);
            self.dispatch_held();
        } else if self.cmd_sn_in_window(cmd_sn) {
            // Ahead of ExpCmdSN but inside the window: hold it until the gap fills (unless its
            // CmdSN was already given up by an ABORT TASK).
            self.held.entry(cmd_sn).or_insert(Some((pdu, context)));
        } else {
            // Outside the window: RFC 7143 §4.2.2.1 says silently ignore.
            log::debug!(
                "dropping command with CmdSN {cmd_sn} outside window {}..={}",
                self.exp_cmd_sn,
                self.max_cmd_sn()
            );
        }
    }

    /// Whether `cmd_sn` lies in the CmdSN window, ExpCmdSN..=MaxCmdSN.
    pub(super) fn cmd_sn_in_window(&self, cmd_sn: u32) -> bool {
        !sn_lt(cmd_sn, self.exp_cmd_sn) && !sn_lt(self.max_cmd_sn(), cmd_sn)
    }

    /// Dispatches the held commands that ExpCmdSN has reached, in order.
    fn dispatch_held(&mut self) {
        while let Some(next) = self.held.remove(&self.exp_cmd_sn) {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            if let Some((pdu, context)) = next {
                self.dispatch_command(pdu, context);
            }
        }
    }

    /// Takes `cmd_sn`, inside the window, as received without a command: an ABORT TASK of a
    /// command that has not arrived (RFC 7143 §11.6.1). A command held with it is dropped, one
    /// arriving later is ignored, and ExpCmdSN moves past it as past any received command.
    pub(super) fn give_up_cmd_sn(&mut self, cmd_sn: u32) {
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch_held();
        } else {
            self.held.insert(cmd_sn, None);
        }
    }

    fn dispatch_command(&mut self, pdu: Pdu, context: C) {
        if !matches!(self.phase, Phase::FullFeature) {
            return;
        }
        let Pdu { header, data } = pdu;
        match header {
            Header::ScsiCommand(h) => {
                let buffer = self.command_buffer(&h, &data);
                self.handle_scsi_command(h, buffer, context)
            }
            Header::TaskMgmtRequest(h) => self.handle_tmf(h),
            Header::TextRequest(h) => self.handle_text(h, data),
            Header::LogoutRequest(h) => self.handle_logout(h),
            Header::NopOut(h) => self.handle_nop_out(h, data),
            _ => unreachable!("filtered in handle_full_feature_pdu"),
        }
    }

    /// Frame settings matching the negotiated parameters.
    pub fn frame_settings(&self) -> FrameSettings {
        FrameSettings {
            header_digest: self.params.header_digest,
            data_digest: self.params.data_digest,
            max_data_segment_length: self.config.policy.max_recv_data_segment_length,
        }
    }

    pub(super) fn next_stat_sn_for_login(&mut self) -> u32 {
        self.next_stat_sn()
    }
}

impl<C: Clone + Debug + Default> Connection<C> {
    /// One PDU from the initiator, for a transport that keeps no per-task context (TCP): the
    /// context is `C::default()`.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Instant) {
        self.handle_pdu_with_context(pdu, now, C::default());
    }
}

/// Takes the next target transfer tag from `next`, never the reserved one.
pub(super) fn next_tag(next: &mut u32) -> u32 {
    let tag = *next;
    *next = next.wrapping_add(1);
    if *next == RESERVED_TAG {
        *next = 1;
    }
    tag
}

/// (immediate, CmdSN) of a command PDU.
fn command_sequencing(header: &Header) -> (bool, u32) {
    match header {
        Header::ScsiCommand(h) => (h.immediate, h.cmd_sn),
        Header::TaskMgmtRequest(h) => (h.immediate, h.cmd_sn),
        Header::TextRequest(h) => (h.immediate, h.cmd_sn),
        Header::LogoutRequest(h) => (h.immediate, h.cmd_sn),
        Header::NopOut(h) => (h.immediate, h.cmd_sn),
        _ => (true, 0),
    }
}
