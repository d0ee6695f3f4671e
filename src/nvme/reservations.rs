//! A controller's side of its namespaces' reservations (NVMe base 2.0 §8.19): the notices for
//! its host, collected from the LUNs ([`NamespaceReservations`]) into the Reservation
//! Notification log page (80h) and announced by an asynchronous event; the Reservation
//! Notification Mask (feature 82h) that filters them per namespace; the Reservation
//! Persistence feature (83h).
//!
//! The reservation commands themselves run on the LUN ([`crate::scsi::NvmeReservation`]).

use std::collections::VecDeque;

use super::command::{Sqe, Status};
use super::config::NamespaceReservations;
use super::controller::{Notice, NoticeState};
use super::queue::{Outcome, Queue};
use crate::scsi::ReservationNotice;

/// Entries a controller keeps unread at most: Number of Available Log Pages is one byte. Past
/// that the oldest go, and the log page count shows the host the gap.
const MAX_ENTRIES: usize = 255;

/// Bytes of the Reservation Notification log page (NVMe base 2.0).
pub const LOG_LEN: usize = 64;

/// The Reservation Notification Mask bits a host may set: one per notice type (bit N masks
/// type N).
const MASKABLE: u32 = 1 << 1 | 1 << 2 | 1 << 3;

/// The NSID that names every namespace in Set Features.
const ALL_NAMESPACES: u32 = 0xFFFF_FFFF;

/// One unread log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    count: u64,
    notice: ReservationNotice,
    nsid: u32,
}

/// A controller's reservation notices and masks.
#[derive(Debug, Default)]
pub struct ReservationLog {
    /// Per namespace, the number of the last notice collected from its LUN.
    marks: Vec<(u32, u64)>,
    /// Per namespace, the notice types masked (feature 82h); absent: none.
    masks: Vec<(u32, u32)>,
    /// Unread entries, oldest first.
    entries: VecDeque<Entry>,
    /// Entries ever logged: the Log Page Count of the newest.
    count: u64,
}

impl ReservationLog {
    /// Collects the notices for `host` on `nsids` of `subsystem` that came since the last look
    /// (the first look only marks where to start); returns whether any was logged.
    pub fn collect(
        &mut self,
        source: &dyn NamespaceReservations,
        subsystem: usize,
        nsids: &[u32],
        host: [u8; 16],
    ) -> bool {
        let mut logged = false;
        for &nsid in nsids {
            let at = self.marks.iter().position(|(n, _)| *n == nsid);
            let after = at.map(|i| self.marks[i].1);
            let Some((notices, newest)) = source.notices(subsystem, nsid, host, after) else {
                continue;
            };
            match at {
                Some(i) => self.marks[i].1 = newest,
                None => self.marks.push((nsid, newest)),
            }
            let mask = self.mask(nsid);
            for notice in notices {
                if mask & 1 << notice as u32 != 0 {
                    continue;
                }
                self.count = self.count.wrapping_add(1).max(1);
                if self.entries.len() == MAX_ENTRIES {
                    self.entries.pop_front();
                }
                self.entries.push_back(Entry {
                    count: self.count,
                    notice,
                    nsid,
                });
                logged = true;
            }
        }
        logged
    }

    /// Reads the log page: the oldest unread entry, which the read removes, with the number
    /// of entries still unread; all zeros when there is none (NVMe base 2.0).
    pub fn read(&mut self) -> Vec<u8> {
        let mut page = vec![0u8; LOG_LEN];
        if let Some(entry) = self.entries.pop_front() {
            page[0..8].copy_from_slice(&entry.count.to_le_bytes());
            page[8] = entry.notice as u8;
            page[9] = self.entries.len().min(MAX_ENTRIES) as u8;
            page[12..16].copy_from_slice(&entry.nsid.to_le_bytes());
        }
        page
    }

    /// Whether entries wait to be read.
    pub fn has_entries(&self) -> bool {
        !self.entries.is_empty()
    }

    fn mask(&self, nsid: u32) -> u32 {
        self.masks
            .iter()
            .find(|(n, _)| *n == nsid)
            .map_or(0, |&(_, m)| m)
    }

    fn set_mask(&mut self, nsid: u32, mask: u32) {
        match self.masks.iter_mut().find(|(n, _)| *n == nsid) {
            Some(entry) => entry.1 = mask,
            None => self.masks.push((nsid, mask)),
        }
    }
}

impl Queue {
    /// Collects new reservation notices for this controller's host, and announces them when
    /// the host has none unread announced (an asynchronous event of type I/O Command Specific,
    /// Reservation Log Page Available). Run on every admin command, as the capacity check.
    pub(super) fn check_reservations(&mut self) {
        let (Some(source), Some(binding)) = (self.config.reservations.clone(), &self.binding)
        else {
            return;
        };
        let (Some(subsystem), host) = (binding.subsystem, binding.host_id) else {
            return;
        };
        let nsids: Vec<u32> = self.config.subsystems[subsystem]
            .namespaces
            .iter()
            .map(|n| n.nsid)
            .collect();
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        if admin
            .reservations
            .collect(&*source, subsystem, &nsids, host)
        {
            admin.notice(Notice::ReservationLog).pending = true;
            self.deliver_notice();
        }
    }

    /// Get Log Page, Reservation Notification (80h). Read without RAE, the notice is unmasked,
    /// and announced again while entries remain.
    pub(super) fn reservation_log(&mut self, retain_event: bool) -> Vec<u8> {
        let admin = self.admin.as_mut().expect("admin queue");
        let page = admin.reservations.read();
        if !retain_event {
            *admin.notice(Notice::ReservationLog) = NoticeState {
                pending: admin.reservations.has_entries(),
                masked: false,
            };
        }
        page
    }

