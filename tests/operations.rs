//! Operating a running target.
//!
//! Persistent reservations through a restart (APTPL, SPC-4 5.13.5) with `state_dir:`: an
//! initiator registers with APTPL (as Linux's sd_pr_register() always does) and reserves; the
//! target is killed (SIGKILL, no shutdown) and started again on the same state directory; the
//! reservation still fences other initiators and the holder's key still works. A state
//! directory belongs to one process.
//!
//! A file LUN grown while served: its `size` raised in the configuration and SIGHUP; iSCSI
//! sessions get CAPACITY DATA HAS CHANGED and the new capacity, an NVMe/TCP host the new
//! namespace size; a smaller size is refused.
//!
//! Access control changed by SIGHUP: an initiator taken out of `allowed_initiators` and a host
//! out of `allowed_hosts` lose their live iSCSI session and NVMe controller and cannot log in
//! or connect again; put back, they can.
//!
//! Under a service manager (systemd's `Type=notify`): the target reports READY=1 once it
//! listens, RELOADING=1 and READY=1 around each SIGHUP with what the reload did, and
//! STOPPING=1 on SIGTERM, to the socket `$NOTIFY_SOCKET` names (sd_notify(3)); with a
//! watchdog (`$WATCHDOG_USEC`), WATCHDOG=1 several times per period while its engine turns.
//!
//! `scripts/install.sh` installs a unit that systemd accepts (`systemd-analyze verify`) and a
//! configuration that validates, never overwrites a configuration already there, and
//! `--uninstall` removes what it installed but the configuration.
//!
//! `iser-target status` asks a running target, through the control socket in its state
//! directory, what it serves and who is connected: the LUNs with their I/O counts and
//! reservations, the iSCSI sessions and the NVMe/TCP controllers.

#[macro_use]
mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output};
use std::time::Duration;

use common::block_io::{good, BlockSession, CommandReply};
use common::nvme_host::{admin_queue, io_queue, NvmeQueue, Options, DISCOVERY_NQN, HOST_NQN};
use common::raw_login::{self, wait_for_close, PeerState, SessionType};
use common::{
    binary, free_port, manifest_dir, render_config, run, run_ok, LunSpec, Server, TargetSpec,
    TempDir,
};
use iser_target::status::StatusReport;
use nix::sys::signal::Signal;

const TEST_IQN: &str = "iqn.2026-11.io.iser-target:reserved";
const BLOCK: usize = 512;
const RESERVATION_CONFLICT: u8 = 0x18;
const CHECK_CONDITION: u8 = 0x02;
const WRITE_EXCLUSIVE: u8 = 1;

