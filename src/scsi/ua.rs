//! Unit attention conditions (SPC-4 5.14, SAM-5 5.14): per logical unit, one queue per I_T
//! nexus that has sent the LU a command.
//!
//! A condition established "for every I_T nexus" (e.g. CAPACITY DATA HAS CHANGED after the
//! backing image grew) is queued for each nexus the LU knows. The next command from that
//! nexus other than INQUIRY, REPORT LUNS and REQUEST SENSE is answered CHECK CONDITION with
//! the condition's sense and not run; the condition is then cleared (UA_INTLCK_CTRL = 0, the
//! only mode we offer). REQUEST SENSE returns the oldest condition as its parameter data and
//! clears it (SPC-4 6.39). A nexus that is gone (session ended) loses its queue; one that
//! first appears after a condition was established does not get it, as it has not seen the
//! state that changed.

use std::collections::VecDeque;

use super::sense::Sense;
use super::Nexus;

/// Conditions kept per nexus at most; past that the oldest are dropped (SPC-4 5.14 lets a
/// device drop conditions it cannot queue, as long as one is reported).
const MAX_QUEUED: usize = 8;

/// The unit attention queues of one logical unit.
#[derive(Debug, Default)]
pub struct UnitAttentions {
    /// Every nexus that has addressed the LU, with its pending conditions (oldest first).
    /// Few nexuses address one LU, so a list is searched.
    nexuses: Vec<(Nexus, VecDeque<Sense>)>,
}

impl UnitAttentions {
    /// Records that `nexus` addresses the LU (so later conditions reach it) and takes its
    /// oldest pending condition, if any.
    pub fn take(&mut self, nexus: &Nexus) -> Option<Sense> {
        let queue = match self.nexuses.iter().position(|(n, _)| n == nexus) {
            Some(at) => &mut self.nexuses[at].1,
            None => {
                self.nexuses.push((nexus.clone(), VecDeque::new()));
                return None;
            }
        };
        queue.pop_front()
    }

    /// Records `nexus` without taking anything (INQUIRY and REPORT LUNS leave conditions
    /// pending).
    pub fn register(&mut self, nexus: &Nexus) {
        if !self.nexuses.iter().any(|(n, _)| n == nexus) {
            self.nexuses.push((nexus.clone(), VecDeque::new()));
        }
    }

    /// Establishes `sense` for every known nexus. The same condition already pending for a
    /// nexus is not queued twice.
    pub fn establish_all(&mut self, sense: Sense) {
        for (_, queue) in &mut self.nexuses {
            queue_once(queue, sense);
        }
    }

    /// Establishes `sense` for every known nexus but `except`, the one whose command changed
    /// the state (MODE PARAMETERS CHANGED, SPC-4 5.14).
    pub fn establish_others(&mut self, sense: Sense, except: &Nexus) {
        for (_, queue) in self.nexuses.iter_mut().filter(|(n, _)| n != except) {
            queue_once(queue, sense);
        }
    }

    /// Establishes `sense` for `nexus` alone. A nexus not known yet is recorded with it: a
    /// registration outlives its session, and the condition waits for the nexus's return.
    pub fn establish(&mut self, nexus: &Nexus, sense: Sense) {
        match self.nexuses.iter_mut().find(|(n, _)| n == nexus) {
            Some((_, queue)) => queue_once(queue, sense),
            None => self.nexuses.push((nexus.clone(), VecDeque::from([sense]))),
        }
    }

    /// I_T nexus loss: forgets `nexus` and its conditions.
    pub fn remove(&mut self, nexus: &Nexus) {
        if let Some(at) = self.nexuses.iter().position(|(n, _)| n == nexus) {
            self.nexuses.swap_remove(at);
        }
    }
}

/// Queues `sense` unless it is already pending; a full queue drops its oldest condition.
fn queue_once(queue: &mut VecDeque<Sense>, sense: Sense) {
    if queue.contains(&sense) {
        return;
    }
    if queue.len() == MAX_QUEUED {
        queue.pop_front();
    }
    queue.push_back(sense);
}

#[cfg(test)]
mod tests {
    use super::super::sense;
    use super::*;

    fn nexus(isid: u8) -> Nexus {
        Nexus::iscsi("iqn.2026-11.test:ua", [0, 0, 0, 0, 0, isid])
    }

    const CAPACITY: Sense = Sense::new(sense::UNIT_ATTENTION, sense::CAPACITY_DATA_HAS_CHANGED);

    #[test]
    fn a_condition_reaches_every_known_nexus_once() {
        let mut ua = UnitAttentions::default();
        assert_eq!(ua.take(&nexus(1)), None);
        ua.register(&nexus(2));
        ua.establish_all(CAPACITY);
        ua.establish_all(CAPACITY);
        // A nexus that appears afterwards has nothing pending.
        assert_eq!(ua.take(&nexus(3)), None);
        assert_eq!(ua.take(&nexus(1)), Some(CAPACITY));
        assert_eq!(ua.take(&nexus(1)), None);
        assert_eq!(ua.take(&nexus(2)), Some(CAPACITY));
        assert_eq!(ua.take(&nexus(2)), None);
    }

    #[test]
    fn a_lost_nexus_takes_its_conditions_along_and_queues_are_bounded() {
        let mut ua = UnitAttentions::default();
        ua.register(&nexus(1));
        for ascq in 0..MAX_QUEUED as u8 + 3 {
            ua.establish_all(Sense::new(sense::UNIT_ATTENTION, (0x2A, ascq)));
        }
        assert_eq!(ua.nexuses[0].1.len(), MAX_QUEUED);
        // The oldest were dropped.
        assert_eq!(ua.take(&nexus(1)).map(|s| s.ascq), Some(3));
        ua.remove(&nexus(1));
        assert!(ua.nexuses.is_empty());
        // Known again from its next command, with nothing pending.
        assert_eq!(ua.take(&nexus(1)), None);
    }

