//! Realtime channels: browsers and apps open a WebSocket on a route, and
//! ordinary worker functions handle its lifecycle. The engine owns every
//! socket; workers only see invocations and the `channel::*` engine functions.
//!
//! - [`routes`]: the `websocket` trigger config, path patterns, the route table.
//! - [`upgrade`]: matching, origin check and auth before the upgrade, opening data.
//! - [`connection`]: one socket's reader, writer and in-order handler loop.
//! - [`dispatch`]: the payload every handler gets, message routing, replies.
//! - [`topics`]: pub/sub fan-out that never waits on one client.
//! - [`persist`]: open connections in the store, and disconnects after a crash.
//!
//! Invariants: a connection's disconnect handler runs once, after the
//! handlers still running for it have finished; no hub lock is held across
//! an await; sends never block (a full client queue closes that client).

pub(crate) mod connection;
pub(crate) mod dispatch;
mod functions;
mod module;
pub(crate) mod persist;
pub(crate) mod routes;
pub(crate) mod topics;
pub(crate) mod upgrade;

pub(crate) use module::RealtimeModule;

use axum::extract::ws::Message;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::budget::MemoryBudget;
use crate::mesh::state::Binding;
use crate::mesh::state::TriggerTypeHandler;
use crate::protocol::ErrorBody;
use crate::protocol::codes::{self, close};
use crate::queue::Queues;
use crate::store::realtime::ConnRows;
pub use routes::TRIGGER_TYPE;

/// `[realtime]`: defaults for every route; a route's `route_options` override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Where browsers connect: its own listener, not the worker listener, so
    /// exposing routes to the public never exposes the worker port.
    pub listen: std::net::SocketAddr,
    /// TLS on that listener (`wss://`).
    pub tls: Option<crate::net::TlsConfig>,
    /// Open client connections; further upgrades are refused with 503.
    pub max_connections: usize,
    /// Largest client message; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// Frames queued for one client before it counts as a slow consumer (closed with 1013).
    pub outbound_messages: usize,
    /// Bytes queued for one client before it counts as a slow consumer.
    pub outbound_bytes: usize,
    /// Client messages waiting for their handler before the socket stops being read.
    pub inbound_messages: usize,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent this long (no frame, not even a pong) is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long one handler may take before the client gets an error reply.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// How long the auth function may take before the upgrade is refused.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// After a close, how long handlers still running may take before disconnect fires anyway.
    #[serde(with = "humantime_serde")]
    pub disconnect_wait: Duration,
    /// Largest per-connection state (`channel::set_state`), as JSON bytes.
    pub max_state_bytes: usize,
    /// Longest lifetime `channel::issue_ticket` grants.
    #[serde(with = "humantime_serde")]
    pub max_ticket_ttl: Duration,
    /// The durable queue that carries disconnects owed after a crash.
    pub restart_queue: String,
}

/// Next to iii's HTTP (3111) and streams (3112) ports.
pub const DEFAULT_REALTIME_PORT: u16 = 3113;

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_REALTIME_PORT)),
            tls: None,
            max_connections: 100_000,
            max_message_bytes: 1 << 20,
            outbound_messages: 256,
            outbound_bytes: 4 << 20,
            inbound_messages: 64,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            handler_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(10),
            disconnect_wait: Duration::from_secs(5),
            max_state_bytes: 64 << 10,
            max_ticket_ttl: Duration::from_secs(300),
            restart_queue: "realtime".into(),
        }
    }
}

impl RealtimeConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections),
            ("max_message_bytes", self.max_message_bytes),
            ("outbound_messages", self.outbound_messages),
            ("inbound_messages", self.inbound_messages),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("realtime.{name} must be greater than 0"));
        }
        if self.outbound_bytes < self.max_message_bytes {
            return Err(
                "realtime.outbound_bytes must be at least realtime.max_message_bytes".into(),
            );
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return Err(
                "realtime.idle_timeout must be longer than realtime.ping_interval (> 0)".into(),
            );
        }
        if self.restart_queue.trim().is_empty() {
            return Err("realtime.restart_queue must name a queue".into());
        }
        Ok(())
    }
}

