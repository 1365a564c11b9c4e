//! The SDKs' telemetry frames: a 4-byte ASCII prefix (`OTLP` spans, `MTRC`
//! metrics, `LOGS` logs) and an OTLP-JSON export request, decoded with the
//! OpenTelemetry project's generated types, then turned into the records
//! `engine::traces::*`, `engine::logs::*` and `engine::metrics::list` answer with.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;
use std::collections::HashMap;

use super::records::{
    DataPoint, HistogramPoint, MetricType, NumberPoint, StoredLog, StoredMetric, StoredSpan,
    StoredSpanEvent, StoredSpanLink,
};

/// Why a telemetry frame was not kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("a telemetry frame of {0} bytes has no OTLP, MTRC or LOGS prefix")]
    NoPrefix(usize),
    #[error("{kind} frame is not OTLP-JSON: {source}")]
    Json {
        kind: Kind,
        source: serde_json::Error,
    },
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Traces,
    Metrics,
    Logs,
}

impl Kind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Traces => "traces",
            Kind::Metrics => "metrics",
            Kind::Logs => "logs",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Traces => "an OTLP (spans)",
            Kind::Metrics => "an MTRC (metrics)",
            Kind::Logs => "a LOGS",
        })
    }
}

pub(crate) enum Frame {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

/// The kind a frame's prefix names.
pub(crate) fn kind_of(frame: &[u8]) -> Result<Kind, FrameError> {
    match frame.get(..4) {
        Some(b"OTLP") => Ok(Kind::Traces),
        Some(b"MTRC") => Ok(Kind::Metrics),
        Some(b"LOGS") => Ok(Kind::Logs),
        _ => Err(FrameError::NoPrefix(frame.len())),
    }
}

pub(crate) fn decode(frame: &[u8]) -> Result<Frame, FrameError> {
    let kind = kind_of(frame)?;
    let json = &frame[4..];
    let err = |source| FrameError::Json { kind, source };
    Ok(match kind {
        Kind::Traces => Frame::Traces(serde_json::from_slice(json).map_err(err)?),
        Kind::Logs => Frame::Logs(serde_json::from_slice(json).map_err(err)?),
        Kind::Metrics => {
            // OTLP-JSON writes 64-bit integers as strings (the Python SDK
            // does: `"asInt": "3"`), which opentelemetry-proto 0.32 reads
            // only as numbers for a data point's `asInt`: make them numbers.
            let mut value: Value = serde_json::from_slice(json).map_err(err)?;
            numbers_for_as_int(&mut value);
            Frame::Metrics(serde_json::from_value(value).map_err(err)?)
        }
    })
}

fn numbers_for_as_int(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(s)) = map.get("asInt")
                && let Ok(n) = s.parse::<i64>()
            {
                map.insert("asInt".into(), Value::from(n));
            }
            map.values_mut().for_each(numbers_for_as_int);
        }
        Value::Array(items) => items.iter_mut().for_each(numbers_for_as_int),
        _ => {}
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// An id, or `None` for an absent or all-zero one.
fn id(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty() && bytes.iter().any(|b| *b != 0)).then(|| hex(bytes))
}

/// An attribute value as text (iii keeps span attributes as strings).
fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(_) => json(v).to_string(),
        None => String::new(),
    }
}

/// An attribute value as JSON (log attributes keep their types).
fn json(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| json(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), json(kv.value.as_ref())))
                .collect(),
        ),
        Some(any_value::Value::StringValueStrindex(i)) => Value::from(*i),
        None => Value::Null,
    }
}

fn pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .map(|kv| text(kv.value.as_ref()))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn scope(s: Option<&InstrumentationScope>) -> (Option<String>, Option<String>) {
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    (
        s.and_then(|s| non_empty(&s.name)),
        s.and_then(|s| non_empty(&s.version)),
    )
}

pub(crate) fn spans(req: &ExportTraceServiceRequest) -> Vec<StoredSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = service_name(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            let (scope_name, scope_version) = scope(ss.scope.as_ref());
            for span in &ss.spans {
                let (status, status_description) = match &span.status {
                    Some(s) => (
                        match s.code {
                            1 => "ok",
                            2 => "error",
                            _ => "unset",
                        },
                        (!s.message.is_empty()).then(|| s.message.clone()),
                    ),
                    None => ("unset", None),
                };
                out.push(StoredSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: id(&span.parent_span_id),
                    name: span.name.clone(),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    status: status.to_owned(),
                    status_description,
                    attributes: pairs(&span.attributes),
                    service_name: service.clone(),
                    events: span
                        .events
                        .iter()
                        .map(|e| StoredSpanEvent {
                            name: e.name.clone(),
                            timestamp_unix_nano: e.time_unix_nano,
                            attributes: pairs(&e.attributes),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| StoredSpanLink {
                            trace_id: hex(&l.trace_id),
                            span_id: hex(&l.span_id),
                            trace_state: (!l.trace_state.is_empty()).then(|| l.trace_state.clone()),
                            attributes: pairs(&l.attributes),
                        })
                        .collect(),
                    instrumentation_scope_name: scope_name.clone(),
                    instrumentation_scope_version: scope_version.clone(),
                    flags: u8::try_from(span.flags & 0xff).ok(),
                });
            }
        }
    }
    out
}

