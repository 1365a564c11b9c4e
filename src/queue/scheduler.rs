//! The scheduler: one task owns every queue's in-memory state and is the only
//! writer to the store, so transitions are applied in one order and never
//! race. It reacts to enqueues, attempt outcomes, due times, operator calls
//! and workers registering functions (a waiting job starts as soon as a
//! worker provides its function: no polling).
//!
//! Its state is made of parts, each with its own invariant, in its own file:
//! the `QueueTable` (per queue its settings, pause flag, slots in use and
//! `ReadyIndex`), the `Attempts` in progress with their `Leases`, the
//! `Counters`, the `Sequence` and the interned `FnIds`. The scheduler
//! composes them; every write goes through `Scheduler::commit`.

use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::attempts::{Attempts, Expired, START_RECORD_DELAY};
use super::counters::Counters;
use super::dispatcher::{Finished, lease_expired};
use super::fn_ids::FnIds;
use super::op::Op;
use super::queue_table::{QueueRt, QueueTable};
use super::sequence::Sequence;
use super::settings::{QueueConfig, QueueOverrides};
use super::unsynced::Unsynced;
use super::{EnqueueReply, EnqueueRequest, now_ms};
use crate::mesh::state::Settled;
use crate::mesh::{Mesh, MeshEvent};
use crate::protocol::{ErrorBody, codes};
use crate::store::queue::{FnId, QueueId, QueueStore, Writes};
use crate::store::records::{Counts, JobRecord, QueueRecord};
use crate::store::{StoreError, Ticket};

pub enum Command {
    Enqueue(EnqueueRequest, EnqueueReply),
    /// Jobs that must share one batch and one sync (a durable topic's fan-out):
    /// never split across batches.
    EnqueueMany(Vec<(EnqueueRequest, EnqueueReply)>),
    /// Settings for a queue made at run time (a durable topic subscriber's
    /// queue): they replace the config's for that name, now and at creation.
    Define(String, QueueOverrides),
    /// A flow: every job in one batch and one sync, or none.
    EnqueueFlow(super::flows::FlowNode, super::flows::FlowReply),
    Op(Op, oneshot::Sender<Result<serde_json::Value, ErrorBody>>),
    /// Stop: the scheduler (and its handle on the store) goes away; running
    /// attempts are left `running` and go back to ready at the next start.
    Shutdown,
    /// Engine shutdown has begun: start nothing new.
    Drain,
}

/// How often completed jobs past their retention are pruned, at most (a
/// shorter retention prunes as often as it lasts, from 100 ms).
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Most enqueues or outcomes written in one batch.
const MAX_GROUP: usize = 1024;

pub struct Scheduler {
    pub(super) mesh: Mesh,
    pub(super) store: QueueStore,
    pub(super) config: QueueConfig,
    pub(super) queues: QueueTable,
    pub(super) fn_ids: FnIds,
    pub(super) seq: Sequence,
    /// Attempts in progress. Their record is written once, when they end
    /// (recovery writes it for attempts a stop interrupted).
    pub(super) attempts: Attempts,
    pub(super) counters: Counters,
    /// When a queue held back by its rate limit or a throttle may start
    /// jobs again (the soonest), so the loop wakes then.
    pub(super) limited_until: Option<tokio::time::Instant>,
    pub(super) next_due_ms: Option<u64>,
    /// The soonest expiry entry (`E`): when unstarted jobs may need dropping.
    pub(super) next_expiry_ms: Option<u64>,
    /// Attempt outcomes have their own channel, read first, so a flood of
    /// enqueues cannot starve completions (and with them free slots). The mesh
    /// sends each running job's call outcome here, tagged with the job id.
    pub(super) finished_tx: mpsc::UnboundedSender<Settled>,
    pub(super) finished_rx: Option<mpsc::UnboundedReceiver<Settled>>,
    /// Set when the engine shuts down: no job is started any more.
    pub(super) draining: bool,
    /// Enqueue batches not yet durable: their jobs are not started.
    pub(super) unsynced: Unsynced,
    /// Random bits drawn once per process for job ids (see `intake::job_id`).
    pub(super) id_salt: u16,
    /// Flow children that reached a final state in the batch being built:
    /// their parents are updated in the same batch (`flows::settle_flows`).
    pub(super) flow_settles: super::flows::FlowSettles,
    /// Running jobs whose handler reported progress or log lines not yet in
    /// their stored record (`progress::write_reports`).
    pub(super) unwritten_reports: std::collections::HashSet<Uuid>,
    /// What `/metrics` shows beside the counts (shared with the module).
    pub(super) metrics: super::metrics::QueueMetrics,
    /// The `queue:progress` bindings (shared with the module, which provides the type).
    pub(super) progress_watchers: super::progress::ProgressWatchers,
}

