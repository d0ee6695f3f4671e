//! What the core and its transports exchange: the core's configuration, the descriptions of
//! targets, sessions and tasks it hands out, and its [`Action`]s.

use std::fmt::{self, Debug};
use std::net::SocketAddr;
use std::time::Duration;

use crate::iscsi::chap::{self, Authentication, RandomSource};
use crate::iscsi::framing::FrameSettings;
use crate::iscsi::pdu::{self, CdbBytes, Header, Pdu};
use crate::iscsi::text::TargetPolicy;
use crate::scsi::sense::SenseData;
use crate::scsi::TaskAttr;
use mem_ffi::{Buf, Payload};

/// A target as the core needs to know it: name, ACL, credentials and LUN numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDescriptor {
    /// iSCSI name (IQN/EUI/NAA).
    pub name: String,
    /// Initiator names allowed to log in; empty means any.
    pub allowed_initiators: Vec<String>,
    /// LUN numbers this target exposes (for TMF LUN checks).
    pub luns: Vec<u64>,
    /// CHAP every login to this target must pass; `None`: no authentication (unless the
    /// initiator has credentials of its own in `initiator_auth`).
    pub auth: Option<Authentication>,
    /// Credentials of particular initiators (by iSCSI name); they win over `auth`.
    pub initiator_auth: Vec<(String, Authentication)>,
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

    /// The CHAP credentials `initiator` must log in with, if any: its own entry's, else the
    /// target's.
    pub fn authentication_for(&self, initiator: &str) -> Option<&Authentication> {
        self.initiator_auth
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(initiator))
            .map(|(_, auth)| auth)
            .or(self.auth.as_ref())
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
    /// CHAP discovery sessions must pass; `None`: discovery needs no authentication.
    pub discovery_auth: Option<Authentication>,
    /// Where CHAP identifiers and challenges come from. The core has no RNG of its own: the
    /// server injects the operating system's CSPRNG, tests a fixed pattern. The default fails,
    /// so a CHAP login on a core configured without a source ends with a target error.
    pub random: RandomSource,
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
            discovery_auth: None,
            random: chap::no_random_source,
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
    pub cdb: CdbBytes,
    /// The write data the datamover brought in (empty for commands without Data-Out): the
    /// task's pool buffer itself, which the backend writes from.
    pub data_out: Buf,
    pub expected_transfer_length: u32,
    pub attribute: TaskAttr,
    /// A command, or a reset of the logical unit `lun`.
    pub kind: TaskKind,
}

/// What an [`Action::Execute`] asks the backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// The SCSI command in the task's CDB.
    Command,
    /// A LOGICAL UNIT RESET (or one LU's part of a TARGET RESET), SAM-5 7.8: it runs once no
    /// command from any session is in flight on the LU, with nothing else beside it; it
    /// releases the SPC-2 reservation and establishes the reset unit attention. Its
    /// completion (status GOOD) tells the core every task the reset ended has left the
    /// backend. No CDB, no data.
    LunReset,
}

/// A login the target refused: the status sent to the initiator, and why in words. The core
/// does not log it: a flood of refused logins is the transport's to log, with a rate limit
/// across the whole process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRefusal {
    pub status: LoginStatus,
    /// The initiator's name, once it gave one.
    pub initiator: Option<String>,
    /// The target it logged in to, once it named one we serve.
    pub target: Option<String>,
    /// A discovery session's login.
    pub discovery: bool,
    /// What was wrong ("CHAP_R is wrong"); empty when the status says it all.
    pub why: String,
}

impl fmt::Display for LoginRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.discovery {
            f.write_str("discovery ")?;
        }
        match &self.initiator {
            Some(name) => write!(f, "login of {name}")?,
            None => f.write_str("login of an unnamed initiator")?,
        }
        if let Some(target) = &self.target {
            write!(f, " to {target}")?;
        }
        f.write_str(" refused")?;
        write!(
            f,
            " with status {:#04x}{:02x}",
            self.status.class, self.status.detail
        )?;
        if !self.why.is_empty() {
            write!(f, ": {}", self.why)?;
        }
        Ok(())
    }
}

/// Why the connection is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Logout completed.
    Logout,
    /// The login failed; its status was sent.
    LoginFailed(LoginRefusal),
    /// The peer violated the protocol in a way that cannot be answered.
    ProtocolError(String),
    /// The initiator stopped answering pings, login took too long, or a discovery session sat
    /// idle.
    Timeout,
    /// The target is shutting down, or the session is being reinstated elsewhere.
    Shutdown,
}

impl CloseReason {
    /// How a connection ended whose login had not completed, in words for the log: the
    /// refusal, or "closed during login: " and why.
    pub fn during_login(&self) -> String {
        match self {
            CloseReason::LoginFailed(refusal) => refusal.to_string(),
            reason => format!("closed during login: {reason}"),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Logout => f.write_str("logged out"),
            CloseReason::LoginFailed(refusal) => fmt::Display::fmt(refusal, f),
            CloseReason::ProtocolError(what) => write!(f, "protocol error: {what}"),
            CloseReason::Timeout => f.write_str("timed out"),
            CloseReason::Shutdown => f.write_str("shut down"),
        }
    }
}

