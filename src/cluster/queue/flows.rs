//! Flows on the JetStream queues (`queue::enqueue_flow`): a parent that
//! runs once its children (any depth, any queues) have ended, with the
//! local queue's meaning (`crate::queue::flows`).
//!
//! - **Stored whole or not at all.** A flow is ONE atomic batch on the job
//!   stream (NATS ADR-50, nats-server 2.12+): each leaf is a job message on
//!   its lane's subject (delayed: a scheduled message), each parent a
//!   message on `qmesh.<cluster>.waiting.<queue>.<receipt>`, which no
//!   consumer reads. A child carries its parent's receipt ([`PARENT`]); a
//!   parent carries how many children it waits for ([`CHILDREN`]), its
//!   policy ([`ON_CHILD_FAILURE`]) and its lane's subject ([`TARGET`]).
//!   Every receipt is indexed before the flow is answered.
//! - **A child's end reaches its parent before the child is acknowledged**
//!   (completed, dead-lettered or cancelled): its outcome is added to the
//!   parent's entry in the bucket `qmesh_<cluster>_flows` (by receipt,
//!   compare-and-set, once per child), and the engine that sees the entry
//!   complete releases the parent: its job message goes to its lane
//!   ([`Nats-Msg-Id`] = its receipt, so two releases are one), then its
//!   waiting message is deleted and its receipt indexed there. A child that
//!   failed under `fail_parent` dead-letters the parent instead
//!   (`child_failed`), which its own parent hears of in turn. A crash
//!   before the child's ack runs the child again; its outcome is recorded
//!   once and the release is repeated harmlessly.
//! - The parent's handler gets `metadata.job.children` from the entry; a
//!   child gets `metadata.job.parent`.

use async_nats::HeaderMap;
use async_nats::jetstream;
use base64::Engine as _;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use super::dead::Attempt;
use super::index::{Place, nats_error};
use super::intake::{PublishRefused, receipt};
use super::job::{Ended, Job, RECEIPT};
use super::{JobKey, Lane, Shared, b64, not_supported};
use crate::cluster::kv;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::ErrorBody;
use crate::queue::flows::{FlowNode, check_flow_with, check_parent_queue, receipts};

/// On a flow's child: its parent's receipt.
pub(super) const PARENT: &str = "Qmesh-Parent";
/// On a flow's parent: how many children it waits for.
pub(super) const CHILDREN: &str = "Qmesh-Children";
/// On a flow's parent: its children's receipts, comma-separated (at most
/// `MAX_FLOW_JOBS` of 36 bytes: within a NATS message).
const CHILD_RECEIPTS: &str = "Qmesh-Child-Receipts";
/// On a flow's parent: `ignore` when a failed child does not fail it.
const ON_CHILD_FAILURE: &str = "Qmesh-On-Child-Failure";
/// On a waiting parent: the subject its job goes to once released.
const TARGET: &str = "Qmesh-Target";

/// How long NATS has to commit a flow's batch.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a flow is sent again while no stream takes it (nothing of it
/// was stored), as a single enqueue is.
const NO_STREAM_WITHIN: Duration = Duration::from_secs(5);
const NO_STREAM_WAIT: Duration = Duration::from_millis(50);
/// Tries of a compare-and-set on a parent's entry that others moved.
const SETTLE_TRIES: usize = 50;

/// A child's end as its parent records it: the shape of
/// `metadata.job.children` and of `queue::get`'s flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Outcome {
    receipt: Uuid,
    queue: String,
    function_id: String,
    state: String,
    result: Option<Box<serde_json::value::RawValue>>,
    error: Option<Value>,
}

/// The subject of a waiting parent.
fn waiting_subject(shared: &Shared, queue: &str, receipt: Uuid) -> String {
    format!("{}.{receipt}", waiting_prefix(shared, queue))
}

/// The subject prefix of `queue`'s waiting parents (`<prefix>.*`).
pub(super) fn waiting_prefix(shared: &Shared, queue: &str) -> String {
    format!(
        "qmesh.{}.waiting.{}",
        shared.names.cluster,
        b64().encode(queue)
    )
}

