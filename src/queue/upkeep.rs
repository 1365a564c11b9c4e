//! Time-driven work: delayed and backing-off jobs becoming ready, and
//! completed jobs pruned after their queue's retention.

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

    /// Deletes completed jobs (record, payload, history) past their queue's
    /// retention. Completed entries are in completion order across queues, so
    /// the scan stops at the first one even the shortest retention keeps.
    pub(super) fn prune_completed(&mut self) -> Result<(), StoreError> {
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
