//! Issue 18's queue features end to end with raw clients: expiry, progress
//! and job logs (and the `queue:progress` trigger), fairness across keys,
//! per-key rate limits, and flows.

mod common;

use common::queue::{
    complete, enqueue, enqueue_burst, enqueue_refused, fail, fast_config, log_lines, next_job, op,
    until_state,
};
use common::{RawClient, TestEngine, WAIT, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn a_job_not_started_by_its_expiry_is_dead_lettered_as_expired() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    // No worker provides the function: the job waits, then expires.
    let r = op(
        &mut c,
        "queue::enqueue",
        json!({"queue": "exp", "function_id": "exp::run", "data": {}, "expires_in": "300ms"}),
    )
    .await;
    let receipt = r["receipt"].as_str().unwrap().to_owned();
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert!(job["expires_at_ms"].as_u64().is_some(), "{job}");
    let dead = until_state(&mut c, &receipt, "dead").await;
    assert_eq!(dead["last_error"]["reason"], "expired", "{dead}");
    assert_eq!(dead["attempts"], 0, "no attempt spent: {dead}");
    let why = op(&mut c, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("expired"),
        "{why}"
    );

    // Redriven by an operator, it runs however late.
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("exp::run").await;
    engine.wait_for_providers("exp::run", 1).await;
    op(
        &mut c,
        "iii::queue::redrive_message",
        json!({"queue": "exp", "message_id": receipt}),
    )
    .await;
    let inv = next_job(&mut w).await;
    complete(&mut w, &inv, json!("late but wanted")).await;
    until_state(&mut c, &receipt, "completed").await;

    // A job that can start in time is not touched; nonsense is refused.
    let r = op(
        &mut c,
        "queue::enqueue",
        json!({"queue": "exp", "function_id": "exp::run", "data": {}, "expires_in": 60_000}),
    )
    .await;
    let inv = next_job(&mut w).await;
    complete(&mut w, &inv, json!(1)).await;
    until_state(&mut c, r["receipt"].as_str().unwrap(), "completed").await;
    for (args, says) in [
        (json!({"expires_at": 1}), "past"),
        (
            json!({"expires_in": "1s", "delay": "2s"}),
            "expire before it may run",
        ),
        (
            json!({"expires_in": "1s", "expires_at": 9_999_999_999_999u64}),
            "not both",
        ),
    ] {
        let base = json!({"queue": "exp", "function_id": "exp::run", "data": {}});
        enqueue_refused(&mut c, base, &args, says).await;
    }
}

