//! Shared test harness: a real engine on an ephemeral port ([`TestEngine`]),
//! a raw WebSocket client for speaking the protocol by hand ([`RawClient`]),
//! and the waits every test uses: [`wait_until`] / [`wait_for`] for a
//! condition, [`assert_holds_for`] / [`assert_silent_for`] for the absence of
//! something, the only timed waits a test makes on purpose.
//!
//! Tests observe the engine through the protocol, `/health` or the methods
//! of [`TestEngine`]; the methods under "Engine internals" are the only code
//! in `tests/` that reads the engine's in-process state.
#![allow(dead_code)]

pub mod cli;
pub mod launcher;
pub mod nats;
pub mod otlp;
pub mod programs;
pub mod queue;
pub mod realtime;
pub mod sdk;
pub mod streams;
pub mod wait;

#[allow(unused_imports)] // not every test file starts the binary
pub use launcher::EngineProcess;
pub use wait::{POLL, wait_for, wait_until};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use qmesh::config::Config;
use qmesh::engine::{Engine, Snapshot};

/// How long a test waits for any single expected frame or condition.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long an in-process engine may take to start.
pub const START_WITHIN: Duration = Duration::from_secs(60);

/// Asserts that `cond` holds for the whole of `window` (checked every few
/// milliseconds, and at its end): that something does *not* happen can only
/// be seen over a span of time, so this wait is on purpose.
pub async fn assert_holds_for(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    loop {
        assert!(cond(), "{what}: no longer true within {window:?}");
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL.min(end - Instant::now())).await;
    }
}

/// Asserts that nothing arrives on `rx` for `window` (a sender that went
/// away counts as silence): the negative check of an event a test records.
pub async fn assert_silent_for<T: std::fmt::Debug>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    window: Duration,
    what: &str,
) {
    if let Ok(Some(v)) = tokio::time::timeout(window, rx.recv()).await {
        panic!("{what}: received {v:?} within {window:?}");
    }
}

/// An engine serving on 127.0.0.1:0 inside the test process.
pub struct TestEngine {
    pub addr: SocketAddr,
    /// `ws://127.0.0.1:<port>`
    pub url: String,
    engine: Engine,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The store's temp dir, when the test did not name one.
    _dir: Option<tempfile::TempDir>,
}

impl TestEngine {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    /// Starts with `config`; a default `data_dir` is replaced by a fresh temp
    /// dir. Returns once the engine is ready (`Engine::start` returned: the
    /// store open, every module started): the one place a test waits for an
    /// engine to start.
    pub async fn start_with(mut config: Config) -> Self {
        let mut dir = None;
        if config.data_dir == Config::default().data_dir {
            let d = tempfile::tempdir().expect("temp dir");
            config.data_dir = d.path().to_owned();
            dir = Some(d);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        // A bound, not a wait: an engine joining a cluster creates its
        // buckets (replicated, fsync'ed) and may take long on a loaded machine.
        let engine = tokio::time::timeout(START_WITHIN, Engine::start(config))
            .await
            .expect("engine starts in time")
            .expect("engine starts");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(engine.clone().serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            url: format!("ws://{addr}"),
            engine,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Starts with `config` expecting the engine to refuse, and returns why
    /// (what `qmesh serve` prints before exiting).
    pub async fn start_error(mut config: Config) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        if config.data_dir == Config::default().data_dir {
            config.data_dir = dir.path().to_owned();
        }
        match tokio::time::timeout(START_WITHIN, Engine::start(config))
            .await
            .expect("the engine answers in time")
        {
            Ok(_) => panic!("the engine started"),
            Err(e) => e.to_string(),
        }
    }

    /// Asks for a graceful shutdown without waiting for it: the engine stops
    /// accepting and lets calls in flight finish ([`TestEngine::is_draining`]).
    pub fn request_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(mut self) {
        self.request_stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("engine stops")
                .unwrap()
                .unwrap();
        }
    }

    /// `GET /health`, as an operator sees it.
    pub async fn health(&self) -> Value {
        let (_, body) = self.get("/health", None).await;
        serde_json::from_str(&body).expect("health is JSON")
    }

    /// Waits until the engine says it is cut off from NATS (`/health`: the
    /// cluster `degraded`).
    pub async fn until_cut_off_from_nats(&self) {
        wait_until("the engine sees NATS gone", WAIT, async || {
            self.health().await["cluster"]["state"] == "degraded"
        })
        .await;
    }

    /// `GET path` on the worker listener (with a bearer token if given):
    /// (status, body).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("an HTTP status");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, body.to_owned())
    }

