//! Cron (the `cron` trigger type) against a real engine: fires on a seconds
//! schedule to a Node and a Python SDK worker; iii's registration errors; the condition
//! function; a slow handler does not drift the schedule (overlapping slots
//! are skipped and counted); and across a real kill -9 of the engine no slot
//! fires twice and the `missed` policy (`skip`, `fire_once`) is honoured.

mod common;

use chrono::{DateTime, Timelike, Utc};
use common::programs::Program;
use common::{EngineProcess, RawClient, TestEngine};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

fn time(v: &Value) -> DateTime<Utc> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("an RFC 3339 string, got {v}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

async fn bind(w: &mut RawClient, id: &str, function_id: &str, config: Value) {
    w.send(
        json!({"type":"registertrigger","id":id,"trigger_type":"cron",
        "function_id":function_id,"config":config,"metadata":{"team":"ops"}}),
    )
    .await;
}

/// The `triggerregistrationresult` error the engine sends for binding `id`.
async fn refusal(w: &mut RawClient, id: &str, config: Value) -> Value {
    bind(w, id, "cron::f", config).await;
    let r = w
        .recv_until("triggerregistrationresult", |v| {
            v["type"] == "triggerregistrationresult" && v["id"] == id
        })
        .await;
    assert_eq!(r["error"]["code"], "trigger_registration_failed", "{r}");
    r["error"].clone()
}

/// The next invocation sent to this worker.
async fn next_invoke(w: &mut RawClient) -> Value {
    w.recv_until("invokefunction", |v| v["type"] == "invokefunction")
        .await
}

async fn answer(w: &mut RawClient, inv: &Value, result: Value) {
    w.send(
        json!({"type":"invocationresult","invocation_id":inv["invocation_id"],
        "function_id":inv["function_id"],"result":result}),
    )
    .await;
}

/// The row of `engine::cron::list` for job `id`.
async fn job(c: &mut RawClient, id: &str) -> Value {
    let r = c.call("engine::cron::list", json!({})).await;
    r["result"]["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Fires of one job on a worker serving it: each one's scheduled time,
/// answered at once, until `n` were seen.
async fn fires(w: &mut RawClient, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    while out.len() < n {
        let inv = next_invoke(w).await;
        out.push(time(&inv["data"]["scheduled_time"]));
        answer(w, &inv, json!(null)).await;
    }
    out
}

/// An SDK worker (`tests/<lang>/<script>`) binds `function` to a cron
/// trigger on `*/1 * * * * *`: three fires, one job, whole-second slots on
/// the grid, iii's payload, and the job listed by `engine::cron::list`.
async fn an_sdk_worker_is_fired_every_second(lang: &str, script: &str, function: &str) {
    let engine = TestEngine::start().await;
    let id = format!("{lang}-every-second");
    let mut sdk = Program::start(lang, script, &[&id, "*/1 * * * * *"], &engine.url);
    sdk.ready().await;
    let mut scheduled = Vec::new();
    let mut job_ids = HashSet::new();
    for _ in 0..3 {
        let tick = sdk
            .expect_json("a cron tick", |v| v["event"] == "tick")
            .await;
        let data = &tick["data"];
        assert_eq!(data["trigger"], "cron", "{data}");
        // The SDKs (Node 0.22.1, Python 0.25) may draw their own trigger id per registration.
        job_ids.insert(data["job_id"].as_str().expect("job_id").to_owned());
        let (s, a) = (time(&data["scheduled_time"]), time(&data["actual_time"]));
        assert_eq!(s.nanosecond(), 0, "slots are whole seconds: {data}");
        assert!(a >= s, "fired before its slot: {data}");
        scheduled.push(s);
    }
    assert_eq!(job_ids.len(), 1, "one job: {job_ids:?}");
    let mut c = RawClient::worker(&engine.url, "c").await;
    let id = job_ids.iter().next().unwrap();
    let row = job(&mut c, id).await;
    assert_eq!(row["function_id"], function, "{row}");
    assert_eq!(row["expression"], "*/1 * * * * *", "{row}");
    for pair in scheduled.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "{scheduled:?}"
        );
    }
    let (code, _) = sdk.finish().await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_is_fired_every_second_with_iiis_payload() {
    an_sdk_worker_is_fired_every_second("node", "cron_worker.mjs", "node::cron_tick").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_is_fired_every_second_with_iiis_payload() {
    an_sdk_worker_is_fired_every_second("python", "cron_worker.py", "py::cron_tick").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bindings_are_refused_with_iiis_messages() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("cron::f").await;
    let e = refusal(&mut w, "no-expression", json!({})).await;
    assert_eq!(e["message"], "Cron expression is required");
    let e = refusal(&mut w, "blank", json!({"expression": " "})).await;
    assert_eq!(e["message"], "Cron expression is required");
    let e = refusal(&mut w, "bad", json!({"expression": "every minute"})).await;
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Invalid cron expression 'every minute': "),
        "{msg}"
    );
    let e = refusal(
        &mut w,
        "policy",
        json!({"expression": "* * * * * *", "missed": "all"}),
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("'all'"), "{e}");
    let e = refusal(
        &mut w,
        "cond",
        json!({"expression": "* * * * * *", "condition_function_id": "a\u{0}b"}),
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains("control character"),
        "{e}"
    );
    // None of them was recorded.
    let listed = w.call("engine::registered-triggers::list", json!({})).await;
    assert!(
        !listed.to_string().contains("no-expression"),
        "a refused binding is not recorded: {listed}"
    );
    let jobs = w.call("engine::cron::list", json!({})).await;
    assert_eq!(jobs["result"]["jobs"], json!([]), "{jobs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_that_answers_false_skips_every_slot() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("cron::guarded").await;
    w.register_function("cron::never").await;
    bind(
        &mut w,
        "guarded",
        "cron::guarded",
        json!({"expression": "* * * * * *", "condition_function_id": "cron::never"}),
    )
    .await;
    // Two slots: each asks the condition (with the event) and fires nothing.
    for _ in 0..2 {
        let inv = next_invoke(&mut w).await;
        assert_eq!(inv["function_id"], "cron::never", "{inv}");
        assert_eq!(inv["data"]["job_id"], "guarded", "{inv}");
        answer(&mut w, &inv, json!(false)).await;
    }
    let mut c = RawClient::worker(&engine.url, "c").await;
    let row = job(&mut c, "guarded").await;
    assert_eq!(row["fired"], 0, "{row}");
}

/// A handler slower than the period: the slots it overlaps are skipped and
/// counted, and every fire stays on the schedule's grid (no drift).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_neither_drifts_the_schedule_nor_piles_up_runs() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    w.register_function("cron::slow").await;
    bind(
        &mut w,
        "slow",
        "cron::slow",
        json!({"expression": "* * * * * *"}),
    )
    .await;

    let first = next_invoke(&mut w).await;
    assert_eq!(
        first["metadata"],
        json!({"team":"ops"}),
        "binding metadata rides along"
    );
    let s0 = time(&first["data"]["scheduled_time"]);
    // The slow run: answered 2.2 s after it started (the handler's work is the test).
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    answer(&mut w, &first, json!(null)).await;

    let inv = next_invoke(&mut w).await;
    let s1 = time(&inv["data"]["scheduled_time"]);
    let a1 = time(&inv["data"]["actual_time"]);
    answer(&mut w, &inv, json!(null)).await;
    let gap = (s1 - s0).num_seconds();
    assert!(
        (3..=4).contains(&gap),
        "the next fire is the first slot after the run ended, not one period after it: {s0} then {s1}"
    );
    assert_eq!(s1.nanosecond(), 0, "still on the grid: {s1}");
    assert!(
        a1 - s1 < chrono::Duration::milliseconds(800),
        "fired on time: {s1} at {a1}"
    );
    let later = fires(&mut w, 2).await;
    assert_eq!(later[0] - s1, chrono::Duration::seconds(1), "{later:?}");
    assert_eq!(
        later[1] - later[0],
        chrono::Duration::seconds(1),
        "{later:?}"
    );

    let mut c = RawClient::worker(&engine.url, "c").await;
    let row = job(&mut c, "slow").await;
    assert!(
        row["skipped_overlap"].as_u64().unwrap() >= 2,
        "the overlapped slots are counted: {row}"
    );
    assert_eq!(row["running"], false, "{row}");
}

/// Waits until the wall clock is between 100 and 600 ms past a second, so a
/// binding sent now is not at a slot's edge: the test can then tell a
/// catch-up fire (slot before the binding) from a regular one.
async fn off_the_slot_edge() {
    loop {
        let ms = Utc::now().timestamp_subsec_millis();
        if (100..600).contains(&ms) {
            return;
        }
        let to_next = (1_100 - ms) % 1_000;
        tokio::time::sleep(Duration::from_millis(u64::from(to_next))).await;
    }
}

struct Crash {
    before: Vec<DateTime<Utc>>,
    after: Vec<DateTime<Utc>>,
    bound_again: DateTime<Utc>,
    row: Value,
}

/// A job bound with `missed` fires a few times; the engine is SIGKILLed;
/// 2.5 s pass; a restarted engine on the same store gets the same trigger id
/// bound again, and fires until three regular slots after that.
async fn kill_9_and_bind_again(id: &str, missed: &str) -> Crash {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = EngineProcess::start_in(dir.path());
    let config = json!({"expression": "* * * * * *", "missed": missed});
    let mut w = RawClient::worker(&engine.url, "cron-crash").await;
    w.register_function("cron::crash").await;
    bind(&mut w, id, "cron::crash", config.clone()).await;
    let before = fires(&mut w, 3).await;
    engine.kill();
    drop(w);
    // The outage is what this test is about: slots pass while nothing runs.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let engine = EngineProcess::start_in(dir.path());
    let mut w = RawClient::worker(&engine.url, "cron-crash").await;
    w.register_function("cron::crash").await;
    off_the_slot_edge().await;
    let bound_again = Utc::now();
    bind(&mut w, id, "cron::crash", config).await;
    let mut after = Vec::new();
    while after.iter().filter(|s| **s > bound_again).count() < 3 {
        after.extend(fires(&mut w, 1).await);
    }
    let mut c = RawClient::worker(&engine.url, "c").await;
    let row = job(&mut c, id).await;
    drop(engine); // killed
    Crash {
        before,
        after,
        bound_again,
        row,
    }
}

fn assert_no_slot_fired_twice(c: &Crash) {
    let all: Vec<_> = c.before.iter().chain(&c.after).collect();
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a slot fired twice: {all:?}");
    let last_before = c.before.last().unwrap();
    assert!(
        c.after.iter().all(|s| s > last_before),
        "a slot before the kill fired again: {:?} then {:?}",
        c.before,
        c.after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_missed_slots_are_skipped_by_default_policy() {
    let c = kill_9_and_bind_again("crash-skip", "skip").await;
    assert_no_slot_fired_twice(&c);
    let caught_up: Vec<_> = c.after.iter().filter(|s| **s <= c.bound_again).collect();
    assert!(
        caught_up.is_empty(),
        "skip fires no missed slot: {caught_up:?}"
    );
    assert!(
        c.row["skipped_missed"].as_u64().unwrap() >= 2,
        "the skipped slots are counted: {}",
        c.row
    );
    assert_eq!(c.row["caught_up"], 0, "{}", c.row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_fire_once_fires_the_latest_missed_slot_once() {
    let c = kill_9_and_bind_again("crash-once", "fire_once").await;
    assert_no_slot_fired_twice(&c);
    let caught_up: Vec<_> = c.after.iter().filter(|s| **s <= c.bound_again).collect();
    assert_eq!(caught_up.len(), 1, "one catch-up fire: {:?}", c.after);
    let latest_missed = c.bound_again.with_nanosecond(0).unwrap();
    assert_eq!(*caught_up[0], latest_missed, "for the latest missed slot");
    assert_eq!(c.row["caught_up"], 1, "{}", c.row);
    // The regular slots go on from the schedule.
    let regular: Vec<_> = c.after.iter().filter(|s| **s > c.bound_again).collect();
    assert_eq!(*regular[0] - latest_missed, chrono::Duration::seconds(1));
}
