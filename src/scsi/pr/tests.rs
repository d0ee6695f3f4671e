use super::super::sense::*;
use super::super::testutil::*;
use super::super::{status, LogicalUnit, ScsiOutcome, ScsiRequest, ScsiTarget, TaskAttr};
use super::*;

fn nexus(name: &str, last: u8) -> Nexus {
    Nexus::iscsi(name, [0x80, 0, 0, 0, 0, last])
}

fn run_as(lu: &LogicalUnit, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> ScsiOutcome {
    let mut c = [0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    lu.execute(&ScsiRequest {
        nexus: n,
        lun: 0,
        cdb: &c,
        data_out,
        expected_transfer_length: data_out.len() as u32,
        task_attr: TaskAttr::Simple,
    })
}

fn prout_cdb(action: u8, rtype: u8) -> Vec<u8> {
    vec![0x5F, action, rtype, 0, 0, 0, 0, 0, 24, 0]
}

fn params(rk: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = rk.to_be_bytes().to_vec();
    p.extend_from_slice(&sark.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    p
}

fn prout(lu: &LogicalUnit, n: &Nexus, action: u8, rtype: u8, rk: u64, sark: u64) -> u8 {
    let o = run_as(lu, n, &prout_cdb(action, rtype), &params(rk, sark, 0));
    assert!(
        o.status != status::CHECK_CONDITION,
        "sense {:02x?}",
        o.sense
    );
    o.status
}

fn prin(lu: &LogicalUnit, n: &Nexus, action: u8) -> Vec<u8> {
    let o = run_as(lu, n, &[0x5E, action, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_good(&o);
    o.data_in.to_vec()
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
}

fn keys(lu: &LogicalUnit, n: &Nexus) -> (u32, Vec<u64>) {
    let d = prin(lu, n, 0);
    let keys = d[8..]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    assert_eq!(be32(&d, 4) as usize, d.len() - 8);
    (be32(&d, 0), keys)
}

/// (read allowed, write allowed) for `n`.
fn access(lu: &LogicalUnit, n: &Nexus) -> (bool, bool) {
    let r = run_as(lu, n, &read16(0, 1), &[]).status;
    let w = run_as(lu, n, &write16(0, 1, false), &[0u8; 512]).status;
    for s in [r, w] {
        assert!(s == status::GOOD || s == status::RESERVATION_CONFLICT);
    }
    (r == status::GOOD, w == status::GOOD)
}

/// The unit attention `n`'s next command (TEST UNIT READY) reports, if any; taking it clears it.
fn unit_attention(lu: &LogicalUnit, n: &Nexus) -> Option<(u8, u8)> {
    let o = run_as(lu, n, &[0, 0, 0, 0, 0, 0], &[]);
    if o.status == status::CHECK_CONDITION {
        assert_eq!(o.sense_key(), UNIT_ATTENTION, "sense {:02x?}", o.sense);
        return Some(o.asc_ascq());
    }
    assert!(
        o.status == status::GOOD || o.status == status::RESERVATION_CONFLICT,
        "status {:#x}",
        o.status
    );
    None
}

const GOOD: u8 = status::GOOD;
const CONFLICT: u8 = status::RESERVATION_CONFLICT;

#[test]
fn register_unregister_and_generation() {
    let lu = ram_lu(64, 512);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    assert_eq!(keys(&lu, &a), (0, vec![]));
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0, 0x11), GOOD);
    assert_eq!(prout(&lu, &b, sa::REGISTER_AND_IGNORE, 0, 0, 0x22), GOOD);
    assert_eq!(keys(&lu, &a), (2, vec![0x11, 0x22]));
    // Re-register with the wrong key conflicts; with the right key changes it.
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0x99, 0x33), CONFLICT);
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0, 0x33), CONFLICT);
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0x11, 0x33), GOOD);
    assert_eq!(keys(&lu, &b), (3, vec![0x33, 0x22]));
    // Unregister; unregistering an unregistered nexus is a no-op.
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0x33, 0), GOOD);
    assert_eq!(prout(&lu, &a, sa::REGISTER_AND_IGNORE, 0, 0, 0), GOOD);
    assert_eq!(keys(&lu, &b), (4, vec![0x22]));
    // Truncated READ KEYS keeps the additional length.
    let o = run_as(&lu, &a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[]);
    assert_eq!(o.data_in.len(), 8);
    assert_eq!(be32(&o.data_in.to_vec(), 4), 8);
}

