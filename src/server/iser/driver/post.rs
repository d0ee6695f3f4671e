//! Posting the adapter's fabric operations: Sends staged through the registered arena, RDMA
//! Writes straight from a READ's buffer (chained with the response Send behind them, only the
//! Send signalled), RDMA Reads straight into a WRITE's buffer; what cannot be posted yet waits
//! in order in the [`Backlog`]. Everything ready in one call of [`Driver::post_pending`] goes
//! out as one chained `ibv_post_send` (a system call per post with rxe): on an engine thread
//! that is every response of the commands that completed in the same turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mem_ffi::{Arena, Payload};
use rdma_ffi::{Access, MemoryRegion, SendOp, SendWr};

use super::{Driver, Ending};
use crate::iscsi::iser::{FabricOp, SendBytes};
use crate::iscsi::CloseReason;

/// Operations waiting to be posted, in order, with a bound on the Sends among them.
pub(super) struct Backlog {
    ops: VecDeque<FabricOp>,
    sends: usize,
    max_sends: usize,
}

impl Backlog {
    pub(super) fn new(max_sends: usize) -> Self {
        Backlog {
            ops: VecDeque::new(),
            sends: 0,
            max_sends,
        }
    }

    /// Queues `op`; fails when more Sends wait than the initiator could ever have asked for.
    pub(super) fn push_back(&mut self, op: FabricOp) -> Result<(), String> {
        if matches!(op, FabricOp::Send { .. }) {
            if self.sends >= self.max_sends {
                return Err(format!(
                    "{} PDUs are waiting to be sent: the initiator stopped taking them",
                    self.sends
                ));
            }
            self.sends += 1;
        }
        self.ops.push_back(op);
        Ok(())
    }

    pub(super) fn pop_front(&mut self) -> Option<FabricOp> {
        let op = self.ops.pop_front()?;
        if matches!(op, FabricOp::Send { .. }) {
            self.sends -= 1;
        }
        Some(op)
    }

    /// Puts back an op that could not be posted yet.
    pub(super) fn push_front(&mut self, op: FabricOp) {
        if matches!(op, FabricOp::Send { .. }) {
            self.sends += 1;
        }
        self.ops.push_front(op);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.ops.clear();
        self.sends = 0;
    }
}

/// Bytes of a Send staged in registered memory.
pub(super) enum Staged {
    Arena(usize),
    /// A one-off registration for a Send larger than the arena (and those of the login phase).
    OneOff(Arc<MemoryRegion>),
}

/// Where a posted send-queue WR keeps its bytes.
pub(super) enum Buffer {
    /// A Send's bytes, copied into registered memory.
    Staged(Staged),
    /// A task's read data, the source of its RDMA Writes: held by the last of them until the
    /// completion, so the pool does not hand it out (nor a RAM LUN free it) while the NIC
    /// reads it.
    Task(Payload),
    /// An RDMA Write of a piece of read data whose later Write of the same chain holds it.
    Chained,
    /// A task's write buffer, the target of an RDMA Read: the adapter keeps it until the read
    /// is reported (see [`IserConnection::rdma_read_placement`]).
    InTask,
}

pub(super) enum Kind {
    Send,
    Write,
    Read { token: u64 },
}

/// An RDMA Read about to be posted (kept between calls: no allocation per WRITE).
pub(super) struct ReadWr {
    wr_id: u64,
    token: u64,
    mr: Arc<MemoryRegion>,
    offset: usize,
    len: usize,
    va: u64,
    stag: u32,
}

pub(super) struct InFlight {
    pub(super) wr_id: u64,
    pub(super) buffer: Buffer,
    pub(super) kind: Kind,
}

enum Posted {
    Yes,
    /// Not enough room yet; retry after completions.
    Later,
}

impl Driver {
    /// Posts what waits in the backlog, as far as room allows, with one `ibv_post_send`.
    pub(super) fn post_pending(&mut self) {
        self.queue_pending();
        if self.done {
            // Failed while queueing: nothing more goes out (what was queued is not tracked
            // by the QP, and the teardown flushes what was posted before).
            self.sq.clear();
            return;
        }
        if self.sq.is_empty() {
            return;
        }
        let wrs = self.sq.len();
        if let Err(e) = self.res.qp.post_list(&mut self.sq) {
            // Every WR of the list is tracked (it may have been refused part way): the teardown
            // that follows keeps (or leaks) the buffers the device may still use.
            self.fail(format!("posting {wrs} work requests: {e}"));
        }
    }

