//! `[cluster]`: which NATS cluster this engine joins, under which names.

use serde::Deserialize;
use std::time::Duration;

/// `[cluster]` (or `qmesh serve --cluster nats://…`). Off while `urls` is
/// empty: the engine is alone, on its embedded store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:4222`); any one is enough,
    /// the client learns the others from the server.
    pub urls: Vec<String>,
    /// The qmesh cluster's name: engines with the same name on one NATS
    /// cluster form one mesh. In subjects and bucket names, so
    /// `[A-Za-z0-9_-]` only.
    pub name: String,
    /// This engine's id in the cluster (`[A-Za-z0-9_-]`). Absent: a fresh
    /// one per start. Give a stable one so a restarted engine clears what
    /// its previous run announced.
    pub engine_id: Option<String>,
    /// Replicas of the cluster's JetStream buckets and streams (3 on a
    /// 3-node NATS cluster; 1 on a single server).
    pub replicas: usize,
    /// Where `Enqueue` calls and `queue::enqueue` go: `local` (each engine's
    /// embedded store, the default while JetStream queues lack most operator
    /// functions) or `jetstream` (the cluster's replicated job stream, run by
    /// any engine with a worker for the function).
    pub queues: QueueBackend,
    /// Where `state::*` values live: `local` (each engine's embedded store,
    /// the default: no NATS round trip per read or write) or `jetstream`
    /// (one KV bucket shared by every engine).
    pub state: StateBackendKind,
    /// With `queues = "jetstream"`: how long an idempotency key is
    /// remembered (the job stream's duplicate window).
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// How often this engine tells the others it is alive (core NATS).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long another engine may go unheard before it is declared dead
    /// and its functions leave this engine's mesh. More than `heartbeat`
    /// (a few beats, so one late beat is not a death).
    #[serde(with = "humantime_serde")]
    pub engine_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    #[default]
    Local,
    Jetstream,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendKind {
    #[default]
    Local,
    Jetstream,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            name: "qmesh".to_owned(),
            engine_id: None,
            replicas: 3,
            queues: QueueBackend::Local,
            state: StateBackendKind::Local,
            idempotency_window: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(1),
            engine_timeout: Duration::from_secs(4),
        }
    }
}

impl ClusterConfig {
    pub(crate) fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// Whether `state::*` values are the cluster's JetStream KV bucket.
    pub(crate) fn jetstream_state(&self) -> bool {
        self.enabled() && self.state == StateBackendKind::Jetstream
    }

    /// Whether `Enqueue` calls go to the cluster's JetStream queues.
    pub(crate) fn jetstream_queues(&self) -> bool {
        self.enabled() && self.queues == QueueBackend::Jetstream
    }
}

/// Whether `s` may be part of a NATS subject token and a bucket name.
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
