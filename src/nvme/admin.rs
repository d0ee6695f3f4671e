//! Fabrics commands (NVMe-oF 1.1 §3: Connect, Property Get/Set, Disconnect), admin commands
//! (base 2.0 §5: Identify, Get Log Page, Set/Get Features, Asynchronous Event Request, Keep
//! Alive, Abort) and the dispatch of I/O commands, as methods of [`Queue`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::{admin_opcode, fctype, io_opcode, sqe_offset, Sqe, Status};
use super::config::AnaGroup;
use super::config::{
    AllowedHost, NamespaceDescriptor, NvmeConfig, SubsystemDescriptor, DISCOVERY_NQN,
    MAX_ADMIN_QUEUE_SIZE,
};
use super::controller::{
    property, AdminState, CcChange, ControllerShared, Notice, NoticeState, VERSION,
};
use super::identify::{self, cns, MAX_HELD_EVENTS};
use super::io::{self, IoCommand};
use super::logs::{self, lid};
use super::queue::{
    Action, ConnectRefusal, ControllerState, CreateRequest, JoinRequest, Outcome, PendingConnect,
    Queue,
};
use crate::Buf;

/// Length of the Connect command's data (NVMe-oF 1.1).
const CONNECT_DATA_LEN: usize = 1024;
/// Offsets in the Connect data, for "invalid parameter" answers.
const CONNECT_CNTLID_OFFSET: u16 = 16;
const CONNECT_SUBNQN_OFFSET: u16 = 256;
const CONNECT_HOSTNQN_OFFSET: u16 = 512;

/// Subsystem index standing for the discovery subsystem in [`CreateRequest`].
pub const DISCOVERY_SUBSYSTEM: usize = usize::MAX;

/// Feature identifiers we answer (base 2.0).
mod fid {
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_IDENTIFIER: u8 = 0x81;
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;
}

/// The Asynchronous Event Configuration bits a discovery controller takes: Discovery Log Page
/// Change Notices (bit 31, base 2.0 §5.27.1.7) alone. Like the kernel's nvmet
/// (drivers/nvme/target/discovery.c: `nvmet_execute_disc_set_features` passes
/// `NVMET_DISC_AEN_CFG_OPTIONAL` to `nvmet_set_feat_async_event`), any other bit fails the
/// command with Invalid Field in Command and leaves the configuration as it was. OAES offers
/// it, so Linux's host enables it (drivers/nvme/host/core.c, `nvme_enable_aen`).
const DISCOVERY_AEN_CONFIG: u32 = Notice::DiscoveryLogChange.enable_bit();

/// The Asynchronous Event Configuration bits an I/O controller takes, the kernel's nvmet's
/// `NVMET_AEN_CFG_ALL` (drivers/nvme/target/nvmet.h, passed to `nvmet_set_feat_async_event` by
/// admin-cmd.c `nvmet_execute_set_features`): the notices both announce in OAES and send,
/// namespace attribute (bit 8) and ANA change (bit 11), plus the SMART / Health critical warnings
/// of bits 0-4, which neither ever sends but which SPDK's host always enables
/// (lib/nvme/nvme_ctrlr.c `nvme_ctrlr_configure_aer`; on failure it posts no Asynchronous Event
/// Request at all). Any other bit (firmware activation, telemetry, a discovery log change, a
/// reserved bit) fails the command with Invalid Field in Command, DNR, and leaves the
/// configuration as it was. Linux's host asks for OAES's bits only (drivers/nvme/host/core.c
/// `nvme_enable_aen`), which are all here.
const IO_AEN_CONFIG: u32 = SMART_CRITICAL_WARNINGS
    | Notice::NamespaceAttribute.enable_bit()
    | Notice::AnaChange.enable_bit();

/// SMART / Health critical warnings nvmet lets a host enable (spare, temperature, reliability,
/// read only, volatile memory backup: `NVME_SMART_CRIT_*` in include/linux/nvme.h).
const SMART_CRITICAL_WARNINGS: u32 = 0x1F;

/// Admin commands an I/O controller accepts (for the command effects log).
const ADMIN_COMMANDS: [u8; 7] = [
    admin_opcode::GET_LOG_PAGE,
    admin_opcode::IDENTIFY,
    admin_opcode::ABORT,
    admin_opcode::SET_FEATURES,
    admin_opcode::GET_FEATURES,
    admin_opcode::ASYNC_EVENT_REQUEST,
    admin_opcode::KEEP_ALIVE,
];

/// I/O commands, with whether they change logical block content.
const IO_COMMANDS: [(u8, bool); 10] = [
    (io_opcode::FLUSH, false),
    (io_opcode::WRITE, true),
    (io_opcode::READ, false),
    (io_opcode::COMPARE, false),
    (io_opcode::WRITE_ZEROES, true),
    (io_opcode::DATASET_MANAGEMENT, true),
    (io_opcode::RESERVATION_REGISTER, false),
    (io_opcode::RESERVATION_REPORT, false),
    (io_opcode::RESERVATION_ACQUIRE, false),
    (io_opcode::RESERVATION_RELEASE, false),
];

