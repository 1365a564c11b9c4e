//! The dead letters of the cluster's JetStream queues as iii's functions
//! show them: `engine::queue::dlq_topics` and `engine::queue::dlq_messages`
//! (the dead-letter stream is written by `dead.rs`).

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use super::Shared;
use super::dead::dead_subject;
use super::views::letter_view;
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};
use async_nats::jetstream;

/// Most dead letters one `engine::queue::dlq_messages` reads.
const MAX_READ: usize = 10_000;

#[derive(Default, Deserialize)]
#[serde(default)]
struct DeadArgs {
    queue: Option<String>,
    topic: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn queue_error(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        codes::QUEUE_ERROR,
        format!("cannot read the cluster's dead letters: {e}"),
    )
}

/// iii: `[{topic, broker_type, message_count}]` for queues with dead letters.
pub(super) fn dlq_topics(
    shared: Arc<Shared>,
    _: Mesh,
    _: CallCtx,
    _: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        // Sorted by queue, so the dashboard's tabs keep their order.
        let mut counts: Vec<(String, u64)> = shared.dead_counts().await?.into_iter().collect();
        counts.sort();
        Ok(Value::Array(
            counts
                .into_iter()
                .map(|(queue, count)| {
                    json!({"topic": queue, "broker_type": "qmesh-jetstream", "message_count": count})
                })
                .collect(),
        ))
    })
}

/// iii: `[{id, payload, error, failed_at, retries, size_bytes}]`, newest
/// first; qmesh adds `last_error` and the history in `queue::get`'s shape
/// (each attempt's engine too).
pub(super) fn dlq_messages(
    shared: Arc<Shared>,
    _: Mesh,
    _: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let a: DeadArgs = args(input)?;
        let queue = a
            .queue
            .or(a.topic)
            .filter(|q| !q.is_empty())
            .ok_or_else(|| ErrorBody::new(codes::INVALID_ARGUMENTS, "missing queue"))?;
        let (offset, limit) = (a.offset.unwrap_or(0), a.limit.unwrap_or(50));
        let subject = dead_subject(&shared, &queue);
        let mut letters = Vec::new();
        let mut next = 1;
        while letters.len() < MAX_READ {
            match shared
                .dead
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => {
                    next = m.sequence + 1;
                    if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                        letters.push(letter_view(v));
                    }
                }
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                    break;
                }
                Err(e) => return Err(queue_error(e)),
            }
        }
        letters.reverse();
        Ok(Value::Array(
            letters.into_iter().skip(offset).take(limit).collect(),
        ))
    })
}
