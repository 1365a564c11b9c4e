//! The network edge: one listener for everything.
//!
//! | path | what |
//! |---|---|
//! | `/` | the worker WebSocket ([`worker_socket`]) |
//! | `/otel` | SDK telemetry sockets, accepted and discarded ([`otel`]) |
//! | `/health` | JSON health and counts ([`health`]) |
//! | `/ws/channels/{id}` | the two ends of a binary channel ([`channel_socket`]) |
//! | any other path | a realtime route, if a `websocket` trigger declares it ([`crate::realtime`]) |
//!
//! [`run`] serves until `shutdown` resolves, then stops accepting, lets calls
//! in flight finish within `server.shutdown_grace`, closes every worker with
//! 1001 and returns.

pub mod channel_socket;
pub mod health;
pub mod otel;
pub mod worker_socket;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::mesh::{Mesh, events};
use crate::protocol::codes::close;
use crate::queue::Queues;
use crate::realtime::Realtime;
use crate::store::Store;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub mesh: Mesh,
    /// One permit per open worker connection (`limits.max_connections`).
    pub connection_slots: Arc<Semaphore>,
}

/// How often in-flight calls are checked against the engine's bound on a call's life.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Serves the engine on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mesh = Mesh::new(config);
    serve(listener, mesh, shutdown, |_| {}).await
}

/// Like [`run`], with a mesh the caller keeps a handle on (tests, embedding).
/// `ready` is called with the address once the store is open and the
/// listener is about to accept (the moment to tell the world).
pub async fn serve(
    listener: TcpListener,
    mesh: Mesh,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    mesh.register_engine_trigger_types();
    attach_stored_services(&mesh)?;
    let background = [
        tokio::spawn(events::run(mesh.clone())),
        tokio::spawn(expire_calls(mesh.clone())),
        tokio::spawn(crate::channels::run_sweeper(mesh.channels().clone())),
    ];
    let app = router(&mesh);
    let draining = mesh.clone();
    ready(listener.local_addr()?);
    // Calls are small frames answered at once: Nagle's algorithm would hold
    // a reply back until the previous frame is acknowledged (up to ~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    });
    let serving = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections; finishing calls in flight");
        draining.start_draining();
    });
    serving.await?;
    drain(&mesh).await;
    for task in background {
        task.abort();
    }
    Ok(())
}

/// Opens the store and attaches what lives on it: the durable queue and the
/// realtime hub (whose connections left open by a crash get their disconnects).
fn attach_stored_services(mesh: &Mesh) -> std::io::Result<()> {
    let store_dir = mesh.config().data_dir.join("store");
    let store = Store::open(&store_dir)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", store_dir.display())))?;
    let store = Arc::new(store);
    mesh.attach_queues(Queues::start(mesh.clone(), store.clone()).map_err(std::io::Error::other)?);
    let realtime = Realtime::new(mesh.config().realtime.clone(), Some(store));
    mesh.attach_realtime(realtime.clone());
    let leftovers = crate::realtime::persist::leftovers(&realtime);
    if !leftovers.is_empty() {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            crate::realtime::persist::recover(&realtime, &mesh, leftovers).await
        });
    }
    Ok(())
}

/// Every path the one listener serves; anything else may be a realtime route.
fn router(mesh: &Mesh) -> Router {
    let state = AppState {
        connection_slots: Arc::new(Semaphore::new(mesh.config().limits.max_connections)),
        mesh: mesh.clone(),
    };
    Router::new()
        .route("/", get(worker_socket::upgrade))
        .route("/otel", get(otel::upgrade))
        .route("/health", get(health::health))
        .route("/ws/channels/{channel_id}", get(channel_socket::upgrade))
        .fallback(crate::realtime::upgrade::handle)
        .with_state(state)
}

/// Waits for calls in flight (up to the grace period), then closes every worker.
/// The queue stops starting jobs, calls in flight get the grace period, then
/// the queue scheduler stops (so attempts still running are recorded as
/// `engine_restart` at the next start, not as lost workers) and every worker
/// is closed.
async fn drain(mesh: &Mesh) {
    let grace = mesh.config().server.shutdown_grace;
    if let Some(queues) = mesh.queues() {
        queues.stop_dispatching();
    }
    let started = Instant::now();
    // Client disconnect handlers run while their workers are still connected.
    if let Some(realtime) = mesh.realtime() {
        realtime.shutdown(grace).await;
    }
    while mesh.pending_calls() > 0 && started.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let abandoned = mesh.pending_calls();
    if abandoned > 0 {
        tracing::warn!(
            abandoned,
            "grace period over; closing with calls still in flight"
        );
    }
    if let Some(queues) = mesh.queues() {
        queues.shutdown().await;
    }
    mesh.close_all(close::GOING_AWAY, "engine shutting down");
    mesh.channels().shut_down();
    // Give the writers a moment to put the close frames on the wire.
    let flushed = Instant::now();
    while mesh.stats().workers > 0 && flushed.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!("engine stopped");
}

async fn expire_calls(mesh: Mesh) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        mesh.expire();
    }
}