/// REGISTER (0), RESERVE (1), ... with the reservation type and the 24-byte parameter list.
fn prout(
    s: &mut BlockSession,
    action: u8,
    rtype: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> CommandReply {
    let cdb = [0x5F, action, rtype, 0, 0, 0, 0, 0, 24, 0];
    let mut list = key.to_be_bytes().to_vec();
    list.extend_from_slice(&sa_key.to_be_bytes());
    list.extend_from_slice(&[0, 0, 0, 0, u8::from(aptpl), 0, 0, 0]);
    s.command_out(&cdb, &list).expect("PERSISTENT RESERVE OUT")
}

/// PERSISTENT RESERVE IN with `action` (0 READ KEYS, 1 READ RESERVATION, 2 REPORT CAPABILITIES).
fn prin(s: &mut BlockSession, action: u8) -> Vec<u8> {
    good(
        s.command(&[0x5E, action, 0, 0, 0, 0, 0, 0x01, 0x00, 0], 256)
            .expect("PRIN"),
    )
}

fn keys(s: &mut BlockSession) -> Vec<u64> {
    prin(s, 0)[8..]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

fn write_status(s: &mut BlockSession) -> u8 {
    let cdb = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    s.command_out(&cdb, &[0x5A; BLOCK])
        .expect("WRITE(10)")
        .status
}

fn server(state_dir: &TempDir) -> Server {
    let lun = LunSpec::ram(0, "1M");
    let top = format!("state_dir: {}\n", state_dir.path().display());
    Server::start_with(&[TargetSpec::new(TEST_IQN, vec![lun])], &top)
}

#[test]
fn a_reservation_set_with_aptpl_survives_a_killed_target() {
    let state_dir = TempDir::new("state");
    let mut first = server(&state_dir);
    let mut holder = BlockSession::login_as(first.port(), TEST_IQN, 0, 1).expect("login");
    let caps = prin(&mut holder, 2);
    assert_eq!((caps[2] & 1, caps[3] & 1), (1, 0), "PTPL_C, PTPL_A before");
    good(prout(&mut holder, 0, 0, 0, 0xABCD, true));
    good(prout(&mut holder, 1, WRITE_EXCLUSIVE, 0xABCD, 0, false));
    assert_eq!(
        prin(&mut holder, 2)[3] & 1,
        1,
        "PTPL_A after REGISTER with APTPL"
    );
    drop(holder);
    first.stop_with(Signal::SIGKILL);

    let second = server(&state_dir);
    let mut other = BlockSession::login_as(second.port(), TEST_IQN, 0, 2).expect("login");
    // Its first command after the restart may be a unit attention; TEST UNIT READY takes it.
    let _ = other.command(&[0; 6], 0).expect("TEST UNIT READY");
    assert_eq!(keys(&mut other), vec![0xABCD]);
    let reservation = prin(&mut other, 1);
    assert_eq!(
        u64::from_be_bytes(reservation[8..16].try_into().unwrap()),
        0xABCD
    );
    assert_eq!(reservation[21] & 0x0F, WRITE_EXCLUSIVE);
    assert_eq!(write_status(&mut other), RESERVATION_CONFLICT);
    // The same initiator port (name and ISID) holds it again.
    let mut holder = BlockSession::login_as(second.port(), TEST_IQN, 0, 1).expect("login");
    let _ = holder.command(&[0; 6], 0).expect("TEST UNIT READY");
    assert_eq!(write_status(&mut holder), 0);
    good(prout(&mut holder, 2, WRITE_EXCLUSIVE, 0xABCD, 0, false));
    assert_eq!(write_status(&mut other), 0);
    drop((holder, other));
    second.stop();
}

#[test]
fn without_a_state_dir_aptpl_is_refused() {
    let server = Server::start(&[TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "1M")])]);
    let mut s = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    assert_eq!(prin(&mut s, 2)[2] & 1, 0, "PTPL_C");
    let refused = prout(&mut s, 0, 0, 0, 1, true);
    assert_eq!(refused.status, CHECK_CONDITION);
    // ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    assert_eq!((refused.sense[2] & 0x0F, refused.sense[12]), (0x05, 0x26));
    good(prout(&mut s, 0, 0, 0, 1, false));
    drop(s);
    server.stop();
}

#[test]
fn a_state_dir_belongs_to_one_process() {
    let state_dir = TempDir::new("state");
    let first = server(&state_dir);
    let scratch = TempDir::new("second");
    let config = render_config(
        free_port(),
        &[TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "1M")])],
        scratch.path(),
    ) + &format!("state_dir: {}\n", state_dir.path().display());
    let config_path = scratch.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let out = run(
        Command::new(common::binary())
            .args(["serve", "--config"])
            .arg(&config_path),
        Duration::from_secs(30),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second process started: {said}");
    assert!(
        said.contains("in use by another iser-target process"),
        "{said}"
    );
    first.stop();
}

const MIB: u64 = 1 << 20;

