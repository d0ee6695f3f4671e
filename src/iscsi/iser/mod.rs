//! iSER (RFC 7145) on top of the core, still without I/O: framing of PDUs in RDMA Sends, and the
//! iSER datamover, which carries out the core's data actions with RDMA: [`Action::PutData`] is an
//! RDMA Write to the initiator's read buffer, [`Action::GetData`] RDMA Reads of the whole
//! solicited range at once from its write buffer, [`Action::Respond`] the SCSI Response Send. No
//! Data-In, R2T or Data-Out PDU is made or parsed for data that moves by RDMA. The transport only
//! posts what [`FabricOp`]s say and reports completions back.
//!
//! Byte-level facts come from RFC 7145 and the initiators' source (Linux
//! drivers/infiniband/ulp/iser, libiscsi lib/iser.c), cited where they are used. The core
//! negotiates InitialR2T=Yes for iSER, so the only data-out that arrives in Sends is immediate
//! data.

pub mod initiator;
mod reads;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::connection::scsi_response_pdu;
use super::connection::{
    Action, CloseReason, Connection, CoreConfig, LoginStatus, Residual, SequenceNumbers, TaskId,
    TaskRef,
};
use super::pdu::{self, Header, Pdu, Stage, BHS_LEN};
use crate::inthash::IntMap;
use crate::scsi::ScsiOutcome;
use crate::stats::count_payload_copy;
use mem_ffi::{Buf, Payload};

pub use reads::ReadPlacement;
use reads::{IserWrite, PendingRead, RetiredWrite};
pub use wire::{
    accept_private_data, initiator_allows_send_with_invalidate, IserHeader, SendBytes,
    ISER_HEADER_LEN, RECV_BUFFER_LEN, RECV_DATA_CAPACITY,
};
use wire::{ISER_HELLO, ISER_ISCSI_CTRL, ISER_RSV, ISER_WSV};

/// One operation the RDMA fabric must perform, in order. A Send posted after an RDMA Write on
/// the same QP is delivered after it (RC ordering), which is what makes a SCSI Response safe to
/// post right behind its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FabricOp {
    /// Post a Send whose payload is these bytes (iSER header + BHS + data); with `invalidate`,
    /// as Send-with-Invalidate of that rkey of the initiator's.
    Send {
        bytes: SendBytes,
        invalidate: Option<u32>,
    },
    /// RDMA Write bytes `range` of `data` (the task's read buffer, handed over until the write
    /// completes) into the initiator's buffer at (stag, va).
    RdmaWrite {
        stag: u32,
        va: u64,
        data: Payload,
        range: Range<usize>,
    },
    /// RDMA Read `len` bytes from (stag, va) straight into the task's buffer, where
    /// [`IserConnection::rdma_read_placement`] says, and report with
    /// [`IserConnection::handle_rdma_read_complete`], or report
    /// [`IserConnection::handle_rdma_read_failed`].
    RdmaRead {
        token: u64,
        stag: u32,
        va: u64,
        len: u32,
    },
    /// Settle session identity; answer with [`IserConnection::handle_session_bound`].
    BindSession(super::BindRequest),
    /// Run a SCSI command; answer with [`IserConnection::handle_scsi_complete`].
    Execute(super::ScsiTask),
    /// The login succeeded: post the full-feature receive buffers and set up the staging arena
    /// now, before the final Login Response that follows (the initiator may send commands the
    /// moment it has it; Linux drivers/infiniband/ulp/isert/ib_isert.c isert_put_login_tx does
    /// the same).
    EnterFullFeature,
    /// Disconnect, drain, free. Nothing follows.
    Close(CloseReason),
}

/// The initiator's buffers for one command, from the iSER header of its SCSI Command: the
/// core's per-task context, so the STags live exactly as long as the task the core accepted (a
/// dropped, rejected or duplicate-ITT command never touches a live task's STags).
#[derive(Debug, Clone, Copy, Default)]
struct RemoteBuffers {
    read: Option<(u32, u64)>,
    write: Option<(u32, u64)>,
    /// Bytes that came in the command's Send (immediate data): the advertised WriteVA points past
    /// them (Linux iser_initiator.c `iser_prepare_write_cmd`; libiscsi's lib/iser.c likewise
    /// since 1.20).
    unsolicited: u32,
}

