//! The `limits` section: ranges, defaults and the checks between values.

use super::*;

#[test]
fn limits_ranges() {
    let cases: &[(&str, u64, u64)] = &[
        ("max_sessions", 1, 4096),
        ("max_discovery_sessions", 1, 4096),
        ("max_connections_per_portal", 1, 65536),
        ("max_connections_per_source", 1, 65536),
        ("queue_depth", 1, 1024),
        ("max_burst_length", 512, 16_777_215),
        ("max_recv_data_segment_length", 512, 16_777_215),
        ("max_outstanding_r2t", 1, 65535),
        ("nop_interval_secs", 0, 3600),
        ("nop_timeout_secs", 1, 3600),
        ("login_timeout_secs", 1, 3600),
        ("discovery_idle_timeout_secs", 1, 3600),
        ("max_io_size", 4096, 16 << 20),
        ("busy_poll_us", 0, 1000),
        ("nvme_queue_size", 16, 1024),
        ("nvme_io_queues", 1, 128),
        ("nvme_in_capsule_data", 4096, 131_072),
    ];
    for &(key, min, max) in cases {
        ok(&with_limits(&format!(
            "{key}: {min}, first_burst_length: 512"
        )));
        ok(&with_limits(&format!("{key}: {max}")));
        let range = format!("{min}..={max}");
        if min > 0 {
            fails(
                &with_limits(&format!("{key}: {}", min - 1)),
                &format!("limits.{key}"),
                &range,
            );
        }
        fails(
            &with_limits(&format!("{key}: {}", max + 1)),
            &format!("limits.{key}"),
            &range,
        );
    }
    fails(
        &with_limits("first_burst_length: 511"),
        "limits.first_burst_length",
        "512..=16777215",
    );
    fails(
        &with_limits("first_burst_length: 16777216"),
        "limits.first_burst_length",
        "512..=16777215",
    );
}

#[test]
fn nvme_in_capsule_data_counts_16_byte_units() {
    let l = ok(&with_limits("nvme_in_capsule_data: 16400")).limits;
    assert_eq!(l.nvme_in_capsule_data, 16400);
    fails(
        &with_limits("nvme_in_capsule_data: 8200"),
        "limits.nvme_in_capsule_data",
        "multiple of 16",
    );
}

#[test]
fn first_burst_not_above_max_burst() {
    ok(&with_limits(
        "max_burst_length: 65536, first_burst_length: 65536",
    ));
    fails(
        &with_limits("max_burst_length: 8192, first_burst_length: 65536"),
        "limits.first_burst_length",
        "max_burst_length 8192",
    );
}

#[test]
fn max_io_size_multiple_of_4096() {
    fails(
        &with_limits("max_io_size: 6000"),
        "limits.max_io_size",
        "multiple of 4096",
    );
}

#[test]
fn negative_limit_is_a_type_error_with_path() {
    fails(&with_limits("queue_depth: -1"), "limits.queue_depth", "-1");
}
