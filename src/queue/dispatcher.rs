//! Watching one running attempt: its outcome, or the lease running out.
//! The call itself goes through the live mesh like any sync call, so any
//! worker providing the function id — now or after a restart — can run it.

use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::mesh::Mesh;
use crate::mesh::router::InternalCall;
use crate::protocol::{ErrorBody, Payload, codes};
use crate::store::records::{ErrorRecord, FailReason};

/// An attempt's end, reported to the scheduler.
pub struct Finished {
    pub job: Uuid,
    pub outcome: Result<Option<Payload>, ErrorRecord>,
}

pub async fn watch(
    mesh: Mesh,
    tx: mpsc::UnboundedSender<Finished>,
    job: Uuid,
    call: InternalCall,
    lease: Duration,
) {
    let outcome = match tokio::time::timeout(lease, call.outcome).await {
        Ok(Ok(Ok(result))) => Ok(result),
        Ok(Ok(Err(err))) => Err(classify(err)),
        Ok(Err(_)) => Err(record(
            FailReason::WorkerLost,
            codes::INVOCATION_STOPPED,
            "the call was abandoned",
        )),
        Err(_) => {
            let msg = format!(
                "no result within the queue's lease of {}",
                humantime::format_duration(lease)
            );
            mesh.fail_call(call.invocation_id, codes::INVOCATION_TIMEOUT, &msg);
            Err(record(FailReason::Timeout, codes::INVOCATION_TIMEOUT, &msg))
        }
    };
    let _ = tx.send(Finished { job, outcome });
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
