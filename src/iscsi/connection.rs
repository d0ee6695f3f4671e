//! One iSCSI connection (and, at ERL 0 with MaxConnections=1, its whole session) as a state machine.
//!
//! Inputs: [`Connection::handle_pdu`], [`Connection::handle_frame_error`],
//! [`Connection::handle_session_bound`], [`Connection::handle_scsi_complete`],
//! [`Connection::handle_timeout`], [`Connection::handle_shutdown`]. Outputs: [`Action`]s drained with
//! [`Connection::poll_action`], and the next deadline from [`Connection::poll_timeout`]. Time is
//! always passed in.
//!
//! The core speaks in Data-In and R2T PDUs whatever the transport: an iSER transport turns a Data-In
//! into an RDMA Write and answers an R2T with an RDMA Read whose data it feeds back as Data-Out,
//! which is how LIO splits iscsi_target from isert too.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::framing::{FrameError, FrameSettings};
use super::login::LoginState;
use super::pdu::{
    self, DataIn, DataOut, Header, LogoutRequest, LogoutResponse, NopIn, NopOut, Pdu,
    ReadyToTransfer, Reject, ScsiCommand, ScsiResponse, TaskAttribute, TaskMgmtRequest,
    TaskMgmtResponse, TextRequest, TextResponse, RESERVED_TAG,
};
use super::tasks::{R2tWindow, Task, TaskState, TaskTable};
use super::text::{self, KeyAnswer, KeyPhase, Negotiator, SessionParams, TargetPolicy};
use crate::scsi::{ScsiOutcome, TaskAttr};

/// A target as the core needs to know it: name, ACL and LUN numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDescriptor {
    /// iSCSI name (IQN/EUI/NAA).
    pub name: String,
    /// Initiator names allowed to log in; empty means any.
    pub allowed_initiators: Vec<String>,
    /// LUN numbers this target exposes (for TMF LUN checks).
    pub luns: Vec<u64>,
}

impl TargetDescriptor {
    /// Whether `initiator` may log in to (or discover) this target.
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

/// Everything the core needs from configuration; shared by all connections of a portal.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Targets served.
    pub targets: Vec<TargetDescriptor>,
    /// Portals advertised in SendTargets; an unspecified address stands for the connection's
    /// local address.
    pub portals: Vec<SocketAddr>,
    /// Target portal group tag reported at login and in SendTargets.
    pub portal_group_tag: u16,
    /// What we negotiate.
    pub policy: TargetPolicy,
    /// Commands a session may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Largest data transfer of one command; larger ones fail with INVALID FIELD IN CDB.
    pub max_transfer_length: u32,
    /// Idle time after which the target pings with NOP-In; `None` disables pings.
    pub nop_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is dropped.
    pub nop_timeout: Duration,
    /// Bound on the whole login phase.
    pub login_timeout: Duration,
    /// A discovery session with no PDU from the initiator for this long is closed. Discovery
    /// sessions are not pinged (an iSER discovery initiator has a single receive buffer), so
    /// without this a silent one would live for ever.
    pub discovery_idle_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            targets: Vec::new(),
            portals: Vec::new(),
            portal_group_tag: 1,
            policy: TargetPolicy::default(),
            queue_depth: 128,
            max_transfer_length: 16 << 20,
            nop_interval: Some(Duration::from_secs(15)),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(15),
            discovery_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Login failure status (class, detail), RFC 7143 §11.13.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const INITIATOR_ERROR: Self = Self {
        class: 2,
        detail: 0,
    };
    pub const AUTHENTICATION_FAILED: Self = Self {
        class: 2,
        detail: 1,
    };
    pub const AUTHORIZATION_FAILED: Self = Self {
        class: 2,
        detail: 2,
    };
    pub const NOT_FOUND: Self = Self {
        class: 2,
        detail: 3,
    };
    pub const TARGET_REMOVED: Self = Self {
        class: 2,
        detail: 4,
    };
    pub const UNSUPPORTED_VERSION: Self = Self {
        class: 2,
        detail: 5,
    };
    pub const TOO_MANY_CONNECTIONS: Self = Self {
        class: 2,
        detail: 6,
    };
    pub const MISSING_PARAMETER: Self = Self {
        class: 2,
        detail: 7,
    };
    pub const CANT_INCLUDE_IN_SESSION: Self = Self {
        class: 2,
        detail: 8,
    };
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self {
        class: 2,
        detail: 9,
    };
    pub const SESSION_DOES_NOT_EXIST: Self = Self {
        class: 2,
        detail: 10,
    };
    pub const INVALID_DURING_LOGIN: Self = Self {
        class: 2,
        detail: 11,
    };
    pub const TARGET_ERROR: Self = Self {
        class: 3,
        detail: 0,
    };
    pub const SERVICE_UNAVAILABLE: Self = Self {
        class: 3,
        detail: 1,
    };
    pub const OUT_OF_RESOURCES: Self = Self {
        class: 3,
        detail: 2,
    };
}

