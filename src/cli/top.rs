//! `qmesh top`: a live terminal view of queues and workers, for an operator
//! on a server without a browser. Every `--interval` it reads `queue::list`
//! and `engine::workers::list` (the same functions as `qmesh queues` and
//! `qmesh workers`) and redraws; rates are the change since the last frame.

use clap::Args;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::output::{Table, age, cell, list};
use super::remote::{Remote, execute};

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Time between frames.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this many frames (default: until Ctrl-C).
    #[arg(long)]
    frames: Option<u64>,
}

pub fn top(args: TopArgs) -> ExitCode {
    let url = args.remote.url.clone();
    execute(&args.remote, async move |s| {
        // On a terminal each frame replaces the last; piped, frames follow each other.
        let redraw = std::io::stdout().is_terminal();
        let mut last: Option<(Instant, Totals)> = None;
        let mut frame = 0u64;
        loop {
            let queues = s.call("queue::list", json!({})).await?;
            let workers = s.call("engine::workers::list", json!({})).await?;
            let now = Instant::now();
            let totals = totals(&queues);
            let rates = last.as_ref().map(|(at, before)| {
                let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                (before.clone(), secs)
            });
            let mut out = String::new();
            if redraw {
                out.push_str("\x1b[H\x1b[2J");
            }
            out.push_str(&format!(
                "qmesh top  {url}  every {}\n\n",
                humantime::format_duration(args.interval)
            ));
            out.push_str(&queues_table(&queues, rates.as_ref()));
            out.push('\n');
            out.push_str(&workers_table(&workers));
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{out}");
            let _ = stdout.flush();
            drop(stdout);
            frame += 1;
            if args.frames.is_some_and(|n| frame >= n) {
                return Ok(());
            }
            last = Some((now, totals));
            tokio::time::sleep(args.interval).await;
        }
    })
}

/// Per queue: (completed, dead) so far, for the rates of the next frame.
type Totals = HashMap<String, (u64, u64)>;

fn totals(queues: &Value) -> Totals {
    list(queues, "queues")
        .iter()
        .map(|q| {
            let n = |k: &str| q[k].as_u64().unwrap_or(0);
            (cell(&q["queue"]), (n("completed"), n("dead")))
        })
        .collect()
}

fn queues_table(queues: &Value, rates: Option<&(Totals, f64)>) -> String {
    let mut t = Table::new(&[
        "QUEUE",
        "STATE",
        "READY",
        "WAITING FOR WORKER",
        "RUNNING",
        "DELAYED",
        "DEAD",
        "DONE/S",
        "DEAD/S",
        "OLDEST READY",
    ]);
    for q in list(queues, "queues") {
        let name = cell(&q["queue"]);
        let n = |k: &str| q[k].as_u64().unwrap_or(0);
        let rate = |now: u64, pick: fn(&(u64, u64)) -> u64| match rates {
            Some((before, secs)) => {
                let was = before.get(&name).map(pick).unwrap_or(now);
                format!("{:.1}", now.saturating_sub(was) as f64 / secs)
            }
            None => "-".to_owned(),
        };
        t.row(vec![
            name.clone(),
            if q["paused"] == true {
                "paused"
            } else {
                "active"
            }
            .to_owned(),
            n("ready").to_string(),
            n("waiting_for_worker").to_string(),
            n("running").to_string(),
            n("delayed").to_string(),
            n("dead").to_string(),
            rate(n("completed"), |t| t.0),
            rate(n("dead"), |t| t.1),
            age(&q["oldest_ready_age_ms"]),
        ]);
    }
    format!("QUEUES\n{}", t.render())
}

fn workers_table(workers: &Value) -> String {
    let mut t = Table::new(&["WORKER", "RUNTIME", "FUNCTIONS", "EXECUTING"]);
    for w in list(workers, "workers") {
        t.row(vec![
            cell(&w["name"]),
            cell(&w["runtime"]),
            cell(&w["function_count"]),
            cell(&w["active_invocations"]),
        ]);
    }
    format!("WORKERS\n{}", t.render())
}
