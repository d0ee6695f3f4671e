//! The task table of one connection: every SCSI command from its acceptance to its last response.
//!
//! Tasks are found by id or by ITT in O(1), and the counts and queues that CmdSN flow control and
//! task ordering need are kept up to date as tasks come and go, so no event scans the table.
//!
//! Task ordering (SAM-5 task attributes, as the core has always applied them): a SIMPLE, UNTAGGED
//! or ACA task may start once its data is in unless an ORDERED task that arrived before it has not
//! finished; an ORDERED task starts once every task other than HEAD OF QUEUE that arrived before it
//! has finished; a HEAD OF QUEUE task starts as soon as its data is in and holds nothing back.
//! "Arrived" means handed to the table: queued commands come in CmdSN order (the connection holds
//! commands that are ahead of ExpCmdSN), immediate ones when they are received.

use std::collections::VecDeque;

use super::bytes::CdbBytes;
use super::connection::TaskId;
use super::pdu::TaskAttribute;

use crate::inthash::IntMap;

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// Waiting for (more) data-out from the datamover.
    AwaitingData,
    /// All data in; waiting for its turn (task ordering).
    Ready,
    /// Handed to the backend.
    Running,
}

/// One SCSI command.
#[derive(Debug)]
pub(super) struct Task<C> {
    /// The transport's context, given with the SCSI Command PDU; it lives exactly as long as the
    /// task.
    pub(super) context: C,
    pub(super) itt: u32,
    /// Sent as an immediate command (takes no CmdSN, outside the queue depth).
    pub(super) immediate: bool,
    pub(super) lun: u64,
    pub(super) lun_field: [u8; 8],
    pub(super) cdb: CdbBytes,
    pub(super) attribute: TaskAttribute,
    pub(super) expected_length: u32,
    pub(super) write: bool,
    /// Data-out bytes the datamover has brought in, in order from offset 0 (immediate data
    /// included); the task is ready once this reaches `expected_length`.
    pub(super) received: u32,
    /// Aborted by a TMF while running: its result is discarded.
    pub(super) aborted: bool,
}

/// A task with its place in the table.
#[derive(Debug)]
struct Entry<C> {
    task: Task<C>,
    state: TaskState,
    /// Neighbours in the arrival list (tasks other than HEAD OF QUEUE).
    earlier: Option<TaskId>,
    later: Option<TaskId>,
}

/// The tasks of a connection, indexed by id and ITT, with the arrival order task ordering needs.
#[derive(Debug)]
pub(super) struct TaskTable<C> {
    entries: IntMap<TaskId, Entry<C>>,
    /// ITT → task; ITTs are unique among the tasks (a duplicate is rejected before insertion).
    by_itt: IntMap<u32, TaskId>,
    /// Ends of the arrival list of every task but HEAD OF QUEUE ones, linked through the entries.
    oldest: Option<TaskId>,
    newest: Option<TaskId>,
    /// Unfinished ORDERED tasks, oldest first: the first one holds back every later task.
    ordered: VecDeque<TaskId>,
    /// The oldest ORDERED task finished: the tasks it held back have not been looked at yet.
    released: bool,
    /// Tasks that took a CmdSN (not immediate): what the CmdSN window shrinks by.
    queued: u32,
    /// Tasks in the backend.
    running: usize,
    /// Ids increase with arrival, so comparing ids compares arrival.
    next_id: TaskId,
}

impl<C> TaskTable<C> {
    pub(super) fn new() -> Self {
        TaskTable {
            entries: IntMap::default(),
            by_itt: IntMap::default(),
            oldest: None,
            newest: None,
            ordered: VecDeque::new(),
            released: false,
            queued: 0,
            running: 0,
            next_id: 1,
        }
    }

    /// Tasks in the table.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tasks that took a CmdSN.
    pub(super) fn queued(&self) -> u32 {
        self.queued
    }

    /// Tasks handed to the backend.
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// Adds a task, waiting for data; its ITT must not be in use.
    pub(super) fn insert(&mut self, task: Task<C>) -> TaskId {
        let id = self.next_id;
        self.next_id += 1;
        let previous = self.by_itt.insert(task.itt, id);
        debug_assert!(previous.is_none(), "ITT {:#x} already in use", task.itt);
        let mut entry = Entry {
            task,
            state: TaskState::AwaitingData,
            earlier: None,
            later: None,
        };
        if entry.task.attribute != TaskAttribute::HeadOfQueue {
            entry.earlier = self.newest;
            match self.newest {
                Some(newest) => self.entry_mut(newest).later = Some(id),
                None => self.oldest = Some(id),
            }
            self.newest = Some(id);
        }
        if entry.task.attribute == TaskAttribute::Ordered {
            self.ordered.push_back(id);
        }
        if !entry.task.immediate {
            self.queued += 1;
        }
        self.entries.insert(id, entry);
        id
    }

