//! State as an engine module: the `state::*` functions and the `state`
//! trigger type.

use std::sync::Arc;

use super::functions as f;
use super::watchers::{Relayed, Watchers};
use super::{State, StateConfig, TRIGGER_TYPE};
use crate::mesh::Provisions;
use crate::module::{Module, StateBackend};

pub(crate) struct StateModule {
    state: State,
}

impl StateModule {
    /// State kept in `values`: the engine's store, or a backend shared with
    /// other engines (whose changes then fire this engine's bindings too).
    pub(crate) fn new(values: Arc<dyn StateBackend>, config: StateConfig) -> Self {
        Self {
            state: State {
                values,
                config: Arc::new(config),
                watchers: Watchers::new(TRIGGER_TYPE),
            },
        }
    }
}

impl Module for StateModule {
    fn name(&self) -> &'static str {
        "state"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            TRIGGER_TYPE,
            "Fires on state changes (state:created, state:updated, state:deleted)",
            Arc::new(self.state.watchers.clone()),
        );
        let s = &self.state;
        p.async_fn("state::set", s, f::set);
        p.async_fn("state::get", s, f::get);
        p.async_fn("state::delete", s, f::delete);
        p.async_fn("state::update", s, f::update);
        p.async_fn("state::list", s, f::list);
        p.async_fn("state::list_groups", s, f::list_groups);
        if s.values.shared() {
            let s = s.clone();
            p.on_relayed(super::RELAY_CHANNEL, move |mesh, message| {
                if let Some(change) = Relayed::decode(message) {
                    s.fire_here(mesh, change.event());
                }
            });
        }
    }
}
