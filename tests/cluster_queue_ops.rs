//! The operator views and actions of the cluster's JetStream queues
//! (`[cluster] queues = "jetstream"`), on two engines and a 3-node NATS
//! cluster: `queue::stats`, `list`, `get`, `explain` and `peek` answered by
//! the engine that did not enqueue; pause and resume stopping and restarting
//! deliveries (a consumer made after the pause included); cancel and purge;
//! dead letters redriven (run again, same receipt, history kept) and
//! discarded; and the `qmesh` CLI against a cluster engine (`queues`,
//! `top`, `queue stats/peek/pause/resume/purge`, `job`, `dlq`). A queue's
//! several lanes are all covered: counts over every priority band and
//! delayed jobs, every FIFO lane paused (one made after the pause
//! included), and a dead job redriven back onto its priority's band.

mod common;

use base64::Engine as _;
use common::cli::{ok_json, qmesh, until};
use common::nats::NatsCluster;
use common::queue::{
    complete, enqueue, fail, jetstream_config, jobs_left, next_job, op, until_stats,
};
use common::{RawClient, TestEngine, WAIT, wait_for, wait_until};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

/// Engine `id` on JetStream queues, where queue `fragile` dead-letters
/// after one attempt and queue `orders` is FIFO per `account` in two lanes.
fn config(nats: &NatsCluster, id: &str) -> qmesh::Config {
    let mut c = jetstream_config(nats, id);
    c.queue.queues.insert(
        "fragile".into(),
        toml::from_str("max_attempts = 1").expect("queue overrides"),
    );
    c.queue.queues.insert(
        "orders".into(),
        toml::from_str("ordering = \"fifo\"\ngroup_field = \"account\"\nconcurrency = 2")
            .expect("queue overrides"),
    );
    c
}

async fn two_engines(nats: &NatsCluster) -> (TestEngine, TestEngine) {
    let a = TestEngine::start_with(config(nats, "a")).await;
    let b = TestEngine::start_with(config(nats, "b")).await;
    (a, b)
}

/// The error code a call answers with.
async fn error_code(c: &mut RawClient, f: &str, data: Value) -> Value {
    let r = c.call(f, data).await;
    r["error"]["code"].clone()
}

