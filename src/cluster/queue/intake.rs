//! Enqueues to the cluster's job stream: the receipt goes out only after
//! JetStream's PubAck, i.e. once the job is stored on the stream's replicas
//! (fsync'ed first on a server with `sync_interval: always`).

use async_nats::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use sha2::Digest;
use std::sync::Arc;
use uuid::Uuid;

use super::{JobKey, Shared, ack_wait, not_supported};
use crate::mesh::session::answer;
use crate::mesh::{CallCtx, Connection, Mesh, Reply};
use crate::protocol::{Action, ErrorBody, Invoke, Payload, codes};
use crate::queue::Enqueued;
use crate::queue::settings::QueueSettings;
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
}

/// Why an enqueue got no receipt from the stream.
#[derive(Debug, thiserror::Error)]
pub(super) enum PublishRefused {
    #[error(
        "the cluster's job stream did not acknowledge this enqueue ({0}); it may not be \
         replicated, so no receipt is given: retry (with an idempotency key, a retry cannot \
         make a duplicate)"
    )]
    NotAcknowledged(String),
    #[error(
        "the job is stored but its receipt could not be indexed ({0}), so no receipt is \
         given: retry (with an idempotency key, a retry cannot make a duplicate)"
    )]
    NotIndexed(String),
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
        self.ensure_consumer(&job.key, &settings).await?;
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
        let body = bytes::Bytes::copy_from_slice(job.payload.get().as_bytes());
        let ack = self
            .js
            .publish_with_headers(job.key.subject(&self.names), headers, body)
            .await
            .map_err(|e| PublishRefused::NotAcknowledged(e.to_string()))?
            .await
            .map_err(|e| PublishRefused::NotAcknowledged(e.to_string()))?;
        // Only if absent: a duplicate is indexed already, and a job that
        // failed for good before this write is indexed as dead.
        self.index(receipt, super::index::Place::Jobs { seq: ack.sequence }, 0)
            .await
            .map_err(PublishRefused::NotIndexed)?;
        Ok(Enqueued {
            receipt,
            duplicate: ack.duplicate,
        })
    }

    /// Creates the consumer of the job's (queue, namespace, function) the
    /// first time this engine enqueues to it (an existing one is kept as it
    /// is: every engine should have the same `[queue]` settings).
    pub(super) async fn ensure_consumer(
        &self,
        key: &JobKey,
        settings: &QueueSettings,
    ) -> Result<(), PublishRefused> {
        if self.consumers.lock().expect("not poisoned").contains(key) {
            return Ok(());
        }
        let name = key.consumer();
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: key.subject(&self.names),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ack_wait(settings),
            // Attempts are counted by the engines (a job past its last
            // attempt is dead-lettered with its history), not by the server,
            // which would leave it unseen in the stream.
            max_deliver: -1,
            max_ack_pending: settings.concurrency.max(1) as i64,
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
        self.follow_pause(key)
            .await
            .map_err(|message| PublishRefused::Consumer {
                queue: key.queue.clone(),
                function_id: key.function_id.clone(),
                message,
            })?;
        self.consumers
            .lock()
            .expect("not poisoned")
            .insert(key.clone());
        Ok(())
    }
}

/// `queue::enqueue {queue, function_id, data, namespace?, idempotency_key?}`
/// (`delay`, `run_at`, `priority` and `expires_*` are refused: not yet
/// supported on JetStream queues).
pub(super) fn enqueue(
    shared: Arc<Shared>,
    _: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let req = crate::queue::parse_enqueue(input)?;
        let unsupported = if req.run_at_ms.is_some() {
            Some("delay and run_at")
        } else if req.priority != 0 {
            Some("priority")
        } else if req.expires_at_ms.is_some() {
            Some("expires_in and expires_at")
        } else {
            None
        };
        if let Some(what) = unsupported {
            return Err(not_supported(format!(
                "{what}: not supported yet by the cluster's JetStream queues"
            )));
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
    fn an_idempotency_key_always_gives_the_same_receipt_in_its_queue() {
        assert_eq!(receipt("q", Some("k")), receipt("q", Some("k")));
        assert_ne!(receipt("q", Some("k")), receipt("r", Some("k")));
        assert_ne!(receipt("q", None), receipt("q", None));
    }
}
