//! kill -9 under load: the real `qmesh` binary is SIGKILLed while a producer
//! written with the published Rust SDK enqueues 10,000 jobs
//! (`TriggerAction::Enqueue`) and an SDK worker runs them; after a restart on
//! the same store, every acknowledged receipt must complete at least once.

mod common;

use common::sdk::{sdk_worker, stop};
use common::{EngineProcess, RawClient, WAIT, wait_for, wait_until};
use iii_sdk::protocol::TriggerRequest;
use iii_sdk::{IIIClient, RegisterFunction, TriggerAction};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const JOBS: u64 = 10_000;
const KILL_AFTER_ACKS: usize = 3_000;
const PRODUCERS: usize = 64;

/// How long after an attempt starts its start is on disk: the engine writes
/// it 50 ms later (`START_RECORD_DELAY`) and the store syncs such writes
/// every 500 ms (`store::syncer::PERIOD`). Nothing tells a client
/// when a write is on disk, so a test that kills the engine after one waits
/// this long, on purpose.
const START_ON_DISK: Duration = Duration::from_millis(750);

/// An SDK worker running `crash::work`, reporting each job's `n`; `pace`
/// slows it so acknowledged jobs are still queued at the kill.
fn worker(url: &str, ran: mpsc::UnboundedSender<u64>, pace: Duration) -> IIIClient {
    let w = sdk_worker(url, "crash-worker");
    w.register_function(
        "crash::work",
        RegisterFunction::new_async(move |input: Value| {
            let _ = ran.send(input["n"].as_u64().unwrap_or(u64::MAX));
            async move {
                tokio::time::sleep(pace).await; // slow work
                Ok::<_, iii_sdk::Error>(json!(true))
            }
        }),
    );
    w
}

/// Waits until the engine routes `crash::work`.
async fn until_registered(client: &IIIClient) {
    wait_until(
        "crash::work to register",
        Duration::from_secs(20),
        async || {
            let listed = client
                .trigger(TriggerRequest {
                    function_id: "engine::functions::list".into(),
                    payload: json!({}),
                    action: None,
                    timeout_ms: Some(2_000),
                })
                .await;
            listed.is_ok_and(|l| {
                l["functions"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["function_id"] == "crash::work"))
            })
        },
    )
    .await
}

/// `PRODUCERS` concurrent SDK enqueues of jobs `ns` until the engine dies or
/// all are sent; records the `n` of every acknowledged job.
async fn produce(
    producer: &IIIClient,
    ns: std::ops::Range<u64>,
    acked: Arc<Mutex<HashSet<u64>>>,
    dead: Arc<AtomicBool>,
) {
    let next = Arc::new(AtomicU64::new(ns.start));
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let (p, next, acked, dead) = (producer.clone(), next.clone(), acked.clone(), dead.clone());
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            while !dead.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ns.end {
                    return;
                }
                let r = p
                    .trigger(TriggerRequest {
                        function_id: "crash::work".into(),
                        payload: json!({ "n": n }),
                        action: Some(TriggerAction::Enqueue {
                            queue: "crash".into(),
                        }),
                        timeout_ms: Some(3_000),
                    })
                    .await;
                match r {
                    Ok(v) if v["messageReceiptId"].is_string() => {
                        acked.lock().unwrap().insert(n);
                    }
                    _ => return, // the engine is gone: this enqueue was never acknowledged
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<u64>, into: &mut HashSet<u64>) {
    while let Ok(n) = rx.try_recv() {
        into.insert(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let url = engine.url.clone();
    let (tx, mut ran_rx) = mpsc::unbounded_channel();
    let first_worker = worker(&url, tx.clone(), Duration::from_millis(2));
    let producer = sdk_worker(&url, "crash-producer");
    until_registered(&producer).await;

    let acked = Arc::new(Mutex::new(HashSet::new()));
    let dead = Arc::new(AtomicBool::new(false));
    let producing = {
        let (producer, acked, dead) = (producer.clone(), acked.clone(), dead.clone());
        tokio::spawn(async move { produce(&producer, 0..JOBS, acked, dead).await })
    };
    wait_until(
        "the producers' acknowledgements before the kill",
        Duration::from_secs(60),
        async || acked.lock().unwrap().len() >= KILL_AFTER_ACKS,
    )
    .await;
    engine.kill();
    dead.store(true, Ordering::Relaxed);
    producing.await.unwrap();
    let acked: HashSet<u64> = acked.lock().unwrap().clone();
    let mut ran = HashSet::new();
    drain(&mut ran_rx, &mut ran);
    let ran_before = ran.len();
    stop(first_worker).await;
    stop(producer).await;

    let engine = EngineProcess::start_in(dir.path());
    let second_worker = worker(&engine.url, tx, Duration::ZERO);
    let started = Instant::now();
    while !acked.is_subset(&ran) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} acknowledged jobs never ran after the restart",
            acked.difference(&ran).count()
        );
        if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(200), ran_rx.recv()).await {
            ran.insert(n);
        }
        drain(&mut ran_rx, &mut ran);
    }
    eprintln!(
        "acked {} of {JOBS}; {ran_before} ran before the kill, all acknowledged ones ran {} ms after the restart",
        acked.len(),
        started.elapsed().as_millis()
    );
    stop(second_worker).await;
    drop(engine); // killed
}

