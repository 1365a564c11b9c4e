//! Running jobs: the dispatch pass that starts ready jobs where a queue has
//! free slots and a worker provides the function, and the recording of
//! attempts' outcomes. Each pass, and each set of outcomes taken together,
//! is one batch: sled blocks writers while it flushes, so fewer, larger
//! batches keep the scheduler from stalling behind the syncer.

use uuid::Uuid;

use super::dispatcher::Finished;
use super::now_ms;
use super::scheduler::{RunningAttempt, Scheduler};
use crate::mesh::router::{CallExtras, CallTarget};
use crate::store::layout::{self, FnId};
use crate::store::records::{AttemptRecord, JobRecord, JobState};
use crate::store::{StoreError, record};

impl Scheduler {
    /// Starts ready jobs while queues have free slots and their functions have workers.
    pub(super) fn dispatch(&mut self) -> Result<(), StoreError> {
        if self.draining {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut started = 0usize;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let free = self.free_slots(&name);
            if free == 0 {
                continue;
            }
            for (f, key, id) in self.pick_ready(&name, free)? {
                if self.start_into(&name, f, key, id, &mut batch)? {
                    started += 1;
                }
            }
        }
        if started > 0 {
            self.store.apply(batch)?;
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
    fn pick_ready(
        &mut self,
        name: &str,
        n: usize,
    ) -> Result<Vec<(FnId, sled::IVec, Uuid)>, StoreError> {
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
            for kv in self
                .store
                .tree()
                .scan_prefix(layout::ready_fn_prefix(q, f))
                .take(n - before)
            {
                let (k, v) = kv?;
                if let Some(id) = layout::uuid_value(&v) {
                    picked.push((f, k, id));
                }
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
            if let Some(f) = last {
                rt.cursor = f + 1;
            }
        }
        Ok(picked)
    }

    /// Starts one ready job: the call goes out now, and `batch` (applied at
    /// the end of the dispatch pass, before any outcome can be processed)
    /// swaps its ready entry for a running entry holding the attempt. Its
    /// record is not rewritten: the live one stays in memory until the
    /// attempt ends. Returns whether it started.
    fn start_into(
        &mut self,
        name: &str,
        f: FnId,
        ready_key: sled::IVec,
        id: Uuid,
        batch: &mut sled::Batch,
    ) -> Result<bool, StoreError> {
        let Some(mut job) = self.store.get::<JobRecord>(&layout::job(&id))? else {
            // An index entry without its job cannot be run; drop it so it cannot block the queue.
            tracing::error!(job = %id, "ready entry without a job record; removed");
            batch.remove(ready_key);
            return Ok(false);
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
            return Ok(false); // the worker left between the check and now; try later
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
        Self::unplace(&id, &job, batch);
        batch.insert(layout::running(&id), record(&attempt));
        let q = job.queue_id;
        self.count(q, Some(job.state), Some(JobState::Running), batch);
        job.state = JobState::Running;
        let lease_until = tokio::time::Instant::now() + lease;
        self.leases.add(lease_until, id);
        self.running.insert(
            id,
            RunningAttempt {
                queue: q,
                record: attempt,
                job,
                invocation_id,
                lease_until,
            },
        );
        if let Some(rt) = self.queue_mut(q) {
            rt.running += 1;
        }
        Ok(true)
    }

    /// Records outcomes taken together in one batch.
    pub(super) fn finish_all(&mut self, outcomes: Vec<Finished>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for f in outcomes {
            self.finish_into(f, &mut batch)?;
        }
        self.store.apply(batch)?;
        Ok(())
    }

    /// Records one attempt's outcome into `batch`: completed, retry later, or dead.
    fn finish_into(&mut self, f: Finished, batch: &mut sled::Batch) -> Result<(), StoreError> {
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
            ..
        }) = self.running.remove(&f.job)
        else {
            return Ok(());
        };
        self.leases.remove(lease_until, f.job);
        if let Some(rt) = self.queue_mut(q) {
            rt.running = rt.running.saturating_sub(1);
        }
        let now = now_ms();
        let akey = layout::attempt(&f.job, attempt.attempt);
        attempt.ended_ms = now;
        match f.outcome {
            Ok(result) => {
                job.result = result.map(|r| r.get().as_bytes().to_vec());
                job.finished_ms = now;
                job.last_error = None;
                self.transition(&f.job, &mut job, JobState::Completed, batch);
            }
            Err(err) => {
                attempt.error = Some(err.clone());
                self.fail(&f.job, &mut job, err, batch);
            }
        }
        batch.insert(akey, record(&attempt));
        Ok(())
    }
}
