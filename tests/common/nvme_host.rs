//! A small NVMe/TCP host for whole-binary tests: one queue per [`NvmeQueue`] (a TCP
//! connection), commands one at a time, PDUs built and parsed here from the NVMe/TCP 1.0 and
//! NVMe-oF 1.1 layouts, independently of the target's codec; header and data digests (CRC32C)
//! when asked for.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use iser_target::nvme::auth::{testing, DhchapSecret};

/// How long a response may take.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The host NQN the tests use unless they need another.
pub const HOST_NQN: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0d4d6c-2f53-4c33-9a7a-aa0000000001";
/// The discovery subsystem's NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// PDU types (NVMe/TCP 1.0).
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// One PDU from the controller: its header (CH and PSH) and data.
#[derive(Debug)]
pub struct Pdu {
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn kind(&self) -> u8 {
        self.header[0]
    }
}

/// A completion queue entry.
#[derive(Debug, Clone, Copy)]
pub struct Cqe {
    pub result: u64,
    pub sqhd: u16,
    pub cid: u16,
    /// (status code type, status code).
    pub status: (u8, u8),
    pub dnr: bool,
}

impl Cqe {
    fn parse(b: &[u8]) -> Cqe {
        let field = u16::from_le_bytes([b[14], b[15]]) >> 1;
        Cqe {
            result: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            sqhd: u16::from_le_bytes([b[8], b[9]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: (((field >> 8) & 7) as u8, field as u8),
            dnr: field & 1 << 14 != 0,
        }
    }

    pub fn ok(&self) -> bool {
        self.status == (0, 0)
    }
}

/// A submission queue entry under construction.
#[derive(Clone)]
pub struct Sqe(pub [u8; 64]);

impl Sqe {
    /// An admin or I/O command `opcode` on namespace `nsid`.
    pub fn new(opcode: u8, nsid: u32) -> Sqe {
        let mut b = [0u8; 64];
        b[0] = opcode;
        b[1] = 0x40; // PSDT: SGLs (NVMe-oF requires them)
        b[4..8].copy_from_slice(&nsid.to_le_bytes());
        Sqe(b)
    }

    /// A fabrics command of type `fctype`.
    pub fn fabrics(fctype: u8) -> Sqe {
        let mut s = Sqe::new(0x7F, 0);
        s.0[4..8].fill(0);
        s.0[4] = fctype;
        s
    }

    pub fn cdw(mut self, n: usize, value: u32) -> Sqe {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&value.to_le_bytes());
        self
    }

    pub fn bytes(mut self, at: usize, value: &[u8]) -> Sqe {
        self.0[at..at + value.len()].copy_from_slice(value);
        self
    }

    /// Starting LBA (CDW10-11) and 0's based block count (CDW12 bits 15:0).
    pub fn lba(self, slba: u64, blocks: u16) -> Sqe {
        self.bytes(40, &slba.to_le_bytes())
            .cdw(12, u32::from(blocks - 1))
    }

    fn set_sgl(&mut self, length: u32, in_capsule: bool) {
        let sgl = &mut self.0[24..40];
        sgl.fill(0);
        sgl[8..12].copy_from_slice(&length.to_le_bytes());
        // Data Block (offset) in the capsule, or Transport Data Block (NVMe/TCP 1.0).
        sgl[15] = if in_capsule { 0x01 } else { 0x5A };
    }
}

/// Connection options of a queue.
pub struct Options<'a> {
    pub subsystem: &'a str,
    pub host_nqn: &'a str,
    /// 0 for the admin queue.
    pub qid: u16,
    /// The controller an I/O queue joins (0xFFFF for an admin queue).
    pub cntlid: u16,
    pub sqsize: u16,
    pub kato_ms: u32,
}

impl<'a> Options<'a> {
    /// An admin queue's Connect: a new controller (0xFFFF), 32 entries, KATO 30 s.
    pub fn admin(subsystem: &'a str, host_nqn: &'a str) -> Self {
        Options {
            subsystem,
            host_nqn,
            qid: 0,
            cntlid: 0xFFFF,
            sqsize: 31,
            kato_ms: 30_000,
        }
    }
}

/// Which digests a connection uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// One NVMe/TCP connection, past ICReq.
pub struct NvmeQueue {
    stream: TcpStream,
    next_cid: u16,
    digests: Digests,
    /// MAXH2CDATA from ICResp.
    pub maxh2cdata: u32,
}

/// A 128-byte ICReq (PFV `pfv`, no digests).
pub fn ic_req(pfv: u16) -> Vec<u8> {
    ic_req_with(pfv, Digests::default())
}

