//! Posting many send-queue work requests with one `ibv_post_send`: a [`SendList`] gathers them
//! (and keeps its arrays from one post to the next, so posting allocates nothing in steady
//! state), [`QueuePair::post_list`] links and posts them.
//!
//! With a software provider such as rxe every `ibv_post_send` is a system call (rdma-core
//! providers/rxe/rxe.c, `post_send_db` rings the kernel through `ibv_cmd_post_send`), so a
//! caller that has several operations ready — the responses of every command that completed in
//! one turn — saves one call per operation by posting them together.

use std::sync::Arc;

use rdma_sys::*;

use crate::error::{check_ibv, Error, Result};
use crate::tracker::Pending;
use crate::verbs::{lock, MemoryRegion, QueuePair, SendOp, SendWr};

/// Send-queue work requests waiting to be posted together, in order.
#[derive(Default)]
pub struct SendList {
    /// Each WR's id and the registration it keeps alive until its completion.
    holds: Vec<(u64, Arc<MemoryRegion>)>,
    raw: Vec<ibv_send_wr>,
    sges: Vec<ibv_sge>,
}

// SAFETY: the raw WRs hold pointers (`next`, `sg_list`) into this list's own arrays; they are
// set and used only inside `QueuePair::post_list` and never dereferenced between posts, so
// moving the list to another thread moves nothing that is shared.
unsafe impl Send for SendList {}

impl std::fmt::Debug for SendList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendList")
            .field("wrs", &self.holds.len())
            .finish()
    }
}

impl SendList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// WRs waiting to be posted.
    pub fn len(&self) -> usize {
        self.holds.len()
    }

    /// Whether no WR waits.
    pub fn is_empty(&self) -> bool {
        self.holds.is_empty()
    }

    /// Appends `wr`; fails (leaving the list as it was) when its bytes are outside its region.
    pub fn push(&mut self, wr: SendWr<'_>) -> Result<()> {
        let sge = wr.mr.sge(wr.offset, wr.len)?;
        // SAFETY: plain data (unions of integers/pointers); zero is valid.
        let mut r: ibv_send_wr = unsafe { std::mem::zeroed() };
        r.wr_id = wr.wr_id;
        r.num_sge = if wr.len > 0 { 1 } else { 0 };
        r.send_flags = if wr.signaled { 2 } else { 0 }; // IBV_SEND_SIGNALED
        match wr.op {
            SendOp::Send { invalidate: None } => r.opcode = ibv_wr_opcode::IBV_WR_SEND,
            SendOp::Send {
                invalidate: Some(rkey),
            } => {
                r.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_INV;
                r.imm_data_invalidated_rkey_union.invalidated_rkey = rkey;
            }
            SendOp::RdmaWrite { remote_addr, rkey } => {
                r.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                r.wr.rdma = rdma_t { remote_addr, rkey };
            }
            SendOp::RdmaRead { remote_addr, rkey } => {
                r.opcode = ibv_wr_opcode::IBV_WR_RDMA_READ;
                r.wr.rdma = rdma_t { remote_addr, rkey };
            }
        }
        self.raw.push(r);
        self.sges.push(sge);
        self.holds.push((wr.wr_id, Arc::clone(wr.mr)));
        Ok(())
    }

    /// Drops every WR not posted yet.
    pub fn clear(&mut self) {
        self.holds.clear();
        self.raw.clear();
        self.sges.clear();
    }
}

impl QueuePair {
    /// Posts every WR of `list` as one linked list in a single `ibv_post_send`, in order, and
    /// empties the list. Typically RDMA Writes unsignaled, each followed by a signaled Send:
    /// a Send's completion retires the Writes before it (RC completes a send queue in order).
    /// On failure the WRs before the one the provider refused were posted and stay tracked; the
    /// error says how many.
    pub fn post_list(&self, list: &mut SendList) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        let checked = list
            .holds
            .iter()
            .try_for_each(|(wr_id, _)| self.check_open(*wr_id));
        if let Err(e) = checked {
            list.clear();
            return Err(e);
        }
        let n = list.raw.len();
        for i in 0..n {
            let sge: *mut ibv_sge = &mut list.sges[i];
            list.raw[i].sg_list = sge;
            list.raw[i].next = std::ptr::null_mut();
            if i > 0 {
                let next: *mut ibv_send_wr = &mut list.raw[i];
                list.raw[i - 1].next = next;
            }
        }
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        let mut t = lock(&self.tracker);
        for (wr_id, mr) in list.holds.drain(..) {
            t.send.push_back(Pending {
                wr_id,
                marker: false,
                hold: Some(mr),
            });
        }
        // SAFETY: valid QP; the WR list, its links and SGEs live in `list` across the call;
        // every MR stays registered while the tracker holds its Arc.
        let r = unsafe { ibv_post_send(self.qp(), list.raw.as_mut_ptr(), &mut bad) };
        let result = if r != 0 {
            // The WRs from the refused one on were not posted.
            let refused = list
                .raw
                .iter()
                .position(|wr| std::ptr::eq(wr, bad))
                .unwrap_or(0);
            for _ in refused..n {
                t.send.pop_back();
            }
            check_ibv("ibv_post_send (list)", r)
                .map_err(|e| Error::Invalid(format!("{e} ({refused} of {n} WRs posted)")))
        } else {
            Ok(())
        };
        drop(t);
        list.raw.clear();
        list.sges.clear();
        result
    }
}
