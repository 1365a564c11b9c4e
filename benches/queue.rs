//! Durable-queue load generator, against the real engine binary.
//!
//! 1. enqueue: `--producers` concurrent producers (64), each waiting for its
//!    acknowledgement (after fsync) before the next → durable enqueues/s and
//!    acknowledgement latency;
//! 2. end to end: the same producers while a trivial worker runs the jobs →
//!    jobs/s from the first enqueue to the last completion. The queue is
//!    declared with `--e2e-concurrency` (64) jobs in flight: at the default of
//!    10 a queue's throughput is 10 / (one job's round trip), whatever the
//!    engine's speed, so the report also gives a run at the default;
//! 3. idle latency: one job at a time on an idle queue → enqueue → start;
//! 4. restart: `--restart-jobs` queued jobs (1,000,000), SIGKILL, restart →
//!    time until an enqueue is acknowledged again, and disk bytes per job.
//!
//! ```text
//! cargo bench --bench queue                 # full run (several minutes: 1M jobs)
//! cargo bench --bench queue -- --quick      # smoke run (~30 s)
//! cargo bench --bench queue -- --json       # one JSON object on stdout
//! ```
//! Targets are printed for reference and never asserted.

mod common;

use common::queue::{CpuMeter, clients, ms, produce, round2, stats, until_completed};
use common::{EngineProcess, disk_bytes, flag, machine, number, settle_disk};
use hdrhistogram::Histogram;
use qmesh::client::Client;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 8;

fn payload(i: u64) -> Value {
    json!({ "order": i, "sku": "A-100", "qty": 2 })
}

async fn end_to_end(
    engine: &EngineProcess,
    queue: &str,
    producers: &[Client],
    n_producers: usize,
    jobs: u64,
) -> Value {
    let url = &engine.url;
    let worker = Client::connect(url).await.expect("worker");
    worker
        .register_function(
            "bench::work",
            |_input: Value| async move { Ok(Value::Null) },
        )
        .expect("register");
    worker.announce("bench-worker").expect("announce");
    producers[0]
        .wait_for_function("bench::work", Duration::from_secs(10))
        .await
        .expect("registered");
    let cpu = CpuMeter::start(engine);
    let started = Instant::now();
    let (enqueued_in, _) =
        produce(producers, n_producers, jobs, queue, "bench::work", payload).await;
    until_completed(&producers[0], queue, jobs).await;
    let elapsed = started.elapsed();
    let (engine_us, client_us) = cpu.per_item_us(jobs);
    worker.close().await;
    json!({
        "jobs": jobs,
        "jobs_per_sec": (jobs as f64 / elapsed.as_secs_f64()).round(),
        "engine_cpu_us_per_job": engine_us,
        "client_cpu_us_per_job": client_us,
        "enqueue_phase_secs": round2(enqueued_in.as_secs_f64()),
        "total_secs": round2(elapsed.as_secs_f64()),
    })
}

