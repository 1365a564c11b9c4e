//! Telemetry end to end: the Node (npm iii-sdk 0.22.1) and Python (PyPI
//! iii-sdk 0.25.0) SDKs with OpenTelemetry on, traced across the engine.
//! The spans are read back two ways: through iii's `engine::traces::*`
//! functions, and from an OTLP/HTTP receiver the test runs (protobuf bodies
//! decoded with opentelemetry-proto), and each shows caller → engine →
//! worker as parent and child. Also: `engine::log::*` in `engine::logs::list`,
//! bad frames refused and counted, and a collector that is down costing
//! spans (counted) but never calls.

mod common;

use common::otlp::{OtlpReceiver, Received};
use common::programs::Program;
use common::{RawClient, TestEngine, WAIT, test_config, wait_for, wait_until};
use futures_util::SinkExt;
use prometheus_parse::Scrape;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// SDK span exports are batched (50 ms here) and cross two sockets.
const SPANS_WAIT: Duration = Duration::from_secs(20);

/// An engine exporting to `receiver`, flushing often so tests wait little.
async fn engine_exporting_to(receiver: &OtlpReceiver) -> TestEngine {
    let mut config = test_config();
    config.otel.endpoint = Some(receiver.endpoint());
    config.otel.flush_interval = Duration::from_millis(50);
    TestEngine::start_with(config).await
}

/// The result of an engine function called by a raw client.
async fn engine_fn(client: &mut RawClient, function_id: &str, data: Value) -> Value {
    let frame = client.call(function_id, data).await;
    assert!(frame.get("error").is_none(), "{function_id}: {frame}");
    frame["result"].clone()
}

/// The spans of `trace_id`, flattened from `engine::traces::tree`, by span id.
fn flatten(nodes: &[Value], out: &mut Vec<Value>) {
    for n in nodes {
        out.push(n.clone());
        flatten(n["children"].as_array().map_or(&[][..], Vec::as_slice), out);
    }
}

/// Checks one trace: the caller's span, the engine's `call <fn>` span under
/// it, and the worker's `execute <fn>` span under that, as
/// `engine::traces::tree` nests them and as the OTLP receiver got them.
async fn check_trace(
    engine: &TestEngine,
    receiver: &OtlpReceiver,
    out: &Value,
    function_id: &str,
    (caller_service, worker_service): (&str, &str),
) {
    let trace_id = out["trace_id"].as_str().expect("trace_id").to_owned();
    let caller_span = out["span_id"].as_str().expect("span_id").to_owned();
    let engine_name = format!("call {function_id}");
    let worker_name = format!("execute {function_id}");

    let mut op = RawClient::worker(&engine.url, "operator").await;
    let tree = wait_for(
        "the whole trace in engine::traces::tree",
        SPANS_WAIT,
        async || {
            let t = engine_fn(
                &mut op,
                "engine::traces::tree",
                json!({"trace_id": trace_id}),
            )
            .await;
            let mut all = Vec::new();
            flatten(t["roots"].as_array().unwrap(), &mut all);
            let names: Vec<&str> = all.iter().filter_map(|s| s["name"].as_str()).collect();
            if [engine_name.as_str(), worker_name.as_str()]
                .iter()
                .all(|n| names.contains(n))
                && all.iter().any(|s| s["span_id"] == caller_span.as_str())
            {
                Ok(t)
            } else {
                Err(format!("{names:?}"))
            }
        },
    )
    .await;
    // Nested as the calls went: caller → engine → worker.
    let roots = tree["roots"].as_array().unwrap();
    let caller = roots
        .iter()
        .find(|r| r["span_id"] == caller_span.as_str())
        .unwrap_or_else(|| panic!("the caller's span is a root: {tree}"));
    assert_eq!(caller["service_name"], caller_service, "{caller}");
    let engine_span = caller["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == engine_name.as_str())
        .unwrap_or_else(|| panic!("the engine's span is the caller's child: {tree}"));
    assert_eq!(engine_span["service_name"], "qmesh");
    assert_eq!(engine_span["status"], "ok");
    assert!(
        engine_span["attributes"]
            .as_array()
            .unwrap()
            .contains(&json!(["function_id", function_id])),
        "{engine_span}"
    );
    let worker_span = engine_span["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == worker_name.as_str())
        .unwrap_or_else(|| panic!("the worker's span is the engine's child: {tree}"));
    assert_eq!(worker_span["service_name"], worker_service);
    let engine_span_id = engine_span["span_id"].as_str().unwrap().to_owned();
    let worker_span_id = worker_span["span_id"].as_str().unwrap().to_owned();

    // engine::traces::list finds the trace by its root, the caller's span.
    let listed = engine_fn(
        &mut op,
        "engine::traces::list",
        json!({"trace_id": trace_id}),
    )
    .await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["spans"][0]["span_id"], caller_span.as_str());

    // The same links, exported over OTLP: the engine's span and the
    // workers' spans (each with its own service), the caller's included.
    let received = wait_for("the trace at the OTLP receiver", SPANS_WAIT, async || {
        let spans: Vec<Received> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_id)
            .collect();
        let has = |id: &str| spans.iter().any(|s| s.span_id() == id);
        if has(&caller_span) && has(&engine_span_id) && has(&worker_span_id) {
            Ok(spans)
        } else {
            Err(format!("{} spans of the trace", spans.len()))
        }
    })
    .await;
    let by_id = |id: &str| received.iter().find(|s| s.span_id() == id).unwrap();
    let (c, e, w) = (
        by_id(&caller_span),
        by_id(&engine_span_id),
        by_id(&worker_span_id),
    );
    assert_eq!(e.parent_span_id(), caller_span, "engine span's parent");
    assert_eq!(w.parent_span_id(), engine_span_id, "worker span's parent");
    assert_eq!(e.span.name, engine_name);
    assert_eq!(w.span.name, worker_name);
    assert_eq!(
        (c.service.as_str(), e.service.as_str(), w.service.as_str()),
        (caller_service, "qmesh", worker_service)
    );
}

