//! Memory the target manages itself, and the only place outside `rdma-ffi` where `unsafe` code
//! is allowed for it.
//!
//! Today this is [`CountingAllocator`], a global allocator that wraps the system allocator and
//! counts allocations, so a benchmark can print allocations per command. It is installed with
//! `#[global_allocator]` in benchmark binaries only, never in the server. Registered, page-aligned
//! I/O buffers carried by handle will live here too.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment.

mod counting;

pub use counting::{AllocCounts, CountingAllocator};
