//! Helpers for queue tests with raw clients: fast retry settings, enqueue
//! and operator calls, and waits on a job's state or a queue's stats.

use serde_json::{Value, json};
use std::time::Duration;

use super::nats::NatsCluster;
use super::{RawClient, WAIT, test_config, wait_for};

pub fn is_result(v: &Value) -> bool {
    v["type"] == "invocationresult"
}

/// Fast retries for tests: 3 attempts, 20 ms backoff, 1 s lease.
pub fn fast_config() -> qmesh::Config {
    let mut c = test_config();
    let d = &mut c.queue.defaults;
    d.max_attempts = 3;
    d.backoff_initial = Duration::from_millis(20);
    d.backoff_max = Duration::from_millis(100);
    d.lease = Duration::from_secs(1);
    c
}

/// Engine `id` of cluster "test" with its queues on JetStream, with
/// [`fast_config`]'s settings (3 attempts, 20 ms backoff, 1 s lease).
pub fn jetstream_config(nats: &NatsCluster, id: &str) -> qmesh::Config {
    let mut c = nats.engine_config(fast_config(), id);
    c.cluster.queues = qmesh::config::BackendKind::Jetstream;
    c
}

/// The same for the real binary (`EngineProcess`): its config file, with
/// `queue_toml` (the lines of `[queue.defaults]` and any `[queue.queues.*]`).
pub fn jetstream_toml(nats: &NatsCluster, id: &str, queue_toml: &str) -> String {
    format!(
        "{}queues = \"jetstream\"\n[queue.defaults]\n{queue_toml}\n",
        nats.engine_toml(id)
    )
}

/// Messages left on cluster "test"'s job stream (acknowledged jobs are
/// removed, and so is a delayed job's schedule once it fired).
pub async fn jobs_left(nats: &NatsCluster) -> u64 {
    job_stream(nats).await.info().await.unwrap().state.messages
}

/// Enqueues with `queue::enqueue` (any of its options in `args`); returns
/// the receipt.
pub async fn enqueue_with(c: &mut RawClient, args: Value) -> String {
    let r = op(c, "queue::enqueue", args).await;
    r["receipt"]
        .as_str()
        .unwrap_or_else(|| panic!("no receipt: {r}"))
        .to_owned()
}

/// Milliseconds since the Unix epoch, as the engines count them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Enqueues with `action: enqueue`, as an SDK does; returns the receipt.
pub async fn enqueue(c: &mut RawClient, queue: &str, function_id: &str, data: Value) -> String {
    try_enqueue(c, queue, function_id, data)
        .await
        .unwrap_or_else(|e| panic!("no receipt: {e}"))
}

/// Enqueues with `action: enqueue`: `Ok(receipt)`, or `Err(error)` for a
/// refused enqueue.
pub async fn try_enqueue(
    c: &mut RawClient,
    queue: &str,
    function_id: &str,
    data: Value,
) -> Result<String, Value> {
    let id = uuid::Uuid::new_v4().to_string();
    c.send(
        json!({"type":"invokefunction","invocation_id":id,"function_id":function_id,"data":data,
        "action":{"type":"enqueue","queue":queue}}),
    )
    .await;
    let r = c
        .recv_until("the enqueue's answer", |v| {
            is_result(v) && v["invocation_id"] == id.as_str()
        })
        .await;
    match r["result"]["messageReceiptId"].as_str() {
        Some(receipt) => Ok(receipt.to_owned()),
        None => Err(r["error"].clone()),
    }
}

/// Waits until every job of `acknowledged` (by its payload's number) is in
/// `seen` (what the workers were given), within `within`.
pub async fn until_all_seen(
    seen: &std::sync::Mutex<std::collections::HashSet<u64>>,
    acknowledged: &[u64],
    within: Duration,
) {
    wait_for("every acknowledged job to run", within, async || {
        let seen = seen.lock().unwrap();
        let missing: Vec<&u64> = acknowledged.iter().filter(|i| !seen.contains(i)).collect();
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!("{} missing: {missing:?}", missing.len())),
        }
    })
    .await;
}

/// `queue::enqueue` of `base` with `args` added, which must be refused as
/// `INVALID_ARGUMENTS` with a message saying `says`.
pub async fn enqueue_refused(c: &mut RawClient, base: Value, args: &Value, says: &str) {
    let mut call = base;
    if let (Some(call), Some(args)) = (call.as_object_mut(), args.as_object()) {
        call.extend(args.clone());
    }
    let r = c.call("queue::enqueue", call).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{r}");
}

/// Calls an engine function that must succeed; returns its result.
pub async fn op(c: &mut RawClient, f: &str, data: Value) -> Value {
    let r = c.call(f, data).await;
    assert!(r.get("error").is_none(), "{f}: {r}");
    r["result"].clone()
}

/// Polls `queue::get` until the job reaches `state`.
pub async fn until_state(c: &mut RawClient, receipt: &str, state: &str) -> Value {
    wait_for(&format!("job to reach {state}"), WAIT, async || {
        let job = op(c, "queue::get", json!({"receipt": receipt})).await;
        if job["state"] == state {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await
}

/// Polls `queue::stats` of `queue` until `check` holds on it.
pub async fn until_stats(c: &mut RawClient, queue: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(&format!("stats of {queue}"), WAIT, async || {
        let stats = op(c, "queue::stats", json!({ "queue": queue })).await;
        if check(&stats) {
            Ok(stats)
        } else {
            Err(stats.to_string())
        }
    })
    .await
}

/// The next job delivered to `w`: its invocation frame.
pub async fn next_job(w: &mut RawClient) -> Value {
    w.recv_until("invoke", |v| v["type"] == "invokefunction")
        .await
}

/// Answers a delivered job with `result`.
pub async fn complete(w: &mut RawClient, inv: &Value, result: Value) {
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":inv["function_id"],"result":result}),
    )
    .await;
}

/// Answers a delivered job with an error.
pub async fn fail(w: &mut RawClient, inv: &Value, message: &str) {
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":inv["function_id"],
        "error":{"code":"invocation_failed","message":message,"stacktrace":"at handler"}}),
    )
    .await;
}

/// A fair queue's test load: one tenant's burst of `n` jobs for
/// `function_id` (`{"tenant", "i"}`), written 1,000 per `queue::enqueue_many`.
pub async fn enqueue_burst(
    c: &mut RawClient,
    queue: &str,
    function_id: &str,
    tenant: &str,
    n: u64,
) {
    for chunk in 0..n.div_ceil(1000) {
        let jobs: Vec<Value> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| json!({"data": {"tenant": tenant, "i": i}}))
            .collect();
        op(
            c,
            "queue::enqueue_many",
            json!({"queue": queue, "function_id": function_id, "jobs": jobs}),
        )
        .await;
    }
}

/// The lines of a job's log, as `queue::get` shows them.
pub fn log_lines(job: &Value) -> Vec<&str> {
    job["logs"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["line"].as_str()).collect())
        .unwrap_or_default()
}

/// The cluster's job stream (`qmesh_test_jobs`), through a client of its own.
pub async fn job_stream(nats: &NatsCluster) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats.urls[0].as_str()).await.unwrap();
    async_nats::jetstream::new(client)
        .get_stream("qmesh_test_jobs")
        .await
        .unwrap()
}
