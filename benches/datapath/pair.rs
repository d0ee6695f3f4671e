//! The in-memory pair: the target's side of the wire in the benchmark's own thread. Bytes from the
//! initiator go through a `PduReader` into `iscsi::Connection`; its commands run at once on a
//! `scsi::ScsiTarget` over the RAM backend; its PDUs go out through `framing::encode`. Time,
//! allocations and payload copies are counted only while the target side runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iser_target::config::Config;
use iser_target::iscsi::framing::{self, FrameSettings, PduReader};
use iser_target::iscsi::text::TargetPolicy;
use iser_target::iscsi::{Action, CloseReason, Connection, CoreConfig, TargetDescriptor};
use iser_target::scsi::{Nexus, ScsiRequest, ScsiTarget};
use iser_target::stats::{thread_payload_copies, CopyCounts};
use mem_ffi::{AllocCounts, CountingAllocator};

use crate::initiator::Wire;

/// Bytes handed to the target's `PduReader` at a time: what one read of the server's TCP reader
/// thread takes at most. Feeding it more at once would make it move the unconsumed rest again
/// after every PDU.
const CHUNK: usize = 256 << 10;

/// What the target side cost, summed over every `send`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetCost {
    pub time: Duration,
    pub allocations: AllocCounts,
    pub copies: CopyCounts,
}

/// The core, SCSI and RAM backend of one session, driven by hand.
pub struct PairTarget {
    conn: Connection,
    scsi: Arc<ScsiTarget>,
    nexus: Option<Nexus>,
    settings: FrameSettings,
    reader: PduReader,
    /// Framed PDUs the target sent, not yet received by the initiator.
    outbox: VecDeque<Vec<u8>>,
    /// The PDU the initiator received last.
    delivered: Vec<u8>,
    now: Instant,
    pub cost: TargetCost,
}

/// The core configuration the TCP portals of `config` get, as far as the data path goes: what
/// `Server::start` builds for them (server::tcp_core_config, which is private). Timers are left
/// at their defaults: the pair has no clock.
pub fn tcp_core_config(config: &Config) -> CoreConfig {
    let limits = &config.limits;
    CoreConfig {
        targets: config
            .targets
            .iter()
            .map(|t| TargetDescriptor {
                name: t.name.clone(),
                allowed_initiators: t.allowed_initiators.clone(),
                luns: t.luns.iter().map(|l| l.id).collect(),
                auth: t.auth.clone(),
                initiator_auth: t.initiator_auth.clone(),
            })
            .collect(),
        policy: TargetPolicy {
            max_recv_data_segment_length: limits.max_recv_data_segment_length,
            max_burst_length: limits.max_burst_length,
            first_burst_length: limits.first_burst_length,
            max_outstanding_r2t: limits.max_outstanding_r2t,
            digests_allowed: true,
            require_initial_r2t: false,
            iser: false,
        },
        queue_depth: limits.queue_depth,
        max_transfer_length: iser_target::scsi::MAX_TRANSFER_BYTES,
        ..CoreConfig::default()
    }
}

impl PairTarget {
    /// A connection in the login phase whose commands run on `scsi`.
    pub fn new(core: Arc<CoreConfig>, scsi: Arc<ScsiTarget>) -> Self {
        let now = Instant::now();
        PairTarget {
            conn: Connection::new(core, None, now),
            scsi,
            nexus: None,
            settings: FrameSettings::default(),
            reader: PduReader::new(),
            outbox: VecDeque::new(),
            delivered: Vec::new(),
            now,
            cost: TargetCost::default(),
        }
    }

    /// Carries out the core's actions until it has none left, running commands as they come,
    /// as the server's connection thread and I/O workers would.
    fn pump(&mut self) {
        let mut ready = Vec::new();
        loop {
            while let Some(action) = self.conn.poll_action() {
                match action {
                    Action::Send { pdu, .. } => {
                        self.outbox.push_back(framing::encode(&pdu, &self.settings));
                    }
                    Action::SetFrameSettings(settings) => self.settings = settings,
                    Action::BindSession(request) => {
                        self.nexus = Some(Nexus {
                            initiator_name: request.initiator_name.clone(),
                            isid: request.isid,
                        });
                        self.conn.handle_session_bound(Ok(1));
                    }
                    Action::Execute(task) => ready.push(task),
                    Action::Reset { .. } => {}
                    Action::Close(CloseReason::Logout) => {}
                    Action::Close(reason) => panic!("the target closed the connection: {reason:?}"),
                }
            }
            if ready.is_empty() {
                return;
            }
            let nexus = self.nexus.as_ref().expect("commands only after login");
            for task in ready.drain(..) {
                let outcome = self.scsi.execute(&ScsiRequest {
                    nexus,
                    lun: task.lun,
                    cdb: &task.cdb,
                    data_out: &task.data_out,
                    expected_transfer_length: task.expected_transfer_length,
                    task_attr: task.attribute,
                });
                self.conn.handle_scsi_complete(task.id, outcome);
            }
        }
    }
}

impl Wire for PairTarget {
    fn send(&mut self, bytes: &[u8]) {
        let started = Instant::now();
        let allocations = CountingAllocator::thread();
        let copies = thread_payload_copies();
        for piece in bytes.chunks(CHUNK) {
            self.reader.push(piece);
            loop {
                match self.reader.next_pdu(&self.settings) {
                    Ok(Some(pdu)) => self.conn.handle_pdu(pdu, self.now),
                    Ok(None) => break,
                    Err(error) => panic!("the initiator's framing is broken: {error}"),
                }
                self.pump();
            }
        }
        self.cost.allocations = self.cost.allocations + (CountingAllocator::thread() - allocations);
        self.cost.copies = self.cost.copies + (thread_payload_copies() - copies);
        self.cost.time += started.elapsed();
    }

    /// One PDU at a time.
    fn receive(&mut self) -> &[u8] {
        self.delivered = self
            .outbox
            .pop_front()
            .expect("the target has nothing to say");
        &self.delivered
    }
}
