//! Where a LU's reservation state lives: in memory; in memory and saved to a store when an
//! initiator asks for persistence through power loss (APTPL); or in a store every gateway of
//! the LU shares, so that a reservation taken through one gateway binds the others.
//!
//! Saved: a PERSISTENT RESERVE OUT changes the state in memory while it is planned, like
//! every other reservation change; when the change must persist, the command's run step
//! ([`super::super::BlockRequest::SaveReservations`], on the executor's blocking pool)
//! writes the record and the command is GOOD only once the store holds it.
//!
//! Shared: the store holds the one state, with a version. A change is planned against a copy
//! of the state in memory; when it changes anything, its run step
//! ([`super::super::BlockRequest::ChangeSharedReservations`]) makes it again on the state as
//! it is then, writes it as the next version if no gateway wrote another first (else reads
//! theirs and makes the change again), and announces it: every gateway, this one included,
//! adopts the new state and queues the change's unit attentions for its own I_T nexuses
//! ([`super::super::LogicalUnit::reservations_announced`]) before the command is answered.
//! Every command's conflict check then reads the state in memory, as with one gateway.

use std::fmt;
use std::io;
use std::sync::{Mutex, MutexGuard};

use super::super::sense::{self, Sense};
use super::super::{status, Nexus, ScsiOutcome};
use super::nvme::NvmeReservation;
use super::record::{self, RecordError};
use super::{PrNotices, PrOutcome, PrState};

/// Durable storage for one LU's reservation record (a file in the server's state directory).
/// The SCSI layer calls it only from a command's run step.
pub trait ReservationStore: Send + Sync {
    /// Replaces the saved record; returns once it would survive power loss.
    fn save(&self, record: &[u8]) -> io::Result<()>;
    /// Where the record lives, for log messages.
    fn location(&self) -> String;
}

/// Storage every gateway of a LU shares (an object beside its RBD image): the record of the
/// one reservation state they all enforce, with a version, and a way to tell them all of a
/// change. The SCSI layer calls it at start-up and from a command's run step.
pub trait SharedReservationStore: Send + Sync {
    /// The record and its version; `None` when none was written yet.
    fn load(&self) -> io::Result<Option<(u64, Vec<u8>)>>;
    /// Writes `record` as `version` if the store still holds version `expected` (`None`:
    /// nothing yet). `false`: another gateway wrote first, nothing was written.
    fn replace(&self, expected: Option<u64>, version: u64, record: &[u8]) -> io::Result<bool>;
    /// Delivers `message` to every gateway's
    /// [`super::super::LogicalUnit::reservations_announced`], this one's included; returns
    /// once all have taken it (an error: some did not, in time).
    fn announce(&self, message: &[u8]) -> io::Result<()>;
    /// Where the record lives, for log messages.
    fn location(&self) -> String;
}

/// Where the state lives.
enum Keeping {
    /// In memory only: APTPL is refused (PTPL_C = 0).
    Memory,
    /// In memory, saved to the store whenever APTPL is on.
    Saved(Box<dyn ReservationStore>),
    /// In the store the LU's gateways share.
    Shared(Box<dyn SharedReservationStore>),
}

/// What an announcement asks of a gateway ([`Reservations::announced`]).
#[derive(Debug, Default)]
pub(in crate::scsi) struct Announced {
    /// The unit attentions (and NVMe notices) it establishes, the first time it is seen.
    pub notices: PrNotices,
    /// Another gateway preempted and aborted: this one must wait for its commands in flight.
    pub aborts: bool,
}

/// What a shared state in memory is of the store's.
#[derive(Debug, Default)]
struct SharedMarks {
    /// The store version the state in memory is.
    version: u64,
    /// The newest announcement whose unit attentions were queued.
    announced: u64,
}

