//! Arbitrary bytes as the host's stream on a connected NVMe/TCP queue: through the framer into
//! an admin queue (enabled controller) or an I/O queue, with I/O run on RAM namespaces at once or
//! deferred, and time passing.
//!
//! Input: a control byte, then the stream. Control bits: 0 header digest, 1 data digest,
//! 2 an I/O queue (else the admin queue), 3 defer I/O, 4 SQ flow control disabled, 5-7 the chunk
//! size the stream arrives in (1 + n·13 bytes).
//!
//! Checks: no panic; no action after Close; every PDU the controller sends is well formed (a
//! type it may send, PLEN its length, HLEN right for its type, digests as negotiated); every I/O
//! stays inside its namespace; shutdown closes.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::backend::{Backend, RamBackend};
use iser_target::nvme::{
    Action, AddressFamily, ControllerRegistry, DiscoveryEntry, IoCommand, IoOp, NvmeConfig, Queue,
};
use iser_target_fuzz::nvme::{
    self, bring_up_admin, handle_control, join_io_queue, namespace, Host, SUBSYSTEM,
};
use libfuzzer_sys::fuzz_target;

const BLOCKS: u64 = 256;

fn config() -> NvmeConfig {
    let ns = |nsid, block_size, read_only| namespace(nsid, block_size, BLOCKS, read_only);
    NvmeConfig {
        discovery: vec![DiscoveryEntry {
            subsystem_nqn: SUBSYSTEM.into(),
            port_id: 1,
            address_family: AddressFamily::Ipv4,
            address: "192.0.2.1".into(),
            service_id: "4420".into(),
        }],
        ..nvme::config(vec![ns(1, 512, false), ns(2, 4096, true)])
    }
}

struct Harness {
    queue: Queue,
    registry: ControllerRegistry,
    backends: Vec<Arc<RamBackend>>,
    host: Host,
    now: Instant,
    defer: bool,
    deferred: Vec<IoCommand>,
    closed: bool,
}

impl Harness {
    fn pump(&mut self) {
        while let Some(action) = self.queue.poll_action() {
            assert!(!self.closed, "action after Close");
            match action {
                Action::Execute(io) => {
                    let backend = self.backends[io.nsid as usize - 1].clone();
                    let size = backend.size();
                    let inside =
                        |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= size);
                    match &io.op {
                        IoOp::Read { offset, len } => assert!(inside(*offset, *len as u64)),
                        IoOp::Write { offset, .. } | IoOp::Compare { offset } => {
                            assert!(!io.data.is_empty() && inside(*offset, io.data.len() as u64))
                        }
                        IoOp::WriteZeroes { offset, len, .. } => assert!(inside(*offset, *len)),
                        IoOp::Deallocate { ranges } => {
                            assert!(ranges.iter().all(|&(o, l)| inside(o, l)))
                        }
                        IoOp::Flush | IoOp::Reservation(_) => {}
                    }
                    if self.defer {
                        self.deferred.push(io);
                    } else {
                        let result = io.execute(&*backend);
                        assert!(result.is_ok(), "in-range I/O on RAM succeeds");
                        self.queue.handle_io_complete(io.id, result);
                    }
                }
                Action::Close(_) => self.closed = true,
                other => handle_control(
                    other,
                    &mut self.queue,
                    &mut self.registry,
                    &self.host,
                    self.now,
                ),
            }
        }
    }

    fn complete_one(&mut self) {
        if let Some(io) = self.deferred.pop() {
            let backend = self.backends[io.nsid as usize - 1].clone();
            let result = io.execute(&*backend);
            self.queue.handle_io_complete(io.id, result);
            self.pump();
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
    let io_queue = control & 4 != 0;
    let cattr = if control & 16 != 0 { 4 } else { 0 };
    let backends: Vec<Arc<RamBackend>> = vec![
        Arc::new(RamBackend::new(BLOCKS * 512)),
        Arc::new(RamBackend::new(BLOCKS * 4096)),
    ];
    // An admin queue brought up first; the fuzzed queue is it, or an I/O queue joining it.
    let admin_host = if io_queue {
        Host {
            header_digest: false,
            data_digest: false,
        }
    } else {
        host
    };
    let mut admin = Harness {
        queue: Queue::new(config.clone(), now),
        registry: ControllerRegistry::new(),
        backends: backends.clone(),
        host: admin_host,
        now,
        defer: false,
        deferred: Vec::new(),
        closed: false,
    };
    let admin_cattr = if io_queue { 0 } else { cattr };
    admin
        .queue
        .handle_bytes(&bring_up_admin(&admin_host, admin_cattr), now);
    admin.pump();
    assert!(admin.queue.is_live() && !admin.closed);
    let mut h = if io_queue {
        let cntlid = admin.queue.cntlid().unwrap();
        let mut h = Harness {
            queue: Queue::new(config, now),
            registry: std::mem::take(&mut admin.registry),
            backends,
            host,
            now,
            defer: false,
            deferred: Vec::new(),
            closed: false,
        };
        h.queue
            .handle_bytes(&join_io_queue(&host, cntlid, cattr), now);
        h.pump();
        assert!(h.queue.is_live(), "I/O queue connected");
        h
    } else {
        admin
    };
    h.defer = control & 8 != 0;
    let chunk = 1 + (control as usize >> 5) * 13;
    for piece in stream.chunks(chunk) {
        h.queue.handle_bytes(piece, h.now);
        h.pump();
        if h.closed {
            return;
        }
        if piece[0] & 1 != 0 {
            h.complete_one();
        }
        h.now += Duration::from_millis(u64::from(piece[0]) * 40);
        h.queue.handle_timeout(h.now);
        h.pump();
        if h.closed {
            return;
        }
    }
    while !h.deferred.is_empty() {
        h.complete_one();
    }
    h.queue.handle_shutdown();
    h.pump();
    assert!(h.closed, "shutdown closes");
});