/// A flow's node checked and placed: its job, lane and receipt, and the
/// receipt of its parent.
struct Planned {
    job: Job,
    lane: Lane,
    receipt: Uuid,
    parent: Option<Uuid>,
    children: usize,
    ignore_failures: bool,
}

/// `queue::enqueue_flow`: as on the local queue (the same request and
/// answer), stored as one atomic batch and answered once every receipt is
/// indexed.
pub(super) fn enqueue_flow(
    shared: Arc<Shared>,
    _: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let root = crate::queue::parse_enqueue_flow(input)?;
        if !shared.flows_allowed {
            return Err(not_supported(
                "flows need the job stream to take atomic batches (nats-server 2.12 or later)",
            ));
        }
        check_flow_with(&root, |_| Ok(()))?;
        let count = count_nodes(&root);
        let ids: Vec<Uuid> = (0..count).map(|_| receipt("", None)).collect();
        let tree = receipts(&root, &mut ids.iter().copied());
        let plan = shared.plan(root, &ids, &ctx)?;
        shared.store_flow(plan).await?;
        Ok(tree)
    })
}

fn count_nodes(root: &FlowNode) -> usize {
    1 + root.children.iter().map(count_nodes).sum::<usize>()
}

impl Shared {
    /// Every node in pre-order (the order of `ids` and of the answer's
    /// tree), each checked against its queue's settings.
    fn plan(&self, root: FlowNode, ids: &[Uuid], ctx: &CallCtx) -> Result<Vec<Planned>, ErrorBody> {
        let mut plan = Vec::with_capacity(ids.len());
        let mut stack = vec![(root, None)];
        let mut ids = ids.iter().copied();
        while let Some((mut node, parent)) = stack.pop() {
            let receipt = ids.next().expect("one id per node");
            let children = std::mem::take(&mut node.children);
            let mut req = node.req;
            req.traceparent = ctx.traceparent.clone();
            req.baggage = ctx.baggage.clone();
            let job = Job::of_request(req)?;
            let (settings, lane) = self.check(&job)?;
            check_parent_queue(&job.key.queue, !children.is_empty(), &settings)?;
            plan.push(Planned {
                job,
                lane,
                receipt,
                parent,
                children: children.len(),
                ignore_failures: node.on_child_failure
                    == crate::store::records::ChildFailure::Ignore,
            });
            // Reversed, so the first child is next: pre-order.
            for child in children.into_iter().rev() {
                stack.push((child, Some(receipt)));
            }
        }
        Ok(plan)
    }

    /// Publishes the flow as one atomic batch and indexes every receipt.
    async fn store_flow(&self, plan: Vec<Planned>) -> Result<(), ErrorBody> {
        for p in &plan {
            self.ensure_consumer(
                &p.job.key,
                p.lane,
                &self.config.or_defaults(&p.job.key.queue),
            )
            .await?;
        }
        let mut children_of: HashMap<Uuid, Vec<String>> = HashMap::new();
        for p in &plan {
            if let Some(parent) = p.parent {
                children_of
                    .entry(parent)
                    .or_default()
                    .push(p.receipt.to_string());
            }
        }
        let mut messages = Vec::with_capacity(plan.len());
        let mut places = Vec::with_capacity(plan.len());
        for p in &plan {
            let waits = p.children > 0;
            let (subject, mut headers, sent) = self.message_of(&p.job, p.lane, p.receipt, !waits);
            if let Some(parent) = p.parent {
                headers.insert(PARENT, parent.to_string().as_str());
            }
            let subject = if waits {
                headers.insert(CHILDREN, p.children.to_string().as_str());
                let receipts = children_of.remove(&p.receipt).unwrap_or_default();
                headers.insert(CHILD_RECEIPTS, receipts.join(",").as_str());
                headers.insert(TARGET, subject.as_str());
                if p.ignore_failures {
                    headers.insert(ON_CHILD_FAILURE, "ignore");
                }
                waiting_subject(self, &p.job.key.queue, p.receipt)
            } else {
                subject
            };
            let body = bytes::Bytes::copy_from_slice(p.job.payload.get().as_bytes());
            messages.push((subject, headers, body));
            places.push((sent, waits));
        }
        let last_seq = self.publish_atomic(messages).await?;
        let first_seq = last_seq + 1 - places.len() as u64;
        let places = places
            .into_iter()
            .enumerate()
            .map(|(i, (sent, waits))| {
                let seq = first_seq + i as u64;
                let place = if waits {
                    Place::Waiting { seq }
                } else {
                    sent.place(seq)
                };
                (sent.receipt, place)
            })
            .collect();
        self.index_all(places).await?;
        let expiring = plan.iter().filter_map(|p| {
            let at = p.job.expires_at_ms?;
            Some((p.receipt, p.job.key.queue.clone(), at))
        });
        self.schedule_expiries(expiring.collect()).await;
        Ok(())
    }

