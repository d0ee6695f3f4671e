//! The data phase of commands: host data solicited with R2Ts and received in H2CData PDUs, and
//! the completion of I/O, whose read data goes to the host in a C2HData PDU (NVMe/TCP 1.0 R2T,
//! H2CData and C2HData PDUs).

use super::{Action, CommandState, Queue};
use crate::backend::BackendError;
use crate::nvme::command::Status;
use crate::nvme::io::{backend_status, IoId, IoOp};
use crate::nvme::pdu::{self, c2h_data_psh, flags, pdu_type, Fes, H2CDataHeader};
use crate::scsi::{BlockReply, ScsiOutcome};
use crate::Buf;
use mem_ffi::Payload;

impl Queue {
    /// Sends an R2T for the next piece of a command's host data (one R2T outstanding per
    /// command, MAXR2T 0 suffices).
    pub(super) fn solicit(&mut self, cid: u16) {
        let max = self.config.maxh2cdata();
        let Some(command) = self.commands.get_mut(&cid) else {
            return;
        };
        let offset = command.data.len() as u32;
        let length = (command.host_data - offset).min(max);
        command.state = CommandState::ReceivingData {
            next: offset,
            r2t_end: offset + length,
        };
        // The transfer tag is the command's CID: unique among outstanding commands.
        let head = pdu::r2t(cid, cid, offset, length, &self.send);
        self.actions.push_back(Action::SendPdu(head));
    }

