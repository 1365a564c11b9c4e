//! The operator actions of the JetStream queues, in the local queue's
//! shapes: `queue::pause`, `queue::resume`, `queue::purge`, `queue::cancel`,
//! and iii's `redrive`, `redrive_message` and `discard_message`, done with
//! what JetStream offers:
//!
//! - pause and resume: the queue's flag (`index.rs`), then every consumer
//!   of the queue (each lane's: priority bands, FIFO lanes) paused until
//!   resumed (`pause_until`, NATS 2.11) or resumed; a consumer created
//!   later, for any lane, follows the flag;
//! - purge: a purge of the job stream filtered on the queue's subjects
//!   (every lane's), then on its delayed jobs' scheduled messages and its
//!   waiting flow parents' (the parents of purged children are not told:
//!   they keep waiting, as `queue::get` shows);
//! - cancel: the job's message deleted, if it was not delivered yet (a
//!   delayed job's scheduled message, a waiting flow parent's), and its
//!   flow's parent told (`flows.rs`);
//! - redrive: the dead letter republished to the job stream on its lane's
//!   subject (its priority's band, or its FIFO group's lane now) with its
//!   receipt and priority kept (its history put back in the attempts
//!   bucket, so later failures add to it, and its progress and log in
//!   theirs), its new sequence indexed, then the dead letter deleted,
//!   without its expiry (a redriven job runs however late, as on one
//!   engine); discard: the dead letter deleted.

use async_nats::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

use super::dead::REDRIVES;
use super::dead::{Attempt, dead_subject};
use super::index::{Place, nats_error};
use super::intake::lane;
use super::job::Ended;
use super::job::{Job, PRIORITY, RECEIPT};
use super::progress::Reports;
use super::views::{OpArgs, view_fn};
use super::{JobKey, Shared};
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};
use crate::queue::settings::Ordering;
use async_nats::jetstream::stream::DirectGetErrorKind;

/// Most dead letters one redrive or discard looks through for a receipt
/// its index does not place.
const MAX_SCAN: usize = 10_000;

/// A dead letter: its sequence on the dead-letter stream and its body.
struct Letter {
    seq: u64,
    body: Value,
}

impl Shared {
    /// Pauses or resumes a queue: its flag first, then its consumers.
    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<Value, ErrorBody> {
        if self.config.settings(queue).is_none() {
            return Err(ErrorBody::new(
                codes::QUEUE_NOT_FOUND,
                format!("queue {queue:?} is not declared ([queue] strict is on)"),
            ));
        }
        self.set_paused(queue, paused).await?;
        // Resumed within a throttle: held to its end (`throttle.rs`).
        let throttled = match paused {
            true => None,
            false => self.throttled_until(queue).await?,
        };
        for lane in self.job_consumers().await? {
            if lane.key.queue == queue {
                let held = match throttled {
                    Some(until) => self.throttle_consumer(&lane.info.name, until).await,
                    None => self.pause_consumer(&lane.info.name, paused).await,
                };
                held.map_err(|e| nats_error("pause the queue's consumers", e))?;
            }
        }
        Ok(json!({ "queue": queue, "paused": paused }))
    }

    /// Deletes every job of the queue on the job stream.
    async fn purge_queue(&self, queue: &str) -> Result<Value, ErrorBody> {
        self.queue_parts(queue).await?;
        // Flow children about to go: their parents hear of it after.
        let children = self.children_in(queue).await?;
        let mut purged = 0;
        for subject in [
            format!("{}.>", JobKey::queue_prefix(queue, &self.names)),
            format!("{}.*", JobKey::delayed_prefix(queue, &self.names)),
            format!("{}.*", super::flows::waiting_prefix(self, queue)),
        ] {
            let done = self
                .jobs
                .purge()
                .filter(subject)
                .await
                .map_err(|e| nats_error("purge the queue", e))?;
            purged += done.purged;
        }
        self.children_purged(children).await?;
        Ok(json!({ "queue": queue, "purged": purged }))
    }