#[test]
fn parameter_list_validation() {
    let lu = ram_lu(64, 512);
    let a = nexus("iqn.a", 1);
    let mut cdb = prout_cdb(sa::REGISTER, 0);
    cdb[8] = 20;
    let o = run_as(&lu, &a, &cdb, &params(0, 1, 0)[..20]);
    assert_check(&o, ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR);
    let o = run_as(&lu, &a, &prout_cdb(sa::REGISTER, 0), &params(0, 1, 0)[..10]);
    assert_check(&o, ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR);
    for flags in [0x01, 0x04, 0x08] {
        let o = run_as(&lu, &a, &prout_cdb(sa::REGISTER, 0), &params(0, 1, flags));
        assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_PARAMETER_LIST);
    }
    assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0, 1), GOOD);
    // Bad type, bad scope, REGISTER AND MOVE, unknown PRIN service action.
    for cdb in [
        prout_cdb(sa::RESERVE, 2),
        prout_cdb(sa::RESERVE, 0x11),
        prout_cdb(7, 1),
    ] {
        let o = run_as(&lu, &a, &cdb, &params(1, 0, 0));
        assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
    }
    for action in 4..0x20 {
        let o = run_as(&lu, &a, &[0x5E, action, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
        assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
    }
}

#[test]
fn access_per_reservation_type() {
    // (type, registered other: read, write; unregistered other: read, write)
    let table = [
        (ty::WRITE_EXCLUSIVE, (true, false), (true, false)),
        (ty::EXCLUSIVE_ACCESS, (false, false), (false, false)),
        (ty::WE_REGISTRANTS_ONLY, (true, true), (true, false)),
        (ty::EA_REGISTRANTS_ONLY, (true, true), (false, false)),
        (ty::WE_ALL_REGISTRANTS, (true, true), (true, false)),
        (ty::EA_ALL_REGISTRANTS, (true, true), (false, false)),
    ];
    for (rtype, reg, unreg) in table {
        let lu = ram_lu(64, 512);
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0, 0xA), GOOD);
        assert_eq!(prout(&lu, &b, sa::REGISTER, 0, 0, 0xB), GOOD);
        assert_eq!(prout(&lu, &a, sa::RESERVE, rtype, 0xA, 0), GOOD);
        // Reserving again with the same type is fine; another type conflicts.
        assert_eq!(prout(&lu, &a, sa::RESERVE, rtype, 0xA, 0), GOOD);
        let other = if rtype == 1 { 3 } else { 1 };
        assert_eq!(prout(&lu, &a, sa::RESERVE, other, 0xA, 0), CONFLICT);
        let rr = prin(&lu, &b, 1);
        assert_eq!(be32(&rr, 4), 16);
        let key = if all_registrants(rtype) { 0 } else { 0xA };
        assert_eq!(u64::from_be_bytes(rr[8..16].try_into().unwrap()), key);
        assert_eq!(rr[21], rtype);
        assert_eq!(access(&lu, &a), (true, true), "type {rtype}");
        assert_eq!(access(&lu, &b), reg, "type {rtype} registered");
        // Always-allowed commands.
        for cdb in [
            &[0x12u8, 0, 0, 0, 36, 0][..],
            &[0x00],
            &[0x25],
            &[0x03, 0, 0, 0, 18],
        ] {
            assert_eq!(run_as(&lu, &b, cdb, &[]).status, GOOD);
        }
        assert_eq!(prout(&lu, &b, sa::REGISTER, 0, 0xB, 0), GOOD);
        assert_eq!(access(&lu, &b), unreg, "type {rtype} unregistered");
        // Mode sense follows reads, mode select / sync cache / unmap follow writes.
        let ms = run_as(&lu, &b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).status;
        assert_eq!(ms == GOOD, unreg.0);
        let sc = run_as(&lu, &b, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).status;
        assert_eq!(sc, CONFLICT);
        // A release by a non-holder is a no-op; by the holder with the wrong type fails.
        assert_eq!(prout(&lu, &b, sa::REGISTER, 0, 0, 0xB), GOOD);
        if !all_registrants(rtype) {
            assert_eq!(prout(&lu, &b, sa::RELEASE, rtype, 0xB, 0), GOOD);
            assert_eq!(prin(&lu, &a, 1)[21], rtype);
        }
        let o = run_as(&lu, &a, &prout_cdb(sa::RELEASE, other), &params(0xA, 0, 0));
        assert_check(&o, ILLEGAL_REQUEST, INVALID_RELEASE_OF_PR);
        assert_eq!(prout(&lu, &a, sa::RELEASE, rtype, 0xA, 0), GOOD);
        assert_eq!(be32(&prin(&lu, &a, 1), 4), 0);
        // b shared a registrants-only or all-registrants reservation: it is told it went.
        let told =
            (registrants_only(rtype) || all_registrants(rtype)).then_some(RESERVATIONS_RELEASED);
        assert_eq!(unit_attention(&lu, &b), told, "type {rtype}");
        assert_eq!(access(&lu, &b), (true, true));
    }
}

