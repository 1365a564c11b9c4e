//! The operator views of the JetStream queues, in the local queue's shapes:
//! `queue::list`, `queue::stats`, `queue::get`, `queue::explain`,
//! `queue::peek`, `engine::queue::list_topics` and `topic_stats`, answered
//! by any engine from what JetStream keeps:
//!
//! - counts summed over the info of every consumer of the queue (one per
//!   (namespace, function) and lane: each priority band, each FIFO lane):
//!   `num_pending` (not delivered yet: `ready`, or `waiting_for_worker`
//!   when no engine's worker serves its function) and `num_ack_pending`
//!   (delivered and not acknowledged: `running`, a job waiting out its
//!   retry backoff included); `delayed` from the subject counts of the
//!   queue's scheduled messages (`qmesh.<c>.delayed.<queue>.*`); dead
//!   letters from the dead-letter stream's subject counts; `paused` from
//!   the queue's flag (`index.rs`);
//! - a job by its receipt's [`Place`]: its message on the job stream (ready
//!   when its sequence is past its lane's consumer's last delivered one,
//!   else running) with its failed attempts from the attempts bucket, its
//!   scheduled message while it is delayed (once fired, its message on its
//!   lane's subject, found by its receipt), or its dead letter;
//! - pages by walking the queue's subjects (every lane's, or its scheduled
//!   messages') in stream order.
//!
//! What JetStream does not keep is shown as unknown (`null`), never made up:
//! completed jobs (acknowledged messages are deleted), a job's results, when
//! an attempt started, and which worker ran it.

use base64::Engine as _;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use uuid::Uuid;

use super::dead::{Attempt, EXPIRED, REDRIVES};
use super::index::{Place, nats_error};
use super::job::{DUE_AT, EXPIRES_AT, NATS_SCHEDULE_TARGET, PRIORITY, RECEIPT, TRACEPARENT};
use super::{JobKey, Lane, Shared, b64};
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};
use async_nats::jetstream::consumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};

/// Most messages one `queue::peek` walks past before answering with a
/// cursor to go on from.
const MAX_WALK: usize = 10_000;

/// Arguments of the views and actions: iii tools say `topic` for `queue`,
/// and `message_id` for `receipt`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct OpArgs {
    queue: Option<String>,
    topic: Option<String>,
    receipt: Option<String>,
    message_id: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub(super) fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::INVALID_ARGUMENTS, msg)
}

impl OpArgs {
    pub(super) fn queue(&self) -> Result<String, ErrorBody> {
        self.queue
            .clone()
            .or_else(|| self.topic.clone())
            .filter(|q| !q.is_empty())
            .ok_or_else(|| invalid("missing queue"))
    }

    pub(super) fn receipt(&self) -> Result<Uuid, ErrorBody> {
        let s = self
            .receipt
            .clone()
            .or_else(|| self.message_id.clone())
            .ok_or_else(|| invalid("missing receipt"))?;
        Uuid::parse_str(&s).map_err(|_| invalid(format!("receipt {s:?} is not a UUID")))
    }
}

/// One consumer of the job stream: a (queue, namespace, function), its
/// lane (priority band or FIFO lane), and what the server says of it.
pub(super) struct JobConsumer {
    pub key: JobKey,
    pub lane: Lane,
    pub info: consumer::Info,
}

impl JobConsumer {
    /// Whether the message at `seq` (of this lane's subject) was delivered.
    fn delivered(&self, seq: u64) -> bool {
        seq <= self.info.delivered.stream_sequence
    }
}

/// Where a job found by its receipt is.
pub(super) enum Found {
    /// On its lane's subject: its message, key, lane, and whether it was
    /// delivered.
    Job {
        m: StreamMessage,
        key: JobKey,
        lane: Lane,
        delivered: bool,
    },
    /// A scheduled message until due: its message and the key and lane it
    /// will go to.
    Delayed {
        m: StreamMessage,
        key: JobKey,
        lane: Lane,
    },
    /// A flow's parent waiting for its children: its waiting message and
    /// the key and lane it will go to (`flows.rs`).
    Waiting {
        m: StreamMessage,
        key: JobKey,
        lane: Lane,
    },
}

/// What `queue_parts` finds of a queue.
pub(super) struct QueueParts {
    pub consumers: Vec<JobConsumer>,
    pub dead: u64,
    pub delayed: u64,
    pub waiting: u64,
    pub paused: bool,
}

/// A queue's counts kept outside its consumers.
struct Parts {
    dead: u64,
    delayed: u64,
    /// Flow parents waiting for their children.
    waiting: u64,
    paused: bool,
}

/// A queue's counts, summed over its lanes.
#[derive(Default)]
struct Counts {
    delayed: u64,
    ready: u64,
    waiting_for_worker: u64,
    running: u64,
    oldest_ready_ms: Option<u64>,
}

