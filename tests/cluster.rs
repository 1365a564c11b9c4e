//! Cluster mode, first slice: two engines on a 3-node NATS cluster route a
//! worker's sync call to a function served only on the other engine, and
//! fail it cleanly once nobody serves it.

mod common;

use common::nats::NatsCluster;
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use qmesh::config::Config;
use serde_json::json;

fn engine_config(nats: &NatsCluster, engine_id: &str) -> Config {
    let mut c = test_config();
    c.cluster.urls = nats.urls.clone();
    c.cluster.name = "test".to_owned();
    c.cluster.engine_id = Some(engine_id.to_owned());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_one_engine_reaches_a_worker_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;

    let mut worker = RawClient::worker(&b.url, "echo-worker").await;
    worker.register_function("svc::echo").await;
    let mut caller = RawClient::worker(&a.url, "caller").await;
    // Engine A learns of it from the directory: one provider, engine b's peer.
    a.wait_for_providers("svc::echo", 1).await;

    let id = caller.send_call("svc::echo", json!({"n": 7})).await;
    let inv = worker
        .recv_until("invokefunction", |v| v["type"] == "invokefunction")
        .await;
    assert_eq!(inv["data"]["n"], 7, "{inv}");
    worker
        .send(
            json!({"type": "invocationresult", "invocation_id": inv["invocation_id"],
            "function_id": "svc::echo", "result": {"echo": inv["data"]["n"]}}),
        )
        .await;
    let result = caller
        .recv_until("the result", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == id.as_str()
        })
        .await;
    assert_eq!(result["result"], json!({"echo": 7}), "{result}");

    // A lists the function.
    let listed = caller.call("engine::functions::list", json!({})).await;
    assert!(
        listed["result"].to_string().contains("svc::echo"),
        "{listed}"
    );

    // B's worker goes: B withdraws the function, A forgets it, and a call
    // fails at once with function_not_found.
    worker.ws.close(None).await.unwrap();
    wait_until("A forgets svc::echo", WAIT, async || {
        a.providers("svc::echo").is_empty()
    })
    .await;
    let failed = caller.call("svc::echo", json!({"n": 8})).await;
    assert_eq!(failed["error"]["code"], "function_not_found", "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_stops_withdraws_its_functions() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "echo-worker").await;
    worker.register_function("svc::echo").await;
    a.wait_for_providers("svc::echo", 1).await;

    b.stop().await;
    wait_until("A forgets svc::echo", WAIT, async || {
        a.providers("svc::echo").is_empty()
    })
    .await;
    let mut caller = RawClient::worker(&a.url, "caller").await;
    let failed = caller.call("svc::echo", json!({})).await;
    assert_eq!(failed["error"]["code"], "function_not_found", "{failed}");
}

/// An engine that died without draining leaves its directory entries: a
/// call routed to it fails at once (NATS has no responder on its subject),
/// naming the engine, instead of waiting out the call's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_engine_that_no_longer_answers_fails_at_once() {
    use base64::Engine as _;
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;

    // What a dead engine "ghost" left in the directory.
    let client = async_nats::connect(nats.urls[0].as_str()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("qmesh_test_functions")
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = format!(
        "ghost.{}.{}",
        b64.encode("default"),
        b64.encode("svc::gone")
    );
    kv.put(key, "null".into()).await.unwrap();
    a.wait_for_providers("svc::gone", 1).await;

    let mut caller = RawClient::worker(&a.url, "caller").await;
    let started = std::time::Instant::now();
    let failed = caller.call("svc::gone", json!({})).await;
    assert_eq!(failed["error"]["code"], "function_not_found", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ghost"), "{failed}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
