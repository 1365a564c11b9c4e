//! Running jobs: the dispatch pass that starts ready jobs where a queue has
//! free slots and a worker provides the function, and the recording of
//! attempts' outcomes. Each set of outcomes taken together is one batch:
//! sled blocks writers while it flushes, so fewer, larger batches keep the
//! scheduler from stalling behind the syncer.
//!
//! Starting a job writes nothing at once (see [`super::attempts`] for when
//! its start is written). Until then the store sees a ready job; a crash in
//! that window runs it again without counting the attempt, which is
//! at-least-once delivery all the same.
//!
//! A job is started only once its enqueue is durable ([`super::unsynced`]):
//! a dispatch scan stops at the first entry whose sync has not finished, and
//! the scheduler scans again when it does.

use uuid::Uuid;

use super::attempts::RunningAttempt;
use super::dispatcher::Finished;
use super::now_ms;
use super::scheduler::Scheduler;
use crate::mesh::router::{CallExtras, CallTarget};
use crate::store::StoreError;
use crate::store::queue::{FnId, QueueId};
use crate::store::queue::{ReadyPos, Writes};
use crate::store::records::{AttemptRecord, JobState};

/// What [`Scheduler::start`] did with a picked job.
enum Start {
    /// Its attempt is running.
    Running,
    /// Left ready (its worker left meanwhile).
    Skipped,
    /// Something was written to the pass's batch (an orphan entry removed,
    /// an expired job dead-lettered).
    Written,
}

impl Scheduler {
    /// Starts ready jobs while queues have free slots and their functions have workers.
    pub(super) fn dispatch(&mut self) -> Result<(), StoreError> {
        if self.draining {
            return Ok(());
        }
        // Only entries found without their job, and jobs found expired, are written here.
        let mut writes = Writes::default();
        let mut any_write = false;
        let names = self.queues.names();
        let now = tokio::time::Instant::now();
        self.limited_until = None;
        for name in names {
            let free = self.free_slots(&name);
            if free == 0 {
                continue;
            }
            // A rate limit or a throttle holds the queue back: wake when it lets go.
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            let (allowed, next) = q.startable(now);
            if let Some(at) = next.filter(|_| allowed < free) {
                self.limited_until = Some(self.limited_until.map_or(at, |t| t.min(at)));
            }
            let n = free.min(allowed);
            if n == 0 {
                continue;
            }
            let mut started = 0;
            for (f, key, id) in self.pick_ready(&name, n)? {
                match self.start(&name, f, key, id, &mut writes)? {
                    Start::Running => started += 1,
                    Start::Skipped => {}
                    Start::Written => any_write = true,
                }
            }
            if let Some(l) = self.queues.get_mut(&name).and_then(|q| q.limiter.as_mut()) {
                l.take(started);
            }
        }
        if any_write {
            self.commit(writes)?;
        }
        Ok(())
    }

    fn free_slots(&self, name: &str) -> usize {
        match self.queues.get(name) {
            Some(q) if !q.paused && !q.ready.is_empty() => {
                q.settings.concurrency.saturating_sub(q.running)
            }
            _ => 0,
        }
    }

