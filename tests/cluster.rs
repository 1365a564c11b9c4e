//! Cluster mode: engines on a 3-node NATS cluster route a worker's sync call
//! to a function served only on another engine, fail it cleanly once nobody
//! serves it, and forget an engine that died.

mod common;

use common::launcher::EngineProcess;
use common::nats::{self, NatsCluster};
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use qmesh::config::Config;
use serde_json::json;

fn engine_config(nats: &NatsCluster, engine_id: &str) -> Config {
    nats.engine_config(test_config(), engine_id)
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

/// Until an engine that died without draining is declared dead, its
/// directory entries stay: a call routed to it meanwhile fails at once (NATS
/// has no responder on its subject), naming the engine, instead of waiting
/// out the call's timeout. (A ghost that never beats, and an engine timeout
/// long enough for the call to go first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_engine_that_no_longer_answers_fails_at_once() {
    use base64::Engine as _;
    let nats = NatsCluster::start().await;
    let mut config = engine_config(&nats, "a");
    config.cluster.engine_timeout = std::time::Duration::from_secs(60);
    let a = TestEngine::start_with(config).await;

    // What a dead engine "ghost" left in the directory.
    let kv = nats.bucket("functions").await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = format!(
        "ghost.{}.{}",
        b64.encode("default"),
        b64.encode("svc::gone")
    );
    kv.put(key, "null".into()).await.unwrap();
    a.wait_for_providers("svc::gone", 1).await;

    let mut caller = RawClient::worker(&a.url, "caller").await;
    let failed = caller.call("svc::gone", json!({})).await;
    assert_eq!(failed["error"]["code"], "function_not_found", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ghost"), "{failed}");
}

/// An engine killed with -9 stops beating: the others drop its functions
/// and delete its directory entries within `engine_timeout`, and its worker,
/// reconnected to a surviving engine, is reachable again from the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_is_forgotten_and_its_worker_is_reached_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let c = TestEngine::start_with(engine_config(&nats, "c")).await;
    let mut b = EngineProcess::start_with_config(&nats.engine_toml("b"));

    let mut worker = RawClient::worker(&b.url, "echo-worker").await;
    worker.register_function("svc::echo").await;
    a.wait_for_providers("svc::echo", 1).await;
    c.wait_for_providers("svc::echo", 1).await;
    let buckets = [nats.bucket("functions").await, nats.bucket("workers").await];
    for kv in &buckets {
        wait_until("b announced its worker and svc::echo", WAIT, async || {
            nats::keys(kv).await.iter().any(|k| k.starts_with("b."))
        })
        .await;
    }

    b.kill();
    for (name, engine) in [("A", &a), ("C", &c)] {
        wait_until(&format!("{name} drops b's svc::echo"), WAIT, async || {
            engine.providers("svc::echo").is_empty()
        })
        .await;
    }
    for kv in &buckets {
        wait_until("b's entries leave the directory", WAIT, async || {
            !nats::keys(kv).await.iter().any(|k| k.starts_with("b."))
        })
        .await;
    }

    // The worker reconnects to C; A's callers reach it there.
    drop(worker);
    let mut worker = RawClient::worker(&c.url, "echo-worker").await;
    worker.register_function("svc::echo").await;
    a.wait_for_providers("svc::echo", 1).await;
    let mut caller = RawClient::worker(&a.url, "caller").await;
    let id = caller.send_call("svc::echo", json!({"n": 1})).await;
    worker.answer_next(json!({"result": {"echo": 1}})).await;
    let result = caller
        .recv_until("the result", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == id.as_str()
        })
        .await;
    assert_eq!(result["result"], json!({"echo": 1}), "{result}");
}

/// The rows of `list[field]` whose `key` is `value`.
fn rows<'a>(
    list: &'a serde_json::Value,
    field: &str,
    key: &str,
    value: &str,
) -> Vec<&'a serde_json::Value> {
    list["result"][field]
        .as_array()
        .map(|a| a.iter().filter(|r| r[key] == value).collect())
        .unwrap_or_default()
}

