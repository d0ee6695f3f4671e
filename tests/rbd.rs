//! Whole-binary tests of RBD LUNs against a real one-node Ceph cluster, the one
//! `scripts/ceph-cluster.sh start` brings up (or the conf named by `RBD_TEST_CONF`), driven
//! over iSCSI/TCP by libiscsi's iscsi-test-cu and by the bulk-data session of
//! `tests/common/block_io.rs`. Without a cluster the tests fail under CI (`CI=true`) or
//! `REQUIRE_TOOLS=1`, and are skipped loudly elsewhere. scripts/test.sh's RBD tier starts the
//! cluster, runs them and stops it.

#[macro_use]
mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use common::block_io::{good, BlockSession};
use common::nvme_host::{admin_queue, io_queue, Sqe, HOST_NQN};
use common::{free_port, run, Backing, ConformanceRun, LunSpec, Server, TargetSpec, TempDir};

const TEST_IQN: &str = "iqn.2026-11.io.iser-target:rbd";
/// The NVMe subsystem NQN derived from [`TEST_IQN`].
const TEST_NQN: &str = "nqn.2026-11.io.iser-target:rbd";
const MIB: usize = 1 << 20;
/// Tests of the SBC suites run below, and of EXTENDED COPY (through librbd's blocking reads
/// and writes), that pass on an RBD LUN (libiscsi 1.19.0, Ceph 16), as many as on a RAM LUN;
/// the 7 others are skipped on both as not applicable (e.g. LBPPB < 2), none fails. Fewer
/// fails the test.
const SBC_PASSED: u64 = 60;

/// Held shared by the tests that use the cluster, exclusively by the one that stops its OSD.
static CLUSTER_USE: RwLock<()> = RwLock::new(());

/// The test cluster's ceph.conf, or `None` (after saying so) when there is none; the guard
/// keeps the OSD running while it is held.
fn cluster_conf() -> Option<(PathBuf, RwLockReadGuard<'static, ()>)> {
    let shared = CLUSTER_USE.read().unwrap_or_else(|p| p.into_inner());
    Some((cluster_conf_path()?, shared))
}

/// The test cluster's ceph.conf, or `None` (after saying so) when there is none.
fn cluster_conf_path() -> Option<PathBuf> {
    let conf = std::env::var_os("RBD_TEST_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::manifest_dir().join("target/ceph-cluster/ceph.conf"));
    if conf.exists() {
        return Some(conf);
    }
    let msg = format!(
        "no Ceph cluster at {} (run scripts/ceph-cluster.sh start)",
        conf.display()
    );
    if common::tools_required() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A fresh image name for this test run.
fn image_name(tag: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("it-{tag}-{}-{stamp}", std::process::id())
}

/// LUN 0 on image `image` of pool `rbd`, created with `size` if missing.
fn rbd_lun(conf: &std::path::Path, image: &str, size: &str, write_cache: bool) -> LunSpec {
    LunSpec {
        id: 0,
        backing: Backing::Yaml {
            backing: format!(
                "{{ type: rbd, pool: rbd, image: {image}, size: {size}, create: true, \
                 conf: {}, user: admin }}",
                conf.display()
            ),
            write_cache,
        },
    }
}

/// 64 MiB of data no two MiB of which are alike.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(13) ^ (i as u8))
        .collect()
}

/// Reads `len` bytes from LUN 0 of the server, 1 MiB per command.
fn read_all(server: &Server, len: usize) -> Vec<u8> {
    let mut session = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    let mut out = Vec::with_capacity(len);
    for chunk in 0..len / MIB {
        let lba = (chunk * MIB / 512) as u64;
        out.extend(session.read(lba, MIB, 512).expect("READ(16)"));
    }
    out
}

#[test]
fn data_round_trips_matches_rbd_export_and_survives_a_restart() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    let image = image_name("roundtrip");
    let lun = rbd_lun(&conf, &image, "128M", false);
    let data = pattern(64 * MIB);
    let server = Server::start(&[TargetSpec::new(TEST_IQN, vec![lun.clone()])]);
    let mut session = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    let started = Instant::now();
    for (n, chunk) in data.chunks(MIB).enumerate() {
        let lba = (n * MIB / 512) as u64;
        session.write(lba, chunk, 512).expect("WRITE(16)");
    }
    eprintln!("wrote 64 MiB in {:?}", started.elapsed());
    assert!(
        read_all(&server, data.len()) == data,
        "read back what was written"
    );
    drop(session);
    server.stop();

    // The image itself holds the bytes.
    let exported = Command::new("rbd")
        .arg("-c")
        .arg(&conf)
        .args(["export", &format!("rbd/{image}"), "-"])
        .stderr(Stdio::null())
        .output()
        .expect("run rbd export");
    assert!(exported.status.success(), "rbd export failed");
    assert_eq!(exported.stdout.len(), 128 * MIB, "image keeps its size");
    assert!(
        exported.stdout[..64 * MIB] == data[..],
        "rbd export shows the written bytes"
    );
    assert!(exported.stdout[64 * MIB..].iter().all(|&b| b == 0));

    // A new target process on the same (now existing) image serves the same data.
    let server = Server::start(&[TargetSpec::new(TEST_IQN, vec![lun])]);
    assert!(
        read_all(&server, data.len()) == data,
        "data kept across a restart"
    );
    server.stop();
}

