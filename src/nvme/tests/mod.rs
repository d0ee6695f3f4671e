//! End-to-end tests of the NVMe/TCP core: a scripted in-memory host drives [`Queue`]s over the
//! wire format (its PDUs built and the controller's parsed here, independently of the crate's
//! codec), with an environment that keeps a [`ControllerRegistry`] and RAM namespaces, and
//! virtual time.

mod admin;
mod ana;
mod auth;
mod connect;
mod errors;
mod io;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{
    AddressFamily, AllowedHost, DiscoveryEntry, NamespaceDescriptor, NvmeConfig,
    SubsystemDescriptor,
};
use super::{Action, CloseReason, ControllerRegistry, IoCommand, Queue};
use crate::backend::{Backend, RamBackend};
use crate::scsi::BlockReply;

pub const SUBSYSTEM: &str = "nqn.2026-01.test:disk";
pub const SECRET: &str = "nqn.2026-01.test:secret";
pub const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
pub const HOST_ID: [u8; 16] = [0x5A; 16];
/// Namespace 1: 512-byte blocks, 1 MiB. Namespace 2: 4 KiB blocks, read-only, 1 MiB.
pub const NS1_BLOCKS: u64 = 2048;
/// In-capsule data and MAXH2CDATA of the test configuration: small, so writes need R2Ts.
pub const IN_CAPSULE: u32 = 8192;
pub const MAX_H2C: u32 = 16384;
pub const MAX_TRANSFER: u32 = 256 * 1024;

pub fn namespace(nsid: u32, block_size: u32, blocks: u64, read_only: bool) -> NamespaceDescriptor {
    NamespaceDescriptor {
        nsid,
        block_size,
        blocks,
        read_only,
        volatile_write_cache: true,
        thin: true,
        nguid: [nsid as u8; 16],
        eui64: [0xE0 | nsid as u8; 8],
        uuid: [0x10 | nsid as u8; 16],
        persistent_reservations: false,
    }
}

pub fn config() -> NvmeConfig {
    NvmeConfig {
        subsystems: vec![
            SubsystemDescriptor {
                nqn: SUBSYSTEM.into(),
                allowed_hosts: vec![],
                namespaces: vec![
                    namespace(1, 512, NS1_BLOCKS, false),
                    namespace(2, 4096, 256, true),
                ],
                serial: "serial-1".into(),
                model: "test model".into(),
                firmware: "1.2".into(),
            },
            SubsystemDescriptor {
                nqn: SECRET.into(),
                allowed_hosts: vec![AllowedHost::open("nqn.2026-01.test:other-host")],
                namespaces: vec![namespace(1, 512, 8, false)],
                serial: "serial-2".into(),
                model: "test model".into(),
                firmware: "1.2".into(),
            },
        ],
        discovery: [SUBSYSTEM, SECRET]
            .iter()
            .map(|nqn| DiscoveryEntry {
                subsystem_nqn: nqn.to_string(),
                port_id: 1,
                address_family: AddressFamily::Ipv4,
                address: "192.0.2.1".into(),
                service_id: "4420".into(),
            })
            .collect(),
        max_queue_size: 16,
        max_io_queues: 4,
        in_capsule_data: IN_CAPSULE,
        max_h2c_data: MAX_H2C,
        max_transfer: MAX_TRANSFER,
        ..NvmeConfig::default()
    }
}

/// What the environment shares between the queues of a test: the registry and the backends
/// (subsystem index, NSID).
pub struct Env {
    pub registry: ControllerRegistry,
    pub backends: HashMap<(usize, u32), Arc<RamBackend>>,
    /// I/O queues the registry said to shut down, by (cntlid, qid).
    pub shut_down: Vec<(u16, u16)>,
}

pub fn env(config: &NvmeConfig) -> Rc<RefCell<Env>> {
    let mut backends = HashMap::new();
    for (i, s) in config.subsystems.iter().enumerate() {
        for ns in &s.namespaces {
            let size = ns.blocks * u64::from(ns.block_size);
            backends.insert((i, ns.nsid), Arc::new(RamBackend::new(size)));
        }
    }
    Rc::new(RefCell::new(Env {
        registry: ControllerRegistry::new(),
        backends,
        shut_down: Vec::new(),
    }))
}

