//! `qmesh functions`, `qmesh workers`, `qmesh triggers`: what the engine knows
//! right now, from its `engine::*` listing functions.

use clap::Args;
use serde_json::{Value, json};
use std::process::ExitCode;

use super::output::{Table, ago, cell, emit, list};
use super::remote::{Remote, execute};

#[derive(Args, Debug)]
pub struct FunctionsArgs {
    /// Only ids or descriptions containing this text (case-insensitive).
    #[arg(long)]
    search: Option<String>,
    /// Only functions of this worker (name or id).
    #[arg(long)]
    worker: Option<String>,
    /// Include functions marked internal.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
pub struct WorkersArgs {
    /// Only workers whose name or id contains this text.
    #[arg(long)]
    search: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
pub struct TriggersArgs {
    #[command(flatten)]
    remote: Remote,
}

/// JSON: `{functions:[{function_id, namespace, worker_name, description, instances, ..}]}`.
pub fn functions(args: FunctionsArgs) -> ExitCode {
    let input =
        json!({ "search": args.search, "worker": args.worker, "include_internal": args.all });
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let out = s.call("engine::functions::list", input).await?;
        emit(json, &out, || functions_table(&out));
        Ok(())
    })
}

fn functions_table(out: &Value) -> String {
    let mut t = Table::new(&[
        "FUNCTION",
        "NAMESPACE",
        "WORKER",
        "INSTANCES",
        "DESCRIPTION",
    ]);
    for f in list(out, "functions") {
        t.row(vec![
            cell(&f["function_id"]),
            cell(&f["namespace"]),
            cell(&f["worker_name"]),
            cell(&f["instances"]),
            cell(&f["description"]),
        ]);
    }
    t.render()
}

/// JSON: `{workers:[WorkerSummary]}` (workers that reported a pid).
pub fn workers(args: WorkersArgs) -> ExitCode {
    let input = json!({ "search": args.search });
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let out = s.call("engine::workers::list", input).await?;
        emit(json, &out, || workers_table(&out));
        Ok(())
    })
}

fn workers_table(out: &Value) -> String {
    let mut t = Table::new(&[
        "NAME",
        "ID",
        "RUNTIME",
        "VERSION",
        "STATUS",
        "FUNCTIONS",
        "ACTIVE",
        "CONNECTED",
    ]);
    for w in list(out, "workers") {
        t.row(vec![
            cell(&w["name"]),
            cell(&w["id"]),
            cell(&w["runtime"]),
            cell(&w["version"]),
            cell(&w["status"]),
            cell(&w["function_count"]),
            cell(&w["active_invocations"]),
            ago(&w["connected_at_ms"]),
        ]);
    }
    t.render()
}

/// JSON: `{trigger_types:[..], registered_triggers:[..]}`.
pub fn triggers(args: TriggersArgs) -> ExitCode {
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let types = s.call("engine::triggers::list", json!({})).await?;
        let bound = s
            .call("engine::registered-triggers::list", json!({}))
            .await?;
        let out = json!({
            "trigger_types": list(&types, "triggers"),
            "registered_triggers": list(&bound, "registered_triggers"),
        });
        emit(json, &out, || triggers_text(&out));
        Ok(())
    })
}

fn triggers_text(out: &Value) -> String {
    let mut types = Table::new(&["TRIGGER TYPE", "NAMESPACE", "WORKER", "DESCRIPTION"]);
    for t in list(out, "trigger_types") {
        types.row(vec![
            cell(&t["id"]),
            cell(&t["namespace"]),
            cell(&t["worker_name"]),
            cell(&t["description"]),
        ]);
    }
    let mut bound = Table::new(&[
        "ID",
        "TRIGGER TYPE",
        "FUNCTION",
        "WORKER",
        "STATE",
        "CONFIG",
    ]);
    for b in list(out, "registered_triggers") {
        bound.row(vec![
            cell(&b["id"]),
            cell(&b["trigger_type"]),
            cell(&b["function_id"]),
            cell(&b["worker_name"]),
            cell(&b["state"]),
            cell(&b["config_summary"]),
        ]);
    }
    format!(
        "Trigger types\n{}\nRegistered triggers\n{}",
        types.render(),
        bound.render()
    )
}
