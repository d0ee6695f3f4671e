//! Connections that live on an engine thread ("residents"): the thread polls their sockets in
//! its ring, runs their commands without an inbox hop, hands them their completions directly,
//! fires their timers, and writes their output once per turn.
//!
//! A resident is called only from its own thread, one event at a time; it never blocks (its
//! socket is non-blocking), so a slow backend or a dead initiator cannot hold up the other
//! residents of the thread.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use super::thread::{EngineThread, Token};
use super::{EngineSession, EngineShared, Message};
use crate::iscsi::{ScsiTask, TaskId};
use crate::scsi::ScsiOutcome;

/// What a resident's socket poll waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Bytes to read (or the end of the stream).
    Read,
    /// Room in the send buffer.
    Write,
}

impl Interest {
    fn events(self) -> u32 {
        match self {
            Interest::Read => libc::POLLIN as u32,
            Interest::Write => libc::POLLOUT as u32,
        }
    }
}

/// A connection running on an engine thread. Every call comes from that thread.
pub(crate) trait Resident: Send {
    /// It has arrived on its thread.
    fn start(&mut self, io: &mut ThreadIo<'_>);
    /// A poll it armed with [`ThreadIo::poll`] completed: `Ok(revents)` or the poll's error.
    fn ready(&mut self, interest: Interest, result: io::Result<usize>, io: &mut ThreadIo<'_>);
    /// One of its session's commands finished.
    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, io: &mut ThreadIo<'_>);
    /// Someone asked it, through [`Residence::poke`], to look at its state.
    fn poked(&mut self, io: &mut ThreadIo<'_>);
    /// [`Resident::deadline`] has passed.
    fn timeout(&mut self, now: Instant, io: &mut ThreadIo<'_>);
    /// The engine is stopping: end now, dropping unsent output.
    fn abort(&mut self, io: &mut ThreadIo<'_>);
    /// The end of a turn in which it had events: write its output, arm its polls.
    fn settle(&mut self, io: &mut ThreadIo<'_>);
    /// When it next wants [`Resident::timeout`].
    fn deadline(&self) -> Option<Instant>;
    /// Whether it has ended: no poll armed, no command outstanding. It is dropped then.
    fn is_finished(&self) -> bool;
    /// The thread busy-polls (`limits.busy_poll_us`) instead of sleeping: look for work
    /// without a system call (an iSER connection polls its CQs). `true` when it found some.
    fn spin(&mut self, _io: &mut ThreadIo<'_>) -> bool {
        false
    }
}

/// A place reserved for a connection on one engine thread, before it moves in. Cloned into
/// whatever must reach the connection later (its shutdown control).
#[derive(Clone)]
pub(crate) struct Residence {
    shared: Arc<EngineShared>,
    thread: usize,
    id: u64,
}

impl Residence {
    pub(super) fn new(shared: Arc<EngineShared>, thread: usize, id: u64) -> Residence {
        Residence { shared, thread, id }
    }

    pub(super) fn thread(&self) -> usize {
        self.thread
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Moves the connection in; from now on it runs on the engine thread.
    pub(crate) fn attach(&self, resident: Box<dyn Resident>) {
        self.shared.inboxes[self.thread].send(Message::Attach(self.id, resident));
    }

    /// Wakes the resident's thread to call [`Resident::poked`] (ignored before it has moved in
    /// or after it has ended: a resident checks its state when it starts).
    pub(crate) fn poke(&self) {
        self.shared.inboxes[self.thread].send(Message::Poke(self.id));
    }
}

/// What a resident may do on its thread while handling an event.
pub(crate) struct ThreadIo<'a> {
    thread: &'a mut EngineThread,
    id: u64,
}

impl ThreadIo<'_> {
    /// Runs a command of the resident's session on this thread: ordered by its LU's gate at
    /// once, RAM I/O inline (its completion is handed over after the current event), file
    /// I/O into the ring.
    pub(crate) fn execute(&mut self, session: &EngineSession, task: ScsiTask) {
        let job = session.job(task, self.thread.now_nanos);
        self.thread.order(job);
    }

    /// When the thread last woke up (one clock read per wake-up, shared by its residents).
    pub(crate) fn now(&self) -> Instant {
        self.thread.now
    }

    /// Arms a one-shot poll of `fd`; [`Resident::ready`] follows. `fd` stays open until then.
    pub(crate) fn poll(&mut self, fd: Arc<dyn AsRawFd + Send + Sync>, interest: Interest) {
        if let Some(ring) = self.thread.ring.as_mut() {
            ring.push_poll(Token::Poll(self.id, interest), fd, interest.events());
        }
    }
}

impl EngineThread {
    /// A connection moves in.
    pub(super) fn attach(&mut self, id: u64, resident: Box<dyn Resident>) {
        self.residents.insert(id, Some(resident));
        self.with_resident(id, |resident, io| resident.start(io));
    }

    /// Calls `f` on resident `id` (if it still lives here) and marks it touched this turn.
    pub(super) fn with_resident(
        &mut self,
        id: u64,
        f: impl FnOnce(&mut dyn Resident, &mut ThreadIo<'_>),
    ) {
        let Some(mut resident) = self.residents.get_mut(&id).and_then(Option::take) else {
            return;
        };
        f(&mut *resident, &mut ThreadIo { thread: self, id });
        if let Some(place) = self.residents.get_mut(&id) {
            *place = Some(resident);
        }
        self.touched.push(id);
    }

    pub(super) fn poll_ready(&mut self, id: u64, interest: Interest, result: io::Result<usize>) {
        self.with_resident(id, |resident, io| resident.ready(interest, result, io));
    }

    /// Hands residents the completions of this turn (which may start more commands that finish
    /// inline), then lets every touched resident write and arm its polls, and drops those that
    /// have ended.
    pub(super) fn settle_residents(&mut self) {
        loop {
            while !self.local.is_empty() {
                let mut local = std::mem::take(&mut self.local);
                for (id, task, outcome) in local.drain(..) {
                    self.with_resident(id, |resident, io| resident.completed(task, outcome, io));
                }
                // Keep the allocation for the next turn (unless new completions took its place).
                if self.local.is_empty() {
                    self.local = local;
                }
            }
            if self.touched.is_empty() {
                return;
            }
            let mut touched = std::mem::take(&mut self.touched);
            touched.sort_unstable();
            touched.dedup();
            for &id in &touched {
                let Some(mut resident) = self.residents.get_mut(&id).and_then(Option::take) else {
                    continue;
                };
                resident.settle(&mut ThreadIo { thread: self, id });
                if resident.is_finished() {
                    self.residents.remove(&id);
                } else if let Some(place) = self.residents.get_mut(&id) {
                    *place = Some(resident);
                }
            }
            touched.clear();
            if self.touched.is_empty() {
                self.touched = touched;
            }
            // Settling may have started commands that finished inline: another round.
            if self.local.is_empty() {
                return;
            }
        }
    }

    /// The earliest deadline of any resident.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.residents
            .values()
            .filter_map(|r| r.as_ref().and_then(|r| r.deadline()))
            .min()
    }

    /// Calls [`Resident::timeout`] on every resident whose deadline has passed.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .residents
            .iter()
            .filter(|(_, r)| {
                r.as_ref()
                    .and_then(|r| r.deadline())
                    .is_some_and(|d| d <= now)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.with_resident(id, |resident, io| resident.timeout(now, io));
        }
    }

    /// Lets every resident look for work once ([`Resident::spin`]); `true` when one found some
    /// (it is settled with this turn's others).
    pub(super) fn spin_residents(&mut self) -> bool {
        let mut ids = std::mem::take(&mut self.spin_ids);
        ids.clear();
        ids.extend(self.residents.keys().copied());
        let mut found = false;
        for &id in &ids {
            let Some(mut resident) = self.residents.get_mut(&id).and_then(Option::take) else {
                continue;
            };
            if resident.spin(&mut ThreadIo { thread: self, id }) {
                found = true;
                self.touched.push(id);
            }
            if let Some(place) = self.residents.get_mut(&id) {
                *place = Some(resident);
            }
        }
        self.spin_ids = ids;
        found
    }

    /// Ends every resident (engine stop, after the server's shutdown grace).
    pub(super) fn stop_residents(&mut self) {
        let ids: Vec<u64> = self.residents.keys().copied().collect();
        for id in ids {
            self.with_resident(id, |resident, io| resident.abort(io));
        }
    }
}
