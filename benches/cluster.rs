//! Durable queues in cluster mode against the embedded store, in one run:
//! the same load on one engine with its sled queue, then on one engine of a
//! cluster whose queues are on JetStream (a 3-node NATS cluster on loopback,
//! `sync_interval: always`), with job streams of 1 and of 3 replicas; then
//! sync calls to a worker on engine B of a two-engine cluster, made on B
//! itself and across engines from A (NATS request/reply): calls/s with 64 in
//! flight, and latency with one in flight.
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

/// Calls per setup's latency phase (one in flight) and seconds of its
/// throughput phase (`IN_FLIGHT` closed loops).
const LATENCY_CALLS: usize = 2_000;
const IN_FLIGHT: usize = 64;
const ECHO: &str = "bench::echo";

/// Sync calls from `callers` to the echo worker: latency one at a time,
/// then calls/s with [`IN_FLIGHT`] loops for `secs`, with the CPU per call
/// of `pids` (both engines and the NATS servers).
async fn calls(callers: &[Client], pids: &[String], nats: &[String], secs: f64) -> Value {
    let data = json!({ "order": 1, "sku": "A-100" });
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..LATENCY_CALLS {
        let t = Instant::now();
        callers[0].call(ECHO, data.clone()).await.expect("a call");
        hist.record(t.elapsed().as_micros() as u64)
            .expect("recorded");
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (e0, n0) = (cpu_of(pids), cpu_of(nats));
    let started = Instant::now();
    let loops: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let (client, done, stop) = (
                callers[i % callers.len()].clone(),
                done.clone(),
                stop.clone(),
            );
            let data = data.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client.call(ECHO, data.clone()).await.expect("a call");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("a call loop");
    }
    let n = done.load(Ordering::Relaxed) as f64;
    let took = started.elapsed().as_secs_f64();
    json!({
        "calls_per_sec": (n / took).round(),
        "p50_us": hist.value_at_quantile(0.5),
        "p99_us": hist.value_at_quantile(0.99),
        "engines_cpu_us_per_call": round2((cpu_of(pids) - e0) * 1e6 / n),
        "nats_cpu_us_per_call": round2((cpu_of(nats) - n0) * 1e6 / n),
    })
}

/// A worker serving [`ECHO`] on engine B of a two-engine cluster: calls
/// made on B, then the same from A.
async fn call_setups(nats: &NatsCluster, nats_pids: &[String], secs: f64) -> Value {
    let toml = |id: &str| {
        nats.engine_toml(id)
            .replace("name = \"test\"", "name = \"calls\"")
    };
    let a = EngineProcess::start_with_config(&toml("a"));
    let b = EngineProcess::start_with_config(&toml("b"));
    let worker = Client::connect(&b.url).await.expect("worker");
    worker
        .register_function(ECHO, |input: Value| async move { Ok(input) })
        .expect("register");
    worker.announce("bench-echo").expect("announce");
    let pids = [a.pid().to_string(), b.pid().to_string()];
    let mut out = serde_json::Map::new();
    for (name, engine) in [("same_engine", &b), ("across_engines", &a)] {
        let callers = clients(&engine.url, 8).await;
        callers[0]
            .wait_for_function(ECHO, Duration::from_secs(30))
            .await
            .expect("the echo function reaches the caller's engine");
        out.insert(name.into(), calls(&callers, &pids, nats_pids, secs).await);
    }
    Value::Object(out)
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
    let call_secs = if quick { 2.0 } else { 10.0 };
    let calls = call_setups(&nats, &nats_pids, call_secs).await;
    let report = json!({
        "machine": machine(),
        "producers": producers,
        "jobs_per_phase": jobs,
        "sled": sled,
        "jetstream": jetstream,
        "sync_calls": calls,
    });
    if flag("--json") {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
}
