//! Binary channel benchmark, against the real engine binary.
//!
//! 1. throughput: one channel, then 8 channels at once, each writer sending
//!    64 KiB frames as fast as the engine takes them and each reader counting
//!    what arrives → bytes/s from the first frame to the last byte read;
//!    The same bytes over one direct loopback WebSocket (no engine) are the
//!    baseline: what this machine's loopback and WebSocket framing allow;
//! 2. added latency: one frame at a time (64 KiB, and 64 B) from a writer to a
//!    reader through a channel, against the same frames over one direct
//!    loopback WebSocket (a server in this process) → what the engine's hop
//!    adds per frame (difference of the medians).
//!
//! ```text
//! cargo bench --bench channels               # full run (~1 min)
//! cargo bench --bench channels -- --quick    # smoke run (~10 s)
//! cargo bench --bench channels -- --json     # one JSON object on stdout
//! cargo bench --bench channels -- --runs 5 --mib 1024 --frames 5000
//! ```
//! Throughput figures are the median of `--runs` (3) runs. Each throughput
//! phase also reports the CPU seconds the engine and this process (the load
//! generator) spent per GB moved: unlike the rates, these hold on a machine
//! shared with other work, and 2 cores / (total CPU s per GB) estimates the
//! rate of a quiet 2-core machine. Targets are printed for reference and
//! never asserted.

mod common;

use axum::body::Bytes;
use common::{EngineProcess, cpu_secs, flag, machine, number, rss_kib};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use qmesh::client::Client;
use qmesh::client::channel::{ChannelItem, ChannelReader, ChannelWriter};
use qmesh::loadgen::channel::open_pair;
use serde_json::{Value, json};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const FRAME: usize = 64 << 10;
const TARGET_AGGREGATE_GB_PER_SEC: f64 = 1.0;

/// An open channel: its writer and reader (as `qmesh bench channel` opens them).
async fn open_channel(client: &Client) -> (ChannelWriter, ChannelReader) {
    open_pair(client).await.expect("open a channel")
}

/// `channels` channels at once, `bytes` through each; returns bytes/s overall.
async fn throughput(client: &Client, channels: usize, bytes: usize) -> f64 {
    let mut ends = Vec::new();
    for _ in 0..channels {
        ends.push(open_channel(client).await);
    }
    let frames = bytes / FRAME;
    let frame = Bytes::from(vec![0x5Au8; FRAME]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut writer, mut reader) in ends {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..frames {
                writer.send_frame(frame.clone()).await.expect("write");
            }
            writer.finish().await.expect("finish");
        }));
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while let Some(item) = reader.next().await.expect("read") {
                if let ChannelItem::Binary(b) = item {
                    got += b.len();
                }
            }
            assert_eq!(got, frames * FRAME, "every byte arrives");
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
    (channels * frames * FRAME) as f64 / started.elapsed().as_secs_f64()
}

/// The same streams over direct loopback WebSockets (a server in this
/// process reads them): what the machine does without the engine's hop.
async fn direct_throughput(streams: usize, bytes: usize) -> f64 {
    use futures_util::SinkExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frames = bytes / FRAME;
    let frame = Bytes::from(vec![0x5Au8; FRAME]);
    let mut pairs = Vec::new();
    for _ in 0..streams {
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(tcp).await.unwrap()
        };
        let connect = tokio_tungstenite::connect_async(format!("ws://{addr}"));
        let (server, connected) = tokio::join!(accept, connect);
        pairs.push((connected.unwrap().0, server));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut writer, mut reader) in pairs {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..frames {
                writer.send(Message::Binary(frame.clone())).await.unwrap();
            }
            writer.close(None).await.unwrap();
        }));
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while let Some(Ok(Message::Binary(b))) = reader.next().await {
                got += b.len();
            }
            assert_eq!(got, frames * FRAME);
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
    (streams * frames * FRAME) as f64 / started.elapsed().as_secs_f64()
}

/// One frame of `size` at a time through a channel: send → received, in µs.
async fn channel_latency(client: &Client, size: usize, frames: usize) -> Histogram<u64> {
    let (mut writer, mut reader) = open_channel(client).await;
    let frame = Bytes::from(vec![1u8; size]);
    let mut h = Histogram::new(3).unwrap();
    for i in 0..frames + frames / 10 {
        let sent = Instant::now();
        writer.send_frame(frame.clone()).await.expect("write");
        reader.next().await.expect("read").expect("a frame");
        if i >= frames / 10 {
            h.record(sent.elapsed().as_micros() as u64).unwrap();
        }
    }
    writer.finish().await.expect("finish");
    h
}

/// The same over one direct loopback WebSocket: the baseline without the engine.
async fn direct_latency(size: usize, frames: usize) -> Histogram<u64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let (mut writer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}"))
        .await
        .unwrap();
    let mut reader = server.await.unwrap();
    let frame = Bytes::from(vec![1u8; size]);
    let mut h = Histogram::new(3).unwrap();
    use futures_util::SinkExt;
    for i in 0..frames + frames / 10 {
        let sent = Instant::now();
        writer.send(Message::Binary(frame.clone())).await.unwrap();
        reader.next().await.unwrap().unwrap();
        if i >= frames / 10 {
            h.record(sent.elapsed().as_micros() as u64).unwrap();
        }
    }
    h
}

