//! NVMe reservation commands on the LU's reservations, beside iSCSI initiators.

use std::sync::Arc;

use super::persistence::{persistent_lu, MemoryStore};
use super::*;
use crate::scsi::{NvmeReservation, NvmeReservationKind as Kind};

pub(super) fn host(last: u8) -> Nexus {
    Nexus::nvme(
        format!("nqn.2014-08.org.nvmexpress:uuid:host{last}"),
        [last; 16],
    )
}

fn nvme(lu: &LogicalUnit, n: &Nexus, kind: Kind, cdw10: u32, data: &[u8]) -> ScsiOutcome {
    let command = NvmeReservation {
        kind,
        cdw10,
        cdw11: 1, // EDS, for Report
    };
    run_as(lu, n, &command.cdb(), data)
}

fn keys_le(first: u64, second: u64) -> Vec<u8> {
    let mut d = first.to_le_bytes().to_vec();
    d.extend_from_slice(&second.to_le_bytes());
    d
}

/// Reservation Register: RREGA, IEKEY, CPTPL as Linux's host sets them (11b) unless told.
pub(super) fn register(
    lu: &LogicalUnit,
    n: &Nexus,
    action: u32,
    iekey: bool,
    crkey: u64,
    nrkey: u64,
) -> u8 {
    let cdw10 = action | u32::from(iekey) << 3;
    let o = nvme(
        lu,
        n,
        Kind::Register,
        cdw10 | 0b11 << 30,
        &keys_le(crkey, nrkey),
    );
    outcome_status(&o)
}

pub(super) fn acquire(
    lu: &LogicalUnit,
    n: &Nexus,
    action: u32,
    nvme_type: u32,
    crkey: u64,
    prkey: u64,
) -> u8 {
    outcome_status(&nvme(
        lu,
        n,
        Kind::Acquire,
        action | nvme_type << 8,
        &keys_le(crkey, prkey),
    ))
}

fn release(lu: &LogicalUnit, n: &Nexus, action: u32, nvme_type: u32, crkey: u64) -> u8 {
    outcome_status(&nvme(
        lu,
        n,
        Kind::Release,
        action | nvme_type << 8,
        &crkey.to_le_bytes(),
    ))
}

/// GOOD, RESERVATION CONFLICT, or INVALID (a CHECK CONDITION with ILLEGAL REQUEST: the NVMe
/// answer is Invalid Field in Command).
const INVALID: u8 = 0xFF;

fn outcome_status(o: &ScsiOutcome) -> u8 {
    if o.status == status::CHECK_CONDITION {
        assert_eq!(o.sense_key(), ILLEGAL_REQUEST, "sense {:02x?}", o.sense);
        return INVALID;
    }
    o.status
}

/// A registrant in a Report: its key, whether it holds the reservation, its Host Identifier.
type Registrant = (u64, bool, [u8; 16]);

/// The extended Reservation Status (NVMe base 2.0): (generation, NVMe type,
/// PTPLS, registrants).
fn report(lu: &LogicalUnit, n: &Nexus) -> (u32, u8, u8, Vec<Registrant>) {
    let o = nvme(lu, n, Kind::Report, 4096 / 4 - 1, &[]);
    assert_good(&o);
    let d = o.data_in.to_vec();
    let count = usize::from(u16::from_le_bytes([d[5], d[6]]));
    assert_eq!(d.len(), 64 + 64 * count);
    let entries = d[64..]
        .chunks(64)
        .map(|e| {
            assert_eq!(&e[0..2], &[0xFF, 0xFF], "dynamic controller model");
            let key = u64::from_le_bytes(e[8..16].try_into().unwrap());
            (key, e[2] & 1 != 0, e[16..32].try_into().unwrap())
        })
        .collect();
    let generation = u32::from_le_bytes(d[0..4].try_into().unwrap());
    (generation, d[4], d[9], entries)
}

const GOOD: u8 = status::GOOD;
const CONFLICT: u8 = status::RESERVATION_CONFLICT;

