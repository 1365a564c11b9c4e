//! HTTP as an engine module: the `http` trigger type, HTTP-invoked
//! functions, and the trigger-route listener (bound when the module is
//! built, so a port in use fails `Engine::start`; served from `start`;
//! closed to new connections at `stop_intake`).

use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::functions::HttpFunctions;
use super::routes::Routes;
use super::server::{self, Server};
use super::{HttpConfig, HttpFunctionsConfig, TRIGGER_TYPE};
use crate::channels::Channels;
use crate::mesh::{Mesh, Provisions};
use crate::module::Module;
use crate::net::{Handshakes, Tls};

pub(crate) struct HttpModule {
    server: Arc<Server>,
    functions: Arc<HttpFunctions>,
    addr: SocketAddr,
    listener: Mutex<Option<TcpListener>>,
    tls: Option<Tls>,
    stop: CancellationToken,
}

impl HttpModule {
    /// Binds `http.listen`.
    pub(crate) async fn bind(
        mesh: &Mesh,
        channels: &Channels,
        config: HttpConfig,
        functions: &HttpFunctionsConfig,
    ) -> std::io::Result<HttpModule> {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for HTTP on {}: {e}", config.listen),
            )
        })?;
        let addr = listener.local_addr()?;
        let tls = config
            .tls
            .as_ref()
            .map(Tls::load)
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut middleware = config.middleware.clone();
        middleware.sort_by_key(|m| m.priority);
        let server = Arc::new(Server {
            mesh: mesh.clone(),
            channels: channels.clone(),
            routes: Routes::default(),
            slots: Arc::new(Semaphore::new(config.concurrency_request_limit.max(1))),
            middleware,
            config,
        });
        Ok(HttpModule {
            server,
            functions: Arc::new(HttpFunctions::new(functions)),
            addr,
            listener: Mutex::new(Some(listener)),
            tls,
            stop: CancellationToken::new(),
        })
    }

    /// Where trigger routes are served.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener's TLS, for the engine's reload on SIGHUP.
    pub(crate) fn tls(&self) -> Option<Tls> {
        self.tls.clone()
    }

    /// Live routes.
    pub(crate) fn routes(&self) -> usize {
        self.server.routes.len()
    }
}

impl Module for HttpModule {
    fn name(&self) -> &'static str {
        "http"
    }

    fn metrics<'a>(
        &'a self,
        r: &'a mut prometheus_client::registry::Registry,
    ) -> BoxFuture<'a, ()> {
        let routes = self.routes();
        crate::mesh::metrics::gauge(r, "http_routes", "HTTP trigger routes served", None, routes);
        Box::pin(async {})
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            TRIGGER_TYPE,
            "HTTP routes on the engine's HTTP listener (api_path, http_method, middleware, condition)",
            Arc::new(self.server.routes.clone()),
        );
        p.external_functions(self.functions.clone());
    }

    fn start(&self) -> Vec<JoinHandle<()>> {
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Vec::new();
        };
        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "HTTP trigger routes listening");
        let app = server::app(self.server.clone());
        let limits = &self.server.mesh.config().limits;
        let handshakes = Handshakes {
            timeout: self.server.config.header_read_timeout,
            max: limits.max_handshakes,
            max_per_ip: limits.max_handshakes_per_ip,
        };
        let stop = self.stop.clone().cancelled_owned();
        let tls = self.tls.clone();
        vec![tokio::spawn(async move {
            if let Err(e) = crate::net::serve(listener, app, handshakes, tls, stop).await {
                tracing::warn!(error = %e, "HTTP listener stopped with an error");
            }
        })]
    }

    /// No new HTTP connections; requests in flight finish while workers are
    /// still connected.
    fn stop_intake(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        self.stop.cancel();
        Box::pin(async {})
    }
}
