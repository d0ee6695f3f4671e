//! One NVMe/TCP queue connection living on an engine thread: the thread polls its socket in
//! its ring, hands what it reads to the sans-IO [`Queue`], carries out the queue's actions
//! (controller creation and joins against the shared registry, I/O as SCSI commands on the
//! namespace's LUN, PDUs into the outbox) and writes with non-blocking vectored writes.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{NvmeState, QueueHandle};
use crate::iscsi::tcp::DataInBuf;
use crate::iscsi::TaskId;
use crate::nvme::auth::dh::DhResult;
use crate::nvme::{Action, CloseReason, Queue, DISCOVERY_SUBSYSTEM};
use crate::scsi::{Nexus, ScsiOutcome};
use crate::server::admission::AdmissionTicket;
use crate::server::engine::{EngineSession, Interest, Residence, Resident, ThreadIo};
use crate::server::registry::SessionControl;
use crate::server::tcp::link::{read_turn, ResidentControl, SocketLink, TurnReader, READ_CHUNK};
use crate::server::{ConnectionRegistration, ConnectionSet, Shared};
use mem_ffi::Payload;

/// Moves a freshly accepted connection to an engine thread.
pub(super) fn start(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: AdmissionTicket,
    nvme: Arc<NvmeState>,
    shared: Arc<Shared>,
) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let residence = shared.engine.reserve_residence();
    let control = ResidentControl::new(residence.clone());
    let registration = ConnectionSet::register(&shared.connections, control.clone());
    log::debug!("NVMe/TCP connection from {peer}");
    let queue = Queue::new(nvme.config_for(local), Instant::now());
    residence.attach(Box::new(NvmeResident {
        queue,
        link: SocketLink::new(stream, peer, "NVMe/TCP host"),
        nvme,
        shared,
        residence: residence.clone(),
        control,
        engine: None,
        place: None,
        released: false,
        computed: Arc::default(),
        _registration: registration,
        _ticket: ticket,
    }));
    Ok(())
}

/// The engine session running a queue's I/O, the subsystem it belongs to and its I_T nexus.
struct Attached {
    session: EngineSession,
    subsystem: usize,
    nexus: Arc<Nexus>,
}

struct NvmeResident {
    queue: Queue,
    link: SocketLink,
    nvme: Arc<NvmeState>,
    shared: Arc<Shared>,
    residence: Residence,
    control: Arc<ResidentControl>,
    /// Once connected to an NVM subsystem's controller.
    engine: Option<Attached>,
    /// (controller ID, queue ID) once connected, until released.
    place: Option<(u16, u16)>,
    /// Its I/O drained and its place in the controller given up (a closing queue is released
    /// once its I/O is reported).
    released: bool,
    /// Where the authentication pool leaves the result of the queue's [`Action::Compute`] before it
    /// pokes the queue.
    computed: Arc<Mutex<Option<DhResult>>>,
    _registration: ConnectionRegistration,
    _ticket: AdmissionTicket,
}

impl Resident for NvmeResident {
    fn start(&mut self, io: &mut ThreadIo<'_>) {
        if self.shared.stopping() || self.control.requested() {
            self.queue.handle_shutdown();
            self.carry_out_actions(io);
        }
    }

    fn ready(&mut self, interest: Interest, result: io::Result<usize>, io: &mut ThreadIo<'_>) {
        if self.link.ready(interest, result) {
            read_turn(self, io);
        }
    }

    fn completed(&mut self, id: TaskId, outcome: ScsiOutcome, io: &mut ThreadIo<'_>) {
        if !self.link.closing {
            self.queue.handle_scsi_complete(id, outcome);
            self.carry_out_actions(io);
        }
    }

    fn poked(&mut self, io: &mut ThreadIo<'_>) {
        if self.link.closing {
            return;
        }
        let computed = self
            .computed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(result) = computed {
            self.queue.handle_computed(result, io.now());
        }
        if self.control.requested() {
            self.queue.handle_shutdown();
        } else {
            // The gateway's ANA state or the allowed hosts may have changed
            // (NvmeState::set_alua_state, NvmeState::set_allowed_hosts).
            self.follow_ana(io.now());
            self.follow_allowed_hosts(io.now());
        }
        self.carry_out_actions(io);
    }

    fn timeout(&mut self, now: Instant, io: &mut ThreadIo<'_>) {
        if self.link.check_stall(now) {
            return;
        }
        if !self.link.closing && self.queue.poll_timeout().is_some_and(|due| due <= now) {
            self.queue.handle_timeout(now);
            self.carry_out_actions(io);
        }
    }

    fn abort(&mut self, _io: &mut ThreadIo<'_>) {
        self.link.break_off();
    }

    fn settle(&mut self, io: &mut ThreadIo<'_>) {
        if self.link.closing && !self.released {
            if self
                .engine
                .as_ref()
                .is_some_and(|e| e.session.outstanding() > 0)
            {
                // Released when the last I/O is reported (a later settle).
                return;
            }
            self.release();
        }
        self.link.settle(io);
    }

