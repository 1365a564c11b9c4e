//! The `durable:subscriber` trigger type: subscriptions by topic, their
//! bindings, their rows in the store and their queues' settings.
//!
//! `bind`/`unbind` run under the mesh lock: they touch this table, apply one
//! small store batch (not waited for: the sync of any publish that saw the
//! change covers it) and send the queue its settings (a channel send).

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::protocol::{ErrorBody, codes, names};
use crate::queue::QueueBackend;
use crate::queue::settings::{Ordering, QueueOverrides};
use crate::store::records::TopicSubRecord;
use crate::store::topics::{SubKey, TopicSubscriptions};

/// Longest internal queue name the queue accepts.
const MAX_QUEUE_NAME: usize = 200;
/// Most attempts a `maxRetries` may ask for.
const MAX_RETRIES: u32 = 1_000;

/// Why a binding was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum BindError {
    #[error("topic is required for durable:subscriber triggers")]
    TopicRequired,
    #[error("Invalid durable:subscriber config: {0}")]
    BadConfig(String),
    #[error("{0}")]
    BadName(String),
    #[error("queue_config.concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("queue_config.maxRetries is at most {MAX_RETRIES}")]
    TooManyRetries,
    #[error(
        "topic, function id and namespace make a queue name of {0} bytes; at most {MAX_QUEUE_NAME} are allowed"
    )]
    NameTooLong(usize),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SubscriberConfig {
    topic: Option<String>,
    condition_function_id: Option<String>,
    queue_config: Option<QueueConfig>,
}

/// iii's `queue_config` (camelCase). `maxPriority` is accepted and unused
/// (jobs of a subscriber queue all have one priority); `visibilityTimeout`,
/// `delaySeconds` and `backoffType` are ignored, as in iii.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct QueueConfig {
    #[serde(rename = "type")]
    kind: Option<String>,
    max_retries: Option<u32>,
    concurrency: Option<usize>,
    backoff_delay_ms: Option<u64>,
    #[allow(dead_code)]
    max_priority: Option<Value>,
}

impl QueueConfig {
    /// The queue settings it asks for; unset ones keep `[queue.defaults]`.
    fn overrides(&self) -> Result<QueueOverrides, BindError> {
        if self.concurrency == Some(0) {
            return Err(BindError::ZeroConcurrency);
        }
        if self.max_retries.is_some_and(|r| r > MAX_RETRIES) {
            return Err(BindError::TooManyRetries);
        }
        let fifo = self.kind.as_deref() == Some("fifo");
        Ok(QueueOverrides {
            // iii's subscriber: maxRetries retries after the first attempt.
            max_attempts: self.max_retries.map(|r| r + 1),
            concurrency: self.concurrency,
            backoff_initial: self.backoff_delay_ms.map(Duration::from_millis),
            // fifo with no group field: the whole queue is one group, in
            // publish order (a failed message holds the ones after it).
            ordering: Some(if fifo {
                Ordering::Fifo
            } else {
                Ordering::Standard
            }),
            ..QueueOverrides::default()
        })
    }
}

/// A binding's config, checked.
struct Parsed {
    topic: String,
    condition: Option<String>,
    queue_config: Vec<u8>,
    overrides: QueueOverrides,
}

fn parse(config: &str) -> Result<Parsed, BindError> {
    let raw: SubscriberConfig = match config.trim() {
        "null" => SubscriberConfig::default(),
        text => serde_json::from_str(text).map_err(|e| BindError::BadConfig(e.to_string()))?,
    };
    let topic = raw
        .topic
        .filter(|t| !t.is_empty())
        .ok_or(BindError::TopicRequired)?;
    names::check("topic", &topic).map_err(BindError::BadName)?;
    if let Some(c) = &raw.condition_function_id {
        names::check("condition_function_id", c).map_err(BindError::BadName)?;
    }
    let qc = raw.queue_config.unwrap_or_default();
    let overrides = qc.overrides()?;
    // Stored as text so a restart maps it again with the same rules.
    let queue_config = serde_json::to_vec(&json!({
        "type": qc.kind,
        "maxRetries": qc.max_retries,
        "concurrency": qc.concurrency,
        "backoffDelayMs": qc.backoff_delay_ms,
    }))
    .unwrap_or_default();
    Ok(Parsed {
        topic,
        condition: raw.condition_function_id,
        queue_config,
        overrides,
    })
}

