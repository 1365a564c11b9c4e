//! `qmesh call` and `qmesh enqueue`: run a function now, or put a call to it
//! on a durable queue. The payload is inline JSON, `@file`, or `-` for stdin
//! (stdin is also read when no payload is given and it is not a terminal).

use clap::Args;
use serde_json::{Value, json};
use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use super::error::CliError;
use super::output::emit;
use super::remote::{Remote, execute};

#[derive(Args, Debug)]
pub struct CallArgs {
    /// Function id, e.g. math::add.
    function: String,
    /// JSON input: inline, @FILE, or - for stdin (default: stdin when piped, else {}).
    payload: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args, Debug)]
pub struct EnqueueArgs {
    /// Queue name (created with the default settings unless the engine is strict).
    queue: String,
    /// Function id the job calls.
    function: String,
    /// JSON input: inline, @FILE, or - for stdin (default: stdin when piped, else {}).
    payload: Option<String>,
    /// Run no earlier than this from now (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<std::time::Duration>,
    /// Higher runs first within the queue (0-255).
    #[arg(long)]
    priority: Option<u8>,
    /// A repeated key returns the first job's receipt instead of enqueuing again.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Not started within this (e.g. 10m), the job is dead-lettered as `expired`.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<std::time::Duration>,
    /// One job per line of FILE (- for stdin), each line its JSON input,
    /// written in batches of up to 10,000 (`queue::enqueue_many`, one sync
    /// each, two in flight); prints how many were enqueued. A failed batch
    /// stops the run: the batches before it are enqueued, the one sent after
    /// it may be.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["payload", "idempotency_key"])]
    each_line: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

pub fn call(args: CallArgs) -> ExitCode {
    let data = match payload(args.payload.as_deref()) {
        Ok(v) => v,
        Err(e) => return e.report(args.remote.json),
    };
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let out = s.call(&args.function, data).await?;
        emit(json, &out, || pretty(&out));
        Ok(())
    })
}

pub fn enqueue(args: EnqueueArgs) -> ExitCode {
    if let Some(file) = args.each_line.clone() {
        return enqueue_lines(args, &file);
    }
    let data = match payload(args.payload.as_deref()) {
        Ok(v) => v,
        Err(e) => return e.report(args.remote.json),
    };
    let mut input = json!({ "queue": args.queue, "function_id": args.function, "data": data });
    if let Some(d) = args.delay {
        input["delay"] = json!(d.as_millis() as u64);
    }
    if let Some(p) = args.priority {
        input["priority"] = json!(p);
    }
    if let Some(e) = args.expires_in {
        input["expires_in"] = json!(e.as_millis() as u64);
    }
    if let Some(k) = &args.idempotency_key {
        input["idempotency_key"] = json!(k);
    }
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        let out = s.call("queue::enqueue", input).await?;
        emit(json, &out, || {
            let receipt = super::output::cell(&out["receipt"]);
            if out["duplicate"] == true {
                format!("already enqueued (same idempotency key): {receipt}")
            } else {
                format!("enqueued {receipt} on {}", args.queue)
            }
        });
        Ok(())
    })
}

/// Jobs a `--each-line` batch holds (the engine's most per call).
const BATCH: usize = 10_000;
/// `--each-line` batches sent before the first is acknowledged.
const IN_FLIGHT: usize = 2;

