//! HTTP as an engine module: the `http` trigger type, HTTP-invoked
//! functions, and the trigger-route listener (bound when the module is
//! built, so a port in use fails `Engine::start`; served from `start`;
//! closed to new connections at `stop_intake`).

use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::functions::HttpFunctions;
use super::routes::Routes;
use super::server::{self, Server};
use super::{HttpConfig, HttpFunctionsConfig, TRIGGER_TYPE};
use crate::channels::Channels;
use crate::mesh::{Mesh, Provisions};
use crate::module::{Module, ModuleListener};
use crate::net::Tls;

pub(crate) struct HttpModule {
    server: Arc<Server>,
    functions: Arc<HttpFunctions>,
    addr: SocketAddr,
    listener: Mutex<Option<TcpListener>>,
    tls: Option<Tls>,
}

impl HttpModule {
    /// Binds `http.listen`.
    pub(crate) async fn bind(
        mesh: &Mesh,
        channels: &Channels,
        config: HttpConfig,
        functions: &HttpFunctionsConfig,
    ) -> std::io::Result<HttpModule> {
        let listener = crate::net::bind(config.listen, "HTTP").await?;
        let addr = listener.local_addr()?;
        let tls = crate::net::tls(config.tls.as_ref())?;
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
        })
    }

    /// Where trigger routes are served.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
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

    fn listener(&self) -> Option<ModuleListener> {
        let tcp = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "HTTP trigger routes listening");
        Some(ModuleListener {
            tcp,
            app: server::app(self.server.clone()),
            tls: self.tls.clone(),
            request_timeout: Some(self.server.config.header_read_timeout),
        })
    }
}
