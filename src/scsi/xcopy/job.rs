//! Running an EXTENDED COPY, and the copy statuses a copy manager holds for RECEIVE COPY
//! RESULTS.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, BackendError};
use crate::scsi::sense::{self, Sense};
use crate::scsi::{BlockReply, Nexus};

/// Bytes moved per read and write of a segment.
const PIECE_BYTES: u64 = 1 << 20;

/// Copy statuses one LU holds at most; the oldest finished one makes room.
const MAX_HELD: usize = 16;

/// What the LIST ID USAGE field asks of the copy manager (SPC-4 6.4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListIdUsage {
    /// 00b: the list identifier is unique, and the copy status is held for RECEIVE COPY
    /// RESULTS.
    Hold,
    /// 10b: the list identifier is unique; nothing is held.
    NoHold,
    /// 11b: there is no list identifier.
    Unused,
}

/// One segment with its copy targets found: `len` bytes from `source` to `destination`.
#[derive(Clone)]
pub(super) struct CopySegment {
    pub(super) source: Arc<dyn Backend>,
    pub(super) source_offset: u64,
    pub(super) destination: Arc<dyn Backend>,
    pub(super) destination_offset: u64,
    pub(super) len: u64,
    /// The destination's write cache is off: flush it before the copy is reported done.
    pub(super) flush: bool,
}

impl CopySegment {
    /// Copies the segment: between two files inside the kernel when it can (see
    /// [`BackendFiles::copy_in`]), else in pieces through one pool buffer. When source and
    /// destination overlap with the destination behind, the pieces go from the end so that none
    /// is overwritten before it was read.
    ///
    /// [`BackendFiles::copy_in`]: crate::backend::BackendFiles::copy_in
    fn copy(&self) -> Result<(), Sense> {
        if self.len > 0 && !self.copy_in_kernel()? {
            let piece = PIECE_BYTES.min(self.len);
            let mut buf = mem_ffi::pool::global().alloc(piece as usize);
            let pieces = self.len.div_ceil(piece);
            let backwards = Arc::ptr_eq(&self.source, &self.destination)
                && self.destination_offset > self.source_offset
                && self.destination_offset < self.source_offset + self.len;
            for k in 0..pieces {
                let at = piece * if backwards { pieces - 1 - k } else { k };
                let n = piece.min(self.len - at) as usize;
                let data = &mut buf[..n];
                self.source
                    .read_at(data, self.source_offset + at)
                    .map_err(|e| aborted(&e, true))?;
                self.destination
                    .write_at(data, self.destination_offset + at)
                    .map_err(|e| aborted(&e, false))?;
            }
        }
        if self.flush {
            self.destination.flush().map_err(|e| aborted(&e, false))?;
        }
        Ok(())
    }

    /// Whether the segment was copied file to file by the kernel (nothing copied otherwise).
    fn copy_in_kernel(&self) -> Result<bool, Sense> {
        let (Some(from), Some(to)) = (self.source.files(), self.destination.files()) else {
            return Ok(false);
        };
        to.copy_in(from, self.source_offset, self.destination_offset, self.len)
            .map_err(|e| aborted(&e, false))
    }
}

/// COPY ABORTED with the nature of the backend's failure (SPC-4 6.4.5).
fn aborted(e: &BackendError, reading: bool) -> Sense {
    log::error!(
        "EXTENDED COPY: {} failed: {e}",
        if reading { "read" } else { "write" }
    );
    let condition = if reading {
        sense::UNRECOVERED_READ_ERROR
    } else if e.is_out_of_space() {
        sense::SPACE_ALLOCATION_FAILED
    } else {
        sense::WRITE_ERROR
    };
    Sense::new(sense::COPY_ABORTED, condition)
}

/// An EXTENDED COPY ready to run: its segments, and where its status is held.
#[derive(Clone)]
pub struct CopyJob {
    held: Arc<Mutex<HeldCopies>>,
    nexus: Nexus,
    list_id: u8,
    usage: ListIdUsage,
    segments: Vec<CopySegment>,
}

impl std::fmt::Debug for CopyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyJob")
            .field("list_id", &self.list_id)
            .field("usage", &self.usage)
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl PartialEq for CopyJob {
    fn eq(&self, other: &Self) -> bool {
        let same_segment = |a: &CopySegment, b: &CopySegment| {
            Arc::ptr_eq(&a.source, &b.source)
                && Arc::ptr_eq(&a.destination, &b.destination)
                && (a.source_offset, a.destination_offset, a.len, a.flush)
                    == (b.source_offset, b.destination_offset, b.len, b.flush)
        };
        Arc::ptr_eq(&self.held, &other.held)
            && (&self.nexus, self.list_id, self.usage) == (&other.nexus, other.list_id, other.usage)
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| same_segment(a, b))
    }
}

impl Eq for CopyJob {}

impl CopyJob {
    pub(super) fn new(
        held: Arc<Mutex<HeldCopies>>,
        nexus: Nexus,
        list_id: u8,
        usage: ListIdUsage,
        segments: Vec<CopySegment>,
    ) -> Self {
        CopyJob {
            held,
            nexus,
            list_id,
            usage,
            segments,
        }
    }

