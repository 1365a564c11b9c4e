//! Enqueues to the cluster's job stream: the receipt goes out only after
//! JetStream's PubAck, i.e. once the job is stored on the stream's replicas
//! (fsync'ed first on a server with `sync_interval: always`).

use async_nats::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sha2::Digest;
use std::sync::Arc;
use uuid::Uuid;

use super::{JobKey, Lane, Shared, ack_wait, not_supported};
use crate::mesh::session::answer;
use crate::mesh::{CallCtx, Connection, Mesh, Reply};
use crate::protocol::{Action, ErrorBody, Invoke, Payload, codes};
use crate::queue::Enqueued;
use crate::queue::settings::{Ordering, QueueSettings};
use async_nats::jetstream::consumer::{AckPolicy, pull};

/// The headers a job message carries besides its payload.
pub(super) const RECEIPT: &str = "Qmesh-Receipt";
pub(super) const TRACEPARENT: &str = "traceparent";
pub(super) const BAGGAGE: &str = "baggage";

/// A job to put on the stream.
pub(super) struct Job {
    pub key: JobKey,
    pub payload: Payload,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub idempotency_key: Option<String>,
    /// When it may first run (ms since the epoch); `None` = now.
    pub run_at_ms: Option<u64>,
    /// 0–255, higher first (by band: see [`Lane::Band`]).
    pub priority: u8,
}

/// The headers of a scheduled message (NATS ADR-51): when, and where to.
const NATS_SCHEDULE: &str = "Nats-Schedule";
const NATS_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";

/// A schedule's time for `Nats-Schedule`: `@at` and RFC 3339 in UTC with
/// milliseconds (the server parses the fraction and fires within a few ms).
fn schedule_at(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    format!("@at {}", humantime::format_rfc3339_millis(at))
}

/// Why an enqueue got no receipt from the stream.
#[derive(Debug, thiserror::Error)]
enum PublishRefused {
    #[error(
        "the cluster's job stream did not acknowledge this enqueue ({0}); it may not be \
         replicated, so no receipt is given: retry (with an idempotency key, a retry cannot \
         make a duplicate)"
    )]
    NotAcknowledged(String),
    #[error("cannot create the consumer of queue {queue:?} for {function_id}: {message}")]
    Consumer {
        queue: String,
        function_id: String,
        message: String,
    },
}

impl From<PublishRefused> for ErrorBody {
    fn from(e: PublishRefused) -> Self {
        ErrorBody::new(codes::ENQUEUE_ERROR, e.to_string())
    }
}

/// A job's receipt: random, or derived from its idempotency key so that a
/// duplicate the stream drops answers with the first one's receipt.
fn receipt(queue: &str, idempotency_key: Option<&str>) -> Uuid {
    match idempotency_key {
        None => Uuid::new_v4(),
        Some(key) => {
            let digest = sha2::Sha256::digest(format!("{queue}\0{key}").as_bytes());
            let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
            uuid::Builder::from_custom_bytes(bytes).into_uuid()
        }
    }
}

impl Shared {
    /// Stores the job on the stream; resolves once JetStream acknowledged it.
    pub(super) async fn enqueue(&self, job: Job) -> Result<Enqueued, ErrorBody> {
        let settings = self.settings(&job.key.queue)?;
        let size = job.payload.get().len();
        if size > settings.max_payload_bytes {
            return Err(ErrorBody::new(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "payload of {size} bytes is over queue {:?}'s max_payload_bytes ({})",
                    job.key.queue, settings.max_payload_bytes
                ),
            ));
        }
        let lane = lane(&job, &settings)?;
        self.ensure_consumer(&job.key, lane, &settings).await?;
        let receipt = receipt(&job.key.queue, job.idempotency_key.as_deref());
        let mut headers = HeaderMap::new();
        headers.insert(RECEIPT, receipt.to_string().as_str());
        if job.idempotency_key.is_some() {
            headers.insert("Nats-Msg-Id", receipt.to_string().as_str());
        }
        if let Some(t) = &job.traceparent {
            headers.insert(TRACEPARENT, t.as_str());
        }
        if let Some(b) = &job.baggage {
            headers.insert(BAGGAGE, b.as_str());
        }
        let target = job.key.subject(&self.names, lane);
        let subject = match job.run_at_ms.filter(|at| *at > crate::queue::now_ms()) {
            None => target,
            Some(at) => {
                // A delayed job is a scheduled message: the stream itself
                // publishes it on its job subject at `at` (with these headers,
                // minus the schedule's), then deletes it. Stored on the
                // stream's replicas before the PubAck, like any job.
                if !self.schedules {
                    return Err(not_supported(
                        "delay and run_at need the job stream to take scheduled messages \
                         (nats-server 2.12 or later)",
                    ));
                }
                headers.insert(NATS_SCHEDULE, schedule_at(at).as_str());
                headers.insert(NATS_SCHEDULE_TARGET, target.as_str());
                format!("qmesh.{}.delayed.{receipt}", self.names.cluster)
            }
        };
        let body = bytes::Bytes::copy_from_slice(job.payload.get().as_bytes());
        let ack = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| PublishRefused::NotAcknowledged(e.to_string()))?
            .await
            .map_err(|e| PublishRefused::NotAcknowledged(e.to_string()))?;
        Ok(Enqueued {
            receipt,
            duplicate: ack.duplicate,
        })
    }

    /// Creates the consumer of the job's (queue, namespace, function) and
    /// lane the first time this engine enqueues to it (an existing one is
    /// kept as it is: every engine should have the same `[queue]`
    /// settings), and tells the other engines to list consumers again.
    async fn ensure_consumer(
        &self,
        key: &JobKey,
        lane: Lane,
        settings: &QueueSettings,
    ) -> Result<(), PublishRefused> {
        let wanted = (key.clone(), lane);
        if self
            .consumers
            .lock()
            .expect("not poisoned")
            .contains(&wanted)
        {
            return Ok(());
        }
        let name = key.consumer(lane);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: key.subject(&self.names, lane),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ack_wait(settings),
            // Attempts are counted by the engines (a job past its last
            // attempt is dead-lettered with its history), not by the server,
            // which would leave it unseen in the stream.
            max_deliver: -1,
            // A FIFO lane: one job at a time, the next only once it is
            // acknowledged (a nak'ed retry still holds it).
            max_ack_pending: match lane {
                Lane::Fifo(_) => 1,
                Lane::Band(_) => settings.concurrency.max(1) as i64,
            },
            ..Default::default()
        };
        self.jobs
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| PublishRefused::Consumer {
                queue: key.queue.clone(),
                function_id: key.function_id.clone(),
                message: e.to_string(),
            })?;
        self.consumers.lock().expect("not poisoned").insert(wanted);
        // Best effort: the others list consumers every second anyway.
        let _ = self
            .js
            .client()
            .publish(self.consumers_changed(), bytes::Bytes::new())
            .await;
        Ok(())
    }
}

