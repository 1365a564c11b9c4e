//! Realtime channels end to end, limits: what a slow, silent, flooding or
//! one-too-many client costs the engine and the other clients (outbound
//! queues, idle pings, inbound backpressure, `max_connections`).

mod common;

use common::realtime::{bind, open, open_channels, recv, refused, send, serve, worker};
use common::{TestEngine, WAIT, assert_holds_for, test_config, wait_for, wait_for_open_channels};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn publish_reaches_every_subscriber_while_one_is_stalled() {
    let mut config = test_config();
    config.realtime.outbound_messages = 16;
    config.realtime.outbound_bytes = 1 << 20;
    let engine = TestEngine::start_with(config).await;
    let w = worker(&engine.url).await;
    let caller = w.clone();
    serve(&w, "room::join", move |p: Value| {
        let caller = caller.clone();
        async move {
            let id = p["channel"]["channel_id"].clone();
            caller
                .call(
                    "channel::subscribe",
                    json!({"channel_id": id, "topic": "room"}),
                )
                .await
                .unwrap();
            Ok(json!({"subscribed": true}))
        }
    })
    .await;
    let (tx, mut gone) = mpsc::unbounded_channel();
    serve(&w, "room::left", move |p: Value| {
        let _ = tx.send(p);
        async { Ok(Value::Null) }
    })
    .await;
    bind(
        &w,
        "room::join",
        json!({"route": "/ws/room", "on": "message", "match": {"action": "join"}}),
    )
    .await;
    bind(
        &w,
        "room::left",
        json!({"route": "/ws/room", "on": "disconnect"}),
    )
    .await;

    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut ws = open(&engine.realtime_url(), "/ws/room").await;
        send(&mut ws, json!({"action": "join"})).await;
        assert_eq!(recv(&mut ws).await["subscribed"], true);
        clients.push(ws);
    }
    let stalled = clients.pop().unwrap(); // never read again
    let (done_tx, mut done) = mpsc::unbounded_channel();
    const N: usize = 300;
    for mut ws in clients {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let m = recv(&mut ws).await;
                assert_eq!(m["topic"], "room");
                assert_eq!(m["data"]["i"], i);
            }
            let _ = done_tx.send(());
        });
    }
    // 300 × 32 KiB = ~10 MB per client: far beyond the stalled one's socket buffers.
    let pad = "x".repeat(32 << 10);
    let started = Instant::now();
    let mut dropped = 0;
    for i in 0..N {
        let r = w
            .call(
                "channel::publish",
                json!({"topic": "room", "data": {"i": i, "pad": pad}}),
            )
            .await
            .unwrap();
        dropped += r["dropped"].as_u64().unwrap();
    }
    for _ in 0..5 {
        tokio::time::timeout(WAIT, done.recv())
            .await
            .expect("every active client got every message");
    }
    assert!(dropped >= 1, "the stalled client was dropped");
    let left = tokio::time::timeout(WAIT, gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left["reason"]["by"], "slow_consumer", "{left}");
    assert_eq!(left["reason"]["code"], 1013);
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(stalled);
}

#[tokio::test]
async fn a_silent_client_is_closed_as_idle_and_a_live_one_is_kept() {
    let engine = TestEngine::start().await;
    let w = worker(&engine.url).await;
    let (tx, mut gone) = mpsc::unbounded_channel();
    serve(&w, "idle::left", move |p: Value| {
        let _ = tx.send(p);
        async { Ok(Value::Null) }
    })
    .await;
    let opts = json!({"ping_interval_ms": 100, "idle_timeout_ms": 400});
    bind(
        &w,
        "idle::left",
        json!({"route": "/ws/idle", "on": "disconnect", "route_options": opts}),
    )
    .await;
    // This one answers pings (tungstenite does, while it reads).
    let mut live = open(&engine.realtime_url(), "/ws/idle").await;
    let reader = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_millis(1200);
        let mut pings = 0;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end.into(), live.next()).await {
            if m.is_ping() {
                pings += 1;
            }
        }
        (pings, live)
    });
    let _silent = open(&engine.realtime_url(), "/ws/idle").await; // never read: no pongs
    let left = tokio::time::timeout(WAIT, gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left["reason"]["by"], "idle");
    let (pings, _live) = reader.await.unwrap();
    assert!(pings >= 5, "the engine pings every 100 ms: {pings}");
    assert!(gone.try_recv().is_err(), "the live client is still open");
    assert_eq!(open_channels(&w, None).await.len(), 1);
}

