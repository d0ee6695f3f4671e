//! The controllers of a target process, as plain data: the environment keeps one registry
//! (under a lock when queues run on several threads) and answers the queues' cross-connection
//! actions with it. Dynamic controller model (NVMe-oF 1.1 §3.3): an admin queue Connect
//! creates a controller and gets a fresh controller ID; an I/O queue Connect joins an existing
//! one by ID, from the same host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::controller::ControllerShared;
use super::queue::{ConnectRefusal, ControllerState, CreateRequest, JoinRequest};

/// Controller IDs the dynamic model hands out (0xFFF0 and up are reserved, base 2.0 §3.1.2).
const CNTLID_RANGE: std::ops::RangeInclusive<u16> = 1..=0xFFEF;

#[derive(Debug)]
struct Entry {
    subsystem: usize,
    host_nqn: String,
    host_id: [u8; 16],
    state: ControllerState,
    shared: Arc<ControllerShared>,
    io_queues: BTreeSet<u16>,
}

/// All live controllers.
#[derive(Debug, Default)]
pub struct ControllerRegistry {
    controllers: BTreeMap<u16, Entry>,
    next_cntlid: u16,
}

impl ControllerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new controller for an admin queue Connect: its ID and shared state.
    pub fn create(
        &mut self,
        request: &CreateRequest,
    ) -> Result<(u16, Arc<ControllerShared>), ConnectRefusal> {
        let span = CNTLID_RANGE.len();
        let start = self.next_cntlid.max(*CNTLID_RANGE.start());
        let cntlid = (0..span)
            .map(|i| {
                let offset = (usize::from(start - 1) + i) % span;
                *CNTLID_RANGE.start() + offset as u16
            })
            .find(|id| !self.controllers.contains_key(id))
            .ok_or(ConnectRefusal::ControllerBusy)?;
        self.next_cntlid = cntlid.checked_add(1).unwrap_or(1);
        let shared = Arc::new(ControllerShared::default());
        self.controllers.insert(
            cntlid,
            Entry {
                subsystem: request.subsystem,
                host_nqn: request.host_nqn.clone(),
                host_id: request.host_id,
                state: ControllerState::default(),
                shared: shared.clone(),
                io_queues: BTreeSet::new(),
            },
        );
        Ok((cntlid, shared))
    }

    /// Joins an I/O queue to its controller: the same subsystem and host, a ready controller,
    /// a queue ID within what Set Features (Number of Queues) granted and not yet connected.
    pub fn join(&mut self, request: &JoinRequest) -> Result<Arc<ControllerShared>, ConnectRefusal> {
        let entry = self
            .controllers
            .get_mut(&request.cntlid)
            .filter(|e| {
                e.subsystem == request.subsystem
                    && e.host_nqn == request.host_nqn
                    && e.host_id == request.host_id
            })
            .ok_or(ConnectRefusal::UnknownController)?;
        if !entry.state.ready {
            return Err(ConnectRefusal::ControllerNotReady);
        }
        if request.qid > entry.state.io_queues || !entry.io_queues.insert(request.qid) {
            return Err(ConnectRefusal::InvalidQueue);
        }
        Ok(entry.shared.clone())
    }

    /// Records what the admin queue says of its controller. When the controller is no longer
    /// ready (reset or shutdown), its I/O queues are returned: the environment shuts them down.
    pub fn update(&mut self, cntlid: u16, state: ControllerState) -> Vec<u16> {
        let Some(entry) = self.controllers.get_mut(&cntlid) else {
            return Vec::new();
        };
        entry.state = state;
        if state.ready {
            Vec::new()
        } else {
            std::mem::take(&mut entry.io_queues).into_iter().collect()
        }
    }

    /// An I/O queue closed.
    pub fn leave(&mut self, cntlid: u16, qid: u16) {
        if let Some(entry) = self.controllers.get_mut(&cntlid) {
            entry.io_queues.remove(&qid);
        }
    }

    /// The admin queue closed: the controller is gone. Returns its I/O queues to shut down.
    pub fn remove(&mut self, cntlid: u16) -> Vec<u16> {
        self.controllers
            .remove(&cntlid)
            .map(|e| e.io_queues.into_iter().collect())
            .unwrap_or_default()
    }

    /// Controllers alive.
    pub fn len(&self) -> usize {
        self.controllers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.controllers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_request() -> CreateRequest {
        CreateRequest {
            subsystem: 0,
            host_nqn: "nqn.2014-08.org.nvmexpress:uuid:host".into(),
            host_id: [7; 16],
        }
    }

    fn join_request(cntlid: u16, qid: u16) -> JoinRequest {
        JoinRequest {
            cntlid,
            qid,
            subsystem: 0,
            host_nqn: "nqn.2014-08.org.nvmexpress:uuid:host".into(),
            host_id: [7; 16],
        }
    }

    #[test]
    fn controller_ids_are_unique_and_io_queues_join_ready_controllers() {
        let mut r = ControllerRegistry::new();
        let (a, _) = r.create(&create_request()).unwrap();
        let (b, _) = r.create(&create_request()).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            r.join(&join_request(a, 1)).unwrap_err(),
            ConnectRefusal::ControllerNotReady
        );
        r.update(
            a,
            ControllerState {
                ready: true,
                io_queues: 2,
            },
        );
        r.join(&join_request(a, 1)).unwrap();
        assert_eq!(
            r.join(&join_request(a, 1)).unwrap_err(),
            ConnectRefusal::InvalidQueue
        );
        assert_eq!(
            r.join(&join_request(a, 3)).unwrap_err(),
            ConnectRefusal::InvalidQueue
        );
        let mut other_host = join_request(a, 2);
        other_host.host_nqn = "nqn.2014-08.org.nvmexpress:uuid:other".into();
        assert_eq!(
            r.join(&other_host).unwrap_err(),
            ConnectRefusal::UnknownController
        );
        r.join(&join_request(a, 2)).unwrap();
        assert_eq!(r.update(a, ControllerState::default()), vec![1, 2]);
        assert_eq!(r.remove(b), Vec::<u16>::new());
        assert_eq!(r.len(), 1);
    }
}
