//! NVMe reservations (NVMe base 2.0: Reservation Register, Report, Acquire and Release, and
//! §8.19) on the LU's one reservation state.
//!
//! A namespace's reservations are its LUN's: a host registered over NVMe/TCP is a registrant
//! beside the iSCSI initiators, and whoever holds the reservation fences the others over
//! either fabric. The registrant of an NVMe host is the host (its Host Identifier and NQN),
//! whichever of its controllers sends the command. The NVMe rules differ from SCSI's where
//! the command sets differ: Register of a registered host succeeds only with its current key;
//! Unregister and Replace need a registered host; keys travel little-endian.
//!
//! The command reaches the LU as a [`NvmeReservation`] carried in a vendor-specific CDB
//! ([`NVME_RESERVATION_OPCODE`]), so it goes the way of every other command (the I/O gate,
//! the executor's blocking pool when the state must be saved) and only an NVMe host's nexus
//! may send it.

use std::collections::VecDeque;

use super::super::sense::{self, Sense};
use super::super::{truncate, Nexus, ScsiOutcome};
use super::{ty, PrError, PrNotices, PrOutcome, PrState, Registration};

/// The operation code of the CDB that carries an NVMe reservation command to a LU (SPC-4
/// §4.2.5.1 leaves C0h–FFh to vendors). Only an NVMe host's nexus may send it.
pub const NVME_RESERVATION_OPCODE: u8 = 0xC5;

/// The four NVMe reservation commands (NVM command set opcodes 0Dh, 0Eh, 11h, 15h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmeReservationKind {
    Register,
    Report,
    Acquire,
    Release,
}

/// An NVMe reservation command as the LU runs it: its kind and its command dwords 10 and 11
/// (the data, keys little-endian as the host sent them, is the request's Data-Out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmeReservation {
    pub kind: NvmeReservationKind,
    pub cdw10: u32,
    pub cdw11: u32,
}

/// Length of the carrier CDB.
const CARRIER_LEN: usize = 10;

impl NvmeReservation {
    /// The CDB that carries the command to the LU: the vendor-specific operation code, the
    /// kind, CDW10 and CDW11 (little-endian).
    pub fn cdb(&self) -> [u8; CARRIER_LEN] {
        let mut cdb = [0u8; CARRIER_LEN];
        cdb[0] = NVME_RESERVATION_OPCODE;
        cdb[1] = self.kind as u8;
        cdb[2..6].copy_from_slice(&self.cdw10.to_le_bytes());
        cdb[6..10].copy_from_slice(&self.cdw11.to_le_bytes());
        cdb
    }

    /// The command a carrier CDB holds.
    pub(in crate::scsi) fn from_cdb(cdb: &[u8]) -> Option<Self> {
        let cdb = cdb.get(..CARRIER_LEN)?;
        let kind = match cdb[1] {
            0 => NvmeReservationKind::Register,
            1 => NvmeReservationKind::Report,
            2 => NvmeReservationKind::Acquire,
            3 => NvmeReservationKind::Release,
            _ => return None,
        };
        let dword = |at: usize| u32::from_le_bytes(cdb[at..at + 4].try_into().expect("4 bytes"));
        Some(NvmeReservation {
            kind,
            cdw10: dword(2),
            cdw11: dword(6),
        })
    }

    /// The action field (CDW10 bits 2:0: RREGA, RACQA or RRELA).
    pub fn action(&self) -> u8 {
        (self.cdw10 & 0x07) as u8
    }

    /// Ignore Existing Key (CDW10 bit 3).
    pub fn ignore_key(&self) -> bool {
        self.cdw10 & 1 << 3 != 0
    }

    /// The NVMe reservation type (CDW10 bits 15:8) of Acquire and Release.
    pub fn nvme_type(&self) -> u8 {
        (self.cdw10 >> 8) as u8
    }

    /// Change Persist Through Power Loss State (Register CDW10 bits 31:30).
    pub fn cptpl(&self) -> u8 {
        (self.cdw10 >> 30) as u8
    }

    /// Bytes of the Report's data structure the host asked for (CDW10: dwords, 0's based).
    pub fn report_length(&self) -> u64 {
        (u64::from(self.cdw10) + 1) * 4
    }

