//! Enqueues to the cluster's job stream: the receipt goes out only after
//! JetStream's PubAck, i.e. once the job is stored on the stream's replicas
//! (fsync'ed first on a server with `sync_interval: always`).

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

use super::index::Place;
use super::job::{BAGGAGE, DUE_AT, EXPIRES_AT, Job, PRIORITY, RECEIPT, TRACEPARENT, schedule};
use super::{JobKey, Lane, Shared, ack_wait, not_supported};
use crate::mesh::session::answer;
use crate::mesh::{CallCtx, Connection, Mesh, Reply};
use crate::protocol::{Action, ErrorBody, Invoke, codes};
use crate::queue::Enqueued;
use crate::queue::settings::{Ordering, QueueSettings};
use async_nats::jetstream::consumer::{AckPolicy, pull};

/// A job sent to the stream: its receipt, and whether it went as a
/// scheduled message (delayed) rather than to its lane's subject.
pub(super) struct Sent {
    pub receipt: Uuid,
    /// The job's lane subject, when it went as a scheduled message.
    delayed_to: Option<String>,
}

impl Sent {
    /// Where the job is once the stream stored it at `seq`.
    pub(super) fn place(&self, seq: u64) -> Place {
        match &self.delayed_to {
            Some(target) => Place::Delayed {
                seq,
                target: target.clone(),
            },
            None => Place::Jobs { seq },
        }
    }
}

/// Most receipt-index writes of one `queue::enqueue_many` in flight.
const INDEX_IN_FLIGHT: usize = 64;

/// Most acks of one `queue::enqueue_many` awaited at once (the NATS client
/// holds at most 5,000 for all of an engine's publishes).
const ACKS_IN_FLIGHT: usize = 1_000;

/// How often, and how far apart, an enqueue is sent again while JetStream
/// is still storing another copy of its idempotency key (it refuses the
/// copy then, error 10158, rather than answer "duplicate"): about a second,
/// far beyond one replicated write.
const STILL_STORING_TRIES: u32 = 50;
const STILL_STORING_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// How long an enqueue is sent again while no stream takes its subject
/// (NATS "no responders": the stream's leader moving after a node died, or
/// its interest not yet on the node this engine is connected to). Nothing
/// was stored, so sending again cannot make a duplicate; the JetStream
/// client's own ack timeout is 5 s.
const NO_STREAM_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
const NO_STREAM_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether no stream took a publish (it was not stored).
fn reached_no_stream(e: &PublishError) -> bool {
    e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound
}

/// Whether a publish may be sent again as it is: a copy of its idempotency
/// key is still being stored, or no stream took it.
fn worth_resending(e: &PublishError) -> bool {
    still_storing(e) || reached_no_stream(e)
}

