//! The published Rust SDK (crates.io `iii-sdk` =0.25.0) against a real engine,
//! in process: calls and their errors, shared and restarting workers, a
//! worker-provided trigger type's whole life, reconnect with `reattach`, the
//! `engine::*` functions' response shapes, and the `enqueue` action (its
//! receipt, its delivery, and the code of a refusal).
//!
//! Every SDK client runs its own connection thread; each test shuts its
//! clients down before it stops the engine. Waits are on conditions
//! ([`wait_until`]) and handler reports ([`recv`]); the one timed wait is a
//! worker's deliberate absence ([`DOWNTIME`]).
//! A small WebSocket [`Proxy`] sits between an SDK client and the engine where
//! a test needs to see the client's frames or cut its socket.

// The trigger APIs are deprecated in 0.25 in favour of observe (which this
// engine does not advertise); they keep working and are what we test.
#![allow(deprecated)]

mod common;

use common::sdk::{DEADLINE, call, recording, recv, remote_code, sdk_worker, stop};
use common::{RawClient, TestEngine, WAIT, wait_until};
use futures_util::{SinkExt, StreamExt};
use iii_sdk::protocol::{RegisterTriggerInput, TriggerRequest};
use iii_sdk::runtime::IIIConnectionState;
use iii_sdk::trigger::{TriggerConfig, TriggerHandler};
use iii_sdk::{Error as SdkError, IIIClient, RegisterFunction, RegisterTriggerType, TriggerAction};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

/// How long the restarting worker is away while callers keep calling.
const DOWNTIME: Duration = Duration::from_millis(300);

/// `(id, active)` of every binding of `function_id`, as
/// `engine::registered-triggers::list` shows them to `client`.
async fn bindings_of(client: &IIIClient, function_id: &str) -> Vec<(String, bool)> {
    let listed = call(
        client,
        "engine::registered-triggers::list",
        json!({ "function_id": function_id }),
    )
    .await
    .expect("registered-triggers::list");
    listed["registered_triggers"]
        .as_array()
        .expect("registered_triggers")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().expect("id").to_owned(),
                b["state"] == "active",
            )
        })
        .collect()
}

/// The entry of `list` whose `key` equals `value`.
fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|v| v[key] == value)
        .unwrap_or_else(|| panic!("no entry with {key}={value} in {list}"))
}

/// What a trigger-type provider's handler was told.
#[derive(Debug)]
enum Bind {
    Registered(TriggerConfig),
    Unregistered(TriggerConfig),
}

/// A [`TriggerHandler`] that reports every call on a channel. Written out by
/// hand (what `#[async_trait]` would generate) to avoid a dev-dependency.
struct BindRecorder(mpsc::UnboundedSender<Bind>);

type Verdict<'a> = Pin<Box<dyn Future<Output = Result<(), SdkError>> + Send + 'a>>;

impl TriggerHandler for BindRecorder {
    fn register_trigger<'life0, 'async_trait>(
        &'life0 self,
        config: TriggerConfig,
    ) -> Verdict<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let _ = self.0.send(Bind::Registered(config));
        Box::pin(async { Ok(()) })
    }

    fn unregister_trigger<'life0, 'async_trait>(
        &'life0 self,
        config: TriggerConfig,
    ) -> Verdict<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let _ = self.0.send(Bind::Unregistered(config));
        Box::pin(async { Ok(()) })
    }
}

/// A trigger-type provider: registers `type_id` and returns its handler's reports.
fn provide_type(client: &IIIClient, type_id: &str) -> mpsc::UnboundedReceiver<Bind> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.register_trigger_type(RegisterTriggerType::new(
        type_id,
        "fires when its provider says so",
        BindRecorder(tx),
    ));
    rx
}

async fn next_registered(rx: &mut mpsc::UnboundedReceiver<Bind>) -> TriggerConfig {
    match recv(rx, "the provider's register handler").await {
        Bind::Registered(c) => c,
        other => panic!("expected a registration, got {other:?}"),
    }
}

