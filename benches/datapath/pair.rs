//! The in-memory pair: the target's side of the wire in the benchmark's own thread. Bytes from the
//! initiator are copied, a socket read at a time, into the `PduReader`'s own read buffers (as the
//! server reads its socket into them) and go on into `iscsi::tcp::TcpConnection` (the core and its
//! TCP datamover); its commands run at once on a `scsi::ScsiTarget` over the RAM backend; its PDUs
//! go out framed as the server's vectored writes frame them (`framing::frame_parts` around the
//! data where it lies, a RAM LUN's lent memory included; joining them here stands for the
//! kernel's copy into the socket). Time,
//! allocations and payload copies are counted only while the target side runs; the joined PDUs
//! reuse their buffers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::iscsi::framing::{frame_parts, frame_parts_sized, FrameSettings, PduReader};
use iser_target::iscsi::pdu::Header;
use iser_target::iscsi::tcp::{DataInBuf, TcpAction, TcpConnection};
use iser_target::iscsi::{CloseReason, CoreConfig, ScsiTask};
use iser_target::scsi::{Nexus, ScsiRequest, ScsiTarget};
use iser_target::stats::{thread_payload_copies, CopyCounts};
use mem_ffi::{AllocCounts, CountingAllocator, LentRanges};
use std::ops::Range;

use crate::initiator::Wire;

/// Bytes handed to the target's `PduReader` at a time: what one read of the server's TCP reader
/// thread takes at most. Feeding it more at once would make it move the unconsumed rest again
/// after every PDU.
const CHUNK: usize = 256 << 10;

/// What the target side cost, summed over every `send`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetCost {
    pub time: Duration,
    pub allocations: AllocCounts,
    pub copies: CopyCounts,
}

/// The core, SCSI and RAM backend of one session, driven by hand.
pub struct PairTarget {
    conn: TcpConnection,
    scsi: Arc<ScsiTarget>,
    nexus: Option<Nexus>,
    settings: FrameSettings,
    reader: PduReader,
    /// Framed PDUs the target sent, not yet received by the initiator.
    outbox: VecDeque<Vec<u8>>,
    /// The PDU the initiator received last.
    delivered: Vec<u8>,
    /// Buffers of delivered PDUs, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Commands the core asked to run, kept between calls.
    ready: Vec<ScsiTask>,
    now: Instant,
    pub cost: TargetCost,
}

impl PairTarget {
    /// A connection in the login phase whose commands run on `scsi`.
    pub fn new(core: Arc<CoreConfig>, scsi: Arc<ScsiTarget>) -> Self {
        let now = Instant::now();
        PairTarget {
            conn: TcpConnection::new(core, None, now),
            scsi,
            nexus: None,
            settings: FrameSettings::default(),
            reader: {
                // As the server's resident connections read.
                let mut reader = PduReader::new();
                reader.set_direct_reads(true);
                reader
            },
            outbox: VecDeque::new(),
            delivered: Vec::new(),
            spare: Vec::new(),
            ready: Vec::new(),
            now,
            cost: TargetCost::default(),
        }
    }

    /// The stream bytes of one PDU whose data segment is `data`.
    fn frame(&mut self, header: &Header, data: &[u8]) {
        let parts = frame_parts(header, data, &self.settings);
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&parts.head);
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(parts.tail());
        self.outbox.push_back(bytes);
    }

    /// As `frame`, for bytes `range` of lent memory (sent without a data digest, so the header
    /// is framed from the length alone), copied out range by range as the kernel would.
    fn frame_lent(&mut self, header: &Header, ranges: &LentRanges, range: Range<usize>) {
        let parts = frame_parts_sized(header, range.len(), None, &self.settings);
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&parts.head);
        for (lent, part) in ranges.within(range) {
            let n = bytes.len();
            bytes.resize(n + part.len(), 0);
            lent.slice(part).copy_to(&mut bytes[n..]);
        }
        bytes.extend_from_slice(parts.tail());
        self.outbox.push_back(bytes);
    }

    /// Carries out the core's actions until it has none left, running commands as they come,
    /// as the server's connection thread and I/O workers would.
    fn pump(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        loop {
            while let Some(action) = self.conn.poll_action() {
                match action {
                    TcpAction::Send { pdu, .. } => self.frame(&pdu.header, &pdu.data),
                    TcpAction::SendDataIn {
                        header,
                        data,
                        range,
                        ..
                    } => match &data {
                        // The in-process pair runs on a RAM LUN: the data is in memory, lent
                        // when there is no data digest.
                        DataInBuf::Lent(ranges) => self.frame_lent(&header, ranges, range),
                        data => {
                            let bytes = data.bytes().expect("a RAM LUN's Data-In is in memory");
                            self.frame(&header, &bytes[range])
                        }
                    },
                    TcpAction::SetFrameSettings(settings) => self.settings = settings,
                    TcpAction::BindSession(request) => {
                        self.nexus =
                            Some(Nexus::iscsi(request.initiator_name.clone(), request.isid));
                        self.conn.handle_session_bound(Ok(1));
                    }
                    TcpAction::Execute(task) => ready.push(task),
                    TcpAction::Close(CloseReason::Logout) => {}
                    TcpAction::Close(reason) => {
                        panic!("the target closed the connection: {reason:?}")
                    }
                }
            }
            if ready.is_empty() {
                self.ready = ready;
                return;
            }
            let nexus = self.nexus.as_ref().expect("commands only after login");
            for task in ready.drain(..) {
                let outcome = self.scsi.execute(&ScsiRequest {
                    nexus,
                    lun: task.lun,
                    cdb: &task.cdb,
                    data_out: &task.data_out,
                    expected_transfer_length: task.expected_transfer_length,
                    task_attr: task.attribute,
                });
                self.conn.handle_scsi_complete(task.id, outcome);
            }
        }
    }
}

impl Wire for PairTarget {
    fn send(&mut self, bytes: &[u8]) {
        let started = Instant::now();
        let allocations = CountingAllocator::thread();
        let copies = thread_payload_copies();
        for mut piece in bytes.chunks(CHUNK) {
            // The socket's vectored read into the reader's buffer, or straight into a task's
            // buffer and the next header behind it (the kernel's copy, not counted), each
            // read's PDUs taken before the next read.
            while !piece.is_empty() {
                let (first, second) = self.reader.read_buffers(CHUNK);
                let mut n = 0;
                for room in [first, second] {
                    let k = room.len().min(piece.len() - n);
                    room[..k].copy_from_slice(&piece[n..n + k]);
                    n += k;
                }
                self.reader.push_read(n);
                piece = &piece[n..];
                loop {
                    match self.reader.next_frame(&self.settings) {
                        Ok(Some(frame)) => {
                            self.conn
                                .receive_frame(&mut self.reader, frame, self.now, ())
                        }
                        Ok(None) => break,
                        Err(error) => panic!("the initiator's framing is broken: {error}"),
                    }
                    self.pump();
                }
            }
        }
        self.cost.allocations = self.cost.allocations + (CountingAllocator::thread() - allocations);
        self.cost.copies = self.cost.copies + (thread_payload_copies() - copies);
        self.cost.time += started.elapsed();
    }

    /// One PDU at a time.
    fn receive(&mut self) -> &[u8] {
        let next = self
            .outbox
            .pop_front()
            .expect("the target has nothing to say");
        self.spare
            .push(std::mem::replace(&mut self.delivered, next));
        &self.delivered
    }
}
