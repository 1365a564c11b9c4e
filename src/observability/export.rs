//! OTLP/HTTP export (`[otel] endpoint`): the engine's spans, and what
//! workers send on `/otel`. Spans go through opentelemetry-otlp's span
//! exporter (protobuf over the hyper client; a worker's keep its resource).
//! The workers' logs and metrics arrive as whole OTLP export requests,
//! already decoded into opentelemetry-proto's messages: they are relayed as
//! they came (protobuf, to `/v1/logs` and `/v1/metrics`) with the same HTTP
//! client, since the SDK's log and metric exporters only take records made
//! by its own providers.
//!
//! Routing never waits for it: everything is offered to a bounded queue
//! with `try_send` (and workers' requests also to a bound on their bytes);
//! what does not fit is dropped and counted, and what the collector does
//! not take (down, refusing, too slow) is counted as failed. The counts are
//! on `/metrics`, per signal.

use axum::http::{Request, header};
use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::HttpClient;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use prost::Message;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

use super::ObservabilityError;
use super::config::OtelConfig;
use super::records::{ENGINE_SCOPE, EngineSpan, StoredLog};
use crate::mesh::spans::{Ended, Origin};

/// Bytes of workers' requests waiting for export, at most (a request is
/// up to a WebSocket message; the item bound alone would not bound memory).
const MAX_QUEUED_BYTES: usize = 32 << 20;

/// What waits for export. A worker's request carries its frame's size.
pub(crate) enum Outgoing {
    Engine(EngineSpan),
    Spans(Box<ExportTraceServiceRequest>, usize),
    Logs(Box<ExportLogsServiceRequest>, usize),
    Metrics(Box<ExportMetricsServiceRequest>, usize),
    /// An `engine::log::*` line.
    EngineLog(Box<StoredLog>),
}

/// What is exported: the label of the counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    Spans,
    Logs,
    Metrics,
}

impl Signal {
    pub(crate) const ALL: [Signal; 3] = [Signal::Spans, Signal::Logs, Signal::Metrics];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Signal::Spans => "spans",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

impl Outgoing {
    fn signal(&self) -> Signal {
        match self {
            Outgoing::Engine(_) | Outgoing::Spans(..) => Signal::Spans,
            Outgoing::Logs(..) | Outgoing::EngineLog(_) => Signal::Logs,
            Outgoing::Metrics(..) => Signal::Metrics,
        }
    }

    /// Records it carries (spans, log records, metric data points).
    fn records(&self) -> u64 {
        match self {
            Outgoing::Engine(_) | Outgoing::EngineLog(_) => 1,
            Outgoing::Spans(req, _) => spans_in(req),
            Outgoing::Logs(req, _) => req
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum(),
            Outgoing::Metrics(req, _) => req
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .map(|s| s.metrics.len() as u64)
                .sum(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Outgoing::Engine(_) => 0,
            Outgoing::EngineLog(log) => log.body.len(),
            Outgoing::Spans(_, n) | Outgoing::Logs(_, n) | Outgoing::Metrics(_, n) => *n,
        }
    }
}

fn spans_in(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

/// Records of one signal: exported, dropped (the queue was full) and
/// failed (the collector did not take them).
#[derive(Default)]
pub(crate) struct SignalCounts {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Default)]
pub(crate) struct ExportCounts {
    spans: SignalCounts,
    logs: SignalCounts,
    metrics: SignalCounts,
}

impl ExportCounts {
    pub(crate) fn of(&self, signal: Signal) -> &SignalCounts {
        match signal {
            Signal::Spans => &self.spans,
            Signal::Logs => &self.logs,
            Signal::Metrics => &self.metrics,
        }
    }
}

/// The producers' end: cheap to offer to, never blocks.
pub(crate) struct Exporter {
    tx: mpsc::Sender<Outgoing>,
    queued_bytes: Arc<AtomicUsize>,
    pub counts: Arc<ExportCounts>,
}

impl Exporter {
    pub(crate) fn offer(&self, item: Outgoing) {
        let bytes = item.bytes();
        if bytes > 0 {
            let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            if before + bytes > MAX_QUEUED_BYTES {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                return self.drop_counted(&item);
            }
        }
        if let Err(e) = self.tx.try_send(item) {
            let item = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.drop_counted(&item);
        }
    }

