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
/// The connection's session may not call this function (RBAC, or a role
/// without the operator grant), or may not bind a trigger to it.
pub const FORBIDDEN: &str = "FORBIDDEN";
/// An RBAC listener's auth function refused the connection: sent in an
/// `{"type":"error"}` frame, then the socket closes with `close::POLICY_VIOLATION`.
pub const AUTH_ERROR: &str = "AUTH_ERROR";

// qmesh codes.
/// The engine's bound on a call's life ran out before the executor answered.
pub const INVOCATION_TIMEOUT: &str = "invocation_timeout";
/// A call could not be carried to its executor or back (another engine of
/// the cluster answered garbage, or NATS failed); the message names where.
pub const INVOCATION_FAILED: &str = "invocation_failed";
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

/// Refusals of a client socket upgrade (realtime routes, the streams socket),
/// sent as `{"error":{"code",..}}` with an HTTP status.
pub mod upgrade {
    /// 503: the route's triggers all went (its worker restarting); retry.
    pub const ROUTE_UNAVAILABLE: &str = "ROUTE_UNAVAILABLE";
    /// 503: the engine is shutting down.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// 503: `realtime.max_connections` (or `streams.max_connections`) reached.
    pub const TOO_MANY_CONNECTIONS: &str = "TOO_MANY_CONNECTIONS";
    /// 403: `Origin` is not in the route's `allowed_origins`.
    pub const ORIGIN_NOT_ALLOWED: &str = "ORIGIN_NOT_ALLOWED";
    /// 403: the auth function answered with a `FORBIDDEN` error (streams: or `{"unauthorized": true}`).
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
    /// An RBAC listener's auth function refused the connection.
    pub const POLICY_VIOLATION: u16 = 1008;
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
/// The queue feature or operation asked for is not supported where the
/// engine keeps this queue's jobs (the cluster's JetStream queues, so far).
pub const NOT_SUPPORTED: &str = "not_supported";
/// The store's disk (or the engine's file size limit) is full: nothing new
/// is accepted until there is room again. (The `Enqueue` action answers
/// `enqueue_error`, as iii SDKs expect, with this code in its message.)
pub const STORE_FULL: &str = "store_full";
/// The attempt ended because the engine stopped while it ran (an attempt's error code).
pub const ENGINE_RESTART: &str = "engine_restart";

// HTTP triggers and HTTP-invoked functions.
/// HTTP error envelope: no route at that path, or its function is gone (404).
pub const HTTP_NOT_FOUND: &str = NOT_FOUND;
/// HTTP error envelope: a route's condition function answered `false` (422).
pub const CONDITION_NOT_MET: &str = "CONDITION_NOT_MET";
/// HTTP error envelope: a middleware function did not answer in `http.default_timeout` (504).
pub const MIDDLEWARE_TIMEOUT: &str = "MIDDLEWARE_TIMEOUT";
/// HTTP error envelope: the engine failed while handling the request (500).
pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
/// HTTP error envelope: the request body is over `http.max_body_bytes` (413).
pub const HTTP_PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
/// HTTP-invoked function: the endpoint answered with a status of 400 or more.
pub const HTTP_ERROR: &str = "http_error";
/// HTTP-invoked function: no response (connect error, reset, timeout).
pub const HTTP_REQUEST_FAILED: &str = "http_request_failed";
/// HTTP-invoked function: the response body could not be read.
pub const HTTP_RESPONSE_FAILED: &str = "http_response_failed";
/// HTTP-invoked function: a 2xx response whose body is not JSON.
pub const INVALID_RESPONSE: &str = "invalid_response";
/// HTTP-invoked function: the URL breaks `[http_functions]` (scheme,
/// allowlist, private address, DNS).
pub const URL_VALIDATION_FAILED: &str = "url_validation_failed";
/// HTTP-invoked function: its `invocation` spec cannot be read.
pub const INVALID_INVOCATION: &str = "invalid_invocation";
/// HTTP-invoked function: the `hmac` auth's `secret_key` names no environment variable.
pub const SECRET_NOT_FOUND: &str = "secret_not_found";
/// HTTP-invoked function: the `bearer` auth's `token_key` names no environment variable.
pub const TOKEN_NOT_FOUND: &str = "token_not_found";
/// HTTP-invoked function: the `api_key` auth's `value_key` names no environment variable.
pub const API_KEY_NOT_FOUND: &str = "api_key_not_found";
// State, streams, pubsub
/// A built-in's input does not deserialize (iii: "Failed to deserialize input for <id>: …").
pub const DESERIALIZATION_ERROR: &str = "deserialization_error";
/// `state::set`: the value is larger than `[state] max_value_bytes`.
pub const VALUE_TOO_LARGE: &str = "VALUE_TOO_LARGE";
/// `state::set` failed (a bad scope or key, or the store refused the write).
pub const SET_ERROR: &str = "SET_ERROR";
/// `state::get` (and the read half of `state::delete`) failed.
pub const GET_ERROR: &str = "GET_ERROR";
/// `state::delete` failed.
pub const DELETE_ERROR: &str = "DELETE_ERROR";
/// `state::update` failed as a whole (one bad op is reported in `errors`, not here).
pub const UPDATE_ERROR: &str = "UPDATE_ERROR";
/// `state::list` failed.
pub const LIST_ERROR: &str = "LIST_ERROR";
/// `state::list_groups` failed.
pub const LIST_GROUPS_ERROR: &str = "LIST_GROUPS_ERROR";
/// `stream::set` failed (bad names, an item too large, a store failure).
pub const STREAM_SET_ERROR: &str = "STREAM_SET_ERROR";
/// `stream::get` failed.
pub const STREAM_GET_ERROR: &str = "STREAM_GET_ERROR";
/// `stream::delete` failed.
pub const STREAM_DELETE_ERROR: &str = "STREAM_DELETE_ERROR";
/// `stream::list` failed.
pub const STREAM_GET_GROUP_ERROR: &str = "STREAM_GET_GROUP_ERROR";
/// `stream::list_groups` failed.
pub const STREAM_LIST_GROUPS_ERROR: &str = "STREAM_LIST_GROUPS_ERROR";
/// `stream::list_all` failed.
pub const STREAM_LIST_ALL_ERROR: &str = "STREAM_LIST_ALL_ERROR";
/// `stream::send` failed.
pub const STREAM_SEND_ERROR: &str = "STREAM_SEND_ERROR";
/// `stream::update` failed as a whole.
pub const STREAM_UPDATE_ERROR: &str = "STREAM_UPDATE_ERROR";
/// A custom stream provider (`stream::<op>(<name>)`) answered something the
/// op cannot read (iii's code).
pub const JSON_ERROR: &str = "JSON_ERROR";

/// Streams client socket: the `code` of an `error` event (a join or leave the
/// engine could not take; a join handler's refusal is iii's `unauthorized`
/// event instead).
pub mod stream_socket {
    /// Not `{"type":"join"|"leave","data":{..}}`, or a name that cannot be used.
    pub const BAD_MESSAGE: &str = "BAD_MESSAGE";
    /// The socket holds `streams.max_subscriptions_per_connection` already.
    pub const TOO_MANY_SUBSCRIPTIONS: &str = "TOO_MANY_SUBSCRIPTIONS";
    /// A join reused a `subscriptionId` this socket still holds.
    pub const SUBSCRIPTION_EXISTS: &str = "SUBSCRIPTION_EXISTS";
    /// The subscription is recorded, but reading its item or group failed.
    pub const SYNC_FAILED: &str = "SYNC_FAILED";
}
/// `publish` with an empty topic.
pub const TOPIC_NOT_SET: &str = "topic_not_set";

/// Per-op error codes of `state::update` (`errors[].code`): `<op>.<suffix>`,
/// e.g. `merge.path.too_deep`, `increment.not_number`.
pub mod update_op {
    /// The path has more segments than allowed.
    pub const PATH_TOO_DEEP: &str = "path.too_deep";
    /// A path segment is longer than allowed.
    pub const PATH_SEGMENT_TOO_LONG: &str = "path.segment_too_long";
    /// A path has an empty segment.
    pub const PATH_EMPTY_SEGMENT: &str = "path.empty_segment";
    /// A path names `__proto__`, `constructor` or `prototype`.
    pub const PATH_PROTOTYPE_KEY: &str = "path.prototype_key";
    /// `set` on a root that is not an object.
    pub const TARGET_NOT_OBJECT: &str = "target_not_object";
    /// `merge` with a value that is not an object.
    pub const VALUE_NOT_AN_OBJECT: &str = "value.not_an_object";
    /// `merge` with a value of too many keys.
    pub const VALUE_TOO_MANY_KEYS: &str = "value.too_many_keys";
    /// `merge` with a value nested too deep.
    pub const VALUE_TOO_DEEP: &str = "value.too_deep";
    /// `merge` with a value holding `__proto__`, `constructor` or `prototype`.
    pub const VALUE_PROTOTYPE_KEY: &str = "value.prototype_key";
    /// `increment`/`decrement` of a field that is not a number (or overflow).
    pub const NOT_NUMBER: &str = "not_number";
    /// `append` to a target it cannot extend.
    pub const TYPE_MISMATCH: &str = "type_mismatch";
    /// The op's type is unknown or its fields do not parse.
    pub const INVALID_OP: &str = "invalid_op";
    /// More ops than `[state] max_update_ops` in one call.
    pub const TOO_MANY_OPS: &str = "too_many_ops";
}
