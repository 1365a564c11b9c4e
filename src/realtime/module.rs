//! Realtime routes as an engine module: the `websocket` trigger type, the
//! `channel::*` functions, its own listener (`[realtime] listen`; any path
//! may be a route), and the disconnects owed to connections a crash cut off.

use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

use super::functions as f;
use super::upgrade::{self, Upgrades};
use super::{Realtime, RealtimeConfig, TRIGGER_TYPE, persist, topics};
use crate::mesh::metrics::gauge;
use crate::mesh::{Mesh, Provisions};
use crate::module::{Module, RealtimeClients, RealtimePeers};
use crate::net::{Bound, Listener};
use crate::queue::Queues;
use crate::store::Store;
use crate::store::realtime::{ConnRows, LeftRow};
use prometheus_client::registry::Registry;

pub(crate) struct RealtimeModule {
    mesh: Mesh,
    hub: Realtime,
    listener: Bound,
    /// In a cluster: the other engines, asked for clients not held here.
    peers: Option<Arc<dyn RealtimePeers>>,
    /// Rows the last run left, read before any connection can add one;
    /// queued as disconnects once the engine starts.
    leftovers: Mutex<Vec<LeftRow>>,
}

impl RealtimeModule {
    /// Binds `realtime.listen` and reads what the last run left.
    pub(crate) async fn bind(
        mesh: &Mesh,
        config: RealtimeConfig,
        store: Arc<Store>,
        queues: &Queues,
        peers: Option<Arc<dyn RealtimePeers>>,
    ) -> std::io::Result<Self> {
        let listener = Bound::bind(config.listen, "realtime routes", config.tls.as_ref()).await?;
        let budget = mesh.budget().clone();
        let rows = ConnRows::new(store);
        let hub = Realtime::new(config, Some(rows), Some(queues.clone()), budget);
        let leftovers = persist::leftovers(&hub);
        Ok(Self {
            mesh: mesh.clone(),
            hub,
            listener,
            peers,
            leftovers: Mutex::new(leftovers),
        })
    }

    /// Where clients connect (`realtime.listen`, resolved).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// This engine's clients, for other engines' callers (the cluster's).
    pub(crate) fn held_clients(&self) -> Arc<dyn RealtimeClients> {
        Arc::new(f::HeldClients(self.hub.clone()))
    }

    /// The hub of open client connections (tests and benches inspect it).
    pub(crate) fn hub(&self) -> &Realtime {
        &self.hub
    }
}

impl Module for RealtimeModule {
    fn name(&self) -> &'static str {
        "realtime"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            TRIGGER_TYPE,
            "Handles client WebSocket connections on a route (connect, message, disconnect, binary)",
            Arc::new(self.hub.clone()),
        );
        let hub = &self.hub;
        // A client another engine holds is acted on there: these answer
        // inline for this engine's clients, from a task for another's.
        for &(id, op) in f::ON_CLIENTS {
            let on = f::OnClient {
                hub: hub.clone(),
                peers: self.peers.clone(),
                id,
                op,
            };
            p.async_fn(id, &on, f::on_client);
        }
        p.sync_fn("channel::publish", hub, f::publish);
        p.sync_fn("channel::list", hub, f::list);
        p.sync_fn("channel::routes", hub, f::routes);
        p.sync_fn("channel::issue_ticket", hub, f::issue_ticket);
        let relayed = hub.clone();
        p.on_relayed(topics::RELAY_CHANNEL, move |_, message| {
            match serde_json::from_slice::<topics::Relayed>(message) {
                Ok(r) => {
                    let exclude = r.exclude_channel_id.as_deref();
                    relayed.publish(&r.topic, &r.data, exclude, r.raw);
                }
                Err(e) => tracing::warn!(error = %e, "ignored a relayed realtime publish that does not parse"),
            }
        });
    }

    fn listener(&self) -> Option<Listener> {
        let app = axum::Router::new()
            .fallback(upgrade::handle)
            .with_state(Upgrades {
                mesh: self.mesh.clone(),
                hub: self.hub.clone(),
            });
        self.listener.take(app, None)
    }

    fn start(&self) -> Vec<JoinHandle<()>> {
        let rows = std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|e| e.into_inner()));
        if rows.is_empty() {
            return Vec::new();
        }
        let hub = self.hub.clone();
        vec![tokio::spawn(async move {
            persist::recover(&hub, rows).await;
        })]
    }

    /// Client disconnect handlers run while their workers are still connected.
    fn metrics<'a>(&'a self, r: &'a mut Registry) -> BoxFuture<'a, ()> {
        gauge(
            r,
            "realtime_connections",
            "Open realtime client connections",
            None,
            self.hub.open_count(),
        );
        gauge(
            r,
            "realtime_routes",
            "Realtime routes with at least one handler",
            None,
            self.hub.routes().summary().len(),
        );
        Box::pin(async {})
    }

    /// The listener stopped accepting already; client disconnect handlers
    /// run while their workers are still connected.
    fn stop_intake(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.hub.shutdown(grace))
    }
}
