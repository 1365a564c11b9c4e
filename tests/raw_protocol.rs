//! The engine core driven by a raw WebSocket client: routing rules, error
//! codes, and bad input that must never take the engine down.

mod common;

use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn is_result(v: &Value) -> bool {
    v["type"] == "invocationresult"
}

#[tokio::test]
async fn sync_call_round_trip_injects_caller_and_keeps_ids() {
    let engine = TestEngine::start().await;
    let mut exec = RawClient::worker(&engine.url, "exec").await;
    exec.register_function("math::add").await;
    wait_until("function registered", WAIT, async || {
        engine.function_count().await == 1
    })
    .await;

    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let caller_id = caller.worker_id.clone();
    let id = uuid::Uuid::new_v4().to_string();
    caller
        .send(json!({"type":"invokefunction","invocation_id":id,"function_id":"math::add","data":{"a":2,"b":3},
            "traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","metadata":{"m":1}}))
        .await;
    let inv = exec
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    assert_eq!(
        inv["invocation_id"],
        id.as_str(),
        "executor sees the caller's invocation id"
    );
    assert_eq!(inv["data"]["_caller_worker_id"], caller_id.as_str());
    assert_eq!(inv["data"]["a"], 2);
    // The executor's parent is the engine's span for the call, in the caller's trace.
    let tp = inv["traceparent"].as_str().expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the engine's span, not the caller's"
    );
    assert_eq!(parts[3], "01");
    assert_eq!(inv["metadata"], json!({"m":1}));
    assert!(inv.get("action").is_none() && inv.get("namespace").is_none());
    exec.send(json!({"type":"invocationresult","invocation_id":id,"function_id":"math::add","result":{"sum":5}}))
        .await;
    let res = caller.recv_until("result", is_result).await;
    assert_eq!(res["invocation_id"], id.as_str());
    assert_eq!(res["function_id"], "math::add");
    assert_eq!(res["result"], json!({"sum":5}));
    assert!(res.get("error").is_none());
    engine.stop().await;
}

