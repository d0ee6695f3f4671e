//! Reservations: SPC-4 persistent reservations (PERSISTENT RESERVE IN/OUT) and SPC-2
//! RESERVE(6)/RELEASE(6), plus the reservation-conflict check every command goes through.
//!
//! State lives in one `Mutex<PrState>` per logical unit, shared by all sessions. An I_T
//! nexus is the initiator's [`Nexus`] and the relative target port it came through: a
//! gateway process has one (its target port group), and registrations made through other
//! gateways are in the state when the LU's reservations are shared between gateways
//! ([`persist`]). An NVMe host is one registrant whatever port it comes through.
//! Registrations survive I_T nexus loss; SPC-2 reservations do not (see
//! [`PrState::release_nexus`]). When the LU has a [`ReservationStore`], a REGISTER with APTPL
//! makes the registrations and the reservation persist through a restart ([`persist`]);
//! without one APTPL is refused.

use super::cdb::Cdb;
use super::sense::{self, Sense};
use super::{op, status, truncate, CmdResult, InitiatorPort, Nexus, ScsiOutcome};

mod nvme;
mod persist;
mod record;

pub use nvme::{NvmeReservation, NvmeReservationKind, ReservationNotice, NVME_RESERVATION_OPCODE};
pub use persist::{
    ReservationChange, ReservationStore, Reservations, SharedError, SharedReservationStore,
};
pub use record::RecordError;

/// Reservation types (SPC-4 Table 193).
pub(super) mod ty {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WE_REGISTRANTS_ONLY: u8 = 5;
    pub const EA_REGISTRANTS_ONLY: u8 = 6;
    pub const WE_ALL_REGISTRANTS: u8 = 7;
    pub const EA_ALL_REGISTRANTS: u8 = 8;
}

/// PERSISTENT RESERVE OUT service actions.
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

fn valid_type(t: u8) -> bool {
    matches!(
        t,
        ty::WRITE_EXCLUSIVE
            | ty::EXCLUSIVE_ACCESS
            | ty::WE_REGISTRANTS_ONLY
            | ty::EA_REGISTRANTS_ONLY
            | ty::WE_ALL_REGISTRANTS
            | ty::EA_ALL_REGISTRANTS
    )
}

fn all_registrants(t: u8) -> bool {
    matches!(t, ty::WE_ALL_REGISTRANTS | ty::EA_ALL_REGISTRANTS)
}

fn registrants_only(t: u8) -> bool {
    matches!(t, ty::WE_REGISTRANTS_ONLY | ty::EA_REGISTRANTS_ONLY)
}

/// A unit attention a PERSISTENT RESERVE OUT establishes for another I_T nexus (SPC-4
/// 5.13.11). The LU queues them once the reservation state is settled; those for NVMe hosts
/// become their notices ([`PrState::file_host_notices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PrNotice {
    /// The initiator told.
    pub nexus: Nexus,
    /// The relative target port of its I_T nexus.
    pub port: u16,
    /// The condition's ASC/ASCQ.
    pub condition: (u8, u8),
}

/// The unit attentions of one change, in the order they arose.
pub(super) type PrNotices = Vec<PrNotice>;

/// What a PERSISTENT RESERVE OUT did (see [`PrState::persistent_reserve_out`]).
pub(super) struct PrOutcome {
    /// The answer, once the state is saved when `save` says so.
    pub outcome: ScsiOutcome,
    /// The unit attentions it establishes for other I_T nexuses (NVMe hosts' become their
    /// notices: [`PrState::file_host_notices`]).
    pub notices: PrNotices,
    /// Whether the state must be saved ([`Reservations::save`]) before the command is GOOD.
    pub save: bool,
}

/// One registration: an I_T nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registration {
    nexus: Nexus,
    /// The relative target port the registration came through.
    port: u16,
    key: u64,
}

impl Registration {
    /// Whether this is the registration of `nexus` through `port`.
    fn is(&self, nexus: &Nexus, port: u16) -> bool {
        same_nexus(&self.nexus, self.port, nexus, port)
    }

    /// `condition` for this registration's I_T nexus.
    fn notice(&self, condition: (u8, u8)) -> PrNotice {
        PrNotice {
            nexus: self.nexus.clone(),
            port: self.port,
            condition,
        }
    }
}

