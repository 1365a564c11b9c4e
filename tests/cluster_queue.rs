//! Durable queues on the cluster's JetStream (`[cluster] queues =
//! "jetstream"`): two engines on a 3-node NATS cluster. A job enqueued on
//! one engine runs on a worker of the other; a failing job is retried, then
//! dead-lettered with its history; an idempotency key de-duplicates; and a
//! kill -9 of the engine running jobs under load loses none that was
//! acknowledged.

mod common;

use common::launcher::EngineProcess;
use common::nats::NatsCluster;
use common::queue::{enqueue, fail, jetstream_config, jetstream_toml, jobs_left, next_job, op};
use common::{RawClient, TestEngine, WAIT, wait_for, wait_until};
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_on_one_engine_runs_on_a_worker_of_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::work").await;

    let mut producer = RawClient::worker(&a.url, "producer").await;
    let receipt = enqueue(&mut producer, "jobs", "svc::work", json!({"n": 1})).await;

    let inv = next_job(&mut worker).await;
    assert_eq!(inv["data"], json!({"n": 1}), "{inv}");
    assert_eq!(inv["metadata"]["job"]["receipt"], receipt.as_str(), "{inv}");
    assert_eq!(inv["metadata"]["job"]["attempt"], 1, "{inv}");
    common::queue::complete(&mut worker, &inv, json!({"ok": true})).await;
    // Acknowledged: the work-queue stream lets go of it.
    wait_until("the job's ack", WAIT, async || jobs_left(&nats).await == 0).await;
}

