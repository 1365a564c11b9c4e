//! Durable publish (`iii::durable::publish`) with 2 subscribers, against the
//! real engine binary.
//!
//! 1. Acknowledged publishes: two `durable:subscriber` bindings on one topic
//!    whose functions no worker serves (each publish writes 2 jobs that
//!    wait); `--callers` closed loops publish for `--duration` seconds; a
//!    publish counts once its reply arrives, i.e. once both jobs are synced
//!    → publishes/s, p50/p99;
//! 2. End to end: the same on a second topic whose 2 functions a worker
//!    serves → publishes/s acknowledged, and jobs run per second until every
//!    acknowledged publish ran on both.
//!
//! ```text
//! cargo bench --bench topics                  # full run (~15 s)
//! cargo bench --bench topics -- --quick       # smoke run
//! cargo bench --bench topics -- --json        # one JSON object on stdout
//! cargo bench --bench topics -- --duration 10 --callers 64 --conns 4
//! ```
//! The target is printed for reference and never asserted.

mod common;

use common::{
    EngineProcess, LoadOptions, Phase, closed_loop, cpu_secs, machine, print_report, settle_disk,
};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TARGET_PUBLISH_PER_SEC: f64 = 10_000.0;

fn report(phase: &Phase, name: &str) -> Value {
    json!({
        "phase": name,
        "publishes_per_sec": phase.per_sec(),
        "p50_ms": phase.ms(0.50), "p99_ms": phase.ms(0.99), "p999_ms": phase.ms(0.999),
        "target_per_sec": TARGET_PUBLISH_PER_SEC,
    })
}

/// `callers` closed loops over `clients` publishing to `topic` for `duration`.
async fn publish_loop(
    clients: &[Client],
    callers: usize,
    duration: Duration,
    topic: &'static str,
) -> Phase {
    closed_loop(clients, callers, duration, move |n| {
        let data = json!({"n": n, "note": "a durable message"});
        (
            "iii::durable::publish",
            json!({"topic": topic, "data": data}),
        )
    })
    .await
}

async fn subscribe(c: &Client, topic: &str, function_id: &str) {
    c.call(
        "engine::register_trigger",
        json!({"trigger_type": "durable:subscriber", "function_id": function_id,
               "config": {"topic": topic, "queue_config": {"concurrency": 64}}}),
    )
    .await
    .expect("bind");
}

#[tokio::main]
async fn main() {
    let LoadOptions {
        secs,
        duration,
        callers,
        conns,
        ..
    } = LoadOptions::parse();

    settle_disk();
    let engine = EngineProcess::start();
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Client::connect(&engine.url).await.expect("connect"));
    }
    let pid = engine.pid().to_string();

    // 1. Acknowledgements only: nobody serves the subscribers, jobs wait.
    subscribe(&clients[0], "bench-acks", "bench::parked-a").await;
    subscribe(&clients[0], "bench-acks", "bench::parked-b").await;
    let cpu0 = cpu_secs(&pid);
    let acks = publish_loop(&clients, callers, duration, "bench-acks").await;
    let cpu_acks = cpu_secs(&pid) - cpu0;

    // 2. End to end: a worker serves both subscribers.
    let worker = Client::connect(&engine.url).await.expect("connect worker");
    let ran = Arc::new(AtomicU64::new(0));
    for id in ["bench::live-a", "bench::live-b"] {
        let r = ran.clone();
        worker
            .register_function(id, move |_| {
                r.fetch_add(1, Ordering::Relaxed);
                async { Ok(Value::Null) }
            })
            .unwrap();
        worker
            .wait_for_function(id, Duration::from_secs(10))
            .await
            .unwrap();
        subscribe(&clients[0], "bench-live", id).await;
    }
    let started = Instant::now();
    let live = publish_loop(&clients, callers, duration, "bench-live").await;
    let expected = live.ops * 2;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ran.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e2e_secs = started.elapsed().as_secs_f64();
    let got = ran.load(Ordering::Relaxed);

    let report = json!({
        "machine": machine(),
        "callers": callers, "conns": conns, "duration_s": secs, "subscribers": 2,
        "acknowledged": report(&acks, "durable publish, 2 subscribers, acknowledged"),
        "engine_cpu_us_per_publish": (cpu_acks * 1e6 / acks.ops.max(1) as f64).round(),
        "end_to_end": {
            "publish": report(&live, "durable publish, 2 subscribers served"),
            "jobs_run": got,
            "jobs_expected": expected,
            "jobs_per_sec": (got as f64 / e2e_secs).round(),
        },
    });
    print_report(&report);
    worker.close().await;
    for c in clients {
        c.close().await;
    }
}
