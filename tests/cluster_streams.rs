//! Streams shared by a cluster (`[cluster] streams = "jetstream"`): two
//! engines on a 3-node NATS cluster read, list and delete each other's
//! items, never lose an update to a race between them, deliver every event
//! to the socket clients and `stream` bindings of both engines once, and
//! keep what they acknowledged through a kill -9.

mod common;

use common::launcher::EngineProcess;
use common::nats::{self, NatsCluster};
use common::realtime::{Ws, open, recv, send};
use common::streams::{assert_no_frame_for, envelope, item, join, with_data};
use common::{RawClient, TestEngine, WAIT, increments_from_each, test_config, wait_until};
use qmesh::config::{BackendKind, Config};
use serde_json::{Value, json};
use std::time::Duration;

fn engine_config(nats: &NatsCluster, engine_id: &str) -> Config {
    let mut c = nats.engine_config(test_config(), engine_id);
    c.cluster.streams = BackendKind::Jetstream;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_set_on_one_engine_is_read_listed_and_deleted_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut on_a = RawClient::worker(&a.url, "client-a").await;
    let mut on_b = RawClient::worker(&b.url, "client-b").await;

    let first = on_a
        .call_ok(
            "stream::set",
            with_data("orders", "eu.1", "a", json!({"n": 1})),
        )
        .await;
    assert_eq!(first, json!({"old_value": null, "new_value": {"n": 1}}));
    // Acknowledged means stored: B reads it at once.
    let got = on_b
        .call_ok("stream::get", item("orders", "eu.1", "a"))
        .await;
    assert_eq!(got, json!({"n": 1}));
    // B's set answers A's item as the old one.
    let second = on_b
        .call_ok(
            "stream::set",
            with_data("orders", "eu.1", "a", json!({"n": 2})),
        )
        .await;
    assert_eq!(second["old_value"], json!({"n": 1}), "{second}");
    for (stream, group, id, data) in [
        ("orders", "eu.1", "", json!(0)),
        ("orders", "us", "x", json!("other group")),
        ("audit", "eu.1", "z", json!("other stream")),
    ] {
        on_b.call_ok("stream::set", with_data(stream, group, id, data))
            .await;
    }

    let group = json!({"stream_name": "orders", "group_id": "eu.1"});
    let listed = on_a.call_ok("stream::list", group.clone()).await;
    assert_eq!(listed, json!([0, {"n": 2}]), "in item-id order");
    let groups = on_a
        .call_ok("stream::list_groups", json!({"stream_name": "orders"}))
        .await;
    assert_eq!(groups, json!(["eu.1", "us"]));
    let all = on_b.call_ok("stream::list_all", json!({})).await;
    assert_eq!(
        all,
        json!({"stream": [{"id": "audit", "groups": ["eu.1"]},
            {"id": "orders", "groups": ["eu.1", "us"]}], "count": 2})
    );

    let deleted = on_a
        .call_ok("stream::delete", item("orders", "eu.1", "a"))
        .await;
    assert_eq!(deleted, json!({"old_value": {"n": 2}}));
    let gone = on_b
        .call_ok("stream::get", item("orders", "eu.1", "a"))
        .await;
    assert_eq!(gone, Value::Null);
    let again = on_b
        .call_ok("stream::delete", item("orders", "eu.1", "a"))
        .await;
    assert_eq!(
        again,
        json!({"old_value": null}),
        "a missing item is no error"
    );
    let listed = on_b.call_ok("stream::list", group).await;
    assert_eq!(listed, json!([0]));
    // In the bucket: one key per live item.
    let bucket = nats.bucket("streams").await;
    assert_eq!(nats::keys(&bucket).await.len(), 3);
}

/// A socket client of the group `chat`/`room-1` on `engine`, past its `sync`.
async fn chat_client(engine: &TestEngine) -> Ws {
    let mut ws = open(&engine.streams_url(), "/").await;
    send(&mut ws, join("room", "chat", "room-1", None)).await;
    let (_, event) = envelope(&mut ws, "chat", "room-1").await;
    assert_eq!(event, json!({"type": "sync", "data": []}));
    ws
}

/// Each of `clients` gets the next envelope, all the very same one (the
/// writer's, timestamp included), about `id` with `event`, and each of
/// `watchers` (a `stream` binding) is invoked with it.
async fn all_see(clients: &mut [&mut Ws], watchers: &mut [&mut RawClient], id: &str, event: Value) {
    let mut seen = Vec::new();
    for ws in clients.iter_mut() {
        let e = recv(ws).await;
        assert_eq!((&e["id"], &e["event"]), (&json!(id), &event), "{e}");
        seen.push(e);
    }
    for w in watchers.iter_mut() {
        seen.push(w.next_event().await);
    }
    assert!(seen.windows(2).all(|p| p[0] == p[1]), "{seen:?}");
    assert_eq!(
        (seen[0]["streamName"].as_str(), seen[0]["groupId"].as_str()),
        (Some("chat"), Some("room-1"))
    );
}

