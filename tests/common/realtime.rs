//! Realtime routes from both sides: a worker (`qmesh::client`) binding its
//! functions to routes, and raw client sockets on a route. Shared by the
//! `tests/realtime_*.rs` files and `benches/realtime.rs`, which includes this
//! file alone with `#[path]`: it uses nothing else from `tests/common`.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use qmesh::client::{Client, ErrorBody};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a client waits for one expected frame (`common::WAIT`).
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Binds `function_id` with a `websocket` trigger (engine-owned binding).
pub async fn bind(worker: &Client, function_id: &str, config: Value) {
    worker
        .call(
            "engine::register_trigger",
            json!({"trigger_type": "websocket", "function_id": function_id, "config": config}),
        )
        .await
        .unwrap_or_else(|e| panic!("binding {function_id}: {e}"));
}

/// A worker announced as `realtime-test` on the engine at `url`.
pub async fn worker(url: &str) -> Client {
    let w = Client::connect(url).await.expect("worker connects");
    w.announce("realtime-test").unwrap();
    w
}

/// Registers a handler and waits until the engine routes it.
pub async fn serve<F, Fut>(w: &Client, id: &str, f: F)
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
{
    w.register_function(id, f).unwrap();
    w.wait_for_function(id, FRAME_WAIT).await.unwrap();
}

/// A client socket on `path` of the engine at `url` (`ws://host:port`).
pub async fn open(url: &str, path: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("{url}{path}"))
        .await
        .expect("upgrade")
        .0
}

/// The HTTP status an upgrade was refused with.
pub async fn refused(url: &str, path: &str, auth: Option<&str>) -> u16 {
    let mut req = format!("{url}{path}").into_client_request().unwrap();
    if let Some(a) = auth {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => panic!("{path}: the upgrade was accepted"),
        Err(e) => panic!("{path}: unexpected error {e}"),
    }
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next text frame as JSON (pings and pongs skipped).
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame; returns its code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(f))) => return f.map_or(1005, |f| f.code.into()),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// Ids of the open client connections (of `route`, if given), as the
/// engine's `channel::list` reports them to a worker.
pub async fn open_channels(w: &Client, route: Option<&str>) -> Vec<String> {
    let listed = w
        .call("channel::list", json!({ "route": route }))
        .await
        .expect("channel::list");
    listed["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["channel_id"].as_str().expect("channel_id").to_owned())
        .collect()
}
