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
    pool: String,
    name: String,
}

impl RbdReservationStore {
    pub(super) fn new(object: SharedObject, pool: &str, name: String) -> Self {
        RbdReservationStore {
            object: Arc::new(object),
            pool: pool.to_string(),
            name,
        }
    }

    /// The client id this gateway watches the object as (`client.<id>`): how another
    /// gateway's log names it when it does not confirm a change.
    pub fn client_id(&self) -> u64 {
        self.object.client_id()
    }

    /// Delivers every announcement to `lu` for as long as it lives, then reads the state
    /// once more: a change announced before the watch was in place is not missed.
    pub fn deliver_to(&self, lu: &Arc<LogicalUnit>) -> io::Result<()> {
        let (weak, location) = (Arc::downgrade(lu), self.location());
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

    /// Names the gateways that did not confirm in time, and how to fence one off.
    fn announce(&self, message: &[u8]) -> io::Result<()> {
        let silent = self
            .object
            .notify(message, ANNOUNCE_TIMEOUT)
            .map_err(io::Error::from)?;
        if silent.is_empty() {
            return Ok(());
        }
        let clients: Vec<String> = silent.iter().map(|id| format!("client.{id}")).collect();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{} did not confirm within {} s (`rados -p {} listwatchers {}` shows their \
                 addresses; `ceph osd blocklist add ADDRESS` fences one off the cluster)",
                clients.join(", "),
                ANNOUNCE_TIMEOUT.as_secs(),
                self.pool,
                self.name
            ),
        ))
    }

    /// `<pool>/<object>`.
    fn location(&self) -> String {
        format!("{}/{}", self.pool, self.name)
    }
}
