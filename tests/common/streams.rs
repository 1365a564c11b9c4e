//! Stream items and the streams client socket, from a test's side: the
//! inputs of `stream::*` and the socket's frames, shared by
//! `tests/stream_socket.rs` and `tests/cluster_streams.rs`.

use serde_json::{Value, json};
use std::time::Duration;

use super::realtime::{Ws, recv};

/// `stream::get` / `stream::delete` input.
pub fn item(stream: &str, group: &str, id: &str) -> Value {
    json!({"stream_name": stream, "group_id": group, "item_id": id})
}

/// `stream::set` input.
pub fn with_data(stream: &str, group: &str, id: &str, data: Value) -> Value {
    let mut v = item(stream, group, id);
    v["data"] = data;
    v
}

/// A client's `join` of a group (`id: None`) or one item.
pub fn join(sub: &str, stream: &str, group: &str, id: Option<&str>) -> Value {
    json!({"type": "join", "data": {"subscriptionId": sub, "streamName": stream, "groupId": group, "id": id}})
}

/// The next envelope, checked to be about `stream`/`group`; returns its `id` and `event`.
pub async fn envelope(ws: &mut Ws, stream: &str, group: &str) -> (Value, Value) {
    let e = recv(ws).await;
    assert_eq!(e["type"], "stream", "{e}");
    assert!(e["timestamp"].as_u64().is_some(), "{e}");
    assert_eq!(
        (e["streamName"].as_str(), e["groupId"].as_str()),
        (Some(stream), Some(group)),
        "{e}"
    );
    (e["id"].clone(), e["event"].clone())
}

/// Asserts that no frame but pings and pongs reaches the client for
/// `window`: the negative check of an event.
pub async fn assert_no_frame_for(ws: &mut Ws, window: Duration, why: &str) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let end = tokio::time::Instant::now() + window;
    while let Ok(frame) = tokio::time::timeout_at(end, ws.next()).await {
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("{why}: {other:?}"),
        }
    }
}
