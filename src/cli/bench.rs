//! `qmesh bench invoke|enqueue|e2e|channel`: load an engine from N client
//! connections with M operations in flight each (channel: N binary channels
//! with M frames in flight each), show progress, and report throughput and
//! latency percentiles. The load itself is `qmesh::loadgen`.

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use qmesh::client::{Client, ClientOptions};
use qmesh::loadgen::channel::{self, ChannelLoad, SetupError};
use qmesh::loadgen::{self, Limit, Outcome, Progress, Report, RunShape, workload};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::CliError;
use super::output::{emit, pairs};
use super::remote::Remote;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Sync calls to an echo function (served by the bench unless --function).
    Invoke,
    /// Durable enqueues, timed to the acknowledgement (jobs are not run; the bench's queue is purged after).
    Enqueue,
    /// Enqueue → the job starting on the bench's own worker; each slot waits for its job.
    E2e,
    /// Binary frames through N channels (a writer and a reader each), timed from send to receipt.
    Channel,
}

/// Default `--size` of the JSON workloads, and of a channel frame (the SDKs' chunk).
const DEFAULT_PAYLOAD: usize = 64;
const DEFAULT_FRAME: usize = 64 << 10;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(value_enum)]
    workload: Workload,
    /// Client connections sending load (channel: channels, each with a writer and a reader).
    #[arg(long, short = 'c', default_value_t = 4)]
    clients: usize,
    /// Operations outstanding per connection (channel: frames sent and not yet received, per channel).
    #[arg(long, short = 'p', default_value_t = 16)]
    in_flight: usize,
    /// Payload bytes: JSON text (default 64); channel: each binary frame (default 65536, at least 16).
    #[arg(long, short = 's', visible_alias = "frame-size")]
    size: Option<usize>,
    /// Run for this long (default 10s).
    #[arg(long, short = 'd', value_parser = humantime::parse_duration, conflicts_with = "count")]
    duration: Option<Duration>,
    /// Run this many operations instead (channel: frames over all channels).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// invoke: call this function instead of the bench's echo (its worker must be running).
    #[arg(long)]
    function: Option<String>,
    /// enqueue, e2e: the queue (default qmesh-bench-enqueue / qmesh-bench-e2e).
    #[arg(long)]
    queue: Option<String>,
    /// Threads of the load generator (default: half the CPUs, at least 1).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    remote: Remote,
}

impl BenchArgs {
    fn validate(&self) -> Result<Limit, CliError> {
        if self.clients == 0 || self.in_flight == 0 || self.threads == Some(0) {
            return Err(CliError::usage(
                "--clients, --in-flight and --threads must be at least 1",
            ));
        }
        if self.function.is_some() && self.workload != Workload::Invoke {
            return Err(CliError::usage(
                "--function applies to the invoke workload only",
            ));
        }
        if self.queue.is_some() && matches!(self.workload, Workload::Invoke | Workload::Channel) {
            return Err(CliError::usage(
                "--queue applies to the enqueue and e2e workloads only",
            ));
        }
        if self.queue.as_deref() == Some("") || self.function.as_deref() == Some("") {
            return Err(CliError::usage("--queue and --function cannot be empty"));
        }
        if self.workload == Workload::Channel && self.size() < channel::HEADER {
            return Err(CliError::usage(format!(
                "--size of a channel frame must be at least {} bytes (its sequence number and send time)",
                channel::HEADER
            )));
        }
        match (self.count, self.duration) {
            (Some(0), _) => Err(CliError::usage("--count must be at least 1")),
            (Some(n), _) => Ok(Limit::Count(n)),
            (None, Some(d)) if d.is_zero() => {
                Err(CliError::usage("--duration must be more than 0"))
            }
            (None, d) => Ok(Limit::Duration(d.unwrap_or(Duration::from_secs(10)))),
        }
    }

    /// `--size`, or the workload's default.
    fn size(&self) -> usize {
        self.size.unwrap_or(match self.workload {
            Workload::Channel => DEFAULT_FRAME,
            _ => DEFAULT_PAYLOAD,
        })
    }

    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        })
    }
}

pub fn bench(args: BenchArgs) -> ExitCode {
    let json = args.remote.json;
    let limit = match args.validate() {
        Ok(l) => l,
        Err(e) => return e.report(json),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads())
        .enable_all()
        .build();
    let outcome = match runtime {
        Ok(rt) => rt.block_on(run(&args, limit)),
        Err(e) => Err(CliError::Failed(format!("cannot start the runtime: {e}"))),
    };
    let report = match outcome {
        Ok(r) => r,
        Err(e) => return e.report(json),
    };
    emit(json, &json!(report), || report_text(&report));
    if report.errors == 0 {
        return ExitCode::SUCCESS;
    }
    // The report (with `errors` and `first_error`) is the whole JSON answer.
    let unit = if report.bytes.is_some() {
        "frames"
    } else {
        "operations"
    };
    let e = CliError::Failed(format!(
        "{} {unit} failed; first: {}",
        report.errors,
        report.first_error.as_deref().unwrap_or("?")
    ));
    if !json {
        eprintln!("qmesh: {e}");
    }
    ExitCode::from(e.exit_code())
}

