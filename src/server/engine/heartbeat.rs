//! Proof that the engine threads still turn. Every command, socket and completion of the
//! process runs on them, so one caught in a call that never returns (a backend stuck in the
//! kernel, a bug that loops) silently stops every connection it carries. A [`Heartbeat`] is a
//! message to each engine thread that it answers from its loop, between two turns; a thread
//! that has not answered by the next one is stuck. The service manager's watchdog is fed only
//! while none is (`service_manager::Watchdog`), so systemd restarts a target that stopped
//! serving.

use std::sync::atomic::{AtomicBool, Ordering};

/// One round of questions to the engine threads: which have answered.
#[derive(Debug)]
pub struct Heartbeat {
    answered: Vec<AtomicBool>,
}

impl Heartbeat {
    /// A round of questions to `threads` engine threads, none answered yet.
    pub fn new(threads: usize) -> Heartbeat {
        Heartbeat {
            answered: (0..threads).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Engine thread `index` has come round to the question.
    pub fn answer(&self, index: usize) {
        if let Some(answered) = self.answered.get(index) {
            answered.store(true, Ordering::Release);
        }
    }

    /// The engine threads (by index, as in their names `io-engine-N`) that have not answered.
    pub fn silent(&self) -> Vec<usize> {
        self.answered
            .iter()
            .enumerate()
            .filter(|(_, answered)| !answered.load(Ordering::Acquire))
            .map(|(index, _)| index)
            .collect()
    }
}
