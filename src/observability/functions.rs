//! The engine functions, with iii's inputs and outputs: `engine::log::*`,
//! `engine::traces::{list,tree,clear}`, `engine::logs::{list,clear}`,
//! `engine::metrics::list`, `engine::health::check` and
//! `engine::baggage::{get,set,get_all}`.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::records::{SpanRecord, StoredLog, StoredSpan, unix_nanos};
use super::{Observability, WORKER_LOG_TARGET, lock};
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Provisions, Reply};
use crate::protocol::{ErrorBody, codes};

pub(super) fn provide(o: &Observability, p: &mut Provisions) {
    p.sync_fn("engine::log::trace", o, |o, m, c, i| {
        log(o, m, c, i, Level::Trace)
    });
    p.sync_fn("engine::log::debug", o, |o, m, c, i| {
        log(o, m, c, i, Level::Debug)
    });
    p.sync_fn("engine::log::info", o, |o, m, c, i| {
        log(o, m, c, i, Level::Info)
    });
    p.sync_fn("engine::log::warn", o, |o, m, c, i| {
        log(o, m, c, i, Level::Warn)
    });
    p.sync_fn("engine::log::error", o, |o, m, c, i| {
        log(o, m, c, i, Level::Error)
    });
    p.sync_fn("engine::traces::list", o, traces_list);
    p.sync_fn("engine::traces::tree", o, traces_tree);
    p.sync_fn("engine::traces::clear", o, traces_clear);
    p.sync_fn("engine::logs::list", o, logs_list);
    p.sync_fn("engine::logs::clear", o, logs_clear);
    p.sync_fn("engine::metrics::list", o, metrics_list);
    p.sync_fn("engine::health::check", o, health_check);
    p.sync_fn("engine::baggage::get", o, baggage_get);
    p.sync_fn("engine::baggage::set", o, baggage_set);
    p.sync_fn("engine::baggage::get_all", o, baggage_get_all);
    // Clearing forgets what every principal sent: operators only.
    p.operator_only(&["engine::traces::clear", "engine::logs::clear"]);
}

fn now_ms() -> u64 {
    unix_nanos(std::time::SystemTime::now()) / 1_000_000
}

#[derive(Clone, Copy)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// OTLP's severity number and text for the level (what iii stores).
    fn severity(self) -> (i32, &'static str) {
        match self {
            Level::Trace => (1, "TRACE"),
            Level::Debug => (5, "DEBUG"),
            Level::Info => (9, "INFO"),
            Level::Warn => (13, "WARN"),
            Level::Error => (17, "ERROR"),
        }
    }
}

/// What the SDK loggers send (iii's `OtelLogInput`).
#[derive(Default, Deserialize)]
#[serde(default)]
struct LogLine {
    message: Value,
    data: Option<Value>,
    trace_id: Option<String>,
    span_id: Option<String>,
    service_name: Option<String>,
}

fn log(o: &Observability, mesh: &Mesh, ctx: &CallCtx, input: Value, level: Level) -> Reply {
    let line: LogLine = args(input)?;
    let message = match &line.message {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let worker = mesh.inspect(|st| {
        st.workers
            .get(&ctx.caller)
            .and_then(|w| w.meta.as_ref().and_then(|m| m.name.clone()))
    });
    let worker_id = ctx.caller;
    {
        let data = line.data.as_ref().map(|d| d.to_string());
        let (trace_id, span_id) = (&line.trace_id, &line.span_id);
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
    }
    let (severity_number, severity_text) = level.severity();
    let now = unix_nanos(std::time::SystemTime::now());
    let mut attributes: HashMap<String, Value> = match line.data {
        Some(Value::Object(map)) => map.into_iter().collect(),
        Some(Value::Null) | None => HashMap::new(),
        Some(other) => HashMap::from([("data".to_owned(), other)]),
    };
    attributes.insert("worker.id".into(), Value::from(worker_id.to_string()));
    o.keep_log(StoredLog {
        timestamp_unix_nano: now,
        observed_timestamp_unix_nano: now,
        severity_number,
        severity_text: severity_text.to_owned(),
        body: message,
        attributes,
        trace_id: line.trace_id,
        span_id: line.span_id,
        resource: HashMap::new(),
        service_name: line
            .service_name
            .or(worker)
            .unwrap_or_else(|| "unknown".to_owned()),
        instrumentation_scope_name: Some(super::records::ENGINE_SCOPE.to_owned()),
        instrumentation_scope_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    });
    Ok(Value::Null)
}

/// iii's `TracesListInput`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TracesList {
    trace_id: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
    service_name: Option<String>,
    name: Option<String>,
    status: Option<String>,
    min_duration_ms: Option<f64>,
    max_duration_ms: Option<f64>,
    start_time: Option<u64>,
    end_time: Option<u64>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    attributes: Option<Vec<Vec<String>>>,
    include_internal: Option<bool>,
    search_all_spans: Option<bool>,
}

