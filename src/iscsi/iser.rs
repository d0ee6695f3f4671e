//! iSER (RFC 7145) on top of the core, still without I/O: framing of PDUs in RDMA Sends, and the
//! iSER datamover, which carries out the core's data actions with RDMA: [`Action::PutData`] is an
//! RDMA Write to the initiator's read buffer, [`Action::GetData`] RDMA Reads of the whole
//! solicited range at once from its write buffer, [`Action::Respond`] the SCSI Response Send. No
//! Data-In, R2T or Data-Out PDU is made or parsed for data that moves by RDMA. The transport only
//! posts what [`FabricOp`]s say and reports completions back.
//!
//! Byte-level facts come from the project's protocol brief (docs: `iser-brief.md`): §3 the 28-byte
//! header, §4 buffers, §6 data movement. The core negotiates InitialR2T=Yes for iSER, so the only
//! data-out that arrives in Sends is immediate data.

use std::collections::hash_map::Entry;
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

/// Length of the iSER control-type header in front of every PDU.
pub const ISER_HEADER_LEN: usize = 28;
/// Data bytes one of our receive buffers holds beyond the headers: the TargetRecvDataSegmentLength
/// we agree to (brief §4.2: 76 + 8192 bytes).
pub const RECV_DATA_CAPACITY: usize = 8192;
/// Bytes a receive buffer needs: iSER header, BHS, room for an extended-CDB AHS, data.
pub const RECV_BUFFER_LEN: usize = ISER_HEADER_LEN + BHS_LEN + 64 + RECV_DATA_CAPACITY;

/// iSER opcode (high nibble of byte 0): an iSCSI control-type PDU follows.
const ISER_ISCSI_CTRL: u8 = 0x10;
/// iSER opcode of a Hello message, which no initiator we serve sends (brief §3.2).
const ISER_HELLO: u8 = 0x20;
/// Write STag valid.
const ISER_WSV: u8 = 0x08;
/// Read STag valid.
const ISER_RSV: u8 = 0x04;

/// The 28-byte iSER header (brief §3.1); all fields big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IserHeader {
    pub flags: u8,
    pub write_stag: u32,
    pub write_va: u64,
    pub read_stag: u32,
    pub read_va: u64,
}

impl IserHeader {
    /// The header of every target-to-initiator Send: control type, no STags.
    pub const CONTROL: IserHeader = IserHeader {
        flags: ISER_ISCSI_CTRL,
        write_stag: 0,
        write_va: 0,
        read_stag: 0,
        read_va: 0,
    };

    /// Parses the first 28 bytes of a received Send.
    pub fn decode(bytes: &[u8]) -> Option<IserHeader> {
        let b = bytes.get(..ISER_HEADER_LEN)?;
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| (u64::from(u32_at(at)) << 32) | u64::from(u32_at(at + 4));
        Some(IserHeader {
            flags: b[0],
            write_stag: u32_at(4),
            write_va: u64_at(8),
            read_stag: u32_at(16),
            read_va: u64_at(20),
        })
    }

    /// Serialises the header.
    pub fn encode(&self) -> [u8; ISER_HEADER_LEN] {
        let mut b = [0u8; ISER_HEADER_LEN];
        b[0] = self.flags;
        b[4..8].copy_from_slice(&self.write_stag.to_be_bytes());
        b[8..16].copy_from_slice(&self.write_va.to_be_bytes());
        b[16..20].copy_from_slice(&self.read_stag.to_be_bytes());
        b[20..28].copy_from_slice(&self.read_va.to_be_bytes());
        b
    }
}

/// CM private-data flag: zero-based virtual addressing not supported (brief §2.2).
const CM_NO_ZBVA: u8 = 0x80;
/// CM private-data flag: Send-with-Invalidate not supported.
const CM_NO_SEND_WITH_INVALIDATE: u8 = 0x40;

/// Whether the initiator accepts Send-with-Invalidate: its connect request leaves 0x40 clear
/// (ib_iser does by default; libiscsi always sets it). The private data is parsed from its start,
/// whatever its padded length.
pub fn initiator_allows_send_with_invalidate(request_private_data: &[u8]) -> bool {
    request_private_data
        .first()
        .is_some_and(|flags| flags & CM_NO_SEND_WITH_INVALIDATE == 0)
}

/// The 4 bytes of CM private data we answer a connect request with (brief §2.3): no zero-based
/// addressing, and Send-with-Invalidate exactly when the initiator allows it.
pub fn accept_private_data(request_private_data: &[u8]) -> [u8; 4] {
    let mut flags = CM_NO_ZBVA;
    if !initiator_allows_send_with_invalidate(request_private_data) {
        flags |= CM_NO_SEND_WITH_INVALIDATE;
    }
    [flags, 0, 0, 0]
}

/// Zero bytes to pad a data segment with.
const PAD: [u8; 3] = [0; 3];

/// The payload of one Send of ours: the iSER header, the PDU's header (BHS, inline) and its data
/// segment, padded to 4 bytes, kept as parts so that encoding a PDU allocates nothing: the data
/// segment is the PDU's own `Vec`, moved, which is empty (no allocation) for a SCSI Response
/// without sense data, a NOP-In, a TMF Response... The transport copies the parts, in order,
/// into registered memory ([`SendBytes::parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBytes {
    header: pdu::HeaderBytes,
    data: Vec<u8>,
}

impl SendBytes {
    /// Encodes a PDU as the payload of one Send.
    pub fn new(pdu: Pdu) -> Self {
        SendBytes {
            header: pdu.header.encode_bytes(pdu.data.len()),
            data: pdu.data,
        }
    }

    /// Bytes of the whole Send.
    pub fn len(&self) -> usize {
        self.parts().iter().map(|part| part.len()).sum()
    }

    /// Always false: a Send carries at least its headers.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The Send's bytes in order: iSER header, BHS (and any AHS), data segment, pad bytes.
    pub fn parts(&self) -> [&[u8]; 4] {
        [
            &CONTROL_HEADER,
            &self.header,
            &self.data,
            &PAD[..pdu::padding(self.data.len())],
        ]
    }

    /// The Send's bytes in one piece (for tests and the fuzz target).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// [`IserHeader::CONTROL`], encoded.
const CONTROL_HEADER: [u8; ISER_HEADER_LEN] = {
    let mut b = [0u8; ISER_HEADER_LEN];
    b[0] = ISER_ISCSI_CTRL;
    b
};

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
    /// LOGICAL UNIT RESET / TARGET RESET of SCSI state (as [`Action::Reset`]).
    Reset { lun: Option<u64> },
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
    /// them (brief §1 rule 8, §6.2).
    unsolicited: u32,
}

/// Where an RDMA Read lands: `len` bytes at `offset` of a pool arena (inside the task's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlacement {
    pub arena: mem_ffi::Arena,
    pub offset: usize,
    pub len: usize,
}

/// One parsed Send.
enum Received {
    /// A whole PDU, with the buffers of a SCSI Command.
    Pdu(Pdu, RemoteBuffers),
    /// A SCSI Command in full feature phase, its immediate data already in its task buffer.
    Command(pdu::ScsiCommand, Buf, RemoteBuffers),
}

/// An RDMA Read in flight: one piece of a write's solicited data.
#[derive(Debug, Clone)]
struct PendingRead {
    task: TaskId,
    /// Where its bytes go in the task's buffer.
    range: Range<u32>,
}

