//! The cluster's durable queues on NATS JetStream (`[cluster] queues =
//! "jetstream"`): a job enqueued on any engine is run by any engine with a
//! worker for its function. Durable topics' jobs come here too, through
//! the `queue::QueueBackend` the engine root hands the topics module.
//!
//! In NATS (every name derived from the cluster's name):
//! - the job stream `qmesh_<cluster>_jobs` (work-queue retention, `[cluster]
//!   replicas`, a duplicate window of `[cluster] idempotency_window`): one
//!   message per job on `qmesh.<cluster>.jobs.<queue>.<namespace>.<function>`
//!   (each base64url), the payload as it came, the receipt and trace context
//!   in headers; a job due later is first a scheduled message (NATS ADR-51,
//!   nats-server 2.12+) on `qmesh.<cluster>.delayed.<queue>.<receipt>`
//!   (the queue base64url, so a queue's delayed jobs have a subject
//!   filter of their own), which the
//!   stream itself publishes on the job's subject at its time, then deletes
//!   (no consumer reads `delayed.>`, so it waits there, replicated);
//! - priorities in nine bands ([`Lane::Band`]), each a subject of its own
//!   (the suffix `.p<band>`; none for band 0), since a stream delivers in
//!   one order: an engine asks the highest band first;
//! - a FIFO queue's jobs in `concurrency` lanes ([`Lane::Fifo`], suffix
//!   `.f<lane>`; see below);
//! - a `fair_by` queue's jobs in [`fair::FAIR_LANES`] lanes of their band
//!   ([`Lane::Fair`], suffix `.k<lane>` or `.p<band>k<lane>`: the fair
//!   key's digest), which engines pull in turns (`fair.rs`);
//! - one durable pull consumer per (queue, namespace, function) and lane
//!   used, shared by every engine: `max_ack_pending` is the queue's
//!   `concurrency` across the cluster (1 for a FIFO lane), `ack_wait` its
//!   lease (at most [`MAX_ACK_WAIT`], kept alive with in-progress acks
//!   while a call runs);
//! - the bucket `qmesh_<cluster>_attempts`: the failed attempts of a job
//!   still retrying, by receipt (the engine that runs its next attempt may be
//!   another one);
//! - the dead-letter stream `qmesh_<cluster>_dead`: one message per dead
//!   job on `qmesh.<cluster>.dead.<queue>`, with its attempt history;
//! - the bucket `qmesh_<cluster>_receipts`: where each job is by receipt (its
//!   sequence on the job stream, or its scheduled message's while delayed,
//!   written before its receipt is answered on every enqueue path, or on
//!   the dead-letter stream), for `queue::get`, `explain` and `cancel`;
//! - the bucket `qmesh_<cluster>_queues`: a flag per paused queue (its
//!   consumers, every lane's, are paused with `pause_until` too);
//! - flows (`flows.rs`): parents waiting on `qmesh.<cluster>.waiting.>`
//!   (no consumer reads it) until the bucket `qmesh_<cluster>_flows`
//!   records the end of their last child;
//! - the bucket `qmesh_<cluster>_throttles`: a throttled queue's end
//!   (`queue::throttle`; its consumers are paused until then, and the
//!   server lifts that by itself);
//! - the bucket `qmesh_<cluster>_progress`: what a job's handler reported
//!   (`queue::progress`, `queue::log`), by receipt, until the job ends
//!   (then in its dead letter, if it dies);
//! - the bucket `qmesh_<cluster>_rates`: one token bucket per queue with a
//!   `rate`, shared by every engine's starts and taken in blocks by
//!   compare-and-set (`rate.rs`: at most `N + rate × (t + 250 ms)` starts
//!   in any span `t` across the cluster).
//!
//! A job's expiry (`expires_in`/`expires_at`) is a header of its message
//! (`Qmesh-Expires-At`, kept on a delayed job when it fires): the engine
//! that pulls a job past it dead-letters it as `expired` without running
//! it, as the local queue does a job not started by its expiry; a job
//! nobody pulls is found at its expiry by its expiry check (`expiry.rs`).
//!
//! Per-group FIFO (`ordering = "fifo"`): a group's jobs always go to the
//! same lane of their (queue, namespace, function), the group key's
//! SHA-256 modulo the queue's `concurrency`, and each lane's consumer has
//! `max_ack_pending` = 1. That one bound is the whole of the ordering
//! across engines: the server delivers a lane in stream order (= the order
//! of the enqueues' PubAcks) and gives nobody, on any engine, the lane's
//! next job while one is unacknowledged. A failed attempt is nak'ed with
//! its backoff and stays unacknowledged until it is delivered again
//! (checked on nats-server 2.15.1), so a retrying job holds its group; a
//! job whose engine died holds it until `ack_wait` and is then delivered
//! again, before the next; a dead-lettered job is acknowledged once its
//! dead letter is stored, which frees the group. Nothing of the order is
//! in an engine. The price: groups whose digests meet in a lane wait for
//! each other (a lane per group would need a consumer per group, and
//! groups are unbounded), and a lane is fixed at enqueue, so changing a
//! FIFO queue's `concurrency` while it holds jobs can reorder a group. A
//! FIFO job takes no delay or priority: either would move it out of its
//! lane's order.
//!
//! In memory: which consumers this engine made sure of, and one pull task per
//! (queue, namespace, function) one of its own workers serves, holding its
//! `concurrency` slots on this engine across bands (and where its next
//! visit of a band's fair lanes starts), and one per FIFO lane
//! (`runner.rs`); per rate-limited queue, the tokens this engine took and
//! has not used yet, for at most 250 ms (`rate.rs`).
//! `intake.rs` takes enqueues, `dead.rs` keeps attempt histories and dead
//! letters, `letters.rs` shows them (`engine::queue::dlq_topics`,
//! `dlq_messages`), `leases.rs` keeps the leases of the jobs this engine's
//! workers run (`queue::heartbeat` extends one), `progress.rs` their
//! handlers' reports, `throttle.rs` `queue::throttle`, `index.rs` the
//! receipts and queues buckets, `rate.rs` the rates bucket, `fair.rs` fair
//! lanes, `flows.rs` flows, `views.rs` and `actions.rs`
//! the operator functions (`queue::list/stats/get/explain/peek`,
//! `queue::pause/resume/purge/cancel`, `engine::queue::list_topics/
//! topic_stats`, redrive and discard), answered by any engine.