/// Persistent and SPC-2 reservations of one LU, and where they live.
pub struct Reservations {
    state: Mutex<PrState>,
    keeping: Keeping,
    /// Held while a record is written: saves reach the store one at a time, and each writes
    /// the state as it is then, so an older state never lands over a newer one. Shared: one
    /// change of this gateway's at a time.
    saving: Mutex<()>,
    /// Shared: which version of the store's the state is.
    marks: Mutex<SharedMarks>,
    /// Shared: who this is among the gateways, in its announcements.
    origin: u64,
}

impl fmt::Debug for Reservations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let location = match &self.keeping {
            Keeping::Memory => None,
            Keeping::Saved(store) => Some(store.location()),
            Keeping::Shared(store) => Some(store.location()),
        };
        f.debug_struct("Reservations")
            .field("store", &location)
            .finish_non_exhaustive()
    }
}

/// Reservations are equal when they are the same LU's (identity, as a request names them).
impl PartialEq for Reservations {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Reservations {}

/// Why shared reservations could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] io::Error),
    /// The record to start from is damaged.
    #[error("the saved record: {0}")]
    Saved(#[from] RecordError),
}

/// Most times a shared change is made again because another gateway changed the state first.
const SHARED_ATTEMPTS: usize = 16;

/// A reservation change to make on the shared state in the run step: the command, again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationChange {
    nexus: Nexus,
    command: ChangeCommand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChangeCommand {
    /// PERSISTENT RESERVE OUT: its CDB and parameter list.
    Scsi { cdb: Vec<u8>, data: Vec<u8> },
    /// An NVMe reservation command and its data.
    Nvme {
        command: NvmeReservation,
        data: Vec<u8>,
    },
}

impl ReservationChange {
    /// A PERSISTENT RESERVE OUT from `nexus`.
    pub(in crate::scsi) fn scsi(cdb: &[u8], nexus: &Nexus, data: &[u8]) -> Self {
        ReservationChange {
            nexus: nexus.clone(),
            command: ChangeCommand::Scsi {
                cdb: cdb.to_vec(),
                data: data.to_vec(),
            },
        }
    }

    /// An NVMe reservation command from host `nexus`.
    pub(in crate::scsi) fn nvme(command: NvmeReservation, nexus: &Nexus, data: &[u8]) -> Self {
        ReservationChange {
            nexus: nexus.clone(),
            command: ChangeCommand::Nvme {
                command,
                data: data.to_vec(),
            },
        }
    }

    /// Whether it preempts and aborts (SCSI PREEMPT AND ABORT, NVMe Preempt and Abort).
    fn aborts(&self) -> bool {
        match &self.command {
            ChangeCommand::Scsi { cdb, .. } => super::preempts_and_aborts(cdb),
            ChangeCommand::Nvme { command, .. } => super::preempts_and_aborts(&command.cdb()),
        }
    }

    /// Makes the change on `state`.
    pub(in crate::scsi) fn apply(&self, state: &mut PrState) -> PrOutcome {
        match &self.command {
            ChangeCommand::Scsi { cdb, data } => {
                state.persistent_reserve_out(super::super::cdb::Cdb::new(cdb), &self.nexus, data)
            }
            ChangeCommand::Nvme { command, data } => {
                state.nvme_reservation(*command, &self.nexus, data)
            }
        }
    }
}

impl Reservations {
    /// Reservations that live in memory only: REGISTER with APTPL is refused (PTPL_C = 0).
    /// `port`: the relative target port commands come through.
    pub fn in_memory(port: u16) -> Self {
        Self::with(PrState::at_port(port), Keeping::Memory)
    }

