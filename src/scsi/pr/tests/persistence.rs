//! APTPL: reservations saved through a store and restored by a LU built from the record.

use std::sync::{Arc, Mutex};

use super::*;
use crate::backend::RamBackend;
use crate::scsi::{finish, testutil, BlockRequest, Plan, ReservationStore, Reservations};

/// A store in memory: the records saved, in order; fails while `failing` is set.
#[derive(Default)]
pub(super) struct MemoryStore {
    saved: Mutex<Vec<Vec<u8>>>,
    failing: std::sync::atomic::AtomicBool,
}

impl ReservationStore for Arc<MemoryStore> {
    fn save(&self, record: &[u8]) -> std::io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("disk full"));
        }
        self.saved.lock().unwrap().push(record.to_vec());
        Ok(())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

impl MemoryStore {
    pub(super) fn saves(&self) -> usize {
        self.saved.lock().unwrap().len()
    }

    fn last(&self) -> Option<Vec<u8>> {
        self.saved.lock().unwrap().last().cloned()
    }
}

/// A LU whose reservations persist in `store`, restored from its last record (a restart).
pub(super) fn persistent_lu(store: &Arc<MemoryStore>) -> LogicalUnit {
    let reservations =
        Reservations::persistent(1, Box::new(Arc::clone(store)), store.last().as_deref()).unwrap();
    let backend = Arc::new(RamBackend::new(64 * 512));
    LogicalUnit::with_reservations(testutil::params(0, 512), backend, reservations)
}

/// PERSISTENT RESERVE OUT with the APTPL bit as given.
fn prout_aptpl(
    lu: &LogicalUnit,
    n: &Nexus,
    action: u8,
    rtype: u8,
    rk: u64,
    sark: u64,
) -> ScsiOutcome {
    run_as(lu, n, &prout_cdb(action, rtype), &params(rk, sark, 0x01))
}

/// (PTPL_C, PTPL_A) from REPORT CAPABILITIES.
fn ptpl(lu: &LogicalUnit, n: &Nexus) -> (bool, bool) {
    let caps = prin(lu, n, 2);
    (caps[2] & 0x01 != 0, caps[3] & 0x01 != 0)
}

#[test]
fn without_a_store_aptpl_is_refused_on_register_and_ignored_elsewhere() {
    let lu = ram_lu(64, 512);
    let a = nexus("iqn.a", 1);
    let o = prout_aptpl(&lu, &a, sa::REGISTER, 0, 0, 1);
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_PARAMETER_LIST);
    assert_eq!(ptpl(&lu, &a), (false, false));
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0, 1), GOOD);
    // SPC-4 6.17.3: only the REGISTER service actions read APTPL.
    assert_good(&prout_aptpl(
        &lu,
        &a,
        sa::RESERVE,
        ty::WRITE_EXCLUSIVE,
        1,
        0,
    ));
    assert_good(&prout_aptpl(
        &lu,
        &a,
        sa::RELEASE,
        ty::WRITE_EXCLUSIVE,
        1,
        0,
    ));
}

#[test]
fn registrations_and_the_reservation_survive_a_restart() {
    let store = Arc::new(MemoryStore::default());
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    {
        let lu = persistent_lu(&store);
        assert_eq!(ptpl(&lu, &a), (true, false));
        // Without APTPL nothing is saved.
        assert_eq!(prout(&lu, &b, sa::REGISTER, 0, 0, 0xB), GOOD);
        assert_eq!(store.saves(), 0);
        // Linux's sd_pr_register() sets APTPL on every REGISTER.
        assert_good(&prout_aptpl(&lu, &a, sa::REGISTER, 0, 0, 0xA));
        assert_eq!(ptpl(&lu, &a), (true, true));
        assert_eq!(
            prout(&lu, &a, sa::RESERVE, ty::WE_REGISTRANTS_ONLY, 0xA, 0),
            GOOD
        );
        assert_eq!(store.saves(), 2);
        assert_eq!(access(&lu, &nexus("iqn.c", 3)), (true, false));
    }
    let lu = persistent_lu(&store);
    assert_eq!(ptpl(&lu, &a), (true, true));
    assert_eq!(keys(&lu, &a), (2, vec![0xB, 0xA]));
    let reservation = prin(&lu, &a, 1);
    assert_eq!(
        u64::from_be_bytes(reservation[8..16].try_into().unwrap()),
        0xA
    );
    assert_eq!(reservation[21], ty::WE_REGISTRANTS_ONLY);
    assert_eq!(access(&lu, &nexus("iqn.c", 3)), (true, false));
    assert_eq!(access(&lu, &b), (true, true));
    // The holder's key still works after the restart.
    assert_eq!(
        prout(&lu, &a, sa::RELEASE, ty::WE_REGISTRANTS_ONLY, 0xA, 0),
        GOOD
    );
    assert_eq!(access(&lu, &nexus("iqn.c", 3)), (true, true));
}

