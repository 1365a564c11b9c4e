//! Who may connect and what they may do, each attack of the security issue
//! replayed against a real engine and expected refused with its code:
//! tokens on the worker listener, the operator role, ownership of function
//! ids, bindings and realtime clients, and an RBAC listener's refusals.
//! (iii's own RBAC suite, `rbac_workers`, runs in `tests/iii_sdk_suite.rs`.)

mod common;

use common::programs::Program;
use common::realtime::{bind, open, recv, serve};
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use futures_util::StreamExt;
use qmesh::client::{Client, ClientOptions};
use qmesh::config::{Config, ListenerConfig, Role, TokenConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const OPS: &str = "ops-secret";
const BILLING: &str = "billing-secret";
const MALLORY: &str = "mallory-secret";

fn token(name: &str, secret: &str, role: Role) -> TokenConfig {
    TokenConfig {
        name: name.to_owned(),
        role,
        sha256: qmesh::token_sha256(secret),
    }
}

/// Three principals: an operator, and two workers that are strangers.
fn with_tokens() -> Config {
    let mut c = test_config();
    c.auth.tokens = vec![
        token("ops", OPS, Role::Operator),
        token("billing", BILLING, Role::Worker),
        token("mallory", MALLORY, Role::Worker),
    ];
    c
}

async fn client(url: &str, secret: &str) -> Client {
    let options = ClientOptions {
        token: Some(secret.to_owned()),
        ..ClientOptions::default()
    };
    Client::connect_with(url, options).await.expect("connects")
}

fn code(result: &Value) -> &str {
    result["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn workers_without_a_valid_token_are_refused_before_the_upgrade() {
    let engine = TestEngine::start_with(with_tokens()).await;
    for path in ["", "/otel"] {
        let url = format!("{}{path}", engine.url);
        let none = tokio_tungstenite::connect_async(url.as_str()).await;
        assert!(
            matches!(&none, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
            "{path}: no token must get 401, got {none:?}"
        );
        let wrong = RawClient::open_with_token(&url, "guess").await;
        assert_eq!(wrong.err(), Some(401), "{path}: a wrong token gets 401");
    }
    let mut ok = RawClient::connect_with_token(&engine.url, BILLING).await;
    let r = ok.call("engine::functions::list", json!({})).await;
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(
        engine.worker_count().await,
        1,
        "refused sockets never joined"
    );
}

#[tokio::test]
async fn a_worker_role_cannot_run_operator_functions() {
    let engine = TestEngine::start_with(with_tokens()).await;
    let mut worker = RawClient::connect_with_token(&engine.url, BILLING).await;
    for (f, data) in [
        ("queue::peek", json!({"queue": "default"})),
        ("queue::get", json!({"queue": "default", "receipt": "x"})),
        ("queue::pause", json!({"queue": "default"})),
        ("queue::purge", json!({"queue": "default"})),
        ("engine::queue::dlq_messages", json!({"queue": "default"})),
        ("iii::queue::redrive", json!({"queue": "default"})),
    ] {
        let r = worker.call(f, data).await;
        assert_eq!(code(&r), "FORBIDDEN", "{f}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("operator role"),
            "{r}"
        );
    }
    // What a worker does every day stays open to it.
    let r = worker.call("queue::list", json!({})).await;
    assert!(r["error"].is_null(), "{r}");

    let mut ops = RawClient::connect_with_token(&engine.url, OPS).await;
    let r = ops.call("queue::pause", json!({"queue": "default"})).await;
    assert!(r["error"].is_null(), "an operator may: {r}");
}

#[tokio::test]
async fn a_stranger_cannot_join_a_function_another_principal_serves() {
    let engine = TestEngine::start_with(with_tokens()).await;
    let mut real = RawClient::connect_with_token(&engine.url, BILLING).await;
    real.announce("billing").await;
    real.register_function("billing::charge").await;
    engine.wait_for_providers("billing::charge", 1).await;

    let mut mallory = RawClient::connect_with_token(&engine.url, MALLORY).await;
    mallory.announce("mallory").await;
    mallory.register_function("billing::charge").await;
    let rejected = mallory
        .recv_until("registrationrejected", |v| {
            v["type"] == "registrationrejected"
        })
        .await;
    assert_eq!(rejected["function_id"], "billing::charge");
    assert_eq!(engine.providers("billing::charge").len(), 1);

    // A second worker of the same principal shares the load, as before.
    let mut replica = RawClient::connect_with_token(&engine.url, BILLING).await;
    replica.announce("billing").await;
    replica.register_function("billing::charge").await;
    engine.wait_for_providers("billing::charge", 2).await;

    // Every call reaches billing's workers, none reaches mallory.
    let mut ops = RawClient::connect_with_token(&engine.url, OPS).await;
    for _ in 0..4 {
        ops.send_call("billing::charge", json!({"amount": 1})).await;
    }
    mallory
        .assert_not_invoked_for(std::time::Duration::from_millis(300), "mallory")
        .await;
}

#[tokio::test]
async fn a_stranger_cannot_remove_or_replace_someone_elses_trigger() {
    let engine = TestEngine::start_with(with_tokens()).await;
    let mut owner = RawClient::connect_with_token(&engine.url, BILLING).await;
    owner.announce("billing").await;
    owner.register_function("billing::on_paid").await;
    owner
        .send(
            json!({"type":"registertrigger","id":"paid-sub","trigger_type":"subscribe",
            "function_id":"billing::on_paid","config":{"topic":"paid"}}),
        )
        .await;
    wait_until("the binding", WAIT, async || {
        engine.bound_function("paid-sub").is_some()
    })
    .await;

    let mut mallory = RawClient::connect_with_token(&engine.url, MALLORY).await;
    let r = mallory
        .call("engine::unregister_trigger", json!({"id": "paid-sub"}))
        .await;
    assert_eq!(code(&r), "FORBIDDEN", "{r}");

    mallory.register_function("mallory::steal").await;
    mallory
        .send(
            json!({"type":"registertrigger","id":"paid-sub","trigger_type":"subscribe",
            "function_id":"mallory::steal","config":{"topic":"paid"}}),
        )
        .await;
    let refused = mallory
        .recv_until("triggerregistrationresult", |v| {
            v["type"] == "triggerregistrationresult"
        })
        .await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    assert_eq!(
        engine.bound_function("paid-sub").as_deref(),
        Some("billing::on_paid"),
        "the binding is still the owner's"
    );

    // Its owner may remove it.
    let r = owner
        .call("engine::unregister_trigger", json!({"id": "paid-sub"}))
        .await;
    assert_eq!(r["result"]["removed"], true, "{r}");
}

#[tokio::test]
async fn realtime_clients_are_reachable_only_by_the_workers_serving_their_route() {
    let engine = TestEngine::start_with(with_tokens()).await;
    let app = client(&engine.url, BILLING).await;
    app.announce("chat").unwrap();
    serve(&app, "chat::hello", |_| async { Ok(json!({"hi": true})) }).await;
    bind(
        &app,
        "chat::hello",
        json!({"route": "/ws/chat", "on": "connect"}),
    )
    .await;
    // Browsers reach routes on their own listener, never on the worker port.
    assert_eq!(
        common::realtime::refused(&engine.url, "/ws/chat", None).await,
        404,
        "realtime routes are not served on the worker listener"
    );
    let mut browser = open(&engine.realtime_url(), "/ws/chat").await;
    assert_eq!(recv(&mut browser).await, json!({"hi": true}));
    let listed = app.call("channel::list", json!({})).await.unwrap();
    let channel_id = listed["channels"][0]["channel_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mallory = client(&engine.url, MALLORY).await;
    let listed = mallory.call("channel::list", json!({})).await.unwrap();
    assert_eq!(
        listed["channels"],
        json!([]),
        "other routes' clients are not listed"
    );
    for (f, data) in [
        (
            "channel::send",
            json!({"channel_id": channel_id, "data": {"phish": 1}}),
        ),
        ("channel::get", json!({"channel_id": channel_id})),
        ("channel::close", json!({"channel_id": channel_id})),
        (
            "channel::issue_ticket",
            json!({"route": "/ws/chat", "context": {"role": "superuser"}}),
        ),
    ] {
        let err = mallory.call(f, data).await.unwrap_err();
        assert!(err.to_string().contains("FORBIDDEN"), "{f}: {err}");
    }
    let sent = mallory
        .call(
            "channel::send_many",
            json!({"channel_ids": [channel_id], "data": {"phish": 2}}),
        )
        .await
        .unwrap();
    assert_eq!(sent["delivered"], 0, "{sent}");

    // The route's own worker reaches its client.
    app.call(
        "channel::send",
        json!({"channel_id": channel_id, "data": {"ok": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(
        recv(&mut browser).await,
        json!({"ok": 1}),
        "nothing from mallory came first"
    );
}

/// An RBAC listener whose auth function (served on the main listener)
/// grants `demo::allowed` to the token `good` and refuses anything else.
async fn rbac_engine() -> (TestEngine, Client) {
    let mut config = test_config();
    config.listeners.push(ListenerConfig {
        name: "untrusted".to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        middleware_function_id: None,
        tls: None,
        rbac: Some(
            toml::from_str(
                r#"auth_function_id = "demo::auth"
                   expose_functions = ['match("demo::public::*")', 'match("engine::functions::list")']"#,
            )
            .unwrap(),
        ),
    });
    let engine = TestEngine::start_with(config).await;
    let server = Client::connect(&engine.url).await.unwrap();
    server.announce("demo-server").unwrap();
    for id in ["demo::allowed", "demo::private", "demo::public::echo"] {
        serve(&server, id, |v| async move { Ok(json!({"echoed": v})) }).await;
    }
    serve(&server, "demo::auth", |input| async move {
        match input["headers"]["x-token"].as_str() {
            Some("good") => Ok(json!({
                "allowed_functions": ["demo::allowed"],
                "forbidden_functions": ["demo::public::echo"],
                "context": {"user": "u1"},
            })),
            _ => Err(qmesh::client::ErrorBody::new("DENIED", "bad token")),
        }
    })
    .await;
    (engine, server)
}

#[tokio::test]
async fn an_rbac_listener_refuses_a_failed_auth_with_auth_error_then_1008() {
    let (engine, _server) = rbac_engine().await;
    let url = engine.listener_url("untrusted");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("iii accepts the upgrade first");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = first else {
        panic!("expected the error frame, got {first:?}");
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["code"], "AUTH_ERROR", "{v}");
    let close = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close, got {close:?}");
    };
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(engine.worker_count().await, 1, "only the server joined");
}

#[tokio::test]
async fn an_rbac_session_calls_only_what_its_grant_allows() {
    let (engine, _server) = rbac_engine().await;
    let url = engine.listener_url("untrusted");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert("x-token", "good".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut session = RawClient::from_socket(ws).await;

    let r = session.call("demo::allowed", json!({"a": 1})).await;
    assert_eq!(r["result"]["echoed"]["a"], 1, "{r}");
    for (f, remedy) in [
        ("demo::private", "rbac.expose_functions"),
        ("demo::nonexistent", "rbac.expose_functions"),
        ("demo::public::echo", "rbac.forbidden_functions"),
        ("queue::purge", "rbac.expose_functions"),
    ] {
        let r = session.call(f, json!({})).await;
        assert_eq!(code(&r), "FORBIDDEN", "{f}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(f) && msg.contains(remedy), "{f}: {msg}");
    }
    // Its listing shows only what it may call.
    let r = session.call("engine::functions::list", json!({})).await;
    let ids: Vec<&str> = r["result"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["demo::allowed"], "{r}");
}

#[tokio::test]
async fn the_python_and_node_sdks_connect_with_a_token() {
    let engine = TestEngine::start_with(with_tokens()).await;
    let mut ops = RawClient::connect_with_token(&engine.url, OPS).await;
    for (lang, script, function) in [
        ("python", "worker.py", "py::add"),
        ("node", "worker.mjs", "node::add"),
    ] {
        let mut sdk =
            Program::start_with_env(lang, script, &[], &engine.url, &[("III_TOKEN", BILLING)]);
        sdk.ready().await;
        engine.wait_for_providers(function, 1).await;
        let r = ops.call(function, json!({"a": 2, "b": 3})).await;
        assert_eq!(r["result"]["sum"], 5, "{lang}: {r}");
    }
}

/// Opens a worker socket offering `secret` as the browser dashboard does
/// (`Sec-WebSocket-Protocol: qmesh, qmesh.bearer.<base64url>`): the socket
/// and the subprotocol the engine chose, or the HTTP status of a refusal.
async fn open_offering_token(url: &str, secret: &str) -> Result<(RawClient, Option<String>), u16> {
    use base64::Engine as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let mut req = url.into_client_request().unwrap();
    let offered = format!("qmesh, qmesh.bearer.{encoded}");
    req.headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let chosen = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((RawClient::from_socket(ws).await, chosen))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test]
async fn a_token_offered_as_a_subprotocol_admits_like_a_bearer_header() {
    let engine = TestEngine::start_with(with_tokens()).await;
    let (mut ops, chosen) = open_offering_token(&engine.url, OPS)
        .await
        .expect("admitted");
    assert_eq!(
        chosen.as_deref(),
        Some("qmesh"),
        "the engine answers the plain subprotocol, never the one holding the token"
    );
    let r = ops.call("queue::pause", json!({"queue": "emails"})).await;
    assert!(r["error"].is_null(), "an operator token works so: {r}");

    let (mut billing, _) = open_offering_token(&engine.url, BILLING)
        .await
        .expect("a worker token is admitted");
    for (f, data) in [
        ("queue::peek", json!({"queue": "emails"})),
        ("queue::purge", json!({"queue": "emails"})),
    ] {
        let r = billing.call(f, data).await;
        assert_eq!(code(&r), "FORBIDDEN", "{f} stays operator-only: {r}");
    }
    assert_eq!(
        open_offering_token(&engine.url, "guess").await.err(),
        Some(401),
        "a wrong token offered so gets 401"
    );
}