impl Scheduler {
    pub async fn run(mut self, rx: mpsc::UnboundedReceiver<Command>) {
        self.serve(rx).await;
        // Writes applied before the stop still owe their answers: the final
        // sync covers them.
        let answers = self.unsynced.take_answers();
        if !answers.is_empty() {
            let store = self.store.clone();
            tokio::spawn(async move {
                for (ticket, answer) in answers {
                    answer(store.durable(ticket).await);
                }
            });
        }
    }

    async fn serve(&mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut finished = self.finished_rx.take().expect("run is called once");
        let mut events = self.mesh.subscribe();
        let mut syncs = self.store.sync_events();
        let mut reopenings = self.store.reopenings();
        let shortest = (self.config.queues.keys())
            .filter_map(|name| self.config.settings(name))
            .map(|s| s.retention)
            .chain([self.config.defaults.retention])
            .min()
            .unwrap_or(PRUNE_EVERY);
        let mut prune =
            tokio::time::interval(shortest.clamp(Duration::from_millis(100), PRUNE_EVERY));
        let mut record_tick = tokio::time::interval(START_RECORD_DELAY);
        record_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            self.attempts.leases.arm();
            let leases_armed = self.attempts.leases.is_armed();
            let recording =
                self.attempts.has_unrecorded_starts() || !self.unwritten_reports.is_empty();
            let due = self
                .next_due_ms
                .map(|ms| Duration::from_millis(ms.saturating_sub(now_ms())));
            let expiry = self
                .next_expiry_ms
                .map(|ms| Duration::from_millis(ms.saturating_sub(now_ms())));
            tokio::select! {
                biased;
                Some(f) = finished.recv() => self.on_outcomes(f, &mut finished),
                cmd = rx.recv() => {
                    if !cmd.is_some_and(|cmd| self.on_commands(cmd, &mut rx)) {
                        return;
                    }
                }
                ev = events.recv() => match ev {
                    Ok(MeshEvent::FunctionAvailable) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Ok(_) => continue,
                    Err(_) => return,
                },
                _ = sleep_for(due) => self.log_err("promoting due jobs", |s| s.promote_due()),
                _ = sleep_for(expiry) => self.log_err("expiring jobs", |s| s.expire_due()),
                // A rate limit's next token, or a throttle's end: dispatch (below).
                _ = sleep_until(self.limited_until) => {}
                _ = self.attempts.leases.fired(), if leases_armed => self.expire_leases(),
                // A sync finished: jobs it made durable may start (below).
                // (Forget the batches it covered here too: a paused queue
                // never scans, and they would pile up.)
                _ = syncs.changed(), if !self.unsynced.is_empty() => {
                    syncs.borrow_and_update();
                    self.unsynced.first_waiting(self.store.synced());
                    self.unsynced.answer(&self.store.fates());
                }
                // The store failed and was reopened: what it holds now is the truth.
                Ok(()) = reopenings.changed() => match self.reload() {
                    Ok(fresh) => finished = fresh,
                    Err(e) => tracing::error!(error = %e, "queue: reading the reopened store failed"),
                },
                // A failed store refuses reads and writes until it is reopened:
                // nothing below may run meanwhile.
                _ = prune.tick(), if !self.store.is_broken() => self.log_err("pruning completed jobs", |s| s.prune_completed()),
                _ = record_tick.tick(), if recording => {
                    self.log_err("recording starts", |s| s.record_starts(false));
                    self.log_err("writing reports", |s| s.write_reports());
                }
            }
            // Whatever woke the loop, also take what waits on the other channel:
            // with a busy worker outcomes never stop arriving, and the biased
            // select alone would leave enqueues unanswered.
            if let Ok(f) = finished.try_recv() {
                self.on_outcomes(f, &mut finished);
            }
            if let Ok(cmd) = rx.try_recv()
                && !self.on_commands(cmd, &mut rx)
            {
                return;
            }
            // Receipts a sync made due, even when the biased select above
            // keeps taking enqueues and never reaches the sync branch.
            if (self.unsynced).answers_due(self.store.synced(), self.store.is_broken()) {
                self.unsynced.answer(&self.store.fates());
            }
            if !self.store.is_broken() {
                self.log_err("dispatching", |s| s.dispatch());
            }
        }
    }

    /// Records `first` and every outcome already waiting (up to a group) in one batch.
    fn on_outcomes(&mut self, first: Settled, finished: &mut mpsc::UnboundedReceiver<Settled>) {
        let mut outcomes = vec![Finished::from(first)];
        while outcomes.len() < MAX_GROUP {
            match finished.try_recv() {
                Ok(f) => outcomes.push(f.into()),
                Err(_) => break,
            }
        }
        self.log_err("recording attempts", |s| s.finish_all(outcomes));
    }

    /// Handles `first`; an enqueue takes every enqueue already waiting with it
    /// (one batch, one sync). Returns false when the scheduler must stop.
    fn on_commands(&mut self, first: Command, rx: &mut mpsc::UnboundedReceiver<Command>) -> bool {
        let mut group = match first {
            Command::Enqueue(req, reply) => vec![(req, reply)],
            Command::EnqueueMany(jobs) => jobs,
            other => return self.handle(other),
        };
        let mut next = None;
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Command::Enqueue(r, t)) => group.push((r, t)),
                Ok(Command::EnqueueMany(jobs)) => group.extend(jobs),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.enqueue_all(group);
        next.is_none_or(|cmd| self.handle(cmd))
    }

    /// Ends the calls of attempts whose lease ran out; their outcome (a
    /// timeout) comes back on the outcomes channel like any other.
    fn expire_leases(&mut self) {
        let now = tokio::time::Instant::now();
        for Expired {
            job,
            queue,
            invocation_id,
        } in self.attempts.expired(now)
        {
            let lease = self
                .queues
                .by_id(queue)
                .map_or(Duration::ZERO, |q| q.settings.lease);
            let err = lease_expired(lease);
            if !self.mesh.fail_call(invocation_id, &err.code, &err.message) {
                // The call already ended and its outcome is on its way; were it
                // lost, this makes sure the attempt still ends.
                let _ = self.finished_tx.send(Settled {
                    tag: job,
                    invocation_id,
                    outcome: Err(err),
                });
            }
        }
    }

    fn log_err(&mut self, what: &str, f: impl FnOnce(&mut Self) -> Result<(), StoreError>) {
        if let Err(e) = f(self) {
            tracing::error!(error = %e, "queue scheduler failed {what}");
        }
    }

    /// Handles one command; returns false for `Shutdown`.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Enqueue(req, reply) => self.enqueue_all(vec![(req, reply)]),
            Command::EnqueueMany(jobs) => self.enqueue_all(jobs),
            Command::Define(name, overrides) => {
                let settings = overrides.apply(&self.config.defaults);
                if let Some(q) = self.queues.get_mut(&name) {
                    q.set_settings(settings);
                }
                self.config.queues.insert(name, overrides);
            }
            Command::Shutdown => {
                // A restart must find every attempt in progress interrupted.
                self.log_err("recording starts", |s| s.record_starts(true));
                self.log_err("writing reports", |s| s.write_reports());
                return false;
            }
            Command::Drain => self.draining = true,
            Command::EnqueueFlow(root, reply) => self.enqueue_flow(root, reply),
            // Listings would read a failed store as empty: refuse instead.
            Command::Op(_, reply) if self.store.is_broken() => {
                let _ = reply.send(Err(store_error(self.store.refusal())));
            }
            Command::Op(op, reply) => match self.op(op) {
                // A write answers once it is durable; anything else at once.
                (Ok(v), Some(t)) => {
                    self.store.want(t);
                    let answer = move |r: Result<(), StoreError>| {
                        let _ = reply.send(r.map(|_| v).map_err(store_error));
                    };
                    self.unsynced.answer_when_durable(t, Box::new(answer));
                }
                (res, _) => {
                    let _ = reply.send(res);
                }
            },
        }
        true
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
                codes::QUEUE_NOT_FOUND,
                format!("queue {name:?} is not declared and the engine runs in strict mode"),
            ));
        };
        if name.is_empty() || name.len() > 200 {
            return Err(ErrorBody::new(
                codes::INVALID_ARGUMENTS,
                "a queue name is 1 to 200 bytes",
            ));
        }
        let id = self.queues.next_id();
        let rec = QueueRecord {
            id,
            paused: false,
            created_ms: now_ms(),
        };
        let mut writes = Writes::default();
        writes.put_queue(name, &rec);
        self.commit(writes).map_err(store_error)?;
        self.counters.load(id, Counts::default());
        self.queues.add(QueueRt::new(id, name, settings, false));
        Ok(id)
    }

    /// Interned id of a function (or of its lane for a fair key) for ready
    /// keys; persisted at once, like queues.
    pub(super) fn fn_id(
        &mut self,
        namespace: &str,
        function_id: &str,
        lane: Option<&str>,
    ) -> Result<FnId, ErrorBody> {
        if let Some(id) = self.fn_ids.id(namespace, function_id, lane) {
            return Ok(id);
        }
        let id = self.fn_ids.next_id();
        let mut writes = Writes::default();
        writes.put_function(namespace, function_id, lane, id);
        self.commit(writes).map_err(store_error)?;
        self.fn_ids.intern(
            namespace.to_owned(),
            function_id.to_owned(),
            lane.map(str::to_owned),
            id,
        );
        Ok(id)
    }

    /// A job's current record: the live one while it runs, else the store's.
    pub(super) fn load_job(&self, id: &Uuid) -> Result<Option<JobRecord>, StoreError> {
        match self.attempts.get(id) {
            Some(r) => Ok(Some(r.job.clone())),
            None => self.store.job(id),
        }
    }

    /// Applies `batch` with the counters of every queue it moved jobs in
    /// (the batch itself lists the jobs it completed in one entry): the
    /// scheduler's only way to the store, so no batch leaves them behind.
    /// (Each is written once per batch, not once per job.)
    pub(super) fn commit(&mut self, mut batch: Writes) -> Result<Ticket, StoreError> {
        self.settle_flows(&mut batch);
        self.counters.write_dirty(&mut batch);
        self.store.apply(batch)
    }
}

pub(super) fn store_error(e: StoreError) -> ErrorBody {
    if e.is_full() {
        return ErrorBody::new(codes::STORE_FULL, e.to_string());
    }
    ErrorBody::new(codes::ENQUEUE_ERROR, e.to_string())
}

/// A uniform number in [0, 1) for backoff jitter.
pub(super) fn unit_random() -> f64 {
    (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
