//! The `state` trigger type: its bindings (each with optional exact `scope`
//! and `key` filters and a condition function) and the fan-out of change
//! events to them.
//!
//! The table and the fan-out are `mesh::watchers`'; this file says what a
//! binding asks for and what the event looks like.

use serde::{Deserialize, Serialize};
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

    fn from_event_type(t: &str) -> Option<Self> {
        Some(match t {
            "state:created" => Change::Created,
            "state:updated" => Change::Updated,
            "state:deleted" => Change::Deleted,
            _ => return None,
        })
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

/// A change as one engine relays it to the others (state shared by a
/// cluster): what the event says, so their bindings get the same event.
#[derive(Serialize, Deserialize)]
pub(super) struct Relayed {
    event_type: String,
    scope: String,
    key: String,
    old_value: Value,
    new_value: Value,
}

/// The relayed form of a change.
pub(super) fn encode(ev: &Event<'_>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": ev.change.event_type(),
        "scope": ev.scope,
        "key": ev.key,
        "old_value": ev.old,
        "new_value": ev.new,
    }))
    .unwrap_or_default()
}

impl Relayed {
    /// Reads what another engine relayed; `None` (logged) if it is not a change.
    pub(super) fn decode(message: &[u8]) -> Option<Relayed> {
        match serde_json::from_slice::<Relayed>(message) {
            Ok(r) if Change::from_event_type(&r.event_type).is_some() => Some(r),
            _ => {
                tracing::warn!("a relayed state change that does not parse was dropped");
                None
            }
        }
    }

    /// The change as an event (the type was checked by `decode`).
    pub(super) fn event(&self) -> Event<'_> {
        Event {
            change: Change::from_event_type(&self.event_type).unwrap_or(Change::Updated),
            scope: &self.scope,
            key: &self.key,
            old: &self.old_value,
            new: &self.new_value,
        }
    }
}