#[test]
fn a_file_lun_grows_on_sighup_and_never_shrinks() {
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    let lun = LunSpec::file(0, "grow.img", "8M");
    let mut server = Server::start_with_portals(&[TargetSpec::new(TEST_IQN, vec![lun])], &portals);
    let mut s = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    let (mut admin, _) = admin_queue(nvme_port, &format!("nqn.{}", &TEST_IQN[4..]), HOST_NQN, 1);
    // The size both fabrics report, in bytes.
    let sizes = |s: &mut BlockSession, admin: &mut NvmeQueue| {
        let scsi = (s.last_lba().expect("READ CAPACITY(16)") + 1) * BLOCK as u64;
        let nvme = admin.namespace_size(1).expect("Identify Namespace") * BLOCK as u64;
        (scsi, nvme)
    };
    assert_eq!(sizes(&mut s, &mut admin), (8 * MIB, 8 * MIB));

    let config = std::fs::read_to_string(server.config_path()).unwrap();
    assert!(config.contains("size: 8M"), "{config}");
    let logged = |server: &Server, text: &str| {
        let log = server.log();
        assert!(log.contains(text), "no {text:?} in the log:\n{log}");
    };
    let said = server.reload(&config.replace("size: 8M", "size: 16M"));
    assert!(said.contains("file LUN sizes"), "{said}");
    logged(&server, "LUN 0: grew to 16777216 bytes");
    assert_eq!(
        std::fs::metadata(server.dir().join("grow.img"))
            .unwrap()
            .len(),
        16 * MIB
    );

    // The session's next command reports the change once; then the new capacity.
    let attention = s.command(&[0; 6], 0).expect("TEST UNIT READY");
    assert_eq!(attention.status, CHECK_CONDITION, "no unit attention");
    let sense = &attention.sense;
    assert_eq!((sense[2] & 0x0F, sense[12], sense[13]), (0x6, 0x2A, 0x09));
    assert_eq!(sizes(&mut s, &mut admin), (16 * MIB, 16 * MIB));
    let tail = vec![0xA5u8; 64 * 1024];
    let lba = (16 * MIB - tail.len() as u64) / BLOCK as u64;
    s.write(lba, &tail, BLOCK).expect("WRITE past the old end");
    assert!(s.read(lba, tail.len(), BLOCK).expect("READ") == tail);

    // Shrinking would drop blocks in use: refused, the LUN keeps its size.
    let said = server.reload(&config.replace("size: 8M", "size: 4M"));
    assert!(said.contains("could not take its size"), "{said}");
    logged(&server, "only grows while it is served");
    assert_eq!(sizes(&mut s, &mut admin), (16 * MIB, 16 * MIB));
    drop((s, admin));
    server.stop();
}

