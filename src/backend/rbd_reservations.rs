//! The persistent reservations of an RBD LUN, shared by every gateway that exports the image
//! (docs/multipath.md): one RADOS object beside the image, `iser-target.reservations.<image
//! id>` in the image's pool, holds the state's record under a version; a change is written by
//! compare-and-swap on that version and announced with RADOS watch/notify, which returns
//! once every gateway watching the object (this one included) has taken the new state.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rbd_ffi::{SharedObject, WatchEvent};

use crate::scsi::{LogicalUnit, SharedReservationStore};

/// How long an announcement waits for every gateway: a gateway that has not answered by
/// then is down or cut off from the cluster (its watch lapses), and the change stands.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);

/// The object's name for image `id` (an image's id does not change when it is renamed).
pub(super) fn object_name(image_id: &str) -> String {
    format!("iser-target.reservations.{image_id}")
}

/// One RBD LUN's shared reservation state.
#[derive(Clone)]
pub struct RbdReservationStore {
    object: Arc<SharedObject>,
    /// `<pool>/<object>`, for log messages.
    location: String,
}

impl RbdReservationStore {
    pub(super) fn new(object: SharedObject, location: String) -> Self {
        RbdReservationStore {
            object: Arc::new(object),
            location,
        }
    }

    /// Delivers every announcement to `lu` for as long as it lives, then reads the state
    /// once more: a change announced before the watch was in place is not missed.
    pub fn deliver_to(&self, lu: &Arc<LogicalUnit>) -> io::Result<()> {
        let (weak, location) = (Arc::downgrade(lu), self.location.clone());
        self.object
            .watch(move |event| deliver(&weak, &location, event))
            .map_err(io::Error::from)?;
        lu.refresh_reservations()
    }
}

/// Hands one watch event to the LU, if it is still there.
fn deliver(lu: &Weak<LogicalUnit>, location: &str, event: WatchEvent<'_>) {
    let Some(lu) = lu.upgrade() else {
        return;
    };
    match event {
        WatchEvent::Notified(message) => lu.reservations_announced(message),
        WatchEvent::Reestablished => {
            log::warn!(
                "persistent reservations: {location}: watch lost and back; reading the state again"
            );
            if let Err(e) = lu.refresh_reservations() {
                log::error!("persistent reservations: {location}: {e}");
            }
        }
    }
}

impl SharedReservationStore for RbdReservationStore {
    fn load(&self) -> io::Result<Option<(u64, Vec<u8>)>> {
        self.object.read().map_err(io::Error::from)
    }

    fn replace(&self, expected: Option<u64>, version: u64, record: &[u8]) -> io::Result<bool> {
        self.object
            .replace(expected, version, record)
            .map_err(io::Error::from)
    }

    fn announce(&self, message: &[u8]) -> io::Result<()> {
        self.object
            .notify(message, ANNOUNCE_TIMEOUT)
            .map_err(io::Error::from)
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}