    /// Calls in flight in the engine (`/health` `pending_invocations`).
    pub async fn pending_calls(&self) -> u64 {
        self.health().await["pending_invocations"]
            .as_u64()
            .expect("pending_invocations")
    }

    /// Connected workers (`/health` `workers`).
    pub async fn worker_count(&self) -> u64 {
        self.health().await["workers"].as_u64().expect("workers")
    }

    /// Function ids some worker provides (`/health` `functions`).
    pub async fn function_count(&self) -> u64 {
        self.health().await["functions"]
            .as_u64()
            .expect("functions")
    }

    /// A raw worker named `name` providing `functions`, returned once they are routable.
    pub async fn worker_with(&self, name: &str, functions: &[&str]) -> RawClient {
        let mut w = RawClient::worker(&self.url, name).await;
        for f in functions {
            w.register_function(f).await;
        }
        let id = w.worker_id.clone();
        wait_until("functions registered", WAIT, async || {
            functions.iter().all(|f| self.providers(f).contains(&id))
        })
        .await;
        w
    }

    /// Waits until `function_id` (namespace `default`) has exactly `n` providers.
    pub async fn wait_for_providers(&self, function_id: &str, n: usize) {
        wait_for(
            &format!("{n} providers of {function_id}"),
            WAIT,
            async || {
                let p = self.providers(function_id);
                if p.len() == n {
                    Ok(())
                } else {
                    Err(format!("{p:?}"))
                }
            },
        )
        .await
    }

    // ---- Engine internals -------------------------------------------------
    // What the protocol and /health do not show, read from the engine's
    // snapshot (what an embedder sees); the only such code in tests/.

    fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// Worker ids of the live providers of `function_id` in namespace `default`.
    pub fn providers(&self, function_id: &str) -> Vec<String> {
        self.snapshot()
            .function("default", function_id)
            .map(|f| f.providers.iter().map(Uuid::to_string).collect())
            .unwrap_or_default()
    }

    /// The function a binding (trigger id) calls, while it exists.
    pub fn bound_function(&self, binding_id: &str) -> Option<String> {
        self.snapshot()
            .bindings
            .into_iter()
            .find(|b| b.id == binding_id)
            .map(|b| b.function_id)
    }

    /// Ids of the live connections whose worker announced `name`.
    pub fn worker_ids_named(&self, name: &str) -> Vec<Uuid> {
        self.snapshot().workers_named(name)
    }

    /// The id of the one live worker named `name`.
    pub fn worker_id_named(&self, name: &str) -> Uuid {
        let ids = self.worker_ids_named(name);
        assert_eq!(ids.len(), 1, "workers named {name}: {ids:?}");
        ids[0]
    }

    /// Whether the engine still holds connection `worker_id`.
    pub fn has_worker(&self, worker_id: Uuid) -> bool {
        self.snapshot().worker(worker_id).is_some()
    }

    /// The reattach token the engine gave connection `worker_id`.
    pub fn reattach_token(&self, worker_id: Uuid) -> String {
        self.snapshot()
            .worker(worker_id)
            .expect("a live worker")
            .reattach_token
            .to_string()
    }

    /// The engine closes connection `worker_id` with `code`, as it would on
    /// an error of its own.
    pub fn close_worker(&self, worker_id: Uuid, code: u16, reason: &str) {
        assert!(
            self.engine.close_worker(worker_id, code, reason),
            "no live worker {worker_id}"
        );
    }

