//! Two `iser-target serve` processes exporting one file LUN, as two gateways of one LU with
//! ALUA (docs/multipath.md): both report the same LU identity and each its own target port
//! group; data written through one reads back through the other; a standby gateway answers
//! inspection commands and refuses media access. libiscsi's MultipathIO suite runs across the
//! two paths. Over NVMe/TCP, the same gateways are controllers of one subsystem with ANA.

#[macro_use]
mod common;

use std::process::Command;
use std::time::Duration;

use common::block_io::{good, BlockSession, CommandReply};
use common::nvme_host::{admin_queue, io_queue, HOST_NQN};
use common::{free_port, run_ok, LunSpec, Server, TargetSpec, TempDir};

const TEST_IQN: &str = "iqn.2026-11.io.iser-target:shared";
const MIB: usize = 1 << 20;

/// A gateway in target port group `group` (and `alua_state`, when given) serving LUN 0 on
/// `file`. The target name and LUN id are the same on every gateway, so the derived serial and
/// identifier (VPD 0x80 / 0x83) are too.
fn gateway(file: &std::path::Path, group: u16, state: Option<&str>) -> Server {
    let lun = LunSpec::file(0, file.to_str().unwrap(), "16M");
    let mut top = format!("target_port_group: {group}\n");
    if let Some(state) = state {
        top.push_str(&format!("alua_state: {state}\n"));
    }
    Server::start_with(&[TargetSpec::new(TEST_IQN, vec![lun])], &top)
}

fn session(server: &Server) -> BlockSession {
    BlockSession::login(server.port(), TEST_IQN, 0).expect("login")
}

/// INQUIRY VPD page `page`.
fn vpd(s: &mut BlockSession, page: u8) -> Vec<u8> {
    good(
        s.command(&[0x12, 0x01, page, 0x01, 0x00, 0], 256)
            .expect("INQUIRY"),
    )
}

/// The designators of VPD page 0x83 as (association, type, value).
fn designators(page: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = usize::from(page[at + 3]);
        let value = page[at + 4..at + 4 + len].to_vec();
        out.push(((page[at + 1] >> 4) & 0x03, page[at + 1] & 0x0F, value));
        at += 4 + len;
    }
    out
}

