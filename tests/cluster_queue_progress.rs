//! What a running job's handler reports (`queue::progress`, `queue::log`),
//! `queue::throttle` and job expiry (`expires_in`/`expires_at`) on the
//! cluster's JetStream queues, across two engines on a 3-node NATS
//! cluster, with the local queue's shapes and codes: reports made on the
//! engine running the job are read from the other one while it runs,
//! between its attempts and in its dead letter; a throttle made on one
//! engine holds the other's worker (and leaves a paused queue paused, and
//! a resume within it holds the queue to its end); a job whose expiry
//! passes while it waits is dead-lettered as expired, a delayed one too.

mod common;

use common::nats::{NatsCluster, keys};
use common::queue::{
    complete, enqueue, enqueue_refused, enqueue_with, fail, jetstream_config, job_stream,
    log_lines, next_job, now_ms, op, until_state,
};
use common::{RawClient, TestEngine, WAIT, wait_until};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_logs_reported_on_one_engine_are_read_from_the_other() {
    let nats = NatsCluster::start().await;
    let bounded = |id: &str| {
        let mut c = jetstream_config(&nats, id);
        c.queue.defaults.max_log_lines = 3;
        c
    };
    let a = TestEngine::start_with(bounded("a")).await;
    let b = TestEngine::start_with(bounded("b")).await;
    let mut w = RawClient::worker(&b.url, "w").await;
    w.register_function("rep::run").await;
    let mut c = RawClient::worker(&a.url, "producer").await;
    let receipt = enqueue(&mut c, "reports", "rep::run", json!({"n": 1})).await;

    // The handler reports on engine b, which runs the job.
    let inv = next_job(&mut w).await;
    for p in [json!(10), json!({"done": 5, "of": 10})] {
        let r = w
            .call_ok(
                "queue::progress",
                json!({"receipt": receipt, "progress": p}),
            )
            .await;
        assert_eq!(r["progress"], p, "{r}");
    }
    for i in 0..5 {
        let r = w
            .call_ok(
                "queue::log",
                json!({"receipt": receipt, "line": format!("step {i}")}),
            )
            .await;
        assert_eq!(r["lines"], (i + 1).min(3), "{r}");
    }
    // Engine a shows them while the job runs, bounded to max_log_lines.
    let job = until_state(&mut c, &receipt, "running").await;
    assert_eq!(job["progress"], json!({"done": 5, "of": 10}), "{job}");
    assert_eq!(log_lines(&job), ["step 2", "step 3", "step 4"], "{job}");
    assert_eq!(job["logs_dropped"], 2, "{job}");
    // Not the job's engine: nothing runs it there.
    let r = c
        .call("queue::log", json!({"receipt": receipt, "line": "x"}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");

    // Kept across attempts; the next attempt's lines follow on.
    fail(&mut w, &inv, "first try").await;
    let inv = next_job(&mut w).await;
    assert_eq!(inv["metadata"]["job"]["attempt"], 2, "{inv}");
    w.call_ok("queue::log", json!({"receipt": receipt, "line": "retry"}))
        .await;
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(log_lines(&job), ["step 3", "step 4", "retry"], "{job}");
    assert_eq!(job["progress"], json!({"done": 5, "of": 10}), "{job}");

    // Dead-lettered: its dead letter keeps them, and their entry goes.
    fail(&mut w, &inv, "second try").await;
    let inv = next_job(&mut w).await;
    fail(&mut w, &inv, "third try").await;
    let dead = until_state(&mut c, &receipt, "dead").await;
    assert_eq!(dead["progress"], json!({"done": 5, "of": 10}), "{dead}");
    assert_eq!(log_lines(&dead), ["step 3", "step 4", "retry"], "{dead}");
    assert_eq!(dead["logs_dropped"], 3, "{dead}");
    let bucket = nats.bucket("progress").await;
    assert!(keys(&bucket).await.is_empty(), "the dead job's entry went");

    // A job that completes leaves nothing; then it takes no reports.
    let receipt = enqueue(&mut c, "reports", "rep::run", json!({"n": 2})).await;
    let inv = next_job(&mut w).await;
    w.call_ok(
        "queue::progress",
        json!({"receipt": receipt, "progress": 1}),
    )
    .await;
    assert_eq!(keys(&bucket).await, [receipt.as_str()]);
    complete(&mut w, &inv, json!("ok")).await;
    wait_until("the completed job's entry to go", WAIT, async || {
        keys(&bucket).await.is_empty()
    })
    .await;
    let r = w
        .call(
            "queue::progress",
            json!({"receipt": receipt, "progress": 2}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");
    let r = w.call("queue::progress", json!({"receipt": receipt})).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_on_one_engine_holds_the_other_and_jobs_that_expire_meanwhile_are_dead() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut w = RawClient::worker(&b.url, "w").await;
    w.register_function("svc::call").await;
    let mut c = RawClient::worker(&a.url, "producer").await;
    let mut ops_b = RawClient::worker(&b.url, "operator").await;

    // A job runs at once: the queue's consumer exists.
    let first = enqueue(&mut c, "limited", "svc::call", json!({"n": 0})).await;
    let inv = next_job(&mut w).await;
    complete(&mut w, &inv, json!("ok")).await;
    wait_until("the first job's end", WAIT, async || {
        c.call("queue::get", json!({"receipt": first})).await["error"]["code"] == "NOT_FOUND"
    })
    .await;

    // Throttled on engine a (a handler that met a 429, say) for 3 s.
    let throttled_at = now_ms();
    let r = op(
        &mut c,
        "queue::throttle",
        json!({"queue": "limited", "for": "3s"}),
    )
    .await;
    assert_eq!(r["throttled_for_ms"], 3_000, "{r}");
    // Held meanwhile: one job without an expiry (of a priority band no
    // consumer had yet: its new consumer is throttled too), one expiring
    // in 1 s, and one delayed 300 ms expiring in 1.5 s.
    let kept = enqueue_with(
        &mut c,
        json!({"queue": "limited", "function_id": "svc::call", "data": {"n": 1}, "priority": 9}),
    )
    .await;
    let expiring = enqueue_with(
        &mut c,
        json!({"queue": "limited", "function_id": "svc::call", "data": {"n": 2},
               "expires_in": "1s"}),
    )
    .await;
    let delayed = enqueue_with(
        &mut c,
        json!({"queue": "limited", "function_id": "svc::call", "data": {"n": 3},
               "delay": "300ms", "expires_in": 1_500}),
    )
    .await;
    // Engine b sees the throttle and the expiry.
    let why = op(&mut ops_b, "queue::explain", json!({"receipt": kept})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("throttled"),
        "{why}"
    );
    let job = op(&mut ops_b, "queue::get", json!({"receipt": expiring})).await;
    assert!(job["expires_at_ms"].as_u64().is_some(), "{job}");

    // Nothing reaches b's worker before the throttle ends; then only the
    // job that did not expire runs.
    let inv = next_job(&mut w).await;
    let got = now_ms();
    assert!(
        got >= throttled_at + 3_000,
        "ran {} ms into a 3 s throttle",
        got - throttled_at
    );
    assert_eq!(inv["data"], json!({"n": 1}), "{inv}");
    complete(&mut w, &inv, json!("ok")).await;
    for receipt in [&expiring, &delayed] {
        let dead = until_state(&mut ops_b, receipt, "dead").await;
        assert_eq!(dead["last_error"]["reason"], "expired", "{dead}");
        assert_eq!(dead["attempts"], 0, "no attempt spent: {dead}");
        let why = op(&mut c, "queue::explain", json!({"receipt": receipt})).await;
        assert!(
            why["explanation"].as_str().unwrap().contains("expired"),
            "{why}"
        );
    }
    let letters = op(
        &mut c,
        "engine::queue::dlq_messages",
        json!({"queue": "limited"}),
    )
    .await;
    let reasons: Vec<&serde_json::Value> = (letters.as_array().unwrap().iter())
        .map(|l| &l["last_error"]["reason"])
        .collect();
    assert_eq!(reasons, [&json!("expired"), &json!("expired")], "{letters}");

    // Redriven by an operator, it runs however late.
    op(
        &mut c,
        "iii::queue::redrive_message",
        json!({"queue": "limited", "message_id": expiring}),
    )
    .await;
    let inv = next_job(&mut w).await;
    assert_eq!(inv["data"], json!({"n": 2}), "{inv}");
    complete(&mut w, &inv, json!("late but wanted")).await;

    // A job that can start in time is not touched; nonsense is refused as
    // on one engine.
    enqueue_with(
        &mut c,
        json!({"queue": "limited", "function_id": "svc::call", "data": {"n": 4},
               "expires_in": 60_000}),
    )
    .await;
    let inv = next_job(&mut w).await;
    assert_eq!(inv["data"], json!({"n": 4}), "{inv}");
    complete(&mut w, &inv, json!("ok")).await;
    for (args, says) in [
        (json!({"expires_at": 1}), "past"),
        (
            json!({"expires_in": "1s", "delay": "2s"}),
            "expire before it may run",
        ),
    ] {
        let base = json!({"queue": "limited", "function_id": "svc::call", "data": {}});
        enqueue_refused(&mut c, base, &args, says).await;
    }
    let r = c.call("queue::throttle", json!({"queue": "limited"})).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
}

/// Every consumer of cluster "test"'s job stream is paused (one queue's,
/// in these tests).
async fn every_consumer_paused(nats: &NatsCluster) -> bool {
    use futures_util::StreamExt;
    let stream = job_stream(nats).await;
    let mut consumers = stream.consumers();
    let mut any = false;
    while let Some(info) = consumers.next().await {
        let info = info.unwrap();
        // Job consumers only (not the expiry checks' consumer).
        if !info.config.filter_subject.starts_with("qmesh.test.jobs.") {
            continue;
        }
        if !info.paused {
            return false;
        }
        any = true;
    }
    any
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_leaves_a_paused_queue_paused_and_holds_a_resume_to_its_end() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut w = RawClient::worker(&b.url, "w").await;
    w.register_function("svc::held").await;
    let mut c = RawClient::worker(&a.url, "producer").await;
    let mut ops_b = RawClient::worker(&b.url, "operator").await;
    let first = enqueue(&mut c, "held", "svc::held", json!({"n": 0})).await;
    let inv = next_job(&mut w).await;
    complete(&mut w, &inv, json!("ok")).await;
    wait_until("the first job's end", WAIT, async || {
        c.call("queue::get", json!({"receipt": first})).await["error"]["code"] == "NOT_FOUND"
    })
    .await;

    // Paused on a, throttled on b: still paused once the throttle is over.
    op(&mut c, "queue::pause", json!({"queue": "held"})).await;
    let throttled_at = now_ms();
    op(
        &mut ops_b,
        "queue::throttle",
        json!({"queue": "held", "for": 1_000}),
    )
    .await;
    let receipt = enqueue(&mut c, "held", "svc::held", json!({"n": 1})).await;
    wait_until("the throttle's end", WAIT, async || {
        now_ms() > throttled_at + 1_200
    })
    .await;
    assert!(
        every_consumer_paused(&nats).await,
        "paused past the throttle"
    );
    let why = op(&mut ops_b, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("paused"),
        "{why}"
    );

    // Throttled again, then resumed: held to the throttle's end.
    let throttled_at = now_ms();
    op(
        &mut ops_b,
        "queue::throttle",
        json!({"queue": "held", "for": "2s"}),
    )
    .await;
    op(&mut c, "queue::resume", json!({"queue": "held"})).await;
    let why = op(&mut c, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("throttled"),
        "{why}"
    );
    let inv = next_job(&mut w).await;
    let got = now_ms();
    assert!(
        got >= throttled_at + 2_000,
        "ran {} ms into a 2 s throttle",
        got - throttled_at
    );
    assert_eq!(inv["data"], json!({"n": 1}), "{inv}");
    complete(&mut w, &inv, json!("ok")).await;
}

/// A `queue:progress` binding made on one engine fires for a job that runs,
/// and reports, on the other: the binding is bound on every engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_binding_on_one_engine_fires_for_a_job_running_on_the_other() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut watcher = RawClient::worker(&a.url, "watcher").await;
    let config = json!({"queue": "reports"});
    watcher
        .bind("p1", "queue:progress", "watch::progress", config)
        .await;
    let mut w = RawClient::worker(&b.url, "w").await;
    w.register_function("rep::run").await;
    wait_until("engine b binds the watcher", WAIT, async || {
        let filter = json!({"trigger_type": "queue:progress"});
        let r = w.call_ok("engine::registered-triggers::list", filter).await;
        r["registered_triggers"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    })
    .await;

    let mut c = RawClient::worker(&a.url, "producer").await;
    let receipt = enqueue(&mut c, "reports", "rep::run", json!({})).await;
    let inv = next_job(&mut w).await;
    let report = json!({"receipt": receipt, "progress": 40});
    w.call_ok("queue::progress", report).await;
    let event = watcher.next_event().await;
    assert_eq!(event["receipt"], json!(receipt), "{event}");
    assert_eq!(event["queue"], "reports", "{event}");
    assert_eq!(event["function_id"], "rep::run", "{event}");
    assert_eq!(event["progress"], 40, "{event}");
    complete(&mut w, &inv, json!(null)).await;
    drop(b);
}

/// A job that expires while no engine's worker serves its function is
/// dead-lettered at its expiry, as on one engine, not when a worker comes:
/// its expiry check, a scheduled message, fires on any engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_nobody_takes_is_dead_lettered_at_its_expiry() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut c = RawClient::worker(&a.url, "producer").await;
    let args = json!({"queue": "late", "function_id": "nobody::serves", "data": {"n": 1},
                      "expires_in": "1s"});
    let receipt = enqueue_with(&mut c, args).await;
    let mut on_b = RawClient::worker(&b.url, "operator").await;
    let job = until_state(&mut on_b, &receipt, "dead").await;
    assert_eq!(job["last_error"]["code"], "expired", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
    let stats = op(&mut on_b, "queue::stats", json!({"queue": "late"})).await;
    assert_eq!(stats["waiting_for_worker"], 0, "{stats}");
    assert_eq!(stats["dead"], 1, "{stats}");
}
