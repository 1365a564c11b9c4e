//! `queue::throttle {queue, for}` on JetStream queues: no job of the queue
//! starts, on any engine, until the throttle ends (a handler that met a 429
//! backs the whole queue off without spending attempts), as on one engine.
//!
//! The bucket `qmesh_<cluster>_throttles`: `<b64(queue)>` → `{"until_ms"}`,
//! the throttle's end (a later throttle only lengthens it, by
//! compare-and-set, as the local queue keeps the later of two ends). Then
//! every consumer of the queue, each lane's, is paused until that time
//! (JetStream's consumer `pause_until`, which the server lifts by itself at
//! its end): every engine's pulls get nothing meanwhile. A consumer made
//! later (a new lane's, a new function's) follows the entry as it follows
//! the pause flag (`index.rs`); a paused queue keeps its consumers paused
//! until resumed, and a resume within a throttle holds them to its end.
//! Jobs already delivered finish. The entry is only read for those and
//! for `queue::explain`; it expires a day past the longest throttle.

use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::index::nats_error;
use super::{Shared, b64};
use crate::cluster::kv;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};

/// How long a throttle's entry is kept: past the longest throttle
/// ([`crate::queue::MAX_HEARTBEAT_EXTEND`]), so none outlives its end long.
pub(super) const THROTTLES_KEPT: Duration =
    Duration::from_secs(crate::queue::MAX_HEARTBEAT_EXTEND.as_secs() + 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Throttle {
    until_ms: u64,
}

impl Shared {
    /// When the queue's throttle ends (ms since the epoch), if it has one
    /// not over yet.
    pub(super) async fn throttled_until(&self, queue: &str) -> Result<Option<u64>, ErrorBody> {
        let (value, _) = kv::last_entry(&self.throttles, &b64().encode(queue))
            .await
            .map_err(|e| nats_error("read the queue's throttle", e))?;
        let until = value
            .and_then(|b| serde_json::from_slice::<Throttle>(&b).ok())
            .map(|t| t.until_ms);
        Ok(until.filter(|u| *u > crate::queue::now_ms()))
    }

    /// Stores the queue's throttle end, keeping a later one already there;
    /// returns the end in force.
    async fn store_throttle(&self, queue: &str, until_ms: u64) -> Result<u64, ErrorBody> {
        let key = b64().encode(queue);
        let mut tries = 0;
        loop {
            let (value, revision) = kv::last_entry(&self.throttles, &key)
                .await
                .map_err(|e| nats_error("read the queue's throttle", e))?;
            let before = value
                .and_then(|b| serde_json::from_slice::<Throttle>(&b).ok())
                .map_or(0, |t| t.until_ms);
            let until_ms = until_ms.max(before);
            let bytes = serde_json::to_vec(&Throttle { until_ms }).expect("encodes");
            let e = match self.throttles.update(&key, bytes.into(), revision).await {
                Ok(_) => return Ok(until_ms),
                Err(e) => e,
            };
            tries += 1;
            if !(kv::revision_moved(&e) || kv::revision_not_checked(&e)) || tries == 20 {
                return Err(nats_error("store the queue's throttle", e));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Throttles a queue: its entry first, then every consumer of the
    /// queue paused until the end (unless the queue is paused: its resume
    /// applies the throttle).
    async fn throttle_queue(&self, queue: &str, pause: Duration) -> Result<Value, ErrorBody> {
        if self.config.settings(queue).is_none() {
            return Err(ErrorBody::new(
                codes::QUEUE_NOT_FOUND,
                format!("queue {queue:?} is not declared ([queue] strict is on)"),
            ));
        }
        let held_for = pause.min(crate::queue::MAX_HEARTBEAT_EXTEND);
        let until_ms = crate::queue::now_ms().saturating_add(held_for.as_millis() as u64);
        let until_ms = self.store_throttle(queue, until_ms).await?;
        if !self.is_paused(queue).await? {
            let names: Vec<String> = (self.job_consumers().await?.into_iter())
                .filter(|c| c.key.queue == queue)
                .map(|c| c.info.name)
                .collect();
            for name in &names {
                self.throttle_consumer(name, until_ms)
                    .await
                    .map_err(|e| nats_error("throttle the queue's consumers", e))?;
            }
            // A pause stored meanwhile may have paused a consumer before
            // the throttle above shortened it: pause it again.
            if self.is_paused(queue).await? {
                for name in &names {
                    self.pause_consumer(name, true)
                        .await
                        .map_err(|e| nats_error("pause the queue's consumers", e))?;
                }
            }
        }
        Ok(json!({ "queue": queue, "throttled_for_ms": pause.as_millis() as u64 }))
    }
}

/// `queue::throttle {queue, for}`: `{queue, throttled_for_ms}`, from any
/// engine, its input checked as the local queue checks it.
pub(super) fn throttle(
    shared: Arc<Shared>,
    _: Mesh,
    _: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let (queue, pause) = crate::queue::parse_throttle(input)?;
        shared.throttle_queue(&queue, pause).await
    })
}
