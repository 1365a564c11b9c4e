//! What the scheduler reads at start. Only small tables are read (queues,
//! counters, interned functions) plus the `running` index and the `ready`
//! index's keys; job records (which hold payloads) are never scanned, except
//! those of the jobs a stop interrupted. These go back to ready, their attempt
//! recorded as `engine_restart`. (A job whose attempt began less than
//! `START_RECORD_DELAY` before a crash is still ready in the store: it simply
//! runs again.)

use std::sync::Arc;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::attempts::Attempts;
use super::counters::Counters;
use super::dispatcher::record as error_record;
use super::fn_ids::FnIds;
use super::now_ms;
use super::queue_table::{QueueRt, QueueTable};
use super::scheduler::Scheduler;
use super::sequence::Sequence;
use super::settings::QueueConfig;
use super::unsynced::Unsynced;
use crate::mesh::Mesh;
use crate::mesh::state::Settled;
use crate::protocol::codes;
use crate::store::queue::{QueueStore, Writes};
use crate::store::records::{AttemptRecord, FailReason, JobState};
use crate::store::{Store, StoreError};

impl Scheduler {
    /// The store was reopened after a failure: this scheduler's memory may
    /// hold writes the store lost, so it is rebuilt from the store as at a
    /// start (attempts in progress go back to ready and run again; their
    /// outcomes, if they still come, go to the old channel and are dropped).
    /// Returns the new outcomes channel. Runtime queue settings are kept.
    pub(super) fn reload(&mut self) -> Result<mpsc::UnboundedReceiver<Settled>, StoreError> {
        let mut fresh =
            Scheduler::load(self.mesh.clone(), self.store.store(), self.config.clone())?;
        fresh.progress_watchers = self.progress_watchers.clone();
        fresh.metrics = self.metrics.clone();
        fresh.draining = self.draining;
        let finished = fresh.finished_rx.take().expect("a fresh scheduler");
        *self = fresh;
        tracing::warn!("queue: state reloaded from the reopened store");
        Ok(finished)
    }

    pub fn load(mesh: Mesh, store: Arc<Store>, config: QueueConfig) -> Result<Self, StoreError> {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let store = QueueStore::new(store)?;
        let seq = Sequence::after(store.seq_reservation()?);
        let mut s = Scheduler {
            mesh,
            store,
            config,
            queues: QueueTable::default(),
            fn_ids: FnIds::default(),
            seq,
            attempts: Attempts::default(),
            counters: Counters::default(),
            next_due_ms: None,
            next_expiry_ms: None,
            limited_until: None,
            finished_tx,
            finished_rx: Some(finished_rx),
            draining: false,
            unsynced: Unsynced::default(),
            id_salt: Uuid::new_v4().as_u128() as u16,
            flow_settles: Default::default(),
            unwritten_reports: Default::default(),
            metrics: Default::default(),
            progress_watchers: super::progress::ProgressWatchers::new(
                super::progress::PROGRESS_TRIGGER,
            )
            .cluster_wide(),
        };
        for (name, rec) in s.store.queues()? {
            let counts = s.store.counts(rec.id)?.unwrap_or_default();
            // A queue in the store but no longer declared keeps the defaults: its jobs are not dropped.
            let settings = s
                .config
                .settings(&name)
                .unwrap_or_else(|| s.config.defaults.clone());
            s.counters.load(rec.id, counts);
            s.queues
                .add(QueueRt::new(rec.id, &name, settings, rec.paused));
        }
        for (ns, fid, lane, id) in s.store.functions()? {
            s.fn_ids.intern(ns, fid, lane, id);
        }
        s.requeue_interrupted()?;
        s.find_ready_functions()?;
        if let Some(kv) = s.store.due().next() {
            s.next_due_ms = Some(kv?.0);
        }
        if let Some(kv) = s.store.expiries().next() {
            s.next_expiry_ms = Some(kv?.0);
        }
        tracing::info!(
            queues = s.queues.iter().count(),
            next_seq = s.seq.next(),
            "queue scheduler loaded"
        );
        Ok(s)
    }

    /// Jobs left `running` by a crash or kill go back to ready (or dead, if
    /// that was their last attempt). Their record is as it was before they
    /// started; the `X` entry holds the interrupted attempt, now ended as
    /// `engine_restart`.
    fn requeue_interrupted(&mut self) -> Result<(), StoreError> {
        let mut interrupted: Vec<(Uuid, Option<AttemptRecord>)> = Vec::new();
        for (id, attempt) in self.store.running()? {
            // An unreadable entry still marks an interrupted attempt: number it after the last.
            let attempt = attempt
                .inspect_err(|e| tracing::error!(job = %id, error = %e, "unreadable running entry"))
                .ok();
            interrupted.push((id, attempt));
        }
        for (id, attempt) in &interrupted {
            let mut batch = Writes::default();
            let Some(mut job) = self.store.job(id)? else {
                batch.remove_running(id);
                self.commit(batch)?;
                continue;
            };
            let err = error_record(
                FailReason::EngineRestart,
                codes::ENGINE_RESTART,
                "the engine stopped while this attempt ran",
            );
            let mut attempt = attempt.clone().unwrap_or(AttemptRecord {
                attempt: job.history_len + 1,
                started_ms: 0,
                ended_ms: 0,
                worker_id: None,
                error: None,
            });
            job.attempts += 1;
            job.history_len = attempt.attempt;
            job.state = JobState::Running;
            attempt.ended_ms = now_ms();
            attempt.error = Some(err.clone());
            job.history.push(attempt);
            if job.attempts >= job.max_attempts {
                self.fail(id, &mut job, err, &mut batch);
            } else {
                job.last_error = Some(err);
                self.transition(id, &mut job, JobState::Ready, &mut batch);
            }
            self.commit(batch)?;
        }
        // Attempts whose start was never written left the stored counters
        // saying `running` for jobs the store holds as ready: nothing runs now.
        if self.counters.requeue_running() {
            self.commit(Writes::default())?;
        }
        if !interrupted.is_empty() {
            tracing::warn!(
                jobs = interrupted.len(),
                "jobs interrupted by the last stop are back in their queues"
            );
        }
        Ok(())
    }

    /// Which functions have ready jobs in each queue: one seek per function, not per job.
    fn find_ready_functions(&mut self) -> Result<(), StoreError> {
        let ids: Vec<_> = self.queues.iter().map(|q| q.id).collect();
        for q in ids {
            for f in self.store.ready_functions(q)? {
                self.mark_ready(q, f);
            }
        }
        Ok(())
    }
}