/// Connect's "invalid parameter" result: IATTR (1: in the data, 0: in the SQE) in bits 23:16
/// and the parameter's byte offset in bits 15:0 (NVMe-oF 1.1; Linux
/// drivers/nvme/target/fabrics-cmd.c IPO_IATTR_CONNECT_DATA / _SQE).
fn invalid_parameter(in_data: bool, offset: u16) -> Outcome {
    Outcome::Complete(
        Status::CONNECT_INVALID_PARAMETERS,
        u64::from(in_data) << 16 | u64::from(offset),
    )
}

/// An NQN field: bytes up to the first NUL, as UTF-8.
fn nqn(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end])
        .ok()
        .filter(|s| !s.is_empty())
}

/// The current size in blocks of namespace `ns` of subsystem `index`: what the environment's
/// [`NvmeConfig::capacity`] says, else its configured size.
fn current_blocks(config: &NvmeConfig, index: usize, ns: &NamespaceDescriptor) -> u64 {
    config
        .capacity
        .as_ref()
        .and_then(|c| c.bytes(index, ns.nsid))
        .map_or(ns.blocks, |bytes| bytes / u64::from(ns.block_size))
}

impl Queue {
    /// This queue's NVM subsystem; `None` for the discovery controller or before Connect.
    pub(super) fn subsystem(&self) -> Option<&SubsystemDescriptor> {
        let index = self.binding.as_ref()?.subsystem?;
        self.config.subsystems.get(index)
    }

    /// Namespace `nsid` of this queue's NVM subsystem, with its current size.
    fn namespace_now(&self, nsid: u32) -> Option<NamespaceDescriptor> {
        let index = self.binding.as_ref()?.subsystem?;
        let mut ns = self.config.subsystems.get(index)?.namespace(nsid)?.clone();
        ns.blocks = current_blocks(&self.config, index, &ns);
        Some(ns)
    }

    /// The current size of every namespace of this queue's NVM subsystem, by NSID.
    fn namespace_sizes(&self) -> Vec<(u32, u64)> {
        let Some(index) = self.binding.as_ref().and_then(|b| b.subsystem) else {
            return Vec::new();
        };
        self.config.subsystems[index]
            .namespaces
            .iter()
            .map(|ns| (ns.nsid, current_blocks(&self.config, index, ns)))
            .collect()
    }

    /// Compares the namespaces' sizes with those this controller saw last, and reports the
    /// resized ones as changed namespaces (a Namespace Attribute Changed notice, on which
    /// Linux's host reads the Changed Namespace List and revalidates them: drivers/nvme/host/
    /// core.c nvme_handle_aen_notice). Run on every admin command: a host sends Keep Alive
    /// at least every KATO / 2 (Linux drivers/nvme/host/core.c nvme_keep_alive_work_period),
    /// so a resize is reported within seconds without a clock in the core.
    fn check_capacity(&mut self) {
        let Some(capacity) = &self.config.capacity else {
            return;
        };
        if let Some(subsystem) = self.binding.as_ref().and_then(|b| b.subsystem) {
            for ns in &self.config.subsystems[subsystem].namespaces {
                capacity.measure(subsystem, ns.nsid);
            }
        }
        let now = self.namespace_sizes();
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        let changed: Vec<u32> = now
            .iter()
            .filter(|size| !admin.namespace_sizes.contains(size))
            .map(|&(nsid, _)| nsid)
            .collect();
        admin.namespace_sizes = now;
        if !changed.is_empty() {
            self.handle_namespaces_changed(&changed);
        }
    }

    /// Checks that can fail a command before its host data is fetched: Connect's data length,
    /// and an I/O command's namespace, range, write protection and SGL length.
    pub(super) fn check_before_data(&self, sqe: &Sqe) -> Result<(), Status> {
        let sgl_len = sqe.sgl().length as usize;
        if sqe.opcode() == super::command::FABRICS_OPCODE {
            if sqe.fctype() == fctype::CONNECT && sgl_len != CONNECT_DATA_LEN {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            }
            if matches!(sqe.fctype(), fctype::AUTH_SEND | fctype::AUTH_RECEIVE) {
                return super::fabrics_auth::check(sqe);
            }
            return Ok(());
        }
        if self.qid == 0 {
            return Ok(());
        }
        let plan = self.plan_io(sqe)?;
        let wanted = plan.host_data.max(plan.controller_data);
        if wanted != sgl_len {
            return Err(Status::DATA_SGL_LENGTH_INVALID);
        }
        Ok(())
    }

