//! Streams: writes fanned out to client sockets, against the real engine
//! binary. Every phase is `stream::set` (`durable: false`, so the disk is
//! not what is measured) from `--callers` closed loops over `--conns`
//! connections, on 1,000 items of one group, for `--duration` seconds:
//!
//! 1. nobody subscribed → ops/s, p50/p99;
//! 2. `--subscribers` socket clients joined to the group, each reading every
//!    frame → ops/s, p50/p99, envelopes delivered per second (all counted);
//! 3. the same plus one client that never reads (a 4 KiB receive buffer) →
//!    the same figures, and whether the engine closed it (a slow consumer
//!    must cost the others nothing).
//!
//! The subscribers run in this process, on the same cores as the engine.
//!
//! ```text
//! cargo bench --bench stream                 # full run (~20 s)
//! cargo bench --bench stream -- --quick      # smoke run
//! cargo bench --bench stream -- --json       # one JSON object on stdout
//! cargo bench --bench stream -- --duration 10 --callers 64 --subscribers 100
//! ```

mod common;

use common::{
    EngineProcess, LoadOptions, Phase, closed_loop, cpu_secs, machine, number, print_report,
};
use futures_util::{SinkExt, StreamExt};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const ITEMS: u64 = 1000;

fn join() -> Message {
    let j = json!({"type": "join", "data": {"subscriptionId": "s", "streamName": "bench", "groupId": "g"}});
    Message::Text(j.to_string().into())
}

/// `callers` closed loops of `stream::set` for `duration`.
async fn sets(clients: &[Client], callers: usize, duration: Duration) -> Phase {
    closed_loop(clients, callers, duration, |n| {
        let input = json!({"stream_name": "bench", "group_id": "g", "item_id": format!("i{}", n % ITEMS),
            "data": {"n": n, "name": "bench", "tags": ["a", "b", "c"]}, "durable": false});
        ("stream::set", input)
    })
    .await
}

fn report(name: &str, phase: &Phase) -> Value {
    json!({"phase": name, "ops_per_sec": phase.per_sec(), "p50_ms": phase.ms(0.50), "p99_ms": phase.ms(0.99)})
}

/// Waits until `expected` more envelopes than `base` arrived (at most 60 s)
/// → (how many arrived, per second since `from`).
async fn drained(delivered: &AtomicU64, base: u64, expected: u64, from: Instant) -> (u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) - base < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = delivered.load(Ordering::Relaxed) - base;
    (got, (got as f64 / from.elapsed().as_secs_f64()).round())
}

#[tokio::main]
async fn main() {
    let LoadOptions {
        quick,
        secs,
        duration,
        callers,
        conns,
    } = LoadOptions::parse();
    let subscribers = number("--subscribers", if quick { 10.0 } else { 100.0 }) as usize;

    let engine = EngineProcess::start_with_config("");
    let listen = engine.health()["streams"]["listen"]
        .as_str()
        .expect("streams.listen")
        .to_owned();
    let socket_url = format!("ws://{listen}/");
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(Client::connect(&engine.url).await.expect("connect"));
    }
    let cpu0 = cpu_secs(&engine.pid().to_string());

    let alone = sets(&clients, callers, duration).await;

    let delivered = Arc::new(AtomicU64::new(0));
    for _ in 0..subscribers {
        let (mut ws, _) = tokio_tungstenite::connect_async(&socket_url)
            .await
            .expect("subscriber");
        ws.send(join()).await.unwrap();
        ws.next().await.expect("sync").unwrap();
        let d = delivered.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let from = Instant::now();
    let fanned = sets(&clients, callers, duration).await;
    let (got, per_sec) = drained(&delivered, 0, fanned.ops * subscribers as u64, from).await;

    // One more subscriber that never reads.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(listen.parse().unwrap()).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(
        socket_url.as_str(),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("stalled subscriber");
    stalled.send(join()).await.unwrap();
    let before = delivered.load(Ordering::Relaxed);
    let from = Instant::now();
    let with_stalled = sets(&clients, callers, duration).await;
    let (got2, per_sec2) = drained(
        &delivered,
        before,
        with_stalled.ops * subscribers as u64,
        from,
    )
    .await;
    let open = engine.health()["streams"]["clients"].as_u64();
    let cpu = cpu_secs(&engine.pid().to_string()) - cpu0;

    let out = json!({
        "machine": machine(),
        "callers": callers, "conns": conns, "duration_s": secs, "subscribers": subscribers,
        "alone": report("stream::set, no subscriber", &alone),
        "fanned": report("stream::set, subscribers", &fanned),
        "fanout": {"delivered": got, "expected": fanned.ops * subscribers as u64, "delivered_per_sec": per_sec},
        "with_stalled": report("stream::set, subscribers + 1 that never reads", &with_stalled),
        "fanout_with_stalled": {"delivered": got2, "expected": with_stalled.ops * subscribers as u64, "delivered_per_sec": per_sec2},
        // Closed only if its queue filled: the kernel's buffers take a few MB first.
        "stalled_client_closed": open == Some(subscribers as u64),
        "engine_cpu_s": (cpu * 100.0).round() / 100.0,
    });
    print_report(&out);
    drop(stalled);
    for c in clients {
        c.close().await;
    }
}
