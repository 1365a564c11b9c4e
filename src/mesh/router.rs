//! Routing calls to executors and results back to callers.
//!
//! A call is in exactly one place: waiting for a re-registering worker, in
//! `State::calls` (sent to an executor), or settled. Settling removes it from
//! the table first, so an outcome is delivered at most once whatever races
//! (result, executor disconnect, deadline) happen.

use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::Mesh;
use super::provided::ExternalCall;
use super::spans::{self, CallSpan, Origin};
use super::state::{Call, CallOutcome, Caller, Executor, Function, Key, Settled, State, Worker};
use crate::protocol::inbound::{InvocationResult, Invoke};
use crate::protocol::outbound::{self, InvokeParts};
use crate::protocol::trace_context::Header;
use crate::protocol::{ErrorBody, Payload, codes, inject_caller};

/// What became of a worker's call.
pub(crate) enum Dispatch {
    /// Delivered to an executor; the outcome will follow.
    Sent,
    /// Refused; a sync caller must be told.
    Failed(Box<Invoke>, ErrorBody),
    /// The function's worker just went away; wait for it to come back, then retry.
    Wait(Box<Invoke>, oneshot::Receiver<()>),
}

/// What an engine-made call carries besides its data.
#[derive(Debug, Default)]
pub(crate) struct CallExtras {
    pub metadata: Option<Payload>,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}

/// What an engine-made call invokes, and for how long it may run.
pub(crate) struct CallTarget<'a> {
    pub namespace: &'a str,
    pub function_id: &'a str,
    pub timeout: Duration,
}

/// Which providers a call may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Any: this engine's workers and external targets alike.
    Anywhere,
    /// Not an external target that runs on another engine.
    Here,
}

/// A call the engine itself made, awaiting its outcome.
pub(crate) struct InternalCall {
    pub invocation_id: Uuid,
    /// The worker (or peer) the call went to.
    pub executor: Uuid,
    pub outcome: oneshot::Receiver<CallOutcome>,
}

impl Mesh {
    /// Routes a worker's sync or void call to one provider of the function.
    pub(crate) fn dispatch(
        &self,
        caller: Uuid,
        namespace: &str,
        invoke: Invoke,
        may_wait: bool,
    ) -> Dispatch {
        let sync = invoke.invocation_id.is_some();
        let invocation_id = invoke.invocation_id.unwrap_or_else(Uuid::new_v4);
        let limit = self.config().limits.max_pending_calls_per_connection;
        let deadline = Instant::now() + self.config().invocation.max_duration;
        let grace = self.config().invocation.rebind_grace;
        let span = self.open_span(invoke.traceparent.as_deref(), Origin::Worker);
        let traceparent = span.as_ref().map(CallSpan::traceparent);
        let executor = {
            let mut st = self.lock();
            let Some(w) = st.workers.get(&caller) else {
                return Dispatch::Sent; // caller is gone; nobody to answer
            };
            let outstanding = w.calls_out.len()
                + w.conn
                    .waiting_calls
                    .load(std::sync::atomic::Ordering::Relaxed);
            if outstanding >= limit {
                let msg = format!(
                    "{outstanding} calls already in flight on this connection (limit {limit})"
                );
                return Dispatch::Failed(
                    Box::new(invoke),
                    ErrorBody::new(codes::TOO_MANY_PENDING_CALLS, msg),
                );
            }
            if self.budget().is_spent() {
                let b = self.budget();
                let msg = format!(
                    "the engine holds {} bytes for slow readers (limits.memory_budget {}); retry later",
                    b.used(),
                    b.limit()
                );
                return Dispatch::Failed(
                    Box::new(invoke),
                    ErrorBody::new(codes::ENGINE_OVERLOADED, msg),
                );
            }
            if sync && st.calls.contains_key(&invocation_id) {
                let msg = format!("invocation_id {invocation_id} is already in flight");
                return Dispatch::Failed(
                    Box::new(invoke),
                    ErrorBody::new(codes::DUPLICATE_INVOCATION_ID, msg),
                );
            }
            let caller_kind = if sync {
                Caller::Worker { worker: caller }
            } else {
                Caller::Discard
            };
            let started = st.start(
                invocation_id,
                namespace,
                &invoke.function_id,
                caller_kind,
                (deadline, span),
                Reach::Anywhere,
            );
            match started {
                Some((_, conn)) => {
                    if let Some(w) = st.workers.get_mut(&caller) {
                        w.calls_out.insert(invocation_id);
                    }
                    conn
                }
                None => {
                    let key: Key = (namespace.to_owned(), invoke.function_id.clone());
                    if may_wait
                        && let Some(r) = st
                            .rebinding
                            .get_mut(&key)
                            .filter(|r| r.since.elapsed() < grace)
                    {
                        let (tx, rx) = oneshot::channel();
                        r.waiters.push(tx);
                        return Dispatch::Wait(Box::new(invoke), rx);
                    }
                    let err = st.not_found(namespace, &invoke.function_id);
                    return Dispatch::Failed(Box::new(invoke), err);
                }
            }
        };
        let caller_id = caller.to_string();
        self.deliver(
            &executor,
            deadline,
            InvokeParts {
                invocation_id: &invocation_id,
                function_id: &invoke.function_id,
                data: &inject_caller(invoke.data, &caller_id),
                traceparent: traceparent
                    .as_ref()
                    .map(Header::as_str)
                    .or(invoke.traceparent.as_deref()),
                baggage: invoke.baggage.as_deref(),
                metadata: invoke.metadata.as_deref(),
            },
        );
        Dispatch::Sent
    }

