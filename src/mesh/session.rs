//! What one connection's messages mean, applied in arrival order.
//!
//! The SDKs send their registrations *before* `engine::workers::register`
//! tells the engine the worker's namespace, so registrations are held until
//! that call arrives (or `namespace_grace` passes, after which they go to
//! `default`), as iii does.
//!
//! The connection's [`Access`] is applied here, before anything reaches the
//! registry or the router: an RBAC session's calls are checked against its
//! grant and go through the listener's middleware; its registrations pass
//! the RBAC hooks (awaited in order); operator-only engine functions need
//! the operator role.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use uuid::Uuid;

use serde_json::Value;

use super::access::Access;
use super::provided::{CallCtx, Handler, Reply};
use super::rbac::{self, TriggerVetting};
use super::router::Dispatch;
use super::state::{BindingOwner, WorkerMeta};
use super::{Connection, Mesh};
use crate::protocol::inbound::{self, Inbound, Invoke};
use crate::protocol::{Action, ErrorBody, codes, names, outbound, to_payload};

pub(crate) const WORKERS_REGISTER: &str = "engine::workers::register";

pub(crate) struct Session {
    mesh: Mesh,
    conn: Arc<Connection>,
    namespace: String,
    /// Registrations waiting for the namespace; `None` once it is known.
    held: Option<Vec<Inbound>>,
    hold_until: Instant,
}

impl Session {
    pub(crate) fn new(mesh: Mesh, conn: Arc<Connection>) -> Self {
        let hold_until = Instant::now() + mesh.config().invocation.namespace_grace;
        Self {
            mesh,
            conn,
            namespace: crate::protocol::DEFAULT_NAMESPACE.to_owned(),
            held: Some(Vec::new()),
            hold_until,
        }
    }

    pub(crate) fn conn(&self) -> &Arc<Connection> {
        &self.conn
    }

    pub(crate) fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// When held registrations must be applied even without a namespace.
    pub(crate) fn hold_deadline(&self) -> Option<Instant> {
        self.held.as_ref().map(|_| self.hold_until)
    }

    fn access(&self) -> &Access {
        &self.conn.access
    }

    /// Applies held registrations to the namespace known so far.
    pub(crate) async fn release_held(&mut self) {
        if let Some(held) = self.held.take() {
            if !held.is_empty() {
                tracing::debug!(worker_id = %self.conn.id, count = held.len(), namespace = %self.namespace, "applying held registrations");
            }
            for msg in held {
                self.apply_registration(msg).await;
            }
        }
    }

    /// One text frame (or JSON binary frame). Bad frames are logged and dropped.
    pub(crate) async fn handle_text(&mut self, text: &str) {
        if inbound::is_blank(text) {
            return;
        }
        match inbound::decode(text) {
            Ok(msg) => self.handle(msg).await,
            Err(e) => match inbound::refused_call(text) {
                // A call that cannot be read but names its invocation gets an
                // answer: its caller would otherwise wait for its whole timeout.
                Some((id, function_id)) => {
                    tracing::debug!(worker_id = %self.conn.id, error = %e, "refused a malformed call");
                    let err = ErrorBody::new(
                        codes::INVALID_ARGUMENTS,
                        format!("malformed invokefunction: {e}"),
                    );
                    reply_err(&self.conn, Some(id), &function_id, &err);
                }
                None => {
                    tracing::warn!(worker_id = %self.conn.id, error = %e, "dropped an undecodable frame")
                }
            },
        }
    }

    pub(crate) async fn handle(&mut self, msg: Inbound) {
        let me = self.conn.id;
        match msg {
            Inbound::Invoke(invoke) if invoke.function_id == WORKERS_REGISTER => {
                self.register_worker(invoke).await
            }
            Inbound::Invoke(invoke) => self.invoke(invoke),
            Inbound::Result(result) => self.mesh.complete(me, result),
            Inbound::TriggerRegistrationResult(r) => self.mesh.trigger_registration_result(me, r),
            Inbound::Reattach {
                previous_worker_id,
                reattach_token,
            } => {
                if !self
                    .mesh
                    .reattach(me, &previous_worker_id, reattach_token.as_deref())
                {
                    tracing::debug!(worker_id = %me, previous = %previous_worker_id, "stale reattach ignored");
                }
            }
            Inbound::Ping => {
                let _ = self.conn.send(outbound::pong());
            }
            Inbound::Pong => {}
            Inbound::Ignored(kind) => tracing::debug!(worker_id = %me, kind, "message ignored"),
            registration => match &mut self.held {
                Some(held) => held.push(registration),
                None => self.apply_registration(registration).await,
            },
        }
    }

