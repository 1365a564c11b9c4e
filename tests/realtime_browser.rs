//! The chat example in a real browser: the example's Node worker serves the
//! page and handles `/ws/chat`; headless Chromium (driven by playwright-core,
//! `examples/chat/browser-test.mjs`) opens the page twice, joins a room in
//! both, and checks that a message typed in one appears in the other.
//!
//! Needs Node with `examples/chat/node_modules` (scripts/test installs it) and
//! Chromium at $CHROMIUM or /usr/bin/chromium (scripts/test installs it).

mod common;

use common::{TestEngine, WAIT, wait_until};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn chat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/chat")
}

#[tokio::test]
async fn two_browsers_chat_through_the_example() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium not found at {chromium}: install it (apt-get install -y chromium) or set CHROMIUM"
    );
    assert!(
        chat_dir().join("node_modules/playwright-core").exists(),
        "examples/chat/node_modules is missing: run scripts/test (or npm ci in examples/chat)"
    );
    let engine = TestEngine::start().await;
    let mut worker = Command::new("node")
        .arg("worker.mjs")
        .current_dir(chat_dir())
        .env("III_URL", &engine.url)
        .env("QMESH_REALTIME_URL", engine.realtime_url())
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the chat worker");
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the worker prints its page address")
        .unwrap()
        .expect("a line");
    let page = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no page address in {line:?}"))
        .to_owned();
    wait_until("the chat worker's five triggers", WAIT, async || {
        engine.route_handlers("/ws/chat") == Some(5)
    })
    .await;
    let run = Command::new("node")
        .args(["browser-test.mjs", &page])
        .current_dir(chat_dir())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser test finishes")
        .expect("node runs the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("browser test: ok"),
        "browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let _ = worker.kill().await;
}
