//! Command capsules: a command checked against the queue's state and its SGL, its host data
//! taken from the capsule or solicited (`data.rs`), then dispatched to the fabrics, admin or I/O
//! command set, and what that produced carried out.

use super::{Action, CloseReason, Command, CommandState, Phase, Queue};
use crate::nvme::auth::dh::DhWork;
use crate::nvme::command::{fctype, sgl_type, Sqe, Status, FABRICS_OPCODE};
use crate::nvme::io::IoCommand;
use crate::nvme::pdu::{pdu_type, Fes};
use crate::Buf;

/// What handling a command produced.
#[derive(Debug)]
pub(in crate::nvme) enum Outcome {
    /// Complete now with this status and result (DW0/DW1).
    Complete(Status, u64),
    /// Send this data to the host, then complete successfully.
    Data(Vec<u8>),
    /// Handed to the environment; completes later.
    Pending(IoCommand, u64),
    /// The command is held (Asynchronous Event Request) or waits for the environment
    /// (Connect).
    Held,
    /// An AUTH command waits for this computation ([`Action::Compute`]), then runs again.
    Compute(DhWork),
    /// Carry out the first, then close the queue for this reason (Disconnect, a failed
    /// authentication).
    Closing(Box<Outcome>, CloseReason),
}

impl Outcome {
    pub fn status(status: Status) -> Self {
        Outcome::Complete(status, 0)
    }
}

