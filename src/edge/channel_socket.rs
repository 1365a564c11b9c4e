//! `/ws/channels/{channel_id}?key=…&dir=read|write`: the two ends of a binary
//! channel (`crate::channels`).
//!
//! Every refusal happens before the upgrade, as a plain HTTP status (404
//! unknown channel or wrong key, 409 end taken, 410 gone, 400 bad query), so
//! a client never mistakes a refusal for an empty stream. Keys never reach a
//! log line: only the channel id and direction do.
//!
//! After the upgrade one pump per end runs:
//! - writer: read a frame, wait for room in the pipe, repeat. While it waits
//!   it does not read the socket, so TCP pushes back on the writer. A Close
//!   with no code or 1000 is the end of the stream; anything else (a reset,
//!   another code) is an abort, which the reader sees as close 4499.
//! - reader: write queued frames (batched into one flush), then close with
//!   1000 after the last one. A second task reads the reader's socket, so a
//!   reader leaving is noticed at once and the writer is closed with 4410.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::AppState;
use crate::channels::pipe::{PipeRx, PipeTx};
use crate::channels::{Channel, Channels, ClaimError, ClaimedEnd, EndState};
use crate::protocol::channel::Direction;
use crate::protocol::codes::close;

/// Channel sockets carry bulk data: larger buffers mean fewer syscalls per
/// 64 KiB chunk.
const SOCKET_BUFFER: usize = 128 << 10;
/// How long a closing end may take to acknowledge the close before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frames already queued for a reader that go out in one flush, at most.
const BATCH: usize = 32;

#[derive(serde::Deserialize)]
pub struct ChannelQuery {
    key: Option<String>,
    dir: Option<String>,
}

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(app): State<AppState>,
    Path(channel_id): Path<String>,
    Query(q): Query<ChannelQuery>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    let Some(dir) = q.dir.as_deref().and_then(Direction::parse) else {
        return refuse(StatusCode::BAD_REQUEST, "dir must be read or write");
    };
    let Some(key) = q.key.as_deref() else {
        return refuse(StatusCode::BAD_REQUEST, "key is missing");
    };
    let channels = app.mesh.channels().clone();
    if channels.is_shutting_down() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "engine shutting down");
    }
    let claim = match channels.claim(&channel_id, dir, key) {
        Ok(claim) => claim,
        Err(e) => {
            let status = match e {
                ClaimError::NotFound(_) => StatusCode::NOT_FOUND,
                ClaimError::Taken(_) => StatusCode::CONFLICT,
                ClaimError::Gone(_) => StatusCode::GONE,
            };
            tracing::info!(channel_id = %channel_id, dir = %dir, remote = %addr, status = status.as_u16(), reason = %e, "channel connect refused");
            return refuse(status, &e.to_string());
        }
    };
    tracing::debug!(channel_id = %channel_id, dir = %dir, remote = %addr, "channel end connecting");
    let limit = channels.config().max_frame_size;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| async move {
            let channel = claim.channel.clone();
            match claim.open() {
                ClaimedEnd::Writer(tx) => pump_writer(socket, tx, &channel, &channels).await,
                ClaimedEnd::Reader(rx) => pump_reader(socket, rx, &channel, &channels).await,
            }
        })
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
}

/// How a writer socket's life ended.
enum WriterEnd {
    Ended,
    Aborted,
    TooBig,
    ReaderGone,
    Abandoned,
}