    /// Up to `n` distinct ready jobs of the queue whose function some worker
    /// provides: functions in round-robin order, priority then enqueue order
    /// within one. A function with no worker is skipped (no attempt is spent).
    /// On a `fair_by` queue each lane (function and fair key) gives one job
    /// per visit, the lanes visited in a circle until `n` are picked or a
    /// whole circle gave none: a tenant's burst takes its turn like every
    /// other key; a lane over its `rate_per_key` sits out until its bucket
    /// refills.
    ///
    /// Ready entries of attempts whose start is not yet written stay in the
    /// store; each function's scan resumes after the last entry it took
    /// (`ReadyIndex::resume_point`), so they are not walked over again.
    fn pick_ready(
        &mut self,
        name: &str,
        n: usize,
    ) -> Result<Vec<(FnId, ReadyPos, Uuid)>, StoreError> {
        let q = self.queues[name].id;
        let fair = self.queues[name].settings.fair_by.is_some();
        let mut picked = Vec::new();
        let waiting = self.unsynced.first_waiting(self.store.synced());
        let now = tokio::time::Instant::now();
        if !fair {
            for f in self.queues[name].ready.round() {
                if picked.len() >= n {
                    break;
                }
                self.pick_from_lane(name, q, f, n - picked.len(), waiting, now, &mut picked)?;
            }
            return Ok(picked);
        }
        // Fair: one job per lane per visit, walking the lanes in a circle
        // from the cursor until the slots are filled or a whole circle gave
        // nothing (the lanes are never all listed: there may be thousands).
        let mut next = self.queues[name].ready.current();
        let mut idle = 0;
        while picked.len() < n {
            let Some(f) = next else { break };
            next = self.queues[name].ready.after(f);
            let before = picked.len();
            self.pick_from_lane(name, q, f, 1, waiting, now, &mut picked)?;
            idle = if picked.len() > before { 0 } else { idle + 1 };
            if idle > self.queues[name].ready.len() {
                break;
            }
        }
        Ok(picked)
    }

    /// Picks up to `take` jobs of lane `f` into `picked` (fewer when its
    /// function has no worker, its `rate_per_key` bucket runs dry, or it has
    /// no more durable ready jobs), and records the scan in the ready index.
    #[allow(clippy::too_many_arguments)]
    fn pick_from_lane(
        &mut self,
        name: &str,
        q: QueueId,
        f: FnId,
        take: usize,
        waiting: Option<u64>,
        now: tokio::time::Instant,
        picked: &mut Vec<(FnId, ReadyPos, Uuid)>,
    ) -> Result<(), StoreError> {
        let Some((ns, fid)) = self.fn_ids.name(f) else {
            return Ok(());
        };
        if !self.mesh.inspect(|st| st.function(ns, fid).is_some()) {
            return Ok(());
        }
        let Some((allowed, next)) = self
            .queues
            .get_mut(name)
            .map(|rt| rt.lane_startable(f, now))
        else {
            return Ok(());
        };
        if allowed == 0 {
            // Keeps its place in the round: its jobs are still ready.
            if let Some(at) = next {
                self.limited_until = Some(self.limited_until.map_or(at, |t| t.min(at)));
            }
            return Ok(());
        }
        let take = take.min(allowed);
        let before = picked.len();
        let from = self.queues[name].ready.resume_point(f);
        let mut seen = None;
        let mut blocked = false;
        for kv in self.store.ready_after(q, f, from) {
            let (k, id) = kv?;
            if waiting.is_some_and(|first| k.seq() >= first) {
                // Not durable yet: neither this job nor (to keep the
                // order) the ones after it start before the sync.
                blocked = true;
                break;
            }
            seen = Some(k.clone());
            match id {
                Some(id) if !self.attempts.contains(&id) => picked.push((f, k, id)),
                _ => {}
            }
            if picked.len() - before >= take {
                break;
            }
        }
        // A function blocked by a sync keeps its place in the round.
        let took = picked.len() > before || blocked;
        if let Some(rt) = self.queues.get_mut(name) {
            rt.lane_started(f, picked.len() - before);
            rt.ready.scanned(f, seen, took);
        }
        Ok(())
    }