mod actions;
mod dead;
mod declared;
mod expiry;
mod fair;
mod flows;
mod index;
mod intake;
mod job;
mod leases;
mod letters;
mod progress;
mod pull;
mod rate;
mod runner;
mod throttle;
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
use crate::queue::settings::{QueueConfig, QueueSettings};
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

/// Which of a (queue, namespace, function)'s subjects (and consumers) a
/// job is on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Lane {
    /// A standard queue's priority band. Band 0 holds priority 0 and is the
    /// subject without a suffix (every job before priorities existed); band
    /// `b` > 0 holds the priorities with `b` significant bits (1, 2–3, 4–7,
    /// …, 128–255), on the subject's suffix `.p<b>`.
    Band(u8),
    /// A FIFO queue's lane `n` (suffix `.f<n>`): the groups whose hash is
    /// `n` modulo the queue's `concurrency`, one job at a time.
    Fifo(u32),
    /// A `fair_by` queue's fair lane `lane` of priority band `band`
    /// (suffix `.k<lane>` in band 0, `.p<band>k<lane>` above): the fair
    /// keys whose digest is `lane` modulo [`fair::FAIR_LANES`] (`fair.rs`).
    Fair { band: u8, lane: u32 },
}

impl Lane {
    /// The band of a job's priority (0–255; higher runs first).
    pub(super) fn band(priority: u8) -> Lane {
        Lane::Band((u8::BITS - priority.leading_zeros()) as u8)
    }

    /// The lane of FIFO group `group` on a queue of `lanes` lanes: the
    /// same on every engine (a digest, not Rust's per-process hasher).
    pub(super) fn fifo(group: &str, lanes: usize) -> Lane {
        let digest = sha2::Sha256::digest(group.as_bytes());
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Lane::Fifo((n % lanes.max(1) as u64) as u32)
    }

