//! SBC-3 block commands: the limits they are held to, the primitive block requests they
//! become, the executor that runs those on a backend, and the mapping of results back to
//! SCSI outcomes. Decoding the commands into requests is `plan.rs`.

mod plan;

pub(super) use plan::plan;

use super::sense::{self, Sense};
use super::ScsiOutcome;
use crate::backend::{Backend, BackendError};
use mem_ffi::{Buf, Payload};

/// Device limits advertised in VPD page B0h and enforced on every command.
pub(crate) mod limits {
    /// Largest READ/WRITE/VERIFY transfer, in bytes (bounds Data-In buffer allocation).
    pub const MAX_TRANSFER_BYTES: u32 = 8 << 20;
    /// Preferred transfer size, in bytes.
    pub const OPTIMAL_TRANSFER_BYTES: u32 = 1 << 20;
    /// Largest range one UNMAP descriptor may cover, in bytes.
    /// (512 MiB: at 512-byte blocks exactly the 1 Mi-block ceiling libiscsi accepts.)
    pub const MAX_UNMAP_BYTES: u32 = 512 << 20;
    /// Largest WRITE SAME range, in bytes: the same 8 MiB per-command bound as a transfer, so
    /// one command cannot keep a worker writing zeroes for seconds. (With 1 GiB, libiscsi's
    /// WriteSame16.Unmap also writes 65536 blocks in one WRITE(16) first, beyond our transfer
    /// limit; with a smaller limit it checks that 65536 blocks are refused instead.)
    pub const MAX_WRITE_SAME_BYTES: u32 = MAX_TRANSFER_BYTES;
    /// Most block descriptors accepted in one UNMAP parameter list.
    pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
    /// Most blocks in one COMPARE AND WRITE (VPD B0h byte 5).
    pub const MAX_COMPARE_AND_WRITE: u8 = 128;
    /// Largest WRITE ATOMIC, in bytes (VPD B0h MAXIMUM ATOMIC TRANSFER LENGTH).
    pub const MAX_ATOMIC_BYTES: u32 = 1 << 20;
    /// Preferred alignment of transfers and unmaps, in bytes.
    pub const GRANULARITY_BYTES: u32 = 4096;
}

/// The limits of [`limits`] converted to blocks of one LU's block size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_transfer: u32,
    pub optimal_transfer: u32,
    pub granularity: u32,
    pub max_unmap_lbas: u32,
    pub max_write_same: u32,
    pub max_atomic: u32,
}

/// Block-count limits for a block size (a zero block size is treated as 1 to stay total).
pub(super) fn limits_for(block_size: u32) -> Limits {
    let bs = block_size.max(1);
    Limits {
        max_transfer: limits::MAX_TRANSFER_BYTES / bs,
        optimal_transfer: (limits::OPTIMAL_TRANSFER_BYTES / bs).max(1),
        granularity: (limits::GRANULARITY_BYTES / bs).max(1),
        max_unmap_lbas: limits::MAX_UNMAP_BYTES / bs,
        max_write_same: limits::MAX_WRITE_SAME_BYTES / bs,
        max_atomic: (limits::MAX_ATOMIC_BYTES / bs).max(1),
    }
}

