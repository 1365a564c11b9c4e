//! The settings the registry and router read: bounds per connection, the life
//! of a call, and the socket timings. The engine's whole configuration
//! (`crate::config`) embeds them; the mesh sees nothing else of it.

use serde::Deserialize;
use std::time::Duration;

/// What the mesh is configured with.
#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    pub limits: Limits,
    pub invocation: InvocationConfig,
    pub server: ServerConfig,
}

/// Bounds that keep one bad client from hurting the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message accepted; larger ones close the socket with 1009.
    pub max_message_size: usize,
    /// Open worker connections; further upgrades are refused with 503.
    pub max_connections: usize,
    /// Calls one connection may have in flight before new ones get `too_many_pending_calls`.
    pub max_pending_calls_per_connection: usize,
    /// Bytes queued for one connection that has stopped reading before it is closed with 1013.
    pub max_outbound_queue_bytes: usize,
    /// Connections still sending their HTTP request (not yet upgraded or
    /// answered); further ones are closed at once, so half-sent requests
    /// cannot use up the engine's file descriptors.
    pub max_handshakes: usize,
    /// The same, per remote address: one client cannot take every slot.
    pub max_handshakes_per_ip: usize,
    /// Bytes the engine holds for readers, all together: frames queued for
    /// worker and realtime sockets and binary channel buffers. While spent,
    /// new calls get `engine_overloaded` and new channels and client sockets
    /// are refused.
    pub memory_budget: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvocationConfig {
    /// The engine's bound on one call's life, so a hung worker cannot hold memory forever.
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// How long a call to a function whose last worker just disconnected waits
    /// for a worker to register it again, so worker restarts stay invisible.
    #[serde(with = "humantime_serde")]
    pub rebind_grace: Duration,
    /// How long registrations wait for `engine::workers::register` to fix the
    /// connection's namespace before they are applied to `default`.
    #[serde(with = "humantime_serde")]
    pub namespace_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// On SIGINT/SIGTERM, how long in-flight calls may take before the engine exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The engine pings every connection this often.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection silent for this long (no frame, not even a pong) is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a client has to send a whole HTTP request head (the upgrade
    /// request included); a slower one is closed.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 64 << 20,
            max_connections: 10_000,
            max_pending_calls_per_connection: 10_000,
            max_outbound_queue_bytes: 256 << 20,
            max_handshakes: 1024,
            max_handshakes_per_ip: 64,
            memory_budget: 1 << 30,
        }
    }
}

impl Default for InvocationConfig {
    fn default() -> Self {
        Self {
            max_duration: Duration::from_secs(600),
            rebind_grace: Duration::from_secs(5),
            namespace_grace: Duration::from_secs(5),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            request_timeout: Duration::from_secs(10),
        }
    }
}