/// CRC32C, little-endian, computed here rather than with the crate's helper.
fn crc(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A completion as the host reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    pub result: u64,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// (SCT, SC).
    pub status: (u8, u8),
    pub dnr: bool,
}

/// A PDU from the controller, parsed with its digests checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    IcResp {
        cpda: u8,
        digests: u8,
        maxh2cdata: u32,
    },
    Resp(Cqe),
    C2HData {
        cid: u16,
        offset: u32,
        flags: u8,
        pdo: u8,
        data: Vec<u8>,
    },
    R2T {
        cid: u16,
        ttag: u16,
        offset: u32,
        length: u32,
    },
    Term {
        fes: u16,
        fei: u32,
        data: Vec<u8>,
    },
}

/// Parses one controller PDU as the host would (NVMe/TCP 1.0 PDU layouts).
fn parse(b: &[u8], header_digest: bool, data_digest: bool) -> Got {
    let (t, flags, hlen, pdo, plen) = (b[0], b[1], b[2] as usize, b[3], le32(b, 4));
    assert_eq!(plen as usize, b.len(), "PLEN covers the PDU");
    let digested = matches!(t, 5 | 7 | 9) && header_digest;
    assert_eq!(flags & 1 != 0, digested, "HDGSTF of type {t}");
    if digested {
        assert_eq!(&b[hlen..hlen + 4], &crc(&b[..hlen]), "header digest");
    }
    match t {
        1 => {
            assert_eq!((hlen, plen), (128, 128));
            assert_eq!(le16(b, 8), 0, "PFV");
            Got::IcResp {
                cpda: b[10],
                digests: b[11],
                maxh2cdata: le32(b, 12),
            }
        }
        3 => {
            assert_eq!(hlen, 24);
            assert!(b.len() <= 152);
            Got::Term {
                fes: le16(b, 8),
                fei: le32(b, 10),
                data: b[24..].to_vec(),
            }
        }
        5 => {
            assert_eq!(hlen, 24);
            let status = le16(b, 22) >> 1;
            Got::Resp(Cqe {
                result: u64::from_le_bytes(b[8..16].try_into().unwrap()),
                sqhd: le16(b, 16),
                sqid: le16(b, 18),
                cid: le16(b, 20),
                status: (((status >> 8) & 7) as u8, status as u8),
                dnr: status & 1 << 14 != 0,
            })
        }
        7 => {
            assert_eq!(hlen, 24);
            let dd = data_digest;
            assert_eq!(flags & 2 != 0, dd, "DDGSTF");
            let end = b.len() - if dd { 4 } else { 0 };
            let data = b[pdo as usize..end].to_vec();
            if dd {
                assert_eq!(&b[end..], &crc(&data), "data digest");
            }
            assert_eq!(le32(b, 16) as usize, data.len(), "DATAL");
            Got::C2HData {
                cid: le16(b, 8),
                offset: le32(b, 12),
                flags,
                pdo,
                data,
            }
        }
        9 => {
            assert_eq!(hlen, 24);
            Got::R2T {
                cid: le16(b, 8),
                ttag: le16(b, 10),
                offset: le32(b, 12),
                length: le32(b, 16),
            }
        }
        other => panic!("controller sent PDU type {other}"),
    }
}

/// A submission queue entry under construction.
#[derive(Clone)]
pub struct Sqe(pub [u8; 64]);

impl Sqe {
    pub fn new(opcode: u8, cid: u16, nsid: u32) -> Self {
        let mut b = [0u8; 64];
        b[0] = opcode;
        b[1] = 0x40; // PSDT: SGL, as Linux's host sets (NVME_CMD_SGL_METABUF)
        b[2..4].copy_from_slice(&cid.to_le_bytes());
        b[4..8].copy_from_slice(&nsid.to_le_bytes());
        Sqe(b)
    }

    /// A fabrics command of type `fctype`.
    pub fn fabrics(fctype: u8, cid: u16) -> Self {
        let mut s = Sqe::new(0x7F, cid, 0);
        s.0[4] = fctype;
        s
    }

    pub fn cdw(mut self, n: usize, value: u32) -> Self {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&value.to_le_bytes());
        self
    }

    pub fn byte(mut self, at: usize, value: u8) -> Self {
        self.0[at] = value;
        self
    }

    /// SGL1: `length` bytes in the capsule (type 01h) or by the transport (5Ah).
    pub fn sgl(mut self, length: u32, in_capsule: bool) -> Self {
        self.0[32..36].copy_from_slice(&length.to_le_bytes());
        self.0[39] = if in_capsule { 0x01 } else { 0x5A };
        self
    }

    pub fn slba(self, lba: u64) -> Self {
        self.cdw(10, lba as u32).cdw(11, (lba >> 32) as u32)
    }
}

