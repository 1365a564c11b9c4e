//! `/ws/channels/{channel_id}?key=…&dir=read|write`: the two ends of a binary
//! channel (`crate::channels`).
//!
//! Every refusal happens before the upgrade, as a plain HTTP status (404
//! unknown channel or wrong key, 409 end taken, 410 gone, 400 bad query; in
//! a cluster, 503 when the engine holding the channel cannot be asked), so
//! a client never mistakes a refusal for an empty stream. A channel this
//! engine does not know is looked for on the cluster's other engines
//! (`Channels::claim_elsewhere`) before the upgrade too. Keys never reach a
//! log line: only the channel id and direction do.
//!
//! The socket is framed by `channels::frames`, not by the WebSocket library
//! the engine's other sockets use: payloads go from the writer's socket to
//! the reader's without being copied, and queued frames leave in one
//! vectored write.
//!
//! After the upgrade one pump per end runs:
//! - writer: read a frame, wait for room in the pipe, repeat. While it waits
//!   it does not read the socket, so TCP pushes back on the writer. A Close
//!   with no code or 1000 is the end of the stream; anything else (a reset,
//!   another code, a broken rule) is an abort, which the reader sees as
//!   close 4499. A frame over `channels.max_frame_size` is refused from its
//!   header (close 1009) before any memory is set aside for it.
//! - reader: write queued frames (up to `BATCH` in one vectored write),
//!   then close with 1000 after the last one. A second task reads the
//!   reader's socket, so a reader leaving is noticed at once and the writer
//!   is closed with 4410.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channels::frames::handshake::{ServerUpgrade, Upgraded};
use crate::channels::frames::{FrameError, FrameReader, FrameWriter, Incoming, OpCode, Role};
use crate::channels::pipe::{Data, PipeRx, PipeTx};
use crate::channels::{Channel, Channels, ClaimError, ClaimedEnd, EndState};
use crate::module::PeerRefusal;
use crate::protocol::channel::Direction;
use crate::protocol::codes::close;

/// How long a closing end may take to acknowledge the close before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Frames already queued for a reader that go out in one write, at most.
const BATCH: usize = 32;
/// Pongs owed to a reader and not yet written; more pings than this are not answered.
const PONGS_QUEUED: usize = 4;

type Reader = FrameReader<ReadHalf<Upgraded>>;
type Writer = FrameWriter<WriteHalf<Upgraded>>;

#[derive(serde::Deserialize)]
pub(crate) struct ChannelQuery {
    key: Option<String>,
    dir: Option<String>,
}