#[test]
fn a_register_without_aptpl_ends_persistence() {
    let store = Arc::new(MemoryStore::default());
    let a = nexus("iqn.a", 1);
    {
        let lu = persistent_lu(&store);
        assert_good(&prout_aptpl(&lu, &a, sa::REGISTER, 0, 0, 0xA));
        // APTPL off: saved once more (so the record stops restoring), then never again.
        assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0xA, 0xA2), GOOD);
        assert_eq!(ptpl(&lu, &a), (true, false));
        assert_eq!(
            prout(&lu, &a, sa::RESERVE, ty::EXCLUSIVE_ACCESS, 0xA2, 0),
            GOOD
        );
        assert_eq!(store.saves(), 2);
    }
    let lu = persistent_lu(&store);
    assert_eq!(keys(&lu, &a), (0, vec![]));
    assert_eq!(ptpl(&lu, &a), (true, false));
}

#[test]
fn a_failed_save_answers_logical_unit_communication_failure() {
    let store = Arc::new(MemoryStore::default());
    let lu = persistent_lu(&store);
    let a = nexus("iqn.a", 1);
    assert_good(&prout_aptpl(&lu, &a, sa::REGISTER, 0, 0, 0xA));
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let o = run_as(
        &lu,
        &a,
        &prout_cdb(sa::RESERVE, ty::WRITE_EXCLUSIVE),
        &params(0xA, 0, 0),
    );
    assert_check(&o, NOT_READY, LOGICAL_UNIT_COMMUNICATION_FAILURE);
    assert_eq!(o.asc_ascq(), LOGICAL_UNIT_COMMUNICATION_FAILURE);
    // As in LIO, the change stands in memory; the next good save writes it.
    assert_eq!(prin(&lu, &a, 1)[21], ty::WRITE_EXCLUSIVE);
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_good(&prout_aptpl(&lu, &a, sa::REGISTER, 0, 0xA, 0xA));
    let restarted = persistent_lu(&store);
    assert_eq!(prin(&restarted, &a, 1)[21], ty::WRITE_EXCLUSIVE);
}

/// Two PERSISTENT RESERVE OUTs planned in one order and saved in the other: the record holds
/// both, never the older state over the newer.
#[test]
fn saves_out_of_order_still_leave_the_newest_state() {
    let store = Arc::new(MemoryStore::default());
    let lu = persistent_lu(&store);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    assert_good(&prout_aptpl(&lu, &a, sa::REGISTER, 0, 0, 0xA));
    let plan = |n: &Nexus, cdb: &[u8], data: &[u8]| {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let r = ScsiRequest {
            nexus: n,
            lun: 0,
            cdb: &c,
            data_out: data,
            expected_transfer_length: data.len() as u32,
            task_attr: TaskAttr::Simple,
        };
        match lu.plan(&r) {
            Plan::Io {
                request: request @ BlockRequest::SaveReservations(_),
                data_out_length,
            } => (request.detached().unwrap(), data_out_length),
            other => panic!("expected a save, got {other:?}"),
        }
    };
    let first = plan(&b, &prout_cdb(sa::REGISTER, 0), &params(0, 0xB, 0x01));
    let second = plan(
        &a,
        &prout_cdb(sa::RESERVE, ty::EXCLUSIVE_ACCESS),
        &params(0xA, 0, 0),
    );
    for (request, data_out_length) in [second, first] {
        assert_good(&finish(&request, lu.run(&request), data_out_length));
    }
    let restarted = persistent_lu(&store);
    assert_eq!(keys(&restarted, &a), (2, vec![0xA, 0xB]));
    assert_eq!(prin(&restarted, &a, 1)[21], ty::EXCLUSIVE_ACCESS);
}