    /// An `invocationresult` from `from`. Only the executor a call was sent to
    /// may settle it; anything else (late, unknown, spoofed) is dropped.
    pub(crate) fn complete(&self, from: Uuid, result: InvocationResult) {
        let mut st = self.lock();
        match st.calls.get(&result.invocation_id) {
            Some(call) if call.executor == from => {}
            Some(_) => {
                tracing::warn!(worker_id = %from, invocation_id = %result.invocation_id, "result from a worker that was not executing this call; dropped");
                return;
            }
            None => {
                tracing::debug!(worker_id = %from, invocation_id = %result.invocation_id, "late or unknown result dropped");
                return;
            }
        }
        let mut call = st.take_call(&result.invocation_id).expect("checked above");
        if let Some(span) = call.span.take() {
            let error = result.error.as_ref().map(|e| e.code.as_str());
            span.end(&call.function_id, spans::ended_by(error));
        }
        self.call_metrics().record(
            &call.function_id,
            super::metrics::outcome_of(result.error.as_ref().map(|e| e.code.as_str())),
            call.started.elapsed(),
        );
        if let Some(exec) = st.workers.get_mut(&from) {
            exec.calls_in.remove(&result.invocation_id);
        }
        match call.caller {
            Caller::Worker { worker } => {
                let Some(caller) = st.workers.get_mut(&worker) else {
                    return;
                };
                caller.calls_out.remove(&result.invocation_id);
                let conn = caller.conn.clone();
                drop(st);
                let frame = match &result.error {
                    Some(err) => {
                        outbound::result_err(&result.invocation_id, &call.function_id, err)
                    }
                    None => outbound::result_ok(
                        &result.invocation_id,
                        &call.function_id,
                        result.result.as_deref(),
                        result.traceparent.as_deref(),
                        result.baggage.as_deref(),
                    ),
                };
                let _ = conn.send(frame);
            }
            internal => internal.deliver_internal(
                result.invocation_id,
                match result.error {
                    Some(err) => Err(err),
                    None => Ok(result.result),
                },
            ),
        }
    }

    /// Starts a call on behalf of the engine (trigger fires, engine functions).
    /// Fails at once with `function_not_found` when no worker provides it.
    pub(crate) fn start_internal_call(
        &self,
        namespace: &str,
        function_id: &str,
        data: Payload,
        extras: CallExtras,
        timeout: Duration,
    ) -> Result<InternalCall, ErrorBody> {
        let target = (namespace, function_id, timeout);
        self.start_reaching(target, data, extras, Reach::Anywhere)
    }