async fn pump_writer(mut socket: WebSocket, tx: PipeTx, ch: &Arc<Channel>, channels: &Channels) {
    let end = loop {
        let next = tokio::select! {
            biased;
            _ = ch.abandoned.cancelled() => break WriterEnd::Abandoned,
            _ = tx.reader_gone() => break WriterEnd::ReaderGone,
            next = socket.recv() => next,
        };
        match next {
            Some(Ok(msg @ (Message::Binary(_) | Message::Text(_)))) => {
                let pushed = tokio::select! {
                    biased;
                    _ = ch.abandoned.cancelled() => break WriterEnd::Abandoned,
                    pushed = tx.push(msg) => pushed,
                };
                if pushed.is_err() {
                    break WriterEnd::ReaderGone;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break match frame.map(|f| f.code) {
                    None | Some(close::NORMAL) => WriterEnd::Ended,
                    Some(_) => WriterEnd::Aborted,
                };
            }
            Some(Ok(_)) => {} // pings are answered by the socket itself
            Some(Err(e)) if is_too_big(&e) => break WriterEnd::TooBig,
            Some(Err(_)) | None => break WriterEnd::Aborted,
        }
    };
    let state = match end {
        WriterEnd::Ended => EndState::Done,
        WriterEnd::Abandoned => EndState::Cancelled,
        _ => EndState::Aborted,
    };
    // Record the outcome before the pipe closes: the reader reads it at EOF.
    channels.end_over(ch, Direction::Write, state);
    drop(tx);
    let farewell = match end {
        WriterEnd::Ended => None,
        WriterEnd::Aborted => return,
        WriterEnd::TooBig => Some((close::MESSAGE_TOO_BIG, "frame over channels.max_frame_size")),
        WriterEnd::ReaderGone => Some((close::CHANNEL_READER_GONE, "reader gone")),
        WriterEnd::Abandoned => Some(abandoned_close(channels)),
    };
    if let Some((code, reason)) = farewell {
        let _ = socket.send(close_frame(code, reason)).await;
    }
    linger(socket).await;
}

/// Lets the peer's close (or EOF) arrive, discarding anything still in
/// flight, so the close frame is delivered rather than reset away.
async fn linger(mut socket: WebSocket) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        let _ = socket.flush().await;
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

async fn pump_reader(socket: WebSocket, mut rx: PipeRx, ch: &Arc<Channel>, channels: &Channels) {
    let (mut sink, mut stream) = socket.split();
    let gone = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let gone = gone.clone();
        async move {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
            gone.cancel();
        }
    });
    let outcome = tokio::select! {
        biased;
        _ = ch.abandoned.cancelled() => EndState::Cancelled,
        _ = gone.cancelled() => EndState::Aborted,
        delivered = deliver(&mut sink, &mut rx) => if delivered { EndState::Done } else { EndState::Aborted },
    };
    let farewell = match outcome {
        EndState::Done => match channels.writer_state(ch) {
            EndState::Done => Some((close::NORMAL, "end of stream")),
            EndState::Cancelled => Some(abandoned_close(channels)),
            _ => Some((close::CHANNEL_WRITER_ABORTED, "writer aborted")),
        },
        EndState::Cancelled => Some(abandoned_close(channels)),
        _ => None,
    };
    // Closed before the reader is told, so a writer waiting for room stops now.
    drop(rx);
    if let Some((code, reason)) = farewell {
        let _ = sink.send(close_frame(code, reason)).await;
        let _ = tokio::time::timeout(CLOSE_LINGER, gone.cancelled()).await;
    }
    watcher.abort();
    channels.end_over(ch, Direction::Read, outcome);
}

/// Writes frames until the writer's side is closed and drained (true), or the
/// reader's socket fails (false).
async fn deliver(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    rx: &mut PipeRx,
) -> bool {
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        let mut batched = 0;
        while let Some(frame) = next.take() {
            if sink.feed(frame.msg).await.is_err() {
                return false;
            }
            rx.delivered(frame.receipt);
            batched += 1;
            if batched < BATCH {
                next = rx.try_recv();
            }
        }
        if sink.flush().await.is_err() {
            return false;
        }
    }
    true
}

fn abandoned_close(channels: &Channels) -> (u16, &'static str) {
    if channels.is_shutting_down() {
        (close::GOING_AWAY, "engine shutting down")
    } else {
        (
            close::CHANNEL_ABANDONED,
            "channel abandoned before both ends connected",
        )
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn is_too_big(e: &axum::Error) -> bool {
    use std::error::Error;
    matches!(
        e.source()
            .and_then(|s| s.downcast_ref::<tokio_tungstenite::tungstenite::Error>()),
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
    )
}