    /// Calls waiting for `function_id` (namespace `default`) to get a worker
    /// again, within `rebind_grace` of its last one leaving.
    pub fn calls_waiting_for(&self, function_id: &str) -> usize {
        self.snapshot().calls_waiting_for("default", function_id)
    }

    /// Ids of the trigger types some worker (or the engine) provides, any namespace.
    pub fn trigger_type_ids(&self) -> Vec<String> {
        self.snapshot()
            .trigger_types
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// How many handlers the realtime route `pattern` has; `None` if there is
    /// no such route (its last trigger went).
    pub fn route_handlers(&self, pattern: &str) -> Option<usize> {
        self.snapshot()
            .routes
            .into_iter()
            .find(|(p, _)| p == pattern)
            .map(|(_, n)| n)
    }

    /// Binary channels the engine holds (any state, until removed).
    pub fn binary_channel_count(&self) -> usize {
        self.snapshot().channels
    }

    /// `ws://<streams.listen>`: the streams client socket is its path `/`.
    pub fn streams_url(&self) -> String {
        format!("ws://{}", self.engine.streams_addr())
    }

    /// Open stream client sockets.
    pub fn stream_clients(&self) -> usize {
        self.engine.stream_clients()
    }

    /// Active bindings of `trigger_type` (any function).
    pub fn active_bindings(&self, trigger_type: &str) -> usize {
        self.snapshot()
            .bindings
            .iter()
            .filter(|b| b.trigger_type == trigger_type && b.active)
            .count()
    }

    /// Whether a graceful shutdown has begun (`/health` says `draining`, but
    /// the listener no longer accepts anyone to ask it).
    pub fn is_draining(&self) -> bool {
        self.snapshot().draining
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits until the engine lists `n` open realtime connections (of `route`,
/// if given) to worker `w` and returns their ids: an answered upgrade is
/// not yet a registered connection.
pub async fn wait_for_open_channels(
    w: &qmesh::client::Client,
    route: Option<&str>,
    n: usize,
) -> Vec<String> {
    wait_for(&format!("{n} open connections"), WAIT, async || {
        let ids = realtime::open_channels(w, route).await;
        if ids.len() == n {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await
}

/// Sends `n` copies of `function_id` with `data` (an update incrementing
/// `count`) from a client of each engine at `urls`, all at once, and returns
/// every reply's `old_value.count`, sorted: with no update lost to a race,
/// `0..n * urls.len()`.
pub async fn increments_from_each(
    urls: &[&str],
    function_id: &'static str,
    data: Value,
    n: usize,
) -> Vec<i64> {
    let racers: Vec<_> = urls
        .iter()
        .map(|url| {
            let (url, data) = (url.to_string(), data.clone());
            tokio::spawn(async move {
                let mut client = RawClient::worker(&url, "incrementer").await;
                client.calls_at_once(function_id, data, n).await
            })
        })
        .collect();
    let mut before = Vec::new();
    for racer in racers {
        let results = racer.await.expect("a racer panicked");
        before.extend(
            results
                .iter()
                .map(|r| r["old_value"]["count"].as_i64().unwrap_or(0)),
        );
    }
    before.sort_unstable();
    before
}

/// Test defaults: short namespace hold so raw clients need not announce themselves.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.invocation.namespace_grace = Duration::from_millis(50);
    c.invocation.rebind_grace = Duration::from_secs(3);
    // Tests that leave calls unanswered should not wait the production grace period.
    c.server.shutdown_grace = Duration::from_secs(2);
    // Engines run side by side: HTTP and realtime routes on free ports each.
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.realtime.listen = "127.0.0.1:0".parse().unwrap();
    c.streams.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// A worker speaking the protocol by hand.
pub struct RawClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub worker_id: String,
    pub reattach_token: String,
}

impl RawClient {
    /// Connects and reads `workerregistered`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Self::registered(ws).await
    }

    /// Connects with `Authorization: Bearer <token>` and reads `workerregistered`.
    pub async fn connect_with_token(url: &str, token: &str) -> Self {
        let ws = Self::open_with_token(url, token).await.expect("connect");
        Self::registered(ws).await
    }

    /// Opens a worker socket with a bearer token; the HTTP status when refused.
    pub async fn open_with_token(
        url: &str,
        token: &str,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect: {e}"),
        }
    }

    /// A socket already open (custom headers…); reads `workerregistered`.
    pub async fn from_socket(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self::registered(ws).await
    }

    async fn registered(mut ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        let first = next_json(&mut ws).await.expect("first frame");
        assert_eq!(first["type"], "workerregistered", "{first}");
        Self {
            ws,
            worker_id: first["worker_id"].as_str().unwrap().to_owned(),
            reattach_token: first["reattach_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Announces itself with `engine::workers::register` (void).
    pub async fn announce(&mut self, name: &str) {
        self.send(json!({"type":"invokefunction","function_id":"engine::workers::register",
            "data":{"name":name,"runtime":"rust","version":"test","pid":std::process::id(),"os":"linux"},
            "action":{"type":"void"}}))
            .await;
    }

    /// Connects and announces itself with `engine::workers::register`.
    pub async fn worker(url: &str, name: &str) -> Self {
        let mut c = Self::connect(url).await;
        c.announce(name).await;
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_owned().into()))
            .await
            .expect("send");
    }

    pub async fn register_function(&mut self, id: &str) {
        self.send(json!({"type":"registerfunction","id":id})).await;
    }

    /// Next JSON frame, or `None` when the socket closed. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Value> {
        next_json(&mut self.ws).await
    }

    /// Skips frames until one matches.
    pub async fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.recv().await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!("socket closed while waiting for {what}"),
            }
        }
    }

    /// Sends a sync call without waiting; returns its invocation id.
    pub async fn send_call(&mut self, function_id: &str, data: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(json!({"type":"invokefunction","invocation_id":id,"function_id":function_id,"data":data}))
            .await;
        id
    }

    /// Sync call; returns the `invocationresult` frame.
    pub async fn call(&mut self, function_id: &str, data: Value) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(json!({"type":"invokefunction","invocation_id":id,"function_id":function_id,"data":data})).await;
        self.recv_until("invocationresult", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == id.as_str()
        })
        .await
    }

    /// Sync call that must succeed; returns its `result`.
    pub async fn call_ok(&mut self, function_id: &str, data: Value) -> Value {
        let reply = self.call(function_id, data).await;
        assert!(reply["error"].is_null(), "{function_id}: {reply}");
        reply["result"].clone()
    }

    /// Sends `n` copies of one call at once, then reads their `n` results
    /// (each must succeed), in the order they came.
    pub async fn calls_at_once(&mut self, function_id: &str, data: Value, n: usize) -> Vec<Value> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(self.send_call(function_id, data.clone()).await);
        }
        let mut results = Vec::new();
        while results.len() < n {
            let reply = self
                .recv_until("a call's result", |v| v["type"] == "invocationresult")
                .await;
            assert!(
                ids.contains(
                    &reply["invocation_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                )
            );
            assert!(reply["error"].is_null(), "{function_id}: {reply}");
            results.push(reply["result"].clone());
        }
        results
    }

    /// Registers `function_id` and binds it to `trigger_type` with `config`
    /// under trigger id `id`.
    pub async fn bind(&mut self, id: &str, trigger_type: &str, function_id: &str, config: Value) {
        self.register_function(function_id).await;
        self.send(
            json!({"type": "registertrigger", "id": id, "trigger_type": trigger_type,
            "function_id": function_id, "config": config}),
        )
        .await;
    }

    /// The data of the next invocation of this worker (answered with null):
    /// a trigger's event.
    pub async fn next_event(&mut self) -> Value {
        self.answer_next(json!({"result": null})).await["data"].clone()
    }

    /// Asserts that no `invokefunction` reaches this worker for `window`
    /// (other frames are read and dropped): the negative check of a dispatch.
    pub async fn assert_not_invoked_for(&mut self, window: Duration, why: &str) {
        let end = Instant::now() + window;
        while let Ok(frame) = tokio::time::timeout_at(end, self.ws.next()).await {
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("engine sends JSON");
                    assert_ne!(v["type"], "invokefunction", "{why}: {v}");
                }
                Some(Ok(_)) => {}
                other => panic!("{why}: the socket ended: {other:?}"),
            }
        }
    }

    /// Reads the next `invokefunction` and answers it with `reply` (a
    /// `{"result": ..}` or `{"error": ..}` object); returns the invocation.
    pub async fn answer_next(&mut self, reply: Value) -> Value {
        let inv = self
            .recv_until("invokefunction", |v| v["type"] == "invokefunction")
            .await;
        let mut frame = json!({"type": "invocationresult",
            "invocation_id": inv["invocation_id"], "function_id": inv["function_id"]});
        if let (Some(frame), Value::Object(reply)) = (frame.as_object_mut(), reply) {
            frame.extend(reply);
        }
        self.send(frame).await;
        inv
    }

    /// Answers every `invokefunction` with `handler` until the socket
    /// closes, with no deadline on the next frame: a worker serving in the
    /// background while a test cuts things off around it.
    pub async fn serve_until_closed(mut self, handler: impl Fn(&Value) -> Value) {
        while let Some(Ok(msg)) = self.ws.next().await {
            let Message::Text(t) = msg else { continue };
            let inv: Value = serde_json::from_str(&t).expect("engine sends JSON");
            if inv["type"] != "invokefunction" {
                continue;
            }
            let result = handler(&inv["data"]);
            let frame = json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
                "function_id":inv["function_id"],"result":result});
            if self
                .ws
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Serves every `invokefunction` it receives with `handler` until `n` were answered.
    pub async fn serve(&mut self, n: usize, handler: impl Fn(&Value) -> Value) {
        for _ in 0..n {
            let inv = self
                .recv_until("invokefunction", |v| v["type"] == "invokefunction")
                .await;
            let result = handler(&inv["data"]);
            self.send(
                json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
                "function_id":inv["function_id"],"result":result}),
            )
            .await;
        }
    }
}