#[test]
fn unregistering_the_holder_releases_unless_all_registrants() {
    for (rtype, kept) in [(ty::WRITE_EXCLUSIVE, false), (ty::EA_ALL_REGISTRANTS, true)] {
        let lu = ram_lu(64, 512);
        let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
        prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
        prout(&lu, &b, sa::REGISTER, 0, 0, 0xB);
        assert_eq!(prout(&lu, &a, sa::RESERVE, rtype, 0xA, 0), GOOD);
        assert_eq!(prout(&lu, &a, sa::REGISTER, 0, 0xA, 0), GOOD);
        assert_eq!(be32(&prin(&lu, &b, 1), 4) == 16, kept);
        if kept {
            assert_eq!(prout(&lu, &b, sa::REGISTER, 0, 0xB, 0), GOOD);
            assert_eq!(be32(&prin(&lu, &b, 1), 4), 0);
        }
    }
}

#[test]
fn preempt_and_clear() {
    let lu = ram_lu(64, 512);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
    prout(&lu, &b, sa::REGISTER, 0, 0, 0xB);
    // No reservation: PREEMPT removes the registration, bumps the generation.
    let (gen, _) = keys(&lu, &a);
    assert_eq!(prout(&lu, &b, sa::PREEMPT, 3, 0xB, 0xA), GOOD);
    assert_eq!(keys(&lu, &b), (gen + 1, vec![0xB]));
    assert_eq!(unit_attention(&lu, &a), Some(REGISTRATIONS_PREEMPTED));
    // Unknown key: conflict; unregistered preemptor: conflict.
    assert_eq!(prout(&lu, &b, sa::PREEMPT, 3, 0xB, 0x77), CONFLICT);
    assert_eq!(prout(&lu, &a, sa::PREEMPT, 3, 0xA, 0xB), CONFLICT);
    // Preempting the holder moves the reservation, with the new type.
    prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
    assert_eq!(
        prout(&lu, &a, sa::RESERVE, ty::EXCLUSIVE_ACCESS, 0xA, 0),
        GOOD
    );
    assert_eq!(access(&lu, &b), (false, false));
    assert_eq!(
        prout(
            &lu,
            &b,
            sa::PREEMPT_AND_ABORT,
            ty::WRITE_EXCLUSIVE,
            0xB,
            0xA
        ),
        GOOD
    );
    let rr = prin(&lu, &b, 1);
    assert_eq!(u64::from_be_bytes(rr[8..16].try_into().unwrap()), 0xB);
    assert_eq!(rr[21], ty::WRITE_EXCLUSIVE);
    assert_eq!(keys(&lu, &b).1, vec![0xB]);
    assert_eq!(unit_attention(&lu, &a), Some(REGISTRATIONS_PREEMPTED));
    assert_eq!(access(&lu, &a), (true, false));
    // CLEAR needs a registered key; it drops everything.
    assert_eq!(prout(&lu, &a, sa::CLEAR, 0, 0xA, 0), CONFLICT);
    let (gen, _) = keys(&lu, &a);
    assert_eq!(prout(&lu, &b, sa::CLEAR, 0, 0xB, 0), GOOD);
    assert_eq!(keys(&lu, &a), (gen + 1, vec![]));
    assert_eq!(be32(&prin(&lu, &a, 1), 4), 0);
    assert_eq!(access(&lu, &a), (true, true));
}