    /// Sends `messages` as one atomic batch; the sequence of the last one
    /// (the batch's are consecutive). Sent again, as a new batch, while no
    /// stream takes it: nothing of it was stored.
    async fn publish_atomic(
        &self,
        messages: Vec<(String, HeaderMap, bytes::Bytes)>,
    ) -> Result<u64, PublishRefused> {
        let refused = |e: String| PublishRefused::NotAcknowledged(e);
        let client = self.js.client();
        let started = tokio::time::Instant::now();
        loop {
            let batch = Uuid::new_v4().to_string();
            let total = messages.len();
            let mut reply = None;
            for (i, (subject, headers, body)) in messages.iter().enumerate() {
                let mut headers = headers.clone();
                headers.insert("Nats-Batch-Id", batch.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
                if i + 1 < total {
                    client
                        .publish_with_headers(subject.clone(), headers, body.clone())
                        .await
                        .map_err(|e| refused(e.to_string()))?;
                    continue;
                }
                headers.insert("Nats-Batch-Commit", "1");
                let request = async_nats::Request::new()
                    .headers(headers)
                    .payload(body.clone())
                    .timeout(Some(COMMIT_TIMEOUT));
                reply = Some(client.send_request(subject.clone(), request).await);
            }
            match reply.expect("a flow has a node") {
                Ok(m) => return batch_ack(&m.payload).map_err(refused),
                Err(e)
                    if e.kind() == async_nats::RequestErrorKind::NoResponders
                        && started.elapsed() < NO_STREAM_WITHIN =>
                {
                    tokio::time::sleep(NO_STREAM_WAIT).await;
                }
                Err(e) => return Err(refused(e.to_string())),
            }
        }
    }

    /// A job has ended: if it is a flow's child (its message's `headers`
    /// name a parent), the parent hears of it. Called before the job's
    /// message is acknowledged: on an error the caller leaves the message
    /// to be delivered again (the child's end is then told again; it is
    /// recorded once).
    pub(super) async fn child_ended(
        &self,
        headers: Option<&HeaderMap>,
        key: &JobKey,
        receipt: Uuid,
        ended: Ended,
    ) -> Result<(), ErrorBody> {
        let Some(parent) = headers
            .and_then(|h| h.get(PARENT))
            .and_then(|p| Uuid::parse_str(p.as_str()).ok())
        else {
            return Ok(());
        };
        let (state, result, error) = match ended {
            Ended::Completed(r) => ("completed", Some(r), None),
            Ended::Dead(e) => ("dead", None, e),
            Ended::Cancelled => ("cancelled", None, None),
        };
        let outcome = Outcome {
            receipt,
            queue: key.queue.clone(),
            function_id: key.function_id.clone(),
            state: state.to_owned(),
            result,
            error: error.as_ref().map(super::views::error_view),
        };
        self.settle(parent, outcome).await.inspect_err(|e| {
            tracing::warn!(%parent, child = %receipt, error = %e.message, "cannot settle a flow parent");
        })
    }

    /// Records a child's outcome on its parent (once), then releases or
    /// fails the parent when that outcome decides it.
    fn settle(&self, parent: Uuid, outcome: Outcome) -> BoxFuture<'_, Result<(), ErrorBody>> {
        Box::pin(async move {
            let outcomes = self.record_outcome(parent, outcome).await?;
            let Some(Place::Waiting { seq }) = self.locate(parent).await? else {
                return Ok(()); // released, failed or cancelled already
            };
            let Some(waiting) = self.job_message(seq).await? else {
                return Ok(());
            };
            let header = |name: &str| waiting.headers.get(name).map(|v| v.as_str().to_owned());
            if header(RECEIPT).as_deref() != Some(parent.to_string().as_str()) {
                return Ok(());
            }
            let children: usize = header(CHILDREN).and_then(|c| c.parse().ok()).unwrap_or(0);
            let fails = header(ON_CHILD_FAILURE).as_deref() != Some("ignore");
            let failed = outcomes.iter().find(|o| o.state != "completed");
            match failed {
                Some(child) if fails => self.fail_parent(parent, &waiting, child).await,
                _ if outcomes.len() >= children => self.release(parent, &waiting).await,
                _ => Ok(()),
            }
        })
    }

