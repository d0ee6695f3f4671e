//! RC queue pairs and the work requests posted on them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdma_sys::*;

use super::{
    lock, CompletionQueue, MemoryRegion, ProtectionDomain, SharedTracker, WorkCompletion,
    MARKER_WR_ID,
};
use crate::cm::CmId;
use crate::error::{check_ibv, check_rdma, Error, Result};
use crate::tracker::{Pending, Queue, Tracker};
use crate::{dec, inc, LEAKED_MRS, LIVE_QPS};

/// Queue-pair capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline data size (0 = none).
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 2,
            max_recv_sge: 1,
            max_inline_data: 0,
        }
    }
}

/// Error of [`QueuePair::create`]: gives the id back so it can be rejected.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CreateQpError {
    /// Why it failed.
    #[source]
    pub error: Error,
    /// The id, unchanged.
    pub id: CmId,
}

impl From<CreateQpError> for Error {
    fn from(e: CreateQpError) -> Error {
        e.error
    }
}

/// What one WR of [`QueuePair::post_list`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// A Send, or a Send-with-Invalidate of the peer's rkey `invalidate`.
    Send {
        /// The peer's rkey to invalidate, if any.
        invalidate: Option<u32>,
    },
    /// An RDMA Write to the peer's `remote_addr`/`rkey`.
    RdmaWrite {
        /// Address in the peer's memory.
        remote_addr: u64,
        /// The peer's rkey of that memory.
        rkey: u32,
    },
    /// An RDMA Read from the peer's `remote_addr`/`rkey` into the WR's local
    /// memory (which needs [`Access::LOCAL_WRITE`](super::Access::LOCAL_WRITE)).
    RdmaRead {
        /// Address in the peer's memory.
        remote_addr: u64,
        /// The peer's rkey of that memory.
        rkey: u32,
    },
}

/// One WR of a chained [`crate::SendList`]: `len` bytes at
/// `offset` of `mr`.
#[derive(Debug, Clone, Copy)]
pub struct SendWr<'a> {
    /// The caller's id, reported in the completion.
    pub wr_id: u64,
    /// What the WR does.
    pub op: SendOp,
    /// The local memory the bytes are in (or, for a Send, come from).
    pub mr: &'a Arc<MemoryRegion>,
    /// Where in `mr`.
    pub offset: usize,
    /// How many bytes.
    pub len: usize,
    /// Whether the WR produces a completion of its own; an unsignaled one is
    /// retired by the next signaled completion of the send queue.
    pub signaled: bool,
}

/// An RC queue pair created on a [`CmId`] with `rdma_create_qp`; it owns the
/// id. Dropping it: `rdma_disconnect` (errors ignored), QP to ERROR, drain
/// (bounded), `rdma_destroy_qp`, release MR references (or leak them if the
/// drain failed), then the id, CQs and PD references.
pub struct QueuePair {
    qp_num: u32,
    pub(crate) tracker: SharedTracker,
    closing: AtomicBool,
    drained: AtomicBool,
    send_cq: Arc<CompletionQueue>,
    recv_cq: Arc<CompletionQueue>,
    _pd: Arc<ProtectionDomain>,
    // Dropped last (after the QP was destroyed in Drop::drop).
    id: CmId,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.qp_num)
            .field("id", &self.id)
            .finish()
    }
}

impl QueuePair {
    /// `rdma_create_qp` (RC) on `id` with separate send and receive CQs.
    pub fn create(
        id: CmId,
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: QpCaps,
    ) -> std::result::Result<QueuePair, CreateQpError> {
        if Arc::ptr_eq(send_cq, recv_cq) {
            return Err(CreateQpError {
                error: Error::Invalid("send and receive CQ must differ".into()),
                id,
            });
        }
        // SAFETY: plain data; zero is valid.
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = send_cq.raw.as_ptr();
        attr.recv_cq = recv_cq.raw.as_ptr();
        attr.cap = ibv_qp_cap {
            max_send_wr: caps.max_send_wr,
            max_recv_wr: caps.max_recv_wr,
            max_send_sge: caps.max_send_sge,
            max_recv_sge: caps.max_recv_sge,
            max_inline_data: caps.max_inline_data,
        };
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        // SAFETY: valid id, PD and CQs (kept alive by the Arcs we store).
        let r = unsafe { rdma_create_qp(id.as_ptr(), pd.raw.as_ptr(), &mut attr) };
        if let Err(error) = check_rdma("rdma_create_qp", r) {
            return Err(CreateQpError { error, id });
        }
        // SAFETY: rdma_create_qp succeeded, so id->qp is a valid QP.
        let qp_num = unsafe { (*(*id.as_ptr()).qp).qp_num };
        inc(&LIVE_QPS);
        let tracker: SharedTracker = Arc::new(Mutex::new(Tracker::default()));
        send_cq.register(qp_num, tracker.clone(), Queue::Send);
        recv_cq.register(qp_num, tracker.clone(), Queue::Recv);
        Ok(QueuePair {
            qp_num,
            tracker,
            closing: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            _pd: pd.clone(),
            id,
        })
    }

