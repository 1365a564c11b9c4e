//! State shared by a cluster (`[cluster] state = "jetstream"`): two engines
//! on a 3-node NATS cluster read each other's writes, never lose an update
//! to a race between them, fire each other's `state` bindings once, and keep
//! what they acknowledged through a kill -9.

mod common;

use common::launcher::EngineProcess;
use common::nats::{self, NatsCluster};
use common::{RawClient, TestEngine, WAIT, increments_from_each, test_config, wait_until};
use qmesh::config::{BackendKind, Config};
use serde_json::{Value, json};
use std::time::Duration;

fn engine_config(nats: &NatsCluster, engine_id: &str) -> Config {
    let mut c = nats.engine_config(test_config(), engine_id);
    c.cluster.state = BackendKind::Jetstream;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_on_one_engine_is_read_listed_and_deleted_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut on_a = RawClient::worker(&a.url, "client-a").await;
    let mut on_b = RawClient::worker(&b.url, "client-b").await;

    let set = json!({"scope": "orders.eu", "key": "k.1", "value": {"n": 1}});
    let first = on_a.call_ok("state::set", set).await;
    assert_eq!(first, json!({"old_value": null, "new_value": {"n": 1}}));
    // Acknowledged means stored: B reads it at once.
    let got = on_b
        .call_ok("state::get", json!({"scope": "orders.eu", "key": "k.1"}))
        .await;
    assert_eq!(got, json!({"n": 1}));
    // B's set answers A's value as the old one.
    let second = on_b
        .call_ok(
            "state::set",
            json!({"scope": "orders.eu", "key": "k.1", "value": {"n": 2}}),
        )
        .await;
    assert_eq!(second["old_value"], json!({"n": 1}), "{second}");
    on_b.call_ok(
        "state::set",
        json!({"scope": "orders.eu", "key": "", "value": 0}),
    )
    .await;
    on_b.call_ok(
        "state::set",
        json!({"scope": "orders", "key": "x", "value": "other scope"}),
    )
    .await;

    let listed = on_a
        .call_ok("state::list", json!({"scope": "orders.eu"}))
        .await;
    assert_eq!(listed, json!([0, {"n": 2}]), "in key order");
    let groups = on_a.call_ok("state::list_groups", json!({})).await;
    assert_eq!(groups, json!({"groups": ["orders", "orders.eu"]}));

    let deleted = on_a
        .call_ok("state::delete", json!({"scope": "orders.eu", "key": "k.1"}))
        .await;
    assert_eq!(deleted, json!({"n": 2}));
    let gone = on_b
        .call_ok("state::get", json!({"scope": "orders.eu", "key": "k.1"}))
        .await;
    assert_eq!(gone, Value::Null);
    let listed = on_b
        .call_ok("state::list", json!({"scope": "orders.eu"}))
        .await;
    assert_eq!(listed, json!([0]));
    // In the bucket: one key per live value.
    let bucket = nats.bucket("state").await;
    assert_eq!(nats::keys(&bucket).await.len(), 2);
}

/// 2 × 50 increments sent at once from two engines: each sees a distinct
/// value before it (none lost to a race), and the counter ends at 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_two_engines_all_count() {
    const EACH: usize = 50;
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let op = json!({"type": "increment", "path": "count", "by": 1});
    let data = json!({"scope": "race", "key": "counter", "ops": [op]});
    let before = increments_from_each(&[&a.url, &b.url], "state::update", data, EACH).await;
    assert_eq!(before, (0..2 * EACH as i64).collect::<Vec<_>>());

    let mut reader = RawClient::worker(&a.url, "reader").await;
    let got = reader
        .call_ok("state::get", json!({"scope": "race", "key": "counter"}))
        .await;
    assert_eq!(got, json!({"count": 2 * EACH}));
}