/// `engine::workers::list` and `engine::functions::list` on one engine show
/// the other engines' workers and functions, each row naming its engine;
/// a worker that leaves its engine leaves every listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_the_whole_cluster_each_row_naming_its_engine() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut alpha = RawClient::worker(&a.url, "alpha").await;
    alpha.register_function("svc::shared").await;
    let mut beta = RawClient::worker(&b.url, "beta").await;
    beta.register_function("svc::b").await;
    beta.register_function("svc::shared").await;
    a.wait_for_providers("svc::b", 1).await;
    a.wait_for_providers("svc::shared", 2).await;

    let mut caller = RawClient::worker(&a.url, "caller").await;
    let workers = wait_for_listing(&mut caller, "engine::workers::list", |list| {
        rows(list, "workers", "name", "beta").len() == 1
    })
    .await;
    let beta_row = rows(&workers, "workers", "name", "beta")[0];
    assert_eq!(beta_row["engine_id"], "b", "{beta_row}");
    assert_eq!(beta_row["id"], beta.worker_id.as_str(), "{beta_row}");
    assert_eq!(beta_row["runtime"], "rust", "{beta_row}");
    assert_eq!(beta_row["status"], "available", "{beta_row}");
    assert_eq!(beta_row["function_count"], 2, "{beta_row}");
    assert_eq!(
        beta_row["functions"],
        json!(["svc::b", "svc::shared"]),
        "{beta_row}"
    );
    let alpha_row = rows(&workers, "workers", "name", "alpha")[0];
    assert_eq!(alpha_row["engine_id"], "a", "{alpha_row}");
    let engine_row = rows(&workers, "workers", "runtime", "engine");
    assert_eq!(
        engine_row.len(),
        1,
        "this engine lists itself once: {workers}"
    );
    assert_eq!(engine_row[0]["engine_id"], "a");
    // B's peer on A is not a worker anyone connected.
    assert!(
        rows(&workers, "workers", "name", "engine:b").is_empty(),
        "{workers}"
    );

    let functions = caller.call("engine::functions::list", json!({})).await;
    let engines_of =
        |id: &str| rows(&functions, "functions", "function_id", id)[0]["engine_ids"].clone();
    assert_eq!(engines_of("svc::b"), json!(["b"]), "{functions}");
    assert_eq!(engines_of("svc::shared"), json!(["a", "b"]), "{functions}");

    // Beta leaves B: A's listings forget it.
    beta.ws.close(None).await.unwrap();
    wait_for_listing(&mut caller, "engine::workers::list", |list| {
        rows(list, "workers", "name", "beta").is_empty()
    })
    .await;
    let functions = wait_for_listing(&mut caller, "engine::functions::list", |list| {
        rows(list, "functions", "function_id", "svc::b").is_empty()
    })
    .await;
    assert_eq!(
        rows(&functions, "functions", "function_id", "svc::shared")[0]["engine_ids"],
        json!(["a"]),
        "{functions}"
    );
}

/// Calls `function_id` until its answer satisfies `done`; returns that answer.
async fn wait_for_listing(
    caller: &mut RawClient,
    function_id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(&format!("{function_id} as wanted"), WAIT, async || {
        last = caller.call(function_id, json!({})).await;
        done(&last)
    })
    .await;
    last
}

/// Binds `function_id` to pub/sub `topic` under binding `id`.
async fn subscribe(worker: &mut RawClient, id: &str, function_id: &str, topic: &str) {
    worker.register_function(function_id).await;
    worker
        .send(
            json!({"type": "registertrigger", "id": id, "trigger_type": "subscribe",
            "function_id": function_id, "config": {"topic": topic}}),
        )
        .await;
}

/// The next `n` invocations `worker` receives, as (function id, data).
async fn invocations(worker: &mut RawClient, n: usize) -> Vec<(String, serde_json::Value)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let inv = worker
            .recv_until("invokefunction", |v| v["type"] == "invokefunction")
            .await;
        got.push((
            inv["function_id"].as_str().unwrap().to_owned(),
            inv["data"].clone(),
        ));
    }
    got.sort_by_key(|(id, _)| id.clone());
    got
}

/// A publish on either engine reaches every `subscribe` binding of the
/// topic on both engines, once each: delivered locally by the publishing
/// engine and relayed to the other, never back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_subscribers_on_every_engine_once() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut on_a = RawClient::worker(&a.url, "subscriber-a").await;
    subscribe(&mut on_a, "ta", "sub::a", "news").await;
    let mut on_b = RawClient::worker(&b.url, "subscriber-b").await;
    subscribe(&mut on_b, "tb1", "sub::b1", "news").await;
    subscribe(&mut on_b, "tb2", "sub::b2", "news").await;
    subscribe(&mut on_b, "tb3", "sub::other", "sports").await;
    wait_until("the bindings are live", WAIT, async || {
        a.active_bindings("subscribe") == 1 && b.active_bindings("subscribe") == 3
    })
    .await;

    let mut publisher_a = RawClient::worker(&a.url, "publisher-a").await;
    let mut publisher_b = RawClient::worker(&b.url, "publisher-b").await;
    for (n, publisher) in [(1, &mut publisher_a), (2, &mut publisher_b)] {
        let published = publisher
            .call("publish", json!({"topic": "news", "data": {"n": n}}))
            .await;
        assert!(published["error"].is_null(), "{published}");
        assert_eq!(
            invocations(&mut on_a, 1).await,
            vec![("sub::a".to_owned(), json!({"n": n}))]
        );
        assert_eq!(
            invocations(&mut on_b, 2).await,
            vec![
                ("sub::b1".to_owned(), json!({"n": n})),
                ("sub::b2".to_owned(), json!({"n": n})),
            ]
        );
    }
    let once = std::time::Duration::from_millis(300);
    on_a.assert_not_invoked_for(once, "each message once").await;
    on_b.assert_not_invoked_for(once, "each message once, none on another topic")
        .await;
}
