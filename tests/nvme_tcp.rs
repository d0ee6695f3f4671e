//! NVMe/TCP against the whole binary: a `transport: nvme-tcp` portal served beside the iSCSI
//! one, driven by the small host of `common::nvme_host` (admin and I/O queues, Identify, I/O
//! in-capsule and by R2T, the discovery log, bad input, `allowed_hosts`), and the same LUN
//! read back over iSCSI.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::block_io::BlockSession;
use common::nvme_host::{
    self, admin_queue, host_id, io_queue, io_queue_with, pdu_type, read_pdu, Digests, NvmeQueue,
    Options, Sqe, DISCOVERY_NQN, HOST_NQN,
};
use common::{free_port, LunSpec, Server, TargetSpec};

const TARGET: &str = "iqn.2026-11.io.iser-target:nvme0";
/// The NQN derived from [`TARGET`] (docs/configuration.md).
const SUBSYSTEM: &str = "nqn.2026-11.io.iser-target:nvme0";

/// A server with one target (a 16 MiB RAM LUN 0 and a 4 MiB file LUN 1) on an iSCSI/TCP
/// portal and an NVMe/TCP portal; returns the server and the NVMe/TCP port.
fn serve(target: TargetSpec) -> (Server, u16) {
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    (Server::start_with_portals(&[target], &portals), nvme_port)
}

