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
//!
//! Besides [`Module`], the seams a module and the cluster meet at without
//! naming each other, each handed over by the engine root: where state
//! values and stream items live ([`StateBackend`], [`StreamBackend`]), and
//! binary channels whose ends are on different engines ([`ChannelPeers`]
//! for the channels module, [`ChannelEnds`] for the cluster, and the
//! frame-level [`FrameSource`] / [`FrameSink`] halves they pass), and
//! realtime clients connected to another engine ([`RealtimePeers`] for the
//! realtime module, [`RealtimeClients`] for the cluster).

use axum::Router;
use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::task::JoinHandle;

use crate::mesh::Provisions;
use crate::net::Listener;
use crate::protocol::update_ops;

/// Why a module's write did not happen: the store failed (answered with the
/// function's own error code) or a check refused it (its own error body).
/// `?` on a store call makes the first.
pub(crate) enum Refused {
    Store(crate::store::StoreError),
    Body(crate::protocol::ErrorBody),
    /// A backend other than the store failed (a shared one out of reach).
    Backend(BackendError),
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
            Refused::Backend(e) => crate::protocol::ErrorBody::new(code, e.to_string()),
        }
    }
}

impl From<BackendError> for Refused {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Store(e) => Refused::Store(e),
            other => Refused::Backend(other),
        }
    }
}

/// Why a [`StateBackend`] or a [`StreamBackend`] could not read or write.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A store shared by several engines failed or is out of reach; the
    /// message says which and why.
    #[error("{0}")]
    Shared(String),
}

/// What a write makes of the current value (`None` removes it), or why it
/// refuses (nothing is written then): a state value's or a stream item's. A
/// shared backend may run it more than once (a compare-and-set lost to
/// another engine): the last run is the one written.
pub(crate) type ValueChange =
    Box<dyn FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, Refused> + Send>;

/// What the last run of an update's change made: the value and the ops'
/// errors, for the reply.
pub(crate) type Updated =
    std::sync::Arc<std::sync::Mutex<Option<(serde_json::Value, Vec<update_ops::OpError>)>>>;

/// The change `state::update` and `stream::update` make: `ops` applied to
/// the stored JSON (an empty object when there is none), the bytes passed
/// to `check` (a size limit), and what it made left in `updated`.
pub(crate) fn update_change(
    ops: Vec<serde_json::Value>,
    check: impl Fn(&[u8]) -> Result<(), Refused> + Send + 'static,
    updated: Updated,
) -> ValueChange {
    Box::new(move |old| {
        let mut value = match old {
            Some(bytes) => serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Object(Default::default()),
        };
        let errors = update_ops::apply(&mut value, &ops);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        check(&bytes)?;
        *updated.lock().unwrap_or_else(|e| e.into_inner()) = Some((value, errors));
        Ok(Some(bytes))
    })
}

/// What a write did: the value before it, and, when the write is not yet as
/// durable as asked, what to wait for.
pub(crate) struct ValueWritten {
    pub old: Option<Vec<u8>>,
    pub until_durable: Option<BoxFuture<'static, Result<(), BackendError>>>,
}

impl ValueWritten {
    /// A write the embedded store has done: `old`, and with a `ticket`, the
    /// wait for the sync covering it, asked for now so it starts while the
    /// caller fires the write's events.
    pub(crate) fn stored(
        old: Option<Vec<u8>>,
        ticket: Option<crate::store::Ticket>,
        store: &std::sync::Arc<crate::store::Store>,
    ) -> Self {
        let until_durable = ticket.map(|ticket| {
            store.want(ticket);
            let store = store.clone();
            Box::pin(async move { store.durable(ticket).await.map_err(BackendError::from) })
                as BoxFuture<'static, _>
        });
        Self { old, until_durable }
    }
}

