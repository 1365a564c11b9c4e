//! Shared test harness: a real engine on an ephemeral port, and a raw
//! WebSocket client for speaking the protocol by hand.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use qmesh::config::Config;
use qmesh::engine::{Engine, Snapshot};

/// How long a test waits for any single expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// An engine serving on 127.0.0.1:0 inside the test process.
pub struct TestEngine {
    pub addr: SocketAddr,
    pub url: String,
    pub engine: Engine,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// The store's temp dir, when the test did not name one.
    _dir: Option<tempfile::TempDir>,
}

impl TestEngine {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    /// Starts with `config`; a default `data_dir` is replaced by a fresh temp dir.
    /// Returns once the engine is ready (store open, every module started).
    pub async fn start_with(mut config: Config) -> Self {
        let mut dir = None;
        if config.data_dir == Config::default().data_dir {
            let d = tempfile::tempdir().expect("temp dir");
            config.data_dir = d.path().to_owned();
            dir = Some(d);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let engine = Engine::start(config).await.expect("engine starts");
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

    /// A consistent picture of the engine's workers, functions, bindings and calls.
    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// The id of the (first) open realtime connection on route `pattern`.
    pub fn realtime_connection_on(&self, pattern: &str) -> String {
        self.snapshot()
            .realtime_connections
            .into_iter()
            .find(|(_, route)| route == pattern)
            .unwrap_or_else(|| panic!("no open connection on {pattern}"))
            .0
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("engine stops")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn health(&self) -> Value {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(
                format!(
                    "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        let json = body.split("\r\n\r\n").nth(1).expect("http body");
        serde_json::from_str(json).expect("health is JSON")
    }

    /// A raw worker named `name` providing `functions`, returned once they are routable.
    pub async fn worker_with(&self, name: &str, functions: &[&str]) -> RawClient {
        let mut w = RawClient::worker(&self.url, name).await;
        for f in functions {
            w.register_function(f).await;
        }
        let wanted: Vec<String> = functions.iter().map(|f| f.to_string()).collect();
        let id = w.worker_id.clone();
        self.until("functions registered", move |m| {
            wanted.iter().all(|f| {
                m.function("default", f)
                    .is_some_and(|fun| fun.providers.iter().any(|p| p.to_string() == id))
            })
        })
        .await;
        w
    }

    /// Polls until `check` holds on the engine (registrations are asynchronous).
    pub async fn until(&self, what: &str, check: impl Fn(&Snapshot) -> bool) {
        let start = std::time::Instant::now();
        while !check(&self.snapshot()) {
            assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Test defaults: short namespace hold so raw clients need not announce themselves.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.invocation.namespace_grace = Duration::from_millis(50);
    c.invocation.rebind_grace = Duration::from_secs(3);
    // Tests that leave calls unanswered should not wait the production grace period.
    c.server.shutdown_grace = Duration::from_secs(2);
    // Engines run side by side: HTTP trigger routes on a free port each.
    c.http.listen = "127.0.0.1:0".parse().unwrap();
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
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let first = next_json(&mut ws).await.expect("first frame");
        assert_eq!(first["type"], "workerregistered", "{first}");
        Self {
            ws,
            worker_id: first["worker_id"].as_str().unwrap().to_owned(),
            reattach_token: first["reattach_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Connects and announces itself with `engine::workers::register`.
    pub async fn worker(url: &str, name: &str) -> Self {
        let mut c = Self::connect(url).await;
        c.send(json!({"type":"invokefunction","function_id":"engine::workers::register",
            "data":{"name":name,"runtime":"rust","version":"test","pid":std::process::id(),"os":"linux"},
            "action":{"type":"void"}}))
            .await;
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
pub mod programs;
pub mod sdk;

/// A `qmesh` process a test started; killed when dropped, so a failing
/// test leaves no engine behind (holding the harness's output open).
pub struct EngineProcess(std::process::Child);

impl std::ops::Deref for EngineProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for EngineProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real `qmesh` binary on an ephemeral port with its store in
/// `data_dir` (for tests that kill -9 it); returns the process and its URL.
pub fn start_binary(data_dir: &std::path::Path) -> (EngineProcess, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qmesh"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start qmesh");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .expect("ws:// in the first line")
        .to_owned();
    (EngineProcess(child), url)
}
