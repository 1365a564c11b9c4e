//! State and pubsub through the engine, against the real engine binary.
//!
//! 1. `state::set` from 64 concurrent callers (closed loop, one call each in
//!    flight) for `--duration` seconds: durable (the default: each reply
//!    waits for the group-commit sync covering it), then with `durable:
//!    false` (the reply follows the in-memory apply) → ops/s, p50/p99;
//! 2. `state::get` the same way, over the keys phase 1 wrote → ops/s, p50/p99;
//! 3. `publish` fan-out: 10 functions on one worker, each bound with a
//!    `subscribe` trigger to one topic; 64 callers publish → messages
//!    delivered to handlers per second.
//!
//! ```text
//! cargo bench --bench state                  # full run (~30 s)
//! cargo bench --bench state -- --quick       # smoke run
//! cargo bench --bench state -- --json        # one JSON object on stdout
//! cargo bench --bench state -- --duration 10 --callers 64 --conns 4
//! ```
//! Targets are printed for reference and never asserted.

mod common;

use common::{EngineProcess, LoadOptions, Phase, closed_loop, cpu_secs, machine, print_report};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TARGET_GET_PER_SEC: f64 = 30_000.0;
const TARGET_SET_PER_SEC: f64 = 15_000.0;
const SUBSCRIBERS: usize = 10;
const KEYS: u64 = 10_000;

fn report(phase: &Phase, name: &str, target: Option<f64>) -> Value {
    json!({
        "phase": name,
        "ops_per_sec": phase.per_sec(),
        "p50_ms": phase.ms(0.50), "p99_ms": phase.ms(0.99), "p999_ms": phase.ms(0.999),
        "target_ops_per_sec": target,
    })
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

    let engine = EngineProcess::start();
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Client::connect(&engine.url).await.expect("connect"));
    }
    let value = json!({"name": "bench", "count": 42, "tags": ["a", "b", "c"]});
    let cpu0 = cpu_secs(&engine.pid().to_string());

    let v = value.clone();
    let set_durable = closed_loop(&clients, callers, duration, move |n| {
        (
            "state::set",
            json!({"scope": "bench", "key": format!("k{}", n % KEYS), "value": v}),
        )
    })
    .await;
    let v = value.clone();
    let set_fast = closed_loop(&clients, callers, duration, move |n| {
        ("state::set", json!({"scope": "bench", "key": format!("k{}", n % KEYS), "value": v, "durable": false}))
    })
    .await;
    let get = closed_loop(&clients, callers, duration, |n| {
        (
            "state::get",
            json!({"scope": "bench", "key": format!("k{}", n % KEYS)}),
        )
    })
    .await;

    // Fan-out: 10 subscribers of one topic on one worker connection.
    let worker = Client::connect(&engine.url).await.expect("connect worker");
    let delivered = Arc::new(AtomicU64::new(0));
    for i in 0..SUBSCRIBERS {
        let id = format!("bench::sub{i}");
        let d = delivered.clone();
        worker
            .register_function(id.clone(), move |_| {
                d.fetch_add(1, Ordering::Relaxed);
                async { Ok(Value::Null) }
            })
            .unwrap();
        worker
            .wait_for_function(&id, Duration::from_secs(10))
            .await
            .unwrap();
        clients[0]
            .call("engine::register_trigger", json!({"trigger_type": "subscribe", "function_id": id, "config": {"topic": "bench"}}))
            .await
            .expect("bind");
    }
    let before = delivered.load(Ordering::Relaxed);
    let started = Instant::now();
    let publish = closed_loop(&clients, callers, duration, |n| {
        ("publish", json!({"topic": "bench", "data": {"n": n}}))
    })
    .await;
    let expected = before + publish.ops * SUBSCRIBERS as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fan_secs = started.elapsed().as_secs_f64();
    let got = delivered.load(Ordering::Relaxed) - before;
    let cpu = cpu_secs(&engine.pid().to_string()) - cpu0;

    let report = json!({
        "machine": machine(),
        "callers": callers, "conns": conns, "duration_s": secs,
        "set_durable": report(&set_durable, "state::set durable", Some(TARGET_SET_PER_SEC)),
        "set_not_durable": report(&set_fast, "state::set durable:false", Some(TARGET_SET_PER_SEC)),
        "get": report(&get, "state::get", Some(TARGET_GET_PER_SEC)),
        "publish": report(&publish, "publish (10 subscribers)", None),
        "fanout": {
            "subscribers": SUBSCRIBERS,
            "delivered": got,
            "expected": publish.ops * SUBSCRIBERS as u64,
            "delivered_per_sec": (got as f64 / fan_secs).round(),
        },
        "engine_cpu_s": (cpu * 100.0).round() / 100.0,
    });
    print_report(&report);
    worker.close().await;
    for c in clients {
        c.close().await;
    }
}
