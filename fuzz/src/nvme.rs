//! Host-side NVMe/TCP framing and checks shared by the NVMe fuzz targets (`nvme_pdu`,
//! `nvme_queue`, `nvme_auth`), written apart from the crate's codec.

use std::time::Instant;

use iser_target::nvme::{
    Action, ControllerRegistry, NamespaceDescriptor, NvmeConfig, Queue, SubsystemDescriptor,
};

/// The subsystem the fuzz targets connect to.
pub const SUBSYSTEM: &str = "nqn.2026-01.fuzz:disk";
/// The host NQN they connect as.
pub const HOST: &str = "nqn.2026-01.fuzz:host";

/// The fuzzed subsystem, serving `namespaces`: its limits small (16 queue entries, 4 KiB of
/// in-capsule data, 8 KiB a H2CData PDU, 64 KiB a transfer) so that short inputs reach them
/// and writes beyond the capsule need R2Ts.
pub fn config(namespaces: Vec<NamespaceDescriptor>) -> NvmeConfig {
    NvmeConfig {
        subsystems: vec![SubsystemDescriptor {
            nqn: SUBSYSTEM.into(),
            allowed_hosts: vec![],
            namespaces,
            serial: "fuzz".into(),
            model: "fuzz".into(),
            firmware: "1".into(),
        }],
        max_queue_size: 16,
        max_io_queues: 2,
        in_capsule_data: 4096,
        max_h2c_data: 8192,
        max_transfer: 64 * 1024,
        ..NvmeConfig::default()
    }
}

/// Host-side PDU framing with the digests the host asked for.
#[derive(Clone, Copy)]
pub struct Host {
    pub header_digest: bool,
    pub data_digest: bool,
}

impl Host {
    /// ICReq, PFV 0, asking for the host's digests.
    pub fn ic_req(&self) -> Vec<u8> {
        let mut b = vec![0, 0, 128, 0, 128, 0, 0, 0, 0, 0, 0];
        b.push(u8::from(self.header_digest) | u8::from(self.data_digest) << 1);
        b.resize(128, 0);
        b
    }

    /// A CapsuleCmd with `data` in the capsule.
    pub fn capsule(&self, sqe: &[u8; 64], data: &[u8]) -> Vec<u8> {
        let hd = if self.header_digest { 4 } else { 0 };
        let dd = if self.data_digest && !data.is_empty() {
            4
        } else {
            0
        };
        let pdo = if data.is_empty() { 0 } else { 72 + hd };
        let plen = (72 + hd + data.len() + dd) as u32;
        let flags = u8::from(hd > 0) | if dd > 0 { 2 } else { 0 };
        let mut b = vec![4, flags, 72, pdo as u8];
        b.extend_from_slice(&plen.to_le_bytes());
        b.extend_from_slice(sqe);
        if hd > 0 {
            let d = crc32c::crc32c(&b).to_le_bytes();
            b.extend_from_slice(&d);
        }
        b.extend_from_slice(data);
        if dd > 0 {
            b.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
        b
    }
}

/// An SQE with `opcode`, fabrics command type `fctype` and command ID `cid`, SGLs.
pub fn sqe(opcode: u8, fctype: u8, cid: u16) -> [u8; 64] {
    let mut s = [0u8; 64];
    s[0] = opcode;
    s[1] = 0x40;
    s[2..4].copy_from_slice(&cid.to_le_bytes());
    s[4] = fctype;
    s
}

/// What brings up an admin queue: ICReq, Connect to a new controller with attributes `cattr`,
/// then enabling it with two I/O queues (which the queue holds until the controller exists).
pub fn bring_up_admin(host: &Host, cattr: u8) -> Vec<u8> {
    let mut b = host.ic_req();
    b.extend(connect(host, 0, 0xFFFF, cattr));
    b.extend(enable(host));
    b
}

/// What joins I/O queue 1 to controller `cntlid`: ICReq, then Connect with attributes `cattr`.
pub fn join_io_queue(host: &Host, cntlid: u16, cattr: u8) -> Vec<u8> {
    let mut b = host.ic_req();
    b.extend(connect(host, 1, cntlid, cattr));
    b
}

/// Connect of queue `qid` to controller `cntlid` (0xFFFF: a new one) with attributes `cattr`.
fn connect(host: &Host, qid: u16, cntlid: u16, cattr: u8) -> Vec<u8> {
    connect_as(host, qid, cntlid, cattr, SUBSYSTEM, HOST)
}

/// The same Connect to subsystem `subsystem` as host `host_nqn` (`nvme_auth` connects with the
/// NQNs its secrets are bound to).
pub fn connect_as(
    host: &Host,
    qid: u16,
    cntlid: u16,
    cattr: u8,
    subsystem: &str,
    host_nqn: &str,
) -> Vec<u8> {
    let mut s = sqe(0x7F, 0x01, 0xF000);
    s[32..36].copy_from_slice(&1024u32.to_le_bytes());
    s[39] = 0x01;
    s[42..44].copy_from_slice(&qid.to_le_bytes());
    s[44..46].copy_from_slice(&15u16.to_le_bytes());
    s[46] = cattr;
    s[48..52].copy_from_slice(&10_000u32.to_le_bytes());
    let mut d = vec![0u8; 1024];
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + subsystem.len()].copy_from_slice(subsystem.as_bytes());
    d[512..512 + host_nqn.len()].copy_from_slice(host_nqn.as_bytes());
    host.capsule(&s, &d)
}

