//! The published Rust SDK (crates.io `iii-sdk` =0.25.0) against a real engine,
//! in process: calls and their errors, shared and restarting workers, and
//! the `enqueue` action (its receipt, its delivery, and the code of a
//! refusal). Triggers are `sdk_rust_triggers.rs`, reconnects
//! `sdk_rust_reconnect.rs`.
//!
//! Every SDK client runs its own connection thread; each test shuts its
//! clients down before it stops the engine. Waits are on conditions
//! ([`wait_until`]) and handler reports ([`recv`]); the one timed wait is a
//! worker's deliberate absence ([`DOWNTIME`]).

mod common;

use common::sdk::{DEADLINE, call, recording, recv, remote_code, sdk_worker, stop};
use common::{RawClient, TestEngine, WAIT, wait_until};
use iii_sdk::protocol::TriggerRequest;
use iii_sdk::{Error as SdkError, RegisterFunction, TriggerAction};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long the restarting worker is away while callers keep calling.
const DOWNTIME: Duration = Duration::from_millis(300);

/// Worker A's `math::add` answers worker B's sync `trigger` with the sum, and
/// the handler's input carries `_caller_worker_id` = B's engine worker id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_registered_by_one_worker_answers_another() {
    let engine = TestEngine::start().await;
    let (tx, mut inputs) = mpsc::unbounded_channel();
    let a = sdk_worker(&engine.url, "t1-adder");
    a.register_function(
        "math::add",
        recording(
            tx,
            |v| json!({ "sum": v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0) }),
        ),
    );
    let b = sdk_worker(&engine.url, "t1-caller");
    engine.wait_for_providers("math::add", 1).await;
    wait_until("the caller's name", WAIT, async || {
        engine.worker_ids_named("t1-caller").len() == 1
    })
    .await;

    let out = call(&b, "math::add", json!({ "a": 2, "b": 40 }))
        .await
        .expect("math::add");
    assert_eq!(out, json!({ "sum": 42 }));

    let seen = recv(&mut inputs, "math::add's input").await;
    let b_id = engine.worker_id_named("t1-caller");
    assert_eq!(seen["a"], 2, "{seen}");
    assert_eq!(seen["_caller_worker_id"], b_id.to_string(), "{seen}");

    stop(a).await;
    stop(b).await;
    engine.stop().await;
}

/// `TriggerAction::Void` runs the handler with the payload, and the caller
/// gets nothing back: the SDK returns `null` at once, the executor's answer
/// is consumed by the engine, and on the wire a raw caller's next frame is
/// the answer to its next sync call, never a result for the void one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_call_runs_the_handler_and_returns_nothing() {
    let engine = TestEngine::start().await;
    let (tx, mut inputs) = mpsc::unbounded_channel();
    let sink = sdk_worker(&engine.url, "t2-sink");
    sink.register_function("void::sink", recording(tx, |_| json!({ "ok": true })));
    let caller = sdk_worker(&engine.url, "t2-caller");
    engine.wait_for_providers("void::sink", 1).await;

    let out = caller
        .trigger(TriggerRequest {
            function_id: "void::sink".into(),
            payload: json!({ "n": 1 }),
            action: Some(TriggerAction::Void),
            timeout_ms: Some(5_000),
        })
        .await
        .expect("void trigger");
    assert_eq!(out, Value::Null);
    assert_eq!(recv(&mut inputs, "the void call").await["n"], 1);
    wait_until("the void call to settle", WAIT, async || {
        engine.pending_calls().await == 0
    })
    .await;

    // The same on the wire, from a hand-driven caller.
    let mut raw = RawClient::connect(&engine.url).await;
    raw.send(json!({"type":"invokefunction","function_id":"void::sink",
        "data":{"n":2},"action":{"type":"void"}}))
        .await;
    assert_eq!(recv(&mut inputs, "the raw void call").await["n"], 2);
    wait_until("the raw void call to settle", WAIT, async || {
        engine.pending_calls().await == 0
    })
    .await;
    let id = Uuid::new_v4().to_string();
    raw.send(json!({"type":"invokefunction","invocation_id":id,
        "function_id":"engine::functions::list","data":{}}))
        .await;
    let first = raw.recv().await.expect("a frame");
    assert_eq!(first["type"], "invocationresult", "{first}");
    assert_eq!(
        first["invocation_id"],
        id.as_str(),
        "a void call was answered: {first}"
    );

    stop(sink).await;
    stop(caller).await;
    engine.stop().await;
}

