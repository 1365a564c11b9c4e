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
        let headers = msg.headers.as_ref();
        match self
            .store_letter(key, headers, &msg.subject, &msg.payload, receipt, &history)
            .await
        {
            Ok(()) => {
                let last = history.last().map(|a| a.error.clone());
                let ended = super::flows::Ended::Dead(last);
                if self
                    .child_ended(headers, key, receipt, ended)
                    .await
                    .is_err()
                {
                    // Delivered again past its last attempt, it is
                    // dead-lettered again (one letter) and its parent told.
                    let _ = msg
                        .ack_with(jetstream::AckKind::Nak(Some(super::flows::FLOW_RETRY)))
                        .await;
                    return;
                }
                if let Err(e) = msg.ack().await {
                    tracing::warn!(%receipt, error = %e, "a dead-lettered job's ack failed: it will be dead-lettered again");
                }
                self.forget_attempts(receipt).await;
                tracing::info!(%receipt, queue = %key.queue, "a job ran out of attempts: dead-lettered");
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

    /// Stores a job (its message's headers, subject and payload) as a dead
    /// letter with its history, and indexes its receipt there.
    pub(super) async fn store_letter(
        &self,
        key: &JobKey,
        headers: Option<&async_nats::HeaderMap>,
        subject: &str,
        payload: &[u8],
        receipt: Uuid,
        history: &[Attempt],
    ) -> Result<(), String> {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let data: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let last = history.last().map(|a| a.error.clone());
        let now = crate::queue::now_ms();
        let redrives: u64 = header(REDRIVES).and_then(|v| v.parse().ok()).unwrap_or(0);
        // Its priority (a FIFO job has none), for `queue::get` and a
        // redrive back onto its band.
        let priority: u64 = header(super::intake::PRIORITY)
            .and_then(|v| v.parse().ok())
            .or_else(|| {
                super::JobKey::parse(subject, &self.names)
                    .map(|(_, lane)| lane.lowest_priority() as u64)
            })
            .unwrap_or(0);
        let letter = json!({
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
        });
        let body = serde_json::to_vec(&letter).expect("a dead letter encodes");
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
        Ok(())
    }
}