/// A write whose data is being read: its buffer (sized to the whole transfer, immediate data at
/// the front) and which pieces have landed.
#[derive(Debug)]
struct IserWrite {
    /// The task's pool buffer, its length the whole transfer: bytes past `received` are not
    /// the initiator's yet (old bytes of the pool until their RDMA Read lands).
    buffer: Buf,
    /// Bytes in from offset 0, in order: what the core has been told.
    received: u32,
    /// Pieces that completed ahead of an earlier one (completions of one QP come in order, so
    /// this stays empty in practice), as (start, end).
    landed: Vec<(u32, u32)>,
    /// Its RDMA Reads in flight.
    reads: u32,
}

/// The buffer of a write that ended while RDMA Reads into it were in flight.
#[derive(Debug)]
struct RetiredWrite {
    buffer: Buf,
    /// Its RDMA Reads still in flight: the buffer goes back to the pool when none is left.
    reads: u32,
}

/// Which RDMA Reads a Send must not overtake (brief §6.4: a Send that lets the initiator free a
/// buffer may not pass an RDMA Read of it).
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
            // LIO crashed on short login Sends (brief); we just refuse them.
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
        // STags count only on SCSI Commands (brief §3.3).
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

    /// The bytes RDMA Read `token` lands on, for a stand-in of the fabric (the tests, the fuzz
    /// target) to write; the driver posts the read where [`IserConnection::rdma_read_placement`]
    /// says instead. `None` when the task ended meanwhile (the bytes are not wanted).
    pub fn rdma_read_destination(&mut self, token: u64) -> Option<&mut [u8]> {
        let read = self.reads.get(&token)?;
        let write = self.writes.get_mut(&read.task)?;
        write
            .buffer
            .get_mut(read.range.start as usize..read.range.end as usize)
    }

    /// Where RDMA Read `token` lands: its piece of the task's pool buffer, as the buffer's arena
    /// (for the memory registration that covers it) and the byte offset in that arena. `None`
    /// when the read is no longer wanted (its task ended before it was posted): report it
    /// complete without posting it.
    pub fn rdma_read_placement(&self, token: u64) -> Option<ReadPlacement> {
        let read = self.reads.get(&token)?;
        let write = self.writes.get(&read.task)?;
        let range = read.range.start as usize..read.range.end as usize;
        write.buffer.get(range.clone())?;
        Some(ReadPlacement {
            arena: write.buffer.arena_extent()?,
            offset: write.buffer.arena_offset()? + range.start,
            len: range.len(),
        })
    }

    /// Forgets (leaks) the buffers that RDMA Reads still in flight may write: for a teardown
    /// whose QP drain failed, when the device may still write them.
    pub fn leak_buffers_under_reads(&mut self) {
        for (task, write) in std::mem::take(&mut self.writes) {
            if write.reads > 0 {
                std::mem::forget(write.buffer);
            } else {
                self.writes.insert(task, write);
            }
        }
        // Every retired buffer has reads in flight.
        for (_, retired) in self.retired.drain() {
            std::mem::forget(retired.buffer);
        }
    }

    /// An RDMA Read finished (its bytes landed where [`IserConnection::rdma_read_placement`]
    /// said): the core learns which data-out is in.
    pub fn handle_rdma_read_complete(&mut self, token: u64, now: Instant) {
        self.core.record_activity(now);
        if let Some(read) = self.read_finished(token) {
            self.read_landed(read);
        }
        self.pump();
    }

    /// An RDMA Read failed (remote access error, flush): the connection cannot go on.
    pub fn handle_rdma_read_failed(&mut self, token: u64) {
        if let Some(read) = self.reads.remove(&token) {
            self.read_done(read.task);
        }
        let reason = CloseReason::ProtocolError("RDMA Read failed".into());
        // At once: whatever is held (a Logout Response) must not go out on a broken connection.
        self.close_at_once(reason.clone());
        self.core_close(reason);
        self.pump();
    }

    /// Records a landed piece and tells the core what is now in, in order.
    fn read_landed(&mut self, read: PendingRead) {
        let Some(write) = self.writes.get_mut(&read.task) else {
            return;
        };
        let before = write.received;
        if read.range.start == write.received {
            // In order, as always in practice: `landed` stays empty (and unallocated).
            write.received = read.range.end;
        } else {
            write.landed.push((read.range.start, read.range.end));
        }
        while let Some(pos) = write
            .landed
            .iter()
            .position(|&(start, _)| start == write.received)
        {
            write.received = write.landed.swap_remove(pos).1;
        }
        let after = write.received;
        if after == before {
            return;
        }
        if after as usize >= write.buffer.len() {
            let write = self.writes.remove(&read.task).expect("found above");
            self.complete.insert(read.task, write.buffer);
        }
        self.core.handle_data_received(read.task, before..after);
    }

    /// Forgets a read that completed; ops held for it may go ([`IserConnection::release_held`]).
    fn read_finished(&mut self, token: u64) -> Option<PendingRead> {
        let read = self.reads.remove(&token)?;
        self.read_done(read.task);
        Some(read)
    }

    /// Counts off a task's read that completed or failed, and returns an ended write's buffer to
    /// the pool once no RDMA Read into it is in flight.
    fn read_done(&mut self, task: TaskId) {
        if let Some(write) = self.writes.get_mut(&task) {
            write.reads = write.reads.saturating_sub(1);
        } else if let Entry::Occupied(mut retired) = self.retired.entry(task) {
            let reads = &mut retired.get_mut().reads;
            *reads = reads.saturating_sub(1);
            if *reads == 0 {
                retired.remove();
            }
        }
    }

    /// RDMA Reads in flight into a task's buffer.
    fn reads_in_flight(&self, task: TaskId) -> u32 {
        match self.writes.get(&task) {
            Some(write) => write.reads,
            None => self.retired.get(&task).map_or(0, |retired| retired.reads),
        }
    }

    /// The token of the oldest RDMA Read in flight, or the next token when none is. The search
    /// resumes where the last one stopped, so it costs one lookup per read over the connection's
    /// life.
    fn oldest_read_in_flight(&mut self) -> u64 {
        while self.oldest_read < self.next_token && !self.reads.contains_key(&self.oldest_read) {
            self.oldest_read += 1;
        }
        self.oldest_read
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
                Action::Reset { lun } => self.emit(FabricOp::Reset { lun }),
                Action::Close(reason) => self.emit(FabricOp::Close(reason)),
            }
        }
        self.release_held();
    }

    /// A control PDU of the core.
    fn translate_send(&mut self, pdu: Pdu) {
        match pdu.header {
            Header::NopIn(h) => {
                // NOP-In carries no data over iSER (brief §1 rule 15).
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

    /// Drops what the datamover holds for a task that ended. Its reads still in flight stay
    /// tracked, for the Sends that must wait for them; their bytes are not wanted.
    fn forget(&mut self, task: TaskId) {
        if let Some(write) = self.writes.remove(&task) {
            if write.reads > 0 {
                let retired = RetiredWrite {
                    buffer: write.buffer,
                    reads: write.reads,
                };
                self.retired.insert(task, retired);
            }
        }
        self.complete.remove(&task);
    }

    /// The SCSI Response that ends a task: the last use of its STags, which it invalidates when
    /// both sides agreed and the task advertised exactly one (brief §6.3: never for a command
    /// with both, as Linux checks the rkey against each direction). It waits for the task's RDMA
    /// Reads still in flight (the core may end a task early, e.g. after a bad Data-Out that came
    /// in a Send). Status never rides on data over iSER (brief §1 rule 10).
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

    /// A write's solicited data → RDMA Reads of the whole range at once from WriteVA + (offset −
    /// immediate bytes) (brief §1 rule 8), in pieces of at most MaxBurstLength; the driver keeps
    /// as many in flight as the initiator's RDMA Read depth allows.
    fn get_data(&mut self, task: TaskRef<RemoteBuffers>, buffer: Buf, range: Range<u32>) {
        if range.is_empty() {
            self.complete.insert(task.id, buffer);
            return;
        }
        let buffers = task.context;
        let Some((stag, va)) = buffers.write else {
            log::warn!(
                "WRITE for ITT {:#x} needs data but the initiator advertised no write buffer",
                task.itt
            );
            self.core_close(CloseReason::ProtocolError(
                "solicited data without a Write STag".into(),
            ));
            return;
        };
        let Some(relative) = range.start.checked_sub(buffers.unsolicited) else {
            self.core_close(CloseReason::ProtocolError(
                "solicited data below the immediate data".into(),
            ));
            return;
        };
        let mut buffer = buffer;
        // The core sized the buffer for the whole transfer.
        buffer.set_len(range.end as usize);
        let piece = self.core.params().max_burst_length.max(512);
        self.writes.insert(
            task.id,
            IserWrite {
                buffer,
                received: range.start,
                landed: Vec::new(),
                reads: (range.end - range.start).div_ceil(piece),
            },
        );
        let mut offset = range.start;
        while offset < range.end {
            let len = (range.end - offset).min(piece);
            let token = self.next_token;
            self.next_token += 1;
            self.reads.insert(
                token,
                PendingRead {
                    task: task.id,
                    range: offset..offset + len,
                },
            );
            self.emit(FabricOp::RdmaRead {
                token,
                stag,
                va: va.wrapping_add(u64::from(relative + (offset - range.start))),
                len,
            });
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{
        DataOut, LoginRequest, LoginResponse, LogoutRequest, NopIn, NopOut, ScsiCommand,
        TaskAttribute, TaskMgmtRequest, TaskMgmtResponse,
    };
    use crate::iscsi::text::{self, TargetPolicy};
    use crate::iscsi::TargetDescriptor;
    use std::time::Duration;

    const TARGET: &str = "iqn.2026-11.io.iser-target:t";

    fn config() -> Arc<CoreConfig> {
        Arc::new(CoreConfig {
            targets: vec![TargetDescriptor {
                name: TARGET.into(),
                allowed_initiators: vec![],
                luns: vec![0],
                auth: None,
                initiator_auth: vec![],
            }],
            policy: TargetPolicy {
                max_recv_data_segment_length: RECV_DATA_CAPACITY as u32,
                max_burst_length: 512 * 1024,
                first_burst_length: 65536,
                max_outstanding_r2t: 1,
                digests_allowed: false,
                require_initial_r2t: true,
                iser: true,
            },
            queue_depth: 16,
            nop_interval: Some(Duration::from_secs(15)),
            ..CoreConfig::default()
        })
    }

    fn send_bytes(header: IserHeader, pdu: &Pdu) -> Vec<u8> {
        let mut out = header.encode().to_vec();
        out.extend_from_slice(&pdu.encode_header());
        out.extend_from_slice(&pdu.data);
        out
    }

    /// The Send of a 12 KiB WRITE with ITT `itt` whose first 4 KiB come as immediate data; the
    /// rest is to be fetched from WriteVA 0x9000_1000 (STag 0x77). ReadVA is advertised too.
    fn write_with_immediate_data(itt: u32) -> Vec<u8> {
        let mut cmd = command(itt, 100, false, true, 3 * 4096, 0x2a);
        cmd.final_flag = true;
        send_bytes(
            both_stags(),
            &Pdu::with_data(Header::ScsiCommand(cmd), vec![1u8; 4096]),
        )
    }

    /// An iSER header advertising a write STag (0x77 at 0x9000_1000) and a read STag (0x78 at
    /// 0x7000_0000).
    fn both_stags() -> IserHeader {
        IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV | ISER_RSV,
            write_stag: 0x77,
            write_va: 0x9000_1000,
            read_stag: 0x78,
            read_va: 0x7000_0000,
        }
    }

    fn ctrl(pdu: &Pdu) -> Vec<u8> {
        send_bytes(IserHeader::CONTROL, pdu)
    }

    /// Decodes the PDU inside a Send we emitted.
    fn sent_pdu(bytes: &SendBytes) -> Pdu {
        let bytes = &bytes.to_vec()[..];
        assert_eq!(bytes.len(), bytes.len().next_multiple_of(4));
        assert_eq!(IserHeader::decode(bytes), Some(IserHeader::CONTROL));
        let rest = &bytes[ISER_HEADER_LEN..];
        let dl = pdu::data_segment_length(rest).unwrap() as usize;
        assert!(
            rest.len() - BHS_LEN - dl < 4,
            "at most 3 pad bytes (brief R-e)"
        );
        Pdu::decode(&rest[..BHS_LEN], &[], rest[BHS_LEN..BHS_LEN + dl].to_vec()).unwrap()
    }

    /// The driver's part of a finished RDMA Read: place its bytes, then report it.
    fn complete_read(conn: &mut IserConnection, token: u64, data: Vec<u8>, now: Instant) {
        if let Some(destination) = conn.rdma_read_destination(token) {
            destination.copy_from_slice(&data);
        }
        conn.handle_rdma_read_complete(token, now);
    }

    fn drain(conn: &mut IserConnection) -> Vec<FabricOp> {
        std::iter::from_fn(|| conn.poll_op()).collect()
    }

    /// Logs in a normal iSER session the way ib_iser does (one operational request) and returns
    /// the final Login Response and its keys.
    fn login(conn: &mut IserConnection, now: Instant) -> (LoginResponse, Vec<text::KeyValue>) {
        let keys = text::encode(&[
            (
                "InitiatorName".to_string(),
                "iqn.2026-11.test:host".to_string(),
            ),
            ("TargetName".to_string(), TARGET.to_string()),
            ("SessionType".to_string(), "Normal".to_string()),
            ("InitialR2T".to_string(), "No".to_string()),
            ("ImmediateData".to_string(), "Yes".to_string()),
            ("MaxBurstLength".to_string(), "16776192".to_string()),
            ("FirstBurstLength".to_string(), "262144".to_string()),
            ("MaxOutstandingR2T".to_string(), "1".to_string()),
            ("ErrorRecoveryLevel".to_string(), "0".to_string()),
            ("RDMAExtensions".to_string(), "Yes".to_string()),
            (
                "InitiatorRecvDataSegmentLength".to_string(),
                "262144".to_string(),
            ),
            (
                "TargetRecvDataSegmentLength".to_string(),
                "8192".to_string(),
            ),
        ]);
        let request = Header::LoginRequest(LoginRequest {
            transit: true,
            continue_flag: false,
            current_stage: Stage::Operational,
            next_stage: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0, 2, 0x3d, 0, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 100,
            exp_stat_sn: 7,
        });
        conn.handle_receive(&ctrl(&Pdu::with_data(request, keys)), now);
        let ops = drain(conn);
        assert!(
            matches!(ops.as_slice(), [FabricOp::BindSession(_)]),
            "{ops:?}"
        );
        conn.handle_session_bound(Ok(5));
        let ops = drain(conn);
        // The full-feature buffers are posted before the final Login Response goes out.
        let [FabricOp::EnterFullFeature, FabricOp::Send { bytes, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let pdu = sent_pdu(bytes);
        let Header::LoginResponse(resp) = pdu.header else {
            panic!()
        };
        (resp, text::parse(&pdu.data).unwrap())
    }

    /// A connection logged in as ib_iser does, with Send-with-Invalidate agreed or not.
    fn logged_in(send_with_invalidate: bool) -> (IserConnection, Instant) {
        let now = Instant::now();
        let mut conn = IserConnection::new(config(), None, send_with_invalidate, now);
        login(&mut conn, now);
        (conn, now)
    }

    fn command(itt: u32, cmd_sn: u32, read: bool, write: bool, edtl: u32, cdb0: u8) -> ScsiCommand {
        let mut cdb = vec![0u8; 16];
        cdb[0] = cdb0;
        ScsiCommand {
            immediate: false,
            final_flag: true,
            read,
            write,
            attribute: TaskAttribute::Simple,
            lun: [0; 8],
            itt,
            expected_data_length: edtl,
            cmd_sn,
            exp_stat_sn: 8,
            cdb: cdb.into(),
            bidi_read_length: None,
        }
    }

    #[test]
    fn a_send_is_its_headers_and_data_padded_to_four_bytes() {
        for data_len in [0usize, 1, 3, 4, 18] {
            let pdu = Pdu::with_data(Header::NopIn(NopIn::default()), vec![9; data_len]);
            let header = pdu.encode_header();
            let send = SendBytes::new(pdu);
            let bytes = send.to_vec();
            assert_eq!(send.len(), bytes.len());
            assert_eq!(
                bytes.len(),
                (ISER_HEADER_LEN + BHS_LEN + data_len).next_multiple_of(4)
            );
            assert_eq!(&bytes[..ISER_HEADER_LEN], &IserHeader::CONTROL.encode()[..]);
            assert_eq!(&bytes[ISER_HEADER_LEN..][..BHS_LEN], &header[..]);
            let data = &bytes[ISER_HEADER_LEN + BHS_LEN..];
            assert!(data[..data_len].iter().all(|&b| b == 9));
            assert!(data[data_len..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn login_answers_only_keys_open_iscsi_knows() {
        let now = Instant::now();
        let mut conn = IserConnection::new(config(), None, false, now);
        let (resp, keys) = login(&mut conn, now);
        assert!(resp.transit && resp.next_stage == Stage::FullFeature);
        assert_eq!(resp.tsih, 5);
        assert_eq!(resp.exp_cmd_sn, 100);
        assert_eq!(
            resp.max_cmd_sn, 115,
            "window of queue_depth 16 (brief §1 rule 14)"
        );
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("RDMAExtensions"), Some("Yes"));
        assert_eq!(
            get("InitialR2T"),
            Some("Yes"),
            "forced for iSER (brief §1 rule 16)"
        );
        assert_eq!(get("TargetRecvDataSegmentLength"), Some("8192"));
        assert_eq!(get("TargetPortalGroupTag"), Some("1"));
        assert_eq!(
            get("MaxRecvDataSegmentLength"),
            None,
            "never over iSER (brief §1 rule 5)"
        );
        // Every key answered is one open-iscsi's get_op_params_text_keys recognises (brief §5.3).
        let known = [
            "TargetAlias",
            "TargetAddress",
            "TargetPortalGroupTag",
            "InitialR2T",
            "ImmediateData",
            "MaxRecvDataSegmentLength",
            "FirstBurstLength",
            "MaxBurstLength",
            "HeaderDigest",
            "DataDigest",
            "DefaultTime2Wait",
            "DefaultTime2Retain",
            "OFMarker",
            "OFMarkInt",
            "IFMarker",
            "IFMarkInt",
            "DataPDUInOrder",
            "DataSequenceInOrder",
            "MaxOutstandingR2T",
            "MaxConnections",
            "ErrorRecoveryLevel",
            "RDMAExtensions",
            "InitiatorRecvDataSegmentLength",
            "TargetRecvDataSegmentLength",
        ];
        for (key, _) in &keys {
            assert!(
                known.contains(&key.as_str()),
                "open-iscsi would fail on {key}"
            );
        }
    }

    #[test]
    fn read_becomes_rdma_write_then_response() {
        let (mut conn, now) = logged_in(true);
        let iser = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_RSV,
            read_stag: 0xabc,
            read_va: 0x7000_0000,
            ..IserHeader::default()
        };
        let cmd = Pdu::new(Header::ScsiCommand(command(
            0x1000_0001,
            100,
            true,
            false,
            4096,
            0x28,
        )));
        conn.handle_receive(&send_bytes(iser, &cmd), now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        // The command produced 8 KiB but the initiator's buffer is 4 KiB: overflow.
        let outcome = ScsiOutcome {
            status: 0,
            sense: Default::default(),
            data_in: mem_ffi::Buf::copy_from_slice(&[0x5a; 8192]).into(),
            data_out_length: 0,
        };
        conn.handle_scsi_complete(task.id, outcome);
        let ops = drain(&mut conn);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!(
            ops[0],
            FabricOp::RdmaWrite {
                stag: 0xabc,
                va: 0x7000_0000,
                data: mem_ffi::Buf::copy_from_slice(&[0x5a; 8192]).into(),
                range: 0..4096,
            }
        );
        let FabricOp::Send { bytes, invalidate } = &ops[1] else {
            panic!()
        };
        let Header::ScsiResponse(resp) = sent_pdu(bytes).header else {
            panic!()
        };
        assert_eq!(
            resp.itt, 0x1000_0001,
            "ITT echoed verbatim (brief §1 rule 13)"
        );
        assert!(resp.overflow && !resp.underflow);
        assert_eq!(resp.residual_count, 4096);
        assert_eq!(
            *invalidate,
            Some(0xabc),
            "the response invalidates the read STag"
        );
    }

    /// Sends a command with the given iSER header and completes it with `outcome`; returns the
    /// `invalidate` of the SCSI Response's Send.
    fn response_invalidation(swi: bool, iser: IserHeader, read: bool, write: bool) -> Option<u32> {
        let (mut conn, now) = logged_in(swi);
        let edtl = if read || write { 512 } else { 0 };
        let data = if write { vec![7u8; 512] } else { vec![] };
        let cmd = command(
            0x50,
            100,
            read,
            write,
            edtl,
            if write { 0x2a } else { 0x28 },
        );
        conn.handle_receive(
            &send_bytes(iser, &Pdu::with_data(Header::ScsiCommand(cmd), data)),
            now,
        );
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let outcome = ScsiOutcome {
            status: 0,
            sense: Default::default(),
            data_in: mem_ffi::Buf::copy_from_slice(&if read { vec![1; 512] } else { vec![] })
                .into(),
            data_out_length: if write { 512 } else { 0 },
        };
        conn.handle_scsi_complete(task.id, outcome);
        let ops = drain(&mut conn);
        match ops.last() {
            Some(FabricOp::Send { invalidate, .. }) => *invalidate,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn send_with_invalidate_only_when_agreed_and_unambiguous() {
        let write = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV,
            write_stag: 0x11,
            write_va: 0x1000,
            ..IserHeader::default()
        };
        // libiscsi sets WSV even when all data was immediate: the STag is still its to free.
        assert_eq!(response_invalidation(true, write, false, true), Some(0x11));
        assert_eq!(
            response_invalidation(false, write, false, true),
            None,
            "not agreed"
        );
        let both = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV | ISER_RSV,
            read_stag: 0x22,
            read_va: 0x2000,
            ..write
        };
        assert_eq!(
            response_invalidation(true, both, true, false),
            None,
            "two STags"
        );
        assert_eq!(
            response_invalidation(true, IserHeader::CONTROL, false, false),
            None,
            "no STag"
        );
    }

    #[test]
    fn write_reads_solicited_data_past_the_immediate_bytes() {
        let (mut conn, now) = logged_in(false);
        conn.handle_receive(&write_with_immediate_data(0x22), now);
        let ops = drain(&mut conn);
        let [FabricOp::RdmaRead {
            token,
            stag,
            va,
            len,
        }] = ops.as_slice()
        else {
            panic!("{ops:?}")
        };
        // WriteVA already points past the 4096 immediate bytes (brief §1 rule 8).
        assert_eq!((*stag, *va, *len), (0x77, 0x9000_1000, 8192));
        complete_read(&mut conn, *token, vec![2u8; 8192], now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(&task.data_out[..4096], &[1u8; 4096][..]);
        assert_eq!(&task.data_out[4096..], &[2u8; 8192][..]);
    }

    /// The adapter itself copies no read data (its buffer moves into the RDMA Write) and no RDMA
    /// Read data (the NIC places it straight into the task's buffer); only immediate data is
    /// copied, once, out of the receive buffer into the task's buffer. The driver copies no
    /// payload either (it posts from and into the task buffers), so a READ and a WRITE fetched
    /// by RDMA Read cost no copy.
    #[test]
    fn the_adapter_copies_only_immediate_data() {
        use crate::stats::{thread_payload_copies, CopyCounts};
        let (mut conn, now) = logged_in(false);
        let send = write_with_immediate_data(0x22);
        let before = thread_payload_copies();
        conn.handle_receive(&send, now);
        let ops = drain(&mut conn);
        let [FabricOp::RdmaRead { token, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        complete_read(&mut conn, *token, vec![2u8; 8192], now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let id = task.id;
        let read = Pdu::new(Header::ScsiCommand(command(
            0x23, 101, true, false, 8192, 0x28,
        )));
        conn.handle_receive(&send_bytes(both_stags(), &read), now);
        conn.handle_scsi_complete(id, ScsiOutcome::good());
        let ops = drain(&mut conn);
        let Some(FabricOp::Execute(read_task)) =
            ops.iter().find(|op| matches!(op, FabricOp::Execute(_)))
        else {
            panic!("{ops:?}")
        };
        conn.handle_scsi_complete(
            read_task.id,
            ScsiOutcome {
                data_in: mem_ffi::Buf::copy_from_slice(&[3; 8192]).into(),
                ..ScsiOutcome::good()
            },
        );
        assert!(drain(&mut conn)
            .iter()
            .any(|op| matches!(op, FabricOp::RdmaWrite { data, .. } if data.len() == 8192)));
        assert_eq!(
            thread_payload_copies() - before,
            CopyCounts {
                copies: 1,
                bytes: 4096
            }
        );
    }

    /// A READ from a RAM LUN is RDMA-written straight from the LUN's memory: the SCSI outcome
    /// lends the chunks, the core and the adapter pass them on, and nothing copies a byte. A
    /// 128 KiB READ over the end of a written chunk into an unwritten one goes out as one RDMA
    /// Write per piece: the chunk's last block, then the shared zero region.
    #[test]
    fn a_ram_read_is_rdma_written_from_the_lun_memory_without_a_copy() {
        use crate::scsi::testutil::{assert_good, exec, ram_lu, read16, write16};
        use crate::stats::{thread_payload_copies, CopyCounts};
        let lu = ram_lu(512, 4096);
        assert_good(&exec(&lu, &write16(255, 1, false), &[6u8; 4096]));
        let (mut conn, now) = logged_in(false);
        let iser = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_RSV,
            write_stag: 0,
            write_va: 0,
            read_stag: 0x78,
            read_va: 0x7000_0000,
        };
        let read = Pdu::new(Header::ScsiCommand(command(
            0x31,
            100,
            true,
            false,
            128 << 10,
            0x88,
        )));
        conn.handle_receive(&send_bytes(iser, &read), now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let before = thread_payload_copies();
        let outcome = exec(&lu, &read16(255, 32), &[]);
        assert_good(&outcome);
        conn.handle_scsi_complete(task.id, outcome);
        let ops = drain(&mut conn);
        assert_eq!(thread_payload_copies() - before, CopyCounts::default());
        let Some(FabricOp::RdmaWrite {
            stag,
            va,
            data,
            range,
        }) = ops.first()
        else {
            panic!("{ops:?}")
        };
        assert_eq!(
            (*stag, *va, range.clone()),
            (0x78, 0x7000_0000, 0..128 << 10)
        );
        let lent = data.lent().expect("lent from the LUN, not copied");
        let pieces = data.pieces(range.clone()).expect("all in pool arenas");
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!((pieces[0].len, pieces[1].len), (4096, (128 << 10) - 4096));
        assert_eq!(
            pieces[0].arena,
            lent.iter().next().unwrap().arena_extent().unwrap()
        );
        let zeroes = mem_ffi::shared::zeroes(1);
        assert_eq!(pieces[1].arena, zeroes.arena_extent().unwrap());
        assert_eq!(pieces[1].offset, zeroes.arena_offset().unwrap());
        let mut expected = vec![6u8; 4096];
        expected.resize(128 << 10, 0);
        assert_eq!(data.to_vec(), expected);
        assert!(matches!(ops.get(1), Some(FabricOp::Send { .. })), "{ops:?}");
    }

    /// A WRITE larger than MaxBurstLength is fetched with all its RDMA Reads at once, no round
    /// trip through the core per burst; pieces landing out of order are reported in order.
    #[test]
    fn a_large_write_is_fetched_with_all_its_reads_at_once() {
        let (mut conn, now) = logged_in(false);
        let burst = 512 * 1024;
        let iser = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV,
            write_stag: 0x55,
            write_va: 0x10_0000,
            ..IserHeader::default()
        };
        let cmd = command(0x40, 100, false, true, 3 * burst, 0x2a);
        conn.handle_receive(&send_bytes(iser, &Pdu::new(Header::ScsiCommand(cmd))), now);
        let ops = drain(&mut conn);
        let reads: Vec<(u64, u64, u32)> = ops
            .iter()
            .map(|op| match op {
                FabricOp::RdmaRead { token, va, len, .. } => (*token, *va, *len),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            reads.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
            vec![
                (0x10_0000, burst),
                (0x10_0000 + u64::from(burst), burst),
                (0x10_0000 + 2 * u64::from(burst), burst)
            ]
        );
        complete_read(&mut conn, reads[1].0, vec![2; burst as usize], now);
        complete_read(&mut conn, reads[2].0, vec![3; burst as usize], now);
        assert!(drain(&mut conn).is_empty(), "the first piece is still out");
        complete_read(&mut conn, reads[0].0, vec![1; burst as usize], now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let b = burst as usize;
        assert!(task.data_out[..b].iter().all(|&x| x == 1));
        assert!(task.data_out[b..2 * b].iter().all(|&x| x == 2));
        assert!(task.data_out[2 * b..].iter().all(|&x| x == 3));
    }

    #[test]
    fn tmf_response_waits_for_rdma_reads_in_flight() {
        let (mut conn, now) = logged_in(false);
        let iser = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV,
            write_stag: 1,
            write_va: 0x1000,
            ..IserHeader::default()
        };
        let pdu = Pdu::new(Header::ScsiCommand(command(
            0x33, 100, false, true, 4096, 0x2a,
        )));
        conn.handle_receive(&send_bytes(iser, &pdu), now);
        let ops = drain(&mut conn);
        let [FabricOp::RdmaRead { token, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let abort = Header::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: 1,
            lun: [0; 8],
            itt: 0x34,
            referenced_task_tag: 0x33,
            cmd_sn: 101,
            exp_stat_sn: 8,
            ref_cmd_sn: 100,
            exp_data_sn: 0,
        });
        conn.handle_receive(&ctrl(&Pdu::new(abort)), now);
        assert!(
            drain(&mut conn).is_empty(),
            "held while the RDMA Read may still touch the buffer"
        );
        complete_read(&mut conn, *token, vec![0; 4096], now);
        let ops = drain(&mut conn);
        let [FabricOp::Send { bytes, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let Header::TaskMgmtResponse(resp) = sent_pdu(bytes).header else {
            panic!()
        };
        assert_eq!((resp.itt, resp.response), (0x34, 0));
    }

    /// An immediate Logout Request closing the session (reason 0), with CmdSN 101: the one after
    /// the tests' WRITE at CmdSN 100.
    fn close_session_request(itt: u32) -> Header {
        Header::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 0,
            cmd_sn: 101,
            exp_stat_sn: 8,
        })
    }

    /// Sends a 4 KiB WRITE whose data the target must RDMA-Read; returns the read's token.
    fn write_needing_read(conn: &mut IserConnection, itt: u32, cmd_sn: u32, now: Instant) -> u64 {
        let iser = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV,
            write_stag: itt,
            write_va: 0x1000,
            ..IserHeader::default()
        };
        let pdu = Pdu::new(Header::ScsiCommand(command(
            itt, cmd_sn, false, true, 4096, 0x2a,
        )));
        conn.handle_receive(&send_bytes(iser, &pdu), now);
        let ops = drain(conn);
        let [FabricOp::RdmaRead { token, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        *token
    }

    fn abort_task(itt: u32, rtt: u32, cmd_sn: u32) -> Vec<u8> {
        ctrl(&Pdu::new(Header::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: 1,
            lun: [0; 8],
            itt,
            referenced_task_tag: rtt,
            cmd_sn,
            exp_stat_sn: 8,
            ref_cmd_sn: cmd_sn,
            exp_data_sn: 0,
        })))
    }

    fn sent_headers(ops: &[FabricOp]) -> Vec<Header> {
        ops.iter()
            .filter_map(|op| match op {
                FabricOp::Send { bytes, .. } => Some(sent_pdu(bytes).header),
                _ => None,
            })
            .collect()
    }

    /// Linux sends ABORT TASK after a command timeout while other writes go on: a read created
    /// while the TMF Response is held must neither wait behind it nor keep it held.
    #[test]
    fn reads_created_behind_a_held_tmf_response_do_not_stall_it() {
        let (mut conn, now) = logged_in(false);
        let first = write_needing_read(&mut conn, 0x33, 100, now);
        conn.handle_receive(&abort_task(0x34, 0x33, 101), now);
        assert!(drain(&mut conn).is_empty(), "TMF Response held");
        // A later WRITE's read goes out at once.
        let second = write_needing_read(&mut conn, 0x35, 101, now);
        complete_read(&mut conn, first, vec![0; 4096], now);
        let ops = drain(&mut conn);
        let headers = sent_headers(&ops);
        assert!(
            matches!(
                headers.as_slice(),
                [Header::TaskMgmtResponse(TaskMgmtResponse { itt: 0x34, .. })]
            ),
            "{ops:?}"
        );
        // Nothing is held any more: the second write completes normally.
        complete_read(&mut conn, second, vec![3; 4096], now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(task.data_out, vec![3; 4096]);
    }

    /// Sends that end no task are not held by reads: a NOP-In answer goes out at once.
    #[test]
    fn nop_in_does_not_wait_for_reads() {
        let (mut conn, now) = logged_in(false);
        write_needing_read(&mut conn, 0x40, 100, now);
        let ping = Header::NopOut(NopOut {
            immediate: true,
            lun: [0; 8],
            itt: 9,
            ttt: u32::MAX,
            cmd_sn: 101,
            exp_stat_sn: 8,
        });
        conn.handle_receive(&ctrl(&Pdu::new(ping)), now);
        let headers = sent_headers(&drain(&mut conn));
        assert!(
            matches!(headers.as_slice(), [Header::NopIn(_)]),
            "{headers:?}"
        );
    }

    /// The initiator frees every buffer once it has the Logout Response: it waits for all reads,
    /// and the connection closes only after it.
    #[test]
    fn logout_response_waits_for_every_read() {
        let (mut conn, now) = logged_in(false);
        let token = write_needing_read(&mut conn, 0x50, 100, now);
        let logout = close_session_request(0x51);
        conn.handle_receive(&ctrl(&Pdu::new(logout)), now);
        let ops = drain(&mut conn);
        assert!(
            !ops.iter()
                .any(|op| matches!(op, FabricOp::Send { .. } | FabricOp::Close(_))),
            "{ops:?}"
        );
        complete_read(&mut conn, token, vec![0; 4096], now);
        let ops = drain(&mut conn);
        let logout_at = ops
            .iter()
            .position(|op| {
                matches!(op, FabricOp::Send { bytes, .. }
                    if matches!(sent_pdu(bytes).header, Header::LogoutResponse(_)))
            })
            .unwrap_or_else(|| panic!("no Logout Response: {ops:?}"));
        assert!(
            matches!(ops.last(), Some(FabricOp::Close(CloseReason::Logout))),
            "{ops:?}"
        );
        assert!(logout_at < ops.len() - 1);
    }

    /// A bad Data-Out that came in a Send ends the task early, while its RDMA Read is still in
    /// flight: the SCSI Response (which lets the initiator free the buffer) waits for the read.
    #[test]
    fn early_response_waits_for_its_tasks_reads() {
        let (mut conn, now) = logged_in(false);
        let token = write_needing_read(&mut conn, 0x60, 100, now);
        // Unsolicited Data-Out although InitialR2T=Yes: the core rejects it and ends the task.
        let data_out = Header::DataOut(DataOut {
            final_flag: true,
            lun: [0; 8],
            itt: 0x60,
            ttt: u32::MAX,
            exp_stat_sn: 8,
            data_sn: 0,
            buffer_offset: 0,
        });
        conn.handle_receive(&ctrl(&Pdu::with_data(data_out, vec![0; 512])), now);
        let headers = sent_headers(&drain(&mut conn));
        assert!(
            !headers.iter().any(|h| matches!(h, Header::ScsiResponse(_))),
            "response overtook the read: {headers:?}"
        );
        complete_read(&mut conn, token, vec![0; 4096], now);
        let headers = sent_headers(&drain(&mut conn));
        assert!(
            matches!(
                headers.as_slice(),
                [Header::ScsiResponse(pdu::ScsiResponse {
                    itt: 0x60,
                    status: 2,
                    ..
                })]
            ),
            "{headers:?}"
        );
    }

    /// Zero copy: an RDMA Read lands in the WRITE's own pool buffer (past its immediate data),
    /// the very buffer the backend then gets as `data_out`; the RDMA Write of READ data is
    /// posted from the outcome's buffer itself.
    #[test]
    fn rdma_moves_data_straight_between_initiator_and_task_buffers() {
        let (mut conn, now) = logged_in(false);
        let send = write_with_immediate_data(0x90);
        conn.handle_receive(&send, now);
        let ops = drain(&mut conn);
        let [FabricOp::RdmaRead { token, len, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let place = conn.rdma_read_placement(*token).expect("a read in flight");
        assert_eq!(place.len, *len as usize);
        assert_eq!(
            place.offset % 4096,
            0,
            "page-aligned: past one page of immediate data"
        );
        complete_read(&mut conn, *token, vec![2u8; 8192], now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(task.data_out.arena_extent(), Some(place.arena));
        assert_eq!(task.data_out.arena_offset().unwrap() + 4096, place.offset);
        assert_eq!(&task.data_out[..4096], &[1u8; 4096][..]);
        assert_eq!(&task.data_out[4096..], &[2u8; 8192][..]);
        let id = task.id;
        conn.handle_scsi_complete(id, ScsiOutcome::good());
        drain(&mut conn);

        let read = Pdu::new(Header::ScsiCommand(command(
            0x91, 101, true, false, 8192, 0x28,
        )));
        conn.handle_receive(&send_bytes(both_stags(), &read), now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let data = Buf::copy_from_slice(&[3u8; 8192]);
        let source = data.as_ptr();
        conn.handle_scsi_complete(task.id, ScsiOutcome::with_buf(data));
        let ops = drain(&mut conn);
        let Some(FabricOp::RdmaWrite { data, range, .. }) = ops.first() else {
            panic!("{ops:?}")
        };
        let Payload::Owned(data) = data else {
            panic!("{data:?}")
        };
        assert_eq!((data.as_ptr(), range.clone()), (source, 0..8192));
    }

    /// A WRITE that ends while its RDMA Read is in flight keeps its buffer out of the pool until
    /// the read completes (the NIC may still be writing it); a read of an ended task that was
    /// not posted yet has no place to land.
    #[test]
    fn an_ended_writes_buffer_is_not_recycled_under_its_read() {
        let (mut conn, now) = logged_in(false);
        let token = write_needing_read(&mut conn, 0x92, 100, now);
        let place = conn.rdma_read_placement(token).unwrap();
        let span = place.arena.addr() + place.offset..place.arena.addr() + place.offset + place.len;
        // Unsolicited Data-Out although InitialR2T=Yes: the core ends the task at once.
        let data_out = Header::DataOut(DataOut {
            final_flag: true,
            lun: [0; 8],
            itt: 0x92,
            ttt: u32::MAX,
            exp_stat_sn: 8,
            data_sn: 0,
            buffer_offset: 0,
        });
        conn.handle_receive(&ctrl(&Pdu::with_data(data_out, vec![0; 512])), now);
        drain(&mut conn);
        assert_eq!(conn.rdma_read_placement(token), None, "the task is gone");
        assert_eq!(conn.retired.len(), 1, "its buffer is held for the read");
        let others: Vec<Buf> = (0..256)
            .map(|_| mem_ffi::pool::global().alloc(4096))
            .collect();
        for other in &others {
            let start = other.as_ptr() as usize;
            assert!(
                !span.contains(&start),
                "the pool handed out a buffer under a read in flight"
            );
        }
        complete_read(&mut conn, token, vec![0; 4096], now);
        assert!(
            conn.retired.is_empty(),
            "released once the read is reported"
        );
    }

    /// Reads completing out of order, several per task: an early SCSI Response waits for the
    /// last of its task's reads, a TMF Response for every read in flight when it was queued
    /// (not one made later), and an ended write's buffer stays out of the pool until its last
    /// read; a teardown whose drain failed leaks the buffers reads may still write.
    #[test]
    fn held_sends_and_retired_buffers_follow_reads_completing_out_of_order() {
        let (mut conn, now) = logged_in(false);
        let burst = 512 * 1024;
        let iser = IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_WSV,
            write_stag: 0x80,
            write_va: 0x10_0000,
            ..IserHeader::default()
        };
        let cmd = command(0x80, 100, false, true, 3 * burst, 0x2a);
        conn.handle_receive(&send_bytes(iser, &Pdu::new(Header::ScsiCommand(cmd))), now);
        let a: Vec<u64> = drain(&mut conn)
            .iter()
            .map(|op| match op {
                FabricOp::RdmaRead { token, .. } => *token,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(a.len(), 3);
        let b = write_needing_read(&mut conn, 0x81, 101, now);
        // Unsolicited Data-Out although InitialR2T=Yes: the core ends the first WRITE at once.
        let data_out = Header::DataOut(DataOut {
            final_flag: true,
            lun: [0; 8],
            itt: 0x80,
            ttt: u32::MAX,
            exp_stat_sn: 8,
            data_sn: 0,
            buffer_offset: 0,
        });
        conn.handle_receive(&ctrl(&Pdu::with_data(data_out, vec![0; 512])), now);
        let headers = sent_headers(&drain(&mut conn));
        assert!(
            !headers.iter().any(|h| matches!(h, Header::ScsiResponse(_))),
            "response held: {headers:?}"
        );
        let burst = burst as usize;
        complete_read(&mut conn, a[2], vec![0; burst], now);
        complete_read(&mut conn, a[0], vec![0; burst], now);
        assert!(drain(&mut conn).is_empty(), "one of its reads is still out");
        assert_eq!(conn.retired.len(), 1);
        conn.handle_receive(&abort_task(0x82, 0x81, 102), now);
        assert!(drain(&mut conn).is_empty(), "TMF Response held");
        complete_read(&mut conn, a[1], vec![0; burst], now);
        let headers = sent_headers(&drain(&mut conn));
        assert!(
            matches!(
                headers.as_slice(),
                [Header::ScsiResponse(pdu::ScsiResponse { itt: 0x80, .. })]
            ),
            "{headers:?}"
        );
        assert_eq!(conn.retired.len(), 1, "only the aborted WRITE's buffer");
        let c = write_needing_read(&mut conn, 0x83, 102, now);
        complete_read(&mut conn, b, vec![0; 4096], now);
        let headers = sent_headers(&drain(&mut conn));
        assert!(
            matches!(
                headers.as_slice(),
                [Header::TaskMgmtResponse(TaskMgmtResponse { itt: 0x82, .. })]
            ),
            "not held behind the later read: {headers:?}"
        );
        assert!(conn.retired.is_empty());
        assert!(conn.rdma_read_placement(c).is_some());
        conn.leak_buffers_under_reads();
        assert!(conn.writes.is_empty() && conn.rdma_read_placement(c).is_none());
    }

    /// A failed RDMA Read closes at once, even with a Logout Response held behind reads.
    #[test]
    fn failed_read_closes_despite_held_logout() {
        let (mut conn, now) = logged_in(false);
        let token = write_needing_read(&mut conn, 0x70, 100, now);
        let logout = close_session_request(0x71);
        conn.handle_receive(&ctrl(&Pdu::new(logout)), now);
        drain(&mut conn);
        conn.handle_rdma_read_failed(token);
        let ops = drain(&mut conn);
        assert!(
            matches!(
                ops.as_slice(),
                [FabricOp::Close(CloseReason::ProtocolError(_))]
            ),
            "{ops:?}"
        );
        assert!(conn.is_closed());
    }

    /// A failed login sets up nothing for full feature phase.
    #[test]
    fn failed_login_posts_no_full_feature_buffers() {
        let now = Instant::now();
        let mut conn = IserConnection::new(config(), None, false, now);
        let keys = text::encode(&[
            (
                "InitiatorName".to_string(),
                "iqn.2026-11.test:host".to_string(),
            ),
            (
                "TargetName".to_string(),
                "iqn.2026-11.test:no-such-target".to_string(),
            ),
            ("SessionType".to_string(), "Normal".to_string()),
        ]);
        let request = Header::LoginRequest(LoginRequest {
            transit: true,
            continue_flag: false,
            current_stage: Stage::Operational,
            next_stage: Stage::FullFeature,
            version_max: 0,
            version_min: 0,
            isid: [0, 2, 0x3d, 0, 0, 1],
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        });
        conn.handle_receive(&ctrl(&Pdu::with_data(request, keys)), now);
        let ops = drain(&mut conn);
        assert!(
            !ops.iter()
                .any(|op| matches!(op, FabricOp::EnterFullFeature)),
            "{ops:?}"
        );
        let headers = sent_headers(&ops);
        assert!(
            matches!(
                headers.as_slice(),
                [Header::LoginResponse(LoginResponse {
                    status_class: 2,
                    ..
                })]
            ),
            "{headers:?}"
        );
    }

    /// A command the core drops (CmdSN outside the window) that reuses a live task's ITT must
    /// not redirect that task's data to its own STag.
    #[test]
    fn a_dropped_command_reusing_an_itt_leaves_the_live_tasks_stags_alone() {
        let (mut conn, now) = logged_in(false);
        let read_header = |stag: u32| IserHeader {
            flags: ISER_ISCSI_CTRL | ISER_RSV,
            read_stag: stag,
            read_va: 0x7000_0000,
            ..IserHeader::default()
        };
        let cmd = |cmd_sn| {
            Pdu::new(Header::ScsiCommand(command(
                0x80, cmd_sn, true, false, 512, 0x28,
            )))
        };
        conn.handle_receive(&send_bytes(read_header(0xa), &cmd(100)), now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        // Far outside the window: silently dropped by the core (RFC 7143 §4.2.2.1).
        conn.handle_receive(&send_bytes(read_header(0xb), &cmd(5000)), now);
        assert!(drain(&mut conn).is_empty());
        conn.handle_scsi_complete(
            task.id,
            ScsiOutcome {
                status: 0,
                sense: Default::default(),
                data_in: mem_ffi::Buf::copy_from_slice(&[1; 512]).into(),
                data_out_length: 0,
            },
        );
        let ops = drain(&mut conn);
        assert!(
            matches!(ops.first(), Some(FabricOp::RdmaWrite { stag: 0xa, .. })),
            "{ops:?}"
        );
    }

    #[test]
    fn nop_in_carries_no_data() {
        let (mut conn, now) = logged_in(false);
        let ping = Header::NopOut(NopOut {
            immediate: true,
            lun: [0; 8],
            itt: 9,
            ttt: u32::MAX,
            cmd_sn: 100,
            exp_stat_sn: 8,
        });
        conn.handle_receive(&ctrl(&Pdu::with_data(ping, vec![1; 8])), now);
        let ops = drain(&mut conn);
        let [FabricOp::Send { bytes, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        let pdu = sent_pdu(bytes);
        assert!(matches!(
            pdu.header,
            Header::NopIn(NopIn {
                itt: 9,
                ttt: u32::MAX,
                ..
            })
        ));
        assert!(pdu.data.is_empty(), "brief §1 rule 15");
    }

    #[test]
    fn bad_sends_close_the_connection() {
        let now = Instant::now();
        let short_login = [0x10u8; 40];
        let mut hello = [0u8; 76];
        hello[0] = 0x20;
        let mut oversized = IserHeader::CONTROL.encode().to_vec();
        let mut bhs = Header::NopOut(NopOut::default()).encode(0);
        bhs[5..8].copy_from_slice(&[0, 0x40, 0]); // 16 KiB data segment
        oversized.extend_from_slice(&bhs);
        for message in [&short_login[..], &hello[..], &oversized[..], &[][..]] {
            let mut conn = IserConnection::new(config(), None, false, now);
            conn.handle_receive(message, now);
            let ops = drain(&mut conn);
            assert!(
                matches!(
                    ops.as_slice(),
                    [FabricOp::Close(CloseReason::ProtocolError(_))]
                ),
                "{ops:?}"
            );
            assert!(conn.is_closed());
        }
    }

    #[test]
    fn data_in_without_read_stag_closes() {
        let (mut conn, now) = logged_in(false);
        let cmd = Pdu::new(Header::ScsiCommand(command(
            0x44, 100, true, false, 512, 0x28,
        )));
        conn.handle_receive(&ctrl(&cmd), now);
        let ops = drain(&mut conn);
        let [FabricOp::Execute(task)] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        conn.handle_scsi_complete(
            task.id,
            ScsiOutcome {
                status: 0,
                sense: Default::default(),
                data_in: mem_ffi::Buf::copy_from_slice(&[0; 512]).into(),
                data_out_length: 0,
            },
        );
        let ops = drain(&mut conn);
        assert!(matches!(ops.as_slice(), [FabricOp::Close(_)]), "{ops:?}");
    }

    #[test]
    fn header_round_trip_is_big_endian() {
        let h = IserHeader {
            flags: 0x18,
            write_stag: 0x0102_0304,
            write_va: 0x1112_1314_1516_1718,
            read_stag: 0x2122_2324,
            read_va: 0x3132_3334_3536_3738,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[4..8], &[1, 2, 3, 4]);
        assert_eq!(bytes[8], 0x11);
        assert_eq!(IserHeader::decode(&bytes), Some(h));
        // ib_iser (0x80): we agree to Send-with-Invalidate; libiscsi (0xC0): we decline.
        // The passive side sees padded private data (brief §2.2): only byte 0 counts.
        let mut padded = [0u8; 56];
        padded[0] = 0x80;
        assert_eq!(accept_private_data(&padded), [0x80, 0, 0, 0]);
        assert_eq!(accept_private_data(&[0xc0, 0, 0, 0]), [0xc0, 0, 0, 0]);
        assert_eq!(accept_private_data(&[]), [0xc0, 0, 0, 0]);
    }
}
