//! Attempt histories and dead letters of the cluster's JetStream queues.
//!
//! A job's failed attempts are kept in the bucket `qmesh_<cluster>_attempts`
//! under its receipt while it retries (the next attempt may run on another
//! engine), and deleted when it succeeds. A job out of attempts becomes one
//! message on the dead-letter stream (`qmesh.<cluster>.dead.<queue>`), in
//! the shape `engine::queue::dlq_messages` answers with, history included;
//! its job message is acknowledged only once the dead letter is stored.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{JobKey, Shared, b64};
use crate::protocol::ErrorBody;
use async_nats::jetstream;

/// The header of a redriven job and its dead letter: how many times it
/// was redriven.
pub(super) const REDRIVES: &str = "Qmesh-Redrives";

/// The error code (and the view's `reason`) of a job dead-lettered because
/// its expiry passed before it started: the local queue's.
pub(super) const EXPIRED: &str = "expired";

/// One failed attempt, as the history shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Attempt {
    pub attempt: u32,
    /// The engine that ran it.
    pub engine: String,
    pub ended_at_ms: u64,
    pub error: ErrorBody,
}

pub(super) fn dead_subject(shared: &Shared, queue: &str) -> String {
    format!(
        "qmesh.{}.dead.{}",
        shared.names.cluster,
        b64().encode(queue)
    )
}

