//! `rate` and `fair_by` on the cluster's JetStream queues (`[cluster]
//! queues = "jetstream"`), across two engines on a 3-node NATS cluster: a
//! queue's rate holds across the whole cluster with workers on both
//! engines (one token bucket in NATS, not one per engine), also on a FIFO
//! queue, and a fair queue starts a lone tenant's jobs in turns with a
//! flooding tenant's (`rate_per_key` and a fair FIFO queue are refused).
//!
//! Starts are timed at the workers, on the test's clock. The bounds are
//! what the README states, with room for a loaded two-core machine, and
//! still far from what one bucket per engine would give.

mod common;

use common::nats::NatsCluster;
use common::queue::{
    complete, enqueue, enqueue_burst, enqueue_with, jetstream_config, next_job, now_ms, op,
    until_stats,
};
use common::{RawClient, TestEngine};
use serde_json::{Value, json};
use sha2::Digest;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A job's start: when, on which engine, its payload.
type Start = (u64, &'static str, Value);

/// One engine's worker: completes every job it is given at once, noting
/// when it got it and where, until `total` jobs started on all engines.
async fn run_and_time(
    mut worker: RawClient,
    engine: &'static str,
    starts: Arc<Mutex<Vec<Start>>>,
    total: usize,
) {
    while starts.lock().unwrap().len() < total {
        // Short waits, so a worker stops soon after the other's last job.
        let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), worker.recv()).await
        else {
            continue;
        };
        let frame = frame.unwrap_or_else(|| panic!("{engine}: the worker's socket ended"));
        if frame["type"] == "invokefunction" {
            starts
                .lock()
                .unwrap()
                .push((now_ms(), engine, frame["data"].clone()));
            complete(&mut worker, &frame, json!(null)).await;
        }
    }
}

/// A worker of `function_id` on each engine, answering every job, until
/// `total` jobs started (within a minute): each start in time order.
async fn starts_on_both(a: &str, b: &str, function_id: &str, total: usize) -> Vec<Start> {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut runs = Vec::new();
    for (url, engine) in [(a, "a"), (b, "b")] {
        let mut worker = RawClient::worker(url, &format!("worker-{engine}")).await;
        worker.register_function(function_id).await;
        runs.push(tokio::spawn(run_and_time(
            worker,
            engine,
            starts.clone(),
            total,
        )));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for run in runs {
            run.await.unwrap();
        }
    })
    .await
    .expect("every job started within a minute");
    let mut starts = starts.lock().unwrap().clone();
    starts.sort_by_key(|(t, _, _)| *t);
    assert_eq!(starts.len(), total, "each job started once: {starts:?}");
    starts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_holds_across_the_cluster_with_workers_on_two_engines() {
    // 10 starts a second; concurrency far above it, so only the rate paces.
    const RATE: usize = 10;
    const JOBS: usize = 60;
    let nats = NatsCluster::start().await;
    let config = |id: &str| {
        let mut c = jetstream_config(&nats, id);
        c.queue.queues.insert(
            "limited".into(),
            toml::from_str("rate = \"10/1s\"\nconcurrency = 50").unwrap(),
        );
        c
    };
    let a = TestEngine::start_with(config("a")).await;
    let b = TestEngine::start_with(config("b")).await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    let jobs: Vec<_> = (0..JOBS).map(|i| json!({"data": {"i": i}})).collect();
    op(
        &mut producer,
        "queue::enqueue_many",
        json!({"queue": "limited", "function_id": "svc::limited", "jobs": jobs}),
    )
    .await;
    // Every job waits in NATS until a worker comes, one on each engine.
    let stats = until_stats(&mut producer, "limited", |s| {
        s["waiting_for_worker"] == JOBS
    })
    .await;
    assert_eq!(stats["settings"]["rate"], "10/1s", "{stats}");
    // At the rate, 60 jobs take about 5 s; far more is a stall.
    let starts = starts_on_both(&a.url, &b.url, "svc::limited", JOBS).await;
    for engine in ["a", "b"] {
        assert!(
            starts.iter().any(|(_, e, _)| *e == engine),
            "no job started on {engine}: both pull, so both share the bucket"
        );
    }
    let times: Vec<u64> = starts.iter().map(|(t, _, _)| *t).collect();
    // A full bucket (10) at once, then 10 a second: 50 more take 5 s, less
    // the 250 ms of tokens an engine may hold (2.5 jobs). One bucket per
    // engine would start them all in about 2 s.
    let span = times[JOBS - 1] - times[0];
    assert!(
        span >= 4_000,
        "{JOBS} jobs at {RATE}/s started within {span} ms: {times:?}"
    );
    // In any second at most a full bucket, a second's refill and the
    // hold's 2.5 (22.5 in all; the README's bound), with 4.5 more for
    // deliveries bunched by a loaded machine. One bucket per engine gives
    // 40 in the first second.
    let on_b = starts.iter().filter(|(_, e, _)| *e == "b").count();
    eprintln!("{JOBS} jobs in {span} ms, {on_b} on b");
    for (i, t) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|u| **u < t + 1_000).count();
        assert!(
            within <= 27,
            "{within} jobs started in the second from {t}: {times:?}"
        );
    }
    // Every job ran and was acknowledged.
    until_stats(&mut producer, "limited", |s| {
        s["ready"] == 0 && s["running"] == 0 && s["waiting_for_worker"] == 0
    })
    .await;
}

