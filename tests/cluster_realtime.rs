//! Realtime client functions across the engines of a cluster (3-node NATS):
//! a worker on engine A acts on a browser-style client connected to engine B
//! (`channel::send`, `send_many`, `get`, `set_state`, `close`) as if it were
//! A's own, and an id no engine holds is `not found` as on one engine.

mod common;

use common::nats::NatsCluster;
use common::realtime::{self as rt, recv};
use common::{TestEngine, test_config};
use qmesh::client::{Client, ClientError, ClientOptions};
use qmesh::config::{Config, Role, TokenConfig};
use serde_json::{Value, json};

const CHAT: &str = "chat-secret";
const STRANGER: &str = "stranger-secret";

/// Two worker principals, neither an operator: the chat application's and
/// a stranger's.
fn with_tokens(nats: &NatsCluster, engine_id: &str) -> Config {
    let mut c = nats.engine_config(test_config(), engine_id);
    c.auth.tokens = [("chat", CHAT), ("stranger", STRANGER)]
        .into_iter()
        .map(|(name, secret)| TokenConfig {
            name: name.to_owned(),
            role: Role::Worker,
            sha256: qmesh::token_sha256(secret),
        })
        .collect();
    c
}

async fn worker_with(url: &str, secret: &str) -> Client {
    let options = ClientOptions {
        token: Some(secret.to_owned()),
        ..ClientOptions::default()
    };
    let w = Client::connect_with(url, options).await.expect("connects");
    w.announce("realtime-test").unwrap();
    w
}

/// The error code of a call that must fail.
async fn refusal(w: &Client, function_id: &str, data: Value) -> String {
    match w.call(function_id, data).await {
        Err(ClientError::Remote { code, .. }) => code,
        other => panic!("{function_id}: expected a refusal, got {other:?}"),
    }
}

/// A worker on `holder` serving a `/ws/chat` route that greets each client
/// with `{hi: true}`, once every engine of `others` knows its function.
async fn greeting_route(holder: &TestEngine, others: &[&TestEngine]) -> Client {
    let worker = rt::worker(&holder.url).await;
    rt::serve(&worker, "chat::hello", |_| async {
        Ok(json!({"hi": true}))
    })
    .await;
    rt::bind(
        &worker,
        "chat::hello",
        json!({"route": "/ws/chat", "on": "connect"}),
    )
    .await;
    for engine in others {
        engine.wait_for_providers("chat::hello", 1).await;
    }
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_one_engine_acts_on_a_client_of_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let b = TestEngine::start_with(nats.engine_config(test_config(), "b")).await;

    // B's route greets each client; A learns of B from B's function.
    let on_b = greeting_route(&b, &[&a]).await;

    let mut ws = rt::open(&b.realtime_url(), "/ws/chat").await;
    assert_eq!(recv(&mut ws).await, json!({"hi": true}));
    let ids = rt::open_channels(&on_b, Some("/ws/chat")).await;
    assert_eq!(ids.len(), 1, "one client on B");
    let id = ids[0].clone();

    let on_a = rt::worker(&a.url).await;
    assert!(
        rt::open_channels(&on_a, None).await.is_empty(),
        "channel::list stays per engine"
    );
    let sent = on_a
        .call("channel::send", json!({"channel_id": id, "data": {"n": 1}}))
        .await
        .unwrap();
    assert_eq!(sent, json!({"delivered": true}));
    assert_eq!(recv(&mut ws).await, json!({"n": 1}));

    let many = on_a
        .call(
            "channel::send_many",
            json!({"channel_ids": [id, "nobody"], "data": {"n": 2}}),
        )
        .await
        .unwrap();
    assert_eq!(
        many,
        json!({"delivered": 1, "missing": ["nobody"], "dropped": []})
    );
    assert_eq!(recv(&mut ws).await, json!({"n": 2}));

    let state = on_a
        .call(
            "channel::set_state",
            json!({"channel_id": id, "state": {"room": "lobby"}}),
        )
        .await
        .unwrap();
    assert_eq!(state, json!({"state": {"room": "lobby"}}));
    let got = on_a
        .call("channel::get", json!({"channel_id": id}))
        .await
        .unwrap();
    assert_eq!(got["channel_id"], json!(id));
    assert_eq!(got["route"], json!("/ws/chat"));
    assert_eq!(got["state"], json!({"room": "lobby"}));

    // Unknown everywhere: the same code as on the engine itself.
    let unknown = json!({"channel_id": "nobody", "data": {}});
    let here = refusal(&on_b, "channel::send", unknown.clone()).await;
    let across = refusal(&on_a, "channel::send", unknown).await;
    assert_eq!(here, "CHANNEL_NOT_FOUND");
    assert_eq!(across, here);
    // An error from the engine holding the client comes back unchanged.
    let bad_state = refusal(
        &on_a,
        "channel::set_state",
        json!({"channel_id": id, "state": 1, "merge": true}),
    )
    .await;
    assert_eq!(bad_state, "INVALID_ARGUMENTS");

    let closed = on_a
        .call(
            "channel::close",
            json!({"channel_id": id, "code": 4001, "reason": "bye"}),
        )
        .await
        .unwrap();
    assert_eq!(closed, json!({"closed": true}));
    assert_eq!(rt::close_code(&mut ws).await, 4001);
}