/// Whether JetStream refused a publish because a message with its id (an
/// idempotency key's) is still being stored.
fn still_storing(e: &PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
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
        "the cluster's job stream acknowledged {acknowledged} of the batch's {total} jobs \
         ({why}); the others may not be replicated, so no receipts are given: retry the batch \
         with idempotency keys (the acknowledged ones are then answered as duplicates)"
    )]
    BatchNotAcknowledged {
        why: String,
        acknowledged: usize,
        total: usize,
    },
    #[error(
        "the job is stored but its receipt could not be indexed ({0}), so no receipt is \
         given: retry (with an idempotency key, a retry cannot make a duplicate)"
    )]
    NotIndexed(String),
    #[error(
        "the batch's {total} jobs are stored but a receipt could not be indexed ({why}), so no \
         receipts are given: retry the batch with idempotency keys (the stored ones are then \
         answered as duplicates)"
    )]
    BatchNotIndexed { why: String, total: usize },
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
pub(super) fn receipt(queue: &str, idempotency_key: Option<&str>) -> Uuid {
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
        let (settings, lane) = self.check(&job)?;
        self.ensure_consumer(&job.key, lane, &settings).await?;
        let (sent, ack) = self.publish_acked(&job, lane).await?;
        // Only if absent: a duplicate is indexed already, and a job that
        // failed for good before this write is indexed as dead.
        let receipt = sent.receipt;
        self.index(receipt, sent.place(ack.sequence), 0)
            .await
            .map_err(PublishRefused::NotIndexed)?;
        if let Some(at) = job.expires_at_ms.filter(|_| !ack.duplicate) {
            let queue = job.key.queue.clone();
            self.schedule_expiries(vec![(receipt, queue, at)]).await;
        }
        Ok(Enqueued {
            receipt,
            duplicate: ack.duplicate,
        })
    }

    /// Stores every job of a batch, each checked first (one refused job
    /// refuses the batch, naming its index, before anything is published);
    /// resolves once JetStream acknowledged all. The jobs are published
    /// one after the other without waiting, and their acks awaited together
    /// (at most [`ACKS_IN_FLIGHT`] outstanding, a bound the NATS client
    /// shares with every other publish of this engine).
    pub(super) async fn enqueue_many(&self, jobs: Vec<Job>) -> Result<Vec<Enqueued>, ErrorBody> {
        let mut checked = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            let (settings, lane) = self
                .check(&job)
                .map_err(|e| ErrorBody::new(&e.code, format!("jobs[{i}]: {}", e.message)))?;
            checked.push((job, settings, lane));
        }
        for (job, settings, lane) in &checked {
            self.ensure_consumer(&job.key, *lane, settings).await?;
        }
        let total = checked.len();
        let mut waiting = FuturesOrdered::new();
        let mut acked = Vec::with_capacity(total);
        let mut refused = None;
        // A key met earlier in the batch: that job's receipt, not published
        // again (JetStream refuses a message id still being stored).
        let mut keyed = HashSet::new();
        let mut repeats: Vec<Option<Uuid>> = Vec::with_capacity(total);
        for (job, _, lane) in &checked {
            if let Some(key) = &job.idempotency_key {
                let first = receipt(&job.key.queue, Some(key));
                if !keyed.insert(first) {
                    repeats.push(Some(first));
                    continue;
                }
            }
            let i = repeats.len();
            repeats.push(None);
            match self.publish(job, *lane).await {
                Ok((sent, ack)) => waiting.push_back(async move { (i, sent, ack.await) }),
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
            if waiting.len() >= ACKS_IN_FLIGHT {
                acked.extend(waiting.next().await);
            }
        }
        while let Some(ack) = waiting.next().await {
            acked.push(ack);
        }
        // Acks come in publishing order, the repeats between them.
        let mut acked = acked.into_iter();
        let mut done = Vec::with_capacity(total);
        let mut acknowledged = 0;
        let mut places = Vec::with_capacity(total);
        let mut expiring = Vec::new();
        for repeat in repeats {
            let (i, sent, ack) = match repeat {
                Some(receipt) => {
                    done.push(Enqueued {
                        receipt,
                        duplicate: true,
                    });
                    continue;
                }
                None => match acked.next() {
                    Some(next) => next,
                    None => break, // publishing stopped at a refusal
                },
            };
            let ack = match ack {
                Err(e) if worth_resending(&e) => {
                    let (job, _, lane) = &checked[i];
                    self.publish_acked(job, *lane)
                        .await
                        .map(|(_, ack)| ack)
                        .map_err(|e| e.to_string())
                }
                other => other.map_err(|e| e.to_string()),
            };
            match ack {
                Ok(ack) => {
                    acknowledged += 1;
                    places.push((sent.receipt, sent.place(ack.sequence)));
                    let job = &checked[i].0;
                    if let Some(at) = job.expires_at_ms.filter(|_| !ack.duplicate) {
                        expiring.push((sent.receipt, job.key.queue.clone(), at));
                    }
                    done.push(Enqueued {
                        receipt: sent.receipt,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        if refused.is_none() {
            // Every job of the batch is indexed before the batch is
            // answered, as a single enqueue's job is.
            self.index_all(places).await?;
            self.schedule_expiries(expiring).await;
        }
        match refused {
            None => Ok(done),
            Some(why) => Err(PublishRefused::BatchNotAcknowledged {
                why,
                acknowledged,
                total,
            }
            .into()),
        }
    }

    /// Indexes the receipts of a batch's acknowledged jobs (at most
    /// [`INDEX_IN_FLIGHT`] writes at once); a receipt met twice (a repeated
    /// idempotency key) keeps its first place.
    pub(super) async fn index_all(&self, places: Vec<(Uuid, Place)>) -> Result<(), PublishRefused> {
        let total = places.len();
        let mut writes = futures_util::stream::iter(places)
            .map(|(receipt, place)| async move { self.index(receipt, place, 0).await })
            .buffer_unordered(INDEX_IN_FLIGHT);
        while let Some(done) = writes.next().await {
            done.map_err(|why| PublishRefused::BatchNotIndexed { why, total })?;
        }
        Ok(())
    }

    /// What the queue's settings say of a job, before anything is sent: its
    /// settings and lane, or why it is refused.
    pub(super) fn check(&self, job: &Job) -> Result<(QueueSettings, Lane), ErrorBody> {
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
        if job.run_at_ms.is_some() && !self.schedules {
            return Err(not_supported(
                "delay and run_at need the job stream to take scheduled messages \
                 (nats-server 2.12 or later)",
            ));
        }
        let lane = lane(job, &settings)?;
        Ok((settings, lane))
    }

    /// Sends a checked job to the stream and awaits JetStream's ack; sent
    /// again while another copy of its idempotency key is being stored (a
    /// concurrent enqueue on any engine), until it is answered as that
    /// one's duplicate, or as stored if that one failed; and while no
    /// stream takes it, for up to [`NO_STREAM_WITHIN`].
    async fn publish_acked(
        &self,
        job: &Job,
        lane: Lane,
    ) -> Result<(Sent, PublishAck), PublishRefused> {
        let mut tries = 1;
        let started = tokio::time::Instant::now();
        loop {
            let (sent, ack) = self.publish(job, lane).await?;
            match ack.await {
                Ok(ack) => return Ok((sent, ack)),
                Err(e) if still_storing(&e) && tries < STILL_STORING_TRIES => {
                    tries += 1;
                    tokio::time::sleep(STILL_STORING_WAIT).await;
                }
                Err(e) if reached_no_stream(&e) && started.elapsed() < NO_STREAM_WITHIN => {
                    tokio::time::sleep(NO_STREAM_WAIT).await;
                }
                Err(e) => return Err(PublishRefused::NotAcknowledged(e.to_string())),
            }
        }
    }

    /// Sends a checked job to the stream; returns its receipt and the
    /// future of JetStream's ack.
    async fn publish(
        &self,
        job: &Job,
        lane: Lane,
    ) -> Result<(Sent, PublishAckFuture), PublishRefused> {
        let receipt = receipt(&job.key.queue, job.idempotency_key.as_deref());
        let (subject, headers, sent) = self.message_of(job, lane, receipt, true);
        let body = bytes::Bytes::copy_from_slice(job.payload.get().as_bytes());
        let ack = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| PublishRefused::NotAcknowledged(e.to_string()))?;
        Ok((sent, ack))
    }

    /// A checked job's subject and headers on the stream. With `schedule`,
    /// a job due later is a scheduled message: the stream itself publishes
    /// it on its job subject at its time (with these headers, minus the
    /// schedule's), then deletes it; stored on the stream's replicas before
    /// the PubAck, like any job. Without, only its due time is kept
    /// (`DUE_AT`), for whoever sends it later (a flow's parent).
    pub(super) fn message_of(
        &self,
        job: &Job,
        lane: Lane,
        receipt: Uuid,
        schedule: bool,
    ) -> (String, HeaderMap, Sent) {
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
        if job.priority != 0 {
            // The band is in the subject; the priority itself is kept for
            // `queue::get` and for a redrive of its dead letter.
            headers.insert(PRIORITY, job.priority.to_string().as_str());
        }
        if let Some(at) = job.expires_at_ms {
            headers.insert(EXPIRES_AT, at.to_string().as_str());
        }
        let target = job.key.subject(&self.names, lane);
        let due = job.run_at_ms.filter(|at| *at > crate::queue::now_ms());
        let (subject, delayed_to) = match due {
            Some(at) if schedule => {
                self::schedule(&mut headers, at, &target);
                let subject = JobKey::delayed_subject(&job.key.queue, receipt, &self.names);
                (subject, Some(target))
            }
            Some(at) => {
                headers.insert(DUE_AT, at.to_string().as_str());
                (target, None)
            }
            None => (target, None),
        };
        let sent = Sent {
            receipt,
            delayed_to,
        };
        (subject, headers, sent)
    }

    /// Creates the consumer of the job's (queue, namespace, function) and
    /// lane the first time this engine enqueues to it (an existing one is
    /// kept as it is: every engine should have the same `[queue]`
    /// settings), and tells the other engines to list consumers again.
    pub(super) async fn ensure_consumer(
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
                Lane::Band(_) | Lane::Fair { .. } => settings.concurrency.max(1) as i64,
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
        self.follow_pause(key, lane)
            .await
            .map_err(|message| PublishRefused::Consumer {
                queue: key.queue.clone(),
                function_id: key.function_id.clone(),
                message,
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
/// priority's band (its fair key's lane in it, on a `fair_by` queue).
pub(super) fn lane(job: &Job, settings: &QueueSettings) -> Result<Lane, ErrorBody> {
    if settings.ordering == Ordering::Standard {
        return super::fair::standard_lane(job, settings);
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
/// delay?, run_at?, priority?, expires_in?, expires_at?}`.
pub(super) fn enqueue(
    shared: Arc<Shared>,
    _: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let job = Job::of_call(crate::queue::parse_enqueue(input)?, &ctx)?;
        let e = shared.enqueue(job).await?;
        Ok(json!({ "messageReceiptId": e.receipt, "receipt": e.receipt, "duplicate": e.duplicate }))
    })
}

/// `queue::enqueue_many {queue, function_id?, namespace?, jobs: [{function_id?,
/// data, delay?, run_at?, priority?, idempotency_key?, expires_*?}]}`: checked as the
/// local queue checks it, every job then checked against the queue's
/// settings before any is published; answered `{queue, receipts,
/// duplicates}` once JetStream acknowledged every job.
pub(super) fn enqueue_many(
    shared: Arc<Shared>,
    _: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let batch = crate::queue::parse_enqueue_many(input)?;
        let mut jobs = Vec::with_capacity(batch.jobs.len());
        for (i, req) in batch.jobs.into_iter().enumerate() {
            let job = Job::of_call(req, &ctx).map_err(|mut e| {
                e.message = format!("jobs[{i}]: {}", e.message);
                e
            })?;
            jobs.push(job);
        }
        let done = shared.enqueue_many(jobs).await?;
        let duplicates = done.iter().filter(|e| e.duplicate).count();
        let receipts: Vec<Value> = done.iter().map(|e| json!(e.receipt)).collect();
        Ok(json!({ "queue": batch.queue, "receipts": receipts, "duplicates": duplicates }))
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
        expires_at_ms: None,
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
