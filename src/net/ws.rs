//! The writing half of a server-side client WebSocket with a bounded outbox
//! (realtime routes, the streams socket): batch whatever is queued into one
//! flush, ping on an interval, and at the close either send what was queued
//! and a close frame, or, for a slow consumer, drop the queue.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::future::BoxFuture;
use futures_util::stream::SplitSink;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a closing socket's writer may take to flush.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// How a client's socket ended, as its writer needs to know it.
pub(crate) enum Ending {
    /// The client closed (or vanished): only tungstenite's answer to its
    /// close frame goes out.
    ByClient,
    /// It stopped reading: the queue is dropped, then this close frame.
    SlowConsumer { code: u16, reason: Utf8Bytes },
    /// The engine closed it: what was queued, then this close frame.
    ByServer { code: u16, reason: Utf8Bytes },
}

/// The connection a writer serves.
pub(crate) trait ClientSocket: Send + Sync + 'static {
    /// A frame left the outbox (its bytes leave the budget).
    fn sent(&self, msg: &Message);
    /// Resolves once the connection is closing.
    fn closed(&self) -> BoxFuture<'_, ()>;
    /// A write failed: the peer is gone.
    fn lost(&self);
    /// How it ended; asked once the connection is closing.
    fn ending(&self) -> Ending;
}

/// Runs until the connection closes, then ends the socket as [`Ending`] says.
pub(crate) async fn write_loop<C: ClientSocket>(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    client: std::sync::Arc<C>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let msg = tokio::select! {
            biased;
            _ = client.closed() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        // A client that stops reading blocks the write: its close (1013, or
        // the shutdown) must not wait for it.
        let written = tokio::select! {
            ok = write_batch(&mut sink, &mut rx, &*client, msg) => ok,
            _ = client.closed() => true,
        };
        if !written {
            client.lost();
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        let frame = match client.ending() {
            Ending::ByClient => {
                // tungstenite queued the answer to the client's close frame; flush it out.
                let _ = sink.close().await;
                return;
            }
            Ending::SlowConsumer { code, reason } => CloseFrame { code, reason },
            Ending::ByServer { code, reason } => {
                while let Ok(m) = rx.try_recv() {
                    client.sent(&m);
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                CloseFrame { code, reason }
            }
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    })
    .await;
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch<C: ClientSocket>(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Message>,
    client: &C,
    first: Message,
) -> bool {
    let mut next = Some(first);
    while let Some(m) = next {
        client.sent(&m);
        if sink.feed(m).await.is_err() {
            return false;
        }
        next = rx.try_recv().ok();
    }
    sink.flush().await.is_ok()
}
