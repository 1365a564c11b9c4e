//! What a running job's handler reports about itself: its progress (a number
//! or a small JSON value) and log lines (bounded per job by the queue's
//! `max_log_lines`). Both are kept in the job record and shown by
//! `queue::get`; a progress change fires the `queue:progress` trigger type.
//!
//! A report goes into the live record at once (`queue::get` shows it) and
//! into the stored one with the attempt's end, or at the next 50 ms tick
//! while the attempt runs on (`write_reports`, one batch for every job that
//! reported): a handler reporting per item costs one write per tick, not
//! one per report, and no fsync (measured in BENCHMARKS.md). It is then on
//! disk within the store's periodic sync (500 ms), like an attempt's start
//! and outcome: a kill -9 may lose the last half second of reports of an
//! attempt that the restart runs again anyway.
//!
//! A running job's stored record is the one from before it started (see
//! [`super::attempts`]): writing reports rewrites that stored record with
//! the reported fields only.

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::now_ms;
use super::scheduler::Scheduler;
use crate::mesh::watchers::WatchConfig;
use crate::protocol::{ErrorBody, codes, to_payload};
use crate::store::queue::Writes;
use crate::store::records::{JobLogLine, JobRecord};
use crate::store::{StoreError, Ticket};

/// Largest progress value, as JSON text.
pub const MAX_PROGRESS_BYTES: usize = 4096;
/// Longest log line; longer ones are cut (at a character boundary).
pub const MAX_LOG_LINE_BYTES: usize = 2048;

/// The trigger type fired when a job's progress changes.
pub const PROGRESS_TRIGGER: &str = "queue:progress";

/// One report from a handler.
#[derive(Debug)]
pub enum Report {
    /// Raw JSON, at most [`MAX_PROGRESS_BYTES`].
    Progress(Vec<u8>),
    Log(String),
}

/// What a `queue:progress` binding asks for: every job's progress, or one
/// queue's, or one job's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProgressWatch {
    queue: Option<String>,
    receipt: Option<Uuid>,
    condition_function_id: Option<String>,
}

impl WatchConfig for ProgressWatch {
    fn when_absent() -> Option<Self> {
        Some(Self::default())
    }

    fn condition(&self) -> Option<&str> {
        self.condition_function_id.as_deref()
    }
}

pub type ProgressWatchers = crate::mesh::watchers::Watchers<ProgressWatch>;

/// The job a progress report is about.
pub(crate) struct ProgressOf<'a> {
    pub receipt: Uuid,
    pub queue: &'a str,
    pub function_id: &'a str,
    pub attempt: u32,
}

/// Fires the `queue:progress` bindings that want this job's progress (its
/// queue's, its own, or every job's): on any queue backend, the engine a
/// report reaches fires them (in a cluster they are bound on every engine).
pub(crate) fn fire_progress(
    watchers: &ProgressWatchers,
    mesh: &crate::mesh::Mesh,
    job: ProgressOf<'_>,
    progress: &serde_json::Value,
) {
    let event = json!({
        "type": PROGRESS_TRIGGER,
        "receipt": job.receipt,
        "queue": job.queue,
        "function_id": job.function_id,
        "attempt": job.attempt,
        "progress": progress,
    });
    watchers.fire(
        mesh,
        std::time::Duration::from_secs(5),
        |w| {
            w.queue.as_deref().is_none_or(|q| q == job.queue)
                && w.receipt.is_none_or(|r| r == job.receipt)
        },
        || to_payload(&event),
    );
}

