//! The `stream` trigger type: bindings filtered by stream (required), group
//! and item (when non-empty), each with an optional condition function; and
//! the envelope clients and handlers receive:
//! `{type: "stream", timestamp, streamName, groupId, id, event}`.
//!
//! The table and the fan-out are `mesh::watchers`'.

use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

use crate::mesh::Mesh;
use crate::mesh::watchers::WatchConfig;
use crate::protocol::Payload;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct StreamWatch {
    stream_name: String,
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    condition_function_id: Option<String>,
}

impl WatchConfig for StreamWatch {
    /// `stream_name` is required: a binding without a config is refused.
    fn when_absent() -> Option<Self> {
        None
    }

    fn condition(&self) -> Option<&str> {
        self.condition_function_id.as_deref()
    }
}

impl StreamWatch {
    fn wants(&self, stream: &str, group: &str, item: Option<&str>) -> bool {
        self.stream_name == stream
            && self
                .group_id
                .as_deref()
                .is_none_or(|g| g.is_empty() || g == group)
            && self
                .item_id
                .as_deref()
                .is_none_or(|i| i.is_empty() || Some(i) == item)
    }
}

/// The trigger type's id.
pub(super) const TRIGGER_TYPE: &str = "stream";

/// Every live `stream` binding.
pub(super) type Watchers = crate::mesh::watchers::Watchers<StreamWatch>;

/// Where an event happened and what it is (`event` is the envelope's `event`).
pub(super) struct Event<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub item: Option<&'a str>,
    pub event: Value,
}

/// Where an event happened: what bindings and subscriptions match on.
pub(super) struct Where<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub item: Option<&'a str>,
}

/// Calls every matching binding with the envelope, from a task; each
/// binding's condition first.
pub(super) fn fire(
    watchers: &Watchers,
    mesh: &Mesh,
    condition_timeout: Duration,
    at: &Where<'_>,
    envelope: &Payload,
) {
    watchers.fire(
        mesh,
        condition_timeout,
        |w| w.wants(at.stream, at.group, at.item),
        || envelope.clone(),
    );
}

/// An envelope another engine relayed (items shared by a cluster): the
/// envelope itself is the message, and where it happened is read back from
/// it, so this engine's bindings and clients get the very same bytes.
#[derive(Deserialize)]
pub(super) struct Relayed {
    #[serde(rename = "streamName")]
    stream: String,
    #[serde(rename = "groupId")]
    group: String,
    id: Option<String>,
}

impl Relayed {
    /// Reads what another engine relayed; `None` (logged) if it is not an
    /// envelope.
    pub(super) fn decode(message: &[u8]) -> Option<(Relayed, String)> {
        let text = std::str::from_utf8(message).ok();
        match text.map(|t| (serde_json::from_str::<Relayed>(t), t)) {
            Some((Ok(r), t)) => Some((r, t.to_owned())),
            _ => {
                tracing::warn!("a relayed stream event that does not parse was dropped");
                None
            }
        }
    }

    pub(super) fn at(&self) -> Where<'_> {
        Where {
            stream: &self.stream,
            group: &self.group,
            item: self.id.as_deref(),
        }
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