/// The persistent reservation: its type and (for non all-registrants types) its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    holder: Nexus,
    /// The relative target port of the holder's I_T nexus.
    port: u16,
    rtype: u8,
}

/// Whether two I_T nexuses are one: the same initiator port through the same relative target
/// port, or the same NVMe host through any (NVMe base 2.0 §8.19: a host is one registrant on
/// all the controllers of a subsystem, and each gateway's controllers are the same
/// subsystem's).
fn same_nexus(a: &Nexus, a_port: u16, b: &Nexus, b_port: u16) -> bool {
    a == b && (a_port == b_port || a.host_id().is_some())
}

/// A LU's persistent reservations as an operator reads them
/// ([`super::LogicalUnit::reservation_summary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationSummary {
    /// Registered I_T nexuses.
    pub registrations: usize,
    /// The persistent reservation's type (SPC-4 Table 193) and, unless every registrant holds
    /// it, its holder's initiator port name.
    pub reservation: Option<(&'static str, Option<String>)>,
    /// Whether the state is saved through a restart (APTPL set by the last REGISTER).
    pub persists: bool,
    /// The initiator port holding an SPC-2 RESERVE(6), if any.
    pub spc2_holder: Option<String>,
    /// Where the state the LU's gateways share lives, when it is shared.
    pub shared_in: Option<String>,
}

/// The name of a reservation type, as sg_persist prints it.
fn type_name(rtype: u8) -> &'static str {
    match rtype {
        ty::WRITE_EXCLUSIVE => "write exclusive",
        ty::EXCLUSIVE_ACCESS => "exclusive access",
        ty::WE_REGISTRANTS_ONLY => "write exclusive, registrants only",
        ty::EA_REGISTRANTS_ONLY => "exclusive access, registrants only",
        ty::WE_ALL_REGISTRANTS => "write exclusive, all registrants",
        ty::EA_ALL_REGISTRANTS => "exclusive access, all registrants",
        _ => "unknown",
    }
}

/// Reservation state of one logical unit.
#[derive(Debug, Default, Clone)]
pub(super) struct PrState {
    /// This gateway's relative target port: the port of every command's I_T nexus.
    port: u16,
    /// Whether the LU can persist reservations through power loss (PTPL_C).
    persistent: bool,
    /// The last valid APTPL bit received (PTPL_A): the state below is saved on every change.
    aptpl: bool,
    generation: u32,
    /// Registrations in registration order.
    regs: Vec<Registration>,
    reservation: Option<Reservation>,
    /// SPC-2 RESERVE(6) holder.
    spc2: Option<Nexus>,
    /// What NVMe hosts are told of changes they did not make.
    host_notices: nvme::HostNotices,
}

/// How a command is treated in the presence of reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Never conflicts (INQUIRY, REQUEST SENSE, PRIN, READ CAPACITY...).
    Always,
    /// Reads the medium or the LU state: allowed under Write Exclusive.
    Read,
    /// Modifies the medium or LU state: conflicts under every type for non-holders.
    Write,
}

/// Persistent-reservation access class of a command (SPC-4 Table 56, SBC-3 Table 13).
fn pr_access(cdb: Cdb<'_>) -> Access {
    match cdb.opcode() {
        op::TEST_UNIT_READY
        | op::REQUEST_SENSE
        | op::INQUIRY
        | op::READ_CAPACITY_10
        | op::MAINTENANCE_IN
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | NVME_RESERVATION_OPCODE => Access::Always,
        op::SERVICE_ACTION_IN_16 if cdb.service_action() == op::SA_READ_CAPACITY_16 => {
            Access::Always
        }
        op::PREVENT_ALLOW if cdb.byte(4) & 0x03 == 0 => Access::Always,
        // The copy manager checks each copy target as the READ or WRITE it does would be
        // checked (xcopy.rs); the command itself touches no medium of the LU it is sent to.
        op::EXTENDED_COPY | op::RECEIVE_COPY_RESULTS => Access::Always,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12
        | op::SERVICE_ACTION_IN_16 => Access::Read,
        _ => Access::Write,
    }
}