impl Shared {
    /// Appends `entry` to the job's stored history and returns all of it.
    /// One engine holds a job at a time, so a plain read then write is
    /// enough; a failure to store it is logged (the attempt still counts).
    pub(super) async fn append_attempt(&self, receipt: Uuid, entry: Attempt) -> Vec<Attempt> {
        let key = receipt.to_string();
        let mut history: Vec<Attempt> = match self.attempts.get(&key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(%receipt, error = %e, "cannot read a job's attempt history");
                Vec::new()
            }
        };
        history.push(entry);
        let bytes = serde_json::to_vec(&history).expect("a history encodes");
        if let Err(e) = self.attempts.put(&key, bytes.into()).await {
            tracing::warn!(%receipt, error = %e, "cannot store a job's attempt history");
        }
        history
    }

    pub(super) async fn forget_attempts(&self, receipt: Uuid) {
        if let Err(e) = self.attempts.purge(receipt.to_string()).await {
            tracing::debug!(%receipt, error = %e, "cannot delete a finished job's attempt history");
        }
    }

    /// A job whose expiry (`at`) passed before this delivery started it:
    /// dead-lettered with the error `expired` without running, no attempt
    /// spent (earlier failed attempts stay in its history), as on one
    /// engine. A redrive runs it however late.
    pub(super) async fn expire(
        &self,
        key: &JobKey,
        msg: &jetstream::Message,
        receipt: Uuid,
        at: u64,
        history: Vec<Attempt>,
    ) {
        tracing::info!(%receipt, queue = %key.queue, "job expired before it started");
        let expired = expired_error(at);
        self.dead_letter_as(key, msg, receipt, history, Some(expired))
            .await
    }

    /// Stores the job as a dead letter, then acknowledges its job message
    /// (and tells its flow's parent, if it has one). A dead letter NATS
    /// refuses leaves the job to be delivered again after a short delay
    /// (its next delivery is past its last attempt, so it is dead-lettered
    /// then, without running).
    pub(super) async fn dead_letter(
        &self,
        key: &JobKey,
        msg: &jetstream::Message,
        receipt: Uuid,
        history: Vec<Attempt>,
    ) {
        let last = history.last().map(|a| a.error.clone());
        self.dead_letter_as(key, msg, receipt, history, last).await
    }

    /// [`Self::dead_letter`] with `last` as its last error. The job's
    /// progress and log (`progress.rs`) go into the letter and leave their
    /// bucket once it is stored.
    async fn dead_letter_as(
        &self,
        key: &JobKey,
        msg: &jetstream::Message,
        receipt: Uuid,
        history: Vec<Attempt>,
        last: Option<ErrorBody>,
    ) {
        let headers = msg.headers.as_ref();
        let letter = Letter {
            headers,
            subject: &msg.subject,
            payload: &msg.payload,
            history: &history,
            last: last.clone(),
        };
        match self.store_letter(key, receipt, letter).await {
            Ok(reported) => {
                let ended = super::job::Ended::Dead(last);
                if self
                    .child_ended(headers, key, receipt, ended)
                    .await
                    .is_err()
                {
                    // Delivered again past its last attempt, it is
                    // dead-lettered again (one letter) and its parent told.
                    let _ = msg
                        .ack_with(jetstream::AckKind::Nak(Some(super::job::FLOW_RETRY)))
                        .await;
                    return;
                }
                if let Err(e) = msg.ack().await {
                    tracing::warn!(%receipt, error = %e, "a dead-lettered job's ack failed: it will be dead-lettered again");
                }
                self.forget_attempts(receipt).await;
                if reported {
                    self.forget_reports(receipt).await;
                }
                tracing::info!(%receipt, queue = %key.queue, "a job was dead-lettered");
            }
            Err(e) => {
                tracing::warn!(%receipt, error = %e, "cannot store a dead letter; the job is delivered again");
                let _ = msg
                    .ack_with(jetstream::AckKind::Nak(Some(
                        std::time::Duration::from_secs(1),
                    )))
                    .await;
            }
        }
    }

    /// Stores a job as a dead letter with its history, progress and log,
    /// and indexes its receipt there; whether it had progress or log lines.
    pub(super) async fn store_letter(
        &self,
        key: &JobKey,
        receipt: Uuid,
        letter: Letter<'_>,
    ) -> Result<bool, String> {
        let Letter {
            headers,
            subject,
            payload,
            history,
            last,
        } = letter;
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let data: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let reports = self.reports_of(receipt).await;
        let expires_at: Option<u64> = header(super::job::EXPIRES_AT).and_then(|v| v.parse().ok());
        let now = crate::queue::now_ms();
        let redrives: u64 = header(REDRIVES).and_then(|v| v.parse().ok()).unwrap_or(0);
        // Its priority (a FIFO job has none), for `queue::get` and a
        // redrive back onto its band.
        let priority: u64 = header(super::job::PRIORITY)
            .and_then(|v| v.parse().ok())
            .or_else(|| {
                super::JobKey::parse(subject, &self.names)
                    .map(|(_, lane)| lane.lowest_priority() as u64)
            })
            .unwrap_or(0);
        let body = json!({
            "id": receipt,
            "queue": key.queue,
            "namespace": key.namespace,
            "function_id": key.function_id,
            "payload": data,
            "error": last.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
            "last_error": last,
            "failed_at": now / 1000,
            "failed_at_ms": now,
            "retries": history.iter().map(|a| a.attempt).max().unwrap_or(0),
            "size_bytes": payload.len(),
            "history": history,
            "redrives": redrives,
            "priority": priority,
            "expires_at_ms": expires_at,
            "progress": reports.progress,
            "logs": reports.logs,
            "logs_dropped": reports.logs_dropped,
        });
        let body = serde_json::to_vec(&body).expect("a dead letter encodes");
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            // Once per dead-lettering: a redriven job that dies again is
            // not a duplicate of its first dead letter.
            .message_id(format!("{receipt}.{redrives}"));
        let seq = match self
            .js
            .send_publish(dead_subject(self, &key.queue), publish)
            .await
        {
            Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        // Before the job message goes: a job is always findable where it is.
        let place = super::index::Place::Dead { seq };
        if let Err(e) = self.index_anyway(receipt, place).await {
            tracing::warn!(%receipt, error = %e, "cannot index a dead letter");
        }
        Ok(reports.any())
    }
}

/// What a dead letter is made of: the job message's headers, subject and
/// payload, its failed attempts and its last error.
pub(super) struct Letter<'a> {
    pub headers: Option<&'a async_nats::HeaderMap>,
    pub subject: &'a str,
    pub payload: &'a [u8],
    pub history: &'a [Attempt],
    pub last: Option<ErrorBody>,
}

/// The last error of a job dead-lettered because it did not start by its
/// expiry (`at`, ms since the epoch).
pub(super) fn expired_error(at: u64) -> ErrorBody {
    ErrorBody::new(
        EXPIRED,
        format!("not started before its expiry ({at} ms since the epoch)"),
    )
}
