//! `/otel`: the SDKs' telemetry socket (OTLP/MTRC/LOGS frames). qmesh has no
//! telemetry pipeline yet, so frames are read and dropped; accepting the
//! socket keeps SDKs from reconnecting in a loop.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Telemetry sockets take a slot of `limits.max_connections` like worker
/// sockets do: otherwise they would be an unbounded way to hold sockets open.
pub async fn upgrade(ws: WebSocketUpgrade, State(app): State<AppState>) -> Response {
    let Ok(permit) = app.connection_slots.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let limit = app.mesh.config().limits.max_message_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            discard(socket).await;
            drop(permit);
        })
}

async fn discard(mut socket: WebSocket) {
    let mut frames = 0u64;
    while let Some(Ok(msg)) = socket.recv().await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
        frames += 1;
    }
    tracing::debug!(frames, "telemetry socket closed");
}
