//! qmesh: a WebSocket worker mesh that speaks the iii wire protocol, so the
//! published iii SDKs connect to it unchanged.
//!
//! A map of the crate (see `ARCHITECTURE.md` for the life of a call):
//!
//! - [`protocol`]: the wire protocol, whole: decoding worker frames, encoding
//!   engine frames, error and close codes.
//! - [`mesh`]: the live registry and router: connections, functions, calls in
//!   flight, trigger types and bindings, and what each message means.
//! - [`functions`]: engine functions (`engine::*`) that workers call like any other.
//! - [`edge`]: the network edge: one listener for worker sockets, telemetry
//!   sockets and `/health`; `edge::run(listener, config, shutdown)` is the server.
//! - [`queue`]: the durable queue (scheduler, dispatcher, operator views).
//! - [`channels`]: binary channels between workers: the registry, per-end
//!   keys, and the pipe bounded by frames and bytes.
//! - [`realtime`]: realtime channels: client WebSockets on routes, handled by
//!   worker functions bound with the `websocket` trigger type.
//! - [`store`]: the embedded sled store: layout, record codec, schema
//!   migrations, group commit. The one place that knows the bytes on disk.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`logging`]: tracing setup (text or JSON).
//! - [`client`]: an async worker-protocol client (call, enqueue, serve functions).
//! - [`loadgen`]: the closed-loop load generator behind `qmesh bench`.

pub mod channels;
pub mod client;
pub mod config;
pub mod edge;
pub mod functions;
pub mod loadgen;
pub mod logging;
pub mod mesh;
pub mod protocol;
pub mod queue;
pub mod realtime;
pub mod store;

pub use config::Config;
pub use edge::run;

/// The namespace of anything registered without one.
pub const DEFAULT_NAMESPACE: &str = "default";
