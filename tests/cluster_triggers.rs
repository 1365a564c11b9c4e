//! Cluster mode: a trigger type a worker provides on one engine serves
//! bindings made on another. The provider gets the binding as
//! `registertrigger`, fires it by calling the bound function (which runs on
//! the binding's engine), and gets `unregistertrigger` when the binding goes:
//! unbound, its worker gone, or its engine killed.

mod common;

use common::launcher::EngineProcess;
use common::nats::{ENGINE_TIMEOUT, HEARTBEAT, NatsCluster};
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn engine_config(nats: &NatsCluster, engine_id: &str) -> qmesh::config::Config {
    nats.engine_config(test_config(), engine_id)
}

/// A worker providing the trigger type `webhook`.
async fn provider(url: &str) -> RawClient {
    let mut p = RawClient::worker(url, "hooks").await;
    p.send(
        json!({"type": "registertriggertype", "id": "webhook", "description": "calls on a hook"}),
    )
    .await;
    p
}

async fn registered(provider: &mut RawClient, id: &str) -> Value {
    provider
        .recv_until(&format!("registertrigger {id}"), |v| {
            v["type"] == "registertrigger" && v["id"] == id
        })
        .await
}

async fn unregistered(provider: &mut RawClient, id: &str) -> Value {
    provider
        .recv_until(&format!("unregistertrigger {id}"), |v| {
            v["type"] == "unregistertrigger" && v["id"] == id
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_on_one_engine_reaches_the_provider_on_another_and_fires_there() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;

    // Bound on A before any engine knows the type: parked, as on one engine.
    let mut subscriber = RawClient::worker(&a.url, "subscriber").await;
    subscriber
        .bind("t1", "webhook", "app::on_hook", json!({"path": "/orders"}))
        .await;

    let mut hooks = provider(&b.url).await;
    let reg = registered(&mut hooks, "t1").await;
    assert_eq!(reg["trigger_type"], "webhook", "{reg}");
    assert_eq!(reg["function_id"], "app::on_hook", "{reg}");
    assert_eq!(reg["config"], json!({"path": "/orders"}), "{reg}");
    // A lists it as active on engine b's type.
    wait_until("A sees t1 active", WAIT, async || {
        a.active_bindings("webhook") == 1
    })
    .await;

    // The provider fires it: the call reaches the function on A.
    b.wait_for_providers("app::on_hook", 1).await;
    let fire = hooks.send_call("app::on_hook", json!({"order": 7})).await;
    let event = subscriber.answer_next(json!({"result": "seen"})).await;
    assert_eq!(event["data"]["order"], 7, "{event}");
    let result = hooks
        .recv_until("the fire's result", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == fire.as_str()
        })
        .await;
    assert_eq!(result["result"], "seen", "{result}");

    // Unbound on A: B's provider is told.
    subscriber
        .send(json!({"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook"}))
        .await;
    let gone = unregistered(&mut hooks, "t1").await;
    assert_eq!(gone["trigger_type"], "webhook", "{gone}");

    // engine::register_trigger on A answers at once (the provider's verdict
    // does not cross engines) and the provider gets the binding.
    let started = Instant::now();
    let made = subscriber
        .call_ok(
            "engine::register_trigger",
            json!({"trigger_type": "webhook", "function_id": "app::on_hook", "config": {}}),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(5), "{made}");
    let engine_owned = made["id"].as_str().unwrap().to_owned();
    registered(&mut hooks, &engine_owned).await;
    subscriber
        .call_ok("engine::unregister_trigger", json!({"id": engine_owned}))
        .await;
    unregistered(&mut hooks, &engine_owned).await;

    // The binding's worker disconnects: B's provider is told.
    subscriber
        .bind("t2", "webhook", "app::on_hook", json!({"path": "/refunds"}))
        .await;
    registered(&mut hooks, "t2").await;
    subscriber.ws.close(None).await.unwrap();
    unregistered(&mut hooks, "t2").await;
}

/// A type provided on the binding's own engine serves it; when that provider
/// goes, another engine's takes over, and the binding follows it back when
/// one returns here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_on_the_same_engine_comes_first_and_another_engine_takes_over() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut remote = provider(&b.url).await;
    let mut local = provider(&a.url).await;
    // A knows b's type, but its own provider keeps the type.
    wait_until("b's type reached A's directory", WAIT, async || {
        nats_keys(&nats, "trigger_types")
            .await
            .iter()
            .any(|k| k.starts_with("b."))
    })
    .await;

    let mut subscriber = RawClient::worker(&a.url, "subscriber").await;
    subscriber
        .bind("t1", "webhook", "app::on_hook", json!({}))
        .await;
    registered(&mut local, "t1").await;

    // A's provider goes: the binding moves to b's.
    local.ws.close(None).await.unwrap();
    registered(&mut remote, "t1").await;

    // A provider here again: the binding comes back, and b's is told it left.
    let mut local = provider(&a.url).await;
    registered(&mut local, "t1").await;
    unregistered(&mut remote, "t1").await;
    drop(b);
}

/// The engine a binding was made on is killed: the provider on another
/// engine is told the binding is gone once that engine is declared dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engines_bindings_are_unregistered_at_the_provider() {
    let nats = NatsCluster::start().await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut a = EngineProcess::start_with_config(&nats.engine_toml("a"));
    let mut hooks = provider(&b.url).await;

    let mut subscriber = RawClient::worker(&a.url, "subscriber").await;
    subscriber
        .bind("t1", "webhook", "app::on_hook", json!({}))
        .await;
    registered(&mut hooks, "t1").await;

    a.kill();
    let killed = Instant::now();
    unregistered(&mut hooks, "t1").await;
    let took = killed.elapsed();
    // Declared dead within the timeout plus half a heartbeat of the sweep
    // (and scheduling on a shared machine).
    assert!(
        took < ENGINE_TIMEOUT + HEARTBEAT + Duration::from_secs(2),
        "unregistered after {took:?}"
    );
    wait_until("b forgets a's binding key", WAIT, async || {
        nats_keys(&nats, "bindings").await.is_empty()
    })
    .await;
}

async fn nats_keys(nats: &NatsCluster, bucket: &str) -> Vec<String> {
    common::nats::keys(&nats.bucket(bucket).await).await
}
