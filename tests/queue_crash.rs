//! kill -9 under load: the real `qmesh` binary is killed with SIGKILL while a
//! producer enqueues 10,000 jobs and a worker runs them; after a restart on
//! the same store, every acknowledged receipt must complete at least once.

mod common;

use common::RawClient;
use serde_json::json;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const JOBS: usize = 10_000;
const KILL_AFTER_ACKS: usize = 3_000;

/// Starts the engine binary on an ephemeral port; returns it and its URL.
fn start_engine(data_dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qmesh"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start qmesh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("address line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .expect("ws:// in the first line")
        .to_owned();
    (child, url)
}

/// Runs jobs until the socket closes or `done` says stop; returns the `n`s it saw.
/// `pace` slows the worker so acknowledged jobs are still queued at the kill.
async fn work(
    mut w: RawClient,
    pace: Duration,
    done: impl Fn(&HashSet<u64>) -> bool,
) -> HashSet<u64> {
    let mut seen = HashSet::new();
    while !done(&seen) {
        let Ok(Some(inv)) = tokio::time::timeout(Duration::from_secs(30), w.recv()).await else {
            break;
        };
        if inv["type"] != "invokefunction" {
            continue;
        }
        seen.insert(inv["data"]["n"].as_u64().expect("n"));
        tokio::time::sleep(pace).await;
        let reply = json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":inv["function_id"],"result":true});
        if futures_util::SinkExt::send(
            &mut w.ws,
            tokio_tungstenite::tungstenite::Message::Text(reply.to_string().into()),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, url) = start_engine(dir.path());

    let mut worker = RawClient::worker(&url, "crash-worker").await;
    worker.register_function("crash::work").await;
    let first_run = tokio::spawn(work(worker, Duration::from_millis(2), |_| false));

    let mut producer = RawClient::worker(&url, "producer").await;
    let mut pending = std::collections::HashMap::new();
    for n in 0..JOBS as u64 {
        let id = uuid::Uuid::new_v4().to_string();
        pending.insert(id.clone(), n);
        producer
            .send(json!({"type":"invokefunction","invocation_id":id,"function_id":"crash::work","data":{"n":n},
                "action":{"type":"enqueue","queue":"crash"}}))
            .await;
    }
    let mut acked: HashSet<u64> = HashSet::new();
    while acked.len() < KILL_AFTER_ACKS {
        let r = producer.recv().await.expect("engine alive before the kill");
        if r["type"] == "invocationresult" {
            assert!(r["result"]["messageReceiptId"].is_string(), "{r}");
            acked.insert(pending[r["invocation_id"].as_str().unwrap()]);
        }
    }
    engine.kill().expect("SIGKILL");
    engine.wait().unwrap();
    // Acks already on the socket when the engine died count too.
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), producer.recv()).await {
        if r["result"]["messageReceiptId"].is_string() {
            acked.insert(pending[r["invocation_id"].as_str().unwrap()]);
        }
    }
    let before = first_run.await.unwrap();

    let (mut engine, url) = start_engine(dir.path());
    let mut worker = RawClient::worker(&url, "crash-worker").await;
    worker.register_function("crash::work").await;
    let missing: HashSet<u64> = acked.difference(&before).copied().collect();
    let started = Instant::now();
    let after = tokio::time::timeout(
        Duration::from_secs(120),
        work(worker, Duration::ZERO, move |seen| missing.is_subset(seen)),
    )
    .await
    .expect("every acknowledged job ran after the restart");
    let ran: HashSet<u64> = before.union(&after).copied().collect();
    let lost: Vec<_> = acked.difference(&ran).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged jobs lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "acked {} of {JOBS}; ran {} before the kill and {} after ({} ms to finish)",
        acked.len(),
        before.len(),
        after.len(),
        started.elapsed().as_millis()
    );
    engine.kill().ok();
    engine.wait().ok();
}
