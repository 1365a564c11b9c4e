//! The worker WebSocket on `/`: one reader loop (decode, apply in order) and
//! one writer task (drain the outbox, batch frames into one flush, ping).

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::AppState;
use super::auth::{ListenerPolicy, Refused, Upgrade};
use crate::mesh::access::Access;
use crate::mesh::session::Session;
use crate::mesh::{Connection, Mesh, Outgoing};
use crate::protocol::codes::{self, close};
use crate::protocol::inbound::is_telemetry;
use crate::protocol::{ErrorBody, outbound};

/// Socket buffers are allocated per connection; small ones keep idle workers cheap.
const SOCKET_BUFFER: usize = 16 << 10;
/// How long a closing connection's writer may take to flush before it is dropped.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if app.mesh.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine shutting down").into_response();
    }
    let (admission, permit) = match Admission::with_slot(&app, headers, query, addr) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let limit = app.mesh.config().limits.max_message_size;
    let mesh = app.mesh;
    // A page that offered its token as a subprotocol is answered `qmesh`.
    ws.protocols([super::auth::SUBPROTOCOL])
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |mut socket| async move {
            if let Some(access) = admission.finish(&mesh, &mut socket).await {
                serve(socket, mesh, addr, access).await;
            }
            drop(permit);
        })
}

/// Who a socket is, decided before the upgrade (tokens, trusted listener)
/// or right after it (an RBAC listener's auth function, as iii does).
pub(crate) enum Admission {
    Decided(Access),
    AfterUpgrade(PendingAuth),
}

/// What an RBAC listener's auth function is shown once the socket is open.
pub(crate) struct PendingAuth {
    policy: Arc<ListenerPolicy>,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    remote: SocketAddr,
}

/// A request without a valid token: 401, before any upgrade.
fn unauthorized(app: &AppState, remote: SocketAddr, why: Refused) -> Response {
    tracing::warn!(remote = %remote, listener = %app.policy.rules.name, "worker connection refused: {why}");
    let body =
        serde_json::json!({"error": {"code": codes::UNAUTHORIZED, "message": why.to_string()}});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

impl Admission {
    /// What every socket of a worker listener (`/`, `/otel`) goes through
    /// before its upgrade: admission (401 without a valid token), then a
    /// slot of `limits.max_connections` (503 when none is left).
    pub(crate) fn with_slot(
        app: &AppState,
        headers: HeaderMap,
        query: Vec<(String, String)>,
        remote: SocketAddr,
    ) -> Result<(Self, OwnedSemaphorePermit), Box<Response>> {
        let admission = Self::check(app, headers, query, remote)
            .map_err(|why| Box::new(unauthorized(app, remote, why)))?;
        let Ok(permit) = app.connection_slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %remote, limit = app.mesh.config().limits.max_connections, "connection refused: limits.max_connections reached");
            let refusal = (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
            return Err(Box::new(refusal));
        };
        Ok((admission, permit))
    }

    /// Decides what can be decided before the upgrade.
    pub(crate) fn check(
        app: &AppState,
        headers: HeaderMap,
        query: Vec<(String, String)>,
        remote: SocketAddr,
    ) -> Result<Self, Refused> {
        let up = Upgrade {
            headers: &headers,
            query: &query,
            remote,
        };
        Ok(match app.policy.admit_request(&up)? {
            Some(access) => Admission::Decided(access),
            None => Admission::AfterUpgrade(PendingAuth {
                policy: app.policy.clone(),
                headers,
                query,
                remote,
            }),
        })
    }

    /// The connection's access, or `None` after telling the socket why it
    /// is refused (one `{"type":"error"}` frame with `AUTH_ERROR`, then a
    /// close with 1008).
    pub(crate) async fn finish(self, mesh: &Mesh, socket: &mut WebSocket) -> Option<Arc<Access>> {
        let PendingAuth {
            policy,
            headers,
            query,
            remote,
        } = match self {
            Admission::Decided(access) => return Some(Arc::new(access)),
            Admission::AfterUpgrade(pending) => pending,
        };
        let up = Upgrade {
            headers: &headers,
            query: &query,
            remote,
        };
        match policy.admit_session(mesh, &up).await {
            Ok(access) => Some(Arc::new(access)),
            Err(e) => {
                tracing::warn!(remote = %remote, listener = %policy.rules.name, error = %e, "worker connection refused by the auth function");
                let err = ErrorBody::new(codes::AUTH_ERROR, e.to_string());
                let _ = socket
                    .send(Message::Text(outbound::connection_error(&err).into()))
                    .await;
                let frame = CloseFrame {
                    code: close::POLICY_VIOLATION,
                    reason: "authentication failed".into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                None
            }
        }
    }
}

async fn serve(socket: WebSocket, mesh: Mesh, addr: SocketAddr, access: Arc<Access>) {
    let (conn, outbox) = mesh.connect(Some(addr), access);
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outbox,
        conn.clone(),
        mesh.config().server.ping_interval,
    ));
    let mut session = Session::new(mesh.clone(), conn.clone());
    read_loop(stream, &mut session, mesh.config().server.idle_timeout).await;
    mesh.disconnect(conn.id);
    conn.close(close::NORMAL, "");
    if tokio::time::timeout(CLOSE_FLUSH, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn read_loop(mut stream: SplitStream<WebSocket>, session: &mut Session, idle: Duration) {
    let conn = session.conn().clone();
    loop {
        let hold = session.hold_deadline();
        tokio::select! {
            biased;
            _ = conn.closed() => return,
            _ = sleep_until(hold), if hold.is_some() => session.release_held().await,
            next = tokio::time::timeout(idle, stream.next()) => match next {
                Err(_) => {
                    tracing::info!(worker_id = %conn.id, "no frame within the idle timeout; closing");
                    conn.close(close::GOING_AWAY, "idle timeout");
                    return;
                }
                Ok(None) => return,
                Ok(Some(Err(e))) => {
                    on_read_error(&conn, e);
                    return;
                }
                Ok(Some(Ok(msg))) => match msg {
                    Message::Text(text) => session.handle_text(text.as_str()).await,
                    Message::Binary(bytes) if is_telemetry(&bytes) => session.mesh().provided().telemetry(&bytes),
                    Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(text) => session.handle_text(text).await,
                        Err(_) => tracing::warn!(worker_id = %conn.id, len = bytes.len(), "dropped a binary frame that is not UTF-8 JSON"),
                    },
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return,
                },
            },
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// An oversize message closes with 1009; anything else is a dropped peer.
fn on_read_error(conn: &Connection, e: axum::Error) {
    let inner = e.into_inner();
    match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Capacity(cap)) => {
            tracing::warn!(worker_id = %conn.id, error = %cap, "message over limits.max_message_size; closing with 1009");
            conn.close(close::MESSAGE_TOO_BIG, "message too big");
        }
        _ => tracing::debug!(worker_id = %conn.id, error = %inner, "worker socket read failed"),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
    conn: Arc<Connection>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let item = tokio::select! {
            item = outbox.recv() => item,
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() { break }
                continue;
            }
        };
        let Some(mut item) = item else { break };
        // Batch whatever is already queued into one flush.
        loop {
            match item {
                Outgoing::Text(text) => {
                    let len = text.len();
                    let fed = sink.feed(Message::Text(text.into())).await;
                    conn.sent(len);
                    if fed.is_err() {
                        conn.close(close::GOING_AWAY, "write failed");
                        return;
                    }
                }
                Outgoing::Close { code, reason } => {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
            }
            match outbox.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            conn.close(close::GOING_AWAY, "write failed");
            return;
        }
    }
}
