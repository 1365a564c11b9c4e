//! Operator views and actions, run inside the scheduler so they see and
//! change state in the same order as everything else. Actions that write
//! answer only once their batch is on disk.

use serde_json::{Value, json};
use uuid::Uuid;

use super::now_ms;
use super::op::Op;
use super::queue_table::QueueRt;
use super::scheduler::Scheduler;
use super::states::{COUNTED, ShownState};
use crate::protocol::{ErrorBody, codes};
use crate::store::queue::{FnId, Writes};
use crate::store::records::{ErrorRecord, FailReason, JobRecord, JobState};
use crate::store::{StoreError, Ticket};

type OpResult = (Result<Value, ErrorBody>, Option<Ticket>);

/// The longest one heartbeat may extend a lease by: a handler beats again
/// long before; a value past this is a unit mistake, not a plan.
pub(crate) const MAX_HEARTBEAT_EXTEND: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

fn bad(code: &str, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, msg)
}

fn internal(e: impl Into<StoreError>) -> ErrorBody {
    bad(codes::QUEUE_ERROR, e.into().to_string())
}

impl Scheduler {
    pub(super) fn op(&mut self, op: Op) -> OpResult {
        let res = match op {
            Op::List => Ok((
                json!({ "queues": self.queues.iter().map(|q| self.queue_view(q)).collect::<Vec<_>>() }),
                None,
            )),
            Op::Stats { queue } => self.rt(&queue).map(|q| (self.queue_view(q), None)),
            Op::Get { receipt } => self.job_view(&receipt).map(|v| (v, None)),
            Op::Explain { receipt } => self.explain(&receipt).map(|v| (v, None)),
            Op::Peek {
                queue,
                state,
                limit,
                after,
            } => self.peek(&queue, state, limit, after).map(|v| (v, None)),
            Op::Pause { queue, paused } => self.pause(&queue, paused),
            Op::Cancel { receipt } => self.cancel(&receipt),
            Op::Purge { queue } => self.purge(&queue),
            Op::DeadLetters {
                queue,
                offset,
                limit,
            } => self.dead_letters(&queue, offset, limit).map(|v| (v, None)),
            Op::Redrive { queue, receipt } => self.redrive(&queue, receipt),
            Op::Discard { queue, receipt } => self.discard(&queue, &receipt),
            Op::Throttle { queue, pause } => self.throttle(&queue, pause).map(|v| (v, None)),
            Op::Heartbeat {
                receipt,
                extend,
                caller,
                operator,
            } => self
                .heartbeat(&receipt, extend, caller, operator)
                .map(|v| (v, None)),
            Op::Report {
                receipt,
                report,
                caller,
                operator,
            } => self.report(&receipt, report, caller, operator),
        };
        match res {
            Ok((v, t)) => (Ok(v), t),
            Err(e) => (Err(e), None),
        }
    }

    fn rt(&self, queue: &str) -> Result<&QueueRt, ErrorBody> {
        self.queues
            .get(queue)
            .ok_or_else(|| bad(codes::QUEUE_NOT_FOUND, format!("no queue {queue:?}")))
    }

    fn job(&self, id: &Uuid) -> Result<JobRecord, ErrorBody> {
        self.load_job(id).map_err(internal)?.ok_or_else(|| {
            bad(
                codes::NOT_FOUND,
                format!("no job {id} (unknown, or completed and past retention)"),
            )
        })
    }

    /// Ready jobs whose function no connected worker provides. When no lane
    /// of the queue has a worker (a million jobs queued before any worker
    /// came), that is every ready job: the counters say how many, with no
    /// scan; otherwise only the lanes without a worker are counted.
    fn waiting_for_worker(&self, q: &QueueRt) -> u64 {
        let has_worker = |f: &FnId| {
            self.fn_ids
                .name(*f)
                .is_some_and(|(ns, fid)| self.mesh.inspect(|st| st.function(ns, fid).is_some()))
        };
        let unserved: Vec<FnId> = q.ready.functions().filter(|f| !has_worker(f)).collect();
        if unserved.is_empty() {
            return 0;
        }
        if unserved.len() == q.ready.len() {
            // Every ready job not running is in a lane of the index.
            return self.counters.of(q.id).ready;
        }
        unserved
            .into_iter()
            .map(|f| {
                self.store
                    .ready_of_function(q.id, f)
                    .filter(|id| !self.attempts.contains(id))
                    .count() as u64
            })
            .sum()
    }

