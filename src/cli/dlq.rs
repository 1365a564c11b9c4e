//! `qmesh dlq ls|redrive|discard`: a queue's dead letters, through the
//! engine's iii-compatible DLQ functions.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;

use super::confirm::confirm;
use super::error::CliError;
use super::output::{Table, cell, emit, list, when};
use super::queue::{error_text, receipt};
use super::remote::{Remote, execute};

#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// List a queue's dead letters, newest first.
    Ls {
        queue: String,
        /// Dead letters to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Dead letters to show (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Back to ready with a fresh attempt budget: one job, or every dead letter of the queue.
    Redrive {
        queue: String,
        #[arg(value_parser = receipt)]
        receipt: Option<String>,
    },
    /// Delete one dead letter for good.
    Discard {
        queue: String,
        #[arg(value_parser = receipt)]
        receipt: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

pub fn dlq(args: DlqArgs) -> ExitCode {
    let json = args.remote.json;
    execute(&args.remote, async move |s| match args.action {
        // JSON: `[{id, function_id, payload, error, last_error, failed_at_ms, retries, size_bytes, history}]`.
        DlqAction::Ls {
            queue,
            offset,
            limit,
        } => {
            let input = json!({ "queue": queue, "offset": offset, "limit": limit });
            let out = s.call("engine::queue::dlq_messages", input).await?;
            emit(json, &out, || ls_table(&out));
            Ok(())
        }
        // JSON: `{queue, redriven[, message_id]}`.
        DlqAction::Redrive { queue, receipt } => {
            let out = match &receipt {
                None => {
                    s.call("iii::queue::redrive", json!({ "queue": queue }))
                        .await?
                }
                Some(id) => {
                    let input = json!({ "queue": queue, "message_id": id });
                    s.call("iii::queue::redrive_message", input).await?
                }
            };
            if let Some(id) = &receipt {
                nothing_done(&out["redriven"], id, &queue)?;
            }
            emit(json, &out, || {
                format!("redriven {} from {queue}", cell(&out["redriven"]))
            });
            Ok(())
        }
        // JSON: `{queue, message_id, discarded}`.
        DlqAction::Discard {
            queue,
            receipt,
            yes,
        } => {
            confirm(&format!("Discard dead letter {receipt} of {queue}?"), yes)?;
            let input = json!({ "queue": queue, "message_id": receipt });
            let out = s.call("iii::queue::discard_message", input).await?;
            nothing_done(&out["discarded"], &receipt, &queue)?;
            emit(json, &out, || {
                format!("discarded {} from {queue}", cell(&out["discarded"]))
            });
            Ok(())
        }
    })
}

/// The engine answers 0 for a receipt that is not a dead letter of the
/// queue; a script asking for one job should learn that it was not there.
fn nothing_done(count: &Value, receipt: &str, queue: &str) -> Result<(), CliError> {
    if count.as_u64() == Some(0) {
        return Err(CliError::Failed(format!(
            "no dead letter {receipt} in queue {queue}; nothing changed"
        )));
    }
    Ok(())
}

fn ls_table(out: &Value) -> String {
    let mut t = Table::new(&[
        "RECEIPT",
        "FUNCTION",
        "ATTEMPTS",
        "FAILED",
        "BYTES",
        "LAST ERROR",
    ]);
    for m in list(out, "messages") {
        t.row(vec![
            cell(&m["id"]),
            cell(&m["function_id"]),
            cell(&m["retries"]),
            when(&m["failed_at_ms"]),
            cell(&m["size_bytes"]),
            error_text(&m["last_error"]),
        ]);
    }
    t.render()
}
