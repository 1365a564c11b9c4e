//! Pub/sub (`publish` and the `subscribe` trigger type) against a real
//! engine: the behaviours the published Rust SDK's own `tests/pubsub.rs`
//! checks, called the same way, plus several subscribers per topic,
//! unsubscribing one, bad input, and the Python SDK (state too).

// The trigger APIs are deprecated in 0.25 in favour of observe (which this
// engine does not advertise); they keep working and are what we test.
#![allow(deprecated)]

mod common;

use common::programs::Program;
use common::sdk::{DEADLINE, call, recording, recv, remote_code, sdk_worker, stop};
use common::{TestEngine, assert_silent_for};
use iii_sdk::IIIClient;
use iii_sdk::protocol::{RegisterTriggerInput, TriggerRequest};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;

async fn publish(iii: &IIIClient, topic: &str, data: Value) {
    iii.trigger(TriggerRequest {
        function_id: "publish".to_owned(),
        payload: json!({"topic": topic, "data": data}),
        action: None,
        timeout_ms: None,
    })
    .await
    .expect("publish");
}

/// Publishes `{warmup: n}` until `rx` has a message (the binding is live:
/// registrations are not acknowledged), then empties `rx`.
async fn until_live(iii: &IIIClient, topic: &str, rxs: &mut [&mut mpsc::UnboundedReceiver<Value>]) {
    for n in 0.. {
        publish(iii, topic, json!({ "warmup": n })).await;
        let mut all = true;
        for rx in rxs.iter_mut() {
            let got = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
            all &= matches!(got, Ok(Some(_)));
        }
        if all {
            break;
        }
        assert!(n < 200, "the subscriptions never went live");
    }
    // Let the last warm-ups land, then forget them.
    for rx in rxs.iter_mut() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_gets_each_message_once_and_topics_are_isolated() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "pubsub");
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let fa = iii.register_function("test::pubsub::rs::a", recording(tx_a, |_| json!({})));
    let fb = iii.register_function("test::pubsub::rs::b", recording(tx_b, |_| json!({})));
    let ta = iii
        .register_trigger(RegisterTriggerInput::new(
            "subscribe",
            fa.id.clone(),
            json!({"topic": "topic_a"}),
        ))
        .expect("register trigger a");
    let tb = iii
        .register_trigger(RegisterTriggerInput::new(
            "subscribe",
            fb.id.clone(),
            json!({"topic": "topic_b"}),
        ))
        .expect("register trigger b");
    until_live(&iii, "topic_a", &mut [&mut rx_a]).await;
    until_live(&iii, "topic_b", &mut [&mut rx_b]).await;

    publish(&iii, "topic_a", json!({"message": "Hello PubSub!"})).await;
    let got = recv(&mut rx_a, "the message on topic_a").await;
    assert_eq!(
        got,
        json!({"message": "Hello PubSub!"}),
        "the data exactly as published"
    );
    assert_silent_for(&mut rx_a, Duration::from_millis(300), "a second delivery").await;
    assert_silent_for(
        &mut rx_b,
        Duration::from_millis(50),
        "a delivery to topic_b",
    )
    .await;
    ta.unregister();
    tb.unregister();
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_one_binding_keeps_the_others() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "pubsub-many");
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let f1 = iii.register_function("test::pubsub::rs::one", recording(tx1, |_| json!({})));
    let f2 = iii.register_function("test::pubsub::rs::two", recording(tx2, |_| json!({})));
    let bind = |f: &str| {
        iii.register_trigger(RegisterTriggerInput::new(
            "subscribe",
            f.to_owned(),
            json!({"topic": "shared"}),
        ))
        .expect("register trigger")
    };
    let t1 = bind(&f1.id);
    let _t2 = bind(&f2.id);
    until_live(&iii, "shared", &mut [&mut rx1, &mut rx2]).await;
    publish(&iii, "shared", json!({"n": 1})).await;
    assert_eq!(recv(&mut rx1, "n=1 on one").await, json!({"n": 1}));
    assert_eq!(recv(&mut rx2, "n=1 on two").await, json!({"n": 1}));

    t1.unregister();
    // Once the unbind has landed, `one` hears nothing and `two` still hears everything.
    for n in 2.. {
        publish(&iii, "shared", json!({ "n": n })).await;
        assert_eq!(recv(&mut rx2, "a message on two").await, json!({ "n": n }));
        match tokio::time::timeout(Duration::from_millis(100), rx1.recv()).await {
            Ok(Some(_)) => assert!(n < 100, "the unbind never landed"),
            _ => break,
        }
    }
    assert!(rx2.is_empty(), "two got each message once");
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publishes_are_refused_with_iiis_codes() {
    let engine = TestEngine::start().await;
    let iii = sdk_worker(&engine.url, "pubsub-bad");
    let err = call(&iii, "publish", json!({"topic": "", "data": 1}))
        .await
        .expect_err("empty topic");
    assert_eq!(remote_code(&err), "topic_not_set");
    let err = call(&iii, "publish", json!({"topic": "t"}))
        .await
        .expect_err("no data");
    assert_eq!(remote_code(&err), "deserialization_error");
    // Nobody subscribed: fine, and null.
    assert_eq!(
        call(&iii, "publish", json!({"topic": "t", "data": null}))
            .await
            .unwrap(),
        Value::Null
    );
    stop(iii).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_state_and_pubsub() {
    let engine = TestEngine::start().await;
    let mut py = Program::start("python", "state_pubsub.py", &[], &engine.url);
    let step =
        async |py: &mut Program, name: &str| py.expect_json(name, |v| v["step"] == name).await;
    let set = step(&mut py, "set").await;
    assert_eq!(
        set["result"],
        json!({"old_value": null, "new_value": {"list": [], "text": "hello"}})
    );
    let update = step(&mut py, "update").await;
    assert_eq!(
        update["result"]["new_value"],
        json!({"list": [{"kind": "chunk"}], "text": "hello world"})
    );
    let get = step(&mut py, "get").await;
    assert_eq!(
        get["result"],
        json!({"list": [{"kind": "chunk"}], "text": "hello world"})
    );
    let list = step(&mut py, "list").await;
    assert_eq!(
        list["result"],
        json!([{"list": [{"kind": "chunk"}], "text": "hello world"}])
    );
    let pubsub = tokio::time::timeout(DEADLINE * 4, step(&mut py, "pubsub"))
        .await
        .expect("pubsub step");
    assert_eq!(
        pubsub["finals"],
        json!([{"message": "Hello PubSub!"}]),
        "exactly once"
    );
    assert_eq!(py.finish().await.0, 0);
    engine.stop().await;
}
