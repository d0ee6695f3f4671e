//! Whole-binary tests: logged-in TCP connections run on the I/O engine's threads. With one
//! engine thread every connection shares it, so a connection whose initiator stops reading must
//! not hold up the others, shutdown must end idle and busy connections alike, and a session
//! whose connection lives there must still be reinstated promptly.
//!
//! The initiators are hand-written (`common::raw_login`) so they can stop reading at will.

#[macro_use]
mod common;

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::raw_login::{self, connect_from, wait_for_close, PeerState, SessionType};
use common::{LunSpec, Server, TargetSpec};
use iser_target::iscsi::framing::{self, FrameSettings};
use iser_target::iscsi::pdu::{Header, LoginResponse, NopOut, Pdu};
use nix::sys::signal::Signal;

const TEST_IQN: &str = "iqn.2026-11.io.iser-target:engine-threads";
const INITIATOR: &str = "iqn.2026-11.io.iser-target:engine-threads-init";

/// One engine thread, so every connection lives on it; no NOP-In pings to interleave with the
/// answers the tests wait for.
const ONE_THREAD: &str = "io_threads: 1, nop_interval_secs: 0";

fn target() -> TargetSpec {
    TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "16M")])
}

/// A logged-in connection from `source` with session `isid`.
fn log_in(server: &Server, source: Ipv4Addr, isid: u16) -> (TcpStream, LoginResponse) {
    let mut stream = connect_from(source, server.port());
    let response = raw_login::login(
        &mut stream,
        INITIATOR,
        raw_login::isid(isid),
        SessionType::Normal { target: TEST_IQN },
    )
    .expect("login");
    assert_eq!(
        (response.status_class, response.status_detail),
        (0, 0),
        "{response:?}\n{}",
        server.log()
    );
    (stream, response)
}

/// An immediate NOP-Out ping with `data` (the target echoes it in a NOP-In, RFC 7143 §11.18).
fn ping(itt: u32, login: &LoginResponse, data: Vec<u8>) -> Pdu {
    Pdu::with_data(
        Header::NopOut(NopOut {
            immediate: true,
            lun: [0; 8],
            itt,
            ttt: 0xffff_ffff,
            cmd_sn: login.exp_cmd_sn,
            exp_stat_sn: login.stat_sn.wrapping_add(1),
        }),
        data,
    )
}

/// Sends one ping and waits for its answer.
fn round_trip(stream: &mut TcpStream, itt: u32, login: &LoginResponse) -> io::Result<()> {
    let pdu = ping(itt, login, itt.to_be_bytes().to_vec());
    stream.write_all(&framing::encode(&pdu, &FrameSettings::default()))?;
    let answer = raw_login::read_pdu(stream)?;
    match answer.header {
        Header::NopIn(nop) if nop.itt == itt && answer.data == itt.to_be_bytes() => Ok(()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected the NOP-In for ITT {itt}, got {other:?}"),
        )),
    }
}

/// Sends 8 KiB pings without reading a single answer until the target stops taking them (its
/// answers fill the socket, then its outbox, then it stops reading). Returns the bytes sent.
fn stall(stream: &mut TcpStream, login: &LoginResponse) -> usize {
    let mut burst = Vec::new();
    for itt in 0..32 {
        let pdu = ping(itt, login, vec![0x5a; 8192]);
        burst.extend_from_slice(&framing::encode(&pdu, &FrameSettings::default()));
    }
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(60) {
        match stream.write(&burst) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return sent
            }
            Err(e) => panic!("sending pings after {sent} bytes: {e}"),
        }
    }
    panic!("the target kept reading {sent} bytes of pings it could not answer");
}

/// Threads of a process, from /proc/PID/status.
fn threads(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads in\n{status}"))
}

