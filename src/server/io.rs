//! Backend I/O workers. Each session gets its own small pool, so a slow backend or a flood of
//! commands from one session never holds up another session's I/O; the protocol thread never
//! blocks on storage.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::iscsi::{ScsiTask, TaskId};
use crate::scsi::{Nexus, ScsiOutcome, ScsiRequest, ScsiTarget};

/// Where finished commands are reported (the connection's event queue).
pub type CompletionSink = Arc<dyn Fn(TaskId, ScsiOutcome) + Send + Sync>;

/// A pool of threads running SCSI commands against one target's LUNs.
pub struct IoWorkers {
    jobs: Option<Sender<ScsiTask>>,
    threads: Vec<JoinHandle<()>>,
}

impl IoWorkers {
    /// Starts `count` workers running commands from `nexus` on `target`, reporting to `sink`.
    pub fn start(
        count: usize,
        target: Arc<ScsiTarget>,
        nexus: Arc<Nexus>,
        sink: CompletionSink,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<ScsiTask>();
        let mut threads = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let queue: Receiver<ScsiTask> = queue.clone();
            let target = Arc::clone(&target);
            let sink = Arc::clone(&sink);
            let nexus = Arc::clone(&nexus);
            let handle = std::thread::Builder::new()
                .name(format!("io-worker-{index}"))
                .spawn(move || {
                    for task in queue {
                        let outcome = target.execute(&ScsiRequest {
                            nexus: &nexus,
                            lun: task.lun,
                            cdb: &task.cdb,
                            data_out: &task.data_out,
                            expected_transfer_length: task.expected_transfer_length,
                            task_attr: task.attribute,
                        });
                        sink(task.id, outcome);
                    }
                })?;
            threads.push(handle);
        }
        Ok(IoWorkers {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Queues a command.
    pub fn submit(&self, task: ScsiTask) {
        if let Some(jobs) = &self.jobs {
            // The receivers live as long as the workers, which live as long as `self`.
            let _ = jobs.send(task);
        }
    }
}

impl Drop for IoWorkers {
    /// Lets queued commands finish, then joins the workers, so no backend write outlives the
    /// connection that issued it.
    fn drop(&mut self) {
        self.jobs.take();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}
