//! Flows: a parent job with children (any depth, any queues). Children run
//! first; the parent waits in `waiting_for_children` and becomes ready once
//! every child has finished, receiving how each ended. A child that
//! dead-letters (or is cancelled or purged) fails its parent under
//! `fail_parent` (the default) or is skipped under `ignore`.
//!
//! Invariants:
//! - a flow is written in one batch and acknowledged after one sync, or
//!   refused whole (every node is checked before anything is written);
//! - a child's end and its effect on its parent are in the same batch: a
//!   transition to a final state queues the parent's update, and
//!   [`Scheduler::settle_flows`] (run by `commit`, the one door to the
//!   store) applies it there;
//! - a parent settles each child once (`FlowLinks::waiting_on`), so a child
//!   that ends again after a redrive changes nothing.

use std::collections::{HashMap, VecDeque};
use uuid::Uuid;

use super::intake::Seen;
use super::now_ms;
use super::scheduler::{Scheduler, store_error};
use super::settings::Ordering;
use super::{EnqueueRequest, Enqueued};
use crate::protocol::{ErrorBody, codes};
use crate::store::queue::Writes;
use crate::store::records::{
    ChildFailure, ChildOutcome, ErrorRecord, FailReason, FlowLinks, JobRecord, JobState,
};

/// Most jobs in one flow, and its deepest nesting.
pub const MAX_FLOW_JOBS: usize = 1000;
pub const MAX_FLOW_DEPTH: usize = 32;

/// One job of a flow, with its children.
#[derive(Debug)]
pub struct FlowNode {
    pub req: EnqueueRequest,
    pub on_child_failure: ChildFailure,
    pub children: Vec<FlowNode>,
}

/// Called once with the flow's receipts (the tree's shape) or its refusal.
pub type FlowReply = Box<dyn FnOnce(Result<serde_json::Value, ErrorBody>) + Send>;

/// A node's place in the flow being written.
struct Planned {
    seq: u64,
    id: Uuid,
    flow: Option<FlowLinks>,
}

/// A flow node's pre-assigned identity, handed to [`Scheduler::write_job`].
pub(super) struct Plan {
    pub seq: u64,
    pub id: Uuid,
    pub flow: FlowLinks,
    /// Waits for children (instead of being ready, delayed or held).
    pub waits: bool,
}

impl Scheduler {
    /// Checks every node, then writes the whole flow in one batch and
    /// answers once it is durable.
    pub(super) fn enqueue_flow(&mut self, root: FlowNode, reply: FlowReply) {
        if let Err(e) = self.check_flow(&root) {
            return reply(Err(e));
        }
        let mut batch = Writes::default();
        let mut seen = Seen::default();
        let first_seq = self.seq.next();
        // Ids first (pre-order), so parents and children can name each other.
        let mut nodes: Vec<(&FlowNode, Planned)> = Vec::new();
        let mut stack: Vec<(&FlowNode, Option<Uuid>)> = vec![(&root, None)];
        let now = now_ms();
        while let Some((node, parent)) = stack.pop() {
            let seq = self.seq.take(&mut batch);
            let id = super::intake::job_id(now, seq, self.id_salt);
            let flow = Some(FlowLinks {
                parent,
                children: Vec::new(),
                waiting_on: Vec::new(),
                on_child_failure: node.on_child_failure,
                outcomes: Vec::new(),
            });
            if let Some(p) = parent
                && let Some((_, planned)) = nodes.iter_mut().find(|(_, pl)| pl.id == p)
                && let Some(f) = planned.flow.as_mut()
            {
                f.children.push(id);
                f.waiting_on.push(id);
            }
            nodes.push((node, Planned { seq, id, flow }));
            for child in node.children.iter().rev() {
                stack.push((child, Some(id)));
            }
        }
        let tree = receipts(&root, &mut nodes.iter().map(|(_, p)| p.id));
        let mut ids = Vec::with_capacity(nodes.len());
        let queues: Vec<String> = nodes.iter().map(|(n, _)| n.req.queue.clone()).collect();
        for (node, planned) in nodes {
            let plan = Plan {
                seq: planned.seq,
                id: planned.id,
                waits: !node.children.is_empty(),
                flow: planned.flow.expect("set above"),
            };
            match self.write_job(clone_request(&node.req), &mut batch, &mut seen, Some(plan)) {
                Ok(Enqueued { receipt, .. }) => ids.push(receipt),
                Err(e) => {
                    seen.uncount(self);
                    return reply(Err(e));
                }
            }
        }
        let ticket = match self.commit(batch) {
            Ok(t) => t,
            Err(e) => {
                seen.uncount(self);
                return reply(Err(store_error(e)));
            }
        };
        let metrics = self.metrics.clone();
        self.acknowledge(ticket, first_seq, move |durable| {
            if durable.is_ok() {
                super::intake::count_enqueued(&metrics, &queues);
            }
            reply(durable.map(|()| tree));
        });
    }

