//! HTTP trigger round trip: client → engine's HTTP listener → `http` route →
//! worker → engine → client, 64 concurrent keep-alive clients, a small JSON
//! body each way; and the same function called directly over the worker
//! protocol with 64 calls in flight. Both again with one client at a time,
//! for what HTTP adds to a single request.
//!
//! ```text
//! cargo bench --bench http                  # 2 s warm-up, 10 s per phase
//! cargo bench --bench http -- --quick       # smoke run
//! cargo bench --bench http -- --clients 64 --duration 10 --json
//! ```
//! The engine is the real binary in its own process; the load generator and
//! the worker share this process (two runtime threads), so on a 2-core
//! machine everything competes for the same two cores. Targets are printed
//! for reference, never asserted.

mod common;

use common::{EngineProcess, cpu_secs, flag, machine, number};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

const HANDLER: &str = "bench::http";
const TARGET_REQ_PER_SEC: f64 = 15_000.0;
const TARGET_P99_MS: f64 = 10.0;
const BODY: &str = r#"{"user":"ada","action":"signup","n":42}"#;

struct Phase {
    done: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    engine_cpu: f64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.done as f64 / self.secs
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn report(&self) -> Value {
        json!({
            "requests": self.done, "errors": self.errors, "seconds": round3(self.secs),
            "per_sec": self.rate().round(),
            "p50_ms": round3(self.ms(0.5)), "p90_ms": round3(self.ms(0.9)),
            "p99_ms": round3(self.ms(0.99)), "p999_ms": round3(self.ms(0.999)),
            "engine_cpu_cores": round3(self.engine_cpu),
            "engine_cpu_us_per_request": round3(self.engine_cpu * 1e6 / self.rate().max(1.0)),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `clients` loops of `one` for warm-up then `duration`; records latencies after warm-up.
async fn run<F, Fut>(
    clients: usize,
    warmup: Duration,
    duration: Duration,
    pid: u32,
    one: F,
) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<
            Output = Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, bool> + Send>,
        > + Send,
{
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (hist, done, errors, measuring, stop, one) = (
            hist.clone(),
            done.clone(),
            errors.clone(),
            measuring.clone(),
            stop.clone(),
            one.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut request = one(i).await;
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = request().await;
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        let _ = local.record(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(&local)
                .ok();
        }));
    }
    tokio::time::sleep(warmup).await;
    let cpu0 = cpu_secs(&pid.to_string());
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let engine_cpu = (cpu_secs(&pid.to_string()) - cpu0) / secs;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let hist = std::mem::replace(
        &mut *hist.lock().unwrap_or_else(PoisonError::into_inner),
        Histogram::new(1).expect("histogram"),
    );
    Phase {
        done: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        hist,
        engine_cpu,
    }
}

/// One keep-alive HTTP/1.1 connection posting `BODY` to the route.
async fn http_client(
    addr: std::net::SocketAddr,
) -> Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, bool> + Send> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    tcp.set_nodelay(true).ok();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let uri = format!("http://{addr}/bench/items/7?verbose=1");
    Box::new(move || {
        let (sender, uri) = (sender.clone(), uri.clone());
        Box::pin(async move {
            let req = hyper::Request::post(uri)
                .header("content-type", "application/json")
                .header("host", "bench")
                .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                .expect("request");
            let mut s = sender.lock().await;
            let Ok(resp) = s.send_request(req).await else {
                return false;
            };
            let ok = resp.status() == 200;
            ok && resp.into_body().collect().await.is_ok()
        })
    })
}

fn main() {
    let quick = flag("--quick");
    let clients = number("--clients", 64.0) as usize;
    let warmup = Duration::from_secs_f64(number("--warmup", if quick { 0.5 } else { 2.0 }));
    let duration = Duration::from_secs_f64(number("--duration", if quick { 2.0 } else { 10.0 }));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let engine =
        EngineProcess::start_with_config(&format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pid = engine.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (http, direct, http_one, direct_one) = runtime.block_on(async {
        let worker = Client::connect(&engine.url).await.expect("worker connects");
        worker
            .register_function(HANDLER, |input: Value| async move {
                Ok(json!({"status_code": 200, "body": {"ok": true, "id": input["path_params"]["id"], "echo": input["body"]}}))
            })
            .expect("register");
        worker.announce("bench-http-worker").expect("announce");
        let caller = Client::connect(&engine.url).await.expect("caller connects");
        caller
            .wait_for_function(HANDLER, Duration::from_secs(10))
            .await
            .expect("registered");
        caller
            .call(
                "engine::register_trigger",
                json!({"trigger_type": "http", "function_id": HANDLER,
                       "config": {"api_path": "bench/items/:id", "http_method": "POST"}}),
            )
            .await
            .expect("route bound");

        let http = run(clients, warmup, duration, pid, move |_| http_client(http_addr)).await;
        // One client at a time: what HTTP adds to a single request on an idle engine.
        let short = duration / 2;
        let http_one = run(1, warmup / 2, short, pid, move |_| http_client(http_addr)).await;

        // The same function called directly: the payload a route would send.
        let payload = json!({"path_params": {"id": "7"}, "query_params": {"verbose": "1"},
            "body": serde_json::from_str::<Value>(BODY).unwrap()});
        let caller = Arc::new(caller);
        let direct_client = move |_| {
            let (caller, payload) = (caller.clone(), payload.clone());
            async move {
                Box::new(move || {
                    let (caller, payload) = (caller.clone(), payload.clone());
                    Box::pin(async move { caller.call(HANDLER, payload).await.is_ok() })
                        as futures_util::future::BoxFuture<'static, bool>
                }) as Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, bool> + Send>
            }
        };
        let direct = run(clients, warmup, duration, pid, direct_client.clone()).await;
        let direct_one = run(1, warmup / 2, short, pid, direct_client).await;
        worker.close().await;
        (http, direct, http_one, direct_one)
    });
    let report = json!({
        "machine": machine(),
        "config": {"clients": clients, "warmup_s": warmup.as_secs_f64(), "duration_s": duration.as_secs_f64(),
                   "request_body_bytes": BODY.len()},
        "http": http.report(),
        "direct_call": direct.report(),
        "http_one_client": http_one.report(),
        "direct_call_one_client": direct_one.report(),
        "added_by_http_ms": {
            "one_client_p50": round3(http_one.ms(0.5) - direct_one.ms(0.5)),
            "one_client_p99": round3(http_one.ms(0.99) - direct_one.ms(0.99)),
            "loaded_p50": round3(http.ms(0.5) - direct.ms(0.5)),
            "loaded_p99": round3(http.ms(0.99) - direct.ms(0.99)),
        },
        "targets_met": {"throughput": http.rate() >= TARGET_REQ_PER_SEC, "p99": http.ms(0.99) < TARGET_P99_MS},
    });
    if flag("--json") {
        println!("{report}");
        return;
    }
    let m = &report["machine"];
    println!("qmesh HTTP trigger round trip (client → HTTP route → worker → client)");
    println!(
        "machine     {} cores, {}",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?")
    );
    println!(
        "config      {clients} keep-alive clients, {} s after {} s warm-up, {}-byte JSON body",
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        BODY.len()
    );
    for (name, p) in [
        ("http", &http),
        ("direct", &direct),
        ("http ×1", &http_one),
        ("direct ×1", &direct_one),
    ] {
        println!(
            "{name:<11} {:>8.0} req/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  errors {}  engine {:.2} cores ({:.1} µs/req)",
            p.rate(),
            p.ms(0.5),
            p.ms(0.9),
            p.ms(0.99),
            p.ms(0.999),
            p.errors,
            p.engine_cpu,
            p.engine_cpu * 1e6 / p.rate().max(1.0),
        );
    }
    println!(
        "added       one client: p50 {:+.3} ms  p99 {:+.3} ms; {clients} clients: p50 {:+.2} ms  p99 {:+.2} ms (over a direct worker call)",
        http_one.ms(0.5) - direct_one.ms(0.5),
        http_one.ms(0.99) - direct_one.ms(0.99),
        http.ms(0.5) - direct.ms(0.5),
        http.ms(0.99) - direct.ms(0.99)
    );
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets     ≥ {TARGET_REQ_PER_SEC:.0} req/s: {}   p99 < {TARGET_P99_MS} ms: {}",
        mark(http.rate() >= TARGET_REQ_PER_SEC),
        mark(http.ms(0.99) < TARGET_P99_MS)
    );
}
