//! Durable topics as an engine module: the `durable:subscriber` trigger
//! type, `iii::durable::publish` and `engine::topics::list`.

use std::sync::Arc;

use super::subscriptions::Subscriptions;
use super::{TRIGGER_TYPE, Topics, TopicsConfig, functions as f};
use crate::mesh::Provisions;
use crate::module::Module;
use crate::queue::QueueBackend;
use crate::store::Store;
use crate::store::topics::TopicSubscriptions;

pub(crate) struct TopicsModule {
    topics: Topics,
}

impl TopicsModule {
    /// Reads the subscriptions the last run left and gives their queues
    /// their settings (before any worker connects).
    pub(crate) fn new(
        store: Arc<Store>,
        queues: Arc<dyn QueueBackend>,
        config: TopicsConfig,
    ) -> Self {
        let rows = TopicSubscriptions::new(store);
        Self {
            topics: Topics {
                subs: Subscriptions::load(rows, queues, config.keep_unbound),
                condition_timeout: config.condition_timeout,
            },
        }
    }
}

impl Module for TopicsModule {
    fn name(&self) -> &'static str {
        "topics"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            TRIGGER_TYPE,
            "Receives every message published to a durable topic, as a queue job",
            Arc::new(self.topics.subs.clone()),
        );
        let t = &self.topics;
        p.async_fn("iii::durable::publish", t, f::publish);
        p.sync_fn("engine::topics::list", t, f::list);
    }
}
