//! A full disk, simulated without root: the real binary runs with a small
//! `RLIMIT_FSIZE` (SIGXFSZ ignored), so sled's log cannot grow past it and
//! its writes fail as on a full disk. Enqueues are refused with a clear code,
//! `/health` says why, and after kill -9 and a restart with room again every
//! acknowledged job is there.

mod common;

use common::{EngineProcess, RawClient};
use serde_json::{Value, json};
use std::collections::HashSet;

/// The queue's job counts by state.
async fn counts(c: &mut RawClient) -> Vec<Value> {
    let s = c.call("queue::stats", json!({"queue": "full"})).await["result"].clone();
    ["ready", "waiting_for_worker", "delayed", "held", "running"]
        .iter()
        .map(|k| s[*k].clone())
        .collect()
}

/// An enqueue through the `Enqueue` action: `Ok(receipt)` or `Err(error)`.
async fn enqueue(c: &mut RawClient, n: usize) -> Result<String, Value> {
    let id = uuid::Uuid::new_v4().to_string();
    // Well under sled's blob threshold, so every byte goes into its log.
    let data = json!({"n": n, "pad": "x".repeat(40_000)});
    c.send(
        json!({"type":"invokefunction","invocation_id":id,"function_id":"full::job",
        "data":data,"action":{"type":"enqueue","queue":"full"}}),
    )
    .await;
    let r = c
        .recv_until("the enqueue's answer", |v| {
            v["type"] == "invocationresult" && v["invocation_id"] == id.as_str()
        })
        .await;
    match r["result"]["messageReceiptId"].as_str() {
        Some(receipt) => Ok(receipt.to_owned()),
        None => Err(r["error"].clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_enqueues_clearly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut engine = EngineProcess::start_with_file_limit(&data_dir, 6 << 20);
    assert_eq!(engine.health()["store"]["state"], "ok");
    let mut c = RawClient::worker(&engine.url, "full-producer").await;
    let mut acked = HashSet::new();
    let refusal = loop {
        match enqueue(&mut c, acked.len()).await {
            Ok(receipt) => assert!(acked.insert(receipt)),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "the file size limit never bit");
    };
    assert!(!acked.is_empty(), "the store filled before any enqueue");
    assert_eq!(refusal["code"], "enqueue_error", "{refusal}");
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("store_full:"), "{refusal}");
    let health = engine.health();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["state"], "degraded", "{health}");
    assert_eq!(health["store"]["reason"], "store_full", "{health}");
    // queue::enqueue names the reason in its code.
    let r = c
        .call(
            "queue::enqueue",
            json!({"queue":"full","function_id":"full::job","data":{"pad":"x".repeat(40_000)}}),
        )
        .await;
    assert_eq!(r["error"]["code"], "store_full", "{r}");
    engine.kill();
    let engine = EngineProcess::start_in(&data_dir);
    let mut c = RawClient::worker(&engine.url, "full-checker").await;
    for receipt in &acked {
        let job = c.call("queue::get", json!({"receipt": receipt})).await;
        assert!(
            job["result"]["state"].is_string(),
            "acknowledged job {receipt} is gone after the restart: {job}"
        );
    }
    assert_eq!(engine.health()["store"]["state"], "ok");
}

/// Refused jobs are not counted: more refusals leave the counts as they were.
///
/// Ignored: in about one run in ten the scheduler stops answering. A
/// backtrace of the hung engine shows it spinning in `queue::stats`'s scan
/// of the ready index: sled 0.34.7's iterator splits an oversized node as it
/// reads (`Iter::next_inner` → `Tree::view_for_key` → `Tree::split_node`),
/// the split needs a log write, which fails for good after sled's first IO
/// error, and it retries forever. Any read of such a node after the disk
/// filled can do it. Run it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a sled read can spin forever after its first failed write (issue 13)"]
async fn refused_jobs_are_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineProcess::start_with_file_limit(&dir.path().join("data"), 6 << 20);
    let mut c = RawClient::worker(&engine.url, "full-producer").await;
    let mut n = 0;
    while enqueue(&mut c, n).await.is_ok() {
        n += 1;
    }
    // Refused jobs are not counted: more refusals leave the counts as they were.
    let before = counts(&mut c).await;
    for n in 0..5 {
        assert!(enqueue(&mut c, n).await.is_err(), "the store is still full");
    }
    assert_eq!(counts(&mut c).await, before, "refused jobs were counted");
}