    /// Adds `outcome` to the parent's entry unless it is there; every
    /// outcome recorded so far.
    async fn record_outcome(
        &self,
        parent: Uuid,
        outcome: Outcome,
    ) -> Result<Vec<Outcome>, ErrorBody> {
        let key = parent.to_string();
        for _ in 0..SETTLE_TRIES {
            let (value, revision) = kv::last_entry(&self.flows, &key)
                .await
                .map_err(|e| nats_error("read a flow", e))?;
            let mut outcomes: Vec<Outcome> = value
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            if outcomes.iter().any(|o| o.receipt == outcome.receipt) {
                return Ok(outcomes);
            }
            outcomes.push(outcome.clone());
            let bytes = serde_json::to_vec(&outcomes).expect("outcomes encode");
            match self.flows.update(&key, bytes.into(), revision).await {
                Ok(_) => return Ok(outcomes),
                // Another child's end came first: read again.
                Err(e) if kv::revision_moved(&e) => continue,
                // The stream's leader cannot check revisions yet (just elected).
                Err(e) if kv::revision_not_checked(&e) || kv::reached_no_stream(&e) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(nats_error("record a child's end on its flow", e)),
            }
        }
        Err(nats_error(
            "record a child's end on its flow",
            "too many concurrent updates",
        ))
    }