/// The value of Ceph option `name` in the running target's librbd, asked through the admin
/// socket scripts/ceph-cluster.sh gives every client (`run/client.admin.PID.CCTID.asok`).
fn target_ceph_option(conf: &std::path::Path, server: &Server, name: &str) -> String {
    let run_dir = conf.parent().unwrap().join("run");
    let prefix = format!("client.admin.{}.", server.pid());
    let socket = fs::read_dir(&run_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            file.starts_with(&prefix) && file.ends_with(".asok")
        })
        .unwrap_or_else(|| panic!("no admin socket {prefix}*.asok in {}", run_dir.display()));
    let out = run(
        Command::new("ceph")
            .arg("--admin-daemon")
            .arg(&socket)
            .args(["config", "get", name]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "ceph --admin-daemon failed");
    // {
    //     "rbd_cache": "false"
    // }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("\"{name}\"")))
        .unwrap_or_else(|| panic!("{name} not in {text}"));
    let value = line.split_once(':').map(|(_, v)| v).unwrap_or_default();
    value.trim().trim_matches('"').to_string()
}

#[test]
fn write_cache_setting_decides_librbd_cache_and_zero_copy_writes() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    for write_cache in [false, true] {
        let lun = rbd_lun(&conf, &image_name("cache"), "16M", write_cache);
        let server = Server::start(&[TargetSpec::new(TEST_IQN, vec![lun])]);
        assert_eq!(
            target_ceph_option(&conf, &server, "rbd_cache"),
            write_cache.to_string(),
            "write_cache: {write_cache}"
        );
        // Zero-copy writes exactly when there is no cache to keep the data.
        assert_eq!(
            target_ceph_option(&conf, &server, "rbd_disable_zero_copy_writes"),
            write_cache.to_string(),
            "write_cache: {write_cache}"
        );
        server.stop();
    }
}

#[test]
fn iscsi_test_cu_sbc_suites_pass() {
    require_tools!("iscsi-test-cu");
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    // librbd's write cache on: SYNCHRONIZE CACHE and FUA go through its flush.
    let lun = rbd_lun(&conf, &image_name("sbc"), "256M", true);
    let mut server = Server::start(&[TargetSpec::new(TEST_IQN, vec![lun])]);
    let out_dir = server.dir().join("sbc");
    let suites = "SCSI.Read10,SCSI.Read16,SCSI.Write10,SCSI.Write16,SCSI.WriteVerify16,\
                  SCSI.Unmap,SCSI.WriteSame10,SCSI.WriteSame16,SCSI.CompareAndWrite,\
                  SCSI.SynchronizeCache10,SCSI.SynchronizeCache16,SCSI.GetLBAStatus,\
                  SCSI.ExtendedCopy,SCSI.ReceiveCopyResults";
    let conformance = ConformanceRun::run(
        &["--tests", suites, "--stall", "120", "--timeout", "600"],
        &server.lun_url(TEST_IQN, 0),
        &out_dir,
        Duration::from_secs(630),
    );
    let (summary, stdout) = (&conformance.summary, &conformance.stdout);
    server.assert_alive();
    assert_eq!(
        conformance.get("status"),
        "completed",
        "{summary}\n{stdout}"
    );
    assert_eq!(conformance.count("failed"), 0, "{summary}\n{stdout}");
    let passed = conformance.count("passed");
    assert!(
        passed >= SBC_PASSED,
        "{passed} passed, fewer than {SBC_PASSED}:\n{summary}"
    );
    server.stop();
}

