//! Memory the target manages itself, and the only place outside `rdma-ffi` where `unsafe` code
//! is allowed for it.
//!
//! - [`Pool`] and [`Buf`]: page-aligned I/O buffers from `mmap` arenas, recycled through free
//!   lists, carried by handle through the data path so that io_uring can use O_DIRECT and iSER
//!   can RDMA straight from and into them (see [`pool`]).
//! - [`Region`] and [`Lent`]: pool memory a RAM LUN keeps its blocks in, written and read by
//!   copies only, and lent by address to transports that send from it (see [`shared`]);
//!   [`Payload`], a command's Data-In either way, or a [`FileSpan`] of a file in memory that a
//!   TCP transport sends from the page cache.
//! - [`send_pieces`]: one sendmsg(2) of bytes and lent ranges together, the lent ones by
//!   address, for TCP transports that send a RAM LUN's data without copying it (see [`send`]).
//! - [`CountingAllocator`], a global allocator that wraps the system allocator and counts
//!   allocations, so a benchmark can print allocations per command. It is installed with
//!   `#[global_allocator]` in benchmark binaries only, never in the server.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment.

mod counting;
pub mod payload;
pub mod pool;
pub mod send;
pub mod shared;

pub use counting::{AllocCounts, CountingAllocator};
pub use payload::{FileSpan, LentRanges, Payload};
pub use pool::{Arena, ArenaId, Buf, Pool};
pub use send::{send_pieces, SendPiece};
pub use shared::{Lent, Region};