    async fn apply_registration(&mut self, msg: Inbound) {
        let msg = match &self.access().rbac {
            Some(_) => match self.vet(msg).await {
                Some(msg) => msg,
                None => return,
            },
            None => msg,
        };
        let (me, ns) = (self.conn.id, self.namespace.as_str());
        match msg {
            Inbound::RegisterFunction(reg) => self.mesh.register_function(me, ns, reg),
            Inbound::UnregisterFunction { id } => {
                let id = rbac::prefixed(self.access(), &id);
                self.mesh.unregister_function(me, ns, &id)
            }
            Inbound::RegisterTriggerType(reg) => {
                let ns = namespace_or(reg.namespace.as_deref(), ns).to_owned();
                self.mesh.register_trigger_type(me, &ns, reg)
            }
            Inbound::UnregisterTriggerType { id, namespace } => {
                self.mesh
                    .unregister_trigger_type(me, namespace_or(namespace.as_deref(), ns), &id)
            }
            Inbound::RegisterTrigger(reg) => {
                self.mesh
                    .bind_trigger(BindingOwner::Worker(me), ns, reg, None)
            }
            Inbound::UnregisterTrigger { id } => {
                self.mesh.unbind_trigger(Some(me), &id);
            }
            other => tracing::error!(?other, "not a registration message"),
        }
    }

    /// An RBAC session's registration through iii's checks and hooks: the
    /// registration to apply (perhaps rewritten), or `None` when it is
    /// dropped (a refused binding is answered here).
    async fn vet(&self, msg: Inbound) -> Option<Inbound> {
        let access = self.conn.access.clone();
        let session = access.rbac.as_ref()?;
        match msg {
            Inbound::RegisterFunction(reg) => {
                rbac::vet_function(&self.mesh, &access, session, &self.namespace, reg)
                    .await
                    .map(Inbound::RegisterFunction)
            }
            Inbound::RegisterTriggerType(reg) => rbac::vet_trigger_type(&self.mesh, session, reg)
                .await
                .map(Inbound::RegisterTriggerType),
            Inbound::RegisterTrigger(reg) => {
                match rbac::vet_trigger(&self.mesh, &access, session, reg).await {
                    TriggerVetting::Bind(reg) => Some(Inbound::RegisterTrigger(reg)),
                    TriggerVetting::Dropped => None,
                    TriggerVetting::Refused(reg, err) => {
                        let _ = self.conn.send(outbound::trigger_registration_result(
                            &reg.id,
                            &reg.trigger_type,
                            &reg.function_id,
                            Some(&err),
                        ));
                        None
                    }
                }
            }
            other => Some(other),
        }
    }

