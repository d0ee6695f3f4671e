//! One NVMe/TCP connection, which is one queue of a controller (NVMe/TCP 1.0 §2.1), as a
//! state machine.
//!
//! Inputs: [`Queue::handle_bytes`] or [`Queue::read_buffers`] and [`Queue::handle_read`] (what
//! the socket read), [`Queue::handle_controller_created`]
//! and [`Queue::handle_controller_joined`] (answers to the cross-connection actions),
//! [`Queue::handle_io_complete`], [`Queue::handle_computed`], [`Queue::handle_namespaces_changed`],
//! [`Queue::handle_ana_changed`], [`Queue::handle_allowed_hosts_changed`],
//! [`Queue::handle_timeout`] and [`Queue::handle_shutdown`]. Outputs: [`Action`]s from
//! [`Queue::poll_action`] and the next deadline from [`Queue::poll_timeout`]. Time is always
//! passed in. The first fatal error ends the queue: a C2HTermReq when the host broke the
//! protocol, then [`Action::Close`], and nothing after it.
//!
//! This file holds the connection phases, the PDU exchange and what the queue keeps of its
//! commands; `capsule.rs` takes command capsules in and dispatches them, `data.rs` moves their
//! data (R2T/H2CData in, C2HData out) and completes I/O; `../admin.rs` holds the fabrics and
//! admin commands.

mod capsule;
mod data;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

pub(super) use capsule::Outcome;

use super::auth::dh::{DhResult, DhWork};
use super::auth::{Authentication, HostSecrets, QueueAuthentication};
use super::command::{Completion, Sqe, Status};
use super::config::{NvmeConfig, ADMIN_IN_CAPSULE_DATA};
use super::controller::{AdminState, ControllerShared};
use super::framing::{FrameError, FrameLimits, PduReader, Received};
use super::io::{IoCommand, IoId, IoOp};
use super::pdu::{self, Fes, HostPdu, IcReq, IcResp, PduHead, PduTail, SendSettings};
use crate::inthash::IntMap;
use crate::Buf;
use mem_ffi::Payload;

/// What an admin queue Connect asks of the environment: a new controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// Index into [`NvmeConfig::subsystems`]; `usize::MAX` for the discovery subsystem.
    pub subsystem: usize,
    pub host_nqn: String,
    pub host_id: [u8; 16],
}

/// What an I/O queue Connect asks of the environment: to join controller `cntlid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub cntlid: u16,
    pub qid: u16,
    pub subsystem: usize,
    pub host_nqn: String,
    pub host_id: [u8; 16],
}

/// Why the environment refused a Connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefusal {
    #[error("no controller ID is free")]
    ControllerBusy,
    #[error("no such controller for this host and subsystem")]
    UnknownController,
    #[error("the controller is not enabled")]
    ControllerNotReady,
    #[error("the queue ID is beyond the queues granted, or already connected")]
    InvalidQueue,
    /// The host passed the queue's check, but a reload took it out of `allowed_hosts` before
    /// the controller took the queue.
    #[error("the host is no longer allowed to connect to the subsystem")]
    HostNotAllowed,
}

/// What an admin queue tells the environment of its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControllerState {
    /// CSTS.RDY: I/O queues may connect.
    pub ready: bool,
    /// I/O queues granted (Set Features, Number of Queues).
    pub io_queues: u16,
}

/// Why the queue is closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The host broke the protocol; a C2HTermReq was sent.
    ProtocolError(String),
    /// The host sent an H2CTermReq.
    HostTerminated { fes: u16 },
    /// A Disconnect command completed.
    Disconnect,
    /// No Keep Alive within KATO: the controller is dead (base 2.0 §3.9).
    KeepAliveExpired,
    /// No ICReq or Connect in time.
    ConnectTimeout,
    /// The host did not authenticate: its exchange failed, or did not end in time.
    AuthenticationFailed(String),
    /// The environment asked (controller reset, target shutdown).
    Shutdown,
}