pub(super) fn no_queue(queue: &str) -> ErrorBody {
    ErrorBody::new(codes::QUEUE_NOT_FOUND, format!("no queue {queue:?}"))
}

pub(super) fn no_job(receipt: Uuid) -> ErrorBody {
    ErrorBody::new(
        codes::NOT_FOUND,
        format!(
            "no job {receipt} (unknown, or it left the cluster's streams: JetStream keeps \
             nothing of a job that completed or was cancelled, purged or discarded)"
        ),
    )
}

fn ms_of(m: &StreamMessage) -> u64 {
    u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn header(m: &StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_owned())
}

/// A job message's priority: its header, else (a job stored before the
/// header existed) its band's lowest.
fn priority_of(m: &StreamMessage, lane: Lane) -> u64 {
    header(m, PRIORITY)
        .and_then(|p| p.parse().ok())
        .unwrap_or(lane.lowest_priority() as u64)
}

/// A delayed job's due time (kept on the job once it fired).
fn due_of(m: &StreamMessage) -> Option<u64> {
    header(m, DUE_AT).and_then(|d| d.parse().ok())
}

/// The receipt a job message carries.
fn receipt_of(m: &StreamMessage) -> Option<Uuid> {
    header(m, RECEIPT).and_then(|r| Uuid::parse_str(&r).ok())
}

/// An attempt's error as the local queue shows it (`reason` from its code).
pub(super) fn error_view(e: &ErrorBody) -> Value {
    let reason = match e.code.as_str() {
        codes::INVOCATION_STOPPED => "worker_lost",
        codes::INVOCATION_TIMEOUT => "timeout",
        EXPIRED => "expired",
        _ => "error",
    };
    json!({"reason": reason, "code": e.code, "message": e.message, "stacktrace": e.stacktrace})
}

/// A history in the local queue's shape; `engine` says which engine ran
/// the attempt (its start and its worker are not kept).
fn history_view(history: &[Attempt]) -> Vec<Value> {
    history
        .iter()
        .map(|a| {
            let e = error_view(&a.error);
            json!({
                "attempt": a.attempt,
                "started_at_ms": null,
                "ended_at_ms": a.ended_at_ms,
                "worker_id": null,
                "engine": a.engine,
                "outcome": e["reason"],
                "error": e,
            })
        })
        .collect()
}

/// A stored dead letter as `engine::queue::dlq_messages` shows it: its last
/// error and history in the local queue's shape.
pub(super) fn letter_view(mut letter: Value) -> Value {
    let history: Vec<Attempt> =
        serde_json::from_value(letter["history"].clone()).unwrap_or_default();
    let last: Option<ErrorBody> = serde_json::from_value(letter["last_error"].clone()).ok();
    letter["history"] = Value::Array(history_view(&history));
    letter["last_error"] = last.as_ref().map(error_view).unwrap_or(Value::Null);
    letter
}

/// The trace id of a W3C `traceparent`.
fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|t| t.len() == 32)
}