/// The fair lane of a key, as the README says the engines pick it (the
/// key's SHA-256, its first 8 bytes big-endian, modulo 16 lanes).
fn fair_lane(key: &str) -> u64 {
    let digest = sha2::Sha256::digest(key.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap()) % 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_queue_starts_a_lone_tenant_in_turns_with_a_flood_on_another_engine() {
    const FLOOD: u64 = 300;
    let nats = NatsCluster::start().await;
    let config = |id: &str| {
        let mut c = jetstream_config(&nats, id);
        c.queue.queues.insert(
            "shared".into(),
            toml::from_str("fair_by = \"tenant\"\nconcurrency = 1").unwrap(),
        );
        c.queue.queues.insert(
            "per_key".into(),
            toml::from_str("fair_by = \"tenant\"\nrate_per_key = \"5/1s\"").unwrap(),
        );
        c.queue.queues.insert(
            "fair_fifo".into(),
            toml::from_str("fair_by = \"tenant\"\nordering = \"fifo\"\ngroup_field = \"tenant\"")
                .unwrap(),
        );
        c
    };
    let a = TestEngine::start_with(config("a")).await;
    let b = TestEngine::start_with(config("b")).await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    // Not offered yet: refused, never run without the setting's meaning.
    for queue in ["per_key", "fair_fifo"] {
        let r = producer
            .call(
                "queue::enqueue",
                json!({"queue": queue, "function_id": "fair::run", "data": {"tenant": "t"}}),
            )
            .await;
        assert_eq!(r["error"]["code"], "not_supported", "{queue}: {r}");
    }
    // As on one engine, a fair key is a string or number.
    let r = producer
        .call(
            "queue::enqueue",
            json!({"queue": "shared", "function_id": "fair::run", "data": {"tenant": [1]}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
    // A tenant whose lane is not the flood's (one in 16 would share it, and
    // wait behind the flood: the approximation the README states).
    let lone = (0..)
        .map(|i| format!("lone-{i}"))
        .find(|k| fair_lane(k) != fair_lane("flood"))
        .unwrap();
    // The flood first, then the lone tenant's three jobs, then one urgent
    // job of the flood's tenant: its band is asked first, fair lanes or not.
    enqueue_burst(&mut producer, "shared", "fair::run", "flood", FLOOD - 1).await;
    for i in 0..3 {
        enqueue(
            &mut producer,
            "shared",
            "fair::run",
            json!({"tenant": lone, "i": i}),
        )
        .await;
    }
    enqueue_with(
        &mut producer,
        json!({"queue": "shared", "function_id": "fair::run",
               "data": {"tenant": "flood", "i": "urgent"}, "priority": 200}),
    )
    .await;
    // Counted over every lane, as one queue.
    until_stats(&mut producer, "shared", |s| {
        s["waiting_for_worker"] == FLOOD + 3
    })
    .await;
    // A job's fair key, as on one engine.
    let page = op(
        &mut producer,
        "queue::peek",
        json!({"queue": "shared", "limit": 1}),
    )
    .await;
    let receipt = page["jobs"][0]["receipt"].as_str().unwrap().to_owned();
    let job = op(&mut producer, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["fair_key"], "flood", "{job}");

    // One job at a time on B: the lone tenant's jobs alternate with the
    // flood's, instead of waiting for its 300.
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("fair::run").await;
    let urgent = next_job(&mut worker).await;
    assert_eq!(urgent["data"]["i"], "urgent", "{urgent}");
    complete(&mut worker, &urgent, json!(null)).await;
    let mut order: Vec<String> = Vec::new();
    while order.iter().filter(|t| **t == lone).count() < 3 {
        assert!(order.len() < 20, "the lone tenant waits: {order:?}");
        let inv = next_job(&mut worker).await;
        order.push(inv["data"]["tenant"].as_str().unwrap().to_owned());
        complete(&mut worker, &inv, json!(null)).await;
    }
    eprintln!("starts: {order:?}");
    // In turns: at most one flood job between two of the lone tenant's
    // (two at the start: the pass that found the lone lane may have begun
    // at the flood's), where enqueue order would put all 300 first.
    assert!(
        order.len() <= 8,
        "the lone tenant waited {} starts: {order:?}",
        order.len()
    );
    // Every lane counted: what is left is the flood's rest (one of them
    // may be delivered to the worker, which no longer answers).
    let left = FLOOD + 3 - 1 - order.len() as u64;
    until_stats(&mut producer, "shared", |s| {
        s["ready"].as_u64().unwrap() + s["running"].as_u64().unwrap() == left
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_paces_a_fifo_queue_across_engines_and_keeps_each_group_in_order() {
    const GROUPS: u64 = 3;
    const PER_GROUP: u64 = 5;
    const JOBS: usize = (GROUPS * PER_GROUP) as usize;
    let nats = NatsCluster::start().await;
    let config = |id: &str| {
        let mut c = jetstream_config(&nats, id);
        c.queue.queues.insert(
            "paced".into(),
            toml::from_str(
                "rate = \"5/1s\"\nordering = \"fifo\"\ngroup_field = \"account\"\nconcurrency = 2",
            )
            .unwrap(),
        );
        c
    };
    let a = TestEngine::start_with(config("a")).await;
    let b = TestEngine::start_with(config("b")).await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            enqueue(
                &mut producer,
                "paced",
                "svc::paced",
                json!({"account": format!("g{g}"), "i": i}),
            )
            .await;
        }
    }
    let starts = starts_on_both(&a.url, &b.url, "svc::paced", JOBS).await;
    // A full bucket (5), then 5 a second: 10 more take 2 s, less the
    // 1.25 jobs of the hold; without the rate, well under a second.
    let span = starts[JOBS - 1].0 - starts[0].0;
    eprintln!("{JOBS} jobs in {span} ms");
    assert!(span >= 1_500, "{JOBS} jobs at 5/s in {span} ms: {starts:?}");
    // Each group in enqueue order, whichever engine ran its jobs.
    for g in 0..GROUPS {
        let order: Vec<u64> = starts
            .iter()
            .filter(|(_, _, d)| d["account"] == format!("g{g}"))
            .map(|(_, _, d)| d["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            order,
            (0..PER_GROUP).collect::<Vec<_>>(),
            "g{g}: {starts:?}"
        );
    }
}
