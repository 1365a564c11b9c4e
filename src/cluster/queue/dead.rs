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
        let expired = ErrorBody::new(
            EXPIRED,
            format!("not started before its expiry ({at} ms since the epoch)"),
        );
        self.dead_letter_as(key, msg, receipt, history, Some(expired))
            .await
    }

    /// Stores the job as a dead letter, then acknowledges its job message.
    /// A dead letter NATS refuses leaves the job to be delivered again after
    /// a short delay (its next delivery is past its last attempt, so it is
    /// dead-lettered then, without running).
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
        let payload: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
        let reports = self.reports_of(receipt).await;
        let expires_at: Option<u64> = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(super::intake::EXPIRES_AT))
            .and_then(|v| v.as_str().parse().ok());
        let now = crate::queue::now_ms();
        let redrives: u64 = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(REDRIVES))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        // Its priority (a FIFO job has none), for `queue::get` and a
        // redrive back onto its band.
        let priority: u64 = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(super::intake::PRIORITY))
            .and_then(|v| v.as_str().parse().ok())
            .or_else(|| {
                super::JobKey::parse(&msg.subject, &self.names)
                    .map(|(_, lane)| lane.lowest_priority() as u64)
            })
            .unwrap_or(0);
        let letter = json!({
            "id": receipt,
            "queue": key.queue,
            "namespace": key.namespace,
            "function_id": key.function_id,
            "payload": payload,
            "error": last.as_ref().map(|e| format!("{}: {}", e.code, e.message)),
            "last_error": last,
            "failed_at": now / 1000,
            "failed_at_ms": now,
            "retries": history.iter().map(|a| a.attempt).max().unwrap_or(0),
            "size_bytes": msg.payload.len(),
            "history": history,
            "redrives": redrives,
            "priority": priority,
            "expires_at_ms": expires_at,
            "progress": reports.progress,
            "logs": reports.logs,
            "logs_dropped": reports.logs_dropped,
        });
        let body = serde_json::to_vec(&letter).expect("a dead letter encodes");
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            // Once per dead-lettering: a redriven job that dies again is
            // not a duplicate of its first dead letter.
            .message_id(format!("{receipt}.{redrives}"));
        let stored = match self
            .js
            .send_publish(dead_subject(self, &key.queue), publish)
            .await
        {
            Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(seq) => {
                // Before the ack: a job is always findable where it is.
                let place = super::index::Place::Dead { seq };
                if let Err(e) = self.index_anyway(receipt, place).await {
                    tracing::warn!(%receipt, error = %e, "cannot index a dead letter");
                }
                if let Err(e) = msg.ack().await {
                    tracing::warn!(%receipt, error = %e, "a dead-lettered job's ack failed: it will be dead-lettered again");
                }
                self.forget_attempts(receipt).await;
                if reports.any() {
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
}
