//! Arbitrary bytes as the host's stream on a connected NVMe/TCP I/O queue whose I/O runs as the
//! server runs it: lowered to SCSI (`nvme::scsi::lower`), planned and run by the SCSI layer on
//! RAM LUNs (512- and 4096-byte blocks), and completed with `Queue::handle_scsi_complete`.
//!
//! Input: a control byte, then the stream. Control bits: 0 header digest, 1 data digest, 2 SQ
//! flow control disabled, 5-7 the chunk size the stream arrives in (1 + n·13 bytes).
//!
//! Checks, besides no panic and no action after Close: every controller PDU well formed; every
//! I/O the NVMe core accepted is accepted by the SCSI layer too (it succeeds, or a Compare
//! miscompares): a lowering the SCSI layer refuses would fail real hosts' commands; and the
//! LUNs hold what a byte-for-byte model of the accepted writes, zeroings and deallocations says,
//! checked on every read.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::backend::RamBackend;
use iser_target::nvme::command::Status;
use iser_target::nvme::{scsi, Action, ControllerRegistry, IoOp, NvmeConfig, Queue};
use iser_target::scsi::{
    finish, run, LogicalUnit, LunParams, Nexus, Prepared, ScsiOutcome, ScsiRequest, ScsiTarget,
};
use iser_target_fuzz::nvme::{
    self, bring_up_admin, handle_control, join_io_queue, namespace, Host, HOST,
};
use libfuzzer_sys::fuzz_target;

const BLOCKS: u64 = 256;
const BLOCK_SIZES: [u32; 2] = [512, 4096];

fn config() -> NvmeConfig {
    let ns = |nsid, block_size| namespace(nsid, block_size, BLOCKS, false);
    nvme::config(vec![ns(1, BLOCK_SIZES[0]), ns(2, BLOCK_SIZES[1])])
}

/// LUN id N is namespace N+1, as the server maps them.
fn target() -> ScsiTarget {
    let luns = BLOCK_SIZES
        .iter()
        .enumerate()
        .map(|(id, &block_size)| {
            let params = LunParams {
                lun: id as u64,
                block_size,
                read_only: false,
                write_cache: true,
                serial: format!("fuzz{id}"),
                naa_id: 0x6001_4050_0000_0000 + id as u64,
                vendor: "FUZZ".into(),
                product: "fuzz".into(),
                revision: "1".into(),
                alua: Default::default(),
            };
            let backend = Arc::new(RamBackend::new(BLOCKS * u64::from(block_size)));
            Arc::new(LogicalUnit::new(params, backend))
        })
        .collect();
    ScsiTarget::new(luns)
}

struct Harness {
    queue: Queue,
    registry: ControllerRegistry,
    target: ScsiTarget,
    nexus: Nexus,
    /// What each namespace must hold.
    model: Vec<Vec<u8>>,
    host: Host,
    closed: bool,
}

impl Harness {
    fn pump(&mut self) {
        while let Some(action) = self.queue.poll_action() {
            assert!(!self.closed, "action after Close");
            match action {
                Action::Execute(io) => {
                    let index = io.nsid as usize - 1;
                    let op = io.op.clone();
                    let written = io.data.to_vec();
                    let task = scsi::lower(io, 0, index as u64, BLOCK_SIZES[index]);
                    let id = task.id;
                    let request = ScsiRequest {
                        nexus: &self.nexus,
                        lun: task.lun,
                        cdb: &task.cdb,
                        data_out: &task.data_out,
                        expected_transfer_length: task.expected_transfer_length,
                        task_attr: task.attribute,
                    };
                    let outcome: ScsiOutcome = match self.target.prepare(&request) {
                        Prepared::Done(outcome) => outcome,
                        Prepared::Io {
                            lu,
                            request,
                            data_out_length,
                            ..
                        } => finish(&request, run(&**lu.backend(), &request), data_out_length),
                    };
                    self.check(index, &op, &written, &outcome);
                    self.queue.handle_scsi_complete(id, outcome);
                }
                Action::Close(_) => self.closed = true,
                other => handle_control(
                    other,
                    &mut self.queue,
                    &mut self.registry,
                    &self.host,
                    Instant::now(),
                ),
            }
        }
    }