    /// The connection's id (accept, connect, disconnect, notify, addresses).
    pub fn id(&self) -> &CmId {
        &self.id
    }

    /// QP number.
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// Outstanding (send, receive) WRs whose completion was not polled yet.
    pub fn outstanding(&self) -> (usize, usize) {
        lock(&self.tracker).outstanding()
    }

    pub(crate) fn qp(&self) -> *mut ibv_qp {
        // SAFETY: the QP exists from create until Drop.
        unsafe { (*self.id.as_ptr()).qp }
    }

    pub(crate) fn check_open(&self, wr_id: u64) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::from_errno("post (QP draining)", libc::ESHUTDOWN));
        }
        if wr_id == MARKER_WR_ID {
            return Err(Error::Invalid("wr_id u64::MAX is reserved".into()));
        }
        Ok(())
    }

    /// Post a receive of up to `len` bytes at `offset` of `mr`.
    pub fn post_recv(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        self.check_open(wr_id)?;
        let mut sge = mr.sge(offset, len)?;
        let mut wr = ibv_recv_wr {
            wr_id,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        let mut t = lock(&self.tracker);
        t.recv.push_back(Pending {
            wr_id,
            marker: false,
            hold: Some(mr.clone()),
        });
        // SAFETY: valid QP; `wr` and `sge` live across the call; the MR stays
        // registered because the tracker holds an Arc until completion.
        let r = unsafe { ibv_post_recv(self.qp(), &mut wr, &mut bad) };
        if r != 0 {
            t.recv.pop_back();
        }
        check_ibv("ibv_post_recv", r)
    }

    #[allow(clippy::too_many_arguments)]
    fn post_send_wr(
        &self,
        wr_id: u64,
        opcode: u32,
        mr: Option<&Arc<MemoryRegion>>,
        offset: usize,
        len: usize,
        signaled: bool,
        remote: Option<(u64, u32)>,
        invalidate: Option<u32>,
        marker: bool,
    ) -> Result<()> {
        if !marker {
            self.check_open(wr_id)?;
        }
        let mut sge = match mr {
            Some(mr) => mr.sge(offset, len)?,
            None => ibv_sge {
                addr: 0,
                length: 0,
                lkey: 0,
            },
        };
        // SAFETY: plain data (unions of integers/pointers); zero is valid.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = if mr.is_some() && len > 0 { 1 } else { 0 };
        wr.opcode = opcode;
        wr.send_flags = if signaled { 2 } else { 0 }; // IBV_SEND_SIGNALED
        if let Some(rkey) = invalidate {
            wr.imm_data_invalidated_rkey_union.invalidated_rkey = rkey;
        }
        if let Some((remote_addr, rkey)) = remote {
            wr.wr.rdma = rdma_t { remote_addr, rkey };
        }
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        let mut t = lock(&self.tracker);
        t.send.push_back(Pending {
            wr_id,
            marker,
            hold: mr.cloned(),
        });
        // SAFETY: valid QP; `wr`/`sge` live across the call; the MR stays
        // registered while the tracker holds its Arc.
        let r = unsafe { ibv_post_send(self.qp(), &mut wr, &mut bad) };
        if r != 0 {
            t.send.pop_back();
        }
        check_ibv("ibv_post_send", r)
    }

    /// Post a Send (or Send-with-Invalidate of `invalidate`) of `len` bytes at
    /// `offset` of `mr`.
    pub fn post_send(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
        signaled: bool,
        invalidate: Option<u32>,
    ) -> Result<()> {
        let op = if invalidate.is_some() {
            ibv_wr_opcode::IBV_WR_SEND_WITH_INV
        } else {
            ibv_wr_opcode::IBV_WR_SEND
        };
        self.post_send_wr(
            wr_id,
            op,
            Some(mr),
            offset,
            len,
            signaled,
            None,
            invalidate,
            false,
        )
    }

    /// Post an RDMA Write of `len` bytes at `offset` of `mr` to the peer's
    /// `remote_addr`/`rkey`.
    #[allow(clippy::too_many_arguments)]
    pub fn post_rdma_write(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: u32,
        signaled: bool,
    ) -> Result<()> {
        let op = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
        self.post_send_wr(
            wr_id,
            op,
            Some(mr),
            offset,
            len,
            signaled,
            Some((remote_addr, rkey)),
            None,
            false,
        )
    }

    /// Post an RDMA Read of `len` bytes from the peer's `remote_addr`/`rkey`
    /// into `offset` of `mr` (which needs [`Access::LOCAL_WRITE`](super::Access::LOCAL_WRITE)).
    #[allow(clippy::too_many_arguments)]
    pub fn post_rdma_read(
        &self,
        wr_id: u64,
        mr: &Arc<MemoryRegion>,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: u32,
        signaled: bool,
    ) -> Result<()> {
        let op = ibv_wr_opcode::IBV_WR_RDMA_READ;
        self.post_send_wr(
            wr_id,
            op,
            Some(mr),
            offset,
            len,
            signaled,
            Some((remote_addr, rkey)),
            None,
            false,
        )
    }

    /// Move the QP to the ERROR state (flushes every posted WR).
    pub fn set_error(&self) -> Result<()> {
        // SAFETY: plain data; zero is valid.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: valid QP and attr; mask IBV_QP_STATE only.
        check_ibv("ibv_modify_qp(ERR)", unsafe {
            ibv_modify_qp(self.qp(), &mut attr, 1)
        })
    }

    /// Stop posting, move the QP to ERROR and wait (up to `timeout`) until
    /// every posted WR has completed, polling both CQs. Returns the
    /// completions of this QP seen while draining (mostly `WrFlushErr`);
    /// completions of other QPs sharing the CQs are kept for their next poll.
    /// Call it after `disconnect` and the `Disconnected` event for an orderly
    /// teardown (§12.1); Drop does it too, bounded, if you did not.
    pub fn drain(&self, timeout: Duration) -> Result<Vec<WorkCompletion>> {
        self.closing.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        if self.drained.load(Ordering::SeqCst) {
            return Ok(out);
        }
        self.set_error()?;
        // A signaled marker: unsignaled sends produce no flush completion of
        // their own on every provider; the marker's retires them all.
        let need_marker = !lock(&self.tracker).send.is_empty();
        if need_marker {
            self.post_send_wr(
                MARKER_WR_ID,
                ibv_wr_opcode::IBV_WR_SEND,
                None,
                0,
                0,
                true,
                None,
                None,
                true,
            )?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.send_cq.poll_raw(&mut out, 16, Some(self.qp_num))?
                + self.recv_cq.poll_raw(&mut out, 16, Some(self.qp_num))?;
            if lock(&self.tracker).is_empty() {
                self.drained.store(true, Ordering::SeqCst);
                return Ok(out);
            }
            if Instant::now() >= deadline {
                let (s, r) = self.outstanding();
                log::error!(
                    "QP {}: drain timed out with {s} send / {r} receive WRs outstanding",
                    self.qp_num
                );
                return Err(Error::Timeout("QP drain"));
            }
            if seen == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let mut ok = self.drained.load(Ordering::SeqCst);
        if !ok {
            // Ignore errors: the id may never have been connected.
            // SAFETY: valid id.
            let _ = unsafe { rdma_disconnect(self.id.as_ptr()) };
            match self.drain(Duration::from_secs(5)) {
                Ok(_) => ok = true,
                Err(e) => log::error!("QP {}: drain on drop failed: {e}", self.qp_num),
            }
        }
        // SAFETY: the QP is valid; after this no WR of it is processed.
        unsafe { rdma_destroy_qp(self.id.as_ptr()) };
        dec(&LIVE_QPS);
        self.send_cq.unregister(self.qp_num);
        self.recv_cq.unregister(self.qp_num);
        let mut t = lock(&self.tracker);
        let mut left: Vec<_> = t.send.drain(..).filter_map(|p| p.hold).collect();
        left.extend(t.recv.drain(..).filter_map(|p| p.hold));
        drop(t);
        if !ok && !left.is_empty() {
            log::error!(
                "QP {}: leaking {} memory-region references of WRs that never completed",
                self.qp_num,
                left.len()
            );
            LEAKED_MRS.fetch_add(left.len(), Ordering::SeqCst);
            std::mem::forget(left);
        }
        // `id` (rdma_destroy_id), CQ and PD references drop after this.
    }
}