    /// The lowest priority of a band (a job's priority when only its band
    /// is known: one stored before its priority was kept in a header).
    pub(super) fn lowest_priority(self) -> u8 {
        match self {
            Lane::Band(0) | Lane::Fifo(_) | Lane::Fair { band: 0, .. } => 0,
            Lane::Band(b) | Lane::Fair { band: b, .. } => 1u8 << (b - 1),
        }
    }

    /// The priority band a lane's jobs are in (none for a FIFO lane).
    pub(super) fn band_number(self) -> Option<u8> {
        match self {
            Lane::Band(b) | Lane::Fair { band: b, .. } => Some(b),
            Lane::Fifo(_) => None,
        }
    }

    /// The lane's subject suffix (none for band 0), also its consumer's.
    fn suffix(self, sep: char) -> String {
        match self {
            Lane::Band(0) => String::new(),
            Lane::Band(b) => format!("{sep}p{b}"),
            Lane::Fifo(n) => format!("{sep}f{n}"),
            Lane::Fair { band: 0, lane } => format!("{sep}k{lane}"),
            Lane::Fair { band, lane } => format!("{sep}p{band}k{lane}"),
        }
    }

    fn parse(part: &str) -> Option<Lane> {
        if let Some(fair) = Lane::parse_fair(part) {
            return Some(fair);
        }
        if let Some(b) = part.strip_prefix('p') {
            return match b.parse::<u8>().ok()? {
                b @ 1..=8 if b.to_string() == part[1..] => Some(Lane::Band(b)),
                _ => None,
            };
        }
        let n = part.strip_prefix('f')?;
        let lane = n.parse::<u32>().ok()?;
        (lane.to_string() == n).then_some(Lane::Fifo(lane))
    }
}

impl JobKey {
    fn base_subject(&self, names: &Names) -> String {
        let b = b64();
        format!(
            "qmesh.{}.jobs.{}.{}.{}",
            names.cluster,
            b.encode(&self.queue),
            b.encode(&self.namespace),
            b.encode(&self.function_id)
        )
    }

    /// The subject of the key's jobs in `lane`.
    fn subject(&self, names: &Names, lane: Lane) -> String {
        format!("{}{}", self.base_subject(names), lane.suffix('.'))
    }

    /// The consumer's name of `lane`: a digest, since names are bounded and
    /// the three parts are not.
    fn consumer(&self, lane: Lane) -> String {
        let digest = sha2::Sha256::digest(
            format!("{}\0{}\0{}", self.queue, self.namespace, self.function_id).as_bytes(),
        );
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("job_{hex}{}", lane.suffix('_'))
    }

    /// The subject prefix of every job of `queue` (`<prefix>.>` is all of
    /// them, in every lane).
    fn queue_prefix(queue: &str, names: &Names) -> String {
        format!("qmesh.{}.jobs.{}", names.cluster, b64().encode(queue))
    }

    /// The subject of a delayed job of `queue` until it is due: the
    /// queue is in it so that the queue's delayed jobs can be counted,
    /// walked and purged without reading each one.
    fn delayed_subject(queue: &str, receipt: uuid::Uuid, names: &Names) -> String {
        format!("{}.{receipt}", Self::delayed_prefix(queue, names))
    }

    /// The subject prefix of every delayed job of `queue` (`<prefix>.*`).
    fn delayed_prefix(queue: &str, names: &Names) -> String {
        format!("qmesh.{}.delayed.{}", names.cluster, b64().encode(queue))
    }

    /// The key and lane a job subject (or a consumer's filter) names.
    fn parse(subject: &str, names: &Names) -> Option<(JobKey, Lane)> {
        let rest = subject.strip_prefix(&format!("qmesh.{}.jobs.", names.cluster))?;
        let mut parts = rest.split('.');
        let decode = |s: Option<&str>| String::from_utf8(b64().decode(s?).ok()?).ok();
        let key = JobKey {
            queue: decode(parts.next())?,
            namespace: decode(parts.next())?,
            function_id: decode(parts.next())?,
        };
        let lane = match parts.next() {
            None => Lane::Band(0),
            Some(part) => Lane::parse(part)?,
        };
        parts.next().is_none().then_some((key, lane))
    }
}