    /// Reservations that persist through `store` when an initiator sets APTPL, restored from
    /// `saved`, the record the store held at start-up (`None`: nothing saved yet).
    pub fn persistent(
        port: u16,
        store: Box<dyn ReservationStore>,
        saved: Option<&[u8]>,
    ) -> Result<Self, RecordError> {
        let restored = saved
            .map(|bytes| record::decode(bytes, port))
            .transpose()?
            .filter(|state| state.aptpl);
        // A store is what makes the LU able to persist (PTPL_C), whatever the record held.
        let state = PrState {
            persistent: true,
            ..restored.unwrap_or_else(|| PrState::at_port(port))
        };
        if state.aptpl {
            log::info!(
                "restored {} registration(s){} from {}",
                state.regs.len(),
                if state.reservation.is_some() {
                    " and a reservation"
                } else {
                    ""
                },
                store.location()
            );
        }
        Ok(Self::with(state, Keeping::Saved(store)))
    }

    /// Reservations kept in `store`, which every gateway of the LU shares: read from it, or
    /// written there by the first gateway, from `saved` (a record of this gateway's own from
    /// before the state was shared, restored when its APTPL is on) or empty. Blocks on the
    /// store. The caller then delivers the store's announcements to
    /// [`super::super::LogicalUnit::reservations_announced`].
    pub fn shared(
        port: u16,
        store: Box<dyn SharedReservationStore>,
        saved: Option<&[u8]>,
    ) -> Result<Self, SharedError> {
        let empty = PrState {
            persistent: true,
            ..PrState::at_port(port)
        };
        if store.load()?.is_none() {
            let first = match saved.map(|bytes| record::decode(bytes, port)).transpose()? {
                Some(restored) if restored.aptpl => record::encode(&restored),
                _ => record::encode(&empty),
            };
            // Another gateway may write first: then theirs is read below.
            store.replace(None, 1, &first)?;
        }
        let reservations = Self::with(empty, Keeping::Shared(store));
        reservations.refresh()?;
        Ok(reservations)
    }

    fn with(state: PrState, keeping: Keeping) -> Self {
        Reservations {
            state: Mutex::new(state),
            keeping,
            saving: Mutex::new(()),
            marks: Mutex::new(SharedMarks::default()),
            origin: random_origin(),
        }
    }

    /// Whether a store keeps the state through a restart.
    pub fn can_persist(&self) -> bool {
        !matches!(self.keeping, Keeping::Memory)
    }

    /// Whether the state is shared between gateways: changes are made in the run step.
    pub(in crate::scsi) fn is_shared(&self) -> bool {
        matches!(self.keeping, Keeping::Shared(_))
    }

    /// Who is registered and who holds the reservation, and where the state is shared.
    pub(in crate::scsi) fn summary(&self) -> super::ReservationSummary {
        super::ReservationSummary {
            shared_in: match &self.keeping {
                Keeping::Shared(store) => Some(store.location()),
                _ => None,
            },
            ..self.state().summary()
        }
    }

