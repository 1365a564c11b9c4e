//! Shared by the queue benchmarks: producer clients, a closed-loop enqueue
//! load, queue stats, and CPU per job of the engine and of the bench.

use hdrhistogram::Histogram;
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{EngineProcess, cpu_secs};

/// `n` announced producer connections.
pub async fn clients(url: &str, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..n {
        let c = Client::connect(url).await.expect("connect");
        c.announce(&format!("bench-producer-{i}"))
            .expect("announce");
        out.push(c);
    }
    out
}

/// `producers` tasks enqueue `payload(i)` until `total` jobs are
/// acknowledged; returns (elapsed, acknowledgement latency histogram in µs).
pub async fn produce(
    clients: &[Client],
    producers: usize,
    total: u64,
    queue: &str,
    function: &str,
    payload: fn(u64) -> Value,
) -> (Duration, Histogram<u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (c, next, queue, function) = (
            clients[p % clients.len()].clone(),
            next.clone(),
            queue.to_owned(),
            function.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return h;
                }
                let t = Instant::now();
                c.enqueue(&queue, &function, payload(i))
                    .await
                    .expect("enqueue acknowledged");
                let _ = h.record(t.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    (started.elapsed(), all)
}

pub async fn stats(c: &Client, queue: &str) -> Value {
    c.call("queue::stats", json!({ "queue": queue }))
        .await
        .expect("queue::stats")
}

/// Waits until `queue` has completed `jobs` jobs.
pub async fn until_completed(c: &Client, queue: &str, jobs: u64) {
    loop {
        let s = stats(c, queue).await;
        if s["completed"].as_u64().unwrap_or(0) >= jobs {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time the engine and this process spend over a phase: a figure the
/// other load on a 2-core machine distorts far less than throughput.
pub struct CpuMeter {
    pid: String,
    engine: f64,
    client: f64,
}

impl CpuMeter {
    pub fn start(engine: &EngineProcess) -> Self {
        let pid = engine.pid().to_string();
        Self {
            engine: cpu_secs(&pid),
            client: cpu_secs("self"),
            pid,
        }
    }

    /// (engine, client) CPU µs per item since `start`.
    pub fn per_item_us(&self, items: u64) -> (f64, f64) {
        let per = |secs: f64| round2(secs * 1e6 / items.max(1) as f64);
        (
            per(cpu_secs(&self.pid) - self.engine),
            per(cpu_secs("self") - self.client),
        )
    }
}

pub fn ms(us: u64) -> f64 {
    round2(us as f64 / 1000.0)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
