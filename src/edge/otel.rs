//! `/otel`: the SDKs' telemetry socket. Each binary frame (`OTLP`, `MTRC` or
//! `LOGS` and OTLP-JSON) goes to whoever takes telemetry in the mesh's table
//! of what the engine provides (the observability module); the edge neither
//! reads nor keeps it. Nothing is ever sent back.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::net::SocketAddr;

use super::AppState;
use super::worker_socket::Admission;

/// Telemetry sockets take a slot of `limits.max_connections` like worker
/// sockets do: otherwise they would be an unbounded way to hold sockets open.
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    // The same admission as worker sockets (iii runs the RBAC auth for
    // `/otel` too): an anonymous peer cannot hold telemetry sockets open.
    let (admission, permit) = match Admission::with_slot(&app, headers, query, addr) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    let limit = app.mesh.config().limits.max_message_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .on_upgrade(move |mut socket| async move {
            if admission.finish(&app.mesh, &mut socket).await.is_some() {
                relay(socket, &app.mesh).await;
            }
            drop(permit);
        })
}

async fn relay(mut socket: WebSocket, mesh: &crate::mesh::Mesh) {
    let mut frames = 0u64;
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Close(_) => break,
            Message::Binary(bytes) => mesh.provided().telemetry(&bytes),
            // The SDKs send binary frames only; text is not telemetry.
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
        }
        frames += 1;
    }
    tracing::debug!(frames, "telemetry socket closed");
}