/// The task a data-movement action belongs to, with what a datamover needs to address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRef<C> {
    /// The task's id; 0 for a command refused before it became a task (its response is all
    /// there is).
    pub id: TaskId,
    /// Initiator task tag.
    pub itt: u32,
    /// The LUN field of the SCSI Command, echoed in Data-In and R2T PDUs.
    pub lun: [u8; 8],
    /// The transport's context given with the SCSI Command (see
    /// [`Connection::handle_pdu_with_context`](super::Connection::handle_pdu_with_context)).
    pub context: C,
}

/// StatSN, ExpCmdSN and MaxCmdSN as they stood when the core produced an action; the PDUs a
/// datamover builds for it carry them. For [`Action::Respond`], `stat_sn` is the StatSN taken
/// by that response; otherwise it is the current one, not advanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SequenceNumbers {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Residual overflow/underflow flags and count of a command's final status (RFC 7143 §11.4.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residual {
    pub overflow: bool,
    pub underflow: bool,
    pub count: u32,
}

impl Residual {
    /// The residual of a command that wanted `wanted` bytes against EDTL `edtl`.
    pub fn of(wanted: u64, edtl: u32) -> Self {
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

/// The SCSI Response PDU that ends a task (RFC 7143 §11.4): status, residual and the sense
/// data with its 2-byte length prefix (§11.4.7.2). Both datamovers build it with this.
pub fn scsi_response_pdu(
    itt: u32,
    status: u8,
    sense: &[u8],
    residual: Residual,
    numbers: SequenceNumbers,
    exp_data_sn: u32,
) -> Pdu {
    let mut data = Vec::new();
    if !sense.is_empty() {
        data.extend_from_slice(&(sense.len() as u16).to_be_bytes());
        data.extend_from_slice(sense);
    }
    let header = Header::ScsiResponse(pdu::ScsiResponse {
        overflow: residual.overflow,
        underflow: residual.underflow,
        response: 0,
        status,
        itt,
        stat_sn: numbers.stat_sn,
        exp_cmd_sn: numbers.exp_cmd_sn,
        max_cmd_sn: numbers.max_cmd_sn,
        exp_data_sn,
        residual_count: residual.count,
    });
    Pdu::with_data(header, data)
}

/// An effect the transport must carry out, in order. `C` is the transport's per-task context
/// (see [`Connection::handle_pdu_with_context`](super::Connection::handle_pdu_with_context)).
///
/// Data movement is said in meaning, as the iSCSI Datamover Interface (RFC 5047) splits it:
/// [`Action::PutData`] (Put_Data), [`Action::GetData`] (Get_Data), [`Action::Respond`]
/// (Send_Control of the SCSI Response). iSCSI/TCP turns them into Data-In, R2T and SCSI Response
/// PDUs ([`crate::iscsi::tcp`]), iSER into RDMA Writes, RDMA Reads and a Send ([`crate::iscsi::iser`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<C = ()> {
    /// Transmit this control PDU (login, text, NOP-In, Reject, TMF and Logout responses); it
    /// belongs to no task.
    Send(Pdu),
    /// Send bytes `range` of `data`, the task's Data-In (the pool buffer the backend read
    /// into, or a RAM LUN's memory lent), to the initiator at the same offsets.
    /// [`Action::Respond`] follows at once.
    PutData {
        task: TaskRef<C>,
        data: Payload,
        range: std::ops::Range<u32>,
        numbers: SequenceNumbers,
    },
    /// A write task: `buffer` is its whole data-out buffer (capacity for `range.end` bytes),
    /// holding the immediate data (its length, `range.start` bytes, came with the command);
    /// bring the initiator's data for `range` into it and report each in-order piece with
    /// [`Connection::handle_data_received`](super::Connection::handle_data_received). The initiator may send
    /// `range.start..unsolicited_end` unsolicited (InitialR2T=No); the rest must be solicited.
    /// An empty `range` asks for nothing: all data came with the command.
    GetData {
        task: TaskRef<C>,
        buffer: Buf,
        range: std::ops::Range<u32>,
        unsolicited_end: u32,
        numbers: SequenceNumbers,
    },
    /// The final status of a task; the task ends. `sense` is the raw sense data (empty for
    /// none).
    Respond {
        task: TaskRef<C>,
        status: u8,
        sense: SenseData,
        residual: Residual,
        numbers: SequenceNumbers,
    },
    /// The task ended without a response (aborted, dropped at logout or shutdown): forget its
    /// buffers and stop fetching its data.
    Release(TaskRef<C>),
    /// From now on, frame PDUs with these settings (sent right after the final Login Response).
    SetFrameSettings(FrameSettings),
    /// Settle session identity; answer with [`Connection::handle_session_bound`](super::Connection::handle_session_bound).
    BindSession(BindRequest),
    /// Run this command in the backend; answer with [`Connection::handle_scsi_complete`](super::Connection::handle_scsi_complete). The
    /// datamover puts the buffer it brought the write data into in `data_out`.
    Execute(ScsiTask),
    /// Flush what was sent and close the connection. Nothing follows.
    Close(CloseReason),
}

/// Data bytes an iSER initiator's full-feature receive buffers hold (ib_iser ISER_RECV_DATA_SEG_LEN,
/// libiscsi likewise).
pub const ISER_FULL_FEATURE_RESPONSE_DATA: usize = 128;
