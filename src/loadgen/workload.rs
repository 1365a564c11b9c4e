//! The operations `qmesh bench` measures, and the trivial workers they need.
//!
//! - invoke: a sync call, timed from send to result (the worker echoes its input);
//! - enqueue: a durable enqueue, timed from send to the engine's acknowledgement
//!   (after fsync); the function has no worker, so the jobs stay queued;
//! - e2e: an enqueue whose job runs on a worker in this process, timed from
//!   sending the enqueue to the handler starting. Each operation waits for its
//!   job, so `in_flight` bounds the jobs outstanding.

use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use crate::client::{Client, ClientError, ClientOptions};

/// The echo function the invoke workload serves unless told to call another.
pub const ECHO: &str = "qmesh-bench::echo";
/// A function nobody serves: enqueue-only jobs wait for it, spending nothing.
pub const SINK: &str = "qmesh-bench::sink";
/// Default queues of the enqueue and e2e workloads.
pub const ENQUEUE_QUEUE: &str = "qmesh-bench-enqueue";
pub const E2E_QUEUE: &str = "qmesh-bench-e2e";

/// `fields` plus a `pad` string that brings the JSON text to `size` bytes
/// (when `size` is larger than the fields alone).
pub fn payload(mut fields: Map<String, Value>, size: usize) -> Value {
    fields.insert("pad".into(), Value::String(String::new()));
    let base = serde_json::to_string(&fields).map_or(0, |s| s.len());
    let pad = "x".repeat(size.saturating_sub(base));
    fields.insert("pad".into(), Value::String(pad));
    Value::Object(fields)
}

/// The payload of operation `seq`.
pub fn numbered(seq: u64, size: usize) -> Value {
    let mut m = Map::new();
    m.insert("n".into(), json!(seq));
    payload(m, size)
}

/// A worker connection serving [`ECHO`] (its input back, without the
/// engine-added `_caller_worker_id`); returned once it is announced.
pub async fn echo_worker(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
    let worker = Client::connect_with(url, options).await?;
    worker.register_function(ECHO, |mut input: Value| async move {
        if let Some(m) = input.as_object_mut() {
            m.remove("_caller_worker_id");
        }
        Ok(input)
    })?;
    worker.announce("qmesh-bench")?;
    Ok(worker)
}

/// One sync call; its latency.
pub async fn invoke(
    client: &Client,
    function_id: &str,
    data: Value,
) -> Result<Duration, ClientError> {
    let sent = Instant::now();
    client.call(function_id, data).await?;
    Ok(sent.elapsed())
}

/// One enqueue; the time until it was acknowledged.
pub async fn enqueue(
    client: &Client,
    queue: &str,
    function_id: &str,
    data: Value,
) -> Result<Duration, ClientError> {
    let sent = Instant::now();
    client.enqueue(queue, function_id, data).await?;
    Ok(sent.elapsed())
}

/// Joins e2e jobs to the operations waiting for them. Each run has its own id
/// and function id, so jobs left over from another run are never mistaken for
/// this one's.
pub struct Tracker {
    run: u64,
    function_id: String,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Instant>>>,
}

impl Tracker {
    pub fn new() -> Arc<Tracker> {
        let run = uuid::Uuid::new_v4().as_u64_pair().0;
        Arc::new(Tracker {
            run,
            function_id: format!("qmesh-bench::e2e-{:08x}", run as u32),
            waiting: Mutex::default(),
        })
    }

    /// The function the jobs of this run call.
    pub fn function_id(&self) -> &str {
        &self.function_id
    }

    /// A worker connection that runs this run's jobs; returned once announced.
    pub async fn worker(
        self: &Arc<Self>,
        url: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let worker = Client::connect_with(url, options).await?;
        let me = self.clone();
        worker.register_function(self.function_id.clone(), move |input: Value| {
            me.started(&input);
            async { Ok(Value::Null) }
        })?;
        worker.announce("qmesh-bench")?;
        Ok(worker)
    }

    fn started(&self, input: &Value) {
        let now = Instant::now();
        if input["run"].as_u64() != Some(self.run) {
            return;
        }
        let Some(n) = input["n"].as_u64() else { return };
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&n);
        // A second delivery of a job (at least once) finds no waiter.
        if let Some(tx) = waiter {
            let _ = tx.send(now);
        }
    }

    /// Enqueues job `seq` and waits (at most `timeout` after the
    /// acknowledgement) for its handler to start; the time from sending the
    /// enqueue to that start.
    pub async fn enqueue_and_wait(
        &self,
        client: &Client,
        queue: &str,
        seq: u64,
        size: usize,
        timeout: Duration,
    ) -> Result<Duration, ClientError> {
        let mut m = Map::new();
        m.insert("n".into(), json!(seq));
        m.insert("run".into(), json!(self.run));
        let data = payload(m, size);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(seq, tx);
        let sent = Instant::now();
        let outcome = match client.enqueue(queue, &self.function_id, data).await {
            Ok(_) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(started)) => Ok(started.saturating_duration_since(sent)),
                Ok(Err(_)) => Err(ClientError::Closed),
                Err(_) => Err(ClientError::Timeout(timeout)),
            },
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            self.waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&seq);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_padded_to_the_requested_size() {
        for size in [64, 100, 1024, 65536] {
            let p = numbered(123_456, size);
            assert_eq!(serde_json::to_string(&p).unwrap().len(), size);
            assert_eq!(p["n"], 123_456);
        }
        // Smaller than the fields: no padding, never truncated.
        let small = numbered(7, 1);
        assert_eq!(small["pad"], "");
    }

    #[tokio::test]
    async fn the_tracker_wakes_only_its_own_jobs() {
        let t = Tracker::new();
        let (tx, rx) = oneshot::channel();
        t.waiting.lock().unwrap().insert(5, tx);
        t.started(&json!({"run": t.run.wrapping_add(1), "n": 5}));
        assert_eq!(t.waiting.lock().unwrap().len(), 1, "another run's job");
        t.started(&json!({"run": t.run, "n": 5}));
        assert!(rx.await.is_ok());
        assert!(t.function_id().starts_with("qmesh-bench::e2e-"));
    }
}
