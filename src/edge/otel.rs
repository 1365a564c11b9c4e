//! `/otel`: the SDKs' telemetry socket (OTLP/MTRC/LOGS frames). qmesh has no
//! telemetry pipeline yet, so frames are read and dropped; accepting the
//! socket keeps SDKs from reconnecting in a loop.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;

use super::AppState;

pub async fn upgrade(ws: WebSocketUpgrade, State(app): State<AppState>) -> Response {
    let limit = app.mesh.config().limits.max_message_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .on_upgrade(discard)
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