    /// H2CData (NVMe/TCP 1.0 H2CData PDU): in order, within the R2T it answers.
    pub(super) fn handle_h2c_data(
        &mut self,
        h: H2CDataHeader,
        data: Buf,
        digest_ok: bool,
        hdr: &[u8],
    ) {
        let Some(command) = self.commands.get_mut(&h.cccid) else {
            return self.terminate(Fes::InvalidHeaderField, H2CDataHeader::CCCID_OFFSET, hdr);
        };
        let CommandState::ReceivingData { next, r2t_end } = command.state else {
            return self.terminate(Fes::InvalidHeaderField, H2CDataHeader::CCCID_OFFSET, hdr);
        };
        if h.ttag != h.cccid {
            return self.terminate(Fes::InvalidHeaderField, H2CDataHeader::TTAG_OFFSET, hdr);
        }
        if h.datao != next {
            return self.terminate(Fes::DataOutOfRange, H2CDataHeader::DATAO_OFFSET, hdr);
        }
        let end = u64::from(h.datao) + u64::from(h.datal);
        if end > u64::from(r2t_end) {
            return self.terminate(Fes::DataOutOfRange, H2CDataHeader::DATAL_OFFSET, hdr);
        }
        let end = end as u32;
        // LAST_PDU marks the last H2CData of an R2T, no sooner and no later.
        if h.last != (end == r2t_end) {
            return self.terminate(Fes::InvalidHeaderField, 1, hdr);
        }
        if command.data.is_empty() && data.len() == command.host_data as usize {
            // All the command's data in one PDU: its buffer is the command's.
            command.data = data;
        } else {
            if command.data.capacity() < command.host_data as usize {
                // A buffer for the whole transfer, which the PDUs' data is gathered into.
                let mut whole = mem_ffi::pool::global().with_capacity(command.host_data as usize);
                whole.extend_from_slice(&command.data);
                command.data = whole;
            }
            command.data.extend_from_slice(&data);
            crate::stats::count_payload_copy(data.len());
        }
        command.digest_failed |= !digest_ok;
        command.state = CommandState::ReceivingData { next: end, r2t_end };
        if end < r2t_end {
            return;
        }
        if end < command.host_data {
            return self.solicit(h.cccid);
        }
        if command.digest_failed {
            // A data digest error fails the command with Transient Transport Error, not the
            // connection: the header, and so the stream, was intact.
            self.commands.remove(&h.cccid);
            return self.respond(h.cccid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
        }
        self.dispatch(h.cccid);
    }

    /// The backend finished I/O `id`.
    pub fn handle_io_complete(&mut self, id: IoId, result: Result<BlockReply, BackendError>) {
        self.finish_io(id, |op| match result {
            Ok(BlockReply::Data(data)) => Ok(Some(data)),
            Ok(BlockReply::Miscompare { .. }) => Err(Status::COMPARE_FAILURE),
            Ok(BlockReply::Done) => Ok(None),
            Ok(BlockReply::Check(s)) => {
                Err(crate::nvme::scsi::status_of(&ScsiOutcome::from_sense(&s)))
            }
            Ok(BlockReply::Answer(answer)) => match crate::nvme::scsi::status_of(&answer) {
                s if !s.is_success() => Err(s),
                _ => Ok(None),
            },
            Err(e) => Err(backend_status(op, &e)),
        });
    }

    /// The LUN finished I/O `id`, run as the SCSI command [`crate::nvme::scsi::lower`] made of it.
    pub fn handle_scsi_complete(&mut self, id: IoId, outcome: ScsiOutcome) {
        self.finish_io(id, |op| match crate::nvme::scsi::status_of(&outcome) {
            s if !s.is_success() => Err(s),
            _ if op.returns_data() => Ok(Some(outcome.data_in)),
            _ => Ok(None),
        });
    }

    /// Completes I/O `id` with what `result` makes of its operation: data for the host, done,
    /// or a failure status.
    fn finish_io(
        &mut self,
        id: IoId,
        result: impl FnOnce(&IoOp) -> Result<Option<Payload>, Status>,
    ) {
        let Some(cid) = self.executing.remove(&id) else {
            return;
        };
        let Some(command) = self.commands.remove(&cid) else {
            return;
        };
        let CommandState::Executing { op, lba, bytes, .. } = command.state else {
            return;
        };
        let shared = self.binding.as_ref().map(|b| b.shared.clone());
        let nsid = command.sqe.nsid();
        let status = match result(&op) {
            Ok(Some(data)) => {
                if let (Some(s), IoOp::Read { .. }) = (&shared, &op) {
                    s.count_read(data.len() as u64);
                }
                // Without a data digest, C2HData is sent from a RAM namespace's lent memory by
                // address or from a file's pages, as they are. A data digest needs the bytes:
                // lent memory is then copied into a buffer of the queue's own (one copy, as
                // for iSCSI/TCP).
                let data = match data {
                    Payload::Lent(_) | Payload::File(_) if !self.send.data_digest => data,
                    Payload::Owned(_) => data,
                    Payload::Lent(ranges) => Payload::Owned(crate::stats::copy_lent(&ranges)),
                    // The environment gives file pages only to queues that send them as
                    // they are (`sends_file_pages`); anything else is answered as an
                    // internal error rather than trusted.
                    Payload::File(_) => {
                        return self.respond_about(cid, Status::INTERNAL_ERROR, 0, nsid, lba)
                    }
                };
                return self.send_data(cid, data);
            }
            Ok(None) => {
                if let (Some(s), IoOp::Write { .. }) = (&shared, &op) {
                    s.count_write(bytes);
                }
                Status::SUCCESS
            }
            Err(status) => status,
        };
        self.respond_about(cid, status, 0, nsid, lba);
    }

    /// Sends `data` in a C2HData PDU, then the successful completion: a CapsuleResp, or the
    /// SUCCESS flag when the host disabled SQ flow control (NVMe/TCP 1.0 C2HData PDU; Linux
    /// drivers/nvme/target/tcp.c does the same when sqhd_disabled).
    pub(super) fn send_data(&mut self, cid: u16, data: Payload) {
        self.commands.remove(&cid);
        if data.is_empty() {
            return self.respond(cid, Status::SUCCESS, 0);
        }
        let mut pdu_flags = flags::LAST_PDU;
        if self.sq_flow_disabled {
            pdu_flags |= flags::SUCCESS;
        }
        let len = data.len();
        let psh = c2h_data_psh(cid, 0, len as u32);
        let framed = match &data {
            Payload::Owned(buf) => pdu::frame(pdu_type::C2H_DATA, pdu_flags, &psh, buf, &self.send),
            // Lent memory or a file's pages: never with a data digest (see `finish_io`).
            _ => pdu::frame_sized(pdu_type::C2H_DATA, pdu_flags, &psh, len, None, &self.send),
        };
        self.actions.push_back(Action::SendData {
            head: framed.head,
            range: 0..len,
            data,
            tail: framed.tail,
        });
        if !self.sq_flow_disabled {
            self.respond(cid, Status::SUCCESS, 0);
        }
    }
}