    /// Sends a waiting parent's job to its lane (or as a scheduled message,
    /// if it is due later), deletes its waiting message and indexes it.
    async fn release(
        &self,
        parent: Uuid,
        waiting: &jetstream::message::StreamMessage,
    ) -> Result<(), ErrorBody> {
        let Some(target) = waiting.headers.get(TARGET).map(|t| t.as_str().to_owned()) else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        for (name, values) in waiting.headers.iter() {
            // Not its batch's headers (`Nats-Batch-*`), nor where it waited.
            let name_text = name.to_string();
            if name_text == TARGET || name_text.starts_with("Nats-") {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
        // Two engines releasing it (a child run again after a crash) make one job.
        headers.insert("Nats-Msg-Id", format!("release.{parent}").as_str());
        let due = headers
            .get(super::job::DUE_AT)
            .and_then(|d| d.as_str().parse::<u64>().ok())
            .filter(|at| *at > crate::queue::now_ms());
        let (subject, delayed) = match due {
            Some(at) => {
                super::job::schedule(&mut headers, at, &target);
                let key = JobKey::parse(&target, &self.names).map(|(k, _)| k.queue);
                let queue = key.unwrap_or_default();
                (
                    JobKey::delayed_subject(&queue, parent, &self.names),
                    Some(target),
                )
            }
            None => (target, None),
        };
        let ack = self
            .js
            .publish_with_headers(subject, headers, waiting.payload.clone())
            .await
            .map_err(|e| nats_error("release a flow parent", e))?
            .await
            .map_err(|e| nats_error("release a flow parent", e))?;
        if let Err(e) = self.jobs.delete_message(waiting.sequence).await {
            tracing::debug!(%parent, error = %e, "a released parent's waiting message was gone");
        }
        let place = match delayed {
            Some(target) => Place::Delayed {
                seq: ack.sequence,
                target,
            },
            None => Place::Jobs { seq: ack.sequence },
        };
        self.index_anyway(parent, place)
            .await
            .map_err(|e| nats_error("index a released flow parent", e))?;
        tracing::debug!(%parent, "a flow parent's children all ended: released");
        Ok(())
    }

    /// Dead-letters a waiting parent one of whose children failed
    /// (`child_failed`), deletes its waiting message, and tells its own
    /// parent.
    async fn fail_parent(
        &self,
        parent: Uuid,
        waiting: &jetstream::message::StreamMessage,
        child: &Outcome,
    ) -> Result<(), ErrorBody> {
        let target = waiting.headers.get(TARGET).map(|t| t.as_str().to_owned());
        let Some((key, _)) = target
            .as_deref()
            .and_then(|t| JobKey::parse(t, &self.names))
        else {
            return Ok(());
        };
        let why = child
            .error
            .as_ref()
            .and_then(|e| e["message"].as_str())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let error = ErrorBody::new(
            "child_failed",
            format!(
                "child {} ({}) ended {}{why}",
                child.receipt, child.function_id, child.state
            ),
        );
        let history = [Attempt {
            attempt: 0,
            engine: self.names.engine_id.clone(),
            ended_at_ms: crate::queue::now_ms(),
            error: error.clone(),
        }];
        // Its own parent first: told again if what follows fails (once
        // recorded), never missed once it is dead-lettered.
        let ended = Ended::Dead(Some(error.clone()));
        self.child_ended(Some(&waiting.headers), &key, parent, ended)
            .await?;
        let letter = super::dead::Letter {
            headers: Some(&waiting.headers),
            subject: &waiting.subject,
            payload: &waiting.payload,
            history: &history,
            last: Some(error.clone()),
        };
        self.store_letter(&key, parent, letter)
            .await
            .map_err(|e| nats_error("dead-letter a flow parent", e))?;
        if let Err(e) = self.jobs.delete_message(waiting.sequence).await {
            tracing::debug!(%parent, error = %e, "a failed parent's waiting message was gone");
        }
        tracing::info!(%parent, queue = %key.queue, "flow parent dead-lettered: a child failed");
        Ok(())
    }

    /// The flow children on `queue`'s subjects, with their parents: what a
    /// purge of the queue must tell those parents. Found through the waiting
    /// parents (every one's children, looked up by receipt).
    pub(super) async fn children_in(&self, queue: &str) -> Result<Vec<(Uuid, Outcome)>, ErrorBody> {
        let read = |e| nats_error("list the waiting flow parents", e);
        let prefix = format!("qmesh.{}.waiting.", self.names.cluster);
        let mut subjects = self
            .jobs
            .clone()
            .info_with_subjects(format!("{prefix}*.*"))
            .await
            .map_err(read)?;
        let mut parents = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, _) = entry.map_err(read)?;
            if let Some(r) = subject
                .rsplit('.')
                .next()
                .and_then(|r| Uuid::parse_str(r).ok())
            {
                parents.push(r);
            }
        }
        let mut found = Vec::new();
        for parent in parents {
            let Some(Place::Waiting { seq }) = self.locate(parent).await? else {
                continue;
            };
            let Some(waiting) = self.job_message(seq).await? else {
                continue;
            };
            for child in child_receipts(&waiting.headers) {
                let key = match self.find_job(child).await? {
                    Some(super::views::Found::Job { key, .. })
                    | Some(super::views::Found::Delayed { key, .. })
                    | Some(super::views::Found::Waiting { key, .. }) => key,
                    None => continue,
                };
                if key.queue == queue {
                    found.push((parent, cancelled(child, &key)));
                }
            }
        }
        Ok(found)
    }