    /// The state, locked.
    pub(in crate::scsi) fn state(&self) -> MutexGuard<'_, PrState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn marks(&self) -> MutexGuard<'_, SharedMarks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the current state to the store. A failure leaves the change made in memory (as
    /// LIO's core_scsi3_update_and_write_aptpl() does) and answers NOT READY, LOGICAL UNIT
    /// COMMUNICATION FAILURE, LIO's answer too; the next successful save writes it all.
    pub(in crate::scsi) fn save(&self) -> Result<(), Sense> {
        let Keeping::Saved(store) = &self.keeping else {
            return Ok(());
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = record::encode(&self.state());
        store.save(&bytes).map_err(|e| {
            log::error!(
                "persistent reservations: cannot save {}: {e}",
                store.location()
            );
            communication_failure()
        })
    }

    /// Makes `change` on the shared state (see the module's doc): the command's answer, and
    /// the unit attentions are queued by the announcement.
    pub(in crate::scsi) fn change_shared(&self, change: &ReservationChange) -> ScsiOutcome {
        let Keeping::Shared(store) = &self.keeping else {
            debug_assert!(false, "a shared change planned for unshared reservations");
            return ScsiOutcome::from_sense(&communication_failure());
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..SHARED_ATTEMPTS {
            let version = self.marks().version;
            let mut draft = self.state().clone();
            let PrOutcome {
                outcome, notices, ..
            } = change.apply(&mut draft);
            if outcome.status != status::GOOD || self.state().holds_as(&draft) {
                return outcome;
            }
            let after = record::encode(&draft);
            match store.replace(Some(version), version + 1, &after) {
                Ok(true) => {
                    self.adopt(version + 1, &after);
                    let message = record::encode_announcement(
                        &record::Announcement {
                            version: version + 1,
                            origin: self.origin,
                            aborts: change.aborts(),
                            notices,
                        },
                        &after,
                    );
                    if let Err(e) = store.announce(&message) {
                        // The change is in the store; a gateway that did not take it in time
                        // is down or cut off from the cluster (and so from the image).
                        log::warn!(
                            "persistent reservations: {}: not every gateway confirmed \
                             version {}: {e}",
                            store.location(),
                            version + 1
                        );
                    }
                    return outcome;
                }
                Ok(false) => {
                    if let Err(e) = self.refresh() {
                        return shared_failure(store.location(), e);
                    }
                }
                Err(e) => return shared_failure(store.location(), e),
            }
        }
        log::warn!(
            "persistent reservations: {}: other gateways kept changing the state; \
             answering BUSY",
            store.location()
        );
        ScsiOutcome {
            status: status::BUSY,
            ..ScsiOutcome::good()
        }
    }

    /// Reads the shared store again and adopts what it holds when it is newer (after the
    /// announcements may have been missed: start-up, a lost watch, a lost race).
    pub fn refresh(&self) -> io::Result<()> {
        let Keeping::Shared(store) = &self.keeping else {
            return Ok(());
        };
        if let Some((version, bytes)) = store.load()? {
            self.adopt(version, &bytes);
        }
        Ok(())
    }

    /// Takes an announcement of the shared state: adopts the state when it is newer than the
    /// one in memory, and the first time it is seen (an announcement may arrive more than
    /// once) returns what it asks: its unit attentions, and whether another gateway
    /// preempted and aborted. A damaged one is logged and dropped.
    pub(in crate::scsi) fn announced(&self, message: &[u8]) -> Announced {
        let port = self.state().port;
        let (announcement, state) = match record::decode_announcement(message, port) {
            Ok(announced) => announced,
            Err(e) => {
                log::error!("persistent reservations: a damaged announcement ignored: {e}");
                return Announced::default();
            }
        };
        self.install(announcement.version, state);
        let mut marks = self.marks();
        if announcement.version <= marks.announced {
            return Announced::default();
        }
        marks.announced = announcement.version;
        Announced {
            notices: announcement.notices,
            aborts: announcement.aborts && announcement.origin != self.origin,
        }
    }

    /// Adopts `record`, version `version` of the shared store, when newer than the state.
    fn adopt(&self, version: u64, record: &[u8]) {
        let port = self.state().port;
        match record::decode(record, port) {
            Ok(state) => self.install(version, state),
            Err(e) => log::error!(
                "persistent reservations: version {version} of the shared state is damaged \
                 and ignored: {e}"
            ),
        }
    }

    fn install(&self, version: u64, shared: PrState) {
        let mut marks = self.marks();
        if version <= marks.version {
            return;
        }
        marks.version = version;
        self.state().take_shared(shared);
    }
}

/// A number that tells this LU's gateway from the others in announcements: random per
/// process and LU (std's hasher keys are drawn from the operating system's randomness).
fn random_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// NOT READY, LOGICAL UNIT COMMUNICATION FAILURE: the store did not take the state.
fn communication_failure() -> Sense {
    Sense::new(sense::NOT_READY, sense::LOGICAL_UNIT_COMMUNICATION_FAILURE)
}

fn shared_failure(location: String, e: io::Error) -> ScsiOutcome {
    log::error!("persistent reservations: {location}: {e}");
    ScsiOutcome::from_sense(&communication_failure())
}
