//! The iSCSI/TCP datamover, without I/O: it wraps the core [`Connection`] and turns its
//! data-movement actions into PDUs. [`Action::PutData`] becomes Data-In PDUs (split by the
//! initiator's MaxRecvDataSegmentLength, sequences by MaxBurstLength), [`Action::GetData`] R2Ts
//! (MaxBurstLength each, up to MaxOutstandingR2T at a time, more as sequences complete) and the
//! acceptance of unsolicited Data-Out, [`Action::Respond`] a SCSI Response or the status of the
//! last Data-In (phase collapse, RFC 7143 §11.7.4, when there is no sense data). Data-Out PDUs
//! are checked here (TTT, offset, DataSN, length) and their data placed in the task's buffer; the
//! core learns only which bytes arrived ([`Connection::handle_data_received`]).
//!
//! Outgoing Data-In PDUs carry a slice of the task's read buffer ([`TcpAction::SendDataIn`]), so
//! the transport can write header and data with one vectored write, without copying the data.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::connection::scsi_response_pdu;
use super::connection::{
    Action, BindRequest, CloseReason, Connection, CoreConfig, LoginStatus, Residual, ScsiTask,
    SequenceNumbers, TaskId, TaskRef,
};
use super::framing::{Arrival, Frame, FrameError, FrameSettings, PduReader, DIRECT_MIN};
use super::pdu::{DataIn, DataOut, Header, Pdu, ReadyToTransfer, RESERVED_TAG};
use crate::inthash::IntMap;
use crate::scsi::sense::SenseData;
use crate::scsi::ScsiOutcome;
use crate::stats::{copy_lent, count_payload_copy};
use mem_ffi::{Buf, FileSpan, Lent, LentRanges, Payload};

/// The read buffer a Data-In PDU's data segment is a slice of: the task's own buffer when one
/// PDU carries all of the data (no allocation), shared by the PDUs of a longer read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataInBuf {
    /// The only PDU's buffer.
    Whole(Buf),
    /// One of several PDUs' buffer.
    Shared(Arc<Buf>),
    /// A file's bytes, sent from its pages without a copy in user space (for a connection
    /// without data digests; a clone shares the file).
    File(FileSpan),
    /// Ranges of a RAM LUN's memory, sent from there by address without a copy in user space
    /// (for a connection without data digests; a clone shares the memory).
    Lent(LentRanges),
}