    /// Everything that could refuse a node, before anything is written.
    fn check_flow(&self, root: &FlowNode) -> Result<(), ErrorBody> {
        check_flow_with(root, |node| {
            let req = &node.req;
            let Some(settings) = self
                .queues
                .get(&req.queue)
                .map(|q| q.settings.clone())
                .or_else(|| self.config.settings(&req.queue))
            else {
                return Err(ErrorBody::new(
                    codes::QUEUE_NOT_FOUND,
                    format!(
                        "queue {:?} is not declared and the engine runs in strict mode",
                        req.queue
                    ),
                ));
            };
            check_parent_queue(&req.queue, !node.children.is_empty(), &settings)?;
            self.admit(req).map(|_| ())
        })
    }

    /// A job reached a final state (`Completed`, `Dead`, `Cancelled`) or was
    /// deleted unfinished: if it belongs to a flow, its parent hears of it in
    /// this same batch.
    pub(super) fn child_finished(&mut self, id: &Uuid, job: &JobRecord, state: JobState) {
        let Some(parent) = job.flow.as_ref().and_then(|f| f.parent) else {
            return;
        };
        self.flow_settles.push_back((
            parent,
            ChildOutcome {
                child: *id,
                queue: job.queue.clone(),
                function_id: job.function_id.clone(),
                state,
                result: job.result.clone(),
                error: job.last_error.clone(),
            },
        ));
    }

    /// Applies the queued child outcomes to their parents into `batch`: a
    /// parent whose last child finished becomes ready (or delayed); one whose
    /// child failed under `fail_parent` is dead-lettered, which its own
    /// parent hears of in turn.
    pub(super) fn settle_flows(&mut self, batch: &mut Writes) {
        let mut parents: HashMap<Uuid, JobRecord> = HashMap::new();
        while let Some((pid, outcome)) = self.flow_settles.pop_front() {
            let parent = match parents.remove(&pid) {
                Some(p) => Some(p),
                None => self.load_job(&pid).unwrap_or_else(|e| {
                    tracing::error!(job = %pid, error = %e, "cannot read a flow's parent");
                    None
                }),
            };
            let Some(mut parent) = parent else { continue };
            let settled = parent.state == JobState::Waiting
                && parent.flow.as_mut().is_some_and(|f| {
                    let before = f.waiting_on.len();
                    f.waiting_on.retain(|c| *c != outcome.child);
                    f.waiting_on.len() < before
                });
            if settled {
                self.settle_one(&pid, &mut parent, outcome, batch);
            }
            parents.insert(pid, parent);
        }
    }

    fn settle_one(
        &mut self,
        pid: &Uuid,
        parent: &mut JobRecord,
        outcome: ChildOutcome,
        batch: &mut Writes,
    ) {
        let flow = parent
            .flow
            .as_mut()
            .expect("a waiting parent has flow links");
        let failed = outcome.state != JobState::Completed;
        let fails_parent = failed && flow.on_child_failure == ChildFailure::FailParent;
        let message = format!(
            "child {} ({}) ended {}{}",
            outcome.child,
            outcome.function_id,
            outcome.state.as_str(),
            outcome
                .error
                .as_ref()
                .map(|e| format!(": {}", e.message))
                .unwrap_or_default()
        );
        flow.outcomes.push(outcome);
        let done = flow.waiting_on.is_empty();
        if fails_parent {
            parent.last_error = Some(ErrorRecord {
                reason: FailReason::ChildFailed,
                code: FailReason::ChildFailed.as_str().to_owned(),
                message,
                stacktrace: None,
            });
            parent.dead_seq = self.seq.take(batch);
            parent.finished_ms = now_ms();
            tracing::info!(job = %pid, queue = %parent.queue, "flow parent dead-lettered: a child failed");
            self.transition(pid, parent, JobState::Dead, batch);
        } else if done {
            let to = if parent.due_ms > now_ms() {
                JobState::Delayed
            } else {
                JobState::Ready
            };
            self.transition(pid, parent, to, batch);
        } else {
            batch.put_job(pid, parent);
        }
    }
}

