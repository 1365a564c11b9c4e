//! `qmesh queues`, `qmesh queue stats|peek|pause|resume|purge`, `qmesh job`:
//! the durable queues through the engine's `queue::*` functions.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;

use super::confirm::confirm;
use super::error::CliError;
use super::output::{Table, age, cell, emit, list, pairs, when};
use super::remote::{Remote, execute};
use qmesh::queue::states::{COUNTED, ShownState};

#[derive(Args, Debug)]
pub struct QueuesArgs {
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
pub struct QueueArgs {
    #[command(subcommand)]
    action: QueueAction,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand, Debug)]
enum QueueAction {
    /// Counts per state, age of the oldest ready job, and settings.
    Stats { queue: String },
    /// A page of a queue's jobs in one stored state (`ready` lists the jobs
    /// waiting for a worker too, each shown as `waiting_for_worker`).
    Peek {
        queue: String,
        #[arg(long, default_value = "ready",
              value_parser = ["ready", "delayed", "running", "held", "waiting_for_children", "completed", "dead"])]
        state: String,
        /// Jobs per page (1-1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Start after this receipt (the `next_cursor` of the previous page).
        #[arg(long, value_parser = receipt)]
        cursor: Option<String>,
    },
    /// Stop dispatching the queue's jobs (enqueues are still accepted).
    Pause { queue: String },
    /// Dispatch the queue's jobs again.
    Resume { queue: String },
    /// Start none of the queue's jobs for a while (a rate-limited API said 429); no attempt is spent.
    Throttle {
        queue: String,
        /// How long (e.g. 30s, 5m).
        #[arg(value_parser = humantime::parse_duration)]
        pause: std::time::Duration,
    },
    /// Delete the queue's ready, delayed and held jobs (running jobs finish, dead letters stay).
    Purge {
        queue: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job's receipt (the messageReceiptId its enqueue returned).
    #[arg(value_parser = receipt)]
    receipt: String,
    #[command(flatten)]
    remote: Remote,
}

/// A receipt is a UUID; anything else is refused before reaching the engine.
pub fn receipt(s: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.to_string())
        .map_err(|_| format!("{s:?} is not a receipt (a UUID)"))
}

/// JSON: `{queues:[{queue, paused, ready, waiting_for_worker, delayed, running, held, completed, dead, oldest_ready_age_ms, settings}]}`.
pub fn queues(args: QueuesArgs) -> ExitCode {
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let out = s.call("queue::list", json!({})).await?;
        emit(json, &out, || queues_table(&out));
        Ok(())
    })
}

fn queues_table(out: &Value) -> String {
    // The count columns are the engine's state names, so a job's `qmesh job`
    // state is the column that counts it.
    let mut header = vec!["QUEUE", "STATE"];
    header.extend(COUNTED.map(column));
    header.push("OLDEST READY");
    let mut t = Table::new(&header);
    for q in list(out, "queues") {
        let state = if q["paused"] == true {
            "paused"
        } else {
            "active"
        };
        let mut row = vec![cell(&q["queue"]), state.to_owned()];
        for s in COUNTED {
            row.push(cell(&q[s.as_str()]));
        }
        row.push(age(&q["oldest_ready_age_ms"]));
        t.row(row);
    }
    t.render()
}

/// A count's column: its state's name, in capitals.
fn column(state: ShownState) -> &'static str {
    match state {
        ShownState::Ready => "READY",
        ShownState::WaitingForWorker => "WAITING FOR WORKER",
        ShownState::Delayed => "DELAYED",
        ShownState::Running => "RUNNING",
        ShownState::Held => "HELD",
        ShownState::WaitingForChildren => "WAITING FOR CHILDREN",
        ShownState::Completed => "COMPLETED",
        ShownState::Dead => "DEAD",
        ShownState::Cancelled => "CANCELLED",
    }
}

pub fn queue(args: QueueArgs) -> ExitCode {
    let json = args.remote.json;
    execute(&args.remote, async move |s| match args.action {
        QueueAction::Stats { queue } => {
            let out = s.call("queue::stats", json!({ "queue": queue })).await?;
            emit(json, &out, || stats_text(&out));
            Ok(())
        }
        QueueAction::Peek {
            queue,
            state,
            limit,
            cursor,
        } => {
            let input = json!({ "queue": queue, "state": state, "limit": limit, "cursor": cursor });
            let out = s.call("queue::peek", input).await?;
            emit(json, &out, || peek_text(&out));
            Ok(())
        }
        QueueAction::Pause { queue } => pause(s, json, &queue, true).await,
        QueueAction::Resume { queue } => pause(s, json, &queue, false).await,
        QueueAction::Throttle { queue, pause } => {
            let ms = pause.as_millis() as u64;
            let out = s
                .call("queue::throttle", json!({ "queue": queue, "for": ms }))
                .await?;
            emit(json, &out, || {
                format!(
                    "{queue}: no job starts for {}",
                    humantime::format_duration(pause)
                )
            });
            Ok(())
        }
        QueueAction::Purge { queue, yes } => purge(s, json, &queue, yes).await,
    })
}

fn stats_text(q: &Value) -> String {
    let mut items: Vec<(&str, String)> =
        vec![("queue", cell(&q["queue"])), ("paused", cell(&q["paused"]))];
    for s in COUNTED {
        items.push((s.as_str(), cell(&q[s.as_str()])));
    }
    items.push(("oldest_ready_age", age(&q["oldest_ready_age_ms"])));
    let settings = q["settings"].as_object().cloned().unwrap_or_default();
    let mut text = pairs(&items);
    let set: Vec<(&str, String)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), cell(v)))
        .collect();
    text.push_str("\nsettings\n");
    text.push_str(&pairs(&set));
    text
}