fn receipts_of(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs: {page}"))
        .iter()
        .map(|j| j["receipt"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_answer_from_an_engine_other_than_the_enqueuing_one() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "producer").await;
    let mut on_b = RawClient::worker(&b.url, "operator").await;
    let mut receipts = Vec::new();
    for n in 0..3 {
        receipts.push(enqueue(&mut on_a, "views", "svc::view", json!({"n": n})).await);
    }

    // No engine serves the function yet: every job waits for a worker.
    let stats = until_stats(&mut on_b, "views", |s| s["waiting_for_worker"] == 3).await;
    let count = |s: &Value, k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
    assert_eq!(
        ["waiting_for_worker", "ready", "running", "delayed", "dead"].map(|k| count(&stats, k)),
        [3, 0, 0, 0, 0],
        "{stats}"
    );
    assert_eq!(stats["completed"], Value::Null, "not kept: {stats}");
    assert_eq!(stats["paused"], false, "{stats}");
    assert_eq!(stats["settings"]["max_attempts"], 3, "{stats}");
    assert!(stats["oldest_ready_age_ms"].is_u64(), "{stats}");
    let list = op(&mut on_b, "queue::list", json!({})).await;
    let views = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "views")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(views["waiting_for_worker"], 3, "{list}");

    let job = op(&mut on_b, "queue::get", json!({"receipt": receipts[1]})).await;
    assert_eq!(
        (
            &job["state"],
            &job["queue"],
            &job["function_id"],
            &job["data"]
        ),
        (
            &json!("waiting_for_worker"),
            &json!("views"),
            &json!("svc::view"),
            &json!({"n": 1})
        ),
        "{job}"
    );
    let why = op(&mut on_b, "queue::explain", json!({"receipt": receipts[1]})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("no worker"),
        "{why}"
    );

    // Pages in enqueue order, with a cursor.
    let page = op(
        &mut on_b,
        "queue::peek",
        json!({"queue": "views", "state": "ready", "limit": 2}),
    )
    .await;
    assert_eq!(receipts_of(&page), receipts[..2], "{page}");
    assert_eq!(page["next_cursor"], receipts[1].as_str(), "{page}");
    let rest = op(
        &mut on_b,
        "queue::peek",
        json!({"queue": "views", "state": "ready", "cursor": page["next_cursor"]}),
    )
    .await;
    assert_eq!(receipts_of(&rest), receipts[2..], "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null, "{rest}");

    let topics = op(&mut on_b, "engine::queue::list_topics", json!({})).await;
    assert!(
        topics
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "views"),
        "{topics}"
    );
    let topic = op(
        &mut on_b,
        "engine::queue::topic_stats",
        json!({"topic": "views"}),
    )
    .await;
    assert_eq!(
        (&topic["depth"], &topic["dlq_depth"]),
        (&json!(3), &json!(0))
    );

    // Clear errors for what no engine knows.
    let missing = error_code(&mut on_b, "queue::stats", json!({"queue": "nosuch"})).await;
    assert_eq!(missing, "queue_not_found");
    let nobody = json!({"receipt": "00000000-0000-4000-8000-000000000000"});
    assert_eq!(
        error_code(&mut on_b, "queue::get", nobody.clone()).await,
        "NOT_FOUND"
    );
    assert_eq!(
        error_code(&mut on_b, "queue::cancel", nobody).await,
        "NOT_FOUND"
    );

    // A worker on B takes every job: they run, and cannot be cancelled.
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::view").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_job(&mut worker).await);
    }
    until_stats(&mut on_a, "views", |s| {
        s["running"] == 3 && s["ready"] == 0 && s["waiting_for_worker"] == 0
    })
    .await;
    let running = op(&mut on_a, "queue::get", json!({"receipt": receipts[0]})).await;
    assert_eq!(running["state"], "running", "{running}");
    let page = op(
        &mut on_a,
        "queue::peek",
        json!({"queue": "views", "state": "running"}),
    )
    .await;
    assert_eq!(receipts_of(&page), receipts, "{page}");
    let refused = error_code(&mut on_a, "queue::cancel", json!({"receipt": receipts[0]})).await;
    assert_eq!(refused, "invalid_state");

    for inv in &held {
        complete(&mut worker, inv, json!({"ok": true})).await;
    }
    until_stats(&mut on_a, "views", |s| s["running"] == 0).await;
    // A completed job leaves the streams (once the stream applied the
    // ack, a moment after the consumer counted it): nothing of it is kept.
    wait_until("the acks applied", WAIT, async || {
        jobs_left(&nats).await == 0
    })
    .await;
    assert_eq!(
        error_code(&mut on_a, "queue::get", json!({"receipt": receipts[0]})).await,
        "NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_purge_remove_jobs_not_started() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "producer").await;
    let mut on_b = RawClient::worker(&b.url, "operator").await;
    let mut trash = Vec::new();
    for n in 0..3 {
        trash.push(enqueue(&mut on_a, "trash", "svc::nobody", json!({"n": n})).await);
    }
    enqueue(&mut on_a, "keep", "svc::nobody", json!({})).await;

    let cancelled = op(&mut on_b, "queue::cancel", json!({"receipt": trash[0]})).await;
    assert_eq!(cancelled, json!({"receipt": trash[0], "cancelled": true}));
    let gone = json!({"receipt": trash[0]});
    assert_eq!(
        error_code(&mut on_a, "queue::get", gone.clone()).await,
        "NOT_FOUND"
    );
    assert_eq!(
        error_code(&mut on_a, "queue::cancel", gone).await,
        "NOT_FOUND"
    );
    // Consumers learn of deletions a moment after the stream.
    until_stats(&mut on_a, "trash", |s| s["waiting_for_worker"] == 2).await;

    let purged = op(&mut on_b, "queue::purge", json!({"queue": "trash"})).await;
    assert_eq!(purged, json!({"queue": "trash", "purged": 2}));
    until_stats(&mut on_a, "trash", |s| s["waiting_for_worker"] == 0).await;
    let kept = op(&mut on_a, "queue::stats", json!({"queue": "keep"})).await;
    assert_eq!(
        kept["waiting_for_worker"], 1,
        "another queue keeps its jobs: {kept}"
    );
    assert_eq!(jobs_left(&nats).await, 1);
    assert_eq!(
        error_code(&mut on_b, "queue::purge", json!({"queue": "nosuch"})).await,
        "queue_not_found"
    );
}

