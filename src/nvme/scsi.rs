//! NVMe I/O lowered to SCSI: an [`IoCommand`] becomes the SCSI command of the same meaning on
//! the namespace's LUN, so the LUN code that serves iSCSI (planning, the I/O gate, the engine's
//! io_uring and asynchronous paths, reservations) serves NVMe/TCP unchanged, and its outcome
//! (status and sense data) maps back to an NVMe status.
//!
//! | NVMe | SCSI |
//! |---|---|
//! | Read | READ(16) |
//! | Write (FUA) | WRITE(16) (FUA) |
//! | Flush | SYNCHRONIZE CACHE(16), whole medium |
//! | Compare | VERIFY(16) with BYTCHK=01b |
//! | Write Zeroes | WRITE SAME(16) with NDOB (UNMAP when DEAC); with FUA a WRITE(16) FUA of zeroes |
//! | Dataset Management (deallocate) | UNMAP |
//! | Reservation Register, Report, Acquire, Release | the LUN's reservations, in the CDB that carries them ([`crate::scsi::NvmeReservation`]) |
//!
//! Because the SCSI layer checks reservations on every command, a SCSI persistent reservation
//! held by an iSCSI initiator fences NVMe hosts too (Reservation Conflict).

use super::command::Status;
use super::io::{IoCommand, IoOp};
use crate::iscsi::bytes::CdbBytes;
use crate::iscsi::{ScsiTask, TaskKind};
use crate::scsi::{
    sense, status, NvmeReservationKind, ScsiOutcome, TaskAttr, NVME_RESERVATION_OPCODE,
};
use crate::Buf;

/// The SCSI operation codes used (SBC-3).
mod op {
    pub const UNMAP: u8 = 0x42;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
}

