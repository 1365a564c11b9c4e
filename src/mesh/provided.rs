//! What the engine itself provides to workers, as the mesh sees it: engine
//! functions, engine-served trigger types, the handler of `Enqueue` calls,
//! and hooks that run when a worker goes.
//!
//! The mesh knows these only as entries of a table. Which module serves which
//! id is decided by the engine root (`crate::engine`), which collects every
//! module's [`Provisions`] and installs them once, before the first
//! connection is accepted. The router and registry never name a module.

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

use super::spans::CallTracer;
use super::state::{Binding, CallOutcome, TriggerTypeHandler};
use super::{Connection, Mesh};
use crate::protocol::{ErrorBody, Invoke, Payload, codes};

/// What an engine function answers.
pub(crate) type Reply = Result<Value, ErrorBody>;

/// Who is calling an engine function.
#[derive(Debug, Clone)]
pub(crate) struct CallCtx {
    pub caller: Uuid,
    /// The call's W3C `traceparent` header, as the caller sent it (a queued
    /// job keeps it, so its attempts join the enqueuer's trace).
    pub traceparent: Option<String>,
    /// The call's W3C `baggage` header, as the caller sent it.
    pub baggage: Option<String>,
}

type SyncFn = dyn Fn(&Mesh, &CallCtx, Value) -> Reply + Send + Sync;
type AsyncFn = dyn Fn(&Mesh, CallCtx, Value) -> BoxFuture<'static, Reply> + Send + Sync;
/// Takes an `Enqueue` call and answers it when the job is durable (or refused).
pub(crate) type EnqueueFn = dyn Fn(&Mesh, &Arc<Connection>, Invoke) + Send + Sync;
type WorkerGoneFn = dyn Fn(Uuid) + Send + Sync;
/// Takes an SDK telemetry frame (`OTLP`, `MTRC` or `LOGS` and OTLP-JSON).
type TelemetryFn = dyn Fn(&[u8]) + Send + Sync;

/// How an engine function answers.
pub(crate) enum Handler {
    /// Inline, in order with the caller's other messages.
    Sync(Box<SyncFn>),
    /// From a task (it waits on something); the caller's next messages go on.
    Async(Box<AsyncFn>),
}

/// A trigger type that only the engine fires (nothing to set up per binding).
pub(crate) struct FiredByEngine;

impl TriggerTypeHandler for FiredByEngine {
    fn bind(&self, _: &Binding) -> Result<(), ErrorBody> {
        Ok(())
    }
    fn unbind(&self, _: &str) {}
}

/// Functions a worker registers but the engine calls itself, not through the
/// worker's socket (a `registerfunction` with an `invocation` spec: iii's
/// HTTP-invoked functions). The mesh keeps them like any function (owned by
/// the registering worker, listed, routed, gone when it goes); only the last
/// step of a call differs: it is handed to the [`ExternalTarget`].
pub(crate) trait ExternalFunctions: Send + Sync {
    /// A worker registers `function_id` with `spec`: accept it (what calls
    /// go to) or refuse it (logged; the registration is dropped, as iii does).
    fn accept(
        &self,
        function_id: &str,
        spec: &Payload,
    ) -> Result<Arc<dyn ExternalTarget>, ErrorBody>;
}

/// Where calls to one external function go.
pub(crate) trait ExternalTarget: Send + Sync {
    /// Starts the call and returns at once; the outcome comes later through
    /// [`ExternalCall::settle`]. Runs under no lock.
    fn invoke(&self, call: ExternalCall);

    /// Whether the call is carried to another engine (a cluster peer's
    /// function) rather than served from this one (an HTTP-invoked
    /// function): [`Mesh::call_here_with`] skips such targets.
    fn runs_elsewhere(&self) -> bool {
        false
    }
}

/// A call handed to an [`ExternalTarget`]. It is in the mesh's table of
/// calls like any other, so deadlines, the queue's leases and a caller that
/// goes away apply to it; settling a call that already ended is a no-op.
pub(crate) struct ExternalCall {
    pub invocation_id: Uuid,
    pub function_id: String,
    /// What a worker would receive (`_caller_worker_id` included for worker calls).
    pub data: Payload,
    /// When the mesh fails the call if it has not settled (its caller's
    /// timeout, within the engine's bound): a target need not wait longer.
    pub deadline: std::time::Instant,
    pub(super) mesh: Mesh,
}

