//! Calls between engines: core NATS request/reply.
//!
//! A call to a peer's function is a request on the peer's subject
//! `qmesh.<cluster>.engine.<id>.call` ([`RemoteFunction`]); the peer takes
//! it in [`serve`], calls the function on its own workers and replies. The
//! request's timeout is what is left of the caller's; the mesh fails the
//! call at its deadline in any case.
//!
//! While this engine is not connected to NATS a call to another engine
//! fails at once, saying so; a call on its way when the connection drops
//! fails then (its reply would be lost with the connection), rather than
//! waiting out its deadline.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::mesh::Mesh;
use crate::mesh::provided::{ExternalCall, ExternalTarget};
use crate::protocol::{ErrorBody, Payload, codes};

/// What one engine asks another.
#[derive(Serialize, Deserialize)]
struct CallRequest {
    namespace: String,
    function_id: String,
    data: Payload,
    /// What is left of the caller's timeout.
    timeout_ms: u64,
}

/// What it answers: `result` (maybe null) or `error`.
#[derive(Serialize, Deserialize)]
struct CallReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// Why a call to another engine failed before it answered.
#[derive(Debug, thiserror::Error)]
enum RemoteError {
    #[error(
        "this engine is not connected to NATS ({state}): engine {engine} cannot be reached until it reconnects"
    )]
    Offline { engine: String, state: String },
    #[error(
        "this engine lost its NATS connection while a call to engine {engine} was on its way (it may have run there)"
    )]
    Disconnected { engine: String },
    #[error(
        "engine {engine} is not answering on the cluster (no responders): it stopped or lost NATS"
    )]
    Gone { engine: String },
    #[error("engine {engine} did not answer within {timeout:?}")]
    TimedOut { engine: String, timeout: Duration },
    #[error("request to engine {engine} failed: {source}")]
    Request {
        engine: String,
        source: async_nats::RequestError,
    },
    #[error("engine {engine} answered something that is not a call reply: {source}")]
    Reply {
        engine: String,
        source: serde_json::Error,
    },
}

impl RemoteError {
    fn into_body(self) -> ErrorBody {
        let code = match &self {
            RemoteError::Gone { .. } => codes::FUNCTION_NOT_FOUND,
            RemoteError::TimedOut { .. } => codes::INVOCATION_TIMEOUT,
            RemoteError::Offline { .. }
            | RemoteError::Disconnected { .. }
            | RemoteError::Request { .. }
            | RemoteError::Reply { .. } => codes::INVOCATION_FAILED,
        };
        ErrorBody::new(code, self.to_string())
    }
}

/// Where calls to one function of another engine go.
pub(super) struct RemoteFunction {
    pub client: async_nats::Client,
    pub engine_id: String,
    pub subject: String,
    pub namespace: String,
    /// Counts this engine's NATS disconnections.
    pub disconnects: tokio::sync::watch::Receiver<u64>,
}

impl ExternalTarget for RemoteFunction {
    fn runs_elsewhere(&self) -> bool {
        true
    }

    fn invoke(&self, call: ExternalCall) {
        let (client, subject, engine) = (
            self.client.clone(),
            self.subject.clone(),
            self.engine_id.clone(),
        );
        let state = client.connection_state();
        if !matches!(state, async_nats::connection::State::Connected) {
            let err = RemoteError::Offline {
                engine,
                state: state.to_string(),
            };
            tracing::debug!(function_id = %call.function_id, error = %err, "call to another engine refused");
            call.settle(Err(err.into_body()));
            return;
        }
        let mut disconnects = self.disconnects.clone();
        disconnects.borrow_and_update();
        let timeout = call.deadline.saturating_duration_since(Instant::now());
        let request = CallRequest {
            namespace: self.namespace.clone(),
            function_id: call.function_id.clone(),
            data: call.data.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        let body = serde_json::to_vec(&request).expect("a request encodes");
        tokio::spawn(async move {
            let request = client.send_request(
                subject,
                async_nats::Request::new()
                    .payload(body.into())
                    .timeout(Some(timeout)),
            );
            let sent = tokio::select! {
                sent = request => sent,
                Ok(()) = disconnects.changed() => {
                    let err = RemoteError::Disconnected { engine };
                    tracing::debug!(function_id = %call.function_id, error = %err, "call to another engine failed");
                    call.settle(Err(err.into_body()));
                    return;
                }
            };
            let outcome = match sent {
                Ok(msg) => match serde_json::from_slice::<CallReply>(&msg.payload) {
                    Ok(CallReply { error: Some(e), .. }) => Err(e),
                    Ok(CallReply { result, .. }) => Ok(result),
                    Err(source) => Err(RemoteError::Reply { engine, source }.into_body()),
                },
                Err(e) => {
                    use async_nats::RequestErrorKind as K;
                    let err = match e.kind() {
                        K::NoResponders => RemoteError::Gone { engine },
                        K::TimedOut => RemoteError::TimedOut { engine, timeout },
                        _ => RemoteError::Request { engine, source: e },
                    };
                    tracing::debug!(function_id = %call.function_id, error = %err, "call to another engine failed");
                    Err(err.into_body())
                }
            };
            call.settle(outcome);
        });
    }
}

/// Answers other engines' calls on this engine's subject until the
/// subscription ends: each from a task, on this engine's own workers only
/// (never forwarded again: directory entries may be a moment stale, and a
/// call must not travel in circles).
pub(super) async fn serve(
    mesh: Mesh,
    client: async_nats::Client,
    served_here: impl Fn(&str, &str) -> bool + Clone + Send + 'static,
    mut calls: async_nats::Subscriber,
) {
    while let Some(msg) = calls.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let (mesh, client, served_here) = (mesh.clone(), client.clone(), served_here.clone());
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<CallRequest>(&msg.payload) {
                Err(e) => CallReply {
                    result: None,
                    error: Some(ErrorBody::new(
                        codes::INVALID_ARGUMENTS,
                        format!("not a call request: {e}"),
                    )),
                },
                Ok(req) if !served_here(&req.namespace, &req.function_id) => CallReply {
                    result: None,
                    error: Some(ErrorBody::new(
                        codes::FUNCTION_NOT_FOUND,
                        format!("no worker on this engine serves {}", req.function_id),
                    )),
                },
                Ok(req) => {
                    let timeout = Duration::from_millis(req.timeout_ms);
                    // Here only: the directory check above may be a moment
                    // stale, and the mesh could otherwise pick another peer.
                    let extras = crate::mesh::router::CallExtras::default();
                    match mesh
                        .call_here_with(&req.namespace, &req.function_id, req.data, extras, timeout)
                        .await
                    {
                        Ok(result) => CallReply {
                            result,
                            error: None,
                        },
                        Err(e) => CallReply {
                            result: None,
                            error: Some(e),
                        },
                    }
                }
            };
            let body = serde_json::to_vec(&reply).expect("a reply encodes");
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "cannot answer another engine's call");
            }
        });
    }
}
