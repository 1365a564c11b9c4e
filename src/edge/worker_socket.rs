//! The worker WebSocket on `/`: one reader loop (decode, apply in order) and
//! one writer task (drain the outbox, batch frames into one flush, ping).

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::AppState;
use crate::mesh::session::Session;
use crate::mesh::{Connection, Mesh, Outgoing};
use crate::protocol::codes::close;
use crate::protocol::inbound::is_telemetry;

/// Socket buffers are allocated per connection; small ones keep idle workers cheap.
const SOCKET_BUFFER: usize = 16 << 10;
/// How long a closing connection's writer may take to flush before it is dropped.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    if app.mesh.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine shutting down").into_response();
    }
    let Ok(permit) = app.connection_slots.clone().try_acquire_owned() else {
        tracing::warn!(remote = %addr, limit = app.mesh.config().limits.max_connections, "connection refused: limits.max_connections reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let limit = app.mesh.config().limits.max_message_size;
    let mesh = app.mesh;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| async move {
            serve(socket, mesh, addr).await;
            drop(permit);
        })
}

async fn serve(socket: WebSocket, mesh: Mesh, addr: SocketAddr) {
    let (conn, outbox) = mesh.connect(Some(addr));
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
            _ = sleep_until(hold), if hold.is_some() => session.release_held(),
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
                    Message::Text(text) => session.handle_text(text.as_str()),
                    Message::Binary(bytes) if is_telemetry(&bytes) => {}
                    Message::Binary(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(text) => session.handle_text(text),
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
