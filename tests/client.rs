//! `qmesh::client` against a real engine: two clients, one serving and one
//! calling, through the sync, void, enqueue, error, timeout and close paths.

mod common;

use common::{TestEngine, WAIT, wait_until};
use qmesh::client::{Client, ClientError, ErrorBody};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

const READY: Duration = Duration::from_secs(5);

/// A worker serving `math::add`, `math::fail`, `math::panic` and `math::slow`,
/// plus a caller that has seen them registered.
async fn pair(engine: &TestEngine) -> (Client, Client) {
    let worker = Client::connect(&engine.url).await.expect("worker connects");
    worker
        .register_function("math::add", |input: Value| async move {
            match (input["a"].as_i64(), input["b"].as_i64()) {
                (Some(a), Some(b)) => {
                    Ok(json!({ "sum": a + b, "caller": input["_caller_worker_id"] }))
                }
                _ => Err(ErrorBody::new("bad_input", "a and b must be integers")),
            }
        })
        .unwrap();
    worker
        .register_function("math::fail", |_| async {
            Err(ErrorBody::new("boom", "it broke"))
        })
        .unwrap();
    worker
        .register_function("math::panic", |_| async { panic!("handler exploded") })
        .unwrap();
    worker
        .register_function("math::slow", |input: Value| async move {
            // Slow work, as long as the caller asks.
            tokio::time::sleep(Duration::from_millis(input["ms"].as_u64().unwrap_or(0))).await;
            Ok(json!("done"))
        })
        .unwrap();
    worker.announce("math").unwrap();
    let caller = Client::connect(&engine.url).await.expect("caller connects");
    caller.announce("caller").unwrap();
    for id in ["math::add", "math::fail", "math::panic", "math::slow"] {
        caller
            .wait_for_function(id, READY)
            .await
            .expect("registered");
    }
    (worker, caller)
}

#[tokio::test]
async fn sync_calls_round_trip_between_two_clients() {
    let engine = TestEngine::start().await;
    let (worker, caller) = pair(&engine).await;
    assert_ne!(worker.worker_id(), caller.worker_id());

    let out = caller
        .call("math::add", json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(out["sum"], 5);
    assert_eq!(
        out["caller"],
        caller.worker_id().to_string(),
        "the engine names the caller"
    );

    // Engine functions are called like any other; the announced name shows up.
    let workers = caller
        .call("engine::workers::list", json!({}))
        .await
        .unwrap();
    let names: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert!(
        names.contains(&"math") && names.contains(&"caller"),
        "{names:?}"
    );

    // A handler returning nothing yields null.
    worker
        .register_function("math::nothing", |_| async { Ok(Value::Null) })
        .unwrap();
    caller
        .wait_for_function("math::nothing", READY)
        .await
        .unwrap();
    assert_eq!(
        caller.call("math::nothing", json!(null)).await.unwrap(),
        Value::Null
    );

    caller.close().await;
    worker.close().await;
    engine.stop().await;
}

#[tokio::test]
async fn errors_keep_their_codes() {
    let engine = TestEngine::start().await;
    let (_worker, caller) = pair(&engine).await;

    let err = caller.call("math::fail", json!({})).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::Remote {
            code: "boom".into(),
            message: "it broke".into()
        }
    );
    let err = caller
        .call("math::add", json!({"a": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("bad_input"));
    let err = caller.call("math::panic", json!({})).await.unwrap_err();
    assert_eq!(err.code(), Some("invocation_failed"));
    assert!(err.to_string().contains("handler exploded"), "{err}");
    let err = caller.call("math::missing", json!({})).await.unwrap_err();
    assert_eq!(err.code(), Some("function_not_found"));
    assert!(matches!(
        caller
            .wait_for_function("math::missing", Duration::from_millis(100))
            .await,
        Err(ClientError::Timeout(_))
    ));
    engine.stop().await;
}

#[tokio::test]
async fn void_calls_run_without_an_answer() {
    let engine = TestEngine::start().await;
    let (worker, caller) = pair(&engine).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    worker
        .register_function("log::write", move |input: Value| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(input["line"].clone());
                Ok(json!("ignored"))
            }
        })
        .unwrap();
    caller.wait_for_function("log::write", READY).await.unwrap();

    caller.call_void("log::write", json!({"line": 7})).unwrap();
    let line = tokio::time::timeout(READY, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, 7);
    // The engine answered nothing: the next answer is for the next call.
    assert_eq!(
        caller
            .call("math::add", json!({"a": 1, "b": 1}))
            .await
            .unwrap()["sum"],
        2
    );
    assert_eq!(caller.in_flight(), 0);
    engine.stop().await;
}

