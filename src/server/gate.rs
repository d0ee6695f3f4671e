//! The per-LU I/O gate: COMPARE AND WRITE, ORWRITE and WRITE ATOMIC run alone on their LU,
//! without any thread ever blocking on a lock.
//!
//! Ordinary ("shared") I/O is counted while in flight. An exclusive operation is admitted once
//! no shared I/O is in flight; from the moment one waits, newer work of either kind parks in
//! arrival order, so exclusive operations are not starved by a stream of reads and writes. A
//! parked item is handed back to the caller (to resubmit) by the [`IoGate::leave`] that admits
//! it.
//!
//! A thread outside the engine may also wait for the shared I/O in flight to finish
//! ([`IoGate::drain`]: another gateway preempted and aborted an initiator), new work parking
//! meanwhile.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

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
    /// Threads in [`IoGate::drain`]: nothing new is admitted while there are any.
    draining: usize,
    /// Operations waiting for admission, oldest first.
    parked: VecDeque<(Access, T)>,
}

/// An I/O gate for one logical unit; `T` is the parked work item.
pub(crate) struct IoGate<T> {
    state: Mutex<GateState<T>>,
    /// Signalled when the last shared operation leaves while a thread drains.
    drained: Condvar,
}

impl<T> IoGate<T> {
    pub(crate) fn new() -> Self {
        IoGate {
            state: Mutex::new(GateState {
                shared_in_flight: 0,
                exclusive_running: false,
                draining: 0,
                parked: VecDeque::new(),
            }),
            drained: Condvar::new(),
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
            && s.draining == 0
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
        if s.draining > 0 {
            if s.shared_in_flight == 0 {
                self.drained.notify_all();
            }
            return Vec::new();
        }
        Self::admit_parked(&mut s)
    }

    /// Blocks the calling thread until no shared operation is in flight; newer work parks
    /// meanwhile, so a stream of reads and writes cannot keep it waiting. An exclusive
    /// operation running is not waited for (the one that runs a PREEMPT AND ABORT may itself
    /// be waiting for this thread). Returns the parked operations admitted once it is through,
    /// for the caller to run as after [`IoGate::leave`]. Never call it on a thread that
    /// completes this gate's operations: it would wait for itself.
    pub(crate) fn drain(&self) -> Vec<(Access, T)> {
        let mut s = self.lock();
        s.draining += 1;
        while s.shared_in_flight > 0 {
            s = self.drained.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.draining -= 1;
        if s.draining > 0 {
            return Vec::new();
        }
        Self::admit_parked(&mut s)
    }

    /// Admits parked operations from the front of the queue while they may run.
    fn admit_parked(s: &mut GateState<T>) -> Vec<(Access, T)> {
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

    /// A drain waits for the shared operations in flight, parks newer work, and hands it back.
    #[test]
    fn a_drain_waits_for_shared_work_in_flight_and_parks_newer_work() {
        let gate = std::sync::Arc::new(IoGate::new());
        assert_eq!(gate.enter(Access::Shared, 1), Some(1));
        assert_eq!(gate.enter(Access::Shared, 2), Some(2));
        let drainer = {
            let gate = std::sync::Arc::clone(&gate);
            std::thread::spawn(move || gate.drain())
        };
        while gate.lock().draining == 0 {
            std::thread::yield_now();
        }
        assert_eq!(
            gate.enter(Access::Shared, 3),
            None,
            "parked behind the drain"
        );
        assert!(gate.leave(Access::Shared).is_empty());
        assert!(!drainer.is_finished(), "one still in flight");
        assert!(gate.leave(Access::Shared).is_empty());
        assert_eq!(drainer.join().unwrap(), vec![(Access::Shared, 3)]);
        assert_eq!(gate.lock().shared_in_flight, 1);
        // Nothing in flight: through at once; an exclusive operation running is not waited for.
        assert!(gate.leave(Access::Shared).is_empty());
        assert!(gate.drain().is_empty());
        assert_eq!(gate.enter(Access::Exclusive, 4), Some(4));
        assert!(gate.drain().is_empty());
        assert!(gate.leave(Access::Exclusive).is_empty());
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
