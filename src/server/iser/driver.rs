//! One iSER connection: a thread that sleeps on the completion channel of the connection's CQs
//! and on a doorbell (an eventfd rung by the I/O workers and the rdma_cm event thread), feeds
//! receives and RDMA Read completions to the sans-IO [`IserConnection`] and posts the fabric
//! operations it asks for.
//!
//! Resources: a registered receive area sliced into `recv_slots` buffers (all posted before
//! `rdma_accept` and each re-posted as soon as its bytes are copied out, before the PDU is
//! handled), and a registered staging arena from which every send-queue work request (Sends,
//! RDMA Write sources, RDMA Read targets) takes its bytes ring-fashion, since send-queue
//! completions arrive in posting order. Every send WR is signaled; at most `max_send_wr` are
//! outstanding and at most `max_rdma_reads` RDMA Reads. An operation that cannot be posted yet
//! waits, with everything behind it, until completions free room.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rdma_ffi::{
    Access, CmEventKind, CompletionChannel, CompletionQueue, MemoryRegion, ProtectionDomain,
    QueuePair, WcStatus, WorkCompletion,
};

use super::ring::Ring;
use crate::iscsi::iser::{FabricOp, IserConnection};
use crate::iscsi::{CloseReason, CoreConfig, TaskId};
use crate::scsi::ScsiOutcome;
use crate::server::registry::SessionControl;
use crate::server::session::SessionSlot;
use crate::server::{ConnectionSet, Shared};

/// wr_id bit marking a receive; the low bits are the slot index.
pub(super) const WR_RECV: u64 = 1 << 62;
/// How long a closing connection waits for its last Sends (a Logout Response) to complete.
const LINGER: Duration = Duration::from_secs(2);
/// How long teardown waits for DISCONNECTED after `rdma_disconnect`.
const DISCONNECT_WAIT: Duration = Duration::from_secs(3);
/// Bound on flushing the QP at teardown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What wakes a connection's thread besides completions.
pub(super) enum Event {
    /// A SCSI command finished in the backend.
    Completed(TaskId, ScsiOutcome),
    /// Server stop or session reinstatement.
    Shutdown,
    /// An rdma_cm event for this connection's id.
    Cm(CmEventKind),
}

/// An eventfd that wakes the connection's poll.
pub(super) struct Doorbell(EventFd);

impl Doorbell {
    pub(super) fn new() -> std::io::Result<Arc<Self>> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Doorbell(fd)))
    }

    fn ring(&self) {
        let _ = self.0.write(1);
    }

    fn clear(&self) {
        let _ = self.0.read();
    }
}

/// How other threads reach a connection: its event queue plus the doorbell.
#[derive(Clone)]
pub(super) struct Mailbox {
    pub(super) events: Sender<Event>,
    pub(super) bell: Arc<Doorbell>,
}

impl Mailbox {
    pub(super) fn post(&self, event: Event) {
        if self.events.send(event).is_ok() {
            self.bell.ring();
        }
    }
}

impl SessionControl for Mailbox {
    fn request_shutdown(&self) {
        self.post(Event::Shutdown);
    }
}

/// Everything created for a connection at accept time.
pub(super) struct Resources {
    pub(super) qp: QueuePair,
    pub(super) send_cq: Arc<CompletionQueue>,
    pub(super) recv_cq: Arc<CompletionQueue>,
    pub(super) channel: Arc<CompletionChannel>,
    pub(super) pd: Arc<ProtectionDomain>,
    pub(super) recv_mr: Arc<MemoryRegion>,
    pub(super) recv_stride: usize,
    pub(super) arena: Arc<MemoryRegion>,
    pub(super) max_send_wr: usize,
    pub(super) max_rdma_reads: usize,
    /// The CM exchange agreed to Send-with-Invalidate.
    pub(super) send_with_invalidate: bool,
}

/// Where a posted send-queue WR keeps its bytes.
enum Buffer {
    Arena(usize),
    /// A one-off registration for a transfer larger than the arena.
    OneOff(Arc<MemoryRegion>),
}

enum Kind {
    Send,
    Write,
    Read { token: u64, len: usize },
}

struct InFlight {
    wr_id: u64,
    buffer: Buffer,
    kind: Kind,
}

