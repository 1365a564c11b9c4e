//! Shared by the benchmarks: the real engine binary as a child process (the
//! launcher in `tests/common/launcher.rs`), and facts about the machine for
//! the report.
#![allow(dead_code)]

use hdrhistogram::Histogram;
use qmesh::client::Client;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The engine binary as a child process: the same launcher the tests use.
#[path = "../../tests/common/launcher.rs"]
mod launcher;
#[allow(dead_code)]
#[path = "../../tests/common/nats.rs"]
pub mod nats;
pub mod queue;
#[path = "../../tests/common/wait.rs"]
pub mod wait;
pub use launcher::EngineProcess;

/// Resident set size of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds a process (`"self"` or a pid) has used, from
/// `/proc/<pid>/stat`: utime and stime are the 12th and 13th fields after the
/// command name, in clock ticks of 10 ms.
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Waits until the kernel has written back every dirty page (`sync`): a
/// previous run's hundreds of MB of store files would otherwise be written
/// back, and their fsyncs slowed, during the next measurement.
pub fn settle_disk() {
    let _ = Command::new("sync").status();
}

/// Bytes under a directory.
pub fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// CPU count and model, memory: printed with every report.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": model,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
    })
}

/// Whether `--flag` was given after `--`.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The number after `--name`, or `default`.
pub fn number(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs a number"))
        })
        .unwrap_or(default)
}

/// The closed-loop benches' options: `--quick` (1 s phases), `--duration`
/// (seconds per phase, default 5), `--callers` (64), `--conns` (4).
pub struct LoadOptions {
    pub quick: bool,
    pub secs: f64,
    pub duration: Duration,
    pub callers: usize,
    pub conns: usize,
}

impl LoadOptions {
    pub fn parse() -> Self {
        let quick = flag("--quick");
        let secs = number("--duration", if quick { 1.0 } else { 5.0 });
        Self {
            quick,
            secs,
            duration: Duration::from_secs_f64(secs),
            callers: number("--callers", 64.0) as usize,
            conns: number("--conns", 4.0) as usize,
        }
    }
}

/// Prints a bench's report: one JSON line with `--json`, else indented.
pub fn print_report(report: &Value) {
    if flag("--json") {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(report).unwrap());
    }
}

/// What a closed-loop phase did: operations, seconds, latencies in µs.
pub struct Phase {
    pub ops: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
}

impl Phase {
    pub fn per_sec(&self) -> f64 {
        (self.ops as f64 / self.secs).round()
    }

    /// A latency quantile, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `callers` closed loops over `clients` for `duration`, each calling
/// `op(n)` (n = the caller's index, then stepping by `callers`) and waiting
/// for its answer. Latencies are recorded in microseconds, up to 60 s.
pub async fn closed_loop(
    clients: &[Client],
    callers: usize,
    duration: Duration,
    op: impl Fn(u64) -> (&'static str, Value) + Send + Sync + Clone + 'static,
) -> Phase {
    let end = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let client = clients[c % clients.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut n = c as u64;
            let mut ops = 0;
            while Instant::now() < end {
                let (f, input) = op(n);
                let t = Instant::now();
                client
                    .call(f, input)
                    .await
                    .unwrap_or_else(|e| panic!("call {f}: {e:?}"));
                hist.record(t.elapsed().as_micros() as u64).ok();
                n += callers as u64;
                ops += 1;
            }
            (ops, hist)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut ops = 0;
    for t in tasks {
        let (n, h) = t.await.expect("caller");
        ops += n;
        all.add(h).unwrap();
    }
    Phase {
        ops,
        secs: started.elapsed().as_secs_f64(),
        hist: all,
    }
}
