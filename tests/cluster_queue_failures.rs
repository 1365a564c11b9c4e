//! JetStream queues (`[cluster] queues = "jetstream"`) when NATS fails: one
//! node of three killed while jobs are enqueued and run loses no acknowledged
//! job; the whole NATS cluster down refuses enqueues with a clear error
//! (never a receipt for what is not replicated), and once it is back
//! enqueues are taken again and every job acknowledged before runs.

mod common;

use common::nats::NatsCluster;
use common::queue::fast_config;
use common::{RawClient, TestEngine, wait_until};
use qmesh::config::BackendKind;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Long enough for JetStream to elect new leaders and for the jobs held by
/// a lost consumer leader to come back.
const RECOVERY: Duration = Duration::from_secs(60);

/// Engine `id` with its queues on JetStream; attempts to spare, so a
/// delivery lost in a failover never dead-letters a job.
fn engine_config(nats: &NatsCluster, id: &str) -> qmesh::Config {
    let mut c = nats.engine_config(fast_config(), id);
    c.cluster.queues = BackendKind::Jetstream;
    c.queue.defaults.max_attempts = 20;
    c
}

async fn try_enqueue(c: &mut RawClient, i: u64) -> Result<String, Value> {
    common::queue::try_enqueue(c, "jobs", "svc::work", json!({"i": i})).await
}

/// A worker of `svc::work` on `engine` that records every `i` it runs.
async fn recording_worker(engine: &TestEngine) -> Arc<Mutex<HashSet<u64>>> {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut worker = RawClient::worker(&engine.url, "worker").await;
    worker.register_function("svc::work").await;
    let record = seen.clone();
    tokio::spawn(worker.serve_until_closed(move |data| {
        if let Some(i) = data["i"].as_u64() {
            record.lock().unwrap().insert(i);
        }
        Value::Null
    }));
    seen
}

async fn until_all_ran(seen: &Mutex<HashSet<u64>>, acknowledged: &[u64]) {
    common::queue::until_all_seen(seen, acknowledged, RECOVERY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_job_is_lost_when_one_nats_node_of_three_dies() {
    const JOBS: u64 = 400;
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let seen = recording_worker(&b).await;
    a.wait_for_providers("svc::work", 1).await;

    let mut producer = RawClient::worker(&a.url, "producer").await;
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut i = 0;
    // Until JOBS are acknowledged: the cluster keeps taking enqueues on two
    // nodes, once the engine's client has moved to one of them.
    wait_until("enqueues acknowledged on two nodes", RECOVERY, async || {
        if i == JOBS / 4 {
            nats.kill(0);
        }
        match try_enqueue(&mut producer, i).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => refused.push(e),
        }
        i += 1;
        acknowledged.len() as u64 == JOBS
    })
    .await;
    // A refusal while the client reconnects or the stream moves its leader
    // is allowed, if it says why.
    for e in &refused {
        assert_eq!(e["code"], "enqueue_error", "{e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains("no receipt is given"), "{e}");
    }
    until_all_ran(&seen, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_refuses_enqueues_clearly_until_nats_returns() {
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    // Acknowledged, not run yet: no worker serves the function.
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        try_enqueue(&mut producer, i).await.expect("a receipt");
        acknowledged.push(i);
    }

    nats.kill_all();
    let refused = try_enqueue(&mut producer, 100)
        .await
        .expect_err("no receipt while NATS is down");
    assert_eq!(refused["code"], "enqueue_error", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(message.contains("no receipt is given"), "{refused}");

    nats.restart(&[0, 1, 2]).await;
    let mut next = 200;
    wait_until("enqueues are taken again", RECOVERY, async || {
        next += 1;
        match try_enqueue(&mut producer, next).await {
            Ok(_) => {
                acknowledged.push(next);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    // Every job acknowledged before the outage, and the first after it, runs.
    let seen = recording_worker(&a).await;
    until_all_ran(&seen, &acknowledged).await;
}
