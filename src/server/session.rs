//! What every transport's connection driver does with the core's session-level requests: bind a
//! login to a session (registry + I/O workers), run SCSI commands, and release both in the right
//! order when the connection ends. Shared by the TCP and iSER drivers.

use std::sync::Arc;

use super::io::{CompletionSink, IoWorkers};
use super::registry::{SessionControl, SessionGuard};
use super::Shared;
use crate::iscsi::{BindRequest, LoginStatus, ScsiTask};
use crate::scsi::{Nexus, ScsiOutcome};

/// Backend worker threads per session.
const WORKERS_PER_SESSION: usize = 4;

/// The session a connection belongs to, once its login is bound.
///
/// Field order matters: the workers are dropped (finishing running commands) before the
/// session is unregistered, because a reinstating login waits on the registration.
#[derive(Default)]
pub(crate) struct SessionSlot {
    workers: Option<IoWorkers>,
    session: Option<SessionGuard>,
}

impl SessionSlot {
    /// Answers `Action::BindSession` / `FabricOp::BindSession`: registers the session (waiting for
    /// a reinstated one to close) and, for a normal session, starts its I/O workers reporting to
    /// `sink`. Returns the TSIH or the login failure status.
    pub(crate) fn bind(
        &mut self,
        shared: &Shared,
        request: &BindRequest,
        control: Arc<dyn SessionControl>,
        sink: CompletionSink,
    ) -> Result<u16, LoginStatus> {
        let target_name = request.target.map(|t| shared.targets[t].name.clone());
        let guard = shared
            .registry
            .bind(request, target_name.as_deref(), control)?;
        let tsih = guard.tsih();
        if let Some(target) = request.target {
            let scsi = Arc::clone(&shared.scsi_targets[target]);
            let nexus = Arc::new(Nexus {
                initiator_name: request.initiator_name.clone(),
                isid: request.isid,
            });
            match IoWorkers::start(WORKERS_PER_SESSION, scsi, nexus, sink) {
                Ok(workers) => self.workers = Some(workers),
                Err(e) => {
                    log::error!("cannot start I/O workers: {e}");
                    return Err(LoginStatus::OUT_OF_RESOURCES);
                }
            }
        }
        self.session = Some(guard);
        Ok(tsih)
    }

    /// Answers `Execute`: queues the command on the session's workers. Without workers (no
    /// normal session bound) the command fails at once with HARDWARE ERROR / INTERNAL TARGET
    /// FAILURE, returned for the caller to hand back to the core.
    pub(crate) fn execute(&self, task: ScsiTask) -> Option<(u64, ScsiOutcome)> {
        match &self.workers {
            Some(workers) => {
                workers.submit(task);
                None
            }
            None => Some((task.id, ScsiOutcome::check_condition(0x04, 0x44, 0x00))),
        }
    }

    /// Lets running commands finish, then unregisters the session.
    pub(crate) fn release(&mut self) {
        drop(self.workers.take());
        drop(self.session.take());
    }
}
