//! Whole-binary tests: limits against hostile and broken clients. A client
//! that opens connections and never logs in, or holds discovery sessions
//! open, must neither lock a real initiator out nor make the target spend
//! unbounded threads or memory.
//!
//! Connections come from chosen addresses of 127.0.0.0/8 (all local on
//! Linux), so per-source caps can be told apart from the real initiator on
//! 127.0.0.1.

#[macro_use]
mod common;

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::raw_login::{self, connect_from, wait_for_close, PeerState, SessionType};
use common::{run_ok, LunSpec, Server, TargetSpec};
use iser_target::iscsi::framing::{self, FrameSettings};
use iser_target::iscsi::pdu::{Header, NopOut, Pdu, Stage};

const TEST_IQN: &str = "iqn.2026-11.io.iser-target:limits";
const INITIATOR: &str = "iqn.2026-11.io.iser-target:hostile";

/// Bound for one quick initiator command.
const QUICK: Duration = Duration::from_secs(30);

const HOSTILE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const THIRD_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

fn target() -> TargetSpec {
    TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "16M")])
}

/// A real login from 127.0.0.1 with libiscsi: INQUIRY must succeed.
fn real_login_works(server: &Server) {
    let out = run_ok(
        Command::new("iscsi-inq").arg(server.lun_url(TEST_IQN, 0)),
        QUICK,
    );
    assert!(out.contains("DIRECT_ACCESS"), "{out}");
}

/// `Threads` and `VmRSS` (KiB) of a process, from /proc/PID/status.
fn threads_and_rss_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{status}"))
    };
    (value("Threads:"), value("VmRSS:"))
}

