//! Flows (`queue::enqueue_flow`) on the cluster's JetStream queues, across
//! two engines on a 3-node NATS cluster: a parent waits while its children
//! run on another engine, then runs with how each ended; a child that dies
//! fails its parent (`fail_parent`), or not (`ignore`); a cancelled or
//! purged child counts as ended; a parent's view shows its subtree; a bad
//! flow is refused whole, nothing of it stored.

mod common;

use common::nats::NatsCluster;
use common::queue::{
    complete, fail, jetstream_config, jobs_left, next_job, op, until_state, until_stats,
};
use common::{RawClient, TestEngine};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const PARENT: &str = "flow::assemble";
const CHILD: &str = "flow::part";

/// Enqueues a report flow on `c`: a parent on queue `reports` and one
/// child per part on queue `parts`; returns the answer (the receipts tree).
async fn enqueue_flow(c: &mut RawClient, parts: &[&str], extra: Value) -> Value {
    let children: Vec<Value> = parts
        .iter()
        .map(|p| json!({"queue": "parts", "function_id": CHILD, "data": {"part": p}}))
        .collect();
    let mut flow = json!({
        "queue": "reports", "function_id": PARENT, "data": {"report": 7},
        "children": children,
    });
    if let (Some(f), Some(extra)) = (flow.as_object_mut(), extra.as_object()) {
        f.extend(extra.clone());
    }
    op(c, "queue::enqueue_flow", flow).await
}