/// Runs `serve` on a config with one RBD LUN and expects start-up to fail within `within`
/// with a message containing each of `needles`.
fn start_up_fails(backing: &str, within: Duration, needles: &[&str]) {
    let dir = TempDir::new("rbd-fail");
    let config = dir.path().join("config.yaml");
    let port = common::free_port();
    fs::write(
        &config,
        format!(
            "portals: [{{address: 127.0.0.1, port: {port}}}]\ntargets:\n  - name: {TEST_IQN}\n    \
             allowed_initiators: []\n    luns:\n      - backing: {backing}\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = run(
        Command::new(common::binary())
            .args(["serve", "--config"])
            .arg(&config),
        within + Duration::from_secs(15),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway: {stderr}");
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn unreachable_cluster_fails_start_up_clearly() {
    // No cluster needed: a conf whose monitor address nothing listens on.
    let dir = TempDir::new("rbd-unreachable");
    let conf = dir.path().join("ceph.conf");
    fs::write(
        &conf,
        "[global]\nmon host = 127.0.0.1:1\nauth client required = none\n",
    )
    .unwrap();
    let backing = format!(
        "{{type: rbd, pool: rbd, image: disk0, conf: {}}}",
        conf.display()
    );
    start_up_fails(
        &backing,
        Duration::from_secs(45),
        &["rbd/disk0", "connecting to the cluster's monitors"],
    );
}

#[test]
fn missing_pool_and_image_fail_start_up_clearly() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    let c = conf.display();
    start_up_fails(
        &format!("{{type: rbd, pool: no-such-pool, image: x, conf: {c}}}"),
        Duration::from_secs(30),
        &[
            "no-such-pool/x",
            "opening the pool",
            "No such file or directory",
        ],
    );
    start_up_fails(
        &format!("{{type: rbd, pool: rbd, image: no-such-image, conf: {c}}}"),
        Duration::from_secs(30),
        &[
            "rbd/no-such-image",
            "opening the image",
            "No such file or directory",
        ],
    );
}

#[test]
fn two_gateways_on_one_image() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    // Two target processes, target port groups 1 and 2, on one image with its cache off: what
    // one acknowledged is in the OSDs, so the other reads it (docs/multipath.md).
    let lun = rbd_lun(&conf, &image_name("gateways"), "64M", false);
    let targets = [TargetSpec::new(TEST_IQN, vec![lun])];
    let a = Server::start_with(&targets, "target_port_group: 1\n");
    let b = Server::start_with(&targets, "target_port_group: 2\n");
    let mut sa = BlockSession::login(a.port(), TEST_IQN, 0).expect("login to A");
    let mut sb = BlockSession::login(b.port(), TEST_IQN, 0).expect("login to B");
    let data = pattern(8 * MIB);
    for (n, chunk) in data[..4 * MIB].chunks(MIB).enumerate() {
        sa.write((n * MIB / 512) as u64, chunk, 512)
            .expect("WRITE through A");
    }
    for (n, chunk) in data[4 * MIB..].chunks(MIB).enumerate() {
        sb.write(((4 + n) * MIB / 512) as u64, chunk, 512)
            .expect("WRITE through B");
    }
    for (s, name) in [(&mut sa, "A"), (&mut sb, "B")] {
        let mut back = Vec::with_capacity(data.len());
        for n in 0..8 {
            back.extend(s.read((n * MIB / 512) as u64, MIB, 512).expect("READ"));
        }
        assert!(back == data, "gateway {name} reads what both wrote");
    }
    drop((sa, sb));
    a.stop();
    b.stop();
}

/// PERSISTENT RESERVE OUT `action` of type `rtype` with key `key` and service action key
/// `sa_key`: its status.
fn prout(s: &mut BlockSession, action: u8, rtype: u8, key: u64, sa_key: u64) -> u8 {
    let mut list = key.to_be_bytes().to_vec();
    list.extend_from_slice(&sa_key.to_be_bytes());
    list.extend_from_slice(&[0; 8]);
    let reply = s
        .command_out(&[0x5F, action, rtype, 0, 0, 0, 0, 0, 24, 0], &list)
        .expect("PERSISTENT RESERVE OUT");
    assert_ne!(reply.status, 2, "sense {:02x?}", reply.sense);
    reply.status
}

/// READ FULL STATUS: (key, relative target port, holder) of each registration.
fn full_status(s: &mut BlockSession) -> Vec<(u64, u16, bool)> {
    let d = good(
        s.command(&[0x5E, 3, 0, 0, 0, 0, 0, 0x04, 0, 0], 1024)
            .expect("PERSISTENT RESERVE IN"),
    );
    let mut out = Vec::new();
    let mut at = 8;
    while at + 24 <= d.len() {
        let key = u64::from_be_bytes(d[at..at + 8].try_into().unwrap());
        let port = u16::from_be_bytes([d[at + 18], d[at + 19]]);
        out.push((key, port, d[at + 12] & 1 != 0));
        at += 24 + u32::from_be_bytes(d[at + 20..at + 24].try_into().unwrap()) as usize;
    }
    out
}

/// Two gateways of one image keep one reservation state, in an object beside the image: a
/// reservation taken through one fences initiators on the other, a PREEMPT AND ABORT through one
/// reaches the preempted initiator through the other as a unit attention, and a gateway
/// restarted finds the state where it was.
#[test]
fn reservations_through_one_gateway_bind_the_other() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    const REGISTER: u8 = 0;
    const RESERVE: u8 = 1;
    const PREEMPT_AND_ABORT: u8 = 5;
    const CLEAR: u8 = 3;
    const WRITE_EXCLUSIVE: u8 = 1;
    const CONFLICT: u8 = 0x18;
    let lun = rbd_lun(&conf, &image_name("reservations"), "16M", false);
    let targets = [TargetSpec::new(TEST_IQN, vec![lun])];
    let a = Server::start_with(&targets, "target_port_group: 1\n");
    let b = Server::start_with(&targets, "target_port_group: 2\n");
    assert!(
        b.log().contains("persistent reservations shared"),
        "{}",
        b.log()
    );
    let mut x = BlockSession::login(a.port(), TEST_IQN, 0).expect("X logs in to A");
    let mut y = BlockSession::login_as(b.port(), TEST_IQN, 0, 8).expect("Y logs in to B");
    let block = pattern(512);

    assert_eq!(prout(&mut x, REGISTER, 0, 0, 0xA), 0);
    assert_eq!(prout(&mut x, RESERVE, WRITE_EXCLUSIVE, 0xA, 0), 0);
    let status = |s: &mut BlockSession| s.command_out(&write10(0, 1), &block).unwrap().status;
    assert_eq!(status(&mut y), CONFLICT, "Y through B is fenced");
    assert!(y.read(0, 512, 512).is_ok(), "Y still reads");
    assert_eq!(status(&mut x), 0);
    assert_eq!(full_status(&mut y), vec![(0xA, 1, true)]);

    // Y takes over, aborting X's commands (A waits for those it has in flight): X's
    // registration and reservation go, and X hears of it through A.
    assert_eq!(prout(&mut y, REGISTER, 0, 0, 0xB), 0);
    assert_eq!(
        prout(&mut y, PREEMPT_AND_ABORT, WRITE_EXCLUSIVE, 0xB, 0xA),
        0
    );
    let tur = x.command(&[0; 6], 0).expect("TEST UNIT READY");
    assert_eq!(tur.status, 2);
    assert_eq!(
        (tur.sense[12], tur.sense[13]),
        (0x2A, 0x05),
        "REGISTRATIONS PREEMPTED"
    );
    assert_eq!(status(&mut x), CONFLICT, "X through A is fenced now");
    assert!(
        a.log()
            .contains("preempted and aborted through another gateway"),
        "A waited for its commands in flight: {}",
        a.log()
    );
    assert_eq!(status(&mut y), 0);

    // B restarted reads the state back; Y's new session (same ISID) holds it again.
    drop(y);
    b.stop();
    let b = Server::start_with(&targets, "target_port_group: 2\n");
    let mut y = BlockSession::login_as(b.port(), TEST_IQN, 0, 8).expect("Y logs in to B again");
    assert_eq!(full_status(&mut y), vec![(0xB, 2, true)]);
    assert_eq!(status(&mut y), 0);
    assert_eq!(status(&mut x), CONFLICT);
    assert_eq!(prout(&mut y, CLEAR, 0, 0xB, 0), 0);
    assert_eq!(status(&mut x), 0, "cleared through B, A lets X write");
    drop((x, y));
    a.stop();
    b.stop();
}