#[test]
fn access_control_changes_on_sighup_and_ends_what_it_no_longer_allows() {
    const BLOCK_IO_INITIATOR: &str = "iqn.2026-11.io.iser-target:block-io";
    const OTHER_INITIATOR: &str = "iqn.2026-11.io.iser-target:someone-else";
    const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0d4d6c-2f53-4c33-9a7a-aa00000000ff";
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    let target = TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "4M")])
        .allow(BLOCK_IO_INITIATOR)
        .allow(OTHER_INITIATOR)
        .with_yaml(&format!("allowed_hosts: [{HOST_NQN}, {OTHER_HOST}]"));
    let metrics_port = free_port();
    let top = format!("metrics: 127.0.0.1:{metrics_port}\n");
    let mut server = Server::start_with_portals_and(&[target], &portals, &top);
    let subsystem = format!("nqn.{}", &TEST_IQN[4..]);
    let mut s = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    let (mut admin, cntlid) = admin_queue(nvme_port, &subsystem, HOST_NQN, 1);
    let mut io = io_queue(nvme_port, &subsystem, HOST_NQN, cntlid, 1);
    assert!(io.write(1, 0, &[7; 4096], BLOCK).unwrap().ok());
    // A discovery session of each initiator: SendTargets would go on listing the target to
    // the one taken out, so its session ends; the other's view is the same, so it stays.
    let discovery = |initiator: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        let response = raw_login::login(
            &mut stream,
            initiator,
            raw_login::isid(9),
            SessionType::Discovery,
        )
        .expect("discovery login");
        assert_eq!((response.status_class, response.status_detail), (0, 0));
        stream
    };
    let mut revoked_discovery = discovery(BLOCK_IO_INITIATOR);
    let mut other_discovery = discovery(OTHER_INITIATOR);
    // The host's persistent discovery controller, waiting for a discovery log change.
    let (mut nvme_discovery, _) = admin_queue(nvme_port, DISCOVERY_NQN, HOST_NQN, 0);
    assert!(nvme_discovery.enable_notices(1 << 31).unwrap().ok());
    let entries = |d: &mut NvmeQueue| {
        let (cqe, log) = d.get_log_page(0x70, 1024).unwrap();
        assert!(cqe.ok(), "{cqe:?}");
        u64::from_le_bytes(log[8..16].try_into().unwrap())
    };
    let before = entries(&mut nvme_discovery);
    nvme_discovery.post_async_event_request().unwrap();

    let allowing_all = std::fs::read_to_string(server.config_path()).unwrap();
    let allowing_others = allowing_all
        .replace(&format!("      - {BLOCK_IO_INITIATOR}\n"), "")
        .replace(&format!("[{HOST_NQN}, "), "[");
    assert_ne!(allowing_others, allowing_all);
    let said = server.reload(&allowing_others);
    assert!(said.contains("access control"), "{said}");
    assert!(!said.contains("restart"), "{said}");
    let log = server.log();
    assert!(
        log.contains(&format!("ending the session of {BLOCK_IO_INITIATOR}"))
            && log.contains(&format!("ending NVMe controller {cntlid} of {HOST_NQN}")),
        "{log}"
    );
    // The session and both queues close (a command sent before the shutdown reached them
    // may still be answered); nothing new gets in.
    let closes = |what: &str, mut answers: Box<dyn FnMut() -> bool + '_>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while answers() {
            assert!(
                std::time::Instant::now() < deadline,
                "the {what} still answers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    closes("session", Box::new(|| s.command(&[0; 6], 0).is_ok()));
    assert!(matches!(
        wait_for_close(&mut revoked_discovery, Duration::from_secs(10)),
        PeerState::Closed
    ));
    assert!(matches!(
        wait_for_close(&mut other_discovery, Duration::from_millis(300)),
        PeerState::Open
    ));
    // Discovery Log Page Change (notice F0h, log 70h); the subsystem is no longer listed.
    let notice = nvme_discovery
        .next_completion(Duration::from_secs(10))
        .expect("a discovery log change notice");
    assert_eq!(notice.result & 0xFF_FF_FF, 0x70_F0_02, "{notice:?}");
    assert_eq!(entries(&mut nvme_discovery), before - 1);
    closes("admin queue", Box::new(|| admin.namespace_size(1).is_ok()));
    closes("I/O queue", Box::new(|| io.read(1, 0, 4096, BLOCK).is_ok()));
    let refused = BlockSession::login(server.port(), TEST_IQN, 0)
        .err()
        .expect("login refused");
    assert!(refused.to_string().contains("status 2/2"), "{refused}");
    let (_, cqe) = NvmeQueue::connect(nvme_port, &Options::admin(&subsystem, HOST_NQN)).unwrap();
    assert_eq!(
        (cqe.status, cqe.dnr),
        ((1, 0x84), true),
        "Connect Invalid Host"
    );
    // Both refusals are logged and counted for the monitoring system.
    assert!(
        server.log().contains(&format!(
            "NVMe/TCP host {HOST_NQN} is not allowed to connect to {subsystem}"
        )),
        "{}",
        server.log()
    );
    let (_, metrics) = http_get(metrics_port, "/metrics");
    for expected in [
        "iser_target_iscsi_login_failures_total{reason=\"authorization\"} 1\n",
        "iser_target_iscsi_login_failures_total{reason=\"authentication\"} 0\n",
        "iser_target_nvme_refusals_total{reason=\"host_not_allowed\"} 1\n",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected:?} missing from:\n{metrics}"
        );
    }
    // A host still allowed connects; the initiator and host put back log in and connect.
    admin_queue(nvme_port, &subsystem, OTHER_HOST, 1);
    let said = server.reload(&allowing_all);
    assert!(said.contains("access control"), "{said}");
    let mut s = BlockSession::login(server.port(), TEST_IQN, 0).expect("login allowed again");
    assert_eq!(s.command(&[0; 6], 0).expect("TEST UNIT READY").status, 0);
    let (_admin, cntlid) = admin_queue(nvme_port, &subsystem, HOST_NQN, 1);
    let mut io = io_queue(nvme_port, &subsystem, HOST_NQN, cntlid, 1);
    let (cqe, data) = io.read(1, 0, 4096, BLOCK).unwrap();
    assert!(cqe.ok() && data == [7; 4096], "{cqe:?}");
    server.stop();
}

