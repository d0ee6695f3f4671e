//! iser-target: an iSCSI target whose protocol core is transport-independent.
//!
//! Layers, bottom to top:
//! - [`backend`]: where blocks live (RAM, regular file, block device).
//! - [`scsi`]: SPC-4/SBC-3 command handling; failures become sense data.
//! - [`iscsi`]: the sans-IO iSCSI core (PDU codec, text negotiation, login, sessions).
//! - [`nvme`]: the sans-IO NVMe/TCP core (PDU codec, queues, fabrics/admin/I/O commands).
//! - [`config`]: the YAML configuration and its validation.
//! - [`server`]: transports that only move bytes (TCP and iSER) and the I/O workers.
//!
//! [`stats`] counts payload bytes copied in user space, for the benchmarks; [`status`] is what
//! a running target reports of itself to `iser-target status`; [`service_manager`] tells
//! systemd (or another manager speaking its protocol) when the target is ready, reloading or
//! stopping.
#![forbid(unsafe_code)]

pub mod backend;
pub mod config;
pub mod inthash;
pub mod iscsi;
pub mod nvme;
pub mod random;
pub mod scsi;
pub mod server;
pub mod service_manager;
pub mod stats;
pub mod status;

/// The pool buffer that carries a command's payload through every layer.
pub use mem_ffi::Buf;

/// Lower-case hexadecimal digits of `bytes`, two per byte (identifiers in names, logs and
/// records: ISIDs, NVMe Host Identifiers, NAA designators).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}