impl ExternalCall {
    /// Delivers the outcome to the caller, like an `invocationresult` would.
    pub(crate) fn settle(self, outcome: CallOutcome) {
        self.mesh.settle_call(self.invocation_id, outcome);
    }
}

/// The other engines this one shares its mesh with (cluster mode), as the
/// listings show them. Their functions are in the mesh already (peer
/// connections, [`super::state::WorkerMeta::engine`]); their workers are not.
pub(crate) trait OtherEngines: Send + Sync {
    /// This engine's id among them.
    fn this_engine(&self) -> &str;
    /// The workers connected to the other live engines, as WorkerSummary
    /// rows with their `engine_id`. Never called under the mesh lock.
    fn workers(&self) -> Vec<Value>;
}

/// Carries a module's messages to the same module on every other engine of
/// a cluster (pub/sub's publishes, shared state's changes, shared streams'
/// events): best effort, like the messages it carries.
pub(crate) trait Relay: Send + Sync {
    /// Sends `message` to the other engines' handler of `channel`
    /// ([`Provisions::on_relayed`]); never back to this engine's. Must not
    /// block: it runs inside engine functions.
    fn send(&self, channel: &'static str, message: Vec<u8>);
}

/// Decides which engine of a cluster fires one slot of a schedule that
/// several engines share (cron): the first to claim it. Without one, every
/// engine fires its own schedules.
pub(crate) trait SlotClaims: Send + Sync {
    /// Claims slot `slot_ms` of schedule `schedule` (any text naming the
    /// same schedule on every engine) for this engine: `Ok(true)` once, to
    /// one engine of the cluster, after the claim is durable; `Ok(false)` if
    /// another engine holds it (or it is too old to claim safely); an error
    /// when nobody can be told (the slot must then not fire).
    fn claim<'a>(
        &'a self,
        schedule: &'a str,
        slot_ms: u64,
    ) -> BoxFuture<'a, Result<bool, SlotClaimError>>;
}

/// Why a slot could not be claimed (the cluster's store is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("cannot claim the slot: {0}")]
pub(crate) struct SlotClaimError(pub String);

/// Takes a message another engine relayed on one channel.
type RelayedFn = dyn Fn(&Mesh, &[u8]) + Send + Sync;

pub(crate) struct EngineTriggerType {
    pub id: &'static str,
    pub description: &'static str,
    pub handler: Arc<dyn TriggerTypeHandler>,
}

/// Everything the modules provide, collected by the engine root.
#[derive(Default)]
pub(crate) struct Provisions {
    pub(super) functions: HashMap<&'static str, Handler>,
    pub(super) trigger_types: Vec<EngineTriggerType>,
    pub(super) enqueue: Option<Box<EnqueueFn>>,
    pub(super) worker_gone: Vec<Box<WorkerGoneFn>>,
    pub(super) external: Option<Arc<dyn ExternalFunctions>>,
    pub(super) operator_only: HashSet<&'static str>,
    pub(super) tracer: Option<Arc<dyn CallTracer>>,
    pub(super) telemetry: Option<Box<TelemetryFn>>,
    pub(super) other_engines: Option<Arc<dyn OtherEngines>>,
    pub(super) relay: Option<Arc<dyn Relay>>,
    pub(super) relayed: HashMap<&'static str, Box<RelayedFn>>,
    pub(super) slot_claims: Option<Arc<dyn SlotClaims>>,
}

impl Provisions {
    /// Engine functions only connections with the operator role may call
    /// (they change or reveal what other principals own: pause, purge,
    /// redrive, read payloads, message any client).
    pub(crate) fn operator_only(&mut self, ids: &[&'static str]) {
        self.operator_only.extend(ids.iter().copied());
    }

    /// An engine function answered inline by `f` with the module handle `h`.
    pub(crate) fn sync_fn<H: Clone + Send + Sync + 'static>(
        &mut self,
        id: &'static str,
        h: &H,
        f: fn(&H, &Mesh, &CallCtx, Value) -> Reply,
    ) {
        let h = h.clone();
        self.add(
            id,
            Handler::Sync(Box::new(move |mesh, ctx, input| f(&h, mesh, ctx, input))),
        );
    }

