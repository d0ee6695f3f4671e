//! `rdma-ffi`: a thin, safe, owning layer over libibverbs + librdmacm (via
//! `rdma-sys`). This is the only crate of the iSER target that may contain
//! `unsafe` code; every `unsafe` block carries a `// SAFETY:` comment.
//!
//! No iSCSI knowledge lives here. The pieces:
//!
//! * [`list_devices`]: RDMA devices, ports and GIDs (for a `devices` CLI).
//! * [`EventChannel`] / [`CmId`] / [`CmEvent`]: rdma_cm connection management.
//!   Every id gets an opaque `u64` handle ([`CmId::handle`]); events carry the
//!   handle of the id they are about, a `ConnectRequest` carries the new id.
//! * [`ProtectionDomain`], [`MemoryRegion`] (owns a page-aligned buffer),
//!   [`CompletionChannel`], [`CompletionQueue`], [`QueuePair`].
//!
//! # MR lifetime
//! Posting a work request takes an `Arc<MemoryRegion>`; the queue pair keeps a
//! clone in its outstanding-WR table until the completion of that WR (or of a
//! later signaled WR on the same send queue) is polled from the CQ, or until a
//! drain has flushed it. A memory region therefore cannot be deregistered or
//! freed while hardware may still access it through a local WR. If a drain
//! fails, the remaining references are leaked (with a log message), never
//! freed.
//!
//! # Buffer access
//! The buffer of a memory region is shared with the adapter (and with the
//! remote peer if remote access was granted), so it is never exposed as a
//! Rust reference while it may be written behind the compiler's back:
//! [`MemoryRegion::read`] and [`MemoryRegion::write`] copy through raw
//! pointers (serialised between CPU threads by a lock), and slices are only
//! handed out through `&mut MemoryRegion` (i.e. `Arc::get_mut`, which fails
//! while any posted WR holds a clone) for regions without remote access.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod cm;
mod device;
mod error;
mod post;
mod sockaddr;
mod tracker;
mod verbs;

pub use cm::{
    refresh_cm_devices, CmEvent, CmEventKind, CmId, ConnParams, EventChannel, EventConnParams,
};
pub use device::{list_devices, DeviceInfo, GidInfo, GidType, LinkLayer, PortInfo, PortState};
pub use error::{Error, Result};
pub use post::SendList;
pub use verbs::{
    Access, AsyncEvent, AsyncEventKind, CompletionChannel, CompletionQueue, CreateQpError,
    DeviceAttrs, MemoryRegion, ProtectionDomain, QpCaps, QueuePair, SendOp, SendWr, VerbsContext,
    WcOpcode, WcStatus, WorkCompletion,
};

use std::sync::atomic::{AtomicUsize, Ordering};

/// Re-export of the raw bindings, for the (rare) case where a caller inside
/// this workspace needs a constant; calling into it requires `unsafe`.
pub use rdma_sys as sys;

pub(crate) static LIVE_MRS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LIVE_QPS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LIVE_CQS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LIVE_PDS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LIVE_IDS: AtomicUsize = AtomicUsize::new(0);
pub(crate) static LEAKED_MRS: AtomicUsize = AtomicUsize::new(0);

/// Process-wide counts of live verbs objects created through this crate, for
/// leak checks in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    /// Registered memory regions not yet deregistered.
    pub memory_regions: usize,
    /// Queue pairs not yet destroyed.
    pub queue_pairs: usize,
    /// Completion queues not yet destroyed.
    pub completion_queues: usize,
    /// Protection domains not yet deallocated.
    pub protection_domains: usize,
    /// rdma_cm ids not yet destroyed.
    pub cm_ids: usize,
    /// Memory-region references deliberately leaked because a drain failed.
    pub leaked_memory_regions: usize,
}

/// Current [`LiveCounts`].
pub fn live_counts() -> LiveCounts {
    LiveCounts {
        memory_regions: LIVE_MRS.load(Ordering::SeqCst),
        queue_pairs: LIVE_QPS.load(Ordering::SeqCst),
        completion_queues: LIVE_CQS.load(Ordering::SeqCst),
        protection_domains: LIVE_PDS.load(Ordering::SeqCst),
        cm_ids: LIVE_IDS.load(Ordering::SeqCst),
        leaked_memory_regions: LEAKED_MRS.load(Ordering::SeqCst),
    }
}

/// Raise `RLIMIT_MEMLOCK` (the default 8 MiB is too small to register
/// buffers) to the hard limit, or to unlimited when permitted (root).
/// Returns the new soft limit in bytes (`u64::MAX` = unlimited).
pub fn raise_memlock_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, owned `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(Error::last_os("getrlimit(RLIMIT_MEMLOCK)"));
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the valid `unlimited` struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Ok(u64::MAX);
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        return Err(Error::last_os("setrlimit(RLIMIT_MEMLOCK)"));
    }
    Ok(if raised.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        raised.rlim_cur
    })
}

pub(crate) fn dec(counter: &AtomicUsize) {
    counter.fetch_sub(1, Ordering::SeqCst);
}

pub(crate) fn inc(counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::SeqCst);
}