/// A caller program (language, script) calls `<prefix>::traced`, served by a
/// worker program in the other language, both with OpenTelemetry on, then
/// the trace is checked both ways.
async fn traced_across(caller: (&str, &str), worker: (&str, &str), prefix: &str) {
    let receiver = OtlpReceiver::start().await;
    let engine = engine_exporting_to(&receiver).await;
    let function_id = format!("{prefix}::traced");
    let mut served = Program::start(worker.0, worker.1, &[], &engine.url);
    served.ready().await;
    engine.wait_for_providers(&function_id, 1).await;

    let mut call = Program::start(
        caller.0,
        caller.1,
        &[&function_id, r#"{"n":7}"#],
        &engine.url,
    );
    let out = call
        .expect_json("traced result", |v| v.get("trace_id").is_some())
        .await;
    assert_eq!(out["result"], json!({"traced": worker.0, "n": 7}));
    assert_eq!(call.finish().await.0, 0);

    let services = (
        format!("{}-otel-call", short(caller.0)),
        format!("{}-otel-worker", short(worker.0)),
    );
    check_trace(
        &engine,
        &receiver,
        &out,
        &function_id,
        (&services.0, &services.1),
    )
    .await;
    assert_eq!(served.finish().await.0, 0);
    engine.stop().await;
}

/// The service-name prefix each test program uses.
fn short(lang: &str) -> &str {
    if lang == "python" { "py" } else { lang }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_caller_traced_through_the_engine_to_a_python_worker() {
    traced_across(
        ("node", "otel_call.mjs"),
        ("python", "otel_worker.py"),
        "py",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_caller_traced_through_the_engine_to_a_node_worker() {
    traced_across(
        ("python", "otel_call.py"),
        ("node", "otel_worker.mjs"),
        "node",
    )
    .await;
}

#[tokio::test]
async fn a_call_without_traceparent_starts_a_trace_and_a_failure_is_an_error_span() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["math::div"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let id = caller.send_call("math::div", json!({"a": 1, "b": 0})).await;
    let inv = exec
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    let tp = inv["traceparent"]
        .as_str()
        .expect("the engine's span as parent");
    let trace_id = tp.split('-').nth(1).unwrap().to_owned();
    exec.send(
        json!({"type":"invocationresult","invocation_id":id,"function_id":"math::div",
        "error":{"code":"division_by_zero","message":"b is 0"}}),
    )
    .await;
    caller
        .recv_until("result", |v| v["type"] == "invocationresult")
        .await;

    let listed = engine_fn(
        &mut caller,
        "engine::traces::list",
        json!({"trace_id": trace_id}),
    )
    .await;
    let span = &listed["spans"][0];
    assert_eq!(span["name"], "call math::div", "{listed}");
    assert_eq!(span["parent_span_id"], Value::Null);
    assert_eq!(span["status"], "error");
    assert_eq!(span["status_description"], "division_by_zero");
    assert_eq!(span["span_id"], tp.split('-').nth(2).unwrap());

    let m = engine_fn(&mut caller, "engine::metrics::list", json!({})).await;
    assert_eq!(m["engine_metrics"]["invocations"]["error"], 1, "{m}");
    assert_eq!(
        m["engine_metrics"]["invocations"]["by_function"]["math::div"],
        1
    );

    let refused = caller
        .call("engine::traces::list", json!({"sort_by": "size"}))
        .await;
    assert_eq!(refused["error"]["code"], "INVALID_ARGUMENTS", "{refused}");
    engine.stop().await;
}

#[tokio::test]
async fn an_http_request_continues_the_clients_trace_to_its_handler() {
    let engine = TestEngine::start().await;
    let mut w = engine.worker_with("web", &["web::hello"]).await;
    let before = engine.http_routes();
    w.send(
        json!({"type":"registertrigger","id":uuid::Uuid::new_v4().to_string(),"trigger_type":"http",
        "function_id":"web::hello","config":{"api_path":"hello","http_method":"GET"}}),
    )
    .await;
    wait_until("route live", WAIT, async || engine.http_routes() > before).await;

    let client_span = "00f067aa0ba902b7";
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = reqwest::Client::new()
        .get(format!("http://{}/hello", engine.http_addr()))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .header("baggage", "tenant=acme")
        .send();
    let served = tokio::spawn(request);
    let inv = w
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    let tp = inv["traceparent"].as_str().expect("traceparent").to_owned();
    assert_eq!(tp.split('-').nth(1), Some(trace_id), "{tp}");
    assert_eq!(inv["baggage"], "tenant=acme");
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":"web::hello","result":{"status_code":200,"body":{"hi":true}}}),
    )
    .await;
    assert_eq!(served.await.unwrap().unwrap().status(), 200);

    // The engine's span for the request: the client's span is its parent,
    // and it is the handler's parent.
    let tree = engine_fn(
        &mut w,
        "engine::traces::tree",
        json!({"trace_id": trace_id}),
    )
    .await;
    let span = &tree["roots"][0];
    assert_eq!(span["name"], "call web::hello", "{tree}");
    assert_eq!(span["parent_span_id"], client_span);
    assert_eq!(
        Some(span["span_id"].as_str().unwrap()),
        tp.split('-').nth(2)
    );
    engine.stop().await;
}

#[tokio::test]
async fn engine_log_lines_are_listed_with_their_trace() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "logger").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = w
        .call(
            "engine::log::warn",
            json!({"message": "disk almost full", "data": {"free_mb": 12}, "trace_id": trace_id, "span_id": "00f067aa0ba902b7"}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    w.call("engine::log::info", json!({"message": "unrelated"}))
        .await;

    let listed = engine_fn(&mut w, "engine::logs::list", json!({"trace_id": trace_id})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    let log = &listed["logs"][0];
    assert_eq!(log["body"], "disk almost full");
    assert_eq!(log["severity_text"], "WARN");
    assert_eq!(log["severity_number"], 13);
    assert_eq!(log["attributes"]["free_mb"], 12);
    assert_eq!(log["service_name"], "logger");
    let errors_only = engine_fn(&mut w, "engine::logs::list", json!({"severity_min": 17})).await;
    assert_eq!(errors_only["total"], 0, "{errors_only}");
    engine.stop().await;
}

#[tokio::test]
async fn baggage_functions_read_the_calls_own_baggage() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "bag").await;
    let call = |function_id: &str, data: Value| {
        json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4().to_string(),
            "function_id":function_id,"data":data,"baggage":"tenant=acme,note=a%20b;p=1"})
    };
    for (f, data, want) in [
        (
            "engine::baggage::get",
            json!({"key": "note"}),
            json!({"value": "a b"}),
        ),
        (
            "engine::baggage::get",
            json!({"key": "nope"}),
            json!({"value": null}),
        ),
        (
            "engine::baggage::get_all",
            json!({}),
            json!({"baggage": {"tenant": "acme", "note": "a b"}}),
        ),
    ] {
        w.send(call(f, data)).await;
        let r = w.recv_until(f, |v| v["type"] == "invocationresult").await;
        assert_eq!(r["result"], want, "{f}");
    }
    w.send(call(
        "engine::baggage::set",
        json!({"key": "user", "value": "x,y"}),
    ))
    .await;
    let r = w
        .recv_until("set", |v| v["type"] == "invocationresult")
        .await;
    assert_eq!(r["result"]["success"], true);
    assert_eq!(
        r["result"]["baggage"],
        "tenant=acme,note=a b,user=x%2Cy".replace(' ', "%20")
    );
    let bad = w
        .call(
            "engine::baggage::set",
            json!({"key": "bad key", "value": "v"}),
        )
        .await;
    assert_eq!(bad["error"]["code"], "INVALID_ARGUMENTS", "{bad}");
    engine.stop().await;
}

