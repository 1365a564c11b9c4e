//! Streams: JSON items by (stream, group, item), kept in the embedded store
//! or in a worker's custom provider, the `stream`, `stream:join` and
//! `stream:leave` trigger types, and the client WebSocket browsers join
//! groups on (iii's `iii-stream`, both halves).
//!
//! - `functions.rs`: `stream::set/get/delete/list/list_groups/list_all/send/update`
//!   with iii's result shapes and error codes;
//! - `providers.rs`: custom stream providers, `stream::<op>(<stream_name>)`
//!   functions a worker registers, called instead of the store;
//! - `watchers.rs`: the `stream` trigger type's bindings and the envelope
//!   handlers and socket clients receive;
//! - `lifecycle.rs`: the `stream:join` and `stream:leave` trigger types, and
//!   the join verdict;
//! - `hub.rs`: open client sockets and their subscriptions, the fan-out of
//!   envelopes to them (never waiting on one), the shutdown;
//! - `socket.rs`: the client listener (`[streams] listen`): handshake bounds,
//!   the auth function before the upgrade, one socket's reader and writer;
//! - `module.rs`: its `Module` impl;
//! - `local.rs`: the embedded store (`store::stream::StreamItems`) as its
//!   backend.
//!
//! Items live behind `module::StreamBackend`, which the engine root picks:
//! the embedded store, or (`[cluster] streams = "jetstream"`) a store every
//! engine of a cluster shares, whose events (writes, and `stream::send`'s)
//! are relayed to the other engines' bindings and socket clients through
//! the mesh's `Relay` (channel `stream`).
//!
//! Durability is state's: writes are applied before the reply, and a durable
//! call (the default) waits for the sync that covers it. Subscriptions live in
//! memory only.
//!
//! Architecture invariant: streams know the mesh, their store door
//! (`store::stream::StreamItems`), the update ops in `protocol::update_ops`,
//! the memory budget and `module.rs`; nothing of the engine root, the edge or
//! other modules (the cluster included). No stream lock is held across an
//! await or while calling the mesh.

mod functions;
mod hub;
mod lifecycle;
mod local;
pub(crate) mod module;
mod providers;
mod socket;
mod watchers;

use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::module::StreamBackend;
pub(crate) use module::StreamsModule;

/// iii's port for the streams client socket.
pub const DEFAULT_STREAMS_PORT: u16 = 3112;

/// The relay channel an event goes out on to other engines' bindings and
/// socket clients.
const RELAY_CHANNEL: &str = "stream";

/// `[streams]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// Whether a write's reply waits until it is on disk; a call's `durable` overrides it.
    pub durable: bool,
    /// Largest item, as JSON bytes; larger ones are refused (`STREAM_SET_ERROR`,
    /// `STREAM_UPDATE_ERROR`).
    pub max_item_bytes: usize,
    /// Most ops one `stream::update` may carry.
    pub max_update_ops: usize,
    /// How long a binding's condition function may take; a slower one skips the event.
    #[serde(with = "humantime_serde")]
    pub condition_timeout: Duration,
    /// How long a custom provider (`stream::<op>(<name>)`) may take to answer.
    #[serde(with = "humantime_serde")]
    pub provider_timeout: Duration,
    /// Where the client socket is served (path `/`). Loopback by default: it
    /// is a public edge, opened to the network on purpose. Port 0 picks one.
    pub listen: SocketAddr,
    /// TLS on the client socket (`wss://`).
    pub tls: Option<crate::net::TlsConfig>,
    /// Called on every upgrade with `{headers, path, query_params, addr}`;
    /// its `{context}` is the connection's context. If it fails, refuses or
    /// answers nothing, the upgrade is refused (iii would let it through).
    pub auth_function_id: Option<String>,
    /// How long the auth function may take; a slower one refuses the upgrade (503).
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// How long each `stream:join` handler may take; a slower one refuses the join.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Open client sockets; further upgrades get 503.
    pub max_connections: usize,
    /// Subscriptions one socket may hold; a join past it gets an `error` event.
    pub max_subscriptions_per_connection: usize,
    /// Largest client message; a larger one closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Frames queued for one client before it counts as a slow consumer (closed with 1013).
    pub outbound_messages: usize,
    /// Bytes queued for one client before it counts as a slow consumer.
    pub outbound_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent this long (no frame, not even a pong) is closed with 1001.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            durable: true,
            max_item_bytes: 1 << 20,
            max_update_ops: 1024,
            condition_timeout: Duration::from_secs(30),
            provider_timeout: Duration::from_secs(30),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_STREAMS_PORT)),
            tls: None,
            auth_function_id: None,
            auth_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_subscriptions_per_connection: 256,
            max_message_bytes: 64 << 10,
            outbound_messages: 1024,
            outbound_bytes: 8 << 20,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl StreamsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_item_bytes", self.max_item_bytes),
            ("max_update_ops", self.max_update_ops),
            ("max_connections", self.max_connections),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            ("max_message_bytes", self.max_message_bytes),
            ("outbound_messages", self.outbound_messages),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("streams.{name} must be greater than 0"));
        }
        let durations = [
            ("condition_timeout", self.condition_timeout),
            ("provider_timeout", self.provider_timeout),
            ("auth_timeout", self.auth_timeout),
            ("join_timeout", self.join_timeout),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("streams.{name} must be greater than 0"));
        }
        if self.outbound_bytes < self.max_item_bytes {
            // A sync of one item must fit in the queue.
            return Err("streams.outbound_bytes must be at least streams.max_item_bytes".into());
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return Err(
                "streams.idle_timeout must be longer than streams.ping_interval (> 0)".into(),
            );
        }
        if self
            .auth_function_id
            .as_deref()
            .is_some_and(|f| f.trim().is_empty())
        {
            return Err("streams.auth_function_id must name a function".into());
        }
        Ok(())
    }
}

/// The module's handle, shared by its functions, its trigger types and the socket.
#[derive(Clone)]
pub(crate) struct Streams {
    items: Arc<dyn StreamBackend>,
    config: Arc<StreamsConfig>,
    watchers: watchers::Watchers,
    lifecycle: lifecycle::Lifecycle,
    hub: hub::Hub,
}