#[tokio::test]
async fn progress_and_logs_are_kept_with_the_job_and_progress_fires_its_trigger() {
    let mut config = fast_config();
    config.queue.defaults.max_log_lines = 3;
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    // A watcher bound to the queue's progress.
    let mut watcher = RawClient::worker(&engine.url, "watcher").await;
    watcher.register_function("watch::progress").await;
    watcher
        .send(
            json!({"type":"registertrigger","id":"p1","trigger_type":"queue:progress",
            "function_id":"watch::progress","config":{"queue":"reports"}}),
        )
        .await;
    wait_for("the progress binding", WAIT, async || {
        match engine.active_bindings("queue:progress") {
            1 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;

    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("rep::run").await;
    engine.wait_for_providers("rep::run", 1).await;
    let receipt = enqueue(&mut c, "reports", "rep::run", json!({"n": 1})).await;
    let inv = next_job(&mut w).await;
    for p in [json!(10), json!({"done": 5, "of": 10})] {
        let r = w
            .call(
                "queue::progress",
                json!({"receipt": receipt, "progress": p}),
            )
            .await;
        assert_eq!(r["result"]["progress"], p, "{r}");
    }
    for i in 0..5 {
        let r = w
            .call(
                "queue::log",
                json!({"receipt": receipt, "line": format!("step {i}")}),
            )
            .await;
        assert!(r["error"].is_null(), "{r}");
    }
    // Visible while it runs, and after.
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["progress"], json!({"done": 5, "of": 10}), "{job}");
    let lines = log_lines(&job);
    assert_eq!(
        lines,
        ["step 2", "step 3", "step 4"],
        "bounded to max_log_lines"
    );
    assert_eq!(job["logs_dropped"], 2);
    let fired = watcher
        .recv_until("a progress event", |v| {
            v["type"] == "invokefunction" && v["data"]["progress"]["done"] == 5
        })
        .await;
    assert_eq!(fired["data"]["receipt"], receipt.as_str(), "{fired}");
    assert_eq!(fired["data"]["queue"], "reports");
    complete(&mut w, &inv, json!("ok")).await;
    let done = until_state(&mut c, &receipt, "completed").await;
    assert_eq!(done["progress"], json!({"done": 5, "of": 10}), "{done}");
    assert_eq!(done["logs"].as_array().unwrap().len(), 3);

    // A finished job takes no reports; a report needs a value.
    let receipt = enqueue(&mut c, "reports", "rep::run", json!({"n": 2})).await;
    let inv = next_job(&mut w).await;
    complete(&mut w, &inv, json!("ok")).await;
    until_state(&mut c, &receipt, "completed").await;
    let r = w
        .call(
            "queue::progress",
            json!({"receipt": receipt, "progress": 1}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");
    let r = w.call("queue::progress", json!({"receipt": receipt})).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
}

/// The keys of the next `n` jobs delivered to `w` (answered at once).
async fn keys_of_next(w: &mut RawClient, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let inv = next_job(w).await;
        keys.push(inv["data"]["tenant"].as_str().unwrap().to_owned());
        complete(w, &inv, json!(true)).await;
    }
    keys
}

#[tokio::test]
async fn a_fair_queue_serves_a_lone_tenant_within_one_round_of_a_burst() {
    let mut config = fast_config();
    config.queue.queues.insert(
        "shared".into(),
        toml::from_str("fair_by = \"tenant\"\nconcurrency = 1").unwrap(),
    );
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    // Tenant A's burst of 10,000 first, then one job each from B and C.
    enqueue_burst(&mut c, "shared", "fair::run", "A", 10_000).await;
    enqueue(&mut c, "shared", "fair::run", json!({"tenant": "B"})).await;
    enqueue(&mut c, "shared", "fair::run", json!({"tenant": "C"})).await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("fair::run").await;
    // One round holds one job per key: B and C start among the first three.
    let first = keys_of_next(&mut w, 3).await;
    for k in ["A", "B", "C"] {
        assert!(
            first.contains(&k.to_owned()),
            "{k} waited more than a round: {first:?}"
        );
    }
    let then = keys_of_next(&mut w, 5).await;
    assert!(then.iter().all(|k| k == "A"), "only A is left: {then:?}");
    let got = op(
        &mut c,
        "queue::peek",
        json!({"queue": "shared", "limit": 1}),
    )
    .await;
    let receipt = got["jobs"][0]["receipt"].as_str().unwrap().to_owned();
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["fair_key"], "A", "{job}");
}

#[tokio::test]
async fn each_key_has_its_own_rate_limit() {
    let mut config = fast_config();
    config.queue.queues.insert(
        "per_key".into(),
        toml::from_str("fair_by = \"tenant\"\nrate_per_key = \"5/1s\"\nconcurrency = 100").unwrap(),
    );
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    let jobs: Vec<Value> = ["A", "B"]
        .iter()
        .flat_map(|t| (0..20).map(move |i| json!({"data": {"tenant": t, "i": i}})))
        .collect();
    op(
        &mut c,
        "queue::enqueue_many",
        json!({"queue": "per_key", "function_id": "key::run", "jobs": jobs}),
    )
    .await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("key::run").await;
    // Each key's full bucket (5) at once, then nothing until it refills.
    let first = keys_of_next(&mut w, 10).await;
    assert_eq!(first.iter().filter(|k| *k == "A").count(), 5, "{first:?}");
    assert_eq!(first.iter().filter(|k| *k == "B").count(), 5, "{first:?}");
    w.assert_not_invoked_for(
        Duration::from_millis(100),
        "a sixth start before the key's bucket refills",
    )
    .await;
    // Refills at 5/s per key: 4 more each within about 800 ms.
    let more = keys_of_next(&mut w, 8).await;
    assert_eq!(more.iter().filter(|k| *k == "A").count(), 4, "{more:?}");
    let waiting = op(
        &mut c,
        "queue::peek",
        json!({"queue": "per_key", "limit": 1}),
    )
    .await;
    let receipt = waiting["jobs"][0]["receipt"].as_str().unwrap().to_owned();
    let why = op(&mut c, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        why["explanation"]
            .as_str()
            .unwrap()
            .contains("for each tenant"),
        "{why}"
    );
    // A config with rate_per_key but no fair_by is refused.
    let mut bad = fast_config();
    bad.queue.queues.insert(
        "x".into(),
        toml::from_str("rate_per_key = \"5/1s\"").unwrap(),
    );
    assert!(bad.validate().unwrap_err().to_string().contains("fair_by"));
}

#[tokio::test]
async fn a_three_level_flow_passes_results_up_and_a_failing_child_fails_its_parent() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    for f in ["flow::root", "flow::mid", "flow::leaf"] {
        w.register_function(f).await;
    }
    engine.wait_for_providers("flow::leaf", 1).await;
    let tree = op(
        &mut c,
        "queue::enqueue_flow",
        json!({
            "queue": "reports", "function_id": "flow::root", "data": {"level": 0},
            "children": [
                {"function_id": "flow::mid", "data": {"level": 1}, "queue": "parts", "children": [
                    {"function_id": "flow::leaf", "data": {"level": 2, "n": 1}},
                    {"function_id": "flow::leaf", "data": {"level": 2, "n": 2}},
                ]},
                {"function_id": "flow::leaf", "data": {"level": 1, "n": 3}},
            ]
        }),
    )
    .await;
    let root = tree["receipt"].as_str().unwrap().to_owned();
    let mid = tree["children"][0]["receipt"].as_str().unwrap().to_owned();
    assert_eq!(tree["children"][0]["queue"], "parts", "{tree}");
    let job = op(&mut c, "queue::get", json!({"receipt": root})).await;
    assert_eq!(job["state"], "waiting_for_children", "{job}");
    assert_eq!(job["flow"]["waiting_on"], 2);
    assert_eq!(
        job["flow"]["children"][0]["children"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{job}"
    );

    // Leaves first (three of them), then the middle, then the root.
    let mut order = Vec::new();
    for _ in 0..5 {
        let inv = next_job(&mut w).await;
        let f = inv["function_id"].as_str().unwrap().to_owned();
        let result = match f.as_str() {
            "flow::leaf" => json!(inv["data"]["n"]),
            "flow::mid" => {
                let kids = inv["metadata"]["job"]["children"]
                    .as_array()
                    .unwrap()
                    .clone();
                let sum: u64 = kids.iter().map(|k| k["result"].as_u64().unwrap()).sum();
                json!(sum)
            }
            _ => json!(inv["metadata"]["job"]["children"].clone()),
        };
        complete(&mut w, &inv, result).await;
        order.push(f);
    }
    assert_eq!(&order[3..], ["flow::mid", "flow::root"], "{order:?}");
    let done = until_state(&mut c, &root, "completed").await;
    let results: Vec<u64> = done["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["result"].as_u64().unwrap())
        .collect();
    let mut sorted = results.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [3, 3],
        "the middle's sum (1+2) and the direct leaf's 3: {done}"
    );
    let mid_job = op(&mut c, "queue::get", json!({"receipt": mid})).await;
    assert_eq!(mid_job["flow"]["root"], root.as_str(), "{mid_job}");

    // A child that dead-letters fails its parent (fail_parent, the default)…
    let tree = op(
        &mut c,
        "queue::enqueue_flow",
        json!({"queue": "reports", "function_id": "flow::root", "data": {},
               "children": [{"function_id": "flow::leaf", "data": {"n": 9}}]}),
    )
    .await;
    let root = tree["receipt"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let inv = next_job(&mut w).await;
        assert_eq!(inv["function_id"], "flow::leaf");
        fail(&mut w, &inv, "leaf broke").await;
    }
    let dead = until_state(&mut c, &root, "dead").await;
    assert_eq!(dead["last_error"]["reason"], "child_failed", "{dead}");
    assert!(
        dead["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("leaf broke"),
        "{dead}"
    );

    // …while under `ignore` the parent runs and hears how the child ended.
    let tree = op(
        &mut c,
        "queue::enqueue_flow",
        json!({"queue": "reports", "function_id": "flow::root", "data": {}, "on_child_failure": "ignore",
               "children": [{"function_id": "flow::leaf", "data": {"n": 9}}]}),
    )
    .await;
    let root = tree["receipt"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let inv = next_job(&mut w).await;
        fail(&mut w, &inv, "leaf broke").await;
    }
    let inv = next_job(&mut w).await;
    assert_eq!(inv["function_id"], "flow::root");
    let kid = &inv["metadata"]["job"]["children"][0];
    assert_eq!(kid["state"], "dead", "{inv}");
    assert_eq!(kid["error"]["message"], "leaf broke");
    complete(&mut w, &inv, json!("partial")).await;
    until_state(&mut c, &root, "completed").await;

    // A flow is checked whole before anything is written.
    let r = c
        .call(
            "queue::enqueue_flow",
            json!({"queue": "reports", "function_id": "flow::root", "data": {},
                   "children": [{"function_id": "", "data": {}}]}),
        )
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("flow.children[0]"),
        "{r}"
    );
    let stats = op(&mut c, "queue::stats", json!({"queue": "reports"})).await;
    assert_eq!(stats["waiting_for_children"], 0, "{stats}");
}