/// The JetStream queues' state shared by their tasks and functions.
pub(super) struct Shared {
    names: Names,
    js: jetstream::Context,
    jobs: jetstream::stream::Stream,
    dead: jetstream::stream::Stream,
    attempts: jetstream::kv::Store,
    /// Whether the job stream takes scheduled messages (delayed jobs).
    schedules: bool,
    /// Where each job is, by receipt (`index.rs`).
    receipts: jetstream::kv::Store,
    /// Which queues are paused (`index.rs`).
    queue_flags: jetstream::kv::Store,
    /// Running jobs' progress and logs, by receipt (`progress.rs`).
    reports: jetstream::kv::Store,
    /// Which queues are throttled, until when (`throttle.rs`).
    throttles: jetstream::kv::Store,
    /// How the children of each waiting flow parent ended (`flows.rs`).
    flows: jetstream::kv::Store,
    /// Whether the job stream takes atomic batches (flows).
    flows_allowed: bool,
    /// The queues' settings: `[queue]`'s, and queues defined at run time.
    config: declared::Declared,
    /// The `queue:progress` bindings (the local queue module's trigger
    /// type): a report here fires them, as on one engine.
    progress_watchers: crate::queue::progress::ProgressWatchers,
    mesh: Mesh,
    directory: Arc<Directory>,
    /// Consumers this engine created or found (none is ever deleted).
    consumers: Mutex<HashSet<(JobKey, Lane)>>,
    /// The cluster's rate buckets and the tokens this engine holds (`rate.rs`).
    rates: rate::Rates,
    /// The leases of the jobs this engine's workers run (`leases.rs`).
    leases: leases::Leases,
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
        progress_watchers: crate::queue::progress::ProgressWatchers,
    ) -> Result<ClusterQueues, ClusterError> {
        let js = jetstream::new(self.client.clone());
        let replicas = config.replicas;
        let c = &self.names.cluster;
        let jobs_name = format!("qmesh_{c}_jobs");
        let jobs = super::kv::open_stream(
            &js,
            jetstream::stream::Config {
                name: jobs_name.clone(),
                subjects: [
                    format!("qmesh.{c}.jobs.>"),
                    format!("qmesh.{c}.delayed.>"),
                    format!("qmesh.{c}.waiting.>"),
                ]
                .into_iter()
                .chain(Shared::expiry_subjects(c))
                .collect(),
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: config.idempotency_window,
                allow_message_schedules: true,
                allow_atomic_publish: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup_error(jobs_name.clone(), replicas, e))?;
        let schedules = allow_schedules(&js, &jobs, c).await;
        // Updated one after the other: each update starts from the stream's
        // config as the last one left it.
        let jobs = match js.get_stream(&jobs_name).await {
            Ok(jobs) => jobs,
            Err(e) => return Err(setup_error(jobs_name, replicas, e)),
        };
        let flows_allowed = allow_flows(&js, &jobs, c).await;
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
        let reports = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_progress"),
            replicas,
            HISTORY_KEPT,
        )
        .await?;
        let throttles = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_throttles"),
            replicas,
            throttle::THROTTLES_KEPT,
        )
        .await?;
        let flows = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_flows"),
            replicas,
            index::RECEIPTS_KEPT,
        )
        .await?;
        let rates = super::kv::open_bucket(
            &self.client,
            format!("qmesh_{c}_rates"),
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
                schedules,
                receipts,
                queue_flags,
                reports,
                throttles,
                flows,
                flows_allowed,
                config: declared::Declared::new(queue),
                progress_watchers,
                mesh: self.mesh.clone(),
                directory: self.directory.clone(),
                consumers: Mutex::new(HashSet::new()),
                rates: rate::Rates::new(rates),
                leases: leases::Leases::default(),
                stop: CancellationToken::new(),
            }),
        })
    }
}

