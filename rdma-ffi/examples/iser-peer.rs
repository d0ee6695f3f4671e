//! A misbehaving iSER initiator for the target's guest tests (`scripts/guest/iser-faults.sh`):
//! it speaks only rdma_cm and verbs, never iSCSI.
//!
//! ```text
//! iser-peer hold ADDR PORT COUNT [SRC]
//!                                     try COUNT connections that never log in (from source
//!                                     address SRC if given); print "HOLDING n REFUSED m" and
//!                                     keep the accepted ones until stdin closes
//! iser-peer zero-resources ADDR PORT  connect offering responder_resources 0; expect a reject
//! iser-peer bad-write ADDR PORT       connect, RDMA Write with an rkey the target never gave
//!                                     (its QP goes into error); expect the target to disconnect
//! ```
//! Exit status 0 = the expectation held; output lines prefixed `PASS:` / `FAIL:`.

use std::error::Error as StdError;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_ffi::{
    raise_memlock_limit, Access, CmEvent, CmEventKind, CmId, CompletionQueue, ConnParams,
    EventChannel, MemoryRegion, ProtectionDomain, QpCaps, QueuePair,
};

type R<T> = Result<T, Box<dyn StdError + Send + Sync>>;

/// The iSER CM header of ib_iser: ZBVA not supported (Linux include/scsi/iser.h).
const ISER_HDR: [u8; 4] = [0x80, 0, 0, 0];

/// A connection's verbs objects, kept alive while it is held.
struct Peer {
    channel: EventChannel,
    qp: QueuePair,
    pd: Arc<ProtectionDomain>,
    send_cq: Arc<CompletionQueue>,
}

/// Waits for the next CM event on `channel`.
fn next_event(channel: &EventChannel, timeout: Duration) -> R<CmEvent> {
    channel
        .get_event_timeout(timeout)?
        .ok_or_else(|| format!("no rdma_cm event within {timeout:?}").into())
}

fn expect_event(channel: &EventChannel, want: CmEventKind) -> R<CmEvent> {
    let event = next_event(channel, Duration::from_secs(20))?;
    if event.kind != want {
        return Err(format!(
            "expected {want:?}, got {:?} (status {})",
            event.kind, event.status
        )
        .into());
    }
    Ok(event)
}

/// Resolves, creates a QP and sends the connect request; returns the answer event.
fn connect(
    addr: SocketAddr,
    src: Option<SocketAddr>,
    responder_resources: u8,
) -> R<(Peer, CmEvent)> {
    let channel = EventChannel::new()?;
    let id = CmId::create(&channel)?;
    id.resolve_addr(src, addr, Duration::from_secs(2))?;
    expect_event(&channel, CmEventKind::AddrResolved)?;
    id.resolve_route(Duration::from_secs(2))?;
    expect_event(&channel, CmEventKind::RouteResolved)?;
    let ctx = id.verbs().ok_or("no verbs context after resolve")?;
    let pd = ProtectionDomain::new(&ctx)?;
    let send_cq = CompletionQueue::new(&ctx, 8, None)?;
    let recv_cq = CompletionQueue::new(&ctx, 8, None)?;
    let caps = QpCaps {
        max_send_wr: 4,
        max_recv_wr: 4,
        ..QpCaps::default()
    };
    let qp = QueuePair::create(id, &pd, &send_cq, &recv_cq, caps)?;
    qp.id().connect(&ConnParams {
        private_data: ISER_HDR.to_vec(),
        initiator_depth: 1,
        responder_resources,
        retry_count: 7,
        rnr_retry_count: 6,
    })?;
    let answer = next_event(&channel, Duration::from_secs(20))?;
    Ok((
        Peer {
            channel,
            qp,
            pd,
            send_cq,
        },
        answer,
    ))
}

fn hold(addr: SocketAddr, count: usize, src: Option<SocketAddr>) -> R<()> {
    let mut peers = Vec::with_capacity(count);
    let mut refused = 0;
    for i in 0..count {
        let (peer, answer) = connect(addr, src, 4)?;
        match answer.kind {
            CmEventKind::Established => peers.push(peer),
            // The target's connection caps: counted, the attempt goes on.
            CmEventKind::Rejected => refused += 1,
            other => {
                return Err(format!("connection {i}: {other:?} (status {})", answer.status).into())
            }
        }
    }
    println!("HOLDING {} REFUSED {refused}", peers.len());
    // Until the script closes stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let lost = peers
        .iter()
        .filter(|p| {
            p.channel
                .get_event_timeout(Duration::ZERO)
                .ok()
                .flatten()
                .is_some()
        })
        .count();
    println!("{lost} of {count} connections got a CM event (disconnect) while held");
    Ok(())
}

fn zero_resources(addr: SocketAddr) -> R<()> {
    let (_peer, answer) = connect(addr, None, 0)?;
    if answer.kind != CmEventKind::Rejected {
        return Err(format!("expected a reject, got {:?}", answer.kind).into());
    }
    println!("rejected (status {})", answer.status);
    Ok(())
}

fn bad_write(addr: SocketAddr) -> R<()> {
    let (peer, answer) = connect(addr, None, 4)?;
    if answer.kind != CmEventKind::Established {
        return Err(format!("connect: {:?} (status {})", answer.kind, answer.status).into());
    }
    let src = MemoryRegion::new(&peer.pd, 4096, Access::LOCAL_WRITE)?;
    // An rkey and address the target never advertised: its responder refuses the access and
    // moves its QP to the error state.
    peer.qp
        .post_rdma_write(1, &src, 0, 4096, 0x1000, 0x00ba_d0ff, true)?;
    let started = Instant::now();
    let mut wcs = Vec::new();
    while wcs.is_empty() && started.elapsed() < Duration::from_secs(20) {
        peer.send_cq.poll(&mut wcs, 1)?;
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "RDMA Write completed with {:?}",
        wcs.first().map(|wc| wc.status)
    );
    // The target has no pending login to time out for a long while (the script sets a long
    // login timeout): only noticing its QP error makes it disconnect.
    let event = next_event(&peer.channel, Duration::from_secs(30))?;
    if event.kind != CmEventKind::Disconnected {
        return Err(format!("expected a disconnect, got {:?}", event.kind).into());
    }
    println!(
        "the target disconnected {:.1} s after the bad write",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let addr: SocketAddr = match format!(
        "{}:{}",
        args.get(1).map(String::as_str).unwrap_or(""),
        args.get(2).map(String::as_str).unwrap_or("3260")
    )
    .parse()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "usage: iser-peer hold|zero-resources|bad-write ADDR PORT [COUNT [SRC]]: {e}"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = raise_memlock_limit() {
        println!("warning: could not raise RLIMIT_MEMLOCK: {e}");
    }
    let result = match mode {
        "hold" => {
            let src = match args.get(4).map(|a| format!("{a}:0").parse::<SocketAddr>()) {
                None => Ok(None),
                Some(Ok(src)) => Ok(Some(src)),
                Some(Err(e)) => Err(format!("bad source address: {e}")),
            };
            match (args.get(3).map(|c| c.parse::<usize>()), src) {
                (Some(Ok(count)), Ok(src)) => hold(addr, count, src),
                (_, Err(e)) => Err(e.into()),
                _ => Err("hold needs a COUNT".into()),
            }
        }
        "zero-resources" => zero_resources(addr),
        "bad-write" => bad_write(addr),
        m => Err(format!("unknown mode {m:?}").into()),
    };
    match result {
        Ok(()) => println!("PASS: {mode}"),
        Err(e) => {
            println!("FAIL: {mode}: {e}");
            std::process::exit(1);
        }
    }
}
