//! Jobs that expire while nobody takes them. The engine that pulls a job
//! past its expiry dead-letters it without running it (`runner.rs`); this
//! is for a job no engine pulls (no worker serves its function, or its
//! queue is paused or throttled), which the local queue dead-letters at its
//! expiry too:
//!
//! - with a job that has an expiry, its enqueue also stores an *expiry
//!   check*: a scheduled message (`qmesh.<cluster>.expiry.<receipt>`, the
//!   receipt in a header) that the stream publishes at the expiry on
//!   `qmesh.<cluster>.expired.<queue>`;
//! - one durable consumer (`expired`) on those subjects, pulled by every
//!   engine: the engine that gets a check looks the job up by its receipt
//!   and, if it is still waiting (ready, delayed, a flow parent) and has
//!   expired, dead-letters it as `expired`, deletes its message and tells
//!   its flow's parent. A job that started meanwhile, ended or was
//!   cancelled is left alone. A check is acknowledged once handled, so an
//!   engine dying mid-way leaves it to another.
//!
//! A runner that pulls the job in the same instant dead-letters it too (its
//! expiry has passed): one dead letter (its message id is the receipt's).
//! A check NATS did not store leaves the job to the pull-time check (logged).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use base64::Engine as _;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dead::{Letter, expired_error};
use super::index::nats_error;
use super::job::{EXPIRES_AT, Ended, RECEIPT, schedule};
use super::pull::pull_each;
use super::views::Found;
use super::{Shared, b64};
use crate::protocol::ErrorBody;

/// The durable consumer every engine pulls expiry checks from.
const CONSUMER: &str = "expired";
/// How long an engine has to handle a check before another gets it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a pull request waits for checks, and the pause after a failure.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_secs(1);
/// Most expiry checks of one batch stored at once.
const IN_FLIGHT: usize = 64;

impl Shared {
    /// The subjects of expiry checks: scheduled, then fired.
    pub(super) fn expiry_subjects(cluster: &str) -> [String; 2] {
        [
            format!("qmesh.{cluster}.expiry.>"),
            format!("qmesh.{cluster}.expired.>"),
        ]
    }

    /// Stores the expiry checks of stored jobs: (receipt, queue, expiry),
    /// at most [`IN_FLIGHT`] at once. One NATS refused is logged: that job
    /// expires when pulled.
    pub(super) async fn schedule_expiries(&self, jobs: Vec<(Uuid, String, u64)>) {
        if !self.schedules || jobs.is_empty() {
            return;
        }
        let mut stored = futures_util::stream::iter(jobs)
            .map(|(receipt, queue, at)| async move {
                (receipt, self.schedule_expiry(receipt, &queue, at).await)
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some((receipt, done)) = stored.next().await {
            if let Err(e) = done {
                tracing::warn!(%receipt, error = %e, "cannot store a job's expiry check: it expires when an engine pulls it");
            }
        }
    }

    async fn schedule_expiry(&self, receipt: Uuid, queue: &str, at: u64) -> Result<(), String> {
        let c = &self.names.cluster;
        let mut headers = HeaderMap::new();
        headers.insert(RECEIPT, receipt.to_string().as_str());
        let target = format!("qmesh.{c}.expired.{}", b64().encode(queue));
        schedule(&mut headers, at, &target);
        let subject = format!("qmesh.{c}.expiry.{receipt}");
        let ack = self
            .js
            .publish_with_headers(subject, headers, bytes::Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Pulls expiry checks until `stop` (none on a server that cannot
    /// schedule them: there are none to pull).
    pub(super) async fn sweep_expired(self: Arc<Self>, stop: CancellationToken) {
        if !self.schedules {
            return;
        }
        let consumer = loop {
            match self.expiry_consumer().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the expiry checks' consumer; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        };
        while !stop.is_cancelled() {
            let fetch = consumer.fetch().max_messages(64).expires(FETCH_EXPIRES);
            let pulled = tokio::select! {
                _ = stop.cancelled() => return,
                pulled = pull_each(fetch, |check| self.check_expiry(check)) => pulled,
            };
            if !pulled.1 {
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    async fn expiry_consumer(&self) -> Result<jetstream::consumer::PullConsumer, String> {
        let config = pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            filter_subject: format!("qmesh.{}.expired.>", self.names.cluster),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            ..Default::default()
        };
        self.jobs
            .get_or_create_consumer(CONSUMER, config)
            .await
            .map_err(|e| e.to_string())
    }

    /// Handles one fired check, then acknowledges it (on a NATS error, it
    /// comes back after a second).
    async fn check_expiry(&self, check: jetstream::Message) {
        let receipt = check
            .headers
            .as_ref()
            .and_then(|h| h.get(RECEIPT))
            .and_then(|r| Uuid::parse_str(r.as_str()).ok());
        let handled = match receipt {
            Some(receipt) => self.expire_if_waiting(receipt).await,
            None => Ok(()),
        };
        let ack = match handled {
            Ok(()) => check.ack().await,
            Err(e) => {
                tracing::warn!(?receipt, error = %e.message, "cannot expire a job; checked again in a second");
                check.ack_with(jetstream::AckKind::Nak(Some(RETRY))).await
            }
        };
        if let Err(e) = ack {
            tracing::debug!(error = %e, "an expiry check's ack failed: it is checked again");
        }
    }

    /// Dead-letters the job of `receipt` as expired if it still waits on the
    /// stream (not delivered) past its expiry.
    async fn expire_if_waiting(&self, receipt: Uuid) -> Result<(), ErrorBody> {
        let (m, key) = match self.find_job(receipt).await? {
            Some(Found::Job {
                m,
                key,
                delivered: false,
                ..
            })
            | Some(Found::Delayed { m, key, .. })
            | Some(Found::Waiting { m, key, .. }) => (m, key),
            // Running (its engine checks its retries), or gone.
            _ => return Ok(()),
        };
        let Some(at) = m
            .headers
            .get(EXPIRES_AT)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .filter(|at| *at <= crate::queue::now_ms())
        else {
            return Ok(()); // redriven since (no expiry), or not due yet
        };
        let error = expired_error(at);
        let history = self.history_of(receipt).await;
        let letter = Letter {
            headers: Some(&m.headers),
            subject: &m.subject,
            payload: &m.payload,
            history: &history,
            last: Some(error.clone()),
        };
        let reported = self
            .store_letter(&key, receipt, letter)
            .await
            .map_err(|e| nats_error("dead-letter an expired job", e))?;
        if let Err(e) = self.jobs.delete_message(m.sequence).await {
            tracing::debug!(%receipt, error = %e, "an expired job's message was gone");
        }
        self.child_ended(Some(&m.headers), &key, receipt, Ended::Dead(Some(error)))
            .await?;
        self.forget_attempts(receipt).await;
        if reported {
            self.forget_reports(receipt).await;
        }
        tracing::info!(%receipt, queue = %key.queue, "job expired while waiting: dead-lettered");
        Ok(())
    }
}