/// Who or what ended a connection; handlers get it in `reason.by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Server,
    SlowConsumer,
    Idle,
    EngineShutdown,
    EngineRestart,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Server => "server",
            ClosedBy::SlowConsumer => "slow_consumer",
            ClosedBy::Idle => "idle",
            ClosedBy::EngineShutdown => "engine_shutdown",
            ClosedBy::EngineRestart => "engine_restart",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloseReason {
    pub code: u16,
    pub text: String,
    pub by: ClosedBy,
}

impl CloseReason {
    pub fn new(code: u16, text: impl Into<String>, by: ClosedBy) -> Self {
        Self {
            code,
            text: text.into(),
            by,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "text": self.text, "by": self.by.as_str() })
    }
}

/// Why a frame could not be queued for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("channel is closed")]
    Closed,
    #[error("client's outbound queue is full ({0}); the channel was closed with 1013")]
    Backpressure(&'static str),
}

impl From<SendError> for ErrorBody {
    fn from(e: SendError) -> Self {
        let code = match e {
            SendError::Closed => codes::CHANNEL_CLOSED,
            SendError::Backpressure(_) => codes::CHANNEL_BACKPRESSURE,
        };
        ErrorBody::new(code, e.to_string())
    }
}

/// Route options resolved against `[realtime]`, fixed for a connection's life.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub outbound_messages: usize,
    pub outbound_bytes: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub routing_keys: Vec<String>,
    pub correlation_key: String,
    pub concurrent: bool,
    pub max_in_flight: usize,
    pub close_on_handler_error: bool,
    /// The route's auth default for handlers without their own `auth`.
    pub auth: routes::AuthMode,
}

/// What changes during a connection's life (guarded by one small lock).
#[derive(Debug, Default)]
struct Live {
    auth: Option<Value>,
    state: Value,
    topics: BTreeSet<String>,
}

/// One client connection, as handlers and engine functions see it.
#[derive(Debug)]
pub struct Client {
    pub id: String,
    /// The route pattern (`/ws/chat/:room`).
    pub route: String,
    pub path: String,
    pub params: Map<String, Value>,
    /// The query with secret parameters removed.
    pub query: Map<String, Value>,
    pub opening_data: Map<String, Value>,
    pub connected_at: u64,
    pub limits: Arc<Limits>,
    live: Mutex<Live>,
    outbox: mpsc::Sender<Message>,
    queued_bytes: AtomicUsize,
    /// The engine-wide budget the queued bytes also count against.
    budget: Arc<MemoryBudget>,
    closing: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
    /// Numbers the events of this connection, in arrival order.
    seq: AtomicU64,
    /// Whether the store holds a row for it ([`persist`]).
    recorded: AtomicBool,
}

/// The outbound side's receiving end, handed to the socket writer.
pub struct Outbox {
    pub rx: mpsc::Receiver<Message>,
}

/// Everything needed to make a channel (filled in by the upgrade).
pub struct ClientInit {
    pub route: String,
    pub path: String,
    pub params: Map<String, Value>,
    pub query: Map<String, Value>,
    pub opening_data: Map<String, Value>,
    pub auth: Option<Value>,
    pub limits: Arc<Limits>,
    pub budget: Arc<MemoryBudget>,
}

