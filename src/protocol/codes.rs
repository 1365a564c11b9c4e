//! Error codes carried in `invocationresult.error.code`, and WebSocket close codes.
//!
//! The iii codes keep iii's spelling so SDK code that matches on them keeps
//! working; the qmesh-only codes are lower snake case like iii's own.

use serde::{Deserialize, Serialize};

/// The `error` object of an `invocationresult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            stacktrace: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

// iii codes.
pub const FUNCTION_NOT_FOUND: &str = "function_not_found";
pub const INVOCATION_STOPPED: &str = "invocation_stopped";
pub const ENQUEUE_ERROR: &str = "enqueue_error";
pub const INVALID_NAMESPACE: &str = "INVALID_NAMESPACE";
pub const NOT_FOUND: &str = "NOT_FOUND";
pub const INVALID_ARGUMENTS: &str = "INVALID_ARGUMENTS";
pub const TRIGGER_REGISTRATION_FAILED: &str = "trigger_registration_failed";
pub const TRIGGER_TYPE_NOT_FOUND: &str = "trigger_type_not_found";
pub const FUNCTION_NAMESPACE_CONFLICT: &str = "FUNCTION_NAMESPACE_CONFLICT";

// qmesh codes.
/// The engine's bound on a call's life ran out before the executor answered.
pub const INVOCATION_TIMEOUT: &str = "invocation_timeout";
/// The caller already has the configured maximum of calls in flight.
pub const TOO_MANY_PENDING_CALLS: &str = "too_many_pending_calls";
/// The caller reused an `invocation_id` that is still in flight.
pub const DUPLICATE_INVOCATION_ID: &str = "duplicate_invocation_id";
/// `action.type` is neither `void` nor `enqueue`.
pub const INVALID_ACTION: &str = "invalid_action";
/// The executor's outbound queue is full (it stopped reading its socket).
pub const EXECUTOR_UNAVAILABLE: &str = "executor_unavailable";
/// `engine::channels::create` refused: the engine holds `channels.max_channels`.
pub const TOO_MANY_CHANNELS: &str = "too_many_channels";

/// WebSocket close codes the engine uses.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The engine is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A message exceeded the configured size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The peer stopped reading and its outbound queue hit its bound.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Another connection took over this worker's identity (`reattach`).
    pub const REPLACED: u16 = 4000;
    /// Channel socket: the channel expired, or its creator left, before both
    /// ends connected.
    pub const CHANNEL_ABANDONED: u16 = 4408;
    /// Channel writer: the reader went away; nothing more will be delivered.
    pub const CHANNEL_READER_GONE: u16 = 4410;
    /// Channel reader: the writer vanished without a normal close, so the
    /// stream is truncated (not a clean end).
    pub const CHANNEL_WRITER_ABORTED: u16 = 4499;
}

// Durable queue (queue::*, enqueue)
/// The queue is not known: never used, or undeclared while `[queue] strict` is on.
pub const QUEUE_NOT_FOUND: &str = "queue_not_found";
/// The payload is larger than the queue's `max_payload_bytes`.
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// An operator action does not apply to the job's state (e.g. cancelling a running job).
pub const INVALID_STATE: &str = "invalid_state";
/// An operator function failed inside the engine (the store refused a read or write).
pub const QUEUE_ERROR: &str = "queue_error";
/// The attempt ended because the engine stopped while it ran (an attempt's error code).
pub const ENGINE_RESTART: &str = "engine_restart";