/// The engine holding the client checks the rights the caller's engine
/// vouches for, as for its own workers: a worker serving one of the route's
/// handlers may act on its clients from another engine, a stranger may not.
/// (One function id cannot be served on both engines by one principal with
/// tokens on: the other engine's peer owns it there. Hence a handler served
/// on A, bound on B.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_engines_caller_needs_the_same_rights_as_a_local_one() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(with_tokens(&nats, "a")).await;
    let b = TestEngine::start_with(with_tokens(&nats, "b")).await;

    let chat_b = worker_with(&b.url, CHAT).await;
    rt::serve(&chat_b, "chat::hello", |_| async {
        Ok(json!({"hi": true}))
    })
    .await;
    rt::bind(
        &chat_b,
        "chat::hello",
        json!({"route": "/ws/chat", "on": "connect"}),
    )
    .await;
    a.wait_for_providers("chat::hello", 1).await;
    let mut ws = rt::open(&b.realtime_url(), "/ws/chat").await;
    assert_eq!(recv(&mut ws).await, json!({"hi": true}));
    let id = rt::open_channels(&chat_b, Some("/ws/chat")).await[0].clone();

    let stranger_a = worker_with(&a.url, STRANGER).await;
    let send = json!({"channel_id": id, "data": {"n": 1}});
    assert_eq!(
        refusal(&stranger_a, "channel::send", send.clone()).await,
        "FORBIDDEN"
    );

    // A worker on A serving one of the route's handlers (bound on B to a
    // function served on A) acts on the route's clients.
    let chat_a = worker_with(&a.url, CHAT).await;
    rt::serve(&chat_a, "chat::said", |_| async { Ok(Value::Null) }).await;
    b.wait_for_providers("chat::said", 1).await;
    rt::bind(
        &chat_b,
        "chat::said",
        json!({"route": "/ws/chat", "on": "message"}),
    )
    .await;
    let sent = chat_a.call("channel::send", send).await.unwrap();
    assert_eq!(sent, json!({"delivered": true}));
    assert_eq!(recv(&mut ws).await, json!({"n": 1}));
}

/// With three engines, the first action on a client of B asks every other
/// engine; the next ones ask only B, which the first answer named; once
/// the client is gone, B says so and every engine is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_on_a_known_client_ask_only_its_engine() {
    use futures_util::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let b = TestEngine::start_with(nats.engine_config(test_config(), "b")).await;
    let c = TestEngine::start_with(nats.engine_config(test_config(), "c")).await;

    // Every request NATS carries to C's realtime subject.
    let observer = async_nats::connect(nats.urls[0].as_str()).await.unwrap();
    let mut to_c = observer
        .subscribe("qmesh.test.engine.c.realtime")
        .await
        .unwrap();
    observer.flush().await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while to_c.next().await.is_some() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });

    let on_b = greeting_route(&b, &[&a, &c]).await;
    let mut ws = rt::open(&b.realtime_url(), "/ws/chat").await;
    assert_eq!(recv(&mut ws).await, json!({"hi": true}));
    let id = rt::open_channels(&on_b, Some("/ws/chat")).await[0].clone();

    let on_a = rt::worker(&a.url).await;
    let asked_c = || seen.load(Ordering::SeqCst);
    for n in 0..5 {
        let sent = on_a
            .call("channel::send", json!({"channel_id": id, "data": {"n": n}}))
            .await
            .unwrap();
        assert_eq!(sent, json!({"delivered": true}));
        assert_eq!(recv(&mut ws).await, json!({"n": n}));
    }

    drop(ws);
    common::wait_until("B forgets the closed client", common::WAIT, async || {
        rt::open_channels(&on_b, None).await.is_empty()
    })
    .await;
    let gone = refusal(
        &on_a,
        "channel::send",
        json!({"channel_id": id, "data": {}}),
    )
    .await;
    assert_eq!(gone, "CHANNEL_NOT_FOUND");
    // That last lookup asked C: once the observer has it, it has every
    // earlier request too (NATS keeps one connection's messages in order),
    // and there was one, the first send's.
    common::wait_until("the last lookup reaches C", common::WAIT, async || {
        asked_c() >= 2
    })
    .await;
    assert_eq!(
        asked_c(),
        2,
        "only the first send and the last lookup asked C"
    );
}
