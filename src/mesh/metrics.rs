//! What the mesh measures about itself for `GET /metrics`: calls by function
//! and outcome, their latency, and the live counts read at scrape time.
//!
//! Cardinality is bounded: a function id is a label only for the first
//! [`MAX_FUNCTION_LABELS`] seen; later ones count under `function="other"`,
//! so workers registering ids at will cannot grow the scrape without limit.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::Mesh;
use crate::protocol::codes;

/// Function ids kept as distinct labels.
pub(crate) const MAX_FUNCTION_LABELS: usize = 2000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    function: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

/// How a call ended, as a label.
pub(crate) fn outcome_of(error: Option<&str>) -> &'static str {
    match error {
        None => "ok",
        Some(codes::INVOCATION_TIMEOUT) => "timeout",
        Some(codes::INVOCATION_STOPPED) => "stopped",
        Some(_) => "error",
    }
}

pub(crate) struct CallMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<FunctionLabel, Histogram>,
    labelled: Mutex<HashSet<String>>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            // 50 µs to ~7 min, doubling.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 24))
            }),
            labelled: Mutex::default(),
        }
    }
}

impl CallMetrics {
    /// One settled call.
    pub(crate) fn record(&self, function_id: &str, outcome: &'static str, took: Duration) {
        let function = self.label(function_id);
        self.calls
            .get_or_create(&CallLabels {
                function: function.clone(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&FunctionLabel { function })
            .observe(took.as_secs_f64());
    }

    fn label(&self, function_id: &str) -> String {
        let mut seen = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(function_id) {
            return function_id.to_owned();
        }
        if seen.len() < MAX_FUNCTION_LABELS {
            seen.insert(function_id.to_owned());
            return function_id.to_owned();
        }
        "other".to_owned()
    }
}

impl Mesh {
    /// Registers the mesh's metrics (the call families, and gauges read now).
    pub(crate) fn describe_metrics(&self, r: &mut Registry) {
        let m = self.call_metrics();
        r.register(
            "calls",
            "Calls routed by the engine, by function and outcome (ok, error, timeout, stopped)",
            m.calls.clone(),
        );
        r.register_with_unit(
            "call_duration",
            "From routing a call to its outcome, by function",
            Unit::Seconds,
            m.duration.clone(),
        );
        let stats = self.stats();
        gauge(
            r,
            "workers",
            "Connected worker connections",
            None,
            stats.workers,
        );
        gauge(
            r,
            "functions",
            "Function ids served by at least one worker",
            None,
            stats.functions,
        );
        gauge(
            r,
            "pending_calls",
            "Calls in flight",
            None,
            stats.pending_invocations,
        );
        let b = self.budget();
        gauge(
            r,
            "memory_budget_used",
            "Bytes held for slow readers (outboxes, channel buffers)",
            Some(Unit::Bytes),
            b.used(),
        );
        gauge(
            r,
            "memory_budget_limit",
            "limits.memory_budget",
            Some(Unit::Bytes),
            b.limit(),
        );
    }
}

/// Registers a gauge holding `value`, read at scrape time (modules use it too).
pub(crate) fn gauge(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: usize) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    match unit {
        Some(unit) => r.register_with_unit(name, help, unit, g),
        None => r.register(name, help, g),
    }
}
