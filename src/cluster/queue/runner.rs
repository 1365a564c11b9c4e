//! Running jobs: an engine pulls from the consumer of every (queue,
//! namespace, function) one of its own workers serves, and runs each job it
//! gets on those workers.
//!
//! Consumers are found by listing the job stream's consumers (each names
//! its key in its filter subject): every [`DISCOVER_EVERY`], and at once
//! when the functions this engine's workers serve change. A job's attempt
//! is the server's delivery count: it succeeds (ack), fails with attempts
//! left (its error appended to its history, then a nak delayed by the
//! queue's backoff), or fails its last attempt (dead-lettered, then ack). A
//! delivery past the last attempt means the previous one was lost (its
//! engine died, or lost NATS, before it ended): dead-lettered without
//! running again.

use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dead::Attempt;
use super::intake::{BAGGAGE, RECEIPT, TRACEPARENT};
use super::{JobKey, Shared, ack_wait};
use crate::mesh::router::CallExtras;
use crate::protocol::{ErrorBody, codes};
use async_nats::jetstream::{self, AckKind, consumer::pull};

/// How often the job stream's consumers are listed again.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);
/// How long one pull request waits for jobs.
const FETCH_EXPIRES: Duration = Duration::from_secs(2);
/// How soon NATS is asked again after it refused.
const RETRY: Duration = Duration::from_millis(250);

