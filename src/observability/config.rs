//! `[observability]` (what is kept in memory for `engine::traces::*`,
//! `engine::logs::*` and `engine::metrics::list`) and `[otel]`.

use serde::Deserialize;
use std::time::Duration;

/// `[observability]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Spans kept (the engine's and the workers'); the oldest go first.
    pub max_spans: usize,
    /// Log records kept (the workers' OTLP logs and `engine::log::*`).
    pub max_logs: usize,
    /// Metric records kept (one per metric per SDK export).
    pub max_metrics: usize,
    /// Anything older is forgotten, whatever the counts.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Open a span for each routed call (caller → engine → worker). Off,
    /// the caller's `traceparent` reaches the worker unchanged.
    pub engine_spans: bool,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            max_spans: 10_000,
            max_logs: 10_000,
            max_metrics: 5_000,
            max_age: Duration::from_secs(3600),
            engine_spans: true,
        }
    }
}

impl ObservabilityConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, n) in [
            ("max_spans", self.max_spans),
            ("max_logs", self.max_logs),
            ("max_metrics", self.max_metrics),
        ] {
            if n == 0 {
                return Err(format!("observability.{name} must be greater than 0"));
            }
        }
        if self.max_age.is_zero() {
            return Err("observability.max_age must be greater than 0".into());
        }
        Ok(())
    }
}

/// `[otel]`: how the engine's own spans are named.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// `service.name` of the engine's own spans.
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            service_name: "qmesh".into(),
        }
    }
}

impl OtelConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.service_name.trim().is_empty() {
            return Err("otel.service_name must not be empty".into());
        }
        Ok(())
    }
}