    /// Tells each parent that its purged child ended cancelled (as on one
    /// engine: under `fail_parent`, that fails it).
    pub(super) async fn children_purged(
        &self,
        purged: Vec<(Uuid, Outcome)>,
    ) -> Result<(), ErrorBody> {
        for (parent, outcome) in purged {
            self.settle(parent, outcome).await?;
        }
        Ok(())
    }

    /// The key and lane a waiting parent goes to once released.
    pub(super) fn waiting_key(
        &self,
        m: &jetstream::message::StreamMessage,
    ) -> Option<(JobKey, Lane)> {
        JobKey::parse(m.headers.get(TARGET)?.as_str(), &self.names)
    }

    /// The key of the job a message on the job stream stands for: on its
    /// lane's subject, a delayed job's scheduled message, or a waiting
    /// parent.
    pub(super) fn key_of(&self, m: &jetstream::message::StreamMessage) -> Option<JobKey> {
        let to = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        [
            Some(m.subject.to_string()),
            to(super::job::NATS_SCHEDULE_TARGET),
            to(TARGET),
        ]
        .into_iter()
        .flatten()
        .find_map(|s| JobKey::parse(&s, &self.names))
        .map(|(key, _)| key)
    }

    /// `queue::get`'s `flow` of a job whose message has `headers`: its root
    /// and parent, its policy, how many children it still waits for, its
    /// children's subtree and how the ended ones ended (`null` for a job
    /// outside any flow).
    pub(super) async fn flow_view(&self, receipt: Uuid, headers: &HeaderMap) -> Value {
        let parent = headers
            .get(PARENT)
            .and_then(|p| Uuid::parse_str(p.as_str()).ok());
        let children: Option<usize> = headers.get(CHILDREN).and_then(|c| c.as_str().parse().ok());
        if parent.is_none() && children.is_none() {
            return Value::Null;
        }
        let mut root = receipt;
        let mut up = parent;
        for _ in 0..crate::queue::flows::MAX_FLOW_DEPTH {
            let Some(p) = up else { break };
            root = p;
            up = match self.locate(p).await {
                Ok(Some(Place::Waiting { seq } | Place::Jobs { seq })) => self
                    .job_message(seq)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|m| m.headers.get(PARENT).map(|v| v.as_str().to_owned()))
                    .and_then(|p| Uuid::parse_str(&p).ok()),
                _ => None,
            };
        }
        let outcomes = match children {
            Some(_) => self.outcomes_of(receipt).await,
            None => Vec::new(),
        };
        let policy = match headers.get(ON_CHILD_FAILURE) {
            Some(v) if v.as_str() == "ignore" => "ignore",
            _ => "fail_parent",
        };
        let mut budget = crate::queue::flows::MAX_FLOW_JOBS;
        let subtree = self.subtree(headers, &outcomes, &mut budget).await;
        json!({
            "root": root,
            "parent": parent,
            "on_child_failure": policy,
            "waiting_on": children.map(|n| n.saturating_sub(outcomes.len())).unwrap_or(0),
            "children": subtree,
            "outcomes": outcomes,
        })
    }

    /// The children of the parent whose message has `headers`, each with
    /// its state and its own children, at most `budget` jobs in all: a
    /// child still on the stream as it is there, an ended one as its
    /// parent recorded it (`outcomes`), else dead if dead-lettered, else
    /// `null` (gone, how is not kept).
    fn subtree<'a>(
        &'a self,
        headers: &'a HeaderMap,
        outcomes: &'a [Value],
        budget: &'a mut usize,
    ) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for child in child_receipts(headers) {
                if *budget == 0 {
                    break;
                }
                *budget -= 1;
                let ended = outcomes.iter().find(|o| o["receipt"] == json!(child));
                let (found, below) = match self.find_job(child).await.ok().flatten() {
                    Some(super::views::Found::Job { key, delivered, .. }) => {
                        let state = match (delivered, self.has_worker(&key)) {
                            (true, _) => "running",
                            (false, true) => "ready",
                            (false, false) => "waiting_for_worker",
                        };
                        ((Some(key), json!(state)), Vec::new())
                    }
                    Some(super::views::Found::Delayed { key, .. }) => {
                        ((Some(key), json!("delayed")), Vec::new())
                    }
                    Some(super::views::Found::Waiting { m, key, .. }) => {
                        let theirs = self.outcomes_of(child).await;
                        let below = self.subtree(&m.headers, &theirs, budget).await;
                        ((Some(key), json!("waiting_for_children")), below)
                    }
                    None => match (ended, self.locate(child).await.ok().flatten()) {
                        (Some(o), _) => ((None, o["state"].clone()), Vec::new()),
                        (None, Some(Place::Dead { .. })) => ((None, json!("dead")), Vec::new()),
                        _ => ((None, Value::Null), Vec::new()),
                    },
                };
                let (key, state) = found;
                let (queue, function_id) = match (&key, ended) {
                    (Some(k), _) => (json!(k.queue), json!(k.function_id)),
                    (None, Some(o)) => (o["queue"].clone(), o["function_id"].clone()),
                    (None, None) => (Value::Null, Value::Null),
                };
                out.push(json!({
                    "receipt": child,
                    "queue": queue,
                    "function_id": function_id,
                    "state": state,
                    "children": below,
                }));
            }
            out
        })
    }

    /// Adds a flow job's part of its handler's `metadata.job`: `parent`
    /// for a child, `children` (how each ended) for a parent.
    pub(super) async fn flow_context(
        &self,
        job: &mut Value,
        receipt: Uuid,
        headers: Option<&HeaderMap>,
    ) {
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        if let Some(parent) = header(PARENT) {
            job["parent"] = json!(parent);
        }
        if header(CHILDREN).is_some() {
            job["children"] = json!(self.outcomes_of(receipt).await);
        }
    }

    /// A parent's children's outcomes so far, for its handler and its view.
    pub(super) async fn outcomes_of(&self, parent: Uuid) -> Vec<Value> {
        match kv::last_entry(&self.flows, &parent.to_string()).await {
            Ok((Some(v), _)) => serde_json::from_slice(&v).unwrap_or_default(),
            Ok((None, _)) => Vec::new(),
            Err(e) => {
                tracing::warn!(%parent, error = %e, "cannot read a flow's outcomes");
                Vec::new()
            }
        }
    }
}

