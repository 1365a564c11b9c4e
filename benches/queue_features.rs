//! What issue 18's queue features cost on the end-to-end queue benchmark:
//! 64 producers enqueue, one worker runs each job at once, timed from the
//! first enqueue to the last completion, with engine CPU per job. Each
//! variant has its own queue (concurrency 64) on one engine, and the
//! variants run interleaved, round after round, so drift hits them alike:
//!
//! - off: no feature;
//! - rate: `rate` far above the load (10,000,000/s);
//! - fair_1000: `fair_by` over 1,000 keys (job i's key is i mod 1000);
//! - heartbeat: the handler beats once per job (`queue::heartbeat`), what a
//!   job a third of its lease long pays;
//! - progress: the handler reports progress once per job (`queue::progress`,
//!   a durable write).
//!
//! ```text
//! cargo bench --bench queue_features              # 3 rounds × 50,000 jobs per variant
//! cargo bench --bench queue_features -- --quick   # 1 round × 10,000
//! ```
//! Medians per variant and their ratio to `off`; no target is asserted.

mod common;

use common::queue::{CpuMeter, clients, produce, round2, until_completed};
use common::{EngineProcess, flag, machine, number, print_report, settle_disk};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PRODUCERS: usize = 64;
const CONNECTIONS: usize = 8;

/// One variant: its queue's extra settings, its jobs' payload, and what the
/// handler does besides returning.
struct Variant {
    name: &'static str,
    settings: &'static str,
    payload: fn(u64) -> Value,
    handler: Handler,
}

const fn variant(
    name: &'static str,
    settings: &'static str,
    payload: fn(u64) -> Value,
    handler: Handler,
) -> Variant {
    Variant {
        name,
        settings,
        payload,
        handler,
    }
}

const VARIANTS: [Variant; 5] = [
    variant("off", "", plain, Handler::Nothing),
    variant("rate", "rate = \"10000000/1s\"\n", plain, Handler::Nothing),
    variant(
        "fair_1000",
        "fair_by = \"tenant\"\n",
        tenant,
        Handler::Nothing,
    ),
    variant("heartbeat", "", plain, Handler::Heartbeat),
    variant("progress", "", plain, Handler::Progress),
];

#[derive(Clone, Copy)]
enum Handler {
    Nothing,
    Heartbeat,
    Progress,
}

fn plain(i: u64) -> Value {
    json!({ "order": i, "sku": "A-100", "qty": 2 })
}

fn tenant(i: u64) -> Value {
    json!({ "order": i, "tenant": format!("t{}", i % 1000) })
}

/// A worker serving `function` as `what` says; the handler calls back
/// through `caller` (its own connection would work too).
async fn worker(url: &str, function: &str, what: Handler) -> Client {
    let w = Client::connect(url).await.expect("worker");
    let caller = w.clone();
    w.register_function_with_metadata(function, move |_input: Value, metadata: Value| {
        let caller = caller.clone();
        async move {
            let receipt = metadata["job"]["receipt"].clone();
            match what {
                Handler::Nothing => {}
                Handler::Heartbeat => {
                    caller
                        .call("queue::heartbeat", json!({ "receipt": receipt }))
                        .await
                        .expect("heartbeat");
                }
                Handler::Progress => {
                    caller
                        .call(
                            "queue::progress",
                            json!({ "receipt": receipt, "progress": 50 }),
                        )
                        .await
                        .expect("progress");
                }
            }
            Ok(Value::Null)
        }
    })
    .expect("register");
    w.announce("bench-features-worker").expect("announce");
    w
}

/// One end-to-end run of `jobs` on `queue`: (jobs/s, engine CPU µs per job).
async fn run(
    engine: &EngineProcess,
    producers: &[Client],
    queue: &str,
    payload: fn(u64) -> Value,
    what: Handler,
    jobs: u64,
) -> (f64, f64) {
    let function = format!("bench::{queue}");
    let w = worker(&engine.url, &function, what).await;
    producers[0]
        .wait_for_function(&function, Duration::from_secs(10))
        .await
        .expect("registered");
    let cpu = CpuMeter::start(engine);
    let started = Instant::now();
    // Each run adds `jobs` completions to the queue's count (none before its first enqueue).
    let before = match producers[0]
        .call("queue::stats", json!({ "queue": queue }))
        .await
    {
        Ok(s) => s["completed"].as_u64().unwrap_or(0),
        Err(_) => 0,
    };
    produce(producers, PRODUCERS, jobs, queue, &function, payload).await;
    until_completed(&producers[0], queue, before + jobs).await;
    let elapsed = started.elapsed();
    let (engine_us, _) = cpu.per_item_us(jobs);
    w.close().await;
    ((jobs as f64 / elapsed.as_secs_f64()).round(), engine_us)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = flag("--quick");
    let rounds = number("--rounds", if quick { 1.0 } else { 3.0 }) as usize;
    let jobs = number("--jobs", if quick { 10_000.0 } else { 50_000.0 }) as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        settle_disk();
        let mut config = String::new();
        for v in &VARIANTS {
            // Completed jobs are kept for the whole bench: each run waits for
            // its queue's completed count to grow by its jobs.
            config.push_str(&format!(
                "[queue.queues.feat-{}]\nconcurrency = 64\nretention = \"1h\"\n{}",
                v.name, v.settings
            ));
        }
        let engine = EngineProcess::start_with_config(&config);
        let producers = clients(&engine.url, CONNECTIONS).await;
        let mut per: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); VARIANTS.len()];
        for _ in 0..rounds {
            for (i, v) in VARIANTS.iter().enumerate() {
                let queue = format!("feat-{}", v.name);
                let (rate, cpu) =
                    run(&engine, &producers, &queue, v.payload, v.handler, jobs).await;
                per[i].0.push(rate);
                per[i].1.push(cpu);
            }
        }
        let off = median(per[0].0.clone());
        let variants: Vec<Value> = VARIANTS
            .iter()
            .zip(per)
            .map(|(v, (rates, cpus))| {
                let m = median(rates.clone());
                json!({
                    "variant": v.name,
                    "jobs_per_sec": rates,
                    "median_jobs_per_sec": m,
                    "ratio_to_off": round2(m / off),
                    "engine_cpu_us_per_job": median(cpus),
                })
            })
            .collect();
        json!({
            "machine": machine(),
            "jobs_per_run": jobs,
            "rounds": rounds,
            "producers": PRODUCERS,
            "variants": variants,
            "target": "each feature on: <= 10 % loss against off",
        })
    });
    print_report(&report);
}
