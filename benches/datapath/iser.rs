//! iSER in process: the sans-IO `iscsi::iser::IserConnection` (the core and the iSER datamover)
//! configured as the server configures its iSER portals, its commands run at once on a
//! `scsi::ScsiTarget` over the RAM backend, and a stand-in for the RDMA fabric in this thread:
//! the initiator's buffers are plain memory, an RDMA Read copies from them into the place
//! `IserConnection::rdma_read_destination` names (the NIC's DMA), an RDMA Write or a Send is
//! checked and dropped (the NIC's DMA, after which the driver gives the buffer back). Commands go
//! one at a time (queue depth 1), as ib_iser sends them: a READ advertises its read buffer, a
//! WRITE its write buffer, with its first bytes as immediate data (as much as fits one receive
//! buffer: 4 KiB writes are all immediate, 128 KiB ones fetch the rest by RDMA Read).
//!
//! What the driver adds on a real fabric (posting, completions, staging) is not here; its lists
//! are kept between commands (see docs/architecture.md). Allocations and copies are counted only
//! while the target side runs.

use std::sync::Arc;
use std::time::Instant;

use iser_target::iscsi::iser::initiator::ib_iser_login;
use iser_target::iscsi::iser::{FabricOp, IserConnection, IserHeader, SendBytes};
use iser_target::iscsi::pdu::{self, Header, ScsiCommand, Stage, TaskAttribute};
use iser_target::iscsi::CloseReason;
use iser_target::scsi::{Nexus, ScsiRequest, ScsiTarget};
use iser_target::stats::thread_payload_copies;
use mem_ffi::CountingAllocator;

use crate::initiator::{Op, BLOCK, PATTERN, REGION};

/// The benchmark initiator's ISID.
const BENCH_ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9b];
use crate::pair::TargetCost;

/// iSER header flags: control PDU, write STag valid, read STag valid (as `iscsi::iser` reads them).
const ISER_CTRL: u8 = 0x10;
const ISER_WSV: u8 = 0x08;
const ISER_RSV: u8 = 0x04;
/// The STags and addresses the benchmark initiator advertises for its one buffer.
const READ_STAG: u32 = 0x78;
const WRITE_STAG: u32 = 0x77;
const BUFFER_VA: u64 = 0x7000_0000;
/// Immediate data ib_iser puts in a command's Send: what one of the target's receive buffers
/// holds.
const MAX_IMMEDIATE: usize = iser_target::iscsi::iser::RECV_DATA_CAPACITY;

/// One logged-in iSER connection, both sides.
pub struct IserBench {
    conn: IserConnection,
    scsi: Arc<ScsiTarget>,
    nexus: Nexus,
    now: Instant,
    /// The initiator's buffer: the data of its WRITEs, what RDMA Reads take.
    pattern: Vec<u8>,
    /// The Send of the next command (kept between commands).
    send: Vec<u8>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    next_offset: usize,
    /// Compare READ data with `pattern` (the region is filled with it first).
    verify: bool,
    pub cost: TargetCost,
}

