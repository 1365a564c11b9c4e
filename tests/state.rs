//! State (`state::*` and the `state` trigger type) against a real engine:
//! the behaviours the published Rust SDK's own `tests/state.rs` checks,
//! called the same way (`trigger` with `TriggerRequest`), plus the update
//! ops' errors, the limits, and acknowledged writes surviving kill -9 of the
//! real binary.

// The trigger APIs are deprecated in 0.25 in favour of observe (which this
// engine does not advertise); they keep working and are what we test.
#![allow(deprecated)]

mod common;

use common::sdk::{call, recording, recv, remote_code, sdk_worker, stop};
use common::{EngineProcess, RawClient, TestEngine, test_config};
use iii_sdk::protocol::{RegisterTriggerInput, TriggerRequest};
use iii_sdk::{IIIClient, RegisterFunction};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SCOPE: &str = "test-scope-rs";

/// What the crate's tests send: a plain `trigger`, no SDK timeout.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_delete_have_iiis_shapes() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "state-shapes");

    let first = json!({"name": "Test Item", "value": 42});
    let set = trigger(
        &iii,
        "state::set",
        json!({"scope": SCOPE, "key": "k", "value": first}),
    )
    .await;
    assert_eq!(
        set,
        json!({"old_value": null, "new_value": first}),
        "exactly these keys"
    );

    let second = json!({"value": 2, "updated": true});
    let set = trigger(
        &iii,
        "state::set",
        json!({"scope": SCOPE, "key": "k", "value": second}),
    )
    .await;
    assert_eq!(set, json!({"old_value": first, "new_value": second}));

    let got = trigger(&iii, "state::get", json!({"scope": SCOPE, "key": "k"})).await;
    assert_eq!(got, second);
    let missing = trigger(
        &iii,
        "state::get",
        json!({"scope": SCOPE, "key": "non-existent-item"}),
    )
    .await;
    assert!(missing.is_null());

    let deleted = trigger(&iii, "state::delete", json!({"scope": SCOPE, "key": "k"})).await;
    assert_eq!(deleted, second, "delete answers the removed value itself");
    let after = trigger(&iii, "state::get", json!({"scope": SCOPE, "key": "k"})).await;
    assert!(after.is_null());
    let again = trigger(
        &iii,
        "state::delete",
        json!({"scope": SCOPE, "key": "non-existent"}),
    )
    .await;
    assert!(again.is_null(), "deleting a missing key is no error");

    // `data` is accepted for `value`, as in iii.
    let alias = trigger(
        &iii,
        "state::set",
        json!({"scope": SCOPE, "key": "d", "data": 7}),
    )
    .await;
    assert_eq!(alias["new_value"], 7);
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_list_groups() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "state-lists");
    let items = [
        json!({"id": "state-item2", "value": 2}),
        json!({"id": "state-item1", "value": 1}),
        json!({"id": "state-item3", "value": 3}),
    ];
    for item in &items {
        trigger(
            &iii,
            "state::set",
            json!({"scope": "list-scope", "key": item["id"], "value": item}),
        )
        .await;
    }
    // A scope whose name extends another's is a different scope.
    trigger(
        &iii,
        "state::set",
        json!({"scope": "list-scope-2", "key": "x", "value": 0}),
    )
    .await;

    let listed = trigger(&iii, "state::list", json!({"scope": "list-scope"})).await;
    let mut listed = listed.as_array().expect("a bare array").clone();
    listed.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let mut expected = items.to_vec();
    expected.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(listed, expected);
    let none = trigger(&iii, "state::list", json!({"scope": "never-written"})).await;
    assert_eq!(none, json!([]));

    let groups = trigger(&iii, "state::list_groups", json!({})).await;
    assert_eq!(groups, json!({"groups": ["list-scope", "list-scope-2"]}));
    trigger(
        &iii,
        "state::delete",
        json!({"scope": "list-scope-2", "key": "x"}),
    )
    .await;
    let groups = trigger(&iii, "state::list_groups", json!({})).await;
    assert_eq!(
        groups,
        json!({"groups": ["list-scope"]}),
        "an emptied scope is gone"
    );
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_applies_ops_and_reports_the_ones_it_skipped() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "state-update");
    trigger(
        &iii,
        "state::set",
        json!({"scope": "u", "key": "k", "value": {"count": 0, "name": "initial"}}),
    )
    .await;
    let out = trigger(
        &iii,
        "state::update",
        json!({"scope": "u", "key": "k",
        "ops": [{"type": "set", "path": "count", "value": 5}]}),
    )
    .await;
    assert_eq!(
        out,
        json!({"old_value": {"count": 0, "name": "initial"},
        "new_value": {"count": 5, "name": "initial"}}),
        "no `errors` when none"
    );
    let got = trigger(&iii, "state::get", json!({"scope": "u", "key": "k"})).await;
    assert_eq!(got["count"], 5);
    assert_eq!(got["name"], "initial");

    // A missing key starts from {}; a failing op is skipped, the rest apply.
    let out = trigger(
        &iii,
        "state::update",
        json!({"scope": "u", "key": "fresh", "ops": [
            {"type": "append", "path": "items", "value": {"kind": "chunk"}},
            {"type": "increment", "path": "items", "by": 1},
            {"type": "append", "path": "text", "value": "hello"},
            {"type": "append", "path": "text", "value": " world"},
            {"type": "merge", "path": ["a", "b"], "value": {"__proto__": 1}},
        ]}),
    )
    .await;
    assert_eq!(out["old_value"], Value::Null);
    assert_eq!(
        out["new_value"],
        json!({"items": [{"kind": "chunk"}], "text": "hello world"})
    );
    let errors = out["errors"].as_array().expect("errors");
    let codes: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["op_index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (1, "increment.not_number"),
            (4, "merge.value.prototype_key")
        ]
    );
    assert!(
        errors
            .iter()
            .all(|e| e["message"].is_string() && e["doc_url"].is_string())
    );
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_iiis_codes_never_a_crash() {
    let mut config = test_config();
    config.state.max_value_bytes = 1024;
    config.state.max_update_ops = 10;
    let engine = TestEngine::start_with(config).await;
    let iii = sdk_worker(&engine.url, "state-limits");
    let code = async |f: &str, input: Value| {
        remote_code(&call(&iii, f, input).await.expect_err(f)).to_owned()
    };
    let big = "x".repeat(2000);
    assert_eq!(
        code(
            "state::set",
            json!({"scope": "s", "key": "k", "value": big})
        )
        .await,
        "VALUE_TOO_LARGE"
    );
    assert_eq!(
        code(
            "state::set",
            json!({"scope": "s\u{0}", "key": "k", "value": 1})
        )
        .await,
        "SET_ERROR"
    );
    assert_eq!(
        code("state::set", json!({"scope": "", "key": "k", "value": 1})).await,
        "SET_ERROR"
    );
    assert_eq!(
        code("state::get", json!({"scope": "s", "key": "k".repeat(600)})).await,
        "GET_ERROR"
    );
    assert_eq!(
        code("state::set", json!({"scope": "s"})).await,
        "deserialization_error"
    );
    assert_eq!(
        code("state::list", json!({})).await,
        "deserialization_error"
    );
    let many: Vec<Value> = (0..11)
        .map(|_| json!({"type": "remove", "path": "x"}))
        .collect();
    assert_eq!(
        code(
            "state::update",
            json!({"scope": "s", "key": "k", "ops": many})
        )
        .await,
        "UPDATE_ERROR"
    );
    // Growing a value past the limit through update is refused too, and writes nothing.
    trigger(
        &iii,
        "state::set",
        json!({"scope": "s", "key": "k", "value": "seed"}),
    )
    .await;
    let grow =
        json!({"scope": "s", "key": "k", "ops": [{"type": "set", "path": "", "value": big}]});
    assert_eq!(code("state::update", grow).await, "VALUE_TOO_LARGE");
    assert_eq!(
        trigger(&iii, "state::get", json!({"scope": "s", "key": "k"})).await,
        "seed"
    );
    // Deep values: the wire's own nesting bound, then the engine still answers.
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let deep_merge =
        json!({"scope": "s", "key": "m", "ops": [{"type": "merge", "value": {"d": deep}}]});
    let out = trigger(&iii, "state::update", deep_merge).await;
    assert_eq!(out["errors"][0]["code"], "merge.value.too_deep");
    assert_eq!(
        trigger(&iii, "state::get", json!({"scope": "s", "key": "k"})).await,
        "seed"
    );
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_trigger_reports_every_change_through_its_filters() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "state-trigger");
    let (tx, mut events) = mpsc::unbounded_channel();
    let handler = iii.register_function("test::state::rs::changed", recording(tx, |_| json!({})));
    // Skips every event on key `skipped`: only an exact `false` skips.
    iii.register_function(
        "test::state::rs::cond",
        RegisterFunction::new_async(|e: Value| async move {
            Ok::<_, iii_sdk::Error>(json!(e["key"] != "skipped"))
        }),
    );
    let trigger_ref = iii
        .register_trigger(RegisterTriggerInput::new(
            "state",
            handler.id.clone(),
            json!({"scope": SCOPE, "condition_function_id": "test::state::rs::cond"}),
        ))
        .expect("register state trigger");

    // Written until the binding is live (the crate's test polls the same way).
    let first = loop {
        trigger(
            &iii,
            "state::set",
            json!({"scope": SCOPE, "key": "warmup", "value": 0}),
        )
        .await;
        if let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), events.recv()).await
        {
            break e;
        }
    };
    assert_eq!(first["type"], "state");
    trigger(
        &iii,
        "state::delete",
        json!({"scope": SCOPE, "key": "warmup"}),
    )
    .await;
    // Drain what the warm-up left (one event per write after the binding went live).
    let deleted = loop {
        let e = recv(&mut events, "the warm-up's delete").await;
        if e["event_type"] == "state:deleted" {
            break e;
        }
    };
    assert_eq!(deleted["old_value"], 0);
    assert_eq!(deleted["new_value"], Value::Null);

    trigger(
        &iii,
        "state::set",
        json!({"scope": "elsewhere", "key": "k", "value": 1}),
    )
    .await;
    trigger(
        &iii,
        "state::set",
        json!({"scope": SCOPE, "key": "skipped", "value": 1}),
    )
    .await;
    trigger(
        &iii,
        "state::set",
        json!({"scope": SCOPE, "key": "k", "value": {"v": 1}}),
    )
    .await;
    let created = recv(&mut events, "state:created").await;
    assert_eq!(
        created,
        json!({"type": "state", "event_type": "state:created", "scope": SCOPE, "key": "k",
               "old_value": null, "new_value": {"v": 1}}),
        "other scopes and condition-skipped keys are not reported"
    );
    trigger(
        &iii,
        "state::update",
        json!({"scope": SCOPE, "key": "k", "ops": [{"type": "increment", "path": "v", "by": 1}]}),
    )
    .await;
    let updated = recv(&mut events, "state:updated").await;
    assert_eq!(updated["event_type"], "state:updated");
    assert_eq!(updated["new_value"], json!({"v": 2}));
    trigger(
        &iii,
        "state::delete",
        json!({"scope": SCOPE, "key": "never-there"}),
    )
    .await;
    let gone = recv(&mut events, "state:deleted of a missing key").await;
    assert_eq!(gone["event_type"], "state:deleted");
    assert_eq!(gone["key"], "never-there");

    trigger_ref.unregister();
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trigger_config_is_refused() {
    let engine = TestEngine::start().await;
    let mut raw = RawClient::connect(&engine.url).await;
    raw.register_function("f").await;
    raw.send(
        json!({"type": "registertrigger", "id": "t1", "trigger_type": "state",
        "function_id": "f", "config": {"scope": 5}}),
    )
    .await;
    let res = raw
        .recv_until("triggerregistrationresult", |v| {
            v["type"] == "triggerregistrationresult"
        })
        .await;
    assert_eq!(res["error"]["code"], "trigger_registration_failed");
    assert!(
        res["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to parse trigger config"),
        "{res}"
    );
    engine.stop().await;
}

