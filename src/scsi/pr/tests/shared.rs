//! Reservations shared between gateways: two LUs (two gateways, relative target ports 1 and
//! 2) over one store that behaves like the RADOS object of an RBD LUN — a record under a
//! version, replaced by compare-and-swap, and announcements delivered to every gateway
//! before `announce` returns.

use std::sync::{Arc, Mutex, Weak};

use super::*;
use crate::backend::RamBackend;
use crate::scsi::{finish, testutil, BlockRequest, Plan, Reservations, SharedReservationStore};

/// The shared object: its record and version, the gateways watching it, and whether it
/// fails.
#[derive(Default)]
struct SharedObject {
    record: Mutex<Option<(u64, Vec<u8>)>>,
    watchers: Mutex<Vec<Weak<LogicalUnit>>>,
    failing: std::sync::atomic::AtomicBool,
}

impl SharedReservationStore for Arc<SharedObject> {
    fn load(&self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        Ok(self.record.lock().unwrap().clone())
    }

    fn replace(&self, expected: Option<u64>, version: u64, record: &[u8]) -> std::io::Result<bool> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("cluster unreachable"));
        }
        let mut held = self.record.lock().unwrap();
        if held.as_ref().map(|(v, _)| *v) != expected {
            return Ok(false);
        }
        *held = Some((version, record.to_vec()));
        Ok(true)
    }

    fn announce(&self, message: &[u8]) -> std::io::Result<()> {
        let watchers: Vec<_> = self.watchers.lock().unwrap().clone();
        for lu in watchers.iter().filter_map(Weak::upgrade) {
            lu.reservations_announced(message);
        }
        Ok(())
    }

    fn location(&self) -> String {
        "shared memory".into()
    }
}

/// A gateway with relative target port `port` serving the LU whose state `object` holds.
fn gateway(object: &Arc<SharedObject>, port: u16) -> Arc<LogicalUnit> {
    let reservations = Reservations::shared(port, Box::new(Arc::clone(object)), None).unwrap();
    let mut params = testutil::params(0, 512);
    params.alua.group = port;
    let lu = Arc::new(LogicalUnit::with_reservations(
        params,
        Arc::new(RamBackend::new(64 * 512)),
        reservations,
    ));
    object.watchers.lock().unwrap().push(Arc::downgrade(&lu));
    lu
}

fn two_gateways() -> (Arc<SharedObject>, Arc<LogicalUnit>, Arc<LogicalUnit>) {
    let object = Arc::new(SharedObject::default());
    let (a, b) = (gateway(&object, 1), gateway(&object, 2));
    (object, a, b)
}

/// READ FULL STATUS: (key, relative target port, holder) of each registration.
fn full_status(lu: &LogicalUnit, n: &Nexus) -> Vec<(u64, u16, bool)> {
    let d = prin(lu, n, 3);
    let mut at = 8;
    let mut out = Vec::new();
    while at + 24 <= d.len() {
        let key = u64::from_be_bytes(d[at..at + 8].try_into().unwrap());
        let port = u16::from_be_bytes([d[at + 18], d[at + 19]]);
        out.push((key, port, d[at + 12] & 0x01 != 0));
        at += 24 + be32(&d, at + 20) as usize;
    }
    out
}

#[test]
fn a_reservation_taken_through_one_gateway_binds_the_other() {
    let (_object, a, b) = two_gateways();
    let (x, y) = (nexus("iqn.x", 1), nexus("iqn.y", 2));
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(
        prout(&a, &x, sa::RESERVE, ty::WRITE_EXCLUSIVE, 0xA, 0),
        GOOD
    );
    // Y, through B, reads but does not write.
    assert_eq!(access(&b, &y), (true, false));
    assert_eq!(access(&a, &x), (true, true));
    // B reports what A registered, through A's port.
    assert_eq!(full_status(&b, &y), vec![(0xA, 1, true)]);
    assert_eq!(prout(&b, &y, sa::REGISTER, 0, 0, 0xB), GOOD);
    assert_eq!(keys(&a, &x), (2, vec![0xA, 0xB]));
    assert_eq!(full_status(&a, &x), vec![(0xA, 1, true), (0xB, 2, false)]);
    // Released through A, B's writes go through again.
    assert_eq!(
        prout(&a, &x, sa::RELEASE, ty::WRITE_EXCLUSIVE, 0xA, 0),
        GOOD
    );
    assert_eq!(access(&b, &y), (true, true));
}

