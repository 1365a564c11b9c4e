//! Running jobs: an engine pulls from the consumers of every (queue,
//! namespace, function) one of its own workers serves, and runs each job it
//! gets on those workers.
//!
//! Consumers are found by listing the job stream's consumers (each names
//! its key and lane, a priority band, a fair lane of one or a FIFO lane, in
//! its filter subject): every
//! [`DISCOVER_EVERY`], at once when the functions this engine's workers
//! serve change, and when another engine says it made one. One pull task
//! per key holds the key's slots on this engine (`concurrency`) and fills
//! free ones from the highest band with jobs first: every band but the
//! lowest is asked without waiting, the lowest waits for jobs (with other
//! bands known, only [`IDLE_POLL`], so the higher ones are asked again
//! soon); a band with fair lanes is asked lane by lane in turns, without
//! waiting (`fair.rs`), and when nothing came the task waits [`IDLE_POLL`]. A FIFO queue's lanes are pulled one task each, one job at a time,
//! run before the next is asked for. On a queue with a `rate`, a task
//! takes tokens from the cluster's bucket (`rate.rs`) before it asks for
//! jobs, as many as its free slots at most, and asks for no more jobs than
//! it got tokens, without waiting (tokens are held a short while only);
//! while it found nothing, it first asks its consumers whether they have
//! jobs (every [`IDLE_POLL`]), so an idle queue takes no tokens.
//! A job's attempt is the server's delivery count: it succeeds
//! (ack), fails with attempts left (its error appended to its history, then
//! a nak delayed by the queue's backoff), or fails its last attempt
//! (dead-lettered, then ack). A delivery past the last attempt means the
//! previous one was lost (its engine died, or lost NATS, before it ended):
//! dead-lettered without running again. A delivery past the job's expiry
//! (a first attempt, or a retry after its backoff) is dead-lettered as
//! expired, without running.

use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dead::Attempt;
use super::fair::BandLanes;
use super::job::{BAGGAGE, EXPIRES_AT, Ended, FLOW_RETRY, RECEIPT, TRACEPARENT};
use super::leases::Running;
use super::progress::Live;
use super::pull::pull_each;
use super::{JobKey, Lane, Shared, ack_wait};
use crate::mesh::router::{CallExtras, InternalCall};
use crate::mesh::state::CallOutcome;
use crate::protocol::{ErrorBody, codes};
use crate::queue::rate::Rate;
use crate::queue::settings::QueueSettings;
use async_nats::jetstream::{self, AckKind, consumer::pull};

/// How often the job stream's consumers are listed again.
const DISCOVER_EVERY: Duration = Duration::from_secs(1);
/// How long one pull request waits for jobs, on a key with one band.
const FETCH_EXPIRES: Duration = Duration::from_secs(2);
/// How long the lowest band's pull request waits for jobs while the key
/// has other bands: how late a higher band's job may start on an idle engine.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How soon NATS is asked again after it refused.
const RETRY: Duration = Duration::from_millis(250);
/// Most jobs one pull request asks for.
const MAX_BATCH: usize = 256;

/// The lanes of one key this engine knows consumers of.
type Lanes = BTreeSet<Lane>;

/// What one pass over a key's bands did.
struct Filled {
    /// Jobs pulled and started.
    started: usize,
    /// Whether the last pull request ended normally.
    ended_well: bool,
    /// Whether a pull request waited for jobs (so the pass took its time).
    waited: bool,
}