    fn drop_counted(&self, item: &Outgoing) {
        let counts = self.counts.of(item.signal());
        counts.dropped.fetch_add(item.records(), Ordering::Relaxed);
    }
}

/// Builds the exporter; the returned task sends what is offered.
pub(crate) fn start(
    config: &OtelConfig,
) -> Result<(Exporter, impl Future<Output = ()> + Send + 'static), ObservabilityError> {
    let url = config.traces_url().unwrap_or_default();
    let client = HyperClient::new(connector(config)?, config.timeout, None);
    let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client.clone())
        .with_headers(headers)
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
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let base = config
        .endpoint
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let engine = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let sender = Sender {
        exporter,
        relay: client,
        headers: config.headers.clone(),
        base,
        engine,
        counts: counts.clone(),
        queued_bytes: queued_bytes.clone(),
        url,
        failing: false,
    };
    let task = sender.run(rx, config.batch_size, config.flush_interval);
    Ok((
        Exporter {
            tx,
            queued_bytes,
            counts,
        },
        task,
    ))
}

/// The export's connector: plain HTTP, or rustls for `https://` (public
/// roots, plus `ca_file`'s).
type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn connector(config: &OtelConfig) -> Result<Connector, ObservabilityError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &config.ca_file {
        let bad = |reason: String| ObservabilityError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ObservabilityError::CaFile {
        path: String::new(),
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

struct Sender {
    exporter: opentelemetry_otlp::SpanExporter,
    /// Posts workers' logs and metrics as they came.
    relay: HyperClient<Connector>,
    /// `[otel] headers`, on every relayed request too.
    headers: std::collections::BTreeMap<String, String>,
    /// The collector's base address (`[otel] endpoint`).
    base: String,
    engine: Resource,
    counts: Arc<ExportCounts>,
    queued_bytes: Arc<AtomicUsize>,
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
        let mut lines = Vec::new();
        for item in items {
            self.queued_bytes.fetch_sub(item.bytes(), Ordering::Relaxed);
            let records = item.records();
            match item {
                Outgoing::Engine(s) => engine.push(engine_span(s)),
                Outgoing::Spans(req, _) => workers.push(req),
                Outgoing::Logs(req, _) => {
                    let body = req.encode_to_vec();
                    self.post("/v1/logs", body, Signal::Logs, records).await;
                }
                Outgoing::Metrics(req, _) => {
                    let body = req.encode_to_vec();
                    self.post("/v1/metrics", body, Signal::Metrics, records)
                        .await;
                }
                Outgoing::EngineLog(log) => lines.push(*log),
            }
        }
        if !lines.is_empty() {
            let n = lines.len() as u64;
            let body = log_request(lines).encode_to_vec();
            self.post("/v1/logs", body, Signal::Logs, n).await;
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
        let outcome = self.exporter.export(spans).await.map_err(|e| e.to_string());
        self.count(Signal::Spans, n, outcome);
    }

    /// Relays a worker's export request (protobuf) to `<endpoint><path>`.
    async fn post(&mut self, path: &str, body: Vec<u8>, signal: Signal, records: u64) {
        let url = format!("{}{path}", self.base);
        let mut request =
            Request::post(&url).header(header::CONTENT_TYPE, "application/x-protobuf");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Bytes::from(body));
        let outcome = match request {
            Err(e) => Err(e.to_string()),
            Ok(request) => match self.relay.send_bytes(request).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("{url} answered {}", r.status())),
                Err(e) => Err(e.to_string()),
            },
        };
        self.count(signal, records, outcome);
    }

    fn count(&mut self, signal: Signal, records: u64, outcome: Result<(), String>) {
        let counts = self.counts.of(signal);
        match outcome {
            Ok(()) => {
                counts.exported.fetch_add(records, Ordering::Relaxed);
                if self.failing {
                    tracing::info!(url = %self.url, "OTLP export works again");
                    self.failing = false;
                }
            }
            Err(e) => {
                counts.failed.fetch_add(records, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(url = %self.url, error = %e, "OTLP export failed; telemetry is dropped (and counted) until it works");
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
        Origin::Enqueue => SpanKind::Producer,
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
        name: Cow::Owned(s.origin.span_name(&function_id)),
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

/// `engine::log::*` lines as one OTLP logs request, a resource per
/// service (the calling worker's name).
fn log_request(lines: Vec<StoredLog>) -> ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{InstrumentationScope as Scope, KeyValue as Kv};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
    use std::collections::BTreeMap;

    let text = |s: String| AnyValue {
        value: Some(any_value::Value::StringValue(s)),
    };
    let mut by_service: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
    for l in lines {
        let attributes = l
            .attributes
            .into_iter()
            .map(|(key, v)| {
                let value = match v {
                    serde_json::Value::String(s) => any_value::Value::StringValue(s),
                    serde_json::Value::Bool(b) => any_value::Value::BoolValue(b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => any_value::Value::IntValue(i),
                        None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
                    },
                    other => any_value::Value::StringValue(other.to_string()),
                };
                Kv {
                    key,
                    value: Some(AnyValue { value: Some(value) }),
                    ..Default::default()
                }
            })
            .collect();
        let record = LogRecord {
            time_unix_nano: l.timestamp_unix_nano,
            observed_time_unix_nano: l.observed_timestamp_unix_nano,
            severity_number: l.severity_number,
            severity_text: l.severity_text,
            body: Some(text(l.body)),
            attributes,
            trace_id: l
                .trace_id
                .as_deref()
                .and_then(|t| unhex(t, 16))
                .unwrap_or_default(),
            span_id: l
                .span_id
                .as_deref()
                .and_then(|s| unhex(s, 8))
                .unwrap_or_default(),
            ..Default::default()
        };
        by_service.entry(l.service_name).or_default().push(record);
    }
    ExportLogsServiceRequest {
        resource_logs: by_service
            .into_iter()
            .map(|(service, log_records)| ResourceLogs {
                resource: Some(ProtoResource {
                    attributes: vec![Kv {
                        key: "service.name".into(),
                        value: Some(text(service)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(Scope {
                        name: ENGINE_SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// `len` bytes from their hex text; `None` if it is not exactly that.
fn unhex(s: &str, len: usize) -> Option<Vec<u8>> {
    if s.len() != len * 2 {
        return None;
    }
    (0..len)
        .map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}
