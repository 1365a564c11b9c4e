//! The published Node (npm iii-sdk 0.22.1) and Python (PyPI iii-sdk 0.25.0)
//! SDKs against a real engine: calls across languages, errors, and each SDK's
//! trigger-type API. The programs live in `tests/node` and `tests/python`.

mod common;

use common::programs::Program;
use common::{TestEngine, WAIT, wait_until};
use serde_json::json;

/// Waits until every function of `ids` has a worker.
async fn registered(engine: &TestEngine, ids: &[&str]) {
    wait_until(&format!("{ids:?} registered"), WAIT, async || {
        ids.iter().all(|id| !engine.providers(id).is_empty())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_calls_a_python_function_and_back() {
    let engine = TestEngine::start().await;
    let mut py = Program::start("python", "worker.py", &[], &engine.url);
    py.ready().await;
    let mut node = Program::start("node", "worker.mjs", &[], &engine.url);
    node.ready().await;
    registered(&engine, &["py::add", "node::relay"]).await;

    // Python caller → engine → Node relay → engine → Python add → back the same way.
    let mut call = Program::start(
        "python",
        "call.py",
        &["node::relay", r#"{"a":2,"b":40}"#],
        &engine.url,
    );
    let out = call
        .expect_json("relay result", |v| v.get("via").is_some())
        .await;
    assert_eq!(out, json!({"via": "node", "result": {"sum": 42}}));
    assert_eq!(call.finish().await.0, 0);

    // And a Node caller straight to Python.
    let mut call = Program::start(
        "node",
        "call.mjs",
        &["py::add", r#"{"a":1,"b":1}"#],
        &engine.url,
    );
    assert_eq!(
        call.expect_json("sum", |v| v.get("sum").is_some()).await,
        json!({"sum": 2})
    );
    assert_eq!(call.finish().await.0, 0);

    assert_eq!(py.finish().await.0, 0);
    assert_eq!(node.finish().await.0, 0);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_cross_languages_with_their_code() {
    let engine = TestEngine::start().await;
    let mut py = Program::start("python", "worker.py", &[], &engine.url);
    py.ready().await;
    let mut node = Program::start("node", "worker.mjs", &[], &engine.url);
    node.ready().await;
    registered(&engine, &["py::fail", "node::fail"]).await;

    let mut call = Program::start("node", "call.mjs", &["py::fail", "{}"], &engine.url);
    let err = call.expect_json("error", |v| v.get("code").is_some()).await;
    assert_eq!(err["code"], "invocation_failed", "{err}");
    assert!(
        err["message"].as_str().unwrap_or_default().contains("boom"),
        "{err}"
    );
    assert_eq!(call.finish().await.0, 3);

    let mut call = Program::start("python", "call.py", &["node::fail", "{}"], &engine.url);
    let err = call.expect_json("error", |v| v.get("code").is_some()).await;
    assert_eq!(err["code"], "invocation_failed", "{err}");
    assert_eq!(call.finish().await.0, 3);

    let mut call = Program::start("python", "call.py", &["nobody::home", "{}"], &engine.url);
    let err = call.expect_json("error", |v| v.get("code").is_some()).await;
    assert_eq!(err["code"], "function_not_found", "{err}");
    assert_eq!(call.finish().await.0, 3);

    py.finish().await;
    node.finish().await;
    engine.stop().await;
}

/// Provider in `provider_lang`, binder in `binder_lang`: bind, fire, unbind.
async fn trigger_type_lifecycle(provider_lang: &str, binder_lang: &str) {
    let engine = TestEngine::start().await;
    let (script, ty) = match provider_lang {
        "node" => ("trigger_provider.mjs", "node-ticker"),
        _ => ("trigger_provider.py", "py-ticker"),
    };
    let mut provider = Program::start(provider_lang, script, &[], &engine.url);
    provider.ready().await;
    wait_until("the trigger type", WAIT, async || {
        engine.trigger_type_ids().iter().any(|id| id == ty)
    })
    .await;

    let binder_script = if binder_lang == "node" {
        "trigger_binder.mjs"
    } else {
        "trigger_binder.py"
    };
    let mut binder = Program::start(binder_lang, binder_script, &[ty], &engine.url);
    let bound = provider
        .expect_json("bound", |v| v["event"] == "bound")
        .await;
    assert_eq!(bound["config"], json!({"every": "1s"}));
    assert!(
        bound["function_id"]
            .as_str()
            .unwrap()
            .ends_with("::on_tick"),
        "{bound}"
    );
    let tick = binder.expect_json("tick", |v| v["event"] == "tick").await;
    assert_eq!(tick["data"]["tick"], 1);
    let fired = provider
        .expect_json("fired", |v| v["event"] == "fired")
        .await;
    assert_eq!(fired["result"], json!({"ok": true}));
    let unbound = provider
        .expect_json("unbound", |v| v["event"] == "unbound")
        .await;
    assert_eq!(unbound["id"], bound["id"]);
    assert_eq!(binder.finish().await.0, 0);
    provider.finish().await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_trigger_type_api() {
    trigger_type_lifecycle("node", "node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_trigger_type_api() {
    trigger_type_lifecycle("python", "python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_types_work_across_languages() {
    trigger_type_lifecycle("node", "python").await;
    trigger_type_lifecycle("python", "node").await;
}

/// A queued job's handler, written with each SDK, receives its job in the
/// metadata (`{job: {receipt, queue, attempt, max_attempts}}`) and can beat
/// for it with `queue::heartbeat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_handlers_receive_their_job_and_heartbeat_with_it() {
    let engine = TestEngine::start().await;
    let mut producer = common::RawClient::worker(&engine.url, "producer").await;
    for (lang, script, function) in [
        ("node", "job_context.mjs", "node::job"),
        ("python", "job_context.py", "py::job"),
    ] {
        let mut sdk = Program::start(lang, script, &[], &engine.url);
        sdk.ready().await;
        registered(&engine, &[function]).await;
        let r = producer
            .call(
                "queue::enqueue",
                json!({"queue": "ctx", "function_id": function, "data": {"n": 1}}),
            )
            .await;
        let receipt = r["result"]["receipt"].as_str().expect("receipt").to_owned();
        let seen = sdk
            .expect_json("the handler's report", |v| v["event"] == "job")
            .await;
        let job = &seen["metadata"]["job"];
        assert_eq!(job["receipt"], receipt.as_str(), "{lang}: {seen}");
        assert_eq!(job["queue"], "ctx", "{lang}: {seen}");
        assert_eq!(job["attempt"], 1, "{lang}: {seen}");
        assert_eq!(
            seen["beat"]["attempt"], 1,
            "{lang}: the heartbeat was taken: {seen}"
        );
    }
}
