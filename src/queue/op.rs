//! What an operator asks the queue: the views and actions `queue::*` and
//! the CLI run. Answered by the scheduler (`ops.rs`), in order with
//! everything else it does.

use uuid::Uuid;

use crate::store::records::JobState;

/// One operator request.
#[derive(Debug)]
pub enum Op {
    List,
    Stats {
        queue: String,
    },
    Get {
        receipt: Uuid,
    },
    Explain {
        receipt: Uuid,
    },
    /// A page of a queue's jobs in one stored state; each job is shown in
    /// its operator state (`Ready` lists those waiting for a worker too).
    Peek {
        queue: String,
        state: JobState,
        limit: usize,
        after: Option<Uuid>,
    },
    Pause {
        queue: String,
        paused: bool,
    },
    Cancel {
        receipt: Uuid,
    },
    Purge {
        queue: String,
    },
    DeadLetters {
        queue: String,
        offset: usize,
        limit: usize,
    },
    /// Redrive one dead job (`Some`) or all of a queue's.
    Redrive {
        queue: String,
        receipt: Option<Uuid>,
    },
    Discard {
        queue: String,
        receipt: Uuid,
    },
    /// No job of the queue starts for this long.
    Throttle {
        queue: String,
        pause: std::time::Duration,
    },
    /// A running job's handler is alive: its lease runs `extend` (or the
    /// queue's lease) from now. Only its executing worker may, or an operator.
    Heartbeat {
        receipt: Uuid,
        extend: Option<std::time::Duration>,
        caller: Uuid,
        operator: bool,
    },
    /// A running job's handler reports progress or a log line. Only its
    /// executing worker may, or an operator.
    Report {
        receipt: Uuid,
        report: super::progress::Report,
        caller: Uuid,
        operator: bool,
    },
}
