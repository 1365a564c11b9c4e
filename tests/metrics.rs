//! `GET /metrics` read back with a parser of the Prometheus exposition
//! format, and checked against activity the test caused: calls by function
//! and outcome with their latency histogram, live gauges, jobs per queue and
//! state; and, with tokens, only for token holders.

mod common;

use common::{RawClient, TestEngine, WAIT, round_trip, test_config, wait_for};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

async fn scrape(engine: &TestEngine, token: Option<&str>) -> Scrape {
    let (status, body) = engine.get("/metrics", token).await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("exposition format")
}

fn find<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

fn number(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, metric, labels).map(|x| &x.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!("{metric}{labels:?}: {other:?}"),
    }
}

#[tokio::test]
async fn calls_workers_and_queues_are_counted_as_they_happen() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["m::echo", "m::fail"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    for i in 0..3 {
        let ok = json!({"result": {"ok": i}});
        round_trip(&mut caller, &mut exec, "m::echo", json!({"i": i}), ok).await;
    }
    let no = json!({"error": {"code": "NOPE", "message": "no"}});
    round_trip(&mut caller, &mut exec, "m::fail", json!({}), no).await;
    // Two jobs for a function nobody serves: they wait for a worker.
    for _ in 0..2 {
        let r = caller
            .call(
                "queue::enqueue",
                json!({"queue": "mail", "function_id": "m::nobody", "data": {}}),
            )
            .await;
        assert!(r["error"].is_null(), "{r}");
    }

    let s = scrape(&engine, None).await;
    let ok = [("function", "m::echo"), ("outcome", "ok")];
    assert_eq!(number(&s, "qmesh_calls_total", &ok), 3.0);
    let failed = [("function", "m::fail"), ("outcome", "error")];
    assert_eq!(number(&s, "qmesh_calls_total", &failed), 1.0);
    let Some(Value::Histogram(buckets)) = find(
        &s,
        "qmesh_call_duration_seconds",
        &[("function", "m::echo")],
    )
    .map(|x| &x.value) else {
        panic!("no latency histogram for m::echo");
    };
    let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert_eq!(all, 3.0, "every call observed once: {buckets:?}");
    assert_eq!(number(&s, "qmesh_workers", &[]), 2.0);
    assert_eq!(number(&s, "qmesh_functions", &[]), 2.0);
    assert_eq!(number(&s, "qmesh_pending_calls", &[]), 0.0);
    let waiting = [("queue", "mail"), ("state", "waiting_for_worker")];
    let n = wait_for("the jobs counted", WAIT, async || {
        let s = scrape(&engine, None).await;
        match find(&s, "qmesh_queue_jobs", &waiting).map(|x| x.value.clone()) {
            Some(Value::Gauge(2.0)) => Ok(2.0),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(n, 2.0);
    assert!(find(&s, "qmesh_memory_budget_limit_bytes", &[]).is_some());
    assert!(find(&s, "qmesh_realtime_connections", &[]).is_some());
    assert!(find(&s, "qmesh_binary_channels", &[]).is_some());
}

#[tokio::test]
async fn with_tokens_only_a_token_holder_may_scrape() {
    let mut config = test_config();
    config.auth.tokens = vec![qmesh::config::TokenConfig {
        name: "prometheus".into(),
        role: qmesh::config::Role::Worker,
        sha256: qmesh::token_sha256("scrape-me"),
    }];
    let engine = TestEngine::start_with(config).await;
    let (status, _) = engine.get("/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = engine.get("/metrics", Some("wrong")).await;
    assert_eq!(status, 401);
    let s = scrape(&engine, Some("scrape-me")).await;
    assert_eq!(number(&s, "qmesh_workers", &[]), 0.0);
}

/// Every `qmesh_*` name the shipped alert rules and Grafana dashboard read
/// (`examples/monitoring`), histogram series included.
fn names_in_examples() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/monitoring");
    let mut names = Vec::new();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("qmesh_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn the_shipped_alerts_and_dashboard_read_metrics_the_engine_exports() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["m::echo"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    round_trip(
        &mut caller,
        &mut exec,
        "m::echo",
        json!({}),
        json!({"result": 1}),
    )
    .await;
    caller
        .call(
            "queue::enqueue",
            json!({"queue": "q", "function_id": "m::echo", "data": {}}),
        )
        .await;
    let (_, text) = engine.get("/metrics", None).await;
    let names = names_in_examples();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "{name} is read by examples/monitoring but not exported"
        );
    }
}

/// The queue's counters and histograms follow what its jobs did: enqueued,
/// completed, failed attempts, dead letters, attempt durations and waits;
/// and the store's sync rounds and size on disk.
#[tokio::test]
async fn queue_totals_histograms_and_the_store_are_exported() {
    use common::queue::{complete, enqueue, fail, fast_config, next_job, until_state};
    // fast_config: 3 attempts, short backoff.
    let engine = TestEngine::start_with(fast_config()).await;
    let mut w = engine.worker_with("w", &["m::job"]).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    let good = enqueue(&mut c, "jobs", "m::job", json!({"n": 1})).await;
    let inv = next_job(&mut w).await;
    complete(&mut w, &inv, json!(true)).await;
    until_state(&mut c, &good, "completed").await;
    let bad = enqueue(&mut c, "jobs", "m::job", json!({"n": 2})).await;
    for _ in 0..3 {
        let inv = next_job(&mut w).await;
        fail(&mut w, &inv, "broken").await;
    }
    until_state(&mut c, &bad, "dead").await;

    let s = scrape(&engine, None).await;
    let q = [("queue", "jobs")];
    assert_eq!(number(&s, "qmesh_queue_enqueued_total", &q), 2.0);
    assert_eq!(number(&s, "qmesh_queue_completed_total", &q), 1.0);
    assert_eq!(number(&s, "qmesh_queue_attempts_failed_total", &q), 3.0);
    assert_eq!(number(&s, "qmesh_queue_dead_lettered_total", &q), 1.0);
    for (histogram, observed) in [
        ("qmesh_queue_attempt_duration_seconds", 4.0),
        ("qmesh_queue_wait_seconds", 2.0),
    ] {
        let Some(Value::Histogram(buckets)) = find(&s, histogram, &q).map(|x| &x.value) else {
            panic!("no {histogram}");
        };
        let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
        assert_eq!(all, observed, "{histogram}: {buckets:?}");
    }
    assert!(
        number(&s, "qmesh_store_syncs_total", &[]) >= 2.0,
        "each enqueue waited for a sync"
    );
    assert!(number(&s, "qmesh_store_sync_seconds_total", &[]) > 0.0);
    assert!(number(&s, "qmesh_store_disk_bytes", &[]) > 0.0);
}
