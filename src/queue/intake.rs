//! Taking jobs in: validation, the records an enqueue writes, idempotency
//! keys and FIFO groups. Enqueues that arrive together are written in one
//! batch and acknowledged together after one sync.

use std::collections::{HashMap, HashSet};
use uuid::Uuid;

use super::flows::Plan;
use super::scheduler::{Scheduler, store_error};
use super::settings::{Ordering, QueueSettings};
use super::{EnqueueReply, EnqueueRequest, Enqueued, now_ms};
use crate::protocol::{ErrorBody, codes};
use crate::store::StoreError;
use crate::store::queue::Writes;
use crate::store::queue::{FnId, QueueId};
use crate::store::records::{JobRecord, JobState};

/// Where the queue's settings put a job: its FIFO group and fair lane.
#[derive(Default)]
pub(super) struct Admitted {
    group: Option<String>,
    lane: Option<String>,
}

/// What earlier jobs of the same (not yet applied) batch claimed.
#[derive(Default)]
pub(super) struct Seen {
    groups: HashSet<(QueueId, String)>,
    keys: HashMap<(QueueId, String), Uuid>,
    /// The jobs the batch counted, so a batch the store refuses is uncounted.
    counted: Vec<(QueueId, JobState)>,
}

impl Seen {
    /// The batch was not written: its jobs are not counted either.
    pub(super) fn uncount(self, s: &mut Scheduler) {
        for (q, state) in self.counted {
            s.counters.count(q, Some(state), None);
        }
    }
}

