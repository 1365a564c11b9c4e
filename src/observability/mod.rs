//! iii's `iii-observability`, as workers and operators call it: the SDKs'
//! telemetry (spans, logs and metrics from `/otel`) and the engine's own
//! span for each routed call, kept in bounded memory and served with iii's
//! shapes (`engine::traces::*`, `engine::logs::*`, `engine::metrics::list`,
//! `engine::health::check`, `engine::baggage::*`), `engine::log::*` (the SDK
//! loggers' functions, into the engine's log and `engine::logs::list`), and
//! OTLP/HTTP export to a collector when `[otel] endpoint` is set.
//!
//! - `config`: `[observability]` and `[otel]`.
//! - `ingest`: telemetry frames → records (opentelemetry-proto's types).
//! - `records`: what is kept, in iii's shapes.
//! - `recent`: the bounded, time-limited windows they are kept in.
//! - `functions`: the engine functions.
//! - `export`: the OTLP exporter and its drop counters.
//!
//! Architecture invariant: this module reaches the mesh only through what
//! it provides (engine functions, the call tracer, the telemetry intake) and
//! the caller's identity; it never calls into the mesh while holding one of
//! its own locks (the mesh may record a span under its lock).

mod config;
mod export;
mod functions;
mod ingest;
mod recent;
mod records;

pub use config::{ObservabilityConfig, OtelConfig};

use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::mesh::Provisions;
use crate::mesh::spans::{CallTracer, Ended, FinishedSpan};
use crate::module::Module;
use ingest::{Frame, Kind};
use recent::Recent;
use records::{EngineSpan, Names, SpanRecord, StoredLog, StoredMetric};

/// Where worker log lines go in the engine's log (filter on it with `RUST_LOG`).
pub(crate) const WORKER_LOG_TARGET: &str = "qmesh::worker_log";