async fn next_unregistered(rx: &mut mpsc::UnboundedReceiver<Bind>) -> TriggerConfig {
    match recv(rx, "the provider's unregister handler").await {
        Bind::Unregistered(c) => c,
        other => panic!("expected an unregistration, got {other:?}"),
    }
}

/// A WebSocket relay between SDK clients and the engine. It records every
/// JSON frame a client sends, and the close code the engine ends each
/// upstream connection with; [`Proxy::cut_client`] drops only the client's
/// side, leaving the engine a connection that looks alive (half-open).
struct Proxy {
    url: String,
    sent: Arc<Mutex<Vec<Vec<Value>>>>,
    engine_close: Arc<Mutex<HashMap<usize, Option<u16>>>>,
    cuts: Arc<Mutex<Vec<Arc<Notify>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let sent: Arc<Mutex<Vec<Vec<Value>>>> = Arc::default();
        let engine_close: Arc<Mutex<HashMap<usize, Option<u16>>>> = Arc::default();
        let cuts: Arc<Mutex<Vec<Arc<Notify>>>> = Arc::default();
        let (s, e, c, up) = (
            sent.clone(),
            engine_close.clone(),
            cuts.clone(),
            upstream.to_owned(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = {
                    let mut sent = s.lock().unwrap();
                    sent.push(Vec::new());
                    sent.len() - 1
                };
                let cut = Arc::new(Notify::new());
                c.lock().unwrap().push(cut.clone());
                let (s, e, up) = (s.clone(), e.clone(), up.clone());
                tokio::spawn(async move {
                    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let Ok((engine, _)) = tokio_tungstenite::connect_async(up.as_str()).await
                    else {
                        return;
                    };
                    relay(index, client, engine, s, e, cut).await;
                });
            }
        });
        Self {
            url,
            sent,
            engine_close,
            cuts,
            accept,
        }
    }

    fn connections(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Frames the client sent on connection `index`, in order.
    fn sent(&self, index: usize) -> Vec<Value> {
        self.sent.lock().unwrap()[index].clone()
    }

    /// `Some(code)` once the engine closed upstream connection `index`.
    fn engine_closed(&self, index: usize) -> Option<Option<u16>> {
        self.engine_close.lock().unwrap().get(&index).copied()
    }

    fn cut_client(&self, index: usize) {
        self.cuts.lock().unwrap()[index].notify_one();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay<C, E>(
    index: usize,
    client: tokio_tungstenite::WebSocketStream<C>,
    engine: tokio_tungstenite::WebSocketStream<E>,
    sent: Arc<Mutex<Vec<Vec<Value>>>>,
    engine_close: Arc<Mutex<HashMap<usize, Option<u16>>>>,
    cut: Arc<Notify>,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut e_tx, mut e_rx) = engine.split();
    let record_close = |msg: Option<&WsMessage>| {
        let code = match msg {
            Some(WsMessage::Close(Some(f))) => Some(u16::from(f.code)),
            _ => None,
        };
        engine_close.lock().unwrap().insert(index, code);
    };
    loop {
        tokio::select! {
            _ = cut.notified() => {
                // Drop the client's socket; keep reading the engine's side
                // (answering its pings) until the engine closes it.
                drop((c_tx, c_rx));
                loop {
                    match e_rx.next().await {
                        Some(Ok(m @ WsMessage::Close(_))) => return record_close(Some(&m)),
                        Some(Ok(_)) => continue,
                        _ => return record_close(None),
                    }
                }
            }
            m = c_rx.next() => match m {
                Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                    if let WsMessage::Text(t) = &m
                        && let Ok(v) = serde_json::from_str(t.as_str())
                    {
                        sent.lock().unwrap()[index].push(v);
                    }
                    if e_tx.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    let _ = e_tx.close().await;
                    return;
                }
            },
            m = e_rx.next() => match m {
                Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                    if c_tx.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(m @ WsMessage::Close(_))) => {
                    record_close(Some(&m));
                    let _ = c_tx.close().await;
                    return;
                }
                Some(Ok(_)) => {}
                _ => {
                    record_close(None);
                    let _ = c_tx.close().await;
                    return;
                }
            },
        }
    }
}

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

