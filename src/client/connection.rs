//! The machinery behind a [`Client`](super::Client): one writer task that
//! drains an outbox onto the socket (batching whatever is queued into one
//! flush), one reader task that settles waiting calls and runs handlers, and
//! the map of calls in flight that joins them.

use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::{ClientError, INVOCATION_FAILED};
use super::wire::{self, FromEngine, Reply};
use crate::protocol::{ErrorBody, codes};

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A registered function's handler, boxed: it gets the input and the
/// invocation's metadata (`Value::Null` when none came).
pub(super) type Handler =
    Arc<dyn Fn(Value, Value) -> BoxFuture<'static, Result<Value, ErrorBody>> + Send + Sync>;

/// State both socket tasks and every client handle share.
pub(super) struct Shared {
    outbox: mpsc::UnboundedSender<Message>,
    pending: Mutex<Pending>,
    handlers: RwLock<HashMap<String, Handler>>,
    /// Cancelled once the connection has ended, for whatever reason.
    ended: CancellationToken,
}

/// Calls waiting for their `invocationresult`. `closed` is set, under the same
/// lock, when the connection ends, so no call can start waiting after the
/// reader has failed the others.
#[derive(Default)]
struct Pending {
    calls: HashMap<Uuid, oneshot::Sender<Reply>>,
    closed: bool,
}

/// The two socket tasks.
pub(super) struct Tasks {
    pub reader: JoinHandle<()>,
    pub writer: JoinHandle<()>,
}

/// Splits the socket and starts both tasks.
pub(super) fn start(socket: Socket) -> (Arc<Shared>, Tasks) {
    let (sink, stream) = socket.split();
    let (outbox, queued) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        outbox,
        pending: Mutex::default(),
        handlers: RwLock::default(),
        ended: CancellationToken::new(),
    });
    let tasks = Tasks {
        writer: tokio::spawn(write_loop(sink, queued, shared.ended.clone())),
        reader: tokio::spawn(read_loop(stream, shared.clone())),
    };
    (shared, tasks)
}

impl Shared {
    /// Queues one text frame for the writer.
    pub fn send(&self, text: String) -> Result<(), ClientError> {
        if self.ended.is_cancelled() {
            return Err(ClientError::Closed);
        }
        self.outbox
            .send(Message::Text(text.into()))
            .map_err(|_| ClientError::Closed)
    }

    /// Queues a normal close; frames queued before it are still sent.
    pub fn send_close(&self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        };
        let _ = self.outbox.send(Message::Close(Some(frame)));
    }

    /// Starts waiting for the answer to `id`.
    pub fn expect(&self, id: Uuid) -> Result<oneshot::Receiver<Reply>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.closed {
            return Err(ClientError::Closed);
        }
        pending.calls.insert(id, tx);
        Ok(rx)
    }

    /// Stops waiting for `id` (timed out, or the frame could not be queued).
    pub fn forget(&self, id: &Uuid) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .remove(id);
    }

    pub fn in_flight(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .len()
    }

    pub fn set_handler(&self, id: String, handler: Handler) {
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, handler);
    }

    pub fn remove_handler(&self, id: &str) -> bool {
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .is_some()
    }

    pub fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    fn handler(&self, id: &str) -> Option<Handler> {
        self.handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn settle(&self, id: Uuid, reply: Reply) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .remove(&id);
        // No waiter: the call timed out already; a late answer is dropped, as the SDKs do.
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }

    /// The connection is over: every waiting call fails with `Closed` (its
    /// sender is dropped), and handlers are released (they may hold clients).
    fn end(&self) {
        let calls = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.closed = true;
            std::mem::take(&mut pending.calls)
        };
        drop(calls);
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.ended.cancel();
    }

    fn on_frame(self: &Arc<Self>, frame: FromEngine) {
        match frame {
            FromEngine::Result {
                invocation_id,
                outcome,
            } => self.settle(invocation_id, outcome),
            FromEngine::Invoke {
                invocation_id,
                function_id,
                data,
                metadata,
            } => self.run_handler(invocation_id, function_id, data, metadata),
            FromEngine::Ping => {
                let _ = self.send(wire::pong());
            }
            FromEngine::Rejected { code, detail } => {
                tracing::warn!(code, detail, "the engine rejected a registration")
            }
            FromEngine::Other(kind) => tracing::trace!(kind, "engine frame ignored"),
            FromEngine::Registered { .. } => {}
        }
    }

    /// Runs the handler for one `invokefunction` on its own task and answers
    /// with its outcome. The engine sends an id even for void calls and drops
    /// the answer, so every invocation with an id is answered.
    fn run_handler(
        self: &Arc<Self>,
        invocation_id: Option<Uuid>,
        function_id: String,
        data: Option<Box<RawValue>>,
        metadata: Option<Box<RawValue>>,
    ) {
        let Some(handler) = self.handler(&function_id) else {
            if let Some(id) = invocation_id {
                let err = ErrorBody::new(
                    codes::FUNCTION_NOT_FOUND,
                    format!("no handler for {function_id} in this worker"),
                );
                let _ = self.send(wire::result(&id, &function_id, &Err(err)));
            }
            return;
        };
        let shared = self.clone();
        tokio::spawn(async move {
            let outcome = call_handler(handler, data, metadata).await;
            if let Some(id) = invocation_id {
                let _ = shared.send(wire::result(&id, &function_id, &outcome));
            }
        });
    }
}

