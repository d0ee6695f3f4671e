//! SCSI commands of a session: acceptance (ITT, transfer limits, immediate data), the data-out
//! each write still needs, task ordering, read data and status (as datamover actions), and task
//! management functions. The task table itself is
//! in [`super::tasks`].

use std::fmt::Debug;

use super::bytes::CdbBytes;
use super::connection::{
    reject_reason, sn_lt, Action, Connection, Phase, Residual, ScsiTask, SequenceNumbers, TaskId,
    TaskKind, TaskRef,
};
use super::pdu::{
    self, Header, Pdu, ScsiCommand, TaskAttribute, TaskMgmtRequest, TaskMgmtResponse,
};
use super::tasks::{Task, TaskState};
use crate::scsi::sense::SenseData;
use crate::scsi::{ScsiOutcome, TaskAttr};
use crate::stats::count_payload_copy;
use mem_ffi::Buf;

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
    pub const FUNCTION_REJECTED: u8 = 255;
}

/// Tasks a session may hold beyond `queue_depth`. Immediate SCSI commands take no CmdSN, so the
/// CmdSN window does not bound them; past this many tasks in all, a further immediate command is
/// rejected ("too many immediate commands", RFC 7143 §11.17.1) instead of buffered. 16 leaves
/// room for a burst of immediate commands on top of a full queue while keeping the table, and so
/// the memory one session can pin, bounded. The same bound applies to TMF responses waiting for
/// aborted tasks to leave the backend.
pub(super) const IMMEDIATE_COMMAND_HEADROOM: u32 = 16;

/// The first task id of a logical unit reset; the task table's ids count up from 1 and never
/// reach it.
pub(super) const FIRST_RESET_ID: TaskId = 1 << 63;

/// A TMF response held until the tasks it aborted have left the backend (and the LUs it
/// reset have no command of any session in flight).
#[derive(Debug)]
pub(super) struct PendingTmf {
    itt: u32,
    response: u8,
    waiting_for: Vec<TaskId>,
    close_after: bool,
}

impl<C: Clone + Debug> Connection<C> {
    pub(super) fn handle_scsi_command(&mut self, h: ScsiCommand, immediate_data: Buf, context: C) {
        if h.immediate && self.tasks.len() >= self.outstanding_limit() {
            log::warn!(
                "{}: rejecting immediate command ITT {:#x}: {} tasks outstanding",
                self.initiator_name,
                h.itt,
                self.tasks.len()
            );
            let pdu = Pdu::with_data(Header::ScsiCommand(h), immediate_data.to_vec());
            self.reject_pdu(reject_reason::TOO_MANY_IMMEDIATE_COMMANDS, &pdu);
            return;
        }
        if self.tasks.id_of_itt(h.itt).is_some() {
            let pdu = Pdu::with_data(Header::ScsiCommand(h), immediate_data.to_vec());
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
            let task = TaskRef {
                id: 0,
                itt: h.itt,
                lun: h.lun,
                context,
            };
            self.send_scsi_response(task, &outcome, edtl, false);
            return;
        }
        if !immediate_data.is_empty() {
            let limit = edtl.min(self.params.first_burst_length);
            if !h.write || !self.params.immediate_data || immediate_data.len() as u32 > limit {
                let pdu = Pdu::with_data(Header::ScsiCommand(h), immediate_data.to_vec());
                self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                return;
            }
        }
        let write = h.write && edtl > 0;
        let received = immediate_data.len() as u32;
        // Unsolicited Data-Out may follow (RFC 7143 §4.2.5.2.2) up to FirstBurstLength.
        let unsolicited_end = if write
            && !h.final_flag
            && !self.params.initial_r2t
            && received < edtl.min(self.params.first_burst_length)
        {
            edtl.min(self.params.first_burst_length)
        } else {
            received
        };
        let task = Task {
            context,
            itt: h.itt,
            immediate: h.immediate,
            lun,
            lun_field: h.lun,
            cdb: h.cdb,
            attribute: h.attribute,
            expected_length: edtl,
            write,
            received,
            aborted: false,
        };
        let id = self.tasks.insert(task);
        if write {
            let mut buffer = immediate_data;
            if buffer.capacity() < edtl as usize {
                // The transport left no room for the rest of the transfer.
                let mut whole = mem_ffi::pool::global().with_capacity(edtl as usize);
                whole.extend_from_slice(&buffer);
                count_payload_copy(buffer.len());
                buffer = whole;
            }
            let numbers = self.sequence_numbers();
            let task = self.task_ref(id).expect("just inserted");
            self.actions.push_back(Action::GetData {
                task,
                buffer,
                range: received..edtl,
                unsolicited_end,
                numbers,
            });
        }
        self.start_if_complete(id);
    }