    /// Starts one ready job: the call goes out now; nothing is written (see
    /// the module's notes) and the live record stays in memory until the
    /// attempt ends. A job past its expiry is dead-lettered into `writes`
    /// instead, and an entry without its job removed there.
    fn start(
        &mut self,
        name: &str,
        f: FnId,
        ready_key: ReadyPos,
        id: Uuid,
        writes: &mut Writes,
    ) -> Result<Start, StoreError> {
        let Some(mut job) = self.store.job(&id)? else {
            // An index entry without its job cannot be run; drop it so it cannot block the queue.
            tracing::error!(job = %id, "ready entry without a job record; removed");
            writes.remove_ready_at(&ready_key);
            return Ok(Start::Written);
        };
        if job.expires_ms > 0 && now_ms() >= job.expires_ms {
            self.expire(&id, &mut job, writes);
            return Ok(Start::Written);
        }
        let lease = self.queues[name].settings.lease;
        let Some((ns, fid)) = self.fn_ids.name(f) else {
            return Ok(Start::Skipped);
        };
        let data = std::str::from_utf8(&job.payload)
            .ok()
            .and_then(|t| serde_json::value::RawValue::from_string(t.to_owned()).ok())
            .unwrap_or_else(crate::protocol::null_payload);
        // The job's context, handed to the handler with the call (the SDKs
        // pass metadata as the handler's second argument): what it needs to
        // call queue::heartbeat about its own job.
        let mut context = serde_json::json!({"job": {
            "receipt": id,
            "queue": name,
            "attempt": job.attempts + 1,
            "max_attempts": self.queues[name].settings.max_attempts,
        }});
        // A flow's parent receives how each of its children ended.
        if let Some(flow) = job.flow.as_ref().filter(|f| !f.children.is_empty()) {
            context["job"]["children"] = super::flows::outcomes_view(&flow.outcomes).into();
        }
        if let Some(parent) = job.flow.as_ref().and_then(|f| f.parent) {
            context["job"]["parent"] = parent.to_string().into();
        }
        let extras = CallExtras {
            metadata: Some(crate::protocol::to_payload(&context)),
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
            if let Some(rt) = self.queues.by_id_mut(job.queue_id) {
                rt.ready.rescan(f);
            }
            return Ok(Start::Skipped);
        };
        if job.history_len == 0 {
            self.metrics
                .first_start(name, now_ms().saturating_sub(job.enqueued_ms));
        }
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
        self.counters
            .shift(q, Some(job.state), Some(JobState::Running));
        job.state = JobState::Running;
        let now = tokio::time::Instant::now();
        let lease_until = now + lease;
        let attempt = RunningAttempt {
            queue: q,
            record: attempt,
            job,
            invocation_id,
            lease_until,
            start_recorded: false,
        };
        self.attempts.begin(id, attempt, now);
        if let Some(rt) = self.queues.by_id_mut(q) {
            rt.running += 1;
        }
        Ok(Start::Running)
    }

    /// Writes the start of attempts running for [`super::attempts::START_RECORD_DELAY`] (or of
    /// all, when the scheduler stops): the ready entry gives way to a running
    /// entry holding the attempt, so a restart finds it interrupted.
    pub(super) fn record_starts(&mut self, all: bool) -> Result<(), StoreError> {
        let mut batch = Writes::default();
        let queues = (self.attempts).record_starts(tokio::time::Instant::now(), all, &mut batch);
        if queues.is_empty() {
            return Ok(());
        }
        // The stored counters must count at least the stored running entries
        // (recovery moves the surplus back to ready).
        for q in queues {
            self.counters.touch(q);
        }
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
        // Not running, or the outcome of an attempt already ended.
        let Some(RunningAttempt {
            queue: q,
            record: mut attempt,
            mut job,
            start_recorded,
            ..
        }) = self.attempts.end(&f.job, f.invocation_id)
        else {
            return Ok(());
        };
        if !start_recorded {
            // In the store the job is still ready: it leaves from there.
            self.counters
                .shift(q, Some(JobState::Running), Some(JobState::Ready));
            job.state = JobState::Ready;
        }
        if let Some(rt) = self.queues.by_id_mut(q) {
            rt.running = rt.running.saturating_sub(1);
        }
        let now = now_ms();
        attempt.ended_ms = now;
        (self.metrics).attempt_ended(
            &job.queue,
            f.outcome.is_ok(),
            now.saturating_sub(attempt.started_ms),
        );
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