/// A gateway that cannot answer (stopped) while another changes the reservations: the change
/// completes after the announcement's 10 s, the log names the silent gateway's client and how
/// to fence it, and the stopped gateway, resumed, takes the change it missed.
#[test]
fn a_silent_gateway_is_named_and_catches_up() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    let lun = rbd_lun(&conf, &image_name("silent"), "16M", false);
    let targets = [TargetSpec::new(TEST_IQN, vec![lun])];
    let a = Server::start_with(&targets, "target_port_group: 1\n");
    let b = Server::start_with(&targets, "target_port_group: 2\n");
    let client_of = |log: &str| {
        let at = log
            .find("(this gateway is client.")
            .expect("client id logged")
            + 24;
        log[at..].split(' ').next().unwrap().to_string()
    };
    let b_client = client_of(&b.log());
    let mut x = BlockSession::login(a.port(), TEST_IQN, 0).expect("X logs in to A");
    let mut y = BlockSession::login_as(b.port(), TEST_IQN, 0, 8).expect("Y logs in to B");
    x.set_response_timeout(Duration::from_secs(30)).unwrap();

    let b_pid = Pid::from_raw(b.pid() as i32);
    kill(b_pid, Signal::SIGSTOP).expect("SIGSTOP B");
    let started = Instant::now();
    let registered = prout(&mut x, 0, 0, 0, 0xA);
    let waited = started.elapsed();
    kill(b_pid, Signal::SIGCONT).expect("SIGCONT B");
    assert_eq!(registered, 0, "the change stands");
    assert!(waited >= Duration::from_secs(9), "waited for B: {waited:?}");
    let log = a.log();
    assert!(
        log.contains(&format!("{b_client} did not confirm"))
            && log.contains("ceph osd blocklist add"),
        "A names B ({b_client}): {log}"
    );
    // B, resumed, takes the announcement it was sent while stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = good(
            y.command(&[0x5E, 0, 0, 0, 0, 0, 0, 0x04, 0, 0], 1024)
                .unwrap(),
        );
        if keys.len() >= 16 && keys[8..16] == 0xAu64.to_be_bytes() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never took the registration: {keys:02x?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((x, y));
    a.stop();
    b.stop();
}