fn latency_report(size: usize, via: &Histogram<u64>, direct: &Histogram<u64>) -> Value {
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    json!({
        "frame_bytes": size,
        "channel_p50_us": q(via, 0.5), "channel_p99_us": q(via, 0.99),
        "direct_p50_us": q(direct, 0.5), "direct_p99_us": q(direct, 0.99),
        "engine_added_p50_us": q(via, 0.5) as i64 - q(direct, 0.5) as i64,
    })
}

/// CPU seconds spent while a phase ran: by the engine process, and by this
/// process (the load generator: writers masking, readers counting).
#[derive(Clone, Copy, Default)]
struct Cpu {
    engine: f64,
    client: f64,
    wall: f64,
}

/// Runs `phase`, returning its result and the CPU both processes used meanwhile.
async fn with_cpu<T>(engine_pid: u32, phase: impl std::future::Future<Output = T>) -> (T, Cpu) {
    let pid = engine_pid.to_string();
    let (e0, s0, t0) = (cpu_secs(&pid), cpu_secs("self"), Instant::now());
    let out = phase.await;
    let cpu = Cpu {
        engine: cpu_secs(&pid) - e0,
        client: cpu_secs("self") - s0,
        wall: t0.elapsed().as_secs_f64(),
    };
    (out, cpu)
}

/// CPU seconds per GB moved, summed over runs: the cost per byte, which the
/// other work on a shared machine does not change (wall-clock rates it does).
/// `estimated_gb_per_sec_on_2_cores` is what two cores give when the engine
/// and the load generator have them to themselves and are CPU-bound.
fn cpu_report(cpus: &[Cpu], bytes_per_run: usize) -> Value {
    let gb = (cpus.len() * bytes_per_run) as f64 / 1e9;
    let sum = |f: fn(&Cpu) -> f64| cpus.iter().map(f).sum::<f64>();
    let (engine, client, wall) = (sum(|c| c.engine), sum(|c| c.client), sum(|c| c.wall));
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "engine_cpu_s_per_gb": round(engine / gb),
        "load_generator_cpu_s_per_gb": round(client / gb),
        "total_cpu_s_per_gb": round((engine + client) / gb),
        "engine_cores": round(engine / wall),
        "load_generator_cores": round(client / wall),
        "estimated_gb_per_sec_on_2_cores": round(2.0 * gb / (engine + client)),
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn gb(bytes_per_sec: f64) -> f64 {
    (bytes_per_sec / 1e7).round() / 100.0
}

fn main() {
    let quick = flag("--quick");
    let runs = number("--runs", if quick { 1.0 } else { 3.0 }).max(1.0) as usize;
    let mib = number("--mib", if quick { 256.0 } else { 2048.0 }) as usize;
    let frames = number("--frames", if quick { 500.0 } else { 5000.0 }) as usize;
    // Two client threads: writers mask every byte, as WebSocket clients must.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(async {
        let engine = EngineProcess::start();
        let client = Client::connect(&engine.url).await.expect("connect");
        let (mut one, mut eight, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        let (mut one_cpu, mut eight_cpu, mut direct_cpu) = (Vec::new(), Vec::new(), Vec::new());
        let pid = engine.pid();
        for _ in 0..runs {
            let (rate, cpu) = with_cpu(pid, throughput(&client, 1, mib << 20)).await;
            one.push(rate);
            one_cpu.push(cpu);
            let (rate, cpu) = with_cpu(pid, throughput(&client, 8, (mib << 20) / 8)).await;
            eight.push(rate);
            eight_cpu.push(cpu);
            let (rate, cpu) = with_cpu(pid, direct_throughput(1, mib << 20)).await;
            direct.push(rate);
            direct_cpu.push(cpu);
        }
        let rss_after_kib = rss_kib(engine.pid());
        let mut latency = Vec::new();
        for size in [FRAME, 64] {
            let via = channel_latency(&client, size, frames).await;
            let direct = direct_latency(size, frames).await;
            latency.push(latency_report(size, &via, &direct));
        }
        json!({
            "machine": machine(),
            "frame_bytes": FRAME,
            "runs": runs,
            "mib_per_run": mib,
            "one_channel_gb_per_sec": gb(median(one.clone())),
            "eight_channels_gb_per_sec": gb(median(eight.clone())),
            "one_channel_runs": one.into_iter().map(gb).collect::<Vec<_>>(),
            "eight_channels_runs": eight.iter().copied().map(gb).collect::<Vec<_>>(),
            "direct_websocket_gb_per_sec": gb(median(direct)),
            "eight_channels_cpu": cpu_report(&eight_cpu, mib << 20),
            "one_channel_cpu": cpu_report(&one_cpu, mib << 20),
            "direct_websocket_cpu_s_per_gb": cpu_report(&direct_cpu, mib << 20)["load_generator_cpu_s_per_gb"],
            "engine_rss_after_mib": rss_after_kib / 1024,
            "latency": latency,
            "targets": { "aggregate_gb_per_sec": TARGET_AGGREGATE_GB_PER_SEC },
        })
    });
    if flag("--json") {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
    }
}