/// The internal queue of one subscription: readable, and unambiguous (`\`,
/// `>` and `@` are escaped in each part).
pub(super) fn queue_name(topic: &str, namespace: &str, function_id: &str) -> String {
    fn esc(s: &str) -> String {
        s.replace('\\', "\\\\")
            .replace('>', "\\>")
            .replace('@', "\\@")
    }
    let mut name = format!("topic:{}>{}", esc(topic), esc(function_id));
    if namespace != "default" {
        name.push('@');
        name.push_str(&esc(namespace));
    }
    name
}

/// One (topic, namespace, function).
#[derive(Debug, Clone)]
pub(super) struct Sub {
    pub queue: String,
    pub condition: Option<String>,
    queue_config: Vec<u8>,
    bindings: HashSet<String>,
    /// When its last binding went (ms since the epoch); `None` while bound.
    unbound_since_ms: Option<u64>,
}

impl Sub {
    fn record(&self) -> TopicSubRecord {
        TopicSubRecord {
            queue_config: self.queue_config.clone(),
            condition_function_id: self.condition.clone(),
            unbound_since_ms: self.unbound_since_ms.unwrap_or(0),
        }
    }
}

#[derive(Default)]
struct Table {
    /// Ordered, so a topic's subscriptions are one range and listings sort.
    subs: BTreeMap<SubKey, Sub>,
    binding_key: std::collections::HashMap<String, SubKey>,
}

/// The subscriptions: the trigger type's handler, read by publish.
#[derive(Clone)]
pub(super) struct Subscriptions {
    table: Arc<Mutex<Table>>,
    rows: TopicSubscriptions,
    queues: Arc<dyn QueueBackend>,
    keep_unbound: Duration,
}