/// An NVMe host is one registrant through both gateways of an image: it registers through
/// A and takes Write Exclusive through B, which fences an iSCSI initiator on A; the
/// initiator's PREEMPT through A then fences the host on B.
#[test]
fn an_nvme_host_and_an_iscsi_initiator_share_reservations_across_gateways() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    const RESERVATION_CONFLICT: (u8, u8) = (0, 0x83);
    let lun = rbd_lun(&conf, &image_name("nvme-reservations"), "16M", false);
    let targets = [TargetSpec::new(TEST_IQN, vec![lun])];
    let nvme_ports = [free_port(), free_port()];
    let gateways: Vec<Server> = nvme_ports
        .iter()
        .zip([1, 2])
        .map(|(port, group)| {
            Server::start_with_portals_and(
                &targets,
                &format!("  - {{ address: 127.0.0.1, port: {port}, transport: nvme-tcp }}\n"),
                &format!("target_port_group: {group}\n"),
            )
        })
        .collect();
    let mut queues: Vec<_> = nvme_ports
        .iter()
        .map(|&port| {
            let (admin, cntlid) = admin_queue(port, TEST_NQN, HOST_NQN, 1);
            (admin, io_queue(port, TEST_NQN, HOST_NQN, cntlid, 1))
        })
        .collect();
    let keys = |current: u64, new: u64| {
        let mut d = current.to_le_bytes().to_vec();
        d.extend_from_slice(&new.to_le_bytes());
        d
    };
    // Reservation Register (0Dh) through A: register key 0xA, CPTPL 11b as Linux sends it.
    let (cqe, _) = queues[0]
        .1
        .command(Sqe::new(0x0D, 1).cdw(10, 0b11 << 30), &keys(0, 0xA), 0)
        .expect("Reservation Register");
    assert!(cqe.ok(), "{cqe:?}");
    // Reservation Acquire (11h) through B with the key registered through A: Write Exclusive.
    let (cqe, _) = queues[1]
        .1
        .command(Sqe::new(0x11, 1).cdw(10, 1 << 8), &keys(0xA, 0), 0)
        .expect("Reservation Acquire");
    assert!(cqe.ok(), "one registrant through both gateways: {cqe:?}");

    let block = pattern(512);
    let mut y = BlockSession::login(gateways[0].port(), TEST_IQN, 0).expect("Y logs in to A");
    let status = |s: &mut BlockSession| s.command_out(&write10(0, 1), &block).unwrap().status;
    assert_eq!(status(&mut y), 0x18, "the host's reservation fences Y on A");
    for (_, io) in &mut queues {
        assert!(
            io.write(1, 0, &block, 512).expect("WRITE").ok(),
            "the holder writes"
        );
    }
    assert_eq!(prout(&mut y, 0, 0, 0, 0xB), 0);
    assert_eq!(prout(&mut y, 4, 1, 0xB, 0xA), 0, "Y preempts the host");
    for (_, io) in &mut queues {
        let cqe = io.write(1, 0, &block, 512).expect("WRITE");
        assert_eq!(cqe.status, RESERVATION_CONFLICT, "{cqe:?}");
    }
    assert_eq!(status(&mut y), 0);
    assert_eq!(prout(&mut y, 3, 0, 0xB, 0), 0, "CLEAR");
    drop((queues, y));
    for gateway in gateways {
        gateway.stop();
    }
}