async fn next_json(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame");
        match msg {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(t))) => {
                return Some(serde_json::from_str(&t).expect("engine sends JSON"));
            }
            Some(Ok(_)) => continue,
        }
    }
}

// ---- HTTP trigger routes (tests/http.rs) ---------------------------------

impl TestEngine {
    /// Where the engine serves HTTP trigger routes (`[http] listen`, resolved).
    pub fn http_addr(&self) -> SocketAddr {
        self.engine.http_addr()
    }

    /// `ws://` address of the realtime-route listener (`[realtime] listen`).
    pub fn realtime_url(&self) -> String {
        format!("ws://{}", self.engine.realtime_addr())
    }

    /// HTTP trigger routes the engine serves now.
    pub fn http_routes(&self) -> usize {
        self.engine.http_routes()
    }
}

// ---- Extra worker listeners (tests/security.rs) --------------------------

impl TestEngine {
    /// `ws://` address of the `[[listeners]]` entry named `name`.
    pub fn listener_url(&self, name: &str) -> String {
        let addr = self
            .engine
            .listener_addr(name)
            .unwrap_or_else(|| panic!("no listener named {name}"));
        format!("ws://{addr}")
    }
}

// ---- TLS (tests/tls.rs) ---------------------------------------------------

impl TestEngine {
    /// Re-reads every listener's certificate (what SIGHUP does).
    pub fn reload_tls(&self) -> Result<(), String> {
        self.engine.reload_tls().map_err(|e| e.to_string())
    }
}

/// One sync call from `caller`, served by `exec` with `reply` (`{"result":
/// ..}` or `{"error": ..}`); returns the caller's `invocationresult`.
pub async fn round_trip(
    caller: &mut RawClient,
    exec: &mut RawClient,
    function_id: &str,
    data: Value,
    reply: Value,
) -> Value {
    let id = caller.send_call(function_id, data).await;
    exec.answer_next(reply).await;
    caller
        .recv_until("invocationresult", |v| v["invocation_id"] == id.as_str())
        .await
}
