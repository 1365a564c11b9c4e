//! The live registry's data model: every table the engine keeps in memory,
//! behind the one lock in [`super::Mesh`]. Critical sections are hash lookups;
//! nothing awaits while holding the lock, and payloads are encoded outside it
//! on the hot path.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::connection::Connection;
use super::provided::ExternalTarget;
use crate::protocol::{ErrorBody, Payload};

/// (namespace, id) of a function or a trigger type.
pub type Key = (String, String);

pub struct State {
    pub workers: HashMap<Uuid, Worker>,
    /// namespace → function id → its providers. Nested so lookups by `&str` do not allocate.
    pub functions: HashMap<String, HashMap<String, Function>>,
    /// In-flight calls by the invocation id the executor sees.
    pub calls: HashMap<Uuid, Call>,
    pub trigger_types: HashMap<Key, TriggerType>,
    pub bindings: HashMap<String, Binding>,
    /// Functions whose last worker disconnected recently; callers wait here for it to return.
    pub rebinding: HashMap<Key, Rebinding>,
    /// What serves each engine-provided trigger type (namespace `default`).
    pub engine_types: HashMap<String, Arc<dyn TriggerTypeHandler>>,
    /// Woken when `calls` or `workers` becomes empty.
    quiet: Arc<Notify>,
    /// Where settled calls are counted.
    pub(super) call_metrics: Arc<super::metrics::CallMetrics>,
}

pub struct Worker {
    pub conn: Arc<Connection>,
    /// Fixed by `engine::workers::register`; `default` until then.
    pub namespace: String,
    pub meta: Option<WorkerMeta>,
    pub functions: HashSet<Key>,
    pub trigger_types: HashSet<Key>,
    /// Bindings this worker asked for.
    pub bindings: HashSet<String>,
    /// Calls this worker made that are still in flight.
    pub calls_out: HashSet<Uuid>,
    /// Calls this worker is executing.
    pub calls_in: HashSet<Uuid>,
}

/// What a worker says about itself in `engine::workers::register`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct WorkerMeta {
    pub name: Option<String>,
    pub description: Option<String>,
    pub runtime: Option<String>,
    pub version: Option<String>,
    pub os: Option<String>,
    pub pid: Option<u64>,
    pub isolation: Option<serde_json::Value>,
    pub namespace: Option<String>,
    pub telemetry: Option<serde_json::Value>,
    pub features: Option<Vec<String>>,
    /// Set by engine code, never by a worker: the connection stands for
    /// this other engine of the cluster (its functions are served there).
    #[serde(skip)]
    pub engine: Option<String>,
}

#[derive(Default)]
pub struct Function {
    pub providers: Vec<Provider>,
    /// Round-robin cursor among equally loaded providers.
    pub cursor: usize,
}

pub struct Provider {
    pub worker: Uuid,
    pub info: Arc<FunctionInfo>,
    /// Set for an external function: calls go here, not to the worker's socket.
    pub external: Option<Arc<dyn ExternalTarget>>,
}

/// Where a picked call goes.
pub(crate) enum Executor {
    Worker(Arc<Connection>),
    External(Arc<dyn ExternalTarget>),
}

/// What a worker declared about a function when registering it.
#[derive(Debug, Default)]
pub struct FunctionInfo {
    pub description: Option<String>,
    pub request_format: Option<Payload>,
    pub response_format: Option<Payload>,
    pub metadata: Option<Payload>,
}

pub struct Call {
    pub caller: Caller,
    pub executor: Uuid,
    pub function_id: String,
    pub started: Instant,
    pub deadline: Instant,
    /// The engine's span for this call, when calls are traced.
    pub span: Option<super::spans::CallSpan>,
}

/// Who gets a call's outcome.
pub enum Caller {
    /// A worker waiting for an `invocationresult` with its own invocation id.
    Worker { worker: Uuid },
    /// Fire and forget: the result is dropped.
    Discard,
    /// Engine code awaiting the outcome (engine functions, trigger fires).
    Internal(oneshot::Sender<CallOutcome>),
    /// Engine code collecting the outcomes of many calls on one channel, each
    /// tagged (the queue scheduler: no task or timer per running job).
    Collect {
        tx: mpsc::UnboundedSender<Settled>,
        tag: Uuid,
    },
}

pub type CallOutcome = Result<Option<Payload>, ErrorBody>;

/// A collected call's outcome (see [`Caller::Collect`]).
pub struct Settled {
    pub tag: Uuid,
    pub invocation_id: Uuid,
    pub outcome: CallOutcome,
}

