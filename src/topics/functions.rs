//! `iii::durable::publish` and `engine::topics::list`.

use futures_util::future::{BoxFuture, ready};
use serde::Deserialize;
use serde_json::Value;

use super::{TRIGGER_TYPE, Topics, subscriptions::Sub};
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes, names, to_payload};
use crate::queue::EnqueueRequest;

const PUBLISH: &str = "iii::durable::publish";

#[derive(Deserialize)]
struct PublishInput {
    #[serde(default)]
    topic: Option<String>,
    /// iii's standalone queue worker names it `queue`.
    #[serde(default)]
    queue: Option<String>,
    data: Value,
}

/// `iii::durable::publish {topic, data}`: one job per subscription of the
/// topic (after its condition function, if any), written in one batch;
/// answers null once all of them are on disk. No subscription: nothing is
/// written (logged), still null, as in iii (which stores it where nobody
/// ever reads it).
pub(super) fn publish(t: Topics, mesh: Mesh, _: CallCtx, v: Value) -> BoxFuture<'static, Reply> {
    let has_data = v.get("data").is_some();
    let inp: PublishInput = match serde_json::from_value(v) {
        Ok(i) if has_data => i,
        Ok(_) => return refuse(deserialization("missing field `data`")),
        Err(e) => return refuse(deserialization(&e.to_string())),
    };
    let topic = inp
        .topic
        .filter(|t| !t.is_empty())
        .or(inp.queue)
        .unwrap_or_default();
    if topic.is_empty() {
        return refuse(ErrorBody::new(codes::TOPIC_NOT_SET, "Topic is not set"));
    }
    if let Err(m) = names::check("topic", &topic) {
        return refuse(ErrorBody::new(codes::INVALID_ARGUMENTS, m));
    }
    let subs = t.subs.of_topic(&topic);
    Box::pin(async move {
        if subs.is_empty() {
            tracing::debug!(topic = %topic, "durable publish: no subscriber; nothing written");
            return Ok(Value::Null);
        }
        let payload = to_payload(&inp.data);
        let mut jobs = Vec::with_capacity(subs.len());
        for (
            (_, namespace, function_id),
            Sub {
                queue, condition, ..
            },
        ) in subs
        {
            let allowed = mesh
                .condition_allows(
                    TRIGGER_TYPE,
                    &namespace,
                    &function_id,
                    condition.as_deref(),
                    &payload,
                    t.condition_timeout,
                )
                .await;
            if allowed {
                jobs.push(EnqueueRequest {
                    queue,
                    namespace,
                    function_id,
                    payload: payload.clone(),
                    traceparent: None,
                    baggage: None,
                    run_at_ms: None,
                    priority: 0,
                    idempotency_key: None,
                    expires_at_ms: None,
                });
            }
        }
        if !jobs.is_empty() {
            t.subs.queues().enqueue_many(jobs).await?;
        }
        Ok(Value::Null)
    })
}

fn deserialization(why: &str) -> ErrorBody {
    ErrorBody::new(
        codes::DESERIALIZATION_ERROR,
        format!("Failed to deserialize input for {PUBLISH}: {why}"),
    )
}

fn refuse(e: ErrorBody) -> BoxFuture<'static, Reply> {
    Box::pin(ready(Err(e)))
}

/// `engine::topics::list {}`: every subscription, its queue and bindings.
pub(super) fn list(t: &Topics, _: &Mesh, _: &CallCtx, _: Value) -> Reply {
    Ok(t.subs.list())
}