/// An initiator that logs in to both gateways has an I_T nexus through each (SPC-4 5.13.1);
/// Linux's mpathpersist registers the key down every path.
#[test]
fn one_initiator_through_two_gateways_is_two_registrants() {
    let (_object, a, b) = two_gateways();
    let x = nexus("iqn.x", 1);
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    // Through B the nexus is not registered yet: REGISTER with key 0 adds it.
    assert_eq!(prout(&b, &x, sa::REGISTER, 0, 0xA, 0xA), CONFLICT);
    assert_eq!(prout(&b, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(full_status(&a, &x), vec![(0xA, 1, false), (0xA, 2, false)]);
    // An all-registrants reservation taken through B admits X through A too.
    assert_eq!(
        prout(&b, &x, sa::RESERVE, ty::WE_ALL_REGISTRANTS, 0xA, 0),
        GOOD
    );
    assert_eq!(access(&a, &x), (true, true));
    assert_eq!(access(&a, &nexus("iqn.z", 3)), (true, false));
    // Unregistered through A, X through B still holds it.
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0xA, 0), GOOD);
    assert_eq!(full_status(&b, &x), vec![(0xA, 2, true)]);
    assert_eq!(access(&a, &x), (true, false));
}

#[test]
fn a_preempted_initiator_hears_of_it_through_its_own_gateway() {
    let (_object, a, b) = two_gateways();
    let (x, y) = (nexus("iqn.x", 1), nexus("iqn.y", 2));
    assert_eq!(prout(&b, &y, sa::REGISTER, 0, 0, 0xB), GOOD);
    assert_eq!(
        prout(&b, &y, sa::RESERVE, ty::EXCLUSIVE_ACCESS, 0xB, 0),
        GOOD
    );
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(access(&a, &x), (false, false));
    // X fences Y off: Y's registration and reservation go.
    assert_eq!(
        prout(&a, &x, sa::PREEMPT, ty::EXCLUSIVE_ACCESS, 0xA, 0xB),
        GOOD
    );
    assert_eq!(
        unit_attention(&b, &y),
        Some(REGISTRATIONS_PREEMPTED),
        "Y through B is told"
    );
    assert_eq!(unit_attention(&a, &y), None, "Y has no nexus through A");
    assert_eq!(unit_attention(&a, &x), None);
    assert_eq!(access(&b, &y), (false, false));
    assert_eq!(access(&a, &x), (true, true));
    assert_eq!(keys(&b, &y), (3, vec![0xA]));
}

/// A change planned on one gateway while another gateway changes the state first is made
/// again on the state the other left: here it then conflicts.
#[test]
fn a_change_that_loses_the_race_is_made_again_on_the_winners_state() {
    let (object, a, b) = two_gateways();
    let (x, y) = (nexus("iqn.x", 1), nexus("iqn.y", 2));
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(prout(&b, &y, sa::REGISTER, 0, 0, 0xB), GOOD);
    let cdb = {
        let mut c = [0u8; 16];
        let prout = prout_cdb(sa::RESERVE, ty::WRITE_EXCLUSIVE);
        c[..prout.len()].copy_from_slice(&prout);
        c
    };
    let data = params(0xA, 0, 0);
    let request = ScsiRequest {
        nexus: &x,
        lun: 0,
        cdb: &cdb,
        data_out: &data,
        expected_transfer_length: 24,
        task_attr: TaskAttr::Simple,
    };
    let (request, data_out_length) = match a.plan(&request) {
        Plan::Io {
            request: request @ BlockRequest::ChangeSharedReservations(..),
            data_out_length,
        } => (request.detached().unwrap(), data_out_length),
        other => panic!("expected a shared change, got {other:?}"),
    };
    // Meanwhile Y takes the reservation through B.
    assert_eq!(
        prout(&b, &y, sa::RESERVE, ty::EXCLUSIVE_ACCESS, 0xB, 0),
        GOOD
    );
    let version = object.record.lock().unwrap().as_ref().unwrap().0;
    let o = finish(&request, a.run(&request), data_out_length);
    assert_eq!(o.status, CONFLICT);
    assert_eq!(
        object.record.lock().unwrap().as_ref().unwrap().0,
        version,
        "nothing written"
    );
    assert_eq!(prin(&a, &x, 1)[21], ty::EXCLUSIVE_ACCESS, "Y's reservation");
}

