//! HTTP trigger routes and HTTP-invoked functions end to end: a real engine,
//! real sockets, raw protocol workers, real HTTP clients and a real local
//! HTTP server as the target of HTTP-invoked functions. (iii's own tests of
//! the same features run in `tests/iii_sdk_suite.rs`.)

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use qmesh::client::channel::{ChannelReader, ChannelRef};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn base(engine: &TestEngine) -> String {
    format!("http://{}", engine.http_addr())
}

/// A raw worker providing `function` and binding an `http` trigger to it;
/// returned once the route serves.
async fn route(engine: &TestEngine, function: &str, config: Value) -> RawClient {
    let mut w = engine
        .worker_with(&format!("w-{function}"), &[function])
        .await;
    let id = uuid::Uuid::new_v4().to_string();
    let before = engine.http_routes();
    w.send(json!({"type":"registertrigger","id":id,"trigger_type":"http","function_id":function,"config":config}))
        .await;
    wait_until("route live", WAIT, async || engine.http_routes() > before).await;
    w
}

/// Answers the next invocation with `result` and returns its payload.
async fn answer(w: &mut RawClient, result: Value) -> Value {
    let inv = w
        .recv_until("invokefunction", |v| v["type"] == "invokefunction")
        .await;
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":inv["function_id"],"result":result}),
    )
    .await;
    inv["data"].clone()
}