    /// Moves what waits in the backlog onto the send list, as far as room allows.
    fn queue_pending(&mut self) {
        if self.release_pending {
            // Nothing goes out before the session is released (see `Driver::pump`).
            return;
        }
        while !self.done {
            if matches!(self.pending.ops.front(), Some(FabricOp::RdmaRead { .. })) {
                match self.post_reads() {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => return self.fail(e),
                }
            }
            let Some(op) = self.pending.pop_front() else {
                return;
            };
            if matches!(op, FabricOp::RdmaWrite { .. })
                && matches!(self.pending.ops.front(), Some(FabricOp::Send { .. }))
            {
                // READ data and the Send behind it (its response, as a rule) go as one chain.
                let send = self.pending.pop_front().expect("peeked");
                match self.post_write_and_send(op, send) {
                    Ok(None) => continue,
                    Ok(Some((write, send))) => {
                        self.pending.push_front(send);
                        self.pending.push_front(write);
                        return;
                    }
                    Err(e) => return self.fail(e),
                }
            }
            match self.post(op) {
                Ok((Posted::Yes, _)) => {}
                Ok((Posted::Later, Some(op))) => {
                    self.pending.push_front(op);
                    return;
                }
                Ok((Posted::Later, None)) => return,
                Err(e) => return self.fail(e),
            }
        }
    }

    fn room(&self) -> bool {
        self.inflight.len() < self.res.max_send_wr
    }

    /// Stages `len` bytes: arena space, or a one-off registration for oversized transfers and
    /// for the Sends of the login phase.
    fn stage(&mut self, len: usize) -> Result<Option<Staged>, String> {
        if let Some((_, ring)) = self.arena.as_mut().filter(|(_, ring)| ring.fits(len)) {
            Ok(ring.alloc(len).map(Staged::Arena))
        } else {
            MemoryRegion::new(&self.res.pd, len, Access::LOCAL_WRITE)
                .map(|mr| Some(Staged::OneOff(mr)))
                .map_err(|e| format!("registering a {len}-byte staging buffer: {e}"))
        }
    }

    fn buffer_mr(&self, buffer: &Staged) -> (Arc<MemoryRegion>, usize) {
        match (buffer, &self.arena) {
            (Staged::Arena(start), Some((arena, _))) => (Arc::clone(arena), *start),
            (Staged::OneOff(mr), _) => (Arc::clone(mr), 0),
            (Staged::Arena(_), None) => {
                unreachable!("arena space is handed out only with an arena")
            }
        }
    }

    fn unstage(&mut self, buffer: &Staged) {
        if let Staged::Arena(start) = buffer {
            self.free_staged(*start);
        }
    }

    pub(super) fn free_staged(&mut self, start: usize) {
        if let Some((_, ring)) = &mut self.arena {
            ring.free(start);
        }
    }

