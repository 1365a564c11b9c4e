//! The durable queue end to end, with raw protocol clients: delivery when a
//! worker appears, retries and dead letters with their history, redrive,
//! worker loss, leases, restarts with jobs in every state, operator functions.

mod common;

use common::queue::{enqueue, fast_config, next_job, op, until_state, until_stats};
use common::{RawClient, TestEngine, WAIT, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

/// Answers invocations: `Ok` values become results, `Err` strings become errors.
async fn serve(
    w: &mut RawClient,
    n: usize,
    f: impl Fn(&Value) -> Result<Value, String>,
) -> Vec<Value> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let inv = w
            .recv_until("invoke", |v| v["type"] == "invokefunction")
            .await;
        let reply = match f(&inv["data"]) {
            Ok(v) => {
                json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":inv["function_id"],"result":v})
            }
            Err(m) => {
                json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":inv["function_id"],
                "error":{"code":"invocation_failed","message":m,"stacktrace":"at handler"}})
            }
        };
        w.send(reply).await;
        seen.push(inv["data"].clone());
    }
    seen
}

#[tokio::test]
async fn a_job_enqueued_before_any_worker_runs_when_one_registers() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let receipt = enqueue(&mut caller, "jobs", "mail::send", json!({"to":"a@b"})).await;
    let stats = until_stats(&mut caller, "jobs", |s| s["waiting_for_worker"] == 1).await;
    assert_eq!(stats["waiting_for_worker"], 1, "{stats}");
    let why = op(&mut caller, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        why["explanation"]
            .as_str()
            .unwrap()
            .contains("no connected worker"),
        "{why}"
    );
    let job = op(&mut caller, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(
        (job["state"].clone(), job["attempts"].clone()),
        (json!("waiting_for_worker"), json!(0)),
        "no attempt spent waiting"
    );

    let mut worker = RawClient::worker(&engine.url, "mailer").await;
    worker.register_function("mail::send").await;
    let got = serve(&mut worker, 1, |d| Ok(json!({"sent": d["to"]}))).await;
    assert_eq!(got[0]["to"], "a@b");
    let job = until_state(&mut caller, &receipt, "completed").await;
    assert_eq!(job["result"], json!({"sent":"a@b"}));
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["history"][0]["outcome"], "completed");
    engine.stop().await;
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_with_full_history_and_redrive() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut worker = engine.worker_with("flaky", &["pay::charge"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let receipt = enqueue(&mut caller, "payments", "pay::charge", json!({"n":1})).await;
    serve(&mut worker, 3, |_| Err("card declined".into())).await;
    let job = until_state(&mut caller, &receipt, "dead").await;
    assert_eq!(job["attempts"], 3);
    let history = job["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    for (i, a) in history.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert_eq!(a["outcome"], "error");
        assert_eq!(a["error"]["message"], "card declined");
        assert_eq!(a["error"]["stacktrace"], "at handler");
        assert!(a["worker_id"].is_string());
    }
    let gap =
        history[1]["started_at_ms"].as_u64().unwrap() - history[0]["ended_at_ms"].as_u64().unwrap();
    assert!(gap >= 10, "a backoff separates attempts ({gap} ms)");

    let dlq = op(
        &mut caller,
        "engine::queue::dlq_messages",
        json!({"topic":"payments"}),
    )
    .await;
    assert_eq!(
        dlq[0]["id"],
        receipt.as_str(),
        "the receipt is the dead letter's id"
    );
    assert_eq!(dlq[0]["payload"], json!({"n":1}));
    assert_eq!(dlq[0]["retries"], 3);
    let topics = op(&mut caller, "engine::queue::dlq_topics", json!({})).await;
    assert_eq!(
        topics,
        json!([{"topic":"payments","broker_type":"qmesh","message_count":1}])
    );

    let r = op(
        &mut caller,
        "iii::queue::redrive_message",
        json!({"queue":"payments","message_id":receipt}),
    )
    .await;
    assert_eq!(r["redriven"], 1);
    serve(&mut worker, 1, |_| Ok(json!("charged"))).await;
    let job = until_state(&mut caller, &receipt, "completed").await;
    assert_eq!(job["redrives"], 1);
    assert_eq!(
        job["history"].as_array().unwrap().len(),
        4,
        "history survives redrive"
    );
    let stats = op(
        &mut caller,
        "engine::queue::topic_stats",
        json!({"topic":"payments"}),
    )
    .await;
    assert_eq!(stats["dlq_depth"], 0);
    engine.stop().await;
}

#[tokio::test]
async fn redrive_all_and_discard() {
    let mut config = fast_config();
    config.queue.defaults.max_attempts = 1;
    let engine = TestEngine::start_with(config).await;
    let mut worker = engine.worker_with("w", &["f::x"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let mut receipts = Vec::new();
    for n in 0..3 {
        receipts.push(enqueue(&mut caller, "q", "f::x", json!({"n":n})).await);
    }
    serve(&mut worker, 3, |_| Err("no".into())).await;
    for r in &receipts {
        until_state(&mut caller, r, "dead").await;
    }
    let d = op(
        &mut caller,
        "iii::queue::discard_message",
        json!({"queue":"q","message_id":receipts[0]}),
    )
    .await;
    assert_eq!(d["redriven"], 1);
    let gone = caller
        .call("queue::get", json!({"receipt":receipts[0]}))
        .await;
    assert_eq!(gone["error"]["code"], "NOT_FOUND");
    let r = op(&mut caller, "iii::queue::redrive", json!({"queue":"q"})).await;
    assert_eq!(r, json!({"queue":"q","redriven":2}));
    serve(&mut worker, 2, |_| Ok(json!(1))).await;
    for r in &receipts[1..] {
        until_state(&mut caller, r, "completed").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_worker_lost_mid_job_hands_it_to_another_worker() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut first = engine.worker_with("first", &["img::resize"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let receipt = enqueue(&mut caller, "images", "img::resize", json!({"w":10})).await;
    first
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    drop(first);
    let mut second = RawClient::worker(&engine.url, "second").await;
    second.register_function("img::resize").await;
    serve(&mut second, 1, |_| Ok(json!("resized"))).await;
    let job = until_state(&mut caller, &receipt, "completed").await;
    assert_eq!(job["history"][0]["outcome"], "worker_lost");
    assert_eq!(job["history"][1]["outcome"], "completed");
    engine.stop().await;
}

#[tokio::test]
async fn an_attempt_past_its_lease_fails_with_timeout() {
    let mut config = fast_config();
    config.queue.defaults.lease = Duration::from_millis(200);
    config.queue.defaults.max_attempts = 2;
    let engine = TestEngine::start_with(config).await;
    let mut worker = engine.worker_with("sleepy", &["slow::op"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let receipt = enqueue(&mut caller, "slow", "slow::op", json!({})).await;
    worker
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await; // never answered
    worker
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await; // the retry
    let job = until_state(&mut caller, &receipt, "dead").await;
    assert_eq!(job["history"][0]["outcome"], "timeout");
    assert_eq!(job["last_error"]["reason"], "timeout");
    assert_eq!(
        engine.pending_calls().await,
        0,
        "timed-out calls are cleaned up"
    );
    engine.stop().await;
}

#[tokio::test]
async fn pause_resume_cancel_purge_and_delays() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let later = op(
        &mut caller,
        "queue::enqueue",
        json!({"queue":"ops","function_id":"ops::run","data":{"k":1},"delay":"1h"}),
    )
    .await;
    let later = later["receipt"].as_str().unwrap().to_owned();
    let soon = enqueue(&mut caller, "ops", "ops::run", json!({"k":2})).await;
    op(&mut caller, "queue::pause", json!({"queue":"ops"})).await;
    let mut worker = RawClient::worker(&engine.url, "w").await;
    worker.register_function("ops::run").await;
    engine.wait_for_providers("ops::run", 1).await;
    worker
        .assert_not_invoked_for(
            Duration::from_millis(200),
            "a paused queue dispatches nothing",
        )
        .await;
    let why = op(&mut caller, "queue::explain", json!({"receipt": soon})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("paused"),
        "{why}"
    );
    let why = op(&mut caller, "queue::explain", json!({"receipt": later})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("scheduled"),
        "{why}"
    );
    let peek = op(
        &mut caller,
        "queue::peek",
        json!({"queue":"ops","state":"delayed"}),
    )
    .await;
    assert_eq!(peek["jobs"][0]["receipt"], later.as_str());
    op(&mut caller, "queue::resume", json!({"queue":"ops"})).await;
    serve(&mut worker, 1, |d| Ok(d.clone())).await;
    until_state(&mut caller, &soon, "completed").await;
    let c = op(&mut caller, "queue::cancel", json!({"receipt": later})).await;
    assert_eq!(c["cancelled"], true);
    let again = caller.call("queue::cancel", json!({"receipt": soon})).await;
    assert_eq!(again["error"]["code"], "invalid_state");
    op(&mut caller, "queue::pause", json!({"queue":"ops"})).await;
    for n in 0..5 {
        enqueue(&mut caller, "ops", "ops::run", json!({"n":n})).await;
    }
    let p = op(&mut caller, "queue::purge", json!({"queue":"ops"})).await;
    assert_eq!(p["purged"], 5);
    let stats = op(&mut caller, "queue::stats", json!({"queue":"ops"})).await;
    assert_eq!(
        (
            stats["ready"].clone(),
            stats["delayed"].clone(),
            stats["completed"].clone()
        ),
        (json!(0), json!(0), json!(1)),
        "{stats}"
    );
    engine.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let mut config = fast_config();
    config.queue.strict = true;
    config
        .queue
        .queues
        .insert("known".into(), Default::default());
    config.queue.defaults.max_payload_bytes = 100;
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let r = c
        .call(
            "queue::enqueue",
            json!({"queue":"nope","function_id":"f","data":1}),
        )
        .await;
    assert_eq!(r["error"]["code"], "queue_not_found");
    let r = c
        .call(
            "queue::enqueue",
            json!({"queue":"known","function_id":"f","data":"x".repeat(200)}),
        )
        .await;
    assert_eq!(r["error"]["code"], "payload_too_large");
    let r = c
        .call(
            "queue::enqueue",
            json!({"queue":"known","function_id":"f","delay":"soon"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS");
    let r = c.call("queue::get", json!({"receipt":"not-a-uuid"})).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS");
    let r = c.call("queue::stats", json!({})).await;
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS");
    let list = op(&mut c, "queue::list", json!({})).await;
    assert_eq!(list["queues"], json!([]), "nothing half-written: {list}");
    let ok = op(
        &mut c,
        "queue::enqueue",
        json!({"queue":"known","function_id":"f","data":1,"idempotency_key":"k1"}),
    )
    .await;
    let dup = op(
        &mut c,
        "queue::enqueue",
        json!({"queue":"known","function_id":"f","data":2,"idempotency_key":"k1"}),
    )
    .await;
    assert_eq!(dup["receipt"], ok["receipt"]);
    assert_eq!(dup["duplicate"], true);
    engine.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_jobs_in_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config();
    config.data_dir = dir.path().to_owned();
    config.queue.defaults.max_attempts = 1;
    let engine = TestEngine::start_with(config.clone()).await;
    let mut worker = RawClient::worker(&engine.url, "w").await;
    worker.register_function("f::done").await;
    worker.register_function("f::dead").await;
    wait_until("registered", WAIT, async || {
        engine.function_count().await == 2
    })
    .await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let done = enqueue(&mut c, "q", "f::done", json!(1)).await;
    serve(&mut worker, 1, |_| Ok(json!("ok"))).await;
    let dead = enqueue(&mut c, "q", "f::dead", json!(2)).await;
    serve(&mut worker, 1, |_| Err("bad".into())).await;
    until_state(&mut c, &dead, "dead").await;
    let delayed = op(
        &mut c,
        "queue::enqueue",
        json!({"queue":"q","function_id":"f::later","data":3,"delay":"1h"}),
    )
    .await;
    let waiting = enqueue(&mut c, "q", "f::nobody", json!(4)).await;
    let before = op(&mut c, "queue::stats", json!({"queue":"q"})).await;
    drop((worker, c));
    engine.stop().await;

    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let after = op(&mut c, "queue::stats", json!({"queue":"q"})).await;
    for k in [
        "ready",
        "waiting_for_worker",
        "delayed",
        "completed",
        "dead",
        "running",
    ] {
        assert_eq!(before[k], after[k], "{k}: {before} vs {after}");
    }
    assert_eq!(
        op(&mut c, "queue::get", json!({"receipt": done})).await["result"],
        "ok"
    );
    assert_eq!(
        op(&mut c, "queue::get", json!({"receipt": dead})).await["state"],
        "dead"
    );
    let d = op(&mut c, "queue::get", json!({"receipt": delayed["receipt"]})).await;
    assert_eq!(d["state"], "delayed");
    assert_eq!(
        op(&mut c, "queue::get", json!({"receipt": waiting})).await["state"],
        "waiting_for_worker"
    );
    let mut worker = RawClient::worker(&engine.url, "w2").await;
    worker.register_function("f::nobody").await;
    serve(&mut worker, 1, |_| Ok(json!("finally"))).await;
    until_state(&mut c, &waiting, "completed").await;
    engine.stop().await;
}

#[tokio::test]
async fn iii_queue_functions_have_iii_shapes() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    enqueue(&mut c, "shapes", "x::y", json!({})).await;
    let topics = op(&mut c, "engine::queue::list_topics", json!({})).await;
    assert_eq!(
        topics,
        json!([{"name":"shapes","broker_type":"qmesh","subscriber_count":10}])
    );
    let stats = op(
        &mut c,
        "engine::queue::topic_stats",
        json!({"queue":"shapes"}),
    )
    .await;
    for k in ["depth", "consumer_count", "dlq_depth", "config"] {
        assert!(stats.get(k).is_some(), "{k} in {stats}");
    }
    assert_eq!(stats["depth"], 1);
    let list = op(&mut c, "queue::list", json!({})).await;
    assert_eq!(list["queues"][0]["queue"], "shapes");
    let fns = op(
        &mut c,
        "engine::functions::list",
        json!({"include_internal": true}),
    )
    .await;
    assert!(
        fns["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function_id"] == "engine::queue::list_topics")
    );
    engine.stop().await;
}

#[tokio::test]
async fn fifo_groups_run_in_order_and_a_failing_job_holds_back_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config();
    config.data_dir = dir.path().to_owned();
    config.queue.queues.insert(
        "orders".into(),
        qmesh::queue::settings::QueueOverrides {
            ordering: Some(qmesh::queue::settings::Ordering::Fifo),
            group_field: Some("account".into()),
            backoff_initial: Some(Duration::from_millis(600)),
            backoff_max: Some(Duration::from_secs(1)),
            ..Default::default()
        },
    );
    let engine = TestEngine::start_with(config.clone()).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let bad = c
        .call(
            "queue::enqueue",
            json!({"queue":"orders","function_id":"orders::apply","data":{"n":0}}),
        )
        .await;
    assert_eq!(
        bad["error"]["code"], "INVALID_ARGUMENTS",
        "a fifo job needs its group field: {bad}"
    );
    let mut receipts = Vec::new();
    for (account, n) in [("a", 1), ("a", 2), ("a", 3), ("b", 1)] {
        receipts.push(
            enqueue(
                &mut c,
                "orders",
                "orders::apply",
                json!({"account":account,"n":n}),
            )
            .await,
        );
    }
    let held = op(&mut c, "queue::explain", json!({"receipt": receipts[1]})).await;
    assert_eq!(held["state"], "held", "{held}");

    // First run: a1 fails once; b1 runs meanwhile; a2 and a3 must not start.
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("orders::apply").await;
    let first = serve(&mut w, 2, |d| {
        if d["account"] == "a" {
            Err("a1 failed".into())
        } else {
            Ok(json!("ok"))
        }
    })
    .await;
    let mut accounts: Vec<_> = first
        .iter()
        .map(|d| (d["account"].clone(), d["n"].clone()))
        .collect();
    accounts.sort_by_key(|a| a.0.as_str().unwrap().to_owned());
    assert_eq!(
        accounts,
        vec![(json!("a"), json!(1)), (json!("b"), json!(1))]
    );
    until_state(&mut c, &receipts[3], "completed").await;
    let a1 = op(&mut c, "queue::get", json!({"receipt": receipts[0]})).await;
    assert_eq!(a1["state"], "delayed", "a1 is backing off: {a1}");
    let why = op(&mut c, "queue::explain", json!({"receipt": receipts[1]})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("FIFO group"),
        "{why}"
    );

    // The hold survives a restart.
    drop((w, c));
    engine.stop().await;
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    assert_eq!(
        op(&mut c, "queue::get", json!({"receipt": receipts[1]})).await["state"],
        "held"
    );
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("orders::apply").await;
    let rest = serve(&mut w, 3, |_| Ok(json!("ok"))).await;
    let order: Vec<_> = rest.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "group a runs one at a time, in enqueue order"
    );
    for r in &receipts {
        until_state(&mut c, r, "completed").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn an_attempt_interrupted_by_a_stop_is_recorded_as_engine_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config();
    config.data_dir = dir.path().to_owned();
    config.server.shutdown_grace = Duration::from_millis(100);
    config.queue.defaults.lease = Duration::from_secs(30);
    let engine = TestEngine::start_with(config.clone()).await;
    let mut w = engine.worker_with("w", &["long::job"]).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let receipt = enqueue(&mut c, "long", "long::job", json!({})).await;
    w.recv_until("invoke", |v| v["type"] == "invokefunction")
        .await; // never answered
    let running = until_state(&mut c, &receipt, "running").await;
    assert_eq!(running["history"][0]["outcome"], "running");
    engine.stop().await; // the worker is still connected, its attempt still running
    drop((w, c));

    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["state"], "waiting_for_worker", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["history"][0]["outcome"], "engine_restart");
    let mut w = engine.worker_with("w", &["long::job"]).await;
    serve(&mut w, 1, |_| Ok(json!("done"))).await;
    let job = until_state(&mut c, &receipt, "completed").await;
    assert_eq!(job["history"][1]["outcome"], "completed");
    engine.stop().await;
}

#[tokio::test]
async fn completed_jobs_are_pruned_after_their_queues_retention_only() {
    let mut config = fast_config();
    config.queue.defaults.retention = Duration::from_millis(300);
    let kept = qmesh::queue::settings::QueueOverrides {
        retention: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    config.queue.queues.insert("kept".into(), kept);
    let engine = TestEngine::start_with(config).await;
    let mut w = engine.worker_with("w", &["job::run"]).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let mut short = Vec::new();
    for i in 0..4 {
        short.push(enqueue(&mut c, "short", "job::run", json!({"i": i})).await);
    }
    let long = enqueue(&mut c, "kept", "job::run", json!({"i": 9})).await;
    serve(&mut w, 5, |_| Ok(json!("ok"))).await;
    until_state(&mut c, &long, "completed").await;
    for r in &short {
        until_state(&mut c, r, "completed").await;
    }
    let peek = op(
        &mut c,
        "queue::peek",
        json!({"queue":"short","state":"completed","limit":10}),
    )
    .await;
    let listed: Vec<_> = peek["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["receipt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), 4, "{peek}");
    assert!(short.iter().all(|r| listed.contains(r)), "{peek}");

    until_stats(&mut c, "short", |s| s["completed"] == 0).await;
    for r in &short {
        let gone = c.call("queue::get", json!({"receipt": r})).await;
        assert_eq!(gone["error"]["code"], "NOT_FOUND", "{gone}");
    }
    let job = op(&mut c, "queue::get", json!({"receipt": long})).await;
    assert_eq!(
        job["state"], "completed",
        "the longer retention keeps it: {job}"
    );
    let stats = op(&mut c, "queue::stats", json!({"queue":"kept"})).await;
    assert_eq!(stats["completed"], 1, "{stats}");
    engine.stop().await;
}

#[tokio::test]
async fn a_queue_paused_before_its_first_job_stays_paused_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config();
    config.data_dir = dir.path().to_owned();
    let engine = TestEngine::start_with(config.clone()).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let p = op(&mut c, "queue::pause", json!({"queue":"fresh"})).await;
    assert_eq!(p["paused"], true, "{p}");
    drop(c);
    engine.stop().await;

    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let stats = op(&mut c, "queue::stats", json!({"queue":"fresh"})).await;
    assert_eq!(stats["paused"], true, "{stats}");
    let mut w = engine.worker_with("w", &["fresh::job"]).await;
    let receipt = enqueue(&mut c, "fresh", "fresh::job", json!({})).await;
    let why = op(&mut c, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        why["explanation"].as_str().unwrap().contains("paused"),
        "{why}"
    );
    assert_eq!(why["state"], "ready", "a worker provides it: {why}");
    op(&mut c, "queue::resume", json!({"queue":"fresh"})).await;
    serve(&mut w, 1, |_| Ok(json!("ran"))).await;
    until_state(&mut c, &receipt, "completed").await;
    engine.stop().await;
}

#[tokio::test]
async fn strict_mode_still_refuses_to_pause_an_undeclared_queue() {
    let mut config = fast_config();
    config.queue.strict = true;
    let engine = TestEngine::start_with(config).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    for f in ["queue::pause", "queue::resume"] {
        let r = c.call(f, json!({"queue":"undeclared"})).await;
        assert_eq!(r["error"]["code"], "queue_not_found", "{f}: {r}");
    }
    engine.stop().await;
}

/// `queue::get`, `queue::peek` and `queue::explain` name a job's state the
/// way `queue::stats` counts it.
#[tokio::test]
async fn a_job_is_shown_in_the_state_stats_counts_it_in() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let receipt = enqueue(&mut c, "vocab", "vocab::nobody", json!({})).await;
    let stats = op(&mut c, "queue::stats", json!({"queue":"vocab"})).await;
    assert_eq!(
        (stats["waiting_for_worker"].clone(), stats["ready"].clone()),
        (json!(1), json!(0)),
        "{stats}"
    );
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["state"], "waiting_for_worker", "{job}");
    let why = op(&mut c, "queue::explain", json!({"receipt": receipt})).await;
    assert_eq!(why["state"], "waiting_for_worker", "{why}");
    let page = op(
        &mut c,
        "queue::peek",
        json!({"queue":"vocab","state":"ready"}),
    )
    .await;
    assert_eq!(page["jobs"][0]["state"], "waiting_for_worker", "{page}");

    // Once a worker provides the function (the queue paused so it stays put),
    // the same job is ready in every view.
    op(&mut c, "queue::pause", json!({"queue":"vocab"})).await;
    let _w = engine.worker_with("w", &["vocab::nobody"]).await;
    let stats = op(&mut c, "queue::stats", json!({"queue":"vocab"})).await;
    assert_eq!(
        (stats["waiting_for_worker"].clone(), stats["ready"].clone()),
        (json!(0), json!(1)),
        "{stats}"
    );
    let job = op(&mut c, "queue::get", json!({"receipt": receipt})).await;
    assert_eq!(job["state"], "ready", "{job}");
    engine.stop().await;
}

#[tokio::test]
async fn enqueue_many_writes_a_whole_batch_or_refuses_it() {
    let engine = TestEngine::start_with(fast_config()).await;
    let mut c = RawClient::worker(&engine.url, "producer").await;
    let jobs: Vec<Value> = (0..500).map(|i| json!({"data": {"i": i}})).collect();
    let r = op(
        &mut c,
        "queue::enqueue_many",
        json!({"queue": "bulk", "function_id": "bulk::run", "jobs": jobs}),
    )
    .await;
    let receipts = r["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), 500, "{r}");
    assert_eq!(r["duplicates"], 0);
    until_stats(&mut c, "bulk", |s| s["waiting_for_worker"] == 500).await;

    // One bad job refuses the call, naming it; nothing of it is written.
    let bad = c
        .call(
            "queue::enqueue_many",
            json!({"queue": "bulk", "function_id": "bulk::run",
                "jobs": [{"data": 1}, {"data": 2, "delay": "soon"}]}),
        )
        .await;
    assert_eq!(bad["error"]["code"], "INVALID_ARGUMENTS", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1]:"),
        "{bad}"
    );
    for wrong in [
        json!({"queue": "bulk", "jobs": []}),
        json!({"queue": "bulk", "jobs": [{"data": 1}]}),
        json!({"queue": "bulk", "function_id": "f", "jobs": [{"queue": "other", "data": 1}]}),
    ] {
        let r = c.call("queue::enqueue_many", wrong).await;
        assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
    }
    let stats = op(&mut c, "queue::stats", json!({"queue": "bulk"})).await;
    assert_eq!(stats["waiting_for_worker"], 500, "{stats}");

    // A worker runs every job of the batch, each with its own data.
    let mut w = RawClient::worker(&engine.url, "runner").await;
    w.register_function("bulk::run").await;
    let seen = serve(&mut w, 500, |_| Ok(json!(true))).await;
    let mut ids: Vec<u64> = seen.iter().map(|d| d["i"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..500).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_handler_knows_its_job_and_heartbeats_keep_it_running_past_its_lease() {
    // fast_config: a 1 s lease, 3 attempts.
    let engine = TestEngine::start_with(fast_config()).await;
    let mut producer = RawClient::worker(&engine.url, "producer").await;
    let mut w = RawClient::worker(&engine.url, "long").await;
    w.register_function("long::run").await;
    engine.wait_for_providers("long::run", 1).await;
    let receipt = enqueue(&mut producer, "long", "long::run", json!({"n": 1})).await;

    let inv = next_job(&mut w).await;
    let job = &inv["metadata"]["job"];
    assert_eq!(job["receipt"], receipt.as_str(), "{inv}");
    assert_eq!(job["queue"], "long");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["max_attempts"], 3);

    // Three leases long, beating every 400 ms: never redelivered.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(3_000) {
        let r = w
            .call(
                "queue::heartbeat",
                json!({"receipt": receipt, "extend": "1s"}),
            )
            .await;
        assert_eq!(r["result"]["attempt"], 1, "{r}");
        tokio::time::sleep(Duration::from_millis(400)).await; // the handler's work between beats
    }
    w.send(json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":"long::run","result":"done"})).await;
    let done = until_state(&mut producer, &receipt, "completed").await;
    assert_eq!(done["attempts"], 1, "one attempt, no redelivery: {done}");

    // A job whose handler stops beating times out one lease after its last beat.
    let receipt = enqueue(&mut producer, "long", "long::run", json!({"n": 2})).await;
    let first = next_job(&mut w).await;
    let r = w
        .call(
            "queue::heartbeat",
            json!({"receipt": receipt, "extend": 500}),
        )
        .await;
    assert!(r["error"].is_null(), "{r}");
    let again = next_job(&mut w).await;
    assert_eq!(
        again["metadata"]["job"]["attempt"], 2,
        "redelivered: {again}"
    );
    assert_ne!(again["invocation_id"], first["invocation_id"]);
    let job = op(&mut producer, "queue::get", json!({"receipt": receipt})).await;
    let history = job["history"].as_array().expect("history");
    assert_eq!(history[0]["outcome"], "timeout", "{job}");

    // Heartbeats for jobs that are not running are refused.
    let r = w
        .call(
            "queue::heartbeat",
            json!({"receipt": uuid::Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_state", "{r}");
}

#[tokio::test]
async fn a_rate_limit_holds_across_workers_and_a_throttle_pauses_dispatch() {
    let mut config = fast_config();
    config.queue.queues.insert(
        "limited".into(),
        toml::from_str("rate = \"20/1s\"\nconcurrency = 50").unwrap(),
    );
    let engine = TestEngine::start_with(config).await;
    let mut producer = RawClient::worker(&engine.url, "producer").await;
    let jobs: Vec<Value> = (0..200).map(|i| json!({"data": {"i": i}})).collect();
    op(
        &mut producer,
        "queue::enqueue_many",
        json!({"queue": "limited", "function_id": "lim::run", "jobs": jobs}),
    )
    .await;
    // Two workers answer at once: only the rate limit holds them back.
    let mut workers = Vec::new();
    for n in 0..2 {
        let mut w = RawClient::worker(&engine.url, &format!("w{n}")).await;
        w.register_function("lim::run").await;
        workers.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut seen = 0;
            while started.elapsed() < Duration::from_millis(3_000) {
                let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(100), w.recv()).await
                else {
                    continue;
                };
                if v["type"] == "invokefunction" {
                    w.send(json!({"type":"invocationresult","invocation_id":v["invocation_id"],"function_id":"lim::run","result":true})).await;
                    seen += 1;
                }
            }
            (seen, w)
        }));
    }
    let mut ran = 0;
    let mut connected = Vec::new();
    for w in workers {
        let (seen, w) = w.await.unwrap();
        ran += seen;
        connected.push(w);
    }
    // A full bucket (20) at once, then 20/s for the rest of the 3 s window.
    assert!(
        (70..=82).contains(&ran),
        "{ran} jobs started in 3 s at 20/s"
    );
    let why = op(
        &mut producer,
        "queue::peek",
        json!({"queue": "limited", "limit": 1}),
    )
    .await;
    let receipt = why["jobs"][0]["receipt"].as_str().unwrap().to_owned();
    let explained = op(&mut producer, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        explained["explanation"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{explained}"
    );

    // A throttle stops every start for its duration.
    let r = op(
        &mut producer,
        "queue::throttle",
        json!({"queue": "limited", "for": "60s"}),
    )
    .await;
    assert_eq!(r["throttled_for_ms"], 60_000, "{r}");
    let explained = op(&mut producer, "queue::explain", json!({"receipt": receipt})).await;
    assert!(
        explained["explanation"]
            .as_str()
            .unwrap()
            .contains("throttled"),
        "{explained}"
    );
    // Jobs started before the throttle may still be on their way: answer
    // what arrives in the next moment, then nothing more may come.
    for w in &mut connected {
        while let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(200), w.recv()).await {
            if v["type"] == "invokefunction" {
                w.send(json!({"type":"invocationresult","invocation_id":v["invocation_id"],"function_id":"lim::run","result":true})).await;
            }
        }
    }
    for w in &mut connected {
        w.assert_not_invoked_for(
            Duration::from_millis(1_000),
            "a throttled queue starts nothing",
        )
        .await;
    }
}