impl Shared {
    /// Keeps one pull task per consumer whose function this engine's own
    /// workers serve, until the drain.
    pub(super) async fn discover(self: Arc<Self>) {
        let mut events = self.mesh.subscribe();
        let mut known: HashSet<JobKey> = HashSet::new();
        let mut pulling: HashMap<JobKey, CancellationToken> = HashMap::new();
        let mut listed_for: HashSet<(String, String)> = HashSet::new();
        let mut tick = tokio::time::interval(DISCOVER_EVERY);
        loop {
            // List when the timer says so or this engine serves something new.
            let timer = tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tick.tick() => true,
                event = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                        break;
                    }
                    false
                }
            };
            let here_now = self.functions_here();
            if !here_now.is_empty() && (timer || !here_now.is_subset(&listed_for)) {
                match self.list_keys().await {
                    Ok(keys) => {
                        known = keys;
                        listed_for = here_now.clone();
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot list the job stream's consumers"),
                }
            }
            pulling.retain(|key, stop| {
                let keep = here_now.contains(&(key.namespace.clone(), key.function_id.clone()));
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for key in &known {
                let served = here_now.contains(&(key.namespace.clone(), key.function_id.clone()));
                if served && !pulling.contains_key(key) {
                    let stop = self.stop.child_token();
                    pulling.insert(key.clone(), stop.clone());
                    tokio::spawn(self.clone().pull(key.clone(), stop));
                }
            }
        }
        for stop in pulling.values() {
            stop.cancel();
        }
    }

    /// (namespace, function) pairs one of this engine's own workers serves.
    fn functions_here(&self) -> HashSet<(String, String)> {
        let all: Vec<(String, String)> = self.mesh.inspect(|st| {
            st.functions
                .iter()
                .flat_map(|(ns, ids)| ids.keys().map(move |id| (ns.clone(), id.clone())))
                .collect()
        });
        all.into_iter()
            .filter(|(ns, id)| self.directory.served_here(ns, id))
            .collect()
    }

    async fn list_keys(&self) -> Result<HashSet<JobKey>, async_nats::Error> {
        let mut out = HashSet::new();
        let mut consumers = self.jobs.consumers();
        while let Some(info) = consumers.next().await {
            if let Some(key) = JobKey::parse(&info?.config.filter_subject, &self.names) {
                out.insert(key);
            }
        }
        Ok(out)
    }

    /// Pulls jobs of one consumer and runs each in a task, until `stop`.
    /// The consumer's `max_ack_pending` bounds what this engine holds at
    /// once, so nothing waits here for a slot.
    async fn pull(self: Arc<Self>, key: JobKey, stop: CancellationToken) {
        let name = key.consumer();
        let mut consumer = loop {
            match self.jobs.get_consumer::<pull::Config>(&name).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(queue = %key.queue, function_id = %key.function_id, error = %e, "cannot open a job consumer; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        };
        let batch = match consumer.info().await {
            Ok(info) => info.config.max_ack_pending.clamp(1, 256) as usize,
            Err(_) => 1,
        };
        tracing::debug!(queue = %key.queue, function_id = %key.function_id, "pulling jobs");
        while !stop.is_cancelled() {
            let fetched = consumer
                .fetch()
                .max_messages(batch)
                .expires(FETCH_EXPIRES)
                .messages()
                .await;
            let mut jobs = match fetched {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::debug!(error = %e, "a pull request failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            while let Some(job) = jobs.next().await {
                match job {
                    Ok(msg) => {
                        tokio::spawn(self.clone().run(key.clone(), msg));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "a pull request ended");
                        break;
                    }
                }
            }
        }
    }

    /// Runs one delivery of a job and settles it with the server.
    async fn run(self: Arc<Self>, key: JobKey, msg: jetstream::Message) {
        let settings = self
            .config
            .settings(&key.queue)
            .unwrap_or_else(|| self.config.defaults.clone());
        let attempt = match msg.info() {
            Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
            Err(e) => {
                tracing::warn!(error = %e, "a job message without delivery info; left for redelivery");
                return;
            }
        };
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let receipt = header(RECEIPT)
            .and_then(|r| Uuid::parse_str(&r).ok())
            .unwrap_or_default();
        if attempt > settings.max_attempts {
            let lost = ErrorBody::new(
                codes::INVOCATION_STOPPED,
                format!(
                    "attempt {} ended without an outcome (the engine running it stopped or lost NATS)",
                    attempt - 1
                ),
            );
            let history = self.record_attempt(receipt, attempt - 1, lost).await;
            return self.dead_letter(&key, &msg, receipt, history).await;
        }
        let data = match serde_json::from_slice::<Box<serde_json::value::RawValue>>(&msg.payload) {
            Ok(d) => d,
            Err(e) => {
                let bad = ErrorBody::new(
                    codes::DESERIALIZATION_ERROR,
                    format!("the job's payload is not JSON: {e}"),
                );
                let history = self.record_attempt(receipt, attempt, bad).await;
                return self.dead_letter(&key, &msg, receipt, history).await;
            }
        };
        // The job's context, as the local queue hands it to handlers.
        let context = serde_json::json!({"job": {
            "receipt": receipt,
            "queue": key.queue,
            "attempt": attempt,
            "max_attempts": settings.max_attempts,
        }});
        let extras = CallExtras {
            metadata: Some(crate::protocol::to_payload(&context)),
            traceparent: header(TRACEPARENT),
            baggage: header(BAGGAGE),
        };
        let call = self.mesh.call_here_with(
            &key.namespace,
            &key.function_id,
            data,
            extras,
            settings.lease,
        );
        tokio::pin!(call);
        // A call longer than the consumer's ack wait keeps its job with
        // in-progress acks, so no other engine starts it meanwhile.
        let keep_alive = ack_wait(&settings) / 3;
        let outcome = loop {
            tokio::select! {
                outcome = &mut call => break outcome,
                _ = tokio::time::sleep(keep_alive) => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "an in-progress ack failed");
                    }
                }
            }
        };
        match outcome {
            Ok(_) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(%receipt, error = %e, "a finished job's ack failed: it will run again");
                }
                if attempt > 1 {
                    self.forget_attempts(receipt).await;
                }
            }
            Err(error) => {
                let history = self.record_attempt(receipt, attempt, error).await;
                if attempt >= settings.max_attempts {
                    self.dead_letter(&key, &msg, receipt, history).await;
                } else {
                    let delay = settings.backoff(attempt, rand::random::<f64>());
                    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                        tracing::warn!(%receipt, error = %e, "a failed job's nak failed: it runs again after its ack wait");
                    }
                }
            }
        }
    }

    /// Appends an attempt's failure to the job's history; returns the whole
    /// history (what could be read of it).
    async fn record_attempt(&self, receipt: Uuid, attempt: u32, error: ErrorBody) -> Vec<Attempt> {
        let entry = Attempt {
            attempt,
            engine: self.names.engine_id.clone(),
            ended_at_ms: crate::queue::now_ms(),
            error,
        };
        self.append_attempt(receipt, entry).await
    }
}