fn target() -> TargetSpec {
    TargetSpec::new(
        TARGET,
        vec![LunSpec::ram(0, "16M"), LunSpec::file(1, "lun1.img", "4M")],
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// The target closes `stream` within `timeout`, sending nothing more first.
fn assert_closed_by_target(stream: &mut TcpStream, timeout: Duration) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn connect_identify_and_round_trip_data_on_both_namespaces() {
    let (mut server, port) = serve(target());
    let (mut admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 2);
    // Identify Controller: the subsystem NQN (bytes 768..1023) and the controller ID.
    let (cqe, ctrl) = admin.identify(0x01, 0).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(&ctrl[768..768 + SUBSYSTEM.len()], SUBSYSTEM.as_bytes());
    assert_eq!(u16::from_le_bytes([ctrl[78], ctrl[79]]), cntlid);
    // Active namespaces: LUN id N is namespace N+1.
    let (cqe, list) = admin.identify(0x02, 0).unwrap();
    assert!(cqe.ok());
    assert_eq!(&list[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    // Identify Namespace: NSZE in 512-byte blocks.
    assert_eq!(admin.namespace_size(1).unwrap(), 16 << 11);
    assert_eq!(admin.namespace_size(2).unwrap(), 4 << 11);

    let mut q1 = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    let mut q2 = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 2);
    for (nsid, queue) in [(1u32, &mut q1), (2, &mut q2)] {
        // In the capsule (4 KiB) and by R2T (256 KiB, more than MAXH2CDATA).
        let small = pattern(4096, nsid as u8);
        let large = pattern(256 * 1024, 7 + nsid as u8);
        let cqe = queue.write(nsid, 8, &small, 512).unwrap();
        assert!(cqe.ok(), "write ns {nsid}: {cqe:?}");
        let cqe = queue.write(nsid, 1024, &large, 512).unwrap();
        assert!(cqe.ok(), "R2T write ns {nsid}: {cqe:?}");
        let (cqe, back) = queue.read(nsid, 8, 4096, 512).unwrap();
        assert!(cqe.ok());
        assert_eq!(back, small, "namespace {nsid}");
        let (cqe, back) = queue.read(nsid, 1024, large.len(), 512).unwrap();
        assert!(cqe.ok());
        assert!(
            back == large,
            "namespace {nsid}: the R2T write did not read back"
        );
        // Flush, then a read beyond the end: LBA Out of Range.
        assert!(queue.command(Sqe::new(0x00, nsid), &[], 0).unwrap().0.ok());
        let blocks = if nsid == 1 { 16 << 11 } else { 4 << 11 };
        let (cqe, _) = queue.read(nsid, blocks, 512, 512).unwrap();
        assert_eq!((cqe.status, cqe.dnr), ((0, 0x80), true));
    }
    // The same LUN over iSCSI sees what NVMe wrote.
    let mut iscsi = BlockSession::login(server.port(), TARGET, 1).unwrap();
    assert_eq!(iscsi.read(8, 4096, 512).unwrap(), pattern(4096, 2));
    server.assert_alive();
}

/// Two keys, little-endian: the data of Reservation Register and Acquire.
fn reservation_keys(current: u64, new: u64) -> Vec<u8> {
    let mut data = current.to_le_bytes().to_vec();
    data.extend_from_slice(&new.to_le_bytes());
    data
}

/// NVMe reservations, as Linux's host and nvme-cli send them: two hosts register and one
/// takes Write Exclusive; the other host's writes and an iSCSI initiator's writes to the same
/// LUN conflict while reads pass; the Report lists both hosts by Host Identifier; releasing
/// lets the writes through.
#[test]
fn reservations_fence_other_hosts_and_iscsi_initiators() {
    const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:0c0d4d6c-2f53-4c33-9a7a-aa0000000002";
    let (mut server, port) = serve(target());
    let (mut admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
    let (_, ctrl) = admin.identify(0x01, 0).unwrap();
    assert_ne!(ctrl[520] & 1 << 5, 0, "ONCS: reservations");
    let (_, ns) = admin.identify(0x00, 1).unwrap();
    assert_eq!(
        ns[31], 0xFE,
        "RESCAP: every type and IEKEY; no state_dir, no PTPL"
    );
    let get_host_id = Sqe::new(0x0A, 0).cdw(10, 0x81).cdw(11, 1);
    let (cqe, id) = admin.command(get_host_id, &[], 16).unwrap();
    assert!(cqe.ok(), "Get Features, Host Identifier: {cqe:?}");
    assert_eq!(id, host_id(HOST_NQN));
    let mut mine = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    let (mut other_admin, other_cntlid) = admin_queue(port, SUBSYSTEM, OTHER_HOST, 1);
    let mut other = io_queue(port, SUBSYSTEM, OTHER_HOST, other_cntlid, 1);

    // Register (CPTPL 11b, as Linux's host sends it), then acquire Write Exclusive.
    let register = |queue: &mut NvmeQueue, key: u64| {
        let sqe = Sqe::new(0x0D, 1).cdw(10, 0b11 << 30);
        queue.command(sqe, &reservation_keys(0, key), 0).unwrap().0
    };
    assert!(register(&mut mine, 0xA).ok());
    assert!(register(&mut other, 0xB).ok());
    let acquire = Sqe::new(0x11, 1).cdw(10, 1 << 8);
    let (cqe, _) = mine.command(acquire, &reservation_keys(0xA, 0), 0).unwrap();
    assert!(cqe.ok(), "Acquire: {cqe:?}");

    let data = pattern(4096, 3);
    let conflict = other.write(1, 0, &data, 512).unwrap();
    assert_eq!((conflict.status, conflict.dnr), ((0, 0x83), true));
    assert!(other.read(1, 0, 4096, 512).unwrap().0.ok(), "reads pass");
    assert!(
        mine.write(1, 0, &data, 512).unwrap().ok(),
        "the holder writes"
    );
    let mut iscsi = BlockSession::login(server.port(), TARGET, 0).unwrap();
    let mut write16 = [0u8; 16];
    write16[0] = 0x8A;
    write16[13] = 8;
    let reply = iscsi.command_out(&write16, &data).unwrap();
    assert_eq!(reply.status, 0x18, "RESERVATION CONFLICT over iSCSI");
    assert_eq!(iscsi.read(0, 4096, 512).unwrap(), data);

    // Report (extended data structure): both hosts, the holder marked.
    let report = Sqe::new(0x0E, 1).cdw(10, 4096 / 4 - 1).cdw(11, 1);
    let (cqe, status) = other.command(report, &[], 4096).unwrap();
    assert!(cqe.ok(), "Report: {cqe:?}");
    assert_eq!(
        (status[4], status[5]),
        (1, 2),
        "type Write Exclusive, 2 registrants"
    );
    let entry = |i: usize| &status[64 + 64 * i..128 + 64 * i];
    assert_eq!(
        (entry(0)[2], &entry(0)[8..16]),
        (1, &0xAu64.to_le_bytes()[..])
    );
    assert_eq!(&entry(0)[16..32], &host_id(HOST_NQN));
    assert_eq!(
        (entry(1)[2], &entry(1)[16..32]),
        (0, &host_id(OTHER_HOST)[..])
    );
    // Without the extended structure: Host Identifier Inconsistent Format.
    let (cqe, _) = other
        .command(Sqe::new(0x0E, 1).cdw(10, 15), &[], 64)
        .unwrap();
    assert_eq!((cqe.status, cqe.dnr), ((0, 0x18), true));

    // The holder preempts the other host's registration: that host's controller announces
    // Reservation Log Page Available on its held AER (seen at its next admin command, here a
    // Keep Alive), and the log page says Registration Preempted on namespace 1.
    let aer = other_admin.post_async_event_request().unwrap();
    let preempt = Sqe::new(0x11, 1).cdw(10, 1 | 1 << 8);
    let (cqe, _) = mine
        .command(preempt, &reservation_keys(0xA, 0xB), 0)
        .unwrap();
    assert!(cqe.ok(), "Preempt: {cqe:?}");
    let keep_alive = other_admin.post(Sqe::new(0x18, 0)).unwrap();
    let mut completions =
        [0; 2].map(|_| other_admin.next_completion(Duration::from_secs(5)).unwrap());
    completions.sort_by_key(|c| c.cid != aer);
    assert_eq!(
        (completions[0].cid, completions[0].result),
        (aer, 0x80_00_06)
    );
    assert_eq!(completions[1].cid, keep_alive);
    let log = || Sqe::new(0x02, 0xFFFF_FFFF).cdw(10, 0x80 | 15 << 16);
    let (cqe, page) = other_admin.command(log(), &[], 64).unwrap();
    assert!(cqe.ok(), "Get Log Page 80h: {cqe:?}");
    assert_eq!((page[0], page[8], page[9], page[12]), (1, 1, 0, 1));
    let (_, empty) = other_admin.command(log(), &[], 64).unwrap();
    assert_eq!(empty, vec![0; 64], "read once");
    // The mask (feature 82h) per namespace, and persistence (83h) off without a state_dir.
    let get = |feature: u32| Sqe::new(0x0A, 1).cdw(10, feature);
    let set_mask = Sqe::new(0x09, 0xFFFF_FFFF).cdw(10, 0x82).cdw(11, 1 << 1);
    assert!(other_admin.command(set_mask, &[], 0).unwrap().0.ok());
    assert_eq!(
        other_admin.command(get(0x82), &[], 0).unwrap().0.result,
        1 << 1
    );
    assert_eq!(other_admin.command(get(0x83), &[], 0).unwrap().0.result, 0);

    let release = Sqe::new(0x15, 1).cdw(10, 1 << 8);
    let (cqe, _) = mine.command(release, &0xAu64.to_le_bytes(), 0).unwrap();
    assert!(cqe.ok(), "Release: {cqe:?}");
    assert!(other.write(1, 0, &data, 512).unwrap().ok());
    server.assert_alive();
}

#[test]
fn discovery_log_lists_the_subsystem_at_the_portal() {
    let (_server, port) = serve(target());
    let (mut discovery, _) = admin_queue(port, DISCOVERY_NQN, HOST_NQN, 0);
    let (cqe, log) = discovery.get_log_page(0x70, 3072).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 2);
    // First the discovery subsystem itself at the port reached (subtype 3, as nvmet).
    let current = &log[1024..2048];
    assert_eq!(
        &current[0..3],
        &[3, 1, 3],
        "TCP, IPv4, current discovery subsystem"
    );
    let port_text = port.to_string();
    assert_eq!(&current[32..32 + port_text.len()], port_text.as_bytes());
    assert_eq!(
        &current[256..256 + DISCOVERY_NQN.len()],
        DISCOVERY_NQN.as_bytes()
    );
    assert_eq!(&current[512..521], b"127.0.0.1");
    let entry = &log[2048..3072];
    assert_eq!(&entry[0..3], &[3, 1, 2], "TCP, IPv4, NVM subsystem");
    assert_eq!(&entry[32..32 + port_text.len()], port_text.as_bytes());
    // SUBNQN at 256, TRADDR at 512 (struct nvmf_disc_rsp_page_entry).
    assert_eq!(&entry[256..256 + SUBSYSTEM.len()], SUBSYSTEM.as_bytes());
    assert_eq!(&entry[512..521], b"127.0.0.1");
}

/// A `transport: nvme-tcp-discovery` portal (port 8009 by default; a free one here) serves
/// the discovery controller, whose log lists the subsystem on the NVMe/TCP I/O portal, and
/// refuses Connect to the subsystem itself.
#[test]
fn a_discovery_portal_lists_the_io_portal_and_serves_nothing_else() {
    let (io_port, discovery_port) = (free_port(), free_port());
    let portals = format!(
        "  - {{ address: 127.0.0.1, port: {io_port}, transport: nvme-tcp }}\n  \
         - {{ address: 127.0.0.1, port: {discovery_port}, transport: nvme-tcp-discovery }}\n"
    );
    let mut server = Server::start_with_portals(&[target()], &portals);
    let (mut discovery, _) = admin_queue(discovery_port, DISCOVERY_NQN, HOST_NQN, 0);
    let (cqe, log) = discovery.get_log_page(0x70, 3072).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 2);
    // The discovery portal itself (port ID 2, after the I/O portal), then the I/O portal.
    let current = &log[1024..2048];
    assert_eq!(
        (current[2], current[4]),
        (3, 2),
        "current discovery subsystem, port 2"
    );
    let port_text = discovery_port.to_string();
    assert_eq!(&current[32..32 + port_text.len()], port_text.as_bytes());
    let entry = &log[2048..3072];
    let port_text = io_port.to_string();
    assert_eq!(&entry[32..32 + port_text.len()], port_text.as_bytes());
    assert_eq!(&entry[256..256 + SUBSYSTEM.len()], SUBSYSTEM.as_bytes());
    assert_eq!(&entry[512..521], b"127.0.0.1");
    let options = Options::admin(SUBSYSTEM, HOST_NQN);
    let (_, cqe) = NvmeQueue::connect(discovery_port, &options).unwrap();
    assert_eq!(
        (cqe.status, cqe.result),
        ((1, 0x82), 1 << 16 | 256),
        "Connect Invalid Parameters, at the SUBNQN"
    );
    // The subsystem is where the log says.
    let (_admin, cntlid) = admin_queue(io_port, SUBSYSTEM, HOST_NQN, 1);
    let mut q = io_queue(io_port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    assert!(q.write(1, 0, &[2; 4096], 512).unwrap().ok());
    server.assert_alive();
}

#[test]
fn bad_input_gets_a_c2h_term_req_and_a_clean_close() {
    let (mut server, port) = serve(target());
    // ICReq with PFV 1.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(nvme_host::RESPONSE_TIMEOUT))
        .unwrap();
    raw.write_all(&nvme_host::ic_req(1)).unwrap();
    let term = read_pdu(&mut raw).unwrap();
    assert_eq!(term.kind(), pdu_type::C2H_TERM_REQ);
    assert_eq!(
        u16::from_le_bytes([term.header[8], term.header[9]]),
        0x06,
        "FES"
    );
    let mut rest = Vec::new();
    assert_eq!(
        raw.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the C2HTermReq"
    );

    // A live I/O queue that sends an unknown PDU type, and one that sends H2CData for a
    // command it never sent.
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 2);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    let mut junk = vec![0u8; 24];
    junk[0] = 0x7E;
    junk[2] = 24;
    junk[4..8].copy_from_slice(&24u32.to_le_bytes());
    q.stream().write_all(&junk).unwrap();
    let term = read_pdu(q.stream()).unwrap();
    assert_eq!(term.kind(), pdu_type::C2H_TERM_REQ);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 2);
    let mut h2c = vec![0u8; 28];
    h2c[0] = pdu_type::H2C_DATA;
    h2c[1] = 0x04;
    h2c[2] = 24;
    h2c[3] = 24;
    h2c[4..8].copy_from_slice(&28u32.to_le_bytes());
    h2c[8..10].copy_from_slice(&77u16.to_le_bytes());
    h2c[16..20].copy_from_slice(&4u32.to_le_bytes());
    q.stream().write_all(&h2c).unwrap();
    let term = read_pdu(q.stream()).unwrap();
    assert_eq!(term.kind(), pdu_type::C2H_TERM_REQ);

    // I/O before Connect: Command Sequence Error, the queue stays.
    let mut unconnected = NvmeQueue::open(port).unwrap();
    let (cqe, _) = unconnected
        .command(Sqe::new(0x02, 1).lba(0, 1), &[], 512)
        .unwrap();
    assert_eq!(cqe.status, (0, 0x0C));

    // Everything else still works.
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    assert!(q.write(1, 0, &[9; 512], 512).unwrap().ok());
    server.assert_alive();
}

#[test]
fn allowed_hosts_refuses_other_hosts() {
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    let (mut server, port) = serve(target().with_yaml(&format!("allowed_hosts: [{allowed}]")));
    let options = Options::admin(SUBSYSTEM, HOST_NQN);
    let (_, cqe) = NvmeQueue::connect(port, &options).unwrap();
    assert_eq!(
        (cqe.status, cqe.dnr),
        ((1, 0x84), true),
        "Connect Invalid Host"
    );
    // The discovery log leaves out what the host may not connect to.
    let (mut discovery, _) = admin_queue(port, DISCOVERY_NQN, HOST_NQN, 0);
    let (cqe, log) = discovery.get_log_page(0x70, 1024).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(
        u64::from_le_bytes(log[8..16].try_into().unwrap()),
        1,
        "the current discovery subsystem alone"
    );
    // The allowed host connects.
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, allowed, 1);
    let mut q = io_queue(port, SUBSYSTEM, allowed, cntlid, 1);
    assert!(q.write(1, 0, &[1; 4096], 512).unwrap().ok());
    server.assert_alive();
}