/// One parsed Send.
enum Received {
    /// A whole PDU, with the buffers of a SCSI Command.
    Pdu(Pdu, RemoteBuffers),
    /// A SCSI Command in full feature phase, its immediate data already in its task buffer.
    Command(pdu::ScsiCommand, Buf, RemoteBuffers),
}

/// Which RDMA Reads a Send must not overtake: a Send that lets the initiator free a buffer may
/// not pass an RDMA Read of it, and on an RC QP only a fenced WR (IBV_SEND_FENCE) waits for earlier
/// RDMA Reads. LIO answers a WRITE only from its Read completion (ib_isert.c
/// `isert_rdma_read_done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFence {
    /// Nothing to wait for (NOP-In, Reject, Text...).
    None,
    /// The reads of this task: its SCSI Response ends its use of the STags.
    Task(TaskId),
    /// Every read in flight now: a TMF Response (the initiator invalidates the STags of every
    /// task it covers) or a Logout Response (the initiator tears down all its buffers).
    All,
}

/// What a held op waits for: the RDMA Reads its [`ReadFence`] named when it was queued, settled
/// then so that checking it costs one lookup, whatever the number of reads in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldUntil {
    /// Nothing of its own; only the held ops ahead of it.
    Nothing,
    /// The task's reads in flight are done (no read is made for a task after its response).
    Task(TaskId),
    /// Every read whose token is below this one is done: the reads in flight when it was queued
    /// (tokens are handed out in increasing order), not those made later.
    ReadsBefore(u64),
}

/// A Send (or the Close behind a Logout Response) waiting for RDMA Reads to complete.
#[derive(Debug)]
struct HeldOp {
    op: FabricOp,
    until: HeldUntil,
}

/// A connection speaking iSER: the core plus iSER framing and data movement.
#[derive(Debug)]
pub struct IserConnection {
    core: Connection<RemoteBuffers>,
    reads: IntMap<u64, PendingRead>,
    /// Writes whose data is being read, by task.
    writes: IntMap<TaskId, IserWrite>,
    /// Data buffers of writes whose data is all in, until the core executes them.
    complete: IntMap<TaskId, Buf>,
    /// Buffers of writes that ended while RDMA Reads into them were in flight: kept until the
    /// last of those completes, so the pool never hands out memory the NIC may still write.
    retired: IntMap<TaskId, RetiredWrite>,
    /// The task whose read data just went out, with the count of MaxBurstLength pieces it spans:
    /// the ExpDataSN of its SCSI Response.
    data_in_sequences: Option<(TaskId, u32)>,
    next_token: u64,
    /// No read below this token is in flight: where the search for the oldest read in flight
    /// resumes ([`IserConnection::oldest_read_in_flight`]).
    oldest_read: u64,
    /// Sends held back behind RDMA Reads that were in flight when they were queued (see
    /// [`ReadFence`]), in order; a later Send waits behind an earlier held one so responses keep
    /// their StatSN order. RDMA Reads and Writes never wait here: a read created later is not
    /// waited for, so the queue always drains.
    held: VecDeque<HeldOp>,
    /// Both sides agreed to Send-with-Invalidate in the CM exchange.
    send_with_invalidate: bool,
    ops: VecDeque<FabricOp>,
    /// The core closed the connection: nothing more is accepted from it.
    closed: bool,
    /// The transport failed the connection: no more Sends, only the Close.
    failed: bool,
    /// The Close reached `ops`.
    close_emitted: bool,
}

impl IserConnection {
    /// A new connection in the login phase. `send_with_invalidate` says whether the CM exchange
    /// agreed to it (see [`accept_private_data`]).
    pub fn new(
        config: Arc<CoreConfig>,
        local_addr: Option<SocketAddr>,
        send_with_invalidate: bool,
        now: Instant,
    ) -> Self {
        IserConnection {
            core: Connection::new(config, local_addr, now),
            reads: IntMap::default(),
            writes: IntMap::default(),
            complete: IntMap::default(),
            retired: IntMap::default(),
            data_in_sequences: None,
            next_token: 1,
            oldest_read: 1,
            held: VecDeque::new(),
            send_with_invalidate,
            ops: VecDeque::new(),
            closed: false,
            failed: false,
            close_emitted: false,
        }
    }