pub(crate) async fn upgrade(
    ws: ServerUpgrade,
    State(channels): State<Channels>,
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
    if channels.is_shutting_down() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "engine shutting down");
    }
    let claim = match channels.claim(&channel_id, dir, key) {
        Ok(claim) => claim,
        // Unknown here: in a cluster, the engine holding it opens the end.
        Err(ClaimError::NotFound(_)) if channels.may_be_elsewhere(&channel_id) => {
            match channels.claim_elsewhere(&channel_id, dir, key).await {
                Ok(claim) => claim,
                Err(refusal) => {
                    let (status, why) = match refusal {
                        PeerRefusal::NotFound => {
                            (StatusCode::NOT_FOUND, ClaimError::NotFound(dir).to_string())
                        }
                        PeerRefusal::Taken => {
                            (StatusCode::CONFLICT, ClaimError::Taken(dir).to_string())
                        }
                        PeerRefusal::Gone(why) => (StatusCode::GONE, why),
                        PeerRefusal::Unreachable(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    };
                    tracing::info!(channel_id = %channel_id, dir = %dir, remote = %addr, status = status.as_u16(), reason = %why, "channel connect refused by the cluster");
                    return refuse(status, &why);
                }
            }
        }
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
    ws.on_upgrade(move |io| async move {
        let channel = claim.channel.clone();
        let (rd, wr) = tokio::io::split(io);
        let rd = FrameReader::new(rd, Role::Server, channels.config().max_frame_size);
        let wr = FrameWriter::new(wr, Role::Server);
        match claim.open() {
            ClaimedEnd::Writer(tx) => pump_writer(rd, wr, tx, &channel, &channels).await,
            ClaimedEnd::Reader(rx) => pump_reader(rd, wr, rx, &channel, &channels).await,
        }
    })
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
}

/// How a writer socket's life ended.
enum WriterEnd {
    /// A close with no code or 1000: the end of the stream.
    Ended(Option<u16>),
    /// A close with another code: an abort.
    ClosedWith(u16),
    /// Reset or EOF without a close frame.
    Lost,
    /// It broke a rule (an oversize frame, a protocol error, invalid UTF-8):
    /// the close code and reason it gets.
    Broke(u16, &'static str),
    ReaderGone,
    Abandoned,
}

async fn pump_writer(
    mut rd: Reader,
    mut wr: Writer,
    tx: PipeTx,
    ch: &Arc<Channel>,
    channels: &Channels,
) {
    let end = relay(&mut rd, &mut wr, &tx, ch).await;
    let state = match end {
        WriterEnd::Ended(_) => EndState::Done,
        WriterEnd::Abandoned => EndState::Cancelled,
        _ => EndState::Aborted,
    };
    // Record the outcome before the pipe closes: the reader reads it at EOF.
    channels.end_over(ch, Direction::Write, state);
    drop(tx);
    let (code, reason) = match end {
        // The writer closed: answer with its own code, and the handshake is done.
        WriterEnd::Ended(code) => return answer_close(wr, code).await,
        WriterEnd::ClosedWith(code) => return answer_close(wr, Some(code)).await,
        WriterEnd::Lost => return,
        WriterEnd::Broke(code, reason) => (code, reason),
        WriterEnd::ReaderGone => (close::CHANNEL_READER_GONE, "reader gone"),
        WriterEnd::Abandoned => abandoned_close(channels),
    };
    wr.queue_close(Some(code), reason);
    linger(&mut rd, &mut wr).await;
}

/// Moves the writer's frames into the pipe until the socket or the channel ends.
async fn relay(rd: &mut Reader, wr: &mut Writer, tx: &PipeTx, ch: &Channel) -> WriterEnd {
    loop {
        let next = tokio::select! {
            biased;
            _ = ch.abandoned.cancelled() => return WriterEnd::Abandoned,
            _ = tx.reader_gone() => return WriterEnd::ReaderGone,
            next = rd.next() => next,
        };
        let data = match next {
            Ok(Incoming::Binary(b)) => Data::Binary(b),
            Ok(Incoming::Text(t)) => Data::Text(t),
            Ok(Incoming::Ping(payload)) => {
                wr.queue(OpCode::Pong, payload);
                if wr.flush().await.is_err() {
                    return WriterEnd::Lost;
                }
                continue;
            }
            Ok(Incoming::Pong) => continue,
            Ok(Incoming::Close(frame)) => {
                return match frame.map(|f| f.code) {
                    None => WriterEnd::Ended(None),
                    Some(close::NORMAL) => WriterEnd::Ended(Some(close::NORMAL)),
                    Some(code) => WriterEnd::ClosedWith(code),
                };
            }
            Err(e) => {
                return match e.close_code() {
                    Some(code) => WriterEnd::Broke(code, broke_reason(&e)),
                    None => WriterEnd::Lost,
                };
            }
        };
        // Waiting here, the socket is not read: TCP pushes back on the writer.
        let pushed = tokio::select! {
            biased;
            _ = ch.abandoned.cancelled() => return WriterEnd::Abandoned,
            pushed = tx.push(data) => pushed,
        };
        if pushed.is_err() {
            return WriterEnd::ReaderGone;
        }
    }
}

fn broke_reason(e: &FrameError) -> &'static str {
    match e {
        FrameError::TooBig { .. } => "frame over channels.max_frame_size",
        FrameError::Protocol(why) => why,
        FrameError::InvalidUtf8 => "text is not valid UTF-8",
        FrameError::Io(_) | FrameError::Eof => "connection lost",
    }
}

/// Answers a peer's close with the same code, which ends the handshake.
async fn answer_close(mut wr: Writer, code: Option<u16>) {
    wr.queue_close(code, "");
    let _ = tokio::time::timeout(CLOSE_LINGER, wr.flush()).await;
}

/// Sends what is queued (our close), then lets the peer's close (or EOF)
/// arrive, discarding anything still in flight, so the close frame is
/// delivered rather than reset away.
async fn linger(rd: &mut Reader, wr: &mut Writer) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        if wr.flush().await.is_err() {
            return;
        }
        loop {
            match rd.next().await {
                Ok(Incoming::Close(_)) => return,
                Ok(_) | Err(FrameError::TooBig { .. }) => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

async fn pump_reader(
    rd: Reader,
    mut wr: Writer,
    mut rx: PipeRx,
    ch: &Arc<Channel>,
    channels: &Channels,
) {
    let (pongs_tx, mut pongs) = mpsc::channel(PONGS_QUEUED);
    let gone = CancellationToken::new();
    let mut watcher = tokio::spawn(watch(rd, pongs_tx, gone.clone()));
    let outcome = tokio::select! {
        biased;
        _ = ch.abandoned.cancelled() => EndState::Cancelled,
        _ = gone.cancelled() => EndState::Aborted,
        delivered = deliver(&mut wr, &mut rx, &mut pongs) => if delivered { EndState::Done } else { EndState::Aborted },
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
        // Queued after any frame a cancelled write left half sent.
        wr.queue_close(Some(code), reason);
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            if wr.flush().await.is_ok() {
                gone.cancelled().await;
            }
        })
        .await;
    } else if gone.is_cancelled() {
        // The reader left; if it said so with a close frame, answer it.
        if let Ok(Some(code)) = (&mut watcher).await {
            answer_close(wr, code).await;
        }
    }
    watcher.abort();
    channels.end_over(ch, Direction::Read, outcome);
}

/// Writes frames until the writer's side is closed and drained (true), or the
/// reader's socket fails (false). Budget is given back once a frame is written.
async fn deliver(wr: &mut Writer, rx: &mut PipeRx, pongs: &mut mpsc::Receiver<Bytes>) -> bool {
    let mut receipts = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            Some(payload) = pongs.recv() => wr.queue(OpCode::Pong, payload),
            frame = rx.recv() => {
                let Some(frame) = frame else { return true };
                let mut next = Some(frame);
                while let Some(frame) = next.take() {
                    match frame.data {
                        Data::Binary(b) => wr.queue(OpCode::Binary, b),
                        Data::Text(t) => wr.queue(OpCode::Text, t),
                    }
                    receipts.push(frame.receipt);
                    if receipts.len() < BATCH {
                        next = rx.try_recv();
                    }
                }
            }
        }
        if wr.flush().await.is_err() {
            return false;
        }
        for receipt in receipts.drain(..) {
            rx.delivered(receipt);
        }
    }
}

/// Reads the reader's socket, so a departure is noticed at once, and has its
/// pings answered. Returns `Some(code)` if the reader sent a close frame.
async fn watch(
    mut rd: Reader,
    pongs: mpsc::Sender<Bytes>,
    gone: CancellationToken,
) -> Option<Option<u16>> {
    let left = loop {
        match rd.next().await {
            Ok(Incoming::Close(frame)) => break Some(frame.map(|f| f.code)),
            // A full queue drops the pong: pings cannot make the engine hold more.
            Ok(Incoming::Ping(payload)) => {
                let _ = pongs.try_send(payload);
            }
            // A reader has nothing to send; whatever it sends is dropped.
            Ok(_) | Err(FrameError::TooBig { .. }) => {}
            Err(_) => break None,
        }
    };
    gone.cancel();
    left
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
