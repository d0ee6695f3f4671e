//! The per-LU I/O gate: COMPARE AND WRITE, ORWRITE and WRITE ATOMIC run alone on their LU,
//! without any thread ever blocking on a lock.
//!
//! Ordinary ("shared") I/O is counted while in flight. An exclusive operation is admitted once
//! no shared I/O is in flight; from the moment one waits, newer work of either kind parks in
//! arrival order, so exclusive operations are not starved by a stream of reads and writes. A
//! parked item is handed back to the caller (to resubmit) by the [`IoGate::leave`] that admits
//! it.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Whether an operation may run beside others (READ, WRITE...) or must run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Runs concurrently with other shared operations.
    Shared,
    /// Runs with nothing else in flight on the LU.
    Exclusive,
}

struct GateState<T> {
    shared_in_flight: usize,
    exclusive_running: bool,
    /// Operations waiting for admission, oldest first.
    parked: VecDeque<(Access, T)>,
}

/// An I/O gate for one logical unit; `T` is the parked work item.
pub(crate) struct IoGate<T> {
    state: Mutex<GateState<T>>,
}

impl<T> IoGate<T> {
    pub(crate) fn new() -> Self {
        IoGate {
            state: Mutex::new(GateState {
                shared_in_flight: 0,
                exclusive_running: false,
                parked: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState<T>> {
        // The state is plain counters and a queue, consistent at every unlock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to run `item`: `Some(item)` means admitted (run it now, then call
    /// [`IoGate::leave`]); `None` means parked, to be returned later by a `leave`.
    pub(crate) fn enter(&self, access: Access, item: T) -> Option<T> {
        let mut s = self.lock();
        let admitted = s.parked.is_empty()
            && !s.exclusive_running
            && (access == Access::Shared || s.shared_in_flight == 0);
        if !admitted {
            s.parked.push_back((access, item));
            return None;
        }
        match access {
            Access::Shared => s.shared_in_flight += 1,
            Access::Exclusive => s.exclusive_running = true,
        }
        Some(item)
    }

    /// Marks one admitted operation of kind `access` finished; returns the parked operations
    /// that are admitted now (to be run by the caller), oldest first.
    pub(crate) fn leave(&self, access: Access) -> Vec<(Access, T)> {
        let mut s = self.lock();
        match access {
            Access::Shared => s.shared_in_flight = s.shared_in_flight.saturating_sub(1),
            Access::Exclusive => s.exclusive_running = false,
        }
        let mut admitted = Vec::new();
        while !s.exclusive_running {
            match s.parked.front() {
                Some((Access::Shared, _)) => {
                    s.shared_in_flight += 1;
                }
                Some((Access::Exclusive, _)) if s.shared_in_flight == 0 => {
                    s.exclusive_running = true;
                }
                _ => break,
            }
            admitted.extend(s.parked.pop_front());
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_operations_run_together() {
        let gate = IoGate::new();
        assert_eq!(gate.enter(Access::Shared, 1), Some(1));
        assert_eq!(gate.enter(Access::Shared, 2), Some(2));
        assert!(gate.leave(Access::Shared).is_empty());
        assert!(gate.leave(Access::Shared).is_empty());
    }

    #[test]
    fn exclusive_waits_for_shared_and_newer_work_waits_for_it() {
        let gate = IoGate::new();
        assert_eq!(gate.enter(Access::Shared, 1), Some(1));
        assert_eq!(gate.enter(Access::Exclusive, 2), None);
        // A read arriving after the waiting exclusive operation parks behind it.
        assert_eq!(gate.enter(Access::Shared, 3), None);
        assert_eq!(gate.enter(Access::Exclusive, 4), None);
        assert_eq!(gate.leave(Access::Shared), vec![(Access::Exclusive, 2)]);
        assert_eq!(gate.leave(Access::Exclusive), vec![(Access::Shared, 3)]);
        assert_eq!(gate.leave(Access::Shared), vec![(Access::Exclusive, 4)]);
        assert!(gate.leave(Access::Exclusive).is_empty());
        assert_eq!(gate.enter(Access::Exclusive, 5), Some(5));
        assert_eq!(gate.enter(Access::Shared, 6), None);
        assert_eq!(gate.leave(Access::Exclusive), vec![(Access::Shared, 6)]);
    }

    #[test]
    fn consecutive_shared_items_are_admitted_together() {
        let gate = IoGate::new();
        assert_eq!(gate.enter(Access::Exclusive, 1), Some(1));
        for i in 2..5 {
            assert_eq!(gate.enter(Access::Shared, i), None);
        }
        assert_eq!(gate.enter(Access::Exclusive, 9), None);
        let admitted = gate.leave(Access::Exclusive);
        assert_eq!(
            admitted.iter().map(|a| a.1).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(gate.leave(Access::Shared).is_empty());
        assert!(gate.leave(Access::Shared).is_empty());
        assert_eq!(gate.leave(Access::Shared), vec![(Access::Exclusive, 9)]);
    }
}