    /// True once a Close has been emitted.
    pub fn is_closed(&self) -> bool {
        self.close_emitted
    }

    /// The payload of one received Send.
    pub fn handle_receive(&mut self, message: &[u8], now: Instant) {
        match self.decode_receive(message, now) {
            Ok(Some(Received::Pdu(pdu, buffers))) => {
                self.core.handle_pdu_with_context(pdu, now, buffers)
            }
            Ok(Some(Received::Command(h, buffer, buffers))) => self
                .core
                .handle_scsi_command_with_buffer(h, buffer, now, buffers),
            Ok(None) => {}
            Err(reason) => {
                log::warn!("iSER receive: {reason}");
                self.core_close(CloseReason::ProtocolError(reason));
            }
        }
        self.pump();
    }

    /// Parses one Send: iSER header, then a whole PDU (no digests, at most 3 pad bytes); a SCSI
    /// Command comes with the buffers its iSER header advertises.
    fn decode_receive(&mut self, message: &[u8], now: Instant) -> Result<Option<Received>, String> {
        let header = IserHeader::decode(message).ok_or("Send shorter than the iSER header")?;
        match header.flags & 0xf0 {
            ISER_ISCSI_CTRL => {}
            ISER_HELLO => return Err("iSER Hello is not supported".into()),
            other => return Err(format!("unknown iSER opcode {other:#04x}")),
        }
        let rest = &message[ISER_HEADER_LEN..];
        if rest.len() < BHS_LEN {
            // LIO read short login Sends past their end until ib_isert.c `isert_login_recv_done`
            // learned to drop them ("login request length %u is too short"); we refuse them.
            return Err(format!(
                "Send of {} bytes carries no whole BHS",
                message.len()
            ));
        }
        let ahs_len = pdu::total_ahs_length(rest).map_err(|e| e.to_string())?;
        let data_len = pdu::data_segment_length(rest).map_err(|e| e.to_string())? as usize;
        if data_len > RECV_DATA_CAPACITY {
            return Err(format!(
                "data segment of {data_len} bytes exceeds {RECV_DATA_CAPACITY}"
            ));
        }
        let data_start = BHS_LEN + ahs_len;
        let data_end = data_start + data_len;
        if rest.len() < data_end {
            return Err(format!(
                "Send of {} bytes is shorter than its PDU ({} bytes)",
                message.len(),
                ISER_HEADER_LEN + data_end
            ));
        }
        let data = &rest[data_start..data_end];
        if let Ok(Header::ScsiCommand(h)) =
            Header::decode(&rest[..BHS_LEN], &rest[BHS_LEN..data_start])
        {
            if self.core.is_full_feature() {
                // Immediate data is copied once, out of the receive buffer into the task's
                // buffer (sized for the whole transfer).
                let capacity = self.core.command_buffer_capacity(&h, data.len());
                let mut buffer = mem_ffi::pool::global().with_capacity(capacity);
                buffer.extend_from_slice(data);
                count_payload_copy(data.len());
                let buffers = Self::remote_buffers(&header, data.len());
                return Ok(Some(Received::Command(h, buffer, buffers)));
            }
        }
        // Text (and anything before full feature phase) is copied once, out of the receive
        // buffer.
        count_payload_copy(data_len);
        let pdu = match Pdu::decode(&rest[..BHS_LEN], &rest[BHS_LEN..data_start], data.to_vec()) {
            Ok(pdu) => pdu,
            Err(error) => {
                // Stream framing is not at stake (one PDU per Send): answer like over TCP.
                self.core.handle_frame_error(
                    super::framing::FrameError::Malformed {
                        header: rest[..data_start].to_vec(),
                        error,
                    },
                    now,
                );
                return Ok(None);
            }
        };
        // STags count only on SCSI Commands: only those get WSV/RSV (Linux iser_initiator.c
        // `iser_prepare_read_cmd`/`iser_prepare_write_cmd`; libiscsi lib/iser.c
        // `iser_send_command`).
        let buffers = match &pdu.header {
            Header::ScsiCommand(_) => Self::remote_buffers(&header, pdu.data.len()),
            _ => RemoteBuffers::default(),
        };
        Ok(Some(Received::Pdu(pdu, buffers)))
    }

