//! The scheduler: one task owns every queue's in-memory state and is the only
//! writer to the store, so transitions are applied in one order and never
//! race. It reacts to enqueues, attempt outcomes, due times, operator calls
//! and workers registering functions (a waiting job starts as soon as a
//! worker provides its function: no polling).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::dispatcher::{self, Finished};
use super::ops::Op;
use super::settings::{Ordering, QueueConfig, QueueSettings};
use super::store::layout::{self, FnId, QueueId};
use super::store::records::{AttemptRecord, Counts, ErrorRecord, JobRecord, JobState, QueueRecord};
use super::store::{Store, StoreError, record};
use super::{EnqueueRequest, Enqueued, now_ms};
use crate::mesh::router::CallExtras;
use crate::mesh::{Mesh, MeshEvent};
use crate::protocol::{ErrorBody, codes};

pub enum Command {
    Enqueue(EnqueueRequest, oneshot::Sender<Result<Enqueued, ErrorBody>>),
    Op(Op, oneshot::Sender<Result<serde_json::Value, ErrorBody>>),
    /// Stop: the scheduler (and its handle on the store) goes away; running
    /// attempts are left `running` and go back to ready at the next start.
    Shutdown,
}

/// How often completed jobs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub struct QueueRt {
    pub id: QueueId,
    pub name: String,
    pub settings: QueueSettings,
    pub paused: bool,
    pub running: usize,
    pub counts: Counts,
    /// Functions that have ready jobs in this queue.
    pub ready_fns: BTreeSet<FnId>,
    /// Round-robin position among `ready_fns`.
    pub cursor: FnId,
}

pub struct Scheduler {
    pub(super) mesh: Mesh,
    pub(super) store: Arc<Store>,
    pub(super) config: QueueConfig,
    pub(super) queues: HashMap<String, QueueRt>,
    pub(super) queue_names: HashMap<QueueId, String>,
    pub(super) fn_ids: HashMap<(String, String), FnId>,
    pub(super) fn_keys: HashMap<FnId, (String, String)>,
    pub(super) next_seq: u64,
    /// Jobs being run: job → queue.
    pub(super) running: HashMap<Uuid, QueueId>,
    pub(super) next_due_ms: Option<u64>,
    /// Attempt outcomes have their own channel, read first, so a flood of
    /// enqueues cannot starve completions (and with them free slots).
    pub(super) finished_tx: mpsc::UnboundedSender<Finished>,
    pub(super) finished_rx: Option<mpsc::UnboundedReceiver<Finished>>,
}

