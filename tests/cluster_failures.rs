//! Cluster mode when NATS fails: one node of three killed while engines
//! call each other, and the whole NATS cluster down for a moment.

mod common;

use common::nats::NatsCluster;
use common::{RawClient, TestEngine, WAIT, test_config, wait_for, wait_until};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::mpsc;

/// A worker answering `function_id` on `engine` with `{echo: n}`, serving in the background
/// until the test ends.
async fn echo_worker(engine: &TestEngine, name: &str, function_id: &str) {
    let mut worker = RawClient::worker(&engine.url, name).await;
    worker.register_function(function_id).await;
    tokio::spawn(worker.serve_until_closed(|data| json!({ "echo": data["n"] })));
}

/// Whether an error names why a call across engines failed: NATS on this
/// side, or the other engine.
fn is_clear(error: &Value) -> bool {
    let message = error["message"].as_str().unwrap_or_default();
    ["invocation_failed", "function_not_found"].contains(&error["code"].as_str().unwrap_or(""))
        && (message.contains("NATS") || message.contains("engine b"))
}

/// Engine A, connected to node n1 only, keeps calling a function served on
/// engine B (on n2) while n1 is killed: A's client moves to another node
/// by itself, calls work again, the calls that failed meanwhile said why,
/// and A's directory watch resumed (it learns a function B serves later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_when_one_nats_node_of_three_dies() {
    let mut nats = NatsCluster::start().await;
    let mut config_a = nats.engine_config(test_config(), "a");
    config_a.cluster.urls = vec![nats.urls[0].clone()];
    let mut config_b = nats.engine_config(test_config(), "b");
    config_b.cluster.urls = vec![nats.urls[1].clone()];
    let a = TestEngine::start_with(config_a).await;
    let b = TestEngine::start_with(config_b).await;
    echo_worker(&b, "echo", "svc::echo").await;
    a.wait_for_providers("svc::echo", 1).await;

    // Calls run from A, each tagged with the epoch it started in.
    let epoch = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut outcomes) = mpsc::unbounded_channel::<(u64, Value)>();
    let mut caller = RawClient::worker(&a.url, "caller").await;
    let calls = tokio::spawn({
        let (epoch, stop) = (epoch.clone(), stop.clone());
        async move {
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let started_in = epoch.load(Ordering::SeqCst);
                let result = caller.call("svc::echo", json!({ "n": n })).await;
                let _ = tx.send((started_in, result));
            }
        }
    });
    let ok = |v: &Value| v["result"]["echo"].is_number();
    let mut failed = Vec::new();
    wait_for(
        "a call across engines before the kill",
        WAIT,
        async || match outcomes.recv().await {
            Some((_, v)) if ok(&v) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    nats.kill(0);
    epoch.store(1, Ordering::SeqCst);
    let mut after = 0;
    wait_for("calls started after the kill succeed", WAIT, async || {
        let (started_in, v) = outcomes.recv().await.expect("the caller runs");
        if !ok(&v) {
            failed.push(v["error"].clone());
        } else if started_in == 1 {
            after += 1;
        }
        if after >= 3 {
            Ok(())
        } else {
            Err(format!("{after} so far"))
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    calls.await.expect("the caller ends cleanly");
    for error in &failed {
        assert!(is_clear(error), "a call failed without saying why: {error}");
    }

    echo_worker(&b, "late", "svc::late").await;
    a.wait_for_providers("svc::late", 1).await;
}

/// All three NATS nodes go down for a moment: calls from A to B fail at
/// once, saying that A is not connected to NATS, A keeps B's functions (cut
/// off, it judges nobody dead), and once NATS is back calls work again and
/// the directory follows changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_fails_calls_clearly_until_nats_returns() {
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let b = TestEngine::start_with(nats.engine_config(test_config(), "b")).await;
    echo_worker(&b, "echo", "svc::echo").await;
    a.wait_for_providers("svc::echo", 1).await;
    let mut caller = RawClient::worker(&a.url, "caller").await;
    let answered = caller.call("svc::echo", json!({"n": 0})).await;
    assert_eq!(answered["result"], json!({"echo": 0}), "{answered}");

    for node in 0..3 {
        nats.kill(node);
    }
    let mut last = Value::Null;
    wait_until("A refuses calls to B: not connected", WAIT, async || {
        last = caller.call("svc::echo", json!({"n": 1})).await;
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not connected to NATS"))
    })
    .await;
    assert_eq!(last["error"]["code"], "invocation_failed", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engine b"),
        "{last}"
    );
    assert_eq!(
        a.providers("svc::echo").len(),
        1,
        "A keeps B's functions while cut off"
    );

    nats.restart(&[0, 1, 2]).await;
    wait_until("calls from A reach B again", WAIT, async || {
        let v = caller.call("svc::echo", json!({"n": 2})).await;
        v["result"] == json!({"echo": 2})
    })
    .await;
    echo_worker(&b, "late", "svc::late").await;
    a.wait_for_providers("svc::late", 1).await;
}