impl Queue {
    /// A command capsule: checked, its in-capsule data taken or its host data solicited,
    /// then dispatched.
    pub(super) fn handle_capsule(&mut self, sqe: Sqe, data: Buf, data_digest_ok: bool) {
        if self.phase == Phase::Live {
            self.sqhd = (self.sqhd + 1) % self.sq_size.max(1);
            if self.commands.len() >= usize::from(self.sq_size) {
                // More commands than the queue has entries: the host ignored SQ flow control.
                let mut header = vec![pdu_type::CAPSULE_CMD];
                header.extend_from_slice(&sqe.0[..8]);
                return self.terminate(Fes::PduSequenceError, 0, &header);
            }
        }
        let cid = sqe.cid();
        if self.commands.contains_key(&cid) {
            return self.respond(cid, Status::COMMAND_ID_CONFLICT, 0);
        }
        if !data_digest_ok {
            return self.respond(cid, Status::TRANSIENT_TRANSPORT_ERROR, 0);
        }
        if self.phase == Phase::AwaitingConnect
            && !(sqe.opcode() == FABRICS_OPCODE && sqe.fctype() == fctype::CONNECT)
        {
            // Linux drivers/nvme/target/core.c answers any command on an unconnected queue
            // this way (nvmet_parse_connect_cmd).
            return self.respond(cid, Status::COMMAND_SEQUENCE_ERROR, 0);
        }
        if self.awaiting_authentication()
            && !(sqe.opcode() == FABRICS_OPCODE
                && matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECEIVE))
        {
            // Until the queue has authenticated, Linux's nvmet answers anything else this way
            // (drivers/nvme/target/core.c nvmet_req_init, nvmet_check_auth_status).
            return self.respond(cid, Status::AUTH_REQUIRED, 0);
        }
        if let Err(status) = self.check_before_data(&sqe) {
            return self.respond(cid, status, 0);
        }
        let sgl = sqe.sgl();
        // Data direction from the opcode's low two bits (base 2.0 §5,; fabrics
        // command types likewise, NVMe-oF 1.1): bit 0 is host to controller.
        let direction = if sqe.opcode() == FABRICS_OPCODE {
            sqe.fctype()
        } else {
            sqe.opcode()
        } & 3;
        let takes_host_data = direction & 1 != 0 && sgl.length > 0;
        if sqe.psdt() == 0 && sgl.length > 0 {
            return self.respond(cid, Status::INVALID_FIELD, 0);
        }
        let mut command = Command {
            sqe,
            data: Buf::empty(),
            host_data: if takes_host_data { sgl.length } else { 0 },
            digest_failed: false,
            state: CommandState::ReceivingData {
                next: 0,
                r2t_end: 0,
            },
        };
        match sgl.descriptor_type {
            _ if sgl.length == 0 && data.is_empty() => {}
            sgl_type::IN_CAPSULE if takes_host_data => {
                let start = usize::try_from(sgl.address).unwrap_or(usize::MAX);
                let Some(end) = start
                    .checked_add(sgl.length as usize)
                    .filter(|&end| end <= data.len())
                else {
                    return self.respond(cid, Status::SGL_OFFSET_INVALID, 0);
                };
                command.data = if start == 0 && end == data.len() {
                    data
                } else {
                    Buf::copy_from_slice(&data[start..end])
                };
            }
            sgl_type::TRANSPORT if data.is_empty() => {
                if sgl.length > self.config.max_transfer {
                    return self.respond(cid, Status::INVALID_FIELD, 0);
                }
                if takes_host_data {
                    self.commands.insert(cid, command);
                    return self.solicit(cid);
                }
            }
            _ => return self.respond(cid, Status::SGL_TYPE_INVALID, 0),
        }
        self.commands.insert(cid, command);
        self.dispatch(cid);
    }

    /// Runs a command whose host data is all in.
    pub(super) fn dispatch(&mut self, cid: u16) {
        let Some(command) = self.commands.get_mut(&cid) else {
            return;
        };
        // A copy on the stack: dispatching allocates nothing for it.
        let sqe: Sqe = command.sqe.clone();
        let data = std::mem::take(&mut command.data);
        let outcome = if sqe.opcode() == FABRICS_OPCODE {
            let outcome = self.fabrics_command(&sqe, &data);
            if let (Outcome::Compute(_), Some(command)) = (&outcome, self.commands.get_mut(&cid)) {
                // Its message is handled again once computed.
                command.data = data;
            }
            outcome
        } else if self.qid == 0 {
            self.admin_command(&sqe)
        } else {
            self.io_command(&sqe, data)
        };
        self.carry_out(cid, &sqe, outcome);
    }

    /// Does what a command's handling produced.
    fn carry_out(&mut self, cid: u16, sqe: &Sqe, outcome: Outcome) {
        match outcome {
            Outcome::Complete(status, result) => {
                self.commands.remove(&cid);
                self.respond_about(cid, status, result, sqe.nsid(), 0)
            }
            Outcome::Data(bytes) => {
                self.commands.remove(&cid);
                let sgl_len = sqe.sgl().length as usize;
                if sgl_len < bytes.len() {
                    self.respond(cid, Status::DATA_SGL_LENGTH_INVALID, 0);
                } else {
                    // Admin replies are small; a copy into a pool buffer keeps one data type.
                    self.send_data(cid, Buf::copy_from_slice(&bytes).into());
                }
            }
            Outcome::Pending(io, lba) => {
                let id = io.id;
                self.executing.insert(id, cid);
                if let Some(c) = self.commands.get_mut(&cid) {
                    c.state = CommandState::Executing {
                        op: io.op.clone(),
                        lba,
                        bytes: io.data.len() as u64,
                    };
                }
                self.actions.push_back(Action::Execute(io));
            }
            Outcome::Held => {
                if let Some(c) = self.commands.get_mut(&cid) {
                    c.state = CommandState::Held;
                }
                // A held Asynchronous Event Request may take a notice at once.
                self.deliver_notice();
            }
            Outcome::Compute(work) => {
                if let Some(c) = self.commands.get_mut(&cid) {
                    c.state = CommandState::Computing;
                }
                self.computing = Some(cid);
                self.actions.push_back(Action::Compute(work));
            }
            Outcome::Closing(first, reason) => {
                self.carry_out(cid, sqe, *first);
                self.close(reason);
            }
        }
    }
}