    fn deadline(&self) -> Option<Instant> {
        self.link.deadline(self.queue.poll_timeout())
    }

    fn is_finished(&self) -> bool {
        self.link.is_finished()
    }
}

impl TurnReader for NvmeResident {
    fn link(&mut self) -> &mut SocketLink {
        &mut self.link
    }

    fn rooms(&mut self) -> (&TcpStream, &mut [u8], &mut [u8]) {
        let (first, second) = self.queue.read_buffers(READ_CHUNK);
        (&self.link.stream, first, second)
    }

    fn received(&mut self, n: usize, _room: usize, io: &mut ThreadIo<'_>) {
        self.queue.handle_read(n, io.now());
        if n > 0 {
            self.carry_out_actions(io);
        }
    }

    fn ended(&self) -> bool {
        self.queue.is_closed()
    }
}

impl NvmeResident {
    fn carry_out_actions(&mut self, io: &mut ThreadIo<'_>) {
        while let Some(action) = self.queue.poll_action() {
            self.perform(action, io);
        }
    }

    fn perform(&mut self, action: Action, io: &mut ThreadIo<'_>) {
        match action {
            Action::Send(bytes) => self.link.outbox.push_bytes(bytes),
            Action::SendPdu(head) => self.link.outbox.push_head(&head),
            Action::SendData {
                head,
                data,
                range,
                tail,
            } => {
                let outbox = &mut self.link.outbox;
                let data = match data {
                    Payload::Owned(buf) => DataInBuf::Whole(buf),
                    Payload::Lent(ranges) => DataInBuf::Lent(ranges),
                    Payload::File(span) => DataInBuf::File(span),
                };
                outbox.push_head(&head);
                outbox.push_buffer(data, range);
                outbox.push_head(&tail);
            }
            Action::CreateController(request) => {
                let result = self
                    .nvme
                    .admit(request.subsystem, &request.host_nqn, |registry| {
                        registry.create(&request)
                    });
                if let Ok((cntlid, _)) = &result {
                    let host = (request.host_nqn.as_str(), request.host_id);
                    self.join((*cntlid, 0), request.subsystem, host);
                }
                self.queue.handle_controller_created(result, io.now());
                // The ANA state or the allowed hosts may have changed after this queue was
                // accepted and before it was reachable for the poke that announces them.
                self.follow_ana(io.now());
                self.follow_allowed_hosts(io.now());
            }
            Action::JoinController(request) => {
                let result = self
                    .nvme
                    .admit(request.subsystem, &request.host_nqn, |registry| {
                        registry.join(&request)
                    });
                if result.is_ok() {
                    let host = (request.host_nqn.as_str(), request.host_id);
                    self.join((request.cntlid, request.qid), request.subsystem, host);
                }
                self.queue.handle_controller_joined(result, io.now());
            }
            Action::ControllerChanged { cntlid, state } => {
                let ended = self.nvme.lock_registry().update(cntlid, state);
                self.nvme.shut_down_queues(cntlid, &ended);
            }
            Action::Compute(work) => {
                let (slot, residence) = (Arc::clone(&self.computed), self.residence.clone());
                self.shared.engine.compute(move || {
                    let result = work.run();
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                    residence.poke();
                });
            }
            Action::Authenticated(how) => {
                if let Some(place @ (cntlid, qid)) = self.place {
                    log::info!(
                        "{}: NVMe/TCP host authenticated on queue {qid} of controller {cntlid} \
                         ({how})",
                        self.link.peer
                    );
                    if let Some(handle) = self.nvme.lock_queues().get_mut(&place) {
                        handle.authentication = Some(how);
                    }
                }
            }
            Action::Execute(command) => {
                let id = command.id;
                let target = self.engine.as_ref().and_then(|e| {
                    let ns = self.nvme.namespace(e.subsystem, command.nsid)?;
                    Some((e, ns))
                });
                match target {
                    Some((attached, ns)) => {
                        let task = crate::nvme::scsi::lower(
                            command,
                            attached.subsystem,
                            ns.lun,
                            ns.block_size,
                        );
                        io.execute(&attached.session, task);
                    }
                    // The core checks the namespace before it executes; this cannot happen
                    // on a connected I/O queue, and fails the command if it does.
                    None => self
                        .queue
                        .handle_scsi_complete(id, ScsiOutcome::check_condition(0x04, 0x44, 0)),
                }
            }
            Action::HostNotAllowed {
                host_nqn,
                subsystem_nqn,
            } => {
                // As nvmet logs it (drivers/nvme/target/fabrics-cmd.c): "connect by host ...
                // for subsystem ... not allowed".
                self.shared.refusals.log(
                    Instant::now(),
                    format_args!(
                        "{}: NVMe/TCP host {host_nqn} is not allowed to connect to \
                         {subsystem_nqn} (allowed_hosts)",
                        self.link.peer
                    ),
                );
                self.shared.refusals.nvme_host_not_allowed();
            }
            Action::Close(reason) => {
                if matches!(reason, CloseReason::AuthenticationFailed(_)) {
                    self.shared.refusals.nvme_authentication_failed();
                }
                // Failures before a queue serves a namespace (no Connect in time, garbage
                // instead of an ICReq, a failed DH-HMAC-CHAP) cost a stranger nothing: they
                // are logged under the refusal limit, like refused iSCSI logins.
                let stranger = match &reason {
                    CloseReason::AuthenticationFailed(_) | CloseReason::ConnectTimeout => true,
                    CloseReason::ProtocolError(_) => self.engine.is_none(),
                    _ => false,
                };
                match &reason {
                    CloseReason::Disconnect | CloseReason::Shutdown => {
                        log::debug!("{}: NVMe/TCP queue closing ({reason:?})", self.link.peer)
                    }
                    CloseReason::HostTerminated { .. } => {
                        log::info!("{}: NVMe/TCP queue closing ({reason:?})", self.link.peer)
                    }
                    _ if stranger => {
                        self.shared.refusals.log(
                            Instant::now(),
                            format_args!("{}: NVMe/TCP queue closing ({reason:?})", self.link.peer),
                        );
                    }
                    _ => log::warn!("{}: NVMe/TCP queue closing ({reason:?})", self.link.peer),
                }
                self.link.closing = true;
            }
        }
    }

