//! Tests of the driver's pieces that need no RDMA device.

use super::*;

/// A wake-up reads the eventfd only when it was rung, and leaves it unreadable then (a
/// level-triggered epoll set would otherwise wake the engine thread again and again).
#[test]
fn the_doorbell_is_read_only_when_rung() {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let bell = Doorbell::new().unwrap();
    let readable = |bell: &Doorbell| {
        let mut fds = [PollFd::new(bell.fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    };
    assert!(!readable(&bell));
    bell.ring();
    bell.ring();
    assert!(readable(&bell));
    bell.clear();
    assert!(!readable(&bell), "one read takes every ring");
    // A clear with nothing rung makes no read (and blocks on nothing).
    bell.clear();
    assert!(!readable(&bell));
    bell.ring();
    assert!(readable(&bell));
}

#[test]
fn receive_wr_ids_name_area_and_slot() {
    let id = recv_wr_id(FULL_FEATURE_AREA, 143);
    assert_eq!(recv_slot(id), (1, 143));
    assert_eq!(recv_slot(recv_wr_id(LOGIN_AREA, 1)), (0, 1));
    assert_ne!(id & WR_RECV, 0);
}
