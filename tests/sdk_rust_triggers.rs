//! The published Rust SDK's trigger APIs against a real engine, in process:
//! a worker-provided trigger type's whole life (through a provider restart)
//! and the `engine::*` functions' response shapes.
//!
//! Every SDK client runs its own connection thread; each test shuts its
//! clients down before it stops the engine. Waits are on conditions
//! ([`wait_until`]) and handler reports ([`recv`]); nothing sleeps.

// The trigger APIs are deprecated in 0.25 in favour of observe (which this
// engine does not advertise); they keep working and are what we test.
#![allow(deprecated)]

mod common;

use common::sdk::{DEADLINE, call, recording, recv, remote_code, sdk_worker, stop};
use common::{TestEngine, WAIT, wait_until};
use iii_sdk::protocol::RegisterTriggerInput;
use iii_sdk::trigger::{TriggerConfig, TriggerHandler};
use iii_sdk::{Error as SdkError, IIIClient, RegisterFunction, RegisterTriggerType};
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;
use tokio::sync::mpsc;
use uuid::Uuid;

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
