//! The dashboard (`/ui/`) in a real browser: headless Chromium, driven by
//! playwright-core (`tests/browser/dashboard-test.mjs`), uses the page the
//! way an operator would, against a real engine with a real worker; the
//! test then checks through engine functions that what the page did really
//! happened. Screenshots of every step go to
//! `$CARGO_TARGET_TMPDIR/dashboard-artifacts/` (the path is printed).
//!
//! Needs Node with `tests/browser/node_modules` (scripts/test installs it)
//! and Chromium at $CHROMIUM or /usr/bin/chromium (scripts/test installs it).

mod common;

use common::{RawClient, TestEngine, WAIT, realtime, test_config, wait_for};
use qmesh::client::{Client, ClientOptions};
use qmesh::config::{Config, Role, TokenConfig};
use qmesh::protocol::ErrorBody;
use qmesh::queue::settings::QueueOverrides;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::process::Command;

const OPS: &str = "ops-secret";
const BILLING: &str = "billing-secret";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium not found at {chromium}: install it (apt-get install -y chromium) or set CHROMIUM"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/test (or npm ci in tests/browser)"
    );
    chromium
}

/// Runs one scenario of the browser script; panics with its output unless
/// it ends with `dashboard test: ok`.
async fn browse(engine: &TestEngine, scenario: &str, env: &[(&str, &str)]) {
    let artifacts = artifacts();
    println!("dashboard screenshots: {}", artifacts.display());
    let run = Command::new("node")
        .args(["dashboard-test.mjs", scenario])
        .current_dir(browser_dir())
        .env("CHROMIUM", chromium())
        .env("DASHBOARD_URL", format!("http://{}/ui/", engine.addr))
        .env("ARTIFACTS", &artifacts)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser test finishes")
        .expect("node runs the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("dashboard test: ok"),
        "dashboard browser test {scenario} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

async fn job_state(client: &Client, receipt: &str) -> Result<Value, String> {
    client
        .call("queue::get", json!({ "receipt": receipt }))
        .await
        .map_err(|e| e.to_string())
}

/// A worker whose mail function fails (with a stack) until `failing` is
/// cleared; the job dead-letters after its two attempts, is found and
/// redriven in the page, and completes. The page also pauses and resumes a
/// queue, pages through 60 jobs and purges them after a typed confirmation;
/// it lists workers, functions (with a schema), triggers and a realtime
/// route with its two clients.
#[tokio::test]
async fn an_operator_redrives_a_dead_job_pauses_and_purges_in_the_browser() {
    let mut config = test_config();
    let fast = QueueOverrides {
        max_attempts: Some(2),
        backoff_initial: Some(Duration::from_millis(10)),
        ..QueueOverrides::default()
    };
    config.queue.queues.insert("emails".into(), fast);
    let engine = TestEngine::start_with(config).await;

    let mailer = Client::connect(&engine.url).await.expect("connects");
    let failing = Arc::new(AtomicBool::new(true));
    let fails = failing.clone();
    mailer
        .register_function("mail::send", move |input: Value| {
            let fails = fails.clone();
            async move {
                if fails.load(Ordering::SeqCst) {
                    let mut e = ErrorBody::new("smtp_down", "SMTP server refused: 421");
                    e.stacktrace =
                        Some("Error: SMTP server refused: 421\n    at send (mailer.rs:12)".into());
                    return Err(e);
                }
                Ok(json!({ "sent": true, "to": input["to"] }))
            }
        })
        .unwrap();
    mailer.announce("mailer").unwrap();
    mailer
        .wait_for_function("mail::send", WAIT)
        .await
        .expect("mail::send registered");

    // A worker that registers a function with its request schema; its queue
    // stays paused, so it never runs anything.
    let mut reporter = RawClient::connect(&engine.url).await;
    reporter
        .send(json!({"type": "registerfunction", "id": "report::build",
            "description": "Builds a report",
            "request_format": {"type": "object", "properties": {"to": {"type": "string"}}}}))
        .await;
    reporter.announce("reporter").await;
    mailer
        .wait_for_function("report::build", WAIT)
        .await
        .unwrap();
    mailer
        .call("queue::pause", json!({ "queue": "reports" }))
        .await
        .unwrap();
    let jobs: Vec<Value> = (0..60).map(|i| json!({ "data": { "n": i } })).collect();
    let batch = json!({ "queue": "reports", "function_id": "report::build", "jobs": jobs });
    mailer.call("queue::enqueue_many", batch).await.unwrap();

    // A realtime route with two clients, for the channels page.
    realtime::serve(&mailer, "chat::connect", |_| async { Ok(Value::Null) }).await;
    let on_connect = json!({ "route": "/ws/chat", "on": "connect" });
    realtime::bind(&mailer, "chat::connect", on_connect).await;
    let _clients = [
        realtime::open(&engine.realtime_url(), "/ws/chat").await,
        realtime::open(&engine.realtime_url(), "/ws/chat").await,
    ];
    wait_for("channel::routes counts both clients", WAIT, async || {
        let r = mailer.call("channel::routes", json!({})).await.unwrap();
        let want = json!([{ "route": "/ws/chat", "handlers": 1, "connections": 2 }]);
        (r["routes"] == want).then_some(()).ok_or(r.to_string())
    })
    .await;

    let receipt = mailer
        .enqueue("emails", "mail::send", json!({ "to": "ann@example.com" }))
        .await
        .expect("enqueued");
    wait_for("the job dead-lettered", WAIT, async || {
        let job = job_state(&mailer, &receipt).await?;
        (job["state"] == "dead")
            .then_some(())
            .ok_or(job.to_string())
    })
    .await;
    failing.store(false, Ordering::SeqCst);

    browse(&engine, "queues", &[("RECEIPT", &receipt)]).await;

    // What the page did went through the engine.
    let job = job_state(&mailer, &receipt).await.unwrap();
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["redrives"], 1, "{job}");
    assert_eq!(job["result"]["sent"], true, "{job}");
    let emails = mailer
        .call("queue::stats", json!({ "queue": "emails" }))
        .await
        .unwrap();
    assert_eq!(emails["paused"], false, "resumed: {emails}");
    let reports = mailer
        .call("queue::stats", json!({ "queue": "reports" }))
        .await
        .unwrap();
    assert_eq!(reports["ready"], 0, "purged: {reports}");
    assert_eq!(reports["paused"], true, "{reports}");
    engine.stop().await;
}

fn token(name: &str, secret: &str, role: Role) -> TokenConfig {
    TokenConfig {
        name: name.to_owned(),
        role,
        sha256: qmesh::token_sha256(secret),
    }
}

/// With `[auth]` tokens the page's files are served to anyone (they hold no
/// data), but its socket is refused without a token, a worker token cannot
/// read jobs, and an operator token can.
#[tokio::test]
async fn with_tokens_the_page_needs_an_operator_token_for_data() {
    let mut config: Config = test_config();
    config.auth.tokens = vec![
        token("ops", OPS, Role::Operator),
        token("billing", BILLING, Role::Worker),
    ];
    let engine = TestEngine::start_with(config).await;

    let (status, body) = engine.get("/ui/", None).await;
    assert_eq!(status, 200, "the page is served without a token");
    assert!(body.contains("<script src=\"app.js\""), "{body}");
    let (status, _) = engine.get("/ui/app.js", None).await;
    assert_eq!(status, 200);
    let (status, _) = engine.get("/ui", None).await;
    assert_eq!(status, 307, "/ui redirects to /ui/");

    let options = ClientOptions {
        token: Some(OPS.to_owned()),
        ..ClientOptions::default()
    };
    let ops = Client::connect_with(&engine.url, options).await.unwrap();
    ops.enqueue("emails", "mail::send", json!({ "to": "bob@example.com" }))
        .await
        .unwrap();

    browse(
        &engine,
        "auth",
        &[("OPS_TOKEN", OPS), ("WORKER_TOKEN", BILLING)],
    )
    .await;
    engine.stop().await;
}