    fn plan_io(&self, sqe: &Sqe) -> Result<io::IoPlan, Status> {
        let ns = self
            .namespace_now(sqe.nsid())
            .ok_or(Status::INVALID_NAMESPACE)?;
        io::plan(sqe, &ns, self.config.max_transfer)
    }

    /// An I/O command whose host data is in `data`.
    pub(super) fn io_command(&mut self, sqe: &Sqe, data: Buf) -> Outcome {
        let plan = match self.plan_io(sqe) {
            Ok(plan) => plan,
            Err(status) => return Outcome::status(status),
        };
        let op = if sqe.opcode() == io_opcode::DATASET_MANAGEMENT {
            let ns = self.namespace_now(sqe.nsid()).expect("planned");
            match io::dataset_management(sqe, &ns, &data) {
                Ok(Some(op)) => op,
                Ok(None) => return Outcome::status(Status::SUCCESS),
                Err(status) => return Outcome::status(status),
            }
        } else {
            plan.op
        };
        let data = if plan.host_data > 0 && sqe.opcode() != io_opcode::DATASET_MANAGEMENT {
            data
        } else {
            Buf::empty()
        };
        let io = IoCommand {
            id: self.next_io_id(),
            nsid: sqe.nsid(),
            op,
            data,
        };
        Outcome::Pending(io, plan.lba)
    }

