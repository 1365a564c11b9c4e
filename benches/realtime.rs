//! Realtime channels under load, against the real engine binary:
//!
//! 1. messages/s through one route: client → engine → handler (a worker
//!    function) → reply, with many client sockets each keeping a window of
//!    messages in flight (a connection's messages are handled in order);
//! 2. publish fan-out: 1,000 subscribed clients, one `channel::publish` from
//!    the worker, time until the last client has the message (median of rounds);
//! 3. memory: the engine's RSS before and after opening idle client sockets.
//!
//! ```text
//! cargo bench --bench realtime                 # full run (~25 s)
//! cargo bench --bench realtime -- --quick      # smoke run (~5 s)
//! cargo bench --bench realtime -- --json       # one JSON object on stdout
//! cargo bench --bench realtime -- --clients 32 --window 8 --duration 5 --fanout 1000 --rounds 20
//! ```
//! Targets are printed for reference and never asserted.

#[path = "common/mod.rs"]
mod common;
/// Binding handlers to routes, as the realtime tests do.
#[path = "../tests/common/realtime.rs"]
mod routes;

use futures_util::{SinkExt, StreamExt};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use routes::bind;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TARGET_KIB_PER_CLIENT: f64 = 32.0;

struct Args {
    clients: usize,
    window: usize,
    duration: Duration,
    fanout: usize,
    rounds: usize,
    idle: usize,
    json: bool,
}

impl Args {
    fn parse() -> Args {
        let quick = common::flag("--quick");
        let n = |name: &str, full: f64, quick_v: f64| {
            common::number(name, if quick { quick_v } else { full })
        };
        Args {
            clients: n("--clients", 32.0, 16.0) as usize,
            window: n("--window", 8.0, 8.0) as usize,
            duration: Duration::from_secs_f64(n("--duration", 8.0, 2.0)),
            fanout: n("--fanout", 1000.0, 1000.0) as usize,
            rounds: n("--rounds", 20.0, 5.0) as usize,
            idle: n("--idle", 2000.0, 1000.0) as usize,
            json: common::flag("--json"),
        }
    }
}

/// One worker serving the bench's handlers, with its routes bound.
async fn worker(url: &str) -> Client {
    let w = Client::connect(url).await.expect("worker connects");
    w.register_function("bench::rt_echo", |p: Value| async move {
        Ok(json!({ "n": p["data"]["n"] }))
    })
    .unwrap();
    let caller = w.clone();
    w.register_function("bench::rt_subscribe", move |p: Value| {
        let caller = caller.clone();
        async move {
            let id = p["channel"]["channel_id"].clone();
            caller
                .call(
                    "channel::subscribe",
                    json!({"channel_id": id, "topic": "fan"}),
                )
                .await
                .map_err(|e| qmesh::client::ErrorBody::new("subscribe_failed", e.to_string()))?;
            Ok(Value::Null)
        }
    })
    .unwrap();
    w.announce("realtime-bench").unwrap();
    w.wait_for_function("bench::rt_subscribe", Duration::from_secs(10))
        .await
        .unwrap();
    bind(
        &w,
        "bench::rt_echo",
        json!({"route": "/ws/bench/echo", "on": "message", "match": {"action": "echo"}}),
    )
    .await;
    bind(
        &w,
        "bench::rt_subscribe",
        json!({"route": "/ws/bench/fan", "on": "connect"}),
    )
    .await;
    bind(
        &w,
        "bench::rt_echo",
        json!({"route": "/ws/bench/idle", "on": "message"}),
    )
    .await;
    w
}

async fn open(base: &str, path: &str) -> Ws {
    // tungstenite zeroes a 128 KiB read buffer by default, which would make
    // the load generator, not the engine, the cost being measured.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(4 << 10);
    tokio_tungstenite::connect_async_with_config(format!("{base}{path}"), Some(config), true)
        .await
        .expect("upgrade")
        .0
}

/// Opens `n` sockets, 64 upgrades at a time.
async fn open_many(base: &str, path: &str, n: usize) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(64);
        let opened = futures_util::future::join_all((0..batch).map(|_| open(base, path))).await;
        out.extend(opened);
    }
    out
}

async fn count_on(w: &Client, route: &str, topic: Option<&str>) -> usize {
    let mut q = json!({"route": route, "limit": 1_000_000});
    if let Some(t) = topic {
        q["topic"] = t.into();
    }
    let r = w.call("channel::list", q).await.expect("channel::list");
    r["channels"].as_array().map_or(0, |a| a.len())
}

async fn until_count(w: &Client, route: &str, topic: Option<&str>, n: usize) {
    let start = Instant::now();
    while count_on(w, route, topic).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} clients never opened on {route}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phase 1: replies/s with `clients` sockets × `window` messages in flight.
