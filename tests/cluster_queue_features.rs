//! What the local queue offers, on the cluster's JetStream queues
//! (`[cluster] queues = "jetstream"`), across engines on a 3-node NATS
//! cluster: delayed jobs (`delay` / `run_at`) run at their time, not
//! before, on another engine than the one that took them, which may be
//! dead by then, as may the NATS node leading the job stream; higher
//! priorities run first, by band; a FIFO group runs one
//! job at a time, in enqueue order, through a retry and a kill -9 of the
//! engine running its head; a batch (`queue::enqueue_many`) is checked
//! whole, then acknowledged whole.
//!
//! Times are asserted against the test's clock, which the engines and the
//! NATS servers share (one machine): a job is never received before its
//! due time, and within a bound after it.

mod common;

use common::launcher::EngineProcess;
use common::nats::NatsCluster;
use common::queue::{
    complete, enqueue, enqueue_with, fail, jetstream_config, jetstream_toml, jobs_left, next_job,
    now_ms, op,
};
use common::{RawClient, TestEngine, WAIT, wait_until};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// How late after its due time a delayed job may reach its worker (the
/// schedule fires within milliseconds; the rest is the pull and the call,
/// on a loaded two-core machine).
const LATE_BY_AT_MOST_MS: u64 = 1_500;

