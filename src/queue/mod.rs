//! The durable queue: `Enqueue` calls persisted in the embedded store and
//! delivered later through the live mesh, with retries and dead letters.
//!
//! Its records live in [`crate::store`].
//! - [`settings`]: per-queue settings and the backoff formula.
//! - [`scheduler`]: the single task that owns every queue's state and every
//!   write to the store (so transitions never race); its work is split into
//!   `intake` (enqueues), `running` (dispatch passes, outcomes),
//!   `transitions` (state moves, FIFO release) and `upkeep` (due jobs, pruning);
//!   its state is made of parts with their own invariants: `queue_table`
//!   (the queues by name and id), `ready` (a queue's ready index), `attempts` and `leases` (attempts in progress and
//!   the one lease timer), `counters`, `sequence` and `fn_ids`.
//! - [`recovery`]: what the scheduler reads at start, and crash repair.
//! - [`dispatcher`]: how a running attempt ends: its call's outcome, collected
//!   on the scheduler's channel, or its lease running out.
//! - [`flows`]: parents that wait for their children (`queue::enqueue_flow`).
//! - [`ops`]: operator views and actions (stats, peek, redrive, …).
//! - [`progress`]: what a running handler reports (progress, log lines),
//!   and the `queue:progress` trigger type.
//! - [`states`]: the names of job states operators see, one vocabulary for
//!   counts and views.
//!
//! Invariant: an enqueue is acknowledged only after its record is on disk.

mod attempts;
mod counters;
pub(crate) mod dispatcher;
pub(crate) mod flows;
mod fn_ids;
mod functions;
mod intake;
mod leases;
pub(crate) mod metrics;
mod module;
pub(crate) mod op;
pub(crate) mod ops;
pub(crate) mod progress;
mod queue_table;
pub mod rate;
mod ready;
pub(crate) mod recovery;
mod running;
pub(crate) mod scheduler;
mod sequence;
pub mod settings;
pub mod states;
mod transitions;
mod unsynced;
mod upkeep;

use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::mesh::Mesh;
use crate::protocol::{ErrorBody, Payload, codes};
use crate::store::{Store, StoreError};
use scheduler::Command;

pub(crate) use dispatcher::lease_expired;
pub(crate) use functions::{
    check_names, parse_enqueue, parse_enqueue_flow, parse_enqueue_many, parse_heartbeat, parse_log,
    parse_progress, parse_throttle,
};
pub(crate) use intake::{fair_key, fifo_group};
pub(crate) use module::{OPERATOR_ONLY, function_ids};
pub(crate) use ops::MAX_HEARTBEAT_EXTEND;

/// Called once with an enqueue's outcome, after the sync that made it durable.
pub(crate) type EnqueueReply = Box<dyn FnOnce(Result<Enqueued, ErrorBody>) + Send>;

/// A job to persist.
#[derive(Debug)]
pub(crate) struct EnqueueRequest {
    pub queue: String,
    pub namespace: String,
    pub function_id: String,
    pub payload: Payload,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    /// When it may first run (ms since the epoch); `None` = now.
    pub run_at_ms: Option<u64>,
    pub priority: u8,
    pub idempotency_key: Option<String>,
    /// No attempt starts after this (ms since the epoch); `None` = never expires.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Enqueued {
    pub receipt: Uuid,
    /// True when an idempotency key matched an earlier job (its receipt is returned).
    pub duplicate: bool,
}

/// Where another module's jobs go (durable topics'): the engine's own
/// queue, or the cluster's JetStream queues when `[cluster] queues =
/// "jetstream"`. The engine root picks one; the module sees only this.
pub(crate) trait QueueBackend: Send + Sync {
    /// Gives a queue the module made its settings (a topic subscription's
    /// `queue_config`), on top of `[queue]`'s defaults; a later call
    /// replaces them.
    fn define(&self, name: String, overrides: settings::QueueOverrides);

    /// Persists every job, each checked first; resolves once all are
    /// durable (one refused job refuses the batch).
    fn enqueue_many(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> BoxFuture<'static, Result<Vec<Enqueued>, ErrorBody>>;
}

impl QueueBackend for Queues {
    fn define(&self, name: String, overrides: settings::QueueOverrides) {
        Queues::define(self, name, overrides);
    }