fn ic_req_with(pfv: u16, digests: Digests) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[0] = pdu_type::IC_REQ;
    b[2] = 128;
    b[4..8].copy_from_slice(&128u32.to_le_bytes());
    b[8..10].copy_from_slice(&pfv.to_le_bytes());
    b[11] = u8::from(digests.header) | u8::from(digests.data) << 1;
    b
}

/// Frames a host PDU: `header` (CH and PSH, PLEN and PDO filled in here), its header digest,
/// `data` at the next dword and its data digest, as `digests` say.
fn frame(mut header: Vec<u8>, data: &[u8], digests: Digests) -> Vec<u8> {
    let hlen = header.len();
    let hd = if digests.header { 4 } else { 0 };
    let dd = if digests.data && !data.is_empty() {
        4
    } else {
        0
    };
    let pdo = if data.is_empty() { 0 } else { hlen + hd };
    header[1] |= u8::from(hd > 0) | if dd > 0 { 2 } else { 0 };
    header[3] = pdo as u8;
    let plen = (hlen + hd + data.len() + dd) as u32;
    header[4..8].copy_from_slice(&plen.to_le_bytes());
    let mut pdu = header;
    if hd > 0 {
        let digest = crc32c::crc32c(&pdu);
        pdu.extend_from_slice(&digest.to_le_bytes());
    }
    pdu.extend_from_slice(data);
    if dd > 0 {
        pdu.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
    pdu
}

/// Reads one PDU, checking the digests its flags announce; an error when the stream ends
/// first or a digest is wrong.
pub fn read_pdu(stream: &mut TcpStream) -> io::Result<Pdu> {
    let mut ch = [0u8; 8];
    stream.read_exact(&mut ch)?;
    let hlen = usize::from(ch[2]);
    let pdo = usize::from(ch[3]);
    let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
    if !(8..=16 << 20).contains(&plen) || hlen < 8 || hlen > plen {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad common header",
        ));
    }
    let mut rest = vec![0u8; plen - 8];
    stream.read_exact(&mut rest)?;
    let mut header = ch.to_vec();
    header.extend_from_slice(&rest[..hlen - 8]);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad {what}"));
    if ch[1] & 0x01 != 0 {
        let got = rest
            .get(hlen - 8..hlen - 4)
            .ok_or_else(|| bad("header digest"))?;
        if got != crc32c::crc32c(&header).to_le_bytes() {
            return Err(bad("header digest"));
        }
    }
    let dd = if ch[1] & 0x02 != 0 { 4 } else { 0 };
    let data = if pdo > 0 && pdo + dd <= plen {
        let data = rest[pdo - 8..plen - 8 - dd].to_vec();
        if dd > 0 && rest[plen - 8 - dd..] != crc32c::crc32c(&data).to_le_bytes() {
            return Err(bad("data digest"));
        }
        data
    } else {
        Vec::new()
    };
    Ok(Pdu { header, data })
}

impl NvmeQueue {
    /// Opens a connection to 127.0.0.1:`port` and exchanges ICReq/ICResp, without digests.
    pub fn open(port: u16) -> io::Result<NvmeQueue> {
        NvmeQueue::open_with(port, Digests::default())
    }

