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
/// New work refused: the bytes the engine holds for slow readers reached
/// `limits.memory_budget`.
pub const ENGINE_OVERLOADED: &str = "engine_overloaded";

// Realtime routes: what workers (`channel::*`) and clients see.
/// No open client connection has this id.
pub const CHANNEL_NOT_FOUND: &str = "CHANNEL_NOT_FOUND";
/// The client connection is closing or closed.
pub const CHANNEL_CLOSED: &str = "CHANNEL_CLOSED";
/// The client's outbound queue is full; it was closed with 1013.
pub const CHANNEL_BACKPRESSURE: &str = "CHANNEL_BACKPRESSURE";
/// A client message matched no handler and the route has no default one.
pub const NO_HANDLER: &str = "NO_HANDLER";
/// The handler's function has no worker right now.
pub const HANDLER_UNAVAILABLE: &str = "HANDLER_UNAVAILABLE";
/// The handler requires an authenticated connection (also the upgrade's 401).
pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
/// `channel::set_state` over `realtime.max_state_bytes`.
pub const STATE_TOO_LARGE: &str = "STATE_TOO_LARGE";
/// No realtime route at that path (a ticket's route, or the upgrade's 404).
pub const ROUTE_NOT_FOUND: &str = "ROUTE_NOT_FOUND";

/// Refusals of a realtime upgrade, sent as `{"error":{"code",..}}` with an HTTP status.
pub mod upgrade {
    /// 503: the route's triggers all went (its worker restarting); retry.
    pub const ROUTE_UNAVAILABLE: &str = "ROUTE_UNAVAILABLE";
    /// 503: the engine is shutting down.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// 503: `realtime.max_connections` reached.
    pub const TOO_MANY_CONNECTIONS: &str = "TOO_MANY_CONNECTIONS";
    /// 403: `Origin` is not in the route's `allowed_origins`.
    pub const ORIGIN_NOT_ALLOWED: &str = "ORIGIN_NOT_ALLOWED";
    /// 403: the auth function answered with a `FORBIDDEN` error.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// 503: the auth function did not answer.
    pub const AUTH_UNAVAILABLE: &str = "AUTH_UNAVAILABLE";
    /// 422: a path parameter and a query parameter disagree.
    pub const OPENING_DATA_CONFLICT: &str = "OPENING_DATA_CONFLICT";
    /// 400: the query string cannot be read.
    pub const BAD_QUERY: &str = "BAD_QUERY";
}

/// WebSocket close codes the engine uses, on every kind of socket.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The engine is shutting down (or a client went idle).
    pub const GOING_AWAY: u16 = 1001;
    /// A channel socket broke a rule of RFC 6455 (unmasked frame, bad opcode…).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame on a channel socket was not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message exceeded the configured size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A realtime handler failed and the route says `on_handler_error: close`.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Reported to disconnect handlers for connections an engine crash cut off.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The peer stopped reading and its outbound queue hit its bound.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A realtime client whose connect handler refused it with `FORBIDDEN`.
    pub const FORBIDDEN: u16 = 4403;
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
/// The store's disk (or the engine's file size limit) is full: nothing new
/// is accepted until there is room again. (The `Enqueue` action answers
/// `enqueue_error`, as iii SDKs expect, with this code in its message.)
pub const STORE_FULL: &str = "store_full";
/// The attempt ended because the engine stopped while it ran (an attempt's error code).
pub const ENGINE_RESTART: &str = "engine_restart";
