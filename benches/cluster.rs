//! Durable queues in cluster mode against the embedded store, in one run:
//! the same load on one engine with its sled queue, then on one engine of a
//! cluster whose queues are on JetStream (a 3-node NATS cluster on loopback,
//! `sync_interval: always`), with job streams of 1 and of 3 replicas.
//!
//! Each setup: `--producers` (64) producers over 8 connections, each waiting
//! for its acknowledgement before the next → durable enqueues/s; then a
//! trivial worker on the same engine runs `--jobs` more while they are
//! enqueued → jobs/s end to end (queue concurrency 64). CPU per job is
//! reported for the engine and for the three NATS servers together: all of
//! them share this machine's cores, so the sum is what a job costs here.
//!
//! ```text
//! cargo bench --bench cluster                # 20,000 jobs per phase
//! cargo bench --bench cluster -- --quick     # 2,000
//! cargo bench --bench cluster -- --json
//! ```

mod common;

use common::nats::NatsCluster;
use common::queue::{clients, ms, produce, round2};
use common::{EngineProcess, cpu_secs, flag, machine, number};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const QUEUE: &str = "bench";
const FUNCTION: &str = "bench::work";

fn payload(i: u64) -> Value {
    json!({ "order": i, "sku": "A-100", "qty": 2 })
}

/// CPU seconds of a set of processes, summed.
fn cpu_of(pids: &[String]) -> f64 {
    pids.iter().map(|p| cpu_secs(p)).sum()
}

/// One setup's enqueue and end-to-end phases.
async fn measure(engine: &EngineProcess, nats: &[String], producers: usize, jobs: u64) -> Value {
    let engine_pid = [engine.pid().to_string()];
    let cs = clients(&engine.url, 8).await;
    let (e0, n0) = (cpu_of(&engine_pid), cpu_of(nats));
    let (took, hist) = produce(&cs, producers, jobs, QUEUE, FUNCTION, payload).await;
    let per_job = |e: f64, n: f64| {
        (
            round2((cpu_of(&engine_pid) - e) * 1e6 / jobs as f64),
            round2((cpu_of(nats) - n) * 1e6 / jobs as f64),
        )
    };
    let (enq_engine_us, enq_nats_us) = per_job(e0, n0);
    let enqueue = json!({
        "enqueues_per_sec": (jobs as f64 / took.as_secs_f64()).round(),
        "ack_p50_ms": ms(hist.value_at_quantile(0.5)),
        "ack_p99_ms": ms(hist.value_at_quantile(0.99)),
        "engine_cpu_us_per_job": enq_engine_us,
        "nats_cpu_us_per_job": enq_nats_us,
    });

    // End to end: the jobs above first, then as many more while they run.
    let ran = Arc::new(AtomicU64::new(0));
    let worker = Client::connect(&engine.url).await.expect("worker");
    let r = ran.clone();
    worker
        .register_function(FUNCTION, move |_input: Value| {
            r.fetch_add(1, Ordering::Relaxed);
            async move { Ok(Value::Null) }
        })
        .expect("register");
    worker.announce("bench-worker").expect("announce");
    wait_ran(&ran, jobs).await;
    let (e0, n0) = (cpu_of(&engine_pid), cpu_of(nats));
    let started = Instant::now();
    produce(&cs, producers, jobs, QUEUE, FUNCTION, payload).await;
    wait_ran(&ran, 2 * jobs).await;
    let secs = started.elapsed().as_secs_f64();
    let (e2e_engine_us, e2e_nats_us) = per_job(e0, n0);
    json!({
        "enqueue": enqueue,
        "end_to_end": {
            "jobs_per_sec": (jobs as f64 / secs).round(),
            "engine_cpu_us_per_job": e2e_engine_us,
            "nats_cpu_us_per_job": e2e_nats_us,
        },
    })
}

/// Until the worker has run `n` jobs (at least once each: a redelivery counts too).
async fn wait_ran(ran: &AtomicU64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while ran.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the jobs never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn queue_toml() -> String {
    format!("[queue.queues.{QUEUE}]\nconcurrency = 64\n")
}

#[tokio::main]
async fn main() {
    let quick = flag("--quick");
    let producers = number("--producers", 64.0) as usize;
    let jobs = number("--jobs", if quick { 2_000.0 } else { 20_000.0 }) as u64;

    let sled = {
        let engine = EngineProcess::start_with_config(&queue_toml());
        measure(&engine, &[], producers, jobs).await
    };
    let nats = NatsCluster::start().await;
    let nats_pids: Vec<String> = nats.pids().iter().map(u32::to_string).collect();
    let mut jetstream = serde_json::Map::new();
    for replicas in [3, 1] {
        // A cluster name per setup: each gets streams of its own.
        let config = format!(
            "{}queues = \"jetstream\"\nreplicas = {replicas}\n{}",
            nats.engine_toml("bench"),
            queue_toml()
        )
        .replace("name = \"test\"", &format!("name = \"r{replicas}\""));
        let engine = EngineProcess::start_with_config(&config);
        let m = measure(&engine, &nats_pids, producers, jobs).await;
        jetstream.insert(format!("r{replicas}"), m);
    }
    let report = json!({
        "machine": machine(),
        "producers": producers,
        "jobs_per_phase": jobs,
        "sled": sled,
        "jetstream": jetstream,
    });
    if flag("--json") {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
}