#[test]
fn report_capabilities_and_full_status() {
    let lu = ram_lu(64, 512);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 0xEF));
    let caps = prin(&lu, &a, 2);
    assert_eq!(caps.len(), 8);
    assert_eq!(u16::from_be_bytes([caps[0], caps[1]]), 8);
    assert_eq!(caps[2] & 0x0D, 0); // SIP_C, ATP_C, PTPL_C
    assert_eq!(u16::from_be_bytes([caps[4], caps[5]]), 0xEA01);
    prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
    prout(&lu, &b, sa::REGISTER, 0, 0, 0xB);
    prout(&lu, &b, sa::RESERVE, ty::WE_REGISTRANTS_ONLY, 0xB, 0);
    let d = prin(&lu, &a, 3);
    assert_eq!(be32(&d, 0), 2);
    assert_eq!(be32(&d, 4) as usize, d.len() - 8);
    let mut at = 8;
    let mut seen = Vec::new();
    while at < d.len() {
        let key = u64::from_be_bytes(d[at..at + 8].try_into().unwrap());
        let holder = d[at + 12] & 1 == 1;
        let tid_len = be32(&d, at + 20) as usize;
        let tid = &d[at + 24..at + 24 + tid_len];
        assert_eq!(tid[0], 0x45);
        assert_eq!(u16::from_be_bytes([tid[2], tid[3]]) as usize, tid_len - 4);
        assert_eq!(tid_len % 4, 0);
        let name: Vec<u8> = tid[4..].iter().copied().take_while(|&c| c != 0).collect();
        seen.push((key, holder, d[at + 13], String::from_utf8(name).unwrap()));
        at += 24 + tid_len;
    }
    assert_eq!(
        seen,
        vec![
            (0xA, false, 0, "iqn.a,i,0x800000000001".to_string()),
            (0xB, true, 5, "iqn.b,i,0x8000000000ef".to_string()),
        ]
    );
}

#[test]
fn reserve6_conflicts_and_is_released_on_nexus_loss() {
    let lu = ram_lu(64, 512);
    let t = ScsiTarget::new(vec![lu.clone()]);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    assert_eq!(run_as(&lu, &a, &[0x16], &[]).status, GOOD);
    assert_eq!(run_as(&lu, &a, &[0x16], &[]).status, GOOD);
    assert_eq!(run_as(&lu, &b, &[0x16], &[]).status, CONFLICT);
    assert_eq!(run_as(&lu, &b, &[0x17], &[]).status, GOOD); // no-op
    assert_eq!(access(&lu, &b), (false, false));
    assert_eq!(
        run_as(&lu, &b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).status,
        CONFLICT
    );
    assert_eq!(run_as(&lu, &b, &[0x12, 0, 0, 0, 36, 0], &[]).status, GOOD);
    assert_eq!(
        run_as(&lu, &a, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).status,
        GOOD
    );
    assert_eq!(access(&lu, &a), (true, true));
    t.release_nexus(&b);
    assert_eq!(access(&lu, &b), (false, false));
    t.release_nexus(&a);
    assert_eq!(access(&lu, &b), (true, true));
    assert_eq!(run_as(&lu, &b, &[0x16], &[]).status, GOOD);
    assert_eq!(access(&lu, &a), (false, false));
    // Every nexus hears of a reset once, on its next command.
    let both_told_of_the_reset = || {
        for n in [&a, &b] {
            assert_eq!(
                unit_attention(&lu, n),
                Some(BUS_DEVICE_RESET_FUNCTION_OCCURRED)
            );
            assert_eq!(unit_attention(&lu, n), None);
        }
    };
    lu.reset();
    both_told_of_the_reset();
    assert_eq!(access(&lu, &a), (true, true));
    assert_eq!(run_as(&lu, &a, &[0x16], &[]).status, GOOD);
    assert_eq!(run_as(&lu, &a, &[0x17], &[]).status, GOOD);
    assert_eq!(run_as(&lu, &b, &[0x16], &[]).status, GOOD);
    lu.reset();
    both_told_of_the_reset();
    assert_eq!(access(&lu, &a), (true, true));
    // Persistent registrations survive nexus loss; RESERVE(6) conflicts under a PR.
    prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
    prout(&lu, &a, sa::RESERVE, ty::WRITE_EXCLUSIVE, 0xA, 0);
    t.release_nexus(&a);
    assert_eq!(keys(&lu, &b).1, vec![0xA]);
    assert_eq!(run_as(&lu, &b, &[0x16], &[]).status, CONFLICT);
    assert_eq!(run_as(&lu, &a, &[0x16], &[]).status, CONFLICT);
}