/// WRITE(10) of `blocks` blocks at `lba`.
fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut cdb = vec![0x2A, 0];
    cdb.extend_from_slice(&lba.to_be_bytes());
    cdb.push(0);
    cdb.extend_from_slice(&blocks.to_be_bytes());
    cdb.push(0);
    cdb
}

#[test]
fn resizing_the_image_changes_capacity_with_a_unit_attention() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    let image = image_name("resize");
    let server = Server::start(&[TargetSpec::new(
        TEST_IQN,
        vec![rbd_lun(&conf, &image, "16M", false)],
    )]);
    let mut first = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    let mut second = BlockSession::login_as(server.port(), TEST_IQN, 0, 8).expect("login");
    assert_eq!(
        first.last_lba().expect("READ CAPACITY(16)"),
        16 * MIB as u64 / 512 - 1
    );
    assert_eq!(
        second.last_lba().expect("READ CAPACITY(16)"),
        16 * MIB as u64 / 512 - 1
    );

    // Another client grows the image.
    rbd_resize(&conf, &image, "32M");

    // The next command of each session (TEST UNIT READY) reports CAPACITY DATA HAS CHANGED
    // once librbd's update watch has told the target.
    let deadline = Instant::now() + Duration::from_secs(30);
    let attention = loop {
        let reply = first.command(&[0; 6], 0).expect("TEST UNIT READY");
        if reply.status != 0 || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(attention.status, 2, "no unit attention: {attention:02x?}");
    let key_asc_ascq = |s: &[u8]| (s[2] & 0x0F, s[12], s[13]);
    assert_eq!(key_asc_ascq(&attention.sense), (0x6, 0x2A, 0x09));
    assert_eq!(
        first.command(&[0; 6], 0).expect("TUR").status,
        0,
        "reported once"
    );
    assert_eq!(
        first.last_lba().expect("READ CAPACITY(16)"),
        32 * MIB as u64 / 512 - 1
    );
    // The other session gets it through REQUEST SENSE, as GOOD status with the sense data.
    let sensed = second
        .command(&[0x03, 0, 0, 0, 18, 0], 18)
        .expect("REQUEST SENSE");
    assert_eq!(sensed.status, 0);
    assert_eq!(key_asc_ascq(&sensed.data), (0x6, 0x2A, 0x09));
    assert_eq!(
        second.last_lba().expect("READ CAPACITY(16)"),
        32 * MIB as u64 / 512 - 1
    );

    // The new blocks are usable up to the new end.
    let tail = pattern(MIB);
    let lba = (31 * MIB / 512) as u64;
    first
        .write(lba, &tail, 512)
        .expect("WRITE past the old end");
    assert!(first.read(lba, MIB, 512).expect("READ") == tail);
    drop((first, second));
    server.stop();
}