    /// Opens a connection asking for `digests`.
    pub fn open_with(port: u16, digests: Digests) -> io::Result<NvmeQueue> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&addr, RESPONSE_TIMEOUT)?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        stream.write_all(&ic_req_with(0, digests))?;
        let resp = read_pdu(&mut stream)?;
        if resp.kind() != pdu_type::IC_RESP || resp.header.len() != 128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected ICResp, got {:?}", &resp.header[..8]),
            ));
        }
        let maxh2cdata = u32::from_le_bytes(resp.header[12..16].try_into().unwrap());
        let granted = Digests {
            header: resp.header[11] & 1 != 0,
            data: resp.header[11] & 2 != 0,
        };
        if granted != digests {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("asked for {digests:?}, ICResp grants {granted:?}"),
            ));
        }
        Ok(NvmeQueue {
            stream,
            next_cid: 1,
            digests,
            maxh2cdata,
        })
    }

    /// Opens a connection and sends Connect: the CQE (whose result is the controller ID).
    pub fn connect(port: u16, options: &Options<'_>) -> io::Result<(NvmeQueue, Cqe)> {
        NvmeQueue::connect_with(port, options, Digests::default())
    }

    /// [`NvmeQueue::connect`] with digests.
    pub fn connect_with(
        port: u16,
        options: &Options<'_>,
        digests: Digests,
    ) -> io::Result<(NvmeQueue, Cqe)> {
        let mut queue = NvmeQueue::open_with(port, digests)?;
        let mut data = vec![0u8; 1024];
        data[0..16].copy_from_slice(&host_id(options.host_nqn));
        data[16..18].copy_from_slice(&options.cntlid.to_le_bytes());
        data[256..256 + options.subsystem.len()].copy_from_slice(options.subsystem.as_bytes());
        data[512..512 + options.host_nqn.len()].copy_from_slice(options.host_nqn.as_bytes());
        let sqe = Sqe::fabrics(0x01)
            .bytes(42, &options.qid.to_le_bytes())
            .bytes(44, &options.sqsize.to_le_bytes())
            .cdw(12, options.kato_ms);
        let (cqe, _) = queue.command(sqe, &data, 0)?;
        Ok((queue, cqe))
    }

    /// The raw stream, to send malformed bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Runs one command: `data_out` in the capsule when it fits 8 KiB, else through R2Ts;
    /// `data_in` bytes expected back through C2HData. Returns the completion and the data.
    pub fn command(
        &mut self,
        mut sqe: Sqe,
        data_out: &[u8],
        data_in: usize,
    ) -> io::Result<(Cqe, Vec<u8>)> {
        let in_capsule = !data_out.is_empty() && data_out.len() <= 8192;
        sqe.set_sgl(data_out.len().max(data_in) as u32, in_capsule);
        let data = if in_capsule { data_out } else { &[] };
        let cid = self.send_capsule(sqe, data)?;
        let mut received = vec![0u8; data_in];
        loop {
            let p = read_pdu(&mut self.stream)?;
            match p.kind() {
                pdu_type::CAPSULE_RESP => {
                    let cqe = Cqe::parse(&p.header[8..24]);
                    return Ok((cqe, received));
                }
                pdu_type::C2H_DATA => {
                    let offset = u32::from_le_bytes(p.header[12..16].try_into().unwrap()) as usize;
                    let end = offset + p.data.len();
                    if end > received.len() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "C2HData beyond"));
                    }
                    received[offset..end].copy_from_slice(&p.data);
                }
                pdu_type::R2T => {
                    let ttag = u16::from_le_bytes([p.header[10], p.header[11]]);
                    let r2to = u32::from_le_bytes(p.header[12..16].try_into().unwrap());
                    let r2tl = u32::from_le_bytes(p.header[16..20].try_into().unwrap());
                    self.h2c_data(cid, ttag, r2to, &data_out[r2to as usize..][..r2tl as usize])?;
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected PDU type {other:#x}: {:?}", p.header),
                    ))
                }
            }
        }
    }

    /// Sends `sqe` with the next CID and `data` in the capsule: the CID.
    fn send_capsule(&mut self, mut sqe: Sqe, data: &[u8]) -> io::Result<u16> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.0[2..4].copy_from_slice(&cid.to_le_bytes());
        let mut header = vec![0u8; 72];
        header[0] = pdu_type::CAPSULE_CMD;
        header[2] = 72;
        header[8..72].copy_from_slice(&sqe.0);
        self.stream.write_all(&frame(header, data, self.digests))?;
        Ok(cid)
    }

    /// Sends `sqe`, a command without data, and does not wait for its completion
    /// ([`NvmeQueue::next_completion`]): its CID.
    pub fn post(&mut self, mut sqe: Sqe) -> io::Result<u16> {
        sqe.set_sgl(0, false);
        self.send_capsule(sqe, &[])
    }

    /// Posts an Asynchronous Event Request: the controller holds it until it has an event to
    /// report. Returns its CID.
    pub fn post_async_event_request(&mut self) -> io::Result<u16> {
        self.post(Sqe::new(0x0C, 0))
    }

    /// The next completion the controller sends, within `timeout`: that of a command posted
    /// without waiting.
    pub fn next_completion(&mut self, timeout: Duration) -> io::Result<Cqe> {
        self.stream.set_read_timeout(Some(timeout))?;
        let pdu = read_pdu(&mut self.stream);
        self.stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        let pdu = pdu?;
        if pdu.kind() != pdu_type::CAPSULE_RESP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected a CapsuleResp, got PDU type {:#x}", pdu.kind()),
            ));
        }
        Ok(Cqe::parse(&pdu.header[8..24]))
    }

    /// Set Features, Asynchronous Event Configuration: enables the notices of `bits`.
    pub fn enable_notices(&mut self, bits: u32) -> io::Result<Cqe> {
        let sqe = Sqe::new(0x09, 0).cdw(10, 0x0B).cdw(11, bits);
        Ok(self.command(sqe, &[], 0)?.0)
    }

    /// Sends `data` for an R2T, in PDUs of at most MAXH2CDATA.
    fn h2c_data(&mut self, cid: u16, ttag: u16, offset: u32, data: &[u8]) -> io::Result<()> {
        let chunk = self.maxh2cdata as usize;
        let count = data.len().div_ceil(chunk);
        for (i, piece) in data.chunks(chunk).enumerate() {
            let mut header = vec![0u8; 24];
            header[0] = pdu_type::H2C_DATA;
            header[1] = if i + 1 == count { 0x04 } else { 0 }; // LAST_PDU
            header[2] = 24;
            header[8..10].copy_from_slice(&cid.to_le_bytes());
            header[10..12].copy_from_slice(&ttag.to_le_bytes());
            let datao = offset + (i * chunk) as u32;
            header[12..16].copy_from_slice(&datao.to_le_bytes());
            header[16..20].copy_from_slice(&(piece.len() as u32).to_le_bytes());
            self.stream.write_all(&frame(header, piece, self.digests))?;
        }
        Ok(())
    }

    /// Property Set (CC etc.) on an admin queue.
    pub fn property_set(&mut self, offset: u32, value: u32) -> io::Result<Cqe> {
        let sqe = Sqe::fabrics(0x00)
            .cdw(11, offset)
            .bytes(48, &u64::from(value).to_le_bytes());
        Ok(self.command(sqe, &[], 0)?.0)
    }

    /// Property Get of a 4-byte property.
    pub fn property_get(&mut self, offset: u32) -> io::Result<u64> {
        let (cqe, _) = self.command(Sqe::fabrics(0x04).cdw(11, offset), &[], 0)?;
        assert!(cqe.ok(), "Property Get {offset:#x}: {cqe:?}");
        Ok(cqe.result)
    }

    /// CAP, the 8-byte Controller Capabilities property (Property Get with ATTRIB 1).
    pub fn capabilities(&mut self) -> io::Result<u64> {
        let (cqe, _) = self.command(Sqe::fabrics(0x04).cdw(10, 1).cdw(11, 0), &[], 0)?;
        assert!(cqe.ok(), "Property Get CAP: {cqe:?}");
        Ok(cqe.result)
    }

    /// Enables the controller (CC.EN with 64-byte SQEs and 16-byte CQEs) and waits for
    /// CSTS.RDY, as Linux's host does.
    pub fn enable(&mut self) -> io::Result<()> {
        let cqe = self.property_set(0x14, 1 | 6 << 16 | 4 << 20)?;
        assert!(cqe.ok(), "CC.EN: {cqe:?}");
        for _ in 0..100 {
            if self.property_get(0x1C)? & 1 == 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "CSTS.RDY never set",
        ))
    }

    /// Set Features, Number of Queues: asks for `n` I/O queues.
    pub fn set_io_queues(&mut self, n: u16) -> io::Result<Cqe> {
        let count = u32::from(n - 1);
        let sqe = Sqe::new(0x09, 0).cdw(10, 0x07).cdw(11, count | count << 16);
        Ok(self.command(sqe, &[], 0)?.0)
    }

    /// Identify with `cns` (4096 bytes).
    pub fn identify(&mut self, cns: u8, nsid: u32) -> io::Result<(Cqe, Vec<u8>)> {
        self.command(Sqe::new(0x06, nsid).cdw(10, u32::from(cns)), &[], 4096)
    }

    /// NSZE of namespace `nsid` (Identify Namespace), in blocks.
    pub fn namespace_size(&mut self, nsid: u32) -> io::Result<u64> {
        let (cqe, ns) = self.identify(0x00, nsid)?;
        if !cqe.ok() {
            return Err(io::Error::other(format!("Identify Namespace: {cqe:?}")));
        }
        Ok(u64::from_le_bytes(ns[0..8].try_into().unwrap()))
    }

    /// Get Log Page `lid`, `len` bytes (a multiple of 4).
    pub fn get_log_page(&mut self, lid: u8, len: usize) -> io::Result<(Cqe, Vec<u8>)> {
        let numd = (len / 4 - 1) as u32;
        let sqe = Sqe::new(0x02, 0).cdw(10, u32::from(lid) | (numd & 0xFFFF) << 16);
        self.command(sqe, &[], len)
    }

    /// Write `data` at `slba` of namespace `nsid` (blocks of `block_size` bytes).
    pub fn write(
        &mut self,
        nsid: u32,
        slba: u64,
        data: &[u8],
        block_size: usize,
    ) -> io::Result<Cqe> {
        let blocks = (data.len() / block_size) as u16;
        Ok(self
            .command(Sqe::new(0x01, nsid).lba(slba, blocks), data, 0)?
            .0)
    }

    /// Read `len` bytes at `slba` of namespace `nsid`.
    pub fn read(
        &mut self,
        nsid: u32,
        slba: u64,
        len: usize,
        block_size: usize,
    ) -> io::Result<(Cqe, Vec<u8>)> {
        let blocks = (len / block_size) as u16;
        self.command(Sqe::new(0x02, nsid).lba(slba, blocks), &[], len)
    }
}

