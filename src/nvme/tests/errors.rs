//! Bad input from the host: every malformation ends in a C2HTermReq with the right fatal error
//! status and a clean close, and nothing after it.

use super::*;

/// Asserts the queue answered with one C2HTermReq (FES, FEI) and closed.
fn assert_terminated(p: &mut Pair, fes: u16, fei: u32) {
    match p.take().as_slice() {
        [Got::Term {
            fes: f,
            fei: i,
            data,
        }] => {
            assert_eq!((*f, *i), (fes, fei), "FES/FEI");
            assert!(!data.is_empty(), "the offending header is echoed");
        }
        other => panic!("expected a C2HTermReq, got {other:?}"),
    }
    assert!(matches!(p.closed, Some(CloseReason::ProtocolError(_))));
    // Nothing more, whatever arrives.
    p.send(&ic_req(0, 0, false, false));
    assert!(p.take().is_empty());
}

#[test]
fn wrong_pfv() {
    let mut p = Pair::fresh();
    p.send(&ic_req(1, 0, false, false));
    assert_terminated(&mut p, 0x06, 8);
}

#[test]
fn bad_hlen_and_plen() {
    let mut p = Pair::fresh();
    let mut b = ic_req(0, 0, false, false);
    b[2] = 64;
    p.send(&b);
    assert_terminated(&mut p, 0x01, 2);
    let mut p = Pair::fresh();
    let mut b = ic_req(0, 0, false, false);
    b[4] = 200;
    p.send(&b);
    assert_terminated(&mut p, 0x01, 4);
}

#[test]
fn unknown_pdu_type() {
    let mut p = Pair::fresh();
    p.send(&[0x0A, 0, 24, 0, 24, 0, 0, 0]);
    assert_terminated(&mut p, 0x01, 0);
}