/// Enable (CC.EN, IOSQES 6, IOCQES 4) and two I/O queues.
pub fn enable(host: &Host) -> Vec<u8> {
    let mut cc = sqe(0x7F, 0x00, 0xF001);
    cc[44..48].copy_from_slice(&0x14u32.to_le_bytes());
    cc[48..56].copy_from_slice(&(1u64 | 6 << 16 | 4 << 20).to_le_bytes());
    let mut queues = sqe(0x09, 0, 0xF002);
    queues[40] = 0x07;
    queues[44..48].copy_from_slice(&(1u32 | 1 << 16).to_le_bytes());
    let mut b = host.capsule(&cc, &[]);
    b.extend(host.capsule(&queues, &[]));
    b
}

/// AUTH_Send (`fctype` 05h, host data in the capsule) or AUTH_Receive (06h, data by C2HData)
/// as Linux's host builds them (drivers/nvme/host/auth.c `nvme_auth_submit`): SECP E9h in byte
/// 43, SPSP0 and SPSP1 01h in bytes 41 and 42, TL / AL in CDW11 equal to the SGL length.
pub fn auth_sqe(fctype: u8, cid: u16, length: u32) -> [u8; 64] {
    let mut s = sqe(0x7F, fctype, cid);
    s[32..36].copy_from_slice(&length.to_le_bytes());
    s[39] = if fctype & 1 != 0 { 0x01 } else { 0x5A };
    s[41] = 0x01;
    s[42] = 0x01;
    s[43] = 0xE9;
    s[44..48].copy_from_slice(&length.to_le_bytes());
    s
}

/// Checks one PDU the controller sent; panics when it is malformed.
pub fn check_pdu(b: &[u8], host: &Host) {
    assert!(b.len() >= 8);
    let (t, flags, hlen, pdo) = (b[0], b[1], b[2] as usize, b[3] as usize);
    let plen = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    assert_eq!(plen, b.len(), "PLEN");
    let expected_hlen = match t {
        1 => 128,
        3 | 5 | 7 | 9 => 24,
        other => panic!("controller PDU type {other}"),
    };
    assert_eq!(hlen, expected_hlen);
    let digested = host.header_digest && t != 1 && t != 3;
    assert_eq!(flags & 1 != 0, digested, "HDGSTF");
    if digested {
        assert_eq!(b[hlen..hlen + 4], crc32c::crc32c(&b[..hlen]).to_le_bytes());
    }
    if t == 7 {
        assert!(pdo >= hlen && pdo < plen);
        let dd = host.data_digest;
        assert_eq!(flags & 2 != 0, dd);
        let end = plen - if dd { 4 } else { 0 };
        let datal = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
        assert_eq!(datal, end - pdo);
        if dd {
            assert_eq!(b[end..], crc32c::crc32c(&b[pdo..end]).to_le_bytes());
        }
    } else if t != 3 {
        assert_eq!(pdo, 0);
        assert_eq!(plen, hlen + if digested { 4 } else { 0 });
    }
}

/// Carries out an action the NVMe fuzz targets all handle alike: checks each PDU the queue sends
/// (`check_pdu`) and creates, joins or updates controllers in `registry`. `Execute` and `Close`
/// are each target's own to handle and never come here.
pub fn handle_control(
    action: Action,
    queue: &mut Queue,
    registry: &mut ControllerRegistry,
    host: &Host,
    now: Instant,
) {
    match action {
        Action::Send(_) | Action::SendPdu(_) | Action::SendData { .. } => {
            check_pdu(&action.pdu_bytes().expect("a send action's PDU"), host)
        }
        Action::CreateController(req) => {
            let r = registry.create(&req);
            queue.handle_controller_created(r, now);
        }
        Action::JoinController(req) => {
            let r = registry.join(&req);
            queue.handle_controller_joined(r, now);
        }
        Action::ControllerChanged { cntlid, state } => {
            registry.update(cntlid, state);
        }
        Action::Compute(work) => queue.handle_computed(work.run(), now),
        Action::Authenticated(_) | Action::HostNotAllowed { .. } => {}
        Action::Execute(_) | Action::Close(_) => {
            unreachable!("the fuzz target handles {action:?} itself")
        }
    }
}

/// Namespace `nsid` of `blocks` blocks of `block_size` bytes, thin with a volatile write cache,
/// its identifiers all bytes `nsid`.
pub fn namespace(nsid: u32, block_size: u32, blocks: u64, read_only: bool) -> NamespaceDescriptor {
    NamespaceDescriptor {
        nsid,
        block_size,
        blocks,
        read_only,
        volatile_write_cache: true,
        thin: true,
        nguid: [nsid as u8; 16],
        eui64: [nsid as u8; 8],
        uuid: [nsid as u8; 16],
        persistent_reservations: false,
    }
}
