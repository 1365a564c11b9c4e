//! The engine's worker listeners: the main one (`listen`, handed to
//! [`super::Engine::serve`]) and every `[[listeners]]` entry, each bound at
//! start with its own admission policy (tokens, RBAC, middleware), all
//! serving the same mesh and the same module routes.

use axum::Router;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::EngineError;
use crate::config::Config;
use crate::edge::auth::{ListenerPolicy, TokenTable};
use crate::mesh::access::ListenerRules;
use crate::net::{Handshakes, Tls};

/// The policies of every worker listener, and the extra ones' sockets until
/// [`super::Engine::serve`] takes them.
pub(super) struct WorkerListeners {
    pub main: Arc<ListenerPolicy>,
    pub main_tls: Option<Tls>,
    extra: Mutex<Vec<Extra>>,
    /// name → bound address, for operators and tests.
    pub addrs: Vec<(String, SocketAddr)>,
}

struct Extra {
    policy: Arc<ListenerPolicy>,
    tls: Option<Tls>,
    tcp: TcpListener,
}

impl WorkerListeners {
    /// Reads the tokens and binds every `[[listeners]]` address.
    pub(super) async fn bind(config: &Config) -> Result<Self, EngineError> {
        let tokens = TokenTable::load(&config.auth)
            .map_err(EngineError::Tokens)?
            .map(Arc::new);
        let main = Arc::new(ListenerPolicy {
            rules: Arc::new(ListenerRules {
                name: "main".to_owned(),
                ..ListenerRules::default()
            }),
            tokens: tokens.clone(),
        });
        let main_tls = config.tls.as_ref().map(Tls::load).transpose()?;
        let mut extra = Vec::new();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let tcp = TcpListener::bind(l.listen).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen for workers ({}) on {}: {e}",
                        l.name, l.listen
                    ),
                )
            })?;
            let addr = tcp.local_addr()?;
            let rbac = l.rbac.clone();
            let policy = Arc::new(ListenerPolicy {
                // An RBAC listener authenticates with its auth function.
                tokens: if rbac.is_some() { None } else { tokens.clone() },
                rules: Arc::new(ListenerRules {
                    name: l.name.clone(),
                    middleware_function_id: l.middleware_function_id.clone(),
                    rbac,
                }),
            });
            warn_if_open(&policy, addr);
            let tls = l.tls.as_ref().map(Tls::load).transpose()?;
            tracing::info!(listener = %l.name, %addr, rbac = policy.rules.rbac.is_some(), tls = tls.is_some(), "worker listener bound");
            addrs.push((l.name.clone(), addr));
            extra.push(Extra { policy, tls, tcp });
        }
        Ok(Self {
            main,
            main_tls,
            extra: Mutex::new(extra),
            addrs,
        })
    }

    /// Every worker listener's TLS (for reloads).
    pub(super) fn tls(&self) -> Vec<Tls> {
        let extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        self.main_tls
            .iter()
            .cloned()
            .chain(extra.iter().filter_map(|e| e.tls.clone()))
            .collect()
    }

    /// Serves every extra listener with `app(policy)` until `stop` is
    /// cancelled. Called once.
    pub(super) fn serve_extra(
        &self,
        app: impl Fn(Arc<ListenerPolicy>) -> Router,
        handshakes: Handshakes,
        stop: &CancellationToken,
    ) -> Vec<JoinHandle<std::io::Result<()>>> {
        let extra = std::mem::take(&mut *self.extra.lock().unwrap_or_else(|e| e.into_inner()));
        extra
            .into_iter()
            .map(|Extra { policy, tls, tcp }| {
                let router = app(policy);
                let stop = stop.clone().cancelled_owned();
                tokio::spawn(crate::net::serve(tcp, router, handshakes, tls, stop))
            })
            .collect()
    }
}

/// A listener anyone on the network can reach and that asks nobody for
/// anything is a loud configuration mistake, not a quiet default.
pub(super) fn warn_if_open(policy: &ListenerPolicy, addr: SocketAddr) {
    let open = policy.tokens.is_none() && policy.rules.rbac.is_none();
    if open && !addr.ip().is_loopback() {
        tracing::warn!(listener = %policy.rules.name, %addr,
            "worker listener reachable from the network WITHOUT authentication: anyone who can connect may register functions, call everything and run operator functions. Configure [auth] tokens or an RBAC listener, or bind to 127.0.0.1");
    }
}
