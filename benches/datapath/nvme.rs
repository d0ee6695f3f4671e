//! NVMe/TCP over loopback: the real `Server` with an `nvme-tcp` portal and a RAM namespace,
//! driven by the small NVMe/TCP host of the whole-binary tests (`tests/common/nvme_host.rs`):
//! one admin queue, one I/O queue, commands one at a time (queue depth 1). 128 KiB writes go
//! through an R2T and one H2CData PDU, as Linux's host sends them; 4 KiB writes in the capsule.
//! The target's allocations and copies are the process's minus this (host) thread's.

use std::net::SocketAddr;

use iser_target::config::Config;
use iser_target::server::Server;

#[allow(dead_code)]
#[path = "../../tests/common/nvme_host.rs"]
mod nvme_host;

use crate::initiator::{Op, REGION};
use nvme_host::{admin_queue, io_queue, NvmeQueue, HOST_NQN};

/// The NQN the configuration derives from the benchmark's target name.
const SUBSYSTEM: &str = "nqn.2026-11.io.iser-target:bench";
/// Logical block size of the RAM namespace.
const BLOCK: usize = 512;

/// One RAM namespace as large as the region the commands cycle through, on an NVMe/TCP portal.
fn config() -> Config {
    let yaml = format!(
        "portals:\n  - address: 127.0.0.1\n    port: 4420\n    transport: nvme-tcp\n\
         targets:\n  - name: {}\n    nqn: {SUBSYSTEM}\n    luns:\n      - id: 0\n        \
         backing: {{ type: ram, size: {REGION} }}\n",
        crate::TARGET
    );
    Config::from_yaml_str(&yaml).expect("NVMe benchmark configuration")
}

/// A server and a connected controller with one I/O queue.
pub struct NvmeBench {
    server: Server,
    _admin: NvmeQueue,
    queue: NvmeQueue,
    data: Vec<u8>,
    next: usize,
}

impl NvmeBench {
    pub fn start() -> NvmeBench {
        let mut config = config();
        config.portals[0].port = 0;
        let server = Server::start(&config).expect("start the target");
        let port = match server.local_addrs()[0] {
            SocketAddr::V4(a) => a.port(),
            SocketAddr::V6(a) => a.port(),
        };
        let (admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
        let queue = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
        NvmeBench {
            server,
            _admin: admin,
            queue,
            data: (0..128 << 10).map(|i| (i % 251) as u8).collect(),
            next: 0,
        }
    }

    /// `count` commands of `op` with `len` bytes each, one at a time, through the region.
    pub fn run(&mut self, op: Op, len: usize, count: u64) {
        for _ in 0..count {
            if self.next + len > REGION {
                self.next = 0;
            }
            let slba = (self.next / BLOCK) as u64;
            self.next += len;
            let cqe = match op {
                Op::Write => self.queue.write(1, slba, &self.data[..len], BLOCK),
                Op::Read => self.queue.read(1, slba, len, BLOCK).map(|(cqe, _)| cqe),
            }
            .expect("NVMe/TCP command");
            assert!(cqe.ok(), "NVMe/TCP command failed: {cqe:?}");
        }
    }

    pub fn shutdown(self) {
        drop(self.queue);
        drop(self._admin);
        self.server.shutdown().expect("clean shutdown");
    }
}