impl DataInBuf {
    /// The bytes in memory; `None` for a file's, which only the sender reads.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            DataInBuf::Whole(buf) => Some(buf),
            DataInBuf::Shared(buf) => Some(buf),
            DataInBuf::File(_) | DataInBuf::Lent(_) => None,
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            DataInBuf::Whole(buf) => buf.len(),
            DataInBuf::Shared(buf) => buf.len(),
            DataInBuf::File(span) => span.len(),
            DataInBuf::Lent(ranges) => ranges.iter().map(Lent::len).sum(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An effect the TCP transport must carry out, in order. `C` is the core's per-task context
/// (see [`Connection::handle_pdu_with_context`]); TCP itself needs none and uses `()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpAction<C = ()> {
    /// Transmit this PDU; `context` is its task's for R2Ts and SCSI Responses, `None` for
    /// control PDUs.
    Send { pdu: Pdu, context: Option<C> },
    /// Transmit a Data-In PDU whose data segment is bytes `range` of `data` (a task's read
    /// buffer, shared by all its Data-In PDUs).
    SendDataIn {
        header: Header,
        data: DataInBuf,
        range: Range<usize>,
        context: C,
    },
    /// As [`Action::SetFrameSettings`].
    SetFrameSettings(FrameSettings),
    /// As [`Action::BindSession`]; answer with [`TcpConnection::handle_session_bound`].
    BindSession(BindRequest),
    /// As [`Action::Execute`], with the write data in `data_out`; answer with
    /// [`TcpConnection::handle_scsi_complete`].
    Execute(ScsiTask),
    /// As [`Action::Close`].
    Close(CloseReason),
}

/// An outstanding R2T of a write.
#[derive(Debug, Clone, Copy)]
struct R2tWindow {
    ttt: u32,
    offset: u32,
    length: u32,
    received: u32,
    /// Data-Out PDUs received for this R2T: the DataSN the next one must carry.
    next_data_sn: u32,
}

/// A write whose data is still coming: its buffer and its Data-Out sequences.
#[derive(Debug)]
struct Write<C> {
    id: TaskId,
    context: C,
    itt: u32,
    lun: [u8; 8],
    expected_length: u32,
    /// The task's pool buffer: the data-out so far, in order from offset 0 (its length is what
    /// arrived; its capacity the whole transfer). Empty while the framer places a Data-Out's
    /// data in it (`placing`).
    buffer: Buf,
    /// The buffer is with the framer, a Data-Out's data being read into it.
    placing: bool,
    /// End of the range the initiator may send unsolicited; `None` once that sequence ended.
    unsolicited_end: Option<u32>,
    /// DataSN the next unsolicited Data-Out must carry.
    unsolicited_data_sn: u32,
    next_r2t_offset: u32,
    r2t_sn: u32,
    r2ts: Vec<R2tWindow>,
}

impl<C> Write<C> {
    fn received(&self) -> u32 {
        self.buffer.len() as u32
    }
}

/// The last Data-In of a read, held until the task's status tells whether it carries it.
#[derive(Debug)]
struct LastDataIn<C> {
    task: TaskId,
    context: C,
    header: DataIn,
    data: DataInBuf,
    range: Range<usize>,
}

/// An iSCSI/TCP connection: the core plus its TCP datamover.
#[derive(Debug)]
pub struct TcpConnection<C = ()> {
    core: Connection<C>,
    /// Writes waiting for data, by ITT (unique among the core's tasks).
    writes: IntMap<u32, Write<C>>,
    /// Data buffers of writes whose data is all in, until the core executes them.
    complete: IntMap<TaskId, Buf>,
    last_data_in: Option<LastDataIn<C>>,
    /// R2T lists of writes that ended, emptied, for the next writes: soliciting data then costs
    /// no allocation. At most one per write that was in flight at once.
    spare_r2ts: Vec<Vec<R2tWindow>>,
    /// Data-In PDUs sent for the read being answered: the ExpDataSN of its SCSI Response.
    data_in_sent: u32,
    out: VecDeque<TcpAction<C>>,
}

impl<C: Clone + Debug + Default> TcpConnection<C> {
    /// A new connection in the login phase (see [`Connection::new`]).
    pub fn new(config: Arc<CoreConfig>, local_addr: Option<SocketAddr>, now: Instant) -> Self {
        TcpConnection {
            core: Connection::new(config, local_addr, now),
            writes: IntMap::default(),
            complete: IntMap::default(),
            last_data_in: None,
            spare_r2ts: Vec::new(),
            data_in_sent: 0,
            out: VecDeque::new(),
        }
    }

    /// The core underneath.
    pub fn core(&self) -> &Connection<C> {
        &self.core
    }

    /// The next effect to carry out.
    pub fn poll_action(&mut self) -> Option<TcpAction<C>> {
        if self.out.is_empty() {
            self.pump();
        }
        self.out.pop_front()
    }

    /// When [`TcpConnection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// True once the connection has nothing more to do.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// One PDU from the initiator. Data-Out for a write waiting for data is taken here; every
    /// other PDU goes to the core.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Instant) {
        self.handle_pdu_with_context(pdu, now, C::default());
    }

    /// One PDU with the transport's context for it (see
    /// [`Connection::handle_pdu_with_context`]).
    pub fn handle_pdu_with_context(&mut self, pdu: Pdu, now: Instant, context: C) {
        self.pump();
        match &pdu.header {
            Header::DataOut(h)
                if self.core.is_full_feature() && self.writes.contains_key(&h.itt) =>
            {
                let h = h.clone();
                self.core.record_activity(now);
                self.handle_data_out(h, pdu);
            }
            _ => self.core.handle_pdu_with_context(pdu, now, context),
        }
        self.pump();
    }