#[test]
fn capsule_before_icreq_and_icreq_twice() {
    let mut p = Pair::fresh();
    let bytes = p.host.capsule(
        &connect_sqe(1, 0, 31, 0),
        &connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    p.send(&bytes);
    assert_terminated(&mut p, 0x02, 0);
    let mut p = Pair::fresh();
    p.initialize(false, false);
    p.send(&ic_req(0, 0, false, false));
    assert_terminated(&mut p, 0x02, 0);
}

#[test]
fn header_digest_error() {
    let (mut admin, _) = admin_and_io();
    let mut p = admin.sibling();
    p.initialize(true, false);
    let mut bytes = p.host.capsule(&Sqe::fabrics(0x04, 1), &[]);
    bytes[72] ^= 0xFF;
    p.send(&bytes);
    assert_terminated(&mut p, 0x03, 0);
    admin.take();
}

#[test]
fn digest_flags_must_match_what_was_negotiated() {
    let mut p = Pair::fresh();
    p.initialize(false, false);
    // The host sends a header digest it did not ask for.
    p.host.header_digest = true;
    let bytes = p.host.capsule(&Sqe::fabrics(0x04, 1), &[]);
    p.send(&bytes);
    assert_terminated(&mut p, 0x01, 1);
}

#[test]
fn in_capsule_data_beyond_the_limit() {
    let (_admin, mut io) = admin_and_io();
    let sqe = Sqe::new(0x01, 1, 1).cdw(12, 16).sgl(8704, true);
    let bytes = io.host.capsule(&sqe, &[0; 8704]);
    // Refused from its header alone.
    io.send(&bytes[..8]);
    assert_terminated(&mut io, 0x01, 4);
}

/// An I/O queue with a 16 KiB write waiting for the data of its R2T.
fn pending_write() -> (Pair, Pair, u16) {
    let (admin, mut io) = admin_and_io();
    let got = io.command(&Sqe::new(0x01, 7, 1).cdw(12, 31).sgl(16384, false), &[]);
    let [Got::R2T {
        ttag,
        offset: 0,
        length: 16384,
        ..
    }] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    let ttag = *ttag;
    (admin, io, ttag)
}

#[test]
fn data_for_an_unknown_command_or_tag() {
    let (_a, mut io, ttag) = pending_write();
    let bytes = io.host.h2c_data(8, ttag, 0, &[0; 512], false);
    io.send(&bytes);
    assert_terminated(&mut io, 0x01, 8);
    let (_a, mut io, ttag) = pending_write();
    let bytes = io.host.h2c_data(7, ttag ^ 0x100, 0, &[0; 512], false);
    io.send(&bytes);
    assert_terminated(&mut io, 0x01, 10);
    // A command that asked for no data.
    let (_a, mut io) = admin_and_io();
    io.defer_io = true;
    io.command(&Sqe::new(0x02, 3, 1).cdw(12, 0).sgl(512, false), &[]);
    let bytes = io.host.h2c_data(3, 3, 0, &[0; 512], true);
    io.send(&bytes);
    assert_terminated(&mut io, 0x01, 8);
}

#[test]
fn data_out_of_order_or_beyond_the_r2t() {
    let (_a, mut io, ttag) = pending_write();
    let bytes = io.host.h2c_data(7, ttag, 512, &[0; 512], false);
    io.send(&bytes);
    assert_terminated(&mut io, 0x04, 12);
    let (_a, mut io, ttag) = pending_write();
    let first = io.host.h2c_data(7, ttag, 0, &[0; 8192], false);
    io.send(&first);
    let bytes = io.host.h2c_data(7, ttag, 8192, &[0; 12288], true);
    io.send(&bytes);
    assert_terminated(&mut io, 0x04, 16);
    // LAST_PDU before the R2T's end.
    let (_a, mut io, ttag) = pending_write();
    let bytes = io.host.h2c_data(7, ttag, 0, &[0; 512], true);
    io.send(&bytes);
    assert_terminated(&mut io, 0x01, 1);
}

#[test]
fn h2c_data_beyond_maxh2cdata() {
    let (_a, mut io, ttag) = pending_write();
    let bytes = io
        .host
        .h2c_data(7, ttag, 0, &vec![0; MAX_H2C as usize + 4], true);
    io.send(&bytes);
    assert_terminated(&mut io, 0x05, 4);
}

#[test]
fn more_commands_than_queue_entries() {
    let (_a, mut io) = admin_and_io();
    io.defer_io = true;
    for cid in 0..16 {
        let sqe = Sqe::new(0x02, cid, 1).cdw(12, 0).sgl(512, false);
        assert!(io.command(&sqe, &[]).is_empty());
    }
    let bytes = io.host.capsule(&Sqe::new(0x00, 99, 1), &[]);
    io.send(&bytes);
    assert_terminated(&mut io, 0x02, 0);
    // Completions of the dropped commands are ignored.
    for cmd in std::mem::take(&mut io.deferred) {
        io.queue.handle_io_complete(cmd.id, Ok(BlockReply::Done));
    }
    io.pump();
    assert!(io.take().is_empty());
}

#[test]
fn host_termination_closes_quietly() {
    let (_a, mut io) = admin_and_io();
    let mut h = vec![2, 0, 24, 0, 0, 0, 0, 0];
    h.extend_from_slice(&2u16.to_le_bytes());
    h.resize(24, 0);
    let bytes = io.host.pdu(h, &[0; 24]);
    io.send(&bytes);
    assert!(io.take().is_empty());
    assert_eq!(io.closed, Some(CloseReason::HostTerminated { fes: 2 }));
}

#[test]
fn commands_behind_a_pending_connect_wait_for_it() {
    let mut p = Pair::fresh();
    p.initialize(false, false);
    // The Connect and a Property Get in one read: the Property Get is held in the buffer until
    // the environment created the controller, then runs on it.
    let mut bytes = p.host.capsule(
        &connect_sqe(1, 0, 31, 0),
        &connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    bytes.extend(p.host.capsule(&Sqe::fabrics(0x04, 2).cdw(11, 0x08), &[]));
    p.queue.handle_bytes(&bytes, p.now);
    assert!(matches!(
        p.queue.poll_action(),
        Some(Action::CreateController(_))
    ));
    assert!(p.queue.poll_action().is_none());
    p.queue
        .handle_controller_created(Err(crate::nvme::ConnectRefusal::ControllerBusy), p.now);
    p.pump();
    match p.take().as_slice() {
        [Got::Resp(connect), Got::Resp(get)] => {
            assert_eq!((connect.cid, connect.status), (1, (1, 0x81)));
            assert_eq!(
                (get.cid, get.status),
                (2, (0, 0x0C)),
                "no controller: sequence error"
            );
        }
        other => panic!("{other:?}"),
    }
    // An answer after the queue closed changes nothing.
    let mut p = Pair::fresh();
    p.initialize(false, false);
    let bytes = p.host.capsule(
        &connect_sqe(1, 0, 31, 0),
        &connect_data(0xFFFF, SUBSYSTEM, HOST),
    );
    p.queue.handle_bytes(&bytes, p.now);
    p.queue.poll_action();
    p.queue.handle_shutdown();
    p.queue
        .handle_controller_created(Err(crate::nvme::ConnectRefusal::ControllerBusy), p.now);
    assert!(matches!(
        p.queue.poll_action(),
        Some(Action::Close(CloseReason::Shutdown))
    ));
    assert!(p.queue.poll_action().is_none());
}

#[test]
fn shutdown_closes_once() {
    let (_a, mut io) = admin_and_io();
    io.queue.handle_shutdown();
    io.queue.handle_shutdown();
    io.pump();
    assert_eq!(io.closed, Some(CloseReason::Shutdown));
    assert!(io.queue.is_closed());
}