/// SPC-4 5.13.11.4: PREEMPT tells each nexus whose registration it removed, and when the
/// preempted holder's type changes, the registrants that stay; the preempting nexus and
/// nexuses without a registration hear nothing.
#[test]
fn preempt_tells_the_preempted() {
    let lu = ram_lu(64, 512);
    let (a, b, c, d) = (
        nexus("iqn.a", 1),
        nexus("iqn.b", 2),
        nexus("iqn.c", 3),
        nexus("iqn.d", 4),
    );
    assert_eq!(unit_attention(&lu, &d), None);
    for (n, key) in [(&a, 0xA), (&b, 0xB), (&c, 0xC)] {
        prout(&lu, n, sa::REGISTER, 0, 0, key);
    }
    prout(&lu, &b, sa::RESERVE, ty::WE_REGISTRANTS_ONLY, 0xB, 0);
    // The holder preempted, same type: only the holder is told.
    prout(&lu, &a, sa::PREEMPT, ty::WE_REGISTRANTS_ONLY, 0xA, 0xB);
    assert_eq!(unit_attention(&lu, &b), Some(REGISTRATIONS_PREEMPTED));
    assert_eq!(unit_attention(&lu, &b), None);
    for n in [&a, &c, &d] {
        assert_eq!(unit_attention(&lu, n), None);
    }
    // The holder (now a) preempted by c with another type: a loses its registration, and b,
    // registered again, hears that the reservation it shared was released.
    prout(&lu, &b, sa::REGISTER, 0, 0, 0xB);
    prout(&lu, &c, sa::PREEMPT, ty::EXCLUSIVE_ACCESS, 0xC, 0xA);
    assert_eq!(unit_attention(&lu, &a), Some(REGISTRATIONS_PREEMPTED));
    assert_eq!(unit_attention(&lu, &b), Some(RESERVATIONS_RELEASED));
    assert_eq!(unit_attention(&lu, &c), None);
    assert_eq!(unit_attention(&lu, &d), None);
    // Without a reservation PREEMPT only removes registrations.
    prout(&lu, &c, sa::RELEASE, ty::EXCLUSIVE_ACCESS, 0xC, 0);
    prout(&lu, &c, sa::PREEMPT, ty::EXCLUSIVE_ACCESS, 0xC, 0xB);
    assert_eq!(unit_attention(&lu, &b), Some(REGISTRATIONS_PREEMPTED));
    assert_eq!(keys(&lu, &c).1, vec![0xC]);
}

/// A preempted nexus whose session had ended hears of it when it comes back: registrations
/// outlive sessions, and so does what happened to them.
#[test]
fn a_preempted_nexus_hears_of_it_after_coming_back() {
    let lu = ram_lu(64, 512);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
    prout(&lu, &b, sa::REGISTER, 0, 0, 0xB);
    lu.release_nexus(&b);
    prout(&lu, &a, sa::PREEMPT, ty::WRITE_EXCLUSIVE, 0xA, 0xB);
    assert_eq!(unit_attention(&lu, &b), Some(REGISTRATIONS_PREEMPTED));
    assert_eq!(unit_attention(&lu, &a), None);
}

