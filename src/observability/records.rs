//! What is kept of telemetry, in the shapes iii's observability functions
//! answer with (`StoredSpan`, `StoredLog`, `StoredMetric`).

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::mesh::spans::{Ended, FinishedSpan, Origin};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub service_name: String,
    pub events: Vec<StoredSpanEvent>,
    pub links: Vec<StoredSpanLink>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instrumentation_scope_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredSpanEvent {
    pub name: String,
    pub timestamp_unix_nano: u64,
    pub attributes: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredSpanLink {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: Option<String>,
    pub attributes: Vec<(String, String)>,
}

impl StoredSpan {
    pub(crate) fn duration_ms(&self) -> f64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano) as f64
            / 1_000_000.0
    }

    pub(crate) fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A span as kept: the engine's own stay compact until someone reads them
/// (one per routed call). Cheap to clone, so a reader copies what it needs
/// under the lock and builds views after releasing it: the router records
/// spans under the mesh's lock and must not wait behind a long read.
#[derive(Clone)]
pub(crate) enum SpanRecord {
    Engine(EngineSpan),
    Worker(Arc<StoredSpan>),
}

/// The engine's span for one routed call, with its function id (shared
/// between the spans of one function: see `Names`).
#[derive(Debug, Clone)]
pub(crate) struct EngineSpan {
    pub function_id: Arc<str>,
    pub span: FinishedSpan,
}

/// Names the engine's spans carry, the way iii names its invocation spans.
pub(crate) const ENGINE_SCOPE: &str = "qmesh";

impl SpanRecord {
    pub(crate) fn view(&self, engine_service: &str) -> StoredSpan {
        match self {
            SpanRecord::Worker(s) => (**s).clone(),
            SpanRecord::Engine(s) => engine_span_view(s, engine_service),
        }
    }

    pub(crate) fn trace_id_is(&self, trace_id: &str) -> bool {
        match self {
            SpanRecord::Worker(s) => s.trace_id == trace_id,
            SpanRecord::Engine(s) => u128::from_str_radix(trace_id, 16)
                .is_ok_and(|id| id == s.span.context.trace_id && trace_id.len() == 32),
        }
    }
}

fn engine_span_view(e: &EngineSpan, service: &str) -> StoredSpan {
    let s = &e.span;
    let (status, status_description) = match &s.ended {
        Ended::Ok => ("ok", None),
        Ended::Error(code) => ("error", Some(code.clone())),
        Ended::Abandoned => ("unset", Some("the caller went away".to_owned())),
    };
    let kind = match s.origin {
        Origin::Worker => "server",
        Origin::Engine => "internal",
        Origin::Enqueue => "producer",
    };
    StoredSpan {
        trace_id: format!("{:032x}", s.context.trace_id),
        span_id: format!("{:016x}", s.context.span_id),
        parent_span_id: s.parent_span_id.map(|p| format!("{p:016x}")),
        name: s.origin.span_name(&e.function_id),
        start_time_unix_nano: unix_nanos(s.start),
        end_time_unix_nano: unix_nanos(s.end),
        status: status.to_owned(),
        status_description,
        attributes: vec![
            ("function_id".to_owned(), e.function_id.to_string()),
            ("span.kind".to_owned(), kind.to_owned()),
        ],
        service_name: service.to_owned(),
        events: Vec::new(),
        links: Vec::new(),
        instrumentation_scope_name: Some(ENGINE_SCOPE.to_owned()),
        instrumentation_scope_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        flags: Some(s.context.flags),
    }
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredLog {
    pub timestamp_unix_nano: u64,
    pub observed_timestamp_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: String,
    pub body: String,
    pub attributes: HashMap<String, Value>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub resource: HashMap<String, String>,
    pub service_name: String,
    pub instrumentation_scope_name: Option<String>,
    pub instrumentation_scope_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StoredMetric {
    pub name: String,
    pub description: String,
    pub unit: String,
    pub metric_type: MetricType,
    pub data_points: Vec<DataPoint>,
    pub service_name: String,
    pub timestamp_unix_nano: u64,
    pub instrumentation_scope_name: Option<String>,
    pub instrumentation_scope_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MetricType {
    Counter,
    UpDownCounter,
    Gauge,
    Histogram,
    ExponentialHistogram,
    Summary,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum DataPoint {
    Number(NumberPoint),
    Histogram(HistogramPoint),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct NumberPoint {
    pub value: f64,
    pub attributes: Vec<(String, String)>,
    pub timestamp_unix_nano: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HistogramPoint {
    pub count: u64,
    pub sum: Option<f64>,
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub attributes: Vec<(String, String)>,
    pub timestamp_unix_nano: u64,
}

/// Function ids shared by the spans that name them, so ending a span
/// allocates nothing for a function seen before. Bounded: past `MAX`
/// distinct ids a span gets its own copy.
#[derive(Default)]
pub(crate) struct Names(HashMap<Box<str>, Arc<str>>);

impl Names {
    const MAX: usize = 10_000;

    pub(crate) fn get(&mut self, id: &str) -> Arc<str> {
        if let Some(name) = self.0.get(id) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(id);
        if self.0.len() < Self::MAX {
            self.0.insert(Box::from(id), name.clone());
        }
        name
    }
}