/// Connects, sets the workload up, runs it, and tears it down.
async fn run(args: &BenchArgs, limit: Limit) -> Result<Report, CliError> {
    let url = args.remote.engine_url()?;
    let options = args.remote.options();
    if args.workload == Workload::Channel {
        return channels(args, &url, options, limit).await;
    }
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(Client::connect_with(&url, options.clone()).await?);
    }
    let progress = Arc::new(Progress::default());
    let (outcome, target) = match args.workload {
        Workload::Invoke => invoke(args, &url, &options, &clients, limit, progress).await?,
        Workload::Enqueue => enqueue(args, &clients, limit, progress).await?,
        Workload::E2e => e2e(args, &url, &options, &clients, limit, progress).await?,
        Workload::Channel => unreachable!("handled above"),
    };
    for c in &clients {
        c.close().await;
    }
    let shape = RunShape {
        workload: format!("{:?}", args.workload).to_lowercase(),
        target,
        clients: args.clients,
        in_flight: args.in_flight,
        payload_bytes: workload::numbered(0, args.size()).to_string().len(),
    };
    Ok(Report::new(shape, &outcome))
}

/// The channel workload: one control connection creates the channels; each
/// channel then has its own writer and reader connection.
async fn channels(
    args: &BenchArgs,
    url: &str,
    options: ClientOptions,
    limit: Limit,
) -> Result<Report, CliError> {
    let client = Client::connect_with(url, options).await?;
    let load = ChannelLoad {
        channels: args.clients,
        in_flight: args.in_flight,
        frame_size: args.size(),
        limit,
        stall: args.remote.timeout,
    };
    let progress = Arc::new(Progress::default());
    let run = channel::run(&client, load, progress.clone());
    let outcome = with_progress(limit, "frames", progress, run).await;
    client.close().await;
    let outcome = outcome.map_err(|e| match e {
        SetupError::Create(e) => CliError::from(e),
        e @ SetupError::Open(_) => CliError::Failed(e.to_string()),
    })?;
    let shape = RunShape {
        workload: "channel".into(),
        target: "writer → engine → reader".into(),
        clients: args.clients,
        in_flight: args.in_flight,
        payload_bytes: args.size(),
    };
    let elapsed = outcome.outcome.elapsed;
    Ok(Report::new(shape, &outcome.outcome).with_bytes(outcome.bytes, elapsed))
}

async fn invoke(
    args: &BenchArgs,
    url: &str,
    options: &ClientOptions,
    clients: &[Client],
    limit: Limit,
    progress: Arc<Progress>,
) -> Result<(Outcome, String), CliError> {
    let worker = match &args.function {
        Some(_) => None,
        None => Some(workload::echo_worker(url, options.clone()).await?),
    };
    let function = args
        .function
        .clone()
        .unwrap_or_else(|| workload::ECHO.to_owned());
    // Fails with the engine's not_found when nobody provides the function.
    let probe = json!({ "function_id": function });
    if worker.is_some() {
        clients[0]
            .wait_for_function(&function, args.remote.timeout)
            .await?;
    } else {
        clients[0].call("engine::functions::info", probe).await?;
    }
    let size = args.size();
    let f = function.clone();
    let op = move |c: Client, seq: u64| {
        let f = f.clone();
        async move { workload::invoke(&c, &f, workload::numbered(seq, size)).await }
    };
    let outcome = with_progress(
        limit,
        "ops",
        progress.clone(),
        loadgen::drive(clients, args.in_flight, limit, progress, op),
    )
    .await;
    if let Some(w) = worker {
        w.close().await;
    }
    Ok((outcome, function))
}

async fn enqueue(
    args: &BenchArgs,
    clients: &[Client],
    limit: Limit,
    progress: Arc<Progress>,
) -> Result<(Outcome, String), CliError> {
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| workload::ENQUEUE_QUEUE.to_owned());
    let size = args.size();
    let q = queue.clone();
    let op = move |c: Client, seq: u64| {
        let q = q.clone();
        async move { workload::enqueue(&c, &q, workload::SINK, workload::numbered(seq, size)).await }
    };
    let outcome = with_progress(
        limit,
        "ops",
        progress.clone(),
        loadgen::drive(clients, args.in_flight, limit, progress, op),
    )
    .await;
    // The jobs wait for a function nobody serves; clear them from the bench's own queue.
    if args.queue.is_none() && outcome.ok > 0 {
        clients[0]
            .call("queue::purge", json!({ "queue": queue }))
            .await?;
    }
    Ok((outcome, format!("{queue} → {}", workload::SINK)))
}