/// Why the connection is going away.
enum Ending {
    /// The core closed it (Logout, shutdown, protocol error...): let its last Sends go out first.
    Core(CloseReason, Instant),
    /// The fabric failed or the peer disconnected: stop at once.
    Fabric(String),
}

enum Posted {
    Yes,
    /// Not enough room yet; retry after completions.
    Later,
}

struct Driver {
    conn: IserConnection,
    res: Resources,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Receiver<Event>,
    session: SessionSlot,
    ring: Ring,
    pending: VecDeque<FabricOp>,
    inflight: VecDeque<InFlight>,
    next_wr: u64,
    reads: usize,
    ending: Option<Ending>,
    done: bool,
    disconnected: bool,
    peer: String,
    wcs: Vec<WorkCompletion>,
}

/// Runs one accepted connection to its end on the calling thread.
pub(super) fn serve(
    res: Resources,
    core: Arc<CoreConfig>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
    inbox: Receiver<Event>,
) {
    let peer = res
        .qp
        .id()
        .peer_addr()
        .map_or_else(|| "?".to_string(), |a: SocketAddr| a.to_string());
    let local = res.qp.id().local_addr();
    let _registration = ConnectionSet::register(&shared.connections, Arc::new(mailbox.clone()));
    log::info!(
        "iSER connection from {peer} (Send-with-Invalidate {})",
        if res.send_with_invalidate {
            "on"
        } else {
            "off"
        }
    );
    let ring = Ring::new(res.arena.len());
    let mut driver = Driver {
        conn: IserConnection::new(core, local, res.send_with_invalidate, Instant::now()),
        res,
        shared,
        mailbox,
        inbox,
        session: SessionSlot::default(),
        ring,
        pending: VecDeque::new(),
        inflight: VecDeque::new(),
        next_wr: 1,
        reads: 0,
        ending: None,
        done: false,
        disconnected: false,
        peer,
        wcs: Vec::with_capacity(32),
    };
    if driver.shared.stopping() {
        driver.conn.handle_shutdown();
    }
    driver.run();
    driver.teardown();
    log::info!("iSER connection from {} closed", driver.peer);
}

