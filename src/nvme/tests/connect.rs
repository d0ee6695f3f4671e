//! Connection set-up: ICReq, Connect on admin and I/O queues, properties, enable and
//! shutdown, keep alive, the discovery controller.

use std::time::Duration;

use super::*;

#[test]
fn linux_host_connect_sequence() {
    let mut admin = Pair::fresh();
    // ICReq with header digests only; ICResp echoes them with CPDA 0 and our MAXH2CDATA.
    admin.send(&ic_req(0, 0, true, false));
    assert_eq!(
        admin.take(),
        vec![Got::IcResp {
            cpda: 0,
            digests: 1,
            maxh2cdata: MAX_H2C
        }]
    );
    admin.host.header_digest = true;
    let cqe = admin.resp(
        &connect_sqe(1, 0, 31, 5000),
        &connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    assert_eq!((cqe.status, cqe.cid, cqe.sqid, cqe.sqhd), ((0, 0), 1, 0, 1));
    let cntlid = cqe.result as u16;
    assert_ne!(cntlid, 0);

    // CAP: MQES 15, CQR, TO, CSS NVM.
    let cap = admin.get_property(0x00, true).result;
    assert_eq!(cap & 0xFFFF, 15);
    assert_eq!(cap >> 16 & 1, 1);
    assert_eq!(cap >> 37 & 1, 1);
    assert_eq!(admin.get_property(0x08, false).result, 0x0001_0400);
    assert_eq!(admin.get_property(0x1C, false).result, 0, "not ready yet");
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));
    assert_eq!(admin.get_property(0x14, false).result, LINUX_CC);
    assert_eq!(admin.get_property(0x1C, false).result & 1, 1, "CSTS.RDY");

    // Identify Controller: our CNTLID, NN 2, the subsystem NQN, IOCCSZ, keep alive support.
    let (id, cqe) = admin.data_in(&Sqe::new(0x06, 10, 0).cdw(10, 1).sgl(4096, false));
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(le16(&id, 78), cntlid);
    assert_eq!(le32(&id, 516), 2);
    assert_eq!(&id[768..768 + SUBSYSTEM.len()], SUBSYSTEM.as_bytes());
    assert_eq!(le32(&id, 1792), (64 + IN_CAPSULE) / 16);
    assert_ne!(le16(&id, 320), 0);
    assert_eq!(&id[4..12], b"serial-1");

    // Active namespace list, Identify Namespace, descriptors.
    let (list, _) = admin.data_in(&Sqe::new(0x06, 11, 0).cdw(10, 2).sgl(4096, false));
    assert_eq!(&list[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let (ns, _) = admin.data_in(&Sqe::new(0x06, 12, 1).cdw(10, 0).sgl(4096, false));
    assert_eq!(&ns[0..8], &NS1_BLOCKS.to_le_bytes());
    assert_eq!(ns[130], 9, "LBADS 512");
    let (descs, _) = admin.data_in(&Sqe::new(0x06, 13, 1).cdw(10, 3).sgl(4096, false));
    assert_eq!(&descs[12..16], &[2, 16, 0, 0]);
    assert_eq!(&descs[16..32], &[1; 16], "NGUID");

    // Number of queues: asked 8, granted the 4 configured.
    let cqe = admin.resp(&Sqe::new(0x09, 14, 0).cdw(10, 7).cdw(11, 7 | 7 << 16), &[]);
    assert_eq!(cqe.result, 3 | 3 << 16);

    // Two I/O queues join; a third beyond what was granted does not.
    for qid in 1..=2 {
        let mut io = admin.sibling();
        let cqe = io.connect_io(cntlid, qid, 15);
        assert_eq!(
            (cqe.status, cqe.result as u16, cqe.sqid),
            ((0, 0), cntlid, qid)
        );
        assert!(io.queue.is_live());
    }
    let mut io = admin.sibling();
    let cqe = io.connect_io(cntlid, 5, 15);
    assert_eq!(cqe.status, (1, 0x82));
    assert_eq!(cqe.result, 42, "IPO: QID in the SQE");
    assert!(io.closed.is_none() && !io.queue.is_live());
}

#[test]
fn icreq_alignment_and_digests_apply_to_controller_pdus() {
    let (mut admin, _) = admin_and_io();
    let mut io = admin.sibling();
    // HPDA 3: data at a multiple of 16 bytes; both digests.
    io.send(&ic_req(0, 3, true, true));
    assert!(matches!(
        io.take().as_slice(),
        [Got::IcResp { digests: 3, .. }]
    ));
    io.host = HostFramer {
        header_digest: true,
        data_digest: true,
    };
    let cid = io.cid();
    let cntlid = admin.queue.cntlid().unwrap();
    let cqe = io.resp(
        &connect_sqe(cid, 2, 15, 0),
        &connect_data(cntlid, SUBSYSTEM, HOST),
    );
    assert_eq!(cqe.status, (0, 0));
    let data = fill(&io.backend(1), 4096);
    let got = io.command(&Sqe::new(0x02, 7, 1).cdw(12, 7).sgl(4096, false), &[]);
    match got.as_slice() {
        [Got::C2HData { pdo, data: d, .. }, Got::Resp(cqe)] => {
            assert_eq!(*pdo, 32, "24 + 4 rounded up to 16");
            assert_eq!(d, &data);
            assert_eq!(cqe.status, (0, 0));
        }
        other => panic!("{other:?}"),
    }
    admin.take();
}

#[test]
fn connect_refusals() {
    let config = Arc::new(config());
    let env = env(&config);
    let now = Instant::now();
    let refuse = |sqe: Sqe, data: Vec<u8>| {
        let mut p = Pair::new(config.clone(), env.clone(), now);
        p.initialize(false, false);
        let cqe = p.resp(&sqe, &data);
        assert!(p.closed.is_none(), "the host may try again");
        // Only a host refused by `allowed_hosts` is reported, for the log and the count.
        let refused = if cqe.status == (1, 0x84) {
            vec![HOST.to_string()]
        } else {
            Vec::new()
        };
        assert_eq!(p.refused_hosts, refused);
        cqe
    };
    // Unknown subsystem: invalid parameter in the data (IATTR 1) at SUBNQN (256).
    let cqe = refuse(
        connect_sqe(1, 0, 31, 0),
        connect_data(0xFFFF, "nqn.x:none", HOST),
    );
    assert_eq!(
        (cqe.status, cqe.result, cqe.dnr),
        ((1, 0x82), 1 << 16 | 256, true)
    );
    // A host the subsystem does not allow.
    let cqe = refuse(connect_sqe(1, 0, 31, 0), connect_data(0xFFFF, SECRET, HOST));
    assert_eq!(cqe.status, (1, 0x84));
    // Admin queue too large, or of size 1.
    let cqe = refuse(
        connect_sqe(1, 0, 32, 0),
        connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    assert_eq!((cqe.status, cqe.result), ((1, 0x82), 44));
    let cqe = refuse(
        connect_sqe(1, 0, 0, 0),
        connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    assert_eq!((cqe.status, cqe.result), ((1, 0x82), 44));
    // Record format 1.
    let cqe = refuse(
        connect_sqe(1, 0, 31, 0).byte(40, 1),
        connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    assert_eq!(cqe.status, (1, 0x80));
    // Connect data not 1024 bytes.
    let cqe = refuse(connect_sqe(1, 0, 31, 0).sgl(512, true), vec![0; 512]);
    assert_eq!(cqe.status, (0, 0x0F));
    // An I/O queue for a controller that does not exist.
    let cqe = refuse(connect_sqe(1, 1, 15, 0), connect_data(77, SUBSYSTEM, HOST));
    assert_eq!((cqe.status, cqe.result), ((1, 0x82), 1 << 16 | 16));
}

#[test]
fn io_queue_needs_an_enabled_controller_of_the_same_host() {
    let mut admin = Pair::fresh();
    let cntlid = admin.connect_admin_to(SUBSYSTEM, 0).result as u16;
    let mut io = admin.sibling();
    assert_eq!(io.connect_io(cntlid, 1, 15).status, (0, 0x0C));
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));
    let cid = admin.cid();
    admin.resp(&Sqe::new(0x09, cid, 0).cdw(10, 7).cdw(11, 1 | 1 << 16), &[]);
    let mut other = admin.sibling();
    other.initialize(false, false);
    let cqe = other.resp(
        &connect_sqe(3, 1, 15, 0),
        &connect_data(cntlid, SUBSYSTEM, "nqn.2026-01.test:someone-else"),
    );
    assert_eq!(cqe.status, (1, 0x82));
    let mut io = admin.sibling();
    assert_eq!(io.connect_io(cntlid, 1, 15).status, (0, 0));
    // The same queue ID twice.
    let mut twin = admin.sibling();
    assert_eq!(twin.connect_io(cntlid, 1, 15).status, (1, 0x82));
    // A second Connect on a live queue.
    let cqe = io.resp(
        &connect_sqe(9, 1, 15, 0),
        &connect_data(cntlid, SUBSYSTEM, HOST),
    );
    assert_eq!(cqe.status, (0, 0x0C));
}

#[test]
fn commands_before_connect_or_enable_are_sequence_errors() {
    let mut p = Pair::fresh();
    p.initialize(false, false);
    let cqe = p.resp(&Sqe::new(0x02, 3, 1).cdw(12, 0).sgl(512, false), &[]);
    assert_eq!((cqe.status, cqe.dnr), ((0, 0x0C), true));
    assert!(p.closed.is_none());
    p.connect_admin_after_initialize();
    let cqe = p.resp(&Sqe::new(0x06, 4, 0).cdw(10, 1).sgl(4096, false), &[]);
    assert_eq!(cqe.status, (0, 0x0C), "Identify before CC.EN");
    // Property commands on the admin queue are fine before enable.
    assert_eq!(p.get_property(0x00, true).status, (0, 0));
    // A property that does not exist, or of the wrong size.
    assert_eq!(p.get_property(0x30, false).status, (0, 0x02));
    assert_eq!(p.get_property(0x08, true).status, (0, 0x02));
}

impl Pair {
    fn connect_admin_after_initialize(&mut self) {
        let cid = self.cid();
        let cqe = self.resp(
            &connect_sqe(cid, 0, 31, 0),
            &connect_data(0xFFFF, SUBSYSTEM, HOST),
        );
        assert_eq!(cqe.status, (0, 0));
    }
}

#[test]
fn disabling_the_controller_shuts_its_io_queues() {
    let (mut admin, mut io) = admin_and_io();
    let cntlid = admin.queue.cntlid().unwrap();
    for cid in 30..34 {
        assert!(admin.command(&Sqe::new(0x0C, cid, 0), &[]).is_empty());
    }
    assert_eq!(admin.set_cc(0).status, (0, 0));
    assert_eq!(admin.get_property(0x1C, false).result & 1, 0);
    let shut = std::mem::take(&mut admin.env.borrow_mut().shut_down);
    assert_eq!(shut, vec![(cntlid, 1)]);
    io.queue.handle_shutdown();
    io.pump();
    assert_eq!(io.closed, Some(CloseReason::Shutdown));
    // Re-enabled, the admin queue works again; I/O queues must reconnect.
    assert_eq!(admin.set_cc(LINUX_CC).status, (0, 0));
    let cqe = admin.resp(&Sqe::new(0x18, 40, 0), &[]);
    assert_eq!(cqe.status, (0, 0));
    // The reset dropped the held Asynchronous Event Requests: four fit again, CIDs reused.
    for cid in 30..34 {
        assert!(admin.command(&Sqe::new(0x0C, cid, 0), &[]).is_empty());
    }
}

#[test]
fn shutdown_notification_completes_at_once() {
    let (mut admin, _io) = admin_and_io();
    assert_eq!(admin.set_cc(LINUX_CC | 1 << 14).status, (0, 0));
    let csts = admin.get_property(0x1C, false).result;
    assert_eq!(csts & 0xC, 0x8, "SHST complete");
    assert_eq!(admin.env.borrow().shut_down.len(), 1);
}

#[test]
fn keep_alive_timeout_kills_the_controller() {
    let (mut admin, _io) = admin_and_io();
    let cntlid = admin.queue.cntlid().unwrap();
    admin.advance(Duration::from_millis(4000));
    assert_eq!(admin.resp(&Sqe::new(0x18, 50, 0), &[]).status, (0, 0));
    admin.advance(Duration::from_millis(4000));
    assert!(admin.closed.is_none(), "the Keep Alive restarted the timer");
    admin.advance(Duration::from_millis(1001));
    assert_eq!(admin.closed, Some(CloseReason::KeepAliveExpired));
    // The environment tore the controller down with its I/O queue.
    assert!(admin.env.borrow().registry.is_empty());
    assert_eq!(admin.env.borrow().shut_down, vec![(cntlid, 1)]);
}

#[test]
fn keep_alive_timer_feature_changes_the_timeout() {
    let (mut admin, _io) = admin_and_io();
    let cqe = admin.resp(&Sqe::new(0x09, 51, 0).cdw(10, 0x0F).cdw(11, 20_000), &[]);
    assert_eq!(cqe.status, (0, 0));
    let cqe = admin.resp(&Sqe::new(0x0A, 52, 0).cdw(10, 0x0F), &[]);
    assert_eq!(cqe.result, 20_000);
    admin.advance(Duration::from_secs(19));
    assert!(admin.closed.is_none());
    admin.advance(Duration::from_secs(2));
    assert_eq!(admin.closed, Some(CloseReason::KeepAliveExpired));
}

#[test]
fn a_silent_connection_times_out() {
    let mut p = Pair::fresh();
    p.advance(Duration::from_secs(16));
    assert_eq!(p.closed, Some(CloseReason::ConnectTimeout));
    let mut p = Pair::fresh();
    p.initialize(false, false);
    p.advance(Duration::from_secs(16));
    assert_eq!(p.closed, Some(CloseReason::ConnectTimeout));
}

#[test]
fn io_queue_disconnect_completes_then_closes() {
    let (_admin, mut io) = admin_and_io();
    let cqe = io.resp(&Sqe::fabrics(0x08, 60), &[]);
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(io.closed, Some(CloseReason::Disconnect));
}

#[test]
fn discovery_controller() {
    let mut p = Pair::fresh();
    // nvme discover connects with KATO 0; the discovery controller still expires.
    let cqe = p.connect_admin_to(super::super::DISCOVERY_NQN, 0);
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(p.set_cc(LINUX_CC).status, (0, 0));
    let (id, _) = p.data_in(&Sqe::new(0x06, 70, 0).cdw(10, 1).sgl(4096, false));
    assert_eq!(id[111], 2, "CNTRLTYPE discovery");
    assert_eq!(&id[768..768 + 36], b"nqn.2014-08.org.nvmexpress.discovery");
    // Log page 70h: the header first (nvme-cli reads it alone), then the whole log. The
    // subsystem that does not allow this host is not listed.
    let header = Sqe::new(0x02, 71, 0)
        .cdw(10, 0x70 | 255 << 16)
        .sgl(1024, false);
    let (h, _) = p.data_in(&header);
    assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), 1);
    let generation = u64::from_le_bytes(h[0..8].try_into().unwrap());
    let whole = Sqe::new(0x02, 72, 0)
        .cdw(10, 0x70 | 511 << 16)
        .sgl(2048, false);
    let (log, _) = p.data_in(&whole);
    assert_eq!(
        u64::from_le_bytes(log[0..8].try_into().unwrap()),
        generation
    );
    assert_eq!(&log[1024..1027], &[3, 1, 2]);
    assert_eq!(
        &log[1024 + 256..1024 + 256 + SUBSYSTEM.len()],
        SUBSYSTEM.as_bytes()
    );
    // No namespaces, no I/O queues, no SMART log here.
    assert_eq!(
        p.resp(&Sqe::new(0x06, 73, 1).sgl(4096, false), &[]).status,
        (0, 0x02)
    );
    assert_eq!(
        p.resp(
            &Sqe::new(0x02, 74, 0).cdw(10, 2 | 127 << 16).sgl(512, false),
            &[]
        )
        .status,
        (1, 0x09)
    );
    let mut io = p.sibling();
    io.initialize(false, false);
    let cqe = io.resp(
        &connect_sqe(1, 1, 15, 0),
        &connect_data(1, super::super::DISCOVERY_NQN, HOST),
    );
    assert_eq!((cqe.status, cqe.result), ((1, 0x82), 42));
    p.advance(Duration::from_secs(121));
    assert_eq!(p.closed, Some(CloseReason::KeepAliveExpired));
}