/// A primitive block operation in byte units, produced by [`LogicalUnit::plan`]. Borrowed
/// data points into the request's Data-Out buffer.
///
/// [`LogicalUnit::plan`]: super::LogicalUnit::plan
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest<'a> {
    /// Read `len` bytes at `offset`; replies with [`BlockReply::Data`].
    Read { offset: u64, len: usize },
    /// Write `data` at `offset`; `fua` makes it durable (flush) before completion.
    Write {
        offset: u64,
        data: &'a [u8],
        fua: bool,
    },
    /// Make all completed writes durable.
    Flush,
    /// Deallocate each (offset, length) byte range; they read back as zeroes.
    Unmap { ranges: Vec<(u64, u64)> },
    /// Fill `len` bytes at `offset` with `pattern` repeated (`None`: zeroes). With `unmap`
    /// and an all-zero pattern the range is deallocated instead of written.
    WriteSame {
        offset: u64,
        len: u64,
        pattern: Option<&'a [u8]>,
        unmap: bool,
        fua: bool,
    },
    /// Atomically: if the medium at `offset` equals `compare`, write `write` there.
    CompareAndWrite {
        offset: u64,
        compare: &'a [u8],
        write: &'a [u8],
        fua: bool,
    },
    /// Compare the medium at `offset` with `expected` (VERIFY with BYTCHK=1).
    Compare { offset: u64, expected: &'a [u8] },
    /// Atomically OR `data` into the medium at `offset` (ORWRITE).
    OrWrite {
        offset: u64,
        data: &'a [u8],
        fua: bool,
    },
    /// Write `data` at `offset` excluding all other I/O (WRITE ATOMIC).
    AtomicWrite {
        offset: u64,
        data: &'a [u8],
        fua: bool,
    },
    /// EXTENDED COPY: blocks moved between LUs (or within one) by the copy manager.
    Copy(Box<crate::scsi::CopyJob>),
    /// PERSISTENT RESERVE OUT under APTPL: the LU's reservations, already changed, written to
    /// their store before the command is GOOD.
    SaveReservations(std::sync::Arc<crate::scsi::Reservations>),
    /// PERSISTENT RESERVE OUT or an NVMe reservation command on reservations the LU's
    /// gateways share: the change made on the shared state, written and announced to every
    /// gateway before the command is answered ([`crate::scsi::Reservations`]).
    ChangeSharedReservations(
        std::sync::Arc<crate::scsi::Reservations>,
        Box<crate::scsi::ReservationChange>,
    ),
    /// GET LBA STATUS: LBA status descriptors from block `lba` to the end of an LU of
    /// `num_blocks` blocks of `block_size` bytes; replies with the parameter data cut to
    /// `alloc` bytes.
    LbaStatus {
        lba: u64,
        num_blocks: u64,
        block_size: u64,
        alloc: usize,
    },
}

impl BlockRequest<'_> {
    /// Whether the request must exclude all other I/O to the LU (COMPARE AND WRITE).
    pub fn needs_exclusive(&self) -> bool {
        matches!(
            self,
            BlockRequest::CompareAndWrite { .. }
                | BlockRequest::OrWrite { .. }
                | BlockRequest::AtomicWrite { .. }
        )
    }

    /// The request apart from the command's buffers, when it borrows none of them: it can then
    /// travel to another thread and run there without the command being planned again (which
    /// for a PERSISTENT RESERVE OUT would apply it twice).
    pub fn detached(self) -> Option<BlockRequest<'static>> {
        Some(match self {
            BlockRequest::Read { offset, len } => BlockRequest::Read { offset, len },
            BlockRequest::Flush => BlockRequest::Flush,
            BlockRequest::Unmap { ranges } => BlockRequest::Unmap { ranges },
            BlockRequest::WriteSame {
                offset,
                len,
                pattern: None,
                unmap,
                fua,
            } => BlockRequest::WriteSame {
                offset,
                len,
                pattern: None,
                unmap,
                fua,
            },
            BlockRequest::Copy(job) => BlockRequest::Copy(job),
            BlockRequest::SaveReservations(r) => BlockRequest::SaveReservations(r),
            BlockRequest::ChangeSharedReservations(r, change) => {
                BlockRequest::ChangeSharedReservations(r, change)
            }
            BlockRequest::LbaStatus {
                lba,
                num_blocks,
                block_size,
                alloc,
            } => BlockRequest::LbaStatus {
                lba,
                num_blocks,
                block_size,
                alloc,
            },
            _ => return None,
        })
    }

    /// Whether the request only reads the medium (decides MEDIUM ERROR read vs write ASC).
    fn is_read(&self) -> bool {
        matches!(
            self,
            BlockRequest::Read { .. }
                | BlockRequest::Compare { .. }
                | BlockRequest::LbaStatus { .. }
        )
    }
}