/// Two SDK workers registering the same function id share its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_the_same_function_share_its_calls() {
    let engine = TestEngine::start().await;
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
    let mut workers = Vec::new();
    for (i, count) in counts.iter().enumerate() {
        let w = sdk_worker(&engine.url, &format!("t3-echo-{i}"));
        let count = count.clone();
        w.register_function(
            "shared::echo",
            RegisterFunction::new_async(move |input: Value| {
                count.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, SdkError>(json!({ "worker": i, "input": input["n"] })) }
            }),
        );
        workers.push(w);
    }
    let caller = sdk_worker(&engine.url, "t3-caller");
    engine.wait_for_providers("shared::echo", 2).await;

    for n in 0..20 {
        let out = call(&caller, "shared::echo", json!({ "n": n }))
            .await
            .expect("shared::echo");
        assert_eq!(out["input"], n, "{out}");
    }
    let (c0, c1) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert_eq!(c0 + c1, 20);
    assert!(c0 > 0 && c1 > 0, "calls were not shared: {c0} and {c1}");

    for w in workers {
        stop(w).await;
    }
    stop(caller).await;
    engine.stop().await;
}

/// A worker restarts (its SDK client shut down, a new one registers the same
/// id) while three callers keep calling: every call succeeds, because calls
/// made while the function has no worker wait up to `rebind_grace` (3 s in
/// tests) for it to return. The worker stays away for [`DOWNTIME`]. A gate
/// makes the old worker exit between calls:
/// a call in flight at the instant its executor exits gets
/// `invocation_stopped` by design (see the next-but-one test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_a_worker_restarts_wait_for_it_and_succeed() {
    let engine = TestEngine::start().await;
    let start_worker = |generation: u64| {
        let w = sdk_worker(&engine.url, "t4-service");
        w.register_function(
            "svc::ping",
            RegisterFunction::new_async(move |_: Value| async move {
                Ok::<_, SdkError>(json!({ "generation": generation }))
            }),
        );
        w
    };
    let first = start_worker(1);
    let caller = sdk_worker(&engine.url, "t4-caller");
    engine.wait_for_providers("svc::ping", 1).await;

    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let done = Arc::new(AtomicBool::new(false));
    type Outcome = (Result<Value, SdkError>, Duration);
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut loops = Vec::new();
    for _ in 0..3 {
        let (caller, gate, done, outcomes) =
            (caller.clone(), gate.clone(), done.clone(), outcomes.clone());
        loops.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let _pass = gate.read().await;
                let t0 = Instant::now();
                let r = call(&caller, "svc::ping", json!({})).await;
                outcomes.lock().unwrap().push((r, t0.elapsed()));
            }
        }));
    }
    let served_by = |generation: u64| {
        let outcomes = outcomes.clone();
        move || {
            outcomes
                .lock()
                .unwrap()
                .iter()
                .filter(|(r, _)| r.as_ref().is_ok_and(|v| v["generation"] == generation))
                .count()
        }
    };
    let (by_first, by_second) = (served_by(1), served_by(2));
    wait_until("the first worker to serve 10 calls", DEADLINE, async || {
        by_first() >= 10
    })
    .await;

    {
        let _closed = gate.write().await; // no call in flight from here
        stop(first).await;
        engine.wait_for_providers("svc::ping", 0).await;
    }
    // The callers are calling a function nobody provides now; let them, a
    // while: the downtime is the scenario (checked below), not a settle.
    tokio::time::sleep(DOWNTIME).await;
    let second = start_worker(2);
    wait_until(
        "the restarted worker to serve 10 calls",
        DEADLINE,
        async || by_second() >= 10,
    )
    .await;
    done.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failed: Vec<_> = outcomes.iter().filter(|(r, _)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "calls failed across the restart: {failed:?}"
    );
    // The worker was absent for at least DOWNTIME: calls made then must have waited.
    let longest = outcomes
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    assert!(
        longest >= Duration::from_millis(250),
        "no call waited for the restarted worker (longest {longest:?})"
    );

    stop(second).await;
    stop(caller).await;
    engine.stop().await;
}