/// A discovery-only portal (port 8009): the discovery controller as on any portal, and no
/// Connect to an NVM subsystem.
/// A discovery controller has no namespaces, so it announces no Namespace Attribute Changed
/// notice in OAES, only Discovery Log Page Change (as Linux's nvmet); an NVM subsystem's
/// controller announces namespace attribute and ANA change notices.
#[test]
fn each_controller_announces_its_own_notices_in_oaes() {
    let identify_controller = Sqe::new(0x06, 70, 0).cdw(10, 1).sgl(4096, false);
    let mut disc = Pair::fresh();
    assert_eq!(
        disc.connect_admin_to(super::super::DISCOVERY_NQN, 0).status,
        (0, 0)
    );
    assert_eq!(disc.set_cc(LINUX_CC).status, (0, 0));
    let (id, _) = disc.data_in(&identify_controller);
    assert_eq!(le32(&id, 92), 1 << 31, "OAES of the discovery controller");

    let mut nvm = Pair::fresh();
    nvm.bring_up(1);
    let (id, _) = nvm.data_in(&identify_controller);
    assert_eq!(le32(&id, 92), 1 << 8 | 1 << 11, "OAES of an NVM controller");
}

/// A reload that changes which subsystems the host may see: its discovery controller, with
/// the notice enabled, completes a held Asynchronous Event Request with Discovery Log Page
/// Change (as nvmet when a host is allowed or disallowed), the log read then lists what the
/// host sees now and re-arms the notice. Lists that change nothing this host sees send none.
#[test]
fn a_discovery_controller_announces_a_changed_view_of_the_subsystems() {
    let mut disc = Pair::fresh();
    disc.connect_admin_to(super::super::DISCOVERY_NQN, 0);
    disc.set_cc(LINUX_CC);
    let enable = Sqe::new(0x09, 80, 0).cdw(10, 0x0B).cdw(11, 1 << 31);
    assert_eq!(disc.resp(&enable, &[]).status, (0, 0));
    let records = |disc: &mut Pair, cid: u16| {
        let header = Sqe::new(0x02, cid, 0)
            .cdw(10, 0x70 | 255 << 16)
            .sgl(1024, false);
        let (h, _) = disc.data_in(&header);
        u64::from_le_bytes(h[8..16].try_into().unwrap())
    };
    assert_eq!(records(&mut disc, 81), 1);
    assert!(disc.command(&Sqe::new(0x0C, 82, 0), &[]).is_empty(), "held");
    let mut allowed: Vec<Vec<AllowedHost>> = (disc.queue.config.subsystems.iter())
        .map(|s| s.allowed_hosts.clone())
        .collect();
    // The lists applied, what the controller sent: nothing, or one notice completing `cid`.
    let apply = |pair: &mut Pair, allowed: &[Vec<AllowedHost>]| {
        pair.queue.handle_allowed_hosts_changed(allowed, pair.now);
        pair.pump();
        match pair.take().as_slice() {
            [] => None,
            [Got::Resp(cqe)] => Some((cqe.cid, cqe.result)),
            other => panic!("expected a notice or nothing, got {other:?}"),
        }
    };
    // Another host let in: nothing changes for this one.
    allowed[1].push(AllowedHost::open("nqn.2026-01.test:third-host"));
    assert_eq!(apply(&mut disc, &allowed), None);
    // This host let in: the notice (type 2, information F0h, log 70h), then two records.
    allowed[1].push(AllowedHost::open(HOST));
    assert_eq!(apply(&mut disc, &allowed), Some((82, 0x70_F0_02)));
    assert_eq!(records(&mut disc, 83), 2);
    // Taken out again: the log was read, so the next notice goes out too.
    assert!(disc.command(&Sqe::new(0x0C, 84, 0), &[]).is_empty(), "held");
    allowed[1].pop();
    assert_eq!(apply(&mut disc, &allowed), Some((84, 0x70_F0_02)));
    assert_eq!(records(&mut disc, 85), 1);
    // An NVM subsystem's controller takes no notice of it.
    let (mut admin, _io) = admin_and_io();
    assert_eq!(apply(&mut admin, &allowed), None);
}

