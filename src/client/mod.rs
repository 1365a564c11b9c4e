//! A small async client of the iii worker protocol: call functions, serve
//! functions, or both, over one WebSocket.
//!
//! A [`Client`] is one worker connection. It is cheap to clone; every clone
//! shares the connection, and any number of calls may be in flight at once
//! from any of them. Behind it run two tasks: a writer that batches queued
//! frames into one flush, and a reader that hands each `invocationresult` to
//! the call waiting for it and runs a registered handler for each
//! `invokefunction`.
//!
//! ```no_run
//! use qmesh::client::{Client, ErrorBody};
//! use serde_json::{Value, json};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), qmesh::client::ClientError> {
//! // A worker that serves one function...
//! let worker = Client::connect("ws://127.0.0.1:49134").await?;
//! worker.register_function("math::add", |input: Value| async move {
//!     match (input["a"].as_i64(), input["b"].as_i64()) {
//!         (Some(a), Some(b)) => Ok(json!({ "sum": a + b })),
//!         _ => Err(ErrorBody::new("bad_input", "a and b must be integers")),
//!     }
//! })?;
//! worker.announce("math")?; // registrations take effect once the worker is named
//!
//! // ...and a caller that uses it.
//! let caller = Client::connect("ws://127.0.0.1:49134").await?;
//! caller.wait_for_function("math::add", Duration::from_secs(5)).await?;
//! let out = caller.call("math::add", json!({ "a": 2, "b": 3 })).await?;
//! assert_eq!(out["sum"], 5);
//! caller.call_void("math::add", json!({ "a": 1, "b": 1 }))?; // fire and forget
//! caller.close().await;
//! # Ok(()) }
//! ```
//!
//! Things worth knowing about the protocol (`docs/protocol.md` §2–§3):
//! - Registrations are never acknowledged, and the engine holds them until the
//!   worker [announces](Client::announce) itself (or a grace period, 5 s by
//!   default, passes). Register first, then announce, as the SDKs do; callers
//!   can [`wait_for_function`](Client::wait_for_function).
//! - The engine adds `_caller_worker_id` to object inputs before a handler sees them.
//! - Timeouts are the caller's alone: the engine is not told, and a late answer is dropped.
//!
//! Channels: [`Client::create_channel`] makes one; [`Client::open_writer`] and
//! [`Client::open_reader`] open its ends (see [`channel`]).
//!
//! Files: `connection.rs` (socket tasks, calls in flight, running handlers),
//! `wire.rs` (the frames a worker sends and reads), `ids.rs` (invocation ids),
//! `error.rs` ([`ClientError`]), `address.rs` ([`engine_url`]).

mod address;
pub mod channel;
mod connection;
mod error;
mod ids;
mod wire;

pub use crate::protocol::ErrorBody;
pub use address::engine_url;
pub use error::{ClientError, INVOCATION_FAILED};

use futures_util::FutureExt;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use connection::{Handler, Shared, Socket, Tasks};
use wire::{Action, FromEngine};

/// How long a call waits for its answer unless told otherwise (the SDKs' default).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Client::connect`] waits for the socket and `workerregistered`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection settings; `ClientOptions::default()` matches the SDKs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Timeout of [`Client::call`] and [`Client::enqueue`].
    pub call_timeout: Duration,
    /// Bound on opening the socket and reading `workerregistered`.
    pub connect_timeout: Duration,
    /// Sent as `Authorization: Bearer <token>` (an engine with `[auth]` tokens
    /// refuses connections without one), as the SDKs send `III_TOKEN`.
    pub token: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            token: None,
        }
    }
}

/// One worker connection to an engine. Clone it freely; see the [module docs](self).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The engine URL, for channel sockets.
    url: String,
    shared: Arc<Shared>,
    worker_id: Uuid,
    call_timeout: Duration,
    ids: ids::InvocationIds,
    tasks: Mutex<Option<Tasks>>,
}