/// An effect the transport must carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes (whole PDUs: ICResp, C2HTermReq).
    Send(Vec<u8>),
    /// Send this PDU without data, held inline (CapsuleResp, R2T: one per command, which
    /// costs no allocation).
    SendPdu(PduHead),
    /// Send `head`, bytes `range` of `data`, then `tail`: a C2HData PDU whose data is the
    /// command's read buffer, moved here, not copied into the PDU, or a span of a file whose
    /// pages the transport sends as they are (never with a data digest).
    SendData {
        head: PduHead,
        data: Payload,
        range: Range<usize>,
        tail: PduTail,
    },
    /// Create a controller (admin queue Connect); answer with
    /// [`Queue::handle_controller_created`].
    CreateController(CreateRequest),
    /// Join an I/O queue to a controller; answer with [`Queue::handle_controller_joined`].
    JoinController(JoinRequest),
    /// The admin queue's controller changed readiness or I/O queue count; when it is no longer
    /// ready its I/O queues must be shut down ([`super::ControllerRegistry::update`]).
    ControllerChanged { cntlid: u16, state: ControllerState },
    /// Run this block operation on namespace `nsid` of the queue's subsystem.
    Execute(IoCommand),
    /// Run this exponentiation of the queue's DH-HMAC-CHAP exchange, off the I/O thread
    /// (it takes milliseconds), and answer with [`Queue::handle_computed`].
    Compute(DhWork),
    /// The host has authenticated on this queue (for the log and the status report).
    Authenticated(Authentication),
    /// A Connect named a host the subsystem does not allow; it is answered with Connect
    /// Invalid Host (for the log and the refusal count).
    HostNotAllowed {
        host_nqn: String,
        subsystem_nqn: String,
    },
    /// Flush what was sent and close the connection. Nothing follows.
    Close(CloseReason),
}

impl Action {
    /// The whole PDU a send action puts on the wire, in one buffer (lent memory copied, a
    /// file's pages read), for tests and fuzzers that read what the queue sends; `None` for
    /// the actions that send nothing.
    pub fn pdu_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Action::Send(bytes) => Some(bytes.clone()),
            Action::SendPdu(head) => Some(head.to_vec()),
            Action::SendData {
                head,
                data,
                range,
                tail,
            } => Some([head, &data.to_vec()[range.clone()], tail].concat()),
            _ => None,
        }
    }
}

/// Connection phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for ICReq.
    Initializing,
    /// ICResp sent; waiting for a Connect command.
    AwaitingConnect,
    /// Connect asked of the environment; waiting for its answer.
    Connecting,
    Live,
    Closed,
}

/// The queue's place in a controller, once connected.
#[derive(Debug, Clone)]
pub(super) struct Binding {
    pub cntlid: u16,
    /// Index of the subsystem; `None` for the discovery controller.
    pub subsystem: Option<usize>,
    pub host_nqn: String,
    /// The Host Identifier from Connect (Get Features, Host Identifier).
    pub host_id: [u8; 16],
    pub shared: Arc<ControllerShared>,
}

/// A Connect waiting for the environment.
#[derive(Debug, Clone)]
pub(super) struct PendingConnect {
    pub cid: u16,
    /// The controller an I/O queue joins (from the Connect data).
    pub cntlid: u16,
    pub host_nqn: String,
    pub host_id: [u8; 16],
    pub qid: u16,
    pub sq_size: u16,
    pub kato_ms: u32,
    pub subsystem: Option<usize>,
    pub sq_flow_disabled: bool,
    /// The secrets the host must authenticate with on this queue, if its entry has them.
    pub secrets: Option<Arc<HostSecrets>>,
}

/// Where a command is in its life.
#[derive(Debug)]
enum CommandState {
    /// Receiving host data solicited by an R2T: bytes `next..r2t_end` of the current R2T.
    ReceivingData { next: u32, r2t_end: u32 },
    /// In the environment, as this I/O of `bytes` host data.
    Executing { op: IoOp, lba: u64, bytes: u64 },
    /// An Asynchronous Event Request, held.
    Held,
    /// An AUTH command waiting for its [`Action::Compute`]; dispatched again once computed.
    Computing,
}

#[derive(Debug)]
struct Command {
    sqe: Sqe,
    /// Host data received so far: a pool buffer the backend writes from.
    data: Buf,
    /// Host data the command takes in all.
    host_data: u32,
    /// A data digest failed on some of its data: it completes with a transient error.
    digest_failed: bool,
    state: CommandState,
}