    /// An engine function answered from a task by `f` with the module handle `h`.
    pub(crate) fn async_fn<H: Clone + Send + Sync + 'static>(
        &mut self,
        id: &'static str,
        h: &H,
        f: fn(H, Mesh, CallCtx, Value) -> BoxFuture<'static, Reply>,
    ) {
        let h = h.clone();
        self.add(
            id,
            Handler::Async(Box::new(move |mesh, ctx, input| {
                f(h.clone(), mesh.clone(), ctx, input)
            })),
        );
    }

    /// An engine function about the mesh itself, answered inline.
    pub(crate) fn mesh_sync_fn(
        &mut self,
        id: &'static str,
        f: fn(&Mesh, &CallCtx, Value) -> Reply,
    ) {
        self.add(id, Handler::Sync(Box::new(f)));
    }

    /// An engine function about the mesh itself, answered from a task.
    pub(crate) fn mesh_async_fn(
        &mut self,
        id: &'static str,
        f: fn(Mesh, CallCtx, Value) -> BoxFuture<'static, Reply>,
    ) {
        self.add(
            id,
            Handler::Async(Box::new(move |mesh, ctx, input| {
                f(mesh.clone(), ctx, input)
            })),
        );
    }

    fn add(&mut self, id: &'static str, handler: Handler) {
        let previous = self.functions.insert(id, handler);
        assert!(previous.is_none(), "engine function {id} provided twice");
    }

    /// A trigger type the engine serves, in namespace `default`.
    pub(crate) fn trigger_type(
        &mut self,
        id: &'static str,
        description: &'static str,
        handler: Arc<dyn TriggerTypeHandler>,
    ) {
        self.trigger_types.push(EngineTriggerType {
            id,
            description,
            handler,
        });
    }

    /// Who takes `action: {type: enqueue}` calls (at most one module).
    pub(crate) fn enqueue(
        &mut self,
        f: impl Fn(&Mesh, &Arc<Connection>, Invoke) + Send + Sync + 'static,
    ) {
        assert!(self.enqueue.is_none(), "two modules take Enqueue calls");
        self.enqueue = Some(Box::new(f));
    }

    /// Who accepts and calls external functions (at most one module).
    pub(crate) fn external_functions(&mut self, f: Arc<dyn ExternalFunctions>) {
        assert!(
            self.external.is_none(),
            "two modules take external functions"
        );
        self.external = Some(f);
    }

    /// Who keeps the spans of routed calls (at most one module). Without
    /// one, calls open no span.
    pub(crate) fn call_tracer(&mut self, t: Arc<dyn CallTracer>) {
        assert!(self.tracer.is_none(), "two modules trace calls");
        self.tracer = Some(t);
    }

    /// Who takes the SDKs' telemetry frames, from `/otel` and `/` (at most
    /// one module). Without one they are dropped.
    pub(crate) fn telemetry(&mut self, f: impl Fn(&[u8]) + Send + Sync + 'static) {
        assert!(self.telemetry.is_none(), "two modules take telemetry");
        self.telemetry = Some(Box::new(f));
    }

    /// Who knows the other engines of a cluster (at most one module).
    pub(crate) fn other_engines(&mut self, o: Arc<dyn OtherEngines>) {
        assert!(
            self.other_engines.is_none(),
            "two modules know other engines"
        );
        self.other_engines = Some(o);
    }

    /// Who relays messages to other engines (at most one module).
    pub(crate) fn relay(&mut self, r: Arc<dyn Relay>) {
        assert!(self.relay.is_none(), "two modules relay to other engines");
        self.relay = Some(r);
    }

    /// Who takes what other engines relay on `channel` (at most one module
    /// per channel).
    pub(crate) fn on_relayed(
        &mut self,
        channel: &'static str,
        f: impl Fn(&Mesh, &[u8]) + Send + Sync + 'static,
    ) {
        let previous = self.relayed.insert(channel, Box::new(f));
        assert!(previous.is_none(), "relay channel {channel} taken twice");
    }

    /// Who decides which engine fires a shared schedule's slot (at most one module).
    pub(crate) fn slot_claims(&mut self, c: Arc<dyn SlotClaims>) {
        assert!(self.slot_claims.is_none(), "two modules claim slots");
        self.slot_claims = Some(c);
    }

    /// Runs after a worker's disconnect has been applied to the registry.
    pub(crate) fn on_worker_gone(&mut self, f: impl Fn(Uuid) + Send + Sync + 'static) {
        self.worker_gone.push(Box::new(f));
    }
}