fn spans_of(o: &Observability, trace_id: Option<&str>) -> Vec<StoredSpan> {
    let records: Vec<SpanRecord> = lock(&o.inner.spans)
        .iter()
        .filter(|r| trace_id.is_none_or(|t| r.trace_id_is(t)))
        .cloned()
        .collect();
    let service = &o.inner.service;
    records.iter().map(|r| r.view(service)).collect()
}

fn contains(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// Root spans (one per trace), filtered, sorted and paged as iii does.
/// A span whose parent is not kept (the caller's span lives in a process
/// that does not export) counts as a root too.
fn traces_list(o: &Observability, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let q: TracesList = args(input)?;
    if let Some(by) = q.sort_by.as_deref()
        && !matches!(by, "duration" | "start_time" | "name")
    {
        return Err(invalid(format!(
            "sort_by {by:?}: expected \"duration\", \"start_time\" or \"name\""
        )));
    }
    if let Some(pair) = q.attributes.iter().flatten().find(|p| p.len() != 2) {
        return Err(invalid(format!(
            "attributes: each filter is a [key, value] pair, got {pair:?}"
        )));
    }
    let all = spans_of(o, q.trace_id.as_deref());
    let ids: HashSet<&str> = all.iter().map(|s| s.span_id.as_str()).collect();
    let search_all = q.search_all_spans.unwrap_or(false);
    let named_traces: Option<HashSet<&str>> = match (&q.name, search_all) {
        (Some(n), true) => Some(
            all.iter()
                .filter(|s| contains(&s.name, n))
                .map(|s| s.trace_id.as_str())
                .collect(),
        ),
        _ => None,
    };
    let include_internal = q.include_internal.unwrap_or(false);
    let mut roots: Vec<&StoredSpan> = all
        .iter()
        .filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
        .filter(|s| {
            include_internal
                || !(s.attribute("iii.function.kind") == Some("internal")
                    || s.attribute("function_id")
                        .is_some_and(|f| f.starts_with("engine::")))
        })
        .filter(|s| {
            q.service_name
                .as_ref()
                .is_none_or(|n| contains(&s.service_name, n))
        })
        .filter(|s| match (&q.name, &named_traces) {
            (Some(_), Some(traces)) => traces.contains(s.trace_id.as_str()),
            (Some(n), None) => contains(&s.name, n),
            (None, _) => true,
        })
        .filter(|s| q.status.as_ref().is_none_or(|st| contains(&s.status, st)))
        .filter(|s| q.min_duration_ms.is_none_or(|m| s.duration_ms() >= m))
        .filter(|s| q.max_duration_ms.is_none_or(|m| s.duration_ms() <= m))
        .filter(|s| {
            q.start_time
                .is_none_or(|t| s.end_time_unix_nano >= t.saturating_mul(1_000_000))
        })
        .filter(|s| {
            q.end_time
                .is_none_or(|t| s.start_time_unix_nano <= t.saturating_mul(1_000_000))
        })
        .filter(|s| {
            q.attributes.iter().flatten().all(|pair| {
                s.attributes
                    .iter()
                    .any(|(k, v)| *k == pair[0] && *v == pair[1])
            })
        })
        .collect();
    let ascending = q
        .sort_order
        .as_deref()
        .is_none_or(|o| o.eq_ignore_ascii_case("asc"));
    roots.sort_by(|a, b| {
        let ord = match q.sort_by.as_deref().unwrap_or("start_time") {
            "duration" => a.duration_ms().total_cmp(&b.duration_ms()),
            "name" => a.name.cmp(&b.name),
            _ => a.start_time_unix_nano.cmp(&b.start_time_unix_nano),
        };
        if ascending { ord } else { ord.reverse() }
    });
    let total = roots.len();
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    let spans: Vec<&StoredSpan> = roots.into_iter().skip(offset).take(limit).collect();
    Ok(json!({"spans": spans, "total": total, "offset": offset, "limit": limit}))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceTree {
    trace_id: String,
}

/// A span and its children, nested (iii's `SpanTreeNode`).
#[derive(serde::Serialize)]
struct Node {
    #[serde(flatten)]
    span: StoredSpan,
    children: Vec<Node>,
}

fn traces_tree(o: &Observability, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let q: TraceTree = args(input)?;
    if q.trace_id.is_empty() {
        return Err(invalid("trace_id is required".into()));
    }
    let spans = spans_of(o, Some(&q.trace_id));
    let ids: HashSet<String> = spans.iter().map(|s| s.span_id.clone()).collect();
    let mut children: BTreeMap<String, Vec<StoredSpan>> = BTreeMap::new();
    let mut roots = Vec::new();
    for s in spans {
        match s.parent_span_id.clone().filter(|p| ids.contains(p)) {
            Some(parent) => children.entry(parent).or_default().push(s),
            None => roots.push(s),
        }
    }
    fn grow(span: StoredSpan, children: &mut BTreeMap<String, Vec<StoredSpan>>) -> Node {
        let mut kids = children.remove(&span.span_id).unwrap_or_default();
        kids.sort_by_key(|s| s.start_time_unix_nano);
        Node {
            children: kids.into_iter().map(|k| grow(k, children)).collect(),
            span,
        }
    }
    roots.sort_by_key(|s| s.start_time_unix_nano);
    let roots: Vec<Node> = roots.into_iter().map(|r| grow(r, &mut children)).collect();
    Ok(json!({ "roots": roots }))
}

fn traces_clear(o: &Observability, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let _: Empty = args(input)?;
    lock(&o.inner.spans).clear();
    Ok(json!({"success": true}))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// iii's `LogsListInput`.
#[derive(Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
struct LogsList {
    start_time: Option<u64>,
    end_time: Option<u64>,
    trace_id: Option<String>,
    span_id: Option<String>,
    severity_min: Option<i32>,
    severity_text: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn logs_list(o: &Observability, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let q: LogsList = args(input)?;
    let mut kept = lock(&o.inner.logs);
    let matching: Vec<&StoredLog> = kept
        .iter()
        .filter(|l| q.trace_id.is_none_or_eq(l.trace_id.as_deref()))
        .filter(|l| q.span_id.is_none_or_eq(l.span_id.as_deref()))
        .filter(|l| q.severity_min.is_none_or(|m| l.severity_number >= m))
        .filter(|l| {
            q.severity_text
                .as_ref()
                .is_none_or(|t| l.severity_text.eq_ignore_ascii_case(t))
        })
        .filter(|l| {
            q.start_time
                .is_none_or(|t| l.timestamp_unix_nano >= t.saturating_mul(1_000_000))
        })
        .filter(|l| {
            q.end_time
                .is_none_or(|t| l.timestamp_unix_nano <= t.saturating_mul(1_000_000))
        })
        .collect();
    let total = matching.len();
    let logs: Vec<&StoredLog> = matching
        .into_iter()
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(usize::MAX))
        .collect();
    Ok(json!({"logs": logs, "total": total, "query": q, "timestamp": now_ms()}))
}

trait OptEq {
    fn is_none_or_eq(&self, other: Option<&str>) -> bool;
}

impl OptEq for Option<String> {
    fn is_none_or_eq(&self, other: Option<&str>) -> bool {
        self.as_deref().is_none_or(|want| other == Some(want))
    }
}

fn logs_clear(o: &Observability, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let _: Empty = args(input)?;
    lock(&o.inner.logs).clear();
    Ok(json!({"success": true}))
}

/// iii's `MetricsListInput`.
#[derive(Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
struct MetricsList {
    start_time: Option<u64>,
    end_time: Option<u64>,
    metric_name: Option<String>,
    aggregate_interval: Option<u64>,
}

fn metrics_list(o: &Observability, mesh: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let q: MetricsList = args(input)?;
    if q.aggregate_interval.is_some() {
        return Err(invalid(
            "aggregate_interval is not supported by this engine; ask without it for the raw points"
                .into(),
        ));
    }
    let (start, end) = (
        q.start_time.map(|t| t.saturating_mul(1_000_000)),
        q.end_time.map(|t| t.saturating_mul(1_000_000)),
    );
    let sdk_metrics: Vec<Value> = {
        let mut kept = lock(&o.inner.metrics);
        kept.iter()
            .filter(|m| q.metric_name.as_ref().is_none_or(|n| *n == m.name))
            .filter(|m| start.is_none_or(|s| m.timestamp_unix_nano >= s))
            .filter(|m| end.is_none_or(|e| m.timestamp_unix_nano <= e))
            .map(|m| serde_json::to_value(m).expect("metrics serialize"))
            .collect()
    };
    let c = &o.inner.counts;
    let [ok, error, abandoned] = [0, 1, 2].map(|i| c.calls[i].load(Ordering::Relaxed));
    // Durations and per-function counts from the engine's spans still kept.
    let engine_spans: Vec<SpanRecord> = lock(&o.inner.spans)
        .iter()
        .filter(|r| matches!(r, SpanRecord::Engine(_)))
        .cloned()
        .collect();
    let (mut durations, mut by_function) = (Vec::new(), BTreeMap::<&str, u64>::new());
    for r in &engine_spans {
        if let SpanRecord::Engine(s) = r {
            let took = s.span.end.duration_since(s.span.start).unwrap_or_default();
            durations.push(took.as_secs_f64() * 1000.0);
            *by_function.entry(&s.function_id).or_default() += 1;
        }
    }
    durations.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if durations.is_empty() {
            return 0.0;
        }
        let i = ((durations.len() as f64 * p) as usize).min(durations.len() - 1);
        durations[i]
    };
    let avg = if durations.is_empty() {
        0.0
    } else {
        durations.iter().sum::<f64>() / durations.len() as f64
    };
    let active = mesh.inspect(|st| st.workers.len()) as u64;
    let deaths = c.workers_gone.load(Ordering::Relaxed);
    let mut out = json!({
        "engine_metrics": {
            "invocations": {
                "total": ok + error + abandoned,
                "success": ok,
                "error": error,
                "deferred": abandoned,
                "by_function": by_function,
            },
            "workers": {"spawns": active + deaths, "deaths": deaths, "active": active},
            "performance": {
                "avg_duration_ms": avg,
                "p50_duration_ms": pct(0.50),
                "p95_duration_ms": pct(0.95),
                "p99_duration_ms": pct(0.99),
                "min_duration_ms": durations.first().copied().unwrap_or(0.0),
                "max_duration_ms": durations.last().copied().unwrap_or(0.0),
            },
        },
        "sdk_metrics": sdk_metrics,
        "timestamp": now_ms(),
    });
    if q.start_time.is_some() || q.end_time.is_some() {
        out["query"] = serde_json::to_value(&q).expect("query serializes");
    }
    Ok(out)
}

fn health_check(o: &Observability, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let _: Empty = args(input)?;
    let t = &o.inner;
    let healthy = |details: Value| json!({"status": "healthy", "details": details});
    let otel = match &t.exporter {
        Some(x) => healthy(json!({
            "enabled": true,
            "service_name": t.service,
            "exporter": "otlp_http",
            "records": super::export::Signal::ALL.map(|s| {
                let c = x.counts.of(s);
                json!({
                    "signal": s.label(),
                    "exported": c.exported.load(Ordering::Relaxed),
                    "dropped": c.dropped.load(Ordering::Relaxed),
                    "failed": c.failed.load(Ordering::Relaxed),
                })
            }),
        })),
        None => json!({"status": "disabled", "details": null}),
    };
    let (spans, logs, metrics) = (
        lock(&t.spans).len(),
        lock(&t.logs).len(),
        lock(&t.metrics).len(),
    );
    Ok(json!({
        "status": "healthy",
        "components": {
            "otel": otel,
            "metrics": healthy(json!({"stored_metrics": metrics})),
            "logs": healthy(json!({"stored_logs": logs})),
            "spans": healthy(json!({"stored_spans": spans})),
        },
        "timestamp": now_ms(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaggageKey {
    key: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaggageItem {
    key: String,
    value: String,
}

/// The call's W3C baggage: `key=value` members, comma separated, values
/// percent-encoded, properties after `;` ignored.
fn baggage(header: Option<&str>) -> Vec<(String, String)> {
    header
        .unwrap_or("")
        .split(',')
        .filter_map(|member| {
            let pair = member.split(';').next()?;
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        // W3C baggage-octet: printable ASCII but space, '"', ',', ';', '\\' (and '%').
        if (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b',' | b';' | b'\\' | b'%') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A baggage key is an RFC 7230 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn baggage_get(_: &Observability, _: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let q: BaggageKey = args(input)?;
    let value = baggage(ctx.baggage.as_deref())
        .into_iter()
        .find(|(k, _)| *k == q.key)
        .map(|(_, v)| v);
    Ok(json!({ "value": value }))
}

fn baggage_get_all(_: &Observability, _: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let _: Empty = args(input)?;
    let items: BTreeMap<String, String> = baggage(ctx.baggage.as_deref()).into_iter().collect();
    Ok(json!({ "baggage": items }))
}

/// Baggage travels with calls, so the engine cannot change the caller's:
/// like iii, it answers `success` and a note; unlike iii, it also returns
/// the `baggage` header with the item set, for the caller to send on.
fn baggage_set(_: &Observability, _: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let q: BaggageItem = args(input)?;
    if !is_token(&q.key) {
        return Err(invalid(format!(
            "baggage key {:?} is not a token (letters, digits and !#$%&'*+-.^_`|~)",
            q.key
        )));
    }
    let mut items = baggage(ctx.baggage.as_deref());
    items.retain(|(k, _)| *k != q.key);
    items.push((q.key, q.value));
    let header = items
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join(",");
    Ok(json!({
        "success": true,
        "baggage": header,
        "note": "Baggage set in new context. For propagation, use SDK-level baggage headers.",
    }))
}

fn invalid(message: String) -> ErrorBody {
    ErrorBody::new(codes::INVALID_ARGUMENTS, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baggage_reads_members_and_decodes_values() {
        let b = baggage(Some("user=alice, team=a%20b;prop=1,broken,=x"));
        assert_eq!(
            b,
            vec![
                ("user".to_owned(), "alice".to_owned()),
                ("team".to_owned(), "a b".to_owned())
            ]
        );
        assert_eq!(percent_encode("a b,c"), "a%20b%2Cc");
        assert!(is_token("tenant.id") && !is_token("bad key"));
    }
}
