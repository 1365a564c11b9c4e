//! Time-driven work: delayed and backing-off jobs becoming ready, jobs not
//! started by their expiry dead-lettered, and completed jobs pruned after
//! their queue's retention.

use std::time::Duration;

use super::now_ms;
use super::scheduler::Scheduler;
use crate::store::StoreError;
use crate::store::queue::Writes;
use crate::store::records::JobState;

/// Most jobs promoted or pruned in one batch.
const UPKEEP_BATCH: usize = 10_000;

impl Scheduler {
    /// Delayed and backing-off jobs whose time has come become ready (one batch
    /// of at most `UPKEEP_BATCH`; the next pass follows at once if more are due).
    pub(super) fn promote_due(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        self.next_due_ms = None;
        let mut batch = Writes::default();
        let mut promoted = 0;
        for kv in self.store.due() {
            let (due, id) = kv?;
            if due > now || promoted >= UPKEEP_BATCH {
                self.next_due_ms = Some(due.max(now));
                break;
            }
            match self.load_job(&id)? {
                Some(mut job) if job.state == JobState::Delayed => {
                    self.transition(&id, &mut job, JobState::Ready, &mut batch);
                    job.due_ms = 0;
                    batch.put_job(&id, &job);
                }
                _ => batch.remove_due(due, &id),
            }
            promoted += 1;
        }
        if promoted > 0 {
            self.commit(batch)?;
        }
        Ok(())
    }

    /// Lists a job in the expiry table: [`Self::expire_due`] looks at it then.
    pub(super) fn watch_expiry(&mut self, expires_ms: u64, id: &uuid::Uuid, batch: &mut Writes) {
        batch.put_expiry(expires_ms, id);
        if self.next_expiry_ms.is_none_or(|t| expires_ms < t) {
            self.next_expiry_ms = Some(expires_ms);
        }
    }

    /// Jobs whose expiry has passed and that have not started (ready,
    /// delayed, held, waiting for children) are dead-lettered with reason
    /// `expired`; a running one is left to end (its retry will not start).
    /// Each expiry entry is removed once its time has passed, whatever the
    /// job became: entries are not removed when jobs finish, to keep that
    /// path free of an extra write.
    pub(super) fn expire_due(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        self.next_expiry_ms = None;
        let mut batch = Writes::default();
        let mut seen = 0;
        for kv in self.store.expiries() {
            let (at, id) = kv?;
            if at > now || seen >= UPKEEP_BATCH {
                self.next_expiry_ms = Some(at.max(now));
                break;
            }
            seen += 1;
            batch.remove_expiry(at, &id);
            if self.attempts.contains(&id) {
                continue;
            }
            if let Some(mut job) = self.store.job(&id)?
                && matches!(
                    job.state,
                    JobState::Ready | JobState::Delayed | JobState::Held | JobState::Waiting
                )
                && job.expires_ms == at
            {
                self.expire(&id, &mut job, &mut batch);
            }
        }
        if seen > 0 {
            self.commit(batch)?;
        }
        Ok(())
    }

    /// Deletes completed jobs (record, payload, history) past their queue's
    /// retention. Completed entries are in completion order across queues, so
    /// the scan stops at the first one even the shortest retention keeps.
    pub(super) fn prune_completed(&mut self) -> Result<(), StoreError> {
        // Per-key rate buckets are upkeep too: full ones go, as often as pruning runs.
        let instant = tokio::time::Instant::now();
        self.queues
            .iter_mut()
            .for_each(|q| q.forget_full_buckets(instant));
        let now = now_ms();
        let shortest = self
            .queues
            .iter()
            .map(|q| q.settings.retention)
            .min()
            .unwrap_or(Duration::ZERO);
        let mut batch = Writes::default();
        let (mut pruned, mut changed) = (0, false);
        for entry in self.store.completed() {
            let entry = entry?;
            let done = entry.done_ms;
            if done + shortest.as_millis() as u64 > now || pruned >= UPKEEP_BATCH {
                break;
            }
            let mut kept = Vec::new();
            for id in &entry.jobs {
                let Some(job) = self.load_job(id)? else {
                    continue;
                };
                let retention = self
                    .queues
                    .get(&job.queue)
                    .map_or(Duration::ZERO, |q| q.settings.retention);
                if job.state != JobState::Completed {
                    continue; // not completed any more: no longer listed
                }
                if done + retention.as_millis() as u64 > now {
                    kept.push(*id);
                    continue;
                }
                self.delete_job(id, &job, &mut batch, true)?;
                pruned += 1;
            }
            // An entry listing no job any more goes; one that lost some is rewritten.
            if kept.is_empty() || kept.len() < entry.jobs.len() {
                batch.keep_completed(&entry, &kept);
                changed = true;
            }
        }
        if changed {
            self.commit(batch)?;
        }
        Ok(())
    }
}
