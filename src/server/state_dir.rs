//! The state directory (`state_dir:` in the configuration): what the target keeps across
//! restarts. Today that is each LU's persistent reservations when an initiator set APTPL, one
//! file per LU under `reservations/`, named by the LU's NAA designator (VPD 0x83) so that it
//! follows the LU's identity, not its place in the configuration.
//!
//! One process owns a state directory: it holds an exclusive lock on `lock` for as long as any
//! of its LUs lives, and a second process given the same directory refuses to start (two
//! gateways of one LUN keep their reservations apart, docs/multipath.md).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};

use crate::scsi::ReservationStore;

/// An opened, locked state directory.
pub struct StateDir {
    path: PathBuf,
    reservations: PathBuf,
    /// The lock, shared by every store made here: released when the last one goes.
    lock: Arc<Flock<File>>,
}

impl StateDir {
    /// Creates `path` (and `reservations/` in it) when missing, owner-only, and locks it.
    pub fn open(path: &Path) -> io::Result<StateDir> {
        let reservations = path.join("reservations");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&reservations)
            .map_err(|e| context(e, &format!("cannot create {}", reservations.display())))?;
        let lock_path = path.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| context(e, &format!("cannot open {}", lock_path.display())))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            context(
                io::Error::from(errno),
                &format!(
                    "{} is in use by another iser-target process (each process needs a \
                     state_dir of its own)",
                    path.display()
                ),
            )
        })?;
        Ok(StateDir {
            path: path.to_path_buf(),
            reservations,
            lock: Arc::new(lock),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store of the LU with NAA designator `naa`, and the record it holds (if any).
    pub fn reservation_store(
        &self,
        naa: [u8; 8],
    ) -> io::Result<(FileReservationStore, Option<Vec<u8>>)> {
        let name = crate::hex(&naa);
        let path = self.reservations.join(name);
        let saved = match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(context(e, &format!("cannot read {}", path.display()))),
        };
        let store = FileReservationStore {
            path,
            _lock: Arc::clone(&self.lock),
        };
        Ok((store, saved))
    }
}

/// One LU's reservation record in the state directory.
pub struct FileReservationStore {
    path: PathBuf,
    _lock: Arc<Flock<File>>,
}

impl ReservationStore for FileReservationStore {
    /// Writes a new file beside the record, syncs it, renames it over the record and syncs the
    /// directory: after a crash the record is the old one or the new one, whole.
    fn save(&self, record: &[u8]) -> io::Result<()> {
        let mut staging = self.path.clone().into_os_string();
        staging.push(".new");
        let staging = PathBuf::from(staging);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&staging)?;
        file.write_all(record)?;
        file.sync_all()?;
        fs::rename(&staging, &self.path)?;
        match self.path.parent() {
            Some(dir) => File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("state-dir-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_replace_the_record_whole_and_read_back() {
        let dir = scratch("save");
        let state = StateDir::open(&dir).unwrap();
        let naa = [0x50, 1, 2, 3, 4, 5, 6, 7];
        let (store, saved) = state.reservation_store(naa).unwrap();
        assert_eq!(saved, None);
        store.save(b"first record, longer").unwrap();
        store.save(b"second").unwrap();
        let (_, saved) = state.reservation_store(naa).unwrap();
        assert_eq!(saved.as_deref(), Some(&b"second"[..]));
        assert!(store.location().ends_with("reservations/5001020304050607"));
        let leftovers: Vec<_> = fs::read_dir(dir.join("reservations"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec!["5001020304050607"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_process_owns_a_state_dir_until_its_last_store_goes() {
        let dir = scratch("lock");
        let first = StateDir::open(&dir).unwrap();
        let (store, _) = first.reservation_store([0x50; 8]).unwrap();
        drop(first);
        // flock(2) locks belong to the open file: a second open of the same file conflicts
        // even within one process.
        let refused = StateDir::open(&dir)
            .err()
            .expect("the directory is still locked");
        assert!(refused
            .to_string()
            .contains("in use by another iser-target process"));
        drop(store);
        StateDir::open(&dir).expect("the lock went with the last store");
        fs::remove_dir_all(&dir).unwrap();
    }
}