    /// The namespaces a reservation feature names: `nsid`, one of this subsystem's, or with
    /// `all` allowed, every one of them for FFFFFFFFh.
    fn feature_namespaces(&self, nsid: u32, all: bool) -> Result<Vec<u32>, Status> {
        let subsystem = self.subsystem().ok_or(Status::INVALID_FIELD)?;
        let every = subsystem.namespaces.iter().map(|n| n.nsid);
        if nsid == ALL_NAMESPACES {
            return if all {
                Ok(every.collect())
            } else {
                Err(Status::INVALID_FIELD)
            };
        }
        every
            .clone()
            .find(|&n| n == nsid)
            .map(|n| vec![n])
            .ok_or(Status::INVALID_NAMESPACE)
    }

    /// Set Features, Reservation Notification Mask (82h): for one namespace or every one.
    pub(super) fn set_reservation_mask(&mut self, sqe: &Sqe) -> Outcome {
        let mask = sqe.cdw(11);
        if mask & !MASKABLE != 0 {
            return Outcome::status(Status::INVALID_FIELD);
        }
        let nsids = match self.feature_namespaces(sqe.nsid(), true) {
            Ok(nsids) => nsids,
            Err(status) => return Outcome::status(status),
        };
        let admin = self.admin.as_mut().expect("admin queue");
        for nsid in nsids {
            admin.reservations.set_mask(nsid, mask);
        }
        Outcome::Complete(Status::SUCCESS, u64::from(mask))
    }

    /// Get Features, Reservation Notification Mask (82h) or Reservation Persistence (83h) of
    /// one namespace.
    pub(super) fn get_reservation_feature(&mut self, sqe: &Sqe, persistence: bool) -> Outcome {
        let nsid = match self.feature_namespaces(sqe.nsid(), false) {
            Ok(nsids) => nsids[0],
            Err(status) => return Outcome::status(status),
        };
        if persistence {
            let persists = self
                .binding
                .as_ref()
                .and_then(|b| b.subsystem)
                .and_then(|s| {
                    let source = self.config.reservations.as_ref()?;
                    source.persists(s, nsid)
                });
            return Outcome::Complete(Status::SUCCESS, u64::from(persists.unwrap_or(false)));
        }
        let admin = self.admin.as_ref().expect("admin queue");
        Outcome::Complete(Status::SUCCESS, u64::from(admin.reservations.mask(nsid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Notices as a LUN keeps them: numbered, for any host.
    #[derive(Debug, Default)]
    struct Source {
        notices: Mutex<Vec<(u64, [u8; 16], ReservationNotice)>>,
    }

    impl NamespaceReservations for Source {
        fn notices(
            &self,
            _subsystem: usize,
            nsid: u32,
            host: [u8; 16],
            after: Option<u64>,
        ) -> Option<(Vec<ReservationNotice>, u64)> {
            let kept = self.notices.lock().unwrap();
            let newest = kept.last().map_or(0, |n| n.0);
            let Some(after) = after else {
                return Some((Vec::new(), newest));
            };
            let mine = kept
                .iter()
                .filter(|n| n.0 > after && n.1 == host && nsid == 1)
                .map(|n| n.2)
                .collect();
            Some((mine, newest))
        }

        fn persists(&self, _subsystem: usize, _nsid: u32) -> Option<bool> {
            Some(false)
        }
    }

    impl Source {
        fn push(&self, host: u8, notice: ReservationNotice) {
            let mut kept = self.notices.lock().unwrap();
            let number = kept.len() as u64 + 1;
            kept.push((number, [host; 16], notice));
        }
    }

    #[test]
    fn notices_are_logged_once_each_for_their_host_and_read_oldest_first() {
        let source = Source::default();
        let mut log = ReservationLog::default();
        source.push(1, ReservationNotice::ReservationReleased);
        assert!(
            !log.collect(&source, 0, &[1], [1; 16]),
            "the first look only marks"
        );
        source.push(2, ReservationNotice::RegistrationPreempted);
        source.push(1, ReservationNotice::RegistrationPreempted);
        source.push(1, ReservationNotice::ReservationPreempted);
        assert!(log.collect(&source, 0, &[1], [1; 16]));
        assert!(!log.collect(&source, 0, &[1], [1; 16]), "each once");
        let first = log.read();
        assert_eq!(u64::from_le_bytes(first[0..8].try_into().unwrap()), 1);
        assert_eq!(
            (first[8], first[9]),
            (1, 1),
            "registration preempted, one more"
        );
        assert_eq!(u32::from_le_bytes(first[12..16].try_into().unwrap()), 1);
        let second = log.read();
        assert_eq!((second[0], second[8], second[9]), (2, 3, 0));
        assert_eq!(log.read(), vec![0; LOG_LEN], "empty");
    }

    #[test]
    fn masked_types_are_not_logged_and_a_full_log_drops_the_oldest() {
        let source = Source::default();
        let mut log = ReservationLog::default();
        log.collect(&source, 0, &[1], [1; 16]);
        log.set_mask(1, 1 << 2);
        source.push(1, ReservationNotice::ReservationReleased);
        assert!(!log.collect(&source, 0, &[1], [1; 16]));
        for _ in 0..MAX_ENTRIES + 2 {
            source.push(1, ReservationNotice::ReservationPreempted);
        }
        log.collect(&source, 0, &[1], [1; 16]);
        let oldest = log.read();
        // Entries 1 and 2 were dropped: the count says so.
        assert_eq!(u64::from_le_bytes(oldest[0..8].try_into().unwrap()), 3);
        assert_eq!(oldest[9], (MAX_ENTRIES - 1) as u8);
    }
}