    /// Starts a call on this engine's own workers only (see
    /// [`Mesh::call_here_with`]), for a caller that keeps its own clock
    /// (one a heartbeat can extend) and ends the call with
    /// [`Mesh::fail_call`] when it runs out; `timeout` is the mesh's bound.
    pub(crate) fn start_here_with(
        &self,
        namespace: &str,
        function_id: &str,
        data: Payload,
        extras: CallExtras,
        timeout: Duration,
    ) -> Result<InternalCall, ErrorBody> {
        let target = (namespace, function_id, timeout);
        self.start_reaching(target, data, extras, Reach::Here)
    }

    fn start_reaching(
        &self,
        (namespace, function_id, timeout): (&str, &str, Duration),
        data: Payload,
        extras: CallExtras,
        reach: Reach,
    ) -> Result<InternalCall, ErrorBody> {
        let target = CallTarget {
            namespace,
            function_id,
            timeout,
        };
        let (tx, rx) = oneshot::channel();
        let (invocation_id, executor) =
            self.start_call(target, data, extras, Caller::Internal(tx), reach)?;
        Ok(InternalCall {
            invocation_id,
            executor,
            outcome: rx,
        })
    }

    /// [`Mesh::call_with`] on this engine's own workers only, never on an
    /// external target that runs elsewhere ([`ExternalTarget::runs_elsewhere`]):
    /// for work this engine took on itself (a cluster's queued job it
    /// pulled), which must not be handed to another engine that may be gone.
    pub(crate) async fn call_here_with(
        &self,
        namespace: &str,
        function_id: &str,
        data: Payload,
        extras: CallExtras,
        timeout: Duration,
    ) -> CallOutcome {
        let call = self.start_here_with(namespace, function_id, data, extras, timeout)?;
        self.outcome_within(call, timeout).await
    }

    /// Starts a call whose outcome is sent, tagged with `tag`, on `tx`.
    /// Returns (invocation id, executor). Its only time limit is the engine's
    /// bound on a call's life: a caller with a shorter one (a queue's lease)
    /// keeps its own clock and ends the call with [`Mesh::fail_call`].
    pub(crate) fn start_collected_call(
        &self,
        target: CallTarget<'_>,
        data: Payload,
        extras: CallExtras,
        (tx, tag): (mpsc::UnboundedSender<Settled>, Uuid),
    ) -> Result<(Uuid, Uuid), ErrorBody> {
        self.start_call(
            target,
            data,
            extras,
            Caller::Collect { tx, tag },
            Reach::Anywhere,
        )
    }

    fn start_call(
        &self,
        target: CallTarget<'_>,
        data: Payload,
        extras: CallExtras,
        caller: Caller,
        reach: Reach,
    ) -> Result<(Uuid, Uuid), ErrorBody> {
        let CallTarget {
            namespace,
            function_id,
            timeout,
        } = target;
        let invocation_id = Uuid::new_v4();
        let deadline = Instant::now() + timeout.min(self.config().invocation.max_duration);
        let span = self.open_span(extras.traceparent.as_deref(), Origin::Engine);
        let traceparent = span.as_ref().map(CallSpan::traceparent);
        let (executor, conn) = {
            let mut st = self.lock();
            match st.start(
                invocation_id,
                namespace,
                function_id,
                caller,
                (deadline, span),
                reach,
            ) {
                Some(started) => started,
                None => return Err(st.not_found(namespace, function_id)),
            }
        };
        self.deliver(
            &conn,
            deadline,
            InvokeParts {
                invocation_id: &invocation_id,
                function_id,
                data: &data,
                traceparent: traceparent
                    .as_ref()
                    .map(Header::as_str)
                    .or(extras.traceparent.as_deref()),
                baggage: extras.baggage.as_deref(),
                metadata: extras.metadata.as_deref(),
            },
        );
        Ok((invocation_id, executor))
    }

    /// Calls a function and waits for its outcome, at most `timeout`.
    pub(crate) async fn call(
        &self,
        namespace: &str,
        function_id: &str,
        data: Payload,
        timeout: Duration,
    ) -> CallOutcome {
        self.call_with(namespace, function_id, data, CallExtras::default(), timeout)
            .await
    }

