//! `[observability]` (what is kept in memory for `engine::traces::*`,
//! `engine::logs::*` and `engine::metrics::list`) and `[otel]` (OTLP export).

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

/// `[otel]`: OTLP/HTTP export of the engine's spans and the workers' spans,
/// logs and metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP base address (`http://collector:4318`):
    /// `<endpoint>/v1/traces`, `/v1/logs`, `/v1/metrics`. Unset: no export.
    pub endpoint: Option<String>,
    /// `service.name` of the engine's own spans.
    pub service_name: String,
    /// Engine spans and workers' requests waiting for export; past it, new
    /// ones are dropped (and counted).
    pub queue_size: usize,
    /// Spans sent in one request.
    pub batch_size: usize,
    /// How long a batch may wait for more spans.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long one export request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers sent with every export request (a hosted collector's API
    /// key, a tenant id).
    pub headers: std::collections::BTreeMap<String, String>,
    /// PEM file of CA certificates trusted for an `https://` endpoint
    /// besides the public roots (a collector with a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            service_name: "qmesh".into(),
            queue_size: 4096,
            batch_size: 512,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            headers: Default::default(),
            ca_file: None,
        }
    }
}

impl OtelConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .ok_or_else(|| {
                    format!("otel.endpoint {endpoint:?} must start with http:// or https://")
                })?;
            if rest.trim_matches('/').is_empty() {
                return Err(format!("otel.endpoint {endpoint:?} has no host"));
            }
            if let Err(e) = endpoint.parse::<axum::http::Uri>() {
                return Err(format!("otel.endpoint {endpoint:?} is not a URL: {e}"));
            }
        }
        for (name, value) in &self.headers {
            if name.parse::<axum::http::HeaderName>().is_err()
                || value.parse::<axum::http::HeaderValue>().is_err()
            {
                return Err(format!(
                    "otel.headers: {name:?} is not a valid header name and value"
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err("otel.service_name must not be empty".into());
        }
        if self.queue_size == 0 || self.batch_size == 0 {
            return Err("otel.queue_size and otel.batch_size must be greater than 0".into());
        }
        if self.flush_interval.is_zero() || self.timeout.is_zero() {
            return Err("otel.flush_interval and otel.timeout must be greater than 0".into());
        }
        Ok(())
    }

    /// Where spans are posted.
    pub(crate) fn traces_url(&self) -> Option<String> {
        let base = self.endpoint.as_deref()?.trim_end_matches('/');
        Some(format!("{base}/v1/traces"))
    }
}