/// Dropping the last handle closes the connection politely.
impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.send_close();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("worker_id", &self.inner.worker_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Client {
    /// Opens a worker socket at `url` (for example `ws://127.0.0.1:49134`) and
    /// waits for the engine's `workerregistered`.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// [`connect`](Self::connect) with explicit timeouts.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let (socket, worker_id) = tokio::time::timeout(
            options.connect_timeout,
            handshake(url, options.token.as_deref()),
        )
        .await
        .map_err(|_| {
            ClientError::connect(
                url,
                format!("no workerregistered within {:?}", options.connect_timeout),
            )
        })??;
        let (shared, tasks) = connection::start(socket);
        Ok(Client {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                shared,
                worker_id,
                call_timeout: options.call_timeout,
                ids: ids::InvocationIds::new(),
                tasks: Mutex::new(Some(tasks)),
            }),
        })
    }

    /// The id the engine gave this connection.
    pub fn worker_id(&self) -> Uuid {
        self.inner.worker_id
    }

    /// Names this worker: the void `engine::workers::register` call with
    /// `name`, runtime `rust`, version, pid and os. It also releases the
    /// registrations the engine holds until a worker is named.
    pub fn announce(&self, name: &str) -> Result<(), ClientError> {
        self.call_void("engine::workers::register", wire::worker_info(name))
    }

    /// Calls `function_id` and waits for its result (at most the client's call timeout).
    /// A function that returns nothing yields `Value::Null`.
    pub async fn call(&self, function_id: &str, data: Value) -> Result<Value, ClientError> {
        self.call_with_timeout(function_id, data, self.inner.call_timeout)
            .await
    }

    /// [`call`](Self::call) with its own timeout.
    pub async fn call_with_timeout(
        &self,
        function_id: &str,
        data: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        match self
            .request(function_id, &data, Action::Sync, timeout)
            .await?
        {
            None => Ok(Value::Null),
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|e| ClientError::Protocol(format!("unreadable result: {e}"))),
        }
    }

    /// Fire and forget: the function runs, nobody hears back, not even about
    /// errors. Returns once the frame is queued; [`close`](Self::close) flushes it.
    pub fn call_void(&self, function_id: &str, data: Value) -> Result<(), ClientError> {
        self.inner
            .shared
            .send(wire::invoke(None, function_id, &data, Action::Void))
    }

    /// Puts a call to `function_id` on the durable queue `queue`; returns the
    /// engine's `messageReceiptId` once the message is accepted.
    pub async fn enqueue(
        &self,
        queue: &str,
        function_id: &str,
        data: Value,
    ) -> Result<String, ClientError> {
        let reply = self
            .request(
                function_id,
                &data,
                Action::Enqueue { queue },
                self.inner.call_timeout,
            )
            .await?;
        reply
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .and_then(|v| {
                v.get("messageReceiptId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                ClientError::Protocol("enqueue answered without messageReceiptId".into())
            })
    }

    /// Serves `function_id` from this connection: `handler` runs, on its own
    /// task, for each call the engine routes here. Return
    /// `Err(ErrorBody::new(code, message))` to fail the call; a panic fails it
    /// with `invocation_failed`. Registering an id again replaces the handler.
    /// A handler holding a clone of this client keeps the connection open until
    /// [`close`](Self::close) (or the engine) ends it.
    pub fn register_function<F, Fut>(
        &self,
        function_id: impl Into<String>,
        handler: F,
    ) -> Result<(), ClientError>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ErrorBody>> + Send + 'static,
    {
        self.register_function_with_metadata(function_id, move |input, _| handler(input))
    }

    /// [`register_function`](Self::register_function) for a handler that
    /// also reads the invocation's metadata (a queued job's context:
    /// `{job: {receipt, queue, attempt, …}}`; `Value::Null` when none came).
    pub fn register_function_with_metadata<F, Fut>(
        &self,
        function_id: impl Into<String>,
        handler: F,
    ) -> Result<(), ClientError>
    where
        F: Fn(Value, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ErrorBody>> + Send + 'static,
    {
        let id = function_id.into();
        let boxed: Handler = Arc::new(move |input, metadata| handler(input, metadata).boxed());
        // The handler is in place before the engine can route anything here.
        self.inner.shared.set_handler(id.clone(), boxed);
        self.inner.shared.send(wire::register_function(&id))
    }

    /// Stops serving `function_id`. Returns whether it was registered here.
    pub fn unregister_function(&self, function_id: &str) -> Result<bool, ClientError> {
        let had = self.inner.shared.remove_handler(function_id);
        self.inner
            .shared
            .send(wire::unregister_function(function_id))?;
        Ok(had)
    }

    /// Waits until the engine knows `function_id` (registrations are not
    /// acknowledged, so a caller racing a new worker needs this).
    pub async fn wait_for_function(
        &self,
        function_id: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let probe = json!({ "function_id": function_id });
            match self
                .call_with_timeout("engine::functions::info", probe, left)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if error::is_not_found(&e) => {}
                Err(ClientError::Timeout(_)) => return Err(ClientError::Timeout(timeout)),
                Err(e) => return Err(e),
            }
            if Instant::now() + Duration::from_millis(20) >= deadline {
                return Err(ClientError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates a binary channel (`engine::channels::create`). `buffer_size` is
    /// the frames the engine may hold (default 64); pass the refs to other
    /// workers inside any payload.
    pub async fn create_channel(
        &self,
        buffer_size: Option<usize>,
    ) -> Result<channel::ChannelPair, ClientError> {
        let out = self
            .call(
                "engine::channels::create",
                json!({ "buffer_size": buffer_size }),
            )
            .await?;
        serde_json::from_value(out)
            .map_err(|e| ClientError::Protocol(format!("unreadable channel refs: {e}")))
    }

    /// Opens the write end of a channel on this client's engine.
    pub async fn open_writer(
        &self,
        r: &channel::ChannelRef,
    ) -> Result<channel::ChannelWriter, channel::ChannelError> {
        channel::ChannelWriter::open(&self.inner.url, r).await
    }

    /// Opens the read end of a channel on this client's engine.
    pub async fn open_reader(
        &self,
        r: &channel::ChannelRef,
    ) -> Result<channel::ChannelReader, channel::ChannelError> {
        channel::ChannelReader::open(&self.inner.url, r).await
    }

    /// Calls sent by this connection that are still waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.inner.shared.in_flight()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.ended().is_cancelled()
    }

    /// Resolves when the connection ends (closed here, by the engine, or lost).
    /// A worker's `main` can serve until then.
    pub async fn closed(&self) {
        self.inner.shared.ended().cancelled().await
    }

    /// Flushes queued frames, closes the socket and waits (briefly) for the
    /// engine to acknowledge. Calls still waiting fail with [`ClientError::Closed`];
    /// every clone of this client is closed.
    pub async fn close(&self) {
        self.inner.shared.send_close();
        let acknowledged = tokio::time::timeout(Duration::from_secs(5), self.closed())
            .await
            .is_ok();
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tasks) = tasks {
            if !acknowledged {
                tasks.reader.abort();
            }
            let _ = tasks.reader.await;
            let _ = tasks.writer.await;
        }
    }

    /// Sends one invoke and waits for its answer; the result stays raw.
    async fn request(
        &self,
        function_id: &str,
        data: &Value,
        action: Action<'_>,
        timeout: Duration,
    ) -> Result<Option<Box<RawValue>>, ClientError> {
        let shared = &self.inner.shared;
        let id = self.inner.ids.next();
        let answer = shared.expect(id)?;
        if let Err(e) = shared.send(wire::invoke(Some(&id), function_id, data, action)) {
            shared.forget(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => reply.map_err(ClientError::from),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                shared.forget(&id);
                Err(ClientError::Timeout(timeout))
            }
        }
    }
}

/// Socket buffers. tungstenite zeroes its read buffer up to this size before
/// each read, so the 128 KiB default costs a large memset per read; frames here
/// are small, and larger messages still arrive whole (they just take more reads).
const SOCKET_BUFFER: usize = 16 << 10;

/// Opens the socket (Nagle off: frames are small and latency matters) and
/// reads the engine's first frame.
async fn handshake(url: &str, token: Option<&str>) -> Result<(Socket, Uuid), ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let config = WebSocketConfig::default()
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER);
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::connect(url, e))?;
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::connect(url, "the token is not a valid header value"))?;
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
            value,
        );
    }
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| ClientError::connect(url, e))?;
    loop {
        let text = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(ClientError::connect(url, "closed before workerregistered"));
            }
            Some(Err(e)) => return Err(ClientError::connect(url, e)),
            Some(Ok(_)) => continue,
        };
        return match wire::decode(text.as_str()) {
            Ok(FromEngine::Registered { worker_id }) => Ok((socket, worker_id)),
            Ok(FromEngine::Rejected { code, detail }) => {
                Err(ClientError::connect(url, format!("{code}: {detail}")))
            }
            Ok(other) => Err(ClientError::Protocol(format!(
                "expected workerregistered first, got {other:?}"
            ))),
            Err(e) => Err(ClientError::Protocol(format!(
                "unreadable first frame: {e}"
            ))),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connecting_to_nothing_is_a_connect_error() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ws://127.0.0.1:{port}");
        let err = Client::connect(&url).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Connect { url: u, .. } if *u == url),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_greets_times_out_as_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        // Accept the upgrade, then stay silent.
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(ws);
        });
        let options = ClientOptions {
            connect_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let err = Client::connect_with(&url, options).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Connect { reason, .. } if reason.contains("workerregistered")),
            "{err:?}"
        );
        server.abort();
    }

    #[test]
    fn default_options_match_the_sdks() {
        assert_eq!(
            ClientOptions::default().call_timeout,
            Duration::from_secs(30)
        );
    }
}
