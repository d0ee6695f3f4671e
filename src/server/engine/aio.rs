//! Commands on asynchronous backends (RBD): planned on the engine thread, handed to the
//! backend with their buffers, and finished on the same engine thread once the backend's
//! completion (on one of its own threads) has posted them back to the thread's inbox.

use mem_ffi::Buf;

use crate::backend::{AsyncOp, AsyncReply, BackendError};
use crate::scsi::{BlockReply, BlockRequest, Primitive, ScsiOutcome};

/// An asynchronous operation decided by planning, before the command's Data-Out is handed
/// over (written ranges are parts of Data-Out, located by offset).
pub(super) enum Planned {
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
        fua: bool,
    },
    Flush,
    Discard {
        ranges: Vec<(u64, u64)>,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// Compare Data-Out's first `len` bytes, write its next `len`.
    CompareAndWrite {
        offset: u64,
        len: usize,
        fua: bool,
    },
}

impl Planned {
    /// The operation for `request`, if an asynchronous backend runs it; `data_out` is the
    /// command's Data-Out (a write whose data is not where expected in it goes elsewhere).
    pub(super) fn of(request: &BlockRequest<'_>, data_out: &[u8]) -> Option<Planned> {
        Some(match request {
            BlockRequest::Read { offset, len } => Planned::Read {
                offset: *offset,
                len: *len,
            },
            BlockRequest::Write { offset, data, fua } if starts_at(data, data_out, 0) => {
                Planned::Write {
                    offset: *offset,
                    len: data.len(),
                    fua: *fua,
                }
            }
            BlockRequest::Flush => Planned::Flush,
            BlockRequest::Unmap { ranges } => Planned::Discard {
                ranges: ranges.clone(),
            },
            // Zeroes: deallocated with UNMAP set, else written as zeroes. A non-zero
            // pattern runs on the blocking pool.
            BlockRequest::WriteSame {
                offset,
                len,
                pattern,
                unmap,
                fua,
            } if pattern.map_or(true, |p| p.iter().all(|&b| b == 0)) => {
                if *unmap && !*fua {
                    Planned::Discard {
                        ranges: vec![(*offset, *len)],
                    }
                } else {
                    // A discard has no FUA variant: zeroing does, through the flush after it.
                    Planned::WriteZeroes {
                        offset: *offset,
                        len: *len,
                        fua: *fua,
                    }
                }
            }
            BlockRequest::CompareAndWrite {
                offset,
                compare,
                write,
                fua,
            } if starts_at(compare, data_out, 0)
                && starts_at(write, data_out, compare.len())
                && write.len() == compare.len() =>
            {
                Planned::CompareAndWrite {
                    offset: *offset,
                    len: compare.len(),
                    fua: *fua,
                }
            }
            _ => return None,
        })
    }

    /// The operation, given the command's Data-Out.
    pub(super) fn into_op(self, mut data_out: Buf) -> AsyncOp {
        match self {
            Planned::Read { offset, len } => AsyncOp::Read { offset, len },
            Planned::Write { offset, len, fua } => {
                data_out.truncate(len);
                AsyncOp::Write {
                    offset,
                    data: data_out,
                    fua,
                }
            }
            Planned::Flush => AsyncOp::Flush,
            Planned::Discard { ranges } => AsyncOp::Discard { ranges },
            Planned::WriteZeroes { offset, len, fua } => AsyncOp::WriteZeroes { offset, len, fua },
            Planned::CompareAndWrite { offset, len, fua } => {
                // The write half goes to a buffer of its own (one copy of one or a few
                // blocks: COMPARE AND WRITE is rare and short).
                let data = Buf::copy_from_slice(&data_out[len..2 * len]);
                data_out.truncate(len);
                AsyncOp::CompareAndWrite {
                    offset,
                    compare: data_out,
                    data,
                    fua,
                }
            }
        }
    }

    /// Whether the operation only reads the medium (decides the sense of a failure).
    pub(super) fn is_read(&self) -> bool {
        matches!(self, Planned::Read { .. })
    }
}

/// Whether `part` is the slice of `data_out` starting at byte `at`.
fn starts_at(part: &[u8], data_out: &[u8], at: usize) -> bool {
    data_out
        .get(at..at + part.len())
        .is_some_and(|s| s.as_ptr() == part.as_ptr())
}

