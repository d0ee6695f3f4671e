//! Outstanding-WR bookkeeping (pure Rust, generic so it is unit-testable
//! without a device). A QP pushes an entry *before* posting, the CQ poller
//! pops entries when it sees completions.
//!
//! RC queues complete in order per work queue, so each queue is a FIFO:
//! * receive queue: every WR completes; a completion pops the first entry
//!   with its wr_id (normally the front).
//! * send queue: unsignaled WRs produce no completion of their own; they are
//!   done once a later WR on the same send queue completes. A completion pops
//!   every entry up to and including the first one with its wr_id.

use std::collections::VecDeque;

/// One outstanding work request.
#[derive(Debug)]
pub(crate) struct Pending<T> {
    pub wr_id: u64,
    /// Internal drain marker (not a caller WR).
    pub marker: bool,
    /// What the WR keeps alive (an `Arc<MemoryRegion>`), none for markers.
    pub hold: Option<T>,
}

/// The two FIFOs of one QP.
#[derive(Debug)]
pub(crate) struct Tracker<T> {
    pub send: VecDeque<Pending<T>>,
    pub recv: VecDeque<Pending<T>>,
}

impl<T> Default for Tracker<T> {
    fn default() -> Self {
        Tracker {
            send: VecDeque::new(),
            recv: VecDeque::new(),
        }
    }
}

/// Which work queue a CQ serves for a QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queue {
    Send,
    Recv,
}

impl<T> Tracker<T> {
    /// Record a completion; appends the entries it retires to `retired` (to be
    /// dropped by the caller outside any lock; a vector the caller keeps, so
    /// nothing is allocated per completion) and returns whether the completion
    /// was one of ours (`false` for an internal drain marker or an unknown
    /// wr_id).
    pub fn complete(
        &mut self,
        queue: Queue,
        wr_id: u64,
        marker: bool,
        retired: &mut Vec<Pending<T>>,
    ) -> bool {
        let q = match queue {
            Queue::Send => &mut self.send,
            Queue::Recv => &mut self.recv,
        };
        let Some(pos) = q
            .iter()
            .position(|p| p.wr_id == wr_id && p.marker == marker)
        else {
            return false;
        };
        match queue {
            Queue::Send => retired.extend(q.drain(..=pos)),
            Queue::Recv => retired.extend(q.remove(pos)),
        }
        !marker
    }

    /// Number of outstanding (send, recv) entries, markers included.
    pub fn outstanding(&self) -> (usize, usize) {
        (self.send.len(), self.recv.len())
    }

    /// True when nothing is outstanding on either queue.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.recv.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries a completion retires, and whether it was one of ours.
    fn done(t: &mut Tracker<u32>, q: Queue, wr_id: u64, marker: bool) -> (Vec<Pending<u32>>, bool) {
        let mut retired = Vec::new();
        let ours = t.complete(q, wr_id, marker, &mut retired);
        (retired, ours)
    }

    fn p(wr_id: u64, hold: u32) -> Pending<u32> {
        Pending {
            wr_id,
            marker: false,
            hold: Some(hold),
        }
    }

    #[test]
    fn signaled_send_retires_earlier_unsignaled() {
        let mut t = Tracker::default();
        t.send.push_back(p(1, 10)); // unsignaled
        t.send.push_back(p(2, 20)); // unsignaled
        t.send.push_back(p(3, 30)); // signaled
        t.send.push_back(p(4, 40));
        let (r, ours) = done(&mut t, Queue::Send, 3, false);
        assert!(ours);
        assert_eq!(
            r.iter().map(|p| p.hold.unwrap()).collect::<Vec<_>>(),
            vec![10, 20, 30]
        );
        assert_eq!(t.outstanding(), (1, 0));
    }

    #[test]
    fn duplicate_wr_ids_retire_in_order() {
        let mut t = Tracker::default();
        t.recv.push_back(p(7, 1));
        t.recv.push_back(p(7, 2));
        assert_eq!(done(&mut t, Queue::Recv, 7, false).0[0].hold, Some(1));
        assert_eq!(done(&mut t, Queue::Recv, 7, false).0[0].hold, Some(2));
        assert!(t.is_empty());
    }

    #[test]
    fn unknown_and_marker() {
        let mut t: Tracker<u32> = Tracker::default();
        t.send.push_back(p(1, 1));
        let (r, ours) = done(&mut t, Queue::Send, 99, false);
        assert!(r.is_empty() && !ours);
        t.send.push_back(Pending {
            wr_id: u64::MAX,
            marker: true,
            hold: None,
        });
        // a caller WR with the marker's id is not confused with the marker
        let (r, ours) = done(&mut t, Queue::Send, u64::MAX, true);
        assert_eq!(r.len(), 2);
        assert!(!ours);
        assert!(t.is_empty());
    }

    #[test]
    fn recv_out_of_order_completion_only_removes_that_entry() {
        let mut t = Tracker::default();
        t.recv.push_back(p(1, 1));
        t.recv.push_back(p(2, 2));
        let (r, _) = done(&mut t, Queue::Recv, 2, false);
        assert_eq!(r.len(), 1);
        assert_eq!(t.outstanding(), (0, 1));
    }
}
