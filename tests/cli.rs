//! The `qmesh` binary's client subcommands against a real engine on an
//! ephemeral port: output shapes (`--json`), text output, and exit codes
//! (0 ok, 1 engine error, 2 usage, 3 unreachable, 5 not confirmed).

mod common;

use common::cli::{ok_json, qmesh, qmesh_with_stdin, until};
use common::{TestEngine, test_config};
use qmesh::client::{Client, ErrorBody};
use serde_json::{Value, json};
use std::time::Duration;

/// An engine whose queue `flaky` dead-letters after one attempt, and a
/// worker serving `t::echo` and `t::fail`.
async fn setup() -> (TestEngine, Client) {
    let mut config = test_config();
    config.queue.queues.insert(
        "flaky".into(),
        toml::from_str("max_attempts = 1").expect("queue overrides"),
    );
    let engine = TestEngine::start_with(config).await;
    let worker = Client::connect(&engine.url).await.unwrap();
    worker
        .register_function("t::echo", |mut input: Value| async move {
            input.as_object_mut().map(|m| m.remove("_caller_worker_id"));
            Ok(input)
        })
        .unwrap();
    worker
        .register_function("t::fail", |_| async {
            Err(ErrorBody::new("boom", "it broke"))
        })
        .unwrap();
    worker
        .register_function("t::slow", |_| async {
            tokio::time::sleep(Duration::from_secs(2)).await; // slow work
            Ok(json!("late"))
        })
        .unwrap();
    worker.announce("cli-test").unwrap();
    for f in ["t::echo", "t::fail", "t::slow"] {
        worker
            .wait_for_function(f, Duration::from_secs(5))
            .await
            .unwrap();
    }
    (engine, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_takes_payloads_inline_from_stdin_and_from_files() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    assert_eq!(
        ok_json(url, &["call", "t::echo", r#"{"a":1}"#, "--json"]).await,
        json!({"a":1})
    );

    let text = qmesh(url, &["call", "t::echo", r#"{"a":1}"#]).await;
    assert_eq!((text.code, text.stdout.as_str()), (0, "{\n  \"a\": 1\n}\n"));

    let piped = qmesh_with_stdin(url, &["call", "t::echo", "--json"], Some(r#"{"b":2}"#)).await;
    assert_eq!(piped.json(), json!({"b":2}), "{piped:?}");
    let dash = qmesh_with_stdin(url, &["call", "t::echo", "-", "--json"], Some("[1]")).await;
    assert_eq!(dash.json(), json!([1]), "{dash:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.json");
    std::fs::write(&file, r#"{"from":"file"}"#).unwrap();
    let at = format!("@{}", file.display());
    assert_eq!(
        ok_json(url, &["call", "t::echo", &at, "--json"]).await,
        json!({"from":"file"})
    );
    // No payload and nothing piped: the empty object.
    assert_eq!(
        ok_json(url, &["call", "t::echo", "--json"]).await,
        json!({})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_their_code_and_a_documented_exit_code() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();

    let failed = qmesh(url, &["call", "t::fail", "--json"]).await;
    assert_eq!(failed.code, 1, "{failed:?}");
    assert_eq!(
        failed.json(),
        json!({"error": {"kind": "engine", "code": "boom", "message": "it broke"}})
    );
    let text = qmesh(url, &["call", "t::fail"]).await;
    assert_eq!(text.code, 1);
    assert_eq!(text.stderr, "qmesh: engine error boom: it broke\n");

    let missing = qmesh(url, &["call", "t::nothing"]).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("function_not_found"), "{missing:?}");

    let slow = qmesh(url, &["call", "t::slow", "--timeout", "200ms", "--json"]).await;
    assert_eq!(slow.code, 4, "{slow:?}");
    assert_eq!(slow.json()["error"]["kind"], "timeout");

    let bad = qmesh(url, &["call", "t::echo", "{not json"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("not valid JSON"), "{bad:?}");
    let bad_url = qmesh(url, &["functions", "--url", "ftp://x"]).await;
    assert_eq!(bad_url.code, 2, "{bad_url:?}");
    assert_eq!(qmesh(url, &["job", "not-a-receipt"]).await.code, 2);
    assert_eq!(qmesh(url, &["frobnicate"]).await.code, 2);

    let help = qmesh(url, &["--help"]).await;
    assert!(help.stdout.contains("Exit codes:"), "{help:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_one_line_and_exit_3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("127.0.0.1:{port}");
    for args in [
        &["functions"][..],
        &["queues"],
        &["bench", "invoke", "-n", "1"],
    ] {
        let r = qmesh(&url, args).await;
        assert_eq!(r.code, 3, "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(
            r.stderr
                .starts_with(&format!("qmesh: cannot reach the engine at ws://{url}")),
            "{r:?}"
        );
    }
    let j = qmesh(&url, &["workers", "--json"]).await;
    assert_eq!(j.code, 3);
    assert_eq!(j.json()["error"]["kind"], "unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_workers_and_triggers_list_what_the_engine_knows() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let functions = ok_json(url, &["functions", "--json"]).await;
    let ids: Vec<&str> = functions["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function_id"].as_str())
        .collect();
    assert_eq!(ids, ["t::echo", "t::fail", "t::slow"]);
    let table = qmesh(url, &["functions", "--search", "echo"]).await;
    assert!(table.stdout.starts_with("FUNCTION"), "{table:?}");
    assert!(
        table.stdout.contains("t::echo") && !table.stdout.contains("t::fail"),
        "{table:?}"
    );

    let workers = ok_json(url, &["workers", "--json"]).await;
    let w = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "cli-test")
        .expect("the test worker is listed");
    assert_eq!(
        (w["runtime"].as_str(), w["function_count"].as_u64()),
        (Some("rust"), Some(3))
    );
    assert!(qmesh(url, &["workers"]).await.stdout.contains("cli-test"));

    let triggers = ok_json(url, &["triggers", "--json"]).await;
    assert!(triggers["trigger_types"].is_array(), "{triggers}");
    assert!(triggers["registered_triggers"].is_array(), "{triggers}");
    let text = qmesh(url, &["triggers"]).await;
    assert!(text.stdout.contains("Trigger types") && text.stdout.contains("Registered triggers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_can_be_listed_inspected_paused_and_purged() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let mut receipts = Vec::new();
    for i in 0..2 {
        let e = ok_json(
            url,
            &[
                "enqueue",
                "parked",
                "t::nobody",
                &format!(r#"{{"i":{i}}}"#),
                "--json",
            ],
        )
        .await;
        assert_eq!(e["duplicate"], false);
        receipts.push(e["receipt"].as_str().unwrap().to_owned());
    }
    let text = qmesh(url, &["enqueue", "parked", "t::nobody", "--priority", "3"]).await;
    assert!(
        text.stdout.starts_with("enqueued ") && text.stdout.contains(" on parked"),
        "{text:?}"
    );

    let all = ok_json(url, &["queues", "--json"]).await;
    let parked = all["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "parked")
        .unwrap();
    assert_eq!(parked["waiting_for_worker"], 3, "{parked}");
    assert!(qmesh(url, &["queues"]).await.stdout.contains("parked"));

    let stats = ok_json(url, &["queue", "stats", "parked", "--json"]).await;
    assert_eq!(
        (
            stats["waiting_for_worker"].as_u64(),
            stats["paused"].as_bool()
        ),
        (Some(3), Some(false))
    );
    assert!(
        qmesh(url, &["queue", "stats", "parked"])
            .await
            .stdout
            .contains("max_attempts")
    );

    let page = ok_json(url, &["queue", "peek", "parked", "--limit", "2", "--json"]).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2, "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let rest = ok_json(
        url,
        &["queue", "peek", "parked", "--cursor", &cursor, "--json"],
    )
    .await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 1, "{rest}");

    let job = ok_json(url, &["job", &receipts[0], "--json"]).await;
    assert_eq!(
        (job["state"].as_str(), job["queue"].as_str()),
        (Some("waiting_for_worker"), Some("parked"))
    );
    assert!(
        job["explanation"]
            .as_str()
            .unwrap()
            .contains("no connected worker"),
        "{job}"
    );
    assert!(
        qmesh(url, &["job", &receipts[0]])
            .await
            .stdout
            .contains("t::nobody")
    );

    assert_eq!(
        ok_json(url, &["queue", "pause", "parked", "--json"]).await["paused"],
        true
    );
    assert_eq!(
        ok_json(url, &["queue", "stats", "parked", "--json"]).await["paused"],
        true
    );
    assert_eq!(
        ok_json(url, &["queue", "resume", "parked", "--json"]).await["paused"],
        false
    );

    // Without a terminal, purge needs --yes; nothing is deleted.
    let refused = qmesh(url, &["queue", "purge", "parked"]).await;
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    assert_eq!(
        ok_json(url, &["queue", "stats", "parked", "--json"]).await["waiting_for_worker"],
        3
    );
    assert_eq!(
        ok_json(url, &["queue", "purge", "parked", "--yes", "--json"]).await["purged"],
        3
    );

    let unknown = qmesh(url, &["queue", "stats", "nosuch", "--json"]).await;
    assert_eq!(unknown.code, 1);
    assert_eq!(unknown.json()["error"]["code"], "queue_not_found");
    let gone = qmesh(
        url,
        &["job", "00000000-0000-4000-8000-000000000000", "--json"],
    )
    .await;
    assert_eq!(
        (gone.code, gone.json()["error"]["code"].as_str()),
        (1, Some("NOT_FOUND"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_redriven_and_discarded() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let done = ok_json(
        url,
        &["enqueue", "flaky", "t::echo", r#"{"ok":true}"#, "--json"],
    )
    .await;
    let done = done["receipt"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        ok_json(url, &["enqueue", "flaky", "t::fail", "--json"]).await;
    }
    let dead = until(url, &["dlq", "ls", "flaky", "--json"], |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let first = &dead[0];
    assert_eq!(
        (
            first["function_id"].as_str(),
            first["last_error"]["code"].as_str()
        ),
        (Some("t::fail"), Some("boom"))
    );
    assert_eq!(first["history"].as_array().unwrap().len(), 1, "{first}");
    let ids: Vec<String> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        qmesh(url, &["dlq", "ls", "flaky"])
            .await
            .stdout
            .contains(&ids[0])
    );

    let job = until(url, &["job", &done, "--json"], |v| {
        v["state"] == "completed"
    })
    .await;
    assert_eq!(
        (job["result"].clone(), job["history"][0]["outcome"].clone()),
        (json!({"ok":true}), json!("completed"))
    );

    let one = ok_json(url, &["dlq", "redrive", "flaky", &ids[0], "--json"]).await;
    assert_eq!(one["redriven"], 1, "{one}");
    // It fails again; then every dead letter goes back at once.
    until(url, &["queue", "stats", "flaky", "--json"], |v| {
        v["dead"] == 2
    })
    .await;
    let all = ok_json(url, &["dlq", "redrive", "flaky", "--json"]).await;
    assert_eq!(all["redriven"], 2, "{all}");
    until(url, &["queue", "stats", "flaky", "--json"], |v| {
        v["dead"] == 2
    })
    .await;

    let refused = qmesh(url, &["dlq", "discard", "flaky", &ids[1]]).await;
    assert_eq!(refused.code, 5, "{refused:?}");
    let gone = ok_json(
        url,
        &["dlq", "discard", "flaky", &ids[1], "--yes", "--json"],
    )
    .await;
    assert_eq!(gone["discarded"], 1, "{gone}");
    let again = qmesh(url, &["dlq", "discard", "flaky", &ids[1], "--yes"]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("no dead letter"), "{again:?}");
    assert_eq!(
        ok_json(url, &["queue", "stats", "flaky", "--json"]).await["dead"],
        1
    );
}

/// The report's shape, never its speed.
fn assert_report(r: &Value, workload: &str) {
    assert_eq!(r["workload"], workload, "{r}");
    for k in [
        "clients",
        "in_flight",
        "payload_bytes",
        "ops",
        "errors",
        "elapsed_secs",
        "throughput_per_sec",
    ] {
        assert!(r[k].is_number(), "{k} in {r}");
    }
    for k in ["min", "mean", "p50", "p90", "p99", "p99_9", "max"] {
        assert!(r["latency_ms"][k].is_number(), "latency {k} in {r}");
    }
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    let l = &r["latency_ms"];
    assert!(
        l["p50"].as_f64() <= l["p99"].as_f64() && l["p99"].as_f64() <= l["max"].as_f64(),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_and_percentiles_for_each_workload() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let common = [
        "-c",
        "2",
        "-p",
        "4",
        "-s",
        "128",
        "--threads",
        "1",
        "--json",
    ];
    let run = |workload: &'static str, limit: [&'static str; 2]| {
        let mut args = vec!["bench", workload, limit[0], limit[1]];
        args.extend(common);
        args
    };
    let invoke = ok_json(url, &run("invoke", ["-n", "200"])).await;
    assert_report(&invoke, "invoke");
    assert_eq!(
        (invoke["ops"].as_u64(), invoke["payload_bytes"].as_u64()),
        (Some(200), Some(128))
    );
    assert_eq!(invoke["target"], "qmesh-bench::echo");

    let enqueue = ok_json(url, &run("enqueue", ["-n", "100"])).await;
    assert_report(&enqueue, "enqueue");
    // The bench clears its own queue.
    let q = ok_json(url, &["queue", "stats", "qmesh-bench-enqueue", "--json"]).await;
    assert_eq!(q["waiting_for_worker"], 0, "{q}");

    let e2e = ok_json(url, &run("e2e", ["-d", "300ms"])).await;
    assert_report(&e2e, "e2e");

    let mut existing = run("invoke", ["-n", "20"]);
    existing.extend(["--function", "t::echo"]);
    assert_report(&ok_json(url, &existing).await, "invoke");

    let text = qmesh(url, &["bench", "invoke", "-n", "10", "-c", "1", "-p", "1"]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("throughput") && text.stdout.contains("p99.9"),
        "{text:?}"
    );

    let missing = qmesh(
        url,
        &["bench", "invoke", "-n", "5", "--function", "t::nothing"],
    )
    .await;
    assert_eq!(missing.code, 1, "{missing:?}");
    let usage = qmesh(url, &["bench", "invoke", "--queue", "q"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_channel_reports_the_frames_and_bytes_its_readers_verified() {
    let engine = TestEngine::start().await;
    let url = engine.url.as_str();
    let args = [
        "bench",
        "channel",
        "-n",
        "300",
        "-c",
        "3",
        "-p",
        "4",
        "-s",
        "4096",
        "--threads",
        "1",
        "--json",
    ];
    let r = ok_json(url, &args).await;
    assert_report(&r, "channel");
    assert_eq!(
        (
            r["ops"].as_u64(),
            r["clients"].as_u64(),
            r["in_flight"].as_u64()
        ),
        (Some(300), Some(3), Some(4)),
        "{r}"
    );
    assert_eq!(r["payload_bytes"], 4096, "{r}");
    assert_eq!(r["bytes"], 300 * 4096, "every frame's bytes, verified: {r}");
    assert!(r["mb_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{r}");

    // By time, with a frame size that is no power of two, under its long name.
    let args = [
        "bench",
        "channel",
        "-d",
        "300ms",
        "-c",
        "2",
        "--frame-size",
        "1000",
        "--threads",
        "1",
        "--json",
    ];
    let timed = ok_json(url, &args).await;
    assert_report(&timed, "channel");
    let frames = timed["ops"].as_u64().unwrap();
    assert_eq!(timed["bytes"].as_u64(), Some(frames * 1000), "{timed}");

    let text = qmesh(
        url,
        &["bench", "channel", "-n", "20", "-c", "1", "-s", "64"],
    )
    .await;
    assert_eq!(text.code, 0, "{text:?}");
    for want in ["frames/s", "MB/s", "p99.9", "1280 bytes verified"] {
        assert!(text.stdout.contains(want), "{want}: {text:?}");
    }

    // Frames over the engine's max_frame_size (1 MiB) are refused: failed
    // frames and exit 1, with the report still on stdout.
    let args = [
        "bench", "channel", "-n", "2", "-c", "1", "-s", "2000000", "--json",
    ];
    let refused = qmesh(url, &args).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let report = refused.json();
    assert!(report["errors"].as_u64() >= Some(1), "{report}");
    assert_eq!(report["ops"], 0, "{report}");
    assert!(report["first_error"].is_string(), "{report}");

    let usage = qmesh(url, &["bench", "channel", "-s", "8"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[tokio::test]
async fn top_shows_queues_with_their_rates_and_the_workers() {
    let (engine, worker) = setup().await;
    let url = engine.url.as_str();
    for i in 0..3 {
        ok_json(
            url,
            &[
                "enqueue",
                "waiting",
                "t::nobody",
                &format!(r#"{{"i":{i}}}"#),
                "--json",
            ],
        )
        .await;
    }
    // Jobs complete while top runs, so its second frame has a rate.
    let busy = {
        let worker = worker.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let _ = worker.enqueue("busy", "t::echo", json!({"i": i})).await;
                tokio::time::sleep(Duration::from_millis(2)).await; // a steady trickle
            }
        })
    };
    let run = qmesh(url, &["top", "--frames", "2", "--interval", "300ms"]).await;
    busy.abort();
    assert_eq!(run.code, 0, "{run:?}");
    let frames: Vec<&str> = run.stdout.split("qmesh top").skip(1).collect();
    assert_eq!(frames.len(), 2, "{run:?}");
    let waiting = frames[1]
        .lines()
        .find(|l| l.starts_with("waiting "))
        .unwrap_or_else(|| panic!("no row for the queue: {run:?}"));
    let cells: Vec<&str> = waiting.split_whitespace().collect();
    assert_eq!(
        cells[1..7],
        ["active", "0", "3", "0", "0", "0"],
        "{waiting}"
    );
    let busy_row = frames[1]
        .lines()
        .find(|l| l.starts_with("busy "))
        .unwrap_or_else(|| panic!("no row for busy: {run:?}"));
    let done_per_sec: f64 = busy_row.split_whitespace().nth(7).unwrap().parse().unwrap();
    assert!(
        done_per_sec > 0.0,
        "jobs completed between frames: {busy_row}"
    );
    assert!(
        frames[1].contains("cli-test"),
        "the worker is listed: {run:?}"
    );
}

#[tokio::test]
async fn enqueue_each_line_writes_a_file_of_jobs_in_batches() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let lines: String = (0..12_001).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let run = qmesh_with_stdin(
        url,
        &[
            "enqueue",
            "lines",
            "t::nobody",
            "--each-line",
            "-",
            "--json",
        ],
        Some(&lines),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["enqueued"], 12_001, "{run:?}");
    let stats = ok_json(url, &["queue", "stats", "lines", "--json"]).await;
    assert_eq!(stats["waiting_for_worker"], 12_001, "{stats}");

    let bad = qmesh_with_stdin(
        url,
        &["enqueue", "lines", "t::nobody", "--each-line", "-"],
        Some("{}\nnot json\n"),
    )
    .await;
    assert_eq!(bad.code, 2, "a bad line is a usage error: {bad:?}");
    assert!(bad.stderr.contains("line 2"), "{bad:?}");
}

#[tokio::test]
async fn queue_throttle_holds_back_a_queue() {
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let e = ok_json(url, &["enqueue", "held-back", "t::echo", "{}", "--json"]).await;
    let receipt = e["receipt"].as_str().unwrap().to_owned();
    until(url, &["job", &receipt, "--json"], |j| {
        j["state"] == "completed"
    })
    .await;
    let out = ok_json(url, &["queue", "throttle", "held-back", "1m", "--json"]).await;
    assert_eq!(out["throttled_for_ms"], 60_000, "{out}");
    let e = ok_json(url, &["enqueue", "held-back", "t::echo", "{}", "--json"]).await;
    let receipt = e["receipt"].as_str().unwrap();
    let why = qmesh(url, &["job", receipt]).await;
    assert!(why.stdout.contains("throttled"), "{why:?}");
    let unknown = qmesh(url, &["queue", "throttle", "no-such-queue", "1m"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
}

#[tokio::test]
async fn job_shows_expiry_progress_and_log_lines() {
    use common::queue::{complete, next_job, op};
    let (engine, _worker) = setup().await;
    let url = engine.url.as_str();
    let mut w = common::RawClient::worker(url, "reporter").await;
    w.register_function("t::report").await;
    engine.wait_for_providers("t::report", 1).await;
    let e = ok_json(
        url,
        &[
            "enqueue",
            "reports",
            "t::report",
            "{}",
            "--expires-in",
            "10m",
            "--json",
        ],
    )
    .await;
    let receipt = e["receipt"].as_str().unwrap().to_owned();
    let inv = next_job(&mut w).await;
    op(
        &mut w,
        "queue::progress",
        json!({"receipt": receipt, "progress": 75}),
    )
    .await;
    op(
        &mut w,
        "queue::log",
        json!({"receipt": receipt, "line": "three quarters done"}),
    )
    .await;
    complete(&mut w, &inv, json!("ok")).await;
    until(url, &["job", &receipt, "--json"], |j| {
        j["state"] == "completed"
    })
    .await;
    let text = qmesh(url, &["job", &receipt]).await;
    assert_eq!(text.code, 0, "{text:?}");
    for want in ["expires", "progress", "75", "logs", "three quarters done"] {
        assert!(
            text.stdout.contains(want),
            "{want:?} missing: {}",
            text.stdout
        );
    }
}