/// A worker-provided trigger type, end to end: the provider's register
/// handler sees a binding (id, function_id, config), fires it by calling the
/// bound function, sees it unregistered; then, across a provider restart, a
/// binding parks and is replayed (same id) to the new provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_type_provider_sees_bindings_through_a_restart() {
    let engine = TestEngine::start().await;
    let provider = sdk_worker(&engine.url, "t7-provider");
    let mut binds = provide_type(&provider, "ticker");
    let (tx, mut fired) = mpsc::unbounded_channel();
    let binder = sdk_worker(&engine.url, "t7-binder");
    binder.register_function("tick::handle", recording(tx, |_| json!({ "ok": true })));
    engine.wait_for_providers("tick::handle", 1).await;
    wait_until("the ticker type", WAIT, async || {
        let types = call(&binder, "engine::triggers::list", json!({})).await;
        types.is_ok_and(|t| {
            t["triggers"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|t| t["id"] == "ticker" && t["namespace"] == "default")
            })
        })
    })
    .await;

    // Bind, see it at the provider, fire it, unbind.
    let first = binder
        .register_trigger(RegisterTriggerInput::new(
            "ticker",
            "tick::handle",
            json!({ "every": "1s" }),
        ))
        .expect("register_trigger");
    let seen = next_registered(&mut binds).await;
    assert_eq!(seen.function_id, "tick::handle");
    assert_eq!(seen.config, json!({ "every": "1s" }));
    assert_eq!(
        bindings_of(&binder, "tick::handle").await,
        vec![(seen.id.clone(), true)]
    );

    let out = call(&provider, &seen.function_id, json!({ "tick": 1 }))
        .await
        .expect("fire");
    assert_eq!(out, json!({ "ok": true }));
    assert_eq!(recv(&mut fired, "the fired binding").await["tick"], 1);

    first.unregister();
    let gone = next_unregistered(&mut binds).await;
    assert_eq!(gone.id, seen.id);
    wait_until("the binding to go", WAIT, async || {
        bindings_of(&binder, "tick::handle").await.is_empty()
    })
    .await;

    // A binding survives its provider's restart.
    let _second = binder
        .register_trigger(RegisterTriggerInput::new(
            "ticker",
            "tick::handle",
            json!({ "every": "2s" }),
        ))
        .expect("register_trigger");
    let bound = next_registered(&mut binds).await;
    stop(provider).await;
    wait_until("the binding to park", WAIT, async || {
        bindings_of(&binder, "tick::handle").await == vec![(bound.id.clone(), false)]
    })
    .await;
    let listed = call(
        &binder,
        "engine::registered-triggers::list",
        json!({ "trigger_type": "ticker" }),
    )
    .await
    .expect("registered-triggers::list");
    let entry = find(&listed["registered_triggers"], "id", &bound.id);
    assert_eq!(entry["state"], "parked", "{entry}");

    let provider = sdk_worker(&engine.url, "t7-provider");
    let mut binds = provide_type(&provider, "ticker");
    let replayed = next_registered(&mut binds).await;
    assert_eq!(replayed.id, bound.id);
    assert_eq!(replayed.function_id, "tick::handle");
    assert_eq!(replayed.config, json!({ "every": "2s" }));
    assert_eq!(
        bindings_of(&binder, "tick::handle").await,
        vec![(bound.id.clone(), true)]
    );
    call(&provider, &replayed.function_id, json!({ "tick": 2 }))
        .await
        .expect("fire after restart");
    assert_eq!(recv(&mut fired, "the replayed binding").await["tick"], 2);

    stop(provider).await;
    stop(binder).await;
    engine.stop().await;
}

