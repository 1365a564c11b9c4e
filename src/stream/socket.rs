//! The streams client socket (iii's port 3112, path `/`): browsers and apps
//! join groups or items and receive their events.
//!
//! Before the upgrade (every refusal is an HTTP status, no socket opened):
//! the shutdown (503), `max_connections` (503), the memory budget (503), then
//! the auth function if one is configured. It gets `{headers, path,
//! query_params: {k: [v..]}, addr}`; its `{context}` becomes the connection's
//! context. Unlike iii, an auth function that fails (401, or 403 for a
//! `FORBIDDEN` error), answers `{"unauthorized": true}` (403) or nothing (401),
//! or cannot be reached in time (503), refuses the upgrade.
//!
//! After it, client → engine (text or binary JSON):
//! `{"type": "join"|"leave", "data": {subscriptionId, streamName, groupId, id?}}`,
//! taken in order. A join asks the `stream:join` handlers (a refusal is the
//! `unauthorized` event), records the subscription, then sends `sync` (the
//! item, or the group's items): recorded first, so no event between the read
//! and the record is lost; one that arrives before `sync` is older than what
//! `sync` carries. A leave, or the socket's end, fires `stream:leave` for each
//! subscription it ends.
//!
//! Defences: the engine root serves this router with the worker listener's
//! (handshake permits, per address too, and the request-head deadline); a
//! socket has an idle timeout, a message size limit (1009), a subscription
//! cap, and an outbox bounded by frames and bytes (a client that stops
//! reading is closed with 1013, never waited for).

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Streams;
use super::hub::{Client, Closed, Slot, Subscription};
use super::lifecycle::Verdict;
use super::watchers::{envelope, now_ms};
use crate::mesh::Mesh;
use crate::net::ws::Ending;
use crate::protocol::codes::{self, close, stream_socket, upgrade};
use crate::protocol::{DEFAULT_NAMESPACE, names, to_payload};

/// Small socket buffers keep idle clients cheap (tungstenite's default is 128 KiB).
const SOCKET_BUFFER: usize = 4 << 10;
/// How long a closing socket's writer may take to put its last frames out.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Recorded (never sent) for a socket that vanished without a close frame.
const ABNORMAL: u16 = 1006;

/// What the upgrade handler and every socket reach.
#[derive(Clone)]
pub(super) struct SocketApp {
    pub mesh: Mesh,
    pub streams: Streams,
}

#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("too many stream client connections")]
    Full,
    #[error("the engine's memory budget is spent; retry later")]
    Overloaded,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("authentication is unavailable: {0}")]
    AuthUnavailable(String),
    #[error("invalid query string: {0}")]
    BadQuery(String),
}

impl Refusal {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Refusal::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, upgrade::SHUTTING_DOWN),
            Refusal::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                upgrade::TOO_MANY_CONNECTIONS,
            ),
            Refusal::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, codes::ENGINE_OVERLOADED),
            Refusal::Unauthorized(_) => (StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED),
            Refusal::Forbidden(_) => (StatusCode::FORBIDDEN, upgrade::FORBIDDEN),
            Refusal::AuthUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, upgrade::AUTH_UNAVAILABLE)
            }
            Refusal::BadQuery(_) => (StatusCode::BAD_REQUEST, upgrade::BAD_QUERY),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let mut resp = (
            status,
            axum::Json(json!({ "error": { "code": code, "message": self.to_string() } })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}

pub(super) fn router(app: SocketApp) -> Router {
    Router::new().route("/", get(upgrade)).with_state(app)
}

async fn upgrade(
    State(app): State<SocketApp>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let (slot, context) = match admit(&app, &headers, &uri, addr).await {
        Ok(admitted) => admitted,
        Err(e) => {
            let (status, _) = e.status();
            tracing::info!(remote = %addr, status = status.as_u16(), error = %e, "stream socket upgrade refused");
            return e.into_response();
        }
    };
    let max = app.streams.config.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| serve(socket, app, context, slot))
}

/// Everything decided before the upgrade: a slot, then the context.
async fn admit(
    app: &SocketApp,
    headers: &HeaderMap,
    uri: &Uri,
    addr: SocketAddr,
) -> Result<(Slot, Value), Refusal> {
    let hub = &app.streams.hub;
    if hub.is_shutting_down() || app.mesh.is_draining() {
        return Err(Refusal::ShuttingDown);
    }
    let slot = hub.take_slot().ok_or(Refusal::Full)?;
    if hub.budget().is_spent() {
        return Err(Refusal::Overloaded);
    }
    let context = authenticate(app, headers, uri, addr).await?;
    Ok((slot, context))
}