    /// Whether the Report asks for the extended data structure (CDW11 bit 0).
    pub fn extended(&self) -> bool {
        self.cdw11 & 1 != 0
    }
}

/// Register actions (RREGA).
mod register {
    pub const REGISTER: u8 = 0;
    pub const UNREGISTER: u8 = 1;
    pub const REPLACE: u8 = 2;
}

/// Acquire actions (RACQA).
mod acquire {
    pub const ACQUIRE: u8 = 0;
    pub const PREEMPT: u8 = 1;
    pub const PREEMPT_AND_ABORT: u8 = 2;
}

/// Reservation Acquire's Preempt and Abort action (RACQA 010b).
pub(super) const PREEMPT_AND_ABORT: u8 = acquire::PREEMPT_AND_ABORT;

/// Release actions (RRELA).
mod release {
    pub const RELEASE: u8 = 0;
    pub const CLEAR: u8 = 1;
}

/// CPTPL values.
mod cptpl {
    pub const CLEAR: u8 = 0b10;
    pub const SET: u8 = 0b11;
}

/// The SCSI reservation type of an NVMe one (NVMe base 2.0, Reservation Type: Write Exclusive,
/// Exclusive Access, then each Registrants Only and All Registrants): the semantics match.
pub(super) fn scsi_type(nvme: u8) -> Option<u8> {
    Some(match nvme {
        1 => ty::WRITE_EXCLUSIVE,
        2 => ty::EXCLUSIVE_ACCESS,
        3 => ty::WE_REGISTRANTS_ONLY,
        4 => ty::EA_REGISTRANTS_ONLY,
        5 => ty::WE_ALL_REGISTRANTS,
        6 => ty::EA_ALL_REGISTRANTS,
        _ => return None,
    })
}

/// The NVMe reservation type of a SCSI one (0 for none).
fn nvme_type(scsi: u8) -> u8 {
    (1..=6).find(|&t| scsi_type(t) == Some(scsi)).unwrap_or(0)
}

/// Bytes of the extended Reservation Status header and of each registrant's entry
/// (NVMe base 2.0: the extended Reservation Status and Registered Controller structures).
const REPORT_HEADER_LEN: usize = 64;
const REPORT_ENTRY_LEN: usize = 64;
/// Controller ID reported for every registrant: the NVM subsystem uses the dynamic
/// controller model (NVMe base 2.0, the Registered Controller extended structure).
const DYNAMIC_CNTLID: u16 = 0xFFFF;

fn le64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// An invalid field: the NVMe answer is Invalid Field in Command.
fn invalid(byte: u16) -> PrError {
    PrError::Sense(Sense::invalid_cdb_field(byte, None))
}

impl PrState {
    /// Runs an NVMe reservation command from `nexus` (an NVMe host's), with the host's data.
    pub(in crate::scsi) fn nvme_reservation(
        &mut self,
        command: NvmeReservation,
        nexus: &Nexus,
        data: &[u8],
    ) -> PrOutcome {
        let mut notices = PrNotices::new();
        let aptpl_before = self.aptpl;
        let result = match command.kind {
            NvmeReservationKind::Report => {
                return PrOutcome {
                    outcome: ScsiOutcome::with_data(self.nvme_report(command)),
                    notices,
                    save: false,
                }
            }
            NvmeReservationKind::Register => self.nvme_register(command, nexus, data, &mut notices),
            NvmeReservationKind::Acquire => self.nvme_acquire(command, nexus, data, &mut notices),
            NvmeReservationKind::Release => self.nvme_release(command, nexus, data, &mut notices),
        };
        let save = result.is_ok() && (aptpl_before || self.aptpl);
        PrOutcome {
            outcome: super::outcome(result),
            notices,
            save,
        }
    }