#[test]
fn register_unregister_and_replace_follow_the_nvme_rules() {
    let lu = ram_lu(8, 512);
    let h = host(1);
    assert_eq!(
        register(&lu, &h, 0, false, 0, 0),
        INVALID,
        "key 0 is no key"
    );
    assert_eq!(register(&lu, &h, 0, false, 0, 0xA), GOOD);
    // Registering again succeeds only with the key it holds (NVMe base 2.0 §8.19).
    assert_eq!(register(&lu, &h, 0, false, 0, 0xA), GOOD);
    assert_eq!(register(&lu, &h, 0, false, 0, 0xB), CONFLICT);
    assert_eq!(
        report(&lu, &h).0,
        1,
        "a repeated registration changes nothing"
    );
    // Replace needs the current key unless IEKEY.
    assert_eq!(register(&lu, &h, 2, false, 0xB, 0xC), CONFLICT);
    assert_eq!(register(&lu, &h, 2, false, 0xA, 0xC), GOOD);
    assert_eq!(register(&lu, &h, 2, true, 0, 0xD), GOOD);
    let (generation, _, _, entries) = report(&lu, &h);
    assert_eq!((generation, entries), (3, vec![(0xD, false, [1; 16])]));
    // Unregister: the key, or IEKEY; an unregistered host conflicts.
    assert_eq!(register(&lu, &h, 1, false, 0xA, 0), CONFLICT);
    assert_eq!(register(&lu, &h, 1, true, 0, 0), GOOD);
    assert_eq!(register(&lu, &h, 1, true, 0, 0), CONFLICT);
    assert_eq!(
        register(&lu, &h, 2, true, 0, 0xE),
        CONFLICT,
        "replace needs a registration"
    );
    assert_eq!(
        register(&lu, &h, 3, false, 0, 0xE),
        INVALID,
        "no such action"
    );
    assert!(report(&lu, &h).3.is_empty());
}

/// Linux's IOC_PR_REGISTER with a new key of 0 unregisters; its NVMe host sends that as
/// Replace with NRKEY 0 (drivers/nvme/host/pr.c nvme_pr_register).
#[test]
fn replace_with_key_zero_unregisters_as_linux_means_it() {
    let lu = ram_lu(8, 512);
    let h = host(1);
    assert_eq!(register(&lu, &h, 0, false, 0, 0xA), GOOD);
    assert_eq!(acquire(&lu, &h, 0, 3, 0xA, 0), GOOD);
    assert_eq!(register(&lu, &h, 2, false, 0xA, 0), GOOD);
    let (_, rtype, _, entries) = report(&lu, &h);
    assert!(entries.is_empty());
    assert_eq!(
        rtype, 0,
        "a registrants-only reservation goes with its holder"
    );
}

#[test]
fn acquire_preempt_release_and_clear() {
    let lu = ram_lu(8, 512);
    let (a, b) = (host(1), host(2));
    register(&lu, &a, 0, false, 0, 0xA);
    register(&lu, &b, 0, false, 0, 0xB);
    assert_eq!(acquire(&lu, &a, 0, 1, 0xB, 0), CONFLICT, "wrong key");
    assert_eq!(acquire(&lu, &a, 0, 1, 0xA, 0), GOOD);
    assert_eq!(acquire(&lu, &a, 0, 1, 0xA, 0), GOOD, "again, same type");
    assert_eq!(acquire(&lu, &a, 0, 2, 0xA, 0), CONFLICT, "another type");
    assert_eq!(
        acquire(&lu, &b, 0, 1, 0xB, 0),
        CONFLICT,
        "held by another host"
    );
    assert_eq!(access(&lu, &b), (true, false), "Write Exclusive");
    assert_eq!(access(&lu, &a), (true, true));
    // Releasing another type than the reservation's is an invalid field; a host that does
    // not hold it releases nothing, successfully.
    assert_eq!(release(&lu, &a, 0, 2, 0xA), INVALID);
    assert_eq!(release(&lu, &b, 0, 1, 0xB), GOOD);
    assert_eq!(report(&lu, &a).1, 1);
    // B preempts A: A's registration goes, B holds Exclusive Access.
    assert_eq!(acquire(&lu, &b, 1, 2, 0xB, 0xA), GOOD);
    let (_, rtype, _, entries) = report(&lu, &b);
    assert_eq!((rtype, entries), (2, vec![(0xB, true, [2; 16])]));
    assert_eq!(access(&lu, &a), (false, false), "Exclusive Access");
    assert_eq!(release(&lu, &b, 0, 2, 0xB), GOOD);
    assert_eq!(access(&lu, &a), (true, true));
    register(&lu, &a, 0, false, 0, 0xA);
    assert_eq!(release(&lu, &a, 1, 0, 0xA), GOOD, "clear");
    assert!(report(&lu, &a).3.is_empty());
    assert_eq!(acquire(&lu, &a, 0, 7, 0xA, 0), INVALID, "no type 7");
}

