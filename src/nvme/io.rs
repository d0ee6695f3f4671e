//! NVM command set I/O commands (NVM Command Set 1.0 §3): decoding and checking an SQE against
//! its namespace, and the block operation the environment runs for it. The operation maps onto
//! the SCSI layer's [`BlockRequest`], so the same backends (and [`crate::scsi::run`]) execute
//! it.

use super::command::{io_opcode, Sqe, Status};
use super::config::NamespaceDescriptor;
use crate::backend::{Backend, BackendError};
use crate::scsi::{BlockReply, BlockRequest, NvmeReservation, NvmeReservationKind};
use crate::Buf;

/// Identifies an I/O command handed to the environment, unique within its queue.
pub type IoId = u64;

/// A block operation on a namespace, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    /// Read `len` bytes at `offset`.
    Read { offset: u64, len: usize },
    /// Write the command's data at `offset`; `fua`: durable before completion.
    Write { offset: u64, fua: bool },
    /// Make completed writes durable.
    Flush,
    /// Deallocate each (offset, length) range.
    Deallocate { ranges: Vec<(u64, u64)> },
    /// Zero `len` bytes at `offset`, deallocating when `deallocate` (DEAC) allows.
    WriteZeroes {
        offset: u64,
        len: u64,
        deallocate: bool,
        fua: bool,
    },
    /// Compare the command's data with the medium at `offset`.
    Compare { offset: u64 },
    /// A reservation command, run on the namespace's LUN's reservations.
    Reservation(NvmeReservation),
}

impl IoOp {
    /// Whether the operation answers with data for the host (Read, Reservation Report).
    pub fn returns_data(&self) -> bool {
        matches!(
            self,
            IoOp::Read { .. }
                | IoOp::Reservation(NvmeReservation {
                    kind: NvmeReservationKind::Report,
                    ..
                })
        )
    }
}

/// An I/O command for the environment to run: answer with
/// [`super::Queue::handle_io_complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoCommand {
    pub id: IoId,
    pub nsid: u32,
    pub op: IoOp,
    /// The host's data for Write and Compare (empty otherwise): the pool buffer it was
    /// received into, which the backend writes from.
    pub data: Buf,
}

impl IoCommand {
    /// The operation as the SCSI layer's block request (borrowing the data); a reservation
    /// command has none (it runs on the LUN's reservations, see [`crate::nvme::scsi::lower`]).
    pub fn block_request(&self) -> Option<BlockRequest<'_>> {
        Some(match &self.op {
            IoOp::Read { offset, len } => BlockRequest::Read {
                offset: *offset,
                len: *len,
            },
            IoOp::Write { offset, fua } => BlockRequest::Write {
                offset: *offset,
                data: &self.data,
                fua: *fua,
            },
            IoOp::Flush => BlockRequest::Flush,
            IoOp::Deallocate { ranges } => BlockRequest::Unmap {
                ranges: ranges.clone(),
            },
            IoOp::WriteZeroes {
                offset,
                len,
                deallocate,
                fua,
            } => BlockRequest::WriteSame {
                offset: *offset,
                len: *len,
                pattern: None,
                unmap: *deallocate,
                fua: *fua,
            },
            IoOp::Compare { offset } => BlockRequest::Compare {
                offset: *offset,
                expected: &self.data,
            },
            IoOp::Reservation(_) => return None,
        })
    }

    /// Runs the command synchronously on `backend` (tests, tools; the engine submits the
    /// block request itself). A reservation command, which needs the LUN, is refused.
    pub fn execute(&self, backend: &dyn Backend) -> Result<BlockReply, BackendError> {
        match self.block_request() {
            Some(request) => crate::scsi::run(backend, &request),
            None => Ok(BlockReply::Check(crate::scsi::sense::Sense::new(
                crate::scsi::sense::ILLEGAL_REQUEST,
                crate::scsi::sense::INVALID_COMMAND_OPCODE,
            ))),
        }
    }
}

/// A decoded I/O command: its operation and the host data it needs first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoPlan {
    pub op: IoOp,
    /// Bytes of host data (Write, Compare, Dataset Management ranges).
    pub host_data: usize,
    /// Bytes of data for the host (Read).
    pub controller_data: usize,
    /// First LBA, for the error log.
    pub lba: u64,
}