/// The auth function's verdict; without one, every client is let in with a
/// null context.
async fn authenticate(
    app: &SocketApp,
    headers: &HeaderMap,
    uri: &Uri,
    addr: SocketAddr,
) -> Result<Value, Refusal> {
    let config = &app.streams.config;
    let Some(auth_fn) = config.auth_function_id.as_deref() else {
        return Ok(Value::Null);
    };
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| Refusal::BadQuery(e.body_text()))?;
    let mut query_params = Map::new();
    for (k, v) in pairs {
        let values = query_params.entry(k).or_insert_with(|| json!([]));
        if let Value::Array(list) = values {
            list.push(Value::String(v));
        }
    }
    let headers: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let input = json!({
        "headers": headers,
        "path": uri.path(),
        "query_params": query_params,
        "addr": addr.to_string(),
    });
    let outcome = app
        .mesh
        .call(
            DEFAULT_NAMESPACE,
            auth_fn,
            to_payload(&input),
            config.auth_timeout,
        )
        .await;
    let answer = match outcome {
        Ok(answer) => answer
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
            .unwrap_or(Value::Null),
        Err(e) if e.code.eq_ignore_ascii_case(upgrade::FORBIDDEN) => {
            return Err(Refusal::Forbidden(e.message));
        }
        Err(e) if e.code == codes::FUNCTION_NOT_FOUND || e.code == codes::INVOCATION_TIMEOUT => {
            tracing::warn!(function_id = auth_fn, error = %e, "stream auth function unavailable; refusing the upgrade");
            return Err(Refusal::AuthUnavailable(format!(
                "{auth_fn} did not answer"
            )));
        }
        Err(e) => return Err(Refusal::Unauthorized(e.message)),
    };
    match answer {
        Value::Object(mut o) => {
            if o.get("unauthorized") == Some(&Value::Bool(true)) {
                return Err(Refusal::Forbidden(format!("{auth_fn} refused the client")));
            }
            Ok(o.remove("context").unwrap_or(Value::Null))
        }
        _ => Err(Refusal::Unauthorized(format!(
            "{auth_fn} answered no {{context}} object"
        ))),
    }
}

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
enum ClientMessage {
    Join(SubscriptionData),
    Leave(SubscriptionData),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionData {
    subscription_id: String,
    // A leave needs only the subscription id.
    #[serde(default)]
    stream_name: String,
    #[serde(default)]
    group_id: String,
    #[serde(default)]
    id: Option<String>,
}

/// Serves an upgraded socket until it closes and its leaves have fired.
async fn serve(socket: WebSocket, app: SocketApp, context: Value, _slot: Slot) {
    let config = app.streams.config.clone();
    let hub = app.streams.hub.clone();
    let (client, outbox) = hub.open(context, config.outbound_messages, config.outbound_bytes);
    tracing::debug!(client = client.id, "stream client open");
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(crate::net::ws::write_loop(
        sink,
        outbox,
        client.clone(),
        config.ping_interval,
    ));
    read_loop(&app, &client, stream, config.idle_timeout).await;
    for sub in hub.remove(&client) {
        fire_leave(&app, &client, &sub);
    }
    let reason = client.reason();
    tracing::debug!(
        client = client.id,
        code = reason.as_ref().map(|r| r.code),
        "stream client closed"
    );
    if tokio::time::timeout(CLOSE_FLUSH, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Reads client messages and handles each in turn, until the client closes
/// (or is closed: a slow consumer, the shutdown).
async fn read_loop(
    app: &SocketApp,
    client: &Arc<Client>,
    mut stream: SplitStream<WebSocket>,
    idle: Duration,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = client.closed() => return,
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let bytes = match next {
            Err(_) => {
                client.close(Closed {
                    code: close::GOING_AWAY,
                    text: "idle timeout",
                    by_client: false,
                });
                return;
            }
            Ok(None) => {
                client.close(lost());
                return;
            }
            Ok(Some(Err(e))) => {
                client.close(read_failed(e));
                return;
            }
            Ok(Some(Ok(msg))) => match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(frame) => {
                    let code = frame.map_or(1005, |f| f.code);
                    client.close(Closed {
                        code,
                        text: "closed by the client",
                        by_client: true,
                    });
                    return;
                }
            },
        };
        tokio::select! {
            _ = client.closed() => return,
            _ = handle(app, client, &bytes) => {}
        }
    }
}

fn lost() -> Closed {
    Closed {
        code: ABNORMAL,
        text: "connection lost",
        by_client: true,
    }
}

fn read_failed(e: axum::Error) -> Closed {
    let inner = e.into_inner();
    match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_)) => Closed {
            code: close::MESSAGE_TOO_BIG,
            text: "message too big",
            by_client: false,
        },
        _ => lost(),
    }
}

async fn handle(app: &SocketApp, client: &Arc<Client>, bytes: &[u8]) {
    match serde_json::from_slice::<ClientMessage>(bytes) {
        Ok(ClientMessage::Join(d)) => join(app, client, d).await,
        Ok(ClientMessage::Leave(d)) => {
            if let Some(sub) = app.streams.hub.unsubscribe(client, &d.subscription_id) {
                fire_leave(app, client, &sub);
            }
        }
        Err(e) => {
            let msg = format!("expected {{\"type\":\"join\"|\"leave\",\"data\":{{..}}}}: {e}");
            send_error(client, None, stream_socket::BAD_MESSAGE, &msg);
        }
    }
}