#[tokio::test]
async fn void_calls_run_but_never_answer() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["log::write"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    caller
        .send(json!({"type":"invokefunction","function_id":"log::write","data":{"line":1},"action":{"type":"void"}}))
        .await;
    let inv = exec
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    assert!(
        uuid::Uuid::parse_str(inv["invocation_id"].as_str().unwrap()).is_ok(),
        "executor gets an id"
    );
    exec.send(json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":"log::write","result":1}))
        .await;
    // The caller's next answer must be for its next call, not the void one.
    let r = caller.call("log::nothing", json!({})).await;
    assert_eq!(r["error"]["code"], "function_not_found");
    wait_until("void call settled", WAIT, async || {
        engine.pending_calls().await == 0
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn unknown_function_gets_function_not_found_with_a_hint() {
    let engine = TestEngine::start().await;
    let mut exec = RawClient::connect(&engine.url).await;
    exec.send(
        json!({"type":"invokefunction","function_id":"engine::workers::register",
        "data":{"name":"other","namespace":"billing","pid":1},"action":{"type":"void"}}),
    )
    .await;
    exec.register_function("pay::charge").await;
    wait_until("registered", WAIT, async || {
        engine.function_count().await == 1
    })
    .await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let r = caller.call("pay::charge", json!({})).await;
    assert_eq!(r["error"]["code"], "function_not_found");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("namespace default") && msg.contains("billing"),
        "{msg}"
    );
    let id = uuid::Uuid::new_v4().to_string();
    caller
        .send(json!({"type":"invokefunction","invocation_id":id,"function_id":"pay::charge","data":{},"namespace":"billing"}))
        .await;
    let inv = exec
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    assert_eq!(inv["invocation_id"], id.as_str());
    let blank = caller.call_in_namespace("pay::charge", " ").await;
    assert_eq!(blank["error"]["code"], "INVALID_NAMESPACE");
    engine.stop().await;
}

trait NamespaceCall {
    async fn call_in_namespace(&mut self, f: &str, ns: &str) -> Value;
}
impl NamespaceCall for RawClient {
    async fn call_in_namespace(&mut self, f: &str, ns: &str) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        self.send(json!({"type":"invokefunction","invocation_id":id,"function_id":f,"data":{},"namespace":ns})).await;
        self.recv_until("result", |v| {
            is_result(v) && v["invocation_id"] == id.as_str()
        })
        .await
    }
}

#[tokio::test]
async fn executor_dropping_mid_call_stops_the_call_at_once() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["slow::op"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let _id = caller.send_call("slow::op", json!({})).await;
    exec.recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    drop(exec);
    let started = std::time::Instant::now();
    let r = caller.recv_until("result", is_result).await;
    assert_eq!(r["error"]["code"], "invocation_stopped");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "caller learns at once"
    );
    assert_eq!(engine.pending_calls().await, 0);
    engine.stop().await;
}

#[tokio::test]
async fn two_workers_share_one_function_id() {
    let engine = TestEngine::start().await;
    let mut a = RawClient::worker(&engine.url, "a").await;
    let mut b = RawClient::worker(&engine.url, "b").await;
    a.register_function("img::resize").await;
    b.register_function("img::resize").await;
    engine.wait_for_providers("img::resize", 2).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    for _ in 0..4 {
        caller.send(json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":"img::resize","data":{}})).await;
    }
    // Least in-flight first: with nobody answering, the four calls split 2/2.
    for w in [&mut a, &mut b] {
        for _ in 0..2 {
            w.recv_until("invoke", |v| v["type"] == "invokefunction")
                .await;
        }
    }
    let workers = caller.call("engine::workers::list", json!({})).await;
    let loads: Vec<u64> = workers["result"]["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("{workers}"))
        .iter()
        .filter_map(|w| w["active_invocations"].as_u64())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(loads, vec![2, 2]);
    engine.stop().await;
}

#[tokio::test]
async fn a_restarting_worker_is_invisible_to_callers() {
    let engine = TestEngine::start().await;
    let exec = engine.worker_with("exec", &["svc::ping"]).await;
    drop(exec);
    wait_until("gone", WAIT, async || engine.function_count().await == 0).await;
    // A call during the gap waits for the worker to come back instead of failing.
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let _id = caller.send_call("svc::ping", json!({})).await;
    wait_until("the call to wait for svc::ping", WAIT, async || {
        engine.calls_waiting_for("svc::ping") == 1
    })
    .await;
    let mut exec = RawClient::worker(&engine.url, "exec").await;
    exec.register_function("svc::ping").await;
    exec.serve(1, |_| json!("pong")).await;
    let r = caller.recv_until("result", is_result).await;
    assert_eq!(r["result"], "pong");
    engine.stop().await;
}

#[tokio::test]
async fn bad_input_is_dropped_and_the_connection_stays_usable() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["echo::it"]).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    for garbage in [
        "{not json",
        "[]",
        "42",
        r#"{"no_type":1}"#,
        r#"{"type":"teleport","x":1}"#,
        r#"{"type":"invokefunction"}"#,
        r#"{"type":"invokefunction","function_id":"echo::it","invocation_id":"not-a-uuid"}"#,
        r#"{"type":"invocationresult","function_id":"x"}"#,
        r#"{"type":"registertrigger","id":"1"}"#,
        "   ",
        "",
    ] {
        c.send_text(garbage).await;
    }
    c.ws.send(Message::Binary(
        b"OTLP{\"resourceSpans\":[]}".to_vec().into(),
    ))
    .await
    .unwrap();
    c.ws.send(Message::Binary(vec![0xff, 0xfe].into()))
        .await
        .unwrap();
    // JSON in a binary frame is a normal message; missing data is null.
    let id = uuid::Uuid::new_v4().to_string();
    let frame =
        json!({"type":"invokefunction","invocation_id":id,"function_id":"echo::it"}).to_string();
    c.ws.send(Message::Binary(frame.into_bytes().into()))
        .await
        .unwrap();
    let inv = exec
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    assert_eq!(inv["data"], Value::Null);
    exec.send(json!({"type":"invocationresult","invocation_id":id,"function_id":"echo::it","result":null})).await;
    let r = c.recv_until("result", is_result).await;
    assert_eq!(r["invocation_id"], id.as_str());
    assert!(r.get("result").is_none(), "null result is omitted: {r}");
    let unknown_action = json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":"echo::it","data":{},"action":{"type":"later"}});
    c.send(unknown_action).await;
    let r = c.recv_until("result", is_result).await;
    assert_eq!(r["error"]["code"], "invalid_action");
    engine.stop().await;
}

#[tokio::test]
async fn oversize_message_closes_with_1009_and_others_carry_on() {
    let mut config = test_config();
    config.limits.max_message_size = 64 << 10;
    let engine = TestEngine::start_with(config).await;
    let mut exec = RawClient::worker(&engine.url, "exec").await;
    exec.register_function("echo::it").await;
    let mut big = RawClient::worker(&engine.url, "big").await;
    let payload = "x".repeat(128 << 10);
    let _ = big
        .ws
        .send(Message::Text(
            json!({"type":"ping","pad":payload}).to_string().into(),
        ))
        .await;
    let close = loop {
        match tokio::time::timeout(common::WAIT, futures_util::StreamExt::next(&mut big.ws))
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("close frame").code), 1009);
    let mut c = RawClient::worker(&engine.url, "c").await;
    let call = tokio::spawn(async move { c.call("echo::it", json!({"ok":true})).await });
    exec.serve(1, |d| d.clone()).await;
    assert_eq!(call.await.unwrap()["result"]["ok"], true);
    engine.stop().await;
}

