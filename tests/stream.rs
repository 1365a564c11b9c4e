//! Streams (`stream::*` and the `stream` trigger type) against a real
//! engine: the behaviours the published Rust SDK's own `tests/stream.rs`
//! checks, called the same way, plus `list_all`, `send` and the trigger's
//! envelopes. The client socket and custom providers: `stream_socket.rs`.

// The trigger APIs are deprecated in 0.25 in favour of observe (which this
// engine does not advertise); they keep working and are what we test.
#![allow(deprecated)]

mod common;

use common::TestEngine;
use common::sdk::{recording, recv, sdk_worker, stop};
use iii_sdk::IIIClient;
use iii_sdk::protocol::{RegisterTriggerInput, TriggerRequest};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

const STREAM: &str = "test-stream-rs";
const GROUP: &str = "test-group";

async fn trigger(iii: &IIIClient, function_id: &str, payload: Value) -> Value {
    iii.trigger(TriggerRequest {
        function_id: function_id.to_owned(),
        payload,
        action: None,
        timeout_ms: None,
    })
    .await
    .unwrap_or_else(|e| panic!("{function_id}: {e:?}"))
}

fn item(id: &str) -> Value {
    json!({"stream_name": STREAM, "group_id": GROUP, "item_id": id})
}

fn with_data(id: &str, data: Value) -> Value {
    let mut v = item(id);
    v["data"] = data;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_delete_list_have_iiis_shapes() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "stream-shapes");
    let first = json!({"name": "Test Item", "value": 42});
    let set = trigger(&iii, "stream::set", with_data("a", first.clone())).await;
    assert_eq!(set, json!({"old_value": null, "new_value": first}));
    let second = json!({"value": 2});
    let set = trigger(&iii, "stream::set", with_data("a", second.clone())).await;
    assert_eq!(set, json!({"old_value": first, "new_value": second}));
    assert_eq!(trigger(&iii, "stream::get", item("a")).await, second);
    assert!(
        trigger(&iii, "stream::get", item("non-existent-item"))
            .await
            .is_null()
    );

    trigger(&iii, "stream::set", with_data("b", json!({"id": "b"}))).await;
    let mut other = with_data("c", json!({"id": "c"}));
    other["group_id"] = json!("other-group");
    trigger(&iii, "stream::set", other).await;
    let listed = trigger(
        &iii,
        "stream::list",
        json!({"stream_name": STREAM, "group_id": GROUP}),
    )
    .await;
    assert_eq!(
        listed,
        json!([second, {"id": "b"}]),
        "a bare array of the group's items"
    );
    let groups = trigger(&iii, "stream::list_groups", json!({"stream_name": STREAM})).await;
    assert_eq!(
        groups,
        json!(["other-group", GROUP]),
        "a bare, sorted array"
    );
    let all = trigger(&iii, "stream::list_all", json!({})).await;
    assert_eq!(
        all,
        json!({"stream": [{"id": STREAM, "groups": ["other-group", GROUP]}], "count": 1})
    );

    let deleted = trigger(&iii, "stream::delete", item("a")).await;
    assert_eq!(
        deleted,
        json!({"old_value": second}),
        "wrapped, unlike state::delete"
    );
    assert!(trigger(&iii, "stream::get", item("a")).await.is_null());
    let missing = trigger(&iii, "stream::delete", item("non-existent")).await;
    assert_eq!(missing, json!({"old_value": null}));
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_applies_partial_updates_via_ops() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "stream-update");
    trigger(
        &iii,
        "stream::set",
        with_data("u", json!({"count": 0, "name": "initial"})),
    )
    .await;
    let mut ops = item("u");
    ops["ops"] = json!([{"type": "set", "path": "count", "value": 5}, {"type": "increment", "path": "name", "by": 1}]);
    let out = trigger(&iii, "stream::update", ops).await;
    assert_eq!(out["new_value"], json!({"count": 5, "name": "initial"}));
    assert_eq!(out["errors"][0]["code"], "increment.not_number");
    let got = trigger(&iii, "stream::get", item("u")).await;
    assert_eq!(got["count"], 5);
    assert_eq!(got["name"], "initial");
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_trigger_gets_iiis_envelopes() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "stream-trigger");
    let (tx, mut events) = mpsc::unbounded_channel();
    let f = iii.register_function("test::stream::rs::on", recording(tx, |_| json!({})));
    let t = iii
        .register_trigger(RegisterTriggerInput::new(
            "stream",
            f.id.clone(),
            json!({"stream_name": STREAM, "group_id": GROUP}),
        ))
        .expect("register stream trigger");
    // Written until the binding is live (registrations are not acknowledged).
    loop {
        trigger(&iii, "stream::set", with_data("warmup", json!(0))).await;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            break;
        }
    }
    trigger(&iii, "stream::delete", item("warmup")).await;
    loop {
        let e = recv(&mut events, "the warm-up's delete").await;
        if e["event"]["type"] == "delete" {
            assert_eq!(e["event"]["data"], 0);
            break;
        }
    }
    let mut elsewhere = with_data("x", json!(1));
    elsewhere["group_id"] = json!("elsewhere");
    trigger(&iii, "stream::set", elsewhere).await;
    trigger(&iii, "stream::delete", item("never-there")).await;
    trigger(&iii, "stream::set", with_data("k", json!({"v": 1}))).await;
    let e = recv(&mut events, "create").await;
    assert_eq!(e["type"], "stream");
    assert_eq!(
        (&e["streamName"], &e["groupId"], &e["id"]),
        (&json!(STREAM), &json!(GROUP), &json!("k"))
    );
    assert_eq!(
        e["event"],
        json!({"type": "create", "data": {"v": 1}}),
        "other groups and empty deletes are not events"
    );
    assert!(e["timestamp"].as_u64().is_some());
    trigger(
        &iii,
        "stream::send",
        json!({"stream_name": STREAM, "group_id": GROUP, "type": "typing", "data": {"who": "ann"}}),
    )
    .await;
    let e = recv(&mut events, "custom event").await;
    assert_eq!(e["id"], Value::Null);
    assert_eq!(
        e["event"],
        json!({"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}})
    );
    t.unregister();
    stop(iii).await;
    engine.stop().await;
}
