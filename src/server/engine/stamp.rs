//! A job's bookkeeping in one word: when it arrived and how its planning went. One word keeps a
//! [`super::Job`] within the 128 bytes the compiler moves inline; past them every move of a job
//! (into its LU's gate, the ring, an inbox) becomes a `memcpy` call.

use std::time::{Duration, Instant};

use crate::scsi::Transfer;

/// Bits of a stamp that hold the arrival time; the two above them hold the planning.
const TIME_BITS: u32 = 62;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const NOT_PLANNED: u64 = 0;
const PLANNED: u64 = 1;
const PLANNED_READ: u64 = 2;
const PLANNED_WRITE: u64 = 3;

/// The engine's clock: nanoseconds since it started (62 bits of them last 146 years), which a
/// stamp holds in fewer bytes than an [`Instant`].
#[derive(Debug, Clone, Copy)]
pub(super) struct EngineClock {
    started: Instant,
}

impl EngineClock {
    pub(super) fn start() -> EngineClock {
        EngineClock {
            started: Instant::now(),
        }
    }

    /// `at` on this clock.
    pub(super) fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.started).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX) & TIME_MASK
    }
}

/// When a job arrived (on the [`EngineClock`]), and whether it has been planned, as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JobStamp(u64);

impl JobStamp {
    /// A job that arrived at `nanos` and is not planned yet.
    pub(super) fn arrived(nanos: u64) -> JobStamp {
        JobStamp((nanos & TIME_MASK) | NOT_PLANNED << TIME_BITS)
    }

    /// The same job, planned as `transfer` (a read, a write, or neither).
    pub(super) fn planned(self, transfer: Option<Transfer>) -> JobStamp {
        let state = match transfer {
            None => PLANNED,
            Some(Transfer::Read) => PLANNED_READ,
            Some(Transfer::Write) => PLANNED_WRITE,
        };
        JobStamp((self.0 & TIME_MASK) | state << TIME_BITS)
    }

    /// Whether the job has been planned (and counted by its LU).
    pub(super) fn is_planned(self) -> bool {
        self.0 >> TIME_BITS != NOT_PLANNED
    }

    /// The read or write the job was planned as, if either.
    pub(super) fn transfer(self) -> Option<Transfer> {
        match self.0 >> TIME_BITS {
            PLANNED_READ => Some(Transfer::Read),
            PLANNED_WRITE => Some(Transfer::Write),
            _ => None,
        }
    }

    /// How long the job has taken by `now_nanos` (on the same clock).
    pub(super) fn taken_by(self, now_nanos: u64) -> Duration {
        Duration::from_nanos(now_nanos.saturating_sub(self.0 & TIME_MASK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_keeps_the_arrival_through_planning() {
        let stamp = JobStamp::arrived(1_500);
        assert!(!stamp.is_planned());
        assert_eq!(stamp.transfer(), None);
        for transfer in [None, Some(Transfer::Read), Some(Transfer::Write)] {
            let planned = stamp.planned(transfer);
            assert!(planned.is_planned());
            assert_eq!(planned.transfer(), transfer);
            assert_eq!(planned.taken_by(4_000), Duration::from_nanos(2_500));
            // Planned again (on the blocking pool): the same.
            assert_eq!(planned.planned(transfer), planned);
        }
        assert_eq!(
            stamp.taken_by(1_000),
            Duration::ZERO,
            "a clock read before arrival"
        );
    }

    #[test]
    fn the_clock_counts_from_its_start() {
        let clock = EngineClock::start();
        let later = clock.started + Duration::from_micros(7);
        assert_eq!(clock.nanos(later), 7_000);
        assert_eq!(clock.nanos(clock.started), 0);
    }
}