/// The host end of one connection: frames its PDUs with the negotiated digests.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFramer {
    pub header_digest: bool,
    pub data_digest: bool,
}

impl HostFramer {
    /// A PDU from a header (CH + PSH, with PDO and PLEN filled in here) and data.
    pub fn pdu(&self, mut header: Vec<u8>, data: &[u8]) -> Vec<u8> {
        let hlen = header.len();
        let hd = if self.header_digest { 4 } else { 0 };
        let dd = if self.data_digest && !data.is_empty() {
            4
        } else {
            0
        };
        let pdo = if data.is_empty() { 0 } else { hlen + hd };
        let plen = hlen + hd + data.len() + dd;
        header[1] |= u8::from(hd > 0) | if dd > 0 { 2 } else { 0 };
        header[3] = pdo as u8;
        header[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        let mut out = header;
        if hd > 0 {
            let d = crc(&out);
            out.extend_from_slice(&d);
        }
        out.extend_from_slice(data);
        if dd > 0 {
            out.extend_from_slice(&crc(data));
        }
        out
    }

    pub fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut h = vec![4, 0, 72, 0, 0, 0, 0, 0];
        h.extend_from_slice(&sqe.0);
        self.pdu(h, data)
    }

    pub fn h2c_data(&self, cid: u16, ttag: u16, offset: u32, data: &[u8], last: bool) -> Vec<u8> {
        let mut h = vec![6, if last { 4 } else { 0 }, 24, 0, 0, 0, 0, 0];
        h.extend_from_slice(&cid.to_le_bytes());
        h.extend_from_slice(&ttag.to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        self.pdu(h, data)
    }
}

/// ICReq bytes (no digests on the ICReq itself).
pub fn ic_req(pfv: u16, hpda: u8, header_digest: bool, data_digest: bool) -> Vec<u8> {
    let mut b = vec![0, 0, 128, 0, 128, 0, 0, 0];
    b.extend_from_slice(&pfv.to_le_bytes());
    b.push(hpda);
    b.push(u8::from(header_digest) | u8::from(data_digest) << 1);
    b.resize(128, 0);
    b
}

/// Connect data (NVMe-oF 1.1 Connect command data).
pub fn connect_data(cntlid: u16, subnqn: &str, hostnqn: &str) -> Vec<u8> {
    let mut d = vec![0u8; 1024];
    d[0..16].copy_from_slice(&HOST_ID);
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
    d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
    d
}

/// A Connect SQE as Linux's nvmf_connect_admin_queue / nvmf_connect_io_queue build it.
pub fn connect_sqe(cid: u16, qid: u16, sqsize: u16, kato_ms: u32) -> Sqe {
    let mut s = Sqe::fabrics(0x01, cid).sgl(1024, true);
    s.0[42..44].copy_from_slice(&qid.to_le_bytes());
    s.0[44..46].copy_from_slice(&sqsize.to_le_bytes());
    s.cdw(12, kato_ms)
}

/// CC as Linux's nvme_enable_ctrl writes it: EN, IOSQES 6, IOCQES 4.
pub const LINUX_CC: u64 = 1 | 6 << 16 | 4 << 20;

/// One connection: the controller's queue, the host's framer and what came back.
pub struct Pair {
    pub queue: Queue,
    pub env: Rc<RefCell<Env>>,
    pub host: HostFramer,
    pub now: Instant,
    /// PDUs from the controller not yet taken.
    pub received: Vec<Got>,
    pub closed: Option<CloseReason>,
    /// What the queue said of the host's authentication.
    pub authenticated: Option<super::Authentication>,
    /// Hold I/O commands instead of running them at once.
    pub defer_io: bool,
    pub deferred: Vec<IoCommand>,
    /// Hold DH computations instead of running them at once.
    pub defer_compute: bool,
    pub computations: Vec<crate::nvme::auth::dh::DhWork>,
    /// Hosts the queue said were not allowed to connect.
    pub refused_hosts: Vec<String>,
    next_cid: u16,
}

impl Pair {
    pub fn new(config: Arc<NvmeConfig>, env: Rc<RefCell<Env>>, now: Instant) -> Self {
        Pair {
            queue: Queue::new(config, now),
            env,
            host: HostFramer::default(),
            now,
            received: Vec::new(),
            closed: None,
            authenticated: None,
            defer_io: false,
            deferred: Vec::new(),
            defer_compute: false,
            computations: Vec::new(),
            refused_hosts: Vec::new(),
            next_cid: 1,
        }
    }