/// `rbd resize` of `image` to `size`, as another client of the cluster.
fn rbd_resize(conf: &std::path::Path, image: &str, size: &str) {
    let out = run(
        Command::new("rbd").arg("-c").arg(conf).args([
            "resize",
            "--size",
            size,
            &format!("rbd/{image}"),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "rbd resize failed");
}

/// The same resize seen by an NVMe/TCP host: the controller completes its held Asynchronous
/// Event Request with a Namespace Attribute Changed notice, the Changed Namespace List (04h)
/// names NSID 1 and Identify Namespace shows the new size, as Linux's host reads them
/// (drivers/nvme/host/core.c nvme_handle_aen_notice, then the namespace scan).
#[test]
fn resizing_the_image_reaches_an_nvme_host_as_a_namespace_attribute_notice() {
    let Some((conf, _cluster)) = cluster_conf() else {
        return;
    };
    let image = image_name("nvme-resize");
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    let server = Server::start_with_portals(
        &[TargetSpec::new(
            TEST_IQN,
            vec![rbd_lun(&conf, &image, "16M", false)],
        )],
        &portals,
    );
    let (mut admin, cntlid) = admin_queue(nvme_port, TEST_NQN, HOST_NQN, 1);
    assert_eq!(
        admin.namespace_size(1).expect("Identify Namespace"),
        16 * MIB as u64 / 512
    );
    assert!(admin.enable_notices(1 << 8).expect("Set Features").ok());
    let aer = admin.post_async_event_request().expect("AER");

    rbd_resize(&conf, &image, "32M");

    // The controller looks at the namespaces' sizes on each admin command; a host sends Keep
    // Alive every few seconds. Keep alives until the notice arrives (librbd's update watch
    // first has to tell the target of the new size).
    let deadline = Instant::now() + Duration::from_secs(30);
    let notice = 'waiting: loop {
        let keep_alive = admin.post(Sqe::new(0x18, 0)).expect("Keep Alive");
        let mut notice = None;
        loop {
            let cqe = admin
                .next_completion(Duration::from_secs(10))
                .expect("a completion");
            if cqe.cid == aer {
                notice = Some(cqe);
            } else {
                assert_eq!((cqe.cid, cqe.ok()), (keep_alive, true), "{cqe:?}");
                break;
            }
        }
        if let Some(cqe) = notice {
            break 'waiting cqe;
        }
        assert!(
            Instant::now() < deadline,
            "no Namespace Attribute Changed notice 30 s after the resize"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(notice.ok(), "{notice:?}");
    assert_eq!(
        notice.result as u32, 0x04_00_02,
        "notice, namespace attribute changed, log 04h"
    );
    let (cqe, changed) = admin
        .get_log_page(0x04, 4096)
        .expect("Changed Namespace List");
    assert!(cqe.ok(), "{cqe:?}");
    let nsid = |at: usize| u32::from_le_bytes(changed[at..at + 4].try_into().unwrap());
    assert_eq!((nsid(0), nsid(4)), (1, 0), "NSID 1 alone");
    assert_eq!(
        admin.namespace_size(1).expect("Identify Namespace"),
        32 * MIB as u64 / 512
    );

    // The new blocks are usable up to the new end.
    let mut io = io_queue(nvme_port, TEST_NQN, HOST_NQN, cntlid, 1);
    let tail = pattern(64 * 1024);
    let lba = (32 * MIB - tail.len()) as u64 / 512;
    assert!(io.write(1, lba, &tail, 512).expect("Write").ok());
    let (cqe, back) = io.read(1, lba, tail.len(), 512).expect("Read");
    assert!(cqe.ok(), "{cqe:?}");
    assert!(back == tail, "read back past the old end");
    drop((io, admin));
    server.stop();
}

/// Runs `scripts/ceph-cluster.sh ACTION` on the cluster of `conf`.
fn ceph_cluster(conf: &std::path::Path, action: &str) -> bool {
    let out = run(
        Command::new(common::manifest_dir().join("scripts/ceph-cluster.sh"))
            .arg(action)
            .env("CEPH_CLUSTER_DIR", conf.parent().unwrap()),
        Duration::from_secs(240),
    );
    if !out.status.success() {
        eprintln!(
            "ceph-cluster.sh {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// Starts the OSD again when dropped, so that a failing test leaves a usable cluster.
struct OsdRestart<'a>(&'a std::path::Path);

impl Drop for OsdRestart<'_> {
    fn drop(&mut self) {
        ceph_cluster(self.0, "osd-start");
    }
}

/// READ(16) of `blocks` 512-byte blocks at `lba`.
fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut cdb = vec![0x88; 16];
    cdb[1..].fill(0);
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

#[test]
fn a_stopped_osd_makes_its_lun_busy_not_the_others_and_io_resumes() {
    // The OSD is stopped: no other test may use the cluster meanwhile.
    let _alone = CLUSTER_USE.write().unwrap_or_else(|p| p.into_inner());
    let Some(conf) = cluster_conf_path() else {
        return;
    };
    let image = image_name("osd");
    let rbd = LunSpec {
        id: 0,
        backing: Backing::Yaml {
            backing: format!(
                "{{ type: rbd, pool: rbd, image: {image}, size: 16M, create: true, \
                 conf: {}, user: admin, timeout_secs: 4 }}",
                conf.display()
            ),
            write_cache: false,
        },
    };
    let server = Server::start(&[TargetSpec::new(TEST_IQN, vec![rbd, LunSpec::ram(1, "16M")])]);
    let mut on_rbd = BlockSession::login(server.port(), TEST_IQN, 0).expect("login");
    let mut on_ram = BlockSession::login_as(server.port(), TEST_IQN, 1, 8).expect("login");
    let before = pattern(MIB);
    on_rbd
        .write(0, &before, 512)
        .expect("WRITE before the OSD stops");

    assert!(ceph_cluster(&conf, "osd-stop"), "osd-stop");
    let restart = OsdRestart(&conf);
    // Blocks the OSD has (written above, so librbd's object map sends the I/O there).
    let rbd_io = std::thread::spawn(move || {
        let read = on_rbd.command(&read16(0, 8), 4096).expect("READ answered");
        let write = on_rbd.write(8, &pattern(4096), 512);
        (on_rbd, read, write)
    });
    // Meanwhile the RAM LUN of the same target answers every command.
    let ram_data = pattern(MIB);
    let mut rounds = 0;
    while !rbd_io.is_finished() {
        on_ram.write(0, &ram_data, 512).expect("RAM LUN WRITE");
        assert!(on_ram.read(0, MIB, 512).expect("RAM LUN READ") == ram_data);
        rounds += 1;
    }
    let (mut on_rbd, read, write) = rbd_io.join().unwrap();
    eprintln!("{rounds} MiB round trips on the RAM LUN while the RBD LUN waited");
    assert_eq!(read.status, 0x08, "READ with the OSD down: {read:02x?}");
    let write = write.expect_err("WRITE with the OSD down");
    assert!(write.to_string().contains("status 0x08"), "{write}");

    // The OSD back, the LUN serves I/O again, with the data written before.
    drop(restart);
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        match on_rbd.read(0, MIB, 512) {
            Ok(data) => break data,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("READ after the OSD came back: {e}"),
        }
    };
    assert!(after == before, "data kept");
    on_rbd
        .write(0, &pattern(4096), 512)
        .expect("WRITE after the OSD came back");
    drop((on_rbd, on_ram));
    server.stop();
}