    /// [`Mesh::call`] with extras (a binding's metadata, for a trigger whose
    /// handler answers).
    pub(crate) async fn call_with(
        &self,
        namespace: &str,
        function_id: &str,
        data: Payload,
        extras: CallExtras,
        timeout: Duration,
    ) -> CallOutcome {
        let call = self.start_internal_call(namespace, function_id, data, extras, timeout)?;
        self.outcome_within(call, timeout).await
    }

    /// An internal call's outcome, or a timeout that ends it.
    async fn outcome_within(&self, call: InternalCall, timeout: Duration) -> CallOutcome {
        match tokio::time::timeout(timeout, call.outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ErrorBody::new(codes::INVOCATION_STOPPED, "call abandoned")),
            Err(_) => {
                let msg = format!("no result within {}", humantime::format_duration(timeout));
                self.fail_call(call.invocation_id, codes::INVOCATION_TIMEOUT, &msg);
                Err(ErrorBody::new(codes::INVOCATION_TIMEOUT, msg))
            }
        }
    }

    /// Fire and forget on behalf of the engine. Returns false if nobody provides the function.
    pub(crate) fn fire(
        &self,
        namespace: &str,
        function_id: &str,
        data: Payload,
        metadata: Option<Payload>,
    ) -> bool {
        let target = CallTarget {
            namespace,
            function_id,
            timeout: self.config().invocation.max_duration,
        };
        let extras = CallExtras {
            metadata,
            ..CallExtras::default()
        };
        self.start_call(target, data, extras, Caller::Discard, Reach::Anywhere)
            .is_ok()
    }

    /// Fires a bound function with `payload`, after its binding's condition
    /// function (if any) agrees: iii's rule is that only a result of exactly
    /// `false`, an error or a timeout skips the event. Returns whether it fired.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fire_if_condition_allows(
        &self,
        trigger_type: &str,
        namespace: &str,
        function_id: &str,
        condition: Option<&str>,
        payload: Payload,
        metadata: Option<Payload>,
        condition_timeout: Duration,
    ) -> bool {
        let allowed = self
            .condition_allows(
                trigger_type,
                namespace,
                function_id,
                condition,
                &payload,
                condition_timeout,
            )
            .await;
        if !allowed {
            return false;
        }
        let fired = self.fire(namespace, function_id, payload, metadata);
        if !fired {
            tracing::debug!(trigger_type, function = %function_id, "bound function has no worker; event skipped");
        }
        fired
    }

    /// Like [`Mesh::fire_if_condition_allows`], but waits for the handler:
    /// `None` when the condition refused the event, else the call's outcome
    /// (for a trigger type that must know when a run ends: cron).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_if_condition_allows(
        &self,
        trigger_type: &str,
        namespace: &str,
        function_id: &str,
        condition: Option<&str>,
        payload: Payload,
        metadata: Option<Payload>,
        condition_timeout: Duration,
    ) -> Option<CallOutcome> {
        let allowed = self
            .condition_allows(
                trigger_type,
                namespace,
                function_id,
                condition,
                &payload,
                condition_timeout,
            )
            .await;
        if !allowed {
            return None;
        }
        let timeout = self.config().invocation.max_duration;
        let extras = CallExtras {
            metadata,
            ..CallExtras::default()
        };
        Some(
            match self.start_internal_call(namespace, function_id, payload, extras, timeout) {
                Ok(call) => self.outcome_within(call, timeout).await,
                Err(e) => Err(e),
            },
        )
    }

    /// iii's condition rule, once for every trigger type: no condition, or
    /// one whose result is anything but exactly `false`, lets the event through.
    pub(crate) async fn condition_allows(
        &self,
        trigger_type: &str,
        namespace: &str,
        function_id: &str,
        condition: Option<&str>,
        payload: &Payload,
        condition_timeout: Duration,
    ) -> bool {
        let Some(cond) = condition else {
            return true;
        };
        match self
            .call(namespace, cond, payload.clone(), condition_timeout)
            .await
        {
            Ok(Some(r)) if r.get().trim() == "false" => false,
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(trigger_type, condition = %cond, function = %function_id, error = %e,
                    "trigger condition failed; event skipped");
                false
            }
        }
    }

    /// A span under `traceparent` (or a new trace), when a tracer is
    /// installed: a call about to be routed, or a module's own step (a job
    /// enqueued).
    pub(crate) fn open_span(&self, traceparent: Option<&str>, origin: Origin) -> Option<CallSpan> {
        let tracer = self.provided().tracer.as_ref()?;
        Some(CallSpan::begin(tracer, traceparent, origin))
    }

    /// Puts a started call's frame in its executor's outbox (a connection
    /// already closing fails the call at once), or hands it to its external
    /// target.
    fn deliver(&self, executor: &Executor, deadline: Instant, parts: InvokeParts<'_>) {
        let invocation_id = *parts.invocation_id;
        match executor {
            Executor::Worker(conn) => {
                let parts = InvokeParts {
                    function_id: conn.local_function_id(parts.function_id),
                    ..parts
                };
                if conn.send(outbound::invoke(parts)).is_err() {
                    self.fail_call(
                        invocation_id,
                        codes::INVOCATION_STOPPED,
                        "the executing worker's connection is closing",
                    );
                }
            }
            Executor::External(target) => target.invoke(ExternalCall {
                invocation_id,
                function_id: parts.function_id.to_owned(),
                data: parts.data.to_owned(),
                deadline,
                mesh: self.clone(),
            }),
        }
    }

    /// Moves a call's deadline to `deadline` if that is later: its caller
    /// knows it is alive (a queue job's heartbeat), so the engine's bound on
    /// a call's life gives way. Returns whether the call is in flight.
    pub(crate) fn extend_call(&self, invocation_id: Uuid, deadline: Instant) -> bool {
        let mut st = self.lock();
        match st.calls.get_mut(&invocation_id) {
            Some(call) => {
                call.deadline = call.deadline.max(deadline);
                true
            }
            None => false,
        }
    }

    /// Settles an in-flight call with an engine-made error, if it is still in
    /// flight. Returns whether it was.
    pub(crate) fn fail_call(&self, invocation_id: Uuid, code: &str, message: &str) -> bool {
        self.settle_call(invocation_id, Err(ErrorBody::new(code, message)))
    }

    /// Settles an in-flight call with `outcome` (an external function's
    /// result, an engine-made error), if it is still in flight. Returns
    /// whether it was.
    pub(crate) fn settle_call(&self, invocation_id: Uuid, outcome: CallOutcome) -> bool {
        let mut st = self.lock();
        match st.take_call(&invocation_id) {
            Some(call) => {
                st.settle(invocation_id, call, outcome);
                true
            }
            None => false,
        }
    }

    /// Fails every call past the engine's bound on a call's life, and forgets
    /// rebinding grace periods that ran out. Run periodically.
    pub(crate) fn expire(&self) -> usize {
        let now = Instant::now();
        let grace = self.config().invocation.rebind_grace;
        let mut st = self.lock();
        let expired: Vec<Uuid> = st
            .calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            let call = st.take_call(id).expect("collected above");
            tracing::warn!(invocation_id = %id, function_id = %call.function_id, executor = %call.executor, "call exceeded the engine's bound; failing it");
            let msg =
                "the executing worker did not answer within the engine's bound on a call's life";
            st.settle(
                *id,
                call,
                Err(ErrorBody::new(codes::INVOCATION_TIMEOUT, msg)),
            );
        }
        st.rebinding.retain(|_, r| r.since.elapsed() < grace);
        expired.len()
    }

    /// Calls in flight (for graceful shutdown and `/health`).
    pub(crate) fn pending_calls(&self) -> usize {
        self.lock().calls.len()
    }
}