/// Parses an engine function's input; a missing input is the default (empty) value.
pub(crate) fn args<T: DeserializeOwned + Default>(input: Value) -> Result<T, ErrorBody> {
    if input.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(input)
        .map_err(|e| ErrorBody::new(codes::INVALID_ARGUMENTS, e.to_string()))
}

/// The installed provisions, read on every engine call.
#[derive(Default)]
pub(crate) struct Provided {
    functions: HashMap<&'static str, Handler>,
    pub(super) enqueue: Option<Box<EnqueueFn>>,
    pub(super) worker_gone: Vec<Box<WorkerGoneFn>>,
    pub(super) external: Option<Arc<dyn ExternalFunctions>>,
    operator_only: HashSet<&'static str>,
    pub(super) tracer: Option<Arc<dyn CallTracer>>,
    telemetry: Option<Box<TelemetryFn>>,
    other_engines: Option<Arc<dyn OtherEngines>>,
    relay: Option<Arc<dyn Relay>>,
    relayed: HashMap<&'static str, Box<RelayedFn>>,
    slot_claims: Option<Arc<dyn SlotClaims>>,
}

impl Provided {
    pub(super) fn new(p: Provisions) -> (Self, Vec<EngineTriggerType>) {
        for id in &p.operator_only {
            assert!(
                p.functions.contains_key(id),
                "operator-only {id} is not an engine function"
            );
        }
        let provided = Self {
            operator_only: p.operator_only,
            functions: p.functions,
            enqueue: p.enqueue,
            worker_gone: p.worker_gone,
            external: p.external,
            tracer: p.tracer,
            telemetry: p.telemetry,
            other_engines: p.other_engines,
            relay: p.relay,
            relayed: p.relayed,
            slot_claims: p.slot_claims,
        };
        (provided, p.trigger_types)
    }

    pub(crate) fn is_operator_only(&self, id: &str) -> bool {
        self.operator_only.contains(id)
    }

    pub(crate) fn function(&self, id: &str) -> Option<&Handler> {
        self.functions.get(id)
    }

    /// Hands an SDK telemetry frame to whoever takes them; dropped if nobody does.
    pub(crate) fn telemetry(&self, frame: &[u8]) {
        if let Some(take) = &self.telemetry {
            take(frame);
        }
    }

    /// The other engines of a cluster; `None` when this engine is alone.
    pub(crate) fn other_engines(&self) -> Option<&Arc<dyn OtherEngines>> {
        self.other_engines.as_ref()
    }

    /// Sends `message` on `channel` to the other engines, if this one has any.
    pub(crate) fn relay(&self, channel: &'static str, message: impl FnOnce() -> Vec<u8>) {
        if let Some(r) = &self.relay {
            r.send(channel, message());
        }
    }

    /// Who claims shared schedules' slots; `None` when this engine is alone.
    pub(crate) fn slot_claims(&self) -> Option<&Arc<dyn SlotClaims>> {
        self.slot_claims.as_ref()
    }

    /// Hands a message another engine relayed to its channel's taker;
    /// whether there was one.
    pub(crate) fn relayed(&self, mesh: &Mesh, channel: &str, message: &[u8]) -> bool {
        match self.relayed.get(channel) {
            Some(take) => {
                take(mesh, message);
                true
            }
            None => false,
        }
    }

    /// Every engine function id, sorted (listings).
    pub(crate) fn function_ids(&self) -> Vec<&'static str> {
        let mut ids: Vec<&'static str> = self.functions.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}