    /// Takes a task out of the table, whatever its state.
    pub(super) fn remove(&mut self, id: TaskId) -> Option<Task<C>> {
        let entry = self.entries.remove(&id)?;
        self.by_itt.remove(&entry.task.itt);
        if entry.task.attribute != TaskAttribute::HeadOfQueue {
            match entry.earlier {
                Some(earlier) => self.entry_mut(earlier).later = entry.later,
                None => self.oldest = entry.later,
            }
            match entry.later {
                Some(later) => self.entry_mut(later).earlier = entry.earlier,
                None => self.newest = entry.earlier,
            }
        }
        if entry.task.attribute == TaskAttribute::Ordered {
            if self.ordered.front() == Some(&id) {
                self.ordered.pop_front();
                self.released = true;
            } else if let Some(pos) = self.ordered.iter().position(|&o| o == id) {
                self.ordered.remove(pos);
            }
        }
        if !entry.task.immediate {
            self.queued -= 1;
        }
        if entry.state == TaskState::Running {
            self.running -= 1;
        }
        Some(entry.task)
    }

    pub(super) fn get(&self, id: TaskId) -> Option<&Task<C>> {
        self.entries.get(&id).map(|e| &e.task)
    }

    pub(super) fn get_mut(&mut self, id: TaskId) -> Option<&mut Task<C>> {
        self.entries.get_mut(&id).map(|e| &mut e.task)
    }

    pub(super) fn state(&self, id: TaskId) -> Option<TaskState> {
        self.entries.get(&id).map(|e| e.state)
    }

    /// The task with this ITT.
    pub(super) fn id_of_itt(&self, itt: u32) -> Option<TaskId> {
        self.by_itt.get(&itt).copied()
    }