/// Commands a non-holder may still send under an SPC-2 reservation (SPC-2 5.5.1).
fn spc2_allowed(cdb: Cdb<'_>) -> bool {
    match cdb.opcode() {
        op::INQUIRY | op::REQUEST_SENSE | op::RELEASE_6 | op::MAINTENANCE_IN => true,
        op::PREVENT_ALLOW => cdb.byte(4) & 0x03 == 0,
        _ => false,
    }
}

/// Whether a CDB is a preempt that aborts the preempted initiators' commands: PERSISTENT
/// RESERVE OUT PREEMPT AND ABORT, or the NVMe Reservation Acquire with Preempt and Abort.
pub(super) fn preempts_and_aborts(cdb: &[u8]) -> bool {
    match cdb.first() {
        Some(&op::PERSISTENT_RESERVE_OUT) => cdb
            .get(1)
            .is_some_and(|b| b & 0x1F == sa::PREEMPT_AND_ABORT),
        Some(&NVME_RESERVATION_OPCODE) => NvmeReservation::from_cdb(cdb).is_some_and(|c| {
            c.kind == NvmeReservationKind::Acquire && c.action() == nvme::PREEMPT_AND_ABORT
        }),
        _ => false,
    }
}

/// The RESERVATION CONFLICT outcome (no sense data).
pub(super) fn conflict() -> ScsiOutcome {
    ScsiOutcome {
        status: status::RESERVATION_CONFLICT,
        ..ScsiOutcome::good()
    }
}

/// An error result of a PR service action: sense data or RESERVATION CONFLICT.
enum PrError {
    Sense(Sense),
    Conflict,
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        PrError::Sense(s)
    }
}

