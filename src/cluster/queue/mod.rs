//! The cluster's durable queues on NATS JetStream (`[cluster] queues =
//! "jetstream"`): a job enqueued on any engine is run by any engine with a
//! worker for its function.
//!
//! In NATS (every name derived from the cluster's name):
//! - the job stream `qmesh_<cluster>_jobs` (work-queue retention, `[cluster]
//!   replicas`, a duplicate window of `[cluster] idempotency_window`): one
//!   message per job on `qmesh.<cluster>.jobs.<queue>.<namespace>.<function>`
//!   (each base64url), the payload as it came, the receipt and trace context
//!   in headers;
//! - one durable pull consumer per (queue, namespace, function), shared by
//!   every engine: `max_ack_pending` is the queue's `concurrency` across the
//!   cluster, `ack_wait` its lease (at most [`MAX_ACK_WAIT`], kept alive with
//!   in-progress acks while a call runs);
//! - the bucket `qmesh_<cluster>_attempts`: the failed attempts of a job
//!   still retrying, by receipt (the engine that runs its next attempt may be
//!   another one);
//! - the dead-letter stream `qmesh_<cluster>_dead`: one message per dead
//!   job on `qmesh.<cluster>.dead.<queue>`, with its attempt history;
//! - the bucket `qmesh_<cluster>_receipts`: where each job is by receipt (its
//!   sequence on the job stream, written before its receipt is answered, or
//!   on the dead-letter stream), for `queue::get`, `explain` and `cancel`;
//! - the bucket `qmesh_<cluster>_queues`: a flag per paused queue (its
//!   consumers are paused with `pause_until` too).
//!
//! In memory: which consumers this engine made sure of, and one pull task per
//! consumer whose function one of its own workers serves (`runner.rs`).
//! `intake.rs` takes enqueues, `dead.rs` keeps attempt histories and dead
//! letters, `index.rs` the two buckets above, `views.rs` and `actions.rs`
//! the operator functions (`queue::list/stats/get/explain/peek`,
//! `queue::pause/resume/purge/cancel`, `engine::queue::list_topics/
//! topic_stats`, redrive and discard), answered by any engine.

mod actions;
mod dead;
mod index;
mod intake;
mod runner;
mod views;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde_json::Value;
use sha2::Digest;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::directory::Directory;
use super::{Cluster, ClusterConfig, ClusterError, Names};
use crate::mesh::{CallCtx, Mesh, Provisions, Reply};
use crate::module::Module;
use crate::protocol::{ErrorBody, codes};
use crate::queue::settings::{Ordering, QueueConfig, QueueSettings};
use async_nats::jetstream;

/// The longest a job pulled by an engine that died stays invisible before
/// another engine gets it: a queue's lease beyond it is kept alive with
/// in-progress acks while the call runs.
const MAX_ACK_WAIT: Duration = Duration::from_secs(10);

/// How long the attempt history of a retrying job is kept in NATS.
const HISTORY_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// One (queue, namespace, function): a subject of the job stream and its consumer.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct JobKey {
    pub queue: String,
    pub namespace: String,
    pub function_id: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl JobKey {
    fn subject(&self, names: &Names) -> String {
        let b = b64();
        format!(
            "qmesh.{}.jobs.{}.{}.{}",
            names.cluster,
            b.encode(&self.queue),
            b.encode(&self.namespace),
            b.encode(&self.function_id)
        )
    }

    /// The consumer's name: a digest, since names are bounded and the three
    /// parts are not.
    fn consumer(&self) -> String {
        let digest = sha2::Sha256::digest(
            format!("{}\0{}\0{}", self.queue, self.namespace, self.function_id).as_bytes(),
        );
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("job_{hex}")
    }

    /// The subject prefix of every job of `queue` (`<prefix>.>` is all of them).
    fn queue_prefix(queue: &str, names: &Names) -> String {
        format!("qmesh.{}.jobs.{}", names.cluster, b64().encode(queue))
    }

    /// The key a job subject (or a consumer's filter) names.
    fn parse(subject: &str, names: &Names) -> Option<JobKey> {
        let rest = subject.strip_prefix(&format!("qmesh.{}.jobs.", names.cluster))?;
        let mut parts = rest.split('.');
        let decode = |s: Option<&str>| String::from_utf8(b64().decode(s?).ok()?).ok();
        let key = JobKey {
            queue: decode(parts.next())?,
            namespace: decode(parts.next())?,
            function_id: decode(parts.next())?,
        };
        parts.next().is_none().then_some(key)
    }
}

