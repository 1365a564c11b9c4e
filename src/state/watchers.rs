//! The `state` trigger type: its bindings (each with optional exact `scope`
//! and `key` filters and a condition function) and the fan-out of change
//! events to them.
//!
//! `bind`/`unbind` run under the mesh lock and touch only this table; the
//! fan-out copies the matching bindings out before it calls the mesh.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mesh::Mesh;
use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, Payload, codes, to_payload};

/// What a `state` binding asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct WatchConfig {
    scope: Option<String>,
    key: Option<String>,
    condition_function_id: Option<String>,
}

#[derive(Debug, Clone)]
struct Watcher {
    namespace: String,
    function_id: String,
    metadata: Option<Payload>,
    config: WatchConfig,
}

impl Watcher {
    fn wants(&self, scope: &str, key: &str) -> bool {
        self.config.scope.as_deref().is_none_or(|s| s == scope)
            && self.config.key.as_deref().is_none_or(|k| k == key)
    }
}

/// Every live `state` binding, by binding id.
#[derive(Clone, Default)]
pub(super) struct Watchers {
    table: Arc<Mutex<HashMap<String, Watcher>>>,
}

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

impl TriggerTypeHandler for Watchers {
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let config: WatchConfig = match b.config.get().trim() {
            "null" => WatchConfig::default(),
            text => serde_json::from_str(text).map_err(|e| {
                ErrorBody::new(
                    codes::TRIGGER_REGISTRATION_FAILED,
                    format!("Failed to parse trigger config: {e}"),
                )
            })?,
        };
        let watcher = Watcher {
            namespace: b.namespace.clone(),
            function_id: b.function_id.clone(),
            metadata: b.metadata.clone(),
            config,
        };
        self.lock().insert(b.id.clone(), watcher);
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        self.lock().remove(binding_id);
    }
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watcher>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every matching binding about a change, from a task: the write's
    /// reply does not wait for handlers. Each binding's condition function
    /// (if any) runs first; only a result of exactly `false`, an error or a
    /// timeout skips the event.
    pub(super) fn fire(&self, mesh: &Mesh, condition_timeout: Duration, ev: Event<'_>) {
        let Event {
            change,
            scope,
            key,
            old,
            new,
        } = ev;
        let matching: Vec<Watcher> = self
            .lock()
            .values()
            .filter(|w| w.wants(scope, key))
            .cloned()
            .collect();
        if matching.is_empty() {
            return;
        }
        let event = to_payload(&json!({
            "type": "state",
            "event_type": change.event_type(),
            "scope": scope,
            "key": key,
            "old_value": old,
            "new_value": new,
        }));
        let mesh = mesh.clone();
        tokio::spawn(async move {
            for w in matching {
                mesh.fire_if_condition_allows(
                    "state",
                    &w.namespace,
                    &w.function_id,
                    w.config.condition_function_id.as_deref(),
                    event.clone(),
                    w.metadata.clone(),
                    condition_timeout,
                )
                .await;
            }
        });
    }
}
