//! What the store keeps per queue, job and attempt (record version 4: the
//! job's payload (version 2), its ended attempts (version 3), and its
//! expiry, progress, log lines and flow links (version 4) live in
//! [`JobRecord`]; [`Counts`] counts waiting flow parents since version 4).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::layout::{FnId, QueueId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub id: QueueId,
    pub paused: bool,
    pub created_ms: u64,
}

/// Where a job is. "Waiting for a worker" is not stored: it is a ready job
/// whose function no connected worker provides right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Ready,
    /// Scheduled for later, or backing off before a retry.
    Delayed,
    Running,
    Completed,
    Dead,
    Cancelled,
    /// FIFO: waiting behind an earlier job of its group.
    Held,
    /// A flow's parent: waiting until its children have finished.
    Waiting,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Delayed => "delayed",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Held => "held",
            JobState::Waiting => "waiting_for_children",
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// The handler returned an error.
    Error,
    /// No result within the queue's lease.
    Timeout,
    /// The worker running it disconnected.
    WorkerLost,
    /// The engine stopped (crash or kill) while it ran.
    EngineRestart,
    /// Not started before its `expires_ms`: dropped, never run late.
    Expired,
    /// A flow parent whose child dead-lettered (policy `fail_parent`).
    ChildFailed,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Error => "error",
            FailReason::Timeout => "timeout",
            FailReason::WorkerLost => "worker_lost",
            FailReason::EngineRestart => "engine_restart",
            FailReason::Expired => "expired",
            FailReason::ChildFailed => "child_failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub reason: FailReason,
    pub code: String,
    pub message: String,
    pub stacktrace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub queue: String,
    pub queue_id: QueueId,
    pub namespace: String,
    pub function_id: String,
    pub fn_id: FnId,
    pub state: JobState,
    pub priority: u8,
    /// Enqueue order, global and monotonic; orders ready jobs of equal priority.
    pub seq: u64,
    /// Attempts started since enqueue or the last redrive (compared with `max_attempts`).
    pub attempts: u32,
    /// Attempts ever started; numbers the attempt history, which survives redrives.
    pub history_len: u32,
    pub max_attempts: u32,
    pub enqueued_ms: u64,
    /// When a delayed job becomes ready (0 when it is not delayed).
    pub due_ms: u64,
    pub finished_ms: u64,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub group: Option<String>,
    pub idempotency_key: Option<String>,
    /// The handler's return value, raw JSON, once completed.
    pub result: Option<Vec<u8>>,
    pub last_error: Option<ErrorRecord>,
    pub redrives: u32,
    /// Position in the queue's dead letters, while dead.
    pub dead_seq: u64,
    /// The JSON payload, raw bytes. Kept in the record (not a table of its
    /// own) so an enqueue writes one value and a dispatch reads one.
    pub payload: Vec<u8>,
    /// Ended attempts, oldest first; kept through dead-lettering and redrive.
    /// In the record (not a table of its own) because a new key costs sled far
    /// more than a longer value, and the record is rewritten at each end anyway.
    pub history: Vec<AttemptRecord>,
    /// No attempt starts after this (ms since the epoch; 0 = never expires).
    pub expires_ms: u64,
    /// The last progress its handler reported, raw JSON.
    pub progress: Option<Vec<u8>>,
    /// Its handler's log lines, oldest first, at most the queue's bound.
    pub logs: Vec<JobLogLine>,
    /// Lines dropped from the front of `logs` to keep it bounded.
    pub logs_dropped: u32,
    /// Its place in a flow, if it belongs to one.
    pub flow: Option<FlowLinks>,
}

/// One line a handler logged about its job (`queue::log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogLine {
    pub at_ms: u64,
    pub line: String,
}

/// A job's links in a flow: its parent, its children, the ones it still
/// waits for, and what the finished ones ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLinks {
    pub parent: Option<Uuid>,
    pub children: Vec<Uuid>,
    /// Children not finished yet. A list, not a count, so a child that ends
    /// twice (dead, redriven, completed) is settled once.
    pub waiting_on: Vec<Uuid>,
    pub on_child_failure: ChildFailure,
    /// How each finished child ended, in the order they did: what the
    /// parent receives when it runs (kept here, so a child's own record may
    /// be pruned first).
    pub outcomes: Vec<ChildOutcome>,
}

/// How one child of a flow ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildOutcome {
    pub child: Uuid,
    pub queue: String,
    pub function_id: String,
    /// `Completed`, `Dead` or `Cancelled` (a deleted child counts as cancelled).
    pub state: JobState,
    /// Its result, raw JSON, when it completed.
    pub result: Option<Vec<u8>>,
    pub error: Option<ErrorRecord>,
}

/// What a dead child does to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildFailure {
    /// The parent is dead-lettered with reason `child_failed`.
    FailParent,
    /// The parent runs once its other children finish.
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_ms: u64,
    /// 0 while running.
    pub ended_ms: u64,
    pub worker_id: Option<Uuid>,
    /// `None` while running or when it completed.
    pub error: Option<ErrorRecord>,
}

/// What the keys of one queue batch held before it, stored before its
/// writes (see `Store::apply_logged`): present after a crash, the batch is
/// undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoRecord {
    /// Each key the batch writes, once, with its value before the batch
    /// (`None`: the key did not exist).
    pub before: Vec<UndoEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// Jobs of one queue per stored state, kept in the same batches as the
/// transitions so startup reads them instead of scanning jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ready: u64,
    pub delayed: u64,
    pub running: u64,
    pub completed: u64,
    pub dead: u64,
    pub held: u64,
    pub waiting: u64,
}

impl Counts {
    pub fn slot(&mut self, state: JobState) -> Option<&mut u64> {
        match state {
            JobState::Ready => Some(&mut self.ready),
            JobState::Delayed => Some(&mut self.delayed),
            JobState::Running => Some(&mut self.running),
            JobState::Completed => Some(&mut self.completed),
            JobState::Dead => Some(&mut self.dead),
            JobState::Held => Some(&mut self.held),
            JobState::Waiting => Some(&mut self.waiting),
            JobState::Cancelled => None,
        }
    }

    /// Moves one job between states (`None` = entering or leaving the store).
    pub fn shift(&mut self, from: Option<JobState>, to: Option<JobState>) {
        if let Some(slot) = from.and_then(|s| self.slot(s)) {
            *slot = slot.saturating_sub(1);
        }
        if let Some(slot) = to.and_then(|s| self.slot(s)) {
            *slot += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// Realtime channels.

/// An open client connection whose disconnect handler is owed if the engine
/// dies (`layout::REALTIME_CONNS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeConnRecord {
    /// The `channel` object handlers see, raw JSON (state left out).
    pub channel: Vec<u8>,
    /// The disconnect handler bound when the connection opened.
    pub namespace: String,
    pub function_id: String,
    pub opened_ms: u64,
}

/// One state value (`layout::STATE_VALUES`): the JSON exactly as the caller
/// sent it, as bytes (bincode cannot carry a `serde_json::Value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub json: Vec<u8>,
}

/// Where one cron trigger's schedule stands (`layout::CRON_POSITIONS`): the
/// last slot decided, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRecord {
    pub last_slot_ms: u64,
}

/// A durable topic's subscriber (`layout::TOPIC_SUBS`): the binding's
/// `queue_config` as sent (mapped onto queue settings again at start), its
/// condition function, and since when no binding names it (0 while bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSubRecord {
    pub queue_config: Vec<u8>,
    pub condition_function_id: Option<String>,
    pub unbound_since_ms: u64,
}