/// An attempt that has run a while when the engine is SIGKILLed is counted:
/// after the restart the job is ready again, its attempt ended as
/// `engine_restart` (this is what keeps a job that kills the engine from
/// retrying forever), and it runs to completion on the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_running_at_kill_9_counts_as_engine_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("slow::job").await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let r = c
        .call(
            "queue::enqueue",
            json!({"queue":"slow","function_id":"slow::job","data":{}}),
        )
        .await;
    let receipt = r["result"]["receipt"].as_str().expect("receipt").to_owned();
    w.recv_until("invoke", |v| v["type"] == "invokefunction")
        .await; // never answered
    wait_for("the attempt to be running", WAIT, async || {
        let job = c.call("queue::get", json!({"receipt": receipt})).await;
        if job["result"]["state"] == "running" {
            Ok(())
        } else {
            Err(job.to_string())
        }
    })
    .await;
    tokio::time::sleep(START_ON_DISK).await;
    engine.kill();
    drop((w, c));

    let engine = EngineProcess::start_in(dir.path());
    let url = engine.url.clone();
    let mut c = RawClient::worker(&url, "c").await;
    let job = c.call("queue::get", json!({"receipt": receipt})).await;
    let job = &job["result"];
    assert_eq!(job["state"], "waiting_for_worker", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(job["history"][0]["outcome"], "engine_restart", "{job}");
    let mut w = RawClient::worker(&url, "w").await;
    w.register_function("slow::job").await;
    w.serve(1, |_| json!("done")).await;
    let job = wait_for("the job to complete", WAIT, async || {
        let job = c.call("queue::get", json!({"receipt": receipt})).await;
        if job["result"]["state"] == "completed" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    assert_eq!(job["result"]["history"][1]["outcome"], "completed", "{job}");
    drop(engine); // killed
}

/// `queue::stats` of the queue `crash`: its completed count.
async fn completed(url: &str) -> u64 {
    let mut c = RawClient::connect(url).await;
    let r = c.call("queue::stats", json!({"queue": "crash"})).await;
    r["result"]["completed"].as_u64().unwrap_or(0)
}

/// The crash loop: six kill -9s under load on one store, each while 64 SDK
/// producers enqueue and a worker runs jobs. Then: every acknowledged job
/// ran, and no job ran that the engine forgot (a job dispatched before its
/// enqueue was durable, and lost in the crash, would have run yet be
/// missing from the store): the store's completed count ends equal to the
/// number of distinct jobs that ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_loses_no_acknowledged_job_and_runs_none_it_forgets() {
    const CYCLES: u64 = 6;
    const PER_CYCLE: u64 = 2_000;
    const KILL_AFTER: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut ran_rx) = mpsc::unbounded_channel();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut ran = HashSet::new();
    for cycle in 0..CYCLES {
        let mut engine = EngineProcess::start_in(dir.path());
        let w = worker(&engine.url, tx.clone(), Duration::from_millis(1));
        let producer = sdk_worker(&engine.url, "crash-producer");
        until_registered(&producer).await;
        let before = acked.lock().unwrap().len();
        let dead = Arc::new(AtomicBool::new(false));
        let producing = {
            let (producer, acked, dead) = (producer.clone(), acked.clone(), dead.clone());
            let ns = cycle * PER_CYCLE..(cycle + 1) * PER_CYCLE;
            tokio::spawn(async move { produce(&producer, ns, acked, dead).await })
        };
        wait_until(
            "acknowledgements in this cycle",
            Duration::from_secs(60),
            async || acked.lock().unwrap().len() >= before + KILL_AFTER,
        )
        .await;
        engine.kill();
        dead.store(true, Ordering::Relaxed);
        producing.await.unwrap();
        drain(&mut ran_rx, &mut ran);
        stop(w).await;
        stop(producer).await;
    }

    let engine = EngineProcess::start_in(dir.path());
    let last = worker(&engine.url, tx, Duration::ZERO);
    let acked: HashSet<u64> = acked.lock().unwrap().clone();
    let done = wait_for("every job to run to completion", Duration::from_secs(120), async || {
        drain(&mut ran_rx, &mut ran);
        let done = completed(&engine.url).await;
        if acked.is_subset(&ran) && done == ran.len() as u64 {
            Ok(done)
        } else {
            Err(format!(
                "{} acknowledged jobs not run yet; {} distinct jobs ran, {done} completed in the store",
                acked.difference(&ran).count(),
                ran.len()
            ))
        }
    })
    .await;
    eprintln!(
        "{CYCLES} kill -9 cycles: {} acknowledged, {} ran, {done} completed",
        acked.len(),
        ran.len()
    );
    stop(last).await;
    drop(engine);
}