impl IserBench {
    /// Logs in (one operational request, as ib_iser does) and fills the region.
    pub fn login(
        core: Arc<iser_target::iscsi::CoreConfig>,
        scsi: Arc<ScsiTarget>,
        target: &str,
    ) -> IserBench {
        let now = Instant::now();
        let mut bench = IserBench {
            conn: IserConnection::new(core, None, true, now),
            scsi,
            nexus: Nexus::iscsi("iqn.2026-11.io.iser-target:bench-initiator", BENCH_ISID),
            now,
            pattern: (0..PATTERN).map(|i| (i % 251) as u8).collect(),
            send: Vec::new(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 0,
            next_offset: 0,
            verify: false,
            cost: TargetCost::default(),
        };
        let pdu = ib_iser_login(
            &bench.nexus.initiator_name,
            target,
            BENCH_ISID,
            bench.cmd_sn,
        );
        let mut send = IserHeader::CONTROL.encode().to_vec();
        send.extend_from_slice(&pdu.encode_header());
        send.extend_from_slice(&pdu.data);
        send.resize(send.len().next_multiple_of(4), 0);
        bench.conn.handle_receive(&send, now);
        let mut logged_in = false;
        while let Some(op) = bench.conn.poll_op() {
            match op {
                FabricOp::BindSession(_) => bench.conn.handle_session_bound(Ok(1)),
                FabricOp::EnterFullFeature => {}
                FabricOp::Send { bytes, .. } => {
                    let bytes = bytes.to_vec();
                    let rest = &bytes[iser_target::iscsi::iser::ISER_HEADER_LEN..];
                    let Ok(Header::LoginResponse(h)) = Header::decode(&rest[..pdu::BHS_LEN], &[])
                    else {
                        panic!("no Login Response")
                    };
                    assert_eq!(h.status_class, 0, "login refused: {h:?}");
                    bench.exp_stat_sn = h.stat_sn.wrapping_add(1);
                    logged_in = h.next_stage == Stage::FullFeature;
                }
                other => panic!("unexpected {other:?} during login"),
            }
        }
        assert!(logged_in, "the login did not reach full feature phase");
        bench.run(Op::Write, PATTERN, (REGION / PATTERN) as u64);
        bench.verify = true;
        bench
    }

    /// Compare READ data with what the region holds (off while measuring).
    pub fn set_verify(&mut self, verify: bool) {
        self.verify = verify;
    }

    /// `count` commands of `op` with `len` bytes each, one at a time, through the region.
    pub fn run(&mut self, op: Op, len: usize, count: u64) {
        // Aligned to the length, which divides PATTERN: a command's data is one slice of it.
        self.next_offset = self.next_offset.next_multiple_of(len);
        for _ in 0..count {
            if self.next_offset + len > REGION {
                self.next_offset = 0;
            }
            let offset = self.next_offset;
            self.next_offset += len;
            self.command(op, offset, len);
        }
    }

    /// One command and everything the target does for it, through its SCSI Response.
    fn command(&mut self, op: Op, offset: usize, len: usize) {
        self.itt = self.itt.wrapping_add(1);
        let immediate = match op {
            Op::Write => len.min(MAX_IMMEDIATE),
            Op::Read => 0,
        };
        self.encode_command(op, offset, len, immediate);
        let started = Instant::now();
        let allocations = CountingAllocator::thread();
        let copies = thread_payload_copies();
        let data_in = self.target_side(offset);
        self.cost.allocations = self.cost.allocations + (CountingAllocator::thread() - allocations);
        self.cost.copies = self.cost.copies + (thread_payload_copies() - copies);
        self.cost.time += started.elapsed();
        assert_eq!(data_in, if op == Op::Read { len } else { 0 });
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
    }

    /// The target's part of a command: its Send received, through its SCSI Response. Never
    /// inlined: callgrind counts only inside it (`callgrind::ISER_TARGET`).
    #[inline(never)]
    pub fn target_side(&mut self, offset: usize) -> usize {
        self.conn.handle_receive(&self.send, self.now);
        self.pump(offset)
    }

    /// The Send of a READ(10) or WRITE(10) with its iSER header and immediate data.
    fn encode_command(&mut self, op: Op, offset: usize, len: usize, immediate: usize) {
        let lba = (offset / BLOCK) as u32;
        let blocks = (len / BLOCK) as u16;
        let mut cdb = [0u8; 16];
        cdb[0] = if op == Op::Read { 0x28 } else { 0x2a };
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let header = Header::ScsiCommand(ScsiCommand {
            immediate: false,
            final_flag: true,
            read: op == Op::Read,
            write: op == Op::Write,
            attribute: TaskAttribute::Simple,
            lun: [0; 8],
            itt: self.itt,
            expected_data_length: len as u32,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb.into(),
            bidi_read_length: None,
        });
        let iser = match op {
            Op::Read => IserHeader {
                flags: ISER_CTRL | ISER_RSV,
                read_stag: READ_STAG,
                read_va: BUFFER_VA,
                ..IserHeader::CONTROL
            },
            // WriteVA points past the immediate data, as ib_iser sets it
            // (drivers/infiniband/ulp/iser/iser_initiator.c, iser_prepare_write_cmd).
            Op::Write => IserHeader {
                flags: ISER_CTRL | ISER_WSV,
                write_stag: WRITE_STAG,
                write_va: BUFFER_VA + immediate as u64,
                ..IserHeader::CONTROL
            },
        };
        let data = &self.pattern[offset % PATTERN..][..immediate];
        self.send.clear();
        self.send.extend_from_slice(&iser.encode());
        self.send.extend_from_slice(&header.encode_bytes(immediate));
        self.send.extend_from_slice(data);
        self.send.resize(self.send.len().next_multiple_of(4), 0);
    }

    /// Carries out the fabric operations until the command's SCSI Response; returns the bytes
    /// RDMA-written to the initiator.
    fn pump(&mut self, offset: usize) -> usize {
        let mut data_in = 0;
        let mut responded = false;
        while let Some(fabric_op) = self.conn.poll_op() {
            match fabric_op {
                FabricOp::Execute(task) => {
                    let outcome = self.scsi.execute(&ScsiRequest {
                        nexus: &self.nexus,
                        lun: task.lun,
                        cdb: &task.cdb,
                        data_out: &task.data_out,
                        expected_transfer_length: task.expected_transfer_length,
                        task_attr: task.attribute,
                    });
                    self.conn.handle_scsi_complete(task.id, outcome);
                }
                FabricOp::RdmaWrite {
                    stag,
                    va,
                    data,
                    range,
                } => {
                    // Pieces of the read buffer in order, each at its place in the initiator's.
                    assert_eq!(range.start, data_in);
                    assert_eq!((stag, va), (READ_STAG, BUFFER_VA + data_in as u64));
                    if self.verify {
                        // A copy (allocated), but only while warming up.
                        let at = offset % PATTERN + data_in;
                        assert!(
                            data.to_vec()[range.clone()] == self.pattern[at..at + range.len()],
                            "READ data differ"
                        );
                    }
                    data_in = range.end;
                }
                FabricOp::RdmaRead {
                    token,
                    stag,
                    va,
                    len: read_len,
                } => {
                    assert_eq!(stag, WRITE_STAG);
                    // The initiator's buffer holds the whole transfer; WriteVA skipped the
                    // immediate part.
                    let at = (va - BUFFER_VA) as usize;
                    let source = &self.pattern[offset % PATTERN + at..][..read_len as usize];
                    if let Some(destination) = self.conn.rdma_read_destination(token) {
                        destination.copy_from_slice(source);
                    }
                    self.conn.handle_rdma_read_complete(token, self.now);
                }
                FabricOp::Send { bytes, .. } => {
                    self.check_response(&bytes);
                    responded = true;
                }
                FabricOp::Close(CloseReason::Logout) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(responded, "no SCSI Response");
        data_in
    }

    /// A GOOD SCSI Response to the current command.
    fn check_response(&mut self, bytes: &SendBytes) {
        let [_, bhs, data, _] = bytes.parts();
        assert_eq!(bhs[0] & 0x3f, 0x21, "not a SCSI Response");
        assert_eq!(bhs[3], 0, "status {:#x}, sense {data:?}", bhs[3]);
        let itt = u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]);
        assert_eq!(itt, self.itt);
        let stat_sn = u32::from_be_bytes([bhs[24], bhs[25], bhs[26], bhs[27]]);
        self.exp_stat_sn = stat_sn.wrapping_add(1);
    }
}