    /// Hands the gateway's current ANA group to the queue: an admin queue whose controller
    /// has not seen it yet reports it and sends the ANA change notice.
    fn follow_ana(&mut self, now: Instant) {
        self.queue.handle_ana_changed(self.nvme.ana(), now);
    }

    /// Hands the subsystems' allowed hosts to the queue: a discovery controller whose host
    /// sees other subsystems now sends a Discovery Log Page Change notice.
    fn follow_allowed_hosts(&mut self, now: Instant) {
        let allowed = self.nvme.lock_allowed_hosts();
        self.queue.handle_allowed_hosts_changed(&allowed, now);
    }

    /// The queue is now queue `qid` of controller `cntlid`: it can be reached to shut down,
    /// and an NVM subsystem's queue gets an engine session for its I/O. The nexus is the
    /// host's (NQN and Host Identifier), shared by all its controllers: reservations bind a
    /// host, not one controller (NVMe base 2.0 §8.19).
    fn join(&mut self, (cntlid, qid): (u16, u16), subsystem: usize, host: (&str, [u8; 16])) {
        self.place = Some((cntlid, qid));
        let handle = QueueHandle {
            control: self.control.clone(),
            residence: self.residence.clone(),
            peer: self.link.peer,
            since: Instant::now(),
            authentication: None,
        };
        self.nvme.lock_queues().insert((cntlid, qid), handle);
        if subsystem != DISCOVERY_SUBSYSTEM {
            let nexus = Arc::new(Nexus::nvme(host.0, host.1));
            let session = self.shared.engine.resident_session(
                &self.residence,
                subsystem,
                Arc::clone(&nexus),
                self.queue.sends_file_pages(),
            );
            self.engine = Some(Attached {
                session,
                subsystem,
                nexus,
            });
        }
    }

    /// Gives up the queue's place: an admin queue's controller ends with its I/O queues, an
    /// I/O queue leaves its controller. Called once no I/O is outstanding.
    fn release(&mut self) {
        self.released = true;
        if let Some(attached) = self.engine.take() {
            // I_T nexus loss, as an iSCSI session's end: the LUs forget the nexus (its unit
            // attention queue), or every controller ever connected would stay listed there.
            // Sibling queues of the controller that still run are registered again by their
            // next command (losing a pending unit attention, which NVMe hosts cannot read).
            drop(attached.session);
            self.shared.scsi_targets[attached.subsystem].release_nexus(&attached.nexus);
        }
        let Some((cntlid, qid)) = self.place.take() else {
            return;
        };
        {
            // Only this queue's own entry: after a controller reset a new queue with the same
            // ID may have joined while this one was still closing.
            let mut queues = self.nvme.lock_queues();
            let mine: Arc<dyn SessionControl> = self.control.clone();
            if queues
                .get(&(cntlid, qid))
                .is_some_and(|h| Arc::ptr_eq(&h.control, &mine))
            {
                queues.remove(&(cntlid, qid));
            }
        }
        if qid == 0 {
            let ended = self.nvme.lock_registry().remove(cntlid);
            self.nvme.shut_down_queues(cntlid, &ended);
        } else {
            self.nvme.lock_registry().leave(cntlid, qid);
        }
    }
}

impl Drop for NvmeResident {
    fn drop(&mut self) {
        if !self.released {
            // Dropped unsettled (its thread stopped): its I/O is over with the engine.
            self.release();
        }
        log::debug!("NVMe/TCP connection from {} closed", self.link.peer);
    }
}
