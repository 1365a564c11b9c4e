//! HTTP as an engine module: the `http` trigger type, HTTP-invoked
//! functions, and the trigger-route listener (bound when the module is
//! built, so a port in use fails `Engine::start`; served from `start`;
//! closed to new connections at `stop_intake`).

use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;

use super::functions::HttpFunctions;
use super::routes::Routes;
use super::server::{self, Server};
use super::{HttpConfig, HttpFunctionsConfig, TRIGGER_TYPE};
use crate::channels::Channels;
use crate::mesh::{Mesh, Provisions};
use crate::module::Module;
use crate::net::{Bound, Listener};

pub(crate) struct HttpModule {
    server: Arc<Server>,
    functions: Arc<HttpFunctions>,
    listener: Bound,
}

impl HttpModule {
    /// Binds `http.listen`.
    pub(crate) async fn bind(
        mesh: &Mesh,
        channels: &Channels,
        config: HttpConfig,
        functions: &HttpFunctionsConfig,
    ) -> std::io::Result<HttpModule> {
        let listener =
            Bound::bind(config.listen, "HTTP trigger routes", config.tls.as_ref()).await?;
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
            listener,
        })
    }

    /// Where trigger routes are served.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.addr()
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

    fn listener(&self) -> Option<Listener> {
        let app = server::app(self.server.clone());
        let timeout = self.server.config.header_read_timeout;
        self.listener.take(app, Some(timeout))
    }
}