    fn held(&self) -> MutexGuard<'_, HeldCopies> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the segments in order (blocking). GOOD when all are copied (and durable where
    /// the destination's write cache is off); otherwise COPY ABORTED with the failure, and the
    /// held status says how many segments were done.
    pub fn run(&self) -> BlockReply {
        if !self.held().begin(&self.nexus, self.list_id, self.usage) {
            return BlockReply::Check(Sense::new(
                sense::ILLEGAL_REQUEST,
                sense::OPERATION_IN_PROGRESS,
            ));
        }
        let mut done = 0usize;
        let mut bytes = 0u64;
        let mut failure = None;
        for segment in &self.segments {
            if let Err(s) = segment.copy() {
                failure = Some(s);
                break;
            }
            done += 1;
            bytes += segment.len;
        }
        let ended = Ended {
            ok: failure.is_none(),
            segments: done as u16,
            bytes,
        };
        self.held()
            .end(&self.nexus, self.list_id, self.usage, ended);
        match failure {
            None => BlockReply::Done,
            Some(s) => BlockReply::Check(s),
        }
    }
}

/// How a finished copy ended.
#[derive(Debug, Clone, Copy)]
struct Ended {
    ok: bool,
    segments: u16,
    bytes: u64,
}

/// One copy's status, held per I_T nexus and list identifier.
struct Held {
    nexus: Nexus,
    list_id: u8,
    /// `None` while the copy runs.
    ended: Option<Ended>,
}

/// The copy statuses a copy manager (one LU) holds: of running copies with a unique list
/// identifier, and of finished ones whose LIST ID USAGE asked to hold it, until RECEIVE COPY
/// RESULTS (COPY STATUS) has reported them, their I_T nexus is gone, or room is needed.
#[derive(Default)]
pub struct HeldCopies {
    entries: VecDeque<Held>,
}

impl HeldCopies {
    fn position(&self, nexus: &Nexus, list_id: u8) -> Option<usize> {
        self.entries
            .iter()
            .position(|h| h.list_id == list_id && &h.nexus == nexus)
    }

    /// A copy starts: `false` when one with the same list identifier still runs for the same
    /// nexus (the identifier must be unique, SPC-4 6.4.3.2). A finished one's status is
    /// replaced.
    fn begin(&mut self, nexus: &Nexus, list_id: u8, usage: ListIdUsage) -> bool {
        if usage == ListIdUsage::Unused {
            return true;
        }
        if let Some(i) = self.position(nexus, list_id) {
            if self.entries[i].ended.is_none() {
                return false;
            }
            self.entries.remove(i);
        }
        while self.entries.len() >= MAX_HELD {
            match self.entries.iter().position(|h| h.ended.is_some()) {
                Some(oldest) => drop(self.entries.remove(oldest)),
                None => break,
            }
        }
        self.entries.push_back(Held {
            nexus: nexus.clone(),
            list_id,
            ended: None,
        });
        true
    }

    /// A copy ended: its status is kept when asked to, dropped otherwise.
    fn end(&mut self, nexus: &Nexus, list_id: u8, usage: ListIdUsage, ended: Ended) {
        let Some(i) = self.position(nexus, list_id) else {
            return; // not tracked, or its nexus went away meanwhile
        };
        if usage == ListIdUsage::Hold {
            self.entries[i].ended = Some(ended);
        } else {
            self.entries.remove(i);
        }
    }

    /// COPY STATUS data (SPC-4 6.18.3) for `nexus`'s copy `list_id`, if one is held. A
    /// finished copy's status is reported once, then discarded.
    pub(in crate::scsi) fn copy_status(&mut self, nexus: &Nexus, list_id: u8) -> Option<[u8; 12]> {
        let i = self.position(nexus, list_id)?;
        let ended = self.entries[i].ended;
        let mut d = [0u8; 12];
        d[3] = 8; // AVAILABLE DATA
        if let Some(e) = ended {
            self.entries.remove(i);
            // COPY MANAGER STATUS: 01h completed without errors, 02h completed with errors.
            d[4] = if e.ok { 0x01 } else { 0x02 };
            d[5..7].copy_from_slice(&e.segments.to_be_bytes());
            // TRANSFER COUNT in bytes (units 00h) while it fits, else in KiB (01h), ...
            let (units, count) = transfer_count(e.bytes);
            d[7] = units;
            d[8..12].copy_from_slice(&count.to_be_bytes());
        }
        Some(d)
    }

    /// I_T nexus loss: the nexus's held statuses go.
    pub(in crate::scsi) fn forget(&mut self, nexus: &Nexus) {
        self.entries.retain(|h| &h.nexus != nexus);
    }

    /// A reset: every held status goes.
    pub(in crate::scsi) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// TRANSFER COUNT UNITS and TRANSFER COUNT for `bytes`: the smallest power-of-1024 unit in
/// which the count fits in 32 bits.
fn transfer_count(bytes: u64) -> (u8, u32) {
    let mut units = 0u8;
    let mut count = bytes;
    while count > u64::from(u32::MAX) {
        count >>= 10;
        units += 1;
    }
    (units, count as u32)
}
