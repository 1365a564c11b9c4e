//! Binary channels end to end: a real engine, real sockets. The raw tests
//! here check what the engine promises on the channel socket (refusal
//! statuses, close codes, expiry, bounded memory); the Node and Python SDKs
//! stream through it at the bottom.

mod common;

use common::programs::Program;
use common::{RawClient, TestEngine, WAIT, test_config, wait_until};
use futures_util::StreamExt;
use qmesh::channels::frames::{CloseFrame, FrameReader, Incoming, Role, handshake};
use qmesh::client::Client;
use qmesh::client::channel::{
    ChannelError, ChannelItem, ChannelPair, ChannelReader, ChannelRef, ChannelWriter,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message;

/// A channel created by a raw worker (its creator, kept so it stays connected).
async fn raw_channel(engine: &TestEngine) -> (RawClient, ChannelPair) {
    let mut w = RawClient::connect(&engine.url).await;
    let out = w.call("engine::channels::create", json!({})).await;
    let pair = serde_json::from_value(out["result"].clone()).expect("refs");
    (w, pair)
}

/// A channel created by a raw client, with both ends connected.
async fn connected_channel(engine: &TestEngine) -> (RawClient, ChannelReader, ChannelWriter) {
    let (creator, pair) = raw_channel(engine).await;
    let reader = ChannelReader::open(&engine.url, &pair.reader)
        .await
        .unwrap();
    let writer = ChannelWriter::open(&engine.url, &pair.writer)
        .await
        .unwrap();
    (creator, reader, writer)
}

async fn status_of(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

fn refused(r: Result<impl Sized, ChannelError>) -> u16 {
    match r {
        Err(ChannelError::Refused { status, .. }) => status,
        Err(e) => panic!("expected a refusal, got {e:?}"),
        Ok(_) => panic!("expected a refusal, got a socket"),
    }
}

#[tokio::test]
async fn refs_have_iii_field_names_and_a_key_per_end() {
    let engine = TestEngine::start().await;
    let mut w = RawClient::connect(&engine.url).await;
    let out = w
        .call("engine::channels::create", json!({"buffer_size": null}))
        .await;
    let (writer, reader) = (&out["result"]["writer"], &out["result"]["reader"]);
    assert_eq!(writer["direction"], "write", "{out}");
    assert_eq!(reader["direction"], "read");
    assert_eq!(writer["channel_id"], reader["channel_id"]);
    assert_ne!(writer["access_key"], reader["access_key"]);
    let bad = w
        .call("engine::channels::create", json!({"buffer_size": -1}))
        .await;
    assert_eq!(bad["error"]["code"], "INVALID_ARGUMENTS", "{bad}");
    // The SDK default (64) and iii's clamp (1024) show in the operator view.
    let id = writer["channel_id"].as_str().unwrap();
    let info = w
        .call("engine::channels::info", json!({"channel_id": id}))
        .await;
    assert_eq!(info["result"]["buffer_frames"], 64, "{info}");
    assert_eq!(info["result"]["writer"], "waiting");
    assert!(
        !info
            .to_string()
            .contains(writer["access_key"].as_str().unwrap())
    );
    let big = w
        .call("engine::channels::create", json!({"buffer_size": 100000}))
        .await;
    let big_id = big["result"]["reader"]["channel_id"].as_str().unwrap();
    let info = w
        .call("engine::channels::info", json!({"channel_id": big_id}))
        .await;
    assert_eq!(info["result"]["buffer_frames"], 1024, "{info}");
    let list = w.call("engine::channels::list", json!({})).await;
    assert_eq!(list["result"]["channels"].as_array().unwrap().len(), 2);
    engine.stop().await;
}

#[tokio::test]
async fn refusals_come_before_the_upgrade() {
    let engine = TestEngine::start().await;
    let (_creator, pair) = raw_channel(&engine).await;
    let url = &engine.url;
    let base = format!("{url}/ws/channels/{}", pair.writer.channel_id);
    // Unknown channel, and each end's key on the other end: 404.
    let unknown = format!("{url}/ws/channels/{}?key=x&dir=read", uuid::Uuid::new_v4());
    assert_eq!(status_of(&unknown).await, 404);
    let swapped = format!("{base}?key={}&dir=write", pair.reader.access_key);
    assert_eq!(status_of(&swapped).await, 404);
    assert_eq!(status_of(&format!("{base}?key=nope&dir=read")).await, 404);
    assert_eq!(status_of(&format!("{base}?key=x&dir=sideways")).await, 400);
    // One socket per end: the second gets 409, not a silent empty stream.
    let writer = ChannelWriter::open(url, &pair.writer).await.unwrap();
    assert_eq!(refused(ChannelWriter::open(url, &pair.writer).await), 409);
    let reader = ChannelReader::open(url, &pair.reader).await.unwrap();
    assert_eq!(refused(ChannelReader::open(url, &pair.reader).await), 409);
    writer.finish().await.unwrap();
    let mut reader = reader;
    assert_eq!(reader.next().await, Ok(None));
    // Finished channels are removed at once; a late connect learns why.
    wait_until("channel removed", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    assert_eq!(refused(ChannelReader::open(url, &pair.reader).await), 410);
    engine.stop().await;
}

#[tokio::test]
async fn text_and_chunks_keep_their_order_and_a_normal_close_ends_the_stream() {
    let engine = TestEngine::start().await;
    let (_creator, pair) = raw_channel(&engine).await;
    // The writer streams before the reader exists: the engine buffers.
    let mut writer = ChannelWriter::open(&engine.url, &pair.writer)
        .await
        .unwrap();
    for i in 0..20u8 {
        writer.write(&[i; 1000]).await.unwrap();
        writer.send_text(&format!("after {i}")).await.unwrap();
    }
    let finished = tokio::spawn(writer.finish());
    let mut reader = ChannelReader::open(&engine.url, &pair.reader)
        .await
        .unwrap();
    for i in 0..20u8 {
        match reader.next().await.unwrap() {
            Some(ChannelItem::Binary(b)) => assert_eq!(&b[..], &[i; 1000][..]),
            other => panic!("expected chunk {i}, got {other:?}"),
        }
        assert_eq!(
            reader.next().await.unwrap(),
            Some(ChannelItem::Text(format!("after {i}")))
        );
    }
    assert_eq!(reader.next().await, Ok(None), "close 1000 is the end");
    finished.await.unwrap().unwrap();
    wait_until("channel removed", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn a_writer_that_vanishes_is_a_distinct_close_not_an_end() {
    let engine = TestEngine::start().await;
    let (_creator, mut reader, mut writer) = connected_channel(&engine).await;
    writer.write(b"partial").await.unwrap();
    writer.abort(); // TCP closed with no close frame
    assert_eq!(
        reader.next().await.unwrap(),
        Some(ChannelItem::Binary("partial".into()))
    );
    assert_eq!(reader.next().await, Err(ChannelError::WriterAborted));
    wait_until("channel removed", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_closes_the_writer_with_1009_and_is_an_abort_for_the_reader() {
    let mut config = test_config();
    config.channels.max_frame_size = 64 << 10;
    config.channels.max_buffer_bytes = 256 << 10;
    let engine = TestEngine::start_with(config).await;
    let (_creator, mut reader, mut writer) = connected_channel(&engine).await;
    writer.send_frame(vec![1u8; 1000].into()).await.unwrap();
    let too_big = writer.send_frame(vec![2u8; (64 << 10) + 1].into()).await;
    // The engine's close may race the send; either way the writer learns it.
    let code = match too_big {
        Err(e) => e,
        Ok(()) => writer.finish().await.unwrap_err(),
    };
    assert_eq!(
        code,
        ChannelError::Closed {
            code: 1009,
            reason: "frame over channels.max_frame_size".into()
        }
    );
    assert!(matches!(reader.next().await, Ok(Some(ChannelItem::Binary(b))) if b.len() == 1000));
    assert_eq!(reader.next().await, Err(ChannelError::WriterAborted));
    engine.stop().await;
}

#[tokio::test]
async fn a_reader_that_leaves_is_told_to_the_writer() {
    let engine = TestEngine::start().await;
    let (_creator, pair) = raw_channel(&engine).await;
    let reader = ChannelReader::open(&engine.url, &pair.reader)
        .await
        .unwrap();
    // A raw writer, to see the engine's close code itself.
    let url = qmesh::protocol::channel::socket_url(&engine.url, &pair.writer);
    let (mut writer, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    reader.close().await;
    let close = tokio::time::timeout(common::WAIT, async {
        loop {
            match writer.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("expected a close, got {other:?}"),
            }
        }
    })
    .await
    .expect("the writer is told");
    assert_eq!(close, Some(4410));
    wait_until("channel removed", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn unconnected_channels_expire_and_a_waiting_end_is_told() {
    let mut config = test_config();
    config.channels.ttl = Duration::from_millis(300);
    let engine = TestEngine::start_with(config).await;
    let (_creator, idle) = raw_channel(&engine).await;
    let (_creator2, half) = raw_channel(&engine).await;
    // Only the reader of `half` ever connects: it is told, not left hanging.
    let mut reader = ChannelReader::open(&engine.url, &half.reader)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(common::WAIT, reader.next())
            .await
            .unwrap(),
        Err(ChannelError::Abandoned)
    );
    wait_until("both expired", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    assert_eq!(
        refused(ChannelWriter::open(&engine.url, &idle.writer).await),
        410
    );
    assert_eq!(
        refused(ChannelWriter::open(&engine.url, &half.writer).await),
        410
    );
    // A wrong key on an expired channel is still just 404.
    let mut wrong = idle.writer.clone();
    wrong.access_key = "guess".into();
    assert_eq!(refused(ChannelWriter::open(&engine.url, &wrong).await), 404);
    engine.stop().await;
}

#[tokio::test]
async fn a_departed_creators_unconnected_channels_go_with_it() {
    let engine = TestEngine::start().await;
    let (creator, unused) = raw_channel(&engine).await;
    let mut creator = creator;
    let out = creator.call("engine::channels::create", json!({})).await;
    let streaming: ChannelPair = serde_json::from_value(out["result"].clone()).unwrap();
    // One channel's writer has streamed everything: it must survive its creator.
    let mut writer = ChannelWriter::open(&engine.url, &streaming.writer)
        .await
        .unwrap();
    writer.write(b"kept").await.unwrap();
    writer.finish().await.unwrap();
    drop(creator);
    wait_until("the unused channel removed", WAIT, async || {
        engine.binary_channel_count() == 1
    })
    .await;
    assert_eq!(
        refused(ChannelReader::open(&engine.url, &unused.reader).await),
        410
    );
    let mut reader = ChannelReader::open(&engine.url, &streaming.reader)
        .await
        .unwrap();
    assert_eq!(reader.read_all().await.unwrap(), (b"kept".to_vec(), vec![]));
    engine.stop().await;
}

/// A channel end opened by hand, to send frames the crate's client never would.
struct RawEnd {
    rd: FrameReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl RawEnd {
    async fn open(engine: &TestEngine, r: &ChannelRef) -> RawEnd {
        let url = qmesh::protocol::channel::socket_url(&engine.url, r);
        let c = handshake::connect(&url).await.expect("upgrade");
        let (rd, wr) = c.stream.into_split();
        RawEnd {
            rd: FrameReader::with_buffered(rd, Role::Client, 1 << 20, c.buffered),
            wr,
        }
    }

    async fn send(&mut self, frames: &[Vec<u8>]) {
        use tokio::io::AsyncWriteExt;
        self.wr.write_all(&frames.concat()).await.expect("write");
    }

    async fn next(&mut self) -> Incoming {
        tokio::time::timeout(common::WAIT, self.rd.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
    }
}

/// A client frame, built by hand: `masked` as RFC 6455 requires, or not.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 | opcode } else { opcode }];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if !masked {
        out.extend(payload);
        return out;
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    out.extend(key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn close_with(code: u16) -> Vec<u8> {
    frame(true, 0x8, &code.to_be_bytes(), true)
}

fn close_code(msg: &Incoming) -> Option<u16> {
    match msg {
        Incoming::Close(f) => f.as_ref().map(|f| f.code),
        other => panic!("expected a close, got {other:?}"),
    }
}

/// RFC 6455 lets a client split a message into fragments, with control
/// frames between them. The SDKs send whole frames (Node's `ws.send` and
/// Python's `websockets.send` of a 64 KiB chunk are one frame each), but
/// any client may fragment: the reader gets each message whole, in order.
#[tokio::test]
async fn fragmented_messages_arrive_whole_and_pings_are_answered_on_both_ends() {
    let engine = TestEngine::start().await;
    let (_creator, pair) = raw_channel(&engine).await;
    let mut writer = RawEnd::open(&engine, &pair.writer).await;
    let mut reader = RawEnd::open(&engine, &pair.reader).await;
    reader.send(&[frame(true, 0x9, b"r", true)]).await;
    assert_eq!(reader.next().await, Incoming::Pong);
    writer
        .send(&[
            frame(false, 0x2, b"ab", true),
            frame(true, 0x9, b"w", true),
            frame(false, 0x0, b"cd", true),
            frame(true, 0x0, b"ef", true),
            frame(false, 0x1, "hé".as_bytes(), true),
            frame(true, 0x0, "llo".as_bytes(), true),
            close_with(1000),
        ])
        .await;
    assert_eq!(writer.next().await, Incoming::Pong);
    assert_eq!(
        close_code(&writer.next().await),
        Some(1000),
        "the close is answered"
    );
    assert_eq!(reader.next().await, Incoming::Binary("abcdef".into()));
    assert_eq!(reader.next().await, Incoming::Text("héllo".into()));
    assert_eq!(close_code(&reader.next().await), Some(1000));
    reader.send(&[close_with(1000)]).await;
    wait_until("channel removed", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    engine.stop().await;
}

/// A channel whose writer sends frames by hand, and an ordinary reader.
async fn hand_written_channel(engine: &TestEngine) -> (RawClient, RawEnd, ChannelReader) {
    let (creator, pair) = raw_channel(engine).await;
    let writer = RawEnd::open(engine, &pair.writer).await;
    let reader = ChannelReader::open(&engine.url, &pair.reader)
        .await
        .unwrap();
    (creator, writer, reader)
}

/// A client frame must be masked; one that is not is a protocol error
/// (1002), and for the reader an abort, not an end.
#[tokio::test]
async fn an_unmasked_frame_closes_the_writer_with_1002() {
    let engine = TestEngine::start().await;
    let (_creator, mut writer, mut reader) = hand_written_channel(&engine).await;
    writer
        .send(&[
            frame(true, 0x2, b"kept", true),
            frame(true, 0x2, b"bare", false),
        ])
        .await;
    assert_eq!(close_code(&writer.next().await), Some(1002));
    assert_eq!(
        reader.next().await,
        Ok(Some(ChannelItem::Binary("kept".into())))
    );
    assert_eq!(reader.next().await, Err(ChannelError::WriterAborted));
    engine.stop().await;
}

/// A length header over `channels.max_frame_size` is refused from the header
/// alone: close 1009 comes before any of the claimed terabyte is sent, and
/// the engine holds none of it.
#[tokio::test]
async fn a_frame_length_over_the_limit_is_refused_from_its_header() {
    let engine = TestEngine::start().await;
    let (_creator, mut writer, mut reader) = hand_written_channel(&engine).await;
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend((1u64 << 40).to_be_bytes());
    huge.extend([1, 2, 3, 4]);
    writer.send(&[huge]).await;
    let closed = writer.next().await;
    assert_eq!(
        closed,
        Incoming::Close(Some(CloseFrame {
            code: 1009,
            reason: "frame over channels.max_frame_size".into()
        }))
    );
    assert_eq!(reader.next().await, Err(ChannelError::WriterAborted));
    engine.stop().await;
}

/// A reader far slower than its writer: the engine stops reading the writer,
/// so what it holds stays within `max_buffer_bytes` for the whole 1 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_keeps_engine_memory_flat_while_a_writer_pushes_a_gib() {
    const TOTAL: usize = 1 << 30;
    const FRAME: usize = 64 << 10;
    const BUDGET: usize = 1 << 20;
    const READER_PAUSE: Duration = Duration::from_micros(200);
    let mut config = test_config();
    config.channels.max_buffer_bytes = BUDGET;
    config.channels.max_frame_size = FRAME;
    let engine = TestEngine::start_with(config).await;
    let client = Client::connect(&engine.url).await.unwrap();
    let pair = client.create_channel(Some(1024)).await.unwrap();
    let id = pair.writer.channel_id.clone();
    let mut writer = client.open_writer(&pair.writer).await.unwrap();
    let mut reader = client.open_reader(&pair.reader).await.unwrap();
    let push = tokio::spawn(async move {
        let frame = axum::body::Bytes::from(vec![0xA5u8; FRAME]);
        for _ in 0..TOTAL / FRAME {
            writer.send_frame(frame.clone()).await.unwrap();
        }
        writer.finish().await.unwrap();
    });
    let (mut read, mut frames, mut peak_seen) = (0usize, 0usize, 0u64);
    while let Some(item) = reader.next().await.unwrap() {
        let ChannelItem::Binary(b) = item else {
            panic!("only chunks were sent")
        };
        read += b.len();
        frames += 1;
        // Slow: a pause every 256 KiB lets the writer fill the buffer each time
        // (the reader's slowness is the scenario, not a settle).
        if frames % 4 == 0 {
            tokio::time::sleep(READER_PAUSE).await;
            let info = client
                .call("engine::channels::info", json!({ "channel_id": id }))
                .await;
            if let Ok(info) = info {
                let held = info["buffered_bytes"].as_u64().expect("buffered_bytes");
                assert!(held <= BUDGET as u64, "{info}");
                peak_seen = peak_seen.max(held);
            }
        }
    }
    push.await.unwrap();
    assert_eq!(read, TOTAL);
    // The budget was reached (the writer really was held back), never passed.
    assert!(
        peak_seen >= (BUDGET - FRAME) as u64,
        "peak seen {peak_seen}"
    );
    engine.stop().await;
}

/// One SDK creates a channel and streams 100 MiB with a text message after
/// every MiB to a function of the other SDK, which checks the digest and the
/// place of every message in the stream.
async fn stream_across_sdks(sender: (&str, &str), sink: (&str, &str), sink_fn: &'static str) {
    const MIB: usize = 100;
    let engine = TestEngine::start().await;
    let mut worker = Program::start(sink.0, sink.1, &[], &engine.url);
    worker.ready().await;
    wait_until("the sink function", WAIT, async || {
        !engine.providers(sink_fn).is_empty()
    })
    .await;
    let mut send = Program::start(
        sender.0,
        sender.1,
        &[sink_fn, &MIB.to_string()],
        &engine.url,
    );
    let out = send
        .expect_json("the stream's report", |v| v.get("received").is_some())
        .await;
    let received = &out["received"];
    assert_eq!(out["sent_bytes"], json!(MIB << 20), "{out}");
    assert_eq!(received["bytes"], out["sent_bytes"], "{out}");
    assert_eq!(received["sha256"], out["sent_sha256"], "{out}");
    let in_order: Vec<Value> = (0..MIB).map(|i| json!(i)).collect();
    assert_eq!(received["seqs"], Value::Array(in_order), "{out}");
    assert_eq!(received["misplaced"], 0, "{out}");
    assert_eq!(send.finish().await.0, 0);
    wait_until("the channel removed once done", WAIT, async || {
        engine.binary_channel_count() == 0
    })
    .await;
    assert_eq!(worker.finish().await.0, 0);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_streams_100_mib_and_messages_to_python() {
    stream_across_sdks(
        ("node", "channel_send.mjs"),
        ("python", "channel_sink.py"),
        "py::channel_sink",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_streams_100_mib_and_messages_to_node() {
    stream_across_sdks(
        ("python", "channel_send.py"),
        ("node", "channel_sink.mjs"),
        "node::channel_sink",
    )
    .await;
}

/// Captures the engine's log lines (the test runs on one thread, so a
/// thread-local subscriber sees everything the engine logs).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn enqueued_refs_are_warned_about_and_keys_never_reach_the_log() {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let engine = TestEngine::start().await;
    let (mut creator, pair) = raw_channel(&engine).await;
    // A refused connect with a guessed key, then a whole stream.
    let mut guess = pair.writer.clone();
    guess.access_key = "guessed-key-0123".into();
    assert_eq!(refused(ChannelWriter::open(&engine.url, &guess).await), 404);
    let mut writer = ChannelWriter::open(&engine.url, &pair.writer)
        .await
        .unwrap();
    let mut reader = ChannelReader::open(&engine.url, &pair.reader)
        .await
        .unwrap();
    writer.send_text("hello").await.unwrap();
    writer.finish().await.unwrap();
    assert_eq!(reader.read_all().await.unwrap().1, vec!["hello".to_owned()]);
    // The job is accepted (a warning, not a refusal), and the log says why it is risky.
    let id = uuid::Uuid::new_v4().to_string();
    creator
        .send(
            json!({"type":"invokefunction","invocation_id":id,"function_id":"files::ingest",
            "data":{"file": pair.reader},"action":{"type":"enqueue","queue":"files"}}),
        )
        .await;
    let answer = creator
        .recv_until("receipt", |v| v["invocation_id"] == id.as_str())
        .await;
    assert!(answer["result"]["messageReceiptId"].is_string(), "{answer}");
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("channel ref was enqueued"))
        .unwrap_or_else(|| panic!("no warning in:\n{text}"));
    assert!(
        warning.contains("WARN") && warning.contains(&pair.reader.channel_id),
        "{warning}"
    );
    assert!(text.contains("channel connect refused"), "{text}");
    for key in [
        &pair.writer.access_key,
        &pair.reader.access_key,
        &guess.access_key,
    ] {
        assert!(
            !text.contains(key.as_str()),
            "a key reached the log:\n{text}"
        );
    }
    engine.stop().await;
}

/// The published Rust SDK's channel helpers: its writer ends with a close that
/// carries no code, which must be a clean end (not 4499), and its reader
/// reads what the crate's own writer sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_writes_and_reads_channels() {
    let engine = TestEngine::start().await;
    let sdk = common::sdk::sdk_worker(&engine.url, "rust-channels");
    let channel = iii_sdk::helpers::create_channel(&sdk, None)
        .await
        .expect("create through the SDK");
    let as_ours = |r: &iii_sdk::channel::StreamChannelRef| -> qmesh::client::channel::ChannelRef {
        serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap()
    };
    let mut reader = ChannelReader::open(&engine.url, &as_ours(&channel.reader_ref))
        .await
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    channel.writer.write(&data).await.unwrap();
    channel.writer.send_message("done").await.unwrap();
    channel.writer.close().await.unwrap();
    assert_eq!(reader.read_all().await, Ok((data, vec!["done".to_owned()])));

    let other = iii_sdk::helpers::create_channel(&sdk, Some(4))
        .await
        .unwrap();
    let mut writer = ChannelWriter::open(&engine.url, &as_ours(&other.writer_ref))
        .await
        .unwrap();
    writer.write(b"to the sdk").await.unwrap();
    writer.finish().await.unwrap();
    assert_eq!(
        other.reader.read_all().await.unwrap(),
        b"to the sdk".to_vec()
    );
    common::sdk::stop(sdk).await;
    engine.stop().await;
}

#[tokio::test]
async fn engine_shutdown_closes_open_ends_with_1001() {
    let engine = TestEngine::start().await;
    let (_creator, mut reader, mut writer) = connected_channel(&engine).await;
    writer.write(b"before").await.unwrap();
    assert!(matches!(
        reader.next().await,
        Ok(Some(ChannelItem::Binary(_)))
    ));
    engine.stop().await;
    let closed = tokio::time::timeout(common::WAIT, reader.next())
        .await
        .expect("the reader is told");
    assert!(
        matches!(&closed, Err(ChannelError::Closed { code: 1001, .. })),
        "{closed:?}"
    );
}
