//! The `limits` section: its serde shape and its resolution into [`Limits`], each value range
//! checked, unset values taken from [`Limits::default`].

use serde::Deserialize;

use super::error::{err, CResult};
use super::values::ranged;
use super::Limits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_sessions: Option<u64>,
    max_discovery_sessions: Option<u64>,
    max_connections_per_portal: Option<u64>,
    max_connections_per_source: Option<u64>,
    queue_depth: Option<u64>,
    max_burst_length: Option<u64>,
    first_burst_length: Option<u64>,
    max_recv_data_segment_length: Option<u64>,
    max_outstanding_r2t: Option<u64>,
    nop_interval_secs: Option<u64>,
    nop_timeout_secs: Option<u64>,
    login_timeout_secs: Option<u64>,
    discovery_idle_timeout_secs: Option<u64>,
    max_io_size: Option<u64>,
    io_threads: Option<u64>,
    busy_poll_us: Option<u64>,
    nvme_queue_size: Option<u64>,
    nvme_io_queues: Option<u64>,
    nvme_in_capsule_data: Option<u64>,
}

impl RawLimits {
    pub(super) fn resolve(self, path: &str) -> CResult<Limits> {
        let d = Limits::default();
        let f = |name: &str| format!("{path}.{name}");
        let l = Limits {
            max_sessions: ranged(
                &f("max_sessions"),
                self.max_sessions,
                d.max_sessions,
                1,
                4096,
            )?,
            max_discovery_sessions: ranged(
                &f("max_discovery_sessions"),
                self.max_discovery_sessions,
                d.max_discovery_sessions,
                1,
                4096,
            )?,
            max_connections_per_portal: ranged(
                &f("max_connections_per_portal"),
                self.max_connections_per_portal,
                d.max_connections_per_portal,
                1,
                65536,
            )?,
            max_connections_per_source: ranged(
                &f("max_connections_per_source"),
                self.max_connections_per_source,
                d.max_connections_per_source,
                1,
                65536,
            )?,
            queue_depth: ranged(&f("queue_depth"), self.queue_depth, d.queue_depth, 1, 1024)?,
            max_burst_length: ranged(
                &f("max_burst_length"),
                self.max_burst_length,
                d.max_burst_length,
                512,
                16_777_215,
            )?,
            first_burst_length: ranged(
                &f("first_burst_length"),
                self.first_burst_length,
                d.first_burst_length,
                512,
                16_777_215,
            )?,
            max_recv_data_segment_length: ranged(
                &f("max_recv_data_segment_length"),
                self.max_recv_data_segment_length,
                d.max_recv_data_segment_length,
                512,
                16_777_215,
            )?,
            max_outstanding_r2t: ranged(
                &f("max_outstanding_r2t"),
                self.max_outstanding_r2t,
                d.max_outstanding_r2t,
                1,
                65535,
            )?,
            nop_interval_secs: ranged(
                &f("nop_interval_secs"),
                self.nop_interval_secs,
                d.nop_interval_secs,
                0,
                3600,
            )?,
            nop_timeout_secs: ranged(
                &f("nop_timeout_secs"),
                self.nop_timeout_secs,
                d.nop_timeout_secs,
                1,
                3600,
            )?,
            login_timeout_secs: ranged(
                &f("login_timeout_secs"),
                self.login_timeout_secs,
                d.login_timeout_secs,
                1,
                3600,
            )?,
            discovery_idle_timeout_secs: ranged(
                &f("discovery_idle_timeout_secs"),
                self.discovery_idle_timeout_secs,
                d.discovery_idle_timeout_secs,
                1,
                3600,
            )?,
            max_io_size: ranged(
                &f("max_io_size"),
                self.max_io_size,
                d.max_io_size,
                4096,
                16 << 20,
            )?,
            io_threads: ranged(&f("io_threads"), self.io_threads, d.io_threads, 1, 256)?,
            busy_poll_us: ranged(
                &f("busy_poll_us"),
                self.busy_poll_us,
                d.busy_poll_us,
                0,
                1000,
            )?,
            nvme_queue_size: ranged(
                &f("nvme_queue_size"),
                self.nvme_queue_size,
                d.nvme_queue_size,
                16,
                1024,
            )?,
            nvme_io_queues: ranged(
                &f("nvme_io_queues"),
                self.nvme_io_queues,
                d.nvme_io_queues,
                1,
                128,
            )?,
            nvme_in_capsule_data: ranged(
                &f("nvme_in_capsule_data"),
                self.nvme_in_capsule_data,
                d.nvme_in_capsule_data,
                4096,
                131_072,
            )?,
        };
        if l.first_burst_length > l.max_burst_length {
            return err(
                &f("first_burst_length"),
                format!(
                    "{} is larger than max_burst_length {}; FirstBurstLength must not exceed MaxBurstLength (RFC 7143)",
                    l.first_burst_length, l.max_burst_length
                ),
            );
        }
        if l.nvme_in_capsule_data % 16 != 0 {
            return err(
                &f("nvme_in_capsule_data"),
                format!(
                    "{} is not a multiple of 16 (IOCCSZ counts 16-byte units)",
                    l.nvme_in_capsule_data
                ),
            );
        }
        if l.max_io_size % 4096 != 0 {
            return err(
                &f("max_io_size"),
                format!("{} is not a multiple of 4096", l.max_io_size),
            );
        }
        Ok(l)
    }
}
