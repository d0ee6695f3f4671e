//! Admin commands on a live admin queue: Identify, Get Log Page, features, asynchronous
//! events, Abort.

use super::*;

fn identify(cns: u8, nsid: u32, csi: u8) -> Sqe {
    Sqe::new(0x06, 20, nsid)
        .cdw(10, u32::from(cns))
        .cdw(11, u32::from(csi) << 24)
        .sgl(4096, false)
}

fn get_log(lid: u8, len: u32, offset: u64) -> Sqe {
    let numd = len / 4 - 1;
    Sqe::new(0x02, 21, 0xFFFF_FFFF)
        .cdw(10, u32::from(lid) | (numd & 0xFFFF) << 16)
        .cdw(11, numd >> 16)
        .cdw(12, offset as u32)
        .cdw(13, (offset >> 32) as u32)
        .sgl(len, false)
}

#[test]
fn identify_structures() {
    let (mut admin, _io) = admin_and_io();
    // I/O command set specific (NVM) namespace and controller structures, the command set
    // independent namespace, the command set list.
    let (d, _) = admin.data_in(&identify(0x05, 1, 0));
    assert!(d.iter().all(|&b| b == 0));
    let (_, cqe) = admin.data_in(&identify(0x06, 0, 0));
    assert_eq!(cqe.status, (0, 0));
    let (d, _) = admin.data_in(&identify(0x08, 2, 0));
    assert_eq!((d[8], d[14]), (1, 1), "write protected, ready");
    let (d, _) = admin.data_in(&identify(0x1C, 0, 0));
    assert_eq!(d[0], 1);
    // Active namespaces after NSID 1.
    let (d, _) = admin.data_in(&identify(0x02, 1, 0));
    assert_eq!(&d[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    // Other command sets, unknown CNS, unknown namespace.
    assert_eq!(admin.resp(&identify(0x05, 1, 2), &[]).status, (0, 0x02));
    assert_eq!(admin.resp(&identify(0x10, 0, 0), &[]).status, (0, 0x02));
    assert_eq!(admin.resp(&identify(0x00, 3, 0), &[]).status, (0, 0x0B));
    assert_eq!(
        admin.resp(&identify(0x02, 0xFFFF_FFFF, 0), &[]).status,
        (0, 0x0B)
    );
    // A buffer smaller than the structure.
    let short = Sqe::new(0x06, 22, 0).cdw(10, 1).sgl(1024, false);
    assert_eq!(admin.resp(&short, &[]).status, (0, 0x0F));
}

#[test]
fn log_pages() {
    let (mut admin, mut io) = admin_and_io();
    let (err, _) = admin.data_in(&get_log(0x01, 64, 0));
    assert!(err.iter().all(|&b| b == 0), "nothing failed yet");
    // SMART counts what the I/O queue did.
    let w = Sqe::new(0x01, 1, 1).cdw(12, 1).sgl(1024, true);
    assert_eq!(io.resp(&w, &[5; 1024]).status, (0, 0));
    io.data_in(&Sqe::new(0x02, 2, 1).cdw(12, 0).sgl(512, false));
    let (smart, _) = admin.data_in(&get_log(0x02, 512, 0));
    assert_eq!(smart[3], 100, "available spare");
    assert_eq!((smart[32], smart[48]), (1, 1), "data units read, written");
    assert_eq!((smart[64], smart[80]), (1, 1), "read, write commands");
    // Firmware slot 1 holds the firmware revision.
    let (fw, _) = admin.data_in(&get_log(0x03, 512, 0));
    assert_eq!(fw[0], 1);
    assert_eq!(&fw[8..16], b"1.2     ");
    // Command effects: Write changes content, Read is supported and does not.
    let (fx, _) = admin.data_in(&get_log(0x05, 4096, 0));
    assert_eq!(fx[1024 + 4], 3);
    assert_eq!(fx[1024 + 8], 1);
    assert_eq!(fx[6 * 4], 1, "Identify");
    // A window at an offset; an offset past the log.
    let (part, _) = admin.data_in(&get_log(0x03, 8, 8));
    assert_eq!(&part, b"1.2     ");
    assert_eq!(admin.resp(&get_log(0x03, 4, 4096), &[]).status, (0, 0x02));
    // Unknown log; the discovery log on an I/O controller.
    assert_eq!(admin.resp(&get_log(0xC0, 512, 0), &[]).status, (1, 0x09));
    assert_eq!(admin.resp(&get_log(0x70, 1024, 0), &[]).status, (1, 0x09));
    // The error log holds the last failure: the discovery log asked of an I/O controller.
    let (err, _) = admin.data_in(&get_log(0x01, 128, 0));
    assert_eq!(err[0], 3, "error count");
    assert_eq!((le16(&err, 8), le16(&err, 10)), (0, 21), "SQID, CID");
    assert_eq!(
        le16(&err, 12) >> 1,
        1 << 14 | 1 << 8 | 0x09,
        "status: DNR, SCT 1, SC 09h"
    );
    assert_eq!(err[64], 2, "the one before");
}

#[test]
fn namespace_change_notice_through_a_held_async_event_request() {
    let (mut admin, _io) = admin_and_io();
    // Enable namespace attribute notices, then post two AERs: they are held.
    let aec = Sqe::new(0x09, 30, 0).cdw(10, 0x0B).cdw(11, 1 << 8);
    assert_eq!(admin.resp(&aec, &[]).status, (0, 0));
    assert!(admin.command(&Sqe::new(0x0C, 31, 0), &[]).is_empty());
    assert!(admin.command(&Sqe::new(0x0C, 32, 0), &[]).is_empty());
    admin.queue.handle_namespaces_changed(&[1]);
    admin.pump();
    match admin.take().as_slice() {
        [Got::Resp(cqe)] => {
            assert_eq!(cqe.cid, 31);
            assert_eq!(
                cqe.result, 0x04_00_02,
                "notice, namespace attribute, log 04h"
            );
        }
        other => panic!("{other:?}"),
    }
    // Masked until the log is read.
    admin.queue.handle_namespaces_changed(&[2]);
    admin.pump();
    assert!(admin.take().is_empty());
    let (log, _) = admin.data_in(&get_log(0x04, 4096, 0));
    assert_eq!(&log[..12], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let (log, _) = admin.data_in(&get_log(0x04, 4096, 0));
    assert!(log.iter().all(|&b| b == 0), "read without RAE cleared it");
    admin.queue.handle_namespaces_changed(&[1]);
    admin.pump();
    assert!(matches!(
        admin.take().as_slice(),
        [Got::Resp(Cqe { cid: 32, .. })]
    ));
}

#[test]
fn async_event_request_limit() {
    let (mut admin, _io) = admin_and_io();
    for cid in 0..4 {
        assert!(admin.command(&Sqe::new(0x0C, 40 + cid, 0), &[]).is_empty());
    }
    let cqe = admin.resp(&Sqe::new(0x0C, 44, 0), &[]);
    assert_eq!(cqe.status, (1, 0x05));
}

#[test]
fn features() {
    let (mut admin, _io) = admin_and_io();
    let get = |fid: u32, sel: u32| Sqe::new(0x0A, 50, 0).cdw(10, fid | sel << 8);
    // The write cache is present and not the host's to switch.
    assert_eq!(admin.resp(&get(0x06, 0), &[]).result, 1);
    let set_vwc = Sqe::new(0x09, 51, 0).cdw(10, 0x06).cdw(11, 0);
    assert_eq!(admin.resp(&set_vwc, &[]).status, (1, 0x0E));
    assert_eq!(admin.resp(&get(0x06, 3), &[]).result, 0);
    // Number of queues as granted at bring-up (2).
    assert_eq!(admin.resp(&get(0x07, 0), &[]).result, 1 | 1 << 16);
    assert_eq!(admin.resp(&get(0x0F, 0), &[]).result, 5000);
    assert_eq!(admin.resp(&get(0x0F, 3), &[]).result, 4, "changeable");
    // Saving is not supported; unknown features are invalid.
    let save = Sqe::new(0x09, 52, 0).cdw(10, 0x0F | 1 << 31).cdw(11, 1000);
    assert_eq!(admin.resp(&save, &[]).status, (1, 0x0D));
    assert_eq!(admin.resp(&get(0x7F, 0), &[]).status, (0, 0x02));
    let bad = Sqe::new(0x09, 53, 0).cdw(10, 0x07).cdw(11, 0xFFFF);
    assert_eq!(admin.resp(&bad, &[]).status, (0, 0x02));
}

#[test]
fn abort_reports_not_aborted_and_unknown_admin_opcodes_fail() {
    let (mut admin, _io) = admin_and_io();
    let cqe = admin.resp(&Sqe::new(0x08, 60, 0).cdw(10, 1 | 5 << 16), &[]);
    assert_eq!((cqe.status, cqe.result & 1), ((0, 0), 1));
    assert_eq!(admin.resp(&Sqe::new(0x80, 61, 0), &[]).status, (0, 0x01));
    // Unknown fabrics command type.
    assert_eq!(admin.resp(&Sqe::fabrics(0x7E, 62), &[]).status, (0, 0x01));
    // Disconnect belongs on I/O queues.
    assert_eq!(admin.resp(&Sqe::fabrics(0x08, 63), &[]).status, (0, 0x02));
}

#[test]
fn discovery_async_event_configuration_takes_only_the_discovery_log_change_notice() {
    let mut disc = Pair::fresh();
    let cqe = disc.connect_admin_to(super::super::DISCOVERY_NQN, 0);
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(disc.set_cc(LINUX_CC).status, (0, 0));
    let set = |cid: u16, value: u32| Sqe::new(0x09, cid, 0).cdw(10, 0x0B).cdw(11, value);
    let get = Sqe::new(0x0A, 80, 0).cdw(10, 0x0B);
    // Bit 31, Discovery Log Page Change Notices, as nvmet's discovery controller takes.
    assert_eq!(disc.resp(&set(81, 1 << 31), &[]).status, (0, 0));
    assert_eq!(disc.resp(&get, &[]).result, 1 << 31);
    // Any other bit (the I/O controller's namespace attribute and ANA notices, a SMART
    // warning, a reserved bit), alone or beside bit 31: Invalid Field in Command, DNR, and
    // the configuration unchanged.
    for (cid, bad) in [
        (82, 1 << 8),
        (83, 1 << 11),
        (84, 1),
        (85, 1 << 31 | 1 << 8),
        (86, 1 << 20),
    ] {
        let cqe = disc.resp(&set(cid, bad), &[]);
        assert_eq!((cqe.status, cqe.dnr), ((0, 0x02), true), "{bad:#x}");
        assert_eq!(disc.resp(&get, &[]).result, 1 << 31, "{bad:#x}");
    }
    assert_eq!(disc.resp(&set(87, 0), &[]).status, (0, 0));
    assert_eq!(disc.resp(&get, &[]).result, 0);
}

#[test]
fn io_controller_async_event_configuration_takes_what_nvmet_takes() {
    let (mut admin, _io) = admin_and_io();
    let set = |cid: u16, value: u32| Sqe::new(0x09, cid, 0).cdw(10, 0x0B).cdw(11, value);
    let get = Sqe::new(0x0A, 90, 0).cdw(10, 0x0B);
    // What Linux's host asks for (OAES: namespace attribute and ANA change notices).
    assert_eq!(admin.resp(&set(91, 1 << 8 | 1 << 11), &[]).status, (0, 0));
    assert_eq!(admin.resp(&get, &[]).result, 1 << 8 | 1 << 11);
    // What SPDK's host asks for: the SMART critical warnings (bits 0-4) as well.
    let spdk = 0x1F | 1 << 8 | 1 << 11;
    assert_eq!(admin.resp(&set(92, spdk), &[]).status, (0, 0));
    assert_eq!(admin.resp(&get, &[]).result, u64::from(spdk));
    // Notices we never send nor announce (firmware activation, telemetry, a discovery log
    // change), a SMART bit nvmet does not take, a reserved bit, alone or beside good ones:
    // Invalid Field in Command, DNR, and the configuration unchanged.
    for (cid, bad) in [
        (93, 1 << 9),
        (94, 1 << 10),
        (95, 1 << 31),
        (96, 1 << 5),
        (97, 1 << 20),
        (98, 1 << 8 | 1 << 9),
    ] {
        let cqe = admin.resp(&set(cid, bad), &[]);
        assert_eq!((cqe.status, cqe.dnr), ((0, 0x02), true), "{bad:#x}");
        assert_eq!(admin.resp(&get, &[]).result, u64::from(spdk), "{bad:#x}");
    }
    assert_eq!(admin.resp(&set(99, 0), &[]).status, (0, 0));
    assert_eq!(admin.resp(&get, &[]).result, 0);
}
