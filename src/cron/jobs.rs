//! The live cron jobs (one per `cron` binding) and the task that runs each.
//!
//! `bind`/`unbind` run under the mesh lock: they check the config, start or
//! abort the job's task and touch only this table. The task reads the job's
//! position from the store, applies the `missed` policy once, then sleeps to
//! each slot, makes it durable as decided, and fires it unless the job's
//! previous run is still going.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

use super::TRIGGER_TYPE;
use super::schedule::{self, BindError, JobConfig, Missed};
use crate::mesh::Mesh;
use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, Payload, codes, to_payload};
use crate::store::cron::CronPositions;

/// One bound cron job.
struct Job {
    id: String,
    namespace: String,
    function_id: String,
    metadata: Option<Payload>,
    config: JobConfig,
    /// What names this schedule on every engine of a cluster, for claiming
    /// its slots: (namespace, function, expression), not the trigger id,
    /// since the SDKs draw a new trigger id per registration and each
    /// engine's workers register their own.
    schedule_key: String,
    /// A run (condition and handler) is in progress.
    running: AtomicBool,
    last_slot_ms: AtomicU64,
    fired: AtomicU64,
    /// Slots skipped because the previous run was still going.
    skipped_overlap: AtomicU64,
    /// Slots that passed while the job could not fire, skipped by policy.
    skipped_missed: AtomicU64,
    caught_up: AtomicU64,
    /// Slots another engine of the cluster claimed (and fired).
    claimed_elsewhere: AtomicU64,
    /// Slots not fired because the claim could not be made (NATS unreachable).
    skipped_unclaimed: AtomicU64,
}

struct Entry {
    job: Arc<Job>,
    task: JoinHandle<()>,
}

/// The table of live jobs: the `cron` trigger type's handler.
#[derive(Clone)]
pub(super) struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken at drain: the mesh holds this table (as a trigger type's
    /// handler), so keeping the mesh past the drain would be a cycle that
    /// never frees either (nor the store they hold).
    mesh: Mutex<Option<Mesh>>,
    positions: CronPositions,
    condition_timeout: Duration,
    table: Mutex<HashMap<String, Entry>>,
    /// Set at drain: bound jobs fire no more.
    stopped: AtomicBool,
}