    fn oldest_ready_age_ms(&self, q: &QueueRt) -> Option<u64> {
        let now = now_ms();
        q.ready
            .functions()
            .filter_map(|f| {
                // Entries of jobs that just started may come first.
                self.store
                    .ready_of_function(q.id, f)
                    .find(|id| !self.attempts.contains(id))
            })
            .filter_map(|id| self.load_job(&id).ok().flatten())
            .map(|j| now.saturating_sub(j.enqueued_ms))
            .max()
    }

    pub(super) fn queue_view(&self, q: &QueueRt) -> Value {
        let waiting = self.waiting_for_worker(q);
        let mut view = json!({
            "queue": q.name,
            "paused": q.paused,
            "oldest_ready_age_ms": self.oldest_ready_age_ms(q),
            "settings": q.settings.view(),
        });
        let counts = self.counters.of(q.id);
        for state in COUNTED {
            let n = match state {
                ShownState::Ready => counts.ready.saturating_sub(waiting),
                ShownState::WaitingForWorker => waiting,
                ShownState::Delayed => counts.delayed,
                ShownState::Running => counts.running,
                ShownState::Held => counts.held,
                ShownState::WaitingForChildren => counts.waiting,
                ShownState::Completed => counts.completed,
                ShownState::Dead => counts.dead,
                ShownState::Cancelled => continue,
            };
            view[state.as_str()] = n.into();
        }
        view
    }

    fn has_worker(&self, job: &JobRecord) -> bool {
        self.mesh
            .inspect(|st| st.function(&job.namespace, &job.function_id).is_some())
    }

    /// The job's state as `queue::stats` counts it.
    pub(super) fn shown(&self, job: &JobRecord) -> ShownState {
        // Only a ready job's name depends on the mesh: skip the lock otherwise.
        ShownState::of(
            job.state,
            job.state != JobState::Ready || self.has_worker(job),
        )
    }

    /// Ended attempts from the record, then the one running now (kept in memory).
    fn attempts_of(&self, id: &Uuid, job: &JobRecord) -> Vec<Value> {
        let running = self.attempts.get(id).map(|r| &r.record);
        job.history
            .iter()
            .chain(running)
            .map(|a| {
                let outcome = match (&a.error, a.ended_ms) {
                    (_, 0) => "running",
                    (None, _) => "completed",
                    (Some(e), _) => e.reason.as_str(),
                };
                json!({
                    "attempt": a.attempt,
                    // 0 when the engine stopped before the attempt's start was recorded.
                    "started_at_ms": (a.started_ms > 0).then_some(a.started_ms),
                    "ended_at_ms": (a.ended_ms > 0).then_some(a.ended_ms),
                    "worker_id": a.worker_id,
                    "outcome": outcome,
                    "error": a.error.as_ref().map(error_view),
                })
            })
            .collect()
    }