impl Scheduler {
    /// Applies a handler's report to its running job. Only the worker running
    /// it may report (or an operator): a receipt alone is not enough.
    pub(super) fn report(
        &mut self,
        id: &Uuid,
        report: Report,
        caller: Uuid,
        operator: bool,
    ) -> Result<(serde_json::Value, Option<Ticket>), ErrorBody> {
        let bad = |code: &str, msg: String| ErrorBody::new(code, msg);
        let Some(a) = self.attempts.get(id) else {
            return Err(bad(
                codes::INVALID_STATE,
                format!(
                    "job {id} is not running (progress and logs come from its running handler)"
                ),
            ));
        };
        if !operator && a.record.worker_id != Some(caller) {
            return Err(bad(
                codes::FORBIDDEN,
                format!("job {id} runs on another worker; only it may report on it"),
            ));
        }
        let max_lines = (self.queues.by_id(a.queue)).map_or(100, |q| q.settings.max_log_lines);
        let live = self.attempts.job_mut(id).expect("checked above");
        apply(live, &report, max_lines, now_ms());
        let (queue, function_id, attempt) =
            (live.queue.clone(), live.function_id.clone(), live.attempts);
        self.unwritten_reports.insert(*id);
        let answer = match report {
            Report::Progress(raw) => {
                let progress: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
                let job = ProgressOf {
                    receipt: *id,
                    queue: &queue,
                    function_id: &function_id,
                    attempt,
                };
                fire_progress(&self.progress_watchers, &self.mesh, job, &progress);
                json!({ "receipt": id, "progress": progress })
            }
            Report::Log(_) => {
                let j = self
                    .attempts
                    .get(id)
                    .map(|a| &a.job)
                    .expect("checked above");
                json!({ "receipt": id, "lines": j.logs.len(), "dropped": j.logs_dropped })
            }
        };
        Ok((answer, None))
    }

    /// Writes the reports of jobs still running into their stored records
    /// (only the reported fields: the rest stays as before the start), in
    /// one batch. A job whose attempt ended meanwhile was written whole.
    pub(super) fn write_reports(&mut self) -> Result<(), StoreError> {
        if self.unwritten_reports.is_empty() {
            return Ok(());
        }
        let mut batch = Writes::default();
        let mut any = false;
        for id in std::mem::take(&mut self.unwritten_reports) {
            let Some(live) = self.attempts.get(&id).map(|a| &a.job) else {
                continue;
            };
            let (progress, logs, dropped) =
                (live.progress.clone(), live.logs.clone(), live.logs_dropped);
            if let Some(mut stored) = self.store.job(&id)? {
                stored.progress = progress;
                stored.logs = logs;
                stored.logs_dropped = dropped;
                batch.put_job(&id, &stored);
                any = true;
            }
        }
        if any {
            self.commit(batch)?;
        }
        Ok(())
    }
}

/// One report into one copy of the record.
fn apply(job: &mut JobRecord, report: &Report, max_lines: usize, now: u64) {
    match report {
        Report::Progress(raw) => job.progress = Some(raw.clone()),
        Report::Log(line) => {
            job.logs.push(JobLogLine {
                at_ms: now,
                line: line.clone(),
            });
            let over = job.logs.len().saturating_sub(max_lines);
            if over > 0 {
                job.logs.drain(..over);
                job.logs_dropped = job.logs_dropped.saturating_add(over as u32);
            }
        }
    }
}

/// A log line cut to [`MAX_LOG_LINE_BYTES`] at a character boundary.
pub fn bounded_line(mut line: String) -> String {
    if line.len() > MAX_LOG_LINE_BYTES {
        let mut cut = MAX_LOG_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_stay_bounded_and_count_what_they_drop() {
        let mut job: JobRecord = super::super::intake::sample_record();
        for i in 0..5 {
            apply(&mut job, &Report::Log(format!("line {i}")), 3, i);
        }
        let lines: Vec<&str> = job.logs.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(lines, ["line 2", "line 3", "line 4"]);
        assert_eq!(job.logs_dropped, 2);
        apply(&mut job, &Report::Progress(b"42".to_vec()), 3, 9);
        assert_eq!(job.progress.as_deref(), Some(&b"42"[..]));
    }

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let line = bounded_line("é".repeat(MAX_LOG_LINE_BYTES));
        assert!(line.len() <= MAX_LOG_LINE_BYTES + '…'.len_utf8());
        assert!(line.ends_with('…'));
    }
}