impl Subscriptions {
    /// Loads the subscriptions the last run left (none is bound yet: each
    /// counts as unbound since it was, or since now) and gives their queues
    /// their settings.
    pub(super) fn load(
        rows: TopicSubscriptions,
        queues: Arc<dyn QueueBackend>,
        keep_unbound: Duration,
    ) -> Self {
        let now = now_ms();
        let mut table = Table::default();
        for ((topic, ns, fid), rec) in rows.all() {
            let overrides = serde_json::from_slice::<QueueConfig>(&rec.queue_config)
                .ok()
                .and_then(|qc| qc.overrides().ok())
                .unwrap_or_default();
            let queue = queue_name(&topic, &ns, &fid);
            queues.define(queue.clone(), overrides);
            let since = match rec.unbound_since_ms {
                0 => now,
                t => t,
            };
            table.subs.insert(
                (topic, ns, fid),
                Sub {
                    queue,
                    condition: rec.condition_function_id,
                    queue_config: rec.queue_config,
                    bindings: HashSet::new(),
                    unbound_since_ms: Some(since),
                },
            );
        }
        Self {
            table: Arc::new(Mutex::new(table)),
            rows,
            queues,
            keep_unbound,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn queues(&self) -> &dyn QueueBackend {
        self.queues.as_ref()
    }

    /// The subscriptions a publish to `topic` fans out to: bound ones, and
    /// unbound ones within `keep_unbound` (older ones are forgotten now).
    pub(super) fn of_topic(&self, topic: &str) -> Vec<(SubKey, Sub)> {
        let now = now_ms();
        let keep = self.keep_unbound.as_millis() as u64;
        let mut t = self.lock();
        let from: SubKey = (topic.to_owned(), String::new(), String::new());
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (k, s) in t.subs.range(from..) {
            if k.0 != topic {
                break;
            }
            match s.unbound_since_ms {
                Some(since) if now.saturating_sub(since) > keep => expired.push(k.clone()),
                _ => out.push((k.clone(), s.clone())),
            }
        }
        for k in expired {
            tracing::info!(topic = %k.0, function = %k.2, "durable topic: subscription unbound past keep_unbound; forgotten");
            t.subs.remove(&k);
            if let Err(e) = self.rows.remove(&k) {
                tracing::warn!(error = %e, "cannot remove a topic subscription row");
            }
        }
        out
    }

    /// What `engine::topics::list` shows.
    pub(super) fn list(&self) -> Value {
        let t = self.lock();
        let rows: Vec<Value> = t
            .subs
            .iter()
            .map(|((topic, ns, fid), s)| {
                json!({
                    "topic": topic,
                    "namespace": ns,
                    "function_id": fid,
                    "queue": s.queue,
                    "bindings": s.bindings.len(),
                    "condition_function_id": s.condition,
                    "unbound_since_ms": s.unbound_since_ms,
                })
            })
            .collect();
        json!({ "subscriptions": rows })
    }

    fn persist(&self, k: &SubKey, s: &Sub) {
        if let Err(e) = self.rows.put(k, &s.record()) {
            tracing::error!(topic = %k.0, function = %k.2, error = %e, "cannot write a topic subscription");
        }
    }

    /// Removes binding `id` from its subscription; the last one marks it unbound.
    fn release(&self, t: &mut Table, id: &str) {
        let Some(k) = t.binding_key.remove(id) else {
            return;
        };
        if let Some(s) = t.subs.get_mut(&k) {
            s.bindings.remove(id);
            if s.bindings.is_empty() {
                s.unbound_since_ms = Some(now_ms());
                let s = s.clone();
                self.persist(&k, &s);
            }
        }
    }
}

impl TriggerTypeHandler for Subscriptions {
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let refuse =
            |e: BindError| ErrorBody::new(codes::TRIGGER_REGISTRATION_FAILED, e.to_string());
        let p = parse(b.config.get()).map_err(refuse)?;
        let queue = queue_name(&p.topic, &b.namespace, &b.function_id);
        if queue.len() > MAX_QUEUE_NAME {
            return Err(refuse(BindError::NameTooLong(queue.len())));
        }
        let k: SubKey = (p.topic, b.namespace.clone(), b.function_id.clone());
        let mut t = self.lock();
        self.release(&mut t, &b.id);
        let s = t.subs.entry(k.clone()).or_insert_with(|| Sub {
            queue: queue.clone(),
            condition: None,
            queue_config: Vec::new(),
            bindings: HashSet::new(),
            unbound_since_ms: None,
        });
        // The last binding's condition and queue_config win (as in iii).
        s.condition = p.condition;
        s.queue_config = p.queue_config;
        s.bindings.insert(b.id.clone());
        s.unbound_since_ms = None;
        let s = s.clone();
        t.binding_key.insert(b.id.clone(), k.clone());
        self.persist(&k, &s);
        self.queues.define(queue, p.overrides);
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        let mut t = self.lock();
        self.release(&mut t, binding_id);
    }

    /// A subscriber bound on another engine of a cluster is bound here too:
    /// this engine's publishes make it a job in this engine's queue, and
    /// when that binding goes (or its engine dies) the subscription is kept
    /// here for `keep_unbound` like one of this engine's own.
    fn cluster_wide(&self) -> bool {
        true
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_readable_and_unambiguous() {
        assert_eq!(
            queue_name("orders", "default", "billing::charge"),
            "topic:orders>billing::charge"
        );
        assert_eq!(queue_name("orders", "eu", "f"), "topic:orders>f@eu");
        assert_ne!(
            queue_name("a>b", "default", "c"),
            queue_name("a", "default", "b>c")
        );
        assert_ne!(queue_name("a", "default", "b@c"), queue_name("a", "c", "b"));
    }

    #[test]
    fn queue_config_maps_onto_queue_settings() {
        let p = parse(r#"{"topic":"t","queue_config":{"type":"fifo","maxRetries":2,"concurrency":3,"backoffDelayMs":50,"visibilityTimeout":9,"maxPriority":5}}"#).unwrap();
        assert_eq!(p.overrides.ordering, Some(Ordering::Fifo));
        assert_eq!(
            p.overrides.max_attempts,
            Some(3),
            "maxRetries after the first attempt"
        );
        assert_eq!(p.overrides.concurrency, Some(3));
        assert_eq!(p.overrides.backoff_initial, Some(Duration::from_millis(50)));
        let p = parse(r#"{"topic":"t","queue_config":{"type":"standard"}}"#).unwrap();
        assert_eq!(p.overrides.ordering, Some(Ordering::Standard));
        assert_eq!(
            p.overrides.max_attempts, None,
            "unset keeps the queue defaults"
        );
        // What is stored maps back to the same settings.
        let again: QueueConfig = serde_json::from_slice(&p.queue_config).unwrap();
        assert_eq!(
            again.overrides().unwrap().ordering,
            Some(Ordering::Standard)
        );
    }

    #[test]
    fn bad_configs_are_refused_with_clear_messages() {
        let e = |c: &str| parse(c).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e("{}"), "topic is required for durable:subscriber triggers");
        assert_eq!(
            e(r#"{"topic":""}"#),
            "topic is required for durable:subscriber triggers"
        );
        assert!(e(r#"{"topic":"a\u0000b"}"#).contains("control character"));
        assert!(e(r#"{"topic":"t","queue_config":{"concurrency":0}}"#).contains("at least 1"));
        assert!(
            e(r#"{"topic":"t","queue_config":{"maxRetries":"x"}}"#)
                .starts_with("Invalid durable:subscriber config")
        );
        assert!(e(r#"{"topic":"t","queue_config":{"maxRetries":100000}}"#).contains("at most"));
    }
}
