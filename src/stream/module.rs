//! Streams as an engine module: the `stream::*` functions, the `stream`,
//! `stream:join` and `stream:leave` trigger types, and the client socket's
//! listener (bound when the module is built, so a port in use fails
//! `Engine::start`; served by the engine root with the edge's defences; at
//! `stop_intake` every client is closed with 1001, its leaves fired while
//! workers are still connected).

use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::functions as f;
use super::hub::Hub;
use super::lifecycle::{JOIN, LEAVE, Lifecycle};
use super::socket::{self, SocketApp};
use super::watchers::{Relayed, Watchers};
use super::{Streams, StreamsConfig};
use crate::mesh::{Mesh, Provisions};
use crate::module::{Module, StreamBackend};
use crate::net::{Bound, Listener};

pub(crate) struct StreamsModule {
    mesh: Mesh,
    streams: Streams,
    listener: Bound,
}

impl StreamsModule {
    /// Builds the module, its items kept in `items` (the engine's store, or
    /// a backend shared with other engines, whose events then reach this
    /// engine's bindings and clients too), and binds `streams.listen`.
    pub(crate) async fn bind(
        mesh: &Mesh,
        items: Arc<dyn StreamBackend>,
        config: StreamsConfig,
    ) -> std::io::Result<Self> {
        let listener = Bound::bind(config.listen, "stream clients", config.tls.as_ref()).await?;
        let hub = Hub::new(mesh.budget().clone(), config.max_connections);
        Ok(Self {
            mesh: mesh.clone(),
            streams: Streams {
                items,
                config: Arc::new(config),
                watchers: Watchers::new(super::watchers::TRIGGER_TYPE),
                lifecycle: Lifecycle::default(),
                hub,
            },
            listener,
        })
    }

    /// Where stream clients connect (`streams.listen`, resolved).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// Open client sockets.
    pub(crate) fn clients(&self) -> usize {
        self.streams.hub.open_count()
    }
}

impl Module for StreamsModule {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            super::watchers::TRIGGER_TYPE,
            "Fires on stream item changes and custom events (create, update, delete, event)",
            Arc::new(self.streams.watchers.clone()),
        );
        p.trigger_type(
            JOIN,
            "A client joins a stream group on the client socket; {\"unauthorized\": true} refuses it",
            Arc::new(self.streams.lifecycle.joins.clone()),
        );
        p.trigger_type(
            LEAVE,
            "A client leaves a stream group, or its socket closes",
            Arc::new(self.streams.lifecycle.leaves.clone()),
        );
        let s = &self.streams;
        p.async_fn("stream::set", s, f::set);
        p.async_fn("stream::get", s, f::get);
        p.async_fn("stream::delete", s, f::delete);
        p.async_fn("stream::update", s, f::update);
        p.async_fn("stream::list", s, f::list);
        p.async_fn("stream::list_groups", s, f::list_groups);
        p.async_fn("stream::list_all", s, f::list_all);
        p.sync_fn("stream::send", s, f::send);
        if s.items.shared() {
            let s = s.clone();
            p.on_relayed(super::RELAY_CHANNEL, move |mesh, message| {
                if let Some((relayed, text)) = Relayed::decode(message) {
                    s.fire_here(mesh, relayed.at(), text);
                }
            });
        }
    }

    /// Where clients connect and how many are open.
    fn health(&self) -> Option<(&'static str, serde_json::Value)> {
        let clients = self.streams.hub.open_count();
        let listen = self.listener.addr().to_string();
        Some((
            "streams",
            serde_json::json!({ "state": "ok", "listen": listen, "clients": clients }),
        ))
    }

    fn listener(&self) -> Option<Listener> {
        let app = socket::router(SocketApp {
            mesh: self.mesh.clone(),
            streams: self.streams.clone(),
        });
        self.listener.take(app, None)
    }

    /// The listener stopped accepting already; every open client is closed
    /// with 1001 and its `stream:leave` handlers fire while their workers
    /// are still connected.
    fn stop_intake(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.streams.hub.shutdown(grace))
    }
}
