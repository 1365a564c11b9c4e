//! OTLP/HTTP export (`[otel] endpoint`): the engine's spans and the spans
//! workers send on `/otel`, through opentelemetry-otlp's span exporter
//! (protobuf over the hyper client).
//!
//! Routing never waits for it: spans are offered to a bounded queue with
//! `try_send`; when the queue is full (the collector is slow or down) they
//! are dropped and counted, and a batch the collector refuses is counted as
//! failed. Both counts are on `/metrics`.

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

use super::ObservabilityError;
use super::config::OtelConfig;
use super::records::{ENGINE_SCOPE, EngineSpan};
use crate::mesh::spans::{Ended, Origin};

/// What waits for export.
pub(crate) enum Outgoing {
    Engine(EngineSpan),
    Workers(Box<ExportTraceServiceRequest>),
}

impl Outgoing {
    fn spans(&self) -> u64 {
        match self {
            Outgoing::Engine(_) => 1,
            Outgoing::Workers(req) => req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum(),
        }
    }
}

#[derive(Default)]
pub(crate) struct ExportCounts {
    pub exported: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    /// In batches the collector did not take (down, refused, timed out).
    pub failed: AtomicU64,
}

/// The producers' end: cheap to offer to, never blocks.
pub(crate) struct Exporter {
    tx: mpsc::Sender<Outgoing>,
    pub counts: Arc<ExportCounts>,
}

impl Exporter {
    pub(crate) fn offer(&self, item: Outgoing) {
        if let Err(e) = self.tx.try_send(item) {
            let item = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            self.counts
                .dropped
                .fetch_add(item.spans(), Ordering::Relaxed);
        }
    }
}

/// Builds the exporter; the returned task sends what is offered.
pub(crate) fn start(
    config: &OtelConfig,
) -> Result<(Exporter, impl Future<Output = ()> + Send + 'static), ObservabilityError> {
    let url = config.traces_url().unwrap_or_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(config.timeout)
        .build()
        .map_err(|source| ObservabilityError::Exporter {
            url: url.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::channel(config.queue_size);
    let counts = Arc::new(ExportCounts::default());
    let engine = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let sender = Sender {
        exporter,
        engine,
        counts: counts.clone(),
        url,
        failing: false,
    };
    let task = sender.run(rx, config.batch_size, config.flush_interval);
    Ok((Exporter { tx, counts }, task))
}

struct Sender {
    exporter: opentelemetry_otlp::SpanExporter,
    engine: Resource,
    counts: Arc<ExportCounts>,
    url: String,
    /// Whether the last batch failed (logged on change only).
    failing: bool,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>, batch: usize, every: Duration) {
        self.exporter.set_resource(&self.engine);
        let mut pending = Vec::with_capacity(batch);
        loop {
            let Some(first) = rx.recv().await else { return };
            pending.push(first);
            let deadline = tokio::time::Instant::now() + every;
            while pending.len() < batch {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => pending.push(item),
                    Ok(None) | Err(_) => break,
                }
            }
            self.send(std::mem::take(&mut pending)).await;
        }
    }

    async fn send(&mut self, items: Vec<Outgoing>) {
        let mut engine = Vec::new();
        let mut workers = Vec::new();
        for item in items {
            match item {
                Outgoing::Engine(s) => engine.push(engine_span(s)),
                Outgoing::Workers(req) => workers.push(req),
            }
        }
        if !engine.is_empty() {
            self.export(engine).await;
        }
        // A worker's spans keep their own resource (its service.name): one
        // request per resource, then the engine's resource again.
        for req in workers {
            for rs in req.resource_spans {
                let resource = worker_resource(rs.resource.as_ref());
                let spans: Vec<SpanData> = rs
                    .scope_spans
                    .into_iter()
                    .flat_map(|ss| {
                        let scope = ss.scope.map(|s| {
                            InstrumentationScope::builder(s.name)
                                .with_version(s.version)
                                .build()
                        });
                        ss.spans
                            .into_iter()
                            .filter_map(move |s| worker_span(s, scope.clone()))
                    })
                    .collect();
                if spans.is_empty() {
                    continue;
                }
                self.exporter.set_resource(&resource);
                self.export(spans).await;
                self.exporter.set_resource(&self.engine);
            }
        }
    }

    async fn export(&mut self, spans: Vec<SpanData>) {
        let n = spans.len() as u64;
        match self.exporter.export(spans).await {
            Ok(()) => {
                self.counts.exported.fetch_add(n, Ordering::Relaxed);
                if self.failing {
                    tracing::info!(url = %self.url, "OTLP export works again");
                    self.failing = false;
                }
            }
            Err(e) => {
                self.counts.failed.fetch_add(n, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(url = %self.url, error = %e, "OTLP export failed; spans are dropped (and counted) until it works");
                    self.failing = true;
                }
            }
        }
    }
}

