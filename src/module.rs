//! The seam where a built-in module plugs into the engine.
//!
//! A module (the mesh's own introspection functions, binary channels, the
//! durable queue, realtime routes, HTTP, state, streams, pub/sub, cron,
//! durable topics) says what
//! it provides through [`Module`]; the engine root (`crate::engine`) builds each
//! one, installs what they provide into the mesh, mounts their routes, starts
//! their background tasks and drains them in order at shutdown. Adding a
//! module is a folder and one line in the engine root.
//!
//! Architecture invariant: a module knows the mesh and the store, never the
//! engine root, the edge or another module's internals; when it needs another
//! module (realtime enqueues disconnects on the queue), the engine root hands
//! it that module's handle.

use axum::Router;
use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::mesh::Provisions;
use crate::net::Listener;

/// Why a module's write did not happen: the store failed (answered with the
/// function's own error code) or a check refused it (its own error body).
/// `?` on a store call makes the first.
pub(crate) enum Refused {
    Store(crate::store::StoreError),
    Body(crate::protocol::ErrorBody),
}

impl From<crate::store::StoreError> for Refused {
    fn from(e: crate::store::StoreError) -> Self {
        Refused::Store(e)
    }
}

impl Refused {
    pub(crate) fn into_body(self, code: &str) -> crate::protocol::ErrorBody {
        match self {
            Refused::Store(e) => crate::protocol::ErrorBody::new(code, e.to_string()),
            Refused::Body(b) => b,
        }
    }
}

pub(crate) trait Module: Send + Sync {
    /// For logs.
    fn name(&self) -> &'static str;

    /// Engine functions, engine-served trigger types, the Enqueue handler,
    /// hooks on a worker's departure.
    fn provide(&self, _: &mut Provisions) {}

    /// Routes served on the worker listener, beside `/`, `/otel` and `/health`
    /// (at most one module may set a fallback).
    fn routes(&self) -> Option<Router> {
        None
    }

    /// A listener of the module's own (bound when the module was built, so a
    /// port in use fails the start) and what it serves. The engine root
    /// serves it with `net::serve` (the handshake caps and deadline every
    /// listener has, its TLS, reloaded on SIGHUP) and stops it accepting
    /// when the drain begins; upgraded sockets are the module's to close.
    /// Taken once.
    fn listener(&self) -> Option<Listener> {
        None
    }

    /// A part of `GET /health`: its key and value (an object with a `state`
    /// of `"ok"` or `"degraded"`). Called on every request: keep it cheap.
    fn health(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }

    /// Its part of `GET /metrics`, gathered at scrape time into `registry`
    /// (prefixed `qmesh_`). Bounded cardinality: no per-job or
    /// per-connection labels.
    fn metrics<'a>(&'a self, _registry: &'a mut Registry) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Background tasks, started once the provisions are installed and
    /// aborted when the engine has drained.
    fn start(&self) -> Vec<JoinHandle<()>> {
        Vec::new()
    }

    /// Drain, first phase (the listener no longer accepts): stop taking new
    /// work and finish what needs workers still connected, within `grace`.
    fn stop_intake(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Drain, second phase: calls in flight have settled (or the grace period
    /// ran out) and workers are still connected; release the store and stop.
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