/// An SDK worker `name` serving the echo `function` through a [`Proxy`] (so
/// the test can cut or watch its socket), a caller connected directly, and
/// the worker's current id once the engine knows both.
struct ReattachSetup {
    engine: TestEngine,
    proxy: Proxy,
    worker: IIIClient,
    caller: IIIClient,
    old: Uuid,
}

impl ReattachSetup {
    async fn start(name: &str, function: &str) -> Self {
        let engine = TestEngine::start().await;
        let proxy = Proxy::start(&engine.url).await;
        let worker = sdk_worker(&proxy.url, name);
        worker.register_function(
            function,
            RegisterFunction::new_async(|input: Value| async move { Ok::<_, SdkError>(input) }),
        );
        let caller = sdk_worker(&engine.url, &format!("{name}-caller"));
        engine.wait_for_providers(function, 1).await;
        wait_until("the worker's name", WAIT, async || {
            engine.worker_ids_named(name).len() == 1
        })
        .await;
        let old = engine.worker_id_named(name);
        Self {
            engine,
            proxy,
            worker,
            caller,
            old,
        }
    }
}

/// The engine closes an SDK client's socket (1011): the client reconnects,
/// opens with `reattach{previous_worker_id, reattach_token}` naming its old
/// connection, replays its function, and is callable again; the old worker
/// entry is gone (one worker with that name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closed_by_the_engine_reconnects_and_reattaches() {
    let ReattachSetup {
        engine,
        proxy,
        worker,
        caller,
        old,
    } = ReattachSetup::start("t8-reattach", "re::echo").await;
    let token = engine.reattach_token(old);

    engine.close_worker(old, 1011, "test");
    wait_until("the SDK to reconnect and replay", WAIT, async || {
        let named = engine.worker_ids_named("t8-reattach");
        named.len() == 1 && named[0] != old && engine.providers("re::echo").len() == 1
    })
    .await;
    assert_eq!(proxy.engine_closed(0), Some(Some(1011)));
    assert_eq!(proxy.connections(), 2);
    let opening = &proxy.sent(1)[0];
    assert_eq!(
        opening,
        &json!({"type":"reattach","previous_worker_id":old.to_string(),
            "reattach_token":token}),
    );
    assert!(!engine.has_worker(old));
    assert_eq!(worker.get_connection_state(), IIIConnectionState::Connected);
    let out = call(&caller, "re::echo", json!({ "again": true }))
        .await
        .expect("re::echo after the reconnect");
    assert_eq!(out["again"], true, "{out}");

    stop(worker).await;
    stop(caller).await;
    engine.stop().await;
}

/// The client loses its socket while the engine still holds the old
/// connection (half-open: only the client's side is cut). Its `reattach`
/// makes the engine evict the stale connection (closed with 4000) before
/// the replay, so exactly one worker and one provider remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_evicts_a_stale_connection_the_engine_still_holds() {
    let ReattachSetup {
        engine,
        proxy,
        worker,
        caller,
        old,
    } = ReattachSetup::start("t8b-reattach", "stale::echo").await;

    proxy.cut_client(0);
    wait_until("the SDK to reconnect", WAIT, async || {
        engine
            .worker_ids_named("t8b-reattach")
            .iter()
            .any(|id| *id != old)
    })
    .await;
    wait_until("one worker and one provider", WAIT, async || {
        engine.worker_ids_named("t8b-reattach").len() == 1
            && engine.providers("stale::echo").len() == 1
    })
    .await;
    assert!(!engine.has_worker(old));
    assert_eq!(proxy.sent(1)[0]["type"], "reattach");
    wait_until("the stale connection to be closed", DEADLINE, async || {
        proxy.engine_closed(0).is_some()
    })
    .await;
    assert_eq!(proxy.engine_closed(0), Some(Some(4000)));
    let out = call(&caller, "stale::echo", json!({ "n": 1 }))
        .await
        .expect("stale::echo after the reattach");
    assert_eq!(out["n"], 1, "{out}");

    stop(worker).await;
    stop(caller).await;
    engine.stop().await;
}

