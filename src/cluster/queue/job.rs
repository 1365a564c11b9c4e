//! A job as the job stream holds it: the headers its message carries
//! besides its payload, the job an enqueue publishes, and how a job ended.
//! Every file of the JetStream queues reads these; this one reads none of
//! them.

use async_nats::HeaderMap;
use std::time::Duration;

use super::JobKey;
use crate::mesh::CallCtx;
use crate::protocol::{ErrorBody, Payload};

/// The headers a job message carries besides its payload.
pub(super) const RECEIPT: &str = "Qmesh-Receipt";
pub(super) const TRACEPARENT: &str = "traceparent";
pub(super) const BAGGAGE: &str = "baggage";
/// A job's priority, when not 0.
pub(super) const PRIORITY: &str = "Qmesh-Priority";
/// A delayed job's due time (ms since the epoch), kept on the job once it
/// fired.
pub(super) const DUE_AT: &str = "Qmesh-Due-At";
/// When a job not started yet is dead-lettered as expired instead of
/// running late (ms since the epoch; `expires_in`/`expires_at`). Kept on a
/// delayed job once it fired; a redrive drops it, as on one engine.
pub(super) const EXPIRES_AT: &str = "Qmesh-Expires-At";

/// The headers of a scheduled message (NATS ADR-51): when, and where to.
const NATS_SCHEDULE: &str = "Nats-Schedule";
pub(super) const NATS_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";

/// A schedule's time for `Nats-Schedule`: `@at` and RFC 3339 in UTC with
/// milliseconds (the server parses the fraction and fires within a few ms).
fn schedule_at(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    format!("@at {}", humantime::format_rfc3339_millis(at))
}

/// Makes a job's message a scheduled one: the stream publishes it on
/// `target` at `at` (ms since the epoch), which it keeps (`DUE_AT`).
pub(super) fn schedule(headers: &mut HeaderMap, at: u64, target: &str) {
    headers.insert(NATS_SCHEDULE, schedule_at(at).as_str());
    headers.insert(NATS_SCHEDULE_TARGET, target);
    headers.insert(DUE_AT, at.to_string().as_str());
}

/// A job to put on the stream.
pub(super) struct Job {
    pub key: JobKey,
    pub payload: Payload,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub idempotency_key: Option<String>,
    /// When it may first run (ms since the epoch); `None` = now.
    pub run_at_ms: Option<u64>,
    /// 0–255, higher first (by band: see [`Lane::Band`]).
    pub priority: u8,
    /// Not started by then (ms since the epoch): dead-lettered as expired.
    pub expires_at_ms: Option<u64>,
}

impl Job {
    /// A checked enqueue request made by a call, as a job of the stream
    /// with the caller's trace context.
    pub(super) fn of_call(
        mut req: crate::queue::EnqueueRequest,
        ctx: &CallCtx,
    ) -> Result<Self, ErrorBody> {
        req.traceparent = ctx.traceparent.clone();
        req.baggage = ctx.baggage.clone();
        Self::of_request(req)
    }

    /// A checked enqueue request as a job of the stream, with the request's
    /// trace context.
    pub(super) fn of_request(req: crate::queue::EnqueueRequest) -> Result<Self, ErrorBody> {
        Ok(Job {
            key: JobKey {
                queue: req.queue,
                namespace: req.namespace,
                function_id: req.function_id,
            },
            payload: req.payload,
            traceparent: req.traceparent,
            baggage: req.baggage,
            idempotency_key: req.idempotency_key,
            run_at_ms: req.run_at_ms,
            priority: req.priority,
            expires_at_ms: req.expires_at_ms,
        })
    }
}

/// How a child ended.
pub(super) enum Ended {
    /// With its result, raw JSON.
    Completed(Box<serde_json::value::RawValue>),
    /// Dead-lettered, with its last error.
    Dead(Option<ErrorBody>),
    Cancelled,
}

/// When a child whose parent could not be told is delivered again.
pub(super) const FLOW_RETRY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    #[test]
    fn a_schedule_names_its_time_in_utc_with_milliseconds() {
        assert_eq!(
            super::schedule_at(1_700_000_000_123),
            "@at 2023-11-14T22:13:20.123Z"
        );
    }
}
