//! Realtime channels end to end, how connections end: the disconnect
//! handler runs once (after the handlers still running), a clean stop runs
//! disconnects before it exits, a kill -9 owes each open connection one
//! `engine_restart` disconnect, and a route whose triggers went keeps its
//! open sockets.

mod common;

use common::realtime::{bind, close_code, open, recv, refused, send, serve, worker};
use common::{
    EngineProcess, TestEngine, WAIT, assert_holds_for, assert_silent_for, test_config, wait_for,
    wait_for_open_channels, wait_until,
};
use qmesh::client::Client;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a test watches for a disconnect handler running a second time.
const ONCE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn disconnect_fires_once_after_running_handlers_finish() {
    let engine = TestEngine::start().await;
    let w = worker(&engine.url).await;
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    serve(&w, "slow::work", move |_| {
        let l = l.clone();
        async move {
            l.lock().unwrap().push("work started".into());
            tokio::time::sleep(Duration::from_millis(300)).await; // slow work
            l.lock().unwrap().push("work done".into());
            Ok(json!({"done": true}))
        }
    })
    .await;
    let l = log.clone();
    serve(&w, "slow::bye", move |p: Value| {
        l.lock().unwrap().push(format!(
            "disconnect by {}",
            p["reason"]["by"].as_str().unwrap_or("?")
        ));
        async { Ok(Value::Null) }
    })
    .await;
    bind(
        &w,
        "slow::work",
        json!({"route": "/ws/slow", "on": "message"}),
    )
    .await;
    bind(
        &w,
        "slow::bye",
        json!({"route": "/ws/slow", "on": "disconnect"}),
    )
    .await;

    let mut ws = open(&engine.realtime_url(), "/ws/slow").await;
    send(&mut ws, json!({"go": 1})).await;
    wait_until("the handler to start", WAIT, async || {
        !log.lock().unwrap().is_empty()
    })
    .await;
    let bye = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4001.into(),
        reason: "bye".into(),
    };
    ws.close(Some(bye)).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        4001,
        "the engine answers the client's close"
    );
    drop(ws);
    wait_for("the disconnect to fire", WAIT, async || {
        let log = log.lock().unwrap();
        if log.len() < 3 {
            Err(format!("disconnect did not fire: {:?}", *log))
        } else {
            Ok(())
        }
    })
    .await;
    assert_holds_for("disconnect fires once", ONCE, || {
        log.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(
        *log.lock().unwrap(),
        ["work started", "work done", "disconnect by client"]
    );

    // A server close: the handler sees `server`, the client the code asked for.
    log.lock().unwrap().clear();
    let mut ws = open(&engine.realtime_url(), "/ws/slow").await;
    let id = wait_for_open_channels(&w, Some("/ws/slow"), 1)
        .await
        .remove(0);
    let r = w
        .call(
            "channel::close",
            json!({"channel_id": id, "code": 4000, "reason": "bye"}),
        )
        .await
        .unwrap();
    assert_eq!(r["closed"], true);
    assert_eq!(close_code(&mut ws).await, 4000);
    let again = w
        .call("channel::close", json!({"channel_id": id}))
        .await
        .unwrap();
    assert_eq!(again["closed"], false, "closing twice is harmless");
    wait_until("the disconnect to fire", WAIT, async || {
        !log.lock().unwrap().is_empty()
    })
    .await;
    assert_holds_for("disconnect fires once", ONCE, || {
        log.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(*log.lock().unwrap(), ["disconnect by server"]);
    let err = w
        .call("channel::send", json!({"channel_id": id, "data": 1}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CHANNEL_NOT_FOUND"), "{err}");
}

#[tokio::test]
async fn clean_shutdown_fires_disconnects_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.data_dir = dir.path().to_owned();
    let engine = TestEngine::start_with(config.clone()).await;
    let w = worker(&engine.url).await;
    let (tx, mut gone) = mpsc::unbounded_channel();
    serve(&w, "bye::left", move |p: Value| {
        let _ = tx.send(p);
        async { Ok(Value::Null) }
    })
    .await;
    bind(
        &w,
        "bye::left",
        json!({"route": "/ws/bye", "on": "disconnect"}),
    )
    .await;
    let mut ws = open(&engine.realtime_url(), "/ws/bye").await;
    wait_for_open_channels(&w, None, 1).await;
    engine.stop().await;
    let left = gone
        .try_recv()
        .expect("the disconnect ran before the engine returned");
    assert_eq!(left["reason"]["by"], "engine_shutdown");
    assert_eq!(close_code(&mut ws).await, 1001);

    // Nothing is owed after a clean stop: the next start runs no disconnect.
    let engine = TestEngine::start_with(config).await;
    let w = worker(&engine.url).await;
    let (tx, mut again) = mpsc::unbounded_channel();
    serve(&w, "bye::left", move |p: Value| {
        let _ = tx.send(p);
        async { Ok(Value::Null) }
    })
    .await;
    // Long enough for a disconnect owed from before the stop to go through
    // the durable queue to the worker that now serves it.
    assert_silent_for(
        &mut again,
        Duration::from_millis(700),
        "the disconnect already ran before the stop",
    )
    .await;
}

#[tokio::test]
async fn after_kill_9_each_open_connection_gets_one_engine_restart_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let url = engine.url.clone();
    let w = Client::connect(&url).await.unwrap();
    w.register_function("pres::hello", |p: Value| async move {
        Ok(json!({"hello": p["channel"]["channel_id"]}))
    })
    .unwrap();
    w.register_function("pres::leave", |_| async { Ok(Value::Null) })
        .unwrap();
    w.announce("presence-1").unwrap();
    w.wait_for_function("pres::leave", WAIT).await.unwrap();
    bind(
        &w,
        "pres::hello",
        json!({"route": "/ws/presence/:room", "on": "connect"}),
    )
    .await;
    bind(
        &w,
        "pres::leave",
        json!({"route": "/ws/presence/:room", "on": "disconnect"}),
    )
    .await;

    let mut ids = Vec::new();
    let mut sockets = Vec::new();
    for room in ["lobby", "kitchen"] {
        let public = &engine.realtime_url;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{public}/ws/presence/{room}"))
            .await
            .unwrap();
        // The connect handler ran, so the connection's row is on disk.
        ids.push(recv(&mut ws).await["hello"].as_str().unwrap().to_owned());
        sockets.push(ws);
    }
    engine.kill();
    drop(sockets);
    drop(w);

    let engine = EngineProcess::start_in(dir.path());
    let url = engine.url.clone();
    let w = Client::connect(&url).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    w.register_function("pres::leave", move |p: Value| {
        let _ = tx.send(p);
        async { Ok(Value::Null) }
    })
    .unwrap();
    w.announce("presence-2").unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a restart disconnect")
            .unwrap();
        assert_eq!(p["event"], "disconnect");
        assert_eq!(p["reason"]["by"], "engine_restart");
        assert!(p["channel"]["params"]["room"].is_string(), "{p}");
        got.push(p["channel"]["channel_id"].as_str().unwrap().to_owned());
    }
    // Long enough for a second run through the durable queue to show.
    assert_silent_for(
        &mut rx,
        Duration::from_millis(500),
        "each disconnect runs once",
    )
    .await;
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    drop(engine); // killed
}

#[tokio::test]
async fn a_route_whose_triggers_went_answers_503_and_open_sockets_survive() {
    let engine = TestEngine::start().await;
    let w = worker(&engine.url).await;
    serve(&w, "gone::echo", |p: Value| async move {
        Ok(json!({"echo": p["data"]}))
    })
    .await;
    let r = w
        .call(
            "engine::register_trigger",
            json!({"trigger_type": "websocket", "function_id": "gone::echo",
                "config": {"route": "/ws/gone/:x", "on": "message"}}),
        )
        .await
        .unwrap();
    let mut ws = open(&engine.realtime_url(), "/ws/gone/1").await;
    let id = r["id"].clone();
    w.call("engine::unregister_trigger", json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(
        refused(&engine.realtime_url(), "/ws/gone/2", None).await,
        503,
        "remembered, so: retry later"
    );
    assert_eq!(
        refused(&engine.realtime_url(), "/ws/never", None).await,
        404
    );
    send(&mut ws, json!({"id": 1})).await;
    assert_eq!(
        recv(&mut ws).await["error"]["code"],
        "HANDLER_UNAVAILABLE",
        "the socket stays open"
    );
    bind(
        &w,
        "gone::echo",
        json!({"route": "/ws/gone/:x", "on": "message"}),
    )
    .await;
    send(&mut ws, json!({"id": 2, "v": 1})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"echo": {"v": 1}, "id": 2}),
        "and works again when it returns"
    );
}
