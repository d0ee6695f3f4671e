//! SPC-4 / SBC-3 command handling for block logical units.
//!
//! The layer is sans-IO: [`LogicalUnit::plan`] decodes and validates a CDB and yields either
//! an immediate answer ([`Plan::Done`]) or a primitive [`BlockRequest`]; [`run`] executes a
//! block request against a [`Backend`]; [`finish`] maps the result back to a [`ScsiOutcome`].
//! [`ScsiTarget::prepare`] does the first step for a whole target; the server's engine runs the
//! request asynchronously (io_uring, inline for RAM, or a blocking pool) and finishes it.
//! [`ScsiTarget::execute`] strings the three together synchronously (tests, benchmarks,
//! tools). Every failure is sense data, never a panic: CDB fields are read through
//! bounds-safe accessors and all LBA arithmetic is checked.

#![forbid(unsafe_code)]

mod alua;
mod block;
mod cdb;
mod counters;
mod inquiry;
mod mode;
mod opcodes;
mod pr;
pub mod sense;
mod target;
mod ua;
mod xcopy;

pub use alua::{AluaPort, AluaState};
/// Largest data transfer one command may ask for (VPD B0 MAXIMUM TRANSFER LENGTH, in bytes).
pub use block::limits::{MAX_TRANSFER_BYTES, MAX_UNMAP_BYTES};
pub use block::{finish, run, BlockReply, BlockRequest, Primitive};
pub use counters::{IoTotals, Transfer};
pub use pr::{
    NvmeReservation, NvmeReservationKind, RecordError, ReservationChange, ReservationNotice,
    ReservationStore, ReservationSummary, Reservations, SharedError, SharedReservationStore,
    NVME_RESERVATION_OPCODE,
};
pub use target::{decode_lun, encode_lun, Prepared, ScsiTarget};
pub use xcopy::{CopyJob, CopyList};

use crate::backend::{Backend, BackendError};
use crate::hex;
use cdb::Cdb;
use mem_ffi::{Buf, Payload};
use sense::{Sense, SenseData};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// SAM status codes carried in the iSCSI SCSI Response.
pub mod status {
    /// The command completed successfully.
    pub const GOOD: u8 = 0x00;
    /// The command failed; sense data describes why.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// PRE-FETCH style success with the condition met.
    pub const CONDITION_MET: u8 = 0x04;
    /// The LU is busy; the initiator should retry.
    pub const BUSY: u8 = 0x08;
    /// Another I_T nexus holds a conflicting reservation.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// The task set is full; the initiator should retry.
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Operation codes handled by this module (SPC-4 / SBC-3).
mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;

    /// SERVICE ACTION IN(16) service action: READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    /// SERVICE ACTION IN(16) service action: GET LBA STATUS.
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service action: REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
}

/// Result type of command decoding: an error is the sense condition to report.
type CmdResult<T> = Result<T, Sense>;

/// Static description of one logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunParams {
    /// LUN number; 0..=255 use peripheral addressing, up to 16383 flat (see [`encode_lun`]).
    pub lun: u64,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Reject writes with DATA PROTECT and report WP in MODE SENSE.
    pub read_only: bool,
    /// Initial WCE (write-back cache); MODE SELECT can change it at run time.
    pub write_cache: bool,
    /// VPD 0x80 unit serial number (ASCII).
    pub serial: String,
    /// LU designator for VPD 0x83. Reported as NAA 5 (IEEE Registered, 8 bytes): the top
    /// nibble is forced to 5 and the low 60 bits are used as given, so the caller should put
    /// a (locally administered) OUI in bits 59..36 and a stable per-LU value below it.
    pub naa_id: u64,
    /// T10 vendor identification (8 ASCII chars, space padded on output).
    pub vendor: String,
    /// Product identification (16 ASCII chars, space padded on output).
    pub product: String,
    /// Product revision level (4 ASCII chars, space padded on output).
    pub revision: String,
    /// The target port this LU is reached through, for ALUA (see [`AluaPort`]), in its
    /// initial state ([`LogicalUnit::set_alua_state`] changes it at run time).
    pub alua: AluaPort,
}

impl LunParams {
    /// The LU's NAA designator as VPD 0x83 reports it (NAA 5 over the low 60 bits of
    /// [`LunParams::naa_id`]): its identity to initiators, and the name of what the server
    /// keeps for it across restarts.
    pub fn naa_designator(&self) -> [u8; 8] {
        ((self.naa_id & 0x0FFF_FFFF_FFFF_FFFF) | (5 << 60)).to_be_bytes()
    }
}

/// SAM task attribute from the iSCSI header (ordering is enforced by the iSCSI layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    /// No tag (treated as simple).
    Untagged,
    /// SIMPLE: may be reordered with other simple tasks.
    Simple,
    /// ORDERED: runs after all older tasks.
    Ordered,
    /// HEAD OF QUEUE: runs before all queued tasks.
    HeadOfQueue,
    /// ACA: only meaningful with NACA, which we do not support.
    Aca,
}