#[tokio::test]
async fn upgrades_past_max_connections_get_503() {
    let mut config = test_config();
    config.realtime.max_connections = 1;
    let engine = TestEngine::start_with(config).await;
    let w = worker(&engine.url).await;
    serve(&w, "cap::noop", |_| async { Ok(Value::Null) }).await;
    bind(
        &w,
        "cap::noop",
        json!({"route": "/ws/cap", "on": "message"}),
    )
    .await;
    let _first = open(&engine.realtime_url(), "/ws/cap").await;
    wait_for_open_channels(&w, None, 1).await;
    assert_eq!(refused(&engine.realtime_url(), "/ws/cap", None).await, 503);
}

#[tokio::test]
async fn send_to_a_client_that_stopped_reading_reports_backpressure() {
    let mut config = test_config();
    config.realtime.outbound_messages = 8;
    config.realtime.outbound_bytes = 1 << 20;
    let engine = TestEngine::start_with(config).await;
    let w = worker(&engine.url).await;
    let (tx, mut gone) = mpsc::unbounded_channel();
    serve(&w, "bp::left", move |p: Value| {
        let _ = tx.send(p);
        async { Ok(Value::Null) }
    })
    .await;
    bind(
        &w,
        "bp::left",
        json!({"route": "/ws/bp", "on": "disconnect"}),
    )
    .await;
    let _stalled = open(&engine.realtime_url(), "/ws/bp").await; // never read
    let id = wait_for_open_channels(&w, None, 1).await.remove(0);
    let pad = "x".repeat(64 << 10);
    let mut err = None;
    for _ in 0..2000 {
        match w
            .call("channel::send", json!({"channel_id": id, "data": pad}))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    let err = err.expect("the sender hears about the full queue");
    assert!(err.contains("CHANNEL_BACKPRESSURE"), "{err}");
    let left = tokio::time::timeout(WAIT, gone.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left["reason"]["by"], "slow_consumer");
    let after = w
        .call("channel::send", json!({"channel_id": id, "data": 1}))
        .await
        .unwrap_err();
    assert!(
        after.to_string().contains("CHANNEL_"),
        "closed or gone: {after}"
    );
}

#[tokio::test]
async fn a_flooding_client_is_pushed_back_not_buffered() {
    let mut config = test_config();
    config.realtime.inbound_messages = 4;
    let engine = TestEngine::start_with(config).await;
    let w = worker(&engine.url).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let eaten = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, e) = (gate.clone(), eaten.clone());
    serve(&w, "flood::eat", move |_| {
        let (g, e) = (g.clone(), e.clone());
        async move {
            // The first message holds the handler loop until the test opens the gate.
            let _ = g.acquire().await.unwrap();
            e.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Value::Null)
        }
    })
    .await;
    bind(
        &w,
        "flood::eat",
        json!({"route": "/ws/flood", "on": "message"}),
    )
    .await;
    let ws = open(&engine.realtime_url(), "/ws/flood").await;
    let (mut tx, _rx) = ws.split();
    const N: usize = 400; // × 64 KiB = 25 MiB, far more than the socket buffers hold
    let text = "z".repeat(64 << 10);
    let sender = tokio::spawn(async move {
        for _ in 0..N {
            tx.send(Message::Text(text.clone().into())).await.unwrap();
        }
        tx
    });
    assert_holds_for(
        "the engine does not read a client whose handler is stuck",
        Duration::from_secs(2),
        || !sender.is_finished() && eaten.load(std::sync::atomic::Ordering::SeqCst) == 0,
    )
    .await;
    assert!(
        !sender.is_finished(),
        "the engine kept reading a client whose handler is stuck"
    );
    assert_eq!(eaten.load(std::sync::atomic::Ordering::SeqCst), 0);
    gate.add_permits(N);
    let _tx = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("the client could send again once the handler moved")
        .unwrap();
    wait_for(
        "every message handled",
        Duration::from_secs(30),
        async || {
            let n = eaten.load(std::sync::atomic::Ordering::SeqCst);
            if n < N {
                Err(format!("lost messages: {n}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
}
