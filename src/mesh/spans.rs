//! The span the engine opens for each call it routes: it continues the
//! caller's `traceparent` (or starts a trace), and the executor receives the
//! engine's span as its parent, so one trace reads caller → engine → worker.
//!
//! The mesh only keeps the span with the call and ends it once, with the
//! call's outcome; what becomes of ended spans (kept for
//! `engine::traces::*`, exported) is the [`CallTracer`]'s business,
//! installed through [`super::Provisions::call_tracer`]. Without one the
//! router opens no spans and forwards the caller's `traceparent` unchanged.

use std::sync::Arc;
use std::time::SystemTime;

use crate::protocol::trace_context::{Header, SAMPLED, TraceParent};

/// Who made the call a span covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A worker's `invokefunction`.
    Worker,
    /// The engine itself: a trigger firing, a queue attempt, an HTTP request.
    Engine,
    /// A job put on the durable queue: its attempts are this span's
    /// children, so one trace reads enqueue → attempt 1 → retry → attempt 2.
    Enqueue,
}

impl Origin {
    /// The span's name for `function_id`, as iii names invocation spans.
    pub(crate) fn span_name(self, function_id: &str) -> String {
        match self {
            Origin::Worker | Origin::Engine => format!("call {function_id}"),
            Origin::Enqueue => format!("enqueue {function_id}"),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    /// With the error's code.
    Error(String),
    /// Its caller went away first; nobody got the outcome.
    Abandoned,
}

/// A routed call's span, ended (its function id comes beside it).
#[derive(Debug, Clone)]
pub(crate) struct FinishedSpan {
    pub context: TraceParent,
    pub parent_span_id: Option<u64>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub origin: Origin,
    pub ended: Ended,
}

/// Where ended spans go. Called once per routed call, possibly under the
/// mesh's lock: keep it short and never call back into the mesh.
pub(crate) trait CallTracer: Send + Sync {
    fn record(&self, function_id: &str, span: FinishedSpan);
}

/// A call's open span, kept with the call until it settles.
pub(crate) struct CallSpan {
    tracer: Arc<dyn CallTracer>,
    context: TraceParent,
    parent_span_id: Option<u64>,
    start: SystemTime,
    origin: Origin,
}

impl CallSpan {
    /// Opens a span under `incoming` (a `traceparent` header), or as the
    /// root of a new trace when there is none or it is not valid.
    pub(crate) fn begin(
        tracer: &Arc<dyn CallTracer>,
        incoming: Option<&str>,
        origin: Origin,
    ) -> Self {
        let parent = incoming.and_then(TraceParent::parse);
        let context = TraceParent {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            flags: parent.map_or(SAMPLED, |p| p.flags),
        };
        Self {
            tracer: tracer.clone(),
            context,
            parent_span_id: parent.map(|p| p.span_id),
            start: SystemTime::now(),
            origin,
        }
    }

    /// What the executor receives as its `traceparent`.
    pub(crate) fn traceparent(&self) -> Header {
        self.context.header()
    }

    /// Ends the span with the call's outcome.
    pub(crate) fn end(self, function_id: &str, ended: Ended) {
        let span = FinishedSpan {
            context: self.context,
            parent_span_id: self.parent_span_id,
            start: self.start,
            end: SystemTime::now(),
            origin: self.origin,
            ended,
        };
        self.tracer.record(function_id, span);
    }
}

fn new_trace_id() -> u128 {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id;
        }
    }
}

fn new_span_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// How an outcome ends a span.
pub(crate) fn ended_by(error: Option<&str>) -> Ended {
    match error {
        None => Ended::Ok,
        Some(code) => Ended::Error(code.to_owned()),
    }
}