pub(crate) fn logs(req: &ExportLogsServiceRequest) -> Vec<StoredLog> {
    let mut out = Vec::new();
    for rl in &req.resource_logs {
        let service = service_name(rl.resource.as_ref());
        let resource: HashMap<String, String> = rl
            .resource
            .as_ref()
            .map(|r| pairs(&r.attributes).into_iter().collect())
            .unwrap_or_default();
        for sl in &rl.scope_logs {
            let (scope_name, scope_version) = scope(sl.scope.as_ref());
            for r in &sl.log_records {
                let timestamp = if r.time_unix_nano == 0 {
                    r.observed_time_unix_nano
                } else {
                    r.time_unix_nano
                };
                out.push(StoredLog {
                    timestamp_unix_nano: timestamp,
                    observed_timestamp_unix_nano: r.observed_time_unix_nano,
                    severity_number: r.severity_number,
                    severity_text: r.severity_text.clone(),
                    body: text(r.body.as_ref()),
                    attributes: r
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), json(kv.value.as_ref())))
                        .collect(),
                    trace_id: id(&r.trace_id),
                    span_id: id(&r.span_id),
                    resource: resource.clone(),
                    service_name: service.clone(),
                    instrumentation_scope_name: scope_name.clone(),
                    instrumentation_scope_version: scope_version.clone(),
                });
            }
        }
    }
    out
}

pub(crate) fn metrics(req: &ExportMetricsServiceRequest) -> Vec<StoredMetric> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let service = service_name(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            let (scope_name, scope_version) = scope(sm.scope.as_ref());
            for m in &sm.metrics {
                let Some((metric_type, data_points)) = m.data.as_ref().map(points) else {
                    continue;
                };
                let timestamp = data_points
                    .iter()
                    .map(|p| match p {
                        DataPoint::Number(n) => n.timestamp_unix_nano,
                        DataPoint::Histogram(h) => h.timestamp_unix_nano,
                    })
                    .max()
                    .unwrap_or(0);
                out.push(StoredMetric {
                    name: m.name.clone(),
                    description: m.description.clone(),
                    unit: m.unit.clone(),
                    metric_type,
                    data_points,
                    service_name: service.clone(),
                    timestamp_unix_nano: timestamp,
                    instrumentation_scope_name: scope_name.clone(),
                    instrumentation_scope_version: scope_version.clone(),
                });
            }
        }
    }
    out
}

fn points(data: &metric::Data) -> (MetricType, Vec<DataPoint>) {
    use opentelemetry_proto::tonic::metrics::v1::NumberDataPoint;
    let numbers = |ps: &[NumberDataPoint]| {
        ps.iter()
            .map(|p| {
                DataPoint::Number(NumberPoint {
                    value: match p.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => 0.0,
                    },
                    attributes: pairs(&p.attributes),
                    timestamp_unix_nano: p.time_unix_nano,
                })
            })
            .collect()
    };
    match data {
        metric::Data::Gauge(g) => (MetricType::Gauge, numbers(&g.data_points)),
        metric::Data::Sum(s) if s.is_monotonic => (MetricType::Counter, numbers(&s.data_points)),
        metric::Data::Sum(s) => (MetricType::UpDownCounter, numbers(&s.data_points)),
        metric::Data::Histogram(h) => (
            MetricType::Histogram,
            h.data_points
                .iter()
                .map(|p| {
                    let mut point = histogram(
                        (p.count, p.sum, p.min, p.max),
                        &p.attributes,
                        p.time_unix_nano,
                    );
                    point.bucket_counts.clone_from(&p.bucket_counts);
                    point.explicit_bounds.clone_from(&p.explicit_bounds);
                    DataPoint::Histogram(point)
                })
                .collect(),
        ),
        metric::Data::ExponentialHistogram(h) => (
            MetricType::ExponentialHistogram,
            h.data_points
                .iter()
                .map(|p| {
                    DataPoint::Histogram(histogram(
                        (p.count, p.sum, p.min, p.max),
                        &p.attributes,
                        p.time_unix_nano,
                    ))
                })
                .collect(),
        ),
        metric::Data::Summary(s) => (
            MetricType::Summary,
            s.data_points
                .iter()
                .map(|p| {
                    DataPoint::Histogram(histogram(
                        (p.count, Some(p.sum), None, None),
                        &p.attributes,
                        p.time_unix_nano,
                    ))
                })
                .collect(),
        ),
    }
}