/// `--each-line`: every line a job, batch by batch; a bad line stops the
/// run before its batch is sent (the batches before it are enqueued).
fn enqueue_lines(args: EnqueueArgs, file: &str) -> ExitCode {
    let text = if file == "-" {
        let mut t = String::new();
        std::io::stdin().lock().read_to_string(&mut t).map(|_| t)
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            return CliError::usage(format!("--each-line {file}: {e}")).report(args.remote.json);
        }
    };
    let mut jobs = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Value>(line) {
            Ok(data) => {
                let mut job = json!({ "data": data });
                if let Some(d) = args.delay {
                    job["delay"] = json!(d.as_millis() as u64);
                }
                if let Some(p) = args.priority {
                    job["priority"] = json!(p);
                }
                if let Some(e) = args.expires_in {
                    job["expires_in"] = json!(e.as_millis() as u64);
                }
                jobs.push(job);
            }
            Err(e) => {
                let msg = format!("--each-line {file}: line {} is not JSON: {e}", n + 1);
                return CliError::usage(msg).report(args.remote.json);
            }
        }
    }
    let json = args.remote.json;
    execute(&args.remote, async move |s| {
        use futures_util::StreamExt;
        let mut enqueued = 0;
        let mut duplicates = 0;
        // Two batches in flight: the engine writes one while the next is
        // encoded and sent, and while the first one's sync runs.
        let calls = futures_util::stream::iter(jobs.chunks(BATCH))
            .map(|batch| {
                let input =
                    json!({ "queue": args.queue, "function_id": args.function, "jobs": batch });
                async move { (batch.len(), s.call("queue::enqueue_many", input).await) }
            })
            .buffered(IN_FLIGHT);
        futures_util::pin_mut!(calls);
        while let Some((n, out)) = calls.next().await {
            if out.is_err() {
                eprintln!(
                    "qmesh: {enqueued} jobs were enqueued before the batch that failed; \
                     the batch sent after it may have been enqueued too"
                );
            }
            let out = out?;
            enqueued += n;
            duplicates += out["duplicates"].as_u64().unwrap_or(0);
        }
        let out = json!({ "queue": args.queue, "enqueued": enqueued, "duplicates": duplicates });
        emit(json, &out, || {
            format!("enqueued {enqueued} jobs on {}", args.queue)
        });
        Ok(())
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The payload named on the command line.
fn payload(arg: Option<&str>) -> Result<Value, CliError> {
    let stdin = std::io::stdin();
    let piped = !stdin.is_terminal();
    parse_payload(arg, piped, || {
        let mut text = String::new();
        stdin.lock().read_to_string(&mut text).map(|_| text)
    })
}

/// `arg` as JSON: inline text, `@FILE`, `-` (stdin); nothing reads stdin when
/// `piped`, else it is `{}`. Empty stdin is `{}` too.
fn parse_payload(
    arg: Option<&str>,
    piped: bool,
    read_stdin: impl FnOnce() -> std::io::Result<String>,
) -> Result<Value, CliError> {
    let (text, from) = match arg {
        Some("-") => (stdin_text(read_stdin)?, "stdin".to_owned()),
        None if piped => (stdin_text(read_stdin)?, "stdin".to_owned()),
        None => return Ok(json!({})),
        Some(a) => match a.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::usage(format!("cannot read payload file {path}: {e}"))
                })?;
                (text, path.to_owned())
            }
            None => (a.to_owned(), "the payload argument".to_owned()),
        },
    };
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("{from} is not valid JSON: {e}")))
}

fn stdin_text(read: impl FnOnce() -> std::io::Result<String>) -> Result<String, CliError> {
    read().map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> std::io::Result<String> {
        panic!("stdin must not be read")
    }

    #[test]
    fn payloads_come_from_the_argument_a_file_or_stdin() {
        assert_eq!(
            parse_payload(Some(r#"{"a":1}"#), true, never).unwrap(),
            json!({"a":1})
        );
        assert_eq!(parse_payload(None, false, never).unwrap(), json!({}));
        assert_eq!(
            parse_payload(None, true, || Ok("[1,2]".into())).unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            parse_payload(Some("-"), false, || Ok(" ".into())).unwrap(),
            json!({})
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, r#""text""#).unwrap();
        let arg = format!("@{}", f.display());
        assert_eq!(
            parse_payload(Some(&arg), true, never).unwrap(),
            json!("text")
        );
    }

    #[test]
    fn bad_payloads_are_usage_errors_that_say_where() {
        let e = parse_payload(Some("{oops"), false, never).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.contains("payload argument")),
            "{e}"
        );
        let e = parse_payload(Some("@/nonexistent/x.json"), false, never).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.json"), "{e}");
        let e = parse_payload(None, true, || Ok("nope".into())).unwrap_err();
        assert!(e.to_string().starts_with("stdin is not valid JSON"), "{e}");
    }
}
