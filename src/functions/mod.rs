//! Engine functions: ids a worker calls like any other function but that the
//! engine answers itself (`worker-protocol.md` §4). One file per family:
//! [`catalog`] (functions), [`workers`], [`triggers`], [`queues`],
//! [`channels`] (`engine::channels::*`), [`realtime`] (`channel::*`); [`views`]
//! builds the response shapes they share.
//!
//! `engine::workers::register` is part of the handshake and is handled by
//! `mesh::session`, because it must be applied in order with registrations.

pub mod catalog;
pub mod channels;
pub mod queues;
pub mod realtime;
pub mod triggers;
pub mod views;
pub mod workers;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

use crate::mesh::session::{WORKERS_REGISTER, reply_err};
use crate::mesh::{Connection, Mesh};
use crate::protocol::{ErrorBody, Invoke, codes, outbound, to_payload};

pub type Reply = Result<Value, ErrorBody>;

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub struct CallCtx {
    pub caller: Uuid,
}

pub enum Handler {
    /// Answered inline, in order with the caller's other messages.
    Sync(fn(&Mesh, &CallCtx, Value) -> Reply),
    /// Answered from a task (it waits on something).
    Async(fn(Mesh, CallCtx, Value) -> BoxFuture<'static, Reply>),
}

/// Every engine function, by id.
const TABLE: &[(&str, Handler)] = &[
    ("engine::functions::list", Handler::Sync(catalog::list)),
    ("engine::functions::info", Handler::Sync(catalog::info)),
    ("engine::workers::list", Handler::Sync(workers::list)),
    ("engine::workers::info", Handler::Sync(workers::info)),
    (
        "engine::triggers::list",
        Handler::Sync(triggers::list_types),
    ),
    ("engine::triggers::info", Handler::Sync(triggers::type_info)),
    (
        "engine::registered-triggers::list",
        Handler::Sync(triggers::list_bindings),
    ),
    (
        "engine::registered-triggers::info",
        Handler::Sync(triggers::binding_info),
    ),
    (
        "engine::register_trigger",
        Handler::Async(triggers::register),
    ),
    (
        "engine::unregister_trigger",
        Handler::Sync(triggers::unregister),
    ),
    ("engine::channels::create", Handler::Sync(channels::create)),
    ("engine::channels::list", Handler::Sync(channels::list)),
    ("engine::channels::info", Handler::Sync(channels::info)),
    ("queue::enqueue", Handler::Async(queues::enqueue)),
    ("queue::list", Handler::Async(queues::list)),
    ("queue::stats", Handler::Async(queues::stats)),
    ("queue::get", Handler::Async(queues::get)),
    ("queue::explain", Handler::Async(queues::explain)),
    ("queue::peek", Handler::Async(queues::peek)),
    ("queue::pause", Handler::Async(queues::pause)),
    ("queue::resume", Handler::Async(queues::resume)),
    ("queue::purge", Handler::Async(queues::purge)),
    ("queue::cancel", Handler::Async(queues::cancel)),
    (
        "engine::queue::list_topics",
        Handler::Async(queues::list_topics),
    ),
    (
        "engine::queue::topic_stats",
        Handler::Async(queues::topic_stats),
    ),
    (
        "engine::queue::dlq_topics",
        Handler::Async(queues::dlq_topics),
    ),
    (
        "engine::queue::dlq_messages",
        Handler::Async(queues::dlq_messages),
    ),
    ("iii::queue::redrive", Handler::Async(queues::redrive)),
    (
        "iii::queue::redrive_message",
        Handler::Async(queues::redrive_message),
    ),
    (
        "iii::queue::discard_message",
        Handler::Async(queues::discard_message),
    ),
    // Realtime channels (`realtime`): client connections on `websocket` routes.
    ("channel::send", Handler::Sync(realtime::send)),
    ("channel::send_many", Handler::Sync(realtime::send_many)),
    ("channel::close", Handler::Sync(realtime::close)),
    ("channel::subscribe", Handler::Sync(realtime::subscribe)),
    ("channel::unsubscribe", Handler::Sync(realtime::unsubscribe)),
    ("channel::publish", Handler::Sync(realtime::publish)),
    ("channel::get", Handler::Sync(realtime::get)),
    ("channel::list", Handler::Sync(realtime::list)),
    ("channel::set_state", Handler::Sync(realtime::set_state)),
    ("channel::get_state", Handler::Sync(realtime::get_state)),
    ("channel::set_auth", Handler::Sync(realtime::set_auth)),
    (
        "channel::issue_ticket",
        Handler::Sync(realtime::issue_ticket),
    ),
];

fn lookup(function_id: &str) -> Option<&'static Handler> {
    TABLE
        .iter()
        .find(|(id, _)| *id == function_id)
        .map(|(_, h)| h)
}