/// Where the state module keeps its values, one JSON value per (scope,
/// key): the engine's own store, or a store every engine of a cluster
/// shares. The engine root picks one; the state module sees only this.
///
/// Each method starts its work when called: a backend that can answer at
/// once (the embedded store) does all of it before returning a ready future,
/// so writes apply in order with the caller's next messages.
pub(crate) trait StateBackend: Send + Sync {
    /// The JSON stored under (scope, key).
    fn get(
        &self,
        scope: &str,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>>;

    /// Replaces the value with what `change` makes of it, atomically for
    /// this key (across engines, for a shared backend). With `durable`, a
    /// backend that acknowledges before its write is durable returns what
    /// to wait for.
    fn modify(
        &self,
        scope: &str,
        key: &str,
        durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>>;

    /// Every value of one scope, in key order.
    fn list(&self, scope: &str) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>>;

    /// Every scope holding at least one value, in any order.
    fn scopes(&self) -> BoxFuture<'static, Result<Vec<String>, BackendError>>;

    /// Whether other engines read and write these same values: their
    /// changes must then fire this engine's `state` bindings too.
    fn shared(&self) -> bool {
        false
    }
}

/// Streams by name, each with its groups' ids.
pub(crate) type StreamGroups = Vec<(String, Vec<String>)>;

/// Where the streams module keeps its items, one JSON value per (stream,
/// group, item): the engine's own store, or a store every engine of a
/// cluster shares. The engine root picks one; the streams module sees only
/// this. Its methods start their work when called, as [`StateBackend`]'s
/// do: the embedded store answers with ready futures.
pub(crate) trait StreamBackend: Send + Sync {
    /// The JSON stored under (stream, group, item).
    fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>>;

    /// Replaces the item with what `change` makes of it, atomically for
    /// this item (across engines, for a shared backend). With `durable`, a
    /// backend that acknowledges before its write is durable returns what
    /// to wait for.
    fn modify(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>>;

    /// Every item of one group, in item-id order.
    fn list(
        &self,
        stream: &str,
        group: &str,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>>;

    /// The groups of one stream holding at least one item, in any order.
    fn groups(&self, stream: &str) -> BoxFuture<'static, Result<Vec<String>, BackendError>>;

    /// Every stream holding at least one item, with those groups, in any
    /// order.
    fn streams(&self) -> BoxFuture<'static, Result<StreamGroups, BackendError>>;

    /// Whether other engines read and write these same items: every stream
    /// event must then reach their `stream` bindings and socket clients too.
    fn shared(&self) -> bool {
        false
    }
}

/// A frame of a binary channel crossing to or from another engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChannelData {
    /// A chunk of the byte stream.
    Binary(bytes::Bytes),
    /// A message in order with the chunks (valid UTF-8).
    Text(bytes::Bytes),
}

impl ChannelData {
    pub(crate) fn len(&self) -> usize {
        match self {
            ChannelData::Binary(b) | ChannelData::Text(b) => b.len(),
        }
    }
}

/// How one side of a channel split across engines ended, as the other side
/// must learn it: two outcomes only, because the other engine's sockets
/// need no more (the end of the stream, or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndOutcome {
    /// Writer: a normal end of the stream. Reader: it took everything.
    Done,
    /// Anything else: the stream is truncated (to a reader) or nobody reads
    /// any more (to a writer).
    Aborted,
}

/// A writer's frames, for a reader on another engine: the channels module
/// hands one to whoever carries them ([`ChannelPeers`]).
pub(crate) trait FrameSource: Send + Sync {
    /// The next frame, or how the writer ended. Cancel-safe.
    fn next(&mut self) -> BoxFuture<'_, Result<ChannelData, EndOutcome>>;
    /// The reader, elsewhere, is over: how.
    fn finish(self: Box<Self>, how: EndOutcome);
}

/// Where frames from a writer on another engine go, toward a reader here.
pub(crate) trait FrameSink: Send + Sync {
    /// Waits for room (this engine's pipe bounds what it holds), then
    /// queues `data`; `Err` once the reader is gone. Cancel-safe.
    fn push(&self, data: ChannelData) -> BoxFuture<'_, Result<(), ()>>;
    /// Resolves once the reader is gone (or the channel abandoned).
    fn gone(&self) -> BoxFuture<'_, ()>;
    /// The writer, elsewhere, is over: how.
    fn finish(self: Box<Self>, how: EndOutcome);
}

/// One end of a channel, driven by another engine instead of a socket.
pub(crate) enum LocalEnd {
    /// What a writer here sends, for a reader there.
    Source(Box<dyn FrameSource>),
    /// Where a writer there sends, for a reader here.
    Sink(Box<dyn FrameSink>),
}

/// Why another engine would not open a channel end for a socket here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerRefusal {
    /// No engine holds the channel, or the key does not open that end.
    NotFound,
    /// That end is already connected.
    Taken,
    /// The channel is gone (finished, expired, its creator left): why.
    Gone(String),
    /// The engines cannot be asked now (this one is cut off from NATS).
    Unreachable(String),
}

/// Binary channels whose ends are on different engines of a cluster, seen
/// from the channels module: a socket here for a channel another engine
/// holds. The engine root hands the cluster's to the channels module;
/// without one, a channel lives and dies on the engine that created it.
pub(crate) trait ChannelPeers: Send + Sync {
    /// Asks the engine holding `channel_id` to open its end `dir` with
    /// `key` for a socket here, and, once it has, carries frames between
    /// that end and `here` (this engine's half of the proxy pipe the
    /// socket uses) until either side ends.
    fn open(
        &self,
        channel_id: &str,
        dir: crate::protocol::channel::Direction,
        key: &str,
        here: LocalEnd,
    ) -> BoxFuture<'static, Result<(), PeerRefusal>>;
}

/// The channels this engine holds, seen from the cluster: another engine's
/// socket asks for one of their ends. The engine root hands the channels
/// module's to the cluster.
pub(crate) trait ChannelEnds: Send + Sync {
    /// Claims end `dir` of a channel held here (checking `key`), for a
    /// socket on another engine; the end is then open, driven through the
    /// returned half (a `Source` for a reader there, a `Sink` for a writer).
    fn claim_for_peer(
        &self,
        channel_id: &str,
        dir: crate::protocol::channel::Direction,
        key: &str,
    ) -> Result<LocalEnd, PeerRefusal>;
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

/// Who acts on a realtime client held by another engine, as the caller's
/// engine vouches for it: the engine holding the client checks these rights
/// against the client's route as it checks its own workers'.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClientCaller {
    /// The caller has the operator role.
    pub operator: bool,
    /// The functions the caller serves, as (namespace, function id).
    pub functions: Vec<(String, String)>,
}

/// What one engine answered about a realtime client function: `None` when
/// it holds none of the clients named.
pub(crate) type PeerAnswer = Option<crate::mesh::Reply>;

/// Realtime clients connected to other engines of a cluster, seen from the
/// realtime module: a `channel::*` function naming a client this engine does
/// not hold. The engine root hands the cluster's to the realtime module;
/// without one, a client is reached from its own engine only.
pub(crate) trait RealtimePeers: Send + Sync {
    /// Asks the other live engines to run `function` (a `channel::*` id)
    /// with `input` for `caller`: each answers what it did, or `None` when it
    /// holds none of the clients named. `Err` for an engine that could not
    /// be asked or did not answer: why. With `client_id` (a function naming
    /// one client), the engine known to hold it may be the only one asked.
    fn ask(
        &self,
        function: &str,
        caller: ClientCaller,
        input: serde_json::Value,
        client_id: Option<&str>,
    ) -> BoxFuture<'static, Vec<Result<PeerAnswer, String>>>;
}

/// The realtime clients this engine holds, seen from the cluster: another
/// engine's worker acts on one. The engine root hands the realtime module's
/// to the cluster.
pub(crate) trait RealtimeClients: Send + Sync {
    /// Runs `function` with `input` for a caller on another engine, on the
    /// clients held here; `None` when none of the clients named is here.
    fn act_for_peer(
        &self,
        function: &str,
        caller: &ClientCaller,
        input: serde_json::Value,
    ) -> PeerAnswer;
}