/// Acknowledged durable writes are on disk: kill -9 right after the
/// acknowledgements, restart on the same store, read them all back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let mut raw = RawClient::connect(&engine.url).await;
    const N: usize = 200;
    let mut ids = Vec::new();
    for i in 0..N {
        let value = json!({"i": i});
        ids.push(
            raw.send_call(
                "state::set",
                json!({"scope": "crash", "key": format!("k{i:03}"), "value": value}),
            )
            .await,
        );
    }
    raw.send_call(
        "state::update",
        json!({"scope": "crash", "key": "k000",
        "ops": [{"type": "set", "path": "updated", "value": true}]}),
    )
    .await;
    let mut acked = 0;
    while acked < N + 1 {
        let v = raw
            .recv_until("a result", |v| v["type"] == "invocationresult")
            .await;
        assert!(v.get("error").is_none_or(Value::is_null), "{v}");
        acked += 1;
    }
    engine.kill();
    drop(raw);

    let engine = EngineProcess::start_in(dir.path());
    let mut raw = RawClient::connect(&engine.url).await;
    let listed = raw.call("state::list", json!({"scope": "crash"})).await;
    let listed = listed["result"].as_array().expect("list").clone();
    assert_eq!(listed.len(), N, "every acknowledged set is back");
    assert_eq!(
        listed[0],
        json!({"i": 0, "updated": true}),
        "and the update"
    );
    assert_eq!(listed[N - 1], json!({"i": N - 1}));
}