/// What refuses a flow on any queue backend: its size, its depth, and an
/// idempotency key on a node; then `node_ok` for what a node's queue says.
pub(crate) fn check_flow_with(
    root: &FlowNode,
    mut node_ok: impl FnMut(&FlowNode) -> Result<(), ErrorBody>,
) -> Result<(), ErrorBody> {
    let invalid = |m: String| ErrorBody::new(codes::INVALID_ARGUMENTS, m);
    let mut count = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((node, depth)) = stack.pop() {
        count += 1;
        if count > MAX_FLOW_JOBS {
            return Err(invalid(format!(
                "a flow holds at most {MAX_FLOW_JOBS} jobs"
            )));
        }
        if depth > MAX_FLOW_DEPTH {
            return Err(invalid(format!(
                "a flow nests at most {MAX_FLOW_DEPTH} levels"
            )));
        }
        if node.req.idempotency_key.is_some() {
            return Err(invalid("jobs of a flow take no idempotency_key".into()));
        }
        node_ok(node)?;
        stack.extend(node.children.iter().map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// A parent (a job with children) cannot wait in a FIFO group.
pub(crate) fn check_parent_queue(
    queue: &str,
    is_parent: bool,
    settings: &super::settings::QueueSettings,
) -> Result<(), ErrorBody> {
    if is_parent && settings.ordering == Ordering::Fifo {
        return Err(ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            format!(
                "queue {queue:?} is fifo: a flow's parent (a job with children) cannot wait in a FIFO group"
            ),
        ));
    }
    Ok(())
}

/// The receipts of a flow in its shape: `{receipt, children: [...]}`, ids
/// taken in pre-order.
pub(crate) fn receipts(node: &FlowNode, ids: &mut impl Iterator<Item = Uuid>) -> serde_json::Value {
    let id = ids.next().expect("one id per node");
    let children: Vec<serde_json::Value> = node.children.iter().map(|c| receipts(c, ids)).collect();
    serde_json::json!({ "receipt": id, "queue": node.req.queue, "function_id": node.req.function_id, "children": children })
}

fn clone_request(r: &EnqueueRequest) -> EnqueueRequest {
    EnqueueRequest {
        queue: r.queue.clone(),
        namespace: r.namespace.clone(),
        function_id: r.function_id.clone(),
        payload: r.payload.clone(),
        traceparent: r.traceparent.clone(),
        baggage: r.baggage.clone(),
        run_at_ms: r.run_at_ms,
        priority: r.priority,
        idempotency_key: r.idempotency_key.clone(),
        expires_at_ms: r.expires_at_ms,
    }
}

/// The outcomes queued for parents, settled at the next commit.
pub(super) type FlowSettles = VecDeque<(Uuid, ChildOutcome)>;

impl Scheduler {
    /// `queue::get`'s `flow`: the job's root and parent, what it waits on,
    /// and its children's subtree with each job's state (at most
    /// [`MAX_FLOW_JOBS`] nodes); `null` outside flows.
    pub(super) fn flow_view(&self, id: &Uuid, job: &JobRecord) -> serde_json::Value {
        let Some(flow) = &job.flow else {
            return serde_json::Value::Null;
        };
        let mut root = *id;
        let mut up = flow.parent;
        for _ in 0..MAX_FLOW_DEPTH {
            let Some(p) = up else { break };
            root = p;
            up = self
                .load_job(&p)
                .ok()
                .flatten()
                .and_then(|j| j.flow.and_then(|f| f.parent));
        }
        let mut budget = MAX_FLOW_JOBS;
        serde_json::json!({
            "root": root,
            "parent": flow.parent,
            "on_child_failure": policy_name(flow.on_child_failure),
            "waiting_on": flow.waiting_on.len(),
            "children": self.subtree(flow, &mut budget),
            "outcomes": outcomes_view(&flow.outcomes),
        })
    }

    fn subtree(&self, flow: &FlowLinks, budget: &mut usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for child in &flow.children {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            let Ok(Some(j)) = self.load_job(child) else {
                out.push(serde_json::json!({ "receipt": child, "state": "pruned" }));
                continue;
            };
            let children = j
                .flow
                .as_ref()
                .map(|f| self.subtree(f, budget))
                .unwrap_or_default();
            out.push(serde_json::json!({
                "receipt": child,
                "queue": j.queue,
                "function_id": j.function_id,
                "state": self.shown(&j).as_str(),
                "children": children,
            }));
        }
        out
    }
}

fn policy_name(p: ChildFailure) -> &'static str {
    match p {
        ChildFailure::FailParent => "fail_parent",
        ChildFailure::Ignore => "ignore",
    }
}

/// How a parent's finished children ended, as its handler receives them
/// (`metadata.job.children`) and `queue::get` shows them.
pub(super) fn outcomes_view(outcomes: &[ChildOutcome]) -> Vec<serde_json::Value> {
    let raw = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap_or_default();
    outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "receipt": o.child,
                "queue": o.queue,
                "function_id": o.function_id,
                "state": o.state.as_str(),
                "result": o.result.as_deref().map(raw),
                "error": o.error.as_ref().map(|e| serde_json::json!({"code": e.code, "message": e.message})),
            })
        })
        .collect()
}