/// The consumer of `function_id`'s jobs in the lane of subject suffix
/// `lane` ("" for priority band 0, ".p8" for band 8, ".f1" for FIFO lane
/// 1), as the server describes it.
async fn consumer_of(nats: &NatsCluster, function_id: &str, lane: &str) -> Option<Value> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(function_id);
    let stream = common::queue::job_stream(nats).await;
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.next().await {
        let info = info.unwrap();
        if info
            .config
            .filter_subject
            .ends_with(&format!(".{b64}{lane}"))
        {
            return Some(json!({
                "paused": info.paused,
                "waiting": info.num_waiting,
                "pending": info.num_pending,
                "ack_pending": info.num_ack_pending,
            }));
        }
    }
    None
}

/// Waits until engine B's pull request waits on the paused consumer of
/// `function_id`'s `lane` while its one job stays undelivered: were the
/// consumer not paused, the server would have handed it the job.
async fn until_held_by_pause(nats: &NatsCluster, function_id: &str, lane: &str) {
    wait_for(
        "a pull request on the paused consumer",
        WAIT,
        async || match consumer_of(nats, function_id, lane).await {
            Some(c) if c["paused"] == true && c["waiting"].as_u64() > Some(0) => {
                assert_eq!(
                    (&c["pending"], &c["ack_pending"]),
                    (&json!(1), &json!(0)),
                    "{c}"
                );
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_deliveries_and_resume_restarts_them() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "operator").await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::gate").await;

    // Paused before its first job: the consumer made at the enqueue follows.
    let paused = op(&mut on_a, "queue::pause", json!({"queue": "gate"})).await;
    assert_eq!(paused, json!({"queue": "gate", "paused": true}));
    let stats = op(&mut on_a, "queue::stats", json!({"queue": "gate"})).await;
    assert_eq!(stats["paused"], true, "a paused queue exists: {stats}");
    let first = enqueue(&mut on_a, "gate", "svc::gate", json!({"n": 1})).await;
    until_held_by_pause(&nats, "svc::gate", "").await;
    worker
        .assert_not_invoked_for(Duration::from_millis(300), "the queue is paused")
        .await;
    let why = op(&mut on_a, "queue::explain", json!({"receipt": first})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("paused"),
        "{why}"
    );

    let mut on_b = RawClient::worker(&b.url, "operator").await;
    let resumed = op(&mut on_b, "queue::resume", json!({"queue": "gate"})).await;
    assert_eq!(resumed, json!({"queue": "gate", "paused": false}));
    let inv = next_job(&mut worker).await;
    assert_eq!(inv["metadata"]["job"]["receipt"], first.as_str(), "{inv}");
    complete(&mut worker, &inv, json!(null)).await;

    // Paused again, with its consumer there: the same.
    op(&mut on_b, "queue::pause", json!({"queue": "gate"})).await;
    let second = enqueue(&mut on_a, "gate", "svc::gate", json!({"n": 2})).await;
    until_held_by_pause(&nats, "svc::gate", "").await;
    until_stats(&mut on_a, "gate", |s| {
        s["paused"] == true && s["ready"] == 1
    })
    .await;
    op(&mut on_a, "queue::resume", json!({"queue": "gate"})).await;
    let inv = next_job(&mut worker).await;
    assert_eq!(inv["metadata"]["job"]["receipt"], second.as_str(), "{inv}");
    complete(&mut worker, &inv, json!(null)).await;
    wait_until("both acks", WAIT, async || jobs_left(&nats).await == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_job_runs_again_and_a_discarded_one_is_gone() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "operator").await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::fragile").await;
    let mut dead = Vec::new();
    for n in 0..3 {
        let r = enqueue(&mut on_a, "fragile", "svc::fragile", json!({"n": n})).await;
        let inv = next_job(&mut worker).await;
        fail(&mut worker, &inv, &format!("boom {n}")).await;
        dead.push(r);
    }
    until_stats(&mut on_a, "fragile", |s| s["dead"] == 3).await;
    let job = wait_for("the dead job's view", WAIT, async || {
        let job = op(&mut on_a, "queue::get", json!({"receipt": dead[0]})).await;
        if job["state"] == "dead" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    assert_eq!(
        (&job["attempts"], &job["data"], &job["history"][0]["engine"]),
        (&json!(1), &json!({"n": 0}), &json!("b")),
        "{job}"
    );
    assert_eq!(job["last_error"]["message"], "boom 0", "{job}");
    let letters = op(
        &mut on_a,
        "engine::queue::dlq_messages",
        json!({"queue": "fragile"}),
    )
    .await;
    let letter = &letters[0];
    assert_eq!(
        (
            &letter["last_error"]["reason"],
            &letter["history"][0]["outcome"]
        ),
        (&json!("error"), &json!("error")),
        "the local queue's shape: {letter}"
    );
    let page = op(
        &mut on_a,
        "queue::peek",
        json!({"queue": "fragile", "state": "dead"}),
    )
    .await;
    // Oldest first, by when each was dead-lettered (not necessarily the
    // order they were enqueued in: each is dead-lettered in its own task).
    let mut listed = receipts_of(&page);
    listed.sort();
    let mut expected = dead.clone();
    expected.sort();
    assert_eq!(listed, expected, "{page}");

    // Redriven: the same receipt runs again, on a fresh attempt budget.
    let one = op(
        &mut on_a,
        "iii::queue::redrive_message",
        json!({"queue": "fragile", "message_id": dead[0]}),
    )
    .await;
    assert_eq!(
        one,
        json!({"queue": "fragile", "message_id": dead[0], "redriven": 1})
    );
    let inv = next_job(&mut worker).await;
    assert_eq!(inv["metadata"]["job"]["receipt"], dead[0].as_str(), "{inv}");
    assert_eq!(inv["metadata"]["job"]["attempt"], 1, "{inv}");
    assert_eq!(inv["data"], json!({"n": 0}), "{inv}");
    complete(&mut worker, &inv, json!(null)).await;
    until_stats(&mut on_a, "fragile", |s| {
        s["dead"] == 2 && s["running"] == 0
    })
    .await;

    // Discarded: gone for good; a second discard finds nothing.
    let discard = json!({"queue": "fragile", "message_id": dead[1]});
    let gone = op(&mut on_a, "iii::queue::discard_message", discard.clone()).await;
    assert_eq!(gone["discarded"], 1, "{gone}");
    let again = op(&mut on_a, "iii::queue::discard_message", discard).await;
    assert_eq!(again["discarded"], 0, "{again}");
    assert_eq!(
        error_code(&mut on_a, "queue::get", json!({"receipt": dead[1]})).await,
        "NOT_FOUND"
    );

    // Every dead letter at once; one that fails again keeps its history.
    let all = op(
        &mut on_a,
        "iii::queue::redrive",
        json!({"queue": "fragile"}),
    )
    .await;
    assert_eq!(all, json!({"queue": "fragile", "redriven": 1}));
    let inv = next_job(&mut worker).await;
    assert_eq!(inv["metadata"]["job"]["receipt"], dead[2].as_str(), "{inv}");
    fail(&mut worker, &inv, "boom again").await;
    let job = wait_for("the job dead again", WAIT, async || {
        let job = op(&mut on_a, "queue::get", json!({"receipt": dead[2]})).await;
        if job["state"] == "dead" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    let errors: Vec<&str> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(errors, ["boom 2", "boom again"], "{job}");
    assert_eq!(job["redrives"], 1, "{job}");
    assert_eq!(
        error_code(&mut on_a, "iii::queue::redrive", json!({"queue": "nosuch"})).await,
        "queue_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_cluster_engines_queues_and_dead_letters() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let url = b.url.as_str();
    let mut on_a = RawClient::worker(&a.url, "producer").await;
    let first = enqueue(&mut on_a, "cli", "svc::nobody", json!({"n": 1})).await;
    enqueue(&mut on_a, "cli", "svc::nobody", json!({"n": 2})).await;

    until(url, &["queues", "--json"], |v| {
        v["queues"].as_array().is_some_and(|q| {
            q.iter()
                .any(|q| q["queue"] == "cli" && q["waiting_for_worker"] == 2)
        })
    })
    .await;
    assert!(qmesh(url, &["queues"]).await.stdout.contains("cli"));
    let top = qmesh(url, &["top", "--frames", "1"]).await;
    assert!(top.code == 0 && top.stdout.contains("cli"), "{top:?}");
    let stats = ok_json(url, &["queue", "stats", "cli", "--json"]).await;
    assert_eq!(stats["waiting_for_worker"], 2, "{stats}");
    let page = ok_json(url, &["queue", "peek", "cli", "--json"]).await;
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2), "{page}");
    let job = ok_json(url, &["job", &first, "--json"]).await;
    assert_eq!(job["state"], "waiting_for_worker", "{job}");
    assert!(
        job["explanation"].as_str().unwrap().contains("no worker"),
        "{job}"
    );
    assert!(
        qmesh(url, &["job", &first])
            .await
            .stdout
            .contains("svc::nobody")
    );

    let paused = ok_json(url, &["queue", "pause", "cli", "--json"]).await;
    assert_eq!(paused["paused"], true, "{paused}");
    assert_eq!(
        ok_json(url, &["queue", "stats", "cli", "--json"]).await["paused"],
        true
    );
    ok_json(url, &["queue", "resume", "cli", "--json"]).await;
    let purged = ok_json(url, &["queue", "purge", "cli", "--yes", "--json"]).await;
    assert_eq!(purged["purged"], 2, "{purged}");
    let unknown = qmesh(url, &["queue", "stats", "nosuch", "--json"]).await;
    assert_eq!(
        (unknown.code, unknown.json()["error"]["code"].clone()),
        (1, json!("queue_not_found"))
    );

    // A dead letter: listed, redriven (it fails again), then discarded.
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::fragile").await;
    let doomed = enqueue(&mut on_a, "fragile", "svc::fragile", json!({})).await;
    let inv = next_job(&mut worker).await;
    fail(&mut worker, &inv, "boom").await;
    let dead = until(url, &["dlq", "ls", "fragile", "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(dead[0]["id"], doomed.as_str(), "{dead}");
    let redriven = ok_json(url, &["dlq", "redrive", "fragile", &doomed, "--json"]).await;
    assert_eq!(redriven["redriven"], 1, "{redriven}");
    let inv = next_job(&mut worker).await;
    fail(&mut worker, &inv, "boom").await;
    until(url, &["queue", "stats", "fragile", "--json"], |v| {
        v["dead"] == 1
    })
    .await;
    let gone = ok_json(
        url,
        &["dlq", "discard", "fragile", &doomed, "--yes", "--json"],
    )
    .await;
    assert_eq!(gone["discarded"], 1, "{gone}");
    let again = qmesh(url, &["dlq", "discard", "fragile", &doomed, "--yes"]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(
        ok_json(url, &["dlq", "ls", "fragile", "--json"]).await,
        json!([])
    );
}

/// A FIFO group's lane on a queue of `lanes` lanes, as every engine
/// computes it: its SHA-256's first 8 bytes modulo the lanes.
fn fifo_lane(group: &str, lanes: u64) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(group.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap()) % lanes
}

/// A group of `orders` (two lanes) in each lane: `[lane 0's, lane 1's]`.
fn a_group_per_lane() -> [String; 2] {
    let group = |lane| {
        (0..)
            .map(|n| format!("acct-{n}"))
            .find(|g| fifo_lane(g, 2) == lane)
            .unwrap()
    };
    [group(0), group(1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_pages_and_actions_cover_every_band_and_delayed_jobs() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "producer").await;
    let mut on_b = RawClient::worker(&b.url, "operator").await;
    let job = |data: Value, priority: u64| json!({"queue": "bands", "function_id": "svc::band", "data": data, "priority": priority});
    // Three bands (0, 8 and 3) and a delayed job, no worker: nothing runs.
    let low = common::queue::enqueue_with(&mut on_a, job(json!({"n": 0}), 0)).await;
    let high = common::queue::enqueue_with(&mut on_a, job(json!({"n": 1}), 200)).await;
    let batch = op(
        &mut on_a,
        "queue::enqueue_many",
        json!({"queue": "bands", "function_id": "svc::band", "jobs": [
            {"data": {"n": 2}, "priority": 5},
            {"data": {"n": 3}, "delay": "1h"},
        ]}),
    )
    .await;
    let [mid, later] = [0, 1].map(|i| batch["receipts"][i].as_str().unwrap().to_owned());

    // Every job of a batch is indexed before the batch is answered.
    let got = op(&mut on_b, "queue::get", json!({"receipt": mid})).await;
    assert_eq!(
        (&got["state"], &got["priority"], &got["data"]),
        (&json!("waiting_for_worker"), &json!(5), &json!({"n": 2})),
        "{got}"
    );
    let got = op(&mut on_b, "queue::get", json!({"receipt": later})).await;
    assert_eq!(got["state"], "delayed", "{got}");
    assert!(
        got["due_at_ms"].as_u64() > Some(common::queue::now_ms() + 3_000_000),
        "{got}"
    );
    let got = op(&mut on_b, "queue::get", json!({"receipt": high})).await;
    assert_eq!(got["priority"], 200, "{got}");
    let why = op(&mut on_b, "queue::explain", json!({"receipt": later})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("delayed"),
        "{why}"
    );

    // Counted over every band's consumer, the delayed job as delayed.
    let stats = until_stats(&mut on_b, "bands", |s| s["waiting_for_worker"] == 3).await;
    assert_eq!(
        (&stats["delayed"], &stats["ready"], &stats["running"]),
        (&json!(1), &json!(0), &json!(0)),
        "{stats}"
    );
    let list = op(&mut on_b, "queue::list", json!({})).await;
    let listed = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "bands")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        (&listed["waiting_for_worker"], &listed["delayed"]),
        (&json!(3), &json!(1)),
        "{list}"
    );
    let topic = op(
        &mut on_b,
        "engine::queue::topic_stats",
        json!({"topic": "bands"}),
    )
    .await;
    assert_eq!(topic["depth"], 4, "{topic}");

    // Pages walk every band's subject (in enqueue order), and the delayed.
    let ready = op(
        &mut on_b,
        "queue::peek",
        json!({"queue": "bands", "state": "ready", "limit": 2}),
    )
    .await;
    assert_eq!(
        receipts_of(&ready),
        [low.as_str(), high.as_str()],
        "{ready}"
    );
    let rest = op(
        &mut on_b,
        "queue::peek",
        json!({"queue": "bands", "state": "ready", "cursor": ready["next_cursor"]}),
    )
    .await;
    assert_eq!(receipts_of(&rest), [mid.as_str()], "{rest}");
    let delayed = op(
        &mut on_b,
        "queue::peek",
        json!({"queue": "bands", "state": "delayed"}),
    )
    .await;
    assert_eq!(receipts_of(&delayed), [later.as_str()], "{delayed}");

    // A delayed job is cancelled while it waits; a purge takes every band
    // and the delayed jobs.
    let cancelled = op(&mut on_a, "queue::cancel", json!({"receipt": later})).await;
    assert_eq!(cancelled, json!({"receipt": later, "cancelled": true}));
    until_stats(&mut on_b, "bands", |s| s["delayed"] == 0).await;
    common::queue::enqueue_with(
        &mut on_a,
        json!({"queue": "bands", "function_id": "svc::band", "data": {}, "delay": "1h"}),
    )
    .await;
    let purged = op(&mut on_b, "queue::purge", json!({"queue": "bands"})).await;
    assert_eq!(purged, json!({"queue": "bands", "purged": 4}));
    until_stats(&mut on_b, "bands", |s| {
        s["waiting_for_worker"] == 0 && s["delayed"] == 0
    })
    .await;
    assert_eq!(jobs_left(&nats).await, 0);

    // A delayed job that fired is found on its band's subject by its receipt.
    let soon = common::queue::enqueue_with(
        &mut on_a,
        json!({"queue": "bands", "function_id": "svc::band", "data": {}, "delay": "200ms",
               "priority": 9}),
    )
    .await;
    let fired = wait_for("the delayed job fired", WAIT, async || {
        let job = op(&mut on_b, "queue::get", json!({"receipt": soon})).await;
        if job["state"] == "waiting_for_worker" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    assert_eq!(fired["priority"], 9, "{fired}");
    assert!(fired["due_at_ms"].is_u64(), "{fired}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_every_fifo_lane_even_one_made_after_it() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "operator").await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::order").await;
    let [g0, g1] = a_group_per_lane();

    // Lane 0's consumer exists before the pause, lane 1's is made after.
    enqueue(&mut on_a, "orders", "svc::order", json!({"account": g0})).await;
    let inv = next_job(&mut worker).await;
    complete(&mut worker, &inv, json!(null)).await;
    wait_until("its ack", WAIT, async || jobs_left(&nats).await == 0).await;
    let paused = op(&mut on_a, "queue::pause", json!({"queue": "orders"})).await;
    assert_eq!(paused, json!({"queue": "orders", "paused": true}));
    let first = enqueue(&mut on_a, "orders", "svc::order", json!({"account": g0})).await;
    let second = enqueue(&mut on_a, "orders", "svc::order", json!({"account": g1})).await;
    until_held_by_pause(&nats, "svc::order", ".f0").await;
    until_held_by_pause(&nats, "svc::order", ".f1").await;
    worker
        .assert_not_invoked_for(Duration::from_millis(300), "every lane is paused")
        .await;
    let stats = until_stats(&mut on_a, "orders", |s| s["ready"] == 2).await;
    assert_eq!(stats["paused"], true, "{stats}");
    let why = op(&mut on_a, "queue::explain", json!({"receipt": second})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("paused"),
        "{why}"
    );

    // Resumed from the other engine: both lanes run again.
    let mut on_b = RawClient::worker(&b.url, "operator").await;
    op(&mut on_b, "queue::resume", json!({"queue": "orders"})).await;
    let mut ran = Vec::new();
    for _ in 0..2 {
        let inv = next_job(&mut worker).await;
        ran.push(
            inv["metadata"]["job"]["receipt"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        complete(&mut worker, &inv, json!(null)).await;
    }
    ran.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(ran, expected);
    for lane in [".f0", ".f1"] {
        let c = consumer_of(&nats, "svc::order", lane).await.unwrap();
        assert_eq!(c["paused"], false, "{lane}: {c}");
    }
    wait_until("the acks", WAIT, async || jobs_left(&nats).await == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_dead_job_goes_back_onto_its_priority_band() {
    let nats = NatsCluster::start().await;
    let (a, b) = two_engines(&nats).await;
    let mut on_a = RawClient::worker(&a.url, "operator").await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::brittle").await;
    let receipt = common::queue::enqueue_with(
        &mut on_a,
        json!({"queue": "fragile", "function_id": "svc::brittle", "data": {"n": 1},
               "priority": 200}),
    )
    .await;
    let inv = next_job(&mut worker).await;
    fail(&mut worker, &inv, "boom").await;
    let dead = wait_for("the dead job's view", WAIT, async || {
        let job = op(&mut on_a, "queue::get", json!({"receipt": receipt})).await;
        if job["state"] == "dead" {
            Ok(job)
        } else {
            Err(job.to_string())
        }
    })
    .await;
    assert_eq!(dead["priority"], 200, "{dead}");

    let redriven = op(
        &mut on_a,
        "iii::queue::redrive_message",
        json!({"queue": "fragile", "message_id": receipt}),
    )
    .await;
    assert_eq!(redriven["redriven"], 1, "{redriven}");
    // Held by the worker: the job is on band 8's consumer (priority 200),
    // with its receipt and priority.
    let inv = next_job(&mut worker).await;
    assert_eq!(inv["metadata"]["job"]["receipt"], receipt.as_str(), "{inv}");
    let band = consumer_of(&nats, "svc::brittle", ".p8").await.unwrap();
    assert_eq!(band["ack_pending"], 1, "{band}");
    let base = consumer_of(&nats, "svc::brittle", "").await;
    assert!(
        base.is_none(),
        "no band-0 consumer was ever needed: {base:?}"
    );
    let job = op(&mut on_a, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(
        (&job["state"], &job["priority"], &job["redrives"]),
        (&json!("running"), &json!(200), &json!(1)),
        "{job}"
    );
    complete(&mut worker, &inv, json!(null)).await;
    wait_until("the ack", WAIT, async || jobs_left(&nats).await == 0).await;
}
