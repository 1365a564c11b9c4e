//! `queue::progress` and `queue::log` on JetStream queues: what a running
//! job's handler reports about itself, kept in NATS so that `queue::get`
//! on any engine shows it while the job runs, between its attempts, and
//! in its dead letter.
//!
//! The bucket `qmesh_<cluster>_progress`: `<receipt>` → the job's
//! [`Reports`] (its last progress, its newest `max_log_lines` log lines and
//! how many older ones were dropped), as the local queue keeps them in the
//! job's record. A pulled job runs only on the pulling engine's own
//! workers, so the handler reporting is connected to the engine running
//! the job: that engine checks the caller runs it (its lease, `leases.rs`),
//! applies the report to its copy and stores the whole entry before
//! answering. One attempt's reports are applied and stored one at a time
//! (a lock per running job), so a later report never loses to an earlier
//! one; the first report of an attempt starts from what earlier attempts
//! (on any engine) stored. When the job ends its entry goes: after a
//! success (a completed job leaves nothing in JetStream), or into its dead
//! letter, which `queue::get` then shows it from; a redrive puts it back.
//! Entries also expire [`HISTORY_KEPT`](super::HISTORY_KEPT) after their
//! last write.
//!
//! Not here yet: the `queue:progress` trigger type fires for the local
//! queue's jobs only.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

use super::Shared;
use super::index::nats_error;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};
use crate::queue::progress::Report;

/// Most bytes one job's stored reports take (a NATS message is at most
/// 1 MiB by default): past it, the oldest log lines are dropped (and
/// counted) even under `max_log_lines`.
const MAX_STORED_BYTES: usize = 512 * 1024;

/// What a job's handler reported, as stored and shown.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Reports {
    #[serde(default)]
    pub progress: Option<Value>,
    #[serde(default)]
    pub logs: Vec<LogLine>,
    #[serde(default)]
    pub logs_dropped: u32,
}

/// One log line, in `queue::get`'s shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LogLine {
    pub at_ms: u64,
    pub line: String,
}

impl Reports {
    /// Whether anything was reported.
    pub(super) fn any(&self) -> bool {
        self.progress.is_some() || !self.logs.is_empty() || self.logs_dropped > 0
    }

    /// One report, bounded as the local queue bounds it: the newest
    /// `max_lines` lines kept, the others counted as dropped.
    fn apply(&mut self, report: &Report, max_lines: usize, now: u64) {
        match report {
            Report::Progress(raw) => {
                self.progress = Some(serde_json::from_slice(raw).unwrap_or_default());
            }
            Report::Log(line) => {
                self.logs.push(LogLine {
                    at_ms: now,
                    line: line.clone(),
                });
                self.drop_oldest(self.logs.len().saturating_sub(max_lines));
            }
        }
    }

    fn drop_oldest(&mut self, n: usize) {
        let n = n.min(self.logs.len());
        self.logs.drain(..n);
        self.logs_dropped = self.logs_dropped.saturating_add(n as u32);
    }

    /// The entry as stored, its oldest lines dropped while it is over
    /// [`MAX_STORED_BYTES`].
    fn encode(&mut self) -> Vec<u8> {
        loop {
            let bytes = serde_json::to_vec(self).expect("reports encode");
            if bytes.len() <= MAX_STORED_BYTES || self.logs.is_empty() {
                return bytes;
            }
            self.drop_oldest(self.logs.len().div_ceil(8));
        }
    }
}

/// The reports of one attempt running on this engine, kept with its lease.
#[derive(Clone, Default)]
pub(super) struct Live(Arc<tokio::sync::Mutex<LiveState>>);

#[derive(Default)]
struct LiveState {
    /// `None` until the attempt's first report.
    reports: Option<Reports>,
    /// The attempt ended: no more reports.
    ended: bool,
}

impl Live {
    /// The attempt ended: a report after this is refused, one being stored
    /// is waited for. Whether the attempt reported anything.
    pub(super) async fn close(&self) -> bool {
        let mut state = self.0.lock().await;
        state.ended = true;
        state.reports.is_some()
    }
}

fn not_running(receipt: Uuid) -> ErrorBody {
    ErrorBody::new(
        codes::INVALID_STATE,
        format!(
            "job {receipt} is not running on this engine (progress and logs come from its \
             running handler)"
        ),
    )
}

impl Shared {
    /// What the job of `receipt` stored, or why it cannot be read.
    async fn read_reports(&self, receipt: Uuid) -> Result<Reports, ErrorBody> {
        let (value, _) = crate::cluster::kv::last_entry(&self.reports, &receipt.to_string())
            .await
            .map_err(|e| nats_error("read the job's progress and log", e))?;
        Ok(value
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default())
    }