/// What the transport must settle across connections before a login can complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    pub initiator_name: String,
    pub isid: [u8; 6],
    /// TSIH from the Login Request: 0 for a new session (or reinstatement of one with this ISID).
    pub tsih: u16,
    /// Index into [`CoreConfig::targets`]; `None` for a discovery session.
    pub target: Option<usize>,
}

/// Identifies a command within this connection, stable while it runs in the backend.
pub type TaskId = u64;

/// A SCSI command ready to run in the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiTask {
    pub id: TaskId,
    /// Index into [`CoreConfig::targets`].
    pub target: usize,
    /// Decoded LUN number (`u64::MAX` when the LUN field was undecodable).
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub data_out: Vec<u8>,
    pub expected_transfer_length: u32,
    pub attribute: TaskAttr,
}

/// Why the connection is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Logout completed.
    Logout,
    /// The login failed (a failure status was sent).
    LoginFailed,
    /// The peer violated the protocol in a way that cannot be answered.
    ProtocolError(String),
    /// The initiator stopped answering pings, login took too long, or a discovery session sat
    /// idle.
    Timeout,
    /// The target is shutting down, or the session is being reinstated elsewhere.
    Shutdown,
}

/// An effect the transport must carry out, in order. `C` is the transport's per-task context
/// (see [`Connection::handle_pdu_with_context`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<C = ()> {
    /// Transmit this PDU. `context` is the context of the task the PDU belongs to (its Data-In,
    /// R2Ts and the SCSI Response that ends it), `None` for every other PDU.
    Send { pdu: Pdu, context: Option<C> },
    /// From now on, frame PDUs with these settings (sent right after the final Login Response).
    SetFrameSettings(FrameSettings),
    /// Settle session identity; answer with [`Connection::handle_session_bound`].
    BindSession(BindRequest),
    /// Run this command in the backend; answer with [`Connection::handle_scsi_complete`].
    Execute(ScsiTask),
    /// LOGICAL UNIT RESET (`Some(lun)`) or TARGET RESET (`None`): reset the SCSI state a reset
    /// clears (SPC-2 reservations) on the session's target. No answer.
    Reset { lun: Option<u64> },
    /// Flush what was sent and close the connection. Nothing follows.
    Close(CloseReason),
}

/// Data bytes an iSER initiator's full-feature receive buffers hold (ib_iser ISER_RECV_DATA_SEG_LEN,
/// libiscsi likewise).
pub const ISER_FULL_FEATURE_RESPONSE_DATA: usize = 128;

/// Reject reasons (RFC 7143 §11.17.1).
pub(super) mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const TOO_MANY_IMMEDIATE_COMMANDS: u8 = 0x06;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// TMF function codes (RFC 7143 §11.5.1).
mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;

    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const FUNCTION_NOT_SUPPORTED: u8 = 5;
}

/// Tasks a session may hold beyond `queue_depth`. Immediate SCSI commands take no CmdSN, so the
/// CmdSN window does not bound them; past this many tasks in all, a further immediate command is
/// rejected ("too many immediate commands", RFC 7143 §11.17.1) instead of buffered. 16 leaves
/// room for a burst of immediate commands on top of a full queue while keeping the table, and so
/// the memory one session can pin, bounded.
pub const IMMEDIATE_COMMAND_HEADROOM: u32 = 16;