/// The JetStream queues' state shared by their tasks and functions.
pub(super) struct Shared {
    names: Names,
    js: jetstream::Context,
    jobs: jetstream::stream::Stream,
    dead: jetstream::stream::Stream,
    attempts: jetstream::kv::Store,
    /// Where each job is, by receipt (`index.rs`).
    receipts: jetstream::kv::Store,
    /// Which queues are paused (`index.rs`).
    queue_flags: jetstream::kv::Store,
    config: QueueConfig,
    mesh: Mesh,
    directory: Arc<Directory>,
    /// Consumers this engine created or found (none is ever deleted).
    consumers: Mutex<HashSet<JobKey>>,
    /// Cancelled at drain: pulling stops.
    stop: CancellationToken,
}

/// The cluster's JetStream queues, a module of the engine root: it takes
/// `Enqueue` calls and the queue functions instead of the local queue.
#[derive(Clone)]
pub(crate) struct ClusterQueues {
    shared: Arc<Shared>,
}

fn setup_error(name: String, replicas: usize, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Queues {
        name,
        replicas,
        message: e.to_string(),
    }
}

impl Cluster {
    /// Opens (or creates) the job stream, the dead-letter stream and the
    /// attempts bucket.
    pub(crate) async fn queues(
        &self,
        config: &ClusterConfig,
        queue: QueueConfig,
    ) -> Result<ClusterQueues, ClusterError> {
        let js = jetstream::new(self.client.clone());
        let replicas = config.replicas;
        let c = &self.names.cluster;
        let jobs_name = format!("qmesh_{c}_jobs");
        let jobs = super::kv::open_stream(
            &js,
            jetstream::stream::Config {
                name: jobs_name.clone(),
                subjects: vec![format!("qmesh.{c}.jobs.>")],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: config.idempotency_window,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup_error(jobs_name, replicas, e))?;
        let dead_name = format!("qmesh_{c}_dead");
        let dead = super::kv::open_stream(
            &js,
            jetstream::stream::Config {
                name: dead_name.clone(),
                subjects: vec![format!("qmesh.{c}.dead.>")],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                allow_direct: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup_error(dead_name, replicas, e))?;
        let attempts = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_attempts"),
            replicas,
            HISTORY_KEPT,
        )
        .await?;
        let receipts = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_receipts"),
            replicas,
            index::RECEIPTS_KEPT,
        )
        .await?;
        let queue_flags = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_queues"),
            replicas,
            Duration::ZERO,
        )
        .await?;
        tracing::info!(stream = %jobs.cached_info().config.name, replicas, "queues on the cluster's JetStream");
        Ok(ClusterQueues {
            shared: Arc::new(Shared {
                names: self.names.clone(),
                js,
                jobs,
                dead,
                attempts,
                receipts,
                queue_flags,
                config: queue,
                mesh: self.mesh.clone(),
                directory: self.directory.clone(),
                consumers: Mutex::new(HashSet::new()),
                stop: CancellationToken::new(),
            }),
        })
    }
}

impl Shared {
    /// A queue's settings, or why its jobs cannot go to JetStream: unknown
    /// in strict mode, or using a feature these queues do not have yet.
    fn settings(&self, queue: &str) -> Result<QueueSettings, ErrorBody> {
        let s = self.config.settings(queue).ok_or_else(|| {
            ErrorBody::new(
                codes::QUEUE_NOT_FOUND,
                format!("queue {queue:?} is not declared ([queue] strict is on)"),
            )
        })?;
        let unsupported = if s.ordering == Ordering::Fifo {
            Some("ordering = \"fifo\"")
        } else if s.rate.is_some() {
            Some("rate")
        } else if s.fair_by.is_some() {
            Some("fair_by")
        } else {
            None
        };
        match unsupported {
            Some(what) => Err(not_supported(format!(
                "queue {queue:?} uses {what}, which the cluster's JetStream queues do not support yet"
            ))),
            None => Ok(s),
        }
    }
}