    fn job_view(&self, id: &Uuid) -> Result<Value, ErrorBody> {
        let job = self.job(id)?;
        let raw = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null);
        Ok(json!({
            "receipt": id,
            "queue": job.queue,
            "namespace": job.namespace,
            "function_id": job.function_id,
            "state": self.shown(&job).as_str(),
            "attempts": job.attempts,
            "max_attempts": job.max_attempts,
            "priority": job.priority,
            "enqueued_at_ms": job.enqueued_ms,
            "due_at_ms": (job.due_ms > 0).then_some(job.due_ms),
            "finished_at_ms": (job.finished_ms > 0).then_some(job.finished_ms),
            "redrives": job.redrives,
            "data": raw(&job.payload),
            "result": job.result.as_deref().map(raw),
            "last_error": job.last_error.as_ref().map(error_view),
            "history": self.attempts_of(id, &job),
            "expires_at_ms": (job.expires_ms > 0).then_some(job.expires_ms),
            "fair_key": self.fn_ids.lane_key(job.fn_id),
            "progress": job.progress.as_deref().map(raw),
            "logs": job.logs.iter().map(|l| json!({"at_ms": l.at_ms, "line": l.line})).collect::<Vec<_>>(),
            "logs_dropped": job.logs_dropped,
            "trace_id": job.traceparent.as_deref().and_then(trace_id),
            "flow": self.flow_view(id, &job),
        }))
    }

    /// One sentence on why a job is not running.
    fn explain(&self, id: &Uuid) -> Result<Value, ErrorBody> {
        let job = self.job(id)?;
        let q = self.rt(&job.queue)?;
        let has_worker = self.has_worker(&job);
        let why = match job.state {
            JobState::Running => "it is running now".to_owned(),
            JobState::Completed => "it has completed".to_owned(),
            JobState::Cancelled => "it was cancelled".to_owned(),
            JobState::Held => format!(
                "it is held by its FIFO group {:?}: an earlier job of the group has not finished",
                job.group.as_deref().unwrap_or_default()
            ),
            JobState::Dead => match &job.last_error {
                Some(e) if e.reason == FailReason::Expired => {
                    "it expired before it started; redrive it to run it anyway".to_owned()
                }
                Some(e) if e.reason == FailReason::ChildFailed => format!(
                    "it is dead-lettered because a child of its flow failed ({}); redrive it to run it anyway",
                    e.message
                ),
                _ => format!(
                    "it is dead-lettered after {} attempts; redrive it to run it again",
                    job.attempts
                ),
            },
            JobState::Waiting => {
                let pending = job.flow.as_ref().map_or(0, |f| f.waiting_on.len());
                format!("it is a flow's parent waiting for {pending} of its children to finish")
            }
            JobState::Delayed => {
                let wait = job.due_ms.saturating_sub(now_ms());
                let kind = if job.attempts > 0 {
                    "backing off"
                } else {
                    "scheduled"
                };
                format!("it is {kind} until {} ms from now", wait)
            }
            JobState::Ready if q.paused => format!("queue {:?} is paused", q.name),
            JobState::Ready if !has_worker => {
                format!(
                    "no connected worker provides {} in namespace {}",
                    job.function_id, job.namespace
                )
            }
            JobState::Ready
                if q.throttled_until
                    .is_some_and(|t| t > tokio::time::Instant::now()) =>
            {
                let left = q
                    .throttled_until
                    .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
                    .unwrap_or_default();
                format!(
                    "queue {:?} is throttled (queue::throttle) for {} ms more",
                    q.name,
                    left.as_millis()
                )
            }
            JobState::Ready if q.running >= q.settings.concurrency => {
                format!(
                    "queue {:?} is at its concurrency limit ({})",
                    q.name, q.settings.concurrency
                )
            }
            JobState::Ready if q.settings.rate_per_key.is_some() => {
                let r = q.settings.rate_per_key.expect("checked");
                format!(
                    "it is in line; queue {:?} starts at most {} jobs per {} for each {} (its key is {:?})",
                    q.name,
                    r.starts,
                    humantime::format_duration(r.per),
                    q.settings.fair_by.as_deref().unwrap_or("key"),
                    self.fn_ids.lane_key(job.fn_id).unwrap_or_default()
                )
            }
            JobState::Ready if q.settings.rate.is_some() => {
                let r = q.settings.rate.expect("checked");
                format!(
                    "it is in line; queue {:?} starts at most {} jobs per {} (its rate limit)",
                    q.name,
                    r.starts,
                    humantime::format_duration(r.per)
                )
            }
            JobState::Ready => "it is next in line and will start shortly".to_owned(),
        };
        let state = ShownState::of(job.state, has_worker);
        Ok(json!({ "receipt": id, "state": state.as_str(), "explanation": why }))
    }

    fn peek(
        &self,
        queue: &str,
        state: JobState,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<Value, ErrorBody> {
        let q = self.rt(queue)?;
        let limit = limit.clamp(1, 1000);
        let store = &self.store;
        let keys: Box<dyn Iterator<Item = Uuid>> = match state {
            JobState::Ready => {
                Box::new(store.ready_of_queue(q.id).filter_map(|r| r.ok().flatten()))
            }
            JobState::Dead => Box::new(store.dead(q.id).filter_map(|r| r.ok().flatten())),
            JobState::Delayed => Box::new(store.due().filter_map(|r| r.ok().map(|(_, id)| id))),
            JobState::Completed => Box::new(
                store
                    .completed()
                    .filter_map(|e| e.ok())
                    .flat_map(|e| e.jobs),
            ),
            JobState::Running => {
                // In memory: a start is written only once the attempt has run a while.
                Box::new(self.attempts.sorted_ids().into_iter())
            }
            JobState::Held => Box::new(store.grouped(q.id).filter_map(|r| r.ok().flatten())),
            JobState::Waiting => Box::new(store.waiting(q.id)),
            JobState::Cancelled => Box::new(std::iter::empty()),
        };
        let mut skipping = after.is_some();
        let mut jobs = Vec::new();
        let mut next = None;
        for id in keys {
            if skipping {
                skipping = Some(id) != after;
                continue;
            }
            let Ok(job) = self.job(&id) else { continue };
            if job.queue != q.name || job.state != state {
                continue;
            }
            if jobs.len() == limit {
                next = jobs
                    .last()
                    .and_then(|j: &Value| j["receipt"].as_str().map(str::to_owned));
                break;
            }
            jobs.push(json!({
                "receipt": id, "function_id": job.function_id, "state": self.shown(&job).as_str(),
                "attempts": job.attempts, "enqueued_at_ms": job.enqueued_ms,
                "due_at_ms": (job.due_ms > 0).then_some(job.due_ms),
                "last_error": job.last_error.as_ref().map(error_view),
            }));
        }
        Ok(json!({ "queue": q.name, "state": state.as_str(), "jobs": jobs, "next_cursor": next }))
    }

    /// Pauses or resumes a queue. A queue never used yet is created first
    /// (unless strict mode refuses it), so an operator can pause it before its
    /// first job; the flag is stored and survives a restart.
    fn pause(&mut self, queue: &str, paused: bool) -> Result<(Value, Option<Ticket>), ErrorBody> {
        let id = self.queue_for(queue)?;
        let rec = crate::store::records::QueueRecord {
            id,
            paused,
            created_ms: now_ms(),
        };
        let mut batch = Writes::default();
        batch.put_queue(queue, &rec);
        let ticket = self.commit(batch).map_err(internal)?;
        if let Some(q) = self.queues.get_mut(queue) {
            q.paused = paused;
        }
        Ok((json!({ "queue": queue, "paused": paused }), Some(ticket)))
    }

    /// A heartbeat: the attempt's lease (and the call's deadline in the
    /// mesh, which would otherwise end it at `invocation.max_duration`) run
    /// `extend` from now. Nothing is written: a restart ends the attempt as
    /// `engine_restart` whatever its lease.
    fn heartbeat(
        &mut self,
        id: &Uuid,
        extend: Option<std::time::Duration>,
        caller: Uuid,
        operator: bool,
    ) -> Result<Value, ErrorBody> {
        let Some(a) = self.attempts.get(id) else {
            let msg =
                format!("job {id} is not running (a heartbeat extends a running job's lease)");
            return Err(bad(codes::INVALID_STATE, msg));
        };
        if !operator && a.record.worker_id != Some(caller) {
            let msg = format!("job {id} runs on another worker; only it may extend the lease");
            return Err(bad(codes::FORBIDDEN, msg));
        }
        let lease = self
            .queues
            .by_id(a.queue)
            .map(|q| q.settings.lease)
            .unwrap_or_default();
        let by = extend.unwrap_or(lease).min(MAX_HEARTBEAT_EXTEND);
        let until = tokio::time::Instant::now() + by;
        let Some(a) = self.attempts.extend(id, until) else {
            return Err(bad(
                codes::INVALID_STATE,
                format!("job {id} is not running"),
            ));
        };
        self.mesh.extend_call(a.invocation_id, until.into_std());
        Ok(json!({
            "receipt": id,
            "attempt": a.record.attempt,
            "lease_ms": by.as_millis() as u64,
        }))
    }

    /// `queue::throttle`: no job of the queue starts for `pause` (a handler
    /// that met a 429 backs the whole queue off without spending attempts).
    /// In memory: a restart lifts it.
    fn throttle(&mut self, queue: &str, pause: std::time::Duration) -> Result<Value, ErrorBody> {
        self.rt(queue)?;
        let until = tokio::time::Instant::now() + pause.min(MAX_HEARTBEAT_EXTEND);
        let q = self.queues.get_mut(queue).expect("checked");
        q.throttled_until = Some(q.throttled_until.map_or(until, |t| t.max(until)));
        Ok(json!({ "queue": queue, "throttled_for_ms": pause.as_millis() as u64 }))
    }

    fn cancel(&mut self, id: &Uuid) -> Result<(Value, Option<Ticket>), ErrorBody> {
        let mut job = self.job(id)?;
        if !matches!(job.state, JobState::Ready | JobState::Delayed) {
            let msg = format!(
                "job {id} is {}; only ready or delayed jobs can be cancelled",
                self.shown(&job).as_str()
            );
            return Err(bad(codes::INVALID_STATE, msg));
        }
        let mut batch = Writes::default();
        job.finished_ms = now_ms();
        self.transition(id, &mut job, JobState::Cancelled, &mut batch);
        let ticket = self.commit(batch).map_err(internal)?;
        Ok((json!({ "receipt": id, "cancelled": true }), Some(ticket)))
    }

    /// Deletes every ready and delayed job of a queue (running jobs finish; dead letters stay).
    fn purge(&mut self, queue: &str) -> Result<(Value, Option<Ticket>), ErrorBody> {
        let qid = self.rt(queue)?.id;
        let mut victims = Vec::new();
        for r in self.store.ready_of_queue(qid) {
            if let Some(id) = r.map_err(internal)? {
                victims.push(id);
            }
        }
        for r in self.store.due() {
            victims.push(r.map_err(internal)?.1);
        }
        for r in self.store.grouped(qid) {
            if let Some(id) = r.map_err(internal)? {
                victims.push(id);
            }
        }
        victims.sort_unstable();
        victims.dedup();
        let mut purged = 0u64;
        let mut ticket = None;
        for chunk in victims.chunks(1000) {
            let mut batch = Writes::default();
            for id in chunk {
                let Ok(job) = self.job(id) else { continue };
                if job.queue_id == qid
                    && matches!(
                        job.state,
                        JobState::Ready | JobState::Delayed | JobState::Held
                    )
                {
                    self.delete_job(id, &job, &mut batch, false)
                        .map_err(internal)?;
                    purged += 1;
                }
            }
            ticket = Some(self.commit(batch).map_err(internal)?);
        }
        if let Some(q) = self.queues.get_mut(queue) {
            q.ready.clear();
        }
        Ok((json!({ "queue": queue, "purged": purged }), ticket))
    }

    fn dead_letters(&self, queue: &str, offset: usize, limit: usize) -> Result<Value, ErrorBody> {
        let q = self.rt(queue)?;
        let mut out = Vec::new();
        // Newest first, as iii lists them.
        for r in self
            .store
            .dead(q.id)
            .rev()
            .skip(offset)
            .take(limit.clamp(1, 1000))
        {
            let Some(id) = r.map_err(internal)? else {
                continue;
            };
            let Ok(job) = self.job(&id) else { continue };
            out.push(json!({
                "id": id,
                "payload": serde_json::from_slice::<Value>(&job.payload).unwrap_or(Value::Null),
                "function_id": job.function_id,
                "error": job.last_error.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
                "last_error": job.last_error.as_ref().map(error_view),
                "failed_at": job.finished_ms / 1000,
                "failed_at_ms": job.finished_ms,
                "retries": job.attempts,
                "size_bytes": job.payload.len(),
                "history": self.attempts_of(&id, &job),
            }));
        }
        Ok(Value::Array(out))
    }

    fn dead_ids(
        &self,
        queue: &str,
        receipt: Option<Uuid>,
    ) -> Result<Vec<(Uuid, JobRecord)>, ErrorBody> {
        let q = self.rt(queue)?;
        let ids: Vec<Uuid> = match receipt {
            Some(id) => vec![id],
            None => self
                .store
                .dead(q.id)
                .filter_map(|r| r.ok().flatten())
                .collect(),
        };
        Ok(ids
            .into_iter()
            .filter_map(|id| self.job(&id).ok().map(|j| (id, j)))
            .filter(|(_, j)| j.state == JobState::Dead && j.queue_id == q.id)
            .collect())
    }

    /// Dead jobs back to ready with a fresh attempt budget; their history stays.
    fn redrive(
        &mut self,
        queue: &str,
        receipt: Option<Uuid>,
    ) -> Result<(Value, Option<Ticket>), ErrorBody> {
        let jobs = self.dead_ids(queue, receipt)?;
        let mut ticket = None;
        // FIFO groups a job of this redrive already re-entered (the batch is not applied yet).
        let mut entered = std::collections::HashSet::new();
        for chunk in jobs.chunks(1000) {
            let mut batch = Writes::default();
            for (id, job) in chunk {
                let mut job = job.clone();
                job.attempts = 0;
                job.redrives += 1;
                job.finished_ms = 0;
                // An operator's redrive runs it, however late.
                job.expires_ms = 0;
                job.max_attempts = self.queues[queue].settings.max_attempts;
                let to = match job.group.clone() {
                    Some(g) => {
                        let busy = entered.contains(&g) || self.store.group_busy(job.queue_id, &g);
                        batch.put_group_entry(job.queue_id, &g, job.seq, id);
                        entered.insert(g);
                        if busy {
                            JobState::Held
                        } else {
                            JobState::Ready
                        }
                    }
                    None => JobState::Ready,
                };
                self.transition(id, &mut job, to, &mut batch);
            }
            ticket = Some(self.commit(batch).map_err(internal)?);
        }
        let n = jobs.len();
        let v = match receipt {
            Some(id) => json!({ "queue": queue, "message_id": id, "redriven": n }),
            None => json!({ "queue": queue, "redriven": n }),
        };
        Ok((v, ticket))
    }

    fn discard(
        &mut self,
        queue: &str,
        receipt: &Uuid,
    ) -> Result<(Value, Option<Ticket>), ErrorBody> {
        let jobs = self.dead_ids(queue, Some(*receipt))?;
        let mut batch = Writes::default();
        for (id, job) in &jobs {
            self.delete_job(id, job, &mut batch, true)
                .map_err(internal)?;
        }
        let ticket = self.commit(batch).map_err(internal)?;
        // iii names the count `redriven` here too; kept for compatibility.
        Ok((
            json!({ "queue": queue, "message_id": receipt, "redriven": jobs.len(), "discarded": jobs.len() }),
            Some(ticket),
        ))
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|t| t.len() == 32)
}

fn error_view(e: &ErrorRecord) -> Value {
    json!({ "reason": e.reason.as_str(), "code": e.code, "message": e.message, "stacktrace": e.stacktrace })
}
