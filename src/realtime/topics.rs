//! Pub/sub: channels subscribe to topics; a publish encodes its frame once and
//! offers it to every subscriber without waiting, so one stalled client never
//! delays the others (it is closed as a slow consumer and counted as dropped).
//!
//! In a cluster a publish also reaches the subscribers on every other
//! engine: the publishing engine offers it to its own clients and hands
//! `{topic, data, exclude_channel_id, raw}` to the mesh's relay (channel
//! [`RELAY_CHANNEL`]); each other engine offers what it is relayed to its
//! own clients only, relaying nothing again. So each subscribed client gets
//! a publish once, wherever it is connected (best effort across engines,
//! like the relay: an engine cut off from NATS then misses it).

use axum::extract::ws::Message;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Client, Realtime, SendError};

/// Where publishes go to the other engines of a cluster.
pub(super) const RELAY_CHANNEL: &str = "realtime";

/// A publish as relayed to other engines.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Relayed {
    pub topic: String,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_channel_id: Option<String>,
    #[serde(default)]
    pub raw: bool,
}

/// What a publish reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub recipients: usize,
    pub dropped: usize,
}

impl Realtime {
    /// Subscribes a channel; false if it was already subscribed.
    pub fn subscribe(&self, ch: &Client, topic: &str) -> Result<bool, SendError> {
        if ch.is_closing() {
            return Err(SendError::Closed);
        }
        let mut t = self.tables();
        if !t.channels.contains_key(&ch.id) {
            return Err(SendError::Closed);
        }
        let added = ch.add_topic(topic);
        t.topics
            .entry(topic.to_owned())
            .or_default()
            .insert(ch.id.clone());
        Ok(added)
    }

    pub fn unsubscribe(&self, ch: &Client, topic: &str) -> bool {
        let mut t = self.tables();
        let removed = ch.remove_topic(topic);
        if let Some(set) = t.topics.get_mut(topic) {
            set.remove(&ch.id);
            if set.is_empty() {
                t.topics.remove(topic);
            }
        }
        removed
    }

    /// Sends `{topic, data}` (or `data` alone when `raw`) to every subscriber
    /// of `topic` except `exclude`.
    pub fn publish(
        &self,
        topic: &str,
        data: &Value,
        exclude: Option<&str>,
        raw: bool,
    ) -> Published {
        let targets: Vec<Arc<Client>> = {
            let t = self.tables();
            t.topics
                .get(topic)
                .into_iter()
                .flatten()
                .filter(|id| Some(id.as_str()) != exclude)
                .filter_map(|id| t.channels.get(id).cloned())
                .collect()
        };
        let body = if raw {
            data.to_string()
        } else {
            json!({ "topic": topic, "data": data }).to_string()
        };
        // Utf8Bytes is shared: one encoding, one allocation, for every recipient.
        let frame = Message::Text(body.into());
        let mut out = Published {
            recipients: 0,
            dropped: 0,
        };
        for ch in targets {
            match ch.send(frame.clone()) {
                Ok(()) => out.recipients += 1,
                Err(_) => out.dropped += 1,
            }
        }
        out
    }
}