    /// Posts one operation, or hands it back when it has to wait.
    fn post(&mut self, op: FabricOp) -> Result<(Posted, Option<FabricOp>), String> {
        match op {
            FabricOp::Close(reason) => {
                if self.ending.is_none() {
                    self.shared.refusals.iscsi_closed(&reason);
                    match &reason {
                        CloseReason::Logout | CloseReason::Shutdown => {
                            log::debug!("{}: closing ({reason})", self.peer)
                        }
                        // A refused or failed login (a login ends before full feature phase):
                        // under the process-wide limit of refusal lines, as over TCP.
                        _ if !self.logged_in => {
                            self.shared.refusals.log(
                                Instant::now(),
                                format_args!("{} (iSER): {}", self.peer, reason.during_login()),
                            );
                        }
                        _ => log::warn!("{}: closing ({reason})", self.peer),
                    }
                    self.ending = Some(Ending::Core(reason.clone(), Instant::now()));
                }
                if self.inflight.is_empty() {
                    self.done = true;
                    Ok((Posted::Yes, None))
                } else {
                    // Wait for the last Sends (e.g. the Logout Response) to complete.
                    Ok((Posted::Later, Some(FabricOp::Close(reason))))
                }
            }
            FabricOp::Send { bytes, invalidate } => {
                if !self.room() {
                    return Ok((Posted::Later, Some(FabricOp::Send { bytes, invalidate })));
                }
                let Some(buffer) = self.stage(bytes.len())? else {
                    return Ok((Posted::Later, Some(FabricOp::Send { bytes, invalidate })));
                };
                let (mr, offset) = self.buffer_mr(&buffer);
                let wr_id = self.next_wr();
                let posted = write_send(&mr, offset, &bytes)
                    .and_then(|()| {
                        self.sq.push(SendWr {
                            wr_id,
                            op: SendOp::Send { invalidate },
                            mr: &mr,
                            offset,
                            len: bytes.len(),
                            signaled: true,
                        })
                    })
                    .map_err(|e| format!("posting a Send: {e}"));
                self.track(posted, wr_id, Buffer::Staged(buffer), Kind::Send)
            }
            FabricOp::RdmaWrite {
                stag,
                va,
                data,
                range,
            } => {
                if range.is_empty() {
                    return Ok((Posted::Yes, None));
                }
                // Straight from the task's read buffer or the RAM LUN's memory: no copy.
                let sources = self.write_sources(&data, range.clone())?;
                if !self.room_for(sources) {
                    let op = FabricOp::RdmaWrite {
                        stag,
                        va,
                        data,
                        range,
                    };
                    return Ok((Posted::Later, Some(op)));
                }
                let first = self.queue_writes(va, stag, true)?;
                self.track_writes(first, sources, data);
                Ok((Posted::Yes, None))
            }
            FabricOp::RdmaRead { .. } => unreachable!("posted by post_reads"),
            FabricOp::BindSession(_) | FabricOp::Execute(_) | FabricOp::EnterFullFeature => {
                unreachable!("handled in pump")
            }
        }
    }

    /// Queues the RDMA Reads at the front of the backlog — all of a WRITE's solicited data, and
    /// those of the WRITEs behind it — as many as the initiator's read depth and the send queue
    /// allow, chained with only the last signaled: its completion retires the others (RC
    /// completes a send queue in order). Each lands straight in its task's write buffer.
    /// `Ok(false)` when not even the first fits yet.
    fn post_reads(&mut self) -> Result<bool, String> {
        let mut batch = std::mem::take(&mut self.read_batch);
        batch.clear();
        let mut progress = false;
        while self.reads + batch.len() < self.res.max_rdma_reads && self.room_for(batch.len() + 1) {
            let Some(FabricOp::RdmaRead {
                token,
                stag,
                va,
                len: _,
            }) = self.pending.ops.front()
            else {
                break;
            };
            let (token, stag, va) = (*token, *stag, *va);
            self.pending.pop_front();
            progress = true;
            let Some(place) = self.conn.rdma_read_placement(token) else {
                // Its task ended before the read went out: nothing to fetch. Reported done so
                // the Sends that wait for it may go.
                self.conn.handle_rdma_read_complete(token, Instant::now());
                self.pump();
                continue;
            };
            // Straight into the task's write buffer: no staging, no copy.
            let mr = match self.arena_mr(&place.arena) {
                Ok(mr) => mr,
                Err(e) => {
                    self.read_batch = batch;
                    return Err(e);
                }
            };
            let wr_id = self.next_wr();
            batch.push(ReadWr {
                wr_id,
                token,
                mr,
                offset: place.offset,
                len: place.len,
                va,
                stag,
            });
        }
        let last = batch.len().saturating_sub(1);
        let mut posted = Ok(());
        for (i, read) in batch.iter().enumerate() {
            let wr = SendWr {
                wr_id: read.wr_id,
                op: SendOp::RdmaRead {
                    remote_addr: read.va,
                    rkey: read.stag,
                },
                mr: &read.mr,
                offset: read.offset,
                len: read.len,
                signaled: i == last,
            };
            if let Err(e) = self.sq.push(wr) {
                posted = Err(format!("posting an RDMA Read: {e}"));
                break;
            }
        }
        // Tracked even when one is refused: the teardown that follows keeps (or leaks) the
        // buffers the device may still write.
        for read in batch.drain(..) {
            self.reads += 1;
            self.inflight.push_back(InFlight {
                wr_id: read.wr_id,
                buffer: Buffer::InTask,
                kind: Kind::Read { token: read.token },
            });
        }
        self.read_batch = batch;
        posted.map(|()| progress)
    }

