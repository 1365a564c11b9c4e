//! Queue engine functions: qmesh's own `queue::*` set, iii's names and
//! shapes (`engine::queue::*`, `iii::queue::*`) for tools written for iii,
//! and the handler of `action: enqueue` calls.

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

use std::sync::Arc;

use super::flows::FlowNode;
use super::op::Op;
use super::{EnqueueRequest, Queues, now_ms};
use crate::mesh::provided::args;
use crate::mesh::session::answer;
use crate::mesh::spans::{CallSpan, Origin, ended_by};
use crate::mesh::{CallCtx, Connection, Mesh, Reply};
use crate::protocol::{Action, ErrorBody, Invoke, codes, names, to_payload};
use crate::store::records::{ChildFailure, JobState};

/// How far ahead a job may be scheduled: beyond it a delay is a mistake
/// (or an attempt to overflow a clock), refused rather than wrapped.
const MAX_SCHEDULE_AHEAD_MS: u64 = 100 * 365 * 24 * 3_600_000;

/// Names that become store keys: no control characters, not blank, bounded.
pub(crate) fn check_names(
    queue: &str,
    function_id: &str,
    namespace: Option<&str>,
) -> Result<(), String> {
    names::check("queue", queue)?;
    names::check("function_id", function_id)?;
    match namespace {
        Some(ns) => names::check("namespace", ns),
        None => Ok(()),
    }
}

/// The shape of every queue engine function.
pub(super) type QueueFn = fn(Queues, Mesh, CallCtx, Value) -> BoxFuture<'static, Reply>;

fn invalid(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::INVALID_ARGUMENTS, msg)
}

async fn run(queues: &Queues, op: Op) -> Reply {
    queues.op(op).await
}

fn receipt(v: Option<String>) -> Result<Uuid, ErrorBody> {
    let s = v.ok_or_else(|| invalid("missing receipt"))?;
    Uuid::parse_str(&s).map_err(|_| invalid(format!("receipt {s:?} is not a UUID")))
}

/// Names a queue; iii tools say `topic` where qmesh says `queue`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct QueueArgs {
    queue: Option<String>,
    topic: Option<String>,
    receipt: Option<String>,
    message_id: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
    state: Option<String>,
    cursor: Option<String>,
}

impl QueueArgs {
    fn queue(&self) -> Result<String, ErrorBody> {
        queue_name(self.queue.clone().or_else(|| self.topic.clone()))
    }
}