fn receipt(node: &Value) -> String {
    node["receipt"].as_str().expect("a receipt").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_runs_on_one_engine_once_its_children_ended_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut assembler = a.worker_with("assembler", &[PARENT]).await;
    let mut parts = b.worker_with("parts", &[CHILD]).await;
    let mut on_b = RawClient::worker(&b.url, "operator").await;

    let tree = enqueue_flow(&mut on_b, &["sales", "costs"], json!({})).await;
    let parent = receipt(&tree);
    assert_eq!(tree["children"].as_array().unwrap().len(), 2, "{tree}");

    // The parent waits, seen from either engine, while the children run.
    let waiting = until_state(&mut on_b, &parent, "waiting_for_children").await;
    assert_eq!(waiting["flow"]["waiting_on"], 2, "{waiting}");
    until_stats(&mut on_b, "reports", |s| s["waiting_for_children"] == 1).await;
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let job = next_job(&mut parts).await;
        assert_eq!(job["metadata"]["job"]["parent"], json!(parent), "{job}");
        let part = job["data"]["part"].as_str().unwrap().to_owned();
        complete(&mut parts, &job, json!({"total": part.len()})).await;
        seen.insert(part);
    }
    assert_eq!(seen, BTreeSet::from(["costs".into(), "sales".into()]));

    // Released to A's worker, with both outcomes.
    let job = next_job(&mut assembler).await;
    assert_eq!(job["data"], json!({"report": 7}));
    let children = job["metadata"]["job"]["children"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(children.len(), 2, "{job}");
    for c in &children {
        assert_eq!(c["state"], "completed", "{c}");
        assert_eq!(c["function_id"], CHILD, "{c}");
        assert_eq!(c["result"]["total"], 5, "{c}");
    }
    complete(&mut assembler, &job, json!("done")).await;
    until_stats(&mut on_b, "reports", |s| {
        s["waiting_for_children"] == 0 && s["running"] == 0 && s["ready"] == 0
    })
    .await;
    common::wait_until("every job left the stream", common::WAIT, async || {
        jobs_left(&nats).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_child_fails_its_parent_unless_told_to_ignore_it() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;
    let mut assembler = a.worker_with("assembler", &[PARENT]).await;
    let mut parts = b.worker_with("parts", &[CHILD]).await;
    let mut on_a = RawClient::worker(&a.url, "operator").await;

    // fail_parent (the default): the child's death dead-letters the parent.
    let tree = enqueue_flow(&mut on_a, &["broken"], json!({})).await;
    let parent = receipt(&tree);
    for _ in 0..3 {
        let job = next_job(&mut parts).await;
        fail(&mut parts, &job, "no such part").await;
    }
    let dead = until_state(&mut on_a, &parent, "dead").await;
    assert_eq!(dead["last_error"]["code"], "child_failed", "{dead}");
    let child = receipt(&tree["children"][0]);
    let message = dead["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&child) && message.contains("no such part"),
        "{dead}"
    );

    // ignore: the parent runs anyway and sees the dead child.
    let tree = enqueue_flow(
        &mut on_a,
        &["broken", "fine"],
        json!({"on_child_failure": "ignore"}),
    )
    .await;
    for _ in 0..4 {
        let job = next_job(&mut parts).await;
        match job["data"]["part"].as_str() {
            Some("fine") => complete(&mut parts, &job, json!(1)).await,
            _ => fail(&mut parts, &job, "no such part").await,
        }
    }
    let job = next_job(&mut assembler).await;
    assert_eq!(
        job["metadata"]["job"]["receipt"],
        json!(receipt(&tree)),
        "{job}"
    );
    let states: BTreeSet<String> = job["metadata"]["job"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states,
        BTreeSet::from(["completed".into(), "dead".into()]),
        "{job}"
    );
    complete(&mut assembler, &job, json!("partial")).await;

    // A cancelled child counts as ended (and, failing, fails its parent):
    // one nobody serves, so it waits to be cancelled.
    let tree = op(
        &mut on_a,
        "queue::enqueue_flow",
        json!({"queue": "reports", "function_id": PARENT, "data": {},
               "children": [{"function_id": "flow::unserved", "data": {}}]}),
    )
    .await;
    let child = receipt(&tree["children"][0]);
    // The parent's view shows its subtree: the child, waiting for a worker.
    let waiting = until_state(&mut on_a, &receipt(&tree), "waiting_for_children").await;
    let below = &waiting["flow"]["children"];
    assert_eq!(below[0]["receipt"], json!(child), "{waiting}");
    assert_eq!(below[0]["state"], "waiting_for_worker", "{waiting}");
    assert_eq!(below[0]["function_id"], "flow::unserved", "{waiting}");
    op(&mut on_a, "queue::cancel", json!({"receipt": child})).await;
    let dead = until_state(&mut on_a, &receipt(&tree), "dead").await;
    let why = dead["last_error"]["message"].as_str().unwrap();
    assert!(why.contains("cancelled"), "{dead}");

    // A purge of the children's queue tells their parents, as a cancel does.
    let tree = op(
        &mut on_a,
        "queue::enqueue_flow",
        json!({"queue": "reports", "function_id": PARENT, "data": {},
               "children": [{"queue": "unserved", "function_id": "flow::unserved", "data": {}}]}),
    )
    .await;
    let parent = receipt(&tree);
    until_state(&mut on_a, &parent, "waiting_for_children").await;
    let purged = op(&mut on_a, "queue::purge", json!({"queue": "unserved"})).await;
    assert_eq!(purged["purged"], 1, "{purged}");
    let dead = until_state(&mut on_a, &parent, "dead").await;
    let why = dead["last_error"]["message"].as_str().unwrap();
    let child = receipt(&tree["children"][0]);
    assert!(why.contains(&child) && why.contains("cancelled"), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_flow_is_refused_whole() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(jetstream_config(&nats, "a")).await;
    let mut c = RawClient::worker(&a.url, "operator").await;
    let refused = |r: &Value| r["error"]["code"].as_str().unwrap_or_default().to_owned();

    // An idempotency key deep in the tree: nothing is stored.
    let r = c
        .call(
            "queue::enqueue_flow",
            json!({"queue": "reports", "function_id": PARENT, "data": {},
                   "children": [{"function_id": CHILD, "data": {}},
                                {"function_id": CHILD, "data": {}, "idempotency_key": "k"}]}),
        )
        .await;
    assert_eq!(refused(&r), "INVALID_ARGUMENTS", "{r}");
    let r = c
        .call(
            "queue::enqueue_flow",
            json!({"queue": "reports", "function_id": PARENT, "data": {},
                   "on_child_failure": "sometimes", "children": []}),
        )
        .await;
    assert_eq!(refused(&r), "INVALID_ARGUMENTS", "{r}");
    assert_eq!(jobs_left(&nats).await, 0);
}