impl Shared {
    /// Keeps one pull task per key whose function this engine's own workers
    /// serve, until the drain.
    pub(super) async fn discover(self: Arc<Self>) {
        let mut events = self.mesh.subscribe();
        let mut changed = match self.js.client().subscribe(self.consumers_changed()).await {
            Ok(sub) => Some(sub),
            Err(e) => {
                tracing::debug!(error = %e, "cannot hear of other engines' new consumers");
                None
            }
        };
        let mut known: HashMap<JobKey, Lanes> = HashMap::new();
        let mut pulling: HashMap<JobKey, (CancellationToken, watch::Sender<Lanes>)> =
            HashMap::new();
        let mut listed_for: HashSet<(String, String)> = HashSet::new();
        let mut tick = tokio::time::interval(DISCOVER_EVERY);
        loop {
            // List when the timer or another engine says so, or this engine
            // serves something new.
            let list_now = tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tick.tick() => true,
                Some(_) = async {
                    match changed.as_mut() {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                } => true,
                event = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                        break;
                    }
                    false
                }
            };
            let here_now = self.functions_here();
            if !here_now.is_empty() && (list_now || !here_now.is_subset(&listed_for)) {
                match self.list_keys().await {
                    Ok(keys) => {
                        known = keys;
                        listed_for = here_now.clone();
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot list the job stream's consumers"),
                }
            }
            pulling.retain(|key, (stop, _)| {
                let keep = here_now.contains(&(key.namespace.clone(), key.function_id.clone()));
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for (key, lanes) in &known {
                if let Some((_, tx)) = pulling.get(key) {
                    tx.send_if_modified(|have| {
                        let more = !lanes.is_subset(have);
                        have.extend(lanes.iter().copied());
                        more
                    });
                    continue;
                }
                if here_now.contains(&(key.namespace.clone(), key.function_id.clone())) {
                    let stop = self.stop.child_token();
                    let (tx, rx) = watch::channel(lanes.clone());
                    pulling.insert(key.clone(), (stop.clone(), tx));
                    tokio::spawn(self.clone().pull(key.clone(), rx, stop));
                }
            }
        }
        for (stop, _) in pulling.values() {
            stop.cancel();
        }
    }

    /// (namespace, function) pairs one of this engine's own workers serve.
    fn functions_here(&self) -> HashSet<(String, String)> {
        let all: Vec<(String, String)> = self.mesh.inspect(|st| {
            st.functions
                .iter()
                .flat_map(|(ns, ids)| ids.keys().map(move |id| (ns.clone(), id.clone())))
                .collect()
        });
        all.into_iter()
            .filter(|(ns, id)| self.directory.served_here(ns, id))
            .collect()
    }

    async fn list_keys(&self) -> Result<HashMap<JobKey, Lanes>, async_nats::Error> {
        let mut out: HashMap<JobKey, Lanes> = HashMap::new();
        let mut consumers = self.jobs.consumers();
        while let Some(info) = consumers.next().await {
            if let Some((key, lane)) = JobKey::parse(&info?.config.filter_subject, &self.names) {
                out.entry(key).or_default().insert(lane);
            }
        }
        Ok(out)
    }

    /// Pulls jobs of one key's consumers until `stop`: its bands here, each
    /// job run in a task holding one of the key's slots on this engine, free
    /// slots filled from the highest band first; each FIFO lane in a task
    /// of its own.
    async fn pull(
        self: Arc<Self>,
        key: JobKey,
        mut lanes: watch::Receiver<Lanes>,
        stop: CancellationToken,
    ) {
        let settings = self.config.or_defaults(&key.queue);
        let rate = settings.rate;
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let mut bands: BTreeMap<u8, BandLanes> = BTreeMap::new();
        let mut open: HashSet<Lane> = HashSet::new();
        let mut fifo: HashSet<Lane> = HashSet::new();
        // Whether the last pass found no job.
        let mut idle = true;
        tracing::debug!(queue = %key.queue, function_id = %key.function_id, "pulling jobs");
        while !stop.is_cancelled() {
            let wanted: Vec<Lane> = lanes.borrow_and_update().iter().copied().collect();
            let mut missing = false;
            for lane in wanted {
                let Some(band) = lane.band_number() else {
                    if fifo.insert(lane) {
                        let lane_stop = stop.child_token();
                        tokio::spawn(self.clone().pull_lane(key.clone(), lane, rate, lane_stop));
                    }
                    continue;
                };
                if open.contains(&lane) {
                    continue;
                }
                match self.consumer(&key, lane).await {
                    Some(c) => {
                        open.insert(lane);
                        bands.entry(band).or_default().insert(lane, c);
                    }
                    None => missing = true,
                }
            }
            if bands.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = lanes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(RETRY), if missing => {}
                }
                continue;
            }
            // A rate-limited queue takes tokens only for jobs it can see.
            if rate.is_some() && idle && !self.any_pending(bands.values()).await {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("the slots are never closed"),
            };
            let mut free = vec![first];
            while free.len() < MAX_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => free.push(p),
                    Err(_) => break,
                }
            }
            let tokens = match rate {
                None => None,
                Some(rate) => {
                    let tokens = tokio::select! {
                        _ = stop.cancelled() => return,
                        t = self.rates.take(&key.queue, rate, free.len()) => t,
                    };
                    free.truncate(tokens.count);
                    Some(tokens)
                }
            };
            let filled = self.fill(&key, &mut bands, &mut free, rate.is_none()).await;
            self.unused_tokens(&key.queue, tokens, filled.started);
            idle = filled.started == 0;
            let pause = if !filled.ended_well {
                Some(RETRY)
            } else if idle && !filled.waited {
                Some(IDLE_POLL)
            } else {
                None
            };
            if !rest(&stop, pause).await {
                return;
            }
        }
    }

    /// Whether one of the consumers has jobs not delivered yet (one NATS
    /// request each, until one has); `false` when NATS does not answer.
    async fn any_pending(&self, bands: impl Iterator<Item = &BandLanes>) -> bool {
        for band in bands {
            for consumer in band.consumers() {
                if self.has_pending(consumer).await {
                    return true;
                }
            }
        }
        false
    }

    /// The consumer of `key`'s `lane`, or `None` (logged) if NATS refuses.
    async fn consumer(
        &self,
        key: &JobKey,
        lane: Lane,
    ) -> Option<jetstream::consumer::PullConsumer> {
        match self
            .jobs
            .get_consumer::<pull::Config>(&key.consumer(lane))
            .await
        {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(queue = %key.queue, function_id = %key.function_id, ?lane, error = %e, "cannot open a job consumer; retrying");
                None
            }
        }
    }

    /// One pass over a key's bands, highest first, giving each job pulled
    /// one of the `free` slots; a band with fair lanes is asked in turns
    /// (`fair.rs`). The lowest band's request waits for jobs if `may_wait`
    /// and it is the band's one lane.
    async fn fill(
        self: &Arc<Self>,
        key: &JobKey,
        bands: &mut BTreeMap<u8, BandLanes>,
        free: &mut Vec<OwnedSemaphorePermit>,
        may_wait: bool,
    ) -> Filled {
        let mut filled = Filled {
            started: 0,
            ended_well: true,
            waited: false,
        };
        let lowest = bands.keys().next().copied();
        let several = bands.len() > 1;
        for (band, lanes) in bands.iter_mut().rev() {
            if free.is_empty() {
                break;
            }
            let Some(consumer) = lanes.single() else {
                let (started, ended_well) = self.fill_in_turns(key, lanes, free).await;
                filled.started += started;
                filled.ended_well = ended_well;
                continue;
            };
            let mut fetch = consumer.fetch().max_messages(free.len());
            if may_wait && Some(*band) == lowest {
                fetch = fetch.expires(if several { IDLE_POLL } else { FETCH_EXPIRES });
                filled.waited = true;
            }
            let (started, ended_well) = pull_each(fetch, |msg| {
                let slot = free.pop();
                tokio::spawn(self.clone().run(key.clone(), msg, slot));
                std::future::ready(())
            })
            .await;
            filled.started += started;
            filled.ended_well = ended_well;
        }
        filled
    }

    /// Pulls one FIFO lane until `stop`, one job at a time, run here before
    /// the next is asked for (its consumer gives nobody the next one
    /// before this one is acknowledged anyway); with a `rate`, one token
    /// taken before each request, which then does not wait.
    async fn pull_lane(
        self: Arc<Self>,
        key: JobKey,
        lane: Lane,
        rate: Option<Rate>,
        stop: CancellationToken,
    ) {
        let consumer = loop {
            if let Some(c) = self.consumer(&key, lane).await {
                break c;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        };
        let mut idle = true;
        while !stop.is_cancelled() {
            let mut fetch = consumer.fetch().max_messages(1);
            let tokens = match rate {
                None => {
                    fetch = fetch.expires(FETCH_EXPIRES);
                    None
                }
                Some(rate) => {
                    if idle && !self.has_pending(&consumer).await {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        t = self.rates.take(&key.queue, rate, 1) => Some(t),
                    }
                }
            };
            let (started, ended_well) =
                pull_each(fetch, |msg| self.clone().run(key.clone(), msg, None)).await;
            self.unused_tokens(&key.queue, tokens, started);
            idle = started == 0;
            let pause = if !ended_well {
                Some(RETRY)
            } else if idle && rate.is_some() {
                // The request did not wait: nor does a lane with nothing.
                Some(IDLE_POLL)
            } else {
                None
            };
            if !rest(&stop, pause).await {
                return;
            }
        }
    }

    /// Gives back the rate tokens a pass took and did not spend on its
    /// `started` jobs.
    fn unused_tokens(&self, queue: &str, tokens: Option<super::rate::Tokens>, started: usize) {
        if let Some(mut tokens) = tokens {
            tokens.count -= started.min(tokens.count);
            self.rates.unused(queue, tokens);
        }
    }

    /// Whether a consumer has jobs not delivered yet, and is not paused
    /// (its queue's pause: tokens taken then would go to waste).
    async fn has_pending(&self, consumer: &jetstream::consumer::PullConsumer) -> bool {
        match consumer.get_info().await {
            Ok(info) => info.num_pending > 0 && !info.paused,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a job consumer's info");
                false
            }
        }
    }

    /// Runs one delivery of a job and settles it with the server.
    /// `_slot` is one of the key's slots on this engine (none for a FIFO
    /// lane's job), free again once the job is settled.
    pub(super) async fn run(
        self: Arc<Self>,
        key: JobKey,
        msg: jetstream::Message,
        _slot: Option<OwnedSemaphorePermit>,
    ) {
        let settings = self.config.or_defaults(&key.queue);
        let attempt = match msg.info() {
            Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
            Err(e) => {
                tracing::warn!(error = %e, "a job message without delivery info; left for redelivery");
                return;
            }
        };
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let receipt = header(RECEIPT)
            .and_then(|r| Uuid::parse_str(&r).ok())
            .unwrap_or_default();
        if attempt > settings.max_attempts {
            let lost = ErrorBody::new(
                codes::INVOCATION_STOPPED,
                format!(
                    "attempt {} ended without an outcome (the engine running it stopped or lost NATS)",
                    attempt - 1
                ),
            );
            let history = self.record_attempt(receipt, attempt - 1, lost).await;
            return self.dead_letter(&key, &msg, receipt, history).await;
        }
        // Not started by its expiry (this is a first attempt, or a retry
        // after its backoff): dead-lettered as expired, as on one engine.
        if let Some(at) = header(EXPIRES_AT).and_then(|v| v.parse::<u64>().ok())
            && crate::queue::now_ms() >= at
        {
            let history = if attempt > 1 {
                self.history_of(receipt).await
            } else {
                Vec::new()
            };
            return self.expire(&key, &msg, receipt, at, history).await;
        }
        let data = match serde_json::from_slice::<Box<serde_json::value::RawValue>>(&msg.payload) {
            Ok(d) => d,
            Err(e) => {
                let bad = ErrorBody::new(
                    codes::DESERIALIZATION_ERROR,
                    format!("the job's payload is not JSON: {e}"),
                );
                let history = self.record_attempt(receipt, attempt, bad).await;
                return self.dead_letter(&key, &msg, receipt, history).await;
            }
        };
        // The job's context, as the local queue hands it to handlers.
        let mut context = serde_json::json!({"job": {
            "receipt": receipt,
            "queue": key.queue,
            "attempt": attempt,
            "max_attempts": settings.max_attempts,
        }});
        self.flow_context(&mut context["job"], receipt, msg.headers.as_ref())
            .await;
        let extras = CallExtras {
            metadata: Some(crate::protocol::to_payload(&context)),
            traceparent: header(TRACEPARENT),
            baggage: header(BAGGAGE),
        };
        let (outcome, reported) = match self.mesh.start_here_with(
            &key.namespace,
            &key.function_id,
            data,
            extras,
            self.mesh.config().invocation.max_duration,
        ) {
            Ok(call) => {
                self.await_call(call, &key, receipt, attempt, &settings, &msg)
                    .await
            }
            Err(e) => (Err(e), false),
        };
        match outcome {
            Ok(result) => {
                // A flow's parent hears of its child before the child's ack.
                let result = result.unwrap_or_else(crate::protocol::null_payload);
                let ended = Ended::Completed(result);
                let told = self.child_ended(msg.headers.as_ref(), &key, receipt, ended);
                if told.await.is_err() {
                    // Its parent must hear of it: delivered again, it runs again.
                    let _ = msg.ack_with(AckKind::Nak(Some(FLOW_RETRY))).await;
                    return;
                }
                if let Err(e) = msg.ack().await {
                    tracing::warn!(%receipt, error = %e, "a finished job's ack failed: it will run again");
                }
                if attempt > 1 {
                    self.forget_attempts(receipt).await;
                }
                // An earlier attempt, on any engine, may have reported.
                if reported || attempt > 1 {
                    self.forget_reports(receipt).await;
                }
            }
            Err(error) => {
                let history = self.record_attempt(receipt, attempt, error).await;
                if attempt >= settings.max_attempts {
                    self.dead_letter(&key, &msg, receipt, history).await;
                } else {
                    let delay = settings.backoff(attempt, rand::random::<f64>());
                    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                        tracing::warn!(%receipt, error = %e, "a failed job's nak failed: it runs again after its ack wait");
                    }
                }
            }
        }
    }

    /// Waits for a job's call within its lease, which heartbeats extend
    /// (`leases.rs`); ends the call when the lease runs out. A call longer
    /// than the consumer's ack wait keeps its job with in-progress acks, so
    /// no other engine starts it meanwhile. Also whether its handler
    /// reported progress or log lines (`progress.rs`).
    async fn await_call(
        &self,
        call: InternalCall,
        key: &JobKey,
        receipt: Uuid,
        attempt: u32,
        settings: &QueueSettings,
        msg: &jetstream::Message,
    ) -> (CallOutcome, bool) {
        let (until, _) = watch::channel(tokio::time::Instant::now() + settings.lease);
        let reports = Live::default();
        let running = Running {
            key: key.clone(),
            invocation_id: call.invocation_id,
            executor: call.executor,
            attempt,
            lease: settings.lease,
            until,
            max_log_lines: settings.max_log_lines,
            reports: reports.clone(),
        };
        let mut until = self.leases.begin(receipt, running);
        let mut outcome = call.outcome;
        let keep_alive = ack_wait(settings) / 3;
        let ended = loop {
            let lease_end = *until.borrow_and_update();
            tokio::select! {
                outcome = &mut outcome => {
                    break outcome.unwrap_or_else(|_| Err(ErrorBody::new(codes::INVOCATION_STOPPED, "call abandoned")));
                }
                _ = tokio::time::sleep(keep_alive) => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "an in-progress ack failed");
                    }
                }
                // A heartbeat moved the lease's end: wait for the new one.
                _ = until.changed() => {}
                _ = tokio::time::sleep_until(lease_end) => {
                    let expired = crate::queue::lease_expired(settings.lease);
                    self.mesh.fail_call(call.invocation_id, &expired.code, &expired.message);
                    break Err(expired);
                }
            }
        };
        self.leases.end(&receipt);
        // After any report on its way is stored: the job's end may read them.
        let reported = reports.close().await;
        (ended, reported)
    }

    /// Appends an attempt's failure to the job's history; returns the whole
    /// history (what could be read of it).
    async fn record_attempt(&self, receipt: Uuid, attempt: u32, error: ErrorBody) -> Vec<Attempt> {
        let entry = Attempt {
            attempt,
            engine: self.names.engine_id.clone(),
            ended_at_ms: crate::queue::now_ms(),
            error,
        };
        self.append_attempt(receipt, entry).await
    }
}

/// Waits out `pause` (if any) unless `stop` comes first: whether to go on.
async fn rest(stop: &CancellationToken, pause: Option<Duration>) -> bool {
    let Some(pause) = pause else {
        return true;
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}
