//! The RDMA Reads that fetch writes' solicited data: where each lands in its task's buffer, what
//! the core learns as they complete, and the buffers of ended writes kept until the last read
//! into them is done; counted per write, so that no event walks the reads in flight.

use std::collections::hash_map::Entry;
use std::ops::Range;
use std::time::Instant;

use super::{FabricOp, IserConnection, RemoteBuffers};
use crate::iscsi::connection::{CloseReason, TaskId, TaskRef};
use mem_ffi::Buf;

/// Where an RDMA Read lands: `len` bytes at `offset` of a pool arena (inside the task's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlacement {
    pub arena: mem_ffi::Arena,
    pub offset: usize,
    pub len: usize,
}

/// An RDMA Read in flight: one piece of a write's solicited data.
#[derive(Debug, Clone)]
pub(super) struct PendingRead {
    task: TaskId,
    /// Where its bytes go in the task's buffer.
    range: Range<u32>,
}

/// A write whose data is being read: its buffer (sized to the whole transfer, immediate data at
/// the front) and which pieces have landed.
#[derive(Debug)]
pub(super) struct IserWrite {
    /// The task's pool buffer, its length the whole transfer: bytes past `received` are not
    /// the initiator's yet (old bytes of the pool until their RDMA Read lands).
    buffer: Buf,
    /// Bytes in from offset 0, in order: what the core has been told.
    received: u32,
    /// Pieces that completed ahead of an earlier one (completions of one QP come in order, so
    /// this stays empty in practice), as (start, end).
    landed: Vec<(u32, u32)>,
    /// Its RDMA Reads in flight.
    reads: u32,
}

/// The buffer of a write that ended while RDMA Reads into it were in flight.
#[derive(Debug)]
pub(super) struct RetiredWrite {
    buffer: Buf,
    /// Its RDMA Reads still in flight: the buffer goes back to the pool when none is left.
    reads: u32,
}

impl IserConnection {
    /// The bytes RDMA Read `token` lands on, for a stand-in of the fabric (the tests, the fuzz
    /// target) to write; the driver posts the read where [`IserConnection::rdma_read_placement`]
    /// says instead. `None` when the task ended meanwhile (the bytes are not wanted).
    pub fn rdma_read_destination(&mut self, token: u64) -> Option<&mut [u8]> {
        let read = self.reads.get(&token)?;
        let write = self.writes.get_mut(&read.task)?;
        write
            .buffer
            .get_mut(read.range.start as usize..read.range.end as usize)
    }

    /// Where RDMA Read `token` lands: its piece of the task's pool buffer, as the buffer's arena
    /// (for the memory registration that covers it) and the byte offset in that arena. `None`
    /// when the read is no longer wanted (its task ended before it was posted): report it
    /// complete without posting it.
    pub fn rdma_read_placement(&self, token: u64) -> Option<ReadPlacement> {
        let read = self.reads.get(&token)?;
        let write = self.writes.get(&read.task)?;
        let range = read.range.start as usize..read.range.end as usize;
        write.buffer.get(range.clone())?;
        Some(ReadPlacement {
            arena: write.buffer.arena_extent()?,
            offset: write.buffer.arena_offset()? + range.start,
            len: range.len(),
        })
    }

    /// Forgets (leaks) the buffers that RDMA Reads still in flight may write: for a teardown
    /// whose QP drain failed, when the device may still write them.
    pub fn leak_buffers_under_reads(&mut self) {
        for (task, write) in std::mem::take(&mut self.writes) {
            if write.reads > 0 {
                std::mem::forget(write.buffer);
            } else {
                self.writes.insert(task, write);
            }
        }
        // Every retired buffer has reads in flight.
        for (_, retired) in self.retired.drain() {
            std::mem::forget(retired.buffer);
        }
    }

    /// An RDMA Read finished (its bytes landed where [`IserConnection::rdma_read_placement`]
    /// said): the core learns which data-out is in.
    pub fn handle_rdma_read_complete(&mut self, token: u64, now: Instant) {
        self.core.record_activity(now);
        if let Some(read) = self.read_finished(token) {
            self.read_landed(read);
        }
        self.pump();
    }

    /// An RDMA Read failed (remote access error, flush): the connection cannot go on.
    pub fn handle_rdma_read_failed(&mut self, token: u64) {
        if let Some(read) = self.reads.remove(&token) {
            self.read_done(read.task);
        }
        let reason = CloseReason::ProtocolError("RDMA Read failed".into());
        // At once: whatever is held (a Logout Response) must not go out on a broken connection.
        self.close_at_once(reason.clone());
        self.core_close(reason);
        self.pump();
    }