#[tokio::test]
async fn many_calls_in_flight_from_clones_and_handlers_that_call_out() {
    let engine = TestEngine::start().await;
    let (worker, caller) = pair(&engine).await;
    // A handler that calls another function through its own client; `?` keeps remote codes.
    let inner = worker.clone();
    worker
        .register_function("math::double_sum", move |input: Value| {
            let inner = inner.clone();
            async move {
                let sum = inner.call("math::add", input).await?;
                Ok(json!(sum["sum"].as_i64().unwrap_or_default() * 2))
            }
        })
        .unwrap();
    caller
        .wait_for_function("math::double_sum", READY)
        .await
        .unwrap();

    let calls = (0..200i64).map(|i| {
        let c = caller.clone();
        tokio::spawn(async move { (i, c.call("math::double_sum", json!({"a": i, "b": 1})).await) })
    });
    for call in calls {
        let (i, out) = call.await.unwrap();
        assert_eq!(out.unwrap(), json!((i + 1) * 2));
    }
    let err = caller
        .call("math::double_sum", json!({"a": "x"}))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some("bad_input"),
        "the nested error code survives"
    );
    engine.stop().await;
}

#[tokio::test]
async fn timeouts_disconnects_and_close() {
    let engine = TestEngine::start().await;
    let (worker, caller) = pair(&engine).await;

    let err = caller
        .call_with_timeout("math::slow", json!({"ms": 500}), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err, ClientError::Timeout(Duration::from_millis(50)));
    assert_eq!(caller.in_flight(), 0, "a timed-out call stops waiting");

    // The executor goes away mid-call: the engine fails the call.
    let slow = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call("math::slow", json!({"ms": 10_000})).await }
    });
    wait_until("the call to reach the executor", WAIT, async || {
        engine.pending_calls().await == 1
    })
    .await;
    worker.close().await;
    assert!(worker.is_closed());
    let err = tokio::time::timeout(READY, slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some("invocation_stopped"), "{err}");

    // Closing the caller fails everything after, on every clone.
    let clone = caller.clone();
    caller.close().await;
    assert_eq!(
        clone.call("math::add", json!({})).await.unwrap_err(),
        ClientError::Closed
    );
    assert_eq!(
        clone.call_void("math::add", json!({})).unwrap_err(),
        ClientError::Closed
    );
    engine.stop().await;
}

#[tokio::test]
async fn the_engine_shutting_down_fails_calls_in_flight() {
    let mut config = common::test_config();
    config.server.shutdown_grace = Duration::from_millis(100);
    let engine = TestEngine::start_with(config).await;
    let (_worker, caller) = pair(&engine).await;
    let slow = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call("math::slow", json!({"ms": 60_000})).await }
    });
    wait_until("the call to reach the executor", WAIT, async || {
        engine.pending_calls().await == 1
    })
    .await;
    engine.stop().await;
    tokio::time::timeout(READY, caller.closed())
        .await
        .expect("the caller notices");
    let err = tokio::time::timeout(READY, slow)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Closed | ClientError::Remote { .. }),
        "{err:?}"
    );
    assert_eq!(
        caller.call("math::add", json!({})).await.unwrap_err(),
        ClientError::Closed
    );
}

#[tokio::test]
async fn enqueued_calls_get_a_receipt_and_are_delivered() {
    let engine = TestEngine::start().await;
    let (worker, caller) = pair(&engine).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    worker
        .register_function("mail::send", move |input: Value| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(input["to"].clone());
                Ok(Value::Null)
            }
        })
        .unwrap();
    caller.wait_for_function("mail::send", READY).await.unwrap();

    let receipt = caller
        .enqueue("mail", "mail::send", json!({"to": "a@b.c"}))
        .await
        .unwrap();
    assert!(uuid::Uuid::parse_str(&receipt).is_ok(), "{receipt}");
    let to = tokio::time::timeout(READY, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(to, "a@b.c");
    engine.stop().await;
}