/// A child's end when it was removed unfinished (cancelled or purged).
fn cancelled(child: Uuid, key: &JobKey) -> Outcome {
    Outcome {
        receipt: child,
        queue: key.queue.clone(),
        function_id: key.function_id.clone(),
        state: "cancelled".to_owned(),
        result: None,
        error: None,
    }
}

/// The receipts a parent's message names as its children.
fn child_receipts(headers: &HeaderMap) -> Vec<Uuid> {
    headers
        .get(CHILD_RECEIPTS)
        .map(|v| {
            v.as_str()
                .split(',')
                .filter_map(|r| Uuid::parse_str(r).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The last sequence of a committed batch, from its PubAck.
fn batch_ack(payload: &[u8]) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Ack {
        seq: Option<u64>,
        count: Option<u64>,
        error: Option<Value>,
    }
    let ack: Ack =
        serde_json::from_slice(payload).map_err(|e| format!("unreadable PubAck: {e}"))?;
    match (ack.error, ack.seq, ack.count) {
        (Some(e), _, _) => Err(format!("JetStream refused the batch: {e}")),
        (None, Some(seq), Some(_)) => Ok(seq),
        _ => Err("a PubAck without the batch's sequence".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_ack_gives_the_last_sequence_or_the_refusal() {
        let ok = br#"{"stream":"s","seq":9,"batch":"b","count":3}"#;
        assert_eq!(batch_ack(ok), Ok(9));
        let refused = br#"{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"}}"#;
        assert!(
            batch_ack(refused)
                .unwrap_err()
                .contains("atomic publish is disabled")
        );
        assert!(batch_ack(b"not json").is_err());
    }
}