/// The block requests an asynchronous executor submits itself (one read, one write or one
/// sync), in owned form: a written range is always a prefix of the command's Data-Out, so the
/// executor can hand the Data-Out buffer itself to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    /// Read `len` bytes at `offset`.
    Read { offset: u64, len: usize },
    /// Write the first `len` bytes of Data-Out at `offset`; `fua`: durable at completion.
    Write { offset: u64, len: usize, fua: bool },
    /// Make all completed writes durable.
    Flush,
}

impl BlockRequest<'_> {
    /// This request as a [`Primitive`], when it is a plain READ, WRITE or SYNCHRONIZE CACHE.
    /// `data_out` is the command's Data-Out; a write whose data is not its prefix is `None`.
    pub fn primitive(&self, data_out: &[u8]) -> Option<Primitive> {
        match self {
            BlockRequest::Read { offset, len } => Some(Primitive::Read {
                offset: *offset,
                len: *len,
            }),
            BlockRequest::Write { offset, data, fua } if data.as_ptr() == data_out.as_ptr() => {
                Some(Primitive::Write {
                    offset: *offset,
                    len: data.len(),
                    fua: *fua,
                })
            }
            BlockRequest::Flush => Some(Primitive::Flush),
            _ => None,
        }
    }
}

impl Primitive {
    /// Maps the primitive's result to the SCSI outcome, exactly as [`finish`] does.
    pub fn finish(
        &self,
        result: Result<BlockReply, BackendError>,
        data_out_length: u32,
    ) -> ScsiOutcome {
        outcome(
            matches!(self, Primitive::Read { .. }),
            result,
            data_out_length,
        )
    }
}

/// What a successfully executed [`BlockRequest`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockReply {
    /// Completed; nothing to return.
    Done,
    /// Data read from the medium: a pool buffer it fills whole, the backend's own memory lent
    /// (RAM), or a span of a file in memory left unread for a connection that sends its pages
    /// (the engine's choice for TCP sessions).
    Data(Payload),
    /// The compare failed at this byte offset within the compared data; nothing written.
    Miscompare { offset: u64 },
    /// Ended with this condition, decided by the operation itself (an EXTENDED COPY that
    /// stopped: COPY ABORTED and why).
    Check(Sense),
    /// Answered by the operation itself, status and all (a reservation change made on the
    /// state the LU's gateways share: GOOD, RESERVATION CONFLICT, CHECK CONDITION, BUSY).
    Answer(ScsiOutcome),
}

/// Size of the buffer used to expand WRITE SAME patterns.
const WRITE_SAME_BUF: u64 = 1 << 20;