    /// What a datamover needs to address task `id`.
    fn task_ref(&self, id: TaskId) -> Option<TaskRef<C>> {
        self.tasks.get(id).map(|task| TaskRef {
            id,
            itt: task.itt,
            lun: task.lun_field,
            context: task.context.clone(),
        })
    }

    /// Once all of a task's data-out is in: mark it ready and start it if task ordering lets it.
    fn start_if_complete(&mut self, id: TaskId) {
        if self.tasks.ready_if_complete(id) {
            self.start(id);
        }
    }

    /// The datamover brought the initiator's data for `range` of task `task`'s buffer, in order.
    /// A range that does not continue what arrived before, or a task that no longer waits for
    /// data (aborted), is ignored.
    pub fn handle_data_received(&mut self, task: TaskId, range: std::ops::Range<u32>) {
        if self.tasks.state(task) != Some(TaskState::AwaitingData) {
            return;
        }
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        if range.start != t.received || range.end < range.start || range.end > t.expected_length {
            log::warn!(
                "data range {range:?} for ITT {:#x} does not follow the {} bytes received",
                t.itt,
                t.received
            );
            return;
        }
        t.received = range.end;
        self.start_if_complete(task);
    }

    /// The datamover found a Data-Out of task `task` that breaks the data sequence (offset,
    /// DataSN, TTT or length); `header` is the offending PDU's header.
    ///
    /// At ErrorRecoveryLevel 0 a Data-Out sequence error cannot be recovered within the task:
    /// reject the PDU and end the task with ABORTED COMMAND / DATA PHASE ERROR, so the initiator
    /// retries it. The session goes on; later Data-Out for this ITT is dropped as unknown.
    /// (Dropping the connection instead, as LIO does, crashes libiscsi 1.19's iscsi-test-cu in
    /// iSCSIDataSnInvalid.)
    pub fn handle_data_phase_error(&mut self, task: TaskId, header: &[u8]) {
        if self.tasks.state(task) != Some(TaskState::AwaitingData) {
            return;
        }
        self.send_reject(reject_reason::PROTOCOL_ERROR, header);
        let task_ref = self.task_ref(task).expect("state checked");
        let task = self.tasks.remove(task).expect("state checked");
        let outcome = ScsiOutcome::check_condition(0x0b, 0x4b, 0x00);
        self.send_scsi_response(task_ref, &outcome, task.expected_length, true);
        self.schedule();
    }

    /// A Data-Out the datamover did not take (iSER carries data-out in RDMA Reads, so a Data-Out
    /// in a Send is one): for a task waiting for data it is a data phase error; for any other
    /// ITT it is dropped quietly, the initiator learns the task's fate from its response or the
    /// TMF response.
    pub(super) fn handle_stray_data_out(&mut self, itt: u32, pdu: &Pdu) {
        match self
            .tasks
            .id_of_itt(itt)
            .filter(|&id| self.tasks.state(id) == Some(TaskState::AwaitingData))
        {
            Some(id) => {
                log::warn!("Data-Out for ITT {itt:#x} that the datamover did not solicit");
                self.handle_data_phase_error(id, &pdu.encode_header());
            }
            None => log::debug!("Data-Out for unknown ITT {itt:#x}"),
        }
    }

    /// Takes a task out of the table without a response, telling the datamover.
    pub(super) fn drop_task(&mut self, id: TaskId) {
        if let Some(task_ref) = self.task_ref(id) {
            self.tasks.remove(id);
            self.actions.push_back(Action::Release(task_ref));
        }
    }