#[test]
fn a_gateway_started_later_enforces_the_state() {
    let (object, a, _b) = two_gateways();
    let (x, y) = (nexus("iqn.x", 1), nexus("iqn.y", 2));
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(
        prout(&a, &x, sa::RESERVE, ty::EXCLUSIVE_ACCESS, 0xA, 0),
        GOOD
    );
    let c = gateway(&object, 3);
    assert_eq!(access(&c, &y), (false, false));
    assert_eq!(full_status(&c, &y), vec![(0xA, 1, true)]);
    // The shared state persists (PTPL_C) whatever APTPL says.
    assert_eq!(prin(&c, &y, 2)[2] & 0x01, 0x01);
}

#[test]
fn a_store_that_cannot_be_written_leaves_the_state_and_says_not_ready() {
    let (object, a, b) = two_gateways();
    let x = nexus("iqn.x", 1);
    object
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let o = run_as(&a, &x, &prout_cdb(sa::REGISTER, 0), &params(0, 0xA, 0));
    assert_check(&o, NOT_READY, LOGICAL_UNIT_COMMUNICATION_FAILURE);
    assert_eq!(keys(&a, &x), (0, vec![]));
    assert_eq!(keys(&b, &x), (0, vec![]));
    object
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(keys(&b, &x), (1, vec![0xA]));
}

/// An announcement delivered twice (a notify retried) queues its unit attentions once; an
/// older one does not undo a newer state; a damaged one changes nothing.
#[test]
fn announcements_are_taken_once_and_in_order() {
    let (object, a, b) = two_gateways();
    let (x, y) = (nexus("iqn.x", 1), nexus("iqn.y", 2));
    assert_eq!(prout(&b, &y, sa::REGISTER, 0, 0, 0xB), GOOD);
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    let record = object.record.lock().unwrap().clone().unwrap();
    let preempted = vec![PrNotice {
        nexus: y.clone(),
        port: 2,
        condition: REGISTRATIONS_PREEMPTED,
    }];
    let announcement = super::super::record::Announcement {
        version: record.0,
        origin: 1,
        aborts: false,
        notices: preempted,
    };
    let message = super::super::record::encode_announcement(&announcement, &record.1);
    b.reservations_announced(&message);
    assert_eq!(
        unit_attention(&b, &y),
        None,
        "already taken at this version"
    );
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0xA, 0xC), GOOD);
    b.reservations_announced(&message);
    assert_eq!(
        keys(&b, &y).1,
        vec![0xB, 0xC],
        "the older state is not taken"
    );
    b.reservations_announced(b"announcement x\n");
    b.reservations_announced(&message[..message.len() / 2]);
    assert_eq!(keys(&b, &y).1, vec![0xB, 0xC]);
}

