//! Binary channels and realtime publishes across the engines of a cluster
//! (3-node NATS): a channel created on engine A whose reader connects to
//! engine B carries every byte, in order, with backpressure reaching the
//! writer through the link; a killed engine or a NATS outage ends the other
//! side with the documented close code; `channel::publish` on one engine
//! reaches a client subscribed on another, once.

mod common;

use common::launcher::EngineProcess;
use common::nats::NatsCluster;
use common::realtime::{self as rt, recv};
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use qmesh::client::channel::{ChannelError, ChannelItem, ChannelReader, ChannelWriter};
use qmesh::client::{Client, ErrorBody};
use qmesh::config::Config;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

fn engine_config(nats: &NatsCluster, engine_id: &str) -> Config {
    nats.engine_config(test_config(), engine_id)
}

/// Bytes that are not all alike, so a piece out of place changes the hash.
fn stream_of(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A worker on `url`, announced.
async fn worker(url: &str, name: &str) -> Client {
    let w = Client::connect(url).await.expect("worker connects");
    w.announce(name).unwrap();
    w
}

/// Waits until each engine sees the other alive: a function served on each
/// is routed by the other (their directories and heartbeats met).
async fn engines_meet(
    a: &TestEngine,
    b_url: &str,
    b: Option<&TestEngine>,
) -> (RawClient, RawClient) {
    let mut on_a = RawClient::worker(&a.url, "meet-a").await;
    on_a.register_function("meet::a").await;
    let mut on_b = RawClient::worker(b_url, "meet-b").await;
    on_b.register_function("meet::b").await;
    a.wait_for_providers("meet::b", 1).await;
    if let Some(b) = b {
        b.wait_for_providers("meet::a", 1).await;
    }
    (on_a, on_b)
}

/// `engine::channels::info` as an operator on that engine sees it (null
/// once the channel is gone).
async fn channel_info(w: &Client, id: &str) -> Value {
    w.call("engine::channels::info", json!({ "channel_id": id }))
        .await
        .unwrap_or(Value::Null)
}

/// Everything a reader reads: the bytes and the text messages, or the error it ended with.
async fn read_all(reader: &mut ChannelReader) -> Result<(Vec<u8>, Vec<String>), ChannelError> {
    reader.read_all().await
}

/// The main path: a worker on A creates a channel, calls a function served
/// on B with the reader's ref, and streams 4 MiB into the writer; B's worker
/// connects the reader to its own engine (as every SDK does) and reads it
/// all, text messages in order with the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_on_one_engine_streams_to_a_reader_on_another() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let _met = engines_meet(&a, &b.url, Some(&b)).await;

    let reader_side = worker(&b.url, "ingest").await;
    let b_url = b.url.clone();
    rt::serve(&reader_side, "files::ingest", move |data: Value| {
        let b_url = b_url.clone();
        async move {
            let r = serde_json::from_value(data["file"].clone()).expect("a reader ref");
            let mut reader = ChannelReader::open(&b_url, &r)
                .await
                .expect("reader opens on B");
            let (bytes, texts) = read_all(&mut reader).await.expect("the whole stream");
            Ok(json!({ "len": bytes.len(), "sha": sha(&bytes), "texts": texts }))
        }
    })
    .await;
    a.wait_for_providers("files::ingest", 1).await;

    let writer_side = worker(&a.url, "upload").await;
    let pair = writer_side.create_channel(None).await.unwrap();
    let call = {
        let w = writer_side.clone();
        let reader = pair.reader.clone();
        tokio::spawn(async move {
            w.call_with_timeout(
                "files::ingest",
                json!({ "file": reader }),
                Duration::from_secs(60),
            )
            .await
        })
    };
    let data = stream_of(4 << 20);
    let mut writer = writer_side.open_writer(&pair.writer).await.unwrap();
    writer.send_text("head").await.unwrap();
    writer.write(&data[..1 << 20]).await.unwrap();
    writer.send_text("middle").await.unwrap();
    writer.write(&data[1 << 20..]).await.unwrap();
    writer.finish().await.expect("a normal end");

    let got = call.await.unwrap().expect("the ingest answers");
    assert_eq!(
        got,
        json!({ "len": data.len(), "sha": sha(&data), "texts": ["head", "middle"] })
    );
    // Both ends done: A removes the channel, as on one engine.
    wait_until("A forgets the finished channel", WAIT, async || {
        a.binary_channel_count() == 0
    })
    .await;
}

