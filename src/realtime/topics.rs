//! Pub/sub: channels subscribe to topics; a publish encodes its frame once and
//! offers it to every subscriber without waiting, so one stalled client never
//! delays the others (it is closed as a slow consumer and counted as dropped).

use axum::extract::ws::Message;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{Client, Realtime, SendError};

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