impl Caller {
    /// Hands an engine-side caller its outcome (a worker caller is answered by the router).
    pub fn deliver_internal(self, invocation_id: Uuid, outcome: CallOutcome) {
        match self {
            Caller::Internal(tx) => {
                let _ = tx.send(outcome);
            }
            Caller::Collect { tx, tag } => {
                let _ = tx.send(Settled {
                    tag,
                    invocation_id,
                    outcome,
                });
            }
            Caller::Worker { .. } | Caller::Discard => {}
        }
    }
}

pub struct Rebinding {
    pub since: Instant,
    pub waiters: Vec<oneshot::Sender<()>>,
}

/// An engine-served trigger type: the mesh keeps its bindings, and tells the
/// type when one becomes active on it or goes.
///
/// Both methods run under the mesh lock, so a binding and what the type made
/// of it change together. They must not call back into the mesh, and any lock
/// they take must never be held by code that then takes the mesh lock.
pub(crate) trait TriggerTypeHandler: Send + Sync {
    /// A binding is now served by this type. An error refuses it like a
    /// worker provider's `triggerregistrationresult` error would.
    fn bind(&self, binding: &Binding) -> Result<(), ErrorBody>;
    /// A binding this type accepted is gone.
    fn unbind(&self, binding_id: &str);
    /// In a cluster, a binding made on one engine is bound on every other
    /// engine too, each serving it with its own handler (durable topics: a
    /// publish on any engine must reach every subscriber). The registry
    /// only says so; the cluster does the sharing.
    fn cluster_wide(&self) -> bool {
        false
    }
}

pub struct TriggerType {
    pub provider: TypeProvider,
    pub description: String,
    pub trigger_request_format: Option<Payload>,
    pub call_request_format: Option<Payload>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeProvider {
    Worker(Uuid),
    /// Implemented inside the engine (`engine::workers-available`, …).
    Engine,
}

pub struct Binding {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    /// Namespace of the bound function.
    pub namespace: String,
    /// Provider namespace the binder asked for, if any.
    pub trigger_namespace: Option<String>,
    pub config: Payload,
    pub metadata: Option<Payload>,
    pub owner: BindingOwner,
    /// The trigger type serving it, or `None` while parked.
    pub active_on: Option<Key>,
    /// `engine::register_trigger` waits here for the provider's verdict.
    pub ack: Option<oneshot::Sender<Result<(), ErrorBody>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingOwner {
    Worker(Uuid),
    /// Made with `engine::register_trigger`: outlives the connection that asked.
    Engine,
}

impl State {
    pub(super) fn new(quiet: Arc<Notify>, call_metrics: Arc<super::metrics::CallMetrics>) -> Self {
        Self {
            workers: HashMap::new(),
            functions: HashMap::new(),
            calls: HashMap::new(),
            trigger_types: HashMap::new(),
            bindings: HashMap::new(),
            rebinding: HashMap::new(),
            engine_types: HashMap::new(),
            quiet,
            call_metrics,
        }
    }

    /// Removes a call from the table; the one way calls leave it.
    pub(super) fn take_call(&mut self, id: &Uuid) -> Option<Call> {
        let call = self.calls.remove(id)?;
        if self.calls.is_empty() {
            self.quiet.notify_waiters();
        }
        Some(call)
    }

    /// Removes a worker from the table; the one way workers leave it.
    pub(super) fn take_worker(&mut self, id: &Uuid) -> Option<Worker> {
        let worker = self.workers.remove(id)?;
        if self.workers.is_empty() {
            self.quiet.notify_waiters();
        }
        Some(worker)
    }

    /// A trigger type the engine serves (namespace `default`).
    pub(super) fn add_engine_trigger_type(
        &mut self,
        id: &str,
        description: &str,
        handler: Arc<dyn TriggerTypeHandler>,
    ) {
        self.trigger_types.insert(
            (crate::protocol::DEFAULT_NAMESPACE.to_owned(), id.to_owned()),
            TriggerType {
                provider: TypeProvider::Engine,
                description: description.to_owned(),
                trigger_request_format: None,
                call_request_format: None,
            },
        );
        self.engine_types.insert(id.to_owned(), handler);
    }

    pub fn function(&self, namespace: &str, id: &str) -> Option<&Function> {
        self.functions.get(namespace)?.get(id)
    }

    /// Whether `worker` is a connection standing for another engine
    /// ([`WorkerMeta::engine`]): what it provides is served there.
    pub fn stands_elsewhere(&self, worker: Uuid) -> bool {
        self.workers
            .get(&worker)
            .and_then(|w| w.meta.as_ref())
            .is_some_and(|m| m.engine.is_some())
    }

    pub fn worker_name(&self, id: &Uuid) -> Option<&str> {
        self.workers.get(id)?.meta.as_ref()?.name.as_deref()
    }
}
