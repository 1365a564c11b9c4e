//! The streams client socket (`[streams] listen`, iii's port 3112, path
//! `/`) and custom stream providers, against a real engine: raw WebSocket
//! clients join, get `sync` and every matching event, leave; `stream:join`
//! and `stream:leave` handlers and the auth function in a Node SDK worker;
//! a slow client closed without holding up a fast one; providers written
//! with the Python SDK's `create_stream` helper and by hand in Node.

// The trigger APIs are deprecated in 0.25 in favour of observe (which this
// engine does not advertise); they keep working and are what we test.
#![allow(deprecated)]

mod common;

use common::programs::Program;
use common::realtime::{Ws, close_code, open, recv, refused, send};
use common::sdk::{call, remote_code, sdk_worker, stop};
use common::streams::{envelope, item, join, with_data};
use common::{TestEngine, WAIT, test_config, wait_until};
use futures_util::SinkExt;
use iii_sdk::IIIClient;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn ok(iii: &IIIClient, function_id: &str, payload: Value) -> Value {
    call(iii, function_id, payload)
        .await
        .unwrap_or_else(|e| panic!("{function_id}: {e:?}"))
}

fn leave(sub: &str) -> Value {
    json!({"type": "leave", "data": {"subscriptionId": sub}})
}

/// Joins a throwaway group and waits for its sync: every message the client
/// sent before has been handled (a socket's messages are taken in order).
async fn settle(ws: &mut Ws, marker: &str) {
    send(ws, join(marker, "markers", marker, None)).await;
    let (_, event) = envelope(ws, "markers", marker).await;
    assert_eq!(event, json!({"type": "sync", "data": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joins_gets_sync_then_every_matching_event_and_leaves() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "stream-socket");
    ok(
        &iii,
        "stream::set",
        with_data("orders", "eu", "a", json!({"n": 1})),
    )
    .await;
    let mut ws = open(&engine.streams_url(), "/").await;

    send(&mut ws, join("all", "orders", "eu", None)).await;
    let (id, event) = envelope(&mut ws, "orders", "eu").await;
    assert_eq!(
        (id, event),
        (Value::Null, json!({"type": "sync", "data": [{"n": 1}]}))
    );
    // Binary JSON is read as well as text.
    let one = join("one", "orders", "eu", Some("a")).to_string();
    ws.send(Message::Binary(one.into_bytes().into()))
        .await
        .unwrap();
    let (id, event) = envelope(&mut ws, "orders", "eu").await;
    assert_eq!(
        (id, event),
        (json!("a"), json!({"type": "sync", "data": {"n": 1}}))
    );

    // A new item: only the group subscription matches.
    ok(
        &iii,
        "stream::set",
        with_data("orders", "eu", "b", json!({"n": 2})),
    )
    .await;
    let (id, event) = envelope(&mut ws, "orders", "eu").await;
    assert_eq!(
        (id, event),
        (json!("b"), json!({"type": "create", "data": {"n": 2}}))
    );
    // Item a: both subscriptions match, and each gets it once.
    let mut ops = item("orders", "eu", "a");
    ops["ops"] = json!([{"type": "set", "path": "n", "value": 5}]);
    ok(&iii, "stream::update", ops).await;
    for _ in 0..2 {
        let (id, event) = envelope(&mut ws, "orders", "eu").await;
        assert_eq!(
            (id, event),
            (json!("a"), json!({"type": "update", "data": {"n": 5}}))
        );
    }
    let custom = json!({"stream_name": "orders", "group_id": "eu", "id": "a", "type": "shipped", "data": {"by": "ups"}});
    ok(&iii, "stream::send", custom).await;
    for _ in 0..2 {
        let (_, event) = envelope(&mut ws, "orders", "eu").await;
        assert_eq!(
            event,
            json!({"type": "event", "event": {"type": "shipped", "data": {"by": "ups"}}})
        );
    }

    // After leaving the group, only the item subscription is left.
    send(&mut ws, leave("all")).await;
    settle(&mut ws, "after-leave").await;
    ok(
        &iii,
        "stream::set",
        with_data("orders", "us", "x", json!(0)),
    )
    .await;
    ok(
        &iii,
        "stream::set",
        with_data("orders", "eu", "b", json!({"n": 3})),
    )
    .await;
    ok(&iii, "stream::delete", item("orders", "eu", "a")).await;
    let (id, event) = envelope(&mut ws, "orders", "eu").await;
    assert_eq!(
        (id, event),
        (json!("a"), json!({"type": "delete", "data": {"n": 5}})),
        "nothing from the other group or item b before it"
    );

    // Refusals the engine makes itself come as `error` events.
    send(&mut ws, join("one", "orders", "eu", Some("a"))).await;
    let (_, event) = envelope(&mut ws, "orders", "eu").await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["code"].as_str(),
            event["subscriptionId"].as_str()
        ),
        (Some("error"), Some("SUBSCRIPTION_EXISTS"), Some("one"))
    );
    ws.send(Message::Text("{\"type\":\"subscribe\"}".into()))
        .await
        .unwrap();
    let e = recv(&mut ws).await;
    assert_eq!(e["event"]["code"], "BAD_MESSAGE", "{e}");
    send(&mut ws, join("blank", "orders", " ", None)).await;
    let e = recv(&mut ws).await;
    assert_eq!(e["event"]["code"], "BAD_MESSAGE", "{e}");

    assert_eq!(engine.stream_clients(), 1);
    ws.close(None).await.unwrap();
    wait_until("the client is gone", WAIT, async || {
        engine.stream_clients() == 0
    })
    .await;
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_handlers_and_the_auth_function_in_a_node_worker() {
    let mut config = test_config();
    config.streams.auth_function_id = Some("node::stream::auth".into());
    let engine = TestEngine::start_with(config).await;
    let url = engine.streams_url();
    let mut node = Program::start("node", "stream_lifecycle.mjs", &[], &engine.url);
    node.ready().await;
    engine.wait_for_providers("node::stream::auth", 1).await;
    wait_until("join and leave bound", WAIT, async || {
        engine.active_bindings("stream:join") == 1 && engine.active_bindings("stream:leave") == 1
    })
    .await;

    // The auth function decides before any socket opens.
    assert_eq!(refused(&url, "/", None).await, 401, "it threw");
    assert_eq!(
        refused(&url, "/?deny=1", None).await,
        403,
        "it answered unauthorized"
    );
    assert_eq!(engine.stream_clients(), 0);

    let mut ws = open(&url, "/?user=ann").await;
    let context = json!({"user": "ann", "has_addr": true});
    send(&mut ws, join("p1", "chat", "public", None)).await;
    let (_, event) = envelope(&mut ws, "chat", "public").await;
    assert_eq!(event, json!({"type": "sync", "data": []}));
    let joined = node
        .expect_json("the join of p1", |v| v["event"] == "join")
        .await;
    assert_eq!(
        joined["data"],
        json!({"subscription_id": "p1", "stream_name": "chat", "group_id": "public", "id": null, "context": context})
    );

    // The join handler refuses the private group: iii's unauthorized event, no subscription.
    send(&mut ws, join("x", "chat", "private", Some("k"))).await;
    let (id, event) = envelope(&mut ws, "chat", "private").await;
    assert_eq!((id, event), (json!("k"), json!({"type": "unauthorized"})));
    let sdk = sdk_worker(&engine.url, "stream-lifecycle");
    ok(
        &sdk,
        "stream::set",
        with_data("chat", "private", "k", json!("secret")),
    )
    .await;
    ok(
        &sdk,
        "stream::set",
        with_data("chat", "public", "m", json!("hello")),
    )
    .await;
    let (id, event) = envelope(&mut ws, "chat", "public").await;
    assert_eq!(
        (id, event),
        (json!("m"), json!({"type": "create", "data": "hello"})),
        "nothing from the refused group first"
    );

    send(&mut ws, leave("p1")).await;
    let left = node
        .expect_json("the leave of p1", |v| v["event"] == "leave")
        .await;
    assert_eq!(left["data"]["subscription_id"], "p1");
    assert_eq!(left["data"]["context"], context);

    // A disconnect leaves every subscription still open.
    send(&mut ws, join("p2", "chat", "public", None)).await;
    envelope(&mut ws, "chat", "public").await;
    send(&mut ws, join("p3", "chat", "public", Some("m"))).await;
    let (_, event) = envelope(&mut ws, "chat", "public").await;
    assert_eq!(event, json!({"type": "sync", "data": "hello"}));
    drop(ws);
    let mut left = Vec::new();
    while left.len() < 2 {
        let l = node
            .expect_json("leaves on disconnect", |v| v["event"] == "leave")
            .await;
        left.push(l["data"]["subscription_id"].as_str().unwrap().to_owned());
    }
    left.sort();
    assert_eq!(left, ["p2", "p3"]);

    // No auth function to ask: refused, never let through.
    let (code, _) = node.finish().await;
    assert_eq!(code, 0);
    engine.wait_for_providers("node::stream::auth", 0).await;
    assert_eq!(refused(&url, "/?user=ann", None).await, 503);
    stop(sdk).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_the_others_get_every_event() {
    let mut config = test_config();
    config.streams.max_item_bytes = 64 << 10;
    config.streams.outbound_bytes = 128 << 10;
    config.streams.outbound_messages = 16;
    let engine = TestEngine::start_with(config).await;
    let iii = sdk_worker(&engine.url, "stream-slow");
    let addr = engine.streams_url().trim_start_matches("ws://").to_owned();
    // A small receive buffer: the kernel absorbs less before the engine's queue fills.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let tcp = tcp.connect(addr.parse().unwrap()).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .unwrap();
    let mut fast = open(&engine.streams_url(), "/").await;
    for ws in [&mut slow, &mut fast] {
        send(ws, join("s", "feed", "g", None)).await;
        let (_, event) = envelope(ws, "feed", "g").await;
        assert_eq!(event["type"], "sync");
    }

    // The fast client reads everything while the slow one reads nothing.
    let n = 150;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let (_, event) = envelope(&mut fast, "feed", "g").await;
            assert_eq!(event["event"]["data"]["i"], i);
        }
        fast
    });
    let blob = "x".repeat(60 << 10);
    let send_all = async {
        for i in 0..n {
            let e = json!({"stream_name": "feed", "group_id": "g", "type": "tick", "data": {"i": i, "blob": blob}});
            ok(&iii, "stream::send", e).await;
        }
    };
    // Once the engine has closed it, the slow client reads at once: the
    // engine gives a closed client's writer a short while to flush, then
    // drops the connection (a client that never reads holds nothing for long).
    let slow_closed = async {
        wait_until("the slow client is closed", WAIT, async || {
            engine.stream_clients() == 1
        })
        .await;
        close_code(&mut slow).await
    };
    let ((), code) = tokio::join!(send_all, slow_closed);
    // What was on the wire arrives, then the close: 1013, a slow consumer.
    assert_eq!(code, 1013);
    let mut fast = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the fast client got every event")
        .unwrap();
    // The fast client still gets events.
    ok(
        &iii,
        "stream::send",
        json!({"stream_name": "feed", "group_id": "g", "type": "after", "data": {}}),
    )
    .await;
    let (_, event) = envelope(&mut fast, "feed", "g").await;
    assert_eq!(event["event"]["type"], "after");
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_create_stream_provider_is_called_instead_of_the_store() {
    let engine = TestEngine::start().await;
    let mut ws = open(&engine.streams_url(), "/").await;
    send(&mut ws, join("g", "py-orders", "g", None)).await;
    let (_, event) = envelope(&mut ws, "py-orders", "g").await;
    assert_eq!(event, json!({"type": "sync", "data": []}));

    let mut py = Program::start("python", "stream_provider.py", &["py-orders"], &engine.url);
    let step = |name: &'static str| move |v: &Value| v["step"] == name;
    py.expect_json("registered", step("registered")).await;
    let data = json!({"name": "from python", "n": 1});
    let set = py.expect_json("set", step("set")).await;
    assert_eq!(set["result"], json!({"old_value": null, "new_value": data}));
    assert_eq!(
        set["in_provider"], data,
        "the provider held it when set answered"
    );
    assert_eq!(py.expect_json("get", step("get")).await["result"], data);
    assert_eq!(
        py.expect_json("list", step("list")).await["result"],
        json!([data])
    );
    let deleted = py.expect_json("delete", step("delete")).await;
    assert_eq!(deleted["result"], json!({"old_value": data}));
    assert!(deleted["in_provider"].is_null());
    let after = py
        .expect_json("get after delete", step("get_after_delete"))
        .await;
    assert!(after["result"].is_null());
    assert_eq!(
        after["calls"],
        json!(["set", "get", "list", "delete", "get"])
    );
    let (code, _) = py.finish().await;
    assert_eq!(code, 0);

    // Events fire as for the store.
    let (id, event) = envelope(&mut ws, "py-orders", "g").await;
    assert_eq!(
        (id, event),
        (json!("i"), json!({"type": "create", "data": data}))
    );
    let (_, event) = envelope(&mut ws, "py-orders", "g").await;
    assert_eq!(event, json!({"type": "delete", "data": data}));
    // The store never held the item.
    engine.wait_for_providers("stream::get(py-orders)", 0).await;
    let iii = sdk_worker(&engine.url, "stream-py-check");
    assert_eq!(ok(&iii, "stream::list_all", json!({})).await["count"], 0);
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_provider_gets_iiis_typed_inputs_and_a_bad_answer_is_a_json_error() {
    let engine = TestEngine::start().await;
    let mut node = Program::start("node", "stream_provider.mjs", &["node-orders"], &engine.url);
    node.ready().await;
    for op in ["get", "set", "delete", "list", "list_groups", "update"] {
        engine
            .wait_for_providers(&format!("stream::{op}(node-orders)"), 1)
            .await;
    }
    let iii = sdk_worker(&engine.url, "stream-node-provider");
    let op = |name: &'static str| move |v: &Value| v["op"] == name;

    // A socket's sync reads through the provider too.
    let mut ws = open(&engine.streams_url(), "/").await;
    send(&mut ws, join("g", "node-orders", "g", None)).await;
    let (_, event) = envelope(&mut ws, "node-orders", "g").await;
    assert_eq!(event, json!({"type": "sync", "data": []}));
    let listed = node.expect_json("list", op("list")).await;
    assert_eq!(
        listed["input"],
        json!({"stream_name": "node-orders", "group_id": "g"})
    );

    let data = json!({"qty": 2});
    let mut set = with_data("node-orders", "g", "i", data.clone());
    set["durable"] = json!(false);
    assert_eq!(
        ok(&iii, "stream::set", set).await,
        json!({"old_value": null, "new_value": data})
    );
    let seen = node.expect_json("set", op("set")).await;
    assert_eq!(
        seen["input"],
        with_data("node-orders", "g", "i", data.clone()),
        "iii's typed input re-serialised: no _caller_worker_id, no qmesh fields"
    );
    let (_, event) = envelope(&mut ws, "node-orders", "g").await;
    assert_eq!(event, json!({"type": "create", "data": data}));

    assert_eq!(
        ok(&iii, "stream::get", item("node-orders", "g", "i")).await,
        data
    );
    assert_eq!(
        ok(
            &iii,
            "stream::list",
            json!({"stream_name": "node-orders", "group_id": "g"})
        )
        .await,
        json!([data])
    );
    assert_eq!(
        ok(
            &iii,
            "stream::list_groups",
            json!({"stream_name": "node-orders"})
        )
        .await,
        json!(["g"])
    );
    let mut update = item("node-orders", "g", "i");
    update["ops"] = json!([{"type": "set", "path": "qty", "value": 3}]);
    let updated = ok(&iii, "stream::update", update).await;
    assert_eq!(updated, json!({"old_value": data, "new_value": {"qty": 3}}));
    let (_, event) = envelope(&mut ws, "node-orders", "g").await;
    assert_eq!(event, json!({"type": "update", "data": {"qty": 3}}));

    let bad = with_data("node-orders", "g", "j", json!({"bad": true}));
    let err = call(&iii, "stream::set", bad)
        .await
        .expect_err("not a set result");
    assert_eq!(remote_code(&err), "JSON_ERROR");

    let deleted = ok(&iii, "stream::delete", item("node-orders", "g", "i")).await;
    assert_eq!(deleted, json!({"old_value": {"qty": 3}}));
    let (_, event) = envelope(&mut ws, "node-orders", "g").await;
    assert_eq!(event, json!({"type": "delete", "data": {"qty": 3}}));
    // Not in the engine's store at any point.
    let all = ok(&iii, "stream::list_all", json!({})).await;
    assert_eq!(all["count"], 0, "{all}");

    let (code, _) = node.finish().await;
    assert_eq!(code, 0);
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_capped_and_the_shutdown_closes_clients_with_1001() {
    let mut config = test_config();
    config.streams.max_connections = 1;
    config.streams.max_subscriptions_per_connection = 1;
    let engine = TestEngine::start_with(config).await;
    let url = engine.streams_url();
    let mut ws = open(&url, "/").await;
    wait_until("one client open", WAIT, async || {
        engine.stream_clients() == 1
    })
    .await;
    assert_eq!(refused(&url, "/", None).await, 503, "max_connections");
    let health = engine.health().await;
    assert_eq!(health["streams"]["clients"], 1, "{health}");
    send(&mut ws, join("a", "s", "g", None)).await;
    envelope(&mut ws, "s", "g").await;
    send(&mut ws, join("b", "s", "g", None)).await;
    let (_, event) = envelope(&mut ws, "s", "g").await;
    assert_eq!(event["code"], "TOO_MANY_SUBSCRIPTIONS", "{event}");
    // Only the upgrade is served, and only at `/`.
    let mut plain = tokio::net::TcpStream::connect(url.trim_start_matches("ws://"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    let stopping = tokio::spawn(engine.stop());
    assert_eq!(close_code(&mut ws).await, 1001);
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_handshake_is_dropped_after_the_request_timeout() {
    let mut config = test_config();
    config.server.request_timeout = Duration::from_millis(300);
    let engine = TestEngine::start_with(config).await;
    let addr = engine.streams_url().trim_start_matches("ws://").to_owned();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    // The engine closes it (EOF, or a 408 first): it does not wait forever.
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "a connection that sends nothing is closed");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_gets_1009_and_a_silent_client_is_closed_as_idle() {
    let mut config = test_config();
    config.streams.max_message_bytes = 1024;
    config.streams.ping_interval = Duration::from_millis(100);
    config.streams.idle_timeout = Duration::from_millis(400);
    let engine = TestEngine::start_with(config).await;
    let url = engine.streams_url();

    let mut big = open(&url, "/").await;
    let id = "x".repeat(2048);
    send(&mut big, join("s", "big", &id, None)).await;
    assert_eq!(close_code(&mut big).await, 1009);

    // A client whose socket is never read answers no ping: idle, closed with 1001.
    // Raw bytes: a WebSocket client library would answer the pings when read.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("ws://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    silent.write_all(upgrade.as_bytes()).await.unwrap();
    wait_until("the silent client is open", WAIT, async || {
        engine.stream_clients() == 1
    })
    .await;
    wait_until("the silent client is closed", WAIT, async || {
        engine.stream_clients() == 0
    })
    .await;
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut bytes))
        .await
        .expect("the engine ends the connection")
        .unwrap();
    let head = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a 101 head")
        + 4;
    assert!(
        bytes.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Server frames are unmasked and small here: opcode, length, payload.
    let mut frames = &bytes[head..];
    let mut close = None;
    while frames.len() >= 2 {
        let (opcode, len) = (frames[0] & 0x0f, (frames[1] & 0x7f) as usize);
        if opcode == 0x8 {
            close = Some(u16::from_be_bytes([frames[2], frames[3]]));
        }
        frames = &frames[(2 + len).min(frames.len())..];
    }
    assert_eq!(close, Some(1001), "pings, then the close frame");
    engine.stop().await;
}