impl Client {
    pub fn new(init: ClientInit) -> (Arc<Self>, Outbox) {
        let (tx, rx) = mpsc::channel(init.limits.outbound_messages);
        let ch = Arc::new(Self {
            id: uuid::Uuid::now_v7().to_string(),
            route: init.route,
            path: init.path,
            params: init.params,
            query: init.query,
            opening_data: init.opening_data,
            connected_at: crate::queue::now_ms(),
            limits: init.limits,
            live: Mutex::new(Live {
                auth: init.auth,
                state: Value::Object(Map::new()),
                topics: BTreeSet::new(),
            }),
            outbox: tx,
            queued_bytes: AtomicUsize::new(0),
            budget: init.budget,
            closing: CancellationToken::new(),
            reason: Mutex::new(None),
            seq: AtomicU64::new(0),
            recorded: AtomicBool::new(false),
        });
        (ch, Outbox { rx })
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The `channel` object of every handler payload and of `channel::get`.
    pub fn snapshot(&self) -> Value {
        let live = self.live();
        json!({
            "channel_id": self.id,
            "route": self.route,
            "path": self.path,
            "params": self.params,
            "query": self.query,
            "opening_data": self.opening_data,
            "auth": live.auth.as_ref().map(|c| json!({ "context": c })),
            "state": live.state,
            "topics": live.topics,
            "connected_at": self.connected_at,
        })
    }

    pub fn is_authenticated(&self) -> bool {
        self.live().auth.is_some()
    }

    pub fn set_auth(&self, context: Option<Value>) {
        self.live().auth = context;
    }

    pub fn state(&self) -> Value {
        self.live().state.clone()
    }

    pub fn set_state(&self, state: Value) {
        self.live().state = state;
    }

    pub fn topics(&self) -> Vec<String> {
        self.live().topics.iter().cloned().collect()
    }

    fn add_topic(&self, topic: &str) -> bool {
        self.live().topics.insert(topic.to_owned())
    }

    fn remove_topic(&self, topic: &str) -> bool {
        self.live().topics.remove(topic)
    }

    /// Queues one frame without waiting. A full queue closes the channel (1013).
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        if self.is_closing() {
            return Err(SendError::Closed);
        }
        let len = message_len(&msg);
        // Counted before it is queued: the writer may send it, and give the
        // bytes back, before this thread runs another line.
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
        self.budget.charge(len);
        let full = if queued > self.limits.outbound_bytes {
            Some("bytes")
        } else {
            match self.outbox.try_send(msg) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some("messages"),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    self.budget.release(len);
                    return Err(SendError::Closed);
                }
            }
        };
        match full {
            None => Ok(()),
            Some(what) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.budget.release(len);
                tracing::warn!(channel_id = %self.id, route = %self.route, limit = what, "client is not reading; closing it as a slow consumer");
                self.close(CloseReason::new(
                    close::TRY_AGAIN_LATER,
                    "slow consumer",
                    ClosedBy::SlowConsumer,
                ));
                Err(SendError::Backpressure(what))
            }
        }
    }

    pub fn send_json(&self, v: &Value) -> Result<(), SendError> {
        self.send(Message::Text(v.to_string().into()))
    }

    /// Called by the writer once a frame is on its way.
    fn sent(&self, msg: &Message) {
        let len = message_len(msg);
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        self.budget.release(len);
    }

    /// Starts closing. The first reason wins; later calls change nothing.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        self.closing.cancel();
        true
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn message_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Frames still queued when the client goes were never sent: their bytes
/// leave the engine's budget with it.
impl Drop for Client {
    fn drop(&mut self) {
        self.budget.release(*self.queued_bytes.get_mut());
    }
}

/// A one-use upgrade ticket (`channel::issue_ticket`).
#[derive(Debug)]
struct Ticket {
    route: String,
    context: Value,
    expires: Instant,
}

#[derive(Default)]
struct Tables {
    channels: HashMap<String, Arc<Client>>,
    /// topic → subscribed channel ids.
    topics: HashMap<String, HashSet<String>>,
    tickets: HashMap<String, Ticket>,
}

/// The registry of open client connections, topics and tickets.
#[derive(Clone)]
pub struct Realtime {
    inner: Arc<HubInner>,
}

struct HubInner {
    tables: Mutex<Tables>,
    /// Routes, made of the active `websocket` bindings. Changed only by the
    /// mesh (under its lock) through [`TriggerTypeHandler`]; never held while
    /// calling into the mesh.
    routes: Mutex<routes::RouteTable>,
    /// The engine-wide budget client outboxes count against.
    budget: Arc<MemoryBudget>,
    /// Where disconnects owed after a crash are queued.
    queues: Option<Queues>,
    /// Open-connection rows. Released at shutdown so the store can close with the queue.
    rows: Mutex<Option<ConnRows>>,
    config: RealtimeConfig,
    shutting_down: AtomicBool,
    /// Woken when the last open connection leaves (shutdown waits on it).
    emptied: tokio::sync::Notify,
}