/// The index (0-based) of the NATS node leading cluster "test"'s job stream.
async fn job_stream_leader(nats: &NatsCluster) -> usize {
    let client = async_nats::connect(nats.urls[0].as_str()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("qmesh_test_jobs")
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
    let leader = leader.unwrap_or_else(|| panic!("no leader: {:?}", info.cluster));
    // Nodes are named n1..n3.
    leader.trim_start_matches('n').parse::<usize>().unwrap() - 1
}

/// The job stream as engines made it before delayed jobs: the engines
/// must update it in place. Asked again while the new NATS cluster cannot
/// place it yet (as the engines do).
async fn old_job_stream(nats: &NatsCluster) {
    use async_nats::jetstream::stream;
    let client = async_nats::connect(nats.urls[0].as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    common::wait_for("the old job stream", WAIT, async || {
        js.create_stream(stream::Config {
            name: "qmesh_test_jobs".into(),
            subjects: vec!["qmesh.test.jobs.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: 3,
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_run_at_their_time_after_the_engine_that_took_them_died() {
    let nats = NatsCluster::start().await;
    old_job_stream(&nats).await;
    let mut a = EngineProcess::start_with_config(&jetstream_toml(&nats, "a", ""));
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::later").await;
    let mut producer = RawClient::worker(&a.url, "producer").await;

    // The later job first: they run by their time, not by enqueue order.
    let run_at = now_ms() + 2_500;
    let at_time = enqueue_with(
        &mut producer,
        json!({"queue": "later", "function_id": "svc::later", "data": {"by": "run_at"},
               "run_at": run_at}),
    )
    .await;
    // Due 1.2 s after the engine reads the call: not before this + 1.2 s.
    let sent = now_ms();
    let soon = enqueue_with(
        &mut producer,
        json!({"queue": "later", "function_id": "svc::later", "data": {"by": "delay"},
               "delay": "1200ms", "idempotency_key": "soon"}),
    )
    .await;
    // The same key again: the first job's receipt, and it runs once.
    let again = producer
        .call_ok(
            "queue::enqueue",
            json!({"queue": "later", "function_id": "svc::later", "data": {"by": "again"},
                   "delay": "1ms", "idempotency_key": "soon"}),
        )
        .await;
    assert_eq!(again["receipt"], soon.as_str(), "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    // Both jobs wait in NATS: the engine that took them can die.
    a.kill();

    let due_soon = sent + 1_200;
    let first = next_job(&mut worker).await;
    let got = now_ms();
    assert_eq!(first["data"], json!({"by": "delay"}), "{first}");
    assert_eq!(
        first["metadata"]["job"]["receipt"],
        soon.as_str(),
        "{first}"
    );
    assert_eq!(first["metadata"]["job"]["attempt"], 1, "{first}");
    assert!(got >= due_soon, "ran {} ms early", due_soon - got);
    assert!(
        got <= due_soon + LATE_BY_AT_MOST_MS,
        "ran {} ms late",
        got - due_soon
    );
    complete(&mut worker, &first, json!(null)).await;

    let second = next_job(&mut worker).await;
    let got = now_ms();
    assert_eq!(second["data"], json!({"by": "run_at"}), "{second}");
    assert_eq!(second["metadata"]["job"]["receipt"], at_time.as_str());
    assert!(got >= run_at, "ran {} ms early", run_at - got);
    assert!(
        got <= run_at + LATE_BY_AT_MOST_MS,
        "ran {} ms late",
        got - run_at
    );
    complete(&mut worker, &second, json!(null)).await;
    // Nothing else runs (the duplicate never did), and the stream is empty:
    // both schedules fired and were removed, both jobs acknowledged.
    // (The duplicate, due at once, would have run before the second.)
    wait_until("both acks", WAIT, async || jobs_left(&nats).await == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_runs_after_its_stream_leader_was_killed() {
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::later").await;
    let mut producer = RawClient::worker(&a.url, "producer").await;
    let sent = now_ms();
    let receipt = enqueue_with(
        &mut producer,
        json!({"queue": "later", "function_id": "svc::later", "data": {}, "delay": "1s"}),
    )
    .await;
    // The node holding the schedule's timer dies; another takes the stream
    // over, with the schedule (it was on the replicas before the receipt).
    let leader = job_stream_leader(&nats).await;
    nats.kill(leader);

    // Late by the time NATS takes to elect new leaders (4 to 9 s).
    let inv = job_within(&mut worker, FAILOVER).await;
    let got = now_ms();
    assert_eq!(inv["metadata"]["job"]["receipt"], receipt.as_str(), "{inv}");
    assert!(got >= sent + 1_000, "ran {} ms early", sent + 1_000 - got);
    complete(&mut worker, &inv, json!(null)).await;
    eprintln!("due after 1000 ms, ran after {} ms", got - sent);
}

/// How long a job may wait for NATS to elect a stream's and a consumer's
/// new leaders after the old one died.
const FAILOVER: Duration = Duration::from_secs(25);

/// The next job delivered to `w` within `within` (longer than the harness's
/// wait for one frame).
async fn job_within(w: &mut RawClient, within: Duration) -> Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + within;
    loop {
        let frame = tokio::time::timeout_at(deadline, w.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no job within {within:?}"));
        if let Some(Ok(Message::Text(t))) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "invokefunction" {
                return v;
            }
        } else if !matches!(frame, Some(Ok(_))) {
            panic!("the worker's socket ended: {frame:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_bands_run_first_on_another_engine() {
    let nats = NatsCluster::start().await;
    // One job at a time: the order of starts is the order of priorities.
    let config = |id: &str| jetstream_toml(&nats, id, "[queue.queues.ranked]\nconcurrency = 1");
    let mut a = EngineProcess::start_with_config(&config("a"));
    let b = EngineProcess::start_with_config(&config("b"));
    let mut producer = RawClient::worker(&a.url, "producer").await;
    // (name, priority), in enqueue order; bands: 0, 1, 8, 2, 0, 8, 4.
    let jobs = [
        ("a", 0),
        ("b", 1),
        ("f", 150),
        ("d", 3),
        ("e", 0),
        ("c", 200),
        ("g", 10),
    ];
    for (name, priority) in jobs {
        enqueue_with(
            &mut producer,
            json!({"queue": "ranked", "function_id": "svc::ranked", "data": {"name": name},
                   "priority": priority}),
        )
        .await;
    }
    // Every job waits in NATS, each band on its own subject: the engine that
    // took them can die.
    a.kill();

    // A worker comes to B: it gets them highest band first, and within a
    // band in enqueue order (150 and 200 share band 8).
    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::ranked").await;
    let mut order = Vec::new();
    for _ in jobs {
        let inv = next_job(&mut worker).await;
        order.push(inv["data"]["name"].as_str().unwrap().to_owned());
        complete(&mut worker, &inv, json!(null)).await;
    }
    assert_eq!(order, ["f", "c", "g", "d", "b", "a", "e"]);
    wait_until("every ack", WAIT, async || jobs_left(&nats).await == 0).await;
}

/// How long the FIFO test's worker runs each job: a second job of its group
/// delivered meanwhile would be seen.
const HOLD: Duration = Duration::from_millis(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_group_runs_one_job_at_a_time_in_order_across_engines_and_a_kill_9() {
    const GROUPS: [&str; 3] = ["g1", "g2", "g3"];
    const PER_GROUP: u64 = 4;
    let nats = NatsCluster::start().await;
    let config = |id: &str| {
        jetstream_toml(
            &nats,
            id,
            "max_attempts = 3\nbackoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\n\
             [queue.queues.orders]\nordering = \"fifo\"\ngroup_field = \"account\"\n\
             concurrency = 2\nlease = \"2s\"",
        )
    };
    let a = EngineProcess::start_with_config(&config("a"));
    let mut b = EngineProcess::start_with_config(&config("b"));
    let c = EngineProcess::start_with_config(&config("c"));
    let mut producer = RawClient::worker(&a.url, "producer").await;
    // As on one engine, a job must name its group; here it cannot be
    // delayed or given a priority (either would overtake its group).
    for (extra, code) in [
        (json!({"data": {}}), "INVALID_ARGUMENTS"),
        (
            json!({"data": {"account": "g1"}, "delay": "1s"}),
            "not_supported",
        ),
        (
            json!({"data": {"account": "g1"}, "priority": 5}),
            "not_supported",
        ),
    ] {
        let mut args = json!({"queue": "orders", "function_id": "svc::order"});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = producer.call("queue::enqueue", args).await;
        assert_eq!(r["error"]["code"], code, "{r}");
    }
    for i in 0..PER_GROUP {
        for g in GROUPS {
            enqueue(
                &mut producer,
                "orders",
                "svc::order",
                json!({"account": g, "i": i}),
            )
            .await;
        }
    }

    // B's worker is given a lane's first job and never answers: B dies
    // holding it, and its group must wait for it.
    let mut on_b = RawClient::worker(&b.url, "worker-b").await;
    on_b.register_function("svc::order").await;
    let held = next_job(&mut on_b).await;
    b.kill();
    let held_group = held["data"]["account"].as_str().unwrap().to_owned();
    assert_eq!(
        held["data"]["i"], 0,
        "a lane starts with a group's first job: {held}"
    );

    // C's worker runs each job for HOLD, and fails g2's job 1 once.
    let mut on_c = RawClient::worker(&c.url, "worker-c").await;
    on_c.register_function("svc::order").await;
    let mut starts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut running: Vec<Value> = Vec::new();
    let mut since = Instant::now();
    let mut finished = HashSet::new();
    let mut failed = false;
    while finished.len() < GROUPS.len() * PER_GROUP as usize {
        let until = if running.is_empty() {
            Instant::now() + WAIT
        } else {
            since + HOLD
        };
        match tokio::time::timeout_at(until, on_c.recv()).await {
            Ok(Some(inv)) if inv["type"] == "invokefunction" => {
                let g = inv["data"]["account"].as_str().unwrap().to_owned();
                let i = inv["data"]["i"].as_u64().unwrap();
                assert!(
                    running.iter().all(|r| r["data"]["account"] != g.as_str()),
                    "two jobs of {g} at once: {inv} while {running:?}"
                );
                if g == held_group && i == 0 {
                    assert_eq!(
                        inv["metadata"]["job"]["attempt"], 2,
                        "B's was the first: {inv}"
                    );
                }
                starts.entry(g).or_default().push(i);
                if running.is_empty() {
                    since = Instant::now();
                }
                running.push(inv);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("C closed the worker's socket"),
            Err(_) => {
                assert!(
                    !running.is_empty(),
                    "no job for {WAIT:?}; started: {starts:?}"
                );
                for inv in running.drain(..) {
                    let job = (inv["data"]["account"].clone(), inv["data"]["i"].clone());
                    if job == (json!("g2"), json!(1)) && !failed {
                        failed = true;
                        fail(&mut on_c, &inv, "once").await;
                    } else {
                        complete(&mut on_c, &inv, json!(null)).await;
                        finished.insert(job);
                    }
                }
            }
        }
    }
    // Each group in enqueue order, its failed job retried before the next.
    for g in GROUPS {
        let want: Vec<u64> = match g {
            "g2" => vec![0, 1, 1, 2, 3],
            _ => (0..PER_GROUP).collect(),
        };
        assert_eq!(starts[g], want, "{g}: {starts:?}");
    }
    wait_until("every ack", WAIT, async || jobs_left(&nats).await == 0).await;
    drop((a, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_refused_whole_or_acknowledged_whole_and_runs_on_another_engine() {
    // More than the 1,000 acks one batch awaits at once.
    const JOBS: u64 = 1_500;
    let nats = NatsCluster::start().await;
    let mut a = EngineProcess::start_with_config(&jetstream_toml(
        &nats,
        "a",
        "[queue.queues.bulk]\nmax_payload_bytes = 100",
    ));
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut producer = RawClient::worker(&a.url, "producer").await;

    // One bad job refuses the batch, named by its index: a malformed one, or
    // one the queue's settings refuse. Nothing of it is stored.
    let big = "x".repeat(200);
    for (bad, code) in [
        (
            json!({"data": {"i": 1}, "delay": "soon"}),
            "INVALID_ARGUMENTS",
        ),
        (json!({"data": {"i": 1, "big": big}}), "payload_too_large"),
    ] {
        let r = producer
            .call(
                "queue::enqueue_many",
                json!({"queue": "bulk", "function_id": "svc::bulk",
                       "jobs": [{"data": {"i": 0}}, bad]}),
            )
            .await;
        assert_eq!(r["error"]["code"], code, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("jobs[1]: "), "{r}");
    }
    assert_eq!(jobs_left(&nats).await, 0, "a refused batch stores nothing");

    // Jobs 0 and 1 share an idempotency key: 1 is 0's duplicate.
    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| match i {
            0 | 1 => json!({"data": {"i": i}, "idempotency_key": "first"}),
            _ => json!({"data": {"i": i}}),
        })
        .collect();
    let started = Instant::now();
    let reply = op(
        &mut producer,
        "queue::enqueue_many",
        json!({"queue": "bulk", "function_id": "svc::bulk", "jobs": jobs}),
    )
    .await;
    eprintln!(
        "{JOBS} jobs in one batch acknowledged in {:?}",
        started.elapsed()
    );
    let receipts: Vec<String> = reply["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reply["queue"], "bulk");
    assert_eq!(receipts.len() as u64, JOBS);
    assert_eq!(reply["duplicates"], 1, "{}", reply["duplicates"]);
    assert_eq!(receipts[0], receipts[1]);
    // Acknowledged means replicated: the engine that took them can die.
    a.kill();

    let mut worker = RawClient::worker(&b.url, "worker").await;
    worker.register_function("svc::bulk").await;
    let mut ran = HashSet::new();
    let mut seen = HashSet::new();
    while ran.len() < JOBS as usize - 1 {
        let inv = next_job(&mut worker).await;
        let i = inv["data"]["i"].as_u64().unwrap();
        assert!(ran.insert(i), "job {i} ran twice");
        seen.insert(
            inv["metadata"]["job"]["receipt"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        complete(&mut worker, &inv, json!(null)).await;
    }
    assert!(!ran.contains(&1), "the duplicate never runs");
    let want: HashSet<String> = receipts.into_iter().collect();
    assert_eq!(
        seen, want,
        "each job ran under the receipt the batch gave it"
    );
    wait_until("every ack", WAIT, async || jobs_left(&nats).await == 0).await;
}