    /// Queues an RDMA Write and the Send that follows it, chained, only the Send signaled: its completion retires the Write too (RC completes a send queue in
    /// order). The Write goes straight from the task's read buffer. Hands both back when they
    /// do not fit yet.
    fn post_write_and_send(
        &mut self,
        write: FabricOp,
        send: FabricOp,
    ) -> Result<Option<(FabricOp, FabricOp)>, String> {
        let (
            FabricOp::RdmaWrite {
                stag,
                va,
                data,
                range,
            },
            FabricOp::Send { bytes, invalidate },
        ) = (write, send)
        else {
            unreachable!("called with an RDMA Write and a Send")
        };
        if range.is_empty() {
            self.pending
                .push_front(FabricOp::Send { bytes, invalidate });
            return Ok(None);
        }
        let hand_back = |data, range, bytes, invalidate| {
            Ok(Some((
                FabricOp::RdmaWrite {
                    stag,
                    va,
                    data,
                    range,
                },
                FabricOp::Send { bytes, invalidate },
            )))
        };
        let sources = self.write_sources(&data, range.clone())?;
        if !self.room_for(sources + 1) {
            return hand_back(data, range, bytes, invalidate);
        }
        let Some(send_buffer) = self.stage(bytes.len())? else {
            return hand_back(data, range, bytes, invalidate);
        };
        let (send_mr, send_offset) = self.buffer_mr(&send_buffer);
        let queued = self.queue_writes(va, stag, false);
        if let Ok(first) = queued {
            // The Writes are tracked even when one is refused: the teardown that follows keeps
            // (or leaks) the data the device may still read.
            self.track_writes(first, sources, data);
        }
        let send_wr = self.next_wr();
        let posted = queued.and_then(|_| {
            write_send(&send_mr, send_offset, &bytes)
                .and_then(|()| {
                    self.sq.push(SendWr {
                        wr_id: send_wr,
                        op: SendOp::Send { invalidate },
                        mr: &send_mr,
                        offset: send_offset,
                        len: bytes.len(),
                        signaled: true,
                    })
                })
                .map_err(|e| format!("posting RDMA Writes and a Send: {e}"))
        });
        if let Err(e) = posted {
            // A refused list leaves the connection failing; the staged bytes go with it.
            self.unstage(&send_buffer);
            return Err(e);
        }
        self.inflight.push_back(InFlight {
            wr_id: send_wr,
            buffer: Buffer::Staged(send_buffer),
            kind: Kind::Send,
        });
        Ok(None)
    }

    /// The registration of a pool arena on this connection's PD, made on first use. Arenas
    /// stay mapped for the life of the process, so a registration stays valid as long as the
    /// connection keeps it.
    fn arena_mr(&mut self, arena: &Arena) -> Result<Arc<MemoryRegion>, String> {
        if let Some(mr) = self.pool_mrs.get(&arena.id()) {
            return Ok(Arc::clone(mr));
        }
        let mr = MemoryRegion::register_arena(&self.res.pd, arena, Access::LOCAL_WRITE)
            .map_err(|e| format!("registering buffer arena of {} bytes: {e}", arena.len()))?;
        log::debug!(
            "{}: registered buffer arena {:?} ({} bytes)",
            self.peer,
            arena.id(),
            arena.len()
        );
        self.pool_mrs.insert(arena.id(), Arc::clone(&mr));
        Ok(mr)
    }

    /// Whether `wrs` more send-queue WRs fit now. The largest READ (8 MiB, lent from a RAM
    /// LUN as at most 9 pieces of its 1 MiB chunks) and its Send fit within the queue's
    /// headroom, so a chain that does not fit only waits for completions.
    fn room_for(&self, wrs: usize) -> bool {
        self.inflight.len() + wrs <= self.res.max_send_wr
    }

    /// The sources of the RDMA Writes for bytes `range` of a task's Data-In, into
    /// `write_sources` (whose capacity the driver keeps: no allocation per READ): one
    /// registration (of the arena holding it), offset in it and length per piece (one for a pool
    /// buffer, one per chunk or hole for a RAM LUN's lent memory). Returns how many.
    fn write_sources(
        &mut self,
        data: &Payload,
        range: std::ops::Range<usize>,
    ) -> Result<usize, String> {
        let mut pieces = std::mem::take(&mut self.write_pieces);
        let found = data.pieces_into(range, &mut pieces);
        self.write_sources.clear();
        let mut registered = Ok(());
        if found.is_some() {
            for piece in &pieces {
                match self.arena_mr(&piece.arena) {
                    Ok(mr) => self.write_sources.push((mr, piece.offset, piece.len)),
                    Err(e) => {
                        registered = Err(e);
                        break;
                    }
                }
            }
        }
        self.write_pieces = pieces;
        found.ok_or("an RDMA transfer of memory outside the pool")?;
        registered.map(|()| self.write_sources.len())
    }

