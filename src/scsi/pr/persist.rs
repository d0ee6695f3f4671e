//! A LU's reservation state as its sessions share it, and the store that keeps it through a
//! restart when an initiator asks for persistence through power loss (APTPL).
//!
//! A PERSISTENT RESERVE OUT changes the state in memory while it is planned, like every
//! other reservation change; when the change must persist, the command's run step
//! ([`super::super::BlockRequest::SaveReservations`], on the executor's blocking pool) writes
//! the record and the command is GOOD only once the store holds it.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use super::super::sense::{self, Sense};
use super::record::{self, RecordError};
use super::PrState;

/// Durable storage for one LU's reservation record (a file in the server's state directory).
/// The SCSI layer calls it only from a command's run step.
pub trait ReservationStore: Send + Sync {
    /// Replaces the saved record; returns once it would survive power loss.
    fn save(&self, record: &[u8]) -> std::io::Result<()>;
    /// Where the record lives, for log messages.
    fn location(&self) -> String;
}

/// Persistent and SPC-2 reservations of one LU, and where they persist (if anywhere).
pub struct Reservations {
    state: Mutex<PrState>,
    store: Option<Box<dyn ReservationStore>>,
    /// Held while a record is written: saves reach the store one at a time, and each writes
    /// the state as it is then, so an older state never lands over a newer one.
    saving: Mutex<()>,
}

impl fmt::Debug for Reservations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservations")
            .field("store", &self.store.as_ref().map(|s| s.location()))
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

impl Reservations {
    /// Reservations that live in memory only: REGISTER with APTPL is refused (PTPL_C = 0).
    pub fn in_memory() -> Self {
        Reservations {
            state: Mutex::new(PrState::default()),
            store: None,
            saving: Mutex::new(()),
        }
    }

    /// Reservations that persist through `store` when an initiator sets APTPL, restored from
    /// `saved`, the record the store held at start-up (`None`: nothing saved yet).
    pub fn persistent(
        store: Box<dyn ReservationStore>,
        saved: Option<&[u8]>,
    ) -> Result<Self, RecordError> {
        let restored = saved.map(record::decode).transpose()?.flatten();
        // A store is what makes the LU able to persist (PTPL_C), whatever the record held.
        let state = PrState {
            persistent: true,
            ..restored.unwrap_or_default()
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
        Ok(Reservations {
            state: Mutex::new(state),
            store: Some(store),
            saving: Mutex::new(()),
        })
    }

    /// Whether a store keeps the state through a restart.
    pub fn can_persist(&self) -> bool {
        self.store.is_some()
    }

    /// The state, locked.
    pub(in crate::scsi) fn state(&self) -> MutexGuard<'_, PrState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the current state to the store. A failure leaves the change made in memory (as
    /// LIO's core_scsi3_update_and_write_aptpl() does) and answers NOT READY, LOGICAL UNIT
    /// COMMUNICATION FAILURE, LIO's answer too; the next successful save writes it all.
    pub(in crate::scsi) fn save(&self) -> Result<(), Sense> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let _one_at_a_time = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = record::encode(&self.state());
        store.save(&bytes).map_err(|e| {
            log::error!(
                "persistent reservations: cannot save {}: {e}",
                store.location()
            );
            Sense::new(sense::NOT_READY, sense::LOGICAL_UNIT_COMMUNICATION_FAILURE)
        })
    }
}