fn peek_text(out: &Value) -> String {
    let mut t = Table::new(&[
        "RECEIPT",
        "FUNCTION",
        "STATE",
        "ATTEMPTS",
        "ENQUEUED",
        "DUE",
        "LAST ERROR",
    ]);
    for j in list(out, "jobs") {
        t.row(vec![
            cell(&j["receipt"]),
            cell(&j["function_id"]),
            cell(&j["state"]),
            cell(&j["attempts"]),
            when(&j["enqueued_at_ms"]),
            when(&j["due_at_ms"]),
            error_text(&j["last_error"]),
        ]);
    }
    let mut text = t.render();
    if let Some(next) = out["next_cursor"].as_str() {
        text.push_str(&format!("more: --cursor {next}\n"));
    }
    text
}

/// JSON: the engine's `{queue, paused}`.
async fn pause(
    s: &super::remote::Session,
    json: bool,
    queue: &str,
    paused: bool,
) -> Result<(), CliError> {
    let f = if paused {
        "queue::pause"
    } else {
        "queue::resume"
    };
    let out = s.call(f, json!({ "queue": queue })).await?;
    let word = if paused { "paused" } else { "resumed" };
    emit(json, &out, || format!("{word} {queue}"));
    Ok(())
}

/// JSON: the engine's `{queue, purged}`.
async fn purge(
    s: &super::remote::Session,
    json: bool,
    queue: &str,
    yes: bool,
) -> Result<(), CliError> {
    // Fails with queue_not_found before asking anything about a queue that does not exist.
    let q = s.call("queue::stats", json!({ "queue": queue })).await?;
    let n = |k: &str| q[k].as_u64().unwrap_or(0);
    let question = format!(
        "Purge queue {queue}: delete {} ready, {} delayed and {} held jobs?",
        n("ready") + n("waiting_for_worker"),
        n("delayed"),
        n("held")
    );
    confirm(&question, yes)?;
    let out = s.call("queue::purge", json!({ "queue": queue })).await?;
    emit(json, &out, || {
        format!("purged {} jobs from {queue}", cell(&out["purged"]))
    });
    Ok(())
}

/// JSON: `queue::get`'s job view plus `explanation` (from `queue::explain`).
pub fn job(args: JobArgs) -> ExitCode {
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let mut out = s
            .call("queue::get", json!({ "receipt": args.receipt }))
            .await?;
        let why = s
            .call("queue::explain", json!({ "receipt": args.receipt }))
            .await?;
        out["explanation"] = why["explanation"].clone();
        emit(json, &out, || job_text(&out));
        Ok(())
    })
}

fn job_text(j: &Value) -> String {
    let items = [
        ("receipt", cell(&j["receipt"])),
        ("queue", cell(&j["queue"])),
        ("function", cell(&j["function_id"])),
        ("state", cell(&j["state"])),
        ("why", cell(&j["explanation"])),
        (
            "attempts",
            format!("{} of {}", cell(&j["attempts"]), cell(&j["max_attempts"])),
        ),
        ("priority", cell(&j["priority"])),
        ("enqueued", when(&j["enqueued_at_ms"])),
        ("due", when(&j["due_at_ms"])),
        ("finished", when(&j["finished_at_ms"])),
        ("redrives", cell(&j["redrives"])),
        ("data", cell(&j["data"])),
        ("result", cell(&j["result"])),
        ("last error", error_text(&j["last_error"])),
        ("expires", when(&j["expires_at_ms"])),
        ("fair key", cell(&j["fair_key"])),
        ("progress", cell(&j["progress"])),
        ("flow", flow_text(&j["flow"])),
    ];
    let mut t = Table::new(&["ATTEMPT", "STARTED", "ENDED", "WORKER", "OUTCOME", "ERROR"]);
    for a in list(j, "history") {
        t.row(vec![
            cell(&a["attempt"]),
            when(&a["started_at_ms"]),
            when(&a["ended_at_ms"]),
            cell(&a["worker_id"]),
            cell(&a["outcome"]),
            error_text(&a["error"]),
        ]);
    }
    let mut out = format!("{}\nattempts\n{}", pairs(&items), t.render());
    let logs = list(j, "logs");
    if !logs.is_empty() {
        let mut l = Table::new(&["AT", "LINE"]);
        for line in logs {
            l.row(vec![when(&line["at_ms"]), cell(&line["line"])]);
        }
        let dropped = j["logs_dropped"].as_u64().unwrap_or(0);
        let note = if dropped > 0 {
            format!(" ({dropped} older lines dropped)")
        } else {
            String::new()
        };
        out.push_str(&format!("\nlogs{note}\n{}", l.render()));
    }
    out
}

/// A job's place in a flow: its parent, and how many children it still waits on.
fn flow_text(f: &Value) -> String {
    if f.is_null() {
        return "-".to_owned();
    }
    let children = f["children"].as_array().map_or(0, Vec::len);
    format!(
        "root {}, parent {}, {} children ({} pending), on child failure: {}",
        cell(&f["root"]),
        cell(&f["parent"]),
        children,
        cell(&f["waiting_on"]),
        cell(&f["on_child_failure"])
    )
}

/// An error record `{reason, code, message}` as `code: message`.
pub fn error_text(e: &Value) -> String {
    if e.is_null() {
        return "-".to_owned();
    }
    format!("{}: {}", cell(&e["code"]), cell(&e["message"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_columns_are_the_state_names() {
        for s in COUNTED {
            assert_eq!(column(s), s.as_str().replace('_', " ").to_uppercase());
        }
    }
}
