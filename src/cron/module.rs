//! Cron as an engine module: the `cron` trigger type and
//! `engine::cron::list`.

use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use super::jobs::Jobs;
use super::{CronConfig, TRIGGER_TYPE};
use crate::mesh::{CallCtx, Mesh, Provisions, Reply};
use crate::module::Module;
use crate::store::Store;
use crate::store::cron::CronPositions;

pub(crate) struct CronModule {
    jobs: Jobs,
}

impl CronModule {
    pub(crate) fn new(mesh: &Mesh, store: Arc<Store>, config: CronConfig) -> Self {
        let positions = CronPositions::new(store);
        let now = super::schedule::to_ms(chrono::Utc::now());
        let cutoff = now.saturating_sub(config.forget_after.as_millis() as u64);
        match positions.forget_before(cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                forgotten = n,
                "cron: positions of trigger ids unbound for long forgotten"
            ),
            Err(e) => tracing::warn!(error = %e, "cron: cannot prune old positions"),
        }
        Self {
            jobs: Jobs::new(mesh.clone(), positions, config.condition_timeout),
        }
    }
}

/// `engine::cron::list {}`: every live job with its schedule, last and next
/// slot and counts (fired, skipped because a run was still going, skipped or
/// caught up after an absence).
fn list(jobs: &Jobs, _: &Mesh, _: &CallCtx, _: Value) -> Reply {
    Ok(jobs.list())
}

impl Module for CronModule {
    fn name(&self) -> &'static str {
        "cron"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            TRIGGER_TYPE,
            "Fires on a cron schedule (seconds first: sec min hour day-of-month month day-of-week [year])",
            Arc::new(self.jobs.clone()),
        );
        p.sync_fn("engine::cron::list", &self.jobs, list);
    }

    /// No slot fires once the engine drains (a run in progress finishes).
    fn stop_intake(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        self.jobs.stop();
        Box::pin(async {})
    }
}