    fn enqueue_many(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> BoxFuture<'static, Result<Vec<Enqueued>, ErrorBody>> {
        let queues = self.clone();
        Box::pin(async move { Queues::enqueue_many(&queues, reqs).await })
    }
}

/// A handle on the queue scheduler.
#[derive(Clone)]
pub(crate) struct Queues {
    tx: mpsc::UnboundedSender<Command>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// For `/health` only; weak, so the store still closes when the scheduler stops.
    store: std::sync::Weak<Store>,
    /// The `queue:progress` bindings; the scheduler fires them.
    pub(crate) progress_watchers: progress::ProgressWatchers,
    /// Counters and histograms the scheduler records, for `/metrics`.
    pub(crate) metrics: metrics::QueueMetrics,
    /// Whether this module takes workers' `Enqueue` calls and serves them the
    /// queue functions (false when the cluster's JetStream queues do; other
    /// modules still enqueue here through this handle).
    serves_workers: bool,
}

impl Queues {
    /// Opens nothing itself: `store` is already open. Recovers crash state and
    /// starts the scheduler task.
    pub fn start(
        mesh: Mesh,
        store: Arc<Store>,
        config: settings::QueueConfig,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(&store);
        let scheduler = scheduler::Scheduler::load(mesh, store, config)?;
        let progress_watchers = scheduler.progress_watchers.clone();
        let metrics = scheduler.metrics.clone();
        let task = tokio::spawn(scheduler.run(rx));
        Ok(Self {
            tx,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            store: weak,
            progress_watchers,
            metrics,
            serves_workers: true,
        })
    }

    /// This queue as a module that leaves `Enqueue` calls and the queue
    /// functions to another (the cluster's JetStream queues); realtime and
    /// topics keep enqueueing here through their handles.
    pub(crate) fn serving_no_workers(mut self) -> Self {
        self.serves_workers = false;
        self
    }

    /// Persists a job; resolves once it is durable.
    pub async fn enqueue(&self, req: EnqueueRequest) -> Result<Enqueued, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        self.enqueue_then(req, move |res| {
            let _ = tx.send(res);
        });
        rx.await.map_err(|_| stopped())?
    }

    /// Persists a job and calls `reply` once it is durable (or refused).
    /// The worker-facing path: the replies of one group commit are all
    /// queued before the sockets' writers wake, so each connection sends
    /// them in one write, and no task waits per enqueue.
    pub fn enqueue_then(
        &self,
        req: EnqueueRequest,
        reply: impl FnOnce(Result<Enqueued, ErrorBody>) + Send + 'static,
    ) {
        if let Err(mpsc::error::SendError(Command::Enqueue(_, reply))) =
            self.tx.send(Command::Enqueue(req, Box::new(reply)))
        {
            reply(Err(stopped()));
        }
    }

    /// Persists jobs in ONE batch, acknowledged by one sync; resolves once
    /// all are durable, or with the first refusal (the accepted ones stand).
    pub async fn enqueue_many(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<Enqueued>, ErrorBody> {
        let mut waits = Vec::with_capacity(reqs.len());
        let mut jobs: Vec<(EnqueueRequest, EnqueueReply)> = Vec::with_capacity(reqs.len());
        for req in reqs {
            let (tx, rx) = oneshot::channel();
            waits.push(rx);
            jobs.push((
                req,
                Box::new(move |res| {
                    let _ = tx.send(res);
                }),
            ));
        }
        if let Err(mpsc::error::SendError(Command::EnqueueMany(jobs))) =
            self.tx.send(Command::EnqueueMany(jobs))
        {
            for (_, reply) in jobs {
                reply(Err(stopped()));
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            out.push(rx.await.map_err(|_| stopped())??);
        }
        Ok(out)
    }

    /// Persists a flow (a parent and its children, any depth) in one batch;
    /// resolves with its receipts once all of it is durable, or with its refusal.
    pub async fn enqueue_flow(&self, root: flows::FlowNode) -> Result<Value, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        let reply: flows::FlowReply = Box::new(move |res| {
            let _ = tx.send(res);
        });
        if let Err(mpsc::error::SendError(Command::EnqueueFlow(_, reply))) =
            self.tx.send(Command::EnqueueFlow(root, reply))
        {
            reply(Err(stopped()));
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Gives queue `name` these settings (over the defaults), replacing what
    /// the config says: for queues other modules make at run time.
    pub fn define(&self, name: String, overrides: settings::QueueOverrides) {
        let _ = self.tx.send(Command::Define(name, overrides));
    }

    /// The store's state for `/health`: `ok`, or `degraded` with the reason
    /// of its last failure until a sync succeeds again.
    pub fn store_health(&self) -> Option<serde_json::Value> {
        let store = self.store.upgrade()?;
        Some(match store.fault() {
            None => serde_json::json!({"state": "ok"}),
            Some(f) => serde_json::json!({
                "state": "degraded",
                "reason": if f.full { codes::STORE_FULL } else { "store_error" },
                "message": f.message,
            }),
        })
    }

    /// Stops starting jobs (engine shutdown); running ones may still finish.
    pub fn stop_dispatching(&self) {
        let _ = self.tx.send(Command::Drain);
    }

    /// Stops the scheduler and waits until it (and its hold on the store) is gone.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Runs an operator function (see [`op::Op`]).
    pub async fn op(&self, op: op::Op) -> Result<Value, ErrorBody> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Op(op, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ErrorBody {
    ErrorBody::new(codes::ENQUEUE_ERROR, "the queue scheduler is not running")
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
