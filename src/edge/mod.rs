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
//! it to [`serve`]. A module with a listener of its own (the streams client
//! socket) gets the same [`serve`], and so the same handshake defences.
//!
//! Architecture invariant: the edge knows the mesh and the wire protocol; it
//! knows no module and nothing of the store.

pub(crate) mod health;
pub(crate) mod otel;
pub(crate) mod worker_socket;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::mesh::Mesh;

/// The modules' parts of `/health` (see `Module::health`), gathered by the
/// engine root: the edge knows no module.
pub(crate) type HealthParts = Arc<dyn Fn() -> Vec<(&'static str, serde_json::Value)> + Send + Sync>;

/// What every request handler of the worker listener can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub mesh: Mesh,
    pub health: HealthParts,
    /// One permit per open worker connection (`limits.max_connections`).
    pub connection_slots: Arc<Semaphore>,
}

/// The worker listener's own paths.
pub(crate) fn router(mesh: &Mesh, health: HealthParts) -> Router {
    let state = AppState {
        health,
        connection_slots: Arc::new(Semaphore::new(mesh.config().limits.max_connections)),
        mesh: mesh.clone(),
    };
    Router::new()
        .route("/", get(worker_socket::upgrade))
        .route("/otel", get(otel::upgrade))
        .route("/health", get(health::health))
        .with_state(state)
}

/// How a listener treats connections that have not finished their HTTP
/// request yet (an upgrade request included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handshakes {
    /// Time to send a whole request head; a slower client is closed.
    pub timeout: Duration,
    /// Connections allowed in that phase at once; more are closed at accept.
    pub max: usize,
    /// The same, per remote IP address.
    pub max_per_ip: usize,
}

impl Handshakes {
    pub(crate) fn of(mesh: &Mesh) -> Self {
        let c = mesh.config();
        Self {
            timeout: c.server.request_timeout,
            max: c.limits.max_handshakes,
            max_per_ip: c.limits.max_handshakes_per_ip,
        }
    }
}

/// Handshake slots per remote IP address.
#[derive(Clone)]
struct PerIp {
    max: usize,
    taken: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

/// One remote address's slot; given back on drop.
struct IpSlot {
    ip: IpAddr,
    of: PerIp,
}

impl PerIp {
    fn new(max: usize) -> Self {
        Self {
            max,
            taken: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let n = taken.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            of: self.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut taken = self.of.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = taken.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                taken.remove(&self.ip);
            }
        }
    }
}

/// A pause after an accept error (out of file descriptors, say), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` over HTTP/1.1 on `listener` until `shutdown` resolves; then
/// stops accepting, lets requests in progress finish, and returns. Sockets
/// already upgraded (WebSockets) live on: their owners close them.
///
/// A connection holds one of `handshakes.max` permits until its HTTP phase
/// is over (upgraded, or closed), and must send each request head within
/// `handshakes.timeout`: clients that open sockets and send nothing, or
/// half a request, cannot pile up (axum's `serve` bounds neither).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    handshakes: Handshakes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(handshakes.max));
    let per_ip = PerIp::new(handshakes.max_per_ip);
    let (stopping, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusing = false;
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let (Some(ip_slot), Ok(permit)) = (
            per_ip.take(remote.ip()),
            permits.clone().try_acquire_owned(),
        ) else {
            // Logged once per episode, not per refused socket.
            if !refusing {
                tracing::warn!(limit = handshakes.max, per_ip = handshakes.max_per_ip, remote = %remote, "too many connections still sending their request (limits.max_handshakes, max_handshakes_per_ip); closing new ones");
                refusing = true;
            }
            drop(tcp);
            continue;
        };
        refusing = false;
        // Calls are small frames answered at once: Nagle's algorithm would hold
        // a reply back until the previous frame is acknowledged (up to ~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let mut stop = stop.clone();
        connections.spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshakes.timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let outcome = tokio::select! {
                outcome = conn.as_mut() => outcome,
                _ = stop.wait_for(|stopping| *stopping).map(drop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = outcome {
                tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
            }
            drop((permit, ip_slot));
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