    fn invoke(&mut self, invoke: Invoke) {
        if let Some(Err(why)) = invoke
            .namespace
            .as_deref()
            .map(|ns| names::check("namespace", ns))
        {
            let err = ErrorBody::new(codes::INVALID_NAMESPACE, why);
            return reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err);
        }
        if let Err(err) = self.authorize(&invoke) {
            return reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err);
        }
        let engine_owned = self.mesh.provided().function(&invoke.function_id).is_some();
        if !engine_owned && let Some(mw) = self.access().listener.middleware_function_id.clone() {
            return self.through_middleware(&mw, invoke);
        }
        match &invoke.action {
            Action::Unknown(kind) => {
                let err = ErrorBody::new(
                    codes::INVALID_ACTION,
                    format!("unknown action {kind:?}; expected void or enqueue"),
                );
                return reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err);
            }
            Action::Enqueue { .. } => return self.enqueue(invoke),
            Action::Sync | Action::Void => {}
        }
        if let Err(why) = names::check_content("function_id", &invoke.function_id) {
            let err = ErrorBody::new(codes::INVALID_ARGUMENTS, why);
            return reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err);
        }
        if let Some(handler) = self.mesh.provided().function(&invoke.function_id) {
            if self.mesh.provided().is_operator_only(&invoke.function_id)
                && !self.access().may_operate()
            {
                let msg = format!(
                    "function '{}' needs the operator role (this connection is '{}')",
                    invoke.function_id,
                    self.access().principal
                );
                let err = ErrorBody::new(codes::FORBIDDEN, msg);
                return reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err);
            }
            return self.call_engine_function(handler, invoke);
        }
        let ns = invoke
            .namespace
            .clone()
            .unwrap_or_else(|| crate::protocol::DEFAULT_NAMESPACE.to_owned());
        match self.mesh.dispatch(self.conn.id, &ns, invoke, true) {
            Dispatch::Sent => {}
            Dispatch::Failed(invoke, err) => {
                reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err)
            }
            Dispatch::Wait(invoke, woken) => self.wait_for_worker(ns, invoke, woken),
        }
    }

    /// `action: enqueue` goes to whichever module takes Enqueue calls.
    fn enqueue(&self, invoke: Invoke) {
        match &self.mesh.provided().enqueue {
            Some(take) => take(&self.mesh, &self.conn, invoke),
            None => {
                let err = ErrorBody::new(codes::ENQUEUE_ERROR, "this engine has no durable queue");
                reply_err(&self.conn, invoke.invocation_id, &invoke.function_id, &err);
            }
        }
    }

    /// Runs an engine function and answers it: inline, or from a task when it waits.
    fn call_engine_function(&self, handler: &Handler, invoke: Invoke) {
        let ctx = CallCtx {
            caller: self.conn.id,
            traceparent: invoke.traceparent.clone(),
            baggage: invoke.baggage.clone(),
        };
        let input = invoke
            .data
            .as_deref()
            .map(payload_to_value)
            .unwrap_or(Value::Null);
        match handler {
            Handler::Sync(f) => answer(
                &self.conn,
                invoke.invocation_id,
                &invoke.function_id,
                f(&self.mesh, &ctx, input),
            ),
            Handler::Async(f) => {
                let mut fut = f(&self.mesh, ctx, input);
                // Already done (a refusal, or a read with nothing to wait
                // for): answered inline, in order, without a task.
                if let Some(reply) = futures_util::FutureExt::now_or_never(&mut fut) {
                    answer(&self.conn, invoke.invocation_id, &invoke.function_id, reply);
                    return;
                }
                let conn = self.conn.clone();
                tokio::spawn(async move {
                    let reply = fut.await;
                    answer(&conn, invoke.invocation_id, &invoke.function_id, reply);
                });
            }
        }
    }

    /// The function's worker vanished moments ago: give a restarting worker the
    /// grace period to register again before answering `function_not_found`.
    fn wait_for_worker(
        &self,
        ns: String,
        invoke: Box<Invoke>,
        woken: tokio::sync::oneshot::Receiver<()>,
    ) {
        let (mesh, conn) = (self.mesh.clone(), self.conn.clone());
        let grace = mesh.config().invocation.rebind_grace;
        conn.waiting_calls.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(grace, woken).await;
            conn.waiting_calls.fetch_sub(1, Ordering::Relaxed);
            if let Dispatch::Failed(invoke, err) = mesh.dispatch(conn.id, &ns, *invoke, false) {
                reply_err(&conn, invoke.invocation_id, &invoke.function_id, &err);
            }
        });
    }

    /// An RBAC session may call only what its grant allows (iii's
    /// `is_function_allowed`); a function that does not exist is as
    /// forbidden as one that does, so probing learns nothing.
    fn authorize(&self, invoke: &Invoke) -> Result<(), ErrorBody> {
        let Some(session) = &self.access().rbac else {
            return Ok(());
        };
        let ns = invoke
            .namespace
            .as_deref()
            .unwrap_or(crate::protocol::DEFAULT_NAMESPACE);
        let metadata = self.mesh.function_metadata(ns, &invoke.function_id);
        session
            .may_call(&invoke.function_id, ns, metadata.as_ref())
            .map_err(|denied| ErrorBody::new(codes::FORBIDDEN, denied.message(&invoke.function_id)))
    }

    /// The listener's middleware answers the call in its place (it is
    /// expected to call the target itself), with iii's
    /// `{function_id, payload, action, context, namespace}` input.
    fn through_middleware(&self, middleware: &str, invoke: Invoke) {
        let action = match &invoke.action {
            Action::Sync => Value::Null,
            Action::Void => serde_json::json!({"type": "void"}),
            Action::Enqueue { queue } => serde_json::json!({"type": "enqueue", "queue": queue}),
            Action::Unknown(kind) => serde_json::json!({"type": kind}),
        };
        let context = self
            .access()
            .rbac
            .as_ref()
            .map(|s| s.grant.context.clone())
            .unwrap_or(Value::Null);
        let input = serde_json::json!({
            "function_id": invoke.function_id,
            "payload": invoke.data.as_deref().map(payload_to_value).unwrap_or(Value::Null),
            "action": action,
            "context": context,
            "namespace": invoke.namespace.as_deref().unwrap_or(crate::protocol::DEFAULT_NAMESPACE),
        });
        let extras = super::router::CallExtras {
            metadata: invoke.metadata,
            traceparent: invoke.traceparent,
            baggage: invoke.baggage,
        };
        let timeout = self.mesh.config().invocation.max_duration;
        let started = self.mesh.start_internal_call(
            crate::protocol::DEFAULT_NAMESPACE,
            middleware,
            to_payload(&input),
            extras,
            timeout,
        );
        let conn = self.conn.clone();
        let (id, function_id) = (invoke.invocation_id, invoke.function_id);
        let call = match started {
            Ok(call) => call,
            Err(err) => return reply_err(&conn, id, &function_id, &err),
        };
        tokio::spawn(async move {
            let outcome = match call.outcome.await {
                Ok(outcome) => outcome,
                Err(_) => Err(ErrorBody::new(codes::INVOCATION_STOPPED, "call abandoned")),
            };
            match (id, outcome) {
                (Some(id), Ok(result)) => {
                    let _ = conn.send(outbound::result_ok(
                        &id,
                        &function_id,
                        result.as_deref(),
                        None,
                        None,
                    ));
                }
                (_, Err(err)) => reply_err(&conn, id, &function_id, &err),
                (None, Ok(_)) => {}
            }
        });
    }

    async fn register_worker(&mut self, invoke: Invoke) {
        let meta: WorkerMeta = invoke
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d.get()).map_err(|e| {
                tracing::warn!(worker_id = %self.conn.id, error = %e, "unreadable worker metadata; using defaults");
            }).ok())
            .unwrap_or_default();
        tracing::info!(worker_id = %self.conn.id, name = ?meta.name, runtime = ?meta.runtime, version = ?meta.version, "worker registered");
        let refused = meta
            .namespace
            .as_deref()
            .map(str::trim)
            .filter(|ns| !ns.is_empty()) // no namespace: `default`, as iii does
            .and_then(|ns| match names::check("namespace", ns) {
                Err(why) => Some(ErrorBody::new(codes::INVALID_NAMESPACE, why)),
                Ok(()) => {
                    let session = self.access().rbac.as_ref()?;
                    let why = session.may_use_namespace(ns).err()?;
                    Some(ErrorBody::new(codes::FORBIDDEN, why))
                }
            });
        let meta = match refused {
            // A namespace the session may not use is not taken.
            Some(_) => WorkerMeta {
                namespace: None,
                ..meta
            },
            None => meta,
        };
        self.namespace = self.mesh.set_worker_meta(self.conn.id, meta);
        self.release_held().await;
        if let Some(err) = refused {
            tracing::warn!(worker_id = %self.conn.id, error = %err, "namespace refused; registrations go to the default namespace");
            return reply_err(&self.conn, invoke.invocation_id, WORKERS_REGISTER, &err);
        }
        if let Some(id) = invoke.invocation_id {
            let ok = to_payload(&serde_json::json!({ "success": true }));
            let _ = self.conn.send(outbound::result_ok(
                &id,
                WORKERS_REGISTER,
                Some(&ok),
                None,
                None,
            ));
        }
    }
}

fn namespace_or<'a>(given: Option<&'a str>, fallback: &'a str) -> &'a str {
    given
        .map(str::trim)
        .filter(|ns| names::check("namespace", ns).is_ok())
        .unwrap_or(fallback)
}

/// Answers a sync call with an engine function's reply; a void call gets nothing.
pub(crate) fn answer(
    conn: &Connection,
    invocation_id: Option<Uuid>,
    function_id: &str,
    reply: Reply,
) {
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

/// A payload as a JSON value (engine functions take values); unparsable text is null.
fn payload_to_value(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Answers a sync call with an error; a void call gets nothing, ever.
pub(crate) fn reply_err(
    conn: &Connection,
    invocation_id: Option<Uuid>,
    function_id: &str,
    err: &ErrorBody,
) {
    match invocation_id {
        Some(id) => {
            let _ = conn.send(outbound::result_err(&id, function_id, err));
        }
        None => {
            tracing::debug!(worker_id = %conn.id, function_id, error = %err, "void call failed")
        }
    }
}