async fn throughput(base: &str, a: &Args) -> Value {
    let done = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_at = Instant::now() + Duration::from_secs(1) + a.duration;
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let ws = open(base, "/ws/bench/echo").await;
        let (done, counting, window) = (done.clone(), counting.clone(), a.window);
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let msg = |n: usize| {
                Message::Text(
                    json!({"action": "echo", "id": n, "n": n})
                        .to_string()
                        .into(),
                )
            };
            for n in 0..window {
                tx.send(msg(n)).await.unwrap();
            }
            let mut n = window;
            while Instant::now() < stop_at {
                match rx.next().await {
                    Some(Ok(Message::Text(_))) => {
                        if counting.load(Ordering::Relaxed) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        tx.send(msg(n)).await.unwrap();
                        n += 1;
                    }
                    Some(Ok(_)) => {}
                    _ => panic!("echo socket closed"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(a.duration).await;
    let n = done.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    json!({"clients": a.clients, "window": a.window, "messages_per_sec": (n as f64 / secs).round()})
}

/// Phase 2: publish to `fanout` subscribers; time until the last one has it.
async fn fanout(base: &str, w: &Client, a: &Args) -> Value {
    let sockets = open_many(base, "/ws/bench/fan", a.fanout).await;
    until_count(w, "/ws/bench/fan", Some("fan"), a.fanout).await;
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    for ws in sockets {
        let got_tx = got_tx.clone();
        tokio::spawn(async move {
            let (_tx, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                // Cheap on purpose: 1,000 receivers share the bench's cores with the engine.
                if let Message::Text(t) = m
                    && let Some(rest) = t.as_str().split("\"round\":").nth(1)
                {
                    let digits = rest
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap_or("");
                    let _ = got_tx.send((digits.parse().unwrap_or(0), Instant::now()));
                }
            }
        });
    }
    let mut last_ms = Vec::new();
    let mut publish_ms = Vec::new();
    for round in 1..=a.rounds as u64 {
        let t0 = Instant::now();
        let r = w
            .call(
                "channel::publish",
                json!({"topic": "fan", "data": {"round": round, "text": "hello, everyone"}}),
            )
            .await
            .expect("publish");
        publish_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r["recipients"], a.fanout, "{r}");
        let mut seen = 0;
        let mut last = t0;
        while seen < a.fanout {
            let (rd, at) = tokio::time::timeout(Duration::from_secs(30), got_rx.recv())
                .await
                .expect("fan-out delivered")
                .unwrap();
            if rd == round {
                seen += 1;
                last = last.max(at);
            }
        }
        last_ms.push((last - t0).as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    json!({
        "clients": a.fanout,
        "rounds": a.rounds,
        "last_client_ms_median": round2(median(&mut last_ms)),
        "last_client_ms_max": round2(last_ms.iter().cloned().fold(0.0, f64::max)),
        "publish_call_ms_median": round2(median(&mut publish_ms)),
    })
}

/// Phase 3: engine RSS growth per idle client socket.
async fn memory(base: &str, w: &Client, pid: u32, n: usize) -> (Value, Vec<Ws>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = common::rss_kib(pid);
    let sockets = open_many(base, "/ws/bench/idle", n).await;
    until_count(w, "/ws/bench/idle", None, n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = common::rss_kib(pid);
    let per = after.saturating_sub(before) as f64 / n as f64;
    let v = json!({
        "idle_clients": n, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_client": round2(per), "target_kib_per_client": TARGET_KIB_PER_CLIENT,
    });
    (v, sockets)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn main() {
    let a = Args::parse();
    let engine = common::EngineProcess::start();
    let base = engine.url.clone();
    let public = engine.realtime_url.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let w = worker(&base).await;
        let (mem, idle) = memory(&public, &w, engine.pid(), a.idle).await;
        drop(idle);
        let tput = throughput(&public, &a).await;
        let fan = fanout(&public, &w, &a).await;
        json!({ "machine": common::machine(), "throughput": tput, "fanout": fan, "memory": mem })
    });
    if a.json {
        println!("{report}");
        return;
    }
    let (t, f, m) = (&report["throughput"], &report["fanout"], &report["memory"]);
    println!("realtime channels (machine: {})", report["machine"]);
    println!(
        "  client → handler → reply: {} messages/s ({} sockets × {} in flight)",
        t["messages_per_sec"], t["clients"], t["window"]
    );
    println!(
        "  publish to {} clients: last one receives after {} ms median ({} ms max over {} rounds); the publish call returns in {} ms",
        f["clients"],
        f["last_client_ms_median"],
        f["last_client_ms_max"],
        f["rounds"],
        f["publish_call_ms_median"]
    );
    let per = m["kib_per_client"].as_f64().unwrap_or(f64::MAX);
    let met = if per < TARGET_KIB_PER_CLIENT {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "  memory: {} KiB per idle client ({} clients; RSS {} → {} KiB; target < {} KiB: {met})",
        m["kib_per_client"],
        m["idle_clients"],
        m["rss_before_kib"],
        m["rss_after_kib"],
        TARGET_KIB_PER_CLIENT
    );
}