/// An NVMe host is one registrant through every gateway (each gateway's controllers are one
/// subsystem's), and hears of a preemption made through another gateway on its own.
#[test]
fn an_nvme_host_is_one_registrant_across_gateways() {
    use super::nvme::{acquire, host, register};
    let (_object, a, b) = two_gateways();
    let (h, g, y) = (host(1), host(2), nexus("iqn.y", 2));
    assert_eq!(register(&a, &h, 0, false, 0, 0xA), GOOD);
    // Acquire Write Exclusive through B, with the key registered through A.
    assert_eq!(acquire(&b, &h, 0, 1, 0xA, 0), GOOD);
    assert_eq!(access(&a, &h), (true, true));
    assert_eq!(access(&b, &y), (true, false));
    let (_, start) = a.nvme_notices([1; 16], None);
    assert_eq!(register(&b, &g, 0, false, 0, 0xB), GOOD);
    assert_eq!(
        acquire(&b, &g, 1, 1, 0xB, 0xA),
        GOOD,
        "G preempts H through B"
    );
    assert_eq!(
        a.nvme_notices([1; 16], Some(start)).0,
        vec![crate::scsi::ReservationNotice::RegistrationPreempted],
        "H hears of it through A"
    );
    assert_eq!(access(&a, &h), (true, false));
}

/// The first gateway of a LU whose state used to be its own alone starts the shared state
/// from its saved record (APTPL on); later gateways, and a shared state already there, are
/// not overwritten.
#[test]
fn the_shared_state_starts_from_a_saved_record() {
    let object = Arc::new(SharedObject::default());
    let x = nexus("iqn.x", 1);
    let saved = {
        let old = gateway(&Arc::new(SharedObject::default()), 1);
        let o = run_as(&old, &x, &prout_cdb(sa::REGISTER, 0), &params(0, 0xA, 0x01));
        assert_good(&o);
        let record = super::super::record::encode(&old.pr.state());
        record
    };
    let first = Reservations::shared(1, Box::new(Arc::clone(&object)), Some(&saved)).unwrap();
    assert_eq!(first.state().regs.len(), 1);
    let empty = super::super::record::encode(&PrState::at_port(2));
    let second = Reservations::shared(2, Box::new(Arc::clone(&object)), Some(&empty)).unwrap();
    assert_eq!(second.state().regs.len(), 1, "the shared state wins");
    let fresh = Arc::new(SharedObject::default());
    let unsaved = Reservations::shared(1, Box::new(Arc::clone(&fresh)), Some(&empty)).unwrap();
    assert!(
        unsaved.state().regs.is_empty(),
        "APTPL off: nothing restored"
    );
}

/// A PREEMPT AND ABORT through one gateway waits, on every other gateway, for the commands in
/// flight there before it is done; the gateway that runs it waits for its own in its gate.
#[test]
fn preempt_and_abort_waits_for_the_other_gateways_commands_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let (_object, a, b) = two_gateways();
    let waits = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    for (lu, count) in [(&a, &waits[0]), (&b, &waits[1])] {
        let count = Arc::clone(count);
        lu.set_in_flight_waiter(Box::new(move || {
            count.fetch_add(1, SeqCst);
        }));
    }
    let (x, y) = (nexus("iqn.x", 1), nexus("iqn.y", 2));
    assert_eq!(prout(&b, &y, sa::REGISTER, 0, 0, 0xB), GOOD);
    assert_eq!(
        prout(&b, &y, sa::RESERVE, ty::WRITE_EXCLUSIVE, 0xB, 0),
        GOOD
    );
    assert_eq!(prout(&a, &x, sa::REGISTER, 0, 0, 0xA), GOOD);
    assert_eq!(
        prout(&a, &x, sa::PREEMPT, ty::WRITE_EXCLUSIVE, 0xA, 0xB),
        GOOD
    );
    assert_eq!(
        waits.each_ref().map(|w| w.load(SeqCst)),
        [0, 0],
        "a plain preempt aborts nothing"
    );
    assert_eq!(unit_attention(&b, &y), Some(REGISTRATIONS_PREEMPTED));
    assert_eq!(prout(&b, &y, sa::REGISTER, 0, 0, 0xC), GOOD);
    assert_eq!(
        prout(
            &a,
            &x,
            sa::PREEMPT_AND_ABORT,
            ty::EXCLUSIVE_ACCESS,
            0xA,
            0xC
        ),
        GOOD
    );
    assert_eq!(waits.each_ref().map(|w| w.load(SeqCst)), [0, 1]);
    assert_eq!(unit_attention(&b, &y), Some(REGISTRATIONS_PREEMPTED));
}
