//! Running jobs: the dispatch pass that starts ready jobs where a queue has
//! free slots and a worker provides the function, and the recording of
//! attempts' outcomes. Each set of outcomes taken together is one batch:
//! sled blocks writers while it flushes, so fewer, larger batches keep the
//! scheduler from stalling behind the syncer.
//!
//! Starting a job writes nothing at once. Most jobs end within milliseconds,
//! and their end, written in one batch, is all the store needs to see.
//! An attempt still running [`START_RECORD_DELAY`] later has its start
//! written (its ready entry swapped for a running entry), as does every
//! running attempt when the scheduler stops. Until then the store sees a
//! ready job; a crash in that window runs it again without counting the
//! attempt, which is at-least-once delivery all the same.

use std::time::Duration;
use uuid::Uuid;

use super::dispatcher::Finished;
use super::now_ms;
use super::scheduler::{RunningAttempt, Scheduler};
use crate::mesh::router::{CallExtras, CallTarget};
use crate::store::StoreError;
use crate::store::queue::FnId;
use crate::store::queue::{ReadyPos, ReadySlot, Writes};
use crate::store::records::{AttemptRecord, JobState};

/// How long an attempt runs before its start is written.
pub const START_RECORD_DELAY: Duration = Duration::from_millis(50);

impl Scheduler {
    /// Starts ready jobs while queues have free slots and their functions have workers.
    pub(super) fn dispatch(&mut self) -> Result<(), StoreError> {
        if self.draining {
            return Ok(());
        }
        // Only entries found without their job are written here.
        let mut orphans = Writes::default();
        let mut any_orphan = false;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let free = self.free_slots(&name);
            if free == 0 {
                continue;
            }
            for (f, key, id) in self.pick_ready(&name, free)? {
                any_orphan |= self.start(&name, f, key, id, &mut orphans)?;
            }
        }
        if any_orphan {
            self.commit(orphans)?;
        }
        Ok(())
    }

    fn free_slots(&self, name: &str) -> usize {
        match self.queues.get(name) {
            Some(q) if !q.paused && !q.ready_fns.is_empty() => {
                q.settings.concurrency.saturating_sub(q.running)
            }
            _ => 0,
        }
    }

    /// Up to `n` distinct ready jobs of the queue whose function some worker
    /// provides: functions in round-robin order, priority then enqueue order
    /// within one. A function with no worker is skipped (no attempt is spent).
    ///
    /// Ready entries of attempts whose start is not yet written stay in the
    /// store; each function's scan resumes after the last entry it took
    /// (`QueueRt::ready_after`), so they are not walked over again.
    fn pick_ready(
        &mut self,
        name: &str,
        n: usize,
    ) -> Result<Vec<(FnId, ReadyPos, Uuid)>, StoreError> {
        let rt = &self.queues[name];
        let (q, cursor) = (rt.id, rt.cursor);
        let order: Vec<FnId> = rt
            .ready_fns
            .range(cursor..)
            .chain(rt.ready_fns.range(..cursor))
            .copied()
            .collect();
        let mut picked = Vec::new();
        let mut drained = Vec::new();
        let mut after = Vec::new();
        let mut last = None;
        for f in order {
            if picked.len() >= n {
                break;
            }
            let Some((ns, fid)) = self.fn_keys.get(&f) else {
                continue;
            };
            if !self.mesh.inspect(|st| st.function(ns, fid).is_some()) {
                continue;
            }
            let before = picked.len();
            let from = self.queues[name].ready_after.get(&f);
            let mut seen = None;
            for kv in self.store.ready_after(q, f, from) {
                let (k, id) = kv?;
                seen = Some(k.clone());
                match id {
                    Some(id) if !self.running.contains_key(&id) => picked.push((f, k, id)),
                    _ => {}
                }
                if picked.len() >= n {
                    break;
                }
            }
            if let Some(k) = seen {
                after.push((f, k));
            }
            if picked.len() == before {
                drained.push(f);
            } else {
                last = Some(f);
            }
        }
        if let Some(rt) = self.queues.get_mut(name) {
            for f in drained {
                rt.ready_fns.remove(&f);
            }
            rt.ready_after.extend(after);
            if let Some(f) = last {
                rt.cursor = f + 1;
            }
        }
        Ok(picked)
    }

    /// Starts one ready job: the call goes out now; nothing is written (see
    /// the module's notes) and the live record stays in memory until the
    /// attempt ends. Returns whether `orphans` got an entry to remove.
    fn start(
        &mut self,
        name: &str,
        f: FnId,
        ready_key: ReadyPos,
        id: Uuid,
        orphans: &mut Writes,
    ) -> Result<bool, StoreError> {
        let Some(mut job) = self.store.job(&id)? else {
            // An index entry without its job cannot be run; drop it so it cannot block the queue.
            tracing::error!(job = %id, "ready entry without a job record; removed");
            orphans.remove_ready_at(&ready_key);
            return Ok(true);
        };
        let lease = self.queues[name].settings.lease;
        let (ns, fid) = &self.fn_keys[&f];
        let data = std::str::from_utf8(&job.payload)
            .ok()
            .and_then(|t| serde_json::value::RawValue::from_string(t.to_owned()).ok())
            .unwrap_or_else(crate::protocol::null_payload);
        let extras = CallExtras {
            metadata: None,
            traceparent: job.traceparent.clone(),
            baggage: job.baggage.clone(),
        };
        let target = CallTarget {
            namespace: ns,
            function_id: fid,
            timeout: lease,
        };
        let collect = (self.finished_tx.clone(), id);
        let Ok((invocation_id, executor)) = self
            .mesh
            .start_collected_call(target, data, extras, collect)
        else {
            // The worker left between the check and now: the job stays ready,
            // and the next scan of its function must see it again.
            if let Some(rt) = self.queue_mut(job.queue_id) {
                rt.ready_after.remove(&f);
            }
            return Ok(false);
        };
        job.attempts += 1;
        job.history_len += 1;
        let attempt = AttemptRecord {
            attempt: job.history_len,
            started_ms: now_ms(),
            ended_ms: 0,
            worker_id: Some(executor),
            error: None,
        };
        let q = job.queue_id;
        self.shift(q, Some(job.state), Some(JobState::Running));
        job.state = JobState::Running;
        let now = tokio::time::Instant::now();
        let lease_until = now + lease;
        self.leases.add(lease_until, id);
        self.unrecorded_starts.push_back((now, id));
        self.running.insert(
            id,
            RunningAttempt {
                queue: q,
                record: attempt,
                job,
                invocation_id,
                lease_until,
                start_recorded: false,
            },
        );
        if let Some(rt) = self.queue_mut(q) {
            rt.running += 1;
        }
        Ok(false)
    }

    /// Writes the start of attempts running for [`START_RECORD_DELAY`] (or of
    /// all, when the scheduler stops): the ready entry gives way to a running
    /// entry holding the attempt, so a restart finds it interrupted.
    pub(super) fn record_starts(&mut self, all: bool) -> Result<(), StoreError> {
        let now = tokio::time::Instant::now();
        let mut batch = Writes::default();
        let mut queues = std::collections::BTreeSet::new();
        while let Some(&(at, id)) = self.unrecorded_starts.front() {
            if !all && now.duration_since(at) < START_RECORD_DELAY {
                break;
            }
            self.unrecorded_starts.pop_front();
            let Some(r) = self.running.get_mut(&id) else {
                continue; // it ended already
            };
            if r.start_recorded {
                continue;
            }
            r.start_recorded = true;
            let job = &r.job;
            batch.remove_ready(&ReadySlot::of(job));
            batch.put_running(&id, &r.record);
            queues.insert(job.queue_id);
        }
        if queues.is_empty() {
            return Ok(());
        }
        // The stored counters must count at least the stored running entries
        // (recovery moves the surplus back to ready).
        self.dirty_counts.extend(queues);
        self.commit(batch)?;
        Ok(())
    }

    /// Records outcomes taken together in one batch.
    pub(super) fn finish_all(&mut self, outcomes: Vec<Finished>) -> Result<(), StoreError> {
        let mut batch = Writes::default();
        for f in outcomes {
            self.finish_into(f, &mut batch)?;
        }
        self.commit(batch)?;
        Ok(())
    }

    /// Records one attempt's outcome into `batch`: completed, retry later, or dead.
    fn finish_into(&mut self, f: Finished, batch: &mut Writes) -> Result<(), StoreError> {
        if self
            .running
            .get(&f.job)
            .is_none_or(|r| r.invocation_id != f.invocation_id)
        {
            return Ok(()); // not running, or the outcome of an attempt already ended
        }
        let Some(RunningAttempt {
            queue: q,
            record: mut attempt,
            mut job,
            lease_until,
            start_recorded,
            ..
        }) = self.running.remove(&f.job)
        else {
            return Ok(());
        };
        if !start_recorded {
            // In the store the job is still ready: it leaves from there.
            self.shift(q, Some(JobState::Running), Some(JobState::Ready));
            job.state = JobState::Ready;
        }
        self.leases.remove(lease_until, f.job);
        if let Some(rt) = self.queue_mut(q) {
            rt.running = rt.running.saturating_sub(1);
        }
        let now = now_ms();
        attempt.ended_ms = now;
        match f.outcome {
            Ok(result) => {
                job.history.push(attempt);
                job.result = result.map(|r| r.get().as_bytes().to_vec());
                job.finished_ms = now;
                job.last_error = None;
                self.transition(&f.job, &mut job, JobState::Completed, batch);
            }
            Err(err) => {
                attempt.error = Some(err.clone());
                job.history.push(attempt);
                self.fail(&f.job, &mut job, err, batch);
            }
        }
        Ok(())
    }
}