fn outcome(r: Result<(), PrError>) -> ScsiOutcome {
    match r {
        Ok(()) => ScsiOutcome::good(),
        Err(PrError::Sense(s)) => ScsiOutcome::from_sense(&s),
        Err(PrError::Conflict) => conflict(),
    }
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list.
const PROUT_LIST_LEN: usize = 24;

impl PrState {
    /// No reservations, for commands through relative target port `port`.
    pub(super) fn at_port(port: u16) -> Self {
        PrState {
            port,
            ..PrState::default()
        }
    }

    /// Takes the persistent reservations of `shared`, the state the LU's gateways share;
    /// what is this gateway's own (SPC-2 reservations, NVMe hosts' notices, its port) stays.
    pub(super) fn take_shared(&mut self, shared: PrState) {
        self.aptpl = shared.aptpl;
        self.generation = shared.generation;
        self.regs = shared.regs;
        self.reservation = shared.reservation;
    }

    /// Whether `other` holds the same persistent reservations (registrations, reservation,
    /// APTPL, generation) as this state: a change tried on a copy changed nothing.
    pub(super) fn holds_as(&self, other: &PrState) -> bool {
        self.aptpl == other.aptpl
            && self.generation == other.generation
            && self.regs == other.regs
            && self.reservation == other.reservation
    }

    /// The state for an operator's eyes (`iser-target status`).
    pub(super) fn summary(&self) -> ReservationSummary {
        ReservationSummary {
            registrations: self.regs.len(),
            reservation: self.reservation.as_ref().map(|r| {
                let holder = (!all_registrants(r.rtype)).then(|| r.holder.initiator_port());
                (type_name(r.rtype), holder)
            }),
            persists: self.aptpl,
            spc2_holder: self.spc2.as_ref().map(Nexus::initiator_port),
            shared_in: None,
        }
    }

    /// The key of `nexus` through `port`, when registered.
    fn key_at(&self, nexus: &Nexus, port: u16) -> Option<u64> {
        self.regs.iter().find(|r| r.is(nexus, port)).map(|r| r.key)
    }

    /// The key of `nexus` through this gateway's port, when registered.
    fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.key_at(nexus, self.port)
    }

    fn is_registered(&self, nexus: &Nexus) -> bool {
        self.key_of(nexus).is_some()
    }

    /// Whether `nexus` through `port` holds the persistent reservation (every registrant
    /// does for the all-registrants types).
    fn is_holder_at(&self, nexus: &Nexus, port: u16) -> bool {
        match &self.reservation {
            Some(r) if all_registrants(r.rtype) => self.key_at(nexus, port).is_some(),
            Some(r) => same_nexus(&r.holder, r.port, nexus, port),
            None => false,
        }
    }

    /// Whether `nexus`, through this gateway's port, holds the persistent reservation.
    fn is_holder(&self, nexus: &Nexus) -> bool {
        self.is_holder_at(nexus, self.port)
    }

    /// The reservation-conflict check done before any command runs. `true` means the
    /// command must be answered with RESERVATION CONFLICT.
    pub(super) fn conflicts(&self, cdb: Cdb<'_>, nexus: &Nexus) -> bool {
        if let Some(h) = &self.spc2 {
            if h != nexus && !spc2_allowed(cdb) {
                return true;
            }
        }
        let Some(res) = &self.reservation else {
            return false;
        };
        // Under a persistent reservation RESERVE/RELEASE(6) always conflict (SPC-4 5.13.3).
        if matches!(cdb.opcode(), op::RESERVE_6 | op::RELEASE_6) {
            return true;
        }
        if self.is_holder(nexus) {
            return false;
        }
        let access = pr_access(cdb);
        if access == Access::Always {
            return false;
        }
        let registered = self.is_registered(nexus);
        match res.rtype {
            ty::WRITE_EXCLUSIVE => access == Access::Write,
            ty::EXCLUSIVE_ACCESS => true,
            ty::WE_REGISTRANTS_ONLY | ty::WE_ALL_REGISTRANTS => {
                !registered && access == Access::Write
            }
            _ => !registered, // EA registrants only / all registrants
        }
    }

    /// Drops the SPC-2 reservation held by `nexus` (I_T nexus loss). Registrations stay.
    pub(super) fn release_nexus(&mut self, nexus: &Nexus) {
        if self.spc2.as_ref() == Some(nexus) {
            self.spc2 = None;
        }
    }

    /// LU reset: SPC-2 reservations are released; persistent reservations are kept.
    pub(super) fn reset(&mut self) {
        self.spc2 = None;
    }

    /// RESERVE(6): conflicts with another nexus's SPC-2 reservation or any persistent
    /// reservation (checked by [`PrState::conflicts`] before we get here).
    pub(super) fn reserve6(&mut self, cdb: Cdb<'_>, nexus: &Nexus) -> ScsiOutcome {
        // Third-party and extent reservations (obsolete in SPC-2) are not supported.
        if cdb.byte(1) & 0x13 != 0 {
            return ScsiOutcome::from_sense(&Sense::invalid_cdb_field(1, None));
        }
        match &self.spc2 {
            Some(h) if h != nexus => conflict(),
            _ => {
                self.spc2 = Some(nexus.clone());
                ScsiOutcome::good()
            }
        }
    }

    /// RELEASE(6): releases our SPC-2 reservation; a no-op for anyone else.
    pub(super) fn release6(&mut self, cdb: Cdb<'_>, nexus: &Nexus) -> ScsiOutcome {
        if cdb.byte(1) & 0x13 != 0 {
            return ScsiOutcome::from_sense(&Sense::invalid_cdb_field(1, None));
        }
        if self.spc2.as_ref() == Some(nexus) {
            self.spc2 = None;
        }
        ScsiOutcome::good()
    }

    /// PERSISTENT RESERVE IN (SPC-4 6.16).
    pub(super) fn persistent_reserve_in(&self, cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
        let alloc = usize::from(cdb.be16(7));
        let mut d = self.generation.to_be_bytes().to_vec();
        match cdb.service_action() {
            0 => {
                // READ KEYS
                d.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
                for r in &self.regs {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => {
                // READ RESERVATION
                match &self.reservation {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(r) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(r.rtype) {
                            0
                        } else {
                            self.key_at(&r.holder, r.port).unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0; 4]);
                        d.extend_from_slice(&[0, r.rtype, 0, 0]); // scope 0 (LU) | type
                    }
                }
            }
            2 => {
                // REPORT CAPABILITIES
                d = vec![
                    0x00,
                    0x08,                             // length
                    0x10 | u8::from(self.persistent), // CRH, PTPL_C; SIP_C, ATP_C = 0
                    0x90 | u8::from(self.aptpl), // TMV, ALLOW COMMANDS = 001b (TUR under WE/EA), PTPL_A
                    0x80 | 0x40 | 0x20 | 0x08 | 0x02, // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
                    0x01,                        // EX_AC_AR
                    0,
                    0,
                ];
            }
            3 => {
                // READ FULL STATUS
                let mut descs = Vec::new();
                for r in &self.regs {
                    let holder = self.is_holder_at(&r.nexus, r.port);
                    descs.extend_from_slice(&r.key.to_be_bytes());
                    descs.extend_from_slice(&[0; 4]);
                    descs.push(u8::from(holder)); // ALL_TG_PT = 0, R_HOLDER
                    descs.push(match (&self.reservation, holder) {
                        (Some(res), true) => res.rtype,
                        _ => 0,
                    });
                    descs.extend_from_slice(&[0; 4]);
                    descs.extend_from_slice(&r.port.to_be_bytes()); // relative target port
                    let tid = transport_id(&r.nexus);
                    descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    descs.extend_from_slice(&tid);
                }
                d.extend_from_slice(&(descs.len() as u32).to_be_bytes());
                d.extend_from_slice(&descs);
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        }
        Ok(truncate(d, alloc))
    }

    /// PERSISTENT RESERVE OUT (SPC-4 6.17): the outcome (with the Data-Out length the command
    /// called for), the unit attentions it establishes, and whether the state must now be
    /// saved before the command is GOOD (APTPL was on before it or is on after it).
    pub(super) fn persistent_reserve_out(
        &mut self,
        cdb: Cdb<'_>,
        nexus: &Nexus,
        data_out: &[u8],
    ) -> PrOutcome {
        let plen = cdb.be32(5);
        let mut notices = PrNotices::new();
        let aptpl_before = self.aptpl;
        let result = self.prout(cdb, nexus, data_out, plen as usize, &mut notices);
        let save = result.is_ok() && (aptpl_before || self.aptpl);
        PrOutcome {
            outcome: outcome(result).with_data_out_length(plen),
            notices,
            save,
        }
    }

    /// Queues `condition` for every registered nexus but `except` (through this port).
    fn notify_registrants(&self, except: &Nexus, condition: (u8, u8), notices: &mut PrNotices) {
        notices.extend(
            self.regs
                .iter()
                .filter(|r| !r.is(except, self.port))
                .map(|r| r.notice(condition)),
        );
    }

    /// The registrations with `key`, other than `except`'s: whom a PREEMPT of `key` removes.
    fn others_with_key<'a>(
        &'a self,
        key: u64,
        except: &'a Nexus,
    ) -> impl Iterator<Item = &'a Registration> + 'a {
        self.regs
            .iter()
            .filter(move |r| r.key == key && !r.is(except, self.port))
    }

    fn prout(
        &mut self,
        cdb: Cdb<'_>,
        nexus: &Nexus,
        data_out: &[u8],
        plen: usize,
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        let action = cdb.service_action();
        if action > sa::REGISTER_AND_IGNORE {
            // REGISTER AND MOVE and reserved service actions.
            return Err(Sense::invalid_cdb_field(1, Some(4)).into());
        }
        let scope = cdb.byte(2) >> 4;
        let rtype = cdb.byte(2) & 0x0F;
        let list_len_error =
            || Sense::new(sense::ILLEGAL_REQUEST, sense::PARAMETER_LIST_LENGTH_ERROR);
        if plen != PROUT_LIST_LEN {
            return Err(list_len_error().into());
        }
        let list = Cdb::new(data_out.get(..PROUT_LIST_LEN).ok_or_else(list_len_error)?);
        let rk = list.be64(0);
        let sark = list.be64(8);
        let flags = list.byte(20);
        if flags & 0x08 != 0 {
            return Err(Sense::invalid_param_field(20).into()); // SPEC_I_PT: SIP_C = 0
        }
        if flags & 0x04 != 0 {
            return Err(Sense::invalid_param_field(20).into()); // ALL_TG_PT: ATP_C = 0
        }
        // APTPL counts only in REGISTER and REGISTER AND IGNORE EXISTING KEY; other service
        // actions ignore it (SPC-4 6.17.3). Linux's sd_pr_register() sets it on every REGISTER.
        let aptpl = flags & 0x01 != 0;
        let registers = matches!(action, sa::REGISTER | sa::REGISTER_AND_IGNORE);
        if registers && aptpl && !self.persistent {
            return Err(Sense::invalid_param_field(20).into()); // APTPL with PTPL_C = 0
        }
        let needs_type = matches!(
            action,
            sa::RESERVE | sa::RELEASE | sa::PREEMPT | sa::PREEMPT_AND_ABORT
        );
        if needs_type {
            if scope != 0 {
                return Err(Sense::invalid_cdb_field(2, Some(7)).into());
            }
            if !valid_type(rtype) {
                return Err(Sense::invalid_cdb_field(2, Some(3)).into());
            }
        }
        let current = self.key_of(nexus);
        if action == sa::REGISTER || action == sa::REGISTER_AND_IGNORE {
            if action == sa::REGISTER && current.unwrap_or(0) != rk {
                return Err(PrError::Conflict);
            }
            if current.is_some() || sark != 0 {
                self.aptpl = aptpl;
            }
            match (current, sark) {
                (None, 0) => {}
                (None, k) => {
                    self.regs.push(Registration {
                        nexus: nexus.clone(),
                        port: self.port,
                        key: k,
                    });
                    self.generation = self.generation.wrapping_add(1);
                }
                (Some(_), 0) => {
                    self.unregister_notifying(nexus, notices);
                    self.generation = self.generation.wrapping_add(1);
                }
                (Some(_), k) => {
                    let port = self.port;
                    if let Some(r) = self.regs.iter_mut().find(|r| r.is(nexus, port)) {
                        r.key = k;
                    }
                    self.generation = self.generation.wrapping_add(1);
                }
            }
            return Ok(());
        }
        // Every other service action needs a registered nexus with the matching key.
        if current != Some(rk) {
            return Err(PrError::Conflict);
        }
        match action {
            sa::RESERVE => self.reserve(nexus, rtype),
            sa::RELEASE => self.release(nexus, rtype, notices),
            sa::CLEAR => {
                self.clear(nexus, notices);
                Ok(())
            }
            _ => self.preempt(nexus, sark, rtype, notices),
        }
    }

    /// Takes the reservation of type `rtype` for the registered `nexus` (SPC-4 5.13.8): none
    /// held, or already its own of that type; anything else conflicts.
    fn reserve(&mut self, nexus: &Nexus, rtype: u8) -> Result<(), PrError> {
        match &self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    holder: nexus.clone(),
                    port: self.port,
                    rtype,
                });
                Ok(())
            }
            Some(r) if self.is_holder(nexus) && r.rtype == rtype => Ok(()),
            Some(_) => Err(PrError::Conflict),
        }
    }

    /// Releases the reservation `nexus` holds, which must be of type `rtype` (SPC-4
    /// 5.13.10.2); from anyone else a release does nothing and succeeds.
    fn release(
        &mut self,
        nexus: &Nexus,
        rtype: u8,
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        match &self.reservation {
            Some(r) if self.is_holder(nexus) => {
                if r.rtype != rtype {
                    return Err(
                        Sense::new(sense::ILLEGAL_REQUEST, sense::INVALID_RELEASE_OF_PR).into(),
                    );
                }
                // Other registrants shared the reservation's access: they are told it is gone
                // (SPC-4 5.13.11.2.2).
                if registrants_only(r.rtype) || all_registrants(r.rtype) {
                    self.notify_registrants(nexus, sense::RESERVATIONS_RELEASED, notices);
                }
                self.reservation = None;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Removes every registration and the reservation (SPC-4 5.13.10.3); the other
    /// registrants are told.
    fn clear(&mut self, nexus: &Nexus, notices: &mut PrNotices) {
        self.notify_registrants(nexus, sense::RESERVATIONS_PREEMPTED, notices);
        self.regs.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Unregisters `nexus` at its own request: a registrants-only reservation goes with its
    /// holder's registration, and the other registrants are told (SPC-4 5.13.11.2.3).
    fn unregister_notifying(&mut self, nexus: &Nexus, notices: &mut PrNotices) {
        let releases = self.is_holder(nexus)
            && self
                .reservation
                .as_ref()
                .is_some_and(|r| registrants_only(r.rtype));
        self.unregister(nexus, self.port);
        if releases {
            self.notify_registrants(nexus, sense::RESERVATIONS_RELEASED, notices);
        }
    }

    /// Removes the registration of `nexus` through `port`; releases the reservation when it
    /// was the holder (or the last registrant of an all-registrants reservation).
    fn unregister(&mut self, nexus: &Nexus, port: u16) {
        let was_holder = self.is_holder_at(nexus, port);
        self.regs.retain(|r| !r.is(nexus, port));
        if let Some(res) = &self.reservation {
            let release = if all_registrants(res.rtype) {
                self.regs.is_empty()
            } else {
                was_holder
            };
            if release {
                self.reservation = None;
            }
        }
    }

    /// PREEMPT / PREEMPT AND ABORT (SPC-4 5.13.11.4). The abort is the executor's: it runs
    /// PREEMPT AND ABORT with nothing else in flight on the LU ([`super::runs_exclusively`]),
    /// and commands are not queued behind reservations here. Every nexus whose
    /// registration goes gets REGISTRATIONS PREEMPTED; when the holder is preempted with
    /// another type, the registrants that stay get RESERVATIONS RELEASED.
    fn preempt(
        &mut self,
        nexus: &Nexus,
        sark: u64,
        rtype: u8,
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        let Some(res) = self.reservation.clone() else {
            if sark == 0 {
                return Err(Sense::invalid_param_field(8).into());
            }
            return self.remove_key(nexus, sark, notices);
        };
        if all_registrants(res.rtype) {
            if sark == 0 {
                // Remove every other registration and take the reservation.
                self.notify_registrants(nexus, sense::REGISTRATIONS_PREEMPTED, notices);
                let port = self.port;
                self.regs.retain(|r| r.is(nexus, port));
                self.reservation = Some(Reservation {
                    holder: nexus.clone(),
                    port,
                    rtype,
                });
                self.generation = self.generation.wrapping_add(1);
                return Ok(());
            }
            return self.remove_key(nexus, sark, notices);
        }
        let holder_key = self.key_at(&res.holder, res.port);
        if Some(sark) == holder_key {
            notices.extend(
                self.others_with_key(sark, nexus)
                    .map(|r| r.notice(sense::REGISTRATIONS_PREEMPTED)),
            );
            let port = self.port;
            self.regs.retain(|r| r.key != sark || r.is(nexus, port));
            if res.rtype != rtype {
                self.notify_registrants(nexus, sense::RESERVATIONS_RELEASED, notices);
            }
            self.reservation = Some(Reservation {
                holder: nexus.clone(),
                port,
                rtype,
            });
            self.generation = self.generation.wrapping_add(1);
            return Ok(());
        }
        if sark == 0 {
            return Err(Sense::invalid_param_field(8).into());
        }
        self.remove_key(nexus, sark, notices)
    }

    /// Removes the registrations with key `sark` (other than `nexus`'s), each nexus told by
    /// REGISTRATIONS PREEMPTED; none ⇒ conflict.
    fn remove_key(
        &mut self,
        nexus: &Nexus,
        sark: u64,
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        let victims: Vec<(Nexus, u16)> = self
            .others_with_key(sark, nexus)
            .map(|r| (r.nexus.clone(), r.port))
            .collect();
        if victims.is_empty() {
            return Err(PrError::Conflict);
        }
        for (victim, port) in victims {
            self.unregister(&victim, port);
            notices.push(PrNotice {
                nexus: victim,
                port,
                condition: sense::REGISTRATIONS_PREEMPTED,
            });
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }
}

/// The TransportID of a registrant (SPC-4 7.6.4.6): for an iSCSI initiator port format 01b,
/// `name,i,0x<ISID>`; an NVMe host, which SPC-4 has no protocol identifier for, is shown as
/// an iSCSI device name (format 00b), its host NQN. NUL-terminated and padded to a multiple
/// of 4 bytes.
fn transport_id(nexus: &Nexus) -> Vec<u8> {
    let (format, mut name) = match nexus.port {
        InitiatorPort::Isid(_) => (0x40, nexus.initiator_port().into_bytes()),
        InitiatorPort::HostId(_) => (0x00, nexus.initiator_name.clone().into_bytes()),
    };
    name.push(0);
    while name.len() % 4 != 0 {
        name.push(0);
    }
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

#[cfg(test)]
mod tests;