/// One reservation state serves both fabrics: an NVMe host's reservation fences iSCSI
/// initiators, and each side's reports show the other's registrants.
#[test]
fn nvme_and_iscsi_registrants_share_the_reservation() {
    let lu = ram_lu(8, 512);
    let (h, i) = (host(1), nexus("iqn.2026-12.test:i", 1));
    assert_eq!(register(&lu, &h, 0, false, 0, 0xA), GOOD);
    assert_eq!(prout(&lu, &i, sa::REGISTER, 0, 0, 0xB), GOOD);
    assert_eq!(acquire(&lu, &h, 0, 1, 0xA, 0), GOOD);
    assert_eq!(
        access(&lu, &i),
        (true, false),
        "the NVMe host's Write Exclusive"
    );
    let (_, _, _, entries) = report(&lu, &h);
    assert_eq!(entries, vec![(0xA, true, [1; 16]), (0xB, false, [0; 16])]);
    assert_eq!(keys(&lu, &i).1, vec![0xA, 0xB]);
    // READ FULL STATUS names the host by its NQN, as an iSCSI device name TransportID.
    let full = prin(&lu, &i, 3);
    let name = b"nqn.2014-08.org.nvmexpress:uuid:host1\0";
    let tid = &full[8 + 24..];
    assert_eq!(tid[0], 0x05, "format 00b, iSCSI");
    assert_eq!(&tid[4..4 + name.len()], name);
    // The iSCSI initiator preempts the NVMe host: the host's writes now conflict.
    assert_eq!(
        prout(&lu, &i, sa::PREEMPT, ty::EXCLUSIVE_ACCESS, 0xB, 0xA),
        GOOD
    );
    assert_eq!(access(&lu, &h), (false, false));
    // Clearing from NVMe tells the iSCSI registrant by a unit attention.
    assert_eq!(register(&lu, &h, 0, false, 0, 0xC), GOOD);
    assert_eq!(release(&lu, &h, 1, 0, 0xC), GOOD);
    assert_eq!(unit_attention(&lu, &i), Some(RESERVATIONS_PREEMPTED));
    assert_eq!(access(&lu, &h), (true, true));
}

/// Every controller of a host is one registrant (its Host Identifier); another Host
/// Identifier under the same NQN is another host.
#[test]
fn a_host_is_its_host_identifier() {
    let lu = ram_lu(8, 512);
    let first = host(1);
    let same = Nexus::nvme(first.initiator_name.clone(), [1; 16]);
    let other = Nexus::nvme(first.initiator_name.clone(), [9; 16]);
    register(&lu, &first, 0, false, 0, 0xA);
    assert_eq!(acquire(&lu, &same, 0, 2, 0xA, 0), GOOD);
    assert_eq!(access(&lu, &first), (true, true));
    assert_eq!(access(&lu, &other), (false, false));
}

#[test]
fn an_iscsi_initiator_cannot_send_the_nvme_carrier() {
    let lu = ram_lu(8, 512);
    let i = nexus("iqn.2026-12.test:i", 1);
    let o = nvme(&lu, &i, Kind::Register, 0, &keys_le(0, 0xA));
    assert_check(&o, ILLEGAL_REQUEST, INVALID_COMMAND_OPCODE);
}

#[test]
fn the_report_is_cut_to_the_length_asked() {
    let lu = ram_lu(8, 512);
    let h = host(1);
    register(&lu, &h, 0, false, 0, 0xA);
    let o = nvme(&lu, &h, Kind::Report, 64 / 4 - 1 + 2, &[]);
    assert_eq!(o.data_in.len(), 72);
    assert_eq!(&o.data_in.to_vec()[64..72], &[0xFF, 0xFF, 0, 0, 0, 0, 0, 0]);
}