impl NvmeQueue {
    /// The host's side of a unidirectional DH-HMAC-CHAP exchange as Linux's host runs it
    /// (SHA-256 first, the NULL DH group first, a 4 KiB AUTH_Receive buffer), with `secret`,
    /// in the DH group the controller's Challenge names: the controller's last message, a
    /// Success1 or a Failure1.
    pub fn authenticate(
        &mut self,
        secret: &DhchapSecret,
        host_nqn: &str,
        subsystem: &str,
    ) -> io::Result<Vec<u8>> {
        let negotiate = testing::negotiate(1);
        self.auth_send(&negotiate)?;
        let challenge = testing::read_challenge(&self.auth_receive()?);
        let random = testing::counting_random;
        let reply = testing::reply_to(secret, &challenge, host_nqn, subsystem, random);
        self.auth_send(&reply)?;
        self.auth_receive()
    }

    fn auth_sqe(fctype: u8, length: usize) -> Sqe {
        // SPSP0, SPSP1, SECP (DH-HMAC-CHAP), TL or AL.
        Sqe::fabrics(fctype)
            .bytes(41, &[1, 1, 0xE9])
            .cdw(11, length as u32)
    }

    fn auth_send(&mut self, message: &[u8]) -> io::Result<()> {
        let (cqe, _) = self.command(Self::auth_sqe(0x05, message.len()), message, 0)?;
        expect_ok("AUTH_Send", cqe)
    }

