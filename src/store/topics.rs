//! The durable topics module's subscriptions: one row per (topic, namespace,
//! function). The only door topics has to the store (its messages are queue
//! jobs, written by the queue): it sees names and records, never keys.

use std::sync::Arc;

use super::records::TopicSubRecord;
use super::{Store, StoreError, Ticket, codec, layout};

/// A subscription's identity: (topic, namespace, function id).
pub type SubKey = (String, String, String);

/// Subscription rows.
#[derive(Clone)]
pub struct TopicSubscriptions {
    store: Arc<Store>,
}

impl TopicSubscriptions {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Writes (or rewrites) a subscription; durable with the next sync (a
    /// publish that saw it waits for a sync that covers it).
    pub fn put(&self, k: &SubKey, rec: &TopicSubRecord) -> Result<Ticket, StoreError> {
        self.store
            .put(layout::topic_sub(&k.0, &k.1, &k.2), super::record(rec))
    }

    pub fn remove(&self, k: &SubKey) -> Result<Ticket, StoreError> {
        self.store.remove(layout::topic_sub(&k.0, &k.1, &k.2))
    }

    /// Every row, as the last run left them (unreadable ones skipped, logged).
    pub fn all(&self) -> Vec<(SubKey, TopicSubRecord)> {
        let mut out = Vec::new();
        for item in self.store.scan([layout::TOPIC_SUBS]) {
            let Ok((k, v)) = item else { continue };
            let Some(key) = layout::parse_topic_sub(&k) else {
                continue;
            };
            match codec::decode(&v) {
                Ok(rec) => out.push((key, rec)),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %key.0, "unreadable topic subscription skipped")
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_read_back_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let subs = TopicSubscriptions::new(Arc::new(Store::open(dir.path()).unwrap()));
        let k: SubKey = ("t".into(), "default".into(), "f".into());
        let rec = TopicSubRecord {
            queue_config: b"{}".to_vec(),
            condition_function_id: Some("c".into()),
            unbound_since_ms: 0,
        };
        subs.put(&k, &rec).unwrap();
        assert_eq!(subs.all(), vec![(k.clone(), rec)]);
        subs.remove(&k).unwrap();
        assert!(subs.all().is_empty());
    }
}