/// One NVMe/TCP queue.
#[derive(Debug)]
pub struct Queue {
    pub(super) config: Arc<NvmeConfig>,
    reader: PduReader,
    limits: FrameLimits,
    send: SendSettings,
    phase: Phase,
    actions: VecDeque<Action>,
    /// Connect or keep-alive deadline.
    deadline: Option<Instant>,
    pub(super) qid: u16,
    /// Entries of the submission queue (SQSIZE + 1).
    sq_size: u16,
    sqhd: u16,
    sq_flow_disabled: bool,
    pub(super) binding: Option<Binding>,
    /// Registers and features; only on an admin queue.
    pub(super) admin: Option<AdminState>,
    pub(super) pending_connect: Option<PendingConnect>,
    /// In-band authentication, when the host must authenticate on this queue.
    pub(super) auth: Option<QueueAuthentication>,
    /// Outstanding commands by the host's CIDs, and the running ones by the I/O ids we hand
    /// out. A host picks only its own CIDs, at most SQSIZE of them in this queue's map, so
    /// colliding ones slow only its own queue: the cheap hash ([`IntMap`]) is safe.
    commands: IntMap<u16, Command>,
    executing: IntMap<IoId, u16>,
    /// The AUTH command whose [`Action::Compute`] is out.
    computing: Option<u16>,
    next_io: IoId,
    /// The time of the latest input, for keep-alive deadlines set by commands.
    pub(super) now: Instant,
}

impl Queue {
    /// A new connection, waiting for ICReq.
    pub fn new(config: Arc<NvmeConfig>, now: Instant) -> Self {
        let limits = FrameLimits {
            header_digest: false,
            data_digest: false,
            max_in_capsule: ADMIN_IN_CAPSULE_DATA.max(config.in_capsule_data),
            max_h2c_data: config.maxh2cdata(),
        };
        Queue {
            deadline: Some(now + config.connect_timeout),
            config,
            reader: PduReader::new(),
            limits,
            send: SendSettings {
                data_alignment: 4,
                ..SendSettings::default()
            },
            phase: Phase::Initializing,
            actions: VecDeque::new(),
            qid: 0,
            sq_size: 0,
            sqhd: 0,
            sq_flow_disabled: false,
            binding: None,
            admin: None,
            pending_connect: None,
            auth: None,
            commands: IntMap::default(),
            executing: IntMap::default(),
            computing: None,
            next_io: 1,
            now,
        }
    }