    /// The initiator's buffers a SCSI Command's iSER header advertises.
    fn remote_buffers(header: &IserHeader, immediate: usize) -> RemoteBuffers {
        RemoteBuffers {
            read: (header.flags & ISER_RSV != 0).then_some((header.read_stag, header.read_va)),
            write: (header.flags & ISER_WSV != 0).then_some((header.write_stag, header.write_va)),
            unsolicited: immediate as u32,
        }
    }

    /// Answer to [`FabricOp::BindSession`].
    pub fn handle_session_bound(&mut self, result: Result<u16, LoginStatus>) {
        self.core.handle_session_bound(result);
        self.pump();
    }

    /// Answer to [`FabricOp::Execute`].
    pub fn handle_scsi_complete(&mut self, id: TaskId, outcome: ScsiOutcome) {
        self.core.handle_scsi_complete(id, outcome);
        self.pump();
    }

    /// Timers (login deadline, NOP-In keep-alive).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.pump();
    }

    /// Server stop or session reinstatement.
    pub fn handle_shutdown(&mut self) {
        self.core.handle_shutdown();
        self.pump();
    }

    /// When [`IserConnection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// The next fabric operation.
    pub fn poll_op(&mut self) -> Option<FabricOp> {
        self.ops.pop_front()
    }

    fn core_close(&mut self, reason: CloseReason) {
        // Through the core, so it stops too; its Close action reaches the fabric in pump().
        // Nothing the core queued before it (a task's response) goes out any more.
        self.failed = true;
        self.core.handle_transport_error(reason);
    }

    /// Queues an operation that waits for nothing: RDMA Reads and Writes, session and SCSI
    /// requests never wait behind held Sends (a Data-In RDMA Write still precedes its own
    /// response, which is queued after it).
    fn emit(&mut self, op: FabricOp) {
        if self.closed {
            return;
        }
        if let FabricOp::Close(reason) = op {
            self.closed = true;
            if reason == CloseReason::Logout && !self.held.is_empty() {
                // The Logout Response is held: close only after it went out.
                self.held.push_back(HeldOp {
                    op: FabricOp::Close(reason),
                    until: HeldUntil::Nothing,
                });
            } else {
                self.close_at_once(reason);
            }
            return;
        }
        self.ops.push_back(op);
    }

    /// Queues a Send behind the RDMA Reads `fence` names, and behind any Send already held.
    fn emit_send(&mut self, bytes: SendBytes, invalidate: Option<u32>, fence: ReadFence) {
        if self.closed || self.failed {
            return;
        }
        let until = match fence {
            ReadFence::Task(task) if self.reads_in_flight(task) > 0 => HeldUntil::Task(task),
            ReadFence::All if !self.reads.is_empty() => {
                log::debug!(
                    "TMF or Logout Response held behind {} RDMA Reads",
                    self.reads.len()
                );
                HeldUntil::ReadsBefore(self.next_token)
            }
            _ => HeldUntil::Nothing,
        };
        let op = FabricOp::Send { bytes, invalidate };
        if until == HeldUntil::Nothing && self.held.is_empty() {
            self.ops.push_back(op);
        } else {
            self.held.push_back(HeldOp { op, until });
        }
    }

    /// Emits the Close now, dropping whatever was held (nothing more goes out).
    fn close_at_once(&mut self, reason: CloseReason) {
        if self.close_emitted {
            return;
        }
        self.closed = true;
        self.close_emitted = true;
        self.held.clear();
        self.ops.push_back(FabricOp::Close(reason));
    }

    /// Releases held ops, in order, up to the first that still waits for a read.
    fn release_held(&mut self) {
        while let Some(&HeldOp { until, .. }) = self.held.front() {
            let ready = match until {
                HeldUntil::Nothing => true,
                HeldUntil::Task(task) => self.reads_in_flight(task) == 0,
                HeldUntil::ReadsBefore(token) => self.oldest_read_in_flight() >= token,
            };
            if !ready {
                break;
            }
            let held = self.held.pop_front().expect("checked");
            if matches!(held.op, FabricOp::Close(_)) {
                self.close_emitted = true;
            }
            self.ops.push_back(held.op);
        }
    }

    /// Translates the core's actions into fabric operations.
    fn pump(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send(pdu) => self.translate_send(pdu),
                Action::PutData {
                    task, data, range, ..
                } => self.put_data(task, data, range),
                Action::GetData {
                    task,
                    buffer,
                    range,
                    ..
                } => self.get_data(task, buffer, range),
                Action::Respond {
                    task,
                    status,
                    sense,
                    residual,
                    numbers,
                } => self.respond(task, status, &sense, residual, numbers),
                Action::Release(task) => self.forget(task.id),
                // No digests over iSER; the core's frame settings do not apply.
                Action::SetFrameSettings(_) => {}
                Action::BindSession(request) => self.emit(FabricOp::BindSession(request)),
                Action::Execute(mut task) => {
                    if let Some(buffer) = self.complete.remove(&task.id) {
                        task.data_out = buffer;
                    }
                    self.emit(FabricOp::Execute(task))
                }
                Action::Close(reason) => self.emit(FabricOp::Close(reason)),
            }
        }
        self.release_held();
    }

    /// A control PDU of the core.
    fn translate_send(&mut self, pdu: Pdu) {
        match pdu.header {
            Header::NopIn(h) => {
                // NOP-In carries no data over iSER (Linux drivers/scsi/libiscsi.c
                // `__iscsi_complete_pdu` fails the connection on a NOP-In with data).
                self.send(Pdu::new(Header::NopIn(h)), ReadFence::None);
            }
            Header::TaskMgmtResponse(_) | Header::LogoutResponse(_) => {
                self.send(pdu, ReadFence::All)
            }
            Header::LoginResponse(ref h)
                if h.transit && h.next_stage == Stage::FullFeature && h.status_class == 0 =>
            {
                self.emit(FabricOp::EnterFullFeature);
                self.send(pdu, ReadFence::None)
            }
            _ => self.send(pdu, ReadFence::None),
        }
    }

    /// A Send that ends no task.
    fn send(&mut self, pdu: Pdu, fence: ReadFence) {
        self.emit_send(SendBytes::new(pdu), None, fence);
    }

    /// The SCSI Response that ends a task: the last use of its STags, which it invalidates when
    /// both sides agreed and the task advertised exactly one (never for a command with both, as
    /// Linux checks the rkey against each direction: iser_initiator.c `iser_check_remote_inv`). It
    /// waits for the task's RDMA Reads still in flight (the core may end a task early, e.g. after a
    /// bad Data-Out that came in a Send). Status never rides on data over iSER (RFC 7145 §7.3.5).
    fn respond(
        &mut self,
        task: TaskRef<RemoteBuffers>,
        status: u8,
        sense: &[u8],
        residual: Residual,
        numbers: SequenceNumbers,
    ) {
        self.forget(task.id);
        let exp_data_sn = match self.data_in_sequences.take() {
            Some((id, sequences)) if id == task.id => sequences,
            _ => 0,
        };
        let pdu = scsi_response_pdu(task.itt, status, sense, residual, numbers, exp_data_sn);
        let invalidate = match task.context {
            RemoteBuffers {
                read: Some((stag, _)),
                write: None,
                ..
            }
            | RemoteBuffers {
                read: None,
                write: Some((stag, _)),
                ..
            } if self.send_with_invalidate => Some(stag),
            _ => None,
        };

        self.emit_send(SendBytes::new(pdu), invalidate, ReadFence::Task(task.id));
    }

    /// Read data → one RDMA Write to ReadVA + offset; the SCSI Response follows as its own Send.
    fn put_data(&mut self, task: TaskRef<RemoteBuffers>, data: Payload, range: Range<u32>) {
        let Some((stag, va)) = task.context.read else {
            log::warn!(
                "READ data for ITT {:#x} but the initiator advertised no read buffer",
                task.itt
            );
            self.core_close(CloseReason::ProtocolError(
                "Data-In without a Read STag".into(),
            ));
            return;
        };
        // ExpDataSN counts the sequences the data would take over TCP, as before iSER skipped
        // the Data-In PDUs.
        let max_burst = self.core.params().max_burst_length.max(512);
        let len = range.end.saturating_sub(range.start);
        self.data_in_sequences = Some((task.id, len.div_ceil(max_burst)));
        let end = (range.end as usize).min(data.len());
        let start = (range.start as usize).min(end);
        if start < end {
            self.emit(FabricOp::RdmaWrite {
                stag,
                va: va.wrapping_add(u64::from(range.start)),
                data,
                range: start..end,
            });
        }
    }
}
