//! Round-trip load generator: caller → engine → worker → caller, small payloads.
//!
//! Starts the real engine binary as its own process, connects one worker
//! client serving `bench::echo` and one or more caller clients, then measures:
//!
//! 1. memory: the engine's RSS (VmRSS) before and after opening idle worker
//!    sockets that completed the handshake (`workerregistered` received);
//! 2. saturation: a fixed number of calls in flight for a fixed time → calls/s;
//! 3. latency: open-loop calls at half the target rate (15,000/s, the load the
//!    p99 target is set at) and again at half the saturated rate → p50/p90/p99/p99.9.
//!
//! ```text
//! cargo bench --bench roundtrip                      # full run (~45 s)
//! cargo bench --bench roundtrip -- --quick           # smoke run (~6 s)
//! cargo bench --bench roundtrip -- --json            # one JSON object on stdout
//! cargo bench --bench roundtrip -- --duration 20 --warmup 3 --in-flight 64 \
//!     --callers 2 --idle-conns 1000 --client-threads 2 --latency-rate 5000
//! ```
//! `QMESH_BENCH_DURATION` / `QMESH_BENCH_WARMUP` (seconds) set the defaults;
//! `QMESH_BENCH_ENGINE` runs another engine binary (to compare builds).
//! Targets are printed for reference and never asserted.

mod common;

use common::{EngineProcess, cpu_secs, machine, rss_kib};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const ECHO: &str = "bench::echo";
const TARGET_CALLS_PER_SEC: f64 = 30_000.0;
const TARGET_P99_MS: f64 = 2.0;
const TARGET_KIB_PER_CONN: f64 = 64.0;

struct Args {
    warmup: Duration,
    duration: Duration,
    in_flight: usize,
    callers: usize,
    idle_conns: usize,
    client_threads: usize,
    /// Calls/s of the first latency phase; by default half the target rate.
    latency_rate: Option<f64>,
    json: bool,
}

