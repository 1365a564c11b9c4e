//! The engine's HTTP/1.1 server loop, shared by every listener (workers,
//! HTTP trigger routes): accept, cap and time the connections still sending
//! their request, TLS when configured, graceful stop.
//!
//! Architecture invariant: this layer knows sockets, HTTP and TLS only. It
//! knows no mesh, no module and no route; callers hand it a `Router`.

pub(crate) mod tls;

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

pub(crate) use tls::Tls;
pub use tls::{TlsConfig, TlsError};

/// How a listener treats connections that have not finished their HTTP
/// request yet (an upgrade request, and a TLS handshake, included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handshakes {
    /// Time to finish the TLS handshake, and then to send each request head;
    /// a slower client is closed.
    pub timeout: Duration,
    /// Connections allowed in that phase at once; more are closed at accept.
    pub max: usize,
    /// The same, per remote IP address.
    pub max_per_ip: usize,
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

/// Serves `app` over HTTP/1.1 (over TLS when `tls` is set) on `listener`
/// until `shutdown` resolves; then stops accepting, lets requests in
/// progress finish, and returns. Sockets already upgraded (WebSockets) live
/// on: their owners close them.
///
/// A connection holds one of `handshakes.max` permits until its HTTP phase
/// is over (upgraded, or closed), and must finish its TLS handshake and send
/// each request head within `handshakes.timeout`: clients that open sockets
/// and send nothing, or half a request, cannot pile up (axum's `serve`
/// bounds neither). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    handshakes: Handshakes,
    tls: Option<Tls>,
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
        let conn = Conn {
            app: app.clone(),
            remote,
            timeout: handshakes.timeout,
            stop: stop.clone(),
            slots: (permit, ip_slot),
        };
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => conn.serve(tcp).await,
                Some(tls) => match tokio::time::timeout(conn.timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => conn.serve(stream).await,
                    Ok(Err(e)) => {
                        tracing::debug!(remote = %remote, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(remote = %remote, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One accepted connection and what it holds until its HTTP phase is over.
struct Conn {
    app: Router,
    remote: SocketAddr,
    timeout: Duration,
    stop: watch::Receiver<bool>,
    slots: (OwnedSemaphorePermit, IpSlot),
}

impl Conn {
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            app,
            remote,
            timeout,
            mut stop,
            slots,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(io), service)
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
        drop(slots);
    }
}
