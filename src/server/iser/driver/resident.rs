//! A logged-in iSER connection living on the engine thread of its session.
//!
//! The thread's ring polls one descriptor for it: an epoll set holding the completion channel
//! of its CQs and its doorbell (rung by the rdma_cm event thread and by shutdown). When that
//! poll fires the connection takes everything pending — channel events, completions in
//! batches, mailbox events — runs what the core asks for (its commands go to the engine
//! thread at once, RAM I/O completing inline) and arms the poll again when the turn ends.
//! Nothing here blocks: releasing the session waits (without blocking) until its commands are
//! reported, and teardown runs on a short-lived thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::Driver;
use crate::iscsi::TaskId;
use crate::scsi::ScsiOutcome;
use crate::server::engine::{Interest, Residence, Resident, ThreadIo};

/// The epoll set the engine thread's ring polls for a connection.
struct Waiter(Epoll);

impl AsRawFd for Waiter {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// An epoll set (level-triggered) of the connection's completion channel and doorbell.
fn waiter(driver: &Driver) -> nix::Result<Waiter> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        driver.res.channel.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, 0),
    )?;
    epoll.add(
        driver.mailbox.bell.fd.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, 1),
    )?;
    Ok(Waiter(epoll))
}

/// Moves a connection whose session is bound at `residence` onto its engine thread; without an
/// epoll set it stays on the calling thread to its end.
pub(super) fn move_in(mut driver: Driver, residence: &Residence) {
    match waiter(&driver) {
        Ok(waiter) => residence.attach(Box::new(IserResident {
            driver: Some(driver),
            waiter: Arc::new(waiter),
            armed: false,
            woken: false,
        })),
        Err(e) => {
            driver.fail(format!("creating an epoll set: {e}"));
            driver.finish();
        }
    }
}

/// The connection on its engine thread; `driver` goes to the teardown thread at the end.
struct IserResident {
    driver: Option<Driver>,
    waiter: Arc<Waiter>,
    /// A poll of `waiter` is in the ring.
    armed: bool,
    /// The doorbell was rung to end that poll, so the connection can leave.
    woken: bool,
}

impl IserResident {
    /// Hands the commands the core asked for to this engine thread, and the outcomes of those
    /// refused at once (no session) back to the core, until none is left.
    fn run_commands(&mut self, io: &mut ThreadIo<'_>) {
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        while !driver.to_execute.is_empty() {
            let mut tasks = std::mem::take(&mut driver.to_execute);
            let mut refused = false;
            for task in tasks.drain(..) {
                if let Some((id, outcome)) = driver.session.execute_here(task, io) {
                    driver.conn.handle_scsi_complete(id, outcome);
                    refused = true;
                }
            }
            // Keep the allocation (unless the core's answers queued more commands).
            if driver.to_execute.is_empty() {
                driver.to_execute = tasks;
            }
            if refused {
                driver.pump();
                driver.post_pending();
            }
        }
    }

    /// Posts what this turn produced — with one `ibv_post_send` the responses of every command
    /// that completed in it — then re-arms the receive CQ if it fired and the send CQ if a
    /// send completion must wake the connection, looking at the CQs once more after arming.
    fn post_and_arm(&mut self, io: &mut ThreadIo<'_>) {
        loop {
            let Some(driver) = self.driver.as_mut().filter(|d| !d.done) else {
                return;
            };
            driver.post_pending();
            match driver.arm_cqs() {
                Ok(false) => return,
                Ok(true) => {
                    driver.now = Some(io.now());
                    let found = driver.poll_cqs();
                    driver.now = None;
                    if !found {
                        return;
                    }
                    self.run_commands(io);
                }
                Err(e) => return driver.fail(format!("arming the CQs: {e}")),
            }
        }
    }

    /// Calls `f` on the driver (if it has not left) and runs the commands it produced.
    fn with(&mut self, io: &mut ThreadIo<'_>, f: impl FnOnce(&mut Driver)) {
        if let Some(driver) = self.driver.as_mut() {
            driver.now = Some(io.now());
            f(driver);
            driver.now = None;
            self.run_commands(io);
        }
    }
}

impl Resident for IserResident {
    fn start(&mut self, io: &mut ThreadIo<'_>) {
        self.with(io, Driver::turn);
    }

    fn ready(&mut self, _interest: Interest, result: io::Result<usize>, io: &mut ThreadIo<'_>) {
        self.armed = false;
        self.with(io, |driver| match result {
            Ok(_) => driver.turn(),
            Err(e) => driver.fail(format!("polling the completion channel: {e}")),
        });
    }

    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, io: &mut ThreadIo<'_>) {
        // What the core answers is posted in `settle`, with the answers to every other command
        // that completed in this turn.
        self.with(io, |driver| {
            if driver.ending.is_none() {
                driver.conn.handle_scsi_complete(id, outcome);
                driver.pump();
            }
            driver.release_if_idle();
        });
    }

    fn poked(&mut self, io: &mut ThreadIo<'_>) {
        self.with(io, Driver::turn);
    }

    fn timeout(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        self.with(io, |driver| driver.check_timers(now));
    }

    fn abort(&mut self, io: &mut ThreadIo<'_>) {
        self.with(io, |driver| driver.fail("the engine is stopping".into()));
    }

    fn settle(&mut self, io: &mut ThreadIo<'_>) {
        self.post_and_arm(io);
        let Some(driver) = self.driver.as_mut() else {
            return;
        };
        if !driver.done {
            if !self.armed {
                self.armed = true;
                io.poll(self.waiter.clone(), Interest::Read);
            }
            return;
        }
        if driver.session.outstanding() > 0 {
            // Its commands are reported here (`completed`), then it leaves.
            return;
        }
        // Nothing waits: no command is outstanding.
        driver.session.release(&driver.shared);
        if self.armed {
            // The poll holds a ring slot until it fires: ring the doorbell to end it.
            if !self.woken {
                self.woken = true;
                driver.mailbox.bell.ring();
            }
            return;
        }
        let Some(driver) = self.driver.take() else {
            return;
        };
        // Teardown blocks (the wait for DISCONNECTED, the QP drain): not on an engine thread.
        let slot = Arc::new(Mutex::new(Some(driver)));
        let theirs = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("iser-teardown".into())
            .spawn(move || {
                if let Some(driver) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    driver.finish();
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread to tear an iSER connection down: {e}");
            if let Some(driver) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                driver.finish();
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.driver
            .as_ref()
            .filter(|d| !d.done)
            .and_then(Driver::deadline)
    }

    fn is_finished(&self) -> bool {
        self.driver.is_none()
    }

    fn spin(&mut self, io: &mut ThreadIo<'_>) -> bool {
        let Some(driver) = self.driver.as_mut().filter(|d| !d.done) else {
            return false;
        };
        // The CQs stay armed: completions taken here still fire the channel once, which only
        // costs a wake-up that finds nothing.
        driver.now = Some(io.now());
        let found = driver.poll_cqs();
        driver.now = None;
        if found {
            self.run_commands(io);
        }
        found
    }
}

impl Drop for IserResident {
    fn drop(&mut self) {
        // Normally handed to a teardown thread in `settle`; one dropped on its engine thread
        // (the engine stopped) is torn down here: every command has been reported by then.
        if let Some(mut driver) = self.driver.take() {
            driver.fail("the engine stopped".into());
            driver.finish();
        }
    }
}
