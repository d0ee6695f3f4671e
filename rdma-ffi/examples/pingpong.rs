//! End-to-end proof of `rdma-ffi` on a real RDMA device (SoftRoCE in the
//! QEMU guest, see `scripts/guest/rdma-ffi-test.sh`).
//!
//! ```text
//! pingpong selftest  [ADDR] [PORT]   passive + active side in one process
//! pingpong kill-test [ADDR] [PORT]   peer process SIGKILLed mid-transfer
//! pingpong client ADDR PORT --hang   (used by kill-test) connect, then wait to be killed
//! ```
//! Exit status 0 = proof passed; output lines prefixed `PASS:` / `FAIL:`.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_ffi::{
    list_devices, live_counts, raise_memlock_limit, Access, AsyncEventKind, CmEvent, CmEventKind,
    CmId, CompletionChannel, CompletionQueue, ConnParams, EventChannel, MemoryRegion,
    ProtectionDomain, QpCaps, QueuePair, SendList, SendOp, SendWr, WcOpcode, WcStatus,
    WorkCompletion,
};

type R<T> = Result<T, Box<dyn StdError + Send + Sync>>;

const MIB: usize = 1 << 20;
const ISER_HDR: [u8; 4] = [0x80, 0, 0, 0];
const T: Duration = Duration::from_secs(20);

macro_rules! ensure {
    ($c:expr, $($a:tt)+) => { if !$c { return Err(format!($($a)+).into()); } };
}

fn pattern_a(i: usize) -> u8 {
    (i.wrapping_mul(7) + 1) as u8
}
fn pattern_b(i: usize) -> u8 {
    (i.wrapping_mul(13) ^ 0x5a) as u8
}

fn fill(mr: &MemoryRegion, f: fn(usize) -> u8) -> R<()> {
    let v: Vec<u8> = (0..mr.len()).map(f).collect();
    mr.write(0, &v)?;
    Ok(())
}

fn verify(mr: &MemoryRegion, f: fn(usize) -> u8, what: &str) -> R<()> {
    let mut v = vec![0u8; mr.len()];
    mr.read(0, &mut v)?;
    if let Some(i) = v.iter().enumerate().position(|(i, b)| *b != f(i)) {
        return Err(format!("{what}: byte {i} is {:#x}, expected {:#x}", v[i], f(i)).into());
    }
    println!("PASS: {what}: {} bytes verified", v.len());
    Ok(())
}

/// Wait for a CM event of `want` kind; other benign events are logged and skipped.
fn wait_event(ch: &EventChannel, want: CmEventKind) -> R<CmEvent> {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "timed out waiting for {want:?}");
        let Some(ev) = ch.get_event_timeout(left)? else {
            continue;
        };
        if ev.kind == want {
            return Ok(ev);
        }
        match ev.kind {
            CmEventKind::AddrError
            | CmEventKind::RouteError
            | CmEventKind::ConnectError
            | CmEventKind::Unreachable
            | CmEventKind::Rejected
            | CmEventKind::DeviceRemoval => {
                return Err(format!(
                    "waiting for {want:?}: got {:?} status {}",
                    ev.kind, ev.status
                )
                .into())
            }
            other => println!("  (skipping CM event {other:?} on id {})", ev.id),
        }
    }
}

fn wait_wc(cq: &CompletionQueue, what: &str) -> R<WorkCompletion> {
    let deadline = Instant::now() + T;
    let mut v = Vec::new();
    loop {
        if cq.poll(&mut v, 1)? == 1 {
            let wc = v.pop().unwrap();
            ensure!(wc.status == WcStatus::Success, "{what}: completion {wc:?}");
            return Ok(wc);
        }
        ensure!(Instant::now() < deadline, "{what}: no completion");
        std::thread::sleep(Duration::from_micros(200));
    }
}

struct Desc {
    addr: u64,
    rkey: u32,
    len: u32,
}

fn encode(d: &Desc) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.rkey.to_le_bytes());
    b[12..].copy_from_slice(&d.len.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Desc {
    Desc {
        addr: u64::from_le_bytes(b[..8].try_into().unwrap()),
        rkey: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        len: u32::from_le_bytes(b[12..16].try_into().unwrap()),
    }
}

fn print_devices() -> R<()> {
    let devs = list_devices()?;
    ensure!(!devs.is_empty(), "list_devices found no RDMA device");
    for d in &devs {
        println!("{d}");
    }
    println!("PASS: list_devices: {} device(s)", devs.len());
    Ok(())
}

// ------------------------------------------------------------------ active side

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Full exchange, orderly disconnect + drain.
    Full,
    /// Connect, send the descriptor, then wait to be SIGKILLed.
    Hang,
    /// Connect, send the descriptor, wait for the peer's disconnect, then
    /// drop everything without disconnect/drain (Drop must cope).
    ExpectDisconnect,
}

