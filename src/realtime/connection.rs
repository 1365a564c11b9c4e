//! One client socket: a reader task (frames into a bounded inbound queue,
//! idle timeout, close codes), a writer task (bounded outbox, pings, the close
//! frame), and this task, which runs the handlers in order: connect first,
//! then each message, then disconnect exactly once, after the handlers still
//! running have finished (or `disconnect_wait` ran out).

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Client, CloseReason, ClosedBy, Realtime, dispatch, persist};
use crate::mesh::Mesh;
use crate::net::ws::Ending;
use crate::protocol::codes::close;

/// How long a closing socket's writer may take to put its last frames out.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Close code for a connection that vanished without a close frame.
const ABNORMAL: u16 = 1006;

enum Inbound {
    Text(Utf8Bytes),
    Binary(Vec<u8>),
}

/// Serves an upgraded socket until it is closed and its disconnect has run.
pub async fn serve(
    socket: WebSocket,
    mesh: Mesh,
    hub: Realtime,
    ch: Arc<Client>,
    outbox: super::Outbox,
) {
    hub.insert(ch.clone());
    if hub.is_shutting_down() {
        // Upgraded just as shutdown began: close it like the others.
        ch.close(CloseReason::new(
            close::GOING_AWAY,
            "engine shutting down",
            ClosedBy::EngineShutdown,
        ));
    }
    let recorded = persist::opened(&hub, &ch).await;
    tracing::debug!(channel_id = %ch.id, route = %ch.route, path = %ch.path, "realtime channel open");
    let (sink, stream) = socket.split();
    let ping = ch.limits.ping_interval;
    let mut writer = tokio::spawn(crate::net::ws::write_loop(
        sink,
        outbox.rx,
        ch.clone(),
        ping,
    ));
    let (in_tx, in_rx) = mpsc::channel(hub.config().inbound_messages);
    let reader = tokio::spawn(read_loop(stream, in_tx, ch.clone()));
    let wait = hub.config().disconnect_wait;
    // Messages that arrive meanwhile wait in the inbound queue: connect goes first.
    until_closed_plus(&ch, wait, dispatch::on_connect(&mesh, &hub, &ch)).await;
    handle_messages(&mesh, &hub, &ch, in_rx, wait).await;
    reader.abort();
    let reason = ch
        .close_reason()
        .unwrap_or_else(|| CloseReason::new(close::NORMAL, "closed", ClosedBy::Server));
    dispatch::on_disconnect(&mesh, &hub, &ch, &reason).await;
    // The row goes before the channel leaves the hub: shutdown waits for the
    // hub to empty and then lets go of the store.
    if recorded {
        persist::closed(&hub, &ch);
    }
    hub.remove(&ch);
    tracing::debug!(channel_id = %ch.id, by = reason.by.as_str(), code = reason.code, "realtime channel closed");
    if tokio::time::timeout(CLOSE_FLUSH, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Runs `fut`, but gives up `wait` after the channel starts closing.
async fn until_closed_plus(ch: &Client, wait: Duration, fut: impl Future<Output = ()>) {
    tokio::select! {
        _ = fut => {}
        _ = async { ch.closed().await; tokio::time::sleep(wait).await } => {
            tracing::warn!(channel_id = %ch.id, "a handler outlived the disconnect wait; its reply is dropped");
        }
    }
}

async fn handle_one(mesh: Mesh, hub: Realtime, ch: Arc<Client>, msg: Inbound) {
    match msg {
        Inbound::Text(t) => dispatch::on_text(&mesh, &hub, &ch, t.as_str()).await,
        Inbound::Binary(b) => dispatch::on_binary(&mesh, &hub, &ch, b).await,
    }
}

/// Serial by default (one message at a time, replies in order); `concurrent`
/// routes run up to `max_in_flight` at once. Messages still queued when the
/// channel closes are dropped; the ones running are waited for.
async fn handle_messages(
    mesh: &Mesh,
    hub: &Realtime,
    ch: &Arc<Client>,
    mut in_rx: mpsc::Receiver<Inbound>,
    wait: Duration,
) {
    let mut running = JoinSet::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = ch.closed() => None,
            m = in_rx.recv() => m,
        };
        let Some(msg) = next else { break };
        let work = handle_one(mesh.clone(), hub.clone(), ch.clone(), msg);
        if !ch.limits.concurrent {
            until_closed_plus(ch, wait, work).await;
            continue;
        }
        while running.len() >= ch.limits.max_in_flight {
            running.join_next().await;
        }
        running.spawn(work);
    }
    let left = in_rx.len();
    if left > 0 {
        tracing::debug!(channel_id = %ch.id, dropped = left, "channel closed with messages still queued");
    }
    let drained =
        tokio::time::timeout(wait, async { while running.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(channel_id = %ch.id, "handlers outlived the disconnect wait; their replies are dropped");
        running.abort_all();
    }
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    in_tx: mpsc::Sender<Inbound>,
    ch: Arc<Client>,
) {
    let idle = ch.limits.idle_timeout;
    loop {
        let next = tokio::select! {
            _ = ch.closed() => return,
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let item = match next {
            Err(_) => {
                ch.close(CloseReason::new(
                    close::GOING_AWAY,
                    "idle timeout",
                    ClosedBy::Idle,
                ));
                return;
            }
            Ok(None) => {
                ch.close(CloseReason::new(
                    ABNORMAL,
                    "connection lost",
                    ClosedBy::Client,
                ));
                return;
            }
            Ok(Some(Err(e))) => {
                on_read_error(&ch, e);
                return;
            }
            Ok(Some(Ok(msg))) => match msg {
                Message::Text(t) => Inbound::Text(t),
                Message::Binary(b) => Inbound::Binary(b.to_vec()),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(frame) => {
                    let (code, text) =
                        frame.map_or((1005, String::new()), |f| (f.code, f.reason.to_string()));
                    ch.close(CloseReason::new(code, text, ClosedBy::Client));
                    return;
                }
            },
        };
        // A full inbound queue parks this task: the socket is not read, and TCP
        // pushes back on the client.
        tokio::select! {
            _ = ch.closed() => return,
            sent = in_tx.send(item) => if sent.is_err() { return },
        }
    }
}

fn on_read_error(ch: &Client, e: axum::Error) {
    let inner = e.into_inner();
    match inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Capacity(cap)) => {
            tracing::info!(channel_id = %ch.id, error = %cap, "client message too big; closing with 1009");
            ch.close(CloseReason::new(
                close::MESSAGE_TOO_BIG,
                "message too big",
                ClosedBy::Server,
            ));
        }
        _ => {
            tracing::debug!(channel_id = %ch.id, error = %inner, "client socket read failed");
            ch.close(CloseReason::new(
                ABNORMAL,
                "connection lost",
                ClosedBy::Client,
            ));
        }
    }
}

impl crate::net::ws::ClientSocket for Client {
    fn sent(&self, msg: &Message) {
        Client::sent(self, msg)
    }

    fn closed(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(Client::closed(self))
    }

    fn lost(&self) {
        self.close(CloseReason::new(ABNORMAL, "write failed", ClosedBy::Client));
    }

    fn ending(&self) -> Ending {
        match self.close_reason() {
            None => Ending::ByClient,
            Some(r) => match r.by {
                ClosedBy::Client => Ending::ByClient,
                ClosedBy::SlowConsumer => Ending::SlowConsumer {
                    code: r.code,
                    reason: r.text.into(),
                },
                _ => Ending::ByServer {
                    code: r.code,
                    reason: r.text.into(),
                },
            },
        }
    }
}