impl Shared {
    /// Every consumer of the job stream that names a job key and lane.
    pub(super) async fn job_consumers(&self) -> Result<Vec<JobConsumer>, ErrorBody> {
        let mut out = Vec::new();
        let mut consumers = self.jobs.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| nats_error("list the job stream's consumers", e))?;
            if let Some((key, lane)) = JobKey::parse(&info.config.filter_subject, &self.names) {
                out.push(JobConsumer { key, lane, info });
            }
        }
        Ok(out)
    }

    /// The job stream's first message on `subject` at or after sequence
    /// `from` (`None`: there is none).
    async fn next_message(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<StreamMessage>, ErrorBody> {
        match (self.jobs.raw_message_builder())
            .sequence(from)
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_error("read the job stream", e)),
        }
    }

    /// Delayed jobs per queue: their scheduled messages' subject counts
    /// (`qmesh.<c>.delayed.<queue>.<receipt>`), of `queue` only when given.
    pub(super) async fn delayed_counts(
        &self,
        queue: Option<&str>,
    ) -> Result<HashMap<String, u64>, ErrorBody> {
        self.receipt_subject_counts("delayed", queue).await
    }

    /// Flow parents waiting for their children, per queue: the subject
    /// counts of `qmesh.<c>.waiting.<queue>.<receipt>` (`flows.rs`).
    pub(super) async fn waiting_counts(
        &self,
        queue: Option<&str>,
    ) -> Result<HashMap<String, u64>, ErrorBody> {
        self.receipt_subject_counts("waiting", queue).await
    }

    /// The messages per queue of subjects `qmesh.<c>.<kind>.<queue>.<receipt>`.
    async fn receipt_subject_counts(
        &self,
        kind: &str,
        queue: Option<&str>,
    ) -> Result<HashMap<String, u64>, ErrorBody> {
        let read = |e| nats_error(&format!("count the {kind} jobs"), e);
        let prefix = format!("qmesh.{}.{kind}.", self.names.cluster);
        let filter = match queue {
            Some(q) => format!("{prefix}{}.*", b64().encode(q)),
            None => format!("{prefix}*.*"),
        };
        let jobs = self.jobs.clone();
        let mut subjects = jobs.info_with_subjects(filter).await.map_err(read)?;
        let mut out = HashMap::new();
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.map_err(read)?;
            let queue = subject
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('.').next())
                .and_then(|q| b64().decode(q).ok())
                .and_then(|q| String::from_utf8(q).ok());
            if let Some(queue) = queue {
                *out.entry(queue).or_default() += count as u64;
            }
        }
        Ok(out)
    }

    /// Dead letters per queue.
    pub(super) async fn dead_counts(&self) -> Result<HashMap<String, u64>, ErrorBody> {
        let read = |e| nats_error("read the dead letters", e);
        let prefix = format!("qmesh.{}.dead.", self.names.cluster);
        let dead = self.dead.clone();
        let mut subjects = dead
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(read)?;
        let mut out = HashMap::new();
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.map_err(read)?;
            let queue = subject
                .strip_prefix(&prefix)
                .and_then(|q| b64().decode(q).ok())
                .and_then(|q| String::from_utf8(q).ok());
            if let Some(queue) = queue {
                *out.entry(queue).or_default() += count as u64;
            }
        }
        Ok(out)
    }

    /// Whether a worker on any engine of the cluster serves the function.
    pub(super) fn has_worker(&self, key: &JobKey) -> bool {
        self.mesh
            .inspect(|st| st.function(&key.namespace, &key.function_id).is_some())
    }

    /// The consumers of `queue` (every lane's), its dead letters and its
    /// pause; `queue_not_found` when it has none of them (no job was ever
    /// enqueued to it, and it was never paused).
    pub(super) async fn queue_parts(&self, queue: &str) -> Result<QueueParts, ErrorBody> {
        let consumers: Vec<JobConsumer> = self
            .job_consumers()
            .await?
            .into_iter()
            .filter(|l| l.key.queue == queue)
            .collect();
        let dead = self.dead_counts().await?.remove(queue).unwrap_or(0);
        let delayed = self.delayed_counts(Some(queue)).await?.remove(queue);
        let waiting = self.waiting_counts(Some(queue)).await?.remove(queue);
        let paused = self.is_paused(queue).await?;
        let (delayed, waiting) = (delayed.unwrap_or(0), waiting.unwrap_or(0));
        if consumers.is_empty() && dead == 0 && delayed == 0 && waiting == 0 && !paused {
            return Err(no_queue(queue));
        }
        Ok(QueueParts {
            consumers,
            dead,
            delayed,
            waiting,
            paused,
        })
    }

    async fn counts(&self, lanes: &[&JobConsumer], delayed: u64) -> Counts {
        let mut c = Counts {
            delayed,
            ..Counts::default()
        };
        let now = crate::queue::now_ms();
        for lane in lanes {
            let pending = lane.info.num_pending;
            if self.has_worker(&lane.key) {
                c.ready += pending;
            } else {
                c.waiting_for_worker += pending;
            }
            c.running += lane.info.num_ack_pending as u64;
            if pending > 0 {
                // The lane's oldest job not delivered yet.
                let next = lane.info.delivered.stream_sequence + 1;
                let subject = lane.key.subject(&self.names, lane.lane);
                if let Ok(Some(m)) = self.next_message(&subject, next).await {
                    let age = now.saturating_sub(ms_of(&m));
                    c.oldest_ready_ms = Some(c.oldest_ready_ms.map_or(age, |a| a.max(age)));
                }
            }
        }
        c
    }

    /// A queue's `queue::stats` view.
    async fn queue_view(&self, queue: &str, lanes: &[&JobConsumer], parts: Parts) -> Value {
        let c = self.counts(lanes, parts.delayed).await;
        let Parts {
            dead,
            paused,
            waiting,
            ..
        } = parts;
        let settings = self.config.or_defaults(queue);
        json!({
            "queue": queue,
            "paused": paused,
            "oldest_ready_age_ms": c.oldest_ready_ms,
            "settings": settings.view(),
            "ready": c.ready,
            "waiting_for_worker": c.waiting_for_worker,
            "delayed": c.delayed,
            // FIFO groups hold nothing here: a lane's consumer delivers one
            // job at a time (see the module doc of `mod.rs`).
            "held": 0,
            "waiting_for_children": waiting,
            "running": c.running,
            // Acknowledged jobs leave the stream: their count is not kept.
            "completed": null,
            "dead": dead,
        })
    }

    /// Every queue's view: those with a consumer, dead letters or a pause.
    pub(super) async fn list_view(&self) -> Result<Value, ErrorBody> {
        let lanes = self.job_consumers().await?;
        let dead = self.dead_counts().await?;
        let delayed = self.delayed_counts(None).await?;
        let waiting = self.waiting_counts(None).await?;
        let paused = self.paused_queues().await?;
        let mut queues: BTreeMap<&str, Vec<&JobConsumer>> = BTreeMap::new();
        for lane in &lanes {
            queues
                .entry(lane.key.queue.as_str())
                .or_default()
                .push(lane);
        }
        let named = dead.keys().chain(delayed.keys()).chain(waiting.keys());
        for q in named.chain(paused.iter()) {
            queues.entry(q.as_str()).or_default();
        }
        let mut out = Vec::new();
        for (queue, lanes) in queues {
            let parts = Parts {
                dead: dead.get(queue).copied().unwrap_or(0),
                delayed: delayed.get(queue).copied().unwrap_or(0),
                waiting: waiting.get(queue).copied().unwrap_or(0),
                paused: paused.contains(queue),
            };
            out.push(self.queue_view(queue, &lanes, parts).await);
        }
        Ok(json!({ "queues": out }))
    }

    pub(super) async fn stats_view(&self, queue: &str) -> Result<Value, ErrorBody> {
        let parts = self.queue_parts(queue).await?;
        let lanes: Vec<&JobConsumer> = parts.consumers.iter().collect();
        let counted = Parts {
            dead: parts.dead,
            delayed: parts.delayed,
            waiting: parts.waiting,
            paused: parts.paused,
        };
        Ok(self.queue_view(queue, &lanes, counted).await)
    }

    /// The message at `seq` of the job stream, if it is still there.
    pub(super) async fn job_message(&self, seq: u64) -> Result<Option<StreamMessage>, ErrorBody> {
        match self.jobs.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_error("read the job stream", e)),
        }
    }

    /// The dead letter at `seq`, if it is still there.
    pub(super) async fn dead_letter_at(&self, seq: u64) -> Result<Option<Value>, ErrorBody> {
        match self.dead.get_raw_message(seq).await {
            Ok(m) => Ok(serde_json::from_slice(&m.payload).ok()),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_error("read the dead letters", e)),
        }
    }

    /// The failed attempts of a job still on the job stream.
    pub(super) async fn history_of(&self, receipt: Uuid) -> Vec<Attempt> {
        match self.attempts.get(receipt.to_string()).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// A job on the job stream at `seq` with `receipt` on a job subject:
    /// its message, key and lane, and whether its lane's consumer delivered
    /// it (`None` once it left the stream).
    async fn job_at(&self, receipt: Uuid, seq: u64) -> Result<Option<Found>, ErrorBody> {
        let Some(m) = self.job_message(seq).await? else {
            return Ok(None);
        };
        if receipt_of(&m) != Some(receipt) {
            return Ok(None);
        }
        let Some((key, lane)) = JobKey::parse(&m.subject, &self.names) else {
            return Ok(None);
        };
        let delivered = match self.jobs.consumer_info(key.consumer(lane)).await {
            Ok(info) => seq <= info.delivered.stream_sequence,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a job consumer's info");
                false
            }
        };
        Ok(Some(Found::Job {
            m,
            key,
            lane,
            delivered,
        }))
    }

    /// A delayed job: its scheduled message at `seq` while it waits, else
    /// (it fired) its job message on `target` after `seq`, found by its
    /// receipt and indexed there for the next lookup (unless its entry
    /// moved on meanwhile: dead-lettered).
    async fn delayed_at(
        &self,
        receipt: Uuid,
        seq: u64,
        target: &str,
        revision: u64,
    ) -> Result<Option<Found>, ErrorBody> {
        if let Some(m) = self.job_message(seq).await?
            && receipt_of(&m) == Some(receipt)
            && let Some((key, lane)) = JobKey::parse(target, &self.names)
        {
            return Ok(Some(Found::Delayed { m, key, lane }));
        }
        let mut next = seq + 1;
        for _ in 0..MAX_WALK {
            let Some(m) = self.next_message(target, next).await? else {
                return Ok(None);
            };
            next = m.sequence + 1;
            if receipt_of(&m) == Some(receipt) {
                let place = Place::Jobs { seq: m.sequence };
                if let Err(e) = self.index(receipt, place, revision).await {
                    tracing::debug!(%receipt, error = %e, "cannot index a fired delayed job");
                }
                return self.job_at(receipt, m.sequence).await;
            }
        }
        Ok(None)
    }

    /// Where the job of `receipt` is on the job stream (`None`: not there,
    /// or dead: see [`Place::Dead`]).
    pub(super) async fn find_job(&self, receipt: Uuid) -> Result<Option<Found>, ErrorBody> {
        match self.locate_at(receipt).await? {
            (Some(Place::Jobs { seq }), _) => self.job_at(receipt, seq).await,
            (Some(Place::Delayed { seq, target }), revision) => {
                self.delayed_at(receipt, seq, &target, revision).await
            }
            (Some(Place::Waiting { seq }), _) => Ok(self
                .job_message(seq)
                .await?
                .filter(|m| receipt_of(m) == Some(receipt))
                .and_then(|m| {
                    let (key, lane) = self.waiting_key(&m)?;
                    Some(Found::Waiting { m, key, lane })
                })),
            _ => Ok(None),
        }
    }

    /// `queue::get`'s view of a job, and its key and lane while it is on
    /// the job stream.
    async fn job_view_at(
        &self,
        receipt: Uuid,
    ) -> Result<(Value, Option<(JobKey, Lane)>), ErrorBody> {
        if let Some(found) = self.find_job(receipt).await? {
            let (m, key, lane, state) = match found {
                Found::Delayed { m, key, lane } => (m, key, lane, "delayed"),
                Found::Waiting { m, key, lane } => (m, key, lane, "waiting_for_children"),
                Found::Job {
                    m,
                    key,
                    lane,
                    delivered,
                } => {
                    let state = match (delivered, self.has_worker(&key)) {
                        (true, _) => "running",
                        (false, true) => "ready",
                        (false, false) => "waiting_for_worker",
                    };
                    (m, key, lane, state)
                }
            };
            let history = self.history_of(receipt).await;
            let reports = self.reports_of(receipt).await;
            let settings = self.config.or_defaults(&key.queue);
            let redrives: u64 = header(&m, REDRIVES)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let traceparent = header(&m, TRACEPARENT);
            let flow = self.flow_view(receipt, &m.headers).await;
            let data = serde_json::from_slice::<Value>(&m.payload).unwrap_or(Value::Null);
            let fair_key = super::fair::key_of(&settings, &key.queue, &m.payload);
            let view = json!({
                "receipt": receipt,
                "queue": key.queue,
                "namespace": key.namespace,
                "function_id": key.function_id,
                "state": state,
                // Ended attempts (one running now, if any, is not counted).
                "attempts": history.len(),
                "max_attempts": settings.max_attempts,
                "priority": priority_of(&m, lane),
                // A fired delayed job's message is stored when it fired:
                // its enqueue time is not kept.
                "enqueued_at_ms": if due_of(&m).is_some() && state != "delayed" { None } else { Some(ms_of(&m)) },
                "due_at_ms": due_of(&m),
                "finished_at_ms": null,
                "redrives": redrives,
                "data": data,
                "result": null,
                "last_error": history.last().map(|a| error_view(&a.error)),
                "history": history_view(&history),
                "expires_at_ms": header(&m, EXPIRES_AT).and_then(|e| e.parse::<u64>().ok()),
                "fair_key": fair_key,
                "progress": reports.progress,
                "logs": reports.logs,
                "logs_dropped": reports.logs_dropped,
                "trace_id": traceparent.as_deref().and_then(trace_id),
                "flow": flow,
            });
            return Ok((view, Some((key, lane))));
        }
        let Some(Place::Dead { seq }) = self.locate(receipt).await? else {
            return Err(no_job(receipt));
        };
        let Some(letter) = self.dead_letter_at(seq).await? else {
            return Err(no_job(receipt));
        };
        if letter["id"] != json!(receipt) {
            return Err(no_job(receipt));
        }
        let history: Vec<Attempt> =
            serde_json::from_value(letter["history"].clone()).unwrap_or_default();
        let last: Option<ErrorBody> = serde_json::from_value(letter["last_error"].clone()).ok();
        let settings = letter["queue"]
            .as_str()
            .map_or_else(|| self.config.defaults(), |q| self.config.or_defaults(q));
        let view = json!({
            "receipt": receipt,
            "queue": letter["queue"],
            "namespace": letter["namespace"],
            "function_id": letter["function_id"],
            "state": "dead",
            "attempts": letter["retries"],
            "max_attempts": settings.max_attempts,
            "priority": letter["priority"].as_u64().unwrap_or(0),
            "enqueued_at_ms": null,
            "due_at_ms": null,
            "finished_at_ms": letter["failed_at_ms"],
            "redrives": letter["redrives"].as_u64().unwrap_or(0),
            "data": letter["payload"],
            "result": null,
            "last_error": last.as_ref().map(error_view),
            "history": history_view(&history),
            "expires_at_ms": letter["expires_at_ms"],
            "fair_key": null,
            "progress": letter["progress"],
            "logs": letter.get("logs").cloned().unwrap_or_else(|| json!([])),
            "logs_dropped": letter["logs_dropped"].as_u64().unwrap_or(0),
            "trace_id": null,
            "flow": null,
        });
        Ok((view, None))
    }

    /// `queue::get`'s view of a job.
    pub(super) async fn job_view(&self, receipt: Uuid) -> Result<Value, ErrorBody> {
        Ok(self.job_view_at(receipt).await?.0)
    }

    /// Whether the job of `receipt` is on the job stream and not delivered
    /// yet, and where: its scheduled message while delayed, else its job
    /// message (`Err` when it is running, dead or gone).
    pub(super) async fn cancellable(&self, receipt: Uuid) -> Result<u64, ErrorBody> {
        let running = |what: &str| {
            ErrorBody::new(
                codes::INVALID_STATE,
                format!("job {receipt} is {what}; only ready jobs can be cancelled"),
            )
        };
        match self.find_job(receipt).await? {
            Some(Found::Delayed { m, .. } | Found::Waiting { m, .. }) => Ok(m.sequence),
            Some(Found::Job { m, delivered, .. }) if !delivered => Ok(m.sequence),
            Some(Found::Job { .. }) => Err(running("running")),
            None => match self.locate(receipt).await? {
                Some(Place::Dead { seq }) if self.dead_letter_at(seq).await?.is_some() => {
                    Err(running("dead"))
                }
                _ => Err(no_job(receipt)),
            },
        }
    }

    /// `queue::explain`: one sentence on why a job is not running.
    async fn explain_view(&self, receipt: Uuid) -> Result<Value, ErrorBody> {
        let (job, at) = self.job_view_at(receipt).await?;
        let queue = job["queue"].as_str().unwrap_or_default().to_owned();
        let state = job["state"].as_str().unwrap_or_default().to_owned();
        let waiting = matches!(state.as_str(), "ready" | "waiting_for_worker");
        let throttled = match waiting {
            true => self.throttled_until(&queue).await?,
            false => None,
        };
        let expired = job["expires_at_ms"]
            .as_u64()
            .is_some_and(|at| at <= crate::queue::now_ms());
        let why = match state.as_str() {
            "dead" if job["last_error"]["reason"] == EXPIRED => {
                "it expired before it started; redrive it to run it anyway".to_owned()
            }
            "dead" => format!(
                "it is dead-lettered after {} attempts; redrive it to run it again",
                job["attempts"]
            ),
            "running" => format!(
                "an engine took it from the job stream: it is running, or waiting out its \
                 backoff after {} failed attempts",
                job["attempts"]
            ),
            "delayed" => {
                let due = job["due_at_ms"].as_u64().map(|ms| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                    humantime::format_rfc3339_millis(at).to_string()
                });
                format!(
                    "it is delayed: the job stream publishes it to its queue at {}",
                    due.as_deref().unwrap_or("its due time")
                )
            }
            _ if expired => "its expiry has passed: the engine that takes it dead-letters it \
                             as expired without running it"
                .to_owned(),
            _ if self.is_paused(&queue).await? => format!("queue {queue:?} is paused"),
            _ if throttled.is_some() => format!(
                "queue {queue:?} is throttled (queue::throttle) for {} ms more",
                throttled
                    .unwrap_or(0)
                    .saturating_sub(crate::queue::now_ms())
            ),
            "waiting_for_worker" => format!(
                "no worker on any engine of the cluster provides {} in namespace {}",
                job["function_id"].as_str().unwrap_or_default(),
                job["namespace"].as_str().unwrap_or_default()
            ),
            _ => match at {
                Some((key, lane @ Lane::Fifo(n))) => {
                    match self.jobs.consumer_info(key.consumer(lane)).await {
                        Ok(i) if i.num_ack_pending > 0 => format!(
                            "its FIFO lane {n} of queue {queue:?} runs one job at a time, and \
                             an earlier job of the lane (of its group, or of another group \
                             in the same lane) is running or retrying"
                        ),
                        _ => "it is next in line and will start shortly".to_owned(),
                    }
                }
                Some((key, lane)) => match self.jobs.consumer_info(key.consumer(lane)).await {
                    Ok(i) if i.num_ack_pending as i64 >= i.config.max_ack_pending => format!(
                        "queue {queue:?} is at its concurrency limit ({} across the cluster)",
                        i.config.max_ack_pending
                    ),
                    _ => "it is next in line and will start shortly".to_owned(),
                },
                None => "it is next in line and will start shortly".to_owned(),
            },
        };
        Ok(json!({ "receipt": receipt, "state": state, "explanation": why }))
    }

    /// `queue::peek`: a page of a queue's jobs in one state, in stream order.
    async fn peek_view(
        &self,
        queue: &str,
        state: &str,
        limit: usize,
        cursor: Option<Uuid>,
    ) -> Result<Value, ErrorBody> {
        let parts = self.queue_parts(queue).await?;
        let limit = limit.clamp(1, 1000);
        let stored = match state {
            "ready" | "waiting_for_worker" => "ready",
            "running" | "dead" | "delayed" => state,
            "held" | "waiting_for_children" | "completed" => {
                // Not offered by these queues yet, or not kept (completed).
                return Ok(
                    json!({ "queue": queue, "state": state, "jobs": [], "next_cursor": null }),
                );
            }
            other => {
                return Err(invalid(format!(
                    "unknown state {other:?}; one of ready, waiting_for_worker, delayed, running, \
                     completed, dead, held, waiting_for_children"
                )));
            }
        };
        let start = match cursor {
            None => 1,
            Some(c) => match self.cursor_seq(c, stored).await? {
                Some(seq) => seq + 1,
                None => {
                    return Ok(
                        json!({ "queue": queue, "state": stored, "jobs": [], "next_cursor": null }),
                    );
                }
            },
        };
        let (jobs, next) = match stored {
            "dead" => self.peek_dead(queue, start, limit).await?,
            "delayed" => self.peek_delayed(queue, start, limit).await?,
            _ => {
                self.peek_jobs(queue, &parts.consumers, stored == "running", start, limit)
                    .await?
            }
        };
        Ok(json!({ "queue": queue, "state": stored, "jobs": jobs, "next_cursor": next }))
    }

    /// The sequence a page of `stored` jobs ended at, by the receipt of its
    /// last job (`None`: that job is not where such a page could be).
    async fn cursor_seq(&self, cursor: Uuid, stored: &str) -> Result<Option<u64>, ErrorBody> {
        let place = self.locate(cursor).await?;
        Ok(match (place, stored) {
            (Some(Place::Dead { seq }), "dead") => Some(seq),
            (Some(Place::Delayed { seq, .. }), "delayed") => Some(seq),
            (Some(Place::Jobs { seq }), "ready" | "running") => Some(seq),
            // A delayed job that fired: where it is on its lane's subject.
            (Some(Place::Delayed { .. }), "ready" | "running") => {
                match self.find_job(cursor).await? {
                    Some(Found::Job { m, .. }) => Some(m.sequence),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Walks the queue's job messages, every lane's, from `start`: those
    /// delivered by their lane's consumer (`running`) or not.
    async fn peek_jobs(
        &self,
        queue: &str,
        consumers: &[JobConsumer],
        running: bool,
        mut next: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), ErrorBody> {
        let by_lane: HashMap<(&JobKey, Lane), &JobConsumer> =
            consumers.iter().map(|l| ((&l.key, l.lane), l)).collect();
        let subject = format!("{}.>", JobKey::queue_prefix(queue, &self.names));
        let mut jobs = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_WALK {
            let Some(m) = self.next_message(&subject, next).await? else {
                return Ok((jobs, None));
            };
            next = m.sequence + 1;
            let receipt = header(&m, RECEIPT).unwrap_or_default();
            last = Some(receipt.clone());
            let Some((key, lane)) = JobKey::parse(&m.subject, &self.names) else {
                continue;
            };
            let delivered = by_lane
                .get(&(&key, lane))
                .is_some_and(|l| l.delivered(m.sequence));
            if delivered != running {
                continue;
            }
            if jobs.len() == limit {
                let cursor = jobs
                    .last()
                    .and_then(|j: &Value| j["receipt"].as_str().map(str::to_owned));
                return Ok((jobs, cursor));
            }
            let history = match Uuid::parse_str(&receipt) {
                Ok(r) if running => self.history_of(r).await,
                _ => Vec::new(),
            };
            let shown = match (running, self.has_worker(&key)) {
                (true, _) => "running",
                (false, true) => "ready",
                (false, false) => "waiting_for_worker",
            };
            jobs.push(json!({
                "receipt": receipt, "function_id": key.function_id, "state": shown,
                "attempts": history.len(),
                "enqueued_at_ms": if due_of(&m).is_some() { None } else { Some(ms_of(&m)) },
                "due_at_ms": due_of(&m),
                "last_error": history.last().map(|a| error_view(&a.error)),
            }));
        }
        // Walked far without filling the page: go on from the last message seen.
        Ok((jobs, last))
    }

    /// Walks the queue's scheduled messages (its delayed jobs) from
    /// `start`, in the order they were enqueued (not by due time).
    async fn peek_delayed(
        &self,
        queue: &str,
        mut next: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), ErrorBody> {
        let subject = format!("{}.*", JobKey::delayed_prefix(queue, &self.names));
        let mut jobs: Vec<Value> = Vec::new();
        loop {
            let Some(m) = self.next_message(&subject, next).await? else {
                return Ok((jobs, None));
            };
            next = m.sequence + 1;
            let target = header(&m, NATS_SCHEDULE_TARGET).unwrap_or_default();
            let Some((key, _)) = JobKey::parse(&target, &self.names) else {
                continue;
            };
            if jobs.len() == limit {
                let cursor = jobs
                    .last()
                    .and_then(|j| j["receipt"].as_str().map(str::to_owned));
                return Ok((jobs, cursor));
            }
            jobs.push(json!({
                "receipt": header(&m, RECEIPT), "function_id": key.function_id,
                "state": "delayed", "attempts": 0, "enqueued_at_ms": ms_of(&m),
                "due_at_ms": due_of(&m), "last_error": null,
            }));
        }
    }

    /// Walks the queue's dead letters from `start`, oldest first.
    async fn peek_dead(
        &self,
        queue: &str,
        mut next: u64,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>), ErrorBody> {
        let subject = super::dead::dead_subject(self, queue);
        let mut jobs: Vec<Value> = Vec::new();
        loop {
            let m = match self
                .dead
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok((jobs, None)),
                Err(e) => return Err(nats_error("read the dead letters", e)),
            };
            next = m.sequence + 1;
            let Ok(letter) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            if jobs.len() == limit {
                let cursor = jobs
                    .last()
                    .and_then(|j| j["receipt"].as_str().map(str::to_owned));
                return Ok((jobs, cursor));
            }
            let last: Option<ErrorBody> = serde_json::from_value(letter["last_error"].clone()).ok();
            jobs.push(json!({
                "receipt": letter["id"], "function_id": letter["function_id"], "state": "dead",
                "attempts": letter["retries"], "enqueued_at_ms": null, "due_at_ms": null,
                "last_error": last.as_ref().map(error_view),
            }));
        }
    }
}

/// Wires a view: its arguments parsed, then `f` run on the shared state.
macro_rules! view_fn {
    ($(#[$doc:meta])* $name:ident, |$shared:ident, $a:ident| $body:expr) => {
        $(#[$doc])*
        pub(super) fn $name(shared: Arc<Shared>, _: Mesh, _: CallCtx, input: Value) -> BoxFuture<'static, Reply> {
            Box::pin(async move {
                let $shared = &shared;
                let $a: OpArgs = args(input)?;
                $body
            })
        }
    };
}
pub(super) use view_fn;

view_fn!(
    /// `{queues: [stats per queue]}`.
    list, |s, _a| s.list_view().await
);
view_fn!(
    /// Counts per state, oldest ready age, settings.
    stats, |s, a| s.stats_view(&a.queue()?).await
);
view_fn!(
    /// State, attempts with their history, last error.
    get, |s, a| s.job_view(a.receipt()?).await
);
view_fn!(
    /// A sentence on why a job is not running.
    explain, |s, a| s.explain_view(a.receipt()?).await
);
view_fn!(
    /// `{queue, state, limit?, cursor?}` → a page of jobs in that state.
    peek, |s, a| {
        let cursor = a.cursor.as_deref().map(Uuid::parse_str).transpose().map_err(|_| invalid("cursor is a receipt"))?;
        let state = a.state.clone().unwrap_or_else(|| "ready".to_owned());
        s.peek_view(&a.queue()?, &state, a.limit.unwrap_or(50), cursor).await
    }
);
view_fn!(
    /// iii: `[{name, broker_type, subscriber_count}]`.
    list_topics, |s, _a| {
        let list = s.list_view().await?;
        let queues = list["queues"].as_array().cloned().unwrap_or_default();
        Ok(Value::Array(queues.iter().map(|q| json!({
            "name": q["queue"], "broker_type": "qmesh-jetstream", "subscriber_count": q["settings"]["concurrency"],
        })).collect()))
    }
);
view_fn!(
    /// iii: `{depth, consumer_count, dlq_depth, config}`; `delivered` is
    /// unknown (completed jobs are not kept).
    topic_stats, |s, a| {
        let q = s.stats_view(&a.queue()?).await?;
        let n = |k: &str| q[k].as_u64().unwrap_or(0);
        Ok(json!({
            "depth": n("ready") + n("waiting_for_worker") + n("delayed") + n("running"),
            "consumer_count": q["settings"]["concurrency"],
            "dlq_depth": n("dead"),
            "delivered": null,
            "failed": n("dead"),
            "config": q["settings"],
        }))
    }
);
