//! How a running job's attempt ends: the outcome of its call, collected by
//! the mesh on the scheduler's channel and tagged with the job id, or its
//! lease running out first. There is no task or timer per running job: the
//! scheduler keeps one clock for every lease ([`Leases`]).

use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

use crate::mesh::state::Settled;
use crate::protocol::{ErrorBody, Payload, codes};
use crate::store::records::{ErrorRecord, FailReason};

/// An attempt's end, as the scheduler records it.
pub struct Finished {
    pub job: Uuid,
    /// Which call of the job this ends: an outcome of an earlier attempt's
    /// call (a lease and a result crossing) is stale and ignored.
    pub invocation_id: Uuid,
    pub outcome: Result<Option<Payload>, ErrorRecord>,
}

impl From<Settled> for Finished {
    fn from(s: Settled) -> Self {
        Finished {
            job: s.tag,
            invocation_id: s.invocation_id,
            outcome: s.outcome.map_err(classify),
        }
    }
}

/// The leases of running attempts, soonest first.
#[derive(Default)]
pub struct Leases {
    by_deadline: BTreeSet<(Instant, Uuid)>,
}

impl Leases {
    pub fn add(&mut self, until: Instant, job: Uuid) {
        self.by_deadline.insert((until, job));
    }

    pub fn remove(&mut self, until: Instant, job: Uuid) {
        self.by_deadline.remove(&(until, job));
    }

    pub fn next(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(t, _)| *t)
    }

    /// Takes every lease that ran out by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Uuid> {
        let mut out = Vec::new();
        while let Some((t, job)) = self.by_deadline.first().copied() {
            if t > now {
                break;
            }
            self.by_deadline.pop_first();
            out.push(job);
        }
        out
    }
}

/// The error an attempt whose lease ran out ends with.
pub fn lease_expired(lease: Duration) -> ErrorBody {
    let msg = format!(
        "no result within the queue's lease of {}",
        humantime::format_duration(lease)
    );
    ErrorBody::new(codes::INVOCATION_TIMEOUT, msg)
}

fn classify(err: ErrorBody) -> ErrorRecord {
    let reason = match err.code.as_str() {
        codes::INVOCATION_STOPPED => FailReason::WorkerLost,
        codes::INVOCATION_TIMEOUT => FailReason::Timeout,
        _ => FailReason::Error,
    };
    ErrorRecord {
        reason,
        code: err.code,
        message: err.message,
        stacktrace: err.stacktrace,
    }
}

pub fn record(reason: FailReason, code: &str, message: &str) -> ErrorRecord {
    ErrorRecord {
        reason,
        code: code.to_owned(),
        message: message.to_owned(),
        stacktrace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_in_deadline_order_and_once() {
        let now = Instant::now();
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut l = Leases::default();
        l.add(now + Duration::from_secs(2), a);
        l.add(now + Duration::from_secs(1), b);
        l.add(now + Duration::from_secs(3), c);
        l.remove(now + Duration::from_secs(3), c);
        assert_eq!(l.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(l.expired(now + Duration::from_secs(2)), vec![b, a]);
        assert!(l.expired(now + Duration::from_secs(9)).is_empty());
        assert_eq!(l.next(), None);
    }
}
