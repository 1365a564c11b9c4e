//! The network edge of the worker listener.
//!
//! | path | what |
//! |---|---|
//! | `/` | the worker WebSocket ([`worker_socket`]) |
//! | `/otel` | SDK telemetry sockets, accepted and discarded ([`otel`]) |
//! | `/health` | JSON health and counts ([`health`]) |
//!
//! Modules mount their own paths beside these (binary channel sockets,
//! realtime routes); the engine root merges them into one router and hands
//! it to [`serve`].
//!
//! Architecture invariant: the edge knows the mesh and the wire protocol; it
//! knows no module and nothing of the store.

pub(crate) mod health;
pub(crate) mod otel;
pub(crate) mod worker_socket;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::mesh::Mesh;

/// What every request handler of the worker listener can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub mesh: Mesh,
    /// One permit per open worker connection (`limits.max_connections`).
    pub connection_slots: Arc<Semaphore>,
}

/// The worker listener's own paths.
pub(crate) fn router(mesh: &Mesh) -> Router {
    let state = AppState {
        connection_slots: Arc::new(Semaphore::new(mesh.config().limits.max_connections)),
        mesh: mesh.clone(),
    };
    Router::new()
        .route("/", get(worker_socket::upgrade))
        .route("/otel", get(otel::upgrade))
        .route("/health", get(health::health))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting and returns (sockets already upgraded live on).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Calls are small frames answered at once: Nagle's algorithm would hold
    // a reply back until the previous frame is acknowledged (up to ~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
