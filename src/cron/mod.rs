//! Cron (iii's `iii-cron`): the `cron` trigger type, fired by the engine on
//! a seconds-first schedule (the grammar of the `cron` crate 0.15, as iii).
//!
//! - `schedule.rs`: a binding's config (`expression`, `condition_function_id`,
//!   `missed`), its registration errors with iii's texts, and the slot
//!   arithmetic (pure, tested without a clock);
//! - `jobs.rs`: the table of live cron jobs (the trigger type's handler) and
//!   one task per job that sleeps until each slot and fires it;
//! - `module.rs`: its `Module` impl and `engine::cron::list`.
//!
//! Beyond iii, the schedule is durable: the last slot decided per trigger id
//! is written and synced (`store::cron::CronPositions`) before that slot's
//! fire, so after a crash or restart a slot is never fired twice, and slots
//! that passed while the engine (or the job's worker) was away are handled by
//! the binding's `missed` policy: `skip` (the default; counted and logged) or
//! `fire_once` (one catch-up fire, for the latest missed slot). A crash in the
//! instant between a slot's sync and its call leaving loses that one fire:
//! at most once per slot is the promise.
//!
//! In a cluster, the engine that owns coordination (the mesh's `SlotClaims`)
//! decides which engine fires each slot: one claim per (namespace, function,
//! expression) and slot wins, cluster-wide, after the local position is
//! durable. Alone, every slot of every job is this engine's.
//!
//! Runs never overlap: iii awaits the handler, so a slow handler delays every
//! later slot. Here the next slot always comes from the schedule (a slow
//! handler does not drift it), and a slot that comes while the previous run
//! of the same job is still going is skipped, counted and logged, rather
//! than piling runs up.
//!
//! Architecture invariant: cron knows the mesh (to call condition and
//! handler functions), its store door (`store::cron::CronPositions`) and
//! `module.rs`; nothing of the engine root, the edge or other modules.

mod jobs;
pub(crate) mod module;
mod schedule;

use serde::Deserialize;
use std::time::Duration;

pub(crate) use module::CronModule;

/// The trigger type cron jobs bind.
pub(crate) const TRIGGER_TYPE: &str = "cron";

/// `[cron]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CronConfig {
    /// How long a binding's condition function may take; a slower one skips the slot.
    #[serde(with = "humantime_serde")]
    pub condition_timeout: Duration,
    /// A trigger id whose last slot is older than this at start has its
    /// position forgotten (SDKs draw a new trigger id per registration).
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for CronConfig {
    fn default() -> Self {
        Self {
            condition_timeout: Duration::from_secs(30),
            forget_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl CronConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.condition_timeout.is_zero() {
            return Err("cron.condition_timeout must be greater than 0".into());
        }
        Ok(())
    }
}