/// The engine functions, called through the SDK, answer in iii's shapes:
/// functions, workers, trigger types and bindings (list and info), engine-owned
/// bindings (`register_trigger` → `{id}`, `unregister_trigger` → `{removed}`),
/// and `engine::workers-available` firing `worker_connected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_functions_answer_in_iii_shapes() {
    let engine = TestEngine::start().await;
    let subject = sdk_worker(&engine.url, "t9-subject");
    let schema = json!({"type":"object","properties":{"q":{"type":"string"}}});
    subject.register_function(
        "intro::fn",
        RegisterFunction::new_async(|_: Value| async move { Ok::<_, SdkError>(json!({})) })
            .description("Introspection target")
            .metadata(json!({ "team": "qa" }))
            .request_format(schema.clone()),
    );
    let mut binds = provide_type(&subject, "intro-type");
    let (tx, mut events) = mpsc::unbounded_channel();
    let asker = sdk_worker(&engine.url, "t9-asker");
    asker.register_function("watch::workers", recording(tx, |_| Value::Null));
    wait_until("both workers", WAIT, async || {
        engine.providers("intro::fn").len() == 1
            && engine.providers("watch::workers").len() == 1
            && engine.worker_ids_named("t9-subject").len() == 1
    })
    .await;
    let subject_id = engine.worker_id_named("t9-subject").to_string();
    let ask = |id: &'static str, payload: Value| {
        let asker = asker.clone();
        async move {
            call(&asker, id, payload)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e:?}"))
        }
    };

    // Functions.
    let list = ask("engine::functions::list", json!({})).await;
    let f = find(&list["functions"], "function_id", "intro::fn");
    assert_eq!(f["namespace"], "default", "{f}");
    assert_eq!(f["worker_name"], "t9-subject", "{f}");
    assert_eq!(f["description"], "Introspection target", "{f}");
    assert_eq!(f["metadata"], json!({ "team": "qa" }), "{f}");
    let ids: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function_id"].as_str())
        .collect();
    assert!(!ids.iter().any(|id| id.starts_with("engine::")), "{ids:?}");
    let info = ask(
        "engine::functions::info",
        json!({ "function_id": "intro::fn" }),
    )
    .await;
    assert_eq!(info["function_id"], "intro::fn", "{info}");
    assert_eq!(info["worker_name"], "t9-subject", "{info}");
    assert_eq!(info["request_schema"], schema, "{info}");
    assert_eq!(info["registered_triggers"], json!([]), "{info}");
    let err = call(
        &asker,
        "engine::functions::info",
        json!({ "function_id": "no::such" }),
    )
    .await
    .expect_err("no::such");
    assert_eq!(remote_code(&err), "NOT_FOUND", "{err:?}");

    // Workers.
    let list = ask("engine::workers::list", json!({})).await;
    let w = find(&list["workers"], "name", "t9-subject");
    assert_eq!(w["id"], subject_id.as_str(), "{w}");
    assert_eq!(w["runtime"], "rust", "{w}");
    assert_eq!(w["status"], "available", "{w}");
    assert_eq!(w["function_count"], 1, "{w}");
    assert_eq!(w["namespace"], "default", "{w}");
    assert!(w["version"].as_str().is_some_and(|v| !v.is_empty()), "{w}");
    assert!(w["connected_at_ms"].as_u64().is_some(), "{w}");
    assert_eq!(
        find(&list["workers"], "runtime", "engine")["status"],
        "available"
    );
    let info = ask("engine::workers::info", json!({ "name": "t9-subject" })).await;
    assert_eq!(info["worker"]["id"], subject_id.as_str(), "{info}");
    assert_eq!(info["worker"]["pid"], std::process::id(), "{info}");
    find(&info["functions"], "function_id", "intro::fn");
    find(&info["trigger_types"], "id", "intro-type");
    let err = call(&asker, "engine::workers::info", json!({ "name": "nobody" }))
        .await
        .expect_err("nobody");
    assert_eq!(remote_code(&err), "NOT_FOUND", "{err:?}");

    // Trigger types.
    let list = ask("engine::triggers::list", json!({})).await;
    let t = find(&list["triggers"], "id", "intro-type");
    assert_eq!(
        t,
        &json!({"id":"intro-type","namespace":"default","worker_name":"t9-subject",
            "description":"fires when its provider says so"})
    );
    let info = ask("engine::triggers::info", json!({ "id": "intro-type" })).await;
    assert_eq!(info["instance_count"], 0, "{info}");

    // Engine-owned bindings, and the registered-triggers views of them.
    let made = ask(
        "engine::register_trigger",
        json!({"trigger_type":"intro-type","function_id":"intro::fn","config":{"x":1}}),
    )
    .await;
    let id = made["id"]
        .as_str()
        .expect("register_trigger returns {id}")
        .to_owned();
    let seen = next_registered(&mut binds).await;
    assert_eq!(
        (seen.id.as_str(), seen.function_id.as_str()),
        (id.as_str(), "intro::fn")
    );
    assert_eq!(seen.config, json!({ "x": 1 }));
    let list = ask("engine::registered-triggers::list", json!({})).await;
    let b = find(&list["registered_triggers"], "id", &id);
    assert_eq!(b["trigger_type"], "intro-type", "{b}");
    assert_eq!(b["function_id"], "intro::fn", "{b}");
    assert_eq!(b["config"], json!({ "x": 1 }), "{b}");
    assert!(
        b["worker_name"].is_string() && b["config_summary"].is_string(),
        "{b}"
    );
    assert_eq!(b["state"], "active", "{b}");
    let info = ask("engine::registered-triggers::info", json!({ "id": id })).await;
    assert_eq!(info["id"], id.as_str(), "{info}");
    assert_eq!(info["trigger"]["id"], "intro-type", "{info}");
    assert_eq!(info["trigger"]["instance_count"], 1, "{info}");
    assert_eq!(info["function"]["function_id"], "intro::fn", "{info}");
    let info = ask(
        "engine::functions::info",
        json!({ "function_id": "intro::fn" }),
    )
    .await;
    assert_eq!(info["registered_triggers"][0]["id"], id.as_str(), "{info}");
    assert_eq!(
        ask("engine::unregister_trigger", json!({ "id": id })).await,
        json!({ "removed": true })
    );
    assert_eq!(next_unregistered(&mut binds).await.id, id);
    assert_eq!(
        ask("engine::unregister_trigger", json!({ "id": id })).await,
        json!({ "removed": false })
    );

    // engine::workers-available fires when a worker connects.
    asker
        .register_trigger(RegisterTriggerInput::new(
            "engine::workers-available",
            "watch::workers",
            json!({}),
        ))
        .expect("bind workers-available");
    wait_until("the workers-available binding", WAIT, async || {
        bindings_of(&asker, "watch::workers")
            .await
            .iter()
            .any(|(_, active)| *active)
    })
    .await;
    let newcomer = sdk_worker(&engine.url, "t9-newcomer");
    let deadline = Instant::now() + DEADLINE;
    let mut seen_events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) => seen_events.push(e),
            _ => panic!("no worker_connected for the newcomer in {seen_events:?}"),
        }
        let id = engine.worker_ids_named("t9-newcomer");
        let connected = |id: &Uuid| {
            seen_events.iter().any(|e| {
                e["event"] == "worker_connected" && e["worker_id"] == id.to_string().as_str()
            })
        };
        if id.len() == 1 && connected(&id[0]) {
            break;
        }
    }

    stop(newcomer).await;
    stop(subject).await;
    stop(asker).await;
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