    /// Reservation Register (NVMe base 2.0).
    fn nvme_register(
        &mut self,
        command: NvmeReservation,
        nexus: &Nexus,
        data: &[u8],
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        let (Some(crkey), Some(nrkey)) = (le64(data, 0), le64(data, 8)) else {
            return Err(invalid(0));
        };
        let current = self.key_of(nexus);
        match command.action() {
            // Key 0 is "no registration" to the SCSI side of the state (READ RESERVATION,
            // PREEMPT): refused as a new key, as SPDK's nvmf reservation code refuses it.
            register::REGISTER if nrkey == 0 => return Err(invalid(8)),
            register::REGISTER => match current {
                Some(key) if key == nrkey => {}
                Some(_) => return Err(PrError::Conflict),
                None => {
                    self.regs.push(Registration {
                        nexus: nexus.clone(),
                        port: self.port,
                        key: nrkey,
                    });
                    self.generation = self.generation.wrapping_add(1);
                }
            },
            action @ (register::UNREGISTER | register::REPLACE) => {
                if current.is_none() || !(command.ignore_key() || current == Some(crkey)) {
                    return Err(PrError::Conflict);
                }
                // Linux's block layer unregisters with a new key of 0 (Documentation/block/
                // pr.rst, IOC_PR_REGISTER), which its NVMe host sends as Replace with NRKEY 0
                // (drivers/nvme/host/pr.c nvme_pr_register): Replace to key 0 unregisters.
                if action == register::UNREGISTER || nrkey == 0 {
                    self.unregister_notifying(nexus, notices);
                } else if let Some(r) = self.regs.iter_mut().find(|r| r.is(nexus, self.port)) {
                    r.key = nrkey;
                }
                self.generation = self.generation.wrapping_add(1);
            }
            _ => return Err(invalid(2)),
        }
        // CPTPL: Linux's host asks for persistence on every Register (nvme_pr_register sets
        // CPTPL to 11b). Without a store the LU cannot persist (RESCAP bit 0 clear), and the
        // request is let pass as Linux's nvmet lets it (drivers/nvme/target/pr.c ignores it).
        match command.cptpl() {
            cptpl::SET if self.persistent => self.aptpl = true,
            cptpl::CLEAR => self.aptpl = false,
            _ => {}
        }
        Ok(())
    }

    /// What Acquire and Release ask first: IEKEY clear (NVMe base 2.0: only Register may
    /// ignore the key) and the host registered with `crkey`.
    fn check_current_key(
        &self,
        command: NvmeReservation,
        nexus: &Nexus,
        crkey: u64,
    ) -> Result<(), PrError> {
        if command.ignore_key() {
            return Err(invalid(2));
        }
        if self.key_of(nexus) != Some(crkey) {
            return Err(PrError::Conflict);
        }
        Ok(())
    }

    /// Reservation Acquire (NVMe base 2.0): acquire, preempt, preempt and abort, with
    /// the SCSI rules of RESERVE and PREEMPT, which NVMe shares.
    fn nvme_acquire(
        &mut self,
        command: NvmeReservation,
        nexus: &Nexus,
        data: &[u8],
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        let (Some(crkey), Some(prkey)) = (le64(data, 0), le64(data, 8)) else {
            return Err(invalid(0));
        };
        let rtype = scsi_type(command.nvme_type()).ok_or_else(|| invalid(3))?;
        self.check_current_key(command, nexus, crkey)?;
        match command.action() {
            acquire::ACQUIRE => self.reserve(nexus, rtype),
            acquire::PREEMPT | acquire::PREEMPT_AND_ABORT => {
                self.preempt(nexus, prkey, rtype, notices)
            }
            _ => Err(invalid(2)),
        }
    }

    /// Reservation Release (NVMe base 2.0): release or clear.
    fn nvme_release(
        &mut self,
        command: NvmeReservation,
        nexus: &Nexus,
        data: &[u8],
        notices: &mut PrNotices,
    ) -> Result<(), PrError> {
        let crkey = le64(data, 0).ok_or_else(|| invalid(0))?;
        self.check_current_key(command, nexus, crkey)?;
        match command.action() {
            release::RELEASE => {
                // A type that is no type never matches the reservation: Invalid Field when
                // the host holds one, nothing to do otherwise.
                let rtype = scsi_type(command.nvme_type()).unwrap_or(0);
                self.release(nexus, rtype, notices)
            }
            release::CLEAR => {
                self.clear(nexus, notices);
                Ok(())
            }
            _ => Err(invalid(2)),
        }
    }