/// The initiator side of an I_T nexus: who sent a command. Reservations are held per nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// iSCSI initiator name (as given at login), or an NVMe host's NQN.
    pub initiator_name: String,
    /// What tells this initiator port from others of the same name.
    pub port: InitiatorPort,
}

/// The second half of an initiator's identity, which also says which fabric it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitiatorPort {
    /// An iSCSI session's initiator session ID (RFC 7143 §4.2.7.2): each session of one
    /// initiator is its own I_T nexus.
    Isid([u8; 6]),
    /// An NVMe host's Host Identifier (from Connect, NVMe-oF 1.1 §3.3): every controller of
    /// one host is the same registrant to reservations (NVMe base 2.0 §8.19).
    HostId([u8; 16]),
}

impl Nexus {
    /// The nexus of an iSCSI session.
    pub fn iscsi(initiator_name: impl Into<String>, isid: [u8; 6]) -> Self {
        Nexus {
            initiator_name: initiator_name.into(),
            port: InitiatorPort::Isid(isid),
        }
    }

    /// The nexus of an NVMe host's controllers.
    pub fn nvme(host_nqn: impl Into<String>, host_id: [u8; 16]) -> Self {
        Nexus {
            initiator_name: host_nqn.into(),
            port: InitiatorPort::HostId(host_id),
        }
    }

    /// Whether the initiator hears of events through SCSI unit attentions (iSCSI does). An
    /// NVMe host learns of the same events through asynchronous events (ANA change, namespace
    /// attribute changed), so its commands neither receive nor register unit attentions:
    /// otherwise each state or capacity change would fail its next command once with
    /// Namespace Not Ready.
    pub fn hears_unit_attentions(&self) -> bool {
        matches!(self.port, InitiatorPort::Isid(_))
    }

    /// The NVMe Host Identifier, for a host's nexus.
    pub fn host_id(&self) -> Option<[u8; 16]> {
        match self.port {
            InitiatorPort::HostId(id) => Some(id),
            InitiatorPort::Isid(_) => None,
        }
    }

    /// The initiator port's name: for iSCSI `name,i,0x<ISID>` (RFC 7143 §4.2.7.2, as
    /// TransportIDs carry it), for NVMe `<host NQN>,hostid,<Host Identifier in hex>`.
    pub fn initiator_port(&self) -> String {
        match &self.port {
            InitiatorPort::Isid(isid) => format!("{},i,0x{}", self.initiator_name, hex(isid)),
            InitiatorPort::HostId(id) => format!("{},hostid,{}", self.initiator_name, hex(id)),
        }
    }
}

/// One SCSI command as delivered by the iSCSI layer.
#[derive(Debug, Clone, Copy)]
pub struct ScsiRequest<'a> {
    /// The I_T nexus the command arrived on.
    pub nexus: &'a Nexus,
    /// Decoded LUN number (`u64::MAX` when the 8-byte LUN field was undecodable).
    pub lun: u64,
    /// The CDB (16 bytes from the BHS plus any extended CDB AHS); may carry trailing bytes.
    pub cdb: &'a [u8],
    /// All Data-Out the initiator sent: min(expected transfer length, what arrived).
    pub data_out: &'a [u8],
    /// Expected data transfer length from the iSCSI header.
    pub expected_transfer_length: u32,
    /// Task attribute.
    pub task_attr: TaskAttr,
}

/// The result of one command: status, sense, Data-In and how much Data-Out it called for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiOutcome {
    /// SAM status (see [`status`]).
    pub status: u8,
    /// Fixed-format sense data (18 bytes); empty unless CHECK CONDITION.
    pub sense: SenseData,
    /// Data-In at the length the command itself wants; the iSCSI layer truncates to EDTL
    /// and computes residuals from this length. A READ's is the pool buffer the backend read
    /// into (filled completely, or the read failed), from a RAM LUN the ranges of its memory
    /// lent, or, for a TCP connection, a span of a file in memory that it sends from the file's
    /// pages; small replies are copied into a buffer.
    pub data_in: Payload,
    /// For Data-Out commands, how many bytes the command calls for (e.g. blocks × block
    /// size for WRITE); 0 otherwise. The iSCSI layer computes write residuals from it.
    pub data_out_length: u32,
}

impl ScsiOutcome {
    /// GOOD status, no data.
    pub fn good() -> Self {
        ScsiOutcome {
            status: status::GOOD,
            sense: SenseData::default(),
            data_in: Payload::empty(),
            data_out_length: 0,
        }
    }