/// REPORT TARGET PORT GROUPS, extended header form.
fn rtpg(s: &mut BlockSession) -> CommandReply {
    s.command(&[0xA3, 0x20 | 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256)
        .expect("RTPG")
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION reply.
fn sense_of(reply: &CommandReply) -> (u8, u8, u8) {
    assert_eq!(reply.status, 0x02, "want CHECK CONDITION");
    let s = &reply.sense;
    (s[2] & 0x0F, s[12], s[13])
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(31) ^ (i as u8) ^ seed)
        .collect()
}

#[test]
fn two_gateways_share_one_lun() {
    let dir = TempDir::new("gateways");
    let file = dir.path().join("shared.img");
    let a = gateway(&file, 1, None);
    let b = gateway(&file, 2, None);

    let (mut sa, mut sb) = (session(&a), session(&b));

    // One LU identity, two target ports in two groups.
    assert_eq!(vpd(&mut sa, 0x80), vpd(&mut sb, 0x80));
    let (da, db) = (
        designators(&vpd(&mut sa, 0x83)),
        designators(&vpd(&mut sb, 0x83)),
    );
    let lu = |d: &[(u8, u8, Vec<u8>)]| d.iter().filter(|x| x.0 == 0).cloned().collect::<Vec<_>>();
    assert_eq!(lu(&da), lu(&db));
    assert!(da.contains(&(1, 4, vec![0, 0, 0, 1])), "{da:?}");
    assert!(da.contains(&(1, 5, vec![0, 0, 0, 1])), "{da:?}");
    assert!(db.contains(&(1, 4, vec![0, 0, 0, 2])), "{db:?}");
    assert!(db.contains(&(1, 5, vec![0, 0, 0, 2])), "{db:?}");
    let std = good(sa.command(&[0x12, 0, 0, 0, 96, 0], 96).unwrap());
    assert_eq!(std[5] & 0x30, 0x10, "TPGS: implicit ALUA");

    // Write-through file LUN: what one gateway acknowledged, the other reads.
    let one = pattern(MIB, 1);
    sa.write(1024, &one, 512).expect("write through A");
    assert_eq!(sb.read(1024, MIB, 512).expect("read through B"), one);
    let two = pattern(MIB, 2);
    sb.write(4096, &two, 512).expect("write through B");
    assert_eq!(sa.read(4096, MIB, 512).expect("read through A"), two);
    drop((sa, sb));

    // libiscsi's cross-path tests, with LBA 256 still zero:
    // test_multipathio_compareandwrite.c zeroes LBAs 0..256 but compares LBAs 0..=256. Reset is not run: no unit attention crosses gateways.
    require_tools!("iscsi-test-cu");
    for test in ["Simple", "CompareAndWrite", "CompareAndWriteAsync"] {
        run_ok(
            Command::new("iscsi-test-cu")
                .args(["-d", "-s", "-t", &format!("SCSI.MultipathIO.{test}")])
                .arg(a.lun_url(TEST_IQN, 0))
                .arg(b.lun_url(TEST_IQN, 0)),
            Duration::from_secs(120),
        );
    }
}

#[test]
fn each_gateway_reports_its_own_group_and_state() {
    let dir = TempDir::new("gateways");
    let file = dir.path().join("shared.img");
    let a = gateway(&file, 1, None);
    let b = gateway(&file, 513, Some("active-non-optimized"));
    let d = good(rtpg(&mut session(&a)));
    // Extended header (format 001b), then one group: AO, S/AN/AO supported, id 1, one port 1.
    assert_eq!(
        d,
        [0, 0, 0, 16, 0x10, 0, 0, 0, 0x00, 0x07, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    );
    let d = good(rtpg(&mut session(&b)));
    assert_eq!(&d[8..], &[0x01, 0x07, 2, 1, 0, 0, 0, 1, 0, 0, 2, 1]);
    // The length-only header form.
    let mut s = session(&b);
    let d = good(
        s.command(&[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256)
            .unwrap(),
    );
    assert_eq!(&d[..4], &[0, 0, 0, 12]);
    // Active/non-optimized still serves I/O.
    let data = pattern(64 * 1024, 3);
    s.write(0, &data, 512)
        .expect("write through the non-optimized gateway");
    assert_eq!(s.read(0, data.len(), 512).unwrap(), data);
}

#[test]
fn standby_gateway_answers_inspection_and_refuses_media_access() {
    let dir = TempDir::new("gateways");
    let file = dir.path().join("shared.img");
    let _a = gateway(&file, 1, None);
    let b = gateway(&file, 2, Some("standby"));
    let mut s = session(&b);
    let d = good(rtpg(&mut s));
    assert_eq!(d[8] & 0x0F, 0x02, "asymmetric access state: standby");
    good(s.command(&[0x12, 0, 0, 0, 96, 0], 96).unwrap());
    good(s.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).unwrap());
    good(
        s.command(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256)
            .unwrap(),
    );
    // LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE: multipathd's tur checker
    // reads it as a standby ("ghost") path.
    let standby = (0x02, 0x04, 0x0B);
    let tur = s.command(&[0, 0, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(sense_of(&tur), standby);
    let read = s.command(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 512).unwrap();
    assert_eq!(sense_of(&read), standby);
    assert!(
        s.write(0, &[0u8; 512], 512).is_err(),
        "a WRITE in standby must fail"
    );
}

/// The subsystem NQN derived from [`TEST_IQN`].
const TEST_NQN: &str = "nqn.2026-11.io.iser-target:shared";

/// [`gateway`] with an NVMe/TCP portal too; returns the server and the NVMe/TCP port.
fn nvme_gateway(file: &std::path::Path, group: u16, state: &str) -> (Server, u16) {
    let lun = LunSpec::file(0, file.to_str().unwrap(), "16M");
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    let top = format!("target_port_group: {group}\nalua_state: {state}\n");
    let server =
        Server::start_with_portals_and(&[TargetSpec::new(TEST_IQN, vec![lun])], &portals, &top);
    (server, nvme_port)
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

/// Three gateways of one file LUN over NVMe/TCP, as Linux's native multipath sees them: one
/// subsystem NQN and serial, controller IDs that do not collide, one namespace identity, and
/// per gateway its ANA group (the target port group) in the state of its ALUA state.
#[test]
fn gateways_report_ana_over_nvme_tcp() {
    let dir = TempDir::new("gateways");
    let file = dir.path().join("shared.img");
    let gateways = [
        nvme_gateway(&file, 1, "active-optimized"),
        nvme_gateway(&file, 2, "active-non-optimized"),
        nvme_gateway(&file, 3, "standby"),
    ];
    let mut admins: Vec<_> = gateways
        .iter()
        .map(|(_, port)| admin_queue(*port, TEST_NQN, HOST_NQN, 1))
        .collect();
    let cntlids: Vec<u16> = admins.iter().map(|(_, c)| *c).collect();
    assert!(
        cntlids[0] != cntlids[1] && cntlids[1] != cntlids[2] && cntlids[0] != cntlids[2],
        "Linux refuses a second controller with an ID it has in the subsystem: {cntlids:?}"
    );
    let mut identities = Vec::new();
    for (i, (admin, _)) in admins.iter_mut().enumerate() {
        let group = i as u32 + 1;
        let (cqe, ctrl) = admin.identify(0x01, 0).unwrap();
        assert!(cqe.ok(), "{cqe:?}");
        assert_eq!(ctrl[76] & 0b1010, 0b1010, "CMIC: multi-controller, ANA");
        assert_eq!(le32(&ctrl, 540), 1, "MNAN");
        let (_, ns) = admin.identify(0x00, 1).unwrap();
        assert_eq!(le32(&ns, 92), group, "ANAGRPID: the target port group");
        assert_eq!(ns[30] & 1, 1, "NMIC: shared");
        let (_, descriptors) = admin.identify(0x03, 1).unwrap();
        identities.push((
            ctrl[4..24].to_vec(),
            ctrl[768..1024].to_vec(),
            ns[104..128].to_vec(),
            descriptors,
        ));
        // The ANA log as Linux sizes it: header, NANAGRPID (1) descriptors, MNAN NSIDs.
        let (cqe, log) = admin.get_log_page(0x0C, 16 + 32 + 4).unwrap();
        assert!(cqe.ok(), "{cqe:?}");
        assert_eq!(u16::from_le_bytes([log[8], log[9]]), 1, "NGRPS");
        assert_eq!((le32(&log, 16), le32(&log, 20)), (group, 1));
        assert_eq!(
            log[32],
            [0x01, 0x02, 0x03][i],
            "ANA state of gateway {group}"
        );
        assert_eq!(le32(&log, 48), 1, "NSID");
    }
    assert!(
        identities.windows(2).all(|w| w[0] == w[1]),
        "serial, subsystem NQN and namespace identifiers differ between gateways"
    );

    // Data written through the optimized gateway reads back through the non-optimized one;
    // the standby (inaccessible) gateway refuses media access with the ANA status.
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut a = io_queue(gateways[0].1, TEST_NQN, HOST_NQN, cntlids[0], 1);
    assert!(a.write(1, 64, &data, 512).unwrap().ok());
    let mut b = io_queue(gateways[1].1, TEST_NQN, HOST_NQN, cntlids[1], 1);
    let (cqe, back) = b.read(1, 64, data.len(), 512).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(back, data);
    let mut c = io_queue(gateways[2].1, TEST_NQN, HOST_NQN, cntlids[2], 1);
    let (cqe, _) = c.read(1, 64, 512, 512).unwrap();
    assert_eq!(cqe.status, (3, 0x02), "Asymmetric Access Inaccessible");
}

/// `config` with `alua_state: from` replaced by `to`.
fn with_state(config: &str, from: &str, to: &str) -> String {
    let from = format!("alua_state: {from}\n");
    assert!(config.contains(&from), "{config}");
    config.replacen(&from, &format!("alua_state: {to}\n"), 1)
}

/// The configuration file `server` was started with.
fn config_of(server: &Server) -> String {
    std::fs::read_to_string(server.config_path()).expect("read config")
}

/// Draining a gateway for maintenance: SIGHUP with `alua_state: standby` in its file moves it
/// to standby while it runs. RTPG and the standby gating follow, every nexus gets the
/// ASYMMETRIC ACCESS STATE CHANGED unit attention once; a file that does not parse changes
/// nothing, and other changes are reported as needing a restart and left alone.
#[test]
fn sighup_changes_the_alua_state_of_a_running_gateway() {
    let dir = TempDir::new("gateways");
    let file = dir.path().join("shared.img");
    let mut a = gateway(&file, 1, Some("active-optimized"));
    let mut s = session(&a);
    let tur = [0u8, 0, 0, 0, 0, 0];
    good(s.command(&tur, 0).unwrap());
    assert_eq!(good(rtpg(&mut s))[8] & 0x0F, 0x00, "active/optimized");

    let optimized = config_of(&a);
    let standby = with_state(&optimized, "active-optimized", "standby");
    let said = a.reload(&standby);
    assert!(
        said.contains("ALUA state changed from active-optimized to standby"),
        "{said}"
    );
    // The unit attention first (scsi_dh_alua re-reads RTPG on it), then the new state.
    assert_eq!(sense_of(&rtpg(&mut s)), (0x06, 0x2A, 0x06));
    assert_eq!(good(rtpg(&mut s))[8] & 0x0F, 0x02, "standby");
    assert_eq!(sense_of(&s.command(&tur, 0).unwrap()), (0x02, 0x04, 0x0B));
    // A second session (another ISID), logged in after the change: standby, no unit attention.
    let mut late = BlockSession::login_as(a.port(), TEST_IQN, 0, 2).expect("login");
    assert_eq!(
        sense_of(&late.command(&tur, 0).unwrap()),
        (0x02, 0x04, 0x0B)
    );

    // A broken file is rejected; the state stays.
    let broken = with_state(&standby, "standby", "offline");
    let said = a.reload(&broken);
    assert!(
        said.contains("rejected, the running configuration stays"),
        "{said}"
    );
    assert!(said.contains("alua_state"), "{said}");
    assert_eq!(good(rtpg(&mut s))[8] & 0x0F, 0x02);

    // Back to active/optimized, with a change that takes a restart: only the state is applied.
    let back = optimized.replacen("target_port_group: 1\n", "target_port_group: 9\n", 1);
    let said = a.reload(&back);
    assert!(said.contains("`target_port_group` changed"), "{said}");
    assert!(said.contains("takes a restart; not applied"), "{said}");
    assert!(said.contains("from standby to active-optimized"), "{said}");
    assert_eq!(sense_of(&s.command(&tur, 0).unwrap()), (0x06, 0x2A, 0x06));
    let d = good(rtpg(&mut s));
    assert_eq!(
        (d[8] & 0x0F, &d[10..12]),
        (0x00, &[0u8, 1][..]),
        "AO, group 1"
    );
    let data = pattern(64 * 1024, 9);
    s.write(0, &data, 512).expect("write after the return");
    assert_eq!(
        sense_of(&late.command(&tur, 0).unwrap()),
        (0x06, 0x2A, 0x06)
    );
    assert_eq!(late.read(0, data.len(), 512).unwrap(), data);
    // The same file again: nothing changes, nothing is raised.
    let said = a.reload(&back);
    assert!(said.contains("`target_port_group` changed"), "{said}");
    assert!(!said.contains("ALUA state changed"), "{said}");
    good(s.command(&tur, 0).unwrap());
}

/// Over NVMe/TCP, the same SIGHUP reaches a connected host as an ANA change notice on its
/// held Asynchronous Event Request, and the ANA log shows the new state with a higher change
/// count; I/O follows the state.
#[test]
fn sighup_sends_the_ana_change_notice_over_nvme_tcp() {
    let dir = TempDir::new("gateways");
    let file = dir.path().join("shared.img");
    let (mut a, port) = nvme_gateway(&file, 1, "active-optimized");
    let (mut admin, cntlid) = admin_queue(port, TEST_NQN, HOST_NQN, 1);
    let (_, ctrl) = admin.identify(0x01, 0).unwrap();
    assert_eq!(
        le32(&ctrl, 92) & 1 << 11,
        1 << 11,
        "OAES: ANA change notices"
    );
    assert!(admin.enable_notices(1 << 8 | 1 << 11).unwrap().ok());
    let aer = admin.post_async_event_request().unwrap();
    let mut io = io_queue(port, TEST_NQN, HOST_NQN, cntlid, 1);
    let data = pattern(4096, 5);
    assert!(io.write(1, 0, &data, 512).unwrap().ok());

    let ana_log = |admin: &mut common::nvme_host::NvmeQueue| {
        let (cqe, log) = admin.get_log_page(0x0C, 16 + 32 + 4).unwrap();
        assert!(cqe.ok(), "{cqe:?}");
        let chgcnt = u64::from_le_bytes(log[0..8].try_into().unwrap());
        (chgcnt, le32(&log, 16), log[32])
    };
    assert_eq!(ana_log(&mut admin), (0, 1, 0x01));

    let optimized = config_of(&a);
    let said = a.reload(&with_state(&optimized, "active-optimized", "standby"));
    assert!(said.contains("to standby"), "{said}");
    let aen = admin.next_completion(Duration::from_secs(10)).expect("AEN");
    assert_eq!(
        (aen.cid, aen.result as u32),
        (aer, 0x0C_03_02),
        "notice, ANA change, log 0Ch"
    );
    assert_eq!(ana_log(&mut admin), (1, 1, 0x03), "CHGCNT 1, inaccessible");
    // The I/O queue's next command gets the ANA status at once: the SCSI unit attention of
    // the change is for iSCSI nexuses only (the NVMe host had its notice).
    let (cqe, _) = io.read(1, 0, 512, 512).unwrap();
    assert_eq!(
        (cqe.status, cqe.dnr),
        ((3, 0x02), false),
        "Asymmetric Access Inaccessible, retryable on another path"
    );

    // Back: a new AER carries the next notice; I/O is served again.
    let aer = admin.post_async_event_request().unwrap();
    a.reload(&optimized);
    let aen = admin.next_completion(Duration::from_secs(10)).expect("AEN");
    assert_eq!((aen.cid, aen.result as u32), (aer, 0x0C_03_02));
    assert_eq!(ana_log(&mut admin), (2, 1, 0x01));
    let (cqe, back) = io.read(1, 0, data.len(), 512).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(back, data);

    // A controller connected after the changes starts in the current state and count.
    let (mut fresh, _) = admin_queue(port, TEST_NQN, HOST_NQN, 1);
    assert_eq!(ana_log(&mut fresh), (2, 1, 0x01));
}