/// A handler beating keeps its job past its lease (1 s here), as on one
/// engine; a job that stops beating times out a lease after its last beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_running_past_its_lease() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "long").await;
    worker.register_function("long::run").await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    let receipt = enqueue(&mut producer, "long", "long::run", json!({"n": 1})).await;

    let inv = next_job(&mut worker).await;
    let beat = json!({"receipt": receipt, "extend": "1s"});
    // Three leases long, beating every 400 ms (the handler's work between beats).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(3_000) {
        let r = worker.call("queue::heartbeat", beat.clone()).await;
        assert_eq!(r["result"]["attempt"], 1, "{r}");
        assert_eq!(r["result"]["lease_ms"], 1_000, "{r}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    common::queue::complete(&mut worker, &inv, json!("done")).await;
    // Acknowledged by its one attempt: a lease that ran out would have
    // delivered it again, and nobody answers a second delivery.
    wait_until("the job's ack", WAIT, async || jobs_left(&nats).await == 0).await;

    // A job whose handler stops beating times out one lease after its last beat.
    let receipt = enqueue(&mut producer, "long", "long::run", json!({"n": 2})).await;
    let first = next_job(&mut worker).await;
    let r = worker
        .call(
            "queue::heartbeat",
            json!({"receipt": receipt, "extend": 500}),
        )
        .await;
    assert!(r["error"].is_null(), "{r}");
    let again = next_job(&mut worker).await;
    assert_eq!(again["metadata"]["job"]["attempt"], 2, "{again}");
    assert_ne!(again["invocation_id"], first["invocation_id"]);
    common::queue::complete(&mut worker, &again, json!("done")).await;

    // A job not running here is refused.
    let r = worker
        .call(
            "queue::heartbeat",
            json!({"receipt": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_then_dead_lettered_with_its_history() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::flaky").await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    let receipt = enqueue(&mut producer, "flaky", "svc::flaky", json!({"n": 2})).await;

    for attempt in 1..=3 {
        let inv = next_job(&mut worker).await;
        assert_eq!(inv["metadata"]["job"]["attempt"], attempt, "{inv}");
        fail(&mut worker, &inv, &format!("boom {attempt}")).await;
    }

    // Read on the engine that did not run it.
    let letter = wait_for("the dead letter", WAIT, async || {
        let dead = op(
            &mut producer,
            "engine::queue::dlq_messages",
            json!({"queue": "flaky"}),
        )
        .await;
        match dead.as_array().map(Vec::as_slice) {
            Some([letter]) => Ok(letter.clone()),
            _ => Err(dead.to_string()),
        }
    })
    .await;
    assert_eq!(letter["id"], receipt.as_str(), "{letter}");
    assert_eq!(letter["payload"], json!({"n": 2}), "{letter}");
    assert_eq!(letter["retries"], 3, "{letter}");
    let messages: Vec<&str> = letter["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error"]["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(messages, ["boom 1", "boom 2", "boom 3"], "{letter}");
    let topics = op(&mut producer, "engine::queue::dlq_topics", json!({})).await;
    assert_eq!(topics[0]["topic"], "flaky", "{topics}");
    assert_eq!(topics[0]["message_count"], 1, "{topics}");
    wait_until("the dead job's ack", WAIT, async || {
        jobs_left(&nats).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_deduplicates_across_engines() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut on_a = RawClient::worker(&a.url, "producer-a").await;
    let mut on_b = RawClient::worker(&b.url, "producer-b").await;
    let job = |k: u32| {
        json!({"queue": "once", "function_id": "svc::once", "data": {"k": k},
        "idempotency_key": "order-42"})
    };

    let first = op(&mut on_a, "queue::enqueue", job(1)).await;
    let again = op(&mut on_b, "queue::enqueue", job(2)).await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(first["receipt"], again["receipt"], "{first} {again}");
    assert_eq!(jobs_left(&nats).await, 1, "one job is stored");

    // A later job without a key comes next: the duplicate never runs.
    op(
        &mut on_a,
        "queue::enqueue",
        json!({"queue": "once", "function_id": "svc::once", "data": {"k": 3}}),
    )
    .await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::once").await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let inv = next_job(&mut worker).await;
        seen.push(inv["data"]["k"].as_u64().unwrap());
        common::queue::complete(&mut worker, &inv, json!(null)).await;
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 3]);
    wait_until("both acks", WAIT, async || jobs_left(&nats).await == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_enqueued_at_once_on_two_engines_is_one_job() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut on_a = RawClient::worker(&a.url, "producer-a").await;
    let mut on_b = RawClient::worker(&b.url, "producer-b").await;
    let job = json!({"queue": "race", "function_id": "svc::race", "data": {},
                     "idempotency_key": "order-7"});
    // Each must be answered, none refused because another copy is being
    // stored at that moment.
    let (from_a, from_b) = tokio::join!(
        on_a.calls_at_once("queue::enqueue", job.clone(), 10),
        on_b.calls_at_once("queue::enqueue", job.clone(), 10),
    );
    let all: Vec<&serde_json::Value> = from_a.iter().chain(&from_b).collect();
    let receipts: HashSet<&str> = all.iter().map(|r| r["receipt"].as_str().unwrap()).collect();
    assert_eq!(receipts.len(), 1, "{all:?}");
    let firsts = all.iter().filter(|r| r["duplicate"] == false).count();
    assert_eq!(firsts, 1, "one of them stored it: {all:?}");
    assert_eq!(jobs_left(&nats).await, 1, "one job is stored");
}

/// A worker that serves `svc::crash` on `first`, and on `then` once its
/// socket to `first` ends; it records every payload `i` it was given.
async fn reconnecting_worker(first: String, then: String, seen: Arc<Mutex<HashSet<u64>>>) {
    for url in [first, then] {
        let mut w = RawClient::worker(&url, "crash-worker").await;
        w.register_function("svc::crash").await;
        while let Some(v) = w.recv().await {
            if v["type"] != "invokefunction" {
                continue;
            }
            if let Some(i) = v["data"]["i"].as_u64() {
                seen.lock().unwrap().insert(i);
            }
            w.send(
                json!({"type": "invocationresult", "invocation_id": v["invocation_id"],
                "function_id": v["function_id"], "result": null}),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_runs_after_a_kill_9_of_the_engine_running_them() {
    const JOBS: u64 = 300;
    let nats = NatsCluster::start().await;
    // Jobs held by a dead engine come back after its 2 s lease (the ack wait).
    let config = |id: &str| jetstream_toml(&nats, id, "lease = \"2s\"\nmax_attempts = 5");
    let a = EngineProcess::start_with_config(&config("a"));
    let mut b = EngineProcess::start_with_config(&config("b"));

    let seen = Arc::new(Mutex::new(HashSet::new()));
    let worker = tokio::spawn(reconnecting_worker(
        b.url.clone(),
        a.url.clone(),
        seen.clone(),
    ));
    let mut producer = RawClient::worker(&a.url, "producer").await;
    let producing = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0..JOBS {
            enqueue(&mut producer, "crash", "svc::crash", json!({"i": i})).await;
            acknowledged.push(i);
        }
        acknowledged
    });

    // Engine B runs jobs under load; it dies mid-run.
    wait_until("engine B runs jobs", WAIT, async || {
        seen.lock().unwrap().len() >= 30
    })
    .await;
    b.kill();

    let acknowledged = producing.await.unwrap();
    assert_eq!(acknowledged.len() as u64, JOBS);
    common::queue::until_all_seen(&seen, &acknowledged, Duration::from_secs(30)).await;
    worker.abort();
    drop(a);
}