/// `iser-target status --config <the server's>` and its arguments: the output when it succeeds.
fn status(server: &Server, json: bool) -> Output {
    let mut cmd = Command::new(common::binary());
    cmd.args(["status", "--config"]).arg(server.config_path());
    if json {
        cmd.arg("--json");
    }
    run(&mut cmd, Duration::from_secs(30))
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_shows_what_is_served_and_who_is_connected() {
    let state_dir = TempDir::new("state");
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    let top = format!("state_dir: {}\n", state_dir.path().display());
    let luns = vec![LunSpec::ram(0, "1M"), LunSpec::file(1, "status.img", "2M")];
    let server = Server::start_with_portals_and(&[TargetSpec::new(TEST_IQN, luns)], &portals, &top);
    let mut s = BlockSession::login_as(server.port(), TEST_IQN, 0, 3).expect("login");
    s.write(4, &[0x11; 2 * BLOCK], BLOCK).expect("WRITE");
    s.read(4, 3 * BLOCK, BLOCK).expect("READ");
    good(prout(&mut s, 0, 0, 0, 0x77, false));
    good(prout(&mut s, 1, WRITE_EXCLUSIVE, 0x77, 0, false));
    let subsystem = format!("nqn.{}", &TEST_IQN[4..]);
    let (admin, cntlid) = admin_queue(nvme_port, &subsystem, HOST_NQN, 1);
    let io = io_queue(nvme_port, &subsystem, HOST_NQN, cntlid, 1);

    let report: StatusReport =
        serde_json::from_str(&stdout_of(&status(&server, true))).expect("JSON report");
    assert_eq!(report.pid, server.pid());
    let transports: Vec<&str> = report
        .portals
        .iter()
        .map(|p| p.transport.as_str())
        .collect();
    assert_eq!(transports, ["tcp", "nvme-tcp"]);
    assert_eq!(report.portals[1].address.port(), nvme_port);
    let [target] = &report.targets[..] else {
        panic!("one target: {report:?}")
    };
    assert_eq!(
        (target.name.as_str(), target.nqn.as_str()),
        (TEST_IQN, &*subsystem)
    );
    let (ram, file) = (&target.luns[0], &target.luns[1]);
    assert_eq!((ram.backing.as_str(), ram.size_bytes), ("ram", MIB));
    assert!(file.backing.ends_with("/status.img"), "{}", file.backing);
    assert!(file.backing.starts_with("file /"), "{}", file.backing);
    assert_eq!(file.size_bytes, 2 * MIB);
    let io_counts = &ram.io;
    assert_eq!(
        (io_counts.writes, io_counts.write_bytes),
        (1, 2 * BLOCK as u64)
    );
    assert_eq!(
        (io_counts.reads, io_counts.read_bytes),
        (1, 3 * BLOCK as u64)
    );
    // The login's commands, the WRITE, the READ and the two PERSISTENT RESERVE OUTs at least.
    assert!(io_counts.commands >= 4, "{io_counts:?}");
    // Both were timed (a RAM LUN's finish in the engine turn they arrive in: no time at that
    // granularity; the engine's own tests see file I/O take some).
    assert!(io_counts.mean_read().is_some() && io_counts.mean_write().is_some());
    assert_eq!(file.io.reads + file.io.writes, 0);
    let pr = &ram.reservations;
    assert_eq!(pr.registrations, 1);
    assert_eq!(pr.reservation_type.as_deref(), Some("write exclusive"));
    assert_eq!(
        pr.holder.as_deref(),
        Some("iqn.2026-11.io.iser-target:block-io,i,0x801234000003")
    );
    let [session] = &report.iscsi_sessions[..] else {
        panic!("one iSCSI session: {report:?}")
    };
    assert_eq!(session.initiator, "iqn.2026-11.io.iser-target:block-io");
    assert_eq!(session.isid, "801234000003");
    assert_eq!(session.target.as_deref(), Some(TEST_IQN));
    assert_eq!(session.transport, "tcp");
    assert!(session.peer.starts_with("127.0.0.1:"), "{}", session.peer);
    let [controller] = &report.nvme_controllers[..] else {
        panic!("one NVMe controller: {report:?}")
    };
    assert_eq!(controller.cntlid, cntlid);
    assert_eq!(controller.host_nqn, HOST_NQN);
    assert_eq!(controller.subsystem, subsystem);
    assert_eq!(controller.io_queues, 1);

    // The same for a person.
    let text = stdout_of(&status(&server, false));
    for expected in [
        "LUN 0: ram, 1.0 MiB (1048576 bytes)",
        "1 reads (1.5 KiB, mean ",
        "1 writes (1.0 KiB, mean ",
        "1 registration(s), reserved write exclusive by iqn.2026-11.io.iser-target:block-io",
        "iSCSI sessions: 1",
        "NVMe/TCP controllers: 1",
        HOST_NQN,
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    // Who left is gone from the report.
    drop((s, io, admin));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report: StatusReport =
            serde_json::from_str(&stdout_of(&status(&server, true))).unwrap();
        if report.iscsi_sessions.is_empty() && report.nvme_controllers.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still listed: {report:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once the target has stopped, its configuration (kept aside) leads nowhere.
    let kept = TempDir::new("kept");
    let config_path = kept.path().join("config.yaml");
    std::fs::copy(server.config_path(), &config_path).unwrap();
    server.stop();
    let out = run(
        Command::new(common::binary())
            .args(["status", "--config"])
            .arg(&config_path),
        Duration::from_secs(30),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "status of a stopped target: {said}");
    assert!(said.contains("cannot reach"), "{said}");
}

#[test]
fn status_needs_a_state_dir() {
    let server = Server::start(&[TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "1M")])]);
    let out = status(&server, false);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("no state_dir"), "{said}");
    server.stop();
}

