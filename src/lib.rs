//! qmesh: a WebSocket worker mesh that speaks the iii wire protocol, so the
//! published iii SDKs connect to it unchanged.
//!
//! A map of the crate, from the bottom layer up (see `ARCHITECTURE.md` for
//! the life of a call, a job and a request, and each layer's invariants):
//!
//! - [`protocol`]: the wire protocol, whole: decoding worker frames, encoding
//!   engine frames, every error and close code.
//! - `budget`: the engine's one memory budget for bytes held for slow readers.
//! - `net`: the HTTP/1.1 server loop every listener uses (handshake caps
//!   and deadlines, TLS with reload, graceful stop).
//! - `store`: the embedded sled store: layout, record codec, schema
//!   migrations, group commit. The one place that knows the bytes on disk.
//! - `mesh`: the live registry and router: connections, functions, calls in
//!   flight, trigger types and bindings, what each message means, and the
//!   table of what the engine provides. Knows no module by name.
//! - `module`: the seam a built-in module plugs into (what it provides, the
//!   routes it mounts, its background tasks, what it does at drain).
//! - Modules: `functions` (the mesh's own `engine::*` introspection
//!   functions and trigger types), [`channels`] (binary channels between
//!   workers), [`queue`] (the durable queue), `realtime` (client WebSockets
//!   on routes, handled by worker functions), `http` (HTTP trigger routes
//!   on their own listener, and HTTP-invoked functions), `state` (JSON values by scope
//!   and key in the store, and the `state` trigger type), `stream` (items by
//!   stream, group and item in the store or a worker's custom provider, the
//!   `stream`, `stream:join` and `stream:leave` trigger types, and the client
//!   socket browsers join groups on, on its own listener),
//!   `pubsub` (`publish` and the `subscribe` trigger type), `cron` (the
//!   `cron` trigger type, its schedule's position durable in the store),
//!   `topics` (durable topics: `iii::durable::publish` and the
//!   `durable:subscriber` trigger type, one queue job per subscriber),
//!   `observability` (the SDKs' telemetry from `/otel` and the engine's
//!   span per routed call, kept in bounded memory and served as iii's
//!   `engine::traces::*`, `engine::logs::*`, `engine::metrics::list`,
//!   `engine::health::check`, `engine::baggage::*`, `engine::log::*`),
//!   `dashboard` (the web page at `/ui/`, a client of the worker socket like
//!   any other), `cluster` (cluster mode on NATS: engines share which functions and
//!   workers they serve, route sync calls to each other, relay pub/sub and realtime
//!   publishes, link a binary channel's ends connected to different
//!   engines, claim cron slots, and forget an engine whose heartbeats stop;
//!   when configured, they share durable queues, state and stream items on
//!   JetStream).
//! - `edge`: the worker listeners' own paths (`/`, `/otel`, `/health`,
//!   `/metrics`) and who may connect (tokens, RBAC auth).
//! - [`engine`]: the root: builds every part, serves, drains in order.
//!   [`engine::run`] is the server; [`Engine`] a handle on a running one.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`logging`]: tracing setup (text or JSON).
//! - [`client`]: an async worker-protocol client (call, enqueue, serve
//!   functions, channel ends), used by the CLI and the benches.
//! - [`loadgen`]: the closed-loop load generator behind `qmesh bench`.

mod budget;
pub mod channels;
pub mod client;
mod cluster;
pub mod config;
mod cron;
mod dashboard;
mod edge;
pub mod engine;
mod functions;
mod http;
pub mod loadgen;
pub mod logging;
mod mesh;
mod module;
mod net;
mod observability;
pub mod protocol;
mod pubsub;
pub mod queue;
mod realtime;
mod state;
mod store;
mod stream;
mod topics;

pub use config::Config;
pub use edge::auth::hash_hex as token_sha256;
pub use engine::{Engine, run};
pub use protocol::DEFAULT_NAMESPACE;