/// CLEAR tells every other registrant RESERVATIONS PREEMPTED; RELEASE of a reservation the
/// registrants shared tells them RESERVATIONS RELEASED, and so does its holder unregistering;
/// releasing an exclusive reservation tells nobody.
#[test]
fn clear_and_release_tell_the_registrants() {
    let lu = ram_lu(64, 512);
    let (a, b, d) = (nexus("iqn.a", 1), nexus("iqn.b", 2), nexus("iqn.d", 4));
    assert_eq!(unit_attention(&lu, &d), None);
    let register_both = || {
        prout(&lu, &a, sa::REGISTER_AND_IGNORE, 0, 0, 0xA);
        prout(&lu, &b, sa::REGISTER_AND_IGNORE, 0, 0, 0xB);
    };
    register_both();
    prout(&lu, &a, sa::RESERVE, ty::WRITE_EXCLUSIVE, 0xA, 0);
    prout(&lu, &a, sa::CLEAR, 0, 0xA, 0);
    assert_eq!(unit_attention(&lu, &b), Some(RESERVATIONS_PREEMPTED));
    for n in [&a, &b, &d] {
        assert_eq!(unit_attention(&lu, n), None);
    }
    for (rtype, told) in [
        (ty::WRITE_EXCLUSIVE, None),
        (ty::EXCLUSIVE_ACCESS, None),
        (ty::WE_REGISTRANTS_ONLY, Some(RESERVATIONS_RELEASED)),
        (ty::EA_REGISTRANTS_ONLY, Some(RESERVATIONS_RELEASED)),
        (ty::WE_ALL_REGISTRANTS, Some(RESERVATIONS_RELEASED)),
        (ty::EA_ALL_REGISTRANTS, Some(RESERVATIONS_RELEASED)),
    ] {
        register_both();
        prout(&lu, &a, sa::RESERVE, rtype, 0xA, 0);
        prout(&lu, &a, sa::RELEASE, rtype, 0xA, 0);
        assert_eq!(unit_attention(&lu, &b), told, "type {rtype}");
        assert_eq!(unit_attention(&lu, &a), None);
        assert_eq!(unit_attention(&lu, &d), None);
    }
    // The holder of a registrants-only reservation unregisters: the reservation goes.
    prout(&lu, &a, sa::RESERVE, ty::EA_REGISTRANTS_ONLY, 0xA, 0);
    prout(&lu, &a, sa::REGISTER, 0, 0xA, 0);
    assert_eq!(unit_attention(&lu, &b), Some(RESERVATIONS_RELEASED));
    assert_eq!(unit_attention(&lu, &a), None);
}

mod nvme;
mod persistence;
mod shared;

#[test]
fn the_summary_names_registrations_the_holder_and_the_type() {
    let lu = ram_lu(8, 512);
    let (a, b) = (nexus("iqn.a", 1), nexus("iqn.b", 2));
    let empty = lu.reservation_summary();
    assert_eq!((empty.registrations, empty.reservation), (0, None));
    prout(&lu, &a, sa::REGISTER, 0, 0, 0xA);
    prout(&lu, &b, sa::REGISTER, 0, 0, 0xB);
    prout(&lu, &a, sa::RESERVE, ty::WRITE_EXCLUSIVE, 0xA, 0);
    let held = lu.reservation_summary();
    assert_eq!(held.registrations, 2);
    assert_eq!(
        held.reservation,
        Some(("write exclusive", Some("iqn.a,i,0x800000000001".into())))
    );
    assert!(!held.persists, "no APTPL without a store");
    prout(&lu, &a, sa::RELEASE, ty::WRITE_EXCLUSIVE, 0xA, 0);
    prout(&lu, &a, sa::RESERVE, ty::WE_ALL_REGISTRANTS, 0xA, 0);
    // Every registrant holds an all-registrants reservation: no one holder is named.
    assert_eq!(
        lu.reservation_summary().reservation,
        Some(("write exclusive, all registrants", None))
    );
}