    /// Deletes a job not delivered yet: its job message, or its scheduled
    /// message while it is delayed.
    async fn cancel_job(&self, receipt: Uuid) -> Result<Value, ErrorBody> {
        let seq = self.cancellable(receipt).await?;
        let message = self.job_message(seq).await?;
        self.jobs
            .delete_message(seq)
            .await
            .map_err(|e| nats_error("delete the job", e))?;
        // A flow's child: its parent hears of it, as of any end.
        if let Some(m) = message
            && let Some(key) = self.key_of(&m)
        {
            // Logged on failure: the job is gone, its parent keeps waiting.
            let _ = self
                .child_ended(Some(&m.headers), &key, receipt, Ended::Cancelled)
                .await;
        }
        Ok(json!({ "receipt": receipt, "cancelled": true }))
    }

    /// The queue's dead letters, oldest first: every one (`receipt` none),
    /// or the one of `receipt`.
    async fn letters(&self, queue: &str, receipt: Option<Uuid>) -> Result<Vec<Letter>, ErrorBody> {
        self.queue_parts(queue).await?;
        let subject = dead_subject(self, queue);
        if let Some(r) = receipt
            && let Some(Place::Dead { seq }) = self.locate(r).await?
            && let Ok(m) = self.dead.get_raw_message(seq).await
            && m.subject.as_str() == subject
            && let Ok(body) = serde_json::from_slice::<Value>(&m.payload)
            && body["id"] == json!(r)
        {
            return Ok(vec![Letter { seq, body }]);
        }
        let mut out = Vec::new();
        let mut next = 1;
        for _ in 0..MAX_SCAN {
            let m = match self
                .dead
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(nats_error("read the dead letters", e)),
            };
            next = m.sequence + 1;
            let Ok(body) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            match receipt {
                Some(r) if body["id"] == json!(r) => {
                    return Ok(vec![Letter {
                        seq: m.sequence,
                        body,
                    }]);
                }
                Some(_) => {}
                None => out.push(Letter {
                    seq: m.sequence,
                    body,
                }),
            }
        }
        Ok(out)
    }

    /// Puts a dead letter's job back on the job stream (same receipt, a
    /// fresh attempt budget, its history kept), then deletes the letter.
    async fn redrive_letter(&self, queue: &str, letter: &Letter) -> Result<(), ErrorBody> {
        let b = &letter.body;
        let receipt = b["id"]
            .as_str()
            .and_then(|r| Uuid::parse_str(r).ok())
            .ok_or_else(|| nats_error("redrive", "a dead letter without a receipt"))?;
        let key = JobKey {
            queue: queue.to_owned(),
            namespace: b["namespace"].as_str().unwrap_or_default().to_owned(),
            function_id: b["function_id"].as_str().unwrap_or_default().to_owned(),
        };
        let settings = self.settings(queue)?;
        // Back on its lane: its priority's band, or its FIFO group's lane
        // (of the queue's `concurrency` now), as an enqueue would place it.
        let priority = b["priority"]
            .as_u64()
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(0);
        let payload =
            serde_json::value::to_raw_value(&b["payload"]).map_err(|e| nats_error("redrive", e))?;
        let job = Job {
            key: key.clone(),
            payload,
            traceparent: None,
            baggage: None,
            idempotency_key: None,
            run_at_ms: None,
            priority: if settings.ordering == Ordering::Fifo {
                0
            } else {
                priority
            },
            // Redriven, it runs however late, as on one engine.
            expires_at_ms: None,
        };
        let lane = lane(&job, &settings)?;
        // Indexed below only if nothing was written since: the job may be
        // dead again before that.
        let (_, revision) = self.locate_at(receipt).await?;
        self.ensure_consumer(&key, lane, &settings)
            .await
            .map_err(ErrorBody::from)?;
        let history: Vec<Attempt> =
            serde_json::from_value(b["history"].clone()).unwrap_or_default();
        if !history.is_empty() {
            let bytes = serde_json::to_vec(&history).expect("a history encodes");
            if let Err(e) = self.attempts.put(receipt.to_string(), bytes.into()).await {
                tracing::warn!(%receipt, error = %e, "cannot put a redriven job's history back");
            }
        }
        // Its progress and log too, as on one engine.
        let mut reports = Reports {
            progress: Some(b["progress"].clone()).filter(|p| !p.is_null()),
            logs: serde_json::from_value(b["logs"].clone()).unwrap_or_default(),
            logs_dropped: b["logs_dropped"].as_u64().unwrap_or(0) as u32,
        };
        if reports.any()
            && let Err(e) = self.store_reports(receipt, &mut reports).await
        {
            tracing::warn!(%receipt, error = %e.message, "cannot put a redriven job's progress and log back");
        }
        // No `Nats-Msg-Id`: a job enqueued with an idempotency key would be
        // dropped as a duplicate of itself within the window.
        let mut headers = HeaderMap::new();
        headers.insert(RECEIPT, receipt.to_string().as_str());
        let redrives = b["redrives"].as_u64().unwrap_or(0) + 1;
        headers.insert(REDRIVES, redrives.to_string().as_str());
        if job.priority != 0 {
            headers.insert(PRIORITY, job.priority.to_string().as_str());
        }
        let body = bytes::Bytes::copy_from_slice(job.payload.get().as_bytes());
        let ack = self
            .js
            .publish_with_headers(key.subject(&self.names, lane), headers, body)
            .await
            .map_err(|e| nats_error("republish a dead job", e))?
            .await
            .map_err(|e| nats_error("republish a dead job", e))?;
        self.index(receipt, Place::Jobs { seq: ack.sequence }, revision)
            .await
            .map_err(|e| nats_error("index a redriven job", e))?;
        self.dead
            .delete_message(letter.seq)
            .await
            .map_err(|e| nats_error("delete a redriven dead letter", e))?;
        Ok(())
    }

    async fn redrive_queue(&self, queue: &str, receipt: Option<Uuid>) -> Result<Value, ErrorBody> {
        let letters = self.letters(queue, receipt).await?;
        for letter in &letters {
            self.redrive_letter(queue, letter).await?;
        }
        let n = letters.len();
        Ok(match receipt {
            Some(id) => json!({ "queue": queue, "message_id": id, "redriven": n }),
            None => json!({ "queue": queue, "redriven": n }),
        })
    }

    async fn discard_letter(&self, queue: &str, receipt: Uuid) -> Result<Value, ErrorBody> {
        let letters = self.letters(queue, Some(receipt)).await?;
        for letter in &letters {
            self.dead
                .delete_message(letter.seq)
                .await
                .map_err(|e| nats_error("delete a dead letter", e))?;
        }
        let n = letters.len();
        // iii names the count `redriven` here too; kept for compatibility.
        Ok(json!({ "queue": queue, "message_id": receipt, "redriven": n, "discarded": n }))
    }
}

view_fn!(pause, |s, a| s.pause_queue(&a.queue()?, true).await);
view_fn!(resume, |s, a| s.pause_queue(&a.queue()?, false).await);
view_fn!(
    /// Deletes the queue's jobs on the job stream.
    purge, |s, a| s.purge_queue(&a.queue()?).await
);
view_fn!(
    /// Cancels a job not delivered yet.
    cancel, |s, a| s.cancel_job(a.receipt()?).await
);
view_fn!(
    /// iii: `{queue, redriven}`.
    redrive, |s, a| s.redrive_queue(&a.queue()?, None).await
);
view_fn!(
    /// iii: `{queue, message_id, redriven: 0|1}`.
    redrive_message, |s, a| s.redrive_queue(&a.queue()?, Some(a.receipt()?)).await
);
view_fn!(
    /// iii: `{queue, message_id, discarded: 0|1}`.
    discard_message, |s, a| s.discard_letter(&a.queue()?, a.receipt()?).await
);