/// Executes a block request on a backend (an EXTENDED COPY on the backends it names). Does
/// not lock: callers needing COMPARE AND WRITE atomicity go through [`LogicalUnit::run`].
///
/// [`LogicalUnit::run`]: super::LogicalUnit::run
pub fn run(backend: &dyn Backend, req: &BlockRequest<'_>) -> Result<BlockReply, BackendError> {
    let flush_if = |fua: bool| if fua { backend.flush() } else { Ok(()) };
    match req {
        BlockRequest::Read { offset, len } => {
            if let Some(lent) = backend.lend(*offset, *len as u64)? {
                return Ok(BlockReply::Data(Payload::Lent(lent)));
            }
            // A recycled pool buffer holds another command's old bytes: `read_at` fills all of
            // it or fails, and a failed read's buffer is dropped, never sent.
            let mut buf = mem_ffi::pool::global().alloc(*len);
            backend.read_at(&mut buf, *offset)?;
            Ok(BlockReply::Data(buf.into()))
        }
        BlockRequest::Write { offset, data, fua }
        | BlockRequest::AtomicWrite { offset, data, fua } => {
            backend.write_at(data, *offset)?;
            flush_if(*fua)?;
            Ok(BlockReply::Done)
        }
        BlockRequest::OrWrite { offset, data, fua } => {
            let mut medium = vec![0u8; data.len()];
            backend.read_at(&mut medium, *offset)?;
            for (m, d) in medium.iter_mut().zip(data.iter()) {
                *m |= d;
            }
            backend.write_at(&medium, *offset)?;
            flush_if(*fua)?;
            Ok(BlockReply::Done)
        }
        BlockRequest::LbaStatus {
            lba,
            num_blocks,
            block_size,
            alloc,
        } => {
            let mut d = lba_status(backend, *lba, *num_blocks, *block_size, *alloc)?;
            d.truncate(*alloc);
            Ok(BlockReply::Data(Buf::copy_from_slice(&d).into()))
        }
        BlockRequest::Flush => {
            backend.flush()?;
            Ok(BlockReply::Done)
        }
        BlockRequest::Unmap { ranges } => {
            for &(offset, len) in ranges {
                deallocate(backend, offset, len)?;
            }
            Ok(BlockReply::Done)
        }
        BlockRequest::WriteSame {
            offset,
            len,
            pattern,
            unmap,
            fua,
        } => {
            match pattern.filter(|p| p.iter().any(|&b| b != 0)) {
                None if *unmap => deallocate(backend, *offset, *len)?,
                None => backend.write_zeroes(*offset, *len)?,
                Some(p) => write_pattern(backend, *offset, *len, p)?,
            }
            flush_if(*fua)?;
            Ok(BlockReply::Done)
        }
        BlockRequest::CompareAndWrite {
            offset,
            compare,
            write,
            fua,
        } => {
            if let Some(at) = first_difference(backend, *offset, compare)? {
                return Ok(BlockReply::Miscompare { offset: at });
            }
            backend.write_at(write, *offset)?;
            flush_if(*fua)?;
            Ok(BlockReply::Done)
        }
        BlockRequest::Compare { offset, expected } => {
            Ok(match first_difference(backend, *offset, expected)? {
                Some(at) => BlockReply::Miscompare { offset: at },
                None => BlockReply::Done,
            })
        }
        // The job carries its own source and destination backends.
        BlockRequest::Copy(job) => Ok(job.run()),
        BlockRequest::SaveReservations(reservations) => Ok(match reservations.save() {
            Ok(()) => BlockReply::Done,
            Err(s) => BlockReply::Check(s),
        }),
        BlockRequest::ChangeSharedReservations(reservations, change) => {
            Ok(BlockReply::Answer(reservations.change_shared(change)))
        }
    }
}

/// Most LBA status descriptors returned by one GET LBA STATUS.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Builds GET LBA STATUS parameter data (SBC-3 5.6.2) from the backend's allocation map:
/// 8-byte header, then 16-byte descriptors (LBA, block count, provisioning status
/// 0 = mapped, 1 = deallocated) starting at `lba`, as many as fit in `alloc` (at least one,
/// at most [`MAX_LBA_STATUS_DESCRIPTORS`]).
fn lba_status(
    backend: &dyn Backend,
    lba: u64,
    num_blocks: u64,
    block_size: u64,
    alloc: usize,
) -> Result<Vec<u8>, BackendError> {
    let bs = block_size.max(1);
    let max_descriptors = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut descs: Vec<u8> = Vec::new();
    let mut pos = lba;
    while pos < num_blocks && descs.len() / 16 < max_descriptors {
        // At most u32::MAX blocks per descriptor.
        let span = (num_blocks - pos).min(u64::from(u32::MAX));
        let (mapped, bytes) = backend.allocation(pos * bs, span * bs)?;
        let blocks = (bytes / bs).clamp(1, span);
        descs.extend_from_slice(&pos.to_be_bytes());
        descs.extend_from_slice(&(blocks as u32).to_be_bytes());
        descs.push(u8::from(!mapped));
        descs.extend_from_slice(&[0; 3]);
        pos += blocks;
    }
    let mut d = ((descs.len() + 4) as u32).to_be_bytes().to_vec();
    d.extend_from_slice(&[0; 4]);
    d.extend_from_slice(&descs);
    Ok(d)
}