#[test]
fn a_discovery_only_portal_refuses_nvm_subsystems() {
    let cfg = NvmeConfig {
        discovery_only: true,
        ..config()
    };
    let env = env(&cfg);
    let cfg = Arc::new(cfg);
    let mut p = Pair::new(cfg.clone(), env.clone(), Instant::now());
    let cqe = p.connect_admin_to(SUBSYSTEM, 0);
    assert_eq!(cqe.status, (1, 0x82), "Connect Invalid Parameters");
    assert_eq!(cqe.result, 1 << 16 | 256, "in the data, at SUBNQN");
    let mut d = Pair::new(cfg, env, Instant::now());
    assert_eq!(
        d.connect_admin_to(super::super::DISCOVERY_NQN, 0).status,
        (0, 0)
    );
    assert_eq!(d.set_cc(LINUX_CC).status, (0, 0));
    let whole = Sqe::new(0x02, 80, 0)
        .cdw(10, 0x70 | 511 << 16)
        .sgl(2048, false);
    let (log, _) = d.data_in(&whole);
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 1);
    assert_eq!(&log[1024 + 32..1024 + 36], b"4420", "the I/O portal's port");
}

/// The discovery log's first entry is the discovery subsystem at the port the host reached
/// (subtype 3, as Linux's nvmet lists it), then the NVM subsystems it may see.
#[test]
fn the_discovery_log_names_the_current_discovery_subsystem_first() {
    let cfg = NvmeConfig {
        current_port: Some(DiscoveryEntry {
            subsystem_nqn: super::super::DISCOVERY_NQN.into(),
            port_id: 3,
            address_family: AddressFamily::Ipv4,
            address: "192.0.2.9".into(),
            service_id: "8009".into(),
        }),
        ..config()
    };
    let env = env(&cfg);
    let mut d = Pair::new(Arc::new(cfg), env, Instant::now());
    assert_eq!(
        d.connect_admin_to(super::super::DISCOVERY_NQN, 0).status,
        (0, 0)
    );
    assert_eq!(d.set_cc(LINUX_CC).status, (0, 0));
    let whole = Sqe::new(0x02, 81, 0)
        .cdw(10, 0x70 | 767 << 16)
        .sgl(3072, false);
    let (log, _) = d.data_in(&whole);
    assert_eq!(
        u64::from_le_bytes(log[8..16].try_into().unwrap()),
        2,
        "NUMREC"
    );
    let current = &log[1024..2048];
    assert_eq!(
        &current[0..6],
        &[3, 1, 3, 4, 3, 0],
        "TCP, IPv4, current discovery, TREQ, port 3"
    );
    assert_eq!(&current[32..36], b"8009");
    assert_eq!(&current[256..292], super::super::DISCOVERY_NQN.as_bytes());
    assert_eq!(&current[512..521], b"192.0.2.9");
    let subsystem = &log[2048..];
    assert_eq!(subsystem[2], 2, "NVM subsystem");
    assert_eq!(&subsystem[256..256 + SUBSYSTEM.len()], SUBSYSTEM.as_bytes());
}