fn engine_span(
    EngineSpan {
        function_id,
        span: s,
    }: EngineSpan,
) -> SpanData {
    let status = match &s.ended {
        Ended::Ok => Status::Ok,
        Ended::Error(code) => Status::error(code.clone()),
        Ended::Abandoned => Status::Unset,
    };
    let kind = match s.origin {
        Origin::Worker => SpanKind::Server,
        Origin::Engine => SpanKind::Internal,
    };
    SpanData {
        span_context: SpanContext::new(
            TraceId::from(s.context.trace_id),
            SpanId::from(s.context.span_id),
            TraceFlags::new(s.context.flags),
            false,
            TraceState::NONE,
        ),
        parent_span_id: s.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
        parent_span_is_remote: s.parent_span_id.is_some(),
        span_kind: kind,
        name: Cow::Owned(format!("call {function_id}")),
        start_time: s.start,
        end_time: s.end,
        attributes: vec![KeyValue::new("function_id", function_id.to_string())],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder(ENGINE_SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

fn worker_resource(r: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> Resource {
    let attrs = r
        .map(|r| {
            r.attributes
                .iter()
                .filter_map(|kv| Some(KeyValue::new(kv.key.clone(), value(kv.value.as_ref()?)?)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Resource::builder_empty().with_attributes(attrs).build()
}

fn value(v: &AnyValue) -> Option<opentelemetry::Value> {
    Some(match v.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone().into(),
        any_value::Value::BoolValue(b) => (*b).into(),
        any_value::Value::IntValue(i) => (*i).into(),
        any_value::Value::DoubleValue(d) => (*d).into(),
        other => format!("{other:?}").into(),
    })
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn worker_span(
    s: opentelemetry_proto::tonic::trace::v1::Span,
    scope: Option<InstrumentationScope>,
) -> Option<SpanData> {
    let trace_id: [u8; 16] = s.trace_id.as_slice().try_into().ok()?;
    let span_id: [u8; 8] = s.span_id.as_slice().try_into().ok()?;
    let parent: Option<[u8; 8]> = s.parent_span_id.as_slice().try_into().ok();
    let kind = match s.kind {
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => SpanKind::Internal,
    };
    let status = match s.status {
        Some(st) if st.code == 2 => Status::error(st.message),
        Some(st) if st.code == 1 => Status::Ok,
        _ => Status::Unset,
    };
    let attributes = |attrs: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>| {
        attrs
            .into_iter()
            .filter_map(|kv| Some(KeyValue::new(kv.key, value(kv.value.as_ref()?)?)))
            .collect::<Vec<_>>()
    };
    let mut events = SpanEvents::default();
    events.events = s
        .events
        .into_iter()
        .map(|e| {
            opentelemetry::trace::Event::new(
                e.name,
                time(e.time_unix_nano),
                attributes(e.attributes),
                0,
            )
        })
        .collect();
    Some(SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::new(u8::try_from(s.flags & 0xff).unwrap_or(1) | 1),
            false,
            TraceState::NONE,
        ),
        parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: false,
        span_kind: kind,
        name: Cow::Owned(s.name),
        start_time: time(s.start_time_unix_nano),
        end_time: time(s.end_time_unix_nano),
        attributes: attributes(s.attributes),
        dropped_attributes_count: s.dropped_attributes_count,
        events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.unwrap_or_default(),
    })
}
