//! The network edge of the worker listener.
//!
//! | path | what |
//! |---|---|
//! | `/` | the worker WebSocket ([`worker_socket`]) |
//! | `/otel` | SDK telemetry sockets, relayed to whoever takes telemetry ([`otel`]) |
//! | `/health` | JSON health and counts ([`health`]) |
//! | `/metrics` | Prometheus / OpenMetrics text ([`metrics`]) |
//!
//! Modules mount their own paths beside these (binary channel sockets,
//! realtime routes); the engine root merges them into one router and serves
//! it with `crate::net::serve`.
//!
//! Architecture invariant: the edge knows the mesh and the wire protocol; it
//! knows no module and nothing of the store.

pub(crate) mod auth;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod otel;
pub(crate) mod worker_socket;

use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::mesh::Mesh;
use crate::net::Handshakes;

/// The modules' parts of `/health` (see `Module::health`), gathered by the
/// engine root: the edge knows no module.
pub(crate) type HealthParts = Arc<dyn Fn() -> Vec<(&'static str, serde_json::Value)> + Send + Sync>;

/// The text of `/metrics`, gathered by the engine root from the mesh and
/// every module at scrape time.
pub(crate) type MetricsSource =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, String> + Send + Sync>;

/// What every request handler of a worker listener can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub mesh: Mesh,
    pub health: HealthParts,
    pub metrics: MetricsSource,
    /// One permit per open worker or telemetry socket, shared by every
    /// worker listener (`limits.max_connections`).
    pub connection_slots: Arc<Semaphore>,
    /// How this listener admits connections.
    pub policy: Arc<auth::ListenerPolicy>,
}

/// The permits of `limits.max_connections`, for [`router`].
pub(crate) fn connection_slots(mesh: &Mesh) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(mesh.config().limits.max_connections))
}

/// A worker listener's own paths.
pub(crate) fn router(
    mesh: &Mesh,
    (health, metrics): (HealthParts, MetricsSource),
    connection_slots: Arc<Semaphore>,
    policy: Arc<auth::ListenerPolicy>,
) -> Router {
    let state = AppState {
        health,
        metrics,
        connection_slots,
        policy,
        mesh: mesh.clone(),
    };
    Router::new()
        .route("/", get(worker_socket::upgrade))
        .route("/otel", get(otel::upgrade))
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::metrics))
        .with_state(state)
}

/// The worker listeners' handshake limits (`server.request_timeout`,
/// `limits.max_handshakes`, `limits.max_handshakes_per_ip`).
pub(crate) fn handshakes(mesh: &Mesh) -> Handshakes {
    let c = mesh.config();
    Handshakes {
        timeout: c.server.request_timeout,
        max: c.limits.max_handshakes,
        max_per_ip: c.limits.max_handshakes_per_ip,
    }
}
