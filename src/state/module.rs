//! State as an engine module: the `state::*` functions and the `state`
//! trigger type.

use std::sync::Arc;

use super::functions as f;
use super::{State, StateConfig, TRIGGER_TYPE, watchers::Watchers};
use crate::mesh::Provisions;
use crate::module::Module;
use crate::store::Store;
use crate::store::state::StateValues;

pub(crate) struct StateModule {
    state: State,
}

impl StateModule {
    pub(crate) fn new(store: Arc<Store>, config: StateConfig) -> Self {
        Self {
            state: State {
                values: StateValues::new(store),
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
        p.sync_fn("state::get", s, f::get);
        p.async_fn("state::delete", s, f::delete);
        p.async_fn("state::update", s, f::update);
        p.sync_fn("state::list", s, f::list);
        p.sync_fn("state::list_groups", s, f::list_groups);
    }
}