    /// The next effect to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Queue::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.phase != Phase::Closed)
    }

    /// Whether a READ's data may come as a file span ([`Payload::File`]), sent from the file's
    /// pages as they are: only without a data digest, which would need the bytes in memory.
    /// Fixed by the ICReq, before any command.
    pub fn sends_file_pages(&self) -> bool {
        !self.send.data_digest
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True once Connect completed.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Connected, but the host has not authenticated yet: only AUTH_Send and AUTH_Receive
    /// may run.
    pub fn awaiting_authentication(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| !a.is_authenticated())
    }

    /// The queue ID (0: admin queue), valid once live.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The controller this queue belongs to, once live.
    pub fn cntlid(&self) -> Option<u16> {
        self.binding.as_ref().map(|b| b.cntlid)
    }

    /// Commands handed to the environment and not completed.
    pub fn running(&self) -> usize {
        self.executing.len()
    }

    /// Bytes read from the socket.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.now = now;
        self.reader.push(bytes);
        self.process();
    }

    /// Rooms for the next (vectored) socket read, filled in order, about `size` bytes: the
    /// transport reads into them and reports how much with [`Queue::handle_read`], so large
    /// H2CData payloads land in their command's buffer without a copy, and the read that ends
    /// one takes the next PDU's header too (see [`PduReader::read_buffers`]).
    pub fn read_buffers(&mut self, size: usize) -> (&mut [u8], &mut [u8]) {
        let expected = self.commands.values().any(|c| match c.state {
            CommandState::ReceivingData { next, r2t_end } => {
                r2t_end.saturating_sub(next) as usize >= super::framing::DIRECT_MIN
            }
            _ => false,
        });
        self.reader.expect_data(expected);
        self.reader.read_buffers(size)
    }

    /// The socket read `n` bytes into [`Queue::read_buffers`]' rooms.
    pub fn handle_read(&mut self, n: usize, now: Instant) {
        self.reader.push_read(n);
        if self.phase == Phase::Closed {
            return;
        }
        self.now = now;
        self.process();
    }

    /// Handles the buffered PDUs. While a Connect waits for the environment the rest stay
    /// buffered: what follows the Connect runs on the queue it creates.
    pub(super) fn process(&mut self) {
        while !matches!(self.phase, Phase::Closed | Phase::Connecting) {
            match self.reader.next_pdu(&self.limits) {
                Ok(Some(received)) => self.handle_pdu(received),
                Ok(None) => break,
                Err(FrameError { fes, fei, header }) => {
                    self.terminate(fes, fei, &header);
                }
            }
        }
    }

    /// Time passed: a Connect that did not come, or a keep alive that did not.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match self.deadline {
            Some(d) if d <= now && self.phase != Phase::Closed => {
                let reason = if self.phase == Phase::Live && self.awaiting_authentication() {
                    CloseReason::AuthenticationFailed(
                        "the host did not authenticate in time (the connect timeout)".into(),
                    )
                } else if self.phase == Phase::Live {
                    CloseReason::KeepAliveExpired
                } else {
                    CloseReason::ConnectTimeout
                };
                self.close(reason);
            }
            _ => {}
        }
    }

    /// The result of the queue's [`Action::Compute`]: the AUTH command that waited for it
    /// runs again and completes.
    pub fn handle_computed(&mut self, result: DhResult, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.now = now;
        let (Some(cid), Some(auth)) = (self.computing.take(), self.auth.as_mut()) else {
            return;
        };
        auth.computed(result);
        self.dispatch(cid);
    }

    /// The environment ends the queue (controller reset or shutdown, target shutdown).
    pub fn handle_shutdown(&mut self) {
        if self.phase != Phase::Closed {
            self.close(CloseReason::Shutdown);
        }
    }

    fn handle_pdu(&mut self, received: Received) {
        let Received {
            pdu,
            header,
            data,
            data_digest_ok,
        } = received;
        match (pdu, self.phase) {
            (HostPdu::IcReq(req), Phase::Initializing) => self.handle_ic_req(req, &header),
            (HostPdu::H2CTermReq(t), _) => self.close(CloseReason::HostTerminated { fes: t.fes }),
            (HostPdu::CapsuleCmd(sqe), Phase::AwaitingConnect | Phase::Live) => {
                self.handle_capsule(sqe, data, data_digest_ok)
            }
            (HostPdu::H2CData(h), Phase::Live) => {
                self.handle_h2c_data(h, data, data_digest_ok, &header)
            }
            // An ICReq twice, or anything before it.
            _ => self.terminate(Fes::PduSequenceError, 0, &header),
        }
    }

    /// ICReq → ICResp (NVMe/TCP 1.0 ICReq and ICResp PDUs).
    fn handle_ic_req(&mut self, req: IcReq, header: &[u8]) {
        if req.pfv != 0 {
            return self.terminate(Fes::UnsupportedParameter, IcReq::PFV_OFFSET, header);
        }
        if req.hpda > 31 {
            return self.terminate(Fes::InvalidHeaderField, IcReq::HPDA_OFFSET, header);
        }
        let resp = IcResp {
            cpda: 0,
            header_digest: req.header_digest,
            data_digest: req.data_digest,
            maxh2cdata: self.config.maxh2cdata(),
        };
        self.actions.push_back(Action::Send(resp.encode()));
        self.limits.header_digest = req.header_digest;
        self.limits.data_digest = req.data_digest;
        self.send = SendSettings {
            header_digest: req.header_digest,
            data_digest: req.data_digest,
            data_alignment: (usize::from(req.hpda) + 1) * 4,
        };
        self.phase = Phase::AwaitingConnect;
    }

    /// A fresh I/O ID.
    pub(super) fn next_io_id(&mut self) -> IoId {
        let id = self.next_io;
        self.next_io += 1;
        id
    }

    /// A held command (Connect, Asynchronous Event Request) completes.
    pub(super) fn complete(&mut self, cid: u16, status: Status, result: u64) {
        self.commands.remove(&cid);
        self.respond(cid, status, result);
    }

    /// Sends a CapsuleResp for `cid`.
    pub(super) fn respond(&mut self, cid: u16, status: Status, result: u64) {
        self.respond_about(cid, status, result, 0, 0)
    }

    /// Sends a CapsuleResp for `cid`, a command on namespace `nsid` at `lba`; a failure goes
    /// to the controller's error log.
    fn respond_about(&mut self, cid: u16, status: Status, result: u64, nsid: u32, lba: u64) {
        if !status.is_success() {
            if let Some(b) = &self.binding {
                b.shared.record_error(self.qid, cid, status, nsid, lba);
            }
        }
        let cqe = Completion {
            result,
            sqhd: self.sqhd,
            sqid: self.qid,
            cid,
            status,
        };
        let head = pdu::capsule_resp(&cqe, &self.send);
        self.actions.push_back(Action::SendPdu(head));
    }

    /// The Connect was accepted: the queue is live with these parameters, a queue of
    /// controller `cntlid`.
    pub(super) fn go_live(
        &mut self,
        connect: PendingConnect,
        cntlid: u16,
        shared: Arc<ControllerShared>,
    ) {
        self.phase = Phase::Live;
        self.qid = connect.qid;
        self.sq_size = connect.sq_size;
        self.sq_flow_disabled = connect.sq_flow_disabled;
        // A Connect completes with the SQ head it left (one entry consumed).
        self.sqhd = 1 % self.sq_size.max(1);
        let subsystem_nqn = connect
            .subsystem
            .and_then(|i| self.config.subsystems.get(i))
            .map_or("", |s| s.nqn.as_str());
        self.auth = connect
            .secrets
            .map(|secrets| QueueAuthentication::new(secrets, &connect.host_nqn, subsystem_nqn));
        self.binding = Some(Binding {
            cntlid,
            subsystem: connect.subsystem,
            host_nqn: connect.host_nqn,
            host_id: connect.host_id,
            shared,
        });
        if self.qid != 0 {
            self.limits.max_in_capsule = self.config.in_capsule_data;
        } else {
            self.limits.max_in_capsule = ADMIN_IN_CAPSULE_DATA;
        }
        // A queue that must authenticate has the connect timeout to do it; the admin queue's
        // keep alive starts once it has.
        self.deadline = self
            .awaiting_authentication()
            .then(|| self.now + self.config.connect_timeout);
    }

    /// Marks Connect as waiting for the environment.
    pub(super) fn await_connect(&mut self, pending: PendingConnect) {
        self.pending_connect = Some(pending);
        self.phase = Phase::Connecting;
    }

    /// The Connect was refused: the queue answers and waits for another Connect, as it does
    /// after a Connect with invalid parameters (the host decides whether to retry or close).
    pub(super) fn refuse_connect(&mut self, cid: u16, status: Status, result: u64) {
        self.phase = Phase::AwaitingConnect;
        self.complete(cid, status, result);
        self.process();
    }

    /// Sets (or clears) the keep-alive deadline.
    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    pub(super) fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Drops a held command without a completion.
    pub(super) fn forget(&mut self, cid: u16) {
        self.commands.remove(&cid);
    }

    /// Whether `cid` is a held command (an Asynchronous Event Request).
    pub(super) fn is_held(&self, cid: u16) -> bool {
        matches!(
            self.commands.get(&cid),
            Some(Command {
                state: CommandState::Held,
                ..
            })
        )
    }

    /// Sends a C2HTermReq and closes (NVMe/TCP 1.0 C2HTermReq PDU).
    fn terminate(&mut self, fes: Fes, fei: u32, header: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        self.actions
            .push_back(Action::Send(pdu::c2h_term_req(fes, fei, header)));
        self.close(CloseReason::ProtocolError(format!(
            "{fes:?} at byte {fei} of a {} PDU",
            header.first().copied().unwrap_or(0xFF)
        )));
    }

    pub(super) fn close(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.pending_connect = None;
        self.commands.clear();
        self.executing.clear();
        self.computing = None;
        self.actions.push_back(Action::Close(reason));
    }
}