/// A write on engine A fires the `state` binding on B once, with the event
/// a single engine gives, and A's own binding once (not again from the relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_binding_on_one_engine_fires_once_for_a_write_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut watcher_b = RawClient::worker(&b.url, "watcher-b").await;
    let carts = json!({"scope": "carts"});
    watcher_b
        .bind("wb", "state", "watch::b", carts.clone())
        .await;
    let mut watcher_a = RawClient::worker(&a.url, "watcher-a").await;
    watcher_a.bind("wa", "state", "watch::a", carts).await;
    wait_until("the bindings are live", WAIT, async || {
        a.active_bindings("state") == 1 && b.active_bindings("state") == 1
    })
    .await;

    let mut writer = RawClient::worker(&a.url, "writer").await;
    writer
        .call_ok(
            "state::set",
            json!({"scope": "carts", "key": "c1", "value": {"items": 1}}),
        )
        .await;
    let created = json!({"type": "state", "event_type": "state:created", "scope": "carts",
        "key": "c1", "old_value": null, "new_value": {"items": 1}});
    assert_eq!(watcher_b.next_event().await, created);
    assert_eq!(watcher_a.next_event().await, created);

    let op = json!({"type": "increment", "path": "items", "by": 2});
    writer
        .call_ok(
            "state::update",
            json!({"scope": "carts", "key": "c1", "ops": [op]}),
        )
        .await;
    let updated = json!({"type": "state", "event_type": "state:updated", "scope": "carts",
        "key": "c1", "old_value": {"items": 1}, "new_value": {"items": 3}});
    assert_eq!(watcher_b.next_event().await, updated);
    assert_eq!(watcher_a.next_event().await, updated);

    let once = Duration::from_millis(300);
    watcher_b
        .assert_not_invoked_for(once, "each change once")
        .await;
    watcher_a
        .assert_not_invoked_for(once, "each change once")
        .await;
}

/// What one engine acknowledged is read from the other after a kill -9 of
/// the writer (real binaries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_values_survive_a_kill_9_of_the_engine_that_wrote_them() {
    const VALUES: u64 = 20;
    let nats = NatsCluster::start().await;
    let config = |id: &str| format!("{}state = \"jetstream\"\n", nats.engine_toml(id));
    let a = EngineProcess::start_with_config(&config("a"));
    let mut b = EngineProcess::start_with_config(&config("b"));

    let mut writer = RawClient::worker(&b.url, "writer").await;
    for i in 0..VALUES {
        writer
            .call_ok(
                "state::set",
                json!({"scope": "kept", "key": format!("k{i:02}"), "value": i}),
            )
            .await;
    }
    b.kill();

    let mut reader = RawClient::worker(&a.url, "reader").await;
    let listed = reader
        .call_ok("state::list", json!({"scope": "kept"}))
        .await;
    assert_eq!(listed, json!((0..VALUES).collect::<Vec<_>>()));
    let last = format!("k{:02}", VALUES - 1);
    let got = reader
        .call_ok("state::get", json!({"scope": "kept", "key": last}))
        .await;
    assert_eq!(got, json!(VALUES - 1));
}

/// With NATS gone, a write is refused with the function's code and a
/// message saying why; nothing is answered as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_a_write_is_refused_with_its_code() {
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let mut client = RawClient::worker(&a.url, "client").await;
    client
        .call_ok("state::set", json!({"scope": "s", "key": "k", "value": 1}))
        .await;
    nats.kill_all();
    a.until_cut_off_from_nats().await;
    for (function_id, code) in [
        ("state::set", "SET_ERROR"),
        ("state::update", "UPDATE_ERROR"),
        ("state::delete", "DELETE_ERROR"),
        ("state::get", "GET_ERROR"),
    ] {
        let data = json!({"scope": "s", "key": "k", "value": 2, "ops": []});
        let reply = client.call(function_id, data).await;
        assert_eq!(reply["error"]["code"], code, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("not connected to NATS"), "{reply}");
    }
}