/// How long a consumer's server waits for an ack before another engine may
/// get the job.
fn ack_wait(s: &QueueSettings) -> Duration {
    s.lease.min(MAX_ACK_WAIT)
}

fn not_supported(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::NOT_SUPPORTED, message)
}

/// What a queue function not implemented on JetStream queues answers.
fn unsupported(id: &'static str, _: Mesh, _: CallCtx, _: Value) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        Err(not_supported(format!(
            "{id} is not supported yet with [cluster] queues = \"jetstream\" \
             (not yet: queue::enqueue_many, enqueue_flow, heartbeat, progress, log, throttle)"
        )))
    })
}

impl Module for ClusterQueues {
    fn name(&self) -> &'static str {
        "cluster_queues"
    }

    fn provide(&self, p: &mut Provisions) {
        let shared = self.shared.clone();
        p.enqueue(move |_, conn, invoke| intake::take_enqueue(&shared, conn, invoke));
        for id in crate::queue::function_ids() {
            match id {
                "queue::enqueue" => p.async_fn(id, &self.shared, intake::enqueue),
                "engine::queue::dlq_topics" => p.async_fn(id, &self.shared, dead::dlq_topics),
                "engine::queue::dlq_messages" => p.async_fn(id, &self.shared, dead::dlq_messages),
                "queue::list" => p.async_fn(id, &self.shared, views::list),
                "queue::stats" => p.async_fn(id, &self.shared, views::stats),
                "queue::get" => p.async_fn(id, &self.shared, views::get),
                "queue::explain" => p.async_fn(id, &self.shared, views::explain),
                "queue::peek" => p.async_fn(id, &self.shared, views::peek),
                "engine::queue::list_topics" => p.async_fn(id, &self.shared, views::list_topics),
                "engine::queue::topic_stats" => p.async_fn(id, &self.shared, views::topic_stats),
                "queue::pause" => p.async_fn(id, &self.shared, actions::pause),
                "queue::resume" => p.async_fn(id, &self.shared, actions::resume),
                "queue::purge" => p.async_fn(id, &self.shared, actions::purge),
                "queue::cancel" => p.async_fn(id, &self.shared, actions::cancel),
                "iii::queue::redrive" => p.async_fn(id, &self.shared, actions::redrive),
                "iii::queue::redrive_message" => {
                    p.async_fn(id, &self.shared, actions::redrive_message)
                }
                "iii::queue::discard_message" => {
                    p.async_fn(id, &self.shared, actions::discard_message)
                }
                _ => p.async_fn(id, &id, unsupported),
            }
        }
        p.operator_only(crate::queue::OPERATOR_ONLY);
    }

    fn start(&self) -> Vec<JoinHandle<()>> {
        vec![tokio::spawn(self.shared.clone().discover())]
    }

    /// Pulling stops; jobs already running finish (their calls are waited
    /// for like any other) and are acknowledged.
    fn stop_intake(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        self.shared.stop.cancel();
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_names_its_queue_namespace_and_function() {
        let names = Names {
            cluster: "c1".into(),
            engine_id: "e".into(),
        };
        let key = JobKey {
            queue: "mail.out".into(),
            namespace: "default".into(),
            function_id: "svc::send".into(),
        };
        let subject = key.subject(&names);
        assert_eq!(subject.split('.').count(), 6, "{subject}");
        assert_eq!(JobKey::parse(&subject, &names), Some(key.clone()));
        assert_eq!(JobKey::parse("qmesh.c2.jobs.a.b.c", &names), None);
        assert!(key.consumer().starts_with("job_") && key.consumer().len() == 36);
    }
}