/// The lane a job goes to: its FIFO group's on a FIFO queue, else its
/// priority's band.
fn lane(job: &Job, settings: &QueueSettings) -> Result<Lane, ErrorBody> {
    if settings.ordering == Ordering::Standard {
        return Ok(Lane::band(job.priority));
    }
    // A group's order is its lane's order: a job published later (at its
    // time) or ahead of others (a higher band) would break it.
    let refused = if job.priority != 0 {
        Some("priority")
    } else if job.run_at_ms.is_some() {
        Some("delay and run_at")
    } else {
        None
    };
    if let Some(what) = refused {
        return Err(not_supported(format!(
            "{what} on a fifo queue ({:?}): not supported by the cluster's JetStream queues",
            job.key.queue
        )));
    }
    let group = crate::queue::fifo_group(settings, &job.key.queue, &job.payload)?;
    Ok(Lane::fifo(&group, settings.concurrency))
}

/// `queue::enqueue {queue, function_id, data, namespace?, idempotency_key?,
/// delay?, run_at?, priority?}` (`expires_*` is refused: not yet supported
/// on JetStream queues).
pub(super) fn enqueue(
    shared: Arc<Shared>,
    _: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let req = crate::queue::parse_enqueue(input)?;
        if req.expires_at_ms.is_some() {
            return Err(not_supported(
                "expires_in and expires_at: not supported yet by the cluster's JetStream queues",
            ));
        }
        let job = Job {
            key: JobKey {
                queue: req.queue,
                namespace: req.namespace,
                function_id: req.function_id,
            },
            payload: req.payload,
            traceparent: ctx.traceparent,
            baggage: ctx.baggage,
            idempotency_key: req.idempotency_key,
            run_at_ms: req.run_at_ms,
            priority: req.priority,
        };
        let e = shared.enqueue(job).await?;
        Ok(json!({ "messageReceiptId": e.receipt, "receipt": e.receipt, "duplicate": e.duplicate }))
    })
}

/// `action: enqueue`: answered `{messageReceiptId}` once the stream has the job.
pub(super) fn take_enqueue(shared: &Arc<Shared>, conn: &Arc<Connection>, invoke: Invoke) {
    let Action::Enqueue { queue } = invoke.action.clone() else {
        return;
    };
    if let Err(why) =
        crate::queue::check_names(&queue, &invoke.function_id, invoke.namespace.as_deref())
    {
        let err = ErrorBody::new(codes::ENQUEUE_ERROR, why);
        return answer(conn, invoke.invocation_id, &invoke.function_id, Err(err));
    }
    let job = Job {
        key: JobKey {
            queue,
            namespace: invoke
                .namespace
                .clone()
                .unwrap_or_else(|| crate::protocol::DEFAULT_NAMESPACE.to_owned()),
            function_id: invoke.function_id.clone(),
        },
        payload: invoke.data.unwrap_or_else(crate::protocol::null_payload),
        traceparent: invoke.traceparent,
        baggage: invoke.baggage,
        idempotency_key: None,
        run_at_ms: None,
        priority: 0,
    };
    let (shared, conn) = (shared.clone(), conn.clone());
    let (invocation_id, function_id) = (invoke.invocation_id, invoke.function_id);
    tokio::spawn(async move {
        // iii answers every refused enqueue with `enqueue_error`, and SDK
        // code matches on it; the specific reason stays in the message.
        let reply = match shared.enqueue(job).await {
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

#[cfg(test)]
mod tests {
    use super::receipt;

    #[test]
    fn a_schedule_names_its_time_in_utc_with_milliseconds() {
        assert_eq!(
            super::schedule_at(1_700_000_000_123),
            "@at 2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn an_idempotency_key_always_gives_the_same_receipt_in_its_queue() {
        assert_eq!(receipt("q", Some("k")), receipt("q", Some("k")));
        assert_ne!(receipt("q", Some("k")), receipt("r", Some("k")));
        assert_ne!(receipt("q", None), receipt("q", None));
    }
}