/// The SCSI task for `io` on LUN `lun` of target `target`, whose blocks are `block_size` bytes.
/// The task's id is the I/O's id; the host's data buffer becomes the task's Data-Out as it is.
pub fn lower(io: IoCommand, target: usize, lun: u64, block_size: u32) -> ScsiTask {
    let IoCommand {
        id,
        op: operation,
        data,
        ..
    } = io;
    let bs = u64::from(block_size);
    let mut cdb = [0u8; 16];
    let rw = |cdb: &mut [u8; 16], opcode: u8, offset: u64, len: u64| {
        cdb[0] = opcode;
        cdb[2..10].copy_from_slice(&(offset / bs).to_be_bytes());
        cdb[10..14].copy_from_slice(&((len / bs) as u32).to_be_bytes());
    };
    let (data_out, expected) = match &operation {
        IoOp::Read { offset, len } => {
            rw(&mut cdb, op::READ_16, *offset, *len as u64);
            (Buf::empty(), *len)
        }
        IoOp::Write { offset, fua } => {
            rw(&mut cdb, op::WRITE_16, *offset, data.len() as u64);
            if *fua {
                cdb[1] |= 0x08;
            }
            let len = data.len();
            (data, len)
        }
        IoOp::Flush => {
            cdb[0] = op::SYNCHRONIZE_CACHE_16;
            (Buf::empty(), 0)
        }
        IoOp::Compare { offset } => {
            rw(&mut cdb, op::VERIFY_16, *offset, data.len() as u64);
            cdb[1] = 0x01 << 1; // BYTCHK 01b: compare Data-Out with the medium
            let len = data.len();
            (data, len)
        }
        IoOp::WriteZeroes {
            offset, len, fua, ..
        } if *fua => {
            // WRITE SAME has no FUA bit: zeroes written with FUA are a WRITE(16) FUA of a
            // zeroed buffer (Write Zeroes is bounded by MDTS, so the buffer is small). DEAC is
            // only a hint (NVM Command Set 1.0 §3.2.8) and is dropped.
            rw(&mut cdb, op::WRITE_16, *offset, *len);
            cdb[1] |= 0x08;
            let mut zeroes = mem_ffi::pool::global().alloc(*len as usize);
            zeroes.fill(0);
            (zeroes, *len as usize)
        }
        IoOp::WriteZeroes {
            offset,
            len,
            deallocate,
            ..
        } => {
            rw(&mut cdb, op::WRITE_SAME_16, *offset, *len);
            cdb[1] = 0x01; // NDOB: no Data-Out, the blocks become zeroes
            if *deallocate {
                cdb[1] |= 0x08; // UNMAP
            }
            (Buf::empty(), 0)
        }
        IoOp::Deallocate { ranges } => {
            let list = unmap_list(ranges, bs);
            cdb[0] = op::UNMAP;
            cdb[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
            let len = list.len();
            (Buf::copy_from_slice(&list), len)
        }
        IoOp::Reservation(command) => {
            let carrier = command.cdb();
            cdb[..carrier.len()].copy_from_slice(&carrier);
            let expected = match command.kind {
                NvmeReservationKind::Report => command.report_length() as usize,
                _ => data.len(),
            };
            (data, expected)
        }
    };
    let cdb_len = match cdb[0] {
        op::UNMAP | NVME_RESERVATION_OPCODE => 10,
        _ => 16,
    };
    ScsiTask {
        kind: TaskKind::Command,
        id,
        target,
        lun,
        cdb: CdbBytes::concat(&cdb[..cdb_len], &[]),
        data_out,
        expected_transfer_length: expected as u32,
        attribute: TaskAttr::Simple,
    }
}

/// The UNMAP parameter list (SBC-3 5.28.2) for byte ranges on blocks of `bs` bytes; each range
/// fits one descriptor (the core bounds ranges by DMRSL).
fn unmap_list(ranges: &[(u64, u64)], bs: u64) -> Vec<u8> {
    let mut list = vec![0u8; 8 + 16 * ranges.len()];
    let n = list.len();
    list[0..2].copy_from_slice(&((n - 2) as u16).to_be_bytes());
    list[2..4].copy_from_slice(&((n - 8) as u16).to_be_bytes());
    for (i, (offset, len)) in ranges.iter().enumerate() {
        let d = &mut list[8 + 16 * i..24 + 16 * i];
        d[0..8].copy_from_slice(&(offset / bs).to_be_bytes());
        d[8..12].copy_from_slice(&((len / bs) as u32).to_be_bytes());
    }
    list
}

/// The NVMe status of a SCSI outcome (NVMe base 2.0 generic and media statuses for the SCSI
/// status and sense key / additional sense code).
pub fn status_of(outcome: &ScsiOutcome) -> Status {
    match outcome.status {
        status::GOOD => Status::SUCCESS,
        status::RESERVATION_CONFLICT => Status::RESERVATION_CONFLICT,
        status::CHECK_CONDITION => {
            let s = &outcome.sense;
            let key = s.get(2).map_or(0, |k| k & 0x0F);
            let asc = (
                s.get(12).copied().unwrap_or(0),
                s.get(13).copied().unwrap_or(0),
            );
            match key {
                sense::MEDIUM_ERROR if asc.0 == sense::UNRECOVERED_READ_ERROR.0 => {
                    Status::UNRECOVERED_READ_ERROR
                }
                sense::MEDIUM_ERROR => Status::WRITE_FAULT,
                sense::MISCOMPARE => Status::COMPARE_FAILURE,
                sense::DATA_PROTECT if asc == sense::SPACE_ALLOCATION_FAILED => {
                    Status::CAPACITY_EXCEEDED
                }
                sense::DATA_PROTECT => Status::NAMESPACE_WRITE_PROTECTED,
                sense::ILLEGAL_REQUEST if asc == sense::LBA_OUT_OF_RANGE => {
                    Status::LBA_OUT_OF_RANGE
                }
                sense::ILLEGAL_REQUEST if asc == sense::LU_NOT_SUPPORTED => {
                    Status::INVALID_NAMESPACE
                }
                sense::ILLEGAL_REQUEST => Status::INVALID_FIELD,
                // The LUN's target port group is in ALUA standby (this gateway is not the one
                // serving it): the NVMe path-related status, so a multipathing host tries
                // another path.
                sense::NOT_READY if asc == (0x04, 0x0B) => Status::ASYMMETRIC_ACCESS_INACCESSIBLE,
                // A unit attention or a LUN not ready: the command did not run; the host may
                // retry (DNR clear).
                sense::UNIT_ATTENTION | sense::NOT_READY => Status::NAMESPACE_NOT_READY,
                _ => Status::INTERNAL_ERROR,
            }
        }
        _ => Status::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{Nexus, Prepared, ScsiRequest, ScsiTarget};

    fn target() -> ScsiTarget {
        ScsiTarget::new(vec![crate::scsi::testutil::ram_lu(64, 512)])
    }

    fn run(target: &ScsiTarget, io: IoCommand) -> ScsiOutcome {
        let task = lower(io, 0, 0, 512);
        let nexus = Nexus::nvme("nqn.2014-08.org.nvmexpress:uuid:host", [7; 16]);
        let request = ScsiRequest {
            nexus: &nexus,
            lun: task.lun,
            cdb: &task.cdb,
            data_out: &task.data_out,
            expected_transfer_length: task.expected_transfer_length,
            task_attr: task.attribute,
        };
        match target.prepare(&request) {
            Prepared::Done(outcome) => outcome,
            Prepared::Io {
                lu,
                request,
                data_out_length,
                ..
            } => crate::scsi::finish(
                &request,
                crate::scsi::run(&**lu.backend(), &request),
                data_out_length,
            ),
        }
    }

    fn io(op: IoOp, data: Vec<u8>) -> IoCommand {
        IoCommand {
            id: 1,
            nsid: 1,
            op,
            data: Buf::copy_from_slice(&data),
        }
    }

    fn read(target: &ScsiTarget, offset: u64, len: usize) -> Vec<u8> {
        let outcome = run(target, io(IoOp::Read { offset, len }, Vec::new()));
        assert_eq!(status_of(&outcome), Status::SUCCESS);
        outcome.data_in.to_vec()
    }

    /// SCSI unit attentions are for iSCSI nexuses: an NVMe host hears of an ALUA change by
    /// its ANA notice and would otherwise fail its next command once with Namespace Not Ready.
    #[test]
    fn nvme_commands_see_no_scsi_unit_attention() {
        let t = target();
        read(&t, 0, 512);
        let lu = t.lun(0).expect("LUN 0");
        assert!(lu.set_alua_state(crate::scsi::AluaState::ActiveNonOptimized));
        assert_eq!(read(&t, 0, 512), vec![0; 512]);
    }

    #[test]
    fn every_io_runs_on_the_lun_as_its_scsi_equivalent() {
        let t = target();
        let write = |offset, data: Vec<u8>, fua| io(IoOp::Write { offset, fua }, data);
        assert_eq!(
            status_of(&run(&t, write(1024, vec![0xA5; 2048], true))),
            Status::SUCCESS
        );
        assert_eq!(read(&t, 1024, 2048), vec![0xA5; 2048]);
        let compare = |data| io(IoOp::Compare { offset: 1024 }, data);
        assert_eq!(
            status_of(&run(&t, compare(vec![0xA5; 1024]))),
            Status::SUCCESS
        );
        assert_eq!(
            status_of(&run(&t, compare(vec![0x5A; 1024]))),
            Status::COMPARE_FAILURE
        );
        assert_eq!(
            status_of(&run(&t, io(IoOp::Flush, Vec::new()))),
            Status::SUCCESS
        );
        for (fua, deallocate) in [(false, false), (false, true), (true, true)] {
            run(&t, write(0, vec![0xEE; 4096], false));
            let zero = IoOp::WriteZeroes {
                offset: 512,
                len: 1024,
                deallocate,
                fua,
            };
            assert_eq!(status_of(&run(&t, io(zero, Vec::new()))), Status::SUCCESS);
            let back = read(&t, 0, 2048);
            assert_eq!(&back[..512], &[0xEE; 512]);
            assert_eq!(&back[512..1536], &[0; 1024], "fua {fua} deac {deallocate}");
            assert_eq!(&back[1536..], &[0xEE; 512]);
        }
        run(&t, write(0, vec![0x11; 8192], false));
        let dealloc = IoOp::Deallocate {
            ranges: vec![(512, 512), (4096, 1024)],
        };
        assert_eq!(
            status_of(&run(&t, io(dealloc, Vec::new()))),
            Status::SUCCESS
        );
        let back = read(&t, 0, 8192);
        assert_eq!(&back[..512], &[0x11; 512]);
        assert_eq!(&back[512..1024], &[0; 512]);
        assert_eq!(&back[4096..5120], &[0; 1024]);
        assert_eq!(&back[5120..], &[0x11; 3072]);
        let empty = IoOp::Deallocate { ranges: Vec::new() };
        assert_eq!(status_of(&run(&t, io(empty, Vec::new()))), Status::SUCCESS);
    }

    /// A persistent reservation an iSCSI initiator holds fences NVMe hosts (docs/nvme.md).
    #[test]
    fn a_scsi_reservation_fences_nvme_writes() {
        let t = target();
        let iscsi = Nexus::iscsi("iqn.2026-11.org.example:initiator", [0x80, 0, 0, 0, 0, 1]);
        let prout = |service_action: u8, rtype: u8, rk: u64, sark: u64| {
            let mut cdb = [0u8; 10];
            cdb[0] = 0x5F;
            cdb[1] = service_action;
            cdb[2] = rtype;
            cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
            let mut list = [0u8; 24];
            list[0..8].copy_from_slice(&rk.to_be_bytes());
            list[8..16].copy_from_slice(&sark.to_be_bytes());
            let request = ScsiRequest {
                nexus: &iscsi,
                lun: 0,
                cdb: &cdb,
                data_out: &list,
                expected_transfer_length: 24,
                task_attr: TaskAttr::Simple,
            };
            match t.prepare(&request) {
                Prepared::Done(outcome) => outcome.status,
                Prepared::Io { .. } => panic!("PR OUT is not I/O"),
            }
        };
        assert_eq!(prout(0x00, 0, 0, 7), status::GOOD, "REGISTER");
        assert_eq!(
            prout(0x01, 0x01, 7, 0),
            status::GOOD,
            "RESERVE, Write Exclusive"
        );
        let write = io(
            IoOp::Write {
                offset: 0,
                fua: false,
            },
            vec![1; 512],
        );
        assert_eq!(status_of(&run(&t, write)), Status::RESERVATION_CONFLICT);
        // Reads are allowed under Write Exclusive.
        assert_eq!(read(&t, 0, 512), vec![0; 512]);
    }

    #[test]
    fn scsi_failures_become_nvme_statuses() {
        let t = target();
        let beyond = io(
            IoOp::Read {
                offset: 64 * 512,
                len: 512,
            },
            Vec::new(),
        );
        assert_eq!(status_of(&run(&t, beyond)), Status::LBA_OUT_OF_RANGE);
        let check = |key, asc| ScsiOutcome::check_condition(key, asc, 0);
        assert_eq!(
            status_of(&check(sense::MEDIUM_ERROR, 0x11)),
            Status::UNRECOVERED_READ_ERROR
        );
        assert_eq!(
            status_of(&check(sense::MEDIUM_ERROR, 0x0C)),
            Status::WRITE_FAULT
        );
        assert_eq!(
            status_of(&check(sense::DATA_PROTECT, 0x27)),
            Status::NAMESPACE_WRITE_PROTECTED
        );
        assert_eq!(
            status_of(&ScsiOutcome::check_condition(
                sense::DATA_PROTECT,
                0x27,
                0x07
            )),
            Status::CAPACITY_EXCEEDED
        );
        assert_eq!(
            status_of(&check(sense::HARDWARE_ERROR, 0x44)),
            Status::INTERNAL_ERROR
        );
        assert_eq!(
            status_of(&check(sense::UNIT_ATTENTION, 0x29)),
            Status::NAMESPACE_NOT_READY
        );
        assert_eq!(
            status_of(&ScsiOutcome::check_condition(sense::NOT_READY, 0x04, 0x0B)),
            Status::ASYMMETRIC_ACCESS_INACCESSIBLE
        );
        let conflict = ScsiOutcome {
            status: status::RESERVATION_CONFLICT,
            ..ScsiOutcome::good()
        };
        assert_eq!(status_of(&conflict), Status::RESERVATION_CONFLICT);
    }
}