/// A host whose `allowed_hosts` entry has a DH-HMAC-CHAP secret: Connect sets ATR, nothing but
/// the exchange runs until it has authenticated, on the admin queue and on an I/O queue; the
/// wrong secret gets a Failure1 and the connection closes; a host listed without a secret
/// connects as before. (The kernel's host against ours: scripts/guest/nvme-auth.sh.)
#[test]
fn a_host_with_a_dhchap_secret_authenticates_on_every_queue() {
    use iser_target::nvme::auth::testing;
    let open_host = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    let yaml = format!(
        "allowed_hosts:\n      - {open_host}\n      - {{ nqn: {HOST_NQN}, dhchap_secret: \"{}\" }}",
        testing::secret_text(0x11)
    );
    let (mut server, port) = serve(target().with_yaml(&yaml));
    let atr = 1u64 << 17;

    let options = Options::admin(SUBSYSTEM, HOST_NQN);
    let (mut admin, cqe) = NvmeQueue::connect(port, &options).unwrap();
    assert!(cqe.ok() && cqe.result & atr != 0, "{cqe:?}");
    let cntlid = cqe.result as u16;
    let (cqe, _) = admin
        .command(Sqe::fabrics(0x04).cdw(11, 0x1C), &[], 0)
        .unwrap();
    assert_eq!(
        (cqe.status, cqe.dnr),
        ((1, 0x91), true),
        "Authentication Required"
    );
    let last = admin
        .authenticate(&testing::secret(0x11), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert_eq!(testing::read_success1(&last), (32, None));
    admin.enable().unwrap();
    assert!(admin.set_io_queues(1).unwrap().ok());

    let options = Options {
        qid: 1,
        cntlid,
        sqsize: 31,
        ..Options::admin(SUBSYSTEM, HOST_NQN)
    };
    let (mut io, cqe) = NvmeQueue::connect(port, &options).unwrap();
    assert!(cqe.ok() && cqe.result & atr != 0, "{cqe:?}");
    assert_eq!(io.write(1, 0, &[7; 512], 512).unwrap().status, (1, 0x91));
    io.authenticate(&testing::secret(0x11), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert!(io.write(1, 0, &[7; 512], 512).unwrap().ok());

    // The wrong secret: a Failure1 (reason 01h, explanation "failed"), then the connection ends.
    let (mut wrong, _) = NvmeQueue::connect(port, &Options::admin(SUBSYSTEM, HOST_NQN)).unwrap();
    let last = wrong
        .authenticate(&testing::secret(0x12), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert_eq!(testing::read_failure1(&last), (0x01, 0x01));
    assert!(
        read_pdu(wrong.stream()).is_err(),
        "the controller closed the connection"
    );

    // A host listed without a secret connects as before.
    let (_plain, cqe) = NvmeQueue::connect(port, &Options::admin(SUBSYSTEM, open_host)).unwrap();
    assert!(cqe.ok() && cqe.result & atr == 0, "{cqe:?}");
    server.assert_alive();
}

/// With a DH group the exchange's exponentiations run on the engine's authentication pool, not on the
/// queue's I/O thread (`nvme::auth::dh::DhWork`): the Challenge and the Reply wait for them,
/// and the host authenticates over the wire with the shared secret; the wrong secret still
/// fails.
#[test]
fn a_host_authenticates_in_an_ffdhe_group() {
    use iser_target::nvme::auth::testing;
    let yaml = format!(
        "allowed_hosts:\n      - {{ nqn: {HOST_NQN}, dhchap_secret: \"{}\", dhchap_dhgroup: ffdhe8192 }}",
        testing::secret_text(0x11)
    );
    let (mut server, port) = serve(target().with_yaml(&yaml));
    let options = Options::admin(SUBSYSTEM, HOST_NQN);
    let (mut admin, _) = NvmeQueue::connect(port, &options).unwrap();
    let last = admin
        .authenticate(&testing::secret(0x11), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert_eq!(testing::read_success1(&last), (32, None));
    assert!(
        server
            .log()
            .contains("queue 0 of controller 1 (DH-HMAC-CHAP SHA-256, ffdhe8192)"),
        "{}",
        server.log()
    );
    admin.enable().unwrap();
    let (mut wrong, _) = NvmeQueue::connect(port, &options).unwrap();
    let last = wrong
        .authenticate(&testing::secret(0x12), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert_eq!(testing::read_failure1(&last), (0x01, 0x01));
    server.assert_alive();
}

/// A host's DH-HMAC-CHAP secret rotated by SIGHUP: the host's live queues keep running (as
/// with nvmet, a host proves itself again when a queue connects again), and every queue that
/// connects from then on must prove the new secret, not the old.
#[test]
fn a_dhchap_secret_rotated_by_sighup_is_what_the_next_queue_proves() {
    use iser_target::nvme::auth::testing;
    let entry = |key: u8| {
        format!(
            "allowed_hosts: [{{ nqn: {HOST_NQN}, dhchap_secret: \"{}\" }}]",
            testing::secret_text(key)
        )
    };
    let (mut server, port) = serve(target().with_yaml(&entry(0x11)));
    let (mut admin, cqe) = NvmeQueue::connect(port, &Options::admin(SUBSYSTEM, HOST_NQN)).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    let cntlid = cqe.result as u16;
    admin
        .authenticate(&testing::secret(0x11), HOST_NQN, SUBSYSTEM)
        .unwrap();
    admin.enable().unwrap();
    assert!(admin.set_io_queues(2).unwrap().ok());

    let config = std::fs::read_to_string(server.config_path()).unwrap();
    let said = server.reload(&config.replace(&entry(0x11), &entry(0x12)));
    assert!(said.contains("access control"), "{said}");
    assert!(
        admin.namespace_size(1).is_ok(),
        "the live admin queue keeps running"
    );
    let io_queue = |qid: u16| {
        let options = Options {
            qid,
            cntlid,
            sqsize: 31,
            ..Options::admin(SUBSYSTEM, HOST_NQN)
        };
        let (queue, cqe) = NvmeQueue::connect(port, &options).unwrap();
        assert!(cqe.ok(), "{cqe:?}");
        queue
    };
    let mut old = io_queue(1);
    let last = old
        .authenticate(&testing::secret(0x11), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert_eq!(
        testing::read_failure1(&last),
        (0x01, 0x01),
        "the old secret"
    );
    let mut new = io_queue(2);
    let last = new
        .authenticate(&testing::secret(0x12), HOST_NQN, SUBSYSTEM)
        .unwrap();
    assert_eq!(testing::read_success1(&last), (32, None), "the new secret");
    assert!(new.write(1, 0, &[3; 512], 512).unwrap().ok());
    server.assert_alive();
}

/// `limits.nvme_queue_size` and `nvme_io_queues`: CAP.MQES and MAXCMD say the queue size, a
/// Connect within it is accepted and one beyond it refused, Number of Queues grants no more
/// than the limit and a Connect for a higher queue ID is refused.
#[test]
fn queue_limits_follow_the_configuration() {
    let nvme_port = free_port();
    let portals = format!("  - {{ address: 127.0.0.1, port: {nvme_port}, transport: nvme-tcp }}\n");
    let limits = "nvme_queue_size: 512, nvme_io_queues: 2, nvme_in_capsule_data: 16384";
    let server = Server::start_full(&[target()], limits, "", &portals);
    let (mut admin, cqe) =
        NvmeQueue::connect(nvme_port, &Options::admin(SUBSYSTEM, HOST_NQN)).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    let cntlid = cqe.result as u16;
    assert_eq!(admin.capabilities().unwrap() & 0xFFFF, 511, "CAP.MQES");
    admin.enable().unwrap();
    let (cqe, ctrl) = admin.identify(0x01, 0).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert_eq!(u16::from_le_bytes([ctrl[514], ctrl[515]]), 512, "MAXCMD");
    assert_eq!(
        u32::from_le_bytes(ctrl[1792..1796].try_into().unwrap()),
        (64 + 16384) / 16,
        "IOCCSZ"
    );
    let granted = admin.set_io_queues(8).unwrap();
    assert!(granted.ok(), "{granted:?}");
    assert_eq!(
        granted.result & 0xFFFF,
        1,
        "two I/O submission queues (0's based)"
    );
    let io = |qid: u16, sqsize: u16| {
        let options = Options {
            subsystem: SUBSYSTEM,
            host_nqn: HOST_NQN,
            qid,
            cntlid,
            sqsize,
            kato_ms: 0,
        };
        NvmeQueue::connect(nvme_port, &options).unwrap().1
    };
    assert!(io(1, 511).ok(), "512 entries");
    assert_eq!(
        io(2, 512).status,
        (1, 0x82),
        "513 entries: Connect Invalid Parameters"
    );
    assert_eq!(io(3, 31).status, (1, 0x82), "queue 3 of 2");
    drop(admin);
    server.stop();
}

#[test]
fn closing_the_admin_queue_ends_the_controller_and_its_io_queues() {
    let (mut server, port) = serve(target());
    let (admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    drop(admin);
    // The I/O queue is closed by the target.
    assert_closed_by_target(q.stream(), Duration::from_secs(5));
    // The controller is gone: an I/O queue cannot join it.
    let options = Options {
        subsystem: SUBSYSTEM,
        host_nqn: HOST_NQN,
        qid: 1,
        cntlid,
        sqsize: 31,
        kato_ms: 0,
    };
    let (_, cqe) = NvmeQueue::connect(port, &options).unwrap();
    assert_eq!(cqe.status, (1, 0x82), "Connect Invalid Parameters");
    server.assert_alive();
}

#[test]
fn a_silent_host_loses_its_controller_when_keep_alive_expires() {
    let (mut server, port) = serve(target());
    let options = Options {
        kato_ms: 1000,
        ..Options::admin(SUBSYSTEM, HOST_NQN)
    };
    let (mut admin, cqe) = NvmeQueue::connect(port, &options).unwrap();
    assert!(cqe.ok());
    let cntlid = cqe.result as u16;
    admin.enable().unwrap();
    assert!(admin.set_io_queues(1).unwrap().ok());
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    // No Keep Alive: the target closes the admin queue after KATO, and the I/O queue with it.
    let started = std::time::Instant::now();
    for stream in [admin.stream(), q.stream()] {
        assert_closed_by_target(stream, Duration::from_secs(10));
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The target still serves.
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    assert!(q.write(1, 0, &[3; 512], 512).unwrap().ok());
    server.assert_alive();
}

#[test]
fn shutdown_closes_live_queues_and_exits_cleanly() {
    let (mut server, port) = serve(target());
    let (mut admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    assert!(q.write(2, 0, &[5; 8192], 512).unwrap().ok());
    let status = server.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status}");
    for stream in [admin.stream(), q.stream()] {
        assert_closed_by_target(stream, nvme_host::RESPONSE_TIMEOUT);
    }
}

#[test]
fn two_io_queues_with_header_and_data_digests() {
    let (mut server, port) = serve(target());
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 2);
    let both = Digests {
        header: true,
        data: true,
    };
    let header_only = Digests {
        header: true,
        data: false,
    };
    for (qid, digests) in [(1, both), (2, header_only)] {
        let mut q = io_queue_with(port, SUBSYSTEM, HOST_NQN, cntlid, qid, digests);
        let small = pattern(2048, qid as u8);
        let large = pattern(64 * 1024, 40 + qid as u8);
        assert!(q.write(1, 64, &small, 512).unwrap().ok(), "{digests:?}");
        assert!(q.write(2, 256, &large, 512).unwrap().ok(), "{digests:?}");
        assert_eq!(q.read(1, 64, small.len(), 512).unwrap().1, small);
        assert!(q.read(2, 256, large.len(), 512).unwrap().1 == large);
    }
    server.assert_alive();
}

/// A RAM namespace's READ across two of its 1 MiB chunks reads back over NVMe/TCP with a data
/// digest (the queue copies the lent chunks to digest them) and without (the resident sends
/// them from the chunks by address), and over iSCSI/TCP.
#[test]
fn ram_reads_across_two_chunks_read_back_with_and_without_a_data_digest() {
    let (mut server, port) = serve(target());
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 2);
    let data = pattern(256 * 1024, 77);
    let lba = 2048 - 128; // 64 KiB before the second chunk
    for (qid, data_digest) in [(1, false), (2, true)] {
        let digests = Digests {
            header: data_digest,
            data: data_digest,
        };
        let mut q = io_queue_with(port, SUBSYSTEM, HOST_NQN, cntlid, qid, digests);
        if qid == 1 {
            assert!(q.write(1, lba, &data, 512).unwrap().ok());
        }
        let (cqe, back) = q.read(1, lba, data.len(), 512).unwrap();
        assert!(cqe.ok(), "{digests:?}");
        assert!(back == data, "{digests:?}");
    }
    let mut iscsi = BlockSession::login(server.port(), TARGET, 0).unwrap();
    assert!(iscsi.read(lba, data.len(), 512).unwrap() == data);
    server.assert_alive();
}

/// A file LUN in tmpfs: its large READs leave from the file's pages (sendfile) over NVMe/TCP
/// without a data digest and over iSCSI/TCP, and through a buffer with a data digest or when
/// small. Every way reads back what was written, over a real socket.
#[test]
fn tmpfs_file_reads_sent_from_its_pages_read_back() {
    /// Removes the file however the test ends.
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let path = Remove(format!(
        "/dev/shm/iser-nvme-pages-{}.img",
        std::process::id()
    ));
    let (mut server, port) = serve(TargetSpec::new(
        TARGET,
        vec![LunSpec::file(0, &path.0, "8M")],
    ));
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 2);
    let data = pattern(512 * 1024, 77);
    let plain = Digests {
        header: false,
        data: false,
    };
    let both = Digests {
        header: true,
        data: true,
    };
    let mut q1 = io_queue_with(port, SUBSYSTEM, HOST_NQN, cntlid, 1, plain);
    assert!(q1.write(1, 2048, &data, 512).unwrap().ok());
    for (len, what) in [
        (data.len(), "512 KiB"),
        (128 * 1024, "128 KiB"),
        (4096, "4 KiB"),
    ] {
        let (cqe, back) = q1.read(1, 2048, len, 512).unwrap();
        assert!(cqe.ok(), "{what}: {cqe:?}");
        assert!(back == data[..len], "{what} without digests");
    }
    let mut q2 = io_queue_with(port, SUBSYSTEM, HOST_NQN, cntlid, 2, both);
    let (cqe, back) = q2.read(1, 2048, 128 * 1024, 512).unwrap();
    assert!(cqe.ok(), "{cqe:?}");
    assert!(back == data[..128 * 1024], "128 KiB with digests");
    let mut iscsi = BlockSession::login(server.port(), TARGET, 0).unwrap();
    assert!(
        iscsi.read(2048, data.len(), 512).unwrap() == data,
        "over iSCSI/TCP"
    );
    server.assert_alive();
}

/// Not a test: prints the mean round trip of 4 KiB READ and WRITE at queue depth 1 over
/// NVMe/TCP and over iSCSI/TCP to the same RAM LUN on 127.0.0.1, each driven by a minimal
/// synchronous host of `tests/common` (so the figures compare the target's two paths, not
/// kernel initiators). Run with
/// `cargo test --release --test nvme_tcp -- --ignored --nocapture qd1_round_trip_figures`.
#[test]
#[ignore]
fn qd1_round_trip_figures() {
    const N: usize = 20_000;
    let (_server, port) = serve(target());
    let (_admin, cntlid) = admin_queue(port, SUBSYSTEM, HOST_NQN, 1);
    let mut q = io_queue(port, SUBSYSTEM, HOST_NQN, cntlid, 1);
    let mut iscsi = BlockSession::login(_server.port(), TARGET, 0).unwrap();
    let data = pattern(4096, 1);
    let mean = |f: &mut dyn FnMut(u64)| {
        let start = std::time::Instant::now();
        for i in 0..N as u64 {
            f((i * 8) % (16 << 11));
        }
        start.elapsed().as_secs_f64() * 1e6 / N as f64
    };
    let nvme_write = mean(&mut |lba| assert!(q.write(1, lba, &data, 512).unwrap().ok()));
    let nvme_read = mean(&mut |lba| assert!(q.read(1, lba, 4096, 512).unwrap().0.ok()));
    let iscsi_write = mean(&mut |lba| iscsi.write(lba, &data, 512).unwrap());
    let iscsi_read = mean(&mut |lba| {
        iscsi.read(lba, 4096, 512).unwrap();
    });
    println!("4 KiB QD1 round trip, mean of {N}, RAM LUN, 127.0.0.1:");
    println!("  NVMe/TCP   write {nvme_write:6.1} us   read {nvme_read:6.1} us");
    println!("  iSCSI/TCP  write {iscsi_write:6.1} us   read {iscsi_read:6.1} us");
}
