//! Durable topics (iii's `iii::durable::publish` and `durable:subscriber`):
//! topic fan-out through the durable queue. Named `topics` beside `pubsub`:
//! pubsub is live fire-and-forget; here every message is a queue job.
//!
//! - `subscriptions.rs`: the `durable:subscriber` trigger type. Each
//!   (topic, namespace, function) is one subscription with its own internal
//!   queue (`topic:<topic>><function>[@<namespace>]`), its settings mapped
//!   from the binding's `queue_config`; several bindings of one function share
//!   it and compete. Subscriptions are rows in the store
//!   (`store::topics::TopicSubscriptions`) and outlive their bindings for
//!   `[topics] keep_unbound`, so a publish while the subscriber's worker is
//!   away (reconnecting, restarting, or the engine just restarted) still
//!   makes its job, which waits in `waiting_for_worker` until a worker serves
//!   the function again;
//! - `functions.rs`: `iii::durable::publish {topic, data}` (`queue` is an
//!   alias of `topic`): one job per subscription, all written in ONE queue
//!   batch and acknowledged after the one sync that covers them; and
//!   `engine::topics::list`;
//! - `module.rs`: its `Module` impl.
//!
//! Retries, leases, dead letters, history and `queue::*` inspection are the
//! queue's: a subscriber's job is an ordinary job of its queue.
//!
//! Architecture invariant: topics knows the mesh (condition functions), its
//! store door, where its jobs go (`queue::QueueBackend`, handed over by the engine
//! root) and `module.rs`; nothing of the queue's internals, the engine root or
//! the edge.

mod functions;
pub(crate) mod module;
mod subscriptions;

use serde::Deserialize;
use std::time::Duration;

pub(crate) use module::TopicsModule;

/// The module's handle, shared by its functions and its trigger type.
#[derive(Clone)]
struct Topics {
    subs: subscriptions::Subscriptions,
    condition_timeout: Duration,
}

/// The trigger type subscribers bind.
pub(crate) const TRIGGER_TYPE: &str = "durable:subscriber";

/// `[topics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// How long a subscription outlives its last binding: publishes in that
    /// time still make it a job (its worker is expected back).
    #[serde(with = "humantime_serde")]
    pub keep_unbound: Duration,
    /// How long a subscription's condition function may take at publish; a
    /// slower one skips that subscriber.
    #[serde(with = "humantime_serde")]
    pub condition_timeout: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            keep_unbound: Duration::from_secs(24 * 3600),
            condition_timeout: Duration::from_secs(30),
        }
    }
}

impl TopicsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.condition_timeout.is_zero() {
            return Err("topics.condition_timeout must be greater than 0".into());
        }
        Ok(())
    }
}