    /// GOOD status carrying a small reply built in memory (INQUIRY, MODE SENSE, ...), copied
    /// into a pool buffer.
    pub fn with_data(data_in: Vec<u8>) -> Self {
        ScsiOutcome::with_buf(Buf::copy_from_slice(&data_in))
    }

    /// GOOD status carrying a READ's Data-In: a pool buffer or lent ranges.
    pub fn with_buf(data_in: impl Into<Payload>) -> Self {
        ScsiOutcome {
            data_in: data_in.into(),
            ..ScsiOutcome::good()
        }
    }

    /// CHECK CONDITION with fixed-format sense for key/ASC/ASCQ.
    pub fn check_condition(key: u8, asc: u8, ascq: u8) -> Self {
        ScsiOutcome::from_sense(&Sense::new(key, (asc, ascq)))
    }

    /// CHECK CONDITION with the given sense condition (INFORMATION, field pointer...).
    pub fn from_sense(s: &Sense) -> Self {
        ScsiOutcome {
            status: status::CHECK_CONDITION,
            sense: s.to_sense_data(),
            ..ScsiOutcome::good()
        }
    }

    /// Sets how many Data-Out bytes the command called for.
    pub fn with_data_out_length(mut self, len: u32) -> Self {
        self.data_out_length = len;
        self
    }

    /// Sense key of a CHECK CONDITION outcome (0 when there is no sense data).
    pub fn sense_key(&self) -> u8 {
        self.sense.get(2).map_or(0, |k| k & 0x0F)
    }

    /// (ASC, ASCQ) of a CHECK CONDITION outcome ((0, 0) when there is no sense data).
    pub fn asc_ascq(&self) -> (u8, u8) {
        (
            self.sense.get(12).copied().unwrap_or(0),
            self.sense.get(13).copied().unwrap_or(0),
        )
    }
}

/// What a decoded command needs next: an immediate answer or one primitive block operation.
#[derive(Debug)]
pub enum Plan<'a> {
    /// The command is complete (answered from metadata, or rejected).
    Done(ScsiOutcome),
    /// Run `request` against the backend (see [`LogicalUnit::run`]), then [`finish`].
    Io {
        /// The block operation to perform.
        request: BlockRequest<'a>,
        /// Data-Out bytes the command called for, passed through to the outcome.
        data_out_length: u32,
    },
    /// EXTENDED COPY: look up the list's copy targets among the target's LUs
    /// ([`ScsiTarget::prepare`]), then run the copy like a block request.
    Copy {
        /// The decoded parameter list.
        list: CopyList,
        /// Data-Out bytes the command called for (its parameter list length).
        data_out_length: u32,
    },
}

impl From<Sense> for Plan<'_> {
    fn from(s: Sense) -> Self {
        Plan::Done(ScsiOutcome::from_sense(&s))
    }
}

/// One logical unit: parameters, mutable mode state (WCE), and its backend. Shared by all
/// sessions (`Arc`).
pub struct LogicalUnit {
    params: LunParams,
    backend: Arc<dyn Backend>,
    /// Capacity in blocks as last reported; follows the backend when it is resized.
    num_blocks: AtomicU64,
    wce: AtomicBool,
    /// For the synchronous entry ([`LogicalUnit::run`]): ordinary I/O holds this shared;
    /// COMPARE AND WRITE, ORWRITE and WRITE ATOMIC hold it exclusively. The server's engine
    /// orders I/O with its own non-blocking gate instead.
    io_lock: RwLock<()>,
    /// Persistent and SPC-2 reservations, shared by all sessions (and, for a PERSISTENT
    /// RESERVE OUT that must be saved, by the request that saves them).
    pr: Arc<Reservations>,
    /// Unit attention conditions pending per I_T nexus.
    unit_attentions: Mutex<ua::UnitAttentions>,
    /// The target port group's current asymmetric access state ([`AluaState::code`]).
    alua_state: AtomicU8,
    /// Copy statuses held for RECEIVE COPY RESULTS (this LU as copy manager); shared with the
    /// EXTENDED COPY jobs that record them.
    copies: Arc<Mutex<xcopy::HeldCopies>>,
    /// Commands, reads and writes asked of this LU ([`LogicalUnit::io_totals`]).
    counters: counters::IoCounters,
    /// A shrunk device was reported ([`LogicalUnit::measure_device`]): said once, not on
    /// every measurement.
    shrink_reported: AtomicBool,
    /// Waits for the commands in flight on this LU ([`LogicalUnit::set_in_flight_waiter`]).
    in_flight_waiter: Mutex<Option<InFlightWaiter>>,
}

/// What waits for a LU's commands in flight: the executor's, which alone knows them.
pub type InFlightWaiter = Box<dyn Fn() + Send + Sync>;

impl LogicalUnit {
    /// Creates a LU over `backend` whose reservations live in memory only; capacity is the
    /// backend size in whole blocks.
    pub fn new(params: LunParams, backend: Arc<dyn Backend>) -> Self {
        let port = params.alua.group;
        Self::with_reservations(params, backend, Reservations::in_memory(port))
    }