/// The SCSI outcome of a finished asynchronous operation.
pub(super) fn outcome(
    is_read: bool,
    result: Result<AsyncReply, BackendError>,
    data_out_length: u32,
) -> ScsiOutcome {
    let result = result.map(|reply| match reply {
        AsyncReply::Done => BlockReply::Done,
        AsyncReply::Data(data) => BlockReply::Data(data.into()),
        AsyncReply::Miscompare { offset } => BlockReply::Miscompare { offset },
    });
    // The primitives map results exactly as `finish` does; only read-or-not matters.
    let kind = if is_read {
        Primitive::Read { offset: 0, len: 0 }
    } else {
        Primitive::Flush
    };
    kind.finish(result, data_out_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_take_their_data_from_data_out() {
        let data_out = Buf::copy_from_slice(&[7u8; 1024]);
        let write = BlockRequest::Write {
            offset: 4096,
            data: &data_out[..512],
            fua: true,
        };
        let planned = Planned::of(&write, &data_out).unwrap();
        assert!(!planned.is_read());
        assert_eq!(
            planned.into_op(data_out.clone()),
            AsyncOp::Write {
                offset: 4096,
                data: Buf::copy_from_slice(&[7; 512]),
                fua: true
            }
        );
        // Data that is not Data-Out's prefix (a copy) is not planned.
        let copy = vec![7u8; 512];
        let elsewhere = BlockRequest::Write {
            offset: 0,
            data: &copy,
            fua: false,
        };
        assert!(Planned::of(&elsewhere, &data_out).is_none());
    }

    #[test]
    fn compare_and_write_splits_data_out() {
        let mut data_out = Buf::copy_from_slice(&[1u8; 512]);
        data_out.extend_from_slice(&[2u8; 512]);
        let caw = BlockRequest::CompareAndWrite {
            offset: 512,
            compare: &data_out[..512],
            write: &data_out[512..],
            fua: false,
        };
        let op = Planned::of(&caw, &data_out)
            .unwrap()
            .into_op(data_out.clone());
        assert_eq!(
            op,
            AsyncOp::CompareAndWrite {
                offset: 512,
                compare: Buf::copy_from_slice(&[1; 512]),
                data: Buf::copy_from_slice(&[2; 512]),
                fua: false
            }
        );
    }

    #[test]
    fn write_same_zeroes_discard_or_zero_and_patterns_do_not_plan() {
        let zero = [0u8; 512];
        let plan = |pattern: Option<&[u8]>, unmap, fua| {
            let req = BlockRequest::WriteSame {
                offset: 0,
                len: 8192,
                pattern,
                unmap,
                fua,
            };
            Planned::of(&req, &[]).map(|p| p.into_op(Buf::empty()))
        };
        assert_eq!(
            plan(Some(&zero), true, false),
            Some(AsyncOp::Discard {
                ranges: vec![(0, 8192)]
            })
        );
        assert_eq!(
            plan(None, false, true),
            Some(AsyncOp::WriteZeroes {
                offset: 0,
                len: 8192,
                fua: true
            })
        );
        assert_eq!(plan(Some(&[1u8; 512]), true, false), None);
    }

    #[test]
    fn outcomes_map_like_the_synchronous_path() {
        assert!(outcome(false, Ok(AsyncReply::Done), 0).sense.is_empty());
        let read = outcome(
            true,
            Ok(AsyncReply::Data(Buf::copy_from_slice(&[5; 512]))),
            0,
        );
        assert_eq!(read.data_in, vec![5; 512]);
        let miscompare = outcome(false, Ok(AsyncReply::Miscompare { offset: 3 }), 1024);
        assert_eq!(miscompare.sense[2] & 0x0F, 0x0E, "MISCOMPARE");
        let failed = outcome(
            true,
            Err(BackendError::new(std::io::ErrorKind::Other, "osd down")),
            0,
        );
        assert_eq!(failed.sense[2] & 0x0F, 0x03, "MEDIUM ERROR");
        assert_eq!(failed.sense[12], 0x11, "UNRECOVERED READ ERROR");
    }
}