    /// Starts the tasks that tasks leaving the table released (task ordering, see
    /// [`TaskTable::released_tasks`]). Tasks that become ready start at once in
    /// [`Connection::advance_write`] when ordering allows.
    pub(super) fn schedule(&mut self) {
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
            data_out: Buf::empty(),
            expected_transfer_length: task.expected_length,
            attribute,
            kind: TaskKind::Command,
        };
        self.actions.push_back(Action::Execute(scsi));
    }

    /// Hands a reset of logical unit `lun` to the backend ([`TaskKind::LunReset`]): the id
    /// its completion will carry.
    fn start_reset(&mut self, lun: u64) -> TaskId {
        let target = self
            .target
            .expect("a reset function needs a normal session's target");
        let id = self.next_reset_id;
        self.next_reset_id += 1;
        self.actions.push_back(Action::Execute(ScsiTask {
            id,
            target,
            lun,
            cdb: CdbBytes::default(),
            data_out: Buf::empty(),
            expected_transfer_length: 0,
            attribute: TaskAttr::Simple,
            kind: TaskKind::LunReset,
        }));
        id
    }

    /// Answer to [`Action::Execute`].
    pub fn handle_scsi_complete(&mut self, id: TaskId, outcome: ScsiOutcome) {
        if id >= FIRST_RESET_ID {
            // A logical unit reset is done: the TMF waiting for it may go.
            self.release_tmfs(id);
            return;
        }
        let Some(task_ref) = self.task_ref(id) else {
            return;
        };
        let task = self.tasks.remove(id).expect("found above");
        if !task.aborted && !matches!(self.phase, Phase::Closed) {
            self.send_command_result(task_ref, &task, outcome);
        } else {
            self.actions.push_back(Action::Release(task_ref));
        }
        self.release_tmfs(id);
        self.schedule();
        self.maybe_finish_draining();
    }

    fn send_command_result(&mut self, task_ref: TaskRef<C>, task: &Task<C>, outcome: ScsiOutcome) {
        let edtl = task.expected_length;
        if task.write || outcome.data_in.is_empty() {
            self.send_scsi_response(task_ref, &outcome, edtl, task.write);
            return;
        }
        // The data the initiator asked for (never more than EDTL), then the status; a datamover
        // may collapse the two where the transport allows (RFC 7143 §11.7.4).
        let full = outcome.data_in.len() as u64;
        let sent_len = full.min(edtl as u64) as u32;
        let residual = Residual::of(full, edtl);
        let ScsiOutcome {
            status,
            sense,
            data_in,
            ..
        } = outcome;
        if sent_len > 0 {
            let numbers = self.sequence_numbers();
            self.actions.push_back(Action::PutData {
                task: task_ref.clone(),
                data: data_in,
                range: 0..sent_len,
                numbers,
            });
        }
        self.respond(task_ref, status, sense, residual);
    }

    /// Final status of a command without Data-In: residuals from the command's own transfer
    /// length (writes) or from its data (no data at all).
    fn send_scsi_response(
        &mut self,
        task: TaskRef<C>,
        outcome: &ScsiOutcome,
        edtl: u32,
        write: bool,
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
        self.respond(task, outcome.status, outcome.sense, residual);
    }

    /// Queues the final status of a task; it takes a StatSN.
    fn respond(&mut self, task: TaskRef<C>, status: u8, sense: SenseData, residual: Residual) {
        let stat_sn = self.next_stat_sn();
        let numbers = SequenceNumbers {
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        };
        self.actions.push_back(Action::Respond {
            task,
            status,
            sense,
            residual,
            numbers,
        });
    }

    // ---------------------------------------------------------------- task management

    /// Tasks, or TMFs waiting for aborted tasks, a session may hold at once.
    fn outstanding_limit(&self) -> usize {
        self.config.queue_depth as usize + IMMEDIATE_COMMAND_HEADROOM as usize
    }

    pub(super) fn handle_tmf(&mut self, h: TaskMgmtRequest) {
        log::info!(
            "{}: task management function {} (referenced ITT {:#x}, LUN {:02x?})",
            self.initiator_name,
            h.function,
            h.referenced_task_tag,
            h.lun
        );
        if self.pending_tmfs.len() >= self.outstanding_limit() {
            // Each of those waits for tasks still in the backend; an initiator that piles up
            // more gets "Function rejected" (RFC 7143 §11.6.1). Linux never does: it sends one
            // TMF at a time per session (drivers/scsi/libiscsi.c iscsi_exec_task_mgmt_fn).
            log::warn!(
                "{}: rejecting TMF ITT {:#x}: {} TMF responses pending",
                self.initiator_name,
                h.itt,
                self.pending_tmfs.len()
            );
            self.send_tmf_response(h.itt, tmf::FUNCTION_REJECTED);
            return;
        }
        let lun = pdu::decode_lun(&h.lun);
        let lun_exists = match (self.target, lun) {
            (Some(t), Some(l)) => self.config.targets[t].luns.contains(&l),
            _ => false,
        };
        let mut close_after = false;
        // The LUs a reset function resets (each through the backend, see below).
        let mut resets: Vec<u64> = Vec::new();
        let (response, victims): (u8, Vec<TaskId>) = match h.function {
            tmf::ABORT_TASK => {
                match self.tasks.id_of_itt(h.referenced_task_tag) {
                    Some(id) => (tmf::FUNCTION_COMPLETE, vec![id]),
                    // RFC 7143 §11.6.1: no such task, but RefCmdSN is inside the CmdSN window
                    // and before the TMF's own CmdSN: the command has not arrived (or waits for
                    // a gap). Its CmdSN counts as received and the abort as done.
                    None if self.cmd_sn_in_window(h.ref_cmd_sn)
                        && sn_lt(h.ref_cmd_sn, h.cmd_sn) =>
                    {
                        self.give_up_cmd_sn(h.ref_cmd_sn);
                        (tmf::FUNCTION_COMPLETE, vec![])
                    }
                    // Outside the window: a task that already completed, or one never sent.
                    // libiscsi's test_async_abort_simple.c expects exactly this for a write
                    // that finished before its abort arrived.
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
                        resets.push(l);
                    }
                    (tmf::FUNCTION_COMPLETE, ids)
                }
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                close_after = h.function == tmf::TARGET_COLD_RESET;
                if let Some(target) = self.target {
                    resets.clone_from(&self.config.targets[target].luns);
                }
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
                // and hold the TMF response until then: the initiator frees the task's buffers
                // once it sees the TMF Response (Linux drivers/scsi/libiscsi.c iscsi_eh_abort).
                if let Some(task) = self.tasks.get_mut(id) {
                    task.aborted = true;
                }
                waiting_for.push(id);
            } else {
                self.drop_task(id);
            }
        }
        // A reset also ends the tasks of the LU's other sessions (SAM-5 7.8): the response
        // waits until none of them is in flight any more, so no write of theirs lands after
        // it (LIO's core_tmr_lun_reset drains them too). They cannot be recalled from the
        // backend; the reset runs once they have left it.
        for lun in resets {
            let id = self.start_reset(lun);
            waiting_for.push(id);
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

    /// Sends TMF responses whose aborted tasks have all left the backend. A TARGET COLD RESET
    /// among them ends the session only after every response released with it went out, so
    /// nothing follows the connection's Close.
    fn release_tmfs(&mut self, finished: TaskId) {
        if matches!(self.phase, Phase::Closed) {
            // The connection closed (a ping timed out, the transport failed) while a TMF
            // waited for a task the backend still held: its response has nowhere to go, and
            // nothing may follow the Close. Found by the `connection` fuzz target.
            self.pending_tmfs.clear();
            return;
        }
        for tmf in &mut self.pending_tmfs {
            tmf.waiting_for.retain(|&id| id != finished);
        }
        let mut shut_down = false;
        while let Some(pos) = self
            .pending_tmfs
            .iter()
            .position(|t| t.waiting_for.is_empty())
        {
            let tmf = self.pending_tmfs.remove(pos);
            self.send_tmf_response(tmf.itt, tmf.response);
            shut_down |= tmf.close_after;
        }
        if shut_down {
            self.handle_shutdown();
        }
    }

    fn send_tmf_response(&mut self, itt: u32, response: u8) {
        let stat_sn = self.next_stat_sn();
        let header = Header::TaskMgmtResponse(TaskMgmtResponse {
            response,
            itt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        });
        self.send(Pdu::new(header));
    }
}