    /// As [`LogicalUnit::new`], with reservations that may persist through a restart
    /// ([`Reservations::persistent`]).
    pub fn with_reservations(
        params: LunParams,
        backend: Arc<dyn Backend>,
        reservations: Reservations,
    ) -> Self {
        let num_blocks = blocks_of(backend.size(), params.block_size);
        let alua_state = AtomicU8::new(params.alua.state.code());
        LogicalUnit {
            wce: AtomicBool::new(params.write_cache),
            params,
            backend,
            num_blocks: AtomicU64::new(num_blocks),
            io_lock: RwLock::new(()),
            pr: Arc::new(reservations),
            unit_attentions: Mutex::new(ua::UnitAttentions::default()),
            alua_state,
            copies: Arc::default(),
            counters: counters::IoCounters::default(),
            shrink_reported: AtomicBool::new(false),
            in_flight_waiter: Mutex::new(None),
        }
    }

    /// The static parameters.
    pub fn params(&self) -> &LunParams {
        &self.params
    }

    /// Capacity in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }

    /// Current WCE (write-back caching) setting.
    pub fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }

    /// This LU's target port with its current asymmetric access state.
    pub fn alua_port(&self) -> AluaPort {
        AluaPort {
            group: self.params.alua.group,
            state: AluaState::from_code(self.alua_state.load(Ordering::Relaxed)),
        }
    }

    /// Changes the target port group's asymmetric access state (an implicit transition: the
    /// gateway's configuration was reloaded). REPORT TARGET PORT GROUPS and the standby
    /// gating follow at once, and when the state really changed every I_T nexus that knew
    /// the old one gets an ASYMMETRIC ACCESS STATE CHANGED unit attention (SPC-4 5.15.2.3,
    /// as LIO's core_alua_queue_state_change_ua() in drivers/target/target_core_alua.c does;
    /// Linux's scsi_dh_alua answers it by asking RTPG again, alua_check_sense()). Returns
    /// whether the state changed.
    pub fn set_alua_state(&self, state: AluaState) -> bool {
        let before = self.alua_state.swap(state.code(), Ordering::Relaxed);
        if before == state.code() {
            return false;
        }
        self.unit_attentions().establish_all(Sense::new(
            sense::UNIT_ATTENTION,
            sense::ASYMMETRIC_ACCESS_STATE_CHANGED,
        ));
        true
    }

    /// Whether the reservations can persist through a restart (the LU has a store for
    /// them): what SCSI reports as PTPL_C and NVMe as RESCAP's PTPLS.
    pub fn reservations_can_persist(&self) -> bool {
        self.pr.can_persist()
    }

    /// The reservation notices for NVMe host `host` numbered after `after`, and the number to
    /// ask after next time (`after` `None`: only the number); see
    /// [`crate::nvme::NamespaceReservations`].
    pub fn nvme_notices(
        &self,
        host: [u8; 16],
        after: Option<u64>,
    ) -> (Vec<ReservationNotice>, u64) {
        self.reservations().host_notices_since(host, after)
    }

    /// Whether the reservations persist through power loss now (an initiator asked: SCSI
    /// APTPL, NVMe CPTPL).
    pub fn reservations_persist(&self) -> bool {
        self.reservations().persists()
    }

    /// Who is registered and who holds the persistent reservation, for an operator.
    pub fn reservation_summary(&self) -> ReservationSummary {
        self.pr.summary()
    }

    /// The backing storage.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn reservations(&self) -> MutexGuard<'_, pr::PrState> {
        self.pr.state()
    }

    fn held_copies(&self) -> MutexGuard<'_, xcopy::HeldCopies> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the EXTENDED COPY jobs this LU receives hold their status.
    fn held_copies_handle(&self) -> Arc<Mutex<xcopy::HeldCopies>> {
        Arc::clone(&self.copies)
    }

    fn unit_attentions(&self) -> MutexGuard<'_, ua::UnitAttentions> {
        self.unit_attentions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a backend whose size changed (an RBD image resized from outside): the new
    /// capacity is reported from now on, and every nexus that knew the old one gets a
    /// CAPACITY DATA HAS CHANGED unit attention (SBC-3 4.10).
    fn follow_capacity(&self) {
        let now = blocks_of(self.backend.size(), self.params.block_size);
        let before = self.num_blocks.load(Ordering::Relaxed);
        // Only a change writes the shared counter (and one command of all wins the race).
        if before != now
            && self
                .num_blocks
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::info!(
                "LUN {}: capacity changed from {before} to {now} blocks",
                self.params.lun
            );
            self.unit_attentions().establish_all(Sense::new(
                sense::UNIT_ATTENTION,
                sense::CAPACITY_DATA_HAS_CHANGED,
            ));
        }
    }

    /// Measures a block device again (one system call; nothing for other backends): before
    /// READ CAPACITY, as LIO's iblock backend reads the device's size for it, so an LV
    /// extended is served without a SIGHUP once an initiator asks for the capacity (Linux does
    /// on a rescan, `iscsiadm -m session -R`); and on an NVMe controller's admin commands. The
    /// change then raises CAPACITY DATA HAS CHANGED like any other
    /// (`follow_capacity`). A device that shrank is kept at its old size and
    /// reported once.
    pub fn measure_device(&self) {
        match self.backend.measure_device() {
            Ok(_) => self.shrink_reported.store(false, Ordering::Relaxed),
            Err(e) => {
                if !self.shrink_reported.swap(true, Ordering::Relaxed) {
                    log::warn!("LUN {}: {e}", self.params.lun);
                }
            }
        }
    }

    /// The unit attention, if any, that `cdb` from `nexus` is answered with instead of being
    /// run (SPC-4 5.14): every command but INQUIRY, REPORT LUNS and REQUEST SENSE reports
    /// and clears the oldest pending one. Records the nexus so later conditions reach it.
    fn unit_attention(&self, cdb: Cdb<'_>, nexus: &Nexus) -> Option<Sense> {
        let mut ua = self.unit_attentions();
        match cdb.opcode() {
            op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE => {
                ua.register(nexus);
                None
            }
            _ => ua.take(nexus),
        }
    }

    /// I_T nexus loss: drops the SPC-2 (RESERVE(6)) reservation held by `nexus`, its
    /// pending unit attentions and its held copy statuses. Persistent reservation
    /// registrations survive.
    pub fn release_nexus(&self, nexus: &Nexus) {
        self.reservations().release_nexus(nexus);
        self.unit_attentions().remove(nexus);
        self.held_copies().forget(nexus);
    }

    /// LOGICAL UNIT RESET: releases the SPC-2 reservation (persistent ones are kept) and
    /// tells every I_T nexus by a BUS DEVICE RESET FUNCTION OCCURRED unit attention (SAM-5
    /// 6.3.3; LIO's target_tmr_work() does the same with target_dev_ua_allocate()). Linux's
    /// initiator expects it after the reset it asked for (`expecting_cc_ua`, scsi_error.c).
    pub fn reset(&self) {
        self.reservations().reset();
        self.held_copies().clear();
        self.unit_attentions().establish_all(Sense::new(
            sense::UNIT_ATTENTION,
            sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED,
        ));
    }

    /// Sets WCE on behalf of `by` (MODE SELECT). A change is logged and every other I_T
    /// nexus gets MODE PARAMETERS CHANGED (SPC-4 5.14): its idea of the cache is stale.
    fn set_write_cache(&self, on: bool, by: &Nexus) {
        if self.wce.swap(on, Ordering::Relaxed) != on {
            log::info!(
                "LUN {}: write cache {}",
                self.params.lun,
                if on { "on" } else { "off" }
            );
            self.unit_attentions().establish_others(
                Sense::new(sense::UNIT_ATTENTION, sense::MODE_PARAMETERS_CHANGED),
                by,
            );
        }
    }

    /// Whether `cdb` from `nexus` may run on this LU now, as far as the port's ALUA state and
    /// the reservations go; otherwise its answer (NOT READY for a standby port, RESERVATION
    /// CONFLICT). Every command passes here, and so does each copy target of an EXTENDED COPY.
    fn admits(&self, cdb: Cdb<'_>, nexus: &Nexus) -> Result<(), ScsiOutcome> {
        self.alua_port()
            .check_access(cdb)
            .map_err(|s| ScsiOutcome::from_sense(&s))?;
        if self.reservations().conflicts(cdb, nexus) {
            return Err(pr::conflict());
        }
        Ok(())
    }

    /// A change of the reservations (PERSISTENT RESERVE OUT, an NVMe reservation command).
    /// Made here on the state in memory: the unit attentions it establishes are queued, then
    /// it is answered, or first the state is saved when it persists (the command is good only
    /// once the store holds it). On a state the LU's gateways share it is tried on a copy:
    /// refused, or changing nothing, it is answered; otherwise it is made in the run step on
    /// the shared state ([`Reservations`]).
    fn change_reservations<'a>(&self, change: ReservationChange) -> Plan<'a> {
        if self.pr.is_shared() {
            let mut trial = self.reservations().clone();
            let outcome = change.apply(&mut trial).outcome;
            if outcome.status != status::GOOD || self.reservations().holds_as(&trial) {
                return Plan::Done(outcome);
            }
            return Plan::Io {
                request: BlockRequest::ChangeSharedReservations(
                    Arc::clone(&self.pr),
                    Box::new(change),
                ),
                data_out_length: outcome.data_out_length,
            };
        }
        let pr::PrOutcome {
            outcome,
            notices,
            save,
        } = change.apply(&mut self.reservations());
        self.queue_reservation_notices(notices);
        if !save {
            return Plan::Done(outcome);
        }
        Plan::Io {
            request: BlockRequest::SaveReservations(Arc::clone(&self.pr)),
            data_out_length: outcome.data_out_length,
        }
    }

    /// Queues what a reservation change tells others: NVMe hosts' notices, and unit
    /// attentions for the iSCSI I_T nexuses through this gateway's port (another gateway
    /// queues its own).
    fn queue_reservation_notices(&self, notices: pr::PrNotices) {
        let for_iscsi = self.reservations().file_host_notices(notices);
        let mut ua = self.unit_attentions();
        for notice in for_iscsi {
            if notice.port == self.params.alua.group {
                ua.establish(
                    &notice.nexus,
                    Sense::new(sense::UNIT_ATTENTION, notice.condition),
                );
            }
        }
    }

    /// Takes an announcement of the reservation state this LU's gateways share (from
    /// [`SharedReservationStore::announce`], of any gateway, this one included): adopts the
    /// state when newer and queues the unit attentions and notices the change establishes
    /// for this gateway's I_T nexuses and NVMe hosts.
    pub fn reservations_announced(&self, message: &[u8]) {
        let announced = self.pr.announced(message);
        if announced.aborts {
            // Another gateway preempted and aborted: a command the preempted initiators
            // started here before the state changed must be done before the preempt is
            // (SPC-4 5.13.11.2.6); later ones now conflict.
            let waiter = self.in_flight_waiter.lock();
            if let Some(wait) = &*waiter.unwrap_or_else(|p| p.into_inner()) {
                wait();
                log::info!(
                    "LUN {}: preempted and aborted through another gateway; the commands \
                     in flight here are done",
                    self.params.lun
                );
            }
        }
        self.queue_reservation_notices(announced.notices);
    }

    /// Sets what waits for this LU's commands in flight (the executor that runs them): a
    /// PREEMPT AND ABORT made through another gateway waits with it before it is done.
    pub fn set_in_flight_waiter(&self, waiter: InFlightWaiter) {
        *self
            .in_flight_waiter
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(waiter);
    }

    /// Reads the shared reservation state again (announcements may have been missed: a
    /// watch on the store was lost and is back). Nothing for unshared reservations.
    pub fn refresh_reservations(&self) -> std::io::Result<()> {
        self.pr.refresh()
    }

    /// An NVMe reservation command from an NVMe host's nexus (see [`NvmeReservation`]).
    fn nvme_reservation<'a>(&self, cdb: Cdb<'_>, req: &ScsiRequest<'a>) -> CmdResult<Plan<'a>> {
        let command =
            NvmeReservation::from_cdb(req.cdb).ok_or(Sense::invalid_cdb_field(1, None))?;
        if let Err(refused) = self.admits(cdb, req.nexus) {
            return Ok(Plan::Done(refused));
        }
        Ok(self.change_reservations(ReservationChange::nvme(command, req.nexus, req.data_out)))
    }

    fn block_size(&self) -> u64 {
        u64::from(self.params.block_size)
    }

    /// Decodes and validates a command addressed to this LU (pure: no backend I/O).
    /// REPORT LUNS is a target-level command: see [`ScsiTarget::execute`].
    pub fn plan<'a>(&self, req: &ScsiRequest<'a>) -> Plan<'a> {
        let plan = self.plan_again(req);
        self.counters.count(&plan);
        plan
    }

    /// [`LogicalUnit::plan`] without counting the command: for one planned before whose plan
    /// could not travel with it (see [`ScsiTarget::prepare_again`]).
    #[inline(always)]
    pub fn plan_again<'a>(&self, req: &ScsiRequest<'a>) -> Plan<'a> {
        match self.plan_inner(Cdb::new(req.cdb), req) {
            Ok(p) => p,
            Err(s) => s.into(),
        }
    }

    /// What this LU has been asked to do since it was opened: commands, and the reads and
    /// writes among them that went to the backend, with their bytes and times.
    pub fn io_totals(&self) -> IoTotals {
        self.counters.totals()
    }

    /// Adds the time a read or write that [`LogicalUnit::plan`] counted took, from its arrival
    /// to its completion (the I/O engine measures it).
    pub fn count_time(&self, transfer: Transfer, took: std::time::Duration) {
        self.counters.count_time(transfer, took);
    }

    fn plan_inner<'a>(&self, cdb: Cdb<'_>, req: &ScsiRequest<'a>) -> CmdResult<Plan<'a>> {
        let opcode = cdb.opcode();
        if opcode == op::READ_CAPACITY_10
            || (opcode == op::SERVICE_ACTION_IN_16
                && cdb.service_action() == op::SA_READ_CAPACITY_16)
        {
            self.measure_device();
        }
        self.follow_capacity();
        if !cdb.is_empty() && req.nexus.hears_unit_attentions() {
            if let Some(attention) = self.unit_attention(cdb, req.nexus) {
                return Err(attention);
            }
        }
        if opcode == pr::NVME_RESERVATION_OPCODE && req.nexus.host_id().is_some() {
            return self.nvme_reservation(cdb, req);
        }
        if cdb.is_empty() || !opcodes::is_supported(opcode, cdb.service_action()) {
            return Err(Sense::new(
                sense::ILLEGAL_REQUEST,
                sense::INVALID_COMMAND_OPCODE,
            ));
        }
        if cdb_too_short(cdb) {
            return Err(Sense::invalid_cdb_field(0, None));
        }
        let done = |o: ScsiOutcome| Ok(Plan::Done(o));
        let nexus = req.nexus;
        if let Err(refused) = self.admits(cdb, nexus) {
            return done(refused);
        }
        match opcode {
            op::TEST_UNIT_READY => done(ScsiOutcome::good()),
            op::REQUEST_SENSE => {
                let pending = self.unit_attentions().take(nexus);
                done(request_sense(cdb, pending))
            }
            op::INQUIRY => done(ScsiOutcome::with_data(inquiry::inquiry(self, cdb)?)),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
                done(ScsiOutcome::with_data(mode::mode_sense(self, cdb)?))
            }
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
                done(ScsiOutcome::good().with_data_out_length(mode::mode_select(
                    self,
                    cdb,
                    nexus,
                    req.data_out,
                )?))
            }
            op::START_STOP_UNIT => {
                // POWER CONDITION 0 with LOEJ asks to load/eject a medium that is not
                // removable (RMB=0): libiscsi's test_startstopunit_simple.c expects failure.
                if cdb.byte(4) & 0xF0 == 0 && cdb.byte(4) & 0x02 != 0 {
                    return Err(Sense::invalid_cdb_field(4, Some(1)));
                }
                done(ScsiOutcome::good())
            }
            op::PREVENT_ALLOW => {
                if cdb.byte(4) & 0x03 > 1 {
                    return Err(Sense::invalid_cdb_field(4, Some(1)));
                }
                done(ScsiOutcome::good())
            }
            op::READ_CAPACITY_10 => done(ScsiOutcome::with_data(self.read_capacity_10(cdb)?)),
            op::SERVICE_ACTION_IN_16 if cdb.service_action() == op::SA_READ_CAPACITY_16 => {
                done(ScsiOutcome::with_data(self.read_capacity_16(cdb)))
            }
            op::RESERVE_6 => done(self.reservations().reserve6(cdb, nexus)),
            op::RELEASE_6 => done(self.reservations().release6(cdb, nexus)),
            op::PERSISTENT_RESERVE_IN => done(ScsiOutcome::with_data(
                self.reservations().persistent_reserve_in(cdb)?,
            )),
            op::PERSISTENT_RESERVE_OUT => {
                Ok(self.change_reservations(ReservationChange::scsi(req.cdb, nexus, req.data_out)))
            }
            op::EXTENDED_COPY => match xcopy::decode(cdb, req.data_out)? {
                None => done(ScsiOutcome::good()),
                Some(list) => Ok(Plan::Copy {
                    list,
                    data_out_length: cdb.be32(10),
                }),
            },
            op::RECEIVE_COPY_RESULTS => done(ScsiOutcome::with_data(xcopy::receive_copy_results(
                self, cdb, nexus,
            )?)),
            op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
                done(ScsiOutcome::with_data(read_defect_data(cdb)))
            }
            op::MAINTENANCE_IN if cdb.service_action() == alua::SA_REPORT_TARGET_PORT_GROUPS => {
                done(ScsiOutcome::with_data(
                    self.alua_port().report_target_port_groups(cdb)?,
                ))
            }
            op::MAINTENANCE_IN => done(ScsiOutcome::with_data(opcodes::report_supported(cdb)?)),
            _ => block::plan(self, cdb, req),
        }
    }

    /// READ CAPACITY(10): last LBA (saturated to 0xFFFFFFFF) and block length.
    fn read_capacity_10(&self, cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
        // PMI = 0 requires LOGICAL BLOCK ADDRESS = 0 (SBC-3 5.15).
        if cdb.byte(8) & 0x01 == 0 && cdb.be32(2) != 0 {
            return Err(Sense::invalid_cdb_field(2, None));
        }
        let last = self.num_blocks().saturating_sub(1).min(0xFFFF_FFFF) as u32;
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.params.block_size.to_be_bytes());
        Ok(d)
    }

    /// READ CAPACITY(16) parameter data (32 bytes, cut to the allocation length).
    fn read_capacity_16(&self, cdb: Cdb<'_>) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.num_blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&self.params.block_size.to_be_bytes());
        if self.backend.supports_discard() {
            d[14] = 0x80 | 0x40; // LBPME, LBPRZ: unmapped blocks read as zeroes.
        }
        truncate(d, cdb.be32(10) as usize)
    }

    /// Runs a block request synchronously under the LU's I/O lock (exclusive for COMPARE AND
    /// WRITE, ORWRITE and WRITE ATOMIC).
    pub fn run(&self, request: &BlockRequest<'_>) -> Result<BlockReply, BackendError> {
        if request.needs_exclusive() {
            let _g = self.io_lock.write().unwrap_or_else(|p| p.into_inner());
            run(&*self.backend, request)
        } else {
            let _g = self.io_lock.read().unwrap_or_else(|p| p.into_inner());
            run(&*self.backend, request)
        }
    }

    /// Executes one command to completion (plan, run, finish). Blocking.
    pub fn execute(&self, req: &ScsiRequest<'_>) -> ScsiOutcome {
        match self.plan(req) {
            Plan::Done(o) => o,
            Plan::Io {
                request,
                data_out_length,
            } => {
                let result = self.run(&request);
                finish(&request, result, data_out_length)
            }
            // Alone, a LU is the only copy target an EXTENDED COPY can name.
            Plan::Copy {
                list,
                data_out_length,
            } => match list.resolve(self, std::iter::once(self), req.nexus) {
                Ok(request) => finish(&request, self.run(&request), data_out_length),
                Err(outcome) => outcome.with_data_out_length(data_out_length),
            },
        }
    }
}