/// Parses the input, runs the handler, and turns a panic into `invocation_failed`.
async fn call_handler(
    handler: Handler,
    data: Option<Box<RawValue>>,
    metadata: Option<Box<RawValue>>,
) -> Result<Value, ErrorBody> {
    let metadata = metadata
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(Value::Null);
    let input = match data.as_deref().map(|raw| serde_json::from_str(raw.get())) {
        None => Value::Null,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            return Err(ErrorBody::new(
                INVOCATION_FAILED,
                format!("unreadable input: {e}"),
            ));
        }
    };
    match AssertUnwindSafe(async move { handler(input, metadata).await })
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Err(ErrorBody::new(INVOCATION_FAILED, what))
        }
    }
}

async fn read_loop(mut stream: SplitStream<Socket>, shared: Arc<Shared>) {
    while let Some(msg) = stream.next().await {
        let decoded = match &msg {
            Ok(Message::Text(text)) => wire::decode(text.as_str()),
            Ok(Message::Binary(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) => wire::decode(text),
                Err(_) => continue,
            },
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        match decoded {
            Ok(frame) => shared.on_frame(frame),
            Err(e) => tracing::warn!(error = %e, "dropped an unreadable engine frame"),
        }
    }
    shared.end();
}

async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut outbox: mpsc::UnboundedReceiver<Message>,
    ended: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            msg = outbox.recv() => msg,
            _ = ended.cancelled() => None,
        };
        let Some(mut msg) = next else { return };
        // Feed everything already queued, then flush once.
        loop {
            let closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                return;
            }
            if closing {
                let _ = sink.flush().await;
                return;
            }
            match outbox.try_recv() {
                Ok(queued) => msg = queued,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn handler(f: impl Fn(Value) -> Result<Value, ErrorBody> + Send + Sync + 'static) -> Handler {
        let f = Arc::new(f);
        Arc::new(move |v, _| {
            let f = f.clone();
            async move { f(v) }.boxed()
        })
    }

    fn raw(s: &str) -> Option<Box<RawValue>> {
        Some(RawValue::from_string(s.to_owned()).unwrap())
    }

    #[tokio::test]
    async fn handlers_get_parsed_input_and_panics_become_errors() {
        let echo = handler(Ok);
        assert_eq!(
            call_handler(echo.clone(), raw(r#"{"a":1}"#), None).await,
            Ok(json!({"a":1}))
        );
        assert_eq!(call_handler(echo, None, None).await, Ok(Value::Null));
        let boom = handler(|_| panic!("kaboom"));
        let err = call_handler(boom, raw("1"), None).await.unwrap_err();
        assert_eq!(
            (err.code.as_str(), err.message.as_str()),
            (INVOCATION_FAILED, "kaboom")
        );
    }

    #[test]
    fn pending_calls_settle_once_and_fail_when_the_connection_ends() {
        let (outbox, _queued) = mpsc::unbounded_channel();
        let shared = Shared {
            outbox,
            pending: Mutex::default(),
            handlers: RwLock::default(),
            ended: CancellationToken::new(),
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut rx_a = shared.expect(a).unwrap();
        let mut rx_b = shared.expect(b).unwrap();
        assert_eq!(shared.in_flight(), 2);
        shared.settle(a, Ok(None));
        shared.settle(a, Ok(None)); // a late duplicate is dropped
        assert!(matches!(rx_a.try_recv(), Ok(Ok(None))));
        shared.end();
        assert!(rx_b.try_recv().is_err(), "the sender was dropped");
        assert!(matches!(
            shared.expect(Uuid::new_v4()),
            Err(ClientError::Closed)
        ));
        assert!(matches!(shared.send("{}".into()), Err(ClientError::Closed)));
    }
}
