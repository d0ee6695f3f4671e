//! The controllers of a target process, as plain data: the environment keeps one registry
//! (under a lock when queues run on several threads) and answers the queues' cross-connection
//! actions with it. Dynamic controller model (NVMe-oF 1.1 §3.3): an admin queue Connect
//! creates a controller and gets a fresh controller ID; an I/O queue Connect joins an existing
//! one by ID, from the same host.
//!
//! Gateways serving one subsystem (docs/multipath.md) hand out controller IDs from disjoint
//! ranges ([`gateway_cntlids`]): a host that reaches the subsystem through two of them
//! refuses a second controller with an ID it already has (Linux drivers/nvme/host/core.c
//! nvme_validate_cntlid, "Duplicate cntlid").

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Arc;

use super::controller::ControllerShared;
use super::queue::{ConnectRefusal, ControllerState, CreateRequest, JoinRequest};

/// Controller IDs the dynamic model hands out (0xFFF0 and up are reserved, base 2.0 §3.1.2).
const CNTLID_RANGE: RangeInclusive<u16> = 1..=0xFFEF;

/// Controller IDs per gateway in [`gateway_cntlids`].
const GATEWAY_CNTLIDS: u16 = 1024;
/// Disjoint blocks of [`GATEWAY_CNTLIDS`] IDs that fit below 0xFFF0.
const GATEWAY_BLOCKS: u16 = 63;

/// The controller IDs of the gateway in ALUA target port group `group`: 1023 IDs, in a block
/// of 1024 chosen by `group`, so gateways whose groups differ modulo 63 (any of 1..=63) never
/// give a host two controllers with one ID. Group 1 gets 1..=1023.
pub fn gateway_cntlids(group: u16) -> RangeInclusive<u16> {
    let block = group.saturating_sub(1) % GATEWAY_BLOCKS;
    let start = block * GATEWAY_CNTLIDS + 1;
    start..=start + GATEWAY_CNTLIDS - 2
}

#[derive(Debug)]
struct Entry {
    subsystem: usize,
    host_nqn: String,
    host_id: [u8; 16],
    state: ControllerState,
    shared: Arc<ControllerShared>,
    io_queues: BTreeSet<u16>,
}

/// A live controller as an operator sees it ([`ControllerRegistry::list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerListing {
    pub cntlid: u16,
    /// Its subsystem's index ([`crate::nvme::DISCOVERY_SUBSYSTEM`] for discovery).
    pub subsystem: usize,
    pub host_nqn: String,
    /// I/O queues connected now.
    pub io_queues: usize,
}

/// All live controllers.
#[derive(Debug)]
pub struct ControllerRegistry {
    controllers: BTreeMap<u16, Entry>,
    /// The controller IDs this registry hands out.
    cntlids: RangeInclusive<u16>,
    next_cntlid: u16,
}

impl Default for ControllerRegistry {
    fn default() -> Self {
        Self::with_cntlids(CNTLID_RANGE)
    }
}

impl ControllerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that hands out controller IDs from `cntlids` (within 1..=0xFFEF) only.
    pub fn with_cntlids(cntlids: RangeInclusive<u16>) -> Self {
        let start = (*cntlids.start()).max(*CNTLID_RANGE.start());
        let end = (*cntlids.end()).min(*CNTLID_RANGE.end()).max(start);
        ControllerRegistry {
            controllers: BTreeMap::new(),
            cntlids: start..=end,
            next_cntlid: start,
        }
    }

    /// A new controller for an admin queue Connect: its ID and shared state.
    pub fn create(
        &mut self,
        request: &CreateRequest,
    ) -> Result<(u16, Arc<ControllerShared>), ConnectRefusal> {
        let (first, last) = (*self.cntlids.start(), *self.cntlids.end());
        let span = usize::from(last - first) + 1;
        let start = self.next_cntlid.clamp(first, last);
        let cntlid = (0..span)
            .map(|i| {
                let offset = (usize::from(start - first) + i) % span;
                first + offset as u16
            })
            .find(|id| !self.controllers.contains_key(id))
            .ok_or(ConnectRefusal::ControllerBusy)?;
        self.next_cntlid = if cntlid == last { first } else { cntlid + 1 };
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

    /// Every live controller, by controller ID.
    pub fn list(&self) -> Vec<ControllerListing> {
        self.controllers
            .iter()
            .map(|(cntlid, e)| ControllerListing {
                cntlid: *cntlid,
                subsystem: e.subsystem,
                host_nqn: e.host_nqn.clone(),
                io_queues: e.io_queues.len(),
            })
            .collect()
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
    fn gateways_hand_out_disjoint_controller_ids() {
        assert_eq!(gateway_cntlids(1), 1..=1023);
        assert_eq!(gateway_cntlids(2), 1025..=2047);
        assert_eq!(gateway_cntlids(63), 63489..=64511);
        assert_eq!(gateway_cntlids(64), gateway_cntlids(1));
        assert!(*gateway_cntlids(63).end() < 0xFFF0);
        let mut r = ControllerRegistry::with_cntlids(5..=6);
        let ids: Vec<u16> = (0..2)
            .map(|_| r.create(&create_request()).unwrap().0)
            .collect();
        assert_eq!(ids, [5, 6]);
        assert_eq!(
            r.create(&create_request()).unwrap_err(),
            ConnectRefusal::ControllerBusy
        );
        r.remove(5);
        assert_eq!(r.create(&create_request()).unwrap().0, 5);
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
