//! Attempts in progress: the live record of each running job, its lease, and
//! whether its start is written yet.
//!
//! Starting a job writes nothing at once (most end within milliseconds, and
//! their end is all the store needs to see); an attempt still running
//! [`START_RECORD_DELAY`] later, or when the scheduler stops, has its start
//! written: its ready entry gives way to a running entry holding the attempt.
//!
//! Invariants:
//! - a job is here exactly while its call is in flight for the scheduler
//!   (started, outcome not yet recorded), and its stored record is the one
//!   from before it started: readers take the live one from here;
//! - each attempt here has one lease, at its `lease_until`;
//! - an attempt whose start is not written is in the queue of unwritten
//!   starts (ended ones are skipped when reached), and the store still holds
//!   its ready entry.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

use super::leases::Leases;
use crate::store::queue::{QueueId, ReadySlot, Writes};
use crate::store::records::{AttemptRecord, JobRecord};

/// How long an attempt runs before its start is written.
pub const START_RECORD_DELAY: Duration = Duration::from_millis(50);

/// A job being run. Its `J` record in the store is the one from before it
/// started (see `store::layout`); this is the live one.
pub struct RunningAttempt {
    pub queue: QueueId,
    pub record: AttemptRecord,
    pub job: JobRecord,
    pub invocation_id: Uuid,
    pub lease_until: Instant,
    /// Whether the store holds its running entry yet: until then it holds
    /// the job's ready entry.
    pub start_recorded: bool,
}

#[derive(Default)]
pub struct Attempts {
    by_job: HashMap<Uuid, RunningAttempt>,
    /// Attempts whose start is not written yet, oldest first.
    unrecorded: VecDeque<(Instant, Uuid)>,
    pub leases: Leases,
}

/// An attempt whose lease ran out: its job, queue and call.
pub struct Expired {
    pub job: Uuid,
    pub queue: QueueId,
    pub invocation_id: Uuid,
}

impl Attempts {
    /// A job's call went out at `now`.
    pub fn begin(&mut self, id: Uuid, attempt: RunningAttempt, now: Instant) {
        self.leases.add(attempt.lease_until, id);
        self.unrecorded.push_back((now, id));
        self.by_job.insert(id, attempt);
    }

    pub fn get(&self, id: &Uuid) -> Option<&RunningAttempt> {
        self.by_job.get(id)
    }

    /// A running job's live record (a handler's progress and log lines go
    /// into it as well as into the stored one).
    pub fn job_mut(&mut self, id: &Uuid) -> Option<&mut JobRecord> {
        self.by_job.get_mut(id).map(|a| &mut a.job)
    }

    /// Moves a running attempt's lease to `until` (a heartbeat); its one
    /// lease stays its only one. Returns the attempt.
    pub fn extend(&mut self, id: &Uuid, until: Instant) -> Option<&RunningAttempt> {
        let a = self.by_job.get_mut(id)?;
        self.leases.remove(a.lease_until, *id);
        a.lease_until = until;
        self.leases.add(until, *id);
        Some(a)
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.by_job.contains_key(id)
    }

    /// The running jobs, in id order.
    pub fn sorted_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.by_job.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Ends the attempt of `job` whose call is `invocation_id`. `None` when
    /// the job is not running or the outcome is of an attempt already ended
    /// (a result and a lease expiry that crossed).
    pub fn end(&mut self, job: &Uuid, invocation_id: Uuid) -> Option<RunningAttempt> {
        if self
            .by_job
            .get(job)
            .is_none_or(|r| r.invocation_id != invocation_id)
        {
            return None;
        }
        let r = self.by_job.remove(job)?;
        self.leases.remove(r.lease_until, *job);
        Some(r)
    }

    /// Takes the attempts whose lease ran out by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Expired> {
        (self.leases.expired(now).into_iter())
            .filter_map(|job| {
                let r = self.by_job.get(&job)?;
                Some(Expired {
                    job,
                    queue: r.queue,
                    invocation_id: r.invocation_id,
                })
            })
            .collect()
    }

    pub fn has_unrecorded_starts(&self) -> bool {
        !self.unrecorded.is_empty()
    }

    /// Writes into `batch` the start of attempts running for
    /// [`START_RECORD_DELAY`] by `now` (of all, if `all`): the ready entry
    /// gives way to a running entry holding the attempt. Returns the queues
    /// whose jobs it moved.
    pub fn record_starts(
        &mut self,
        now: Instant,
        all: bool,
        batch: &mut Writes,
    ) -> BTreeSet<QueueId> {
        let mut queues = BTreeSet::new();
        while let Some(&(at, id)) = self.unrecorded.front() {
            if !all && now.duration_since(at) < START_RECORD_DELAY {
                break;
            }
            self.unrecorded.pop_front();
            let Some(r) = self.by_job.get_mut(&id) else {
                continue; // it ended already
            };
            if r.start_recorded {
                continue;
            }
            r.start_recorded = true;
            batch.remove_ready(&ReadySlot::of(&r.job));
            batch.put_running(&id, &r.record);
            queues.insert(r.job.queue_id);
        }
        queues
    }
}