async fn scrape(engine: &TestEngine) -> Scrape {
    let (status, body) = engine.get("/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("exposition format")
}

fn counter(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{metric} is not a number"),
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn bad_telemetry_frames_are_refused_and_counted_good_ones_kept() {
    let engine = TestEngine::start().await;
    let (mut otel, _) = tokio_tungstenite::connect_async(format!("{}/otel", engine.url))
        .await
        .expect("/otel");
    for frame in [&b"JUNK{}"[..], b"OTLP{not json", b"LOGS[]"] {
        otel.send(Message::Binary(frame.to_vec().into()))
            .await
            .unwrap();
    }
    let good = br#"LOGS{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"raw"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"1","severityNumber":17,"severityText":"ERROR","body":{"stringValue":"from a socket"}}]}]}]}"#;
    otel.send(Message::Binary(good.to_vec().into()))
        .await
        .unwrap();

    wait_until("the frames counted", WAIT, async || {
        let s = scrape(&engine).await;
        counter(
            &s,
            "qmesh_telemetry_frames_total",
            &[("kind", "unknown"), ("outcome", "refused")],
        ) == 1.0
            && counter(
                &s,
                "qmesh_telemetry_frames_total",
                &[("kind", "traces"), ("outcome", "refused")],
            ) == 1.0
            && counter(
                &s,
                "qmesh_telemetry_frames_total",
                &[("kind", "logs"), ("outcome", "refused")],
            ) == 1.0
            && counter(
                &s,
                "qmesh_telemetry_frames_total",
                &[("kind", "logs"), ("outcome", "kept")],
            ) == 1.0
    })
    .await;
    let mut w = RawClient::worker(&engine.url, "reader").await;
    let listed = engine_fn(
        &mut w,
        "engine::logs::list",
        json!({"severity_text": "error"}),
    )
    .await;
    assert_eq!(listed["logs"][0]["body"], "from a socket", "{listed}");
    assert_eq!(listed["logs"][0]["service_name"], "raw");
    let health = engine_fn(&mut w, "engine::health::check", json!({})).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["components"]["logs"]["details"]["stored_logs"], 1);
    assert_eq!(health["components"]["otel"]["status"], "disabled");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_metrics_reach_the_collector_with_their_resource() {
    let receiver = OtlpReceiver::start().await;
    let engine = engine_exporting_to(&receiver).await;
    let (mut otel, _) = tokio_tungstenite::connect_async(format!("{}/otel", engine.url))
        .await
        .expect("/otel");
    let resource = r#"{"attributes":[{"key":"service.name","value":{"stringValue":"billing"}}]}"#;
    let logs = format!(
        r#"LOGS{{"resourceLogs":[{{"resource":{resource},"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"5","severityNumber":13,"severityText":"WARN","body":{{"stringValue":"card declined"}}}}]}}]}}]}}"#
    );
    // As the Python SDK writes them: 64-bit integers as strings.
    let metrics = format!(
        r#"MTRC{{"resourceMetrics":[{{"resource":{resource},"scopeMetrics":[{{"metrics":[{{"name":"charges","sum":{{"dataPoints":[{{"timeUnixNano":"6","asInt":"41"}}],"aggregationTemporality":2,"isMonotonic":true}}}}]}}]}}]}}"#
    );
    for frame in [logs, metrics] {
        otel.send(Message::Binary(frame.into_bytes().into()))
            .await
            .unwrap();
    }
    // And an engine::log line, exported under the calling worker's name.
    let mut w = RawClient::worker(&engine.url, "ledger").await;
    let r = w
        .call(
            "engine::log::error",
            json!({"message": "ledger out of balance", "data": {"delta": 3},
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let service = |r: Option<&opentelemetry_proto::tonic::resource::v1::Resource>| {
        r.and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    };
    let (logs, metrics) = wait_for("logs and metrics at the collector", WAIT, async || {
        match (receiver.logs(), receiver.metrics()) {
            (l, m) if l.len() == 2 && !m.is_empty() => Ok((l, m)),
            (l, m) => Err(format!("{} logs, {} metrics requests", l.len(), m.len())),
        }
    })
    .await;
    let of = |name: &str| {
        logs.iter()
            .flat_map(|r| &r.resource_logs)
            .find(|rl| service(rl.resource.as_ref()).contains(name))
            .unwrap_or_else(|| panic!("no logs of {name}: {logs:?}"))
    };
    let line = &of("ledger").scope_logs[0].log_records[0];
    assert_eq!(
        (line.severity_number, line.severity_text.as_str()),
        (17, "ERROR")
    );
    assert!(format!("{:?}", line.body).contains("ledger out of balance"));
    assert_eq!(
        common::otlp::hex(&line.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert!(line.attributes.iter().any(|kv| kv.key == "delta"));
    let rl = of("billing");
    assert!(service(rl.resource.as_ref()).contains("billing"));
    let record = &rl.scope_logs[0].log_records[0];
    assert_eq!(record.severity_text, "WARN");
    assert!(format!("{:?}", record.body).contains("card declined"));
    let rm = &metrics[0].resource_metrics[0];
    assert!(service(rm.resource.as_ref()).contains("billing"));
    let metric = &rm.scope_metrics[0].metrics[0];
    assert_eq!(metric.name, "charges");
    assert!(
        format!("{:?}", metric.data).contains("AsInt(41)"),
        "{:?}",
        metric.data
    );

    let s = scrape(&engine).await;
    for (signal, records) in [("logs", 2.0), ("metrics", 1.0)] {
        let exported = [("signal", signal), ("outcome", "exported")];
        assert_eq!(
            counter(&s, "qmesh_otlp_records_total", &exported),
            records,
            "{signal}"
        );
    }
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_never_calls() {
    // A port nothing listens on: every export fails fast.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut config = test_config();
    config.otel.endpoint = Some(endpoint);
    config.otel.flush_interval = Duration::from_millis(20);
    let engine = TestEngine::start_with(config).await;
    let mut exec = engine.worker_with("exec", &["echo::it"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let calls = 50;
    for i in 0..calls {
        let id = caller.send_call("echo::it", json!({"i": i})).await;
        let inv = exec
            .recv_until("invoke", |v| v["type"] == "invokefunction")
            .await;
        exec.send(
            json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
            "function_id":"echo::it","result":{"i":i}}),
        )
        .await;
        let r = caller
            .recv_until("result", |v| v["invocation_id"] == id.as_str())
            .await;
        assert_eq!(r["result"]["i"], i, "calls go on while export fails");
    }
    wait_until(
        "every span counted as failed or dropped",
        WAIT,
        async || {
            let s = scrape(&engine).await;
            let spans = |outcome| [("signal", "spans"), ("outcome", outcome)];
            let lost = counter(&s, "qmesh_otlp_records_total", &spans("failed"))
                + counter(&s, "qmesh_otlp_records_total", &spans("dropped"));
            lost == f64::from(calls)
        },
    )
    .await;
    let s = scrape(&engine).await;
    let exported = [("signal", "spans"), ("outcome", "exported")];
    assert_eq!(counter(&s, "qmesh_otlp_records_total", &exported), 0.0);
    let health = engine_fn(&mut caller, "engine::health::check", json!({})).await;
    assert_eq!(
        health["components"]["otel"]["status"], "healthy",
        "{health}"
    );
    engine.stop().await;
}

/// A queued job's attempts join the enqueuer's trace: the enqueuer's span →
/// the engine's `enqueue` span → attempt 1 (failed) → retry → attempt 2,
/// each attempt an engine span under the enqueue span and the worker's
/// parent; `queue::get` names the trace.
#[tokio::test]
async fn a_retried_job_s_attempts_are_spans_of_the_enqueuer_s_trace() {
    use common::queue::{complete, fail, fast_config, next_job, op, until_state};
    let engine = TestEngine::start_with(fast_config()).await;
    let mut w = engine.worker_with("exec", &["job::run"]).await;
    let mut producer = RawClient::worker(&engine.url, "producer").await;
    let (trace_id, enqueuer_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let id = uuid::Uuid::new_v4().to_string();
    producer
        .send(
            json!({"type":"invokefunction","invocation_id":id,"function_id":"job::run","data":{},
            "traceparent": format!("00-{trace_id}-{enqueuer_span}-01"),
            "action":{"type":"enqueue","queue":"traced"}}),
        )
        .await;
    let ack = producer
        .recv_until("receipt", |v| v["invocation_id"] == id.as_str())
        .await;
    let receipt = ack["result"]["messageReceiptId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut attempt_spans = Vec::new();
    for attempt in 1..=2 {
        let inv = next_job(&mut w).await;
        let tp = inv["traceparent"]
            .as_str()
            .expect("a traceparent")
            .to_owned();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            parts[1], trace_id,
            "attempt {attempt} in the enqueuer's trace: {inv}"
        );
        attempt_spans.push(parts[2].to_owned());
        if attempt == 1 {
            fail(&mut w, &inv, "first try fails").await;
        } else {
            complete(&mut w, &inv, json!("ok")).await;
        }
    }
    assert_ne!(attempt_spans[0], attempt_spans[1], "one span per attempt");
    let job = until_state(&mut producer, &receipt, "completed").await;
    assert_eq!(job["trace_id"], trace_id, "{job}");
    let tree = op(
        &mut producer,
        "engine::traces::tree",
        json!({"trace_id": trace_id}),
    )
    .await;
    let mut all = Vec::new();
    flatten(tree["roots"].as_array().unwrap(), &mut all);
    // The engine's enqueue span sits under the enqueuer's, and each attempt under it.
    let enqueue = all
        .iter()
        .find(|s| s["name"] == "enqueue job::run")
        .unwrap_or_else(|| panic!("an enqueue span: {tree}"));
    assert_eq!(enqueue["parent_span_id"], enqueuer_span, "{enqueue}");
    assert_eq!(enqueue["status"], "ok", "{enqueue}");
    for span_id in &attempt_spans {
        let span = all
            .iter()
            .find(|s| s["span_id"] == span_id.as_str())
            .expect("an attempt's span");
        assert_eq!(span["name"], "call job::run", "{span}");
        assert_eq!(span["parent_span_id"], enqueue["span_id"], "{span}");
    }
    let statuses: Vec<&str> = attempt_spans
        .iter()
        .map(|id| {
            all.iter().find(|s| s["span_id"] == id.as_str()).unwrap()["status"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(statuses, ["error", "ok"], "{tree}");
}

/// An `https://` collector with a private CA (`ca_file`) and an API key
/// header (`headers`): the engine's spans reach it, each request with the key.
#[tokio::test]
async fn spans_reach_an_https_collector_with_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start_tls(dir.path()).await;
    let mut config = test_config();
    config.otel.endpoint = Some(receiver.endpoint());
    config.otel.flush_interval = Duration::from_millis(50);
    config.otel.ca_file = Some(dir.path().join("ca.pem"));
    config
        .otel
        .headers
        .insert("x-api-key".into(), "k-123".into());
    let engine = TestEngine::start_with(config).await;
    let mut exec = engine.worker_with("exec", &["tls::echo"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    caller.send_call("tls::echo", json!({})).await;
    exec.answer_next(json!({"result": true})).await;
    wait_until(
        "the engine's span at the https collector",
        SPANS_WAIT,
        async || {
            receiver
                .spans()
                .iter()
                .any(|s| s.span.name == "call tls::echo")
        },
    )
    .await;
    let keys = receiver.api_keys();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.as_deref() == Some("k-123")),
        "{keys:?}"
    );

    // Without the CA the collector is not trusted: nothing arrives, the failure is counted.
    let other = tempfile::tempdir().unwrap();
    let untrusted = OtlpReceiver::start_tls(other.path()).await;
    let mut config = test_config();
    config.otel.endpoint = Some(untrusted.endpoint());
    config.otel.flush_interval = Duration::from_millis(50);
    let engine = TestEngine::start_with(config).await;
    let mut exec = engine.worker_with("exec", &["tls::echo"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    caller.send_call("tls::echo", json!({})).await;
    exec.answer_next(json!({"result": true})).await;
    wait_until("the failed export counted", SPANS_WAIT, async || {
        let s = scrape(&engine).await;
        counter(
            &s,
            "qmesh_otlp_records_total",
            &[("signal", "spans"), ("outcome", "failed")],
        ) >= 1.0
    })
    .await;
    assert!(untrusted.spans().is_empty());
}
