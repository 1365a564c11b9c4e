//! The durable queue as an engine module: it takes every `Enqueue` call and
//! serves the `queue::*`, `engine::queue::*` and `iii::queue::*` functions.
//! At drain it first stops starting jobs, then (once calls in flight have
//! settled) stops the scheduler, so attempts still running are recorded as
//! `engine_restart` at the next start rather than as lost workers.

use futures_util::future::BoxFuture;
use std::time::Duration;

use super::Queues;
use super::functions as f;
use crate::mesh::Provisions;
use crate::module::Module;

impl Module for Queues {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn provide(&self, p: &mut Provisions) {
        let queues = self.clone();
        p.enqueue(move |_, conn, invoke| f::take_enqueue(&queues, conn, invoke));
        for (id, handler) in [
            ("queue::enqueue", f::enqueue as f::QueueFn),
            ("queue::list", f::list),
            ("queue::stats", f::stats),
            ("queue::get", f::get),
            ("queue::explain", f::explain),
            ("queue::peek", f::peek),
            ("queue::pause", f::pause),
            ("queue::resume", f::resume),
            ("queue::purge", f::purge),
            ("queue::cancel", f::cancel),
            ("engine::queue::list_topics", f::list_topics),
            ("engine::queue::topic_stats", f::topic_stats),
            ("engine::queue::dlq_topics", f::dlq_topics),
            ("engine::queue::dlq_messages", f::dlq_messages),
            ("iii::queue::redrive", f::redrive),
            ("iii::queue::redrive_message", f::redrive_message),
            ("iii::queue::discard_message", f::discard_message),
        ] {
            p.async_fn(id, self, handler);
        }
        // Reading payloads and changing what others enqueued is for operators.
        p.operator_only(&[
            "queue::get",
            "queue::peek",
            "queue::pause",
            "queue::resume",
            "queue::purge",
            "queue::cancel",
            "engine::queue::dlq_messages",
            "iii::queue::redrive",
            "iii::queue::redrive_message",
            "iii::queue::discard_message",
        ]);
    }

    fn health(&self) -> Option<(&'static str, serde_json::Value)> {
        self.store_health().map(|h| ("store", h))
    }

    fn stop_intake(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        self.stop_dispatching();
        Box::pin(async {})
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shutdown())
    }
}
