//! Time-driven work: delayed and backing-off jobs becoming ready, and
//! completed jobs pruned after their queue's retention.

use std::time::Duration;

use super::now_ms;
use super::scheduler::Scheduler;
use crate::store::layout;
use crate::store::records::JobState;
use crate::store::{StoreError, record};

/// Most jobs promoted or pruned in one batch.
const UPKEEP_BATCH: usize = 10_000;

impl Scheduler {
    /// Delayed and backing-off jobs whose time has come become ready (one batch
    /// of at most `UPKEEP_BATCH`; the next pass follows at once if more are due).
    pub(super) fn promote_due(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        self.next_due_ms = None;
        let mut batch = sled::Batch::default();
        let mut promoted = 0;
        for kv in self.store.tree().scan_prefix([layout::DUE]) {
            let (k, _) = kv?;
            let Some((due, id)) = layout::parse_due(&k) else {
                continue;
            };
            if due > now || promoted >= UPKEEP_BATCH {
                self.next_due_ms = Some(due.max(now));
                break;
            }
            match self.load_job(&id)? {
                Some(mut job) if job.state == JobState::Delayed => {
                    self.transition(&id, &mut job, JobState::Ready, &mut batch);
                    job.due_ms = 0;
                    batch.insert(layout::job(&id), record(&job));
                }
                _ => batch.remove(k),
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
            .values()
            .map(|q| q.settings.retention)
            .min()
            .unwrap_or(Duration::ZERO);
        let mut batch = sled::Batch::default();
        let (mut pruned, mut changed) = (0, false);
        for kv in self.store.tree().scan_prefix([layout::COMPLETED]) {
            let (k, v) = kv?;
            let Some((done, _)) = layout::parse_due(&k) else {
                continue;
            };
            if done + shortest.as_millis() as u64 > now || pruned >= UPKEEP_BATCH {
                break;
            }
            let ids = layout::completed_ids(&k, &v);
            let mut kept = Vec::new();
            for id in &ids {
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
            if kept.is_empty() {
                batch.remove(k);
                changed = true;
            } else if kept.len() < ids.len() {
                batch.insert(k, layout::completed_value(&kept));
                changed = true;
            }
        }
        if changed {
            self.commit(batch)?;
        }
        Ok(())
    }
}