macro_rules! queue_fn {
    ($(#[$doc:meta])* $name:ident, |$mesh:ident, $a:ident| $body:expr) => {
        $(#[$doc])*
        pub(super) fn $name(queues: Queues, _: Mesh, _: CallCtx, input: Value) -> BoxFuture<'static, Reply> {
            Box::pin(async move {
                let $mesh = &queues;
                let $a: QueueArgs = args(input)?;
                $body
            })
        }
    };
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EnqueueArgs {
    queue: Option<String>,
    function_id: Option<String>,
    data: Value,
    namespace: Option<String>,
    /// humantime (`"30s"`) or milliseconds.
    delay: Option<Value>,
    /// Milliseconds since the Unix epoch.
    run_at: Option<u64>,
    priority: Option<u8>,
    idempotency_key: Option<String>,
    /// humantime (`"10m"`) or milliseconds from now: not started by then, the
    /// job is dead-lettered with reason `expired` instead of running late.
    expires_in: Option<Value>,
    /// The same, as milliseconds since the Unix epoch.
    expires_at: Option<u64>,
}

/// The job a `queue::enqueue` input describes, checked (names, delay,
/// expiry), for another home of queued jobs (the cluster's JetStream queues).
pub(crate) fn parse_enqueue(input: Value) -> Result<EnqueueRequest, ErrorBody> {
    let a: EnqueueArgs = args(input)?;
    let queue = queue_name(a.queue.clone())?;
    request(queue, a, now_ms())
}

/// `queue::enqueue {queue, function_id, data, delay?, run_at?, priority?,
/// idempotency_key?, expires_in?, expires_at?}`.
pub(super) fn enqueue(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let a: EnqueueArgs = args(input)?;
        let queue = queue_name(a.queue.clone())?;
        let mut req = request(queue, a, now_ms())?;
        let span = EnqueueSpan::open(&mesh, &ctx, req.function_id.clone());
        span.trace(&mut req, &ctx);
        let e = span.closes(queues.enqueue(req).await)?;
        Ok(json!({ "messageReceiptId": e.receipt, "receipt": e.receipt, "duplicate": e.duplicate }))
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HeartbeatArgs {
    receipt: Option<String>,
    /// How long the lease runs from now: `"5m"` or milliseconds (default:
    /// the queue's lease).
    extend: Option<Value>,
}

/// `queue::heartbeat {receipt, extend?}` checked: the job, and how long its
/// lease should run from now (`None`: the queue's lease). Shared with the
/// cluster's JetStream queues.
pub(crate) fn parse_heartbeat(input: Value) -> Result<(Uuid, Option<Duration>), ErrorBody> {
    let a: HeartbeatArgs = args(input)?;
    let receipt = receipt(a.receipt)?;
    let extend = a.extend.map(|v| duration_arg("extend", v)).transpose()?;
    Ok((receipt, extend))
}

/// `queue::heartbeat {receipt, extend?}`, from a running job's handler.
pub(super) fn heartbeat(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    let operator = mesh.may_operate(ctx.caller);
    Box::pin(async move {
        let (receipt, extend) = parse_heartbeat(input)?;
        let op = Op::Heartbeat {
            receipt,
            extend,
            caller: ctx.caller,
            operator,
        };
        run(&queues, op).await
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ReportArgs {
    receipt: Option<String>,
    progress: Option<Value>,
    line: Option<Value>,
}

/// `queue::progress {receipt, progress}`: a running job's progress (a
/// number or a small JSON value), kept in its record and fired to
/// `queue:progress` bindings.
pub(super) fn progress(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    report(queues, mesh, ctx, input, parse_progress)
}

/// `queue::log {receipt, line}`: a line in a running job's log (the queue's
/// `max_log_lines` newest are kept; longer lines are cut).
pub(super) fn log(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    report(queues, mesh, ctx, input, parse_log)
}

/// `queue::progress {receipt, progress}` checked: the job, and its
/// progress as JSON of at most [`super::progress::MAX_PROGRESS_BYTES`].
/// Shared with the cluster's JetStream queues.
pub(crate) fn parse_progress(input: Value) -> Result<(Uuid, super::progress::Report), ErrorBody> {
    parse_report(input, |a| {
        let value = a.progress.ok_or_else(|| invalid("missing progress"))?;
        let raw = serde_json::to_vec(&value).expect("a Value encodes");
        if raw.len() > super::progress::MAX_PROGRESS_BYTES {
            return Err(invalid(format!(
                "progress is {} bytes of JSON; at most {}",
                raw.len(),
                super::progress::MAX_PROGRESS_BYTES
            )));
        }
        Ok(super::progress::Report::Progress(raw))
    })
}

/// `queue::log {receipt, line}` checked: the job, and its line (cut to
/// [`super::progress::MAX_LOG_LINE_BYTES`]). Shared with the cluster's
/// JetStream queues.
pub(crate) fn parse_log(input: Value) -> Result<(Uuid, super::progress::Report), ErrorBody> {
    parse_report(input, |a| {
        let line = match a.line {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(invalid("missing line")),
            Some(other) => other.to_string(),
        };
        Ok(super::progress::Report::Log(super::progress::bounded_line(
            line,
        )))
    })
}

/// A report's receipt, then what `what` reads of the rest.
fn parse_report(
    input: Value,
    what: fn(ReportArgs) -> Result<super::progress::Report, ErrorBody>,
) -> Result<(Uuid, super::progress::Report), ErrorBody> {
    let mut a: ReportArgs = args(input)?;
    let receipt = receipt(a.receipt.take())?;
    Ok((receipt, what(a)?))
}

/// A handler's report about its running job: `parse` reads it from the
/// arguments; the scheduler checks the caller runs the job (or operates).
fn report(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
    parse: fn(Value) -> Result<(Uuid, super::progress::Report), ErrorBody>,
) -> BoxFuture<'static, Reply> {
    let operator = mesh.may_operate(ctx.caller);
    Box::pin(async move {
        let (receipt, report) = parse(input)?;
        let caller = ctx.caller;
        run(
            &queues,
            Op::Report {
                receipt,
                report,
                caller,
                operator,
            },
        )
        .await
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ThrottleArgs {
    queue: Option<String>,
    /// `"30s"` or milliseconds.
    #[serde(rename = "for")]
    pause: Option<Value>,
}

/// A duration given as `"30s"` or milliseconds.
fn duration_arg(name: &str, v: Value) -> Result<Duration, ErrorBody> {
    match v {
        Value::Number(n) => Ok(Duration::from_millis(
            n.as_u64()
                .ok_or_else(|| invalid(format!("{name} must be >= 0")))?,
        )),
        Value::String(s) => {
            humantime::parse_duration(&s).map_err(|e| invalid(format!("{name} {s:?}: {e}")))
        }
        _ => Err(invalid(format!(
            "{name} is a duration like \"30s\" or milliseconds"
        ))),
    }
}

/// `queue::throttle {queue, for}`: pause the queue's dispatch for a while.
pub(super) fn throttle(
    queues: Queues,
    _: Mesh,
    _: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let (queue, pause) = parse_throttle(input)?;
        run(&queues, Op::Throttle { queue, pause }).await
    })
}

/// `queue::throttle {queue, for}` checked: the queue, and how long its
/// dispatch pauses. Shared with the cluster's JetStream queues.
pub(crate) fn parse_throttle(input: Value) -> Result<(String, Duration), ErrorBody> {
    let a: ThrottleArgs = args(input)?;
    let queue = queue_name(a.queue)?;
    let pause = duration_arg("for", a.pause.ok_or_else(|| invalid("missing for"))?)?;
    Ok((queue, pause))
}

/// A call's `queue`, present and not empty.
fn queue_name(queue: Option<String>) -> Result<String, ErrorBody> {
    queue
        .filter(|q| !q.is_empty())
        .ok_or_else(|| invalid("missing queue"))
}

/// Most jobs one `queue::enqueue_many` may carry.
const MAX_BATCH: usize = 10_000;

#[derive(Default, Deserialize)]
#[serde(default)]
struct EnqueueManyArgs {
    queue: Option<String>,
    /// Each job's fields as for `queue::enqueue`; `function_id` and
    /// `namespace` default to the call's.
    jobs: Vec<EnqueueArgs>,
    function_id: Option<String>,
    namespace: Option<String>,
}

/// A checked `queue::enqueue_many` input: its queue, the call's
/// `function_id` if it named one, and each job as `queue::enqueue` checks it.
pub(crate) struct EnqueueBatch {
    pub queue: String,
    pub function_id: Option<String>,
    pub jobs: Vec<EnqueueRequest>,
}

/// Reads and checks a `queue::enqueue_many` input (one bad job refuses it,
/// naming its index), for this queue and another home of queued jobs (the
/// cluster's JetStream queues).
pub(crate) fn parse_enqueue_many(input: Value) -> Result<EnqueueBatch, ErrorBody> {
    let a: EnqueueManyArgs = args(input)?;
    let queue = queue_name(a.queue)?;
    if a.jobs.is_empty() || a.jobs.len() > MAX_BATCH {
        return Err(invalid(format!(
            "jobs must hold 1 to {MAX_BATCH} jobs (got {})",
            a.jobs.len()
        )));
    }
    let now = now_ms();
    let mut jobs = Vec::with_capacity(a.jobs.len());
    for (i, mut job) in a.jobs.into_iter().enumerate() {
        if job.queue.as_ref().is_some_and(|q| *q != queue) {
            return Err(invalid(format!(
                "jobs[{i}]: every job of a batch goes to the call's queue {queue:?}"
            )));
        }
        job.function_id = job.function_id.or_else(|| a.function_id.clone());
        job.namespace = job.namespace.or_else(|| a.namespace.clone());
        let req = request(queue.clone(), job, now)
            .map_err(|e| invalid(format!("jobs[{i}]: {}", e.message)))?;
        jobs.push(req);
    }
    Ok(EnqueueBatch {
        queue,
        function_id: a.function_id,
        jobs,
    })
}

/// `queue::enqueue_many {queue, jobs: [{function_id?, data, delay?, run_at?,
/// priority?, idempotency_key?}], function_id?}`: every job is checked
/// first (one bad job refuses the call, naming its index), then the whole
/// batch is written and acknowledged after one sync.
pub(super) fn enqueue_many(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let EnqueueBatch {
            queue,
            function_id,
            mut jobs,
        } = parse_enqueue_many(input)?;
        let name = function_id.unwrap_or_else(|| format!("{queue} (batch)"));
        let span = EnqueueSpan::open(&mesh, &ctx, name);
        for req in &mut jobs {
            span.trace(req, &ctx);
        }
        let done = span.closes(queues.enqueue_many(jobs).await)?;
        let duplicates = done.iter().filter(|e| e.duplicate).count();
        let receipts: Vec<Value> = done.iter().map(|e| json!(e.receipt)).collect();
        Ok(json!({ "queue": queue, "receipts": receipts, "duplicates": duplicates }))
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct FlowArgs {
    #[serde(flatten)]
    job: EnqueueArgs,
    /// `fail_parent` (default) or `ignore`: what a dead child does to this job.
    on_child_failure: Option<String>,
    children: Vec<FlowArgs>,
}

/// `queue::enqueue_flow {queue, function_id, data, …, on_child_failure?,
/// children: [{queue?, function_id, data, …, children?}]}`: a parent that
/// runs once its children (any depth, any queues; a child's queue defaults
/// to its parent's) have finished, receiving their outcomes in
/// `metadata.job.children`. All of it is acknowledged after one sync, or
/// refused whole.
pub(super) fn enqueue_flow(
    queues: Queues,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let mut root = parse_enqueue_flow(input)?;
        let span = EnqueueSpan::open(&mesh, &ctx, root.req.function_id.clone());
        let mut stack = vec![&mut root];
        while let Some(node) = stack.pop() {
            span.trace(&mut node.req, &ctx);
            stack.extend(node.children.iter_mut());
        }
        span.closes(queues.enqueue_flow(root).await)
    })
}

/// A `queue::enqueue_flow` request, every node checked for itself (its
/// queue's settings are the queue's to check).
pub(crate) fn parse_enqueue_flow(input: Value) -> Result<FlowNode, ErrorBody> {
    let a: FlowArgs = args(input)?;
    let queue = queue_name(a.job.queue.clone())?;
    flow_node(queue, a, now_ms(), "flow")
}

/// One node of a flow, checked; `at` names it in errors (`flow.children[1]`).
fn flow_node(queue: String, a: FlowArgs, now: u64, at: &str) -> Result<FlowNode, ErrorBody> {
    let on_child_failure = match a.on_child_failure.as_deref() {
        None | Some("fail_parent") => ChildFailure::FailParent,
        Some("ignore") => ChildFailure::Ignore,
        Some(other) => {
            return Err(invalid(format!(
                "{at}: on_child_failure {other:?} is not fail_parent or ignore"
            )));
        }
    };
    let req =
        request(queue.clone(), a.job, now).map_err(|e| invalid(format!("{at}: {}", e.message)))?;
    let mut children = Vec::with_capacity(a.children.len());
    for (i, child) in a.children.into_iter().enumerate() {
        let q = child.job.queue.clone().unwrap_or_else(|| queue.clone());
        children.push(flow_node(q, child, now, &format!("{at}.children[{i}]"))?);
    }
    Ok(FlowNode {
        req,
        on_child_failure,
        children,
    })
}

/// The engine's span of one enqueue (`enqueue <function_id>`, a producer
/// span under the caller's `traceparent`, or a new trace): the job keeps it
/// as its `traceparent`, so every attempt is a child of it, and it ends
/// with the enqueue's outcome. Without a tracer (spans off) the job keeps
/// the caller's `traceparent` as it came.
struct EnqueueSpan {
    span: Option<CallSpan>,
    name: String,
}

impl EnqueueSpan {
    fn open(mesh: &Mesh, ctx: &CallCtx, name: String) -> Self {
        Self {
            span: mesh.open_span(ctx.traceparent.as_deref(), Origin::Enqueue),
            name,
        }
    }

    fn trace(&self, req: &mut EnqueueRequest, ctx: &CallCtx) {
        req.traceparent = match &self.span {
            Some(s) => Some(s.traceparent().as_str().to_owned()),
            None => ctx.traceparent.clone(),
        };
        req.baggage = ctx.baggage.clone();
    }

    /// Ends the span with `outcome`, and hands it on.
    fn closes<T>(self, outcome: Result<T, ErrorBody>) -> Result<T, ErrorBody> {
        if let Some(span) = self.span {
            let code = outcome.as_ref().err().map(|e| e.code.as_str());
            span.end(&self.name, ended_by(code));
        }
        outcome
    }
}

/// One job of `queue::enqueue` or `queue::enqueue_many`, checked.
fn request(queue: String, a: EnqueueArgs, now: u64) -> Result<EnqueueRequest, ErrorBody> {
    let function_id = a
        .function_id
        .filter(|f| !f.is_empty())
        .ok_or_else(|| invalid("missing function_id"))?;
    check_names(&queue, &function_id, a.namespace.as_deref()).map_err(invalid)?;
    let delay = match a.delay {
        None => None,
        Some(Value::Number(n)) => Some(Duration::from_millis(
            n.as_u64().ok_or_else(|| invalid("delay must be >= 0"))?,
        )),
        Some(Value::String(s)) => {
            Some(humantime::parse_duration(&s).map_err(|e| invalid(format!("delay {s:?}: {e}")))?)
        }
        Some(_) => {
            return Err(invalid(
                "delay is a duration string like \"30s\" or milliseconds",
            ));
        }
    };
    if delay.is_some() && a.run_at.is_some() {
        return Err(invalid("give delay or run_at, not both"));
    }
    let expires_at_ms = match (a.expires_at, a.expires_in) {
        (Some(_), Some(_)) => return Err(invalid("give expires_in or expires_at, not both")),
        (Some(at), None) => Some(at),
        (None, Some(v)) => {
            Some(now.saturating_add(duration_arg("expires_in", v)?.as_millis() as u64))
        }
        (None, None) => None,
    };
    let run_at_ms = match (a.run_at, delay) {
        (Some(at), _) => Some(at),
        (None, Some(d)) => Some(
            u64::try_from(d.as_millis())
                .ok()
                .and_then(|d| now.checked_add(d))
                .ok_or_else(|| invalid("delay is too long"))?,
        ),
        (None, None) => None,
    };
    if run_at_ms.is_some_and(|at| at.saturating_sub(now) > MAX_SCHEDULE_AHEAD_MS) {
        return Err(invalid(
            "a job may be scheduled at most 100 years ahead (delay or run_at)",
        ));
    }
    if let Some(exp) = expires_at_ms {
        if exp <= now {
            return Err(invalid(
                "the job would expire before it is enqueued (expires_at is past)",
            ));
        }
        if run_at_ms.is_some_and(|at| at >= exp) {
            return Err(invalid(
                "the job would expire before it may run (delay or run_at is at or after its expiry)",
            ));
        }
    }
    let payload = to_payload(&a.data);
    warn_if_refs_enqueued(&queue, &function_id, payload.get());
    Ok(EnqueueRequest {
        queue,
        namespace: a
            .namespace
            .unwrap_or_else(|| crate::protocol::DEFAULT_NAMESPACE.to_owned()),
        function_id,
        payload,
        traceparent: None,
        baggage: None,
        run_at_ms,
        priority: a.priority.unwrap_or(0),
        idempotency_key: a.idempotency_key,
        expires_at_ms,
    })
}

queue_fn!(
    /// `{queues: [stats per queue]}`.
    list, |mesh, _a| run(mesh, Op::List).await
);
queue_fn!(
    /// Counts per state, oldest ready age, settings.
    stats, |mesh, a| run(mesh, Op::Stats { queue: a.queue()? }).await
);
queue_fn!(
    /// State, attempts with their history, result or last error.
    get, |mesh, a| run(mesh, Op::Get { receipt: receipt(a.receipt.or(a.message_id))? }).await
);
queue_fn!(
    /// A sentence on why a job is not running.
    explain, |mesh, a| run(mesh, Op::Explain { receipt: receipt(a.receipt.or(a.message_id))? }).await
);
queue_fn!(
    /// `{queue, state, limit?, cursor?}` → a page of jobs in that state.
    /// `ready` and `waiting_for_worker` page through the same stored jobs
    /// (the store cannot tell them apart); each row names its shown state.
    peek, |mesh, a| {
        let state = match a.state.as_deref().unwrap_or("ready") {
            "ready" | "waiting_for_worker" => JobState::Ready,
            "delayed" => JobState::Delayed,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "dead" => JobState::Dead,
            "held" => JobState::Held,
            "waiting_for_children" => JobState::Waiting,
            other => return Err(invalid(format!("unknown state {other:?}; one of ready, waiting_for_worker, delayed, running, completed, dead, held, waiting_for_children"))),
        };
        let after = a.cursor.as_deref().map(Uuid::parse_str).transpose().map_err(|_| invalid("cursor is a receipt"))?;
        run(mesh, Op::Peek { queue: a.queue()?, state, limit: a.limit.unwrap_or(50), after }).await
    }
);
queue_fn!(pause, |mesh, a| run(
    mesh,
    Op::Pause {
        queue: a.queue()?,
        paused: true
    }
)
.await);
queue_fn!(resume, |mesh, a| run(
    mesh,
    Op::Pause {
        queue: a.queue()?,
        paused: false
    }
)
.await);
queue_fn!(
    /// Deletes the queue's ready and delayed jobs.
    purge, |mesh, a| run(mesh, Op::Purge { queue: a.queue()? }).await
);
queue_fn!(
    /// Cancels a ready or delayed job.
    cancel, |mesh, a| run(mesh, Op::Cancel { receipt: receipt(a.receipt.or(a.message_id))? }).await
);

fn queue_list(v: &Value) -> Vec<Value> {
    v["queues"].as_array().cloned().unwrap_or_default()
}

queue_fn!(
    /// iii: `[{name, broker_type, subscriber_count}]`.
    list_topics, |mesh, _a| {
        let list = run(mesh, Op::List).await?;
        Ok(Value::Array(queue_list(&list).iter().map(|q| json!({
            "name": q["queue"], "broker_type": "qmesh", "subscriber_count": q["settings"]["concurrency"],
        })).collect()))
    }
);
queue_fn!(
    /// iii: `{depth, consumer_count, dlq_depth, config}`; depth counts delayed jobs too.
    topic_stats, |mesh, a| {
        let q = run(mesh, Op::Stats { queue: a.queue()? }).await?;
        let n = |k: &str| q[k].as_u64().unwrap_or(0);
        Ok(json!({
            "depth": n("ready") + n("waiting_for_worker") + n("delayed") + n("running") + n("held") + n("waiting_for_children"),
            "consumer_count": q["settings"]["concurrency"],
            "dlq_depth": n("dead"),
            "delivered": n("completed"),
            "failed": n("dead"),
            "config": q["settings"],
        }))
    }
);
queue_fn!(
    /// iii: `[{topic, broker_type, message_count}]` for queues with dead letters.
    dlq_topics, |mesh, _a| {
        let list = run(mesh, Op::List).await?;
        Ok(Value::Array(queue_list(&list).iter().filter(|q| q["dead"].as_u64().unwrap_or(0) > 0).map(|q| json!({
            "topic": q["queue"], "broker_type": "qmesh", "message_count": q["dead"],
        })).collect()))
    }
);
queue_fn!(
    /// iii: `[{id, payload, error, failed_at, retries, size_bytes}]`, newest first; qmesh adds the history.
    dlq_messages, |mesh, a| run(mesh, Op::DeadLetters { queue: a.queue()?, offset: a.offset.unwrap_or(0), limit: a.limit.unwrap_or(50) }).await
);
queue_fn!(
    /// iii: `{queue, redriven}`.
    redrive, |mesh, a| run(mesh, Op::Redrive { queue: a.queue()?, receipt: None }).await
);
queue_fn!(
    /// iii: `{queue, message_id, redriven: 0|1}`.
    redrive_message, |mesh, a| {
        let id = receipt(a.message_id.clone().or(a.receipt.clone()))?;
        run(mesh, Op::Redrive { queue: a.queue()?, receipt: Some(id) }).await
    }
);
queue_fn!(
    /// iii: `{queue, message_id, redriven: 0|1}` (iii's field name, though the job is deleted).
    discard_message, |mesh, a| {
        let id = receipt(a.message_id.clone().or(a.receipt.clone()))?;
        run(mesh, Op::Discard { queue: a.queue()?, receipt: id }).await
    }
);

/// `action: enqueue`: persist the job, then answer `{messageReceiptId}` (only once it is on disk).
pub(super) fn take_enqueue(queues: &Queues, mesh: &Mesh, conn: &Arc<Connection>, invoke: Invoke) {
    let Action::Enqueue { queue } = invoke.action.clone() else {
        return;
    };
    if let Err(why) = check_names(&queue, &invoke.function_id, invoke.namespace.as_deref()) {
        let err = ErrorBody::new(codes::ENQUEUE_ERROR, why);
        return answer(conn, invoke.invocation_id, &invoke.function_id, Err(err));
    }
    if let Some(data) = &invoke.data {
        warn_if_refs_enqueued(&queue, &invoke.function_id, data.get());
    }
    let ctx = CallCtx {
        caller: conn.id,
        traceparent: invoke.traceparent.clone(),
        baggage: invoke.baggage.clone(),
    };
    let span = EnqueueSpan::open(mesh, &ctx, invoke.function_id.clone());
    let mut req = EnqueueRequest {
        queue,
        namespace: invoke
            .namespace
            .clone()
            .unwrap_or_else(|| crate::protocol::DEFAULT_NAMESPACE.to_owned()),
        function_id: invoke.function_id.clone(),
        payload: invoke.data.unwrap_or_else(crate::protocol::null_payload),
        traceparent: invoke.traceparent,
        baggage: invoke.baggage,
        run_at_ms: None,
        expires_at_ms: None,
        priority: 0,
        idempotency_key: None,
    };
    span.trace(&mut req, &ctx);
    let conn = conn.clone();
    let (invocation_id, function_id) = (invoke.invocation_id, invoke.function_id);
    queues.enqueue_then(req, move |outcome| {
        let outcome = span.closes(outcome);
        // iii answers every refused enqueue with `enqueue_error`, and SDK code
        // matches on it; the specific reason stays in the message.
        let reply = match outcome {
            Ok(e) => Ok(json!({ "messageReceiptId": e.receipt })),
            Err(e) if e.code == codes::ENQUEUE_ERROR => Err(e),
            Err(e) => Err(ErrorBody::new(
                codes::ENQUEUE_ERROR,
                format!("{}: {}", e.code, e.message),
            )),
        };
        answer(&conn, invocation_id, &function_id, reply);
    });
}

/// A job on the durable queue outlives any channel (it may run after the
/// channel expired, or after an engine restart that loses every channel), so
/// a ref in an enqueued payload is almost always a mistake worth a warning.
fn warn_if_refs_enqueued(queue: &str, function_id: &str, payload: &str) {
    let ids = crate::protocol::channel::refs_in_payload(payload);
    if !ids.is_empty() {
        tracing::warn!(queue, function_id, channel_ids = ?ids, "a channel ref was enqueued: the job may run after the channel is gone (channels are not durable)");
    }
}