/// Sockets the process holds open (the listening socket among them).
fn open_sockets(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Waits until the server holds exactly `count` sockets (admitted connections
/// plus its listening socket).
fn wait_for_sockets(server: &Server, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = open_sockets(server.pid());
        if open == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server holds {open} sockets, want {count}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first half of a Basic Header Segment (24 of 48 bytes): a Login
/// Request (immediate, opcode 0x03, T=1, CSG=1, NSG=3), no data, an ISID.
const HALF_A_BHS: [u8; 24] = [
    0x43, 0x87, 0, 0, 0, 0, 0, 0, 0x80, 0x12, 0x34, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
];

#[test]
fn half_open_connections_cost_no_threads_and_leave_a_login_working() {
    require_tools!("iscsi-inq");
    // Caps high enough to admit all 200: this measures what each costs.
    let server = Server::start_with_limits(
        &[target()],
        "max_connections_per_portal: 1000, max_connections_per_source: 1000",
    );
    let (threads_before, rss_before) = threads_and_rss_kib(server.pid());
    let mut hostile: Vec<TcpStream> = Vec::new();
    for i in 0..200 {
        let mut stream = connect_from(HOSTILE, server.port());
        if i % 2 == 1 {
            stream.write_all(&HALF_A_BHS).expect("send half a BHS");
        }
        hostile.push(stream);
    }
    wait_for_sockets(&server, 201);
    let (threads, rss) = threads_and_rss_kib(server.pid());
    // Before: a thread per portal plus the main thread and a few. Two threads
    // per connection, as this target once spent, would be 400 more.
    assert!(
        threads <= threads_before + 8,
        "{threads} threads with 200 connections not logged in (before: {threads_before})"
    );
    // A few KiB each (socket buffers are the kernel's); 32 MiB is generous.
    assert!(
        rss <= rss_before + 32 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss} KiB for 200 connections not logged in"
    );
    real_login_works(&server);
    // All 200 are still open: they were not simply dropped to make room.
    for stream in &mut hostile[..5] {
        assert_eq!(
            wait_for_close(stream, Duration::from_millis(50)),
            PeerState::Open
        );
    }
    drop(hostile);
    server.stop();
}

#[test]
fn connection_caps_refuse_at_once_log_sparingly_and_evict_the_oldest_login() {
    require_tools!("iscsi-inq");
    let server = Server::start_with_limits(
        &[target()],
        "max_connections_per_portal: 6, max_connections_per_source: 4",
    );
    // The harness's own probe connection must be gone before counting.
    wait_for_sockets(&server, 1);
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from(HOSTILE, server.port()))
        .collect();
    wait_for_sockets(&server, 5);

    // The fifth from the same address is closed at once, not after the login
    // timeout (15 s by default).
    let started = Instant::now();
    let mut refused = connect_from(HOSTILE, server.port());
    assert_eq!(
        wait_for_close(&mut refused, Duration::from_secs(5)),
        PeerState::Closed,
        "a connection over max_connections_per_source was left open"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A flood of refusals makes one log line, naming the source and the cap.
    for _ in 0..30 {
        let mut s = connect_from(HOSTILE, server.port());
        assert_eq!(
            wait_for_close(&mut s, Duration::from_secs(5)),
            PeerState::Closed
        );
    }
    let log = server.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .collect();
    assert_eq!(refusals.len(), 1, "refusals are not rate-limited:\n{log}");
    assert!(
        refusals[0].contains("127.0.0.2") && refusals[0].contains("max_connections_per_source"),
        "{}",
        refusals[0]
    );

    // Another host fills the portal (6 = 4 + 2).
    held.extend((0..2).map(|_| connect_from(OTHER_HOST, server.port())));
    wait_for_sockets(&server, 7);

    // A real initiator still gets in: the oldest connection that has not
    // logged in makes room.
    real_login_works(&server);
    assert_eq!(
        wait_for_close(&mut held[0], Duration::from_secs(5)),
        PeerState::Closed,
        "the oldest connection still logging in was not evicted"
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("is full") && l.contains("127.0.0.2")),
        "no eviction line:\n{log}"
    );
    drop(held);
    server.stop();
}

#[test]
fn login_deadline_covers_silent_partial_and_stalled_logins() {
    let server = Server::start_with_limits(&[target()], "login_timeout_secs: 2");
    let port = server.port();
    let mut silent = connect_from(HOSTILE, port);
    let mut half_bhs = connect_from(HOSTILE, port);
    half_bhs.write_all(&HALF_A_BHS).unwrap();
    // A whole header announcing 100 bytes of data, of which 50 come.
    let mut half_pdu = connect_from(HOSTILE, port);
    let mut header = HALF_A_BHS.to_vec();
    header.resize(48, 0);
    header[5..8].copy_from_slice(&[0, 0, 100]);
    half_pdu.write_all(&header).unwrap();
    half_pdu.write_all(&[b'x'; 50]).unwrap();
    // A security stage answered, then silence before the operational stage.
    let mut stalled = connect_from(HOSTILE, port);
    let request = raw_login::login_request(
        raw_login::isid(1),
        Stage::Security,
        Stage::Operational,
        true,
    );
    let (response, _) = raw_login::exchange(
        &mut stalled,
        request,
        &[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Normal"),
            ("TargetName", TEST_IQN),
            ("AuthMethod", "None"),
        ],
    )
    .expect("security stage");
    assert_eq!(response.status_class, 0, "{response:?}");
    // Keeps talking but never leaves the security stage.
    let mut chatty = connect_from(HOSTILE, port);
    let started = Instant::now();
    let chatter = std::thread::spawn(move || {
        let request = raw_login::login_request(
            raw_login::isid(2),
            Stage::Security,
            Stage::Operational,
            false,
        );
        let keys = [("InitiatorName", INITIATOR), ("SessionType", "Discovery")];
        let mut exchanges = 0;
        // Keys once, then empty requests that neither finish nor fail the stage.
        let mut next_keys: &[(&str, &str)] = &keys;
        while raw_login::exchange(&mut chatty, request.clone(), next_keys).is_ok() {
            next_keys = &[];
            exchanges += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        (started.elapsed(), exchanges)
    });

    for (what, stream) in [
        ("silent", &mut silent),
        ("half a BHS", &mut half_bhs),
        ("half a PDU", &mut half_pdu),
        ("stalled after the security stage", &mut stalled),
    ] {
        assert_eq!(
            wait_for_close(stream, Duration::from_secs(10)),
            PeerState::Closed,
            "{what}: still open 10 s after a 2 s login timeout"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed after {elapsed:?}, before the 2 s login timeout"
    );
    let (chatty_elapsed, exchanges) = chatter.join().unwrap();
    assert!(
        exchanges > 3,
        "the chatty login was cut short: {exchanges} exchanges"
    );
    assert!(
        chatty_elapsed < Duration::from_secs(10),
        "a login that keeps talking outlived the 2 s login timeout by far: {chatty_elapsed:?}"
    );
    // Each of the five is reported (five fit in the refusal log's burst), naming the peer.
    let log = server.log();
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("closed during login: timed out"))
        .collect();
    assert_eq!(reports.len(), 5, "{log}");
    assert!(reports.iter().all(|l| l.contains("127.0.0.2")), "{log}");
    server.stop();
}

#[test]
fn a_flood_of_refused_logins_is_logged_sparingly() {
    let server = Server::start(&[target()]);
    let unknown = "iqn.2026-11.io.iser-target:no-such-target";
    for n in 0..20 {
        let mut stream = connect_from(HOSTILE, server.port());
        let request = raw_login::login_request(
            raw_login::isid(n),
            Stage::Security,
            Stage::Operational,
            true,
        );
        let (response, _) = raw_login::exchange(
            &mut stream,
            request,
            &[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Normal"),
                ("TargetName", unknown),
                ("AuthMethod", "None"),
            ],
        )
        .expect("a login response");
        assert_eq!(
            (response.status_class, response.status_detail),
            (2, 3),
            "login {n}: {response:?}"
        );
    }
    // Twenty refusals within seconds: the first five are logged, each saying who, from where
    // and why; the rest are only counted (in the next line logged after the interval, and in
    // `iser-target status`).
    let log = server.log();
    let reports: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(reports.len(), 5, "{log}");
    for line in &reports {
        assert!(line.contains("127.0.0.2"), "{line}");
        assert!(
            line.contains(&format!(
                "login of {INITIATOR} refused with status 0x0203: no target named {unknown}"
            )),
            "{line}"
        );
    }
    server.stop();
}

#[test]
fn silent_discovery_sessions_do_not_block_normal_logins() {
    require_tools!("iscsi-inq");
    let server = Server::start(&[target()]);
    // 64 discovery sessions, all idle in full feature phase (64 is also the
    // default max_sessions, which they once counted against).
    let mut discovery: Vec<TcpStream> = Vec::new();
    for n in 0..64 {
        let mut stream = connect_from(OTHER_HOST, server.port());
        let response = raw_login::login(
            &mut stream,
            INITIATOR,
            raw_login::isid(n),
            SessionType::Discovery,
        )
        .expect("discovery login");
        assert_eq!(
            (response.status_class, response.status_detail),
            (0, 0),
            "discovery session {n}: {response:?}"
        );
        assert!(response.transit && response.next_stage == Stage::FullFeature);
        discovery.push(stream);
    }
    real_login_works(&server);
    // Discovery sessions have a cap of their own (limits.max_discovery_sessions,
    // 64 by default): the 65th is refused with OUT OF RESOURCES.
    let mut extra = connect_from(THIRD_HOST, server.port());
    let response = raw_login::login(
        &mut extra,
        INITIATOR,
        raw_login::isid(64),
        SessionType::Discovery,
    )
    .expect("65th discovery login");
    assert_eq!(
        (response.status_class, response.status_detail),
        (3, 2),
        "{response:?}"
    );
    drop(discovery);
    server.stop();
}

#[test]
fn a_second_login_with_the_same_isid_reinstates_the_session() {
    let server = Server::start(&[target()]);
    let normal = SessionType::Normal { target: TEST_IQN };
    let mut first = connect_from(HOSTILE, server.port());
    let response =
        raw_login::login(&mut first, INITIATOR, raw_login::isid(7), normal).expect("first login");
    assert_eq!(response.status_class, 0, "{response:?}");
    let old_tsih = response.tsih;
    let mut second = connect_from(OTHER_HOST, server.port());
    let response = raw_login::login(
        &mut second,
        INITIATOR,
        raw_login::isid(7),
        SessionType::Normal { target: TEST_IQN },
    )
    .expect("reinstating login");
    assert_eq!(
        (response.status_class, response.status_detail),
        (0, 0),
        "{response:?}"
    );
    assert_ne!(response.tsih, 0);
    assert_ne!(
        response.tsih, old_tsih,
        "a reinstated session gets a new TSIH"
    );
    assert_eq!(
        wait_for_close(&mut first, Duration::from_secs(10)),
        PeerState::Closed,
        "the reinstated session's old connection was left open"
    );
    drop(second);
    server.stop();
}

#[test]
fn a_peer_that_sends_without_reading_cannot_grow_memory() {
    let server = Server::start(&[target()]);
    let mut stream = connect_from(HOSTILE, server.port());
    let response = raw_login::login(
        &mut stream,
        INITIATOR,
        raw_login::isid(9),
        SessionType::Normal { target: TEST_IQN },
    )
    .expect("login");
    assert_eq!(response.status_class, 0, "{response:?}");
    let (_, rss_before) = threads_and_rss_kib(server.pid());

    // Immediate NOP-Out pings with 8 KiB of data: the target echoes each one
    // (RFC 7143 §11.18), and as we never read, its writes block while we keep
    // sending. What it reads meanwhile must not pile up in memory.
    let mut burst = Vec::new();
    for itt in 0..32 {
        let ping = Pdu::with_data(
            Header::NopOut(NopOut {
                immediate: true,
                lun: [0; 8],
                itt,
                ttt: 0xffff_ffff,
                cmd_sn: response.exp_cmd_sn,
                exp_stat_sn: response.stat_sn.wrapping_add(1),
            }),
            vec![0x5a; 8192],
        );
        burst.extend_from_slice(&framing::encode(&ping, &FrameSettings::default()));
    }
    const FLOOD: usize = 256 << 20;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < FLOOD && started.elapsed() < Duration::from_secs(30) {
        match stream.write(&burst) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("sending pings after {sent} bytes: {e}\n{}", server.log()),
        }
    }
    let (_, rss) = threads_and_rss_kib(server.pid());
    assert!(
        rss <= rss_before + 64 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss} KiB while a peer sent {} MiB without reading",
        sent >> 20
    );
    // The pings were valid: the target answers them once we read.
    let answer = raw_login::read_pdu(&mut stream).expect("a NOP-In");
    assert!(matches!(answer.header, Header::NopIn(_)), "{answer:?}");
    drop(stream);
    server.stop();
}