    /// A framing problem (see [`Connection::handle_frame_error`]).
    pub fn handle_frame_error(&mut self, error: FrameError, now: Instant) {
        self.core.handle_frame_error(error, now);
        self.pump();
    }

    /// Answer to [`TcpAction::BindSession`].
    pub fn handle_session_bound(&mut self, result: Result<u16, LoginStatus>) {
        self.core.handle_session_bound(result);
        self.pump();
    }

    /// Answer to [`TcpAction::Execute`].
    pub fn handle_scsi_complete(&mut self, id: TaskId, outcome: ScsiOutcome) {
        self.core.handle_scsi_complete(id, outcome);
        self.pump();
    }

    /// Timers (see [`Connection::handle_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.pump();
    }

    /// Server stop or session reinstatement (see [`Connection::handle_shutdown`]).
    pub fn handle_shutdown(&mut self) {
        self.core.handle_shutdown();
        self.pump();
    }

    /// Translates the core's actions into PDUs and transport effects.
    fn pump(&mut self) {
        while let Some(action) = self.core.poll_action() {
            if !matches!(action, Action::Respond { .. }) {
                self.flush_last_data_in();
            }
            match action {
                Action::Send(pdu) => self.out.push_back(TcpAction::Send { pdu, context: None }),
                Action::PutData {
                    task,
                    data,
                    range,
                    numbers,
                } => self.put_data(task, data, range, numbers),
                Action::GetData {
                    task,
                    buffer,
                    range,
                    unsolicited_end,
                    numbers,
                } => self.get_data(task, buffer, range, unsolicited_end, numbers),
                Action::Respond {
                    task,
                    status,
                    sense,
                    residual,
                    numbers,
                } => self.respond(task, status, sense, residual, numbers),
                Action::Release(task) => self.forget(&task),
                Action::SetFrameSettings(s) => self.out.push_back(TcpAction::SetFrameSettings(s)),
                Action::BindSession(r) => self.out.push_back(TcpAction::BindSession(r)),
                Action::Execute(mut task) => {
                    if let Some(buffer) = self.complete.remove(&task.id) {
                        task.data_out = buffer;
                    }
                    self.out.push_back(TcpAction::Execute(task));
                }
                Action::Close(reason) => self.out.push_back(TcpAction::Close(reason)),
            }
        }
    }

    fn flush_last_data_in(&mut self) {
        if let Some(last) = self.last_data_in.take() {
            self.out.push_back(TcpAction::SendDataIn {
                header: Header::DataIn(last.header),
                data: last.data,
                range: last.range,
                context: last.context,
            });
        }
    }

    /// Data-In PDUs for `range` of the task's read data; the last one is held for the status.
    fn put_data(
        &mut self,
        task: TaskRef<C>,
        data: Payload,
        range: Range<u32>,
        numbers: SequenceNumbers,
    ) {
        // Data-In PDUs are written from a buffer of the connection's own, from a file's pages
        // (a file in memory; the sender reads them only if it must digest them), or from lent
        // memory (a RAM LUN's) by address. A data digest needs the bytes: lent memory is then
        // copied into a buffer, the single copy of such a READ.
        let params = self.core.params();
        let data_digest = params.data_digest;
        let max_pdu = params.initiator_max_recv_data_segment_length.max(512) as usize;
        let max_burst = params.max_burst_length.max(512) as usize;
        let (start, end) = (range.start as usize, (range.end as usize).min(data.len()));
        // One PDU (a 4 KiB READ) owns the buffer; several share it.
        let one_pdu = end.saturating_sub(start) <= max_pdu.min(max_burst);
        let in_memory = |buf| {
            if one_pdu {
                DataInBuf::Whole(buf)
            } else {
                DataInBuf::Shared(Arc::new(buf))
            }
        };
        let mut data = match data {
            Payload::Lent(ranges) if !data_digest => DataInBuf::Lent(ranges),
            Payload::Lent(ranges) => in_memory(copy_lent(&ranges)),
            Payload::Owned(buf) => in_memory(buf),
            Payload::File(span) => DataInBuf::File(span),
        };
        let mut offset = start;
        let mut data_sn = 0u32;
        let mut burst_used = 0usize;
        while offset < end {
            let len = (end - offset).min(max_pdu).min(max_burst - burst_used);
            let last = offset + len == end;
            burst_used += len;
            let end_of_burst = last || burst_used == max_burst;
            if end_of_burst {
                burst_used = 0;
            }
            let header = DataIn {
                final_flag: end_of_burst,
                lun: task.lun,
                itt: task.itt,
                ttt: RESERVED_TAG,
                exp_cmd_sn: numbers.exp_cmd_sn,
                max_cmd_sn: numbers.max_cmd_sn,
                data_sn,
                buffer_offset: offset as u32,
                ..DataIn::default()
            };
            let piece = offset..offset + len;
            if last {
                self.last_data_in = Some(LastDataIn {
                    task: task.id,
                    context: task.context.clone(),
                    header,
                    data: std::mem::replace(&mut data, DataInBuf::Whole(Buf::empty())),
                    range: piece,
                });
            } else {
                self.out.push_back(TcpAction::SendDataIn {
                    header: Header::DataIn(header),
                    data: data.clone(),
                    range: piece,
                    context: task.context.clone(),
                });
            }
            data_sn += 1;
            offset += len;
        }
        self.data_in_sent = data_sn;
    }

    /// The status of a task: in its last Data-In when there is no sense data, else a SCSI
    /// Response (sense data behind its 2-byte length, RFC 7143 §11.4.7).
    fn respond(
        &mut self,
        task: TaskRef<C>,
        status: u8,
        sense: SenseData,
        residual: Residual,
        numbers: SequenceNumbers,
    ) {
        self.forget(&task);
        let exp_data_sn = match &self.last_data_in {
            Some(last) if last.task == task.id => std::mem::take(&mut self.data_in_sent),
            _ => {
                self.flush_last_data_in();
                0
            }
        };
        if sense.is_empty() {
            if let Some(mut last) = self.last_data_in.take() {
                last.header.status_present = true;
                last.header.status = status;
                last.header.overflow = residual.overflow;
                last.header.underflow = residual.underflow;
                last.header.residual_count = residual.count;
                last.header.stat_sn = numbers.stat_sn;
                last.header.exp_cmd_sn = numbers.exp_cmd_sn;
                last.header.max_cmd_sn = numbers.max_cmd_sn;
                self.last_data_in = Some(last);
                self.flush_last_data_in();
                return;
            }
        }
        self.flush_last_data_in();
        let response = scsi_response_pdu(task.itt, status, &sense, residual, numbers, exp_data_sn);
        self.out.push_back(TcpAction::Send {
            pdu: response,
            context: Some(task.context),
        });
    }

    /// Drops what the datamover holds for a task that ended.
    fn forget(&mut self, task: &TaskRef<C>) {
        if self.writes.get(&task.itt).is_some_and(|w| w.id == task.id) {
            if let Some(write) = self.writes.remove(&task.itt) {
                self.keep_r2ts(write.r2ts);
            }
        }
        self.complete.remove(&task.id);
    }

    /// A write: its buffer starts with the immediate data; unsolicited Data-Out may follow, the
    /// rest is solicited with R2Ts.
    fn get_data(
        &mut self,
        task: TaskRef<C>,
        buffer: Buf,
        range: Range<u32>,
        unsolicited_end: u32,
        numbers: SequenceNumbers,
    ) {
        if range.is_empty() {
            self.complete.insert(task.id, buffer);
            return;
        }
        let write = Write {
            id: task.id,
            context: task.context,
            itt: task.itt,
            lun: task.lun,
            expected_length: range.end,
            buffer,
            placing: false,
            unsolicited_end: (unsolicited_end > range.start).then_some(unsolicited_end),
            unsolicited_data_sn: 0,
            next_r2t_offset: range.start,
            r2t_sn: 0,
            r2ts: self.spare_r2ts.pop().unwrap_or_default(),
        };
        self.writes.insert(task.itt, write);
        self.solicit(task.itt, numbers);
    }

    /// Keeps the R2T list of a write that ended for a later one.
    fn keep_r2ts(&mut self, mut r2ts: Vec<R2tWindow>) {
        if r2ts.capacity() > 0 {
            r2ts.clear();
            self.spare_r2ts.push(r2ts);
        }
    }

    /// Issues R2Ts for the data still unasked for, up to MaxOutstandingR2T at a time.
    fn solicit(&mut self, itt: u32, numbers: SequenceNumbers) {
        let max_outstanding = self.core.params().max_outstanding_r2t as usize;
        let max_burst = self.core.params().max_burst_length;
        loop {
            let Some(write) = self.writes.get_mut(&itt) else {
                return;
            };
            if write.unsolicited_end.is_some()
                || write.r2ts.len() >= max_outstanding
                || write.next_r2t_offset >= write.expected_length
            {
                return;
            }
            let offset = write.next_r2t_offset;
            let length = (write.expected_length - offset).min(max_burst);
            let ttt = self.core.take_target_transfer_tag();
            write.next_r2t_offset += length;
            write.r2ts.push(R2tWindow {
                ttt,
                offset,
                length,
                received: 0,
                next_data_sn: 0,
            });
            let header = Header::ReadyToTransfer(ReadyToTransfer {
                lun: write.lun,
                itt: write.itt,
                ttt,
                // R2T carries the current StatSN without advancing it.
                stat_sn: numbers.stat_sn,
                exp_cmd_sn: numbers.exp_cmd_sn,
                max_cmd_sn: numbers.max_cmd_sn,
                r2t_sn: write.r2t_sn,
                buffer_offset: offset,
                desired_length: length,
            });
            write.r2t_sn += 1;
            let context = Some(write.context.clone());
            self.out.push_back(TcpAction::Send {
                pdu: Pdu::new(header),
                context,
            });
        }
    }

    /// Takes the PDU whose header `reader` framed as `frame` out of it and handles it: the data
    /// of a Data-Out a write is waiting for goes from the received bytes straight into the
    /// task's buffer, as does a SCSI Command's immediate data into a buffer for the whole
    /// transfer; any other PDU is taken whole, with `context` (see
    /// [`TcpConnection::handle_pdu_with_context`]). Framing errors go to the core. A partial
    /// frame (direct reads, [`Arrival::Partial`]) whose data has such a place gets the reader
    /// to read the rest of the data into it; the frame comes back placed.
    pub fn receive_frame(
        &mut self,
        reader: &mut PduReader,
        mut frame: Frame,
        now: Instant,
        context: C,
    ) {
        match std::mem::replace(&mut frame.arrival, Arrival::Whole) {
            Arrival::Whole => self.receive_whole(reader, frame, now, context),
            Arrival::Partial => {
                frame.arrival = Arrival::Partial;
                self.receive_partial(reader, frame);
            }
            Arrival::Placed { buffer, digest_ok } => {
                self.receive_placed(frame, buffer, digest_ok, now, context)
            }
        }
        reader.expect_data(self.expects_large_data());
    }

    /// A PDU all of whose bytes have arrived.
    fn receive_whole(&mut self, reader: &mut PduReader, frame: Frame, now: Instant, context: C) {
        if let Ok(Header::DataOut(h)) = &frame.header {
            if let Some(buffer) = self.data_out_buffer(h, frame.data_len) {
                let h = h.clone();
                match reader.take_data_into(&frame, buffer) {
                    Ok(()) => self.handle_placed_data_out(h, frame.data_len, now),
                    Err(error) => self.handle_frame_error(error, now),
                }
                return;
            }
        }
        if let Some(mut buffer) = self.immediate_data_buffer(&frame) {
            // Immediate data goes straight into the task's buffer, sized for the whole
            // transfer: the one copy of those bytes.
            match reader.take_data_into(&frame, &mut buffer) {
                Ok(()) => self.run_command_with_buffer(frame, buffer, now, context),
                Err(error) => self.handle_frame_error(error, now),
            }
            return;
        }
        match reader.take_pdu(frame) {
            Ok(pdu) => self.handle_pdu_with_context(pdu, now, context),
            Err(error) => self.handle_frame_error(error, now),
        }
    }

    /// A PDU whose header is in and whose large data segment is still coming: the data of a
    /// Data-Out a write is waiting for is read into the task's buffer (lent to the reader),
    /// immediate data into a new buffer for the whole transfer; anything else (invalid
    /// Data-Out included) is taken whole once it has arrived, and answered as it always is.
    fn receive_partial(&mut self, reader: &mut PduReader, frame: Frame) {
        if let Ok(Header::DataOut(h)) = &frame.header {
            let itt = h.itt;
            if self.data_out_buffer(h, frame.data_len).is_some() {
                let write = self.writes.get_mut(&itt).expect("found above");
                write.placing = true;
                reader.place_data(frame, std::mem::take(&mut write.buffer));
                return;
            }
        }
        match self.immediate_data_buffer(&frame) {
            Some(buffer) => reader.place_data(frame, buffer),
            None => reader.wait_whole(frame),
        }
    }

    /// A PDU whose data the reader placed in `buffer` (see [`TcpConnection::receive_partial`]).
    fn receive_placed(
        &mut self,
        frame: Frame,
        buffer: Buf,
        digest_ok: bool,
        now: Instant,
        context: C,
    ) {
        if let Ok(Header::DataOut(h)) = &frame.header {
            let Some(write) = self.writes.get_mut(&h.itt).filter(|w| w.placing) else {
                // The write ended while its data was arriving (the connection is closing): the
                // core answers the Data-Out as any for a task it does not know.
                let pdu = Pdu::with_data(Header::DataOut(h.clone()), buffer.to_vec());
                return self.handle_pdu_with_context(pdu, now, context);
            };
            write.placing = false;
            write.buffer = buffer;
            if !digest_ok {
                return self.handle_frame_error(data_digest_error(&frame), now);
            }
            let h = h.clone();
            return self.handle_placed_data_out(h, frame.data_len, now);
        }
        if !digest_ok {
            return self.handle_frame_error(data_digest_error(&frame), now);
        }
        self.run_command_with_buffer(frame, buffer, now, context);
    }

    /// A buffer for a SCSI Command's immediate data, with room for the whole transfer; `None`
    /// for any other PDU.
    fn immediate_data_buffer(&self, frame: &Frame) -> Option<Buf> {
        let Ok(Header::ScsiCommand(h)) = &frame.header else {
            return None;
        };
        if frame.data_len == 0 || !self.core.is_full_feature() {
            return None;
        }
        let capacity = self.core.command_buffer_capacity(h, frame.data_len);
        Some(mem_ffi::pool::global().with_capacity(capacity))
    }

    /// Hands the core a SCSI Command whose immediate data is in `buffer`.
    fn run_command_with_buffer(&mut self, frame: Frame, buffer: Buf, now: Instant, context: C) {
        let Ok(Header::ScsiCommand(h)) = frame.header else {
            return;
        };
        self.pump();
        self.core
            .handle_scsi_command_with_buffer(h, buffer, now, context);
        self.pump();
    }

    /// Whether a write waits for a Data-Out of [`DIRECT_MIN`] bytes or more: an R2T or an
    /// unsolicited range with that much still to come.
    fn expects_large_data(&self) -> bool {
        let large = DIRECT_MIN as u32;
        self.writes.values().any(|w| {
            w.r2ts.iter().any(|r| r.length - r.received >= large)
                || w.unsolicited_end
                    .is_some_and(|end| end.saturating_sub(w.received()) >= large)
        })
    }

    /// Where the data of a Data-Out goes when the transport has not read it yet: `Some(buffer)`
    /// when it is valid data of a write waiting for data, and its `len` bytes must be appended
    /// to `buffer` (the task's buffer; the one copy of those bytes on receive), after which
    /// [`TcpConnection::handle_placed_data_out`] reports it. `None`: read the PDU whole and hand
    /// it to [`TcpConnection::handle_pdu`].
    pub fn data_out_buffer(&mut self, h: &DataOut, len: usize) -> Option<&mut Buf> {
        if !self.core.is_full_feature() {
            return None;
        }
        let first_burst = self.core.params().first_burst_length;
        let write = self.writes.get_mut(&h.itt)?;
        let len = u32::try_from(len).ok()?;
        data_out_fits(write, h, len, first_burst).then_some(&mut write.buffer)
    }

    /// The data of a Data-Out that [`TcpConnection::data_out_buffer`] accepted is in place.
    pub fn handle_placed_data_out(&mut self, h: DataOut, len: usize, now: Instant) {
        self.pump();
        self.core.record_activity(now);
        self.data_out_placed(h, len as u32);
        self.pump();
    }

    fn handle_data_out(&mut self, h: DataOut, pdu: Pdu) {
        let first_burst = self.core.params().first_burst_length;
        let write = self.writes.get_mut(&h.itt).expect("checked by the caller");
        let len = pdu.data.len() as u32;
        if !data_out_fits(write, &h, len, first_burst) {
            log::warn!(
                "invalid Data-Out for ITT {:#x}: offset {} length {len} TTT {:#x} DataSN {}",
                h.itt,
                h.buffer_offset,
                h.ttt,
                h.data_sn
            );
            let id = write.id;
            self.core.handle_data_phase_error(id, &pdu.encode_header());
            return;
        }
        write.buffer.extend_from_slice(&pdu.data);
        count_payload_copy(pdu.data.len());
        self.data_out_placed(h, len);
    }

    /// Books a valid Data-Out whose `len` bytes are in the task's buffer: its sequence, the
    /// core's count of data in, and further R2Ts.
    fn data_out_placed(&mut self, h: DataOut, len: u32) {
        let Some(write) = self.writes.get_mut(&h.itt) else {
            return;
        };
        let offset = h.buffer_offset;
        if h.ttt == RESERVED_TAG {
            write.unsolicited_data_sn += 1;
            // Solicited data starts where the unsolicited data stopped.
            write.next_r2t_offset = write.received();
            if h.final_flag {
                write.unsolicited_end = None;
            }
        } else if let Some(pos) = write.r2ts.iter().position(|w| w.ttt == h.ttt) {
            let window = &mut write.r2ts[pos];
            window.received += len;
            window.next_data_sn += 1;
            if h.final_flag {
                // The R2T's sequence is over, whether or not it delivered everything asked for.
                let window = write.r2ts.remove(pos);
                if window.received < window.length {
                    // Short sequence: ask again for the rest from where the data stopped.
                    write.next_r2t_offset = write.received();
                }
            }
        }
        let id = write.id;
        if write.received() >= write.expected_length {
            let write = self.writes.remove(&h.itt).expect("found above");
            self.complete.insert(id, write.buffer);
            self.keep_r2ts(write.r2ts);
        }
        self.core.handle_data_received(id, offset..offset + len);
        self.pump();
        let numbers = self.core.sequence_numbers();
        self.solicit(h.itt, numbers);
    }
}

