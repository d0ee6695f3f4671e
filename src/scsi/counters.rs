//! What each logical unit has been asked to do since the target started: commands, and the
//! reads and writes among them with their bytes and the time they took. `iser-target status`
//! reports them (LIO keeps the like in configfs, `statistics/scsi_lu`; the times are those of
//! a Linux disk's /proc/diskstats, from which a monitor derives the mean latency).
//!
//! Commands of one LU arrive on every engine thread, so one shared set of atomics would bounce
//! its cache line between cores on each command. Each thread instead adds to a shard of its
//! own (threads are spread over [`SHARDS`] cache-line-aligned shards as they first count), and
//! a reader sums the shards. A reading is therefore not one instant's: each counter is exact
//! for the commands it has seen, and a command counted in one field may not yet show in
//! another.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::{BlockRequest, Plan};

/// Shards per LU: enough that the engine threads of a usual host rarely share one.
const SHARDS: usize = 16;

/// One thread's share, alone on its cache line (128 bytes: adjacent-line prefetch pairs 64).
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    commands: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    read_nanos: AtomicU64,
    write_nanos: AtomicU64,
}

/// The way a counted read or write moves data: what its time is added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Read,
    Write,
}

impl Transfer {
    /// What `request` counts as, with its bytes: READs are reads; WRITE, WRITE AND VERIFY,
    /// ORWRITE, WRITE ATOMIC and COMPARE AND WRITE (and their NVMe kin) are writes.
    fn of_with_bytes(request: &BlockRequest<'_>) -> Option<(Transfer, u64)> {
        match request {
            BlockRequest::Read { len, .. } => Some((Transfer::Read, *len as u64)),
            BlockRequest::Write { data, .. }
            | BlockRequest::OrWrite { data, .. }
            | BlockRequest::AtomicWrite { data, .. }
            | BlockRequest::CompareAndWrite { write: data, .. } => {
                Some((Transfer::Write, data.len() as u64))
            }
            _ => None,
        }
    }

    /// What `request` counts as, if it is a read or a write.
    pub fn of(request: &BlockRequest<'_>) -> Option<Transfer> {
        Transfer::of_with_bytes(request).map(|(transfer, _)| transfer)
    }
}

/// The shard each thread adds to, handed out round robin as threads first count.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A LU's counters.
pub(super) struct IoCounters {
    shards: [Shard; SHARDS],
}

impl Default for IoCounters {
    fn default() -> Self {
        IoCounters {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }
}

/// A reading of a LU's counters (see [`super::LogicalUnit::io_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoTotals {
    /// Every command addressed to the LU, whatever its outcome.
    pub commands: u64,
    /// READ commands (and NVMe Reads) that passed their checks and went to the backend.
    pub reads: u64,
    /// The bytes those READs asked for.
    pub read_bytes: u64,
    /// Commands that carry data to write: WRITE, WRITE AND VERIFY, ORWRITE, WRITE ATOMIC,
    /// COMPARE AND WRITE (and NVMe Writes), once past their checks.
    pub writes: u64,
    /// The bytes those commands write.
    pub write_bytes: u64,
    /// The time those reads took, summed: each from its arrival at the I/O engine to its
    /// completion (gate, backend and all). Divided by `reads`: their mean latency.
    pub read_nanos: u64,
    /// The same for the writes.
    pub write_nanos: u64,
}

impl IoCounters {
    /// Counts one command and what its plan reads or writes.
    pub(super) fn count(&self, plan: &Plan<'_>) {
        let shard = &self.shards[shard_of_this_thread()];
        bump(&shard.commands, 1);
        let Plan::Io { request, .. } = plan else {
            return;
        };
        match Transfer::of_with_bytes(request) {
            Some((Transfer::Read, bytes)) => {
                bump(&shard.reads, 1);
                bump(&shard.read_bytes, bytes);
            }
            Some((Transfer::Write, bytes)) => {
                bump(&shard.writes, 1);
                bump(&shard.write_bytes, bytes);
            }
            None => {}
        }
    }

    /// Adds the time a counted read or write took, from arrival to completion.
    pub(super) fn count_time(&self, transfer: Transfer, took: Duration) {
        let shard = &self.shards[shard_of_this_thread()];
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        match transfer {
            Transfer::Read => bump(&shard.read_nanos, nanos),
            Transfer::Write => bump(&shard.write_nanos, nanos),
        }
    }

    /// The sums over every shard.
    pub(super) fn totals(&self) -> IoTotals {
        let sum = |field: fn(&Shard) -> &AtomicU64| {
            self.shards
                .iter()
                .map(|s| field(s).load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        IoTotals {
            commands: sum(|s| &s.commands),
            reads: sum(|s| &s.reads),
            read_bytes: sum(|s| &s.read_bytes),
            writes: sum(|s| &s.writes),
            write_bytes: sum(|s| &s.write_bytes),
            read_nanos: sum(|s| &s.read_nanos),
            write_nanos: sum(|s| &s.write_nanos),
        }
    }
}

/// Adds to a counter of the calling thread's shard. Threads that share a shard (more of them
/// than [`SHARDS`]) may add at once, hence a real atomic addition; it is uncontended otherwise.
fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}