/// Discards when the backend can (reads then return zeroes), else writes zeroes.
fn deallocate(backend: &dyn Backend, offset: u64, len: u64) -> Result<(), BackendError> {
    if backend.supports_discard() {
        backend.discard(offset, len)
    } else {
        backend.write_zeroes(offset, len)
    }
}

/// Writes `pattern` repeatedly over `len` bytes (a whole number of patterns) at `offset`.
fn write_pattern(
    backend: &dyn Backend,
    offset: u64,
    len: u64,
    pattern: &[u8],
) -> Result<(), BackendError> {
    let plen = pattern.len() as u64;
    let per_buf = (WRITE_SAME_BUF / plen).max(1);
    let buf: Vec<u8> = pattern.repeat(per_buf.min(len / plen) as usize);
    crate::stats::count_payload_copy(buf.len());
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64);
        backend.write_at(&buf[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// Reads the medium at `offset` and returns the offset of the first byte differing from
/// `expected`, if any.
fn first_difference(
    backend: &dyn Backend,
    offset: u64,
    expected: &[u8],
) -> Result<Option<u64>, BackendError> {
    let mut medium = vec![0u8; expected.len()];
    backend.read_at(&mut medium, offset)?;
    Ok(medium
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .map(|p| p as u64))
}

/// Maps the result of a block request to the SCSI outcome.
pub fn finish(
    request: &BlockRequest<'_>,
    result: Result<BlockReply, BackendError>,
    data_out_length: u32,
) -> ScsiOutcome {
    outcome(request.is_read(), result, data_out_length)
}

/// The outcome of a block operation that only read the medium (`is_read`) or wrote it.
fn outcome(
    is_read: bool,
    result: Result<BlockReply, BackendError>,
    data_out_length: u32,
) -> ScsiOutcome {
    let outcome = match result {
        Ok(BlockReply::Done) => ScsiOutcome::good(),
        Ok(BlockReply::Data(d)) => ScsiOutcome::with_buf(d),
        Ok(BlockReply::Miscompare { offset }) => ScsiOutcome::from_sense(&Sense {
            information: Some(u32::try_from(offset).unwrap_or(u32::MAX)),
            ..Sense::new(sense::MISCOMPARE, sense::MISCOMPARE_DURING_VERIFY)
        }),
        Ok(BlockReply::Check(s)) => ScsiOutcome::from_sense(&s),
        Ok(BlockReply::Answer(answer)) => answer,
        // The backend gave up waiting (an RBD operation past its timeout): nothing is known
        // to have failed, so the initiator is asked to retry (SAM-5 5.3.1, BUSY).
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            log::warn!("backend I/O timed out, answering BUSY: {e}");
            ScsiOutcome {
                status: super::status::BUSY,
                ..ScsiOutcome::good()
            }
        }
        Err(e) => {
            log::error!("backend I/O failed: {e}");
            let s = if e.is_out_of_space() {
                Sense::new(sense::DATA_PROTECT, sense::SPACE_ALLOCATION_FAILED)
            } else if e.kind() == std::io::ErrorKind::InvalidInput {
                Sense::new(sense::HARDWARE_ERROR, sense::INTERNAL_TARGET_FAILURE)
            } else if is_read {
                Sense::new(sense::MEDIUM_ERROR, sense::UNRECOVERED_READ_ERROR)
            } else {
                Sense::new(sense::MEDIUM_ERROR, sense::WRITE_ERROR)
            };
            ScsiOutcome::from_sense(&s)
        }
    };
    outcome.with_data_out_length(data_out_length)
}
