//! A full disk, simulated without root: the real binary runs with a small
//! `RLIMIT_FSIZE` (SIGXFSZ ignored), so sled's log cannot grow past it and
//! its writes fail as on a full disk. Enqueues are refused with a clear code,
//! `/health` says why, and after kill -9 and a restart with room again every
//! acknowledged job is there.

mod common;

use common::{EngineProcess, RawClient, wait_until};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

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
    // Well under sled's blob threshold, so every byte goes into its log.
    let data = json!({"n": n, "pad": "x".repeat(40_000)});
    common::queue::try_enqueue(c, "full", "full::job", data).await
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

/// The engine recovers by itself once the disk has room again, with no
/// restart: while full, reads that could show wrong data are refused too
/// (a failed sled may spin in a read, and a listing would read as empty);
/// once room returns the store is reopened, enqueues are acknowledged
/// again, refused jobs were never counted and every acknowledged job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_recovers_by_itself_once_the_disk_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineProcess::start_with_file_limit(&dir.path().join("data"), 6 << 20);
    let mut c = RawClient::worker(&engine.url, "full-producer").await;
    let mut acked = 0;
    while enqueue(&mut c, acked).await.is_ok() {
        acked += 1;
    }
    for n in 0..3 {
        assert!(
            enqueue(&mut c, 10_000 + n).await.is_err(),
            "the store is still full"
        );
    }
    let stats = c.call("queue::stats", json!({"queue": "full"})).await;
    assert_eq!(
        stats["error"]["code"], "store_full",
        "counts are refused while full: {stats}"
    );
    assert_eq!(engine.health()["store"]["state"], "degraded");

    // Room again (what freeing space does to a real disk).
    engine.lift_file_limit();
    wait_until(
        "the store is reopened",
        Duration::from_secs(60),
        async || engine.health()["store"]["state"] == "ok",
    )
    .await;
    let receipt = enqueue(&mut c, acked)
        .await
        .expect("acknowledged after recovery");
    acked += 1;
    let job = c.call("queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["result"]["state"], "waiting_for_worker", "{job}");
    let counts = counts(&mut c).await;
    assert_eq!(
        counts[1], acked,
        "every acknowledged job and no refused one is counted: {counts:?}"
    );

    // Every acknowledged job runs, each once here (a job's `n` is its order).
    let mut w = RawClient::worker(&engine.url, "full-runner").await;
    w.register_function("full::job").await;
    let mut seen = HashSet::new();
    while seen.len() < acked {
        let inv = w
            .recv_until("a job", |v| v["type"] == "invokefunction")
            .await;
        assert!(
            seen.insert(inv["data"]["n"].as_u64().unwrap()),
            "{}",
            inv["data"]["n"]
        );
        w.send(
            json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
            "function_id":"full::job","result":null}),
        )
        .await;
    }
    assert_eq!(seen, (0..acked as u64).collect::<HashSet<_>>());
}