/// `GET path` over HTTP/1.1 from 127.0.0.1:`port`: the status line and the body.
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn metrics_are_served_for_prometheus() {
    let port = free_port();
    let top = format!("metrics: 127.0.0.1:{port}\n");
    let luns = vec![LunSpec::ram(0, "1M"), LunSpec::ram(3, "2M")];
    let server = Server::start_with(&[TargetSpec::new(TEST_IQN, luns)], &top);
    let mut s = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    s.write(0, &[0x22; 4 * BLOCK], BLOCK).expect("WRITE");

    let (status_line, body) = http_get(port, "/metrics");
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    let lun = |n: u64| format!("{{target=\"{TEST_IQN}\",lun=\"{n}\"}}");
    for expected in [
        format!("iser_target_lun_writes_total{} 1\n", lun(0)),
        format!("iser_target_lun_written_bytes_total{} 2048\n", lun(0)),
        format!("iser_target_lun_writes_total{} 0\n", lun(3)),
        format!("iser_target_lun_size_bytes{} 2097152\n", lun(3)),
        "iser_target_iscsi_sessions{transport=\"tcp\"} 1\n".to_string(),
        "# TYPE iser_target_lun_commands_total counter\n".to_string(),
    ] {
        assert!(
            body.contains(&expected),
            "{expected:?} missing from:\n{body}"
        );
    }
    // The WRITE's time, in seconds (none at the engine's granularity for a RAM LUN; less than
    // the test has run in any case).
    let sample = format!("iser_target_lun_write_time_seconds_total{} ", lun(0));
    let seconds: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&sample))
        .expect("a write time sample")
        .parse()
        .expect("seconds");
    assert!((0.0..60.0).contains(&seconds), "{seconds}");
    assert_eq!(http_get(port, "/").0, "HTTP/1.1 404 Not Found");
    drop(s);
    server.stop();
}

/// A service manager's end of sd_notify(3): the datagram socket `$NOTIFY_SOCKET` names.
struct ServiceManager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: TempDir,
}