/// Ids of every engine function, for listings.
pub fn engine_function_ids() -> impl Iterator<Item = &'static str> {
    std::iter::once(WORKERS_REGISTER).chain(TABLE.iter().map(|(id, _)| *id))
}

pub fn is_engine_function(function_id: &str) -> bool {
    function_id == WORKERS_REGISTER || lookup(function_id).is_some()
}

/// Ids no worker may register: everything under `engine::`, and every id the engine answers.
pub fn is_reserved(function_id: &str) -> bool {
    function_id.starts_with("engine::") || is_engine_function(function_id)
}

/// Runs an engine function for a worker and answers it (sync calls only).
pub fn invoke(mesh: &Mesh, conn: &Arc<Connection>, invoke: Invoke) {
    let Some(handler) = lookup(&invoke.function_id) else {
        let msg = format!(
            "Function {} not found in namespace default.",
            invoke.function_id
        );
        return reply_err(
            conn,
            invoke.invocation_id,
            &invoke.function_id,
            &ErrorBody::new(codes::FUNCTION_NOT_FOUND, msg),
        );
    };
    let ctx = CallCtx { caller: conn.id };
    let input = invoke
        .data
        .as_ref()
        .map(views::raw_to_value)
        .unwrap_or(Value::Null);
    match handler {
        Handler::Sync(f) => answer(
            conn,
            invoke.invocation_id,
            &invoke.function_id,
            f(mesh, &ctx, input),
        ),
        Handler::Async(f) => {
            let fut = f(mesh.clone(), ctx, input);
            let conn = conn.clone();
            tokio::spawn(async move {
                let reply = fut.await;
                answer(&conn, invoke.invocation_id, &invoke.function_id, reply);
            });
        }
    }
}

fn answer(conn: &Connection, invocation_id: Option<Uuid>, function_id: &str, reply: Reply) {
    match (invocation_id, reply) {
        (Some(id), Ok(v)) => {
            let _ = conn.send(outbound::result_ok(
                &id,
                function_id,
                Some(&to_payload(&v)),
                None,
                None,
            ));
        }
        (_, Err(e)) => reply_err(conn, invocation_id, function_id, &e),
        (None, Ok(_)) => {}
    }
}

/// `action: enqueue`: persist the job, then answer `{messageReceiptId}` (only once it is on disk).
pub fn enqueue(mesh: &Mesh, conn: &Arc<Connection>, invoke: Invoke) {
    let (Some(queues), crate::protocol::Action::Enqueue { queue }) =
        (mesh.queues().cloned(), invoke.action.clone())
    else {
        let err = ErrorBody::new(codes::ENQUEUE_ERROR, "the durable queue is not running");
        return reply_err(conn, invoke.invocation_id, &invoke.function_id, &err);
    };
    if let Some(data) = &invoke.data {
        channels::warn_if_refs_enqueued(&queue, &invoke.function_id, data.get());
    }
    let req = crate::queue::EnqueueRequest {
        queue,
        namespace: invoke
            .namespace
            .clone()
            .unwrap_or_else(|| crate::DEFAULT_NAMESPACE.to_owned()),
        function_id: invoke.function_id.clone(),
        payload: invoke.data.unwrap_or_else(crate::protocol::null_payload),
        traceparent: invoke.traceparent,
        baggage: invoke.baggage,
        run_at_ms: None,
        priority: 0,
        idempotency_key: None,
    };
    let conn = conn.clone();
    let (invocation_id, function_id) = (invoke.invocation_id, invoke.function_id);
    queues.enqueue_then(req, move |outcome| {
        // iii answers every refused enqueue with `enqueue_error`, and SDK code
        // matches on it; the specific reason stays in the message.
        let reply = match outcome {
            Ok(e) => Ok(serde_json::json!({ "messageReceiptId": e.receipt })),
            Err(e) if e.code == codes::ENQUEUE_ERROR => Err(e),
            Err(e) => Err(ErrorBody::new(
                codes::ENQUEUE_ERROR,
                format!("{}: {}", e.code, e.message),
            )),
        };
        answer(&conn, invocation_id, &function_id, reply);
    });
}

/// Parses a function's input; a missing input is the empty object.
pub fn args<T: DeserializeOwned + Default>(input: Value) -> Result<T, ErrorBody> {
    if input.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(input)
        .map_err(|e| ErrorBody::new(codes::INVALID_ARGUMENTS, e.to_string()))
}
