//! Issue 18's queue features with workers written with the published Node
//! (npm iii-sdk 0.22.1) and Python (PyPI iii-sdk 0.25.0) SDKs: progress and
//! logs, flows, heartbeats over many leases, a rate limit shared by four
//! workers, a throttle, and fairness. The workers are
//! `tests/node/queue_features.mjs` and `tests/python/queue_features.py`.

mod common;

use common::programs::Program;
use common::queue::{enqueue_burst, fast_config, log_lines, op, until_state, until_stats};
use common::{RawClient, TestEngine};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The worker program of `lang` serving `<prefix>::…`.
fn features(lang: &str, prefix: &str, url: &str) -> Program {
    let script = match lang {
        "node" => "queue_features.mjs",
        _ => "queue_features.py",
    };
    Program::start(lang, script, &[prefix], url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_handlers_report_progress_and_logs_and_run_flows() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    for (lang, p) in [("node", "node"), ("python", "py")] {
        let mut sdk = features(lang, p, &engine.url);
        sdk.ready().await;
        engine.wait_for_providers(&format!("{p}::root"), 1).await;

        let r = op(
            &mut c,
            "queue::enqueue",
            json!({"queue": "sdk", "function_id": format!("{p}::report"), "data": {}}),
        )
        .await;
        let receipt = r["receipt"].as_str().unwrap().to_owned();
        let job = until_state(&mut c, &receipt, "completed").await;
        assert_eq!(
            job["progress"],
            json!({"percent": 100, "stage": "done"}),
            "{lang}: {job}"
        );
        let lines = log_lines(&job);
        assert_eq!(
            lines,
            [format!("{p} halfway"), format!("{p} finished")],
            "{lang}"
        );

        // Three levels: the middle sums its leaves, the root gets both results.
        let leaf = |n: u64| json!({"function_id": format!("{p}::leaf"), "data": {"n": n}});
        let tree = op(&mut c, "queue::enqueue_flow", json!({
            "queue": "sdk", "function_id": format!("{p}::root"), "data": {},
            "children": [
                {"function_id": format!("{p}::mid"), "data": {}, "children": [leaf(1), leaf(2)]},
                leaf(3),
            ]
        })).await;
        let root = tree["receipt"].as_str().unwrap().to_owned();
        let done = until_state(&mut c, &root, "completed").await;
        let mut results: Vec<u64> = done["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["result"].as_u64().unwrap())
            .collect();
        results.sort();
        assert_eq!(results, [3, 3], "{lang}: {done}");

        // A failing leaf fails the root (fail_parent).
        let tree = op(
            &mut c,
            "queue::enqueue_flow",
            json!({
                "queue": "sdk", "function_id": format!("{p}::root"), "data": {},
                "children": [{"function_id": format!("{p}::leaf"), "data": {"n": 7, "fail": true}}]
            }),
        )
        .await;
        let dead = until_state(&mut c, tree["receipt"].as_str().unwrap(), "dead").await;
        assert_eq!(
            dead["last_error"]["reason"], "child_failed",
            "{lang}: {dead}"
        );
        assert!(
            dead["last_error"]["message"]
                .as_str()
                .unwrap()
                .contains("failed on purpose"),
            "{lang}: {dead}"
        );
        let _ = sdk.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_heartbeats_keep_a_job_past_many_leases_and_a_silent_one_is_redelivered() {
    // fast_config: a 1 s lease, 3 attempts.
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    for (lang, p) in [("node", "node"), ("python", "py")] {
        let mut sdk = features(lang, p, &engine.url);
        sdk.ready().await;
        engine.wait_for_providers(&format!("{p}::long"), 1).await;
        // Four leases long, beating every 300 ms: one attempt.
        let r = op(&mut c, "queue::enqueue", json!({"queue": "long", "function_id": format!("{p}::long"), "data": {"ms": 4000, "beat_ms": 300}})).await;
        let receipt = r["receipt"].as_str().unwrap().to_owned();
        let ran = sdk
            .expect_json("the long job", |v| v["event"] == "long")
            .await;
        assert_eq!(ran["attempt"], 1, "{lang}: {ran}");
        let job = until_state(&mut c, &receipt, "completed").await;
        assert_eq!(job["attempts"], 1, "{lang}: never redelivered: {job}");
        // No beats, longer than a lease: timed out and delivered again.
        let r = op(
            &mut c,
            "queue::enqueue",
            json!({"queue": "long", "function_id": format!("{p}::long"), "data": {"ms": 1500}}),
        )
        .await;
        let receipt = r["receipt"].as_str().unwrap().to_owned();
        let job = common::wait_for("a second attempt", common::WAIT, async || {
            let j = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
            if j["history"][0]["outcome"] == "timeout" {
                Ok(j)
            } else {
                Err(j.to_string())
            }
        })
        .await;
        assert_eq!(job["history"][0]["outcome"], "timeout", "{lang}: {job}");
        let _ = sdk.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_within_5_percent_across_four_sdk_workers_and_a_throttle_stops_it() {
    let mut config = fast_config();
    config.queue.queues.insert(
        "rated".into(),
        toml::from_str("rate = \"50/1s\"\nconcurrency = 100").unwrap(),
    );
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    let mut workers = Vec::new();
    for lang in ["node", "python", "node", "python"] {
        let mut w = features(lang, "shared", &engine.url);
        w.ready().await;
        workers.push(w);
    }
    engine.wait_for_providers("shared::limited", 4).await;
    let jobs: Vec<Value> = (0..1000).map(|i| json!({"data": {"i": i}})).collect();
    op(
        &mut c,
        "queue::enqueue_many",
        json!({"queue": "rated", "function_id": "shared::limited", "jobs": jobs}),
    )
    .await;
    let completed = async |c: &mut RawClient| {
        op(c, "queue::stats", json!({"queue": "rated"})).await["completed"]
            .as_u64()
            .unwrap()
    };
    // After the first full bucket, count completions over 10 s.
    until_stats(&mut c, "rated", |s| s["completed"].as_u64() >= Some(50)).await;
    let (t0, n0) = (Instant::now(), completed(&mut c).await);
    tokio::time::sleep(Duration::from_secs(10)).await; // the measured window
    let (t1, n1) = (Instant::now(), completed(&mut c).await);
    let rate = (n1 - n0) as f64 / (t1 - t0).as_secs_f64();
    assert!(
        (47.5..=52.5).contains(&rate),
        "{rate:.1} jobs/s against a limit of 50/s"
    );

    // A throttle (a handler that met a 429) stops every start for its length.
    op(
        &mut c,
        "queue::throttle",
        json!({"queue": "rated", "for": "1500ms"}),
    )
    .await;
    let settled = completed(&mut c).await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // inside the throttle
    let during = completed(&mut c).await;
    assert!(
        during <= settled + 1,
        "{settled} → {during} while throttled"
    );
    until_stats(&mut c, "rated", |s| {
        s["completed"].as_u64() > Some(during + 20)
    })
    .await;
    for w in workers {
        let _ = w.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_queue_serves_a_lone_tenant_behind_a_burst_to_sdk_workers() {
    let mut config = fast_config();
    config.queue.queues.insert(
        "fair".into(),
        toml::from_str("fair_by = \"tenant\"\nconcurrency = 2").unwrap(),
    );
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    // Paused while a worker starts: jobs it ran before printing READY would
    // not be in its collected output.
    op(&mut c, "queue::pause", json!({"queue": "fair"})).await;
    enqueue_burst(&mut c, "fair", "fair::limited", "A", 10_000).await;
    for (lang, b) in [("node", -1), ("python", -2)] {
        // A fresh B, behind (the rest of) A's burst.
        op(
            &mut c,
            "queue::enqueue",
            json!({"queue": "fair", "function_id": "fair::limited", "data": {"tenant": "B", "i": b}}),
        )
        .await;
        let mut w = features(lang, "fair", &engine.url);
        w.ready().await;
        let seen = w.collect();
        op(&mut c, "queue::resume", json!({"queue": "fair"})).await;
        // B's job is among the first round: within the first 2 × 2 starts.
        let ran = common::wait_for("tenant B's job", common::WAIT, async || {
            let lines = seen.lines.lock().unwrap().clone();
            let ran: Vec<Value> = lines.into_iter().filter(|v| v["event"] == "ran").collect();
            if ran.iter().any(|v| v["tenant"] == "B") || ran.len() > 4 {
                Ok(ran)
            } else {
                Err(format!("{} started", ran.len()))
            }
        })
        .await;
        let at = ran.iter().position(|v| v["tenant"] == "B");
        assert!(
            at.is_some_and(|at| at < 4),
            "{lang}: B waited more than a round: {ran:?}"
        );
        op(&mut c, "queue::pause", json!({"queue": "fair"})).await;
        let _ = seen.finish().await;
        common::wait_until("the worker to leave", common::WAIT, async || {
            engine.providers("fair::limited").is_empty()
        })
        .await;
    }
}