    /// What the job of `receipt` stored (nothing if it cannot be read:
    /// logged).
    pub(super) async fn reports_of(&self, receipt: Uuid) -> Reports {
        self.read_reports(receipt).await.unwrap_or_else(|e| {
            tracing::warn!(%receipt, error = %e.message, "cannot read a job's progress and log");
            Reports::default()
        })
    }

    /// Stores a job's reports as they are (a redrive puts a dead letter's
    /// back).
    pub(super) async fn store_reports(
        &self,
        receipt: Uuid,
        reports: &mut Reports,
    ) -> Result<(), ErrorBody> {
        self.reports
            .put(receipt.to_string(), reports.encode().into())
            .await
            .map(|_| ())
            .map_err(|e| nats_error("store the job's progress and log", e))
    }

    /// The job ended: its reports go (best effort; they expire anyway).
    pub(super) async fn forget_reports(&self, receipt: Uuid) {
        if let Err(e) = self.reports.purge(receipt.to_string()).await {
            tracing::debug!(%receipt, error = %e, "cannot delete a finished job's progress and log");
        }
    }

    /// A report on the job of `receipt`, from `caller`: applied to its
    /// running attempt's copy, then stored; answered as on one engine.
    async fn report(
        &self,
        receipt: Uuid,
        report: Report,
        caller: Uuid,
        operator: bool,
    ) -> Result<Value, ErrorBody> {
        let (max_lines, live, key, attempt) = {
            let leases = self.leases.lock();
            let r = leases.get(&receipt).ok_or_else(|| not_running(receipt))?;
            if !operator && r.executor != caller {
                return Err(ErrorBody::new(
                    codes::FORBIDDEN,
                    format!("job {receipt} runs on another worker; only it may report on it"),
                ));
            }
            (r.max_log_lines, r.reports.clone(), r.key.clone(), r.attempt)
        };
        let mut state = live.0.lock().await;
        if state.ended {
            return Err(not_running(receipt));
        }
        let mut reports = match state.reports.take() {
            Some(r) => r,
            // What earlier attempts reported, on whichever engine.
            None => self.read_reports(receipt).await?,
        };
        reports.apply(&report, max_lines, crate::queue::now_ms());
        let stored = self.store_reports(receipt, &mut reports).await;
        let answer = match report {
            Report::Progress(_) => {
                let job = crate::queue::progress::ProgressOf {
                    receipt,
                    queue: &key.queue,
                    function_id: &key.function_id,
                    attempt,
                };
                let progress = reports.progress.clone().unwrap_or_default();
                let watchers = &self.progress_watchers;
                crate::queue::progress::fire_progress(watchers, &self.mesh, job, &progress);
                json!({ "receipt": receipt, "progress": reports.progress })
            }
            Report::Log(_) => json!({
                "receipt": receipt,
                "lines": reports.logs.len(),
                "dropped": reports.logs_dropped,
            }),
        };
        // Kept even if NATS refused: the next report stores it too.
        state.reports = Some(reports);
        stored.map(|_| answer)
    }
}

/// `queue::progress {receipt, progress}` and `queue::log {receipt, line}`,
/// from a running job's handler: `parse` checks the input as the local
/// queue does.
fn handle(
    shared: Arc<Shared>,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
    parse: fn(Value) -> Result<(Uuid, Report), ErrorBody>,
) -> BoxFuture<'static, Reply> {
    let operator = mesh.may_operate(ctx.caller);
    Box::pin(async move {
        let (receipt, report) = parse(input)?;
        shared.report(receipt, report, ctx.caller, operator).await
    })
}

/// `queue::progress {receipt, progress}`.
pub(super) fn progress(
    shared: Arc<Shared>,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    handle(shared, mesh, ctx, input, crate::queue::parse_progress)
}

/// `queue::log {receipt, line}`.
pub(super) fn log(
    shared: Arc<Shared>,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    handle(shared, mesh, ctx, input, crate::queue::parse_log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_stay_bounded_by_lines_and_bytes_and_count_what_they_drop() {
        let mut r = Reports::default();
        for i in 0..5 {
            r.apply(&Report::Log(format!("line {i}")), 3, i);
        }
        let lines: Vec<&str> = r.logs.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(lines, ["line 2", "line 3", "line 4"]);
        assert_eq!(r.logs_dropped, 2);
        r.apply(&Report::Progress(b"{\"done\":1}".to_vec()), 3, 9);
        assert_eq!(r.progress, Some(json!({"done": 1})));

        let mut big = Reports::default();
        for i in 0..1_000 {
            big.apply(&Report::Log("x".repeat(2_000)), 10_000, i);
        }
        let bytes = big.encode();
        assert!(bytes.len() <= MAX_STORED_BYTES, "{}", bytes.len());
        assert_eq!(big.logs.len() as u32 + big.logs_dropped, 1_000);
        assert!(big.any());
        assert!(!Reports::default().any());
    }
}