/// Why the module could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error("cannot build the OTLP exporter for {url}: {source}")]
    Exporter {
        url: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("otel.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// The module: a cheap handle on the telemetry it keeps.
#[derive(Clone)]
pub(crate) struct Observability {
    inner: Arc<Telemetry>,
}

struct Telemetry {
    config: ObservabilityConfig,
    /// `service.name` of the engine's own spans.
    service: String,
    spans: Mutex<Recent<SpanRecord>>,
    names: Mutex<Names>,
    logs: Mutex<Recent<StoredLog>>,
    metrics: Mutex<Recent<StoredMetric>>,
    counts: Counts,
    exporter: Option<export::Exporter>,
    /// The exporter's sending task, taken by `start`.
    export_task: Mutex<Option<BoxFuture<'static, ()>>>,
}

#[derive(Default)]
struct Counts {
    /// Frames taken, by kind (traces, metrics, logs).
    frames: [AtomicU64; 3],
    /// Frames refused, by kind, and without a known prefix.
    refused: [AtomicU64; 4],
    warned: AtomicBool,
    /// Routed calls by how they ended: ok, error, abandoned.
    calls: [AtomicU64; 3],
    workers_gone: AtomicU64,
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Traces => 0,
        Kind::Metrics => 1,
        Kind::Logs => 2,
    }
}

impl Observability {
    pub(crate) fn new(
        config: ObservabilityConfig,
        otel: &OtelConfig,
    ) -> Result<Self, ObservabilityError> {
        let (exporter, task) = match otel.endpoint {
            Some(_) => {
                let (exporter, task) = export::start(otel)?;
                (
                    Some(exporter),
                    Some(Box::pin(task) as BoxFuture<'static, ()>),
                )
            }
            None => (None, None),
        };
        Ok(Self {
            inner: Arc::new(Telemetry {
                spans: Mutex::new(Recent::new(config.max_spans, config.max_age)),
                names: Mutex::default(),
                logs: Mutex::new(Recent::new(config.max_logs, config.max_age)),
                metrics: Mutex::new(Recent::new(config.max_metrics, config.max_age)),
                config,
                service: otel.service_name.clone(),
                counts: Counts::default(),
                exporter,
                export_task: Mutex::new(task),
            }),
        })
    }

    /// An SDK telemetry frame from `/otel` (or `/`, from older SDKs).
    fn take_frame(&self, frame: &[u8]) {
        let t = &self.inner;
        let decoded = match ingest::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                let slot = match &e {
                    ingest::FrameError::NoPrefix(_) => 3,
                    ingest::FrameError::Json { kind, .. } => index(*kind),
                };
                t.counts.refused[slot].fetch_add(1, Ordering::Relaxed);
                // One warning, then debug: an SDK sending bad frames in a
                // loop must not flood the log (the counter keeps counting).
                if !t.counts.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "telemetry frame dropped (later ones at debug level)");
                } else {
                    tracing::debug!(error = %e, "telemetry frame dropped");
                }
                return;
            }
        };
        match decoded {
            Frame::Traces(req) => {
                t.counts.frames[0].fetch_add(1, Ordering::Relaxed);
                let spans = ingest::spans(&req);
                {
                    let mut kept = lock(&t.spans);
                    for s in spans {
                        kept.push(SpanRecord::Worker(Arc::new(s)));
                    }
                }
                if let Some(x) = &t.exporter {
                    x.offer(export::Outgoing::Spans(Box::new(req), frame.len()));
                }
            }
            Frame::Metrics(req) => {
                t.counts.frames[1].fetch_add(1, Ordering::Relaxed);
                {
                    let mut kept = lock(&t.metrics);
                    for m in ingest::metrics(&req) {
                        kept.push(m);
                    }
                }
                if let Some(x) = &t.exporter {
                    x.offer(export::Outgoing::Metrics(Box::new(req), frame.len()));
                }
            }
            Frame::Logs(req) => {
                t.counts.frames[2].fetch_add(1, Ordering::Relaxed);
                {
                    let mut kept = lock(&t.logs);
                    for l in ingest::logs(&req) {
                        kept.push(l);
                    }
                }
                if let Some(x) = &t.exporter {
                    x.offer(export::Outgoing::Logs(Box::new(req), frame.len()));
                }
            }
        }
    }

    /// An `engine::log::*` line: kept, and offered to export.
    fn keep_log(&self, log: StoredLog) {
        if let Some(x) = &self.inner.exporter {
            x.offer(export::Outgoing::EngineLog(Box::new(log.clone())));
        }
        lock(&self.inner.logs).push(log);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CallTracer for Telemetry {
    fn record(&self, function_id: &str, span: FinishedSpan) {
        let slot = match span.ended {
            Ended::Ok => 0,
            Ended::Error(_) => 1,
            Ended::Abandoned => 2,
        };
        self.counts.calls[slot].fetch_add(1, Ordering::Relaxed);
        let function_id = lock(&self.names).get(function_id);
        let span = EngineSpan { function_id, span };
        if let Some(x) = &self.exporter {
            x.offer(export::Outgoing::Engine(span.clone()));
        }
        lock(&self.spans).push(SpanRecord::Engine(span));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    signal: &'static str,
    outcome: &'static str,
}

impl Module for Observability {
    fn name(&self) -> &'static str {
        "observability"
    }

    fn provide(&self, p: &mut Provisions) {
        functions::provide(self, p);
        if self.inner.config.engine_spans {
            p.call_tracer(self.inner.clone());
        }
        let me = self.clone();
        p.telemetry(move |frame| me.take_frame(frame));
        let me = self.clone();
        p.on_worker_gone(move |_| {
            me.inner.counts.workers_gone.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn metrics<'a>(&'a self, r: &'a mut Registry) -> BoxFuture<'a, ()> {
        let c = &self.inner.counts;
        let frames = Family::<FrameLabels, Counter>::default();
        for kind in [Kind::Traces, Kind::Metrics, Kind::Logs] {
            let i = index(kind);
            let (label, taken, refused) = (
                kind.label(),
                c.frames[i].load(Ordering::Relaxed),
                c.refused[i].load(Ordering::Relaxed),
            );
            frames
                .get_or_create(&FrameLabels {
                    kind: label,
                    outcome: "kept",
                })
                .inc_by(taken);
            frames
                .get_or_create(&FrameLabels {
                    kind: label,
                    outcome: "refused",
                })
                .inc_by(refused);
        }
        frames
            .get_or_create(&FrameLabels {
                kind: "unknown",
                outcome: "refused",
            })
            .inc_by(c.refused[3].load(Ordering::Relaxed));
        r.register(
            "telemetry_frames",
            "SDK telemetry frames received on /otel and /, by kind and outcome",
            frames,
        );
        let spans = lock(&self.inner.spans).len();
        let logs = lock(&self.inner.logs).len();
        let metrics = lock(&self.inner.metrics).len();
        crate::mesh::metrics::gauge(r, "telemetry_spans", "Spans kept in memory", None, spans);
        crate::mesh::metrics::gauge(
            r,
            "telemetry_logs",
            "Log records kept in memory",
            None,
            logs,
        );
        crate::mesh::metrics::gauge(
            r,
            "telemetry_metrics",
            "Metric records kept in memory",
            None,
            metrics,
        );
        if let Some(x) = &self.inner.exporter {
            let exported = Family::<ExportLabels, Counter>::default();
            for signal in export::Signal::ALL {
                let counts = x.counts.of(signal);
                for (outcome, n) in [
                    ("exported", &counts.exported),
                    ("dropped", &counts.dropped),
                    ("failed", &counts.failed),
                ] {
                    exported
                        .get_or_create(&ExportLabels {
                            signal: signal.label(),
                            outcome,
                        })
                        .inc_by(n.load(Ordering::Relaxed));
                }
            }
            r.register(
                "otlp_records",
                "Telemetry offered to OTLP export (spans, log records, metrics), by outcome: exported, dropped (the queue was full) or failed (the collector was down or refused it)",
                exported,
            );
        }
        Box::pin(async {})
    }

    fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        lock(&self.inner.export_task)
            .take()
            .map(tokio::spawn)
            .into_iter()
            .collect()
    }
}