    /// Reservation Report with the extended data structure (NVMe base 2.0): the generation, the
    /// type, the persistence state, then each registrant with its key, whether it holds the
    /// reservation and its Host Identifier (zero for an iSCSI initiator, which has none). Cut
    /// to the length the host asked for.
    fn nvme_report(&self, command: NvmeReservation) -> Vec<u8> {
        let mut d = vec![0u8; REPORT_HEADER_LEN];
        d[0..4].copy_from_slice(&self.generation.to_le_bytes());
        d[4] = self.reservation.as_ref().map_or(0, |r| nvme_type(r.rtype));
        d[5..7].copy_from_slice(&(self.regs.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        d[9] = u8::from(self.aptpl);
        for r in &self.regs {
            let mut entry = [0u8; REPORT_ENTRY_LEN];
            entry[0..2].copy_from_slice(&DYNAMIC_CNTLID.to_le_bytes());
            entry[2] = u8::from(self.is_holder_at(&r.nexus, r.port));
            entry[8..16].copy_from_slice(&r.key.to_le_bytes());
            entry[16..32].copy_from_slice(&r.nexus.host_id().unwrap_or_default());
            d.extend_from_slice(&entry);
        }
        let wanted = usize::try_from(command.report_length()).unwrap_or(usize::MAX);
        truncate(d, wanted)
    }
}

/// What an NVMe host is told of a change it did not make (NVMe base 2.0, the
/// Reservation Notification log page's types), as the unit attention an iSCSI initiator gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationNotice {
    /// Its registration was removed by a preempt.
    RegistrationPreempted = 1,
    /// The reservation was released, or went with its holder's registration.
    ReservationReleased = 2,
    /// The reservation (and every registration) was cleared, or preempted with another type.
    ReservationPreempted = 3,
}

impl ReservationNotice {
    /// The notice of a reservation unit attention condition (ASC, ASCQ).
    fn of_condition(condition: (u8, u8)) -> Option<Self> {
        match condition {
            sense::REGISTRATIONS_PREEMPTED => Some(ReservationNotice::RegistrationPreempted),
            sense::RESERVATIONS_RELEASED => Some(ReservationNotice::ReservationReleased),
            sense::RESERVATIONS_PREEMPTED => Some(ReservationNotice::ReservationPreempted),
            _ => None,
        }
    }
}

/// Notices kept for NVMe hosts at most; past that the oldest go (a controller that collects
/// less often than this many changes misses some, and its log page count shows the gap).
const HOST_NOTICES_KEPT: usize = 256;

/// The notices for NVMe hosts, numbered, for their controllers to collect
/// ([`PrState::host_notices_since`]): a host may have several controllers, each of which logs
/// every notice once.
#[derive(Debug, Default, Clone)]
pub(super) struct HostNotices {
    /// The number of the newest notice (0: none yet).
    newest: u64,
    kept: VecDeque<(u64, [u8; 16], ReservationNotice)>,
}

impl PrState {
    /// Takes the notices meant for NVMe hosts out of `notices` into their log, leaving the
    /// unit attentions for iSCSI nexuses.
    pub(in crate::scsi) fn file_host_notices(&mut self, notices: PrNotices) -> PrNotices {
        let mut for_iscsi = PrNotices::new();
        for notice in notices {
            match (
                notice.nexus.host_id(),
                ReservationNotice::of_condition(notice.condition),
            ) {
                (Some(host), Some(told)) => {
                    let log = &mut self.host_notices;
                    log.newest += 1;
                    if log.kept.len() == HOST_NOTICES_KEPT {
                        log.kept.pop_front();
                    }
                    log.kept.push_back((log.newest, host, told));
                }
                (Some(_), None) => {}
                (None, _) => for_iscsi.push(notice),
            }
        }
        for_iscsi
    }

    /// The notices for host `host` numbered after `after`, oldest first, and the number to ask
    /// after next time; with `after` `None` (a controller's first look) none, only the number.
    pub(in crate::scsi) fn host_notices_since(
        &self,
        host: [u8; 16],
        after: Option<u64>,
    ) -> (Vec<ReservationNotice>, u64) {
        let log = &self.host_notices;
        let notices = match after {
            None => Vec::new(),
            Some(after) => log
                .kept
                .iter()
                .filter(|(number, to, _)| *number > after && *to == host)
                .map(|&(_, _, notice)| notice)
                .collect(),
        };
        (notices, log.newest)
    }

    /// Whether the state persists through power loss (SCSI PTPL_A, NVMe PTPL).
    pub(in crate::scsi) fn persists(&self) -> bool {
        self.aptpl
    }
}
