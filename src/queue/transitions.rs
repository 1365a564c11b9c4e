//! Moving a job between states: its index entry, record and the queue's
//! counters change in the caller's batch, together. FIFO groups are released
//! here when a job leaves for good.

use uuid::Uuid;

use super::now_ms;
use super::scheduler::{Scheduler, unit_random};
use crate::store::StoreError;
use crate::store::queue::{FnId, QueueId};
use crate::store::queue::{ReadySlot, Writes};
use crate::store::records::{ErrorRecord, FailReason, JobRecord, JobState};

impl Scheduler {
    /// Writes the index entry for a job's current state.
    pub(super) fn place(&mut self, id: &Uuid, job: &JobRecord, batch: &mut Writes) {
        match job.state {
            JobState::Ready => {
                let slot = ReadySlot::of(job);
                if let Some(rt) = self.queues.by_id_mut(job.queue_id) {
                    rt.ready.placed(&slot);
                }
                batch.put_ready(&slot, id);
            }
            JobState::Delayed => {
                batch.put_due(job.due_ms, id);
                if self.next_due_ms.is_none_or(|d| job.due_ms < d) {
                    self.next_due_ms = Some(job.due_ms);
                }
            }
            // Written by `record_starts`, with the attempt, once it has run a while.
            JobState::Running => {}
            // Listed in the one completed entry the batch writes.
            JobState::Completed => batch.add_completed(job.finished_ms, id),
            JobState::Dead => batch.put_dead(job.queue_id, job.dead_seq, id),
            JobState::Waiting => batch.put_waiting(job.queue_id, job.seq, id),
            // Held jobs live only in their group's list (written at enqueue).
            JobState::Cancelled | JobState::Held => {}
        }
    }

    /// Removes the index entry for a job's current state.
    pub(super) fn unplace(id: &Uuid, job: &JobRecord, batch: &mut Writes) {
        match job.state {
            JobState::Ready => batch.remove_ready(&ReadySlot::of(job)),
            JobState::Delayed => batch.remove_due(job.due_ms, id),
            JobState::Running => batch.remove_running(id),
            // Its batch's entry lists other jobs too: pruning rewrites it.
            JobState::Completed => {}
            JobState::Dead => batch.remove_dead(job.queue_id, job.dead_seq),
            JobState::Waiting => batch.remove_waiting(job.queue_id, job.seq),
            JobState::Cancelled | JobState::Held => {}
        }
    }

    /// Moves a job to `to` in one batch: index, record, counters.
    pub(super) fn transition(
        &mut self,
        id: &Uuid,
        job: &mut JobRecord,
        to: JobState,
        batch: &mut Writes,
    ) {
        let from = job.state;
        if to == JobState::Dead && from != JobState::Dead {
            self.metrics.dead_lettered(&job.queue);
        }
        Self::unplace(id, job, batch);
        job.state = to;
        self.place(id, job, batch);
        batch.put_job(id, job);
        self.counters.count(job.queue_id, Some(from), Some(to));
        if to == JobState::Ready {
            self.mark_ready(job.queue_id, job.fn_id);
        }
        if matches!(
            to,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        ) {
            self.release_group(id, job, batch, true);
            self.child_finished(id, job, to);
        }
    }

    /// A FIFO job left its group (finished, dead, cancelled or deleted): drop its
    /// entry and, if `promote`, let the group's next job run.
    pub(super) fn release_group(
        &mut self,
        id: &Uuid,
        job: &JobRecord,
        batch: &mut Writes,
        promote: bool,
    ) {
        let Some(group) = &job.group else { return };
        batch.remove_group_entry(job.queue_id, group, job.seq);
        if !promote {
            return;
        }
        let next = self
            .store
            .group(job.queue_id, group)
            .find(|other| other != id);
        let Some(next_id) = next else { return };
        match self.load_job(&next_id) {
            Ok(Some(mut next_job)) if next_job.state == JobState::Held => {
                let to = if next_job.due_ms > now_ms() {
                    JobState::Delayed
                } else {
                    JobState::Ready
                };
                self.transition(&next_id, &mut next_job, to, batch);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(job = %next_id, error = %e, "cannot promote the next job of a FIFO group")
            }
        }
    }

    pub(super) fn mark_ready(&mut self, q: QueueId, f: FnId) {
        if let Some(rt) = self.queues.by_id_mut(q) {
            rt.ready.mark(f);
        }
    }

    /// A failed attempt: back off and retry, or dead-letter when attempts are spent.
    pub(super) fn fail(
        &mut self,
        id: &Uuid,
        job: &mut JobRecord,
        err: ErrorRecord,
        batch: &mut Writes,
    ) {
        tracing::debug!(job = %id, attempt = job.attempts, reason = err.reason.as_str(), "attempt failed");
        job.last_error = Some(err);
        if job.attempts >= job.max_attempts {
            job.dead_seq = self.seq.take(batch);
            job.finished_ms = now_ms();
            tracing::info!(job = %id, queue = %job.queue, attempts = job.attempts, "job dead-lettered");
            self.transition(id, job, JobState::Dead, batch);
        } else {
            let settings = &self.queues[job.queue.as_str()].settings;
            let delay = settings.backoff(job.attempts, unit_random());
            job.due_ms = now_ms() + delay.as_millis() as u64;
            self.transition(id, job, JobState::Delayed, batch);
        }
    }

    /// A job not started by its expiry: dead-lettered with reason `expired`
    /// (no attempt is spent; redrive runs it, without the expiry).
    pub(super) fn expire(&mut self, id: &Uuid, job: &mut JobRecord, batch: &mut Writes) {
        tracing::info!(job = %id, queue = %job.queue, "job expired before it started");
        job.last_error = Some(ErrorRecord {
            reason: FailReason::Expired,
            code: FailReason::Expired.as_str().to_owned(),
            message: format!(
                "not started before its expiry ({} ms since the epoch)",
                job.expires_ms
            ),
            stacktrace: None,
        });
        job.dead_seq = self.seq.take(batch);
        job.finished_ms = now_ms();
        self.transition(id, job, JobState::Dead, batch);
    }

    /// Removes every trace of a job (index, record with its payload and history, idempotency key).
    pub(super) fn delete_job(
        &mut self,
        id: &Uuid,
        job: &JobRecord,
        batch: &mut Writes,
        promote: bool,
    ) -> Result<(), StoreError> {
        Self::unplace(id, job, batch);
        batch.remove_job(id);
        if let Some(key) = &job.idempotency_key {
            batch.remove_idempotency(job.queue_id, key);
        }
        // Deleting a group's active job lets the next one run; a held one just leaves.
        let was_head = !matches!(
            job.state,
            JobState::Held | JobState::Completed | JobState::Dead | JobState::Cancelled
        );
        self.release_group(id, job, batch, promote && was_head);
        if !matches!(
            job.state,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        ) {
            // A flow's child deleted unfinished (purged) ends for its parent.
            self.child_finished(id, job, JobState::Cancelled);
        }
        self.counters.count(job.queue_id, Some(job.state), None);
        Ok(())
    }
}