/// Writes on either engine reach the socket clients and the `stream`
/// bindings of both, each once, as a single engine would send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_bindings_on_every_engine_see_each_change_once() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let room = json!({"stream_name": "chat", "group_id": "room-1"});
    let mut watcher_a = RawClient::worker(&a.url, "watcher-a").await;
    watcher_a
        .bind("wa", "stream", "watch::a", room.clone())
        .await;
    let mut watcher_b = RawClient::worker(&b.url, "watcher-b").await;
    watcher_b.bind("wb", "stream", "watch::b", room).await;
    wait_until("the bindings are live", WAIT, async || {
        a.active_bindings("stream") == 1 && b.active_bindings("stream") == 1
    })
    .await;
    let mut client_a = chat_client(&a).await;
    let mut client_b = chat_client(&b).await;
    let mut writer_a = RawClient::worker(&a.url, "writer-a").await;
    let mut writer_b = RawClient::worker(&b.url, "writer-b").await;

    writer_a
        .call_ok(
            "stream::set",
            with_data("chat", "room-1", "m1", json!({"text": "hi"})),
        )
        .await;
    let created = json!({"type": "create", "data": {"text": "hi"}});
    let clients = &mut [&mut client_a, &mut client_b];
    let watchers = &mut [&mut watcher_a, &mut watcher_b];
    all_see(clients, watchers, "m1", created).await;

    let mut op = item("chat", "room-1", "m1");
    op["ops"] = json!([{"type": "set", "path": "edited", "value": true}]);
    writer_b.call_ok("stream::update", op).await;
    let updated = json!({"type": "update", "data": {"text": "hi", "edited": true}});
    all_see(clients, watchers, "m1", updated).await;

    let custom = json!({"stream_name": "chat", "group_id": "room-1", "id": "m1",
        "type": "typing", "data": {"who": "ann"}});
    writer_a.call_ok("stream::send", custom).await;
    let typing = json!({"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}});
    all_see(clients, watchers, "m1", typing).await;

    writer_b
        .call_ok("stream::delete", item("chat", "room-1", "m1"))
        .await;
    let removed = json!({"type": "delete", "data": {"text": "hi", "edited": true}});
    all_see(clients, watchers, "m1", removed).await;

    let once = Duration::from_millis(300);
    for ws in clients.iter_mut() {
        assert_no_frame_for(ws, once, "each change once").await;
    }
    for w in watchers.iter_mut() {
        w.assert_not_invoked_for(once, "each change once").await;
    }
}

/// 2 × 50 updates sent at once from two engines: each sees a distinct
/// value before it (none lost to a race), and the count ends at 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_two_engines_all_count() {
    const EACH: usize = 50;
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut data = item("race", "g", "counter");
    data["ops"] = json!([{"type": "increment", "path": "count", "by": 1}]);
    let before = increments_from_each(&[&a.url, &b.url], "stream::update", data, EACH).await;
    assert_eq!(before, (0..2 * EACH as i64).collect::<Vec<_>>());

    let mut reader = RawClient::worker(&b.url, "reader").await;
    let got = reader
        .call_ok("stream::get", item("race", "g", "counter"))
        .await;
    assert_eq!(got, json!({"count": 2 * EACH}));
}

/// What one engine acknowledged is read from the other after a kill -9 of
/// the writer (real binaries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_a_kill_9_of_the_engine_that_wrote_them() {
    const ITEMS: u64 = 20;
    let nats = NatsCluster::start().await;
    let config = |id: &str| format!("{}streams = \"jetstream\"\n", nats.engine_toml(id));
    let a = EngineProcess::start_with_config(&config("a"));
    let mut b = EngineProcess::start_with_config(&config("b"));

    let mut writer = RawClient::worker(&b.url, "writer").await;
    for i in 0..ITEMS {
        let id = format!("m{i:02}");
        writer
            .call_ok("stream::set", with_data("kept", "g", &id, json!(i)))
            .await;
    }
    b.kill();

    let mut reader = RawClient::worker(&a.url, "reader").await;
    let group = json!({"stream_name": "kept", "group_id": "g"});
    let listed = reader.call_ok("stream::list", group).await;
    assert_eq!(listed, json!((0..ITEMS).collect::<Vec<_>>()));
    let last = format!("m{:02}", ITEMS - 1);
    let got = reader
        .call_ok("stream::get", item("kept", "g", &last))
        .await;
    assert_eq!(got, json!(ITEMS - 1));
}

/// With NATS gone, every call that reads or writes items is refused with
/// the function's code and a message saying why; nothing is answered as
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_a_write_is_refused_with_its_code() {
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let mut client = RawClient::worker(&a.url, "client").await;
    client
        .call_ok("stream::set", with_data("s", "g", "i", json!(1)))
        .await;
    nats.kill_all();
    a.until_cut_off_from_nats().await;
    for (function_id, code) in [
        ("stream::set", "STREAM_SET_ERROR"),
        ("stream::update", "STREAM_UPDATE_ERROR"),
        ("stream::delete", "STREAM_DELETE_ERROR"),
        ("stream::get", "STREAM_GET_ERROR"),
        ("stream::list", "STREAM_GET_GROUP_ERROR"),
        ("stream::list_groups", "STREAM_LIST_GROUPS_ERROR"),
        ("stream::list_all", "STREAM_LIST_ALL_ERROR"),
    ] {
        let mut data = with_data("s", "g", "i", json!(2));
        data["ops"] = json!([]);
        let reply = client.call(function_id, data).await;
        assert_eq!(reply["error"]["code"], code, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("not connected to NATS"), "{reply}");
    }
}