async fn e2e(
    args: &BenchArgs,
    url: &str,
    options: &ClientOptions,
    clients: &[Client],
    limit: Limit,
    progress: Arc<Progress>,
) -> Result<(Outcome, String), CliError> {
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| workload::E2E_QUEUE.to_owned());
    let tracker = workload::Tracker::new();
    let worker = tracker.worker(url, options.clone()).await?;
    clients[0]
        .wait_for_function(tracker.function_id(), args.remote.timeout)
        .await?;
    let (size, timeout) = (args.size(), args.remote.timeout);
    let (q, t) = (queue.clone(), tracker.clone());
    let op = move |c: Client, seq: u64| {
        let (q, t) = (q.clone(), t.clone());
        async move { t.enqueue_and_wait(&c, &q, seq, size, timeout).await }
    };
    let outcome = with_progress(
        limit,
        "ops",
        progress.clone(),
        loadgen::drive(clients, args.in_flight, limit, progress, op),
    )
    .await;
    worker.close().await;
    Ok((outcome, format!("{queue} → {}", tracker.function_id())))
}

/// Draws a progress bar on stderr (when it is a terminal) while `run` goes
/// on; `unit` names what `progress` counts.
async fn with_progress<T, F: Future<Output = T>>(
    limit: Limit,
    unit: &str,
    progress: Arc<Progress>,
    run: F,
) -> T {
    let (len, by_time) = match limit {
        Limit::Count(n) => (n, false),
        Limit::Duration(d) => (d.as_millis() as u64, true),
    };
    let bar = ProgressBar::new(len);
    if let Limit::Duration(d) = limit {
        bar.set_prefix(humantime::format_duration(d).to_string());
    }
    let template = if by_time {
        "{spinner} [{bar:40}] {elapsed} of {prefix}  {msg}".to_owned()
    } else {
        format!("{{spinner}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{msg}}")
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let started = Instant::now();
    let ticker = {
        let bar = bar.clone();
        let unit = unit.to_owned();
        tokio::spawn(async move {
            loop {
                let (done, errors) = (progress.done(), progress.errors());
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                if by_time {
                    bar.set_position(started.elapsed().as_millis() as u64);
                    bar.set_message(format!("{done} {unit}, {rate:.0}/s, {errors} errors"));
                } else {
                    bar.set_position(done);
                    bar.set_message(format!("{rate:.0}/s, {errors} errors"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let outcome = run.await;
    ticker.abort();
    bar.finish_and_clear();
    outcome
}

fn report_text(r: &Report) -> String {
    let s = &r.shape;
    let l = &r.latency_ms;
    let (load, count, throughput) = match (r.bytes, r.mb_per_sec) {
        (Some(bytes), Some(mb)) => (
            format!(
                "{} channels × {} frames in flight, {}-byte frames",
                s.clients, s.in_flight, s.payload_bytes
            ),
            (
                "frames",
                format!("{} ok ({bytes} bytes verified), {} failed", r.ops, r.errors),
            ),
            format!(
                "{:.0} frames/s, {mb:.2} MB/s (MB = 10^6 bytes)",
                r.throughput_per_sec
            ),
        ),
        _ => (
            format!(
                "{} clients × {} in flight, {}-byte payloads",
                s.clients, s.in_flight, s.payload_bytes
            ),
            ("ops", format!("{} ok, {} failed", r.ops, r.errors)),
            format!("{:.0} ops/s", r.throughput_per_sec),
        ),
    };
    pairs(&[
        ("workload", format!("{} → {}", s.workload, s.target)),
        ("load", load),
        ("elapsed", format!("{:.2} s", r.elapsed_secs)),
        count,
        ("throughput", throughput),
        (
            "latency ms",
            format!(
                "min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
                l.min, l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .b
    }

    #[test]
    fn limits_default_to_ten_seconds_and_count_wins() {
        assert_eq!(
            parse(&["invoke"]).validate().unwrap(),
            Limit::Duration(Duration::from_secs(10))
        );
        assert_eq!(
            parse(&["e2e", "-n", "5"]).validate().unwrap(),
            Limit::Count(5)
        );
        assert!(T::try_parse_from(["t", "invoke", "-n", "5", "-d", "1s"]).is_err());
    }

    #[test]
    fn size_defaults_to_the_workload_and_frame_size_is_its_alias() {
        assert_eq!(parse(&["invoke"]).size(), 64);
        assert_eq!(parse(&["channel"]).size(), 65536);
        assert_eq!(parse(&["channel", "--frame-size", "1024"]).size(), 1024);
        assert!(parse(&["channel", "-s", "16"]).validate().is_ok());
    }

    #[test]
    fn options_that_do_not_fit_the_workload_are_usage_errors() {
        for bad in [
            &["invoke", "--queue", "q"][..],
            &["enqueue", "--function", "f"],
            &["invoke", "-c", "0"],
            &["invoke", "-n", "0"],
            &["invoke", "-d", "0s"],
            &["channel", "--queue", "q"],
            &["channel", "--function", "f"],
            &["channel", "-s", "15"],
            &["channel", "-p", "0"],
        ] {
            let e = parse(bad).validate().unwrap_err();
            assert_eq!(e.exit_code(), super::super::error::exit::USAGE, "{bad:?}");
        }
    }
}