    /// A fabrics command (NVMe-oF 1.1 §3).
    pub(super) fn fabrics_command(&mut self, sqe: &Sqe, data: &[u8]) -> Outcome {
        let connected = self.binding.is_some();
        match sqe.fctype() {
            fctype::CONNECT if !connected => self.connect(sqe, data),
            fctype::CONNECT => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
            fctype::PROPERTY_GET if self.qid == 0 => {
                self.keep_alive();
                self.property_get(sqe)
            }
            fctype::PROPERTY_SET if self.qid == 0 => {
                self.keep_alive();
                self.property_set(sqe)
            }
            fctype::AUTH_SEND if connected => self.auth_send(data),
            fctype::AUTH_RECEIVE if connected => self.auth_receive(sqe),
            fctype::DISCONNECT if self.qid != 0 => Outcome::Closing(
                Box::new(Outcome::status(Status::SUCCESS)),
                super::queue::CloseReason::Disconnect,
            ),
            // Property commands belong on the admin queue and Disconnect on an I/O queue
            // (NVMe-oF 1.1 §3.4, §3.5); anything else is unknown.
            fctype::PROPERTY_GET | fctype::PROPERTY_SET | fctype::DISCONNECT => {
                Outcome::status(Status::INVALID_FIELD)
            }
            _ => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    /// Connect (NVMe-oF 1.1 §3.3): checks the parameters, then asks the environment for a
    /// controller (admin queue) or to join one (I/O queue).
    fn connect(&mut self, sqe: &Sqe, data: &[u8]) -> Outcome {
        if sqe.recfmt() != 0 {
            return Outcome::status(Status::CONNECT_INCOMPATIBLE_FORMAT);
        }
        if data.len() != CONNECT_DATA_LEN {
            return Outcome::status(Status::DATA_SGL_LENGTH_INVALID);
        }
        let host_id: [u8; 16] = data[0..16].try_into().expect("16 bytes");
        let cntlid = u16::from_le_bytes([data[16], data[17]]);
        let Some(subnqn) = nqn(&data[256..512]) else {
            return invalid_parameter(true, CONNECT_SUBNQN_OFFSET);
        };
        let Some(host_nqn) = nqn(&data[512..768]) else {
            return invalid_parameter(true, CONNECT_HOSTNQN_OFFSET);
        };
        let subsystem = if subnqn == DISCOVERY_NQN {
            None
        } else {
            // On a discovery-only portal the NVM subsystems are not there to connect to, as
            // Linux's nvmet answers a subsystem not linked to the port (drivers/nvme/target/
            // core.c nvmet_alloc_ctrl: invalid parameter, the SUBNQN).
            let found = self.config.subsystems.iter().position(|s| s.nqn == subnqn);
            match found.filter(|_| !self.config.discovery_only) {
                Some(i) => Some(i),
                None => return invalid_parameter(true, CONNECT_SUBNQN_OFFSET),
            }
        };
        if let Some(i) = subsystem {
            if !self.config.subsystems[i].allows(host_nqn) {
                self.host_not_allowed(host_nqn, i);
                return Outcome::status(Status::CONNECT_INVALID_HOST);
            }
        }
        let qid = sqe.connect_qid();
        if qid != 0 && (subsystem.is_none() || qid > self.config.max_io_queues) {
            return invalid_parameter(false, sqe_offset::QID);
        }
        let max_size = if qid == 0 {
            MAX_ADMIN_QUEUE_SIZE
        } else {
            self.config.max_queue_size
        };
        let sqsize = sqe.connect_sqsize();
        if sqsize == 0 || sqsize >= max_size {
            return invalid_parameter(false, sqe_offset::SQSIZE);
        }
        let pending = PendingConnect {
            cid: sqe.cid(),
            cntlid,
            host_nqn: host_nqn.to_string(),
            host_id,
            qid,
            sq_size: sqsize + 1,
            kato_ms: sqe.connect_kato(),
            subsystem,
            // CATTR bit 2: the host disabled SQ flow control (NVMe-oF 1.1).
            sq_flow_disabled: sqe.connect_cattr() & 1 << 2 != 0,
            secrets: subsystem.and_then(|i| self.config.subsystems[i].host_secrets(host_nqn)),
        };
        let subsystem_index = subsystem.unwrap_or(DISCOVERY_SUBSYSTEM);
        let action = if qid == 0 {
            Action::CreateController(CreateRequest {
                subsystem: subsystem_index,
                host_nqn: host_nqn.to_string(),
                host_id,
            })
        } else {
            Action::JoinController(JoinRequest {
                cntlid,
                qid,
                subsystem: subsystem_index,
                host_nqn: host_nqn.to_string(),
                host_id,
            })
        };
        self.await_connect(pending);
        self.push(action);
        Outcome::Held
    }

    /// The environment created the controller of this admin queue (or refused to).
    pub fn handle_controller_created(
        &mut self,
        result: Result<(u16, Arc<ControllerShared>), ConnectRefusal>,
        now: Instant,
    ) {
        self.now = now;
        let Some(pending) = self.pending_connect.take() else {
            return;
        };
        let (cntlid, shared) = match result {
            Ok(created) => created,
            Err(refusal) => return self.refuse(&pending, refusal),
        };
        let kato_ms = if pending.kato_ms == 0 && pending.subsystem.is_none() {
            self.config
                .discovery_kato
                .as_millis()
                .min(u128::from(u32::MAX)) as u32
        } else {
            pending.kato_ms
        };
        self.admin = Some(AdminState {
            kato_ms,
            ana: self.config.ana,
            ..AdminState::default()
        });
        let cid = pending.cid;
        self.go_live(pending, cntlid, shared);
        let sizes = self.namespace_sizes();
        if let Some(admin) = self.admin.as_mut() {
            admin.namespace_sizes = sizes;
        }
        if !self.awaiting_authentication() {
            self.keep_alive();
        }
        self.complete(cid, Status::SUCCESS, self.connect_result(cntlid));
        self.process();
    }

    /// The environment joined this I/O queue to its controller (or refused to).
    pub fn handle_controller_joined(
        &mut self,
        result: Result<Arc<ControllerShared>, ConnectRefusal>,
        now: Instant,
    ) {
        self.now = now;
        let Some(pending) = self.pending_connect.take() else {
            return;
        };
        let shared = match result {
            Ok(shared) => shared,
            Err(refusal) => return self.refuse(&pending, refusal),
        };
        let (cid, cntlid) = (pending.cid, pending.cntlid);
        self.go_live(pending, cntlid, shared);
        self.complete(cid, Status::SUCCESS, self.connect_result(cntlid));
        self.process();
    }

    fn refuse(&mut self, pending: &PendingConnect, refusal: ConnectRefusal) {
        if let (ConnectRefusal::HostNotAllowed, Some(subsystem)) = (refusal, pending.subsystem) {
            self.host_not_allowed(&pending.host_nqn, subsystem);
        }
        let (status, result) = match refusal {
            ConnectRefusal::ControllerBusy => (Status::CONNECT_CONTROLLER_BUSY, 0),
            ConnectRefusal::UnknownController => (
                Status::CONNECT_INVALID_PARAMETERS,
                1 << 16 | u64::from(CONNECT_CNTLID_OFFSET),
            ),
            ConnectRefusal::ControllerNotReady => (Status::COMMAND_SEQUENCE_ERROR, 0),
            ConnectRefusal::InvalidQueue => (
                Status::CONNECT_INVALID_PARAMETERS,
                u64::from(sqe_offset::QID),
            ),
            ConnectRefusal::HostNotAllowed => (Status::CONNECT_INVALID_HOST, 0),
        };
        self.refuse_connect(pending.cid, status, result);
    }

    /// Tells the environment that `host_nqn` may not connect to subsystem `subsystem`.
    fn host_not_allowed(&mut self, host_nqn: &str, subsystem: usize) {
        self.push(Action::HostNotAllowed {
            host_nqn: host_nqn.to_string(),
            subsystem_nqn: self.config.subsystems[subsystem].nqn.clone(),
        });
    }

    /// Connect's result: the controller ID, and AUTHREQ's ATR bit (17) when the host must
    /// authenticate (NVMe-oF 1.1 Connect response; Linux `NVME_CONNECT_AUTHREQ_ATR`, which its
    /// host reads to start DH-HMAC-CHAP on the queue).
    fn connect_result(&self, cntlid: u16) -> u64 {
        u64::from(cntlid) | u64::from(self.awaiting_authentication()) << 17
    }

    /// Restarts the keep alive timer of an admin queue (any command counts: a host that sends
    /// commands is alive).
    pub(super) fn keep_alive(&mut self) {
        let Some(admin) = &self.admin else {
            return;
        };
        let deadline =
            (admin.kato_ms > 0).then(|| self.now + Duration::from_millis(u64::from(admin.kato_ms)));
        self.set_deadline(deadline);
    }

    fn property_get(&mut self, sqe: &Sqe) -> Outcome {
        let Some(admin) = &self.admin else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let eight = sqe.property_size() == 1;
        let value = match (sqe.property_offset(), eight) {
            // CAP: MQES, CQR, TO 7.5 s (15 × 500 ms, as Linux's nvmet), CSS NVM; MPSMIN and
            // MPSMAX 4 KiB.
            (property::CAP, true) => {
                u64::from(self.config.max_queue_size.saturating_sub(1))
                    | 1 << 16
                    | 15 << 24
                    | 1 << 37
            }
            (property::VS, false) => u64::from(VERSION),
            (property::CC, false) => u64::from(admin.cc),
            (property::CSTS, false) => u64::from(admin.csts),
            _ => return Outcome::status(Status::INVALID_FIELD),
        };
        Outcome::Complete(Status::SUCCESS, value)
    }

    fn property_set(&mut self, sqe: &Sqe) -> Outcome {
        if sqe.property_offset() != property::CC || sqe.property_size() != 0 {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let cntlid = self.cntlid();
        let (Some(admin), Some(cntlid)) = (self.admin.as_mut(), cntlid) else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let change = admin.write_cc(sqe.property_value() as u32);
        let state = ControllerState {
            ready: admin.ready(),
            io_queues: admin.io_queues,
        };
        // A reset or shutdown ends the held Asynchronous Event Requests without completions
        // (the host discards its outstanding commands) and the event configuration.
        let dropped = if change == CcChange::Disabled {
            admin.async_event_config = 0;
            admin.notices = Default::default();
            std::mem::take(&mut admin.held_events)
        } else {
            Vec::new()
        };
        for cid in dropped {
            self.forget(cid);
        }
        if change != CcChange::Nothing {
            self.push(Action::ControllerChanged { cntlid, state });
        }
        Outcome::status(Status::SUCCESS)
    }

    /// An admin command (base 2.0 §5) on a connected admin queue.
    pub(super) fn admin_command(&mut self, sqe: &Sqe) -> Outcome {
        let ready = self.admin.as_ref().is_some_and(AdminState::ready);
        if !ready {
            // Linux drivers/nvme/target/admin-cmd.c (nvmet_check_ctrl_status): admin commands
            // need CC.EN and CSTS.RDY.
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        }
        self.keep_alive();
        self.check_capacity();
        self.check_reservations();
        let discovery = self.subsystem().is_none();
        match sqe.opcode() {
            admin_opcode::IDENTIFY => self.identify(sqe),
            admin_opcode::GET_LOG_PAGE => self.get_log_page(sqe),
            admin_opcode::SET_FEATURES => self.set_features(sqe),
            admin_opcode::GET_FEATURES => self.get_features(sqe),
            admin_opcode::ASYNC_EVENT_REQUEST => self.async_event_request(sqe),
            admin_opcode::KEEP_ALIVE => Outcome::status(Status::SUCCESS),
            // Commands already handed to a backend cannot be recalled: report "not aborted"
            // (DW0 bit 0), as Linux drivers/nvme/target/admin-cmd.c does for every Abort.
            admin_opcode::ABORT if !discovery => Outcome::Complete(Status::SUCCESS, 1),
            _ => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    fn identify(&mut self, sqe: &Sqe) -> Outcome {
        let cns = (sqe.cdw(10) & 0xFF) as u8;
        let csi = (sqe.cdw(11) >> 24) as u8;
        let cntlid = self.cntlid().unwrap_or(0);
        let Some(subsystem) = self.subsystem() else {
            return match cns {
                cns::CONTROLLER => Outcome::Data(identify::controller(&self.config, None, cntlid)),
                _ => Outcome::status(Status::INVALID_FIELD),
            };
        };
        let ana_group = self.config.ana.id;
        let namespace = || {
            self.namespace_now(sqe.nsid())
                .ok_or(Status::INVALID_NAMESPACE)
        };
        let data = match cns {
            cns::CONTROLLER => Ok(identify::controller(&self.config, Some(subsystem), cntlid)),
            cns::NAMESPACE => namespace().map(|ns| identify::namespace(&ns, ana_group)),
            cns::ACTIVE_NAMESPACES if sqe.nsid() >= 0xFFFF_FFFE => Err(Status::INVALID_NAMESPACE),
            cns::ACTIVE_NAMESPACES => Ok(identify::active_namespaces(subsystem, sqe.nsid())),
            cns::NAMESPACE_DESCRIPTORS => {
                namespace().map(|ns| identify::namespace_descriptors(&ns))
            }
            cns::CSI_NAMESPACE if csi == 0 => {
                namespace().map(|_| identify::nvm_command_set_specific())
            }
            cns::CSI_CONTROLLER if csi == 0 => {
                Ok(identify::nvm_controller(self.config.max_transfer))
            }
            cns::CSI_INDEPENDENT_NAMESPACE => {
                namespace().map(|ns| identify::csi_independent_namespace(&ns, ana_group))
            }
            cns::COMMAND_SET_LIST => Ok(identify::command_set_list()),
            _ => Err(Status::INVALID_FIELD),
        };
        match data {
            Ok(d) => Outcome::Data(d),
            Err(status) => Outcome::status(status),
        }
    }

    fn get_log_page(&mut self, sqe: &Sqe) -> Outcome {
        let cdw10 = sqe.cdw(10);
        let log_id = (cdw10 & 0xFF) as u8;
        let retain_event = cdw10 & 1 << 15 != 0;
        // NUMD, 0's based dwords: NUMDL in CDW10 31:16, NUMDU in CDW11 15:0.
        let numd = (u64::from(sqe.cdw(11) & 0xFFFF) << 16 | u64::from(cdw10 >> 16)) + 1;
        let len = numd * 4;
        if len > u64::from(self.config.max_transfer) {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let offset = u64::from(sqe.cdw(13)) << 32 | u64::from(sqe.cdw(12));
        let Some(binding) = &self.binding else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let subsystem = self.subsystem();
        let log = match (log_id, subsystem) {
            (lid::ERROR, _) => logs::error_information(&binding.shared.errors()),
            (lid::DISCOVERY, None) => {
                let entries = logs::visible_entries(&self.config, &binding.host_nqn);
                // GENCTR changes whenever the entries do: a checksum of their log.
                let current = self.config.current_port.as_ref();
                let unnumbered = logs::discovery(current, &entries, 0);
                let generation = u64::from(crc32c::crc32c(&unnumbered));
                let log = logs::discovery(current, &entries, generation);
                if !retain_event {
                    let admin = self.admin.as_mut().expect("admin queue");
                    *admin.notice(Notice::DiscoveryLogChange) = NoticeState::default();
                }
                log
            }
            (lid::SMART, Some(_)) => logs::smart(&binding.shared.counters()),
            (lid::FIRMWARE_SLOT, Some(s)) => logs::firmware_slot(&s.firmware),
            (lid::COMMAND_EFFECTS, Some(_)) => logs::command_effects(&ADMIN_COMMANDS, &IO_COMMANDS),
            (lid::ANA, Some(s)) => {
                let nsids: Vec<u32> = s.namespaces.iter().map(|n| n.nsid).collect();
                let admin = self.admin.as_mut().expect("admin queue");
                // Read without RAE, the log shows the host all a pending notice would announce:
                // the notice is cleared and unmasked (base 2.0 §5.2).
                if !retain_event {
                    *admin.notice(Notice::AnaChange) = NoticeState::default();
                }
                // LSP bit 0 (CDW10 bit 8) is RGO, Return Groups Only.
                logs::ana(admin.ana, &nsids, cdw10 & 1 << 8 != 0)
            }
            (lid::RESERVATION_NOTIFICATION, Some(_)) => self.reservation_log(retain_event),
            (lid::CHANGED_NAMESPACES, Some(_)) => {
                let admin = self.admin.as_mut().expect("admin queue");
                let log = logs::changed_namespaces(&admin.changed_namespaces);
                if !retain_event {
                    admin.changed_namespaces.clear();
                    *admin.notice(Notice::NamespaceAttribute) = NoticeState::default();
                }
                log
            }
            _ => return Outcome::status(Status::INVALID_LOG_PAGE),
        };
        match logs::window(&log, offset, len as usize) {
            Ok(d) => Outcome::Data(d),
            Err(status) => Outcome::status(status),
        }
    }

    fn set_features(&mut self, sqe: &Sqe) -> Outcome {
        let cdw10 = sqe.cdw(10);
        let cdw11 = sqe.cdw(11);
        if cdw10 & 1 << 31 != 0 {
            return Outcome::status(Status::FEATURE_NOT_SAVEABLE);
        }
        let discovery = self.subsystem().is_none();
        let max_io_queues = self.config.max_io_queues;
        let cntlid = self.cntlid().unwrap_or(0);
        let discovery_kato = self.config.discovery_kato;
        let aen_config = if discovery {
            DISCOVERY_AEN_CONFIG
        } else {
            IO_AEN_CONFIG
        };
        let admin = self.admin.as_mut().expect("admin queue");
        match (cdw10 & 0xFF) as u8 {
            fid::NUMBER_OF_QUEUES if !discovery => {
                let (sq, cq) = (cdw11 & 0xFFFF, cdw11 >> 16);
                if sq == 0xFFFF || cq == 0xFFFF {
                    return Outcome::status(Status::INVALID_FIELD);
                }
                let granted = (sq.min(cq) + 1).min(u32::from(max_io_queues)) as u16;
                admin.io_queues = granted;
                let state = ControllerState {
                    ready: admin.ready(),
                    io_queues: granted,
                };
                self.push(Action::ControllerChanged { cntlid, state });
                let n = u64::from(granted.saturating_sub(1));
                Outcome::Complete(Status::SUCCESS, n | n << 16)
            }
            fid::KEEP_ALIVE_TIMER => {
                admin.kato_ms = if cdw11 == 0 && discovery {
                    discovery_kato.as_millis().min(u128::from(u32::MAX)) as u32
                } else {
                    cdw11
                };
                self.keep_alive();
                Outcome::status(Status::SUCCESS)
            }
            fid::ASYNC_EVENT_CONFIG if cdw11 & !aen_config != 0 => {
                Outcome::status(Status::INVALID_FIELD)
            }
            fid::ASYNC_EVENT_CONFIG => {
                admin.async_event_config = cdw11;
                self.deliver_notice();
                Outcome::status(Status::SUCCESS)
            }
            // The cache mode is the LUN's configuration, not the host's to change.
            fid::VOLATILE_WRITE_CACHE if !discovery => {
                Outcome::status(Status::FEATURE_NOT_CHANGEABLE)
            }
            // Over fabrics the Host Identifier is Connect's (NVMe-oF 1.1 §3.3); Linux's nvmet
            // answers a Set the same way (drivers/nvme/target/admin-cmd.c
            // nvmet_execute_set_features).
            fid::HOST_IDENTIFIER if !discovery => Outcome::status(Status::COMMAND_SEQUENCE_ERROR),
            fid::RESERVATION_NOTIFICATION_MASK if !discovery => self.set_reservation_mask(sqe),
            // Persistence changes with Reservation Register's CPTPL, which saves the state.
            fid::RESERVATION_PERSISTENCE if !discovery => {
                Outcome::status(Status::FEATURE_NOT_CHANGEABLE)
            }
            _ => Outcome::status(Status::INVALID_FIELD),
        }
    }

    fn get_features(&mut self, sqe: &Sqe) -> Outcome {
        let cdw10 = sqe.cdw(10);
        let select = (cdw10 >> 8) & 7;
        let feature = (cdw10 & 0xFF) as u8;
        let discovery = self.subsystem().is_none();
        let cache = self
            .subsystem()
            .is_some_and(|s| s.namespaces.iter().any(|n| n.volatile_write_cache));
        let max_io_queues = self.config.max_io_queues;
        let admin = self.admin.as_ref().expect("admin queue");
        let known = match feature {
            fid::NUMBER_OF_QUEUES
            | fid::VOLATILE_WRITE_CACHE
            | fid::HOST_IDENTIFIER
            | fid::RESERVATION_NOTIFICATION_MASK
            | fid::RESERVATION_PERSISTENCE => !discovery,
            fid::KEEP_ALIVE_TIMER | fid::ASYNC_EVENT_CONFIG => true,
            _ => false,
        };
        if !known {
            return Outcome::status(Status::INVALID_FIELD);
        }
        // SEL 3: supported capabilities (base 2.0): changeable (bit 2), except the
        // cache, which is fixed.
        if select == 3 {
            let changeable = !matches!(
                feature,
                fid::VOLATILE_WRITE_CACHE | fid::HOST_IDENTIFIER | fid::RESERVATION_PERSISTENCE
            );
            let per_namespace = matches!(
                feature,
                fid::RESERVATION_NOTIFICATION_MASK | fid::RESERVATION_PERSISTENCE
            );
            return Outcome::Complete(
                Status::SUCCESS,
                u64::from(changeable) << 2 | u64::from(per_namespace) << 1,
            );
        }
        if matches!(
            feature,
            fid::RESERVATION_NOTIFICATION_MASK | fid::RESERVATION_PERSISTENCE
        ) {
            return self.get_reservation_feature(sqe, feature == fid::RESERVATION_PERSISTENCE);
        }
        if feature == fid::HOST_IDENTIFIER {
            // EXHID (CDW11 bit 0) asks for the 128-bit form, the only one a fabrics host has
            // (NVMe-oF 1.1 §3.3); the 64-bit form does not exist here.
            if sqe.cdw(11) & 1 == 0 {
                return Outcome::status(Status::INVALID_FIELD);
            }
            let host_id = self.binding.as_ref().map_or([0; 16], |b| b.host_id);
            return Outcome::Data(host_id.to_vec());
        }
        let value = match feature {
            fid::NUMBER_OF_QUEUES => {
                let n = u64::from(if admin.io_queues == 0 {
                    max_io_queues
                } else {
                    admin.io_queues
                })
                .saturating_sub(1);
                n | n << 16
            }
            fid::VOLATILE_WRITE_CACHE => u64::from(cache),
            fid::KEEP_ALIVE_TIMER => u64::from(admin.kato_ms),
            _ => u64::from(admin.async_event_config),
        };
        Outcome::Complete(Status::SUCCESS, value)
    }

    fn async_event_request(&mut self, sqe: &Sqe) -> Outcome {
        let admin = self.admin.as_mut().expect("admin queue");
        if admin.held_events.len() >= MAX_HELD_EVENTS {
            return Outcome::status(Status::ASYNC_EVENT_LIMIT_EXCEEDED);
        }
        admin.held_events.push(sqe.cid());
        Outcome::Held
    }

    /// Namespaces of this admin queue's subsystem changed (resized, added, removed): remember
    /// them for the Changed Namespace List log and tell the host by an asynchronous event
    /// when it enabled namespace attribute notices.
    pub fn handle_namespaces_changed(&mut self, nsids: &[u32]) {
        if self.is_closed() || self.subsystem().is_none() {
            return;
        }
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        for &id in nsids {
            if !admin.changed_namespaces.contains(&id) {
                admin.changed_namespaces.push(id);
            }
        }
        admin.notice(Notice::NamespaceAttribute).pending = true;
        self.deliver_notice();
    }

    /// The gateway's ANA group changed state (its configuration was reloaded): an admin queue
    /// of an NVM subsystem reports `group` in the ANA log from now on and, when it is new to
    /// it, tells the host by an ANA change notice (base 2.0 §8.1.1.5), held until the host
    /// enabled those notices and has an Asynchronous Event Request outstanding. Other queues
    /// ignore it.
    pub fn handle_ana_changed(&mut self, group: AnaGroup, now: Instant) {
        if self.is_closed() || self.subsystem().is_none() {
            return;
        }
        self.now = now;
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        if admin.ana == group {
            return;
        }
        admin.ana = group;
        admin.notice(Notice::AnaChange).pending = true;
        self.deliver_notice();
    }

    /// The subsystems' allowed hosts changed (a reload; `allowed` by subsystem index): a
    /// discovery controller takes the new lists, and when its host now sees other entries in
    /// the discovery log it is told by a Discovery Log Page Change notice, as nvmet tells it
    /// when a host is allowed or disallowed (drivers/nvme/target/configfs.c
    /// nvmet_allowed_hosts_allow_link and _drop_link call nvmet_subsys_disc_changed). An NVM
    /// subsystem's controllers keep their copy: the environment ends those of hosts no longer
    /// allowed.
    pub fn handle_allowed_hosts_changed(&mut self, allowed: &[Vec<AllowedHost>], now: Instant) {
        // Only a live discovery controller: the cheap checks before the lists are compared
        // (every admin queue is poked on a reload, and for other reasons).
        let host = match &self.binding {
            Some(b) if b.subsystem.is_none() && self.admin.is_some() && !self.is_closed() => {
                b.host_nqn.clone()
            }
            _ => return,
        };
        let unchanged = (self.config.subsystems.iter())
            .zip(allowed)
            .all(|(s, hosts)| s.allowed_hosts == *hosts);
        if unchanged {
            return;
        }
        self.now = now;
        let before = logs::visible_entries(&self.config, &host);
        let config = Arc::make_mut(&mut self.config);
        for (subsystem, hosts) in config.subsystems.iter_mut().zip(allowed) {
            subsystem.allowed_hosts.clone_from(hosts);
        }
        if logs::visible_entries(&self.config, &host) != before {
            let admin = self.admin.as_mut().expect("admin queue");
            admin.notice(Notice::DiscoveryLogChange).pending = true;
            self.deliver_notice();
        }
    }

    /// Completes held Asynchronous Event Requests with the notices that are pending, enabled
    /// and not masked (base 2.0 §5.2), one request each.
    pub(super) fn deliver_notice(&mut self) {
        for notice in Notice::ALL {
            let Some(admin) = self.admin.as_ref() else {
                return;
            };
            let enabled = notice.enabled(admin.async_event_config);
            let state = admin.notices[notice as usize];
            if !state.pending || state.masked || !enabled {
                continue;
            }
            let Some(position) = admin.held_events.iter().position(|&cid| self.is_held(cid)) else {
                return;
            };
            let admin = self.admin.as_mut().expect("admin queue");
            let cid = admin.held_events.remove(position);
            *admin.notice(notice) = NoticeState {
                pending: false,
                masked: true,
            };
            self.complete(cid, Status::SUCCESS, notice.result());
        }
    }
}
