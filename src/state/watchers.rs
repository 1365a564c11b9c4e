//! The `state` trigger type: its bindings (each with optional exact `scope`
//! and `key` filters and a condition function) and the fan-out of change
//! events to them.
//!
//! The table and the fan-out are `mesh::watchers`'; this file says what a
//! binding asks for and what the event looks like.

use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

use crate::mesh::Mesh;
use crate::mesh::watchers::WatchConfig;
use crate::protocol::to_payload;

/// What a `state` binding asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct StateWatch {
    scope: Option<String>,
    key: Option<String>,
    condition_function_id: Option<String>,
}

impl WatchConfig for StateWatch {
    fn when_absent() -> Option<Self> {
        Some(Self::default())
    }

    fn condition(&self) -> Option<&str> {
        self.condition_function_id.as_deref()
    }
}

impl StateWatch {
    fn wants(&self, scope: &str, key: &str) -> bool {
        self.scope.as_deref().is_none_or(|s| s == scope)
            && self.key.as_deref().is_none_or(|k| k == key)
    }
}

/// Every live `state` binding.
pub(super) type Watchers = crate::mesh::watchers::Watchers<StateWatch>;

/// One change, about to be reported.
pub(super) struct Event<'a> {
    pub change: Change,
    pub scope: &'a str,
    pub key: &'a str,
    pub old: &'a Value,
    pub new: &'a Value,
}

/// What kind of change.
pub(super) enum Change {
    Created,
    Updated,
    Deleted,
}

impl Change {
    /// A write's kind from whether there was a value before.
    pub(super) fn of_write(had_old: bool) -> Self {
        if had_old {
            Change::Updated
        } else {
            Change::Created
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            Change::Created => "state:created",
            Change::Updated => "state:updated",
            Change::Deleted => "state:deleted",
        }
    }
}

/// Tells every matching binding about a change, from a task: the write's
/// reply does not wait for handlers.
pub(super) fn fire(watchers: &Watchers, mesh: &Mesh, condition_timeout: Duration, ev: Event<'_>) {
    let Event {
        change,
        scope,
        key,
        old,
        new,
    } = ev;
    watchers.fire(
        mesh,
        condition_timeout,
        |w| w.wants(scope, key),
        || {
            to_payload(&json!({
                "type": "state",
                "event_type": change.event_type(),
                "scope": scope,
                "key": key,
                "old_value": old,
                "new_value": new,
            }))
        },
    );
}
