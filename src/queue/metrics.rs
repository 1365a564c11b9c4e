//! What the queue measures for `GET /metrics`, besides the counts per state
//! read at scrape time: jobs enqueued, completed, failed attempts and dead
//! letters per queue (counters since the engine started), how long attempts
//! ran, and how long jobs waited from enqueue to their first start.
//!
//! The scheduler records; the module registers clones of these families at
//! each scrape. Labels are queue names only (operators declare queues, or
//! modules make one per durable-topic subscription): no receipt, function or
//! worker id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

type Histograms = Family<QueueLabel, Histogram, fn() -> Histogram>;

/// 1 ms to ~9 h, doubling: attempts and waits span both.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// Shared by the scheduler (which records) and the module (which registers).
#[derive(Clone)]
pub(crate) struct QueueMetrics(Arc<Families>);

struct Families {
    enqueued: Family<QueueLabel, Counter>,
    completed: Family<QueueLabel, Counter>,
    failed: Family<QueueLabel, Counter>,
    dead: Family<QueueLabel, Counter>,
    attempt: Histograms,
    wait: Histograms,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self(Arc::new(Families {
            enqueued: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            dead: Family::default(),
            attempt: Family::new_with_constructor(seconds_buckets),
            wait: Family::new_with_constructor(seconds_buckets),
        }))
    }
}

fn label(queue: &str) -> QueueLabel {
    QueueLabel {
        queue: queue.to_owned(),
    }
}

impl QueueMetrics {
    /// `n` jobs of `queue` acknowledged (durable).
    pub fn enqueued(&self, queue: &str, n: u64) {
        self.0.enqueued.get_or_create(&label(queue)).inc_by(n);
    }

    /// An attempt ended: completed or failed, after `ran_ms`.
    pub fn attempt_ended(&self, queue: &str, ok: bool, ran_ms: u64) {
        let l = label(queue);
        match ok {
            true => self.0.completed.get_or_create(&l).inc(),
            false => self.0.failed.get_or_create(&l).inc(),
        };
        (self.0.attempt.get_or_create(&l)).observe(ran_ms as f64 / 1000.0);
    }

    /// A job of `queue` was dead-lettered (attempts spent, expired, or a child failed).
    pub fn dead_lettered(&self, queue: &str) {
        self.0.dead.get_or_create(&label(queue)).inc();
    }

    /// A job started its first attempt `waited_ms` after its enqueue.
    pub fn first_start(&self, queue: &str, waited_ms: u64) {
        (self.0.wait.get_or_create(&label(queue))).observe(waited_ms as f64 / 1000.0);
    }

    pub fn register(&self, r: &mut Registry) {
        let f = &self.0;
        r.register(
            "queue_enqueued",
            "Jobs acknowledged, per queue",
            f.enqueued.clone(),
        );
        r.register(
            "queue_completed",
            "Jobs completed, per queue",
            f.completed.clone(),
        );
        r.register(
            "queue_attempts_failed",
            "Attempts that failed (error, timeout, worker lost), per queue",
            f.failed.clone(),
        );
        r.register(
            "queue_dead_lettered",
            "Jobs moved to the dead letters, per queue",
            f.dead.clone(),
        );
        r.register_with_unit(
            "queue_attempt_duration",
            "How long attempts ran, per queue",
            Unit::Seconds,
            f.attempt.clone(),
        );
        r.register_with_unit(
            "queue_wait",
            "From enqueue to a job's first start, per queue",
            Unit::Seconds,
            f.wait.clone(),
        );
    }
}
