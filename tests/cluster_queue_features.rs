//! What the local queue offers, on the cluster's JetStream queues
//! (`[cluster] queues = "jetstream"`), across engines on a 3-node NATS
//! cluster: delayed jobs (`delay` / `run_at`) run at their time, not
//! before, on another engine than the one that took them, which may be
//! dead by then; higher priorities run first, by band.
//!
//! Times are asserted against the test's clock, which the engines and the
//! NATS servers share (one machine): a job is never received before its
//! due time, and within a bound after it.

mod common;

use common::launcher::EngineProcess;
use common::nats::NatsCluster;
use common::queue::{
    complete, enqueue_with, jetstream_config, jetstream_toml, jobs_left, next_job, now_ms,
};
use common::{RawClient, TestEngine, WAIT, wait_until};
use serde_json::json;

/// How late after its due time a delayed job may reach its worker (the
/// schedule fires within milliseconds; the rest is the pull and the call,
/// on a loaded two-core machine).
const LATE_BY_AT_MOST_MS: u64 = 1_500;

/// The job stream as engines made it before delayed jobs: the engines
/// must update it in place.
async fn old_job_stream(nats: &NatsCluster) {
    use async_nats::jetstream::stream;
    let client = async_nats::connect(nats.urls[0].as_str()).await.unwrap();
    async_nats::jetstream::new(client)
        .create_stream(stream::Config {
            name: "qmesh_test_jobs".into(),
            subjects: vec!["qmesh.test.jobs.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: 3,
            duplicate_window: std::time::Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_run_at_their_time_after_the_engine_that_took_them_died() {
    let nats = NatsCluster::start().await;
    old_job_stream(&nats).await;
    let mut a = EngineProcess::start_with_config(&jetstream_toml(&nats, "a", ""));
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::later").await;
    let mut producer = RawClient::worker(&a.url, "producer").await;

    // The later job first: they run by their time, not by enqueue order.
    let before = now_ms();
    let run_at = before + 2_500;
    let at_time = enqueue_with(
        &mut producer,
        json!({"queue": "later", "function_id": "svc::later", "data": {"by": "run_at"},
               "run_at": run_at}),
    )
    .await;
    let soon = enqueue_with(
        &mut producer,
        json!({"queue": "later", "function_id": "svc::later", "data": {"by": "delay"},
               "delay": "1200ms", "idempotency_key": "soon"}),
    )
    .await;
    // The same key again: the first job's receipt, and it runs once.
    let again = producer
        .call_ok(
            "queue::enqueue",
            json!({"queue": "later", "function_id": "svc::later", "data": {"by": "again"},
                   "delay": "1ms", "idempotency_key": "soon"}),
        )
        .await;
    assert_eq!(again["receipt"], soon.as_str(), "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    // Both jobs wait in NATS: the engine that took them can die.
    a.kill();

    let due_soon = before + 1_200;
    let first = next_job(&mut worker).await;
    let got = now_ms();
    assert_eq!(first["data"], json!({"by": "delay"}), "{first}");
    assert_eq!(
        first["metadata"]["job"]["receipt"],
        soon.as_str(),
        "{first}"
    );
    assert_eq!(first["metadata"]["job"]["attempt"], 1, "{first}");
    assert!(got >= due_soon, "ran {} ms early", due_soon - got);
    assert!(
        got <= due_soon + LATE_BY_AT_MOST_MS,
        "ran {} ms late",
        got - due_soon
    );
    complete(&mut worker, &first, json!(null)).await;

    let second = next_job(&mut worker).await;
    let got = now_ms();
    assert_eq!(second["data"], json!({"by": "run_at"}), "{second}");
    assert_eq!(second["metadata"]["job"]["receipt"], at_time.as_str());
    assert!(got >= run_at, "ran {} ms early", run_at - got);
    assert!(
        got <= run_at + LATE_BY_AT_MOST_MS,
        "ran {} ms late",
        got - run_at
    );
    complete(&mut worker, &second, json!(null)).await;
    // Nothing else runs (the duplicate never did), and the stream is empty:
    // both schedules fired and were removed, both jobs acknowledged.
    // (The duplicate, due at once, would have run before the second.)
    wait_until("both acks", WAIT, async || jobs_left(&nats).await == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_bands_run_first_on_another_engine() {
    let nats = NatsCluster::start().await;
    // One job at a time: the order of starts is the order of priorities.
    let config = |id: &str| jetstream_toml(&nats, id, "[queue.queues.ranked]\nconcurrency = 1");
    let mut a = EngineProcess::start_with_config(&config("a"));
    let b = EngineProcess::start_with_config(&config("b"));
    let mut producer = RawClient::worker(&a.url, "producer").await;
    // (name, priority), in enqueue order; bands: 0, 1, 8, 2, 0, 8, 4.
    let jobs = [
        ("a", 0),
        ("b", 1),
        ("f", 150),
        ("d", 3),
        ("e", 0),
        ("c", 200),
        ("g", 10),
    ];
    for (name, priority) in jobs {
        enqueue_with(
            &mut producer,
            json!({"queue": "ranked", "function_id": "svc::ranked", "data": {"name": name},
                   "priority": priority}),
        )
        .await;
    }
    // Every job waits in NATS, each band on its own subject: the engine that
    // took them can die.
    a.kill();

    // A worker comes to B: it gets them highest band first, and within a
    // band in enqueue order (150 and 200 share band 8).
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::ranked").await;
    let mut order = Vec::new();
    for _ in jobs {
        let inv = next_job(&mut worker).await;
        order.push(inv["data"]["name"].as_str().unwrap().to_owned());
        complete(&mut worker, &inv, json!(null)).await;
    }
    assert_eq!(order, ["f", "c", "g", "d", "b", "a", "e"]);
    wait_until("every ack", WAIT, async || jobs_left(&nats).await == 0).await;
}