impl Jobs {
    pub(super) fn new(mesh: Mesh, positions: CronPositions, condition_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                mesh: Mutex::new(Some(mesh)),
                positions,
                condition_timeout,
                table: Mutex::new(HashMap::new()),
                stopped: AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every job's task (engine drain); runs in progress finish.
    pub(super) fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for e in self.lock().values() {
            e.task.abort();
        }
        self.inner
            .mesh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// What `engine::cron::list` shows: every live job, by id.
    pub(super) fn list(&self) -> Value {
        let mut rows: Vec<Value> = self
            .lock()
            .values()
            .map(|e| {
                let j = &e.job;
                let last = j.last_slot_ms.load(Ordering::Relaxed);
                let from = if last == 0 {
                    Utc::now()
                } else {
                    schedule::from_ms(last).max(Utc::now())
                };
                json!({
                    "id": j.id,
                    "function_id": j.function_id,
                    "namespace": j.namespace,
                    "expression": j.config.schedule.source(),
                    "missed": j.config.missed.as_str(),
                    "last_slot": (last != 0).then(|| schedule::rfc3339(schedule::from_ms(last))),
                    "next_slot": schedule::next_after(&j.config.schedule, from).map(schedule::rfc3339),
                    "running": j.running.load(Ordering::Relaxed),
                    "fired": j.fired.load(Ordering::Relaxed),
                    "skipped_overlap": j.skipped_overlap.load(Ordering::Relaxed),
                    "skipped_missed": j.skipped_missed.load(Ordering::Relaxed),
                    "caught_up": j.caught_up.load(Ordering::Relaxed),
                    "claimed_elsewhere": j.claimed_elsewhere.load(Ordering::Relaxed),
                    "skipped_unclaimed": j.skipped_unclaimed.load(Ordering::Relaxed),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({ "jobs": rows })
    }
}

impl TriggerTypeHandler for Jobs {
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let refuse =
            |e: BindError| ErrorBody::new(codes::TRIGGER_REGISTRATION_FAILED, e.to_string());
        let config = JobConfig::parse(&b.id, b.config.get()).map_err(refuse)?;
        let mut table = self.lock();
        if table.contains_key(&b.id) {
            return Err(refuse(BindError::AlreadyRegistered(b.id.clone())));
        }
        let schedule_key = format!(
            "{}\0{}\0{}",
            b.namespace,
            b.function_id,
            config.schedule.source()
        );
        let job = Arc::new(Job {
            schedule_key,
            id: b.id.clone(),
            namespace: b.namespace.clone(),
            function_id: b.function_id.clone(),
            metadata: b.metadata.clone(),
            config,
            running: AtomicBool::new(false),
            last_slot_ms: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            skipped_overlap: AtomicU64::new(0),
            skipped_missed: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            claimed_elsewhere: AtomicU64::new(0),
            skipped_unclaimed: AtomicU64::new(0),
        });
        let mesh = self
            .inner
            .mesh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let task = match mesh {
            Some(mesh) => tokio::spawn(run(self.inner.clone(), mesh, job.clone())),
            None => tokio::spawn(async {}), // draining: nothing fires any more
        };
        table.insert(b.id.clone(), Entry { job, task });
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        if let Some(e) = self.lock().remove(binding_id) {
            e.task.abort();
        }
    }
}

/// A job's life: catch up by policy, then every slot of its schedule.
async fn run(inner: Arc<Inner>, mesh: Mesh, job: Arc<Job>) {
    let now = Utc::now();
    let last = match inner.positions.last_slot(&job.id) {
        Ok(last) => last.map(schedule::from_ms),
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "cron: cannot read the job's position; starting from now");
            None
        }
    };
    if let Some(last) = last {
        job.last_slot_ms
            .store(schedule::to_ms(last), Ordering::Relaxed);
        catch_up(&inner, &mesh, &job, last, now).await;
    }
    // Slots come from the schedule, never from when a run ended: no drift.
    let mut cursor = last.map_or(now, |l| l.max(now));
    while let Some(slot) = schedule::next_after(&job.config.schedule, cursor) {
        cursor = slot;
        let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        if !decide(&inner, &job, slot).await {
            continue;
        }
        if job.running.load(Ordering::Acquire) {
            let n = job.skipped_overlap.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(job = %job.id, slot = %schedule::rfc3339(slot), skipped = n,
                "cron: the previous run is still going; slot skipped");
            continue;
        }
        if claim(&mesh, &job, slot).await {
            start_run(&inner, &mesh, &job, slot);
        }
    }
    tracing::info!(job = %job.id, "cron: the schedule has no further slot");
}

/// Applies the job's `missed` policy to the slots after `last` up to `now`.
async fn catch_up(
    inner: &Arc<Inner>,
    mesh: &Mesh,
    job: &Arc<Job>,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    let Some(missed) = schedule::missed_since(&job.config.schedule, last, now) else {
        return;
    };
    if !decide(inner, job, missed.latest).await {
        return;
    }
    match job.config.missed {
        Missed::Skip => {
            job.skipped_missed
                .fetch_add(missed.count as u64, Ordering::Relaxed);
            tracing::warn!(job = %job.id, missed = missed.count, latest = %schedule::rfc3339(missed.latest),
                "cron: slots passed while the job could not fire; skipped (missed = \"skip\")");
        }
        Missed::FireOnce => {
            job.skipped_missed
                .fetch_add(missed.count as u64 - 1, Ordering::Relaxed);
            // In a cluster another engine may have fired it meanwhile.
            if !claim(mesh, job, missed.latest).await {
                return;
            }
            job.caught_up.fetch_add(1, Ordering::Relaxed);
            tracing::info!(job = %job.id, missed = missed.count, latest = %schedule::rfc3339(missed.latest),
                "cron: slots passed while the job could not fire; firing once (missed = \"fire_once\")");
            start_run(inner, mesh, job, missed.latest);
        }
    }
}

/// Records `slot` as decided and waits until that is on disk: only then may
/// it fire, so a restart never fires it again. False if the store refused
/// (the slot is not fired: firing it could fire it twice).
async fn decide(inner: &Inner, job: &Job, slot: DateTime<Utc>) -> bool {
    let ms = schedule::to_ms(slot);
    let written = match inner.positions.decide(&job.id, ms) {
        Ok(ticket) => inner.positions.durable(ticket).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => {
            job.last_slot_ms.store(ms, Ordering::Relaxed);
            true
        }
        Err(e) => {
            tracing::error!(job = %job.id, slot = %schedule::rfc3339(slot), error = %e,
                "cron: cannot record the slot; not fired");
            false
        }
    }
}

/// Whether this engine is the one to fire `slot`: always when it is alone;
/// in a cluster, when its claim (durable before it answers) is the one that
/// won. Decided after the local position, so a restart never claims again
/// what was decided here; a claim that cannot be made is not fired (it may
/// have been stored), so a slot fires at most once across the cluster.
async fn claim(mesh: &Mesh, job: &Job, slot: DateTime<Utc>) -> bool {
    let Some(claims) = mesh.provided().slot_claims().cloned() else {
        return true;
    };
    match claims.claim(&job.schedule_key, schedule::to_ms(slot)).await {
        Ok(true) => true,
        Ok(false) => {
            job.claimed_elsewhere.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(e) => {
            let n = job.skipped_unclaimed.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(job = %job.id, slot = %schedule::rfc3339(slot), error = %e, skipped = n,
                "cron: cannot claim the slot in the cluster; not fired");
            false
        }
    }
}

/// Fires one slot from its own task (condition first), marking the job
/// running until the handler's outcome is in.
fn start_run(inner: &Arc<Inner>, mesh: &Mesh, job: &Arc<Job>, slot: DateTime<Utc>) {
    job.running.store(true, Ordering::Release);
    let (inner, mesh, job) = (inner.clone(), mesh.clone(), job.clone());
    tokio::spawn(async move {
        let payload = to_payload(&json!({
            "trigger": "cron",
            "job_id": job.id,
            "scheduled_time": schedule::rfc3339(slot),
            "actual_time": schedule::rfc3339(Utc::now()),
        }));
        let outcome = mesh
            .call_if_condition_allows(
                TRIGGER_TYPE,
                &job.namespace,
                &job.function_id,
                job.config.condition_function_id.as_deref(),
                payload,
                job.metadata.clone(),
                inner.condition_timeout,
            )
            .await;
        match outcome {
            None => {}
            Some(Ok(_)) => {
                job.fired.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                job.fired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job = %job.id, function = %job.function_id, error = %e, "cron: the run failed");
            }
        }
        job.running.store(false, Ordering::Release);
    });
}
