//! Asymmetric Namespace Access reporting (Identify and the ANA log page) and namespaces whose
//! size changes under a connected host (Identify, I/O range checks, the Namespace Attribute
//! Changed notice with the Changed Namespace List).

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::nvme::config::{AnaGroup, AnaState, NamespaceCapacity, DISCOVERY_NQN};

fn identify(cid: u16, cns: u8, nsid: u32) -> Sqe {
    Sqe::new(0x06, cid, nsid)
        .cdw(10, u32::from(cns))
        .sgl(4096, false)
}

/// Get Log Page of `len` bytes, with RGO (LSP bit 0) when `rgo`.
fn get_log(cid: u16, lid: u8, len: u32, rgo: bool) -> Sqe {
    Sqe::new(0x02, cid, 0xFFFF_FFFF)
        .cdw(
            10,
            u32::from(lid) | u32::from(rgo) << 8 | (len / 4 - 1) << 16,
        )
        .sgl(len, false)
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

fn le64(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

#[test]
fn ana_reporting_in_identify_and_the_ana_log() {
    let mut cfg = config();
    cfg.ana = AnaGroup {
        id: 2,
        state: AnaState::NonOptimized,
        change_count: 0,
    };
    let env = env(&cfg);
    let mut admin = Pair::new(Arc::new(cfg), env, Instant::now());
    admin.bring_up(1);

    let (id, _) = admin.data_in(&identify(10, 0x01, 0));
    assert_eq!(id[76], 0b1011, "CMIC: multi-port, multi-controller, ANA");
    assert_eq!(id[342], 10, "ANATT");
    assert_eq!(
        id[343], 0b111,
        "ANACAP: optimized, non-optimized, inaccessible"
    );
    assert_eq!(le32(&id, 344), 0xFFFF, "ANAGRPMAX");
    assert_eq!(le32(&id, 348), 1, "NANAGRPID");
    assert_eq!((le32(&id, 516), le32(&id, 540)), (2, 2), "NN, MNAN");

    let (ns, _) = admin.data_in(&identify(11, 0x00, 1));
    assert_eq!(le32(&ns, 92), 2, "ANAGRPID");
    assert_eq!(ns[30], 1, "NMIC: shared");
    let (indep, _) = admin.data_in(&identify(12, 0x08, 2));
    assert_eq!(le32(&indep, 4), 2, "ANAGRPID");
    assert_eq!(
        (indep[8], indep[14]),
        (1, 1),
        "NSATTR write protected, NSTAT ready"
    );

    // The log as Linux reads it at start-up: a buffer for the header, NANAGRPID descriptors
    // and MNAN NSIDs.
    let (log, cqe) = admin.data_in(&get_log(13, 0x0C, 16 + 32 + 8, false));
    assert_eq!(cqe.status, (0, 0));
    assert_eq!(le64(&log, 0), 0, "CHGCNT");
    assert_eq!(u16::from_le_bytes([log[8], log[9]]), 1, "NGRPS");
    assert_eq!((le32(&log, 16), le32(&log, 20)), (2, 2), "ANAGRPID, NNSIDV");
    assert_eq!(log[32], 0x02, "ANAS: non-optimized");
    assert_eq!((le32(&log, 48), le32(&log, 52)), (1, 2), "NSIDs");
    let (log, _) = admin.data_in(&get_log(14, 0x0C, 64, true));
    assert_eq!((le32(&log, 16), le32(&log, 20)), (2, 0), "RGO: no NSIDs");
    assert!(log[48..].iter().all(|&b| b == 0));
}

#[test]
fn a_standby_gateway_reports_inaccessible_and_discovery_has_no_ana() {
    let mut cfg = config();
    cfg.ana = AnaGroup {
        id: 1,
        state: AnaState::Inaccessible,
        change_count: 0,
    };
    let env = env(&cfg);
    let mut admin = Pair::new(Arc::new(cfg), env.clone(), Instant::now());
    admin.bring_up(1);
    let (log, _) = admin.data_in(&get_log(10, 0x0C, 64, false));
    assert_eq!((le32(&log, 16), log[32]), (1, 0x03));

    let mut disc = Pair::new(admin.queue.config.clone(), env, Instant::now());
    assert_eq!(disc.connect_admin_to(DISCOVERY_NQN, 0).status, (0, 0));
    assert_eq!(disc.set_cc(LINUX_CC).status, (0, 0));
    let (id, _) = disc.data_in(&identify(11, 0x01, 0));
    assert_eq!(id[76], 0b10, "CMIC: no ANA on the discovery controller");
    assert_eq!(id[343], 0, "ANACAP");
    let cqe = disc.resp(&get_log(12, 0x0C, 64, false), &[]);
    assert_eq!(cqe.status, (1, 0x09), "Invalid Log Page");
}

#[test]
fn an_ana_state_change_is_announced_and_reported_with_its_change_count() {
    let cfg = config();
    let env = env(&cfg);
    let mut admin = Pair::new(Arc::new(cfg), env.clone(), Instant::now());
    admin.bring_up(1);
    let (id, _) = admin.data_in(&identify(10, 0x01, 0));
    assert_eq!(
        le32(&id, 92),
        1 << 8 | 1 << 11,
        "OAES: namespace attribute, ANA change"
    );
    let (log, _) = admin.data_in(&get_log(11, 0x0C, 64, false));
    assert_eq!((le64(&log, 0), log[32]), (0, 0x01), "CHGCNT 0, optimized");

    // The gateway goes to standby before the host enabled the notice or posted an AER: the
    // notice waits for both, and Set Features completes the AER first.
    let standby = AnaGroup {
        id: 1,
        state: AnaState::Inaccessible,
        change_count: 1,
    };
    admin.queue.handle_ana_changed(standby, Instant::now());
    admin.pump();
    assert!(admin.take().is_empty());
    assert!(admin.command(&Sqe::new(0x0C, 12, 0), &[]).is_empty());
    let aec = Sqe::new(0x09, 13, 0)
        .cdw(10, 0x0B)
        .cdw(11, 1 << 8 | 1 << 11);
    match admin.command(&aec, &[]).as_slice() {
        [Got::Resp(aen), Got::Resp(set)] => {
            assert_eq!(
                (aen.cid, aen.result),
                (12, 0x0C_03_02),
                "notice, ANA change, log 0Ch"
            );
            assert_eq!((set.cid, set.status), (13, (0, 0)));
        }
        other => panic!("{other:?}"),
    }
    let (log, _) = admin.data_in(&get_log(14, 0x0C, 64, false));
    assert_eq!(le64(&log, 0), 1, "CHGCNT");
    assert_eq!(le64(&log, 24), 1, "descriptor CHGCNT");
    assert_eq!((le32(&log, 16), log[32]), (1, 0x03), "group 1 inaccessible");

    // The same group again is no change; a real one with an AER held is announced at once.
    assert!(admin.command(&Sqe::new(0x0C, 15, 0), &[]).is_empty());
    admin.queue.handle_ana_changed(standby, Instant::now());
    admin.pump();
    assert!(admin.take().is_empty());
    let optimized = AnaGroup {
        state: AnaState::Optimized,
        change_count: 2,
        ..standby
    };
    admin.queue.handle_ana_changed(optimized, Instant::now());
    admin.pump();
    assert!(matches!(
        admin.take().as_slice(),
        [Got::Resp(Cqe {
            cid: 15,
            result: 0x0C_03_02,
            ..
        })]
    ));
    // Masked until the log is read without RAE (CDW10 bit 15): a read with RAE keeps it so.
    assert!(admin.command(&Sqe::new(0x0C, 16, 0), &[]).is_empty());
    let non_optimized = AnaGroup {
        state: AnaState::NonOptimized,
        change_count: 3,
        ..standby
    };
    admin
        .queue
        .handle_ana_changed(non_optimized, Instant::now());
    admin.pump();
    assert!(admin.take().is_empty(), "masked");
    let retain = Sqe::new(0x02, 17, 0xFFFF_FFFF)
        .cdw(10, 0x0C | 1 << 15 | (64 / 4 - 1) << 16)
        .sgl(64, false);
    let (log, _) = admin.data_in(&retain);
    assert_eq!((le64(&log, 0), log[32]), (3, 0x02));
    let (log, _) = admin.data_in(&get_log(18, 0x0C, 64, false));
    assert_eq!(log[32], 0x02);
    // Unmasked: the next change reaches the AER still held.
    admin.queue.handle_ana_changed(standby, Instant::now());
    admin.pump();
    assert!(matches!(
        admin.take().as_slice(),
        [Got::Resp(Cqe { cid: 16, .. })]
    ));

    // An I/O queue and the discovery controller have no ANA log and ignore the change.
    let cntlid = admin.queue.cntlid().unwrap();
    let mut io = admin.sibling();
    assert_eq!(io.connect_io(cntlid, 1, 15).status, (0, 0));
    io.queue.handle_ana_changed(optimized, Instant::now());
    io.pump();
    assert!(io.take().is_empty());
    let mut disc = Pair::new(admin.queue.config.clone(), env, Instant::now());
    assert_eq!(disc.connect_admin_to(DISCOVERY_NQN, 0).status, (0, 0));
    disc.queue.handle_ana_changed(optimized, Instant::now());
    disc.pump();
    assert!(disc.take().is_empty());
}

/// A namespace size the test changes, as an RBD image resized under the target.
#[derive(Debug)]
struct Resizable(AtomicU64);

impl NamespaceCapacity for Resizable {
    fn bytes(&self, subsystem: usize, nsid: u32) -> Option<u64> {
        (subsystem == 0 && nsid == 1).then(|| self.0.load(Ordering::Relaxed))
    }
}

#[test]
fn a_resized_namespace_is_announced_reported_and_usable() {
    let size = Arc::new(Resizable(AtomicU64::new(NS1_BLOCKS * 512)));
    let mut cfg = config();
    cfg.capacity = Some(size.clone());
    let env = env(&cfg);
    // The backend has room to grow into.
    env.borrow_mut()
        .backends
        .insert((0, 1), Arc::new(RamBackend::new(4 * NS1_BLOCKS * 512)));
    let mut admin = Pair::new(Arc::new(cfg), env, Instant::now());
    let cntlid = admin.bring_up(1);
    let mut io = admin.sibling();
    assert_eq!(io.connect_io(cntlid, 1, 15).status, (0, 0));
    let read_at = |lba: u64| Sqe::new(0x02, 5, 1).slba(lba).sgl(512, false);
    let beyond = NS1_BLOCKS + 10;
    assert_eq!(io.resp(&read_at(beyond), &[]).status, (0, 0x80));

    // Namespace attribute notices on, one AER held; a Keep Alive finds nothing changed.
    let aec = Sqe::new(0x09, 20, 0).cdw(10, 0x0B).cdw(11, 1 << 8);
    assert_eq!(admin.resp(&aec, &[]).status, (0, 0));
    assert!(admin.command(&Sqe::new(0x0C, 21, 0), &[]).is_empty());
    assert_eq!(admin.resp(&Sqe::new(0x18, 22, 0), &[]).status, (0, 0));

    // The image grows: the next admin command (the host's Keep Alive) completes the AER with
    // a namespace attribute notice.
    size.0.store(2 * NS1_BLOCKS * 512, Ordering::Relaxed);
    match admin.command(&Sqe::new(0x18, 23, 0), &[]).as_slice() {
        [Got::Resp(aen), Got::Resp(keep_alive)] => {
            assert_eq!((aen.cid, aen.result), (21, 0x04_00_02));
            assert_eq!((keep_alive.cid, keep_alive.status), (23, (0, 0)));
        }
        other => panic!("{other:?}"),
    }
    let (changed, _) = admin.data_in(&get_log(24, 0x04, 4096, false));
    assert_eq!((le32(&changed, 0), le32(&changed, 4)), (1, 0));
    let (ns, _) = admin.data_in(&identify(25, 0x00, 1));
    let blocks = 2 * NS1_BLOCKS;
    assert_eq!(
        (le64(&ns, 0), le64(&ns, 8), le64(&ns, 16)),
        (blocks, blocks, blocks),
        "NSZE, NCAP, NUSE"
    );
    let (data, cqe) = io.data_in(&read_at(beyond));
    assert_eq!((cqe.status, data.len()), ((0, 0), 512));

    // Reported once: nothing more until it changes again. Then it shrinks, with no AER held:
    // the notice waits for one.
    assert!(admin.command(&Sqe::new(0x0C, 26, 0), &[]).is_empty());
    assert_eq!(admin.resp(&Sqe::new(0x18, 27, 0), &[]).status, (0, 0));
    size.0.store(NS1_BLOCKS * 512, Ordering::Relaxed);
    match admin.command(&Sqe::new(0x18, 28, 0), &[]).as_slice() {
        [Got::Resp(aen), Got::Resp(_)] => assert_eq!(aen.cid, 26),
        other => panic!("{other:?}"),
    }
    assert_eq!(io.resp(&read_at(beyond), &[]).status, (0, 0x80));
}

/// A namespace whose size is its device's: the device grows, and the backend reports the new
/// size only once measured again.
#[derive(Debug)]
struct Device {
    size: AtomicU64,
    device: AtomicU64,
}

impl NamespaceCapacity for Device {
    fn bytes(&self, subsystem: usize, nsid: u32) -> Option<u64> {
        (subsystem == 0 && nsid == 1).then(|| self.size.load(Ordering::Relaxed))
    }

    fn measure(&self, subsystem: usize, nsid: u32) {
        if subsystem == 0 && nsid == 1 {
            let device = self.device.load(Ordering::Relaxed);
            self.size.fetch_max(device, Ordering::Relaxed);
        }
    }
}

/// A block device grown under the target (an LV extended) is measured on the next admin
/// command, the host's Keep Alive, and announced; I/O never measures it.
#[test]
fn a_grown_device_is_measured_by_the_next_admin_command() {
    let blocks = NS1_BLOCKS * 512;
    let size = Arc::new(Device {
        size: AtomicU64::new(blocks),
        device: AtomicU64::new(blocks),
    });
    let mut cfg = config();
    cfg.capacity = Some(size.clone());
    let env = env(&cfg);
    env.borrow_mut()
        .backends
        .insert((0, 1), Arc::new(RamBackend::new(4 * blocks)));
    let mut admin = Pair::new(Arc::new(cfg), env, Instant::now());
    let cntlid = admin.bring_up(1);
    let mut io = admin.sibling();
    assert_eq!(io.connect_io(cntlid, 1, 15).status, (0, 0));
    let aec = Sqe::new(0x09, 20, 0).cdw(10, 0x0B).cdw(11, 1 << 8);
    assert_eq!(admin.resp(&aec, &[]).status, (0, 0));
    assert!(admin.command(&Sqe::new(0x0C, 21, 0), &[]).is_empty());

    size.device.store(2 * blocks, Ordering::Relaxed);
    let beyond = Sqe::new(0x02, 5, 1).slba(NS1_BLOCKS + 10).sgl(512, false);
    assert_eq!(
        io.resp(&beyond, &[]).status,
        (0, 0x80),
        "I/O does not measure"
    );
    match admin.command(&Sqe::new(0x18, 22, 0), &[]).as_slice() {
        [Got::Resp(aen), Got::Resp(keep_alive)] => {
            assert_eq!((aen.cid, aen.result), (21, 0x04_00_02));
            assert_eq!(keep_alive.cid, 22);
        }
        other => panic!("{other:?}"),
    }
    let (data, cqe) = io.data_in(&beyond);
    assert_eq!((cqe.status, data.len()), ((0, 0), 512));
}