/// Makes sure the job stream takes delayed jobs and expiry checks:
/// scheduled messages on `qmesh.<cluster>.delayed.>` and
/// `qmesh.<cluster>.expiry.>`, the latter firing on
/// `qmesh.<cluster>.expired.>` (`expiry.rs`). `false` when NATS refuses (a
/// server older than 2.12): delayed enqueues are then refused with
/// `not_supported`, and expired jobs are found only when pulled.
async fn allow_schedules(
    js: &jetstream::Context,
    jobs: &jetstream::stream::Stream,
    cluster: &str,
) -> bool {
    let [expiry, expired] = Shared::expiry_subjects(cluster);
    let subjects = [format!("qmesh.{cluster}.delayed.>"), expiry, expired];
    let allowed = stream_allows(js, jobs, &subjects, |c| &mut c.allow_message_schedules).await;
    if !allowed {
        tracing::warn!(
            "the job stream cannot take scheduled messages (nats-server 2.12 or later needed): delayed jobs are refused"
        );
    }
    allowed
}

/// Makes sure the job stream takes flows: their parents waiting on
/// `qmesh.<cluster>.waiting.>`, and atomic batches (a flow is stored whole
/// or not at all). `false` when NATS refuses (a server older than 2.12):
/// `queue::enqueue_flow` is then refused with `not_supported`.
async fn allow_flows(
    js: &jetstream::Context,
    jobs: &jetstream::stream::Stream,
    cluster: &str,
) -> bool {
    let waiting = [format!("qmesh.{cluster}.waiting.>")];
    let allowed = stream_allows(js, jobs, &waiting, |c| &mut c.allow_atomic_publish).await;
    if !allowed {
        tracing::warn!(
            "the job stream cannot take atomic batches (nats-server 2.12 or later needed): flows are refused"
        );
    }
    allowed
}

/// Makes sure the job stream has `subjects` and the feature `flag` names;
/// a stream made by an engine before them is updated in place (its jobs
/// and consumers are kept). Whether it has them now.
async fn stream_allows(
    js: &jetstream::Context,
    jobs: &jetstream::stream::Stream,
    subjects: &[String],
    flag: impl Fn(&mut jetstream::stream::Config) -> &mut bool,
) -> bool {
    let mut config = jobs.cached_info().config.clone();
    let missing: Vec<&String> = subjects
        .iter()
        .filter(|s| !config.subjects.contains(s))
        .collect();
    if *flag(&mut config) && missing.is_empty() {
        return true;
    }
    *flag(&mut config) = true;
    config.subjects.extend(missing.into_iter().cloned());
    match js.update_stream(config).await {
        Ok(mut info) => *flag(&mut info.config),
        Err(e) => {
            tracing::debug!(error = %e, ?subjects, "the job stream refused an update");
            false
        }
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
        let unsupported = if s.rate_per_key.is_some() {
            Some("rate_per_key")
        } else if s.fair_by.is_some() && s.ordering == crate::queue::settings::Ordering::Fifo {
            Some("fair_by on a fifo queue")
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

impl Shared {
    /// The core NATS subject an engine publishes on after making sure of a
    /// consumer: the others list the job stream's consumers at once.
    fn consumers_changed(&self) -> String {
        format!("qmesh.{}.queues.consumers", self.names.cluster)
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
             (a function these queues do not offer)"
        )))
    })
}

/// Durable topics' jobs go onto the job stream like workers' enqueues: a
/// publish acknowledged by any engine is replicated, and any engine with
/// a worker for the subscriber runs it, even if the publishing engine died.
impl crate::queue::QueueBackend for ClusterQueues {
    fn define(&self, name: String, overrides: crate::queue::settings::QueueOverrides) {
        self.shared.config.define(name, overrides);
    }

