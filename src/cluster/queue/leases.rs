//! The leases of the jobs this engine's workers run, by receipt, and
//! `queue::heartbeat` on JetStream queues: a handler extends its job's
//! lease as on one engine. A pulled job runs only on the pulling engine's
//! own workers, so the worker beating is connected here, and so is its
//! lease; the server keeps the job meanwhile through the runner's
//! in-progress acks.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::Shared;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};

/// A job running here: its call, and when its lease runs out.
pub(super) struct Running {
    /// Its queue and function.
    pub key: super::JobKey,
    pub invocation_id: Uuid,
    /// The worker running it: the only one (with operators) that may beat.
    pub executor: Uuid,
    pub attempt: u32,
    /// The queue's lease, what a beat without `extend` gives.
    pub lease: Duration,
    pub until: watch::Sender<Instant>,
    /// Its queue's `max_log_lines`, and its handler's progress and log
    /// (`progress.rs`).
    pub max_log_lines: usize,
    pub reports: super::progress::Live,
}

#[derive(Default)]
pub(super) struct Leases(Mutex<HashMap<Uuid, Running>>);

impl Leases {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job of `receipt` runs here until its lease's end, which the
    /// receiver follows.
    pub(super) fn begin(&self, receipt: Uuid, running: Running) -> watch::Receiver<Instant> {
        let until = running.until.subscribe();
        self.lock().insert(receipt, running);
        until
    }

    /// The job of `receipt` stopped running here: its entry, if it was.
    pub(super) fn end(&self, receipt: &Uuid) -> Option<Running> {
        self.lock().remove(receipt)
    }

    /// A heartbeat: the lease runs `extend` (or the queue's lease) from now.
    fn beat(
        &self,
        mesh: &Mesh,
        receipt: &Uuid,
        extend: Option<Duration>,
        caller: Uuid,
        operator: bool,
    ) -> Result<Value, ErrorBody> {
        let leases = self.lock();
        let Some(r) = leases.get(receipt) else {
            return Err(ErrorBody::new(
                codes::INVALID_STATE,
                format!(
                    "job {receipt} is not running on this engine (a heartbeat extends a running \
                     job's lease, from the worker running it)"
                ),
            ));
        };
        if !operator && r.executor != caller {
            return Err(ErrorBody::new(
                codes::FORBIDDEN,
                format!("job {receipt} runs on another worker; only it may extend the lease"),
            ));
        }
        let by = extend
            .unwrap_or(r.lease)
            .min(crate::queue::MAX_HEARTBEAT_EXTEND);
        let until = Instant::now() + by;
        r.until.send_replace(until);
        mesh.extend_call(r.invocation_id, until.into_std());
        Ok(json!({
            "receipt": receipt,
            "attempt": r.attempt,
            "lease_ms": by.as_millis() as u64,
        }))
    }
}

/// `queue::heartbeat {receipt, extend?}`, from a running job's handler.
pub(super) fn heartbeat(
    shared: Arc<Shared>,
    mesh: Mesh,
    ctx: CallCtx,
    input: Value,
) -> BoxFuture<'static, Reply> {
    let operator = mesh.may_operate(ctx.caller);
    Box::pin(async move {
        let (receipt, extend) = crate::queue::parse_heartbeat(input)?;
        shared
            .leases
            .beat(&mesh, &receipt, extend, ctx.caller, operator)
    })
}