/// Whole blocks of `block_size` in `bytes`.
fn blocks_of(bytes: u64, block_size: u32) -> u64 {
    bytes.checked_div(u64::from(block_size)).unwrap_or(0)
}

/// Whether a command with this CDB must run with no other I/O in flight on its LU: COMPARE AND
/// WRITE, ORWRITE and WRITE ATOMIC (the commands whose [`BlockRequest::needs_exclusive`]), and
/// a preempt that aborts (SCSI PREEMPT AND ABORT, NVMe Reservation Acquire's Preempt and
/// Abort). The preempted initiators' commands cannot be recalled once they reach the backend,
/// so the preempt waits for every command in flight and is done before any later one is
/// planned: when it completes, nothing the preempted initiators sent before it can still
/// change the medium (SPC-4 5.13.11.2.6; Linux's nvmet waits for them too, drivers/nvme/
/// target/pr.c nvmet_pr_do_abort). Decided from the CDB's first bytes alone, so an executor can
/// order a command before planning it.
pub fn runs_exclusively(cdb: &[u8]) -> bool {
    matches!(
        cdb.first(),
        Some(&(op::COMPARE_AND_WRITE | op::ORWRITE_16 | op::WRITE_ATOMIC_16))
    ) || pr::preempts_and_aborts(cdb)
}

