//! Durable topics (`iii::durable::publish` and the `durable:subscriber`
//! trigger type) against a real engine: two subscriber functions served by
//! the Node and the Python SDK each run every acknowledged publish at least
//! once, across a kill -9 of the real binary and while no subscriber is
//! connected; a fifo `queue_config` keeps publish order through a retry;
//! bad input gets clear errors.

mod common;

use common::programs::{Collected, Program};
use common::sdk::{sdk_worker, stop};
use common::{EngineProcess, RawClient, TestEngine, wait_for, wait_until};
use iii_sdk::IIIClient;
use iii_sdk::protocol::TriggerRequest;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOPIC: &str = "orders";
const NODE_FN: &str = "node::on_order";
const PY_FN: &str = "py::on_order";

/// The rows of `engine::topics::list`.
async fn subscriptions(c: &mut RawClient) -> Vec<Value> {
    let r = c.call("engine::topics::list", json!({})).await;
    r["result"]["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until every function in `fns` has a live binding on `topic`
/// (registrations are not acknowledged).
async fn until_bound(c: &mut RawClient, topic: &str, fns: &[&str]) {
    wait_for(
        "the subscriptions to be bound",
        Duration::from_secs(30),
        async || {
            let subs = subscriptions(c).await;
            let bound = |f: &&str| {
                subs.iter().any(|s| {
                    s["topic"] == topic
                        && s["function_id"] == *f
                        && s["bindings"].as_u64() >= Some(1)
                })
            };
            if fns.iter().all(bound) {
                Ok(())
            } else {
                Err(format!("{subs:?}"))
            }
        },
    )
    .await;
}

fn start_subscribers(url: &str) -> (Collected, Collected) {
    let node = Program::start("node", "topic_subscriber.mjs", &[TOPIC, NODE_FN], url);
    let py = Program::start("python", "topic_subscriber.py", &[TOPIC, PY_FN], url);
    (node.collect(), py.collect())
}

fn ns_of(lines: &[Value]) -> HashSet<u64> {
    lines
        .iter()
        .filter(|v| v["event"] == "message")
        .filter_map(|v| v["data"]["n"].as_u64())
        .collect()
}

async fn publish(p: &IIIClient, n: u64) -> bool {
    let r = p
        .trigger(TriggerRequest {
            function_id: "iii::durable::publish".into(),
            payload: json!({"topic": TOPIC, "data": {"n": n}}),
            action: None,
            timeout_ms: Some(5_000),
        })
        .await;
    r.is_ok()
}

/// 32 concurrent publishers from `first` on until `dead` or `last`;
/// every acknowledged `n` goes into `acked`.
async fn publish_until(
    p: &IIIClient,
    first: u64,
    last: u64,
    acked: Arc<Mutex<HashSet<u64>>>,
    dead: Arc<AtomicBool>,
) {
    let next = Arc::new(AtomicU64::new(first));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (p, next, acked, dead) = (p.clone(), next.clone(), acked.clone(), dead.clone());
        tasks.push(tokio::spawn(async move {
            while !dead.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= last || !publish(&p, n).await {
                    return; // done, or the engine is gone: never acknowledged
                }
                acked.lock().unwrap().insert(n);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_reaches_both_sdk_subscribers_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let (node, py) = start_subscribers(&engine.url);
    let mut c = RawClient::worker(&engine.url, "c").await;
    until_bound(&mut c, TOPIC, &[NODE_FN, PY_FN]).await;

    // Publishes while both subscribers run; the engine is SIGKILLed mid-stream.
    let producer = sdk_worker(&engine.url, "topic-producer");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let dead = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (p, acked, dead) = (producer.clone(), acked.clone(), dead.clone());
        tokio::spawn(async move { publish_until(&p, 0, 1_000_000, acked, dead).await })
    };
    wait_until(
        "acknowledged publishes before the kill",
        Duration::from_secs(60),
        async || acked.lock().unwrap().len() >= 500,
    )
    .await;
    engine.kill();
    dead.store(true, Ordering::Relaxed);
    publishing.await.unwrap();
    stop(producer).await;
    drop(c);
    let (_, node_lines) = node.finish().await;
    let (_, py_lines) = py.finish().await;
    let (mut node_ran, mut py_ran) = (ns_of(&node_lines), ns_of(&py_lines));

    // Restarted on the same store: subscriptions are back before any worker
    // binds, so publishes made now wait for their subscribers.
    let engine = EngineProcess::start_in(dir.path());
    let producer = sdk_worker(&engine.url, "topic-producer");
    let later = Arc::new(Mutex::new(HashSet::new()));
    publish_until(
        &producer,
        2_000_000,
        2_000_050,
        later.clone(),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    assert_eq!(
        later.lock().unwrap().len(),
        50,
        "publishes with no subscriber connected are acknowledged"
    );
    let mut acked: HashSet<u64> = acked.lock().unwrap().clone();
    acked.extend(later.lock().unwrap().iter());

    let (node, py) = start_subscribers(&engine.url);
    wait_until(
        "every acknowledged publish to run on both",
        Duration::from_secs(120),
        async || {
            let (n, p) = (
                ns_of(&node.lines.lock().unwrap()),
                ns_of(&py.lines.lock().unwrap()),
            );
            acked.iter().all(|x| node_ran.contains(x) || n.contains(x))
                && acked.iter().all(|x| py_ran.contains(x) || p.contains(x))
        },
    )
    .await;
    let (code, node_lines) = node.finish().await;
    assert_eq!(code, 0);
    let (code, py_lines) = py.finish().await;
    assert_eq!(code, 0);
    node_ran.extend(ns_of(&node_lines));
    py_ran.extend(ns_of(&py_lines));
    assert!(acked.is_subset(&node_ran) && acked.is_subset(&py_ran));
    eprintln!(
        "{} publishes acknowledged; node ran {}, python ran {}",
        acked.len(),
        node_ran.len(),
        py_ran.len()
    );
    stop(producer).await;
    drop(engine); // killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_subscriber_keeps_publish_order_through_a_retry() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("fifo::handle").await;
    w.send(
        json!({"type":"registertrigger","id":"fifo-sub","trigger_type":"durable:subscriber",
        "function_id":"fifo::handle","config":{"topic":"fifo-orders",
        "queue_config":{"type":"fifo","maxRetries":2,"backoffDelayMs":20,"visibilityTimeout":5}}}),
    )
    .await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    until_bound(&mut c, "fifo-orders", &["fifo::handle"]).await;
    for n in 0..4 {
        let r = c
            .call(
                "iii::durable::publish",
                json!({"topic":"fifo-orders","data":{"n":n}}),
            )
            .await;
        assert!(r["error"].is_null(), "{r}");
        assert!(r["result"].is_null(), "publish answers null: {r}");
    }
    let mut order = Vec::new();
    while order.len() < 5 {
        let inv = w
            .recv_until("a job", |v| v["type"] == "invokefunction")
            .await;
        let n = inv["data"]["n"].as_u64().unwrap();
        let first_try = !order.contains(&n);
        order.push(n);
        let reply = if n == 0 && first_try {
            json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
                "function_id":"fifo::handle","error":{"code":"boom","message":"first try fails"}})
        } else {
            json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
                "function_id":"fifo::handle","result":{"ok":true}})
        };
        w.send(reply).await;
    }
    assert_eq!(
        order,
        [0, 0, 1, 2, 3],
        "nothing overtakes the retried message"
    );
    let stats = c
        .call(
            "queue::stats",
            json!({"queue": "topic:fifo-orders>fifo::handle"}),
        )
        .await;
    let settings = &stats["result"]["settings"];
    assert_eq!(settings["ordering"], "fifo", "{stats}");
    assert_eq!(
        settings["max_attempts"], 3,
        "maxRetries after the first: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let engine = TestEngine::start().await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    for input in [
        json!({"topic":"","data":1}),
        json!({"queue":"","data":1}),
        json!({"data":1}),
    ] {
        let r = c.call("iii::durable::publish", input).await;
        assert_eq!(r["error"]["code"], "topic_not_set", "{r}");
        assert_eq!(r["error"]["message"], "Topic is not set", "{r}");
    }
    let r = c.call("iii::durable::publish", json!({"topic":"t"})).await;
    assert_eq!(r["error"]["code"], "deserialization_error", "{r}");
    let r = c
        .call("iii::durable::publish", json!({"topic":"a\u{0}b","data":1}))
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
    // `queue` is an alias of `topic`; no subscriber: acknowledged, nothing written.
    let r = c
        .call("iii::durable::publish", json!({"queue":"nobody","data":1}))
        .await;
    assert!(r["error"].is_null() && r["result"].is_null(), "{r}");

    c.register_function("f").await;
    for (config, why) in [
        (
            json!({}),
            "topic is required for durable:subscriber triggers",
        ),
        (
            json!({"topic":"t","queue_config":{"concurrency":0}}),
            "queue_config.concurrency must be at least 1",
        ),
    ] {
        let id = uuid::Uuid::new_v4().to_string();
        c.send(
            json!({"type":"registertrigger","id":id,"trigger_type":"durable:subscriber",
            "function_id":"f","config":config}),
        )
        .await;
        let r = c
            .recv_until("triggerregistrationresult", |v| {
                v["type"] == "triggerregistrationresult" && v["id"] == id.as_str()
            })
            .await;
        assert_eq!(r["error"]["code"], "trigger_registration_failed", "{r}");
        assert_eq!(r["error"]["message"], why, "{r}");
    }
    assert!(subscriptions(&mut c).await.is_empty());
}

/// Two bindings of one function (on two workers) share its queue: each
/// message runs once, on either of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_of_one_function_compete() {
    let engine = TestEngine::start().await;
    let mut workers = Vec::new();
    for name in ["w1", "w2"] {
        let mut w = RawClient::worker(&engine.url, name).await;
        w.register_function("compete::f").await;
        w.send(
            json!({"type":"registertrigger","id":format!("compete-{name}"),
            "trigger_type":"durable:subscriber","function_id":"compete::f",
            "config":{"topic":"compete"}}),
        )
        .await;
        workers.push(w);
    }
    let mut c = RawClient::worker(&engine.url, "c").await;
    wait_for("both bindings", Duration::from_secs(10), async || {
        let subs = subscriptions(&mut c).await;
        match subs.as_slice() {
            [s] if s["bindings"] == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for n in 0..10 {
        let r = c
            .call(
                "iii::durable::publish",
                json!({"topic":"compete","data":{"n":n}}),
            )
            .await;
        assert!(r["error"].is_null(), "{r}");
    }
    // Both workers serve until the queue has completed all ten.
    let ran = Arc::new(Mutex::new(Vec::new()));
    let serving: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let ran = ran.clone();
            tokio::spawn(async move {
                while let Some(inv) = w.recv().await {
                    if inv["type"] != "invokefunction" {
                        continue;
                    }
                    ran.lock().unwrap().push(inv["data"]["n"].as_u64().unwrap());
                    w.send(
                        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
                        "function_id":"compete::f","result":null}),
                    )
                    .await;
                }
            })
        })
        .collect();
    wait_for("ten completed jobs", Duration::from_secs(20), async || {
        let s = c
            .call("queue::stats", json!({"queue": "topic:compete>compete::f"}))
            .await;
        if s["result"]["completed"] == 10 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    assert_eq!(ran, (0..10).collect::<Vec<u64>>(), "each message once");
    for s in serving {
        s.abort();
    }
}