/// A batch is acknowledged after the one sync that covers all of it: kill
/// -9 right after the acknowledgement, and every job is there after the
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_batch_survives_kill_9_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let mut c = RawClient::connect(&engine.url).await;
    let jobs: Vec<Value> = (0..2_000).map(|i| json!({"data": {"i": i}})).collect();
    let r = c
        .call(
            "queue::enqueue_many",
            json!({"queue": "crash", "function_id": "crash::nobody", "jobs": jobs}),
        )
        .await;
    assert_eq!(
        r["result"]["receipts"].as_array().map(Vec::len),
        Some(2_000),
        "{r}"
    );
    engine.kill();

    let engine = EngineProcess::start_in(dir.path());
    let mut c = RawClient::connect(&engine.url).await;
    let stats = c.call("queue::stats", json!({"queue": "crash"})).await;
    assert_eq!(stats["result"]["waiting_for_worker"], 2_000, "{stats}");
}

/// A three-level flow across kill -9: enqueued (acknowledged after its
/// sync), two leaves completed, the engine killed; after the restart the
/// flow carries on where it stood and the root receives every child's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_carries_on_across_kill_9() {
    use common::queue::{complete, next_job, op, until_state};
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let mut c = RawClient::connect(&engine.url).await;
    let flow = json!({
        "queue": "flows", "function_id": "flow::root", "data": {},
        "children": [
            {"function_id": "flow::mid", "data": {}, "children": [
                {"function_id": "flow::leaf", "data": {"n": 1}},
                {"function_id": "flow::leaf", "data": {"n": 2}},
            ]},
            {"function_id": "flow::leaf", "data": {"n": 3}},
        ]
    });
    let tree = op(&mut c, "queue::enqueue_flow", flow).await;
    let root = tree["receipt"].as_str().unwrap().to_owned();
    let mut w = RawClient::worker(&engine.url, "before").await;
    w.register_function("flow::leaf").await;
    let mut done = Vec::new();
    for _ in 0..2 {
        let inv = next_job(&mut w).await;
        complete(&mut w, &inv, inv["data"]["n"].clone()).await;
        done.push(inv["data"]["n"].as_u64().unwrap());
    }
    // The two outcomes reach the store's log before the kill (see START_ON_DISK).
    let mut c2 = RawClient::connect(&engine.url).await;
    wait_for("both leaves recorded", WAIT, async || {
        let j = op(&mut c2, "queue::get", json!({"receipt": root})).await;
        let mid_waits = j["flow"]["children"][0]["children"]
            .as_array()
            .map(|k| k.iter().filter(|k| k["state"] == "completed").count())
            .unwrap_or(0);
        let direct = (j["flow"]["children"][1]["state"] == "completed") as usize;
        if mid_waits + direct == 2 {
            Ok(())
        } else {
            Err(j.to_string())
        }
    })
    .await;
    tokio::time::sleep(START_ON_DISK).await;
    engine.kill();

    let engine = EngineProcess::start_in(dir.path());
    let mut c = RawClient::connect(&engine.url).await;
    let job = op(&mut c, "queue::get", json!({"receipt": root})).await;
    assert_eq!(job["state"], "waiting_for_children", "{job}");
    let mut w = RawClient::worker(&engine.url, "after").await;
    for f in ["flow::leaf", "flow::mid", "flow::root"] {
        w.register_function(f).await;
    }
    // Whatever is left runs, the root last; a leaf may run again (at least once).
    loop {
        let inv = next_job(&mut w).await;
        let kids = inv["metadata"]["job"]["children"].clone();
        match inv["function_id"].as_str().unwrap() {
            "flow::leaf" => complete(&mut w, &inv, inv["data"]["n"].clone()).await,
            "flow::mid" => {
                let sum: u64 = kids
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["result"].as_u64().unwrap())
                    .sum();
                complete(&mut w, &inv, json!(sum)).await;
            }
            _ => {
                let mut results: Vec<u64> = kids
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["result"].as_u64().unwrap())
                    .collect();
                results.sort();
                assert_eq!(results, [3, 3], "mid's 1+2 and the leaf's 3: {inv}");
                complete(&mut w, &inv, json!("all in")).await;
                break;
            }
        }
    }
    until_state(&mut c, &root, "completed").await;
}

