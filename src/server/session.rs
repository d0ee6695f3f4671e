//! What every transport's connection driver does with the core's session-level requests: bind a
//! login to a session (registry + a link to the I/O engine), run SCSI commands, and release both
//! in the right order when the connection ends. Shared by the TCP and iSER drivers.

use std::sync::Arc;

pub(crate) use super::engine::CompletionSink;
use super::engine::{EngineSession, Residence, ThreadIo};
use super::registry::{SessionControl, SessionGuard, SessionOrigin};
use super::Shared;
use crate::iscsi::{BindRequest, LoginStatus, ScsiTask};
use crate::scsi::{Nexus, ScsiOutcome};

/// The session a connection belongs to, once its login is bound.
///
/// Release order matters: the session's commands are drained before the session is
/// unregistered, because a reinstating login waits on the registration.
pub(crate) struct SessionSlot {
    /// The connection's transport and peer, registered with the session.
    origin: SessionOrigin,
    engine: Option<EngineSession>,
    /// Target index and I_T nexus of a normal session, for resets and nexus loss.
    nexus: Option<(usize, Arc<Nexus>)>,
    session: Option<SessionGuard>,
}

impl SessionSlot {
    /// The slot of a connection from `origin`, before its login is bound.
    pub(crate) fn new(origin: SessionOrigin) -> Self {
        SessionSlot {
            origin,
            engine: None,
            nexus: None,
            session: None,
        }
    }

    /// Answers `Action::BindSession` / `FabricOp::BindSession`: registers the session (waiting for
    /// a reinstated one to close) and, for a normal session, attaches it to the I/O engine,
    /// reporting to `sink`. `file_pages`: the connection sends a READ's data from a file's
    /// pages when the engine leaves it there (TCP). Returns the TSIH or the login failure
    /// status.
    pub(crate) fn bind(
        &mut self,
        shared: &Shared,
        request: &BindRequest,
        control: Arc<dyn SessionControl>,
        file_pages: bool,
        sink: CompletionSink,
    ) -> Result<u16, LoginStatus> {
        self.bind_with(shared, request, control, |target, nexus| {
            shared.engine.session(target, nexus, file_pages, sink)
        })
    }

    /// Like [`SessionSlot::bind`], for a connection that will live at `residence` on an engine
    /// thread: the session's commands run on that thread and report to the connection there.
    pub(crate) fn bind_resident(
        &mut self,
        shared: &Shared,
        request: &BindRequest,
        control: Arc<dyn SessionControl>,
        file_pages: bool,
        residence: &Residence,
    ) -> Result<u16, LoginStatus> {
        self.bind_with(shared, request, control, |target, nexus| {
            shared
                .engine
                .resident_session(residence, target, nexus, file_pages)
        })
    }

    fn bind_with(
        &mut self,
        shared: &Shared,
        request: &BindRequest,
        control: Arc<dyn SessionControl>,
        attach: impl FnOnce(usize, Arc<Nexus>) -> EngineSession,
    ) -> Result<u16, LoginStatus> {
        let target_name = request.target.map(|t| shared.targets[t].name.clone());
        let guard = shared.registry.bind(
            request,
            target_name.as_deref(),
            control,
            self.origin.clone(),
        )?;
        let tsih = guard.tsih();
        if let Some(target) = request.target {
            // A reload may have taken the initiator out of the target's ACL after its login
            // was checked: the reload ended every session registered before it looked, and a
            // session registered after that sees the new ACL here.
            if !shared.allows(target, &request.initiator_name) {
                return Err(LoginStatus::AUTHORIZATION_FAILED);
            }
            let nexus = Arc::new(Nexus::iscsi(request.initiator_name.clone(), request.isid));
            self.engine = Some(attach(target, Arc::clone(&nexus)));
            self.nexus = Some((target, nexus));
        }
        self.session = Some(guard);
        Ok(tsih)
    }

    /// Answers `Execute`: queues the command on the engine. Without a normal session bound the
    /// command fails at once with HARDWARE ERROR / INTERNAL TARGET FAILURE, returned for the
    /// caller to hand back to the core.
    pub(crate) fn execute(&self, task: ScsiTask) -> Option<(u64, ScsiOutcome)> {
        match &self.engine {
            Some(engine) => {
                engine.submit(task);
                None
            }
            None => Some((task.id, ScsiOutcome::check_condition(0x04, 0x44, 0x00))),
        }
    }

    /// Answers `Execute` for a connection living on its session's engine thread: the command
    /// runs there at once. Without a normal session it fails as in [`SessionSlot::execute`].
    pub(crate) fn execute_here(
        &self,
        task: ScsiTask,
        io: &mut ThreadIo<'_>,
    ) -> Option<(u64, ScsiOutcome)> {
        match &self.engine {
            Some(engine) => {
                io.execute(engine, task);
                None
            }
            None => Some((task.id, ScsiOutcome::check_condition(0x04, 0x44, 0x00))),
        }
    }

    /// Commands submitted and not yet reported (a connection on an engine thread releases its
    /// session only when this is zero, so [`SessionSlot::release`] does not wait there).
    pub(crate) fn outstanding(&self) -> usize {
        self.engine.as_ref().map_or(0, EngineSession::outstanding)
    }

    /// Lets running commands finish, applies I_T nexus loss, then unregisters the session
    /// (a reinstating login waits on that). Drivers call it when the core closes the
    /// connection, before its last PDUs go out, and again at teardown, where it does nothing
    /// more.
    pub(crate) fn release(&mut self, shared: &Shared) {
        if let Some(engine) = self.engine.take() {
            engine.drain();
        }
        // I_T nexus loss: SPC-2 reservations of this nexus go; persistent ones stay (SPC-4 §5.13).
        if let Some((target, nexus)) = self.nexus.take() {
            shared.scsi_targets[target].release_nexus(&nexus);
        }
        drop(self.session.take());
    }
}