impl Scheduler {
    /// Writes every acceptable job of `group` in one batch, then answers each
    /// once a sync has covered it; refusals are answered at once.
    pub(super) fn enqueue_all(&mut self, group: Vec<(EnqueueRequest, EnqueueReply)>) {
        let mut batch = Writes::default();
        let mut seen = Seen::default();
        let first_seq = self.seq.next();
        let mut accepted = Vec::with_capacity(group.len());
        let mut queues: Vec<String> = Vec::with_capacity(group.len());
        for (req, reply) in group {
            let queue = req.queue.clone();
            match self.enqueue_into(req, &mut batch, &mut seen) {
                Ok(e) => {
                    if !e.duplicate {
                        queues.push(queue);
                    }
                    accepted.push((e, reply));
                }
                Err(e) => {
                    reply(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let ticket = match self.commit(batch) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot write enqueued jobs");
                // Nothing of the batch is stored: neither are its jobs counted.
                seen.uncount(self);
                let refused = store_error(e);
                for (_, reply) in accepted {
                    reply(Err(refused.clone()));
                }
                return;
            }
        };
        let metrics = self.metrics.clone();
        self.acknowledge(ticket, first_seq, move |durable| {
            if durable.is_ok() {
                count_enqueued(&metrics, &queues);
            }
            for (e, reply) in accepted {
                reply(match &durable {
                    Ok(()) => Ok(e),
                    Err(refused) => Err(refused.clone()),
                });
            }
        });
    }

    /// Calls `then` once the batch of `ticket` is on disk (one sync serves
    /// every job in it); until then, its jobs (sequence numbers from
    /// `first_seq`) do not start.
    pub(super) fn acknowledge(
        &mut self,
        ticket: crate::store::Ticket,
        first_seq: u64,
        then: impl FnOnce(Result<(), ErrorBody>) + Send + 'static,
    ) {
        self.unsynced.applied(ticket, first_seq);
        self.store.want(ticket);
        (self.unsynced).answer_when_durable(ticket, Box::new(|r| then(r.map_err(store_error))));
    }

    /// Validates one job and writes it into `batch` (applied by the caller).
    fn enqueue_into(
        &mut self,
        req: EnqueueRequest,
        batch: &mut Writes,
        seen: &mut Seen,
    ) -> Result<Enqueued, ErrorBody> {
        self.write_job(req, batch, seen, None)
    }

    /// Writes one job into `batch`: a plain enqueue (`plan` = `None`), or a
    /// flow's node with its identity and links decided by the flow.
    pub(super) fn write_job(
        &mut self,
        req: EnqueueRequest,
        batch: &mut Writes,
        seen: &mut Seen,
        plan: Option<Plan>,
    ) -> Result<Enqueued, ErrorBody> {
        let Admitted { group, lane } = self.admit(&req)?;
        let q = self.queue_for(&req.queue)?;
        if let Some(receipt) = self.earlier_receipt(q, &req, seen)? {
            return Ok(Enqueued {
                receipt,
                duplicate: true,
            });
        }
        let f = self.fn_id(&req.namespace, &req.function_id, lane.as_deref())?;
        let now = now_ms();
        let (seq, id, flow, waits) = match plan {
            Some(p) => (p.seq, p.id, Some(p.flow), p.waits),
            None => {
                let seq = self.seq.take(batch);
                (seq, job_id(now, seq, self.id_salt), None, false)
            }
        };
        // A FIFO job waits behind any unfinished job of its group.
        let held = group.as_ref().is_some_and(|g| self.group_busy(q, g, seen));
        if let Some(g) = &group {
            seen.groups.insert((q, g.clone()));
            batch.put_group_entry(q, g, seq, &id);
        }
        if let Some(key) = &req.idempotency_key {
            seen.keys.insert((q, key.clone()), id);
            batch.put_idempotency(q, key, &id);
        }
        let state = if waits {
            JobState::Waiting
        } else if held {
            JobState::Held
        } else if req.run_at_ms.is_some_and(|t| t > now) {
            JobState::Delayed
        } else {
            JobState::Ready
        };
        let max_attempts = self.queues[req.queue.as_str()].settings.max_attempts;
        let mut job = new_record(req, (q, f), seq, now, state, max_attempts, group);
        job.flow = flow;
        // Every key of the job's index entry holds its new id or sequence
        // number: new keys. Its record may share a bundle with the batch's.
        let mark = batch.mark();
        self.place(&id, &job, batch);
        batch.new_keys_since(mark);
        batch.put_new_job(&id, &job);
        if job.expires_ms > 0 {
            self.watch_expiry(job.expires_ms, &id, batch);
        }
        self.counters.count(q, None, Some(job.state));
        seen.counted.push((q, job.state));
        if job.state == JobState::Ready {
            self.mark_ready(q, f);
        }
        Ok(Enqueued {
            receipt: id,
            duplicate: false,
        })
    }

    /// Checks what the queue's settings ask of the job (payload size, a FIFO
    /// group, a fair key); returns its group and lane.
    pub(super) fn admit(&self, req: &EnqueueRequest) -> Result<Admitted, ErrorBody> {
        let declared;
        let settings = match self.queues.get(&req.queue) {
            Some(rt) => &rt.settings,
            None => match self.config.settings(&req.queue) {
                Some(s) => {
                    declared = s;
                    &declared
                }
                // strict mode: queue_for refuses it with queue_not_found
                None => return Ok(Admitted::default()),
            },
        };
        if req.payload.get().len() > settings.max_payload_bytes {
            let msg = format!(
                "payload is {} bytes; queue {:?} accepts at most {}",
                req.payload.get().len(),
                req.queue,
                settings.max_payload_bytes
            );
            return Err(ErrorBody::new(codes::PAYLOAD_TOO_LARGE, msg));
        }
        let group = match settings.ordering {
            Ordering::Fifo => Some(fifo_group(settings, &req.queue, &req.payload)?),
            Ordering::Standard => None,
        };
        let lane = match settings.fair_by.as_deref().filter(|f| !f.is_empty()) {
            Some(field) => Some(fair_key(field, &req.queue, &req.payload)?),
            None => None,
        };
        Ok(Admitted { group, lane })
    }

    /// The receipt of an earlier job with the request's idempotency key: one
    /// in this batch, or one in the store within retention.
    fn earlier_receipt(
        &self,
        q: QueueId,
        req: &EnqueueRequest,
        seen: &Seen,
    ) -> Result<Option<Uuid>, ErrorBody> {
        let Some(key) = &req.idempotency_key else {
            return Ok(None);
        };
        match seen.keys.get(&(q, key.clone())) {
            Some(id) => Ok(Some(*id)),
            None => self.idempotent_match(q, key).map_err(store_error),
        }
    }

    /// Whether a FIFO group already has an unfinished job (in the store, or
    /// earlier in this batch).
    fn group_busy(&self, q: QueueId, group: &str, seen: &Seen) -> bool {
        seen.groups.contains(&(q, group.to_owned())) || self.store.group_busy(q, group)
    }

    /// An earlier job with this idempotency key, if still within retention.
    fn idempotent_match(&self, q: QueueId, key: &str) -> Result<Option<Uuid>, StoreError> {
        let Some(id) = self.store.idempotency(q, key)? else {
            return Ok(None);
        };
        Ok(self.load_job(&id)?.map(|_| id))
    }
}

/// Counts acknowledged jobs per queue (a batch's jobs mostly share one).
pub(super) fn count_enqueued(metrics: &super::metrics::QueueMetrics, queues: &[String]) {
    let mut run: Option<(&str, u64)> = None;
    for q in queues {
        match &mut run {
            Some((name, n)) if *name == q.as_str() => *n += 1,
            _ => {
                if let Some((name, n)) = run {
                    metrics.enqueued(name, n);
                }
                run = Some((q.as_str(), 1));
            }
        }
    }
    if let Some((name, n)) = run {
        metrics.enqueued(name, n);
    }
}

/// A job's id and receipt: a UUIDv7 (its time, so receipts sort by enqueue
/// time) whose other bits are this process's salt and the job's sequence
/// number, unique in the store. No entropy is drawn per job: `Uuid::now_v7`
/// asks the kernel for random bytes on every call.
pub(super) fn job_id(now_ms: u64, seq: u64, salt: u16) -> Uuid {
    let mut bits = [0u8; 10];
    bits[..2].copy_from_slice(&salt.to_be_bytes());
    bits[2..].copy_from_slice(&seq.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(now_ms, &bits).into_uuid()
}

/// The record of a job just enqueued.
fn new_record(
    req: EnqueueRequest,
    (queue_id, fn_id): (QueueId, FnId),
    seq: u64,
    now: u64,
    state: JobState,
    max_attempts: u32,
    group: Option<String>,
) -> JobRecord {
    JobRecord {
        // Kept for a held job too: it becomes delayed, not ready, when its group frees it early.
        due_ms: req.run_at_ms.filter(|t| *t > now).unwrap_or(0),
        queue: req.queue,
        queue_id,
        namespace: req.namespace,
        function_id: req.function_id,
        fn_id,
        state,
        priority: req.priority,
        seq,
        attempts: 0,
        history_len: 0,
        max_attempts,
        enqueued_ms: now,
        finished_ms: 0,
        traceparent: req.traceparent,
        baggage: req.baggage,
        group,
        idempotency_key: req.idempotency_key,
        result: None,
        last_error: None,
        redrives: 0,
        dead_seq: 0,
        payload: req.payload.get().as_bytes().to_vec(),
        history: Vec::new(),
        expires_ms: req.expires_at_ms.unwrap_or(0),
        progress: None,
        logs: Vec::new(),
        logs_dropped: 0,
        flow: None,
    }
}

/// Longest fair key: it becomes part of a store key.
const MAX_FAIR_KEY: usize = 256;

/// A job's fair key: the payload's `field`, a string or number; a job
/// without it shares the lane of every other keyless job (for this queue
/// and the cluster's JetStream queues alike).
pub(crate) fn fair_key(
    field: &str,
    queue: &str,
    payload: &crate::protocol::Payload,
) -> Result<String, ErrorBody> {
    let payload: serde_json::Value = serde_json::from_str(payload.get()).unwrap_or_default();
    let key = match payload.get(field) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        None | Some(serde_json::Value::Null) => String::new(),
        Some(_) => {
            return Err(ErrorBody::new(
                codes::INVALID_ARGUMENTS,
                format!(
                    "queue {queue:?} is fair by {field:?}: that payload field must be a string or number"
                ),
            ));
        }
    };
    if key.len() > MAX_FAIR_KEY || key.contains('\0') {
        return Err(ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            format!("fair key {field:?} is at most {MAX_FAIR_KEY} bytes, without NUL"),
        ));
    }
    Ok(key)
}

/// The FIFO group named by the queue's `group_field` (a string or number;
/// required), for this queue and the cluster's JetStream queues alike.
pub(crate) fn fifo_group(
    settings: &QueueSettings,
    queue: &str,
    payload: &crate::protocol::Payload,
) -> Result<String, ErrorBody> {
    // No group field (a queue defined at run time, e.g. a durable topic's fifo
    // subscriber): the whole queue is one group, in enqueue order.
    let Some(field) = settings.group_field.as_deref().filter(|f| !f.is_empty()) else {
        return Ok(String::new());
    };
    let missing = || {
        ErrorBody::new(
            codes::INVALID_ARGUMENTS,
            format!(
                "queue {queue:?} is fifo: the payload needs a string or number field {field:?} naming the job's group"
            ),
        )
    };
    let payload: serde_json::Value = serde_json::from_str(payload.get()).map_err(|_| missing())?;
    match payload.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err(missing()),
    }
}

/// A ready job's record, for unit tests of the scheduler's parts.
#[cfg(test)]
pub(super) fn sample_record() -> JobRecord {
    let req = EnqueueRequest {
        queue: "q".into(),
        namespace: String::new(),
        function_id: "svc::f".into(),
        payload: crate::protocol::to_payload(&serde_json::json!({"n": 1})),
        traceparent: None,
        baggage: None,
        run_at_ms: None,
        priority: 0,
        idempotency_key: None,
        expires_at_ms: None,
    };
    new_record(req, (1, 1), 1, 1, JobState::Ready, 3, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_v7_unique_and_in_enqueue_order() {
        let a = job_id(1_000, 7, 0xabcd);
        let b = job_id(1_000, 8, 0xabcd);
        let c = job_id(1_001, 0, 0xabcd);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert!(a < b && b < c, "time, then sequence");
        assert_ne!(job_id(1_000, 7, 1), a, "the salt tells processes apart");
    }
}