async fn body_json(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_route_gets_params_lowercase_headers_and_answers_buffered() {
    let engine = TestEngine::start().await;
    let mut w = route(
        &engine,
        "t::item",
        json!({"api_path": "items/:id", "http_method": "get"}),
    )
    .await;
    let req = tokio::spawn(
        http()
            .get(format!("{}/items/abc?limit=10&q=x&q=y", base(&engine)))
            .header("X-Trace", "t1")
            .send(),
    );
    let payload = answer(
        &mut w,
        json!({"status_code": 201, "headers": ["X-Out: 1"], "body": {"ok": true}}),
    )
    .await;
    let resp = req.await.unwrap().unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-out"], "1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(body_json(resp).await, json!({"ok": true}));

    assert_eq!(payload["path_params"], json!({"id": "abc"}));
    assert_eq!(payload["query_params"], json!({"limit": "10", "q": "y"}));
    assert_eq!(payload["headers"]["x-trace"], "t1");
    assert_eq!(payload["path"], "items/:id");
    assert_eq!(payload["method"], "GET");
    assert_eq!(payload["body"], Value::Null);
    assert_eq!(
        payload["trigger"],
        json!({"type":"http","path":"items/:id","method":"GET"})
    );
    assert_eq!(payload["request_body"]["direction"], "read");
    assert_eq!(payload["response"]["direction"], "write");
    assert!(payload.get("_caller_worker_id").is_none(), "{payload}");
}

#[tokio::test]
async fn unknown_paths_methods_and_departed_routes_get_iii_errors() {
    let engine = TestEngine::start().await;
    let r = http()
        .get(format!("{}/health", base(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no built-in routes on the HTTP port");
    assert_eq!(
        body_json(r).await,
        json!({"error": {"code": "NOT_FOUND", "message": "Not Found"}})
    );
    let w = route(
        &engine,
        "t::only_post",
        json!({"api_path": "/p", "http_method": "POST"}),
    )
    .await;
    let r = http()
        .get(format!("{}/p", base(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    drop(w);
    wait_until("route gone with its worker", WAIT, async || {
        engine.http_routes() == 0
    })
    .await;
    let r = http()
        .post(format!("{}/p", base(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn handler_errors_are_500_envelopes_and_silence_is_504() {
    let mut config = test_config();
    config.http.default_timeout = Duration::from_millis(300);
    let engine = TestEngine::start_with(config).await;
    let mut w = route(&engine, "t::flaky", json!({"api_path": "f"})).await;
    let req = tokio::spawn(http().get(format!("{}/f", base(&engine))).send());
    let inv = w
        .recv_until("invokefunction", |v| v["type"] == "invokefunction")
        .await;
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":"t::flaky","error":{"code":"BOOM","message":"no"}}),
    )
    .await;
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status(), 500);
    let e = body_json(r).await;
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["message"].as_str()),
        (Some("BOOM"), Some("no"))
    );
    assert!(e["error"]["error_id"].is_string(), "{e}");

    // A handler that never answers: 504 with an empty body at default_timeout,
    // and the call is not left in flight.
    let started = std::time::Instant::now();
    let r = http()
        .get(format!("{}/f", base(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(r.bytes().await.unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until("no call in flight", WAIT, async || {
        engine.pending_calls().await == 0
    })
    .await;
}

#[tokio::test]
async fn bodies_json_parsed_raw_bytes_exact_oversize_refused() {
    let mut config = test_config();
    config.http.max_body_bytes = 1024;
    let engine = TestEngine::start_with(config).await;
    let mut w = route(
        &engine,
        "t::echo",
        json!({"api_path": "e", "http_method": "POST"}),
    )
    .await;
    for (sent, parsed) in [
        (r#"{"z":2, "a":1}"#, json!({"z": 2, "a": 1})),
        (r#"{"broken": "#, Value::Null),
    ] {
        let req = tokio::spawn(
            http()
                .post(format!("{}/e", base(&engine)))
                .header("content-type", "application/json; charset=utf-8")
                .body(sent)
                .send(),
        );
        let inv = w
            .recv_until("invokefunction", |v| v["type"] == "invokefunction")
            .await;
        let payload = &inv["data"];
        assert_eq!(payload["body"], parsed);
        let r: ChannelRef = serde_json::from_value(payload["request_body"].clone()).unwrap();
        let mut reader = ChannelReader::open(&engine.url, &r).await.unwrap();
        let (raw, _) = reader.read_all().await.unwrap();
        assert_eq!(raw, sent.as_bytes(), "byte-exact raw body");
        w.send(
            json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
            "function_id":"t::echo","result":{"body": {"len": raw.len()}}}),
        )
        .await;
        let resp = req.await.unwrap().unwrap();
        assert_eq!(body_json(resp).await, json!({"len": sent.len()}));
    }
    let r = http()
        .post(format!("{}/e", base(&engine)))
        .header("content-type", "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(body_json(r).await["error"]["code"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn a_condition_answering_false_skips_with_422() {
    let engine = TestEngine::start().await;
    let mut w = route(
        &engine,
        "t::guarded",
        json!({"api_path": "g/:n", "condition_function_id": "t::cond"}),
    )
    .await;
    w.register_function("t::cond").await;
    wait_until("condition registered", WAIT, async || {
        !engine.providers("t::cond").is_empty()
    })
    .await;
    let req = tokio::spawn(http().get(format!("{}/g/1", base(&engine))).send());
    let cond_input = answer(&mut w, json!(false)).await;
    assert_eq!(cond_input["path_params"]["n"], "1");
    assert!(cond_input.get("request_body").is_none(), "{cond_input}");
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        body_json(r).await,
        json!({"error":{"code":"CONDITION_NOT_MET","message":"Request condition not met"},"skipped":true})
    );
}

/// What the local target server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    method: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A real HTTP server on 127.0.0.1:0 answering each request with the next
/// of `answers` (status, body), then 200 `{"ok":true}`.
async fn target(answers: Vec<(u16, &'static str)>) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let answers = answers.clone();
            async move {
                let _ = tx.send(Seen {
                    path: uri.path().to_owned(),
                    method: method.to_string(),
                    headers,
                    body,
                });
                let (status, body) = answers
                    .lock()
                    .unwrap()
                    .next()
                    .unwrap_or((200, r#"{"ok":true}"#));
                (StatusCode::from_u16(status).unwrap(), body)
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, rx)
}

fn loopback_allowed() -> qmesh::Config {
    let mut c = test_config();
    c.http_functions.block_private_ips = false;
    c.http_functions.require_https = false;
    c
}

async fn register_http_fn(engine: &TestEngine, w: &mut RawClient, id: &str, invocation: Value) {
    w.send(json!({"type":"registerfunction","id":id,"invocation":invocation}))
        .await;
    let id = id.to_owned();
    wait_until("http function registered", WAIT, async || {
        !engine.providers(&id).is_empty()
    })
    .await;
}

#[tokio::test]
async fn an_http_function_gets_iii_headers_a_signature_and_its_answer_is_the_result() {
    // SAFETY: set once before the engine reads it; no other test in this file reads it.
    unsafe { std::env::set_var("QMESH_TEST_HOOK_SECRET", "s3cret") };
    let engine = TestEngine::start_with(loopback_allowed()).await;
    let (addr, mut seen) = target(vec![
        (200, r#"{"ok":true}"#),
        (503, r#"{"error":{"code":"busy","message":"later"}}"#),
        (500, "oops"),
    ])
    .await;
    let mut w = RawClient::worker(&engine.url, "hooks").await;
    register_http_fn(
        &engine,
        &mut w,
        "hook::signed",
        json!({"url": format!("http://127.0.0.1:{}/hook/a", addr.port()), "method": "PUT",
               "headers": {"x-custom": "c"}, "auth": {"type": "hmac", "secret_key": "QMESH_TEST_HOOK_SECRET"}}),
    )
    .await;

    let out = w.call("hook::signed", json!({"n": 1})).await;
    assert_eq!(out["result"], json!({"ok": true}), "{out}");
    let got = seen.recv().await.unwrap();
    assert_eq!((got.method.as_str(), got.path.as_str()), ("PUT", "/hook/a"));
    let h = |n: &str| got.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("x-iii-function-path").as_deref(), Some("hook::signed"));
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("x-custom").as_deref(), Some("c"));
    assert!(uuid::Uuid::parse_str(&h("x-iii-invocation-id").unwrap()).is_ok());
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["n"], 1);
    assert_eq!(body["_caller_worker_id"], w.worker_id.as_str());
    // x-iii-Signature: sha256=hex(HMAC-SHA256(secret, "<ts>:<base64(body)>")).
    {
        use base64::Engine as _;
        use hmac::Mac;
        let ts = h("x-iii-timestamp").unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(
            format!(
                "{ts}:{}",
                base64::engine::general_purpose::STANDARD.encode(&got.body)
            )
            .as_bytes(),
        );
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(h("x-iii-signature"), Some(format!("sha256={hex}")));
    }

    let out = w.call("hook::signed", json!({})).await;
    assert_eq!(out["error"]["code"], "busy", "{out}");
    assert_eq!(out["error"]["message"], "later");
    let out = w.call("hook::signed", json!({})).await;
    assert_eq!(out["error"]["code"], "http_error", "{out}");
    assert_eq!(out["error"]["message"], "HTTP 500");
}

#[tokio::test]
async fn secure_defaults_refuse_loopback_by_address_and_by_name() {
    let mut config = test_config();
    // Plain http allowed so only the private-address rule is at work.
    config.http_functions.require_https = false;
    let engine = TestEngine::start_with(config).await;
    let (addr, mut seen) = target(vec![]).await;
    let mut w = RawClient::worker(&engine.url, "hooks").await;

    // An IP literal is refused at registration: the function never exists.
    w.send(json!({"type":"registerfunction","id":"hook::literal",
        "invocation":{"url": format!("http://127.0.0.1:{}/x", addr.port())}}))
        .await;
    // A name is checked where it resolves: `localhost` leads to loopback.
    register_http_fn(
        &engine,
        &mut w,
        "hook::by_name",
        json!({"url": format!("http://localhost:{}/x", addr.port())}),
    )
    .await;
    let out = w.call("hook::literal", json!({})).await;
    assert_eq!(out["error"]["code"], "function_not_found", "{out}");
    let out = w.call("hook::by_name", json!({})).await;
    assert_eq!(out["error"]["code"], "url_validation_failed", "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Private IP blocked"),
        "{out}"
    );
    assert!(
        seen.try_recv().is_err(),
        "no request may reach a private address"
    );

    // And https is required unless configured otherwise.
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "hooks").await;
    w.send(json!({"type":"registerfunction","id":"hook::plain",
        "invocation":{"url":"http://example.com/x"}}))
        .await;
    let out = w.call("hook::plain", json!({})).await;
    assert_eq!(out["error"]["code"], "function_not_found", "{out}");
}

#[tokio::test]
async fn an_enqueued_job_to_an_http_function_is_retried_until_the_endpoint_takes_it() {
    let mut config = loopback_allowed();
    let d = &mut config.queue.defaults;
    d.max_attempts = 3;
    d.backoff_initial = Duration::from_millis(20);
    d.backoff_max = Duration::from_millis(100);
    let engine = TestEngine::start_with(config).await;
    let (addr, mut seen) = target(vec![(502, "bad gateway")]).await;
    let mut w = RawClient::worker(&engine.url, "hooks").await;
    register_http_fn(
        &engine,
        &mut w,
        "hook::queued",
        json!({"url": format!("http://127.0.0.1:{}/deliver", addr.port())}),
    )
    .await;
    let id = uuid::Uuid::new_v4().to_string();
    w.send(
        json!({"type":"invokefunction","invocation_id":id,"function_id":"hook::queued",
        "data":{"event":"signup"},"action":{"type":"enqueue","queue":"webhooks"}}),
    )
    .await;
    let receipt = w
        .recv_until("receipt", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == id.as_str()
        })
        .await;
    let receipt = receipt["result"]["messageReceiptId"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let got = tokio::time::timeout(common::WAIT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.path, "/deliver");
        assert_eq!(
            serde_json::from_slice::<Value>(&got.body).unwrap()["event"],
            "signup"
        );
    }
    let start = std::time::Instant::now();
    loop {
        let job = w.call("queue::get", json!({"receipt": receipt})).await;
        if job["result"]["state"] == "completed" {
            break;
        }
        assert!(start.elapsed() < common::WAIT, "never completed: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The README's Node and Python examples, run with the published SDKs.
#[tokio::test]
async fn node_and_python_sdk_workers_serve_routes() {
    use common::programs::Program;
    let engine = TestEngine::start().await;
    let mut node = Program::start("node", "http_route.mjs", &[], &engine.url);
    let mut py = Program::start("python", "http_route.py", &[], &engine.url);
    node.ready().await;
    py.ready().await;
    wait_until("both routes live", WAIT, async || engine.http_routes() == 2).await;

    let r = http()
        .get(format!("{}/node/hello/ada?lang=en", base(&engine)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "node");
    assert_eq!(
        body_json(r).await,
        json!({"hello": "ada", "lang": "en", "method": "GET"})
    );

    let r = http()
        .post(format!("{}/py/echo", base(&engine)))
        .header("content-type", "application/json")
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-served-by"], "python");
    assert_eq!(
        body_json(r).await,
        json!({"received": {"n": 1}, "content_type": "application/json"})
    );
    assert_eq!(node.finish().await.0, 0);
    assert_eq!(py.finish().await.0, 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.http.header_read_timeout = Duration::from_millis(200);
    let engine = TestEngine::start_with(config).await;
    let mut tcp = tokio::net::TcpStream::connect(engine.http_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(common::WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the engine closes the connection")
        .ok();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(5),
        "closed after {waited:?}, not at header_read_timeout"
    );
}

#[tokio::test]
async fn bearer_and_api_key_auth_come_from_engine_environment_variables() {
    // SAFETY: set before the engine reads them; no other test reads these names.
    unsafe {
        std::env::set_var("QMESH_TEST_HOOK_TOKEN", "tok-1");
        std::env::set_var("QMESH_TEST_HOOK_KEY", "key-1");
    }
    let engine = TestEngine::start_with(loopback_allowed()).await;
    let (addr, mut seen) = target(vec![(204, "")]).await;
    let url = format!("http://127.0.0.1:{}/h", addr.port());
    let mut w = RawClient::worker(&engine.url, "hooks").await;
    register_http_fn(
        &engine,
        &mut w,
        "hook::bearer",
        json!({"url": url, "auth": {"type": "bearer", "token_key": "QMESH_TEST_HOOK_TOKEN"}}),
    )
    .await;
    register_http_fn(&engine, &mut w, "hook::key",
        json!({"url": url, "auth": {"type": "api_key", "header": "x-api-key", "value_key": "QMESH_TEST_HOOK_KEY"}})).await;
    // A missing variable refuses the registration.
    w.send(json!({"type":"registerfunction","id":"hook::nokey",
        "invocation":{"url": url, "auth": {"type": "bearer", "token_key": "QMESH_TEST_NOT_SET"}}}))
        .await;

    let out = w.call("hook::bearer", json!({})).await;
    assert!(
        out.get("error").is_none() && out.get("result").is_none_or(Value::is_null),
        "204 is null: {out}"
    );
    let got = seen.recv().await.unwrap();
    assert_eq!(got.headers["authorization"], "Bearer tok-1");
    let out = w.call("hook::key", json!({})).await;
    assert_eq!(out["result"], json!({"ok": true}), "{out}");
    assert_eq!(seen.recv().await.unwrap().headers["x-api-key"], "key-1");
    let out = w.call("hook::nokey", json!({})).await;
    assert_eq!(out["error"]["code"], "function_not_found", "{out}");
}

#[tokio::test]
async fn a_streamed_upload_is_read_whole_and_a_streamed_answer_arrives_whole() {
    use qmesh::client::channel::ChannelWriter;
    let engine = TestEngine::start().await;
    let mut w = route(
        &engine,
        "t::upload",
        json!({"api_path": "up", "http_method": "POST"}),
    )
    .await;
    let upload: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = upload.clone();
    let req = tokio::spawn(
        http()
            .post(format!("{}/up", base(&engine)))
            .header("content-type", "application/octet-stream")
            .body(sent)
            .send(),
    );
    let inv = w
        .recv_until("invokefunction", |v| v["type"] == "invokefunction")
        .await;
    assert_eq!(inv["data"]["body"], Value::Null);
    let body_ref: ChannelRef = serde_json::from_value(inv["data"]["request_body"].clone()).unwrap();
    let out_ref: ChannelRef = serde_json::from_value(inv["data"]["response"].clone()).unwrap();
    // Headers first, before the body is read (as iii's upload test does).
    let mut out = ChannelWriter::open(&engine.url, &out_ref).await.unwrap();
    out.send_text(r#"{"type":"set_status","status_code":202}"#)
        .await
        .unwrap();
    out.send_text(r#"{"type":"set_headers","headers":{"content-type":"text/plain"}}"#)
        .await
        .unwrap();
    let mut reader = ChannelReader::open(&engine.url, &body_ref).await.unwrap();
    let (raw, _) = reader.read_all().await.unwrap();
    assert!(
        raw == upload,
        "the upload arrives byte for byte ({} bytes)",
        raw.len()
    );
    out.write(b"got ").await.unwrap();
    out.write(raw.len().to_string().as_bytes()).await.unwrap();
    out.finish().await.unwrap();
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":"t::upload","result":null}),
    )
    .await;
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), format!("got {}", 6 * 1024 * 1024));
    wait_until("no call in flight", WAIT, async || {
        engine.pending_calls().await == 0
    })
    .await;
}

#[tokio::test]
async fn global_middleware_runs_before_every_route_and_can_answer_for_it() {
    let mut config =
        qmesh::Config::from_toml("[[http.middleware]]\nfunction_id = \"mw::gate\"\n").unwrap();
    let defaults = test_config();
    config.http.listen = defaults.http.listen;
    config.invocation = defaults.invocation;
    let engine = TestEngine::start_with(config).await;
    let mut w = route(&engine, "t::behind_gate", json!({"api_path": "gated/:id"})).await;
    w.register_function("mw::gate").await;
    wait_until("gate registered", WAIT, async || {
        !engine.providers("mw::gate").is_empty()
    })
    .await;

    let req = tokio::spawn(http().get(format!("{}/gated/7?k=v", base(&engine))).send());
    let input = answer(
        &mut w,
        json!({"action": "respond", "response": {"status_code": 401, "body": {"error": "no"}}}),
    )
    .await;
    assert_eq!(input["phase"], "preHandler");
    assert_eq!(input["request"]["path_params"]["id"], "7");
    assert_eq!(input["request"]["query_params"]["k"], "v");
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(body_json(r).await, json!({"error": "no"}));

    let req = tokio::spawn(http().get(format!("{}/gated/8", base(&engine))).send());
    answer(&mut w, json!({"action": "continue"})).await;
    let payload = answer(&mut w, json!({"body": {"through": true}})).await;
    assert_eq!(payload["path_params"]["id"], "8");
    let r = req.await.unwrap().unwrap();
    assert_eq!(body_json(r).await, json!({"through": true}));
}

/// iii's probes: one read must hold the whole request (head and body in one
/// write), and an answer without a length is read until the peer closes.
#[tokio::test]
async fn the_request_arrives_in_one_read_and_an_unsized_answer_is_read_to_eof() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engine = TestEngine::start_with(loopback_allowed()).await;
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = probe.local_addr().unwrap().port();
    let mut w = RawClient::worker(&engine.url, "hooks").await;
    register_http_fn(
        &engine,
        &mut w,
        "hook::probe",
        json!({"url": format!("http://127.0.0.1:{port}/probe")}),
    )
    .await;
    let served = tokio::spawn(async move {
        let (mut s, _) = probe.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        let raw = String::from_utf8_lossy(&buf[..n]).into_owned();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"ok\":")
            .await
            .unwrap();
        s.write_all(b"true}").await.unwrap();
        drop(s);
        raw
    });
    let out = w.call("hook::probe", json!({"hello": "world"})).await;
    assert_eq!(out["result"], json!({"ok": true}), "{out}");
    let raw = served.await.unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a whole head in the first read");
    assert!(head.starts_with("POST /probe HTTP/1.1"), "{head}");
    let body: Value = serde_json::from_str(body).expect("the JSON body in the same read");
    assert_eq!(body["hello"], "world");
}