    /// A fresh pair on the test configuration.
    pub fn fresh() -> Self {
        let config = config();
        let env = env(&config);
        Pair::new(Arc::new(config), env, Instant::now())
    }

    /// A new connection to the same environment.
    pub fn sibling(&self) -> Self {
        Pair::new(self.queue.config.clone(), self.env.clone(), self.now)
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    /// Feeds bytes and carries out the actions.
    pub fn send(&mut self, bytes: &[u8]) {
        self.queue.handle_bytes(bytes, self.now);
        self.pump();
    }

    /// Carries out every pending action as the environment would.
    pub fn pump(&mut self) {
        while let Some(action) = self.queue.poll_action() {
            assert!(self.closed.is_none(), "action after Close: {action:?}");
            match action {
                Action::Send(_) | Action::SendPdu(_) | Action::SendData { .. } => {
                    let pdu = action.pdu_bytes().expect("a send action's PDU");
                    let (hd, dd) = (self.host.header_digest, self.host.data_digest);
                    self.received.push(parse(&pdu, hd, dd));
                }
                Action::CreateController(request) => {
                    let result = self.env.borrow_mut().registry.create(&request);
                    self.queue.handle_controller_created(result, self.now);
                }
                Action::JoinController(request) => {
                    let result = self.env.borrow_mut().registry.join(&request);
                    self.queue.handle_controller_joined(result, self.now);
                }
                Action::ControllerChanged { cntlid, state } => {
                    let mut env = self.env.borrow_mut();
                    let queues = env.registry.update(cntlid, state);
                    env.shut_down
                        .extend(queues.into_iter().map(|q| (cntlid, q)));
                }
                Action::Compute(work) if self.defer_compute => self.computations.push(work),
                Action::Compute(work) => self.queue.handle_computed(work.run(), self.now),
                Action::Authenticated(how) => self.authenticated = Some(how),
                Action::HostNotAllowed { host_nqn, .. } => self.refused_hosts.push(host_nqn),
                Action::Execute(io) if self.defer_io => self.deferred.push(io),
                Action::Execute(io) => {
                    let result = self.run(&io);
                    self.queue.handle_io_complete(io.id, result);
                }
                Action::Close(reason) => {
                    if let Some(cntlid) = self.queue.cntlid() {
                        let mut env = self.env.borrow_mut();
                        if self.queue.qid() == 0 {
                            let queues = env.registry.remove(cntlid);
                            env.shut_down
                                .extend(queues.into_iter().map(|q| (cntlid, q)));
                        } else {
                            env.registry.leave(cntlid, self.queue.qid());
                        }
                    }
                    self.closed = Some(reason);
                }
            }
        }
    }

    /// Runs an I/O command on its RAM backend.
    pub fn run(&self, io: &IoCommand) -> Result<BlockReply, crate::backend::BackendError> {
        let subsystem = self
            .queue
            .config
            .subsystems
            .iter()
            .position(|s| s.nqn == SUBSYSTEM)
            .unwrap();
        let backend = self.env.borrow().backends[&(subsystem, io.nsid)].clone();
        io.execute(&*backend)
    }

    pub fn backend(&self, nsid: u32) -> Arc<RamBackend> {
        self.env.borrow().backends[&(0, nsid)].clone()
    }

    /// Takes what the controller sent.
    pub fn take(&mut self) -> Vec<Got> {
        std::mem::take(&mut self.received)
    }

    /// Sends a command (with in-capsule data) and returns what came back.
    pub fn command(&mut self, sqe: &Sqe, data: &[u8]) -> Vec<Got> {
        let bytes = self.host.capsule(sqe, data);
        self.send(&bytes);
        self.take()
    }

    /// Sends a command that must complete with a CapsuleResp alone; returns it.
    pub fn resp(&mut self, sqe: &Sqe, data: &[u8]) -> Cqe {
        match self.command(sqe, data).as_slice() {
            [Got::Resp(cqe)] => *cqe,
            other => panic!("expected one CapsuleResp, got {other:?}"),
        }
    }

    /// Sends a command whose data comes back in one C2HData; returns the data and the CQE.
    pub fn data_in(&mut self, sqe: &Sqe) -> (Vec<u8>, Cqe) {
        match self.command(sqe, &[]).as_slice() {
            [Got::C2HData { data, flags, .. }, Got::Resp(cqe)] => {
                assert_eq!(flags & 0x0C, 0x04, "LAST_PDU without SUCCESS");
                (data.clone(), *cqe)
            }
            other => panic!("expected C2HData and CapsuleResp, got {other:?}"),
        }
    }

    /// The ICReq exchange with these digests.
    pub fn initialize(&mut self, header_digest: bool, data_digest: bool) {
        self.send(&ic_req(0, 0, header_digest, data_digest));
        let got = self.take();
        assert!(
            matches!(got.as_slice(), [Got::IcResp { cpda: 0, .. }]),
            "{got:?}"
        );
        self.host = HostFramer {
            header_digest,
            data_digest,
        };
    }

    /// ICReq, admin Connect (KATO `kato_ms`) to `subnqn`; returns the CQE.
    pub fn connect_admin_to(&mut self, subnqn: &str, kato_ms: u32) -> Cqe {
        self.initialize(false, false);
        let cid = self.cid();
        self.resp(
            &connect_sqe(cid, 0, 31, kato_ms),
            &connect_data(0xFFFF, subnqn, HOST),
        )
    }

    /// Property Set CC.
    pub fn set_cc(&mut self, value: u64) -> Cqe {
        let cid = self.cid();
        let mut s = Sqe::fabrics(0x00, cid).cdw(11, 0x14);
        s.0[48..56].copy_from_slice(&value.to_le_bytes());
        self.resp(&s, &[])
    }

    /// Property Get at `offset`, `eight` bytes wide or four.
    pub fn get_property(&mut self, offset: u32, eight: bool) -> Cqe {
        let cid = self.cid();
        let s = Sqe::fabrics(0x04, cid)
            .byte(40, u8::from(eight))
            .cdw(11, offset);
        self.resp(&s, &[])
    }

    /// The Linux host's admin bring-up: Connect, enable, Number of Queues (`io_queues`).
    /// Returns the controller ID.
    pub fn bring_up(&mut self, io_queues: u16) -> u16 {
        let cqe = self.connect_admin_to(SUBSYSTEM, 5000);
        assert_eq!(cqe.status, (0, 0));
        let cntlid = cqe.result as u16;
        assert_eq!(self.set_cc(LINUX_CC).status, (0, 0));
        assert_eq!(self.get_property(0x1C, false).result & 1, 1, "CSTS.RDY");
        let n = u32::from(io_queues - 1);
        let cid = self.cid();
        let cqe = self.resp(
            &Sqe::new(0x09, cid, 0).cdw(10, 0x07).cdw(11, n | n << 16),
            &[],
        );
        assert_eq!(cqe.status, (0, 0));
        cntlid
    }

    /// An I/O queue Connect on this (fresh) pair; returns the CQE.
    pub fn connect_io(&mut self, cntlid: u16, qid: u16, sqsize: u16) -> Cqe {
        self.initialize(false, false);
        let cid = self.cid();
        self.resp(
            &connect_sqe(cid, qid, sqsize, 0),
            &connect_data(cntlid, SUBSYSTEM, HOST),
        )
    }

    /// Advances virtual time and fires due timeouts.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.queue.poll_timeout().is_some_and(|d| d <= self.now) {
            self.queue.handle_timeout(self.now);
        }
        self.pump();
    }
}

/// An admin pair brought up with two I/O queues, and an I/O pair connected as queue 1.
pub fn admin_and_io() -> (Pair, Pair) {
    let mut admin = Pair::fresh();
    let cntlid = admin.bring_up(2);
    let mut io = admin.sibling();
    let cqe = io.connect_io(cntlid, 1, 15);
    assert_eq!(cqe.status, (0, 0), "{cqe:?}");
    (admin, io)
}

/// Fills a RAM namespace with a pattern and returns it.
pub fn fill(backend: &RamBackend, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    backend.write_at(&data, 0).unwrap();
    data
}