impl Scheduler {
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut finished = self.finished_rx.take().expect("run is called once");
        let mut events = self.mesh.subscribe();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            let due = self
                .next_due_ms
                .map(|ms| Duration::from_millis(ms.saturating_sub(now_ms())));
            tokio::select! {
                biased;
                f = finished.recv() => if let Some(f) = f {
                    self.log_err("recording an attempt", |s| s.finish(f));
                },
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown) | None => return,
                    Some(cmd) => self.handle(cmd),
                },
                ev = events.recv() => match ev {
                    Ok(MeshEvent::FunctionAvailable(..)) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(_) => return,
                },
                _ = sleep_for(due) => self.log_err("promoting due jobs", |s| s.promote_due()),
                _ = prune.tick() => self.log_err("pruning completed jobs", |s| s.prune_completed()),
            }
            self.log_err("dispatching", |s| s.dispatch());
        }
    }

    fn log_err(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<(), StoreError>) {
        if let Err(e) = f(self) {
            tracing::error!(error = %e, "queue scheduler failed {what}");
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Enqueue(req, reply) => match self.enqueue(req) {
                Ok((enqueued, ticket)) => {
                    let store = self.store.clone();
                    // Acknowledge only once the record is on disk; the sync is shared.
                    tokio::spawn(async move {
                        let res = match ticket {
                            Some(t) => store
                                .durable(t)
                                .await
                                .map(|_| enqueued)
                                .map_err(store_error),
                            None => Ok(enqueued),
                        };
                        let _ = reply.send(res);
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Shutdown => {}
            Command::Op(op, reply) => {
                let (result, ticket) = self.op(op);
                let store = self.store.clone();
                tokio::spawn(async move {
                    let res = match (result, ticket) {
                        (Ok(v), Some(t)) => store.durable(t).await.map(|_| v).map_err(store_error),
                        (other, _) => other,
                    };
                    let _ = reply.send(res);
                });
            }
        }
    }

    /// The queue's runtime state, creating (and persisting) it on first use.
    /// Written at once in its own batch (covered by the caller's next sync), so an
    /// enqueue that fails later never leaves a queue known in memory but not on disk.
    pub(super) fn queue_for(&mut self, name: &str) -> Result<QueueId, ErrorBody> {
        if let Some(q) = self.queues.get(name) {
            return Ok(q.id);
        }
        let Some(settings) = self.config.settings(name) else {
            return Err(ErrorBody::new(
                "queue_not_found",
                format!("queue {name:?} is not declared and the engine runs in strict mode"),
            ));
        };
        if name.is_empty() || name.len() > 200 {
            return Err(ErrorBody::new(
                codes::INVALID_ARGUMENTS,
                "a queue name is 1 to 200 bytes",
            ));
        }
        let id = self.queue_names.keys().max().map_or(1, |m| m + 1);
        let rec = QueueRecord {
            id,
            paused: false,
            created_ms: now_ms(),
        };
        let mut batch = sled::Batch::default();
        batch.insert(layout::queue(name), record(&rec));
        self.store.apply(batch).map_err(store_error)?;
        self.queue_names.insert(id, name.to_owned());
        self.queues.insert(
            name.to_owned(),
            new_queue_rt(id, name, settings, false, Counts::default()),
        );
        Ok(id)
    }

    /// Interned id of a function for ready keys; persisted at once, like queues.
    pub(super) fn fn_id(&mut self, namespace: &str, function_id: &str) -> Result<FnId, ErrorBody> {
        let key = (namespace.to_owned(), function_id.to_owned());
        if let Some(id) = self.fn_ids.get(&key) {
            return Ok(*id);
        }
        let id = self.fn_keys.keys().max().map_or(1, |m| m + 1);
        let mut batch = sled::Batch::default();
        batch.insert(layout::function(namespace, function_id), &id.to_be_bytes());
        self.store.apply(batch).map_err(store_error)?;
        self.fn_ids.insert(key.clone(), id);
        self.fn_keys.insert(id, key);
        Ok(id)
    }

    pub(super) fn take_seq(&mut self, batch: &mut sled::Batch) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        batch.insert(layout::seq(), &self.next_seq.to_be_bytes());
        seq
    }

    pub(super) fn queue_mut(&mut self, id: QueueId) -> Option<&mut QueueRt> {
        let name = self.queue_names.get(&id)?;
        self.queues.get_mut(name)
    }

    /// Applies a state move to the queue's counters and writes them into `batch`.
    pub(super) fn count(
        &mut self,
        q: QueueId,
        from: Option<JobState>,
        to: Option<JobState>,
        batch: &mut sled::Batch,
    ) {
        if let Some(rt) = self.queue_mut(q) {
            rt.counts.shift(from, to);
            batch.insert(layout::counts(q), record(&rt.counts));
        }
    }

    fn enqueue(&mut self, req: EnqueueRequest) -> Result<(Enqueued, Option<u64>), ErrorBody> {
        let settings = self.config.settings(&req.queue);
        if let Some(s) = &settings
            && req.payload.get().len() > s.max_payload_bytes
        {
            let msg = format!(
                "payload is {} bytes; queue {:?} accepts at most {}",
                req.payload.get().len(),
                req.queue,
                s.max_payload_bytes
            );
            return Err(ErrorBody::new("payload_too_large", msg));
        }
        let group = match &settings {
            Some(s) if s.ordering == Ordering::Fifo => Some(fifo_group(s, &req)?),
            _ => None,
        };
        let q = self.queue_for(&req.queue)?;
        let mut batch = sled::Batch::default();
        if let Some(key) = &req.idempotency_key
            && let Some(existing) = self.idempotent_match(q, key).map_err(store_error)?
        {
            return Ok((
                Enqueued {
                    receipt: existing,
                    duplicate: true,
                },
                None,
            ));
        }
        let f = self.fn_id(&req.namespace, &req.function_id)?;
        let id = Uuid::now_v7();
        let seq = self.take_seq(&mut batch);
        let now = now_ms();
        let delayed = req.run_at_ms.is_some_and(|t| t > now);
        // A FIFO job waits behind any unfinished job of its group.
        let held = match &group {
            Some(g) => self
                .store
                .tree()
                .scan_prefix(layout::group_prefix(q, g))
                .next()
                .is_some(),
            None => false,
        };
        if let Some(g) = &group {
            batch.insert(layout::group_entry(q, g, seq), id.as_bytes());
        }
        let max_attempts = self.queues[&req.queue].settings.max_attempts;
        let job = JobRecord {
            queue: req.queue.clone(),
            queue_id: q,
            namespace: req.namespace,
            function_id: req.function_id,
            fn_id: f,
            state: if held {
                JobState::Held
            } else if delayed {
                JobState::Delayed
            } else {
                JobState::Ready
            },
            priority: req.priority,
            seq,
            attempts: 0,
            history_len: 0,
            max_attempts,
            enqueued_ms: now,
            due_ms: if delayed {
                req.run_at_ms.unwrap_or(0)
            } else {
                0
            },
            finished_ms: 0,
            traceparent: req.traceparent,
            baggage: req.baggage,
            group,
            idempotency_key: req.idempotency_key.clone(),
            result: None,
            last_error: None,
            redrives: 0,
            dead_seq: 0,
        };
        batch.insert(layout::payload(&id), req.payload.get().as_bytes());
        if let Some(key) = &req.idempotency_key {
            batch.insert(layout::idempotency(q, key), id.as_bytes());
        }
        self.place(&id, &job, &mut batch);
        batch.insert(layout::job(&id), record(&job));
        self.count(q, None, Some(job.state), &mut batch);
        let ticket = self.store.apply(batch).map_err(store_error)?;
        if job.state == JobState::Ready {
            self.mark_ready(q, f);
        }
        Ok((
            Enqueued {
                receipt: id,
                duplicate: false,
            },
            Some(ticket),
        ))
    }

    /// An earlier job with this idempotency key, if still within retention.
    fn idempotent_match(&self, q: QueueId, key: &str) -> Result<Option<Uuid>, StoreError> {
        let Some(v) = self.store.get_raw(&layout::idempotency(q, key))? else {
            return Ok(None);
        };
        let Some(id) = layout::uuid_value(&v) else {
            return Ok(None);
        };
        Ok(self.store.get::<JobRecord>(&layout::job(&id))?.map(|_| id))
    }

    /// Writes the index entry for a job's current state.
    pub(super) fn place(&mut self, id: &Uuid, job: &JobRecord, batch: &mut sled::Batch) {
        match job.state {
            JobState::Ready => batch.insert(
                layout::ready(job.queue_id, job.fn_id, job.priority, job.seq),
                id.as_bytes(),
            ),
            JobState::Delayed => {
                batch.insert(layout::due(job.due_ms, id), &[]);
                if self.next_due_ms.is_none_or(|d| job.due_ms < d) {
                    self.next_due_ms = Some(job.due_ms);
                }
            }
            JobState::Running => batch.insert(layout::running(id), &[]),
            JobState::Completed => batch.insert(layout::completed(job.finished_ms, id), &[]),
            JobState::Dead => batch.insert(layout::dead(job.queue_id, job.dead_seq), id.as_bytes()),
            // Held jobs live only in their group's list (written at enqueue).
            JobState::Cancelled | JobState::Held => {}
        }
    }

    /// Removes the index entry for a job's current state.
    pub(super) fn unplace(id: &Uuid, job: &JobRecord, batch: &mut sled::Batch) {
        match job.state {
            JobState::Ready => batch.remove(layout::ready(
                job.queue_id,
                job.fn_id,
                job.priority,
                job.seq,
            )),
            JobState::Delayed => batch.remove(layout::due(job.due_ms, id)),
            JobState::Running => batch.remove(layout::running(id)),
            JobState::Completed => batch.remove(layout::completed(job.finished_ms, id)),
            JobState::Dead => batch.remove(layout::dead(job.queue_id, job.dead_seq)),
            JobState::Cancelled | JobState::Held => {}
        }
    }

    /// Moves a job to `to` in one batch: index, record, counters.
    pub(super) fn transition(
        &mut self,
        id: &Uuid,
        job: &mut JobRecord,
        to: JobState,
        batch: &mut sled::Batch,
    ) {
        let from = job.state;
        Self::unplace(id, job, batch);
        job.state = to;
        self.place(id, job, batch);
        batch.insert(layout::job(id), record(job));
        self.count(job.queue_id, Some(from), Some(to), batch);
        if to == JobState::Ready {
            self.mark_ready(job.queue_id, job.fn_id);
        }
        if matches!(
            to,
            JobState::Completed | JobState::Dead | JobState::Cancelled
        ) {
            self.release_group(id, job, batch, true);
        }
    }

    /// A FIFO job left its group (finished, dead, cancelled or deleted): drop its
    /// entry and, if `promote`, let the group's next job run.
    pub(super) fn release_group(
        &mut self,
        id: &Uuid,
        job: &JobRecord,
        batch: &mut sled::Batch,
        promote: bool,
    ) {
        let Some(group) = &job.group else { return };
        batch.remove(layout::group_entry(job.queue_id, group, job.seq));
        if !promote {
            return;
        }
        let next = self
            .store
            .tree()
            .scan_prefix(layout::group_prefix(job.queue_id, group))
            .filter_map(|kv| kv.ok().and_then(|(_, v)| layout::uuid_value(&v)))
            .find(|other| other != id);
        let Some(next_id) = next else { return };
        match self.store.get::<JobRecord>(&layout::job(&next_id)) {
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
        if let Some(rt) = self.queue_mut(q) {
            rt.ready_fns.insert(f);
        }
    }

    /// Starts ready jobs while queues have free slots and their functions have workers.
    fn dispatch(&mut self) -> Result<(), StoreError> {
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            while self.has_free_slot(&name) {
                let Some((f, key, id)) = self.next_ready(&name)? else {
                    break;
                };
                self.start(&name, f, key, id)?;
            }
        }
        Ok(())
    }

    fn has_free_slot(&self, name: &str) -> bool {
        self.queues.get(name).is_some_and(|q| {
            !q.paused && q.running < q.settings.concurrency && !q.ready_fns.is_empty()
        })
    }

    /// The next ready job of the queue whose function some worker provides,
    /// round-robin across functions, priority then enqueue order within one.
    fn next_ready(&mut self, name: &str) -> Result<Option<(FnId, sled::IVec, Uuid)>, StoreError> {
        let rt = &self.queues[name];
        let (q, cursor) = (rt.id, rt.cursor);
        let order: Vec<FnId> = rt
            .ready_fns
            .range(cursor..)
            .chain(rt.ready_fns.range(..cursor))
            .copied()
            .collect();
        for f in order {
            let Some((ns, fid)) = self.fn_keys.get(&f) else {
                continue;
            };
            if !self.mesh.inspect(|st| st.function(ns, fid).is_some()) {
                continue; // waiting for a worker; spends no attempt
            }
            match self
                .store
                .tree()
                .scan_prefix(layout::ready_fn_prefix(q, f))
                .next()
            {
                Some(kv) => {
                    let (k, v) = kv?;
                    if let Some(id) = layout::uuid_value(&v) {
                        if let Some(rt) = self.queues.get_mut(name) {
                            rt.cursor = f + 1;
                        }
                        return Ok(Some((f, k, id)));
                    }
                }
                None => {
                    if let Some(rt) = self.queues.get_mut(name) {
                        rt.ready_fns.remove(&f);
                    }
                }
            }
        }
        Ok(None)
    }

    fn start(
        &mut self,
        name: &str,
        f: FnId,
        ready_key: sled::IVec,
        id: Uuid,
    ) -> Result<(), StoreError> {
        let Some(mut job) = self.store.get::<JobRecord>(&layout::job(&id))? else {
            // An index entry without its job cannot be run; drop it so it cannot block the queue.
            tracing::error!(job = %id, "ready entry without a job record; removed");
            self.store.tree().remove(ready_key)?;
            return Ok(());
        };
        let payload = self
            .store
            .get_raw(&layout::payload(&id))?
            .map(|p| p.to_vec())
            .unwrap_or_else(|| b"null".to_vec());
        let settings = self.queues[name].settings.clone();
        let (ns, fid) = self.fn_keys[&f].clone();
        let data = String::from_utf8(payload)
            .ok()
            .and_then(|t| serde_json::value::RawValue::from_string(t).ok())
            .unwrap_or_else(crate::protocol::null_payload);
        let call = match self.mesh.start_internal_call(
            &ns,
            &fid,
            data,
            CallExtras {
                metadata: None,
                traceparent: job.traceparent.clone(),
                baggage: job.baggage.clone(),
            },
            settings.lease,
        ) {
            Ok(call) => call,
            Err(_) => return Ok(()), // the worker left between the check and now; try later
        };
        let mut batch = sled::Batch::default();
        job.attempts += 1;
        job.history_len += 1;
        let attempt = AttemptRecord {
            attempt: job.history_len,
            started_ms: now_ms(),
            ended_ms: 0,
            worker_id: Some(call.executor),
            error: None,
        };
        batch.insert(layout::attempt(&id, attempt.attempt), record(&attempt));
        self.transition(&id, &mut job, JobState::Running, &mut batch);
        self.store.apply(batch)?;
        let q = job.queue_id;
        self.running.insert(id, q);
        if let Some(rt) = self.queue_mut(q) {
            rt.running += 1;
        }
        tokio::spawn(dispatcher::watch(
            self.mesh.clone(),
            self.finished_tx.clone(),
            id,
            call,
            settings.lease,
        ));
        Ok(())
    }

    /// Records an attempt's outcome: completed, retry later, or dead.
    fn finish(&mut self, f: Finished) -> Result<(), StoreError> {
        let Some(q) = self.running.remove(&f.job) else {
            return Ok(());
        };
        if let Some(rt) = self.queue_mut(q) {
            rt.running = rt.running.saturating_sub(1);
        }
        let Some(mut job) = self.store.get::<JobRecord>(&layout::job(&f.job))? else {
            return Ok(());
        };
        if job.state != JobState::Running {
            return Ok(()); // cancelled or purged while it ran
        }
        let now = now_ms();
        let mut batch = sled::Batch::default();
        let akey = layout::attempt(&f.job, job.history_len);
        let mut attempt: AttemptRecord = self.store.get(&akey)?.unwrap_or(AttemptRecord {
            attempt: job.history_len,
            started_ms: now,
            ended_ms: 0,
            worker_id: None,
            error: None,
        });
        attempt.ended_ms = now;
        match f.outcome {
            Ok(result) => {
                job.result = result.map(|r| r.get().as_bytes().to_vec());
                job.finished_ms = now;
                job.last_error = None;
                self.transition(&f.job, &mut job, JobState::Completed, &mut batch);
            }
            Err(err) => {
                attempt.error = Some(err.clone());
                self.fail(&f.job, &mut job, err, &mut batch);
            }
        }
        batch.insert(akey, record(&attempt));
        self.store.apply(batch)?;
        Ok(())
    }

    /// A failed attempt: back off and retry, or dead-letter when attempts are spent.
    pub(super) fn fail(
        &mut self,
        id: &Uuid,
        job: &mut JobRecord,
        err: ErrorRecord,
        batch: &mut sled::Batch,
    ) {
        tracing::debug!(job = %id, attempt = job.attempts, reason = err.reason.as_str(), "attempt failed");
        job.last_error = Some(err);
        if job.attempts >= job.max_attempts {
            job.dead_seq = self.take_seq(batch);
            job.finished_ms = now_ms();
            tracing::info!(job = %id, queue = %job.queue, attempts = job.attempts, "job dead-lettered");
            self.transition(id, job, JobState::Dead, batch);
        } else {
            let settings = &self.queues[&job.queue].settings;
            let delay = settings.backoff(job.attempts, unit_random());
            job.due_ms = now_ms() + delay.as_millis() as u64;
            self.transition(id, job, JobState::Delayed, batch);
        }
    }

    /// Delayed and backing-off jobs whose time has come become ready.
    fn promote_due(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        self.next_due_ms = None;
        let mut promoted = 0;
        for kv in self.store.tree().scan_prefix([layout::DUE]) {
            let (k, _) = kv?;
            let Some((due, id)) = layout::parse_due(&k) else {
                continue;
            };
            if due > now || promoted >= 10_000 {
                self.next_due_ms = Some(if due > now { due } else { now });
                break;
            }
            let mut batch = sled::Batch::default();
            match self.store.get::<JobRecord>(&layout::job(&id))? {
                Some(mut job) if job.state == JobState::Delayed => {
                    job.due_ms = 0;
                    batch.remove(k);
                    job.state = JobState::Ready;
                    self.place(&id, &job, &mut batch);
                    batch.insert(layout::job(&id), record(&job));
                    self.count(
                        job.queue_id,
                        Some(JobState::Delayed),
                        Some(JobState::Ready),
                        &mut batch,
                    );
                    self.mark_ready(job.queue_id, job.fn_id);
                }
                _ => batch.remove(k),
            }
            self.store.apply(batch)?;
            promoted += 1;
        }
        Ok(())
    }

    /// Deletes completed jobs (record, payload, history) past their queue's retention.
    fn prune_completed(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let mut pruned = 0;
        for kv in self.store.tree().scan_prefix([layout::COMPLETED]) {
            let (k, _) = kv?;
            let Some((done, id)) = layout::parse_due(&k) else {
                continue;
            };
            let Some(job) = self.store.get::<JobRecord>(&layout::job(&id))? else {
                self.store.tree().remove(k)?;
                continue;
            };
            let retention = self
                .queues
                .get(&job.queue)
                .map_or(Duration::ZERO, |q| q.settings.retention);
            if done + retention.as_millis() as u64 > now || pruned >= 10_000 {
                break;
            }
            let mut batch = sled::Batch::default();
            self.delete_job(&id, &job, &mut batch, true)?;
            self.store.apply(batch)?;
            pruned += 1;
        }
        Ok(())
    }

    /// Removes every trace of a job (index, record, payload, history, idempotency key).
    pub(super) fn delete_job(
        &mut self,
        id: &Uuid,
        job: &JobRecord,
        batch: &mut sled::Batch,
        promote: bool,
    ) -> Result<(), StoreError> {
        Self::unplace(id, job, batch);
        batch.remove(layout::job(id));
        batch.remove(layout::payload(id));
        for kv in self.store.tree().scan_prefix(layout::attempts_prefix(id)) {
            batch.remove(kv?.0);
        }
        if let Some(key) = &job.idempotency_key {
            batch.remove(layout::idempotency(job.queue_id, key));
        }
        // Deleting a group's active job lets the next one run; a held one just leaves.
        let was_head = !matches!(
            job.state,
            JobState::Held | JobState::Completed | JobState::Dead | JobState::Cancelled
        );
        self.release_group(id, job, batch, promote && was_head);
        self.count(job.queue_id, Some(job.state), None, batch);
        Ok(())
    }
}

pub(super) fn new_queue_rt(
    id: QueueId,
    name: &str,
    settings: QueueSettings,
    paused: bool,
    counts: Counts,
) -> QueueRt {
    QueueRt {
        id,
        name: name.to_owned(),
        settings,
        paused,
        running: 0,
        counts,
        ready_fns: BTreeSet::new(),
        cursor: 0,
    }
}

pub(super) fn store_error(e: StoreError) -> ErrorBody {
    ErrorBody::new(codes::ENQUEUE_ERROR, e.to_string())
}

/// A uniform number in [0, 1) for backoff jitter.
fn unit_random() -> f64 {
    (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// The FIFO group named by the queue's `group_field` (a string or number; required).
fn fifo_group(settings: &QueueSettings, req: &EnqueueRequest) -> Result<String, ErrorBody> {
    let field = settings.group_field.as_deref().unwrap_or_default();
    let missing = || {
        ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            format!(
                "queue {:?} is fifo: the payload needs a string or number field {field:?} naming the job's group",
                req.queue
            ),
        )
    };
    let payload: serde_json::Value =
        serde_json::from_str(req.payload.get()).map_err(|_| missing())?;
    match payload.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err(missing()),
    }
}
