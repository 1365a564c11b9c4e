//! Cluster mode: a durable topic's subscriber bound on one engine gets what
//! is published on any engine (each publish one job, in the publishing
//! engine's queue, or on the cluster's job stream with `queues =
//! "jetstream"`), and keeps getting it when its engine dies: the other
//! engines keep the subscription for `[topics] keep_unbound`, as for a
//! subscriber of their own that went away.

mod common;

use common::launcher::EngineProcess;
use common::nats::NatsCluster;
use common::queue::{jetstream_config, jetstream_toml};
use common::{RawClient, TestEngine, WAIT, test_config, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const TOPIC: &str = "orders";
const SUBSCRIBER: &str = "app::on_order";

/// The subscription of `SUBSCRIBER` to `TOPIC` as `engine::topics::list`
/// shows it on `c`'s engine, once `ok` holds for it.
async fn subscription_where(c: &mut RawClient, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut found = Value::Null;
    wait_for(what, WAIT, async || {
        let r = c.call_ok("engine::topics::list", json!({})).await;
        let rows = r["subscriptions"].as_array().cloned().unwrap_or_default();
        let row = rows
            .into_iter()
            .find(|s| s["topic"] == TOPIC && s["function_id"] == SUBSCRIBER);
        match row {
            Some(row) if ok(&row) => {
                found = row;
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    found
}

/// A subscriber worker bound on the engine at `bound_on`, and a client of
/// the engine at `publish_on` once that engine lists the subscription as
/// bound (with its row).
async fn subscribed(bound_on: &str, publish_on: &str) -> (RawClient, RawClient, Value) {
    let mut subscriber = RawClient::worker(bound_on, "subscriber").await;
    subscriber
        .bind(
            "s1",
            "durable:subscriber",
            SUBSCRIBER,
            json!({"topic": TOPIC}),
        )
        .await;
    let mut publisher = RawClient::worker(publish_on, "publisher").await;
    let what = "the other engine knows the subscriber";
    let row = subscription_where(&mut publisher, what, |s| s["bindings"] == 1).await;
    (subscriber, publisher, row)
}

async fn publish(c: &mut RawClient, n: u64) {
    c.call_ok(
        "iii::durable::publish",
        json!({"topic": TOPIC, "data": {"n": n}}),
    )
    .await;
}

/// The `n` of the next `count` messages `worker` gets, answered.
async fn next_messages(worker: &mut RawClient, count: usize) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let data = worker.next_event().await;
        seen.insert(data["n"].as_u64().expect("a published n"));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_bound_on_one_engine_gets_what_is_published_on_every_engine() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let b = TestEngine::start_with(nats.engine_config(test_config(), "b")).await;

    let (mut subscriber, mut on_a, row) = subscribed(&b.url, &a.url).await;
    let mut on_b = RawClient::worker(&b.url, "publisher-b").await;
    assert_eq!(row["queue"], "topic:orders>app::on_order", "{row}");
    a.wait_for_providers(SUBSCRIBER, 1).await;

    // Published on either engine: each message once.
    publish(&mut on_a, 1).await;
    publish(&mut on_b, 2).await;
    publish(&mut on_a, 3).await;
    assert_eq!(
        next_messages(&mut subscriber, 3).await,
        BTreeSet::from([1, 2, 3])
    );
    // Nothing came twice: the next message is the next publish.
    publish(&mut on_a, 4).await;
    assert_eq!(subscriber.next_event().await["n"], 4);

    // Unbound on B: A marks it unbound too, and keeps it (keep_unbound):
    // A's publishes still make it a job.
    subscriber
        .send(
            json!({"type": "unregistertrigger", "id": "s1", "trigger_type": "durable:subscriber"}),
        )
        .await;
    let row = subscription_where(&mut on_a, "A sees the unbind", |s| {
        s["bindings"] == 0 && s["unbound_since_ms"].is_u64()
    })
    .await;
    assert_eq!(row["queue"], "topic:orders>app::on_order", "{row}");
    publish(&mut on_a, 5).await;
    assert_eq!(subscriber.next_event().await["n"], 5);
}

/// The subscriber's engine is killed: the other engine keeps its
/// subscription, its publishes are acknowledged as jobs, and the subscriber
/// reconnecting there gets every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engines_subscriber_gets_what_was_published_while_it_was_gone() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(nats.engine_config(test_config(), "a")).await;
    let mut b = EngineProcess::start_with_config(&nats.engine_toml("b"));

    let (_subscriber, mut on_a, _) = subscribed(&b.url, &a.url).await;

    b.kill();
    subscription_where(
        &mut on_a,
        "A declares B dead and keeps its subscriber",
        |s| s["bindings"] == 0 && s["unbound_since_ms"].is_u64(),
    )
    .await;
    for n in 1..=5 {
        publish(&mut on_a, n).await;
    }

    // The subscriber's worker comes back, to A, without binding again.
    let mut back = RawClient::worker(&a.url, "subscriber-again").await;
    back.register_function(SUBSCRIBER).await;
    assert_eq!(
        next_messages(&mut back, 5).await,
        BTreeSet::from([1, 2, 3, 4, 5])
    );
}

/// With `queues = "jetstream"` a publish's jobs are on the cluster's job
/// stream, not in the publishing engine's store: that engine is killed
/// right after its publishes were acknowledged, and the subscriber still
/// gets every one of them, on another engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_queues_a_publish_outlives_the_engine_that_took_it() {
    let nats = NatsCluster::start().await;
    let mut a = EngineProcess::start_with_config(&jetstream_toml(&nats, "a", ""));
    let b = TestEngine::start_with(jetstream_config(&nats, "b")).await;

    let (mut subscriber, mut on_a, _) = subscribed(&b.url, &a.url).await;
    let mut on_b = RawClient::worker(&b.url, "publisher-b").await;
    publish(&mut on_a, 1).await;
    publish(&mut on_b, 2).await;
    assert_eq!(
        next_messages(&mut subscriber, 2).await,
        BTreeSet::from([1, 2])
    );

    // The subscriber's worker goes; both engines keep its subscription.
    drop(subscriber);
    subscription_where(&mut on_a, "A sees the subscriber gone", |s| {
        s["bindings"] == 0 && s["unbound_since_ms"].is_u64()
    })
    .await;
    for n in 3..=5 {
        publish(&mut on_a, n).await;
    }
    a.kill();

    // Back on B, without binding again: A's jobs are B's to run.
    let mut back = RawClient::worker(&b.url, "subscriber-again").await;
    back.register_function(SUBSCRIBER).await;
    assert_eq!(next_messages(&mut back, 3).await, BTreeSet::from([3, 4, 5]));
}