/// CPTPL 11b, which Linux's host sets on every Register, makes the registration persist
/// when the LU has a store; without one it is let pass (as Linux's nvmet does).
#[test]
fn persistence_follows_cptpl_where_the_lu_can_persist() {
    let lu = ram_lu(8, 512);
    let h = host(1);
    assert_eq!(register(&lu, &h, 0, false, 0, 0xA), GOOD);
    assert_eq!(report(&lu, &h).2, 0, "PTPLS: not persisted");

    let store = Arc::new(MemoryStore::default());
    let lu = persistent_lu(&store);
    assert_eq!(register(&lu, &h, 0, false, 0, 0xA), GOOD);
    assert_eq!(acquire(&lu, &h, 0, 1, 0xA, 0), GOOD);
    assert_eq!(report(&lu, &h).2, 1, "PTPLS");
    assert_eq!(store.saves(), 2);
    let restarted = persistent_lu(&store);
    let (_, rtype, ptpls, entries) = report(&restarted, &h);
    assert_eq!((rtype, ptpls, entries), (1, 1, vec![(0xA, true, [1; 16])]));
    // CPTPL 10b clears it: saved once more, then nothing survives a restart.
    let o = nvme(
        &restarted,
        &h,
        Kind::Register,
        2 | 0b10 << 30,
        &keys_le(0xA, 0xB),
    );
    assert_good(&o);
    assert_eq!(store.saves(), 3);
    assert!(report(&persistent_lu(&store), &h).3.is_empty());
}

/// What an NVMe host would be told by a unit attention is kept for its controllers to
/// collect: released, preempted, cleared, each for the hosts SPC-4 names; never for the host
/// that made the change, and never for an iSCSI initiator (which gets its unit attention).
#[test]
fn nvme_hosts_get_notices_where_iscsi_initiators_get_unit_attentions() {
    use crate::scsi::ReservationNotice::*;
    let lu = ram_lu(8, 512);
    let (a, b, i) = (host(1), host(2), nexus("iqn.2026-12.test:i", 1));
    let (none, start) = lu.nvme_notices([2; 16], None);
    assert!(none.is_empty());
    register(&lu, &a, 0, false, 0, 0xA);
    register(&lu, &b, 0, false, 0, 0xB);
    assert_eq!(prout(&lu, &i, sa::REGISTER, 0, 0, 0xC), GOOD);
    // A takes and releases a registrants-only reservation: B and the initiator are told.
    assert_eq!(acquire(&lu, &a, 0, 3, 0xA, 0), GOOD);
    assert_eq!(release(&lu, &a, 0, 3, 0xA), GOOD);
    assert_eq!(unit_attention(&lu, &i), Some(RESERVATIONS_RELEASED));
    let (told, mark) = lu.nvme_notices([2; 16], Some(start));
    assert_eq!(told, vec![ReservationReleased]);
    assert!(
        lu.nvme_notices([1; 16], Some(start)).0.is_empty(),
        "not the releaser"
    );
    // A preempts B's registration; then the initiator clears everything.
    assert_eq!(acquire(&lu, &a, 1, 1, 0xA, 0xB), GOOD);
    assert_eq!(prout(&lu, &i, sa::CLEAR, 0, 0xC, 0), GOOD);
    assert_eq!(
        lu.nvme_notices([2; 16], Some(mark)).0,
        vec![RegistrationPreempted]
    );
    assert_eq!(
        lu.nvme_notices([1; 16], Some(mark)).0,
        vec![ReservationPreempted]
    );
}

/// Preempt and Abort, over either fabric, runs alone on its LU (the executor's abort); a plain
/// preempt does not.
#[test]
fn preempt_and_abort_is_ordered_alone() {
    use crate::scsi::runs_exclusively;
    let acquire = |action: u32| {
        NvmeReservation {
            kind: Kind::Acquire,
            cdw10: action | 1 << 8,
            cdw11: 0,
        }
        .cdb()
    };
    assert!(runs_exclusively(&acquire(2)));
    assert!(!runs_exclusively(&acquire(1)));
    assert!(runs_exclusively(&prout_cdb(sa::PREEMPT_AND_ABORT, 1)));
    assert!(!runs_exclusively(&prout_cdb(sa::PREEMPT, 1)));
}
