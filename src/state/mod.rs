//! State: JSON values by (scope, key), kept in the embedded store, and the
//! `state` trigger type that tells worker functions about every change
//! (iii's `iii-state`).
//!
//! - `functions.rs`: `state::set/get/delete/update/list/list_groups`, with
//!   iii's result shapes and error codes;
//! - the update ops of `state::update` are `protocol::update_ops` (shared
//!   with streams);
//! - `watchers.rs`: the `state` trigger type's bindings and the fan-out of
//!   `state:created|updated|deleted` events;
//! - `module.rs`: its `Module` impl;
//! - `local.rs`: the embedded store (`store::state::StateValues`) as its
//!   backend.
//!
//! Values live behind `module::StateBackend`, which the engine root picks:
//! the embedded store, or (`[cluster] state = "jetstream"`) a store every
//! engine of a cluster shares, whose changes are relayed to the other
//! engines' bindings through the mesh's `Relay` (channel `state`).
//!
//! Durability: a write is applied to the store before its reply; with
//! `durable` (the default, or per call) the reply also waits for the sync
//! that covers it (group commit), so an acknowledged write survives kill -9.
//!
//! Architecture invariant: state knows the mesh (to call condition and
//! handler functions), its store door (`store::state::StateValues`) and
//! `module.rs`; nothing of the engine root, the edge or other modules (the
//! cluster included).

mod functions;
mod local;
pub(crate) mod module;
mod watchers;

use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

use crate::module::StateBackend;
pub(crate) use module::StateModule;

/// The trigger type state changes fire.
pub(crate) const TRIGGER_TYPE: &str = "state";

/// The relay channel a change goes out on to other engines' bindings.
const RELAY_CHANNEL: &str = "state";

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Whether a write's reply waits until the write is on disk (flushed and
    /// fdatasync'ed). A call's own `durable` field overrides it.
    pub durable: bool,
    /// Largest value `state::set` (and the result of `state::update`) may
    /// store, as JSON bytes; larger ones get `VALUE_TOO_LARGE`.
    pub max_value_bytes: usize,
    /// Most ops one `state::update` may carry.
    pub max_update_ops: usize,
    /// `false` pauses every `state` trigger's fan-out.
    pub triggers_enabled: bool,
    /// How long a binding's condition function may take; a slower one skips the event.
    #[serde(with = "humantime_serde")]
    pub condition_timeout: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            durable: true,
            max_value_bytes: 1 << 20,
            max_update_ops: 1024,
            triggers_enabled: true,
            condition_timeout: Duration::from_secs(30),
        }
    }
}

impl StateConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_value_bytes == 0 {
            return Err("state.max_value_bytes must be greater than 0".into());
        }
        if self.max_update_ops == 0 {
            return Err("state.max_update_ops must be greater than 0".into());
        }
        if self.condition_timeout.is_zero() {
            return Err("state.condition_timeout must be greater than 0".into());
        }
        Ok(())
    }
}

/// The module's handle, shared by its functions and its trigger type.
#[derive(Clone)]
pub(crate) struct State {
    values: Arc<dyn StateBackend>,
    config: Arc<StateConfig>,
    watchers: watchers::Watchers,
}
