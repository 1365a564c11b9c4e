//! iii's `iii-observability` as far as workers call it: `engine::log::*`,
//! the functions the SDKs' loggers call, written to the engine's log with
//! the calling worker's identity.
//!
//! Architecture invariant: this module writes to the engine's log and reads
//! nothing but the caller's identity from the mesh.

use serde::Deserialize;
use serde_json::Value;

use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Provisions, Reply};
use crate::module::Module;

/// Where worker log lines go in the engine's log (filter on it with `RUST_LOG`).
pub(crate) const WORKER_LOG_TARGET: &str = "qmesh::worker_log";

/// `engine::log::{trace,debug,info,warn,error}`.
#[derive(Default)]
pub(crate) struct Observability;

impl Module for Observability {
    fn name(&self) -> &'static str {
        "observability"
    }

    fn provide(&self, p: &mut Provisions) {
        p.mesh_sync_fn("engine::log::trace", |m, c, i| log(m, c, i, Level::Trace));
        p.mesh_sync_fn("engine::log::debug", |m, c, i| log(m, c, i, Level::Debug));
        p.mesh_sync_fn("engine::log::info", |m, c, i| log(m, c, i, Level::Info));
        p.mesh_sync_fn("engine::log::warn", |m, c, i| log(m, c, i, Level::Warn));
        p.mesh_sync_fn("engine::log::error", |m, c, i| log(m, c, i, Level::Error));
    }
}

#[derive(Clone, Copy)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// What the SDK loggers send; anything else they add is kept in `data`'s place.
#[derive(Default, Deserialize)]
#[serde(default)]
struct LogLine {
    message: Value,
    data: Option<Value>,
    trace_id: Option<String>,
    span_id: Option<String>,
}

fn log(mesh: &Mesh, ctx: &CallCtx, input: Value, level: Level) -> Reply {
    let line: LogLine = args(input)?;
    let message = match &line.message {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let data = line.data.map(|d| d.to_string());
    let worker = mesh.inspect(|st| {
        st.workers
            .get(&ctx.caller)
            .and_then(|w| w.meta.as_ref().and_then(|m| m.name.clone()))
    });
    let worker_id = ctx.caller;
    let (trace_id, span_id) = (line.trace_id, line.span_id);
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(target: WORKER_LOG_TARGET, $lvl, %worker_id, worker = ?worker, data = ?data, trace_id = ?trace_id, span_id = ?span_id, "{message}")
        };
    }
    match level {
        Level::Trace => emit!(tracing::Level::TRACE),
        Level::Debug => emit!(tracing::Level::DEBUG),
        Level::Info => emit!(tracing::Level::INFO),
        Level::Warn => emit!(tracing::Level::WARN),
        Level::Error => emit!(tracing::Level::ERROR),
    }
    Ok(Value::Null)
}
