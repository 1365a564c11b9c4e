//! How a running job's attempt ends: the outcome of its call, collected by
//! the mesh on the scheduler's channel and tagged with the job id, or its
//! lease running out first. There is no task or timer per running job: the
//! scheduler keeps one clock for every lease (`leases.rs`).

use std::time::Duration;
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
