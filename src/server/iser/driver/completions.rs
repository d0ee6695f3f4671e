//! The connection's completions: receives handed to the adapter (their buffers re-posted first),
//! send-queue work requests retired in posting order, RDMA Reads reported.

use rdma_ffi::{WcStatus, WorkCompletion};

use super::post::{Buffer, InFlight, Kind, Staged};
use super::{recv_slot, Driver, CQ_BATCH};

impl Driver {
    /// Takes every completion of both CQs, [`CQ_BATCH`] per poll, handling each batch before
    /// the next; `true` when there was any.
    pub(super) fn poll_cqs(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut seen = 0;
            self.wcs.clear();
            match self.res.recv_cq.poll(&mut self.wcs, CQ_BATCH) {
                Ok(n) => seen += n,
                Err(e) => {
                    self.fail(format!("polling the receive CQ: {e}"));
                    return any;
                }
            }
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                self.on_recv(wc);
            }
            self.wcs = wcs;
            self.wcs.clear();
            match self.res.send_cq.poll(&mut self.wcs, CQ_BATCH) {
                Ok(n) => seen += n,
                Err(e) => {
                    self.fail(format!("polling the send CQ: {e}"));
                    return any;
                }
            }
            let wcs = std::mem::take(&mut self.wcs);
            for wc in &wcs {
                self.on_send(wc);
            }
            self.wcs = wcs;
            any |= seen > 0;
            if seen == 0 || self.done {
                return any;
            }
            // Completions free room: post what waited, and handle what the core produced.
            self.pump();
            self.post_pending();
        }
    }

    fn on_recv(&mut self, wc: &WorkCompletion) {
        if wc.status != WcStatus::Success {
            // A flush outside teardown means the QP went into error (the peer broke it).
            self.fail(format!("receive completion {:?}", wc.status));
            return;
        }
        let (area, slot) = recv_slot(wc.wr_id);
        let Some(mr) = self.res.recv_areas.get(area).cloned() else {
            return self.fail(format!("receive completion for unknown area {area}"));
        };
        let offset = slot * self.res.recv_stride;
        let len = (wc.byte_len as usize).min(self.res.recv_stride);
        if self.received.len() < len {
            self.received.resize(self.res.recv_stride, 0);
        }
        if let Err(e) = mr.read(offset, &mut self.received[..len]) {
            return self.fail(format!("reading receive buffer {slot}: {e}"));
        }
        // Re-post before the PDU is handled, so the buffer is back before any response leaves.
        if self.ending.is_none() {
            if let Err(e) = self
                .res
                .qp
                .post_recv(wc.wr_id, &mr, offset, self.res.recv_stride)
            {
                return self.fail(format!("re-posting receive buffer {slot}: {e}"));
            }
        }
        if self.ending.is_some() {
            return;
        }
        log::trace!("{} <- {len} bytes", self.peer);
        let now = self.now();
        self.conn.handle_receive(&self.received[..len], now);
    }

    fn on_send(&mut self, wc: &WorkCompletion) {
        let Some(pos) = self.inflight.iter().position(|f| f.wr_id == wc.wr_id) else {
            log::warn!("{}: completion for unknown wr_id {}", self.peer, wc.wr_id);
            return;
        };
        // Unsignaled WRs posted before this one (RDMA Writes chained ahead of their response,
        // RDMA Reads chained ahead of the last of a batch) completed with it: a send queue
        // completes in posting order. So the search above looks only at WRs retired below:
        // constant work per WR, not a scan per completion (only an unknown wr_id, a bug or a
        // broken provider, looks at them all).
        for i in 0..=pos {
            let Some(done) = self.inflight.pop_front() else {
                break;
            };
            let status = if i == pos {
                wc.status
            } else {
                WcStatus::Success
            };
            self.retire(done, status);
        }
        // A flush outside teardown means the QP went into error (the peer broke it).
        if wc.status != WcStatus::Success {
            self.fail(format!(
                "send-queue completion {:?} (vendor error {:#x})",
                wc.status, wc.vendor_err
            ));
        }
    }

    /// A completed send-queue WR: its staged bytes are freed, an RDMA Read reported to the
    /// adapter, an RDMA Write's source buffer given back (only now).
    fn retire(&mut self, done: InFlight, status: WcStatus) {
        if let Buffer::Staged(Staged::Arena(start)) = &done.buffer {
            self.free_staged(*start);
        }
        if let Kind::Read { token } = done.kind {
            self.reads -= 1;
            if self.ending.is_none() {
                // The data landed in the task's buffer itself: nothing to copy.
                if status == WcStatus::Success {
                    let now = self.now();
                    self.conn.handle_rdma_read_complete(token, now);
                } else {
                    self.conn.handle_rdma_read_failed(token);
                }
            }
        }
    }
}