async fn join(app: &SocketApp, client: &Arc<Client>, mut d: SubscriptionData) {
    let streams = &app.streams;
    // An empty id is no id (the whole group), as in a `stream` trigger's filter.
    d.id = d.id.filter(|i| !i.is_empty());
    let checked = names::check("subscriptionId", &d.subscription_id)
        .and_then(|_| names::check("streamName", &d.stream_name))
        .and_then(|_| names::check("groupId", &d.group_id))
        .and_then(|_| d.id.as_deref().map_or(Ok(()), |i| names::check("id", i)));
    if let Err(m) = checked {
        return send_error(client, Some(&d), stream_socket::BAD_MESSAGE, &m);
    }
    if client.has_subscription(&d.subscription_id) {
        let m = "this socket already holds a subscription with this id";
        return send_error(client, Some(&d), stream_socket::SUBSCRIPTION_EXISTS, m);
    }
    let max = streams.config.max_subscriptions_per_connection;
    if client.subscription_count() >= max {
        let m = format!("at most {max} subscriptions per socket");
        return send_error(client, Some(&d), stream_socket::TOO_MANY_SUBSCRIPTIONS, &m);
    }
    let payload = lifecycle_payload(
        &d.subscription_id,
        &d.stream_name,
        &d.group_id,
        d.id.as_deref(),
        &client.context,
    );
    let verdict = streams
        .lifecycle
        .join(&app.mesh, &payload, streams.config.join_timeout)
        .await;
    if let Verdict::Refused { function_id } = verdict {
        tracing::debug!(client = client.id, stream = %d.stream_name, group = %d.group_id, function_id, "stream join refused");
        let text = envelope(
            &d.stream_name,
            &d.group_id,
            d.id.as_deref(),
            &json!({ "type": "unauthorized" }),
        );
        client.send(text.into());
        return;
    }
    let sub = Subscription {
        id: d.subscription_id.clone(),
        stream: d.stream_name.clone(),
        group: d.group_id.clone(),
        item: d.id.clone(),
    };
    streams.hub.subscribe(client, sub);
    match streams
        .read(&app.mesh, &d.stream_name, &d.group_id, d.id.as_deref())
        .await
    {
        Ok(data) => {
            let event = json!({ "type": "sync", "data": data });
            let text = envelope(&d.stream_name, &d.group_id, d.id.as_deref(), &event);
            client.send(text.into());
        }
        Err(e) => send_error(client, Some(&d), stream_socket::SYNC_FAILED, &e.to_string()),
    }
}

/// What `stream:join` and `stream:leave` handlers get.
fn lifecycle_payload(
    subscription_id: &str,
    stream: &str,
    group: &str,
    item: Option<&str>,
    context: &Value,
) -> crate::protocol::Payload {
    to_payload(&json!({
        "subscription_id": subscription_id,
        "stream_name": stream,
        "group_id": group,
        "id": item,
        "context": context,
    }))
}

fn fire_leave(app: &SocketApp, client: &Client, sub: &Subscription) {
    let payload = lifecycle_payload(
        &sub.id,
        &sub.stream,
        &sub.group,
        sub.item.as_deref(),
        &client.context,
    );
    app.streams.lifecycle.leave(&app.mesh, &payload);
}

/// The `error` event: qmesh's own, in the envelope's shape, naming the
/// subscription it is about.
fn send_error(client: &Client, d: Option<&SubscriptionData>, code: &str, message: &str) {
    let event = json!({
        "type": "error",
        "subscriptionId": d.map(|d| &d.subscription_id),
        "code": code,
        "message": message,
    });
    let text = json!({
        "type": "stream",
        "timestamp": now_ms(),
        "streamName": d.map(|d| &d.stream_name),
        "groupId": d.map(|d| &d.group_id),
        "id": d.and_then(|d| d.id.as_ref()),
        "event": event,
    })
    .to_string();
    client.send(text.into());
}

impl crate::net::ws::ClientSocket for Client {
    fn sent(&self, msg: &Message) {
        Client::sent(self, msg)
    }

    fn closed(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(Client::closed(self))
    }

    fn lost(&self) {
        self.close(lost())
    }

    fn ending(&self) -> Ending {
        match self.reason() {
            None => Ending::ByClient,
            Some(r) if r.by_client => Ending::ByClient,
            Some(r) if r.code == close::TRY_AGAIN_LATER => Ending::SlowConsumer {
                code: r.code,
                reason: Utf8Bytes::from_static(r.text),
            },
            Some(r) => Ending::ByServer {
                code: r.code,
                reason: Utf8Bytes::from_static(r.text),
            },
        }
    }
}