    fn auth_receive(&mut self) -> io::Result<Vec<u8>> {
        let (cqe, data) = self.command(Self::auth_sqe(0x06, 4096), &[], 4096)?;
        expect_ok("AUTH_Receive", cqe)?;
        Ok(data)
    }
}

fn expect_ok(what: &str, cqe: Cqe) -> io::Result<()> {
    if cqe.ok() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what}: {cqe:?}")))
    }
}

/// The Host Identifier this host sends with `host_nqn`: one per NQN, as a real host has.
pub fn host_id(host_nqn: &str) -> [u8; 16] {
    let mut id = [0x5Au8; 16];
    for (i, b) in host_nqn.bytes().enumerate() {
        id[i % 16] = id[i % 16].wrapping_mul(31) ^ b;
    }
    id
}

/// Connects an admin queue to `subsystem`, enables the controller and asks for `io_queues`
/// I/O queues: the queue and the controller ID.
pub fn admin_queue(port: u16, subsystem: &str, host_nqn: &str, io_queues: u16) -> (NvmeQueue, u16) {
    let options = Options::admin(subsystem, host_nqn);
    let (mut admin, cqe) = NvmeQueue::connect(port, &options).expect("admin queue connect");
    assert!(cqe.ok(), "admin Connect: {cqe:?}");
    let cntlid = cqe.result as u16;
    admin.enable().expect("enable the controller");
    if subsystem != DISCOVERY_NQN {
        let cqe = admin.set_io_queues(io_queues).expect("Set Features");
        assert!(cqe.ok(), "Set Features (Number of Queues): {cqe:?}");
    }
    (admin, cntlid)
}

/// Connects I/O queue `qid` of controller `cntlid`.
pub fn io_queue(port: u16, subsystem: &str, host_nqn: &str, cntlid: u16, qid: u16) -> NvmeQueue {
    io_queue_with(port, subsystem, host_nqn, cntlid, qid, Digests::default())
}

/// [`io_queue`] with digests.
pub fn io_queue_with(
    port: u16,
    subsystem: &str,
    host_nqn: &str,
    cntlid: u16,
    qid: u16,
    digests: Digests,
) -> NvmeQueue {
    let options = Options {
        subsystem,
        host_nqn,
        qid,
        cntlid,
        sqsize: 127,
        kato_ms: 0,
    };
    let (queue, cqe) = NvmeQueue::connect_with(port, &options, digests).expect("I/O queue connect");
    assert!(cqe.ok(), "I/O queue Connect: {cqe:?}");
    queue
}