    /// Every task, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (TaskId, &Task<C>)> {
        self.entries.iter().map(|(&id, e)| (id, &e.task))
    }

    /// Marks a task that waits for data ready once all its data-out is in (a task without
    /// data-out at once); whether task ordering lets it start now. One lookup for what the
    /// start of every command needs.
    pub(super) fn ready_if_complete(&mut self, id: TaskId) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let task = &entry.task;
        if entry.state != TaskState::AwaitingData
            || (task.write && task.received < task.expected_length)
        {
            return false;
        }
        entry.state = TaskState::Ready;
        let attribute = task.attribute;
        self.ordering_allows(id, attribute)
    }

    /// Whether task ordering lets a ready task with this id and attribute start now.
    fn ordering_allows(&self, id: TaskId, attribute: TaskAttribute) -> bool {
        match attribute {
            TaskAttribute::HeadOfQueue => true,
            TaskAttribute::Ordered => self.oldest == Some(id),
            _ => self.ordered.front().map_or(true, |&ordered| id < ordered),
        }
    }

    /// Whether a task may start now: it is ready and task ordering lets it.
    pub(super) fn may_start(&self, id: TaskId) -> bool {
        let Some(entry) = self.entries.get(&id) else {
            return false;
        };
        entry.state == TaskState::Ready && self.ordering_allows(id, entry.task.attribute)
    }

    /// Hands a ready task to the backend: it is running from now on.
    pub(super) fn start(&mut self, id: TaskId) -> Option<&mut Task<C>> {
        let entry = self.entries.get_mut(&id)?;
        if entry.state != TaskState::Ready {
            return None;
        }
        entry.state = TaskState::Running;
        self.running += 1;
        Some(&mut entry.task)
    }

    /// Appends to `out`, in arrival order, the ready tasks that tasks leaving the table let start:
    /// those the oldest ORDERED task held back once it is gone, and the oldest ORDERED task once
    /// every task before it is gone. Only a departure of an ORDERED task makes this walk the queue.
    pub(super) fn released_tasks(&mut self, out: &mut Vec<TaskId>) {
        let first_ordered = self.ordered.front().copied();
        if std::mem::take(&mut self.released) {
            let mut cursor = self.oldest;
            while let Some(id) = cursor {
                if Some(id) == first_ordered {
                    break;
                }
                let entry = &self.entries[&id];
                if entry.state == TaskState::Ready {
                    out.push(id);
                }
                cursor = entry.later;
            }
        }
        if let Some(ordered) = first_ordered {
            if self.may_start(ordered) {
                out.push(ordered);
            }
        }
    }

    fn entry_mut(&mut self, id: TaskId) -> &mut Entry<C> {
        self.entries
            .get_mut(&id)
            .expect("the arrival list links only tasks in the table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(itt: u32, attribute: TaskAttribute, immediate: bool) -> Task<()> {
        Task {
            context: (),
            itt,
            immediate,
            lun: 0,
            lun_field: [0; 8],
            cdb: CdbBytes::default(),
            attribute,
            expected_length: 0,
            write: false,
            received: 0,
            aborted: false,
        }
    }

    /// The scheduling rule written out as a walk over every task in arrival order, as the core
    /// did it before the table kept its own bookkeeping: what may start now.
    fn reference_startable(model: &[(TaskId, TaskAttribute, TaskState)]) -> Vec<TaskId> {
        let mut start = Vec::new();
        let mut earlier_pending = false;
        let mut blocked = false;
        for &(id, attribute, state) in model {
            let ready = state == TaskState::Ready;
            match attribute {
                TaskAttribute::HeadOfQueue => {
                    if ready {
                        start.push(id);
                    }
                }
                _ if blocked => {}
                TaskAttribute::Ordered => {
                    if ready && !earlier_pending {
                        start.push(id);
                    }
                    blocked = true;
                }
                _ => {
                    if ready {
                        start.push(id);
                    }
                    earlier_pending = true;
                }
            }
        }
        start
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random arrivals, data completions and departures: the table starts exactly what the
    /// reference walk allows, when it allows it, and its counts match the tasks it holds.
    #[test]
    fn table_schedules_like_a_walk_over_every_task() {
        const ATTRIBUTES: [TaskAttribute; 5] = [
            TaskAttribute::Simple,
            TaskAttribute::Simple,
            TaskAttribute::Ordered,
            TaskAttribute::HeadOfQueue,
            TaskAttribute::Untagged,
        ];
        for seed in 1..=10u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut table = TaskTable::<()>::new();
            let mut model: Vec<(TaskId, TaskAttribute, TaskState)> = Vec::new();
            let mut next_itt = 0u32;
            let mut released = Vec::new();
            let mut starts = 0;
            // Departures of an ORDERED task that let later tasks start.
            let mut walks = 0;
            for _ in 0..3000 {
                match rng.below(3) {
                    0 if model.len() < 40 => {
                        let attribute = ATTRIBUTES[rng.below(5) as usize];
                        next_itt += 1;
                        let id = table.insert(task(next_itt, attribute, rng.below(4) == 0));
                        assert_eq!(table.id_of_itt(next_itt), Some(id));
                        model.push((id, attribute, TaskState::AwaitingData));
                    }
                    1 => {
                        let waiting: Vec<usize> = (0..model.len())
                            .filter(|&i| model[i].2 == TaskState::AwaitingData)
                            .collect();
                        if waiting.is_empty() {
                            continue;
                        }
                        let i = waiting[rng.below(waiting.len() as u64) as usize];
                        let id = model[i].0;
                        let may_start = table.ready_if_complete(id);
                        model[i].2 = TaskState::Ready;
                        let allowed = reference_startable(&model);
                        assert_eq!(may_start, allowed.contains(&id), "seed {seed}");
                        assert_eq!(table.may_start(id), may_start, "seed {seed}");
                        assert!(allowed.iter().all(|&a| a == id), "seed {seed}: {allowed:?}");
                        if table.may_start(id) {
                            assert!(table.start(id).is_some());
                            model[i].2 = TaskState::Running;
                            starts += 1;
                        }
                    }
                    _ => {
                        if model.is_empty() {
                            continue;
                        }
                        let (id, _, _) = model.remove(rng.below(model.len() as u64) as usize);
                        let itt = table.get(id).expect("in the table").itt;
                        assert_eq!(table.remove(id).map(|t| t.itt), Some(itt));
                        assert_eq!(table.id_of_itt(itt), None);
                        table.released_tasks(&mut released);
                        assert_eq!(released, reference_startable(&model), "seed {seed}");
                        walks +=
                            usize::from(released.iter().any(|&r| {
                                table.get(r).unwrap().attribute != TaskAttribute::Ordered
                            }));
                        for id in released.drain(..) {
                            assert!(table.start(id).is_some());
                            let entry = model.iter_mut().find(|m| m.0 == id).unwrap();
                            entry.2 = TaskState::Running;
                            starts += 1;
                        }
                    }
                }
                assert!(reference_startable(&model).is_empty(), "seed {seed}");
                assert_eq!(table.entries.len(), model.len());
                let running = model.iter().filter(|m| m.2 == TaskState::Running).count();
                assert_eq!(table.running(), running);
                let queued = model
                    .iter()
                    .filter(|m| !table.get(m.0).unwrap().immediate)
                    .count();
                assert_eq!(table.queued() as usize, queued);
            }
            assert!(starts > 200, "seed {seed}: only {starts} tasks started");
            assert!(
                walks > 10,
                "seed {seed}: only {walks} releases behind ORDERED tasks"
            );
        }
    }

    #[test]
    fn removing_the_only_task_empties_the_arrival_list() {
        let mut table = TaskTable::<()>::new();
        let a = table.insert(task(1, TaskAttribute::Ordered, false));
        let b = table.insert(task(2, TaskAttribute::Simple, false));
        table.remove(a);
        table.remove(b);
        assert!(table.is_empty());
        assert_eq!((table.oldest, table.newest), (None, None));
        assert!(table.ordered.is_empty());
        // The ITT is free again and a new task goes to the front.
        let c = table.insert(task(1, TaskAttribute::Ordered, false));
        assert!(table.ready_if_complete(c));
        assert!(table.may_start(c));
    }
}