/// A distribution's point without its buckets: (count, sum, min, max).
fn histogram(
    (count, sum, min, max): (u64, Option<f64>, Option<f64>, Option<f64>),
    attributes: &[KeyValue],
    time_unix_nano: u64,
) -> HistogramPoint {
    HistogramPoint {
        count,
        sum,
        bucket_counts: Vec::new(),
        explicit_bounds: Vec::new(),
        min,
        max,
        attributes: pairs(attributes),
        timestamp_unix_nano: time_unix_nano,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(prefix: &str, json: &str) -> Vec<u8> {
        let mut f = prefix.as_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f
    }

    /// As the Node SDK's JsonTraceSerializer writes it: hex ids, times as
    /// strings, ints as numbers, no parent on a root.
    const NODE_SPANS: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"node-worker"}}],"droppedAttributesCount":0},
        "scopeSpans":[{"scope":{"name":"iii-node","version":"0.22.1"},"spans":[
        {"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7",
         "parentSpanId":"1111111111111111","name":"handler","kind":2,
         "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000005000000",
         "attributes":[{"key":"n","value":{"intValue":3}},{"key":"ok","value":{"boolValue":true}}],
         "droppedAttributesCount":0,"events":[],"droppedEventsCount":0,
         "status":{"code":0},"links":[],"droppedLinksCount":0}]}]}]}"#;

    #[test]
    fn node_spans_decode_with_their_parent() {
        let Frame::Traces(req) = decode(&framed("OTLP", NODE_SPANS)).unwrap() else {
            panic!("not traces")
        };
        let s = &spans(&req)[0];
        assert_eq!(s.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.parent_span_id.as_deref(), Some("1111111111111111"));
        assert_eq!(s.service_name, "node-worker");
        assert_eq!(s.duration_ms(), 5.0);
        assert_eq!(s.attribute("n"), Some("3"));
        assert_eq!(s.status, "unset");
        assert_eq!(s.instrumentation_scope_name.as_deref(), Some("iii-node"));
    }

    #[test]
    fn python_metrics_with_string_ints_decode() {
        let json = r#"{"resourceMetrics":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"py"}}]},"scopeMetrics":[{"scope":{"name":"m"},
            "metrics":[{"name":"jobs","unit":"1","sum":{"dataPoints":[{"attributes":[],
            "startTimeUnixNano":"1","timeUnixNano":"2","asInt":"7"}],"aggregationTemporality":2,
            "isMonotonic":true}},{"name":"lat","histogram":{"dataPoints":[{"timeUnixNano":"3",
            "count":"2","sum":1.5,"bucketCounts":["1","1"],"explicitBounds":[1.0]}],
            "aggregationTemporality":2}}]}]}]}"#;
        let Frame::Metrics(req) = decode(&framed("MTRC", json)).unwrap() else {
            panic!("not metrics")
        };
        let m = metrics(&req);
        assert_eq!(m[0].metric_type, MetricType::Counter);
        assert!(matches!(&m[0].data_points[0], DataPoint::Number(p) if p.value == 7.0));
        assert!(
            matches!(&m[1].data_points[0], DataPoint::Histogram(h) if h.count == 2 && h.bucket_counts == [1, 1])
        );
    }

    #[test]
    fn logs_keep_typed_attributes_and_their_trace() {
        let json = r#"{"resourceLogs":[{"resource":{"attributes":[]},"scopeLogs":[{"scope":{},
            "logRecords":[{"timeUnixNano":"5","observedTimeUnixNano":"6","severityNumber":9,
            "severityText":"INFO","body":{"stringValue":"hello"},
            "attributes":[{"key":"k","value":{"intValue":"4"}}],
            "traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7"}]}]}]}"#;
        let Frame::Logs(req) = decode(&framed("LOGS", json)).unwrap() else {
            panic!("not logs")
        };
        let l = &logs(&req)[0];
        assert_eq!(l.body, "hello");
        assert_eq!(l.attributes["k"], Value::from(4));
        assert_eq!(l.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(l.service_name, "unknown");
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let e = decode(b"JUNK{}").err().unwrap().to_string();
        assert!(e.contains("no OTLP, MTRC or LOGS prefix"), "{e}");
        let e = decode(b"OTLP{not json").err().unwrap().to_string();
        assert!(
            e.starts_with("an OTLP (spans) frame is not OTLP-JSON"),
            "{e}"
        );
    }
}