/// Bytes of one Dataset Management range.
const DSM_RANGE_LEN: usize = 16;
/// Most Dataset Management ranges in one command (NR is 0's based, 8 bits).
pub const DSM_MAX_RANGES: usize = 256;
/// Most logical blocks in one Dataset Management range we accept (DMRSL in Identify CNS 06h):
/// the SCSI layer's largest UNMAP descriptor at the largest block size, so a range always fits
/// one UNMAP descriptor.
pub const DSM_MAX_RANGE_BLOCKS: u32 = crate::scsi::MAX_UNMAP_BYTES / 4096;

/// Decodes an I/O command for namespace `ns`, checking its LBA range, size and write
/// protection. `max_transfer` bounds one command's data (MDTS).
pub fn plan(sqe: &Sqe, ns: &NamespaceDescriptor, max_transfer: u32) -> Result<IoPlan, Status> {
    let shift = ns.lba_shift();
    let slba = sqe.cdw10_11();
    // NLB, 0's based, in CDW12 bits 15:0 (Read, Write, Compare, Write Zeroes).
    let blocks = u64::from(sqe.cdw(12) & 0xFFFF) + 1;
    let fua = sqe.cdw(12) & 1 << 30 != 0;
    let range = || -> Result<(u64, u64), Status> {
        match slba.checked_add(blocks) {
            Some(end) if end <= ns.blocks => Ok((slba << shift, blocks << shift)),
            _ => Err(Status::LBA_OUT_OF_RANGE),
        }
    };
    let transfer = |len: u64| -> Result<usize, Status> {
        if len > u64::from(max_transfer) {
            Err(Status::INVALID_FIELD)
        } else {
            Ok(len as usize)
        }
    };
    let writes = matches!(
        sqe.opcode(),
        io_opcode::WRITE | io_opcode::WRITE_ZEROES | io_opcode::DATASET_MANAGEMENT
    );
    if writes && ns.read_only {
        return Err(Status::NAMESPACE_WRITE_PROTECTED);
    }
    let plan = |op, host_data, controller_data| IoPlan {
        op,
        host_data,
        controller_data,
        lba: slba,
    };
    match sqe.opcode() {
        io_opcode::READ => {
            let (offset, len) = range()?;
            let len = transfer(len)?;
            Ok(plan(IoOp::Read { offset, len }, 0, len))
        }
        io_opcode::WRITE => {
            let (offset, len) = range()?;
            Ok(plan(IoOp::Write { offset, fua }, transfer(len)?, 0))
        }
        io_opcode::COMPARE => {
            let (offset, len) = range()?;
            Ok(plan(IoOp::Compare { offset }, transfer(len)?, 0))
        }
        io_opcode::FLUSH => Ok(plan(IoOp::Flush, 0, 0)),
        io_opcode::WRITE_ZEROES => {
            let (offset, len) = range()?;
            // Bounded like a transfer (WZSL in Identify CNS 06h is MDTS).
            transfer(len)?;
            let deallocate = sqe.cdw(12) & 1 << 25 != 0;
            let op = IoOp::WriteZeroes {
                offset,
                len,
                deallocate,
                fua,
            };
            Ok(plan(op, 0, 0))
        }
        io_opcode::DATASET_MANAGEMENT => {
            let ranges = (sqe.cdw(10) & 0xFF) as usize + 1;
            // Linux sends the range list in a buffer of all 256 ranges whatever NR says
            // (drivers/nvme/host/core.c nvme_setup_discard: alloc_size = sizeof(*range) *
            // NVME_DSM_MAX_RANGES, and the data length is alloc_size): take any data length
            // from NR's ranges up to 256 ranges, and read NR's ranges from it.
            let sgl = sqe.sgl().length as usize;
            let host_data =
                if (ranges * DSM_RANGE_LEN..=DSM_MAX_RANGES * DSM_RANGE_LEN).contains(&sgl) {
                    sgl
                } else {
                    ranges * DSM_RANGE_LEN
                };
            Ok(plan(IoOp::Deallocate { ranges: Vec::new() }, host_data, 0))
        }
        io_opcode::RESERVATION_REGISTER
        | io_opcode::RESERVATION_REPORT
        | io_opcode::RESERVATION_ACQUIRE
        | io_opcode::RESERVATION_RELEASE => {
            let (command, host_data, controller_data) = reservation(sqe)?;
            if controller_data > 0 {
                transfer(controller_data as u64)?;
            }
            Ok(IoPlan {
                op: IoOp::Reservation(command),
                host_data,
                controller_data,
                lba: 0,
            })
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// Bytes of Reservation Register and Acquire data (CRKEY and NRKEY or PRKEY), and of
/// Reservation Release data (CRKEY).
const RESERVATION_KEYS_LEN: usize = 16;
const RESERVATION_KEY_LEN: usize = 8;

/// Decodes a reservation command (NVMe base 2.0): the command for the LUN and the
/// bytes of host data and of data for the host it moves. The fields the command set defines
/// are checked here; the rules that depend on the reservation state are the LUN's.
fn reservation(sqe: &Sqe) -> Result<(NvmeReservation, usize, usize), Status> {
    let kind = match sqe.opcode() {
        io_opcode::RESERVATION_REGISTER => NvmeReservationKind::Register,
        io_opcode::RESERVATION_REPORT => NvmeReservationKind::Report,
        io_opcode::RESERVATION_ACQUIRE => NvmeReservationKind::Acquire,
        _ => NvmeReservationKind::Release,
    };
    let command = NvmeReservation {
        kind,
        cdw10: sqe.cdw(10),
        cdw11: sqe.cdw(11),
    };
    let max_action = match kind {
        NvmeReservationKind::Register | NvmeReservationKind::Acquire => 2,
        NvmeReservationKind::Release => 1,
        NvmeReservationKind::Report => 0,
    };
    if kind != NvmeReservationKind::Report && command.action() > max_action {
        return Err(Status::INVALID_FIELD);
    }
    match kind {
        // CPTPL 01b is reserved.
        NvmeReservationKind::Register if command.cptpl() == 0b01 => Err(Status::INVALID_FIELD),
        NvmeReservationKind::Register => Ok((command, RESERVATION_KEYS_LEN, 0)),
        // IEKEY is only for Register: Acquire and Release have it reserved (NVMe base 2.0).
        NvmeReservationKind::Acquire | NvmeReservationKind::Release if command.ignore_key() => {
            Err(Status::INVALID_FIELD)
        }
        NvmeReservationKind::Acquire if !(1..=6).contains(&command.nvme_type()) => {
            Err(Status::INVALID_FIELD)
        }
        NvmeReservationKind::Acquire => Ok((command, RESERVATION_KEYS_LEN, 0)),
        // Linux's host sends every reservation command with 16 bytes of data (drivers/nvme/
        // host/pr.c nvme_pr_command), Release too, whose data is one 8-byte key: either
        // length is taken.
        NvmeReservationKind::Release => {
            let sgl = sqe.sgl().length as usize;
            let len = if sgl == RESERVATION_KEYS_LEN {
                sgl
            } else {
                RESERVATION_KEY_LEN
            };
            Ok((command, len, 0))
        }
        NvmeReservationKind::Report if !command.extended() => {
            Err(Status::HOST_ID_INCONSISTENT_FORMAT)
        }
        NvmeReservationKind::Report => {
            let len = usize::try_from(command.report_length()).unwrap_or(usize::MAX);
            Ok((command, 0, len))
        }
    }
}

/// Completes a Dataset Management plan with its range list (NVM Command Set 1.0:
/// context attributes, length in blocks, starting LBA). Without the Attribute Deallocate
/// (CDW11 bit 2) the command is only a hint: `None`, nothing to run.
pub fn dataset_management(
    sqe: &Sqe,
    ns: &NamespaceDescriptor,
    data: &[u8],
) -> Result<Option<IoOp>, Status> {
    if sqe.cdw(11) & 1 << 2 == 0 {
        return Ok(None);
    }
    let shift = ns.lba_shift();
    let count = (sqe.cdw(10) & 0xFF) as usize + 1;
    let data = data.get(..count * DSM_RANGE_LEN).unwrap_or(data);
    let mut ranges = Vec::with_capacity(data.len() / DSM_RANGE_LEN);
    for r in data.chunks_exact(DSM_RANGE_LEN) {
        let length = u32::from_le_bytes(r[4..8].try_into().expect("4 bytes"));
        if length > DSM_MAX_RANGE_BLOCKS {
            return Err(Status::INVALID_FIELD);
        }
        let blocks = u64::from(length);
        let slba = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
        match slba.checked_add(blocks) {
            Some(end) if end <= ns.blocks => {}
            _ => return Err(Status::LBA_OUT_OF_RANGE),
        }
        if blocks > 0 {
            ranges.push((slba << shift, blocks << shift));
        }
    }
    Ok(Some(IoOp::Deallocate { ranges }))
}

/// The status of a failed backend operation: media errors for reads and writes
/// (base 2.0), Capacity Exceeded when thin storage ran out of space.
pub fn backend_status(op: &IoOp, error: &BackendError) -> Status {
    if error.is_out_of_space() {
        Status::CAPACITY_EXCEEDED
    } else if matches!(op, IoOp::Read { .. } | IoOp::Compare { .. }) {
        Status::UNRECOVERED_READ_ERROR
    } else {
        Status::WRITE_FAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::RamBackend;

    fn ns(read_only: bool) -> NamespaceDescriptor {
        NamespaceDescriptor {
            nsid: 1,
            block_size: 512,
            blocks: 100,
            read_only,
            volatile_write_cache: false,
            thin: true,
            nguid: [0; 16],
            eui64: [0; 8],
            uuid: [0; 16],
            persistent_reservations: false,
        }
    }

    fn sqe(opcode: u8, slba: u64, nlb0: u16, cdw12_flags: u32) -> Sqe {
        let mut b = [0u8; 64];
        b[0] = opcode;
        b[40..48].copy_from_slice(&slba.to_le_bytes());
        b[48..52].copy_from_slice(&(u32::from(nlb0) | cdw12_flags).to_le_bytes());
        Sqe(b)
    }

    #[test]
    fn read_write_ranges() {
        let p = plan(&sqe(io_opcode::READ, 98, 1, 0), &ns(false), 1 << 20).unwrap();
        assert_eq!(
            p.op,
            IoOp::Read {
                offset: 98 * 512,
                len: 1024
            }
        );
        assert_eq!(
            plan(&sqe(io_opcode::READ, 99, 1, 0), &ns(false), 1 << 20),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            plan(&sqe(io_opcode::READ, u64::MAX, 0, 0), &ns(false), 1 << 20),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        let w = plan(&sqe(io_opcode::WRITE, 0, 7, 1 << 30), &ns(false), 1 << 20).unwrap();
        assert_eq!(
            (w.op, w.host_data),
            (
                IoOp::Write {
                    offset: 0,
                    fua: true
                },
                4096
            )
        );
        assert_eq!(
            plan(&sqe(io_opcode::WRITE, 0, 7, 0), &ns(true), 1 << 20),
            Err(Status::NAMESPACE_WRITE_PROTECTED)
        );
        assert_eq!(
            plan(&sqe(io_opcode::READ, 0, 7, 0), &ns(false), 2048),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(
            plan(&sqe(0x7E, 0, 0, 0), &ns(false), 2048),
            Err(Status::INVALID_OPCODE)
        );
    }

    #[test]
    fn dataset_management_ranges_run_on_a_backend() {
        let backend = RamBackend::new(100 * 512);
        backend.write_at(&[0xAB; 100 * 512], 0).unwrap();
        let mut s = sqe(io_opcode::DATASET_MANAGEMENT, 0, 0, 0);
        s.0[44..48].copy_from_slice(&4u32.to_le_bytes()); // AD
        let mut data = vec![0u8; 16];
        data[4..8].copy_from_slice(&2u32.to_le_bytes());
        data[8..16].copy_from_slice(&10u64.to_le_bytes());
        let op = dataset_management(&s, &ns(false), &data).unwrap().unwrap();
        assert_eq!(
            op,
            IoOp::Deallocate {
                ranges: vec![(5120, 1024)]
            }
        );
        let cmd = IoCommand {
            id: 1,
            nsid: 1,
            op,
            data: Buf::empty(),
        };
        cmd.execute(&backend).unwrap();
        let mut buf = vec![0u8; 2048];
        backend.read_at(&mut buf, 4608).unwrap();
        assert_eq!(&buf[..512], &[0xAB; 512]);
        assert_eq!(&buf[512..1536], &[0; 1024]);
        data[8..16].copy_from_slice(&99u64.to_le_bytes());
        assert_eq!(
            dataset_management(&s, &ns(false), &data),
            Err(Status::LBA_OUT_OF_RANGE)
        );
        s.0[44] = 0;
        assert_eq!(dataset_management(&s, &ns(false), &data), Ok(None));
    }
}
