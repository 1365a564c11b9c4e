//! Cron in cluster mode: the same cron job bound on two engines (a worker on
//! each registering one function with one schedule, under trigger ids of its
//! own, as SDK workers do) fires each slot once across the cluster, and the
//! surviving engine goes on firing each slot once after the other is killed
//! with -9.

mod common;

use chrono::{DateTime, Utc};
use common::launcher::EngineProcess;
use common::nats::NatsCluster;
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const FUNCTION: &str = "cron::tick";

/// How many times each slot (its `scheduled_time`) ran, on any worker.
type Runs = Arc<Mutex<BTreeMap<DateTime<Utc>, usize>>>;

/// A worker on `url` serving [`FUNCTION`], bound to it every second under a
/// trigger id of its own; it counts each run in `runs` until its socket closes.
async fn ticking_worker(url: &str, name: &str, runs: &Runs) -> tokio::task::JoinHandle<()> {
    let mut w = RawClient::worker(url, name).await;
    w.register_function(FUNCTION).await;
    w.send(
        json!({"type":"registertrigger","id":uuid::Uuid::new_v4().to_string(),
        "trigger_type":"cron","function_id":FUNCTION,
        "config":{"expression":"*/1 * * * * *"}}),
    )
    .await;
    let runs = runs.clone();
    tokio::spawn(w.serve_until_closed(move |data| {
        let slot = DateTime::parse_from_rfc3339(data["scheduled_time"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        *runs.lock().unwrap().entry(slot).or_default() += 1;
        Value::Null
    }))
}

/// Waits until `n` slots after `since` ran, then checks that every slot ran
/// exactly once, but the latest (a second run of it could still be on its
/// way: a broken claim would show on the earlier ones).
async fn each_slot_once(runs: &Runs, since: DateTime<Utc>, n: usize) {
    wait_until(&format!("{n} slots run after {since}"), WAIT, async || {
        runs.lock().unwrap().range(since..).count() >= n
    })
    .await;
    let runs = runs.lock().unwrap();
    let last = *runs.keys().last().unwrap();
    let twice: Vec<_> = runs
        .iter()
        .filter(|(s, c)| **s < last && **c != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "slots not run exactly once: {twice:?} of {runs:?}"
    );
}

/// `engine::cron::list`'s row of the job bound to [`FUNCTION`] on `url`.
async fn job(url: &str) -> Value {
    let mut c = RawClient::worker(url, "observer").await;
    let r = c.call("engine::cron::list", json!({})).await;
    r["result"]["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["function_id"] == FUNCTION).cloned())
        .unwrap_or(Value::Null)
}

/// Whether an engine's job has met the other engine's claims.
fn lost_a_claim(row: &Value) -> bool {
    row["claimed_elsewhere"].as_u64().unwrap_or(0) > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_bound_on_two_engines_runs_each_slot_once() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let b = TestEngine::start_with(nats.engine_config(test_config(), "b")).await;
    let runs = Runs::default();
    let _wa = ticking_worker(&a.url, "ticker-a", &runs).await;
    let _wb = ticking_worker(&b.url, "ticker-b", &runs).await;
    wait_until("both engines run the job", WAIT, async || {
        a.active_bindings("cron") == 1 && b.active_bindings("cron") == 1
    })
    .await;

    each_slot_once(&runs, Utc::now(), 5).await;
    // Both engines contended for the slots: the claims decided, not luck.
    let (ja, jb) = (job(&a.url).await, job(&b.url).await);
    assert!(lost_a_claim(&ja) || lost_a_claim(&jb), "{ja}\n{jb}");
    for row in [&ja, &jb] {
        assert_eq!(row["skipped_unclaimed"], 0, "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_one_engine_the_other_runs_each_slot_once() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let mut b = EngineProcess::start_with_config(&nats.engine_toml("b"));
    let runs = Runs::default();
    let _wa = ticking_worker(&a.url, "ticker-a", &runs).await;
    let _wb = ticking_worker(&b.url, "ticker-b", &runs).await;
    // A's own worker and B's peer; and B's job is live, contending.
    a.wait_for_providers(FUNCTION, 2).await;
    wait_until("B's job contends for slots", WAIT, async || {
        let row = job(&b.url).await;
        row["fired"].as_u64().unwrap_or(0) + row["claimed_elsewhere"].as_u64().unwrap_or(0) > 0
    })
    .await;
    each_slot_once(&runs, Utc::now(), 2).await;

    b.kill();
    // Until B is declared dead, A may route a run to B's peer, where it fails.
    a.wait_for_providers(FUNCTION, 1).await;
    each_slot_once(&runs, Utc::now(), 4).await;
}