    /// Queues one RDMA Write per source in `write_sources`, to consecutive remote addresses
    /// from `va`, chained in order; only the last is signaled when `signal_last` (a Send that
    /// follows signals instead). Their wr_ids follow one another from the one returned.
    fn queue_writes(&mut self, va: u64, stag: u32, signal_last: bool) -> Result<u64, String> {
        let sources = std::mem::take(&mut self.write_sources);
        let first = self.next_wr;
        let mut remote = va;
        let last = sources.len().saturating_sub(1);
        let mut queued = Ok(first);
        for (i, (mr, offset, len)) in sources.iter().enumerate() {
            let wr = SendWr {
                wr_id: self.next_wr(),
                op: SendOp::RdmaWrite {
                    remote_addr: remote,
                    rkey: stag,
                },
                mr,
                offset: *offset,
                len: *len,
                signaled: signal_last && i == last,
            };
            if let Err(e) = self.sq.push(wr) {
                queued = Err(format!("posting an RDMA Write: {e}"));
                break;
            }
            remote = remote.wrapping_add(*len as u64);
        }
        // Every source gets its wr_id even when one was refused, so the caller tracks them all.
        self.next_wr = first + sources.len() as u64;
        self.write_sources = sources;
        queued
    }

    /// Tracks `count` posted RDMA Writes of `data` with wr_ids from `first` on: the last holds
    /// it until its completion.
    fn track_writes(&mut self, first: u64, count: usize, data: Payload) {
        let mut data = Some(data);
        let last = count.saturating_sub(1);
        for (i, wr_id) in (first..first + count as u64).enumerate() {
            let buffer = match data.take() {
                Some(data) if i == last => Buffer::Task(data),
                kept => {
                    data = kept;
                    Buffer::Chained
                }
            };
            self.inflight.push_back(InFlight {
                wr_id,
                buffer,
                kind: Kind::Write,
            });
        }
    }

    fn next_wr(&mut self) -> u64 {
        let id = self.next_wr;
        self.next_wr += 1;
        id
    }

    fn track(
        &mut self,
        posted: Result<(), String>,
        wr_id: u64,
        buffer: Buffer,
        kind: Kind,
    ) -> Result<(Posted, Option<FabricOp>), String> {
        match posted {
            Ok(()) => {
                self.inflight.push_back(InFlight {
                    wr_id,
                    buffer,
                    kind,
                });
                Ok((Posted::Yes, None))
            }
            Err(e) => {
                if let Buffer::Staged(staged) = &buffer {
                    self.unstage(staged);
                }
                Err(e)
            }
        }
    }
}

/// Copies a Send's bytes, part by part, into registered memory at `offset`.
fn write_send(mr: &MemoryRegion, offset: usize, bytes: &SendBytes) -> rdma_ffi::Result<()> {
    let mut at = offset;
    for part in bytes.parts() {
        mr.write(at, part)?;
        at += part.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{Header, NopIn, Pdu};

    fn send() -> FabricOp {
        FabricOp::Send {
            bytes: SendBytes::new(Pdu::new(Header::NopIn(NopIn::default()))),
            invalidate: None,
        }
    }

    #[test]
    fn backlog_bounds_the_sends_waiting() {
        let mut backlog = Backlog::new(2);
        backlog.push_back(send()).unwrap();
        // RDMA operations are bounded by the command window, not here.
        for _ in 0..10 {
            backlog
                .push_back(FabricOp::RdmaWrite {
                    stag: 1,
                    va: 0,
                    data: mem_ffi::Payload::empty(),
                    range: 0..0,
                })
                .unwrap();
        }
        backlog.push_back(send()).unwrap();
        let err = backlog.push_back(send()).unwrap_err();
        assert!(err.contains("stopped taking them"), "{err}");
        // Posting one makes room; putting it back (not posted yet) takes it again.
        let first = backlog.pop_front().unwrap();
        backlog.push_back(send()).unwrap();
        backlog.push_front(first);
        assert!(backlog.push_back(send()).is_err());
        backlog.clear();
        backlog.push_back(send()).unwrap();
    }
}