impl Args {
    fn parse() -> Args {
        let env_secs = |k: &str, d: f64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let mut a = Args {
            warmup: Duration::from_secs_f64(env_secs("QMESH_BENCH_WARMUP", 2.0)),
            duration: Duration::from_secs_f64(env_secs("QMESH_BENCH_DURATION", 10.0)),
            in_flight: 64,
            callers: 2,
            idle_conns: 1000,
            client_threads: 2,
            latency_rate: None,
            json: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> f64 {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match arg.as_str() {
                "--quick" => {
                    a.warmup = Duration::from_millis(500);
                    a.duration = Duration::from_secs(2);
                    a.idle_conns = 200;
                }
                "--json" => a.json = true,
                "--duration" => a.duration = Duration::from_secs_f64(value("--duration")),
                "--warmup" => a.warmup = Duration::from_secs_f64(value("--warmup")),
                "--in-flight" => a.in_flight = value("--in-flight") as usize,
                "--callers" => a.callers = (value("--callers") as usize).max(1),
                "--idle-conns" => a.idle_conns = value("--idle-conns") as usize,
                "--client-threads" => {
                    a.client_threads = (value("--client-threads") as usize).max(1)
                }
                "--latency-rate" => a.latency_rate = Some(value("--latency-rate")),
                "--bench" => {} // added by `cargo bench`
                other => eprintln!("roundtrip: ignoring unknown argument {other:?}"),
            }
        }
        a
    }
}

/// CPU seconds used so far by the engine and by this process.
fn cpu_now(engine_pid: u32) -> (f64, f64) {
    (cpu_secs(&engine_pid.to_string()), cpu_secs("self"))
}

fn payload() -> Value {
    json!({ "n": 42, "s": "hello" })
}

struct Memory {
    connections: usize,
    before_kib: u64,
    after_kib: u64,
}

impl Memory {
    fn per_conn_kib(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / self.connections.max(1) as f64
    }
}

/// Opens `n` raw worker sockets, each read up to its `workerregistered`, and
/// compares the engine's RSS before and after.
async fn measure_memory(engine: &EngineProcess, n: usize) -> Memory {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = rss_kib(engine.pid());
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(engine.url.as_str())
            .await
            .expect("idle socket connects");
        match ws.next().await {
            Some(Ok(m)) if m.to_text().is_ok_and(|t| t.contains("workerregistered")) => {}
            other => panic!("expected workerregistered, got {other:?}"),
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = rss_kib(engine.pid());
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Memory {
        connections: n,
        before_kib,
        after_kib,
    }
}

struct Saturation {
    calls: u64,
    errors: u64,
    secs: f64,
    engine_cpu: f64,
    client_cpu: f64,
}

impl Saturation {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
}

/// `in_flight` closed loops spread over the callers; counts calls that
/// finish between the end of the warm-up and the end of the run.
async fn saturate(callers: &[Client], args: &Args, engine_pid: u32) -> Saturation {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..args.in_flight)
        .map(|i| {
            let (client, done, errors, stop) = (
                callers[i % callers.len()].clone(),
                done.clone(),
                errors.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let data = payload();
                while !stop.load(Ordering::Relaxed) {
                    match client.call(ECHO, data.clone()).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(args.warmup).await;
    let (c0, e0, t0) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        Instant::now(),
    );
    let (eng0, me0) = cpu_now(engine_pid);
    tokio::time::sleep(args.duration).await;
    let (c1, e1, secs) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let (eng1, me1) = cpu_now(engine_pid);
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    Saturation {
        calls: c1 - c0,
        errors: e1 - e0,
        secs,
        engine_cpu: (eng1 - eng0) / secs,
        client_cpu: (me1 - me0) / secs,
    }
}

struct Latency {
    target_rate: f64,
    achieved_rate: f64,
    errors: u64,
    hist: Histogram<u64>,
    engine_cpu: f64,
    client_cpu: f64,
}

impl Latency {
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    fn report(&self) -> Value {
        json!({
            "target_rate": self.target_rate.round(), "achieved_rate": self.achieved_rate.round(),
            "calls": self.hist.len(), "errors": self.errors,
            "p50_ms": round3(self.ms(0.5)), "p90_ms": round3(self.ms(0.9)), "p99_ms": round3(self.ms(0.99)),
            "p999_ms": round3(self.ms(0.999)), "max_ms": round3(self.hist.max() as f64 / 1e6),
            "engine_cpu_cores": round3(self.engine_cpu), "loadgen_cpu_cores": round3(self.client_cpu),
        })
    }
}

/// Open loop: a pacing thread starts each call on a fixed schedule (sleeping
/// to the next send time, so calls go out evenly rather than in 1 ms timer
/// bursts) whether or not earlier calls have finished. A call's latency runs
/// from the moment its task sends it to the moment its result is parsed.
async fn paced(callers: &[Client], rate: f64, args: &Args, engine_pid: u32) -> Latency {
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds"),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let outstanding = Arc::new(AtomicU64::new(0));
    let (callers, runtime) = (callers.to_vec(), tokio::runtime::Handle::current());
    let (warmup, duration) = (args.warmup, args.duration);
    let pacer = {
        let (hist, errors, outstanding) = (hist.clone(), errors.clone(), outstanding.clone());
        tokio::task::spawn_blocking(move || {
            let every = Duration::from_secs_f64(1.0 / rate);
            let start = Instant::now();
            let (measure_from, end) = (start + warmup, start + warmup + duration);
            let data = payload();
            let mut sent = 0u32;
            let mut cpu_from = None;
            loop {
                let due = start + every * sent;
                if due >= end {
                    break;
                }
                if cpu_from.is_none() && due >= measure_from {
                    cpu_from = Some(cpu_now(engine_pid));
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (client, data) = (callers[sent as usize % callers.len()].clone(), data.clone());
                let (hist, errors, outstanding) =
                    (hist.clone(), errors.clone(), outstanding.clone());
                let measured = due >= measure_from;
                outstanding.fetch_add(1, Ordering::Relaxed);
                runtime.spawn(async move {
                    let at = Instant::now();
                    let ok = client.call(ECHO, data).await.is_ok();
                    let took = at.elapsed();
                    if measured && ok {
                        let mut h = hist.lock().unwrap_or_else(PoisonError::into_inner);
                        h.saturating_record(took.as_nanos() as u64);
                    } else if measured {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                });
                sent += 1;
            }
            let (eng0, me0) = cpu_from.unwrap_or_else(|| cpu_now(engine_pid));
            let (eng1, me1) = cpu_now(engine_pid);
            let secs = duration.as_secs_f64();
            ((eng1 - eng0) / secs, (me1 - me0) / secs)
        })
    };
    let (engine_cpu, client_cpu) = pacer.await.expect("pacing thread");
    let deadline = Instant::now() + Duration::from_secs(35);
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hist = std::mem::replace(
        &mut *hist.lock().unwrap_or_else(PoisonError::into_inner),
        Histogram::new(1).expect("histogram"),
    );
    let errors = errors.load(Ordering::Relaxed);
    Latency {
        target_rate: rate,
        achieved_rate: (hist.len() + errors) as f64 / args.duration.as_secs_f64(),
        errors,
        hist,
        engine_cpu,
        client_cpu,
    }
}

async fn connect_clients(url: &str, callers: usize) -> (Client, Vec<Client>) {
    let worker = Client::connect(url).await.expect("worker connects");
    worker
        .register_function(ECHO, |input: Value| async move { Ok(input) })
        .expect("register");
    worker.announce("bench-worker").expect("announce");
    let mut clients = Vec::new();
    for i in 0..callers {
        let c = Client::connect(url).await.expect("caller connects");
        c.announce(&format!("bench-caller-{i}")).expect("announce");
        clients.push(c);
    }
    clients[0]
        .wait_for_function(ECHO, Duration::from_secs(10))
        .await
        .expect("bench::echo is registered");
    (worker, clients)
}

fn main() {
    let args = Args::parse();
    let engine = EngineProcess::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .expect("client runtime");
    let (memory, sat, [lat, lat_half_sat]) = runtime.block_on(async {
        let (worker, callers) = connect_clients(&engine.url, args.callers).await;
        let memory = measure_memory(&engine, args.idle_conns).await;
        let sat = saturate(&callers, &args, engine.pid()).await;
        let rate = args
            .latency_rate
            .unwrap_or(TARGET_CALLS_PER_SEC / 2.0)
            .max(1.0);
        let lat = paced(&callers, rate, &args, engine.pid()).await;
        let lat_half_sat = paced(&callers, (sat.rate() / 2.0).max(1.0), &args, engine.pid()).await;
        for c in callers.iter().chain([&worker]) {
            c.close().await;
        }
        (memory, sat, [lat, lat_half_sat])
    });
    let report = json!({
        "machine": machine(),
        "config": {
            "warmup_s": args.warmup.as_secs_f64(), "duration_s": args.duration.as_secs_f64(),
            "in_flight": args.in_flight, "callers": args.callers, "client_threads": args.client_threads,
            "payload_bytes": payload().to_string().len(),
        },
        "saturation": {
            "calls": sat.calls, "errors": sat.errors, "seconds": sat.secs, "calls_per_sec": sat.rate().round(),
            "engine_cpu_cores": round3(sat.engine_cpu), "loadgen_cpu_cores": round3(sat.client_cpu),
            "engine_cpu_us_per_call": round3(sat.engine_cpu * 1e6 / sat.rate()),
        },
        "latency": lat.report(),
        "latency_half_saturation": lat_half_sat.report(),
        "memory": {
            "idle_connections": memory.connections, "rss_before_kib": memory.before_kib, "rss_after_kib": memory.after_kib,
            "kib_per_connection": round3(memory.per_conn_kib()),
        },
        "targets_met": {
            "throughput": sat.rate() >= TARGET_CALLS_PER_SEC,
            "p99": lat.ms(0.99) < TARGET_P99_MS,
            "memory": memory.per_conn_kib() < TARGET_KIB_PER_CONN,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn print_text(r: &Value) {
    let (m, c, s, l, mem, t) = (
        &r["machine"],
        &r["config"],
        &r["saturation"],
        &r["latency"],
        &r["memory"],
        &r["targets_met"],
    );
    let mark = |ok: &Value| {
        if ok.as_bool() == Some(true) {
            "met"
        } else {
            "MISSED"
        }
    };
    println!("qmesh round trip (caller → engine → worker → caller)");
    println!(
        "machine     {} cores, {}, {} GiB",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["mem_gib"]
    );
    println!(
        "config      {} in flight over {} caller(s), {} client thread(s), {} s after {} s warm-up, {}-byte payload",
        c["in_flight"],
        c["callers"],
        c["client_threads"],
        c["duration_s"],
        c["warmup_s"],
        c["payload_bytes"]
    );
    println!();
    println!(
        "saturation  {} calls/s ({} calls, {} errors)   target ≥ {TARGET_CALLS_PER_SEC}: {}",
        s["calls_per_sec"],
        s["calls"],
        s["errors"],
        mark(&t["throughput"])
    );
    println!(
        "            CPU: engine {} cores ({} µs/call), load generator {} cores",
        s["engine_cpu_cores"], s["engine_cpu_us_per_call"], s["loadgen_cpu_cores"]
    );
    print_latency(
        "latency",
        l,
        &format!("target p99 < {TARGET_P99_MS} ms: {}", mark(&t["p99"])),
    );
    print_latency(
        "",
        &r["latency_half_saturation"],
        "(half the saturated rate; no target)",
    );
    println!(
        "memory      {} KiB per idle worker connection ({} connections, RSS {} → {} KiB)   target < {TARGET_KIB_PER_CONN} KiB: {}",
        mem["kib_per_connection"],
        mem["idle_connections"],
        mem["rss_before_kib"],
        mem["rss_after_kib"],
        mark(&t["memory"])
    );
}

fn print_latency(label: &str, l: &Value, verdict: &str) {
    println!(
        "{label:<11} at {} calls/s (asked {}): p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms ({} errors)   {verdict}",
        l["achieved_rate"],
        l["target_rate"],
        l["p50_ms"],
        l["p90_ms"],
        l["p99_ms"],
        l["p999_ms"],
        l["max_ms"],
        l["errors"],
    );
    println!(
        "            CPU: engine {} cores, load generator {} cores",
        l["engine_cpu_cores"], l["loadgen_cpu_cores"]
    );
}