/// The error of a PDU whose data digest did not match, as [`PduReader::take_data_into`]
/// reports it for a PDU read whole: the PDU is dropped and the core answers with a Reject.
fn data_digest_error(frame: &Frame) -> FrameError {
    FrameError::DataDigest {
        header: frame.raw_header.to_vec(),
    }
}

/// Whether a Data-Out of `len` bytes continues `write`'s data as its sequences allow: in order,
/// with the DataSN its sequence expects (counted from 0 per sequence, RFC 7143 §11.7.5), inside
/// the unsolicited range (FirstBurstLength) or the R2T its TTT names.
fn data_out_fits<C>(write: &Write<C>, h: &DataOut, len: u32, first_burst: u32) -> bool {
    let offset = h.buffer_offset;
    let in_order = offset == write.received();
    let end = offset.checked_add(len);
    if h.ttt == RESERVED_TAG {
        write.unsolicited_end.is_some()
            && in_order
            && h.data_sn == write.unsolicited_data_sn
            && end.is_some_and(|e| e <= write.expected_length.min(first_burst))
    } else if let Some(window) = write.r2ts.iter().find(|w| w.ttt == h.ttt) {
        in_order
            && h.data_sn == window.next_data_sn
            && offset >= window.offset
            && end.is_some_and(|e| e <= window.offset + window.length)
    } else {
        false
    }
}
