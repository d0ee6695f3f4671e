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

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::block_io::{good, BlockSession, CommandReply};
use common::nvme_host::{admin_queue, NvmeQueue, HOST_NQN};
use common::{free_port, render_config, run, LunSpec, Server, TargetSpec, TempDir};
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