    /// Records a landed piece and tells the core what is now in, in order.
    fn read_landed(&mut self, read: PendingRead) {
        let Some(write) = self.writes.get_mut(&read.task) else {
            return;
        };
        let before = write.received;
        if read.range.start == write.received {
            // In order, as always in practice: `landed` stays empty (and unallocated).
            write.received = read.range.end;
        } else {
            write.landed.push((read.range.start, read.range.end));
        }
        while let Some(pos) = write
            .landed
            .iter()
            .position(|&(start, _)| start == write.received)
        {
            write.received = write.landed.swap_remove(pos).1;
        }
        let after = write.received;
        if after == before {
            return;
        }
        if after as usize >= write.buffer.len() {
            let write = self.writes.remove(&read.task).expect("found above");
            self.complete.insert(read.task, write.buffer);
        }
        self.core.handle_data_received(read.task, before..after);
    }

    /// Forgets a read that completed; ops held for it may go ([`IserConnection::release_held`]).
    fn read_finished(&mut self, token: u64) -> Option<PendingRead> {
        let read = self.reads.remove(&token)?;
        self.read_done(read.task);
        Some(read)
    }

    /// Counts off a task's read that completed or failed, and returns an ended write's buffer to
    /// the pool once no RDMA Read into it is in flight.
    fn read_done(&mut self, task: TaskId) {
        // Each read is counted once when posted and once here (its token left `reads`), so a
        // count at zero is our bug, never the peer's doing.
        if let Some(write) = self.writes.get_mut(&task) {
            debug_assert!(write.reads > 0, "a read of {task:?} counted off twice");
            write.reads = write.reads.saturating_sub(1);
        } else if let Entry::Occupied(mut retired) = self.retired.entry(task) {
            let reads = &mut retired.get_mut().reads;
            debug_assert!(*reads > 0, "a read of retired {task:?} counted off twice");
            *reads = reads.saturating_sub(1);
            if *reads == 0 {
                retired.remove();
            }
        }
    }

    /// RDMA Reads in flight into a task's buffer.
    pub(super) fn reads_in_flight(&self, task: TaskId) -> u32 {
        match self.writes.get(&task) {
            Some(write) => write.reads,
            None => self.retired.get(&task).map_or(0, |retired| retired.reads),
        }
    }

    /// The token of the oldest RDMA Read in flight, or the next token when none is. The search
    /// resumes where the last one stopped, so it costs one lookup per read over the connection's
    /// life.
    pub(super) fn oldest_read_in_flight(&mut self) -> u64 {
        while self.oldest_read < self.next_token && !self.reads.contains_key(&self.oldest_read) {
            self.oldest_read += 1;
        }
        self.oldest_read
    }

    /// Drops what the datamover holds for a task that ended. Its reads still in flight stay
    /// tracked, for the Sends that must wait for them; their bytes are not wanted.
    pub(super) fn forget(&mut self, task: TaskId) {
        if let Some(write) = self.writes.remove(&task) {
            if write.reads > 0 {
                let retired = RetiredWrite {
                    buffer: write.buffer,
                    reads: write.reads,
                };
                self.retired.insert(task, retired);
            }
        }
        self.complete.remove(&task);
    }

    /// A write's solicited data → RDMA Reads of the whole range at once from WriteVA + (offset −
    /// immediate bytes) (Linux iser_initiator.c `iser_prepare_write_cmd`), in pieces of at most
    /// MaxBurstLength; the driver keeps as many in flight as the initiator's RDMA Read depth
    /// allows.
    pub(super) fn get_data(
        &mut self,
        task: TaskRef<RemoteBuffers>,
        buffer: Buf,
        range: Range<u32>,
    ) {
        if range.is_empty() {
            self.complete.insert(task.id, buffer);
            return;
        }
        let buffers = task.context;
        let Some((stag, va)) = buffers.write else {
            log::warn!(
                "WRITE for ITT {:#x} needs data but the initiator advertised no write buffer",
                task.itt
            );
            self.core_close(CloseReason::ProtocolError(
                "solicited data without a Write STag".into(),
            ));
            return;
        };
        let Some(relative) = range.start.checked_sub(buffers.unsolicited) else {
            self.core_close(CloseReason::ProtocolError(
                "solicited data below the immediate data".into(),
            ));
            return;
        };
        let mut buffer = buffer;
        // The core sized the buffer for the whole transfer.
        buffer.set_len(range.end as usize);
        let piece = self.core.params().max_burst_length.max(512);
        self.writes.insert(
            task.id,
            IserWrite {
                buffer,
                received: range.start,
                landed: Vec::new(),
                reads: (range.end - range.start).div_ceil(piece),
            },
        );
        let mut offset = range.start;
        while offset < range.end {
            let len = (range.end - offset).min(piece);
            let token = self.next_token;
            self.next_token += 1;
            self.reads.insert(
                token,
                PendingRead {
                    task: task.id,
                    range: offset..offset + len,
                },
            );
            self.emit(FabricOp::RdmaRead {
                token,
                stag,
                va: va.wrapping_add(u64::from(relative + (offset - range.start))),
                len,
            });
            offset += len;
        }
    }
}