/// A reader on B that does not read: B's pipe fills, B grants no more
/// credit, A stops taking from its pipe, and A's pipe fills and stays
/// within `max_buffer_bytes` while the writer's write cannot complete. Once
/// the reader reads, every byte arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_on_another_engine_holds_the_writer_back() {
    const MAX_BYTES: u64 = 256 << 10;
    let nats = NatsCluster::start().await;
    let small = |id| {
        let mut c = engine_config(&nats, id);
        c.channels.max_buffer_bytes = MAX_BYTES as usize;
        c.channels.max_frame_size = 64 << 10;
        c
    };
    let a = TestEngine::start_with(small("a")).await;
    let b = TestEngine::start_with(small("b")).await;
    let _met = engines_meet(&a, &b.url, Some(&b)).await;

    let on_a = worker(&a.url, "writer").await;
    let pair = on_a.create_channel(None).await.unwrap();
    let mut reader = ChannelReader::open(&b.url, &pair.reader).await.unwrap();
    let data = stream_of(48 << 20);
    let writing = {
        let (url, r, data) = (a.url.clone(), pair.writer.clone(), data.clone());
        tokio::spawn(async move {
            let mut writer = ChannelWriter::open(&url, &r).await.unwrap();
            writer.write(&data).await.unwrap();
            writer.finish().await
        })
    };

    // A's pipe full: the link took no more, since B granted no more.
    let id = pair.writer.channel_id.clone();
    wait_until("A's pipe is full", WAIT, async || {
        let info = channel_info(&on_a, &id).await;
        info["buffered_bytes"].as_u64().unwrap_or(0) + (64 << 10) > MAX_BYTES
    })
    .await;
    assert!(
        !writing.is_finished(),
        "the writer's write cannot complete while nobody reads"
    );
    let info = channel_info(&on_a, &id).await;
    assert!(
        info["peak_buffered_bytes"].as_u64().unwrap() <= MAX_BYTES,
        "{info}"
    );
    assert_eq!(
        info["reader"], "open",
        "the link holds the reader end: {info}"
    );

    let (bytes, _) = read_all(&mut reader).await.expect("the whole stream");
    assert_eq!((bytes.len(), sha(&bytes)), (data.len(), sha(&data)));
    writing.await.unwrap().expect("a normal end");
}

/// The writer's engine is killed (-9) mid-stream: the reader on B gets what
/// was carried, then close 4499 (the stream is truncated), once B has not
/// heard from the link for `engine_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_engine_ends_the_reader_with_4499() {
    let nats = NatsCluster::start().await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let mut a = EngineProcess::start_with_config(&nats.engine_toml("a"));
    // B must know A alive to ask it for the channel.
    let _met = engines_meet(&b, &a.url, None).await;

    let on_a = worker(&a.url, "writer").await;
    let pair = on_a.create_channel(None).await.unwrap();
    let mut reader = ChannelReader::open(&b.url, &pair.reader).await.unwrap();
    let mut writer = on_a.open_writer(&pair.writer).await.unwrap();
    writer.write(b"carried before the kill").await.unwrap();
    match reader.next().await {
        Ok(Some(ChannelItem::Binary(b))) => assert_eq!(&b[..], b"carried before the kill"),
        other => panic!("expected the first bytes, got {other:?}"),
    }

    a.kill();
    let ended = tokio::time::timeout(WAIT, read_all(&mut reader))
        .await
        .expect("the reader is ended, never left hanging");
    assert_eq!(ended.unwrap_err(), ChannelError::WriterAborted);
}

/// The reader's engine is killed (-9): A's link hears nothing more, and the
/// writer on A is closed with 4410 (nobody reads any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reader_engine_ends_the_writer_with_4410() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let mut b = EngineProcess::start_with_config(&nats.engine_toml("b"));
    let _met = engines_meet(&a, &b.url, None).await;
    let mut probe = RawClient::worker(&b.url, "probe").await;
    wait_until("B sees A", WAIT, async || {
        let listed = probe.call("engine::functions::list", json!({})).await;
        listed.to_string().contains("meet::a")
    })
    .await;

    let on_a = worker(&a.url, "writer").await;
    let pair = on_a.create_channel(None).await.unwrap();
    let mut reader = ChannelReader::open(&b.url, &pair.reader).await.unwrap();
    let mut writer = on_a.open_writer(&pair.writer).await.unwrap();
    writer.write(b"first").await.unwrap();
    assert!(matches!(
        reader.next().await,
        Ok(Some(ChannelItem::Binary(_)))
    ));

    b.kill();
    let id = pair.writer.channel_id.clone();
    wait_until("A ends the channel", WAIT, async || {
        channel_info(&on_a, &id).await.is_null()
    })
    .await;
    assert_eq!(writer.finish().await.unwrap_err(), ChannelError::ReaderGone);
}