/// How often in-flight calls are checked against the engine's bound on a call's life.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Expires calls past the engine's bound, every [`EXPIRY_TICK`], until aborted.
pub(crate) async fn expire_calls(mesh: Mesh) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        mesh.expire();
    }
}

impl State {
    /// Least in-flight first; round-robin among equals. Skips closing
    /// connections. An external function's calls go to its target; the
    /// worker that registered it counts them as its own.
    fn pick_executor(
        &mut self,
        namespace: &str,
        function_id: &str,
        reach: Reach,
    ) -> Option<(Uuid, Executor)> {
        let workers = &self.workers;
        let function: &mut Function = self.functions.get_mut(namespace)?.get_mut(function_id)?;
        let n = function.providers.len();
        let start = function.cursor % n.max(1);
        let mut best: Option<(usize, &Worker, usize)> = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(w) = workers.get(&function.providers[idx].worker) else {
                continue;
            };
            if w.conn.is_closed() {
                continue;
            }
            if reach == Reach::Here
                && function.providers[idx]
                    .external
                    .as_ref()
                    .is_some_and(|t| t.runs_elsewhere())
            {
                continue;
            }
            let load = w.calls_in.len();
            if best.is_none_or(|(_, _, l)| load < l) {
                best = Some((idx, w, load));
            }
        }
        let (idx, w, _) = best?;
        function.cursor = idx + 1;
        let executor = match &function.providers[idx].external {
            Some(target) => Executor::External(target.clone()),
            None => Executor::Worker(w.conn.clone()),
        };
        Some((w.conn.id, executor))
    }

    /// Picks an executor for the function and records the call on it.
    /// Returns the executing worker's id and where the call goes; `None`
    /// when no live worker provides it.
    pub(super) fn start(
        &mut self,
        invocation_id: Uuid,
        namespace: &str,
        function_id: &str,
        caller: Caller,
        (deadline, span): (Instant, Option<CallSpan>),
        reach: Reach,
    ) -> Option<(Uuid, Executor)> {
        let (executor, to) = self.pick_executor(namespace, function_id, reach)?;
        self.begin(
            invocation_id,
            caller,
            executor,
            function_id,
            (deadline, span),
        );
        Some((executor, to))
    }

    fn begin(
        &mut self,
        id: Uuid,
        caller: Caller,
        executor: Uuid,
        function_id: &str,
        (deadline, span): (Instant, Option<CallSpan>),
    ) {
        if let Some(exec) = self.workers.get_mut(&executor) {
            exec.calls_in.insert(id);
        }
        self.calls.insert(
            id,
            Call {
                caller,
                executor,
                function_id: function_id.to_owned(),
                started: Instant::now(),
                deadline,
                span,
            },
        );
    }

    /// Delivers an outcome for a call already removed from `calls`.
    pub(super) fn settle(&mut self, id: Uuid, mut call: Call, outcome: CallOutcome) {
        if let Some(span) = call.span.take() {
            let error = outcome.as_ref().err().map(|e| e.code.as_str());
            span.end(&call.function_id, spans::ended_by(error));
        }
        self.call_metrics.record(
            &call.function_id,
            super::metrics::outcome_of(outcome.as_ref().err().map(|e| e.code.as_str())),
            call.started.elapsed(),
        );
        if let Some(exec) = self.workers.get_mut(&call.executor) {
            exec.calls_in.remove(&id);
        }
        match call.caller {
            Caller::Worker { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.calls_out.remove(&id);
                    let frame = match &outcome {
                        Ok(r) => {
                            outbound::result_ok(&id, &call.function_id, r.as_deref(), None, None)
                        }
                        Err(e) => outbound::result_err(&id, &call.function_id, e),
                    };
                    let _ = w.conn.send(frame);
                }
            }
            internal => internal.deliver_internal(id, outcome),
        }
    }

    /// iii's message, plus where the id does exist.
    pub(super) fn not_found(&self, namespace: &str, function_id: &str) -> ErrorBody {
        let mut elsewhere: Vec<&str> = self
            .functions
            .iter()
            .filter(|(ns, ids)| ns.as_str() != namespace && ids.contains_key(function_id))
            .map(|(ns, _)| ns.as_str())
            .collect();
        elsewhere.sort_unstable();
        let mut msg = format!("Function {function_id} not found in namespace {namespace}.");
        if !elsewhere.is_empty() {
            msg.push_str(&format!(" It is registered in: {}.", elsewhere.join(", ")));
        }
        ErrorBody::new(codes::FUNCTION_NOT_FOUND, msg)
    }
}