fn client(addr: SocketAddr, mode: Mode) -> R<()> {
    let ch = EventChannel::new()?;
    let id = CmId::create(&ch)?;
    id.resolve_addr(None, addr, Duration::from_secs(2))?;
    wait_event(&ch, CmEventKind::AddrResolved)?;
    id.resolve_route(Duration::from_secs(2))?;
    wait_event(&ch, CmEventKind::RouteResolved)?;
    let ctx = id.verbs().ok_or("no verbs context after resolve")?;
    let pd = ProtectionDomain::new(&ctx)?;
    let scq = CompletionQueue::new(&ctx, 64, None)?;
    let rcq = CompletionQueue::new(&ctx, 64, None)?;
    let qp = QueuePair::create(id, &pd, &scq, &rcq, QpCaps::default())?;
    let data = MemoryRegion::new(
        &pd,
        MIB,
        Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
    )?;
    fill(&data, pattern_a)?;
    let msg = MemoryRegion::new(&pd, 4096, Access::LOCAL_WRITE)?;
    qp.post_recv(100, &msg, 0, 64)?;
    qp.id().connect(&ConnParams {
        private_data: ISER_HDR.to_vec(),
        initiator_depth: 1,
        responder_resources: 4,
        retry_count: 7,
        rnr_retry_count: 7,
    })?;
    let ev = wait_event(&ch, CmEventKind::Established)?;
    ensure!(
        ev.private_data.starts_with(&ISER_HDR),
        "REP private data {:02x?}",
        ev.private_data
    );
    println!(
        "client: established {:?} -> {:?}, REP private data {:02x?} ({} bytes)",
        qp.id().local_addr(),
        qp.id().peer_addr(),
        &ev.private_data[..4],
        ev.private_data.len()
    );
    msg.write(
        1024,
        &encode(&Desc {
            addr: data.addr(),
            rkey: data.rkey(),
            len: MIB as u32,
        }),
    )?;
    qp.post_send(1, &msg, 1024, 16, true, None)?;
    let wc = wait_wc(&scq, "client send")?;
    ensure!(
        wc.opcode == WcOpcode::Send,
        "client send opcode {:?}",
        wc.opcode
    );
    if mode == Mode::ExpectDisconnect {
        qp.post_recv(101, &msg, 0, 64)?; // left outstanding on purpose
        wait_event(&ch, CmEventKind::Disconnected)?;
        println!(
            "client: peer disconnected; dropping QP with {:?} outstanding, no drain",
            qp.outstanding()
        );
        return Ok(());
    }
    if mode == Mode::Hang {
        println!("client: ready, waiting to be killed");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let wc = wait_wc(&rcq, "client recv DONE")?;
    let mut done = [0u8; 4];
    msg.read(0, &mut done)?;
    ensure!(
        wc.byte_len == 4 && &done == b"DONE",
        "client got {:?} {:?}",
        wc,
        done
    );
    verify(
        &data,
        pattern_b,
        "RDMA WRITE from passive side into active MR",
    )?;
    qp.id().disconnect()?;
    wait_event(&ch, CmEventKind::Disconnected)?;
    let flushed = qp.drain(Duration::from_secs(5))?;
    ensure!(
        qp.outstanding() == (0, 0),
        "client outstanding after drain {:?}",
        qp.outstanding()
    );
    println!(
        "client: disconnected and drained ({} flush completions)",
        flushed.len()
    );
    Ok(())
}

// ----------------------------------------------------------------- passive side

struct Conn {
    qp: QueuePair,
    scq: Arc<CompletionQueue>,
    msg: Arc<MemoryRegion>,
    buf: Arc<MemoryRegion>,
    peer: Desc,
}

/// Listen, take one connection, post the receive BEFORE accept, accept with
/// 4-byte private data 0x80 and wait for the peer's descriptor Send.
fn accept_one(ch: &EventChannel, listener: &CmId) -> R<Conn> {
    let ev = wait_event(ch, CmEventKind::ConnectRequest)?;
    ensure!(
        ev.listen_id == Some(listener.handle()),
        "listen handle {:?}",
        ev.listen_id
    );
    println!(
        "server: connect request: private data {} bytes, starts {:02x?}; initiator_depth {} responder_resources {} retry {} rnr {}",
        ev.private_data.len(),
        &ev.private_data[..ev.private_data.len().min(4)],
        ev.conn.initiator_depth,
        ev.conn.responder_resources,
        ev.conn.retry_count,
        ev.conn.rnr_retry_count
    );
    ensure!(
        ev.private_data.starts_with(&ISER_HDR),
        "REQ private data {:02x?}",
        ev.private_data
    );
    println!("PASS: passive side sees the active side's private data at the start");
    let id = ev.new_id.ok_or("ConnectRequest without id")?;
    ensure!(id.handle() == ev.id, "event id/handle mismatch");
    let ctx = id.verbs().ok_or("no verbs on connect request id")?;
    let attrs = ctx.attrs()?;
    println!("server: device {} {:?}", ctx.device_name(), attrs);
    let pd = ProtectionDomain::new(&ctx)?;
    let cch = CompletionChannel::new(&ctx)?;
    let scq = CompletionQueue::new(&ctx, 64, None)?;
    let rcq = CompletionQueue::new(&ctx, 64, Some(&cch))?;
    let qp = QueuePair::create(id, &pd, &scq, &rcq, QpCaps::default())?;
    let msg = MemoryRegion::new(&pd, 4096, Access::LOCAL_WRITE)?;
    let buf = MemoryRegion::new(&pd, MIB, Access::LOCAL_WRITE)?;
    qp.post_recv(200, &msg, 0, 64)?; // before accept
    rcq.req_notify(false)?;
    let depth = (ev.conn.initiator_depth as i32)
        .min(attrs.max_qp_init_rd_atom)
        .max(1) as u8;
    qp.id().accept(&ConnParams {
        private_data: ISER_HDR.to_vec(),
        initiator_depth: depth,
        responder_resources: 1,
        retry_count: 7,
        rnr_retry_count: 7,
    })?;
    // The first Send may complete before ESTABLISHED: wait on the completion channel.
    let fired = cch
        .get_event_timeout(T)?
        .ok_or("no completion-channel event for the first receive")?;
    ensure!(
        fired == rcq.handle(),
        "channel event for cq {fired}, expected {}",
        rcq.handle()
    );
    let wc = wait_wc(&rcq, "server recv descriptor")?;
    ensure!(
        wc.opcode == WcOpcode::Recv && wc.byte_len == 16 && wc.wr_id == 200,
        "recv {wc:?}"
    );
    wait_event(ch, CmEventKind::Established)?;
    // Data before the RTU raises COMM_EST on some devices: tell rdma_cm.
    ctx.set_async_nonblocking(true)?;
    while let Some(ae) = ctx.get_async_event()? {
        println!("server: async event {ae:?}");
        if ae.kind == AsyncEventKind::CommEst && ae.qp_num == Some(qp.qp_num()) {
            qp.id().notify_comm_est()?;
            println!("server: COMM_EST -> rdma_notify");
        }
    }
    println!(
        "server: established {:?} <- {:?}",
        qp.id().local_addr(),
        qp.id().peer_addr()
    );
    let mut d = [0u8; 16];
    msg.read(0, &mut d)?;
    let peer = decode(&d);
    ensure!(peer.len as usize == MIB, "peer len {}", peer.len);
    Ok(Conn {
        qp,
        scq,
        msg,
        buf,
        peer,
    })
}

fn listen(ch: &EventChannel, addr: SocketAddr) -> R<CmId> {
    let l = CmId::create(ch)?;
    l.bind(addr)?;
    l.listen(8)?;
    println!(
        "server: listening on {:?} (handle {})",
        l.local_addr(),
        l.handle()
    );
    Ok(l)
}

fn selftest(addr: SocketAddr) -> R<()> {
    print_devices()?;
    let ch = EventChannel::new()?;
    let listener = listen(&ch, addr)?;
    let cl = std::thread::spawn(move || client(addr, Mode::Full).map_err(|e| e.to_string()));
    {
        let c = accept_one(&ch, &listener)?;
        println!("PASS: Send active -> passive (receive posted before accept)");
        // RDMA READ 1 MiB out of the peer's MR.
        c.qp.post_rdma_read(1, &c.buf, 0, MIB, c.peer.addr, c.peer.rkey, true)?;
        let wc = wait_wc(&c.scq, "RDMA READ")?;
        ensure!(
            wc.opcode == WcOpcode::RdmaRead && wc.wr_id == 1,
            "read wc {wc:?}"
        );
        verify(&c.buf, pattern_a, "RDMA READ of the active side's MR")?;
        // The same 1 MiB again as two chained RDMA Reads in one post, only the last signaled:
        // its completion retires the first (RC completes a send queue in order).
        fill(&c.buf, |_| 0)?;
        let half = MIB / 2;
        let reads = [0, half].map(|at| SendWr {
            wr_id: 4 + at as u64 / half as u64,
            op: SendOp::RdmaRead {
                remote_addr: c.peer.addr + at as u64,
                rkey: c.peer.rkey,
            },
            mr: &c.buf,
            offset: at,
            len: half,
            signaled: at == half,
        });
        let mut list = SendList::new();
        for read in reads {
            list.push(read)?;
        }
        c.qp.post_list(&mut list)?;
        let wc = wait_wc(&c.scq, "chained RDMA READs")?;
        ensure!(
            wc.opcode == WcOpcode::RdmaRead && wc.wr_id == 5,
            "chained read wc {wc:?}"
        );
        ensure!(
            c.qp.outstanding() == (0, 0),
            "outstanding after chained reads {:?}",
            c.qp.outstanding()
        );
        verify(
            &c.buf,
            pattern_a,
            "two chained RDMA READs of the active side's MR",
        )?;
        // RDMA WRITE 1 MiB (unsignaled) followed by a signaled Send: the Send's
        // completion retires the unsignaled write too.
        fill(&c.buf, pattern_b)?;
        c.qp.post_rdma_write(2, &c.buf, 0, MIB, c.peer.addr, c.peer.rkey, false)?;
        c.msg.write(2048, b"DONE")?;
        c.qp.post_send(3, &c.msg, 2048, 4, true, None)?;
        ensure!(
            c.qp.outstanding() == (2, 0),
            "outstanding {:?}",
            c.qp.outstanding()
        );
        let wc = wait_wc(&c.scq, "Send DONE")?;
        ensure!(
            wc.wr_id == 3 && wc.opcode == WcOpcode::Send,
            "send wc {wc:?}"
        );
        ensure!(
            c.qp.outstanding() == (0, 0),
            "outstanding after send {:?}",
            c.qp.outstanding()
        );
        println!("PASS: RDMA WRITE (unsignaled) + Send passive -> active; outstanding table empty");
        // Slice access only once no WR holds the MR.
        let mut buf = c.buf;
        ensure!(
            Arc::get_mut(&mut buf).and_then(|m| m.as_slice()).is_some(),
            "no exclusive access to idle local MR"
        );
        let qp = c.qp;
        qp.post_recv(201, &c.msg, 0, 64)?; // will be flushed
        let mut data_again = c.msg.clone();
        ensure!(
            Arc::get_mut(&mut data_again).is_none(),
            "MR with a posted WR must not be exclusively accessible"
        );
        drop(data_again);
        wait_event(&ch, CmEventKind::Disconnected)?;
        qp.id().disconnect().ok(); // already disconnected by the peer; harmless
        let flushed = qp.drain(Duration::from_secs(5))?;
        ensure!(
            flushed
                .iter()
                .any(|w| w.wr_id == 201 && w.status == WcStatus::WrFlushErr),
            "expected the posted receive to flush: {flushed:?}"
        );
        println!(
            "PASS: DISCONNECTED -> drain: {} flush completion(s), table empty",
            flushed.len()
        );
    }
    cl.join().map_err(|_| "client thread panicked")??;
    println!("PASS: active side verified, disconnected and drained");
    drop(listener);
    let lc = live_counts();
    println!("live objects after teardown: {lc:?}");
    ensure!(lc == Default::default(), "leaked objects: {lc:?}");
    println!("PASS: no leaked MRs/QPs/CQs/PDs/ids");
    Ok(())
}

/// The passive side drops its connection (QP with outstanding receives and
/// an unsignaled write) without disconnect/drain; the active side drops
/// without drain after DISCONNECTED. Drop must disconnect, flush and free
/// everything on both sides.
fn drop_test(addr: SocketAddr) -> R<()> {
    let ch = EventChannel::new()?;
    let listener = listen(&ch, addr)?;
    let cl =
        std::thread::spawn(move || client(addr, Mode::ExpectDisconnect).map_err(|e| e.to_string()));
    {
        let c = accept_one(&ch, &listener)?;
        for i in 0..4 {
            c.qp.post_recv(300 + i, &c.msg, 0, 64)?;
        }
        c.qp.post_rdma_write(400, &c.buf, 0, 4096, c.peer.addr, c.peer.rkey, false)?;
        println!(
            "server: dropping connection with {:?} outstanding, no disconnect/drain",
            c.qp.outstanding()
        );
        let t0 = Instant::now();
        drop(c);
        println!("server: Drop took {:?}", t0.elapsed());
    }
    cl.join().map_err(|_| "client thread panicked")??;
    drop(listener);
    let lc = live_counts();
    ensure!(lc == Default::default(), "leaked objects: {lc:?}");
    println!("PASS: Drop without drain on both sides left no objects: {lc:?}");
    Ok(())
}

fn kill_test(addr: SocketAddr) -> R<()> {
    let ch = EventChannel::new()?;
    let listener = listen(&ch, addr)?;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args([
            "client",
            &addr.ip().to_string(),
            &addr.port().to_string(),
            "--hang",
        ])
        .spawn()?;
    let result = (|| -> R<()> {
        let c = accept_one(&ch, &listener)?;
        ch.set_nonblocking(true)?;
        let start = Instant::now();
        let mut reads = 0u64;
        let mut killed_at = None;
        let mut posted = false;
        let mut v = Vec::new();
        let outcome = loop {
            ensure!(
                start.elapsed() < Duration::from_secs(90),
                "no error/flush or DISCONNECTED within 90 s"
            );
            if !posted {
                c.qp.post_rdma_read(reads, &c.buf, 0, MIB, c.peer.addr, c.peer.rkey, true)?;
                posted = true;
            }
            if c.scq.poll(&mut v, 4)? > 0 {
                let wc = v.pop().unwrap();
                if wc.status != WcStatus::Success {
                    break format!(
                        "error completion {:?} (vendor_err {})",
                        wc.status, wc.vendor_err
                    );
                }
                reads += 1;
                posted = false;
                if reads == 3 {
                    child.kill()?; // SIGKILL
                    killed_at = Some(Instant::now());
                    println!(
                        "server: 3 x 1 MiB RDMA READs done, peer process SIGKILLed mid-transfer"
                    );
                }
            }
            if let Some(ev) = ch.get_event()? {
                println!("server: CM event {:?}", ev.kind);
                if matches!(
                    ev.kind,
                    CmEventKind::Disconnected | CmEventKind::TimewaitExit
                ) {
                    break format!("{:?}", ev.kind);
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let since = killed_at.map(|t| t.elapsed()).unwrap_or_default();
        println!(
            "server: detected peer death by {outcome} {:.1} s after the kill ({reads} reads ok)",
            since.as_secs_f64()
        );
        let t0 = Instant::now();
        c.qp.id().disconnect().ok();
        let flushed = c.qp.drain(Duration::from_secs(30))?;
        println!(
            "PASS: peer killed -> {outcome}; drained {} completion(s) in {:?}; table {:?}",
            flushed.len(),
            t0.elapsed(),
            c.qp.outstanding()
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result?;
    drop(listener);
    let lc = live_counts();
    ensure!(lc == Default::default(), "leaked objects: {lc:?}");
    println!("PASS: kill-test teardown left no objects: {lc:?}");
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("selftest");
    let ip = args.get(1).map(String::as_str).unwrap_or("192.168.77.1");
    let port = args.get(2).map(String::as_str).unwrap_or("18515");
    let addr: SocketAddr = match format!("{ip}:{port}").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bad address {ip}:{port}: {e}");
            std::process::exit(2);
        }
    };
    match raise_memlock_limit() {
        Ok(l) => println!(
            "RLIMIT_MEMLOCK now {}",
            if l == u64::MAX {
                "unlimited".into()
            } else {
                l.to_string()
            }
        ),
        Err(e) => println!("warning: could not raise RLIMIT_MEMLOCK: {e}"),
    }
    let r = match mode {
        "selftest" => selftest(addr),
        "kill-test" => kill_test(addr),
        "drop-test" => drop_test(addr),
        "client" => client(
            addr,
            if args.iter().any(|a| a == "--hang") {
                Mode::Hang
            } else {
                Mode::Full
            },
        ),
        m => Err(format!("unknown mode {m}").into()),
    };
    match r {
        Ok(()) => println!("PASS: {mode}"),
        Err(e) => {
            println!("FAIL: {mode}: {e}");
            std::process::exit(1);
        }
    }
}