/// One job at a time on an idle queue: time from sending the enqueue to the handler starting.
async fn idle_latency(url: &str, producer: &Client, samples: usize) -> Value {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let worker = Client::connect(url).await.expect("worker");
    worker
        .register_function("bench::stamp", move |_input: Value| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                Ok(Value::Null)
            }
        })
        .expect("register");
    worker.announce("bench-stamp").expect("announce");
    producer
        .wait_for_function("bench::stamp", Duration::from_secs(10))
        .await
        .expect("registered");
    let mut h = Histogram::<u64>::new(3).unwrap();
    for i in 0..samples as u64 {
        let sent = Instant::now();
        let p = producer.clone();
        let ack =
            tokio::spawn(async move { p.enqueue("bench-idle", "bench::stamp", payload(i)).await });
        let started = rx.recv().await.expect("handler ran");
        ack.await.unwrap().expect("acknowledged");
        let _ = h.record(started.duration_since(sent).as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.close().await;
    json!({
        "samples": samples,
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

async fn restart(n_producers: usize, jobs: u64) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = EngineProcess::start_in(dir.path());
    let producers = clients(&engine.url, CONNECTIONS).await;
    let (elapsed, _) = produce(
        &producers,
        n_producers,
        jobs,
        "bench-restart",
        "bench::nobody",
        payload,
    )
    .await;
    for p in &producers {
        p.close().await;
    }
    engine.kill();
    let bytes = disk_bytes(&dir.path().join("store"));
    let t = Instant::now();
    let engine = EngineProcess::start_in(dir.path());
    let listening = t.elapsed();
    let c = Client::connect(&engine.url)
        .await
        .expect("connect after restart");
    c.enqueue("bench-restart", "bench::nobody", payload(0))
        .await
        .expect("enqueue after restart");
    let accepting = t.elapsed();
    let s = stats(&c, "bench-restart").await;
    json!({
        "queued_jobs": jobs,
        "fill_jobs_per_sec": (jobs as f64 / elapsed.as_secs_f64()).round(),
        "restart_to_listening_ms": listening.as_millis() as u64,
        "restart_to_first_ack_ms": accepting.as_millis() as u64,
        "ready_after_restart": s["ready"].as_u64().unwrap_or(0) + s["waiting_for_worker"].as_u64().unwrap_or(0),
        "disk_bytes": bytes,
        "disk_bytes_per_job": bytes / jobs.max(1),
    })
}

fn main() {
    let quick = flag("--quick");
    let producers = number("--producers", 64.0) as usize;
    let e2e_concurrency = number("--e2e-concurrency", 64.0) as usize;
    let enqueue_jobs = number("--enqueue-jobs", if quick { 20_000.0 } else { 200_000.0 }) as u64;
    let e2e_jobs = number("--e2e-jobs", if quick { 20_000.0 } else { 200_000.0 }) as u64;
    let restart_jobs = number(
        "--restart-jobs",
        if quick { 100_000.0 } else { 1_000_000.0 },
    ) as u64;
    // One client thread, so the engine keeps the other core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        settle_disk();
        let engine = EngineProcess::start_with_config(&format!(
            "[queue.queues.bench-e2e]\nconcurrency = {e2e_concurrency}\n"
        ));
        let producer_clients = clients(&engine.url, CONNECTIONS).await;
        let cpu = CpuMeter::start(&engine);
        let (elapsed, acks) = produce(
            &producer_clients,
            producers,
            enqueue_jobs,
            "bench-enqueue",
            "bench::nobody",
            payload,
        )
        .await;
        let (engine_us, client_us) = cpu.per_item_us(enqueue_jobs);
        let enqueue = json!({
            "jobs": enqueue_jobs,
            "producers": producers,
            "enqueues_per_sec": (enqueue_jobs as f64 / elapsed.as_secs_f64()).round(),
            "ack_p50_ms": ms(acks.value_at_quantile(0.5)),
            "ack_p99_ms": ms(acks.value_at_quantile(0.99)),
            "engine_cpu_us_per_job": engine_us,
            "client_cpu_us_per_job": client_us,
        });
        let mut e2e =
            end_to_end(&engine, "bench-e2e", &producer_clients, producers, e2e_jobs).await;
        e2e["queue_concurrency"] = json!(e2e_concurrency);
        let mut e2e_default = end_to_end(
            &engine,
            "bench-e2e-default",
            &producer_clients,
            producers,
            e2e_jobs,
        )
        .await;
        e2e_default["queue_concurrency"] = json!("default (10)");
        let idle = idle_latency(
            &engine.url,
            &producer_clients[0],
            if quick { 50 } else { 300 },
        )
        .await;
        drop(engine);
        let restart = restart(producers, restart_jobs).await;
        json!({
            "machine": machine(),
            "enqueue": enqueue,
            "end_to_end": e2e,
            "end_to_end_default_concurrency": e2e_default,
            "idle_enqueue_to_start": idle,
            "restart": restart,
            "targets": {
                "enqueues_per_sec": 20_000, "jobs_per_sec": 10_000,
                "idle_p50_ms": 5.0, "restart_to_first_ack_ms": 2_000,
            },
        })
    });
    if flag("--json") {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
}
