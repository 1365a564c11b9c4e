//! The `stream` trigger type: bindings filtered by stream (required), group
//! and item (when non-empty), each with an optional condition function; and
//! the envelope clients and handlers receive:
//! `{type: "stream", timestamp, streamName, groupId, id, event}`.
//!
//! `bind`/`unbind` run under the mesh lock and touch only this table.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mesh::Mesh;
use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, Payload, codes};

#[derive(Debug, Clone, Deserialize)]
struct WatchConfig {
    stream_name: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
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
    fn wants(&self, stream: &str, group: &str, item: Option<&str>) -> bool {
        let c = &self.config;
        c.stream_name == stream
            && c.group_id
                .as_deref()
                .is_none_or(|g| g.is_empty() || g == group)
            && c.item_id
                .as_deref()
                .is_none_or(|i| i.is_empty() || Some(i) == item)
    }
}

/// Every live `stream` binding, by binding id.
#[derive(Clone, Default)]
pub(super) struct Watchers {
    table: Arc<Mutex<HashMap<String, Watcher>>>,
}

/// Where an event happened and what it is (`event` is the envelope's `event`).
pub(super) struct Event<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub item: Option<&'a str>,
    pub event: Value,
}

impl TriggerTypeHandler for Watchers {
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let config: WatchConfig = serde_json::from_str(b.config.get()).map_err(|e| {
            ErrorBody::new(
                codes::TRIGGER_REGISTRATION_FAILED,
                format!("Failed to parse trigger config: {e}"),
            )
        })?;
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

    /// Calls every matching binding with the envelope, from a task; each
    /// binding's condition first (only exactly `false`, an error or a timeout
    /// skips it).
    pub(super) fn fire(
        &self,
        mesh: &Mesh,
        condition_timeout: Duration,
        ev: &Event<'_>,
        envelope: &Payload,
    ) {
        let matching: Vec<Watcher> = self
            .lock()
            .values()
            .filter(|w| w.wants(ev.stream, ev.group, ev.item))
            .cloned()
            .collect();
        if matching.is_empty() {
            return;
        }
        let envelope = envelope.clone();
        let mesh = mesh.clone();
        tokio::spawn(async move {
            for w in matching {
                mesh.fire_if_condition_allows(
                    "stream",
                    &w.namespace,
                    &w.function_id,
                    w.config.condition_function_id.as_deref(),
                    envelope.clone(),
                    w.metadata.clone(),
                    condition_timeout,
                )
                .await;
            }
        });
    }
}

/// The envelope handlers and socket clients get, as JSON text:
/// `{type: "stream", timestamp, streamName, groupId, id, event}`.
pub(super) fn envelope(stream: &str, group: &str, item: Option<&str>, event: &Value) -> String {
    json!({
        "type": "stream",
        "timestamp": now_ms(),
        "streamName": stream,
        "groupId": group,
        "id": item,
        "event": event,
    })
    .to_string()
}

/// Milliseconds since the Unix epoch: the envelope's `timestamp`.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