/// A call to an id nobody registered fails at once with `function_not_found`,
/// which the SDK surfaces as `Error::Remote` with that code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_function_is_function_not_found() {
    let engine = TestEngine::start().await;
    let caller = sdk_worker(&engine.url, "t5-caller");
    let t0 = Instant::now();
    let err = call(&caller, "nobody::home", json!({}))
        .await
        .expect_err("nobody::home has no worker");
    assert_eq!(remote_code(&err), "function_not_found", "{err:?}");
    assert!(err.to_string().contains("nobody::home"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    stop(caller).await;
    engine.stop().await;
}

/// The executor's SDK client shuts down while its handler is still running:
/// the caller gets `invocation_stopped` promptly, not the SDK's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_executor_goes_away_is_invocation_stopped() {
    let engine = TestEngine::start().await;
    let (tx, mut started) = mpsc::unbounded_channel();
    let executor = sdk_worker(&engine.url, "t6-executor");
    executor.register_function(
        "slow::block",
        RegisterFunction::new_async(move |input: Value| {
            let _ = tx.send(input);
            async move {
                std::future::pending::<()>().await;
                Ok::<_, SdkError>(Value::Null)
            }
        }),
    );
    let caller = sdk_worker(&engine.url, "t6-caller");
    engine.wait_for_providers("slow::block", 1).await;

    let pending = {
        let caller = caller.clone();
        tokio::spawn(async move {
            caller
                .trigger(TriggerRequest {
                    function_id: "slow::block".into(),
                    payload: json!({}),
                    action: None,
                    timeout_ms: Some(8_000),
                })
                .await
        })
    };
    recv(&mut started, "the handler to start").await;
    let t0 = Instant::now();
    stop(executor).await;
    let err = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("the caller was not told promptly")
        .unwrap()
        .expect_err("the executor went away");
    assert_eq!(remote_code(&err), "invocation_stopped", "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );

    stop(caller).await;
    engine.stop().await;
}

/// `TriggerAction::Enqueue` through the SDK: the engine answers at once
/// with `{messageReceiptId}` (a UUID), and the queue later delivers the
/// payload to a worker providing the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueued_call_returns_a_receipt_and_is_delivered() {
    let engine = TestEngine::start().await;
    let (tx, mut jobs) = mpsc::unbounded_channel();
    let worker = sdk_worker(&engine.url, "t10-jobs");
    worker.register_function("jobs::run", recording(tx, |_| json!({ "done": true })));
    let caller = sdk_worker(&engine.url, "t10-caller");
    engine.wait_for_providers("jobs::run", 1).await;

    let receipt = caller
        .trigger(TriggerRequest {
            function_id: "jobs::run".into(),
            payload: json!({ "n": 7 }),
            action: Some(TriggerAction::Enqueue {
                queue: "jobs".into(),
            }),
            timeout_ms: Some(5_000),
        })
        .await
        .expect("enqueue");
    let id = receipt["messageReceiptId"].as_str().unwrap_or_default();
    assert!(Uuid::parse_str(id).is_ok(), "{receipt}");
    assert_eq!(recv(&mut jobs, "the queued job").await["n"], 7);

    stop(worker).await;
    stop(caller).await;
    engine.stop().await;
}

/// An enqueue the engine refuses (strict queues, an undeclared queue) reaches
/// the SDK as `Error::Remote` with `enqueue_error`, iii's one code for a failed
/// enqueue (`docs/protocol.md` §3.1), which SDK code matches on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_enqueue_is_enqueue_error() {
    let mut config = common::test_config();
    config.queue.strict = true;
    let engine = TestEngine::start_with(config).await;
    let caller = sdk_worker(&engine.url, "t10b-caller");
    let err = caller
        .trigger(TriggerRequest {
            function_id: "jobs::run".into(),
            payload: json!({ "n": 1 }),
            action: Some(TriggerAction::Enqueue {
                queue: "undeclared".into(),
            }),
            timeout_ms: Some(5_000),
        })
        .await
        .expect_err("strict mode refuses an undeclared queue");
    assert_eq!(remote_code(&err), "enqueue_error", "{err:?}");
    stop(caller).await;
    engine.stop().await;
}