/// A running job's progress and log lines survive kill -9: written with the
/// next 50 ms tick, on disk within the store's flush (see START_ON_DISK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_s_progress_and_logs_survive_kill_9() {
    use common::queue::{next_job, op};
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let mut c = RawClient::connect(&engine.url).await;
    let mut w = RawClient::worker(&engine.url, "reporter").await;
    w.register_function("slow::report").await;
    let r = op(
        &mut c,
        "queue::enqueue",
        json!({"queue": "reports", "function_id": "slow::report", "data": {}}),
    )
    .await;
    let receipt = r["receipt"].as_str().unwrap().to_owned();
    let _running = next_job(&mut w).await;
    op(
        &mut w,
        "queue::progress",
        json!({"receipt": receipt, "progress": {"done": 3}}),
    )
    .await;
    op(
        &mut w,
        "queue::log",
        json!({"receipt": receipt, "line": "3 of 10"}),
    )
    .await;
    tokio::time::sleep(START_ON_DISK).await;
    engine.kill();

    let engine = EngineProcess::start_in(dir.path());
    let mut c = RawClient::connect(&engine.url).await;
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["progress"], json!({"done": 3}), "{job}");
    assert_eq!(job["logs"][0]["line"], "3 of 10", "{job}");
    assert_eq!(job["history"][0]["outcome"], "engine_restart", "{job}");
}