/// All of NATS goes down mid-stream: each engine loses its connection and
/// fails its links at once; the reader gets 4499, the writer 4410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_ends_both_sides_with_their_codes() {
    let mut nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let _met = engines_meet(&a, &b.url, Some(&b)).await;

    let on_a = worker(&a.url, "writer").await;
    let pair = on_a.create_channel(None).await.unwrap();
    let mut reader = ChannelReader::open(&b.url, &pair.reader).await.unwrap();
    let mut writer = on_a.open_writer(&pair.writer).await.unwrap();
    writer.write(b"before the outage").await.unwrap();
    assert!(matches!(
        reader.next().await,
        Ok(Some(ChannelItem::Binary(_)))
    ));

    nats.kill_all();
    let ended = tokio::time::timeout(WAIT, read_all(&mut reader))
        .await
        .expect("the reader is ended, never left hanging");
    assert_eq!(ended.unwrap_err(), ChannelError::WriterAborted);
    let id = pair.writer.channel_id.clone();
    wait_until("A ends the channel", WAIT, async || {
        channel_info(&on_a, &id).await.is_null()
    })
    .await;
    assert_eq!(writer.finish().await.unwrap_err(), ChannelError::ReaderGone);

    // While NATS is down, a socket here for a channel held elsewhere is
    // refused before the upgrade (503), not left waiting.
    let other = on_a.create_channel(None).await.unwrap();
    b.until_cut_off_from_nats().await;
    match ChannelReader::open(&b.url, &other.reader).await {
        Err(ChannelError::Refused { status, .. }) => assert_eq!(status, 503),
        other => panic!("expected a 503 refusal, got {:?}", other.map(|_| ())),
    }
}

/// A refused connect on another engine keeps its meaning: a wrong key is
/// 404, and an end already connected (on either engine) is 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_on_another_engine_are_refused_as_on_one() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let _met = engines_meet(&a, &b.url, Some(&b)).await;
    let on_a = worker(&a.url, "creator").await;
    let pair = on_a.create_channel(None).await.unwrap();

    let mut wrong = pair.reader.clone();
    wrong.access_key = pair.writer.access_key.clone();
    let status = |r: Result<ChannelReader, ChannelError>| match r {
        Err(ChannelError::Refused { status, .. }) => status,
        Err(e) => panic!("expected a refusal, got {e:?}"),
        Ok(_) => panic!("expected a refusal, got a socket"),
    };
    assert_eq!(status(ChannelReader::open(&b.url, &wrong).await), 404);
    let _reader = ChannelReader::open(&b.url, &pair.reader).await.unwrap();
    assert_eq!(status(ChannelReader::open(&b.url, &pair.reader).await), 409);
    assert_eq!(status(ChannelReader::open(&a.url, &pair.reader).await), 409);
}

/// `channel::publish` from a worker on A reaches a client subscribed on B,
/// and one subscribed on A, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_publish_reaches_clients_on_every_engine_once() {
    let nats = NatsCluster::start().await;
    let a = TestEngine::start_with(engine_config(&nats, "a")).await;
    let b = TestEngine::start_with(engine_config(&nats, "b")).await;
    let _met = engines_meet(&a, &b.url, Some(&b)).await;

    // Each engine's route subscribes its clients to "news" on connect.
    let mut clients = Vec::new();
    let mut handlers = Vec::new();
    for (engine, name) in [(&a, "a"), (&b, "b")] {
        let w = rt::worker(&engine.url).await;
        let function_id = format!("news::join_{name}");
        let subscriber = w.clone();
        rt::serve(&w, &function_id, move |data: Value| {
            let subscriber = subscriber.clone();
            async move {
                let id = data["channel"]["channel_id"].clone();
                subscriber
                    .call(
                        "channel::subscribe",
                        json!({"channel_id": id, "topic": "news"}),
                    )
                    .await
                    .map_err(|e| ErrorBody::new("subscribe_failed", e.to_string()))?;
                Ok(json!({"joined": true}))
            }
        })
        .await;
        rt::bind(
            &w,
            &function_id,
            json!({"route": "/ws/news", "on": "connect"}),
        )
        .await;
        let mut ws = rt::open(&engine.realtime_url(), "/ws/news").await;
        assert_eq!(recv(&mut ws).await, json!({"joined": true}));
        clients.push(ws);
        handlers.push(w);
    }

    let publisher = worker(&a.url, "publisher").await;
    let out = publisher
        .call(
            "channel::publish",
            json!({"topic": "news", "data": {"n": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"recipients": 1, "dropped": 0}),
        "A's own clients"
    );
    for ws in &mut clients {
        assert_eq!(recv(ws).await, json!({"topic": "news", "data": {"n": 1}}));
    }
    // Once: the next frame each client gets is the next publish.
    publisher
        .call(
            "channel::publish",
            json!({"topic": "news", "data": {"n": 2}}),
        )
        .await
        .unwrap();
    for ws in &mut clients {
        assert_eq!(recv(ws).await, json!({"topic": "news", "data": {"n": 2}}));
    }
}