    /// The SCSI layer accepted what the core accepted, and the medium is what the model says.
    fn check(&mut self, index: usize, op: &IoOp, written: &[u8], outcome: &ScsiOutcome) {
        let status = scsi::status_of(outcome);
        let model = &mut self.model[index];
        match op {
            IoOp::Compare { offset } => {
                let at = *offset as usize;
                let same = model[at..at + written.len()] == *written;
                let expected = if same {
                    Status::SUCCESS
                } else {
                    Status::COMPARE_FAILURE
                };
                assert_eq!(status, expected, "Compare {op:?}: {outcome:?}");
                return;
            }
            // The reservation state is not modelled: only that the LUN answers. The one host
            // holds any reservation it takes, so the media checks below stay exact.
            IoOp::Reservation(_) => return,
            _ => assert_eq!(status, Status::SUCCESS, "{op:?}: {outcome:?}"),
        }
        match op {
            IoOp::Read { offset, len } => {
                let at = *offset as usize;
                assert_eq!(outcome.data_in.len(), *len);
                assert!(
                    outcome.data_in.to_vec() == model[at..at + len],
                    "read {op:?} differs from what was written"
                );
            }
            IoOp::Write { offset, .. } => {
                let at = *offset as usize;
                model[at..at + written.len()].copy_from_slice(written);
            }
            IoOp::WriteZeroes { offset, len, .. } => {
                model[*offset as usize..(offset + len) as usize].fill(0);
            }
            // A RAM LUN reads zeroes where it deallocated.
            IoOp::Deallocate { ranges } => {
                for &(offset, len) in ranges {
                    model[offset as usize..(offset + len) as usize].fill(0);
                }
            }
            IoOp::Flush | IoOp::Compare { .. } | IoOp::Reservation(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let config = Arc::new(config());
    let now = Instant::now();
    let host = Host {
        header_digest: control & 1 != 0,
        data_digest: control & 2 != 0,
    };
    let cattr = if control & 4 != 0 { 4 } else { 0 };
    let plain = Host {
        header_digest: false,
        data_digest: false,
    };
    let mut h = Harness {
        queue: Queue::new(config.clone(), now),
        registry: ControllerRegistry::new(),
        target: target(),
        nexus: Nexus::nvme(HOST, [0x11; 16]),
        model: BLOCK_SIZES
            .iter()
            .map(|&bs| vec![0u8; (BLOCKS * u64::from(bs)) as usize])
            .collect(),
        host: plain,
        closed: false,
    };
    // The admin queue, enabled with I/O queues granted; then the fuzzed I/O queue joins.
    h.queue.handle_bytes(&bring_up_admin(&plain, 0), now);
    h.pump();
    let cntlid = h.queue.cntlid().expect("admin queue connected");
    let _admin = std::mem::replace(&mut h.queue, Queue::new(config, now));
    h.host = host;
    h.queue
        .handle_bytes(&join_io_queue(&host, cntlid, cattr), now);
    h.pump();
    assert!(h.queue.is_live(), "I/O queue connected");
    let chunk = 1 + (control as usize >> 5) * 13;
    let mut t = now;
    for piece in stream.chunks(chunk) {
        h.queue.handle_bytes(piece, t);
        h.pump();
        if h.closed {
            return;
        }
        t += Duration::from_millis(u64::from(piece[0]) * 40);
        h.queue.handle_timeout(t);
        h.pump();
        if h.closed {
            return;
        }
    }
    h.queue.handle_shutdown();
    h.pump();
    assert!(h.closed, "shutdown closes");
});