impl Realtime {
    pub fn new(
        config: RealtimeConfig,
        rows: Option<ConnRows>,
        queues: Option<Queues>,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                tables: Mutex::new(Tables::default()),
                routes: Mutex::new(routes::RouteTable::default()),
                budget,
                queues,
                rows: Mutex::new(rows),
                config,
                shutting_down: AtomicBool::new(false),
                emptied: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &RealtimeConfig {
        &self.inner.config
    }

    pub(crate) fn rows(&self) -> Option<ConnRows> {
        self.inner
            .rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The route table (a short critical section: never await or call the mesh while holding it).
    pub(crate) fn routes(&self) -> MutexGuard<'_, routes::RouteTable> {
        self.inner.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn budget(&self) -> &Arc<MemoryBudget> {
        &self.inner.budget
    }

    pub(crate) fn queues(&self) -> Option<&Queues> {
        self.inner.queues.as_ref()
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.inner.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, channel_id: &str) -> Option<Arc<Client>> {
        self.tables().channels.get(channel_id).cloned()
    }

    pub fn open_count(&self) -> usize {
        self.tables().channels.len()
    }

    /// Open channels, optionally only those of `route` or subscribed to `topic`.
    /// Open connections per route pattern (routes without any are absent).
    pub fn connections_by_route(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for c in self.tables().channels.values() {
            *counts.entry(c.route.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn list(&self, route: Option<&str>, topic: Option<&str>, limit: usize) -> Vec<Arc<Client>> {
        let t = self.tables();
        let mut out: Vec<Arc<Client>> = match topic {
            Some(topic) => t
                .topics
                .get(topic)
                .into_iter()
                .flatten()
                .filter_map(|id| t.channels.get(id).cloned())
                .collect(),
            None => t.channels.values().cloned().collect(),
        };
        drop(t);
        out.retain(|c| route.is_none_or(|r| c.route == r));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.truncate(limit);
        out
    }

    fn insert(&self, ch: Arc<Client>) {
        self.tables().channels.insert(ch.id.clone(), ch);
    }

    /// Forgets a channel and its subscriptions (after its disconnect ran).
    fn remove(&self, ch: &Client) {
        let topics = ch.topics();
        let mut t = self.tables();
        t.channels.remove(&ch.id);
        if t.channels.is_empty() {
            self.inner.emptied.notify_waiters();
        }
        for topic in topics {
            if let Some(set) = t.topics.get_mut(&topic) {
                set.remove(&ch.id);
                if set.is_empty() {
                    t.topics.remove(&topic);
                }
            }
        }
    }

    /// Issues a one-use ticket for `route`, valid for `ttl`.
    pub fn issue_ticket(&self, route: &str, context: Value, ttl: Duration) -> String {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut t = self.tables();
        t.tickets.retain(|_, tk| tk.expires > now);
        t.tickets.insert(
            ticket.clone(),
            Ticket {
                route: route.to_owned(),
                context,
                expires: now + ttl,
            },
        );
        ticket
    }

    /// Takes a ticket for `route`: it is gone after this call, valid or not.
    pub fn take_ticket(&self, ticket: &str, route: &str) -> Option<Value> {
        let tk = self.tables().tickets.remove(ticket)?;
        (tk.route == route && tk.expires > Instant::now()).then_some(tk.context)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Clean shutdown: closes every client with 1001 and waits (at most
    /// `within`) until each one's disconnect handler has run.
    pub async fn shutdown(&self, within: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let open: Vec<Arc<Client>> = self.tables().channels.values().cloned().collect();
        if !open.is_empty() {
            tracing::info!(
                channels = open.len(),
                "closing realtime channels; running their disconnect handlers"
            );
        }
        for ch in &open {
            ch.close(CloseReason::new(
                close::GOING_AWAY,
                "engine shutting down",
                ClosedBy::EngineShutdown,
            ));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let emptied = self.inner.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.open_count() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                break;
            }
        }
        let left = self.open_count();
        self.inner
            .rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if left > 0 {
            tracing::warn!(
                channels = left,
                "disconnect handlers still running at exit; they will run after the next start"
            );
        }
    }
}

/// The `websocket` trigger type: a binding adds a handler to its route.
impl TriggerTypeHandler for Realtime {
    fn bind(&self, binding: &Binding) -> Result<(), ErrorBody> {
        self.routes().bind(binding)
    }

    fn unbind(&self, binding_id: &str) {
        self.routes().unbind(binding_id);
    }
}
