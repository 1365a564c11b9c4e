//! Fuzzing the engine's inbound decoders: property tests that no input makes
//! a decoder panic (worker frames, channel socket frames), and a real engine
//! fed 100,000 malformed frames that must still serve a normal client with
//! no panic on any of its threads.

mod common;

use common::{RawClient, TestEngine};
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use qmesh::channels::frames::{FrameReader, Role};
use qmesh::protocol::inbound;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_tungstenite::tungstenite::Message;

/// Message types the decoder knows, and the fields any of them may carry.
const TYPES: &[&str] = &[
    "registerfunction",
    "unregisterfunction",
    "invokefunction",
    "invocationresult",
    "registertriggertype",
    "unregistertriggertype",
    "registertrigger",
    "unregistertrigger",
    "triggerregistrationresult",
    "reattach",
    "ping",
    "pong",
    "nonsense",
];
const FIELDS: &[&str] = &[
    "id",
    "function_id",
    "invocation_id",
    "data",
    "result",
    "error",
    "traceparent",
    "baggage",
    "metadata",
    "namespace",
    "action",
    "description",
    "request_format",
    "invocation",
    "trigger_type",
    "config",
    "previous_worker_id",
    "reattach_token",
];

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(json!("7c9e6679-7425-40de-944b-e07fc1f90ae7")),
        Just(json!({"type": "enqueue"})),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame of a known type whose fields have arbitrary types and values.
fn worker_frame() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..8),
    )
        .prop_map(|(kind, fields)| {
            let mut frame = serde_json::Map::new();
            frame.insert("type".into(), kind.into());
            for (k, v) in fields {
                frame.insert(k.into(), v);
            }
            Value::Object(frame).to_string()
        })
}

/// A WebSocket frame header with arbitrary bits, then a short payload.
fn channel_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (
            any::<u8>(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..16),
            prop::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(b0, b1, ext, payload)| {
                let mut v = vec![b0, b1];
                v.extend(ext);
                v.extend(payload);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn worker_frames_of_any_shape_decode_or_fail_cleanly(text in worker_frame()) {
        let _ = inbound::decode(&text);
        let _ = inbound::refused_call(&text);
    }

    #[test]
    fn any_text_decodes_or_fails_cleanly(text in ".{0,256}") {
        let _ = inbound::decode(&text);
        let _ = inbound::refused_call(&text);
    }

    #[test]
    fn channel_socket_bytes_never_panic_the_frame_reader(bytes in channel_bytes()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut reader = FrameReader::new(&bytes[..], Role::Server, 1 << 10);
            // Reads until the bytes run out or a rule is broken.
            for _ in 0..64 {
                if reader.next().await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Panics on the engine's runtime threads since the hook was installed.
static ENGINE_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_engine_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_runtime = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-runtime-worker"));
        if on_runtime {
            ENGINE_PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_fed_100_000_malformed_frames_still_serves() {
    count_engine_panics();
    let engine = TestEngine::start().await;
    let mut exec = engine.worker_with("exec", &["echo::it"]).await;
    let mut attacker = RawClient::worker(&engine.url, "attacker").await;
    // 4,096 distinct malformed frames, sent round and round.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (shapes, junk) = (worker_frame(), ".{0,64}");
    let pool: Vec<Message> = (0..4096u32)
        .map(|i| match i % 4 {
            0 | 1 => Message::Text(shapes.new_tree(&mut runner).unwrap().current().into()),
            2 => Message::Text(junk.new_tree(&mut runner).unwrap().current().into()),
            _ => Message::Binary(i.to_be_bytes().repeat((i % 7) as usize).into()),
        })
        .collect();
    for (i, msg) in pool.iter().cycle().take(100_000).enumerate() {
        // Fed without waiting for replies: some shapes are real calls.
        attacker
            .ws
            .feed(msg.clone())
            .await
            .expect("the engine keeps reading");
        if i % 512 == 0 {
            attacker.ws.flush().await.expect("flush");
        }
    }
    attacker.ws.flush().await.expect("flush");

    // A normal client is served as before.
    let mut caller = RawClient::worker(&engine.url, "caller").await;
    let id = caller.send_call("echo::it", json!({"n": 1})).await;
    let inv = exec
        .recv_until("the caller's invoke", |v| {
            v["type"] == "invokefunction" && v["data"]["n"] == 1
        })
        .await;
    exec.send(json!({"type":"invocationresult","invocation_id":inv["invocation_id"],"function_id":"echo::it","result":"ok"})).await;
    let r = caller
        .recv_until("result", |v| v["invocation_id"] == id.as_str())
        .await;
    assert_eq!(r["result"], "ok");
    assert_eq!(engine.health().await["status"], "ok");
    assert_eq!(
        ENGINE_PANICS.load(Ordering::SeqCst),
        0,
        "a panic on an engine thread"
    );
    engine.stop().await;
}
