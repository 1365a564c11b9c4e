//! The engine's HTTP/1.1 server loop, shared by every listener (workers,
//! HTTP trigger routes): accept, cap and time the connections still sending
//! their request, TLS when configured, graceful stop.
//!
//! Architecture invariant: this layer knows sockets, HTTP and TLS only. It
//! knows no mesh, no module and no route; callers hand it a `Router`.

pub(crate) mod tls;
pub(crate) mod ws;

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub(crate) use tls::Tls;
pub use tls::{TlsConfig, TlsError};

/// A socket with what it serves: handed to [`serve`] by whoever runs it.
pub(crate) struct Listener {
    pub tcp: TcpListener,
    pub app: Router,
    pub tls: Option<Tls>,
    /// The handshake phase's deadline when it is not the engine's default.
    pub request_timeout: Option<Duration>,
}

/// A listener bound when its owner is built (so a port in use fails the
/// start) and served later, once: a module's own listener.
pub(crate) struct Bound {
    what: &'static str,
    addr: SocketAddr,
    tls: Option<Tls>,
    tcp: std::sync::Mutex<Option<TcpListener>>,
}

impl Bound {
    /// Binds `addr` and reads its certificate, if any; the errors name `what`
    /// the listener is for.
    pub(crate) async fn bind(
        addr: SocketAddr,
        what: &'static str,
        tls: Option<&TlsConfig>,
    ) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}"))
        })?;
        let tls = tls
            .map(Tls::load)
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Self {
            what,
            addr: tcp.local_addr()?,
            tls,
            tcp: std::sync::Mutex::new(Some(tcp)),
        })
    }

    /// The bound address (port 0 resolved).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The socket with `app`, the first time it is asked for.
    pub(crate) fn take(&self, app: Router, request_timeout: Option<Duration>) -> Option<Listener> {
        let tcp = self.tcp.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "{} listening", self.what);
        Some(Listener {
            tcp,
            app,
            tls: self.tls.clone(),
            request_timeout,
        })
    }
}

/// How a listener treats connections that have not finished their HTTP
/// request yet (an upgrade request, and a TLS handshake, included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handshakes {
    /// Time to finish the TLS handshake, and then to send each request head;
    /// a slower client is closed.
    pub timeout: Duration,
    /// Connections allowed in that phase at once; when full, the oldest of
    /// them is closed to make room (a client that completes its request in
    /// milliseconds is never the oldest, so a flood of half-sent requests
    /// cannot lock it out).
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

/// The connections still in their handshake phase, oldest first.
#[derive(Clone, Default)]
struct InHandshake {
    inner: Arc<std::sync::Mutex<(u64, BTreeMap<u64, CancellationToken>)>>,
}

/// A connection's place among them; given back on drop.
struct HandshakeSlot {
    id: u64,
    of: InHandshake,
    evicted: CancellationToken,
}

impl InHandshake {
    /// Takes a place, closing the oldest connection first when `max` are
    /// there. Returns the place and whether one was evicted.
    fn enter(&self, max: usize) -> (HandshakeSlot, bool) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (next, live) = &mut *guard;
        let mut evicted = false;
        while live.len() >= max {
            if let Some((_, oldest)) = live.pop_first() {
                oldest.cancel();
                evicted = true;
            }
        }
        let id = *next;
        *next += 1;
        let token = CancellationToken::new();
        live.insert(id, token.clone());
        let slot = HandshakeSlot {
            id,
            of: self.clone(),
            evicted: token,
        };
        (slot, evicted)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut guard = self.of.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.remove(&self.id);
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
    let in_handshake = InHandshake::default();
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
        // One address may not hold more than its share; beyond that its new
        // connections are closed (not others': it cannot evict anyone).
        let Some(ip_slot) = per_ip.take(remote.ip()) else {
            if !refusing {
                tracing::warn!(per_ip = handshakes.max_per_ip, remote = %remote, "too many connections from one address still sending their request (limits.max_handshakes_per_ip); closing its new ones");
                refusing = true;
            }
            drop(tcp);
            continue;
        };
        let (slot, evicted) = in_handshake.enter(handshakes.max);
        // Logged once per episode, not per socket.
        if evicted && !refusing {
            tracing::warn!(
                limit = handshakes.max,
                "too many connections still sending their request (limits.max_handshakes); closing the oldest of them to make room"
            );
            refusing = true;
        } else if !evicted {
            refusing = false;
        }
        // Calls are small frames answered at once: Nagle's algorithm would hold
        // a reply back until the previous frame is acknowledged (up to ~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
        let evicted = slot.evicted.clone();
        let conn = Conn {
            app: app.clone(),
            remote,
            timeout: handshakes.timeout,
            stop: stop.clone(),
            slots: Arc::new(std::sync::Mutex::new(Some((slot, ip_slot)))),
        };
        let tls = tls.clone();
        connections.spawn(async move {
            let served = async move {
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
            };
            tokio::select! {
                () = served => {}
                () = evicted.cancelled() => {
                    tracing::debug!(remote = %remote, "closed to make room for newer handshakes");
                }
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
    /// Given back when the first request head has arrived (the handshake
    /// phase is over; an upgrade, or a request being served, is never
    /// evicted), or when the connection ends.
    slots: Arc<std::sync::Mutex<Option<(HandshakeSlot, IpSlot)>>>,
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
        let held = slots.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            held.lock().unwrap_or_else(|e| e.into_inner()).take();
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