impl Driver {
    fn run(&mut self) {
        if let Err(e) = self.arm() {
            self.fail(format!("arming the CQs: {e}"));
            return;
        }
        while !self.done {
            self.poll_cqs();
            self.drain_inbox();
            self.pump();
            self.post_pending();
            if self.done {
                break;
            }
            let now = Instant::now();
            let mut deadline = self.conn.poll_timeout();
            if let Some(Ending::Core(_, since)) = &self.ending {
                let linger = *since + LINGER;
                deadline = Some(deadline.map_or(linger, |d| d.min(linger)));
            }
            let timeout = match deadline {
                Some(d) => {
                    let ms = d.saturating_duration_since(now).as_millis();
                    PollTimeout::try_from(ms.min(60_000) as u32 + 1).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(self.res.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.mailbox.bell.0.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    self.fail(format!("poll: {e}"));
                    break;
                }
            }
            self.mailbox.bell.clear();
            if let Err(e) = self.ack_channel() {
                self.fail(format!("completion channel: {e}"));
                break;
            }
            let now = Instant::now();
            if self.conn.poll_timeout().is_some_and(|d| d <= now) {
                self.conn.handle_timeout(now);
            }
            if let Some(Ending::Core(reason, since)) = &self.ending {
                if now >= *since + LINGER {
                    log::debug!(
                        "{}: closing ({reason:?}) with {} WRs still outstanding",
                        self.peer,
                        self.inflight.len()
                    );
                    self.done = true;
                }
            }
        }
    }

    /// Re-arms both CQs; completions that raced the arming are found by the next poll.
    fn arm(&self) -> rdma_ffi::Result<()> {
        self.res.recv_cq.req_notify(false)?;
        self.res.send_cq.req_notify(false)
    }

    /// Consumes completion-channel events and re-arms.
    fn ack_channel(&self) -> rdma_ffi::Result<()> {
        let mut fired = false;
        while self.res.channel.get_event()?.is_some() {
            fired = true;
        }
        if fired {
            self.arm()?;
        }
        Ok(())
    }

    fn poll_cqs(&mut self) {
        loop {
            let mut seen = 0;
            self.wcs.clear();
            match self.res.recv_cq.poll(&mut self.wcs, 32) {
                Ok(n) => seen += n,
                Err(e) => return self.fail(format!("polling the receive CQ: {e}")),
            }
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                self.on_recv(wc);
            }
            self.wcs = wcs;
            self.wcs.clear();
            match self.res.send_cq.poll(&mut self.wcs, 32) {
                Ok(n) => seen += n,
                Err(e) => return self.fail(format!("polling the send CQ: {e}")),
            }
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                self.on_send(wc);
            }
            self.wcs = wcs;
            if seen == 0 || self.done {
                return;
            }
            // Completions free room: post what waited, and handle what the core produced.
            self.pump();
            self.post_pending();
        }
    }

    fn on_recv(&mut self, wc: &WorkCompletion) {
        if wc.status != WcStatus::Success {
            if wc.status != WcStatus::WrFlushErr {
                self.fail(format!("receive completion {:?}", wc.status));
            }
            return;
        }
        let slot = (wc.wr_id & !WR_RECV) as usize;
        let offset = slot * self.res.recv_stride;
        let mut message = vec![0u8; (wc.byte_len as usize).min(self.res.recv_stride)];
        if let Err(e) = self.res.recv_mr.read(offset, &mut message) {
            return self.fail(format!("reading receive buffer {slot}: {e}"));
        }
        // Re-post before the PDU is handled, so the buffer is back before any response leaves.
        if self.ending.is_none() {
            if let Err(e) =
                self.res
                    .qp
                    .post_recv(wc.wr_id, &self.res.recv_mr, offset, self.res.recv_stride)
            {
                return self.fail(format!("re-posting receive buffer {slot}: {e}"));
            }
        }
        if self.ending.is_some() {
            return;
        }
        log::trace!("{} <- {} bytes", self.peer, message.len());
        self.conn.handle_receive(&message, Instant::now());
    }

    fn on_send(&mut self, wc: &WorkCompletion) {
        let Some(pos) = self.inflight.iter().position(|f| f.wr_id == wc.wr_id) else {
            log::warn!("{}: completion for unknown wr_id {}", self.peer, wc.wr_id);
            return;
        };
        let Some(done) = self.inflight.remove(pos) else {
            return;
        };
        let arena_start = match &done.buffer {
            Buffer::Arena(start) => Some(*start),
            Buffer::OneOff(_) => None,
        };
        let result = match done.kind {
            Kind::Read { token, len } => {
                self.reads -= 1;
                if wc.status == WcStatus::Success && self.ending.is_none() {
                    let mut data = vec![0u8; len];
                    let read = match &done.buffer {
                        Buffer::Arena(start) => self.res.arena.read(*start, &mut data),
                        Buffer::OneOff(mr) => mr.read(0, &mut data),
                    };
                    match read {
                        Ok(()) => {
                            self.conn
                                .handle_rdma_read_complete(token, data, Instant::now());
                            Ok(())
                        }
                        Err(e) => Err(format!("reading RDMA Read data: {e}")),
                    }
                } else {
                    if wc.status != WcStatus::Success && self.ending.is_none() {
                        self.conn.handle_rdma_read_failed(token);
                    }
                    Ok(())
                }
            }
            Kind::Send | Kind::Write => Ok(()),
        };
        if let Some(start) = arena_start {
            self.ring.free(start);
        }
        if let Err(e) = result {
            return self.fail(e);
        }
        if wc.status != WcStatus::Success && wc.status != WcStatus::WrFlushErr {
            self.fail(format!(
                "send-queue completion {:?} (vendor error {:#x})",
                wc.status, wc.vendor_err
            ));
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(event) = self.inbox.try_recv() {
            match event {
                Event::Completed(id, outcome) => {
                    if self.ending.is_none() {
                        self.conn.handle_scsi_complete(id, outcome);
                    }
                }
                Event::Shutdown => {
                    if self.ending.is_none() {
                        self.conn.handle_shutdown();
                    }
                }
                Event::Cm(kind) => self.on_cm(kind),
            }
        }
    }

    fn on_cm(&mut self, kind: CmEventKind) {
        match kind {
            CmEventKind::Established => log::debug!("{}: established", self.peer),
            CmEventKind::Disconnected | CmEventKind::TimewaitExit => {
                self.disconnected = true;
                if self.ending.is_none() {
                    log::info!("{}: initiator disconnected", self.peer);
                }
                self.fail_quietly("disconnected");
            }
            other => self.fail(format!("rdma_cm event {other:?}")),
        }
    }

    /// Takes the core's operations: session and SCSI requests run now, fabric operations queue
    /// up in order.
    fn pump(&mut self) {
        while let Some(op) = self.conn.poll_op() {
            match op {
                FabricOp::BindSession(request) => {
                    let control = Arc::new(self.mailbox.clone());
                    let mailbox = self.mailbox.clone();
                    let sink: crate::server::session::CompletionSink =
                        Arc::new(move |id, outcome| mailbox.post(Event::Completed(id, outcome)));
                    let result = self.session.bind(&self.shared, &request, control, sink);
                    self.conn.handle_session_bound(result);
                }
                FabricOp::Execute(task) => {
                    if let Some((id, outcome)) = self.session.execute(task) {
                        self.conn.handle_scsi_complete(id, outcome);
                    }
                }
                FabricOp::Reset { lun } => self.session.reset(&self.shared, lun),
                op => self.pending.push_back(op),
            }
        }
    }

    fn post_pending(&mut self) {
        while !self.done {
            let Some(op) = self.pending.pop_front() else {
                return;
            };
            match self.post(op) {
                Ok((Posted::Yes, _)) => {}
                Ok((Posted::Later, Some(op))) => {
                    self.pending.push_front(op);
                    return;
                }
                Ok((Posted::Later, None)) => return,
                Err(e) => return self.fail(e),
            }
        }
    }

    fn room(&self) -> bool {
        self.inflight.len() < self.res.max_send_wr
    }

    /// Stages `len` bytes: arena space, or a one-off registration for oversized transfers.
    fn stage(&mut self, len: usize) -> Result<Option<Buffer>, String> {
        if self.ring.fits(len) {
            Ok(self.ring.alloc(len).map(Buffer::Arena))
        } else {
            MemoryRegion::new(&self.res.pd, len, Access::LOCAL_WRITE)
                .map(|mr| Some(Buffer::OneOff(mr)))
                .map_err(|e| format!("registering a {len}-byte staging buffer: {e}"))
        }
    }

    fn buffer_mr(&self, buffer: &Buffer) -> (Arc<MemoryRegion>, usize) {
        match buffer {
            Buffer::Arena(start) => (Arc::clone(&self.res.arena), *start),
            Buffer::OneOff(mr) => (Arc::clone(mr), 0),
        }
    }

    fn unstage(&mut self, buffer: &Buffer) {
        if let Buffer::Arena(start) = buffer {
            self.ring.free(*start);
        }
    }

    /// Posts one operation, or hands it back when it has to wait.
    fn post(&mut self, op: FabricOp) -> Result<(Posted, Option<FabricOp>), String> {
        match op {
            FabricOp::Close(reason) => {
                if self.ending.is_none() {
                    match &reason {
                        CloseReason::Logout | CloseReason::Shutdown => {
                            log::debug!("{}: closing ({reason:?})", self.peer)
                        }
                        _ => log::warn!("{}: closing ({reason:?})", self.peer),
                    }
                    self.ending = Some(Ending::Core(reason.clone(), Instant::now()));
                }
                if self.inflight.is_empty() {
                    self.done = true;
                    Ok((Posted::Yes, None))
                } else {
                    // Wait for the last Sends (e.g. the Logout Response) to complete.
                    Ok((Posted::Later, Some(FabricOp::Close(reason))))
                }
            }
            FabricOp::Send { bytes, invalidate } => {
                if !self.room() {
                    return Ok((Posted::Later, Some(FabricOp::Send { bytes, invalidate })));
                }
                let Some(buffer) = self.stage(bytes.len())? else {
                    return Ok((Posted::Later, Some(FabricOp::Send { bytes, invalidate })));
                };
                let (mr, offset) = self.buffer_mr(&buffer);
                let wr_id = self.next_wr();
                let posted = mr
                    .write(offset, &bytes)
                    .and_then(|()| {
                        self.res
                            .qp
                            .post_send(wr_id, &mr, offset, bytes.len(), true, invalidate)
                    })
                    .map_err(|e| format!("posting a Send: {e}"));
                self.track(posted, wr_id, buffer, Kind::Send)
            }
            FabricOp::RdmaWrite { stag, va, data } => {
                if data.is_empty() {
                    return Ok((Posted::Yes, None));
                }
                if !self.room() {
                    return Ok((Posted::Later, Some(FabricOp::RdmaWrite { stag, va, data })));
                }
                let Some(buffer) = self.stage(data.len())? else {
                    return Ok((Posted::Later, Some(FabricOp::RdmaWrite { stag, va, data })));
                };
                let (mr, offset) = self.buffer_mr(&buffer);
                let wr_id = self.next_wr();
                let posted = mr
                    .write(offset, &data)
                    .and_then(|()| {
                        self.res
                            .qp
                            .post_rdma_write(wr_id, &mr, offset, data.len(), va, stag, true)
                    })
                    .map_err(|e| format!("posting an RDMA Write: {e}"));
                self.track(posted, wr_id, buffer, Kind::Write)
            }
            FabricOp::RdmaRead {
                token,
                stag,
                va,
                len,
            } => {
                let op = FabricOp::RdmaRead {
                    token,
                    stag,
                    va,
                    len,
                };
                if !self.room() || self.reads >= self.res.max_rdma_reads {
                    return Ok((Posted::Later, Some(op)));
                }
                let len = len as usize;
                let Some(buffer) = self.stage(len)? else {
                    return Ok((Posted::Later, Some(op)));
                };
                let (mr, offset) = self.buffer_mr(&buffer);
                let wr_id = self.next_wr();
                let posted = self
                    .res
                    .qp
                    .post_rdma_read(wr_id, &mr, offset, len, va, stag, true)
                    .map_err(|e| format!("posting an RDMA Read: {e}"));
                if posted.is_ok() {
                    self.reads += 1;
                }
                self.track(posted, wr_id, buffer, Kind::Read { token, len })
            }
            FabricOp::BindSession(_) | FabricOp::Execute(_) | FabricOp::Reset { .. } => {
                unreachable!("handled in pump")
            }
        }
    }

    fn next_wr(&mut self) -> u64 {
        let id = self.next_wr;
        self.next_wr += 1;
        id
    }

    fn track(
        &mut self,
        posted: Result<(), String>,
        wr_id: u64,
        buffer: Buffer,
        kind: Kind,
    ) -> Result<(Posted, Option<FabricOp>), String> {
        match posted {
            Ok(()) => {
                self.inflight.push_back(InFlight {
                    wr_id,
                    buffer,
                    kind,
                });
                Ok((Posted::Yes, None))
            }
            Err(e) => {
                self.unstage(&buffer);
                Err(e)
            }
        }
    }

    /// The fabric failed: stop at once.
    fn fail(&mut self, why: String) {
        if self.ending.is_none() {
            log::warn!("{}: {why}; closing the connection", self.peer);
        }
        self.fail_quietly(&why);
    }

    fn fail_quietly(&mut self, why: &str) {
        if !matches!(self.ending, Some(Ending::Fabric(_))) {
            self.ending = Some(Ending::Fabric(why.to_string()));
        }
        self.done = true;
    }

    /// §12.1: disconnect, wait (bounded) for DISCONNECTED, flush every WR, then let running
    /// commands finish and release the session. Verbs objects are freed when `res` drops.
    fn teardown(&mut self) {
        if let Some(Ending::Fabric(why)) = &self.ending {
            log::debug!("{}: tearing down ({why})", self.peer);
        }
        if let Err(e) = self.res.qp.id().disconnect() {
            log::debug!("{}: rdma_disconnect: {e}", self.peer);
        }
        let deadline = Instant::now() + DISCONNECT_WAIT;
        while !self.disconnected {
            match self.inbox.recv_deadline(deadline) {
                Ok(Event::Cm(
                    CmEventKind::Disconnected
                    | CmEventKind::TimewaitExit
                    | CmEventKind::DeviceRemoval,
                )) => self.disconnected = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match self.res.qp.drain(DRAIN_TIMEOUT) {
            Ok(flushed) => log::debug!("{}: drained {} WRs", self.peer, flushed.len()),
            Err(e) => log::warn!("{}: draining the QP: {e}", self.peer),
        }
        self.inflight.clear();
        self.pending.clear();
        self.session.release(&self.shared);
    }
}