/// Serial number arithmetic (RFC 1982, 32 bits): a < b.
pub(super) fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// A TMF response held until the tasks it aborted have left the backend.
#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    response: u8,
    waiting_for: Vec<TaskId>,
    close_after: bool,
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
    tasks: TaskTable<C>,
    /// Tasks about to start, kept between events so scheduling does not allocate.
    starting: Vec<TaskId>,
    /// Commands received ahead of ExpCmdSN, with their contexts (held until the gap fills).
    held: BTreeMap<u32, (Pdu, C)>,
    next_ttt: u32,
    pending_tmfs: Vec<PendingTmf>,
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
            Phase::Login(_) if now >= self.login_deadline => {
                log::warn!("login did not complete in {:?}", self.config.login_timeout);
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

    /// Target-initiated NOP-In: ITT reserved, a fresh TTT, no data (brief §1 rule 15).
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
    /// `queue_depth`, and never moves backwards (brief §1 rule 14).
    ///
    /// Only tasks that consumed a CmdSN below ExpCmdSN count: held commands already sit inside the
    /// window, and immediate ones take no CmdSN, so counting either would pull MaxCmdSN back
    /// without ExpCmdSN moving. A full queue closes the window (MaxCmdSN = ExpCmdSN - 1).
    pub(super) fn max_cmd_sn(&self) -> u32 {
        let room = self.config.queue_depth.saturating_sub(self.tasks.queued());
        self.exp_cmd_sn.wrapping_add(room).wrapping_sub(1)
    }

    /// Takes StatSN for a response and advances it.
    fn next_stat_sn(&mut self) -> u32 {
        let sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        sn
    }

    /// Queues a PDU that belongs to no task.
    pub(super) fn send(&mut self, pdu: Pdu) {
        self.actions.push_back(Action::Send { pdu, context: None });
    }

    /// Queues a PDU of the task whose context is `context`.
    fn send_for_task(&mut self, pdu: Pdu, context: &C) {
        self.actions.push_back(Action::Send {
            pdu,
            context: Some(context.clone()),
        });
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
            log::warn!("closing connection: {error}");
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

    fn reject_pdu(&mut self, reason: u8, pdu: &Pdu) {
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
            Phase::FullFeature => self.handle_full_feature_pdu(pdu, now, context),
            Phase::Draining(_) => {
                // Only answers to our pings matter now; everything else is dropped.
            }
            Phase::Closed => {}
        }
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

    fn handle_full_feature_pdu(&mut self, pdu: Pdu, now: Instant, context: C) {
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
                let h = h.clone();
                self.handle_data_out(h, pdu, now);
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
            self.dispatch_command(pdu, context, now);
            return;
        }
        let window_open = !sn_lt(self.max_cmd_sn(), self.exp_cmd_sn);
        if cmd_sn == self.exp_cmd_sn && window_open {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch_command(pdu, context, now);
            // Commands that were waiting for this one.
            while let Some((next, context)) = self.held.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                self.dispatch_command(next, context, now);
            }
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && !sn_lt(self.max_cmd_sn(), cmd_sn) {
            // Ahead of ExpCmdSN but inside the window: hold it until the gap fills.
            self.held.entry(cmd_sn).or_insert((pdu, context));
        } else {
            // Outside the window: RFC 7143 §4.2.2.1 says silently ignore.
            log::debug!(
                "dropping command with CmdSN {cmd_sn} outside window {}..={}",
                self.exp_cmd_sn,
                self.max_cmd_sn()
            );
        }
    }

    fn dispatch_command(&mut self, pdu: Pdu, context: C, now: Instant) {
        if !matches!(self.phase, Phase::FullFeature) {
            return;
        }
        let Pdu { header, data } = pdu;
        match header {
            Header::ScsiCommand(h) => self.handle_scsi_command(h, data, context),
            Header::TaskMgmtRequest(h) => self.handle_tmf(h),
            Header::TextRequest(h) => self.handle_text(h, data),
            Header::LogoutRequest(h) => self.handle_logout(h),
            Header::NopOut(h) => self.handle_nop_out(h, data, now),
            _ => unreachable!("filtered in handle_full_feature_pdu"),
        }
    }

    fn handle_nop_out(&mut self, h: NopOut, data: Vec<u8>, _now: Instant) {
        // A ping from the initiator (ITT valid): echo the data, TTT reserved (brief §1 rule 15).
        let max = self.response_data_limit();
        let mut data = data;
        data.truncate(max);
        let stat_sn = self.next_stat_sn();
        let header = Header::NopIn(NopIn {
            lun: h.lun,
            itt: h.itt,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        });
        self.send(Pdu::with_data(header, data));
    }

    // ---------------------------------------------------------------- SCSI commands and data

    fn handle_scsi_command(&mut self, h: ScsiCommand, immediate_data: Vec<u8>, context: C) {
        let task_limit = self.config.queue_depth as usize + IMMEDIATE_COMMAND_HEADROOM as usize;
        if h.immediate && self.tasks.len() >= task_limit {
            log::warn!(
                "{}: rejecting immediate command ITT {:#x}: {} tasks outstanding",
                self.initiator_name,
                h.itt,
                self.tasks.len()
            );
            let pdu = Pdu::with_data(Header::ScsiCommand(h), immediate_data);
            self.reject_pdu(reject_reason::TOO_MANY_IMMEDIATE_COMMANDS, &pdu);
            return;
        }
        if self.tasks.id_of_itt(h.itt).is_some() {
            let pdu = Pdu::with_data(Header::ScsiCommand(h), immediate_data);
            self.reject_pdu(reject_reason::INVALID_PDU_FIELD, &pdu);
            return;
        }
        let lun = pdu::decode_lun(&h.lun).unwrap_or(u64::MAX);
        let edtl = h.expected_data_length;
        // Bidirectional commands and transfers beyond our buffer limits are refused as SCSI
        // errors, after the command has taken its CmdSN.
        if (h.read && h.write)
            || h.bidi_read_length.is_some()
            || edtl > self.config.max_transfer_length
        {
            let outcome = ScsiOutcome::check_condition(0x05, 0x24, 0x00);
            self.send_scsi_response(h.itt, &context, &outcome, edtl, false, 0);
            return;
        }
        if !immediate_data.is_empty() {
            let limit = edtl.min(self.params.first_burst_length);
            if !h.write || !self.params.immediate_data || immediate_data.len() as u32 > limit {
                let pdu = Pdu::with_data(Header::ScsiCommand(h), immediate_data);
                self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                return;
            }
        }
        let write = h.write && edtl > 0;
        let unsolicited_open = write
            && !h.final_flag
            && !self.params.initial_r2t
            && (immediate_data.len() as u32) < edtl.min(self.params.first_burst_length);
        let received = immediate_data.len() as u32;
        let task = Task {
            context,
            itt: h.itt,
            immediate: h.immediate,
            lun,
            lun_field: h.lun,
            cdb: h.cdb,
            attribute: h.attribute,
            expected_length: edtl,
            data_out: immediate_data,
            write,
            unsolicited_open,
            unsolicited_data_sn: 0,
            next_r2t_offset: received,
            r2t_sn: 0,
            r2ts: Vec::new(),
            aborted: false,
        };
        let id = self.tasks.insert(task);
        self.advance_write(id);
    }

    /// After data arrived (or a command started): issue R2Ts, or mark the task ready and start it
    /// if task ordering lets it.
    fn advance_write(&mut self, id: TaskId) {
        if self.tasks.state(id) != Some(TaskState::AwaitingData) {
            return;
        }
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        if !task.write || task.data_out.len() as u32 >= task.expected_length {
            self.tasks.set_ready(id);
            if self.tasks.may_start(id) {
                self.start(id);
            }
            return;
        }
        if task.unsolicited_open {
            return;
        }
        let max_outstanding = self.params.max_outstanding_r2t as usize;
        let max_burst = self.params.max_burst_length;
        let max_cmd_sn = self.max_cmd_sn();
        loop {
            let Some(task) = self.tasks.get_mut(id) else {
                return;
            };
            if task.r2ts.len() >= max_outstanding || task.next_r2t_offset >= task.expected_length {
                return;
            }
            let offset = task.next_r2t_offset;
            let length = (task.expected_length - offset).min(max_burst);
            let ttt = next_tag(&mut self.next_ttt);
            task.next_r2t_offset += length;
            task.r2ts.push(R2tWindow {
                ttt,
                offset,
                length,
                received: 0,
                next_data_sn: 0,
            });
            let header = Header::ReadyToTransfer(ReadyToTransfer {
                lun: task.lun_field,
                itt: task.itt,
                ttt,
                // R2T carries the current StatSN without advancing it.
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn,
                r2t_sn: task.r2t_sn,
                buffer_offset: offset,
                desired_length: length,
            });
            task.r2t_sn += 1;
            let context = task.context.clone();
            self.send_for_task(Pdu::new(header), &context);
        }
    }

    fn handle_data_out(&mut self, h: DataOut, pdu: Pdu, _now: Instant) {
        let first_burst = self.params.first_burst_length;
        let Some(id) = self
            .tasks
            .id_of_itt(h.itt)
            .filter(|&id| self.tasks.state(id) == Some(TaskState::AwaitingData))
        else {
            // Data for a task we no longer know (aborted, or failed early): drop it quietly,
            // the initiator learns the task's fate from its response or the TMF response.
            log::debug!("Data-Out for unknown ITT {:#x}", h.itt);
            return;
        };
        let task = self.tasks.get_mut(id).expect("found above");
        let len = pdu.data.len() as u32;
        let offset = h.buffer_offset;
        let in_order = offset == task.data_out.len() as u32;
        let end = offset.checked_add(len);
        // DataSN counts the PDUs of each sequence from 0 (RFC 7143 §11.7.5).
        let valid = if h.ttt == RESERVED_TAG {
            let ok = task.unsolicited_open
                && in_order
                && h.data_sn == task.unsolicited_data_sn
                && end.is_some_and(|e| e <= task.expected_length.min(first_burst));
            if ok {
                task.unsolicited_data_sn += 1;
            }
            ok
        } else if let Some(window) = task.r2ts.iter_mut().find(|w| w.ttt == h.ttt) {
            let ok = in_order
                && h.data_sn == window.next_data_sn
                && offset >= window.offset
                && end.is_some_and(|e| e <= window.offset + window.length);
            if ok {
                window.received += len;
                window.next_data_sn += 1;
            }
            ok
        } else {
            false
        };
        if !valid {
            // At ErrorRecoveryLevel 0 a Data-Out sequence error cannot be recovered within the
            // task: reject the PDU and end the task with ABORTED COMMAND / DATA PHASE ERROR, so
            // the initiator retries it. The session goes on; later Data-Out for this ITT is
            // dropped as unknown. (Dropping the connection instead, as LIO does, crashes
            // libiscsi 1.19's iscsi-test-cu in iSCSIDataSnInvalid.)
            log::warn!(
                "invalid Data-Out for ITT {:#x}: offset {offset} length {len} TTT {:#x} DataSN {}",
                h.itt,
                h.ttt,
                h.data_sn
            );
            self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
            let task = self.tasks.remove(id).expect("found above");
            let outcome = ScsiOutcome::check_condition(0x0b, 0x4b, 0x00);
            self.send_scsi_response(
                task.itt,
                &task.context,
                &outcome,
                task.expected_length,
                true,
                0,
            );
            self.schedule();
            return;
        }
        task.data_out.extend_from_slice(&pdu.data);
        if h.ttt == RESERVED_TAG {
            // Solicited data starts where the unsolicited data stopped.
            task.next_r2t_offset = task.data_out.len() as u32;
            if h.final_flag {
                task.unsolicited_open = false;
            }
        } else if h.final_flag {
            // The R2T's sequence is over, whether or not it delivered everything asked for.
            let ttt = h.ttt;
            if let Some(pos) = task.r2ts.iter().position(|w| w.ttt == ttt) {
                let window = task.r2ts.remove(pos);
                if window.received < window.length {
                    // Short sequence: ask again for the rest from where the data stopped.
                    task.next_r2t_offset = task.data_out.len() as u32;
                }
            }
        }
        self.advance_write(id);
    }

    /// Starts the tasks that tasks leaving the table released (task ordering, see
    /// [`TaskTable::released_tasks`]). Tasks that become ready start at once in
    /// [`Connection::advance_write`] when ordering allows.
    fn schedule(&mut self) {
        if !matches!(self.phase, Phase::FullFeature) {
            return;
        }
        let mut starting = std::mem::take(&mut self.starting);
        self.tasks.released_tasks(&mut starting);
        for id in starting.drain(..) {
            self.start(id);
        }
        self.starting = starting;
    }

    /// Hands a ready task to the backend.
    fn start(&mut self, id: TaskId) {
        if !matches!(self.phase, Phase::FullFeature) {
            return;
        }
        let target = self.target.expect("normal session has a target");
        let Some(task) = self.tasks.start(id) else {
            return;
        };
        let attribute = match task.attribute {
            TaskAttribute::Untagged => TaskAttr::Untagged,
            TaskAttribute::Simple => TaskAttr::Simple,
            TaskAttribute::Ordered => TaskAttr::Ordered,
            TaskAttribute::HeadOfQueue => TaskAttr::HeadOfQueue,
            TaskAttribute::Aca => TaskAttr::Aca,
        };
        let scsi = ScsiTask {
            id,
            target,
            lun: task.lun,
            cdb: std::mem::take(&mut task.cdb),
            data_out: std::mem::take(&mut task.data_out),
            expected_transfer_length: task.expected_length,
            attribute,
        };
        self.actions.push_back(Action::Execute(scsi));
    }

    /// Answer to [`Action::Execute`].
    pub fn handle_scsi_complete(&mut self, id: TaskId, outcome: ScsiOutcome) {
        let Some(task) = self.tasks.remove(id) else {
            return;
        };
        if !task.aborted && !matches!(self.phase, Phase::Closed) {
            self.send_command_result(&task, &outcome);
        }
        self.release_tmfs(id);
        self.schedule();
        self.maybe_finish_draining();
    }

    fn send_command_result(&mut self, task: &Task<C>, outcome: &ScsiOutcome) {
        let edtl = task.expected_length;
        if task.write || outcome.data_in.is_empty() {
            self.send_scsi_response(task.itt, &task.context, outcome, edtl, task.write, 0);
            return;
        }
        // Data-In, split by the initiator's MaxRecvDataSegmentLength, sequences by MaxBurstLength;
        // status rides in the last Data-In when there is no sense data (phase collapse).
        let full = outcome.data_in.len() as u64;
        let sent_len = full.min(edtl as u64) as usize;
        let data = &outcome.data_in[..sent_len];
        let residual = Residual::of(full, edtl);
        // Over iSER a Data-In becomes an RDMA Write, so only the burst bounds it.
        let max_pdu = if self.params.rdma_extensions {
            self.params.max_burst_length.max(512) as usize
        } else {
            self.params.initiator_max_recv_data_segment_length.max(512) as usize
        };
        let max_burst = self.params.max_burst_length.max(512) as usize;
        let collapse = outcome.sense.is_empty();
        let mut offset = 0usize;
        let mut data_sn = 0u32;
        let mut burst_used = 0usize;
        while offset < sent_len {
            let len = (sent_len - offset).min(max_pdu).min(max_burst - burst_used);
            let last = offset + len == sent_len;
            burst_used += len;
            let end_of_burst = last || burst_used == max_burst;
            if end_of_burst {
                burst_used = 0;
            }
            let with_status = last && collapse;
            let stat_sn = if with_status { self.next_stat_sn() } else { 0 };
            let header = Header::DataIn(DataIn {
                final_flag: end_of_burst,
                acknowledge: false,
                overflow: with_status && residual.overflow,
                underflow: with_status && residual.underflow,
                status_present: with_status,
                status: if with_status { outcome.status } else { 0 },
                lun: task.lun_field,
                itt: task.itt,
                ttt: RESERVED_TAG,
                stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn(),
                data_sn,
                buffer_offset: offset as u32,
                residual_count: if with_status { residual.count } else { 0 },
            });
            self.send_for_task(
                Pdu::with_data(header, data[offset..offset + len].to_vec()),
                &task.context,
            );
            data_sn += 1;
            offset += len;
        }
        if !collapse || sent_len == 0 {
            self.send_scsi_response_with_residual(
                task.itt,
                &task.context,
                outcome,
                residual,
                data_sn,
            );
        }
    }

    /// SCSI Response for a command without Data-In: residuals from the command's own transfer
    /// length (writes) or from its data (no data at all).
    fn send_scsi_response(
        &mut self,
        itt: u32,
        context: &C,
        outcome: &ScsiOutcome,
        edtl: u32,
        write: bool,
        exp_data_sn: u32,
    ) {
        // A data-out command is judged by the Data-Out its CDB calls for, even when the initiator
        // cleared the W bit because EDTL is 0 (libiscsi's Write10Residuals: overflow of 512).
        let data_out = write || outcome.data_out_length > 0;
        let wanted = if data_out {
            outcome.data_out_length as u64
        } else {
            outcome.data_in.len() as u64
        };
        let residual = if outcome.status == 0 || data_out || wanted > 0 {
            Residual::of(wanted, edtl)
        } else {
            Residual::default()
        };
        self.send_scsi_response_with_residual(itt, context, outcome, residual, exp_data_sn);
    }

    /// SCSI Response with the status and sense of `outcome` (its data, if any, went in Data-In).
    fn send_scsi_response_with_residual(
        &mut self,
        itt: u32,
        context: &C,
        outcome: &ScsiOutcome,
        residual: Residual,
        exp_data_sn: u32,
    ) {
        let mut data = Vec::new();
        if !outcome.sense.is_empty() {
            data.extend_from_slice(&(outcome.sense.len() as u16).to_be_bytes());
            data.extend_from_slice(&outcome.sense);
        }
        let stat_sn = self.next_stat_sn();
        let header = Header::ScsiResponse(ScsiResponse {
            overflow: residual.overflow,
            underflow: residual.underflow,
            response: 0,
            status: outcome.status,
            itt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            exp_data_sn,
            residual_count: residual.count,
        });
        self.send_for_task(Pdu::with_data(header, data), context);
    }

    // ---------------------------------------------------------------- task management

    fn handle_tmf(&mut self, h: TaskMgmtRequest) {
        log::info!(
            "{}: task management function {} (referenced ITT {:#x}, LUN {:02x?})",
            self.initiator_name,
            h.function,
            h.referenced_task_tag,
            h.lun
        );
        let lun = pdu::decode_lun(&h.lun);
        let lun_exists = match (self.target, lun) {
            (Some(t), Some(l)) => self.config.targets[t].luns.contains(&l),
            _ => false,
        };
        let mut close_after = false;
        let (response, victims): (u8, Vec<TaskId>) = match h.function {
            tmf::ABORT_TASK => {
                match self.tasks.id_of_itt(h.referenced_task_tag) {
                    Some(id) => (tmf::FUNCTION_COMPLETE, vec![id]),
                    // RFC 7143 §11.5.1: a task that completed before the abort arrived (RefCmdSN
                    // already consumed) counts as aborted; one never seen does not exist.
                    None if sn_lt(h.ref_cmd_sn, self.exp_cmd_sn) => {
                        (tmf::FUNCTION_COMPLETE, vec![])
                    }
                    None => (tmf::TASK_DOES_NOT_EXIST, vec![]),
                }
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
                if !lun_exists {
                    (tmf::LUN_DOES_NOT_EXIST, vec![])
                } else {
                    let l = lun.expect("exists");
                    let ids = self
                        .tasks
                        .iter()
                        .filter(|(_, t)| t.lun == l)
                        .map(|(id, _)| id)
                        .collect();
                    if h.function == tmf::LOGICAL_UNIT_RESET {
                        self.actions.push_back(Action::Reset { lun: Some(l) });
                    }
                    (tmf::FUNCTION_COMPLETE, ids)
                }
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                close_after = h.function == tmf::TARGET_COLD_RESET;
                self.actions.push_back(Action::Reset { lun: None });
                (
                    tmf::FUNCTION_COMPLETE,
                    self.tasks.iter().map(|(id, _)| id).collect(),
                )
            }
            tmf::CLEAR_ACA => (tmf::FUNCTION_NOT_SUPPORTED, vec![]),
            tmf::TASK_REASSIGN => (tmf::TASK_REASSIGN_NOT_SUPPORTED, vec![]),
            _ => (tmf::FUNCTION_NOT_SUPPORTED, vec![]),
        };
        let mut waiting_for = Vec::new();
        for id in victims {
            if self.tasks.state(id) == Some(TaskState::Running) {
                // Cannot recall it from the backend: discard its result when it comes back,
                // and hold the TMF response until then (brief §1 rule 17).
                if let Some(task) = self.tasks.get_mut(id) {
                    task.aborted = true;
                }
                waiting_for.push(id);
            } else {
                self.tasks.remove(id);
            }
        }
        self.pending_tmfs.push(PendingTmf {
            itt: h.itt,
            response,
            waiting_for,
            close_after,
        });
        self.release_tmfs(0);
        self.schedule();
    }

    /// Sends TMF responses whose aborted tasks have all left the backend.
    fn release_tmfs(&mut self, finished: TaskId) {
        for tmf in &mut self.pending_tmfs {
            tmf.waiting_for.retain(|&id| id != finished);
        }
        while let Some(pos) = self
            .pending_tmfs
            .iter()
            .position(|t| t.waiting_for.is_empty())
        {
            let tmf = self.pending_tmfs.remove(pos);
            let stat_sn = self.next_stat_sn();
            let header = Header::TaskMgmtResponse(TaskMgmtResponse {
                response: tmf.response,
                itt: tmf.itt,
                stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn(),
            });
            self.send(Pdu::new(header));
            if tmf.close_after {
                self.handle_shutdown();
            }
        }
    }

    // ---------------------------------------------------------------- text and logout

    fn handle_text(&mut self, h: TextRequest, data: Vec<u8>) {
        // Continuation of a long response: the initiator echoes our TTT with an empty request.
        if h.ttt != RESERVED_TAG {
            match self.pending_text.take() {
                Some(pending) if pending.ttt == h.ttt => {
                    self.send_text_piece(&h, pending.remaining);
                }
                _ => {
                    let pdu = Pdu::with_data(Header::TextRequest(h), data);
                    self.reject_pdu(reject_reason::INVALID_PDU_FIELD, &pdu);
                }
            }
            return;
        }
        self.pending_text = None;
        let pairs = match text::parse(&data) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("bad Text Request: {e}");
                let pdu = Pdu::with_data(Header::TextRequest(h), data);
                self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                return;
            }
        };
        let mut answer: Vec<text::KeyValue> = Vec::new();
        let negotiator = self
            .negotiator
            .get_or_insert_with(|| Negotiator::new(self.config.policy.clone()));
        negotiator.next_round();
        for (key, value) in &pairs {
            if key == "SendTargets" {
                answer.extend(self.send_targets(value));
                continue;
            }
            let negotiator = self.negotiator.as_mut().expect("created above");
            match negotiator.offer(key, value, KeyPhase::FullFeature, true) {
                Ok(KeyAnswer::Reply(kv)) => answer.push(kv),
                Ok(KeyAnswer::Accepted) => {
                    if key == "MaxRecvDataSegmentLength" {
                        self.params.initiator_max_recv_data_segment_length =
                            negotiator.params().initiator_max_recv_data_segment_length;
                    }
                }
                Ok(KeyAnswer::NotOperational) => {
                    answer.push((key.clone(), "NotUnderstood".to_string()))
                }
                Err(_) => answer.push((key.clone(), "Reject".to_string())),
            }
        }
        self.send_text_piece(&h, text::encode(&answer));
    }

    /// Sends up to one PDU's worth of a Text Response, keeping the rest for the next request.
    fn send_text_piece(&mut self, h: &TextRequest, mut body: Vec<u8>) {
        let max = self.response_data_limit();
        let (continue_flag, ttt) = if body.len() > max {
            let rest = body.split_off(max);
            let ttt = self.fresh_ttt();
            self.pending_text = Some(PendingText {
                ttt,
                remaining: rest,
            });
            (true, ttt)
        } else {
            (false, RESERVED_TAG)
        };
        let stat_sn = self.next_stat_sn();
        let header = Header::TextResponse(TextResponse {
            final_flag: !continue_flag,
            continue_flag,
            lun: h.lun,
            itt: h.itt,
            ttt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        });
        self.send(Pdu::with_data(header, body));
    }

    /// SendTargets answer (RFC 7143 Appendix C): targets this initiator may see, each with the
    /// portals it is reachable at. In a normal session only the session's own target.
    pub(super) fn send_targets(&self, value: &str) -> Vec<text::KeyValue> {
        let mut out = Vec::new();
        for (index, target) in self.config.targets.iter().enumerate() {
            let wanted = match value {
                "All" => self.discovery,
                "" => self.target == Some(index),
                name => name == target.name,
            };
            if !wanted || !target.allows(&self.initiator_name) {
                continue;
            }
            out.push(("TargetName".to_string(), target.name.clone()));
            for portal in &self.config.portals {
                let addr = if portal.ip().is_unspecified() {
                    match self.local_addr {
                        Some(local) => SocketAddr::new(local.ip(), portal.port()),
                        None => continue,
                    }
                } else {
                    *portal
                };
                let host = match addr {
                    SocketAddr::V4(v4) => v4.ip().to_string(),
                    SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                };
                out.push((
                    "TargetAddress".to_string(),
                    format!("{host}:{},{}", addr.port(), self.config.portal_group_tag),
                ));
            }
        }
        out
    }

    fn handle_logout(&mut self, h: LogoutRequest) {
        // Reasons: 0 close session, 1 close connection, 2 remove connection for recovery.
        // With one connection per session, 0 and 1 both end the session; 2 needs ERL 2.
        if h.reason == 2 {
            // Response 2: connection recovery is not supported.
            self.send_logout_response(h.itt, 2);
            return;
        }
        // Tasks still waiting for data or their turn are dropped; running ones finish first so
        // their responses precede the Logout Response.
        self.drop_waiting_commands();
        self.pending_logout = Some(h.itt);
        self.phase = Phase::Draining(CloseReason::Logout);
        self.maybe_finish_draining();
    }

    /// Drops every command not in the backend: held for a CmdSN gap, waiting for data or for its
    /// turn.
    fn drop_waiting_commands(&mut self) {
        self.held.clear();
        let waiting: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|&(id, _)| self.tasks.state(id) != Some(TaskState::Running))
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            self.tasks.remove(id);
        }
    }

    fn maybe_finish_draining(&mut self) {
        let Phase::Draining(reason) = &self.phase else {
            return;
        };
        if !self.tasks.is_empty() {
            return;
        }
        let reason = reason.clone();
        if let Some(itt) = self.pending_logout.take() {
            self.send_logout_response(itt, 0);
        }
        self.close(reason);
    }

    /// Logout Response; Time2Wait/Time2Retain 0 since nothing is kept for recovery at ERL 0.
    fn send_logout_response(&mut self, itt: u32, response: u8) {
        let stat_sn = self.next_stat_sn();
        let header = Header::LogoutResponse(LogoutResponse {
            response,
            itt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            time2wait: 0,
            time2retain: 0,
        });
        self.send(Pdu::new(header));
    }

    // ---------------------------------------------------------------- helpers for login.rs

    /// Switches to full feature phase with the negotiated parameters.
    pub(super) fn enter_full_feature(&mut self, params: SessionParams, exp_cmd_sn: u32) {
        self.params = params;
        self.exp_cmd_sn = exp_cmd_sn;
        self.phase = Phase::FullFeature;
    }

    /// Largest data segment of a response PDU (NOP-In, Text Response) the initiator can take.
    ///
    /// Over iSER the Linux and libiscsi initiators receive full-feature PDUs in 204-byte buffers,
    /// 128 bytes of data, whatever InitiatorRecvDataSegmentLength says (brief §4.1 R-a).
    fn response_data_limit(&self) -> usize {
        if self.params.rdma_extensions {
            ISER_FULL_FEATURE_RESPONSE_DATA
        } else {
            self.params.initiator_max_recv_data_segment_length.max(512) as usize
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

/// Residual overflow/underflow flags and count of a SCSI Response or status-bearing Data-In
/// (RFC 7143 §11.4.5).
#[derive(Debug, Clone, Copy, Default)]
struct Residual {
    overflow: bool,
    underflow: bool,
    count: u32,
}

impl Residual {
    /// The residual of a command that wanted `wanted` bytes against EDTL `edtl`.
    fn of(wanted: u64, edtl: u32) -> Self {
        let edtl = edtl as u64;
        if wanted > edtl {
            Residual {
                overflow: true,
                underflow: false,
                count: (wanted - edtl).min(u32::MAX as u64) as u32,
            }
        } else {
            Residual {
                overflow: false,
                underflow: wanted < edtl,
                count: (edtl - wanted) as u32,
            }
        }
    }
}

/// Takes the next target transfer tag from `next`, never the reserved one.
fn next_tag(next: &mut u32) -> u32 {
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