#[tokio::test]
async fn a_flood_of_calls_to_a_slow_worker_is_bounded_per_connection() {
    let mut config = test_config();
    config.limits.max_pending_calls_per_connection = 50;
    let engine = TestEngine::start_with(config).await;
    let mut slow = RawClient::worker(&engine.url, "slow").await;
    slow.register_function("slow::op").await;
    let mut fast = engine.worker_with("fast", &["fast::op"]).await;
    let mut flood = RawClient::worker(&engine.url, "flood").await;
    for _ in 0..200 {
        flood.send(json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":"slow::op","data":{}})).await;
    }
    let mut refused = 0;
    while refused < 150 {
        let r = flood.recv_until("result", is_result).await;
        assert_eq!(r["error"]["code"], "too_many_pending_calls", "{r}");
        refused += 1;
    }
    assert_eq!(engine.pending_calls().await, 50);
    // Everyone else is unaffected.
    let mut other = RawClient::worker(&engine.url, "other").await;
    let call = tokio::spawn(async move { other.call("fast::op", json!(1)).await });
    fast.serve(1, |_| json!(2)).await;
    assert_eq!(call.await.unwrap()["result"], 2);
    assert_eq!(engine.health().await["pending_invocations"], 50);
    drop(flood);
    wait_until("caller's calls forgotten", WAIT, async || {
        engine.pending_calls().await == 0
    })
    .await;
    // The slow worker's late results are dropped quietly.
    let inv = slow
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    slow.send(json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":"slow::op","result":1})).await;
    engine.stop().await;
}

#[tokio::test]
async fn the_engine_bounds_a_calls_life() {
    let mut config = test_config();
    config.invocation.max_duration = Duration::from_millis(300);
    let engine = TestEngine::start_with(config).await;
    let _hung = engine.worker_with("hung", &["hung::op"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let r = caller.call("hung::op", json!({})).await;
    assert_eq!(r["error"]["code"], "invocation_timeout");
    assert_eq!(engine.pending_calls().await, 0);
    engine.stop().await;
}

#[tokio::test]
async fn enqueue_answers_a_receipt_and_bad_actions_are_refused() {
    let engine = TestEngine::start().await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    let id = uuid::Uuid::new_v4().to_string();
    c.send(json!({"type":"invokefunction","invocation_id":id,"function_id":"x::y","data":{},"action":{"type":"enqueue","queue":"jobs"}})).await;
    let r = c.recv_until("result", is_result).await;
    let receipt = r["result"]["messageReceiptId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(uuid::Uuid::parse_str(receipt).is_ok(), "{r}");
    c.send(json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":"x::y","data":{},"action":{"type":"enqueue"}})).await;
    let r = c.recv_until("result", is_result).await;
    assert_eq!(r["error"]["code"], "invalid_action");
    engine.stop().await;
}

#[tokio::test]
async fn reattach_tears_down_the_old_connection_first() {
    let engine = TestEngine::start().await;
    let mut old = engine.worker_with("w", &["w::f"]).await;
    let mut new = RawClient::connect(&engine.url).await;
    // A wrong token is ignored.
    new.send(json!({"type":"reattach","previous_worker_id":old.worker_id,"reattach_token":uuid::Uuid::new_v4()})).await;
    new.send(json!({"type":"reattach","previous_worker_id":old.worker_id,"reattach_token":old.reattach_token})).await;
    new.register_function("w::f").await;
    assert!(old.recv().await.is_none(), "the old connection is closed");
    wait_until("old gone, new serves", WAIT, async || {
        engine.worker_count().await == 1 && engine.providers("w::f").len() == 1
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_calls_in_flight_finish() {
    let mut engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["slow::op"]).await;
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let _id = caller.send_call("slow::op", json!({})).await;
    let inv = exec
        .recv_until("invoke", |v| v["type"] == "invokefunction")
        .await;
    engine.request_stop();
    wait_until("the engine to drain", WAIT, async || engine.is_draining()).await;
    let stopping = tokio::spawn(engine.stop());
    exec.send(json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":"slow::op","result":"done"})).await;
    let r = caller.recv_until("result", is_result).await;
    assert_eq!(r["result"], "done");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_providers_refusal_reaches_the_binder_and_the_binding_parks() {
    let engine = TestEngine::start().await;
    let mut provider = RawClient::worker(&engine.url, "provider").await;
    provider
        .send(json!({"type":"registertriggertype","id":"ticker","description":"every so often"}))
        .await;
    let mut binder = engine.worker_with("binder", &["jobs::tick"]).await;
    binder
        .send(json!({"type":"registertrigger","id":"b1","trigger_type":"ticker","function_id":"jobs::tick","config":{"expression":"nonsense"}}))
        .await;
    let fwd = provider
        .recv_until("registertrigger", |v| v["type"] == "registertrigger")
        .await;
    assert_eq!(fwd["id"], "b1");
    assert_eq!(fwd["config"], json!({"expression":"nonsense"}));
    // A result from someone who is not the provider is ignored.
    binder
        .send(json!({"type":"triggerregistrationresult","id":"b1","trigger_type":"ticker","function_id":"jobs::tick","error":{"code":"x","message":"spoof"}}))
        .await;
    provider
        .send(json!({"type":"triggerregistrationresult","id":"b1","trigger_type":"ticker","function_id":"jobs::tick",
            "error":{"code":"bad_expression","message":"cannot parse nonsense"}}))
        .await;
    let relayed = binder
        .recv_until("relayed error", |v| {
            v["type"] == "triggerregistrationresult"
        })
        .await;
    assert_eq!(relayed["error"]["code"], "bad_expression");
    assert_eq!(relayed["id"], "b1");
    let list = binder
        .call("engine::registered-triggers::list", json!({}))
        .await;
    assert_eq!(
        list["result"]["registered_triggers"][0]["state"], "parked",
        "{list}"
    );
    // The binder's disconnect unbinds it (parked bindings are simply dropped).
    drop(binder);
    wait_until("binding gone", WAIT, async || {
        let list = provider
            .call("engine::registered-triggers::list", json!({}))
            .await;
        list["result"]["registered_triggers"]
            .as_array()
            .is_some_and(|l| l.is_empty())
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_503() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let engine = TestEngine::start_with(config).await;
    let a = RawClient::connect(&engine.url).await;
    let _b = RawClient::connect(&engine.url).await;
    match tokio_tungstenite::connect_async(&engine.url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected a 503 refusal, got {other:?}"),
    }
    drop(a);
    wait_until("slot freed", WAIT, async || {
        engine.worker_count().await == 1
    })
    .await;
    // The slot is released when the closed socket's task ends.
    wait_until("a connection to be accepted again", WAIT, async || {
        tokio_tungstenite::connect_async(&engine.url).await.is_ok()
    })
    .await;
    assert_eq!(engine.health().await["status"], "ok");
    engine.stop().await;
}

#[tokio::test]
async fn a_malformed_call_that_names_its_invocation_is_answered() {
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["echo::it"]).await;
    let mut c = RawClient::worker(&engine.url, "c").await;
    // `action` as a string, `data` fine: the frame cannot be decoded, but its
    // caller is told at once instead of waiting for its own timeout.
    for bad in [
        json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":"echo::it","action":"void"}),
        json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":"echo::it","namespace":42}),
    ] {
        c.send(bad.clone()).await;
        let r = c.recv_until("result", is_result).await;
        assert_eq!(r["invocation_id"], bad["invocation_id"]);
        assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{r}");
    }
    exec.assert_not_invoked_for(Duration::from_millis(100), "a malformed call never runs")
        .await;
    engine.stop().await;
}

#[tokio::test]
async fn names_with_control_characters_and_runaway_delays_are_refused() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::worker(&engine.url, "w").await;
    // A function id with a NUL is rejected at registration; it never routes.
    w.register_function("evil\u{0}::fn").await;
    let rejected = w
        .recv_until("rejection", |v| v["type"] == "registrationrejected")
        .await;
    assert_eq!(rejected["function_id"], "evil\u{0}::fn");
    assert!(engine.providers("evil\u{0}::fn").is_empty());

    let call = |f: &str, ns: Option<&str>, action: Value| {
        let mut frame = json!({"type":"invokefunction","invocation_id":uuid::Uuid::new_v4(),"function_id":f,"data":{}});
        if let Some(ns) = ns {
            frame["namespace"] = json!(ns);
        }
        if !action.is_null() {
            frame["action"] = action;
        }
        frame
    };
    for (frame, code) in [
        (call("a\u{0}b", None, Value::Null), "INVALID_ARGUMENTS"),
        (
            call("a::b", Some("ns\u{0}"), Value::Null),
            "INVALID_NAMESPACE",
        ),
        (
            call("a::b", None, json!({"type":"enqueue","queue":"q\u{0}x"})),
            "enqueue_error",
        ),
        (
            call("a\u{7}::b", None, json!({"type":"enqueue","queue":"q"})),
            "enqueue_error",
        ),
    ] {
        w.send(frame.clone()).await;
        let r = w
            .recv_until("result", |v| {
                is_result(v) && v["invocation_id"] == frame["invocation_id"]
            })
            .await;
        assert_eq!(r["error"]["code"], code, "{frame} gave {r}");
    }
    // A delay that would overflow the clock is refused, not run at once.
    for data in [
        json!({"queue":"q","function_id":"a::b","delay": u64::MAX}),
        json!({"queue":"q","function_id":"a::b","delay": "500000000 years"}),
        json!({"queue":"q","function_id":"a::b","run_at": u64::MAX}),
        json!({"queue":"q\u{0}","function_id":"a::b"}),
    ] {
        let r = w.call("queue::enqueue", data.clone()).await;
        assert_eq!(r["error"]["code"], "INVALID_ARGUMENTS", "{data} gave {r}");
    }
    let stats = w.call("queue::list", json!({})).await;
    assert_eq!(
        stats["result"]["queues"],
        json!([]),
        "nothing was enqueued: {stats}"
    );
    engine.stop().await;
}