impl ServiceManager {
    fn listen(tag: &str) -> ServiceManager {
        let dir = TempDir::new(tag);
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the manager's socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        ServiceManager {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next notification, as sent.
    fn next(&self) -> String {
        let mut buf = [0u8; 1024];
        let n = self.socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }
}

#[test]
fn a_service_manager_hears_ready_reloading_and_stopping() {
    let manager = ServiceManager::listen("notify");
    let next = || manager.next();
    let target = TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "8M")]);
    let mut server =
        Server::start_with_env(&[target], &[("NOTIFY_SOCKET", manager.path.as_os_str())]);
    let serving = "serving 1 target(s), 1 LUN(s) on 1 portal(s)";
    assert_eq!(next(), format!("READY=1\nSTATUS={serving}"));
    BlockSession::login(server.port(), TEST_IQN, 0).expect("login once ready");

    // Each SIGHUP: RELOADING=1 with the monotonic time of the reload, then READY=1 and what the
    // reload did.
    let reloaded = |said: String| {
        let mut lines = said.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"), "{said}");
        let stamp = lines.next().and_then(|l| l.strip_prefix("MONOTONIC_USEC="));
        assert!(
            stamp.is_some_and(|usec| usec.parse::<u64>().is_ok()),
            "{said}"
        );
        next()
    };
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    let allowing = config.replace(
        "allowed_initiators: []",
        "allowed_initiators: [iqn.2026-11.org.example:host1]",
    );
    server.reload(&allowing);
    assert_eq!(
        reloaded(next()),
        format!("READY=1\nSTATUS={serving}; last SIGHUP: applied access control")
    );
    let port = format!("port: {}", server.port());
    server.reload(&allowing.replace(&port, &format!("port: {}", free_port())));
    assert_eq!(
        reloaded(next()),
        format!("READY=1\nSTATUS={serving}; last SIGHUP: `portals` wait for a restart")
    );
    server.reload("portals: [");
    assert!(reloaded(next()).ends_with("config.yaml rejected (see the log)"));

    server.stop();
    assert_eq!(
        next(),
        "STOPPING=1\nSTATUS=stopping: finishing in-flight commands"
    );
}

#[test]
fn a_service_manager_keeping_a_watchdog_is_fed_while_the_engine_turns() {
    let manager = ServiceManager::listen("watchdog");
    let period = Duration::from_millis(600);
    let usec = period.as_micros().to_string();
    let target = TargetSpec::new(TEST_IQN, vec![LunSpec::ram(0, "8M")]);
    let env = [
        ("NOTIFY_SOCKET", manager.path.as_os_str()),
        ("WATCHDOG_USEC", std::ffi::OsStr::new(&usec)),
    ];
    let server = Server::start_with_env(&[target], &env);
    let next = || manager.next();
    assert!(next().starts_with("READY=1\n"));
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // Three rounds per period: five feeds take five thirds of it, and less than the period
    // passes between two.
    assert!(
        started.elapsed() >= period * 4 / 3,
        "{:?}",
        started.elapsed()
    );
    assert!(server
        .log()
        .contains("watchdog: every engine thread answers within 200ms"));
    server.stop();
}

#[test]
fn the_installed_service_is_one_systemd_accepts() {
    require_tools!("systemd-analyze");
    let root = TempDir::new("install");
    let prefix = root.path().join("usr");
    let sysconf = root.path().join("etc");
    let install = || {
        run_ok(
            Command::new(manifest_dir().join("scripts/install.sh"))
                .env("PREFIX", &prefix)
                .env("SYSCONFDIR", &sysconf)
                .env("BINARY", binary()),
            Duration::from_secs(60),
        )
    };
    let said = install();
    assert!(said.contains("installed"), "{said}");
    let unit = prefix.join("lib/systemd/system/iser-target.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let config = sysconf.join("iser-target/config.yaml");
    let exec = format!(
        "ExecStart={} serve --config {}",
        prefix.join("sbin/iser-target").display(),
        config.display()
    );
    assert!(text.contains(&exec), "{text}");
    assert!(!text.contains('@'), "a placeholder left: {text}");
    // verify exits 0 on what it only warns about (an unknown key, say): no output at all.
    let verified = run(
        Command::new("systemd-analyze").arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{complaints}",
        verified.status
    );
    let checked = run_ok(
        Command::new(prefix.join("sbin/iser-target"))
            .arg("check-config")
            .arg(&config),
        Duration::from_secs(10),
    );
    assert!(
        checked.contains("valid (2 portal(s), 1 target(s), 1 LUN(s))"),
        "{checked}"
    );

    // An administrator's configuration survives a reinstall.
    let edited = std::fs::read_to_string(&config).unwrap() + "# edited\n";
    std::fs::write(&config, &edited).unwrap();
    assert!(install().contains("kept"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);

    // Uninstalling removes what was installed, and keeps the configuration.
    run_ok(
        Command::new(manifest_dir().join("scripts/install.sh"))
            .arg("--uninstall")
            .env("PREFIX", &prefix)
            .env("SYSCONFDIR", &sysconf),
        Duration::from_secs(60),
    );
    assert!(!unit.exists() && !prefix.join("sbin/iser-target").exists());
    assert!(!prefix.join("share/doc/iser-target").exists());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
}
