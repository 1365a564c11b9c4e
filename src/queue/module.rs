//! The durable queue as an engine module: it takes every `Enqueue` call and
//! serves the `queue::*`, `engine::queue::*` and `iii::queue::*` functions.
//! At drain it first stops starting jobs, then (once calls in flight have
//! settled) stops the scheduler, so attempts still running are recorded as
//! `engine_restart` at the next start rather than as lost workers.

use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::Queues;
use super::functions as f;
use crate::mesh::Provisions;
use crate::module::Module;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// The store's sync rounds (a counter of rounds and one of their seconds:
/// `rate(sum) / rate(count)` is the mean sync latency) and its size on disk.
fn store_metrics(r: &mut Registry, store: &crate::store::Store) {
    let stats = store.sync_stats();
    let rounds = prometheus_client::metrics::counter::Counter::<u64>::default();
    rounds.inc_by(stats.rounds);
    let seconds = prometheus_client::metrics::counter::Counter::<f64, AtomicU64>::default();
    seconds.inc_by(stats.seconds);
    let bytes = Gauge::<i64>::default();
    bytes.set(i64::try_from(store.bytes_on_disk()).unwrap_or(i64::MAX));
    r.register(
        "store_syncs",
        "Sync rounds (flush and fdatasync) that succeeded",
        rounds,
    );
    r.register_with_unit(
        "store_sync",
        "Time spent in sync rounds",
        Unit::Seconds,
        seconds,
    );
    r.register_with_unit("store_disk", "The store's size on disk", Unit::Bytes, bytes);
}

/// The queue functions workers call, and what serves each.
const FUNCTIONS: [(&str, f::QueueFn); 23] = [
    ("queue::enqueue", f::enqueue),
    ("queue::enqueue_many", f::enqueue_many),
    ("queue::enqueue_flow", f::enqueue_flow),
    ("queue::heartbeat", f::heartbeat),
    ("queue::throttle", f::throttle),
    ("queue::progress", f::progress),
    ("queue::log", f::log),
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
];

/// The ids of the queue functions workers call (another home of queued jobs
/// serves the same set).
pub(crate) fn function_ids() -> impl Iterator<Item = &'static str> {
    FUNCTIONS.iter().map(|(id, _)| *id)
}

/// Reading payloads and changing what others enqueued is for operators.
pub(crate) const OPERATOR_ONLY: &[&str] = &[
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
];

impl Module for Queues {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            super::progress::PROGRESS_TRIGGER,
            "Fires when a queued job reports progress (config: queue?, receipt?, condition_function_id?)",
            std::sync::Arc::new(self.progress_watchers.clone()),
        );
        if !self.serves_workers {
            return;
        }
        let queues = self.clone();
        p.enqueue(move |mesh, conn, invoke| f::take_enqueue(&queues, mesh, conn, invoke));
        for (id, handler) in FUNCTIONS {
            p.async_fn(id, self, handler);
        }
        p.operator_only(OPERATOR_ONLY);
    }

    /// Jobs per queue and state, and the age of each queue's oldest ready
    /// job: what the alert rules watch (dead letters growing, work waiting).
    fn metrics<'a>(&'a self, r: &'a mut Registry) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Ok(list) = self.op(super::op::Op::List).await else {
                return;
            };
            let jobs = Family::<QueueState, Gauge>::default();
            let oldest = Family::<QueueLabel, Gauge<f64, AtomicU64>>::default();
            for q in list["queues"].as_array().into_iter().flatten() {
                let queue = q["queue"].as_str().unwrap_or_default().to_owned();
                for state in super::states::COUNTED {
                    let n = q[state.as_str()].as_i64().unwrap_or(0);
                    jobs.get_or_create(&QueueState {
                        queue: queue.clone(),
                        state: state.as_str(),
                    })
                    .set(n);
                }
                let age = q["oldest_ready_age_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                oldest.get_or_create(&QueueLabel { queue }).set(age);
            }
            r.register("queue_jobs", "Jobs per queue and state", jobs);
            self.metrics.register(r);
            if let Some(store) = self.store.upgrade() {
                store_metrics(r, &store);
            }
            r.register_with_unit(
                "queue_oldest_ready_age",
                "Age of each queue's oldest job ready to run (0 when none)",
                Unit::Seconds,
                oldest,
            );
        })
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