    /// A RAM backend whose reported size the test sets, as an RBD image resized from outside;
    /// or, with `device` non-zero, a block device of that size, which the backend reports
    /// once measured again.
    struct Resizable {
        ram: crate::backend::RamBackend,
        size: std::sync::atomic::AtomicU64,
        device: std::sync::atomic::AtomicU64,
    }

    impl crate::backend::Backend for Resizable {
        fn size(&self) -> u64 {
            self.size.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), crate::backend::BackendError> {
            self.ram.read_at(buf, offset)
        }
        fn write_at(&self, data: &[u8], offset: u64) -> Result<(), crate::backend::BackendError> {
            self.ram.write_at(data, offset)
        }
        fn flush(&self) -> Result<(), crate::backend::BackendError> {
            Ok(())
        }
        fn discard(&self, offset: u64, len: u64) -> Result<(), crate::backend::BackendError> {
            self.ram.discard(offset, len)
        }
        fn supports_discard(&self) -> bool {
            true
        }
        fn measure_device(&self) -> Result<Option<u64>, crate::backend::BackendError> {
            use std::sync::atomic::Ordering::Relaxed;
            let device = self.device.load(Relaxed);
            let grew = device > self.size.load(Relaxed);
            if grew {
                self.size.store(device, Relaxed);
            }
            Ok(grew.then_some(device))
        }
        fn kind(&self) -> &'static str {
            "ram"
        }
    }

    fn execute(lu: &super::super::LogicalUnit, n: &Nexus, cdb: &[u8]) -> super::super::ScsiOutcome {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        lu.execute(&super::super::ScsiRequest {
            nexus: n,
            lun: 0,
            cdb: &c,
            data_out: &[],
            expected_transfer_length: 0,
            task_attr: super::super::TaskAttr::Simple,
        })
    }

    fn last_lba(lu: &super::super::LogicalUnit, n: &Nexus) -> u64 {
        let o = execute(lu, n, &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32]);
        super::super::testutil::assert_good(&o);
        u64::from_be_bytes(o.data_in.to_vec()[..8].try_into().unwrap())
    }

    #[test]
    fn a_resized_backend_raises_capacity_data_has_changed_once_per_nexus() {
        use super::super::testutil::{assert_check, assert_good, params};
        let be = std::sync::Arc::new(Resizable {
            ram: crate::backend::RamBackend::new(1 << 20),
            size: std::sync::atomic::AtomicU64::new(1 << 19),
            device: std::sync::atomic::AtomicU64::new(0),
        });
        let lu = super::super::LogicalUnit::new(params(0, 512), be.clone());
        let (one, two, late) = (nexus(1), nexus(2), nexus(3));
        assert_eq!(last_lba(&lu, &one), 1023);
        // INQUIRY registers a nexus without consuming anything.
        assert_good(&execute(&lu, &two, &[0x12, 0, 0, 0, 36]));

        be.size.store(1 << 20, std::sync::atomic::Ordering::Relaxed);
        // INQUIRY neither reports nor clears the condition.
        assert_good(&execute(&lu, &one, &[0x12, 0, 0, 0, 36]));
        let tur = [0u8; 6];
        assert_check(
            &execute(&lu, &one, &tur),
            sense::UNIT_ATTENTION,
            sense::CAPACITY_DATA_HAS_CHANGED,
        );
        assert_good(&execute(&lu, &one, &tur));
        assert_eq!(last_lba(&lu, &one), 2047);
        // The other nexus gets it through REQUEST SENSE, as parameter data with GOOD status.
        let o = execute(&lu, &two, &[0x03, 0, 0, 0, 18]);
        assert_good(&o);
        let data = o.data_in.to_vec();
        assert_eq!((data[2] & 0x0F, data[12], data[13]), (0x6, 0x2A, 0x09));
        assert_good(&execute(&lu, &two, &tur));
        // A nexus that first came after the change has nothing pending.
        assert_eq!(last_lba(&lu, &late), 2047);
    }

    /// A block device grown from outside (an LV extended) is measured again by READ
    /// CAPACITY, as LIO's iblock does, and by nothing else: the READ CAPACITY reports CAPACITY
    /// DATA HAS CHANGED, the next one the new size.
    #[test]
    fn read_capacity_measures_a_grown_device() {
        use super::super::testutil::{assert_check, assert_good, params};
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        let be = std::sync::Arc::new(Resizable {
            ram: crate::backend::RamBackend::new(1 << 20),
            size: AtomicU64::new(1 << 19),
            device: AtomicU64::new(1 << 19),
        });
        let lu = super::super::LogicalUnit::new(params(0, 512), be.clone());
        let one = nexus(1);
        assert_eq!(last_lba(&lu, &one), 1023);
        be.device.store(1 << 20, Relaxed);
        assert_good(&execute(&lu, &one, &[0u8; 6]));
        assert_eq!(
            be.size.load(Relaxed),
            1 << 19,
            "only READ CAPACITY measures"
        );
        let read_capacity_10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_check(
            &execute(&lu, &one, &read_capacity_10),
            sense::UNIT_ATTENTION,
            sense::CAPACITY_DATA_HAS_CHANGED,
        );
        assert_eq!(last_lba(&lu, &one), 2047);
    }
}