/// Whether a CDB is an EXTENDED COPY, a command that may run for seconds (an executor gives
/// it threads of its own). Decided from the operation code alone, like [`runs_exclusively`].
pub fn is_extended_copy(cdb: &[u8]) -> bool {
    cdb.first() == Some(&op::EXTENDED_COPY)
}

/// True when the received CDB is shorter than its opcode's CDB length.
fn cdb_too_short(cdb: Cdb<'_>) -> bool {
    cdb::cdb_length(cdb.opcode()).is_some_and(|n| cdb.len() < n)
}

/// READ DEFECT DATA(10)/(12): an empty defect list in the requested format. The P and G
/// lists are reported valid (and empty) when asked for.
fn read_defect_data(cdb: Cdb<'_>) -> Vec<u8> {
    if cdb.opcode() == op::READ_DEFECT_DATA_10 {
        let mut d = vec![0u8; 4];
        d[1] = cdb.byte(2) & 0x1F; // PLISTV, GLISTV, format
        truncate(d, usize::from(cdb.be16(7)))
    } else {
        let mut d = vec![0u8; 8];
        d[1] = cdb.byte(1) & 0x1F;
        truncate(d, cdb.be32(6) as usize)
    }
}

/// Cuts parameter data to the allocation length.
fn truncate(mut d: Vec<u8>, alloc: usize) -> Vec<u8> {
    d.truncate(alloc);
    d
}

/// REQUEST SENSE: `pending` (the oldest unit attention, or LU NOT SUPPORTED for a missing
/// LUN), else NO SENSE (we keep no deferred errors). Always fixed format.
fn request_sense(cdb: Cdb<'_>, pending: Option<Sense>) -> ScsiOutcome {
    let s = pending.unwrap_or(Sense::new(sense::NO_SENSE, sense::NO_ADDITIONAL_SENSE));
    ScsiOutcome::with_data(truncate(s.to_fixed(), usize::from(cdb.byte(4))))
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests;