/// The names of a process's threads, sorted, to say which thread a count has too many.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list tasks")
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_stalled_initiator_does_not_hold_up_the_other_connections_of_its_thread() {
    let server = Server::start_with_limits(&[target()], ONE_THREAD);
    let baseline = threads(server.pid());
    let baseline_names = thread_names(server.pid());
    let (mut stalled, stalled_login) = log_in(&server, Ipv4Addr::new(127, 0, 0, 2), 1);
    let sent = stall(&mut stalled, &stalled_login);
    assert!(
        sent > 1 << 20,
        "only {sent} bytes went out before the stall"
    );

    // Eight more connections on the same (only) engine thread keep getting answers.
    let others: Vec<_> = (0..8)
        .map(|i| {
            let (stream, login) = log_in(&server, Ipv4Addr::new(127, 0, 1, 1 + i as u8), 10 + i);
            std::thread::spawn(move || {
                let mut stream = stream;
                for itt in 0..200 {
                    round_trip(&mut stream, itt, &login)?;
                }
                Ok::<_, io::Error>(stream)
            })
        })
        .collect();
    let mut streams = Vec::new();
    for (i, other) in others.into_iter().enumerate() {
        match other.join().expect("pinger panicked") {
            Ok(stream) => streams.push(stream),
            Err(e) => panic!("connection {i}: {e}\n{}", server.log()),
        }
    }
    // Nine logged-in connections, not one thread more than none (binding threads are gone).
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads(server.pid()) > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        threads(server.pid()),
        baseline,
        "threads grew with connections: {:?} at the start, {:?} now",
        baseline_names,
        thread_names(server.pid())
    );

    // The stalled initiator's pings were valid: it gets its answers once it reads.
    let answer = raw_login::read_pdu(&mut stalled).expect("a NOP-In");
    assert!(matches!(answer.header, Header::NopIn(_)), "{answer:?}");
    drop(stalled);
    drop(streams);
    server.stop();
}

#[test]
fn shutdown_ends_idle_and_busy_connections_and_exits_zero() {
    let mut server = Server::start_with_limits(&[target()], ONE_THREAD);
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|i| log_in(&server, Ipv4Addr::LOCALHOST, 100 + i).0)
        .collect();
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let (mut stream, login) = log_in(&server, Ipv4Addr::LOCALHOST, 200 + i);
            std::thread::spawn(move || {
                let mut answered = 0u32;
                // Ping until the target closes the connection.
                while round_trip(&mut stream, answered, &login).is_ok() {
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = server.stop_with(Signal::SIGTERM);
    assert!(status.success(), "exit {status}\n{}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    for pinger in busy {
        let answered = pinger.join().expect("pinger panicked");
        assert!(
            answered > 0,
            "a busy connection got no answer before shutdown"
        );
    }
    for stream in &mut idle {
        assert_eq!(
            wait_for_close(stream, Duration::from_secs(5)),
            PeerState::Closed
        );
    }
}

#[test]
fn a_session_whose_connection_stalls_on_an_engine_thread_is_reinstated_promptly() {
    let server = Server::start_with_limits(&[target()], ONE_THREAD);
    let (mut old, old_login) = log_in(&server, Ipv4Addr::new(127, 0, 0, 2), 7);
    stall(&mut old, &old_login);
    // Same initiator and ISID: the old session must end, though its connection has 4 MiB of
    // answers its initiator does not read.
    let started = Instant::now();
    let (mut new, new_login) = log_in(&server, Ipv4Addr::new(127, 0, 0, 3), 7);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reinstatement took {:?}",
        started.elapsed()
    );
    assert_ne!(new_login.tsih, old_login.tsih);
    round_trip(&mut new, 1, &new_login).expect("the new session answers");
    // The old connection is closed at the latest when its unread answers time out.
    drop(old.set_read_timeout(Some(Duration::from_millis(10))));
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut sink = vec![0u8; 1 << 20];
    loop {
        match io::Read::read(&mut old, &mut sink) {
            Ok(0) => break,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "the old connection was left open"
                );
            }
            Err(e) => panic!("reading the old connection: {e}"),
        }
    }
    drop(new);
    server.stop();
}
