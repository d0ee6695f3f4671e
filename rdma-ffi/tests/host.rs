//! Host tests: each first finds out from the kernel (sysfs, /dev, /proc) what this host has, then
//! asserts the one outcome that must follow there. CI hosts have no RDMA: there the calls must
//! fail cleanly. The real-device proof is `scripts/guest/rdma-ffi-test.sh` (SoftRoCE in QEMU);
//! set RDMA_FFI_DEVICE_TESTS=1 on a host that must have a device to fail when it has none.

use std::fs;
use std::path::Path;

use rdma_ffi::{list_devices, live_counts, raise_memlock_limit, CmId, EventChannel};

/// Names of the RDMA devices the kernel offers to user space through verbs: the `ibdev` of each
/// `/sys/class/infiniband_verbs/uverbsN` whose `/dev/infiniband/uverbsN` exists (that is what
/// `ibv_get_device_list` enumerates).
fn verbs_devices() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/infiniband_verbs")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("uverbs"))
        .filter(|entry| {
            Path::new("/dev/infiniband")
                .join(entry.file_name())
                .exists()
        })
        .filter_map(|entry| fs::read_to_string(entry.path().join("ibdev")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    if std::env::var("RDMA_FFI_DEVICE_TESTS").is_ok_and(|v| v == "1") {
        assert!(
            !names.is_empty(),
            "RDMA_FFI_DEVICE_TESTS=1 but the kernel offers no RDMA device"
        );
    }
    names
}

/// The rdma_cm character device librdmacm opens for every event channel.
fn have_rdma_cm() -> bool {
    Path::new("/dev/infiniband/rdma_cm").exists()
}

#[test]
fn list_devices_finds_what_the_kernel_offers() {
    let expected = verbs_devices();
    let devices = list_devices().expect("listing devices never fails for lack of RDMA");
    let mut names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
    names.sort();
    assert_eq!(names, expected);
    for d in &devices {
        assert!(!d.ports.is_empty(), "{} has no port", d.name);
        assert!(d.ports.iter().all(|p| p.number >= 1), "{d:?}");
    }
}

#[test]
fn event_channel_works_exactly_when_rdma_cm_exists() {
    if have_rdma_cm() {
        let channel = EventChannel::new().expect("rdma_create_event_channel with rdma_cm present");
        let id = CmId::create(&channel).expect("rdma_create_id");
        assert!(id.handle() != 0);
        assert!(id.verbs().is_none(), "an unbound id has no device");
        drop(id);
    } else {
        let error = EventChannel::new()
            .err()
            .expect("an event channel without /dev/infiniband/rdma_cm");
        assert!(
            error.errno().is_some(),
            "the failure carries errno: {error}"
        );
    }
    assert_eq!(live_counts().cm_ids, 0);
}

/// Whether this process may raise hard resource limits (CAP_SYS_RESOURCE, bit 24 of CapEff).
fn may_raise_hard_limits() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let cap_eff = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .expect("CapEff in /proc/self/status");
    let caps = u64::from_str_radix(cap_eff.trim(), 16).expect("CapEff is hex");
    caps & (1 << 24) != 0
}

/// RLIMIT_MEMLOCK (soft, hard) from /proc/self/limits; `u64::MAX` for unlimited.
fn memlock_limit() -> (u64, u64) {
    let limits = fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max locked memory"))
        .expect("Max locked memory in /proc/self/limits");
    let value = |field: &str| match field {
        "unlimited" => u64::MAX,
        number => number.parse().expect("a limit in bytes"),
    };
    let fields: Vec<&str> = line["Max locked memory".len()..]
        .split_whitespace()
        .collect();
    (value(fields[0]), value(fields[1]))
}

#[test]
fn memlock_is_raised_as_far_as_this_process_may() {
    let (_, hard) = memlock_limit();
    let expected = if may_raise_hard_limits() {
        u64::MAX
    } else {
        hard
    };
    assert_eq!(
        raise_memlock_limit().expect("raising RLIMIT_MEMLOCK"),
        expected
    );
    assert_eq!(memlock_limit(), (expected, expected));
}
