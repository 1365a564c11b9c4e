//! Pub/sub between workers (iii's `iii-pubsub`): the `publish` function and
//! the `subscribe` trigger type. Every binding on a topic gets each message
//! published to it exactly once, as its payload (`data` exactly as
//! published, no metadata), fire and forget.
//!
//! Bindings are kept one by one (not one entry per topic), so unbinding one
//! subscriber never drops another's subscription (iii's local adapter does).
//!
//! In a cluster a publish also reaches the bindings on every other engine:
//! the publishing engine delivers to its own bindings and hands `{topic,
//! data}` to the mesh's relay (channel [`RELAY_CHANNEL`]); each other
//! engine delivers what it is relayed to its own bindings only, relaying
//! nothing again. So each binding gets a message once, wherever it is.
//!
//! Architecture invariant: pubsub knows the mesh and `module.rs`; it keeps
//! nothing in the store (a message reaches the bindings live when it is
//! published, or nobody).

use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::mesh::state::{Binding, TriggerTypeHandler};
use crate::mesh::{CallCtx, Mesh, Provisions, Reply};
use crate::module::Module;
use crate::protocol::{ErrorBody, codes, to_payload};

/// The trigger type subscribers bind.
pub(crate) const TRIGGER_TYPE: &str = "subscribe";

/// Where publishes go to the other engines of a cluster.
const RELAY_CHANNEL: &str = "pubsub";

#[derive(Debug, Clone)]
struct Subscriber {
    binding_id: String,
    namespace: String,
    function_id: String,
}

/// Subscribers by topic; a binding id's topic, to unbind it.
#[derive(Default)]
struct Table {
    by_topic: HashMap<String, Vec<Subscriber>>,
    topic_of: HashMap<String, String>,
}

/// The module: a cheap, cloneable handle on the subscriber table.
#[derive(Clone, Default)]
pub(crate) struct PubSub {
    table: Arc<Mutex<Table>>,
}

#[derive(Deserialize)]
struct PublishInput {
    topic: String,
    data: Value,
}

/// A publish as relayed to other engines: `data` stays raw JSON.
#[derive(serde::Serialize, Deserialize)]
struct Relayed<'a> {
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscribeConfig {
    topic: Option<String>,
}

impl PubSub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many bindings `topic` has (tests).
    #[cfg(test)]
    fn subscribers(&self, topic: &str) -> usize {
        self.lock().by_topic.get(topic).map_or(0, Vec::len)
    }
}

impl TriggerTypeHandler for PubSub {
    /// An empty or missing topic is accepted and never fires (as in iii).
    fn bind(&self, b: &Binding) -> Result<(), ErrorBody> {
        let config: SubscribeConfig = serde_json::from_str(b.config.get()).unwrap_or_default();
        let topic = config.topic.unwrap_or_default();
        let mut t = self.lock();
        // A binding id bound again replaces its earlier subscription.
        if let Some(old) = t.topic_of.remove(&b.id) {
            remove(&mut t.by_topic, &old, &b.id);
        }
        if topic.is_empty() {
            return Ok(());
        }
        t.topic_of.insert(b.id.clone(), topic.clone());
        t.by_topic.entry(topic).or_default().push(Subscriber {
            binding_id: b.id.clone(),
            namespace: b.namespace.clone(),
            function_id: b.function_id.clone(),
        });
        Ok(())
    }

    fn unbind(&self, binding_id: &str) {
        let mut t = self.lock();
        if let Some(topic) = t.topic_of.remove(binding_id) {
            remove(&mut t.by_topic, &topic, binding_id);
        }
    }
}

/// Removes one binding from a topic, and the topic with its last binding.
fn remove(by_topic: &mut HashMap<String, Vec<Subscriber>>, topic: &str, binding_id: &str) {
    if let Some(subs) = by_topic.get_mut(topic) {
        subs.retain(|s| s.binding_id != binding_id);
        if subs.is_empty() {
            by_topic.remove(topic);
        }
    }
}

/// `publish {topic, data}`: one call per binding of `topic`, here and (in a
/// cluster) on every other engine; answers null without waiting for any
/// handler.
fn publish(p: &PubSub, mesh: &Mesh, _: &CallCtx, v: Value) -> Reply {
    let inp: PublishInput = serde_json::from_value(v).map_err(|e| {
        ErrorBody::new(
            codes::DESERIALIZATION_ERROR,
            format!("Failed to deserialize input for publish: {e}"),
        )
    })?;
    if inp.topic.is_empty() {
        return Err(ErrorBody::new(codes::TOPIC_NOT_SET, "Topic is not set"));
    }
    let payload = to_payload(&inp.data);
    p.deliver(mesh, &inp.topic, &payload);
    mesh.provided().relay(RELAY_CHANNEL, || {
        let relayed = Relayed {
            topic: inp.topic.as_str().into(),
            data: &payload,
        };
        serde_json::to_vec(&relayed).expect("a publish encodes")
    });
    Ok(Value::Null)
}

impl PubSub {
    /// One call per binding of `topic` on this engine.
    fn deliver(&self, mesh: &Mesh, topic: &str, payload: &crate::protocol::Payload) {
        let subs = self.lock().by_topic.get(topic).cloned().unwrap_or_default();
        for s in subs {
            if !mesh.fire(&s.namespace, &s.function_id, payload.clone(), None) {
                tracing::debug!(topic, function = %s.function_id, "publish: no provider");
            }
        }
    }

    /// A publish another engine relayed: to this engine's bindings only.
    fn take_relayed(&self, mesh: &Mesh, message: &[u8]) {
        match serde_json::from_slice::<Relayed<'_>>(message) {
            Ok(r) => self.deliver(mesh, &r.topic, &r.data.to_owned()),
            Err(e) => tracing::warn!(error = %e, "ignored a relayed publish that does not parse"),
        }
    }
}

impl Module for PubSub {
    fn name(&self) -> &'static str {
        "pubsub"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            TRIGGER_TYPE,
            "Receives every message published to a topic",
            Arc::new(self.clone()),
        );
        p.sync_fn("publish", self, publish);
        let me = self.clone();
        p.on_relayed(RELAY_CHANNEL, move |mesh, message| {
            me.take_relayed(mesh, message)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::state::BindingOwner;
    use crate::protocol::to_payload;
    use serde_json::json;

    fn binding(id: &str, topic: &str) -> Binding {
        Binding {
            id: id.into(),
            trigger_type: TRIGGER_TYPE.into(),
            function_id: format!("f{id}"),
            namespace: "default".into(),
            trigger_namespace: None,
            config: to_payload(&json!({ "topic": topic })),
            metadata: None,
            owner: BindingOwner::Engine,
            active_on: None,
            ack: None,
        }
    }

    #[test]
    fn unbinding_one_subscriber_keeps_the_others() {
        let p = PubSub::default();
        p.bind(&binding("1", "t")).unwrap();
        p.bind(&binding("2", "t")).unwrap();
        p.bind(&binding("3", "")).unwrap();
        assert_eq!(p.subscribers("t"), 2);
        p.unbind("1");
        assert_eq!(p.subscribers("t"), 1, "iii's local adapter would drop both");
        p.unbind("3");
        p.unbind("2");
        assert_eq!(p.subscribers("t"), 0);
        assert!(p.lock().topic_of.is_empty());
    }
}