    fn enqueue_many(
        &self,
        reqs: Vec<crate::queue::EnqueueRequest>,
    ) -> BoxFuture<'static, Result<Vec<crate::queue::Enqueued>, ErrorBody>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let jobs = reqs.into_iter().map(job::Job::of_request);
            shared.enqueue_many(jobs.collect::<Result<_, _>>()?).await
        })
    }
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
                "queue::enqueue_many" => p.async_fn(id, &self.shared, intake::enqueue_many),
                "queue::enqueue_flow" => p.async_fn(id, &self.shared, flows::enqueue_flow),
                "engine::queue::dlq_topics" => p.async_fn(id, &self.shared, letters::dlq_topics),
                "engine::queue::dlq_messages" => {
                    p.async_fn(id, &self.shared, letters::dlq_messages)
                }
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
                "queue::heartbeat" => p.async_fn(id, &self.shared, leases::heartbeat),
                "queue::progress" => p.async_fn(id, &self.shared, progress::progress),
                "queue::log" => p.async_fn(id, &self.shared, progress::log),
                "queue::throttle" => p.async_fn(id, &self.shared, throttle::throttle),
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
        let stop = self.shared.stop.clone();
        vec![
            tokio::spawn(self.shared.clone().discover()),
            tokio::spawn(self.shared.clone().sweep_expired(stop)),
        ]
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
    fn a_subject_names_its_queue_namespace_function_and_band() {
        let names = Names {
            cluster: "c1".into(),
            engine_id: "e".into(),
        };
        let key = JobKey {
            queue: "mail.out".into(),
            namespace: "default".into(),
            function_id: "svc::send".into(),
        };
        let subject = key.subject(&names, Lane::Band(0));
        assert_eq!(subject.split('.').count(), 6, "{subject}");
        assert_eq!(
            JobKey::parse(&subject, &names),
            Some((key.clone(), Lane::Band(0)))
        );
        for (lane, suffix) in [(Lane::Band(8), "p8"), (Lane::Fifo(12), "f12")] {
            let other = key.subject(&names, lane);
            assert_eq!(other, format!("{subject}.{suffix}"));
            assert_eq!(JobKey::parse(&other, &names), Some((key.clone(), lane)));
            assert_eq!(
                key.consumer(lane),
                format!("{}_{suffix}", key.consumer(Lane::Band(0)))
            );
        }
        for bad in ["p9", "p0", "p08", "f", "f01", "x1"] {
            assert_eq!(
                JobKey::parse(&format!("{subject}.{bad}"), &names),
                None,
                "{bad}"
            );
        }
        assert_eq!(JobKey::parse("qmesh.c2.jobs.a.b.c", &names), None);
        let consumer = key.consumer(Lane::Band(0));
        assert!(consumer.starts_with("job_") && consumer.len() == 36);
    }

    #[test]
    fn a_delayed_subject_names_its_queue_and_a_band_its_lowest_priority() {
        let names = Names {
            cluster: "c1".into(),
            engine_id: "e".into(),
        };
        let receipt = uuid::Uuid::nil();
        let subject = JobKey::delayed_subject("mail.out", receipt, &names);
        assert_eq!(subject, format!("qmesh.c1.delayed.bWFpbC5vdXQ.{receipt}"));
        assert!(subject.starts_with(&JobKey::delayed_prefix("mail.out", &names)));
        for p in [0u8, 1, 2, 5, 100, 200, 255] {
            let band = Lane::band(p);
            assert_eq!(Lane::band(band.lowest_priority()), band, "{p}");
            assert!(band.lowest_priority() <= p, "{p}");
        }
        assert_eq!(Lane::Fifo(3).lowest_priority(), 0);
    }

    #[test]
    fn a_band_is_the_number_of_significant_bits_of_a_priority() {
        let bands: Vec<Lane> = [0, 1, 2, 3, 4, 7, 8, 127, 128, 255]
            .into_iter()
            .map(Lane::band)
            .collect();
        let want: Vec<Lane> = [0, 1, 2, 2, 3, 3, 4, 7, 8, 8]
            .into_iter()
            .map(Lane::Band)
            .collect();
        assert_eq!(bands, want);
    }

    #[test]
    fn a_fifo_group_always_has_the_same_lane() {
        assert_eq!(Lane::fifo("acct-1", 10), Lane::fifo("acct-1", 10));
        assert_eq!(Lane::fifo("acct-1", 1), Lane::Fifo(0));
        let used: HashSet<Lane> = (0..100).map(|g| Lane::fifo(&g.to_string(), 4)).collect();
        assert_eq!(used.len(), 4, "100 groups spread over the 4 lanes");
    }
}
