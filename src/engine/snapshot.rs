//! A read-only picture of a running engine, for tests, benches and
//! embedders: what the engine functions `engine::workers::list` and friends
//! show, plus a few facts they do not (calls a worker is executing, route
//! handler counts). Taken under the mesh lock in one go, so it is consistent.

use uuid::Uuid;

/// The engine at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub workers: Vec<WorkerView>,
    pub functions: Vec<FunctionView>,
    pub bindings: Vec<BindingView>,
    /// Registered trigger types as (namespace, id).
    pub trigger_types: Vec<(String, String)>,
    /// Calls waiting for a function's worker to come back (within
    /// `rebind_grace` of its last one leaving), as (namespace, id, calls).
    pub rebinding: Vec<(String, String, usize)>,
    /// Calls in flight (sent to an executor, not yet settled).
    pub pending_calls: usize,
    /// Shutdown has begun.
    pub draining: bool,
    /// Realtime routes by pattern, with how many handlers each has.
    pub routes: Vec<(String, usize)>,
    /// Open realtime client connections as (connection id, route pattern).
    pub realtime_connections: Vec<(String, String)>,
    /// Live binary channels.
    pub channels: usize,
}

#[derive(Debug, Clone)]
pub struct WorkerView {
    pub id: Uuid,
    /// The name the worker gave in `engine::workers::register`.
    pub name: Option<String>,
    /// Calls this worker is executing now.
    pub executing: usize,
    /// What the worker must present to `reattach` to this identity.
    pub reattach_token: Uuid,
}

#[derive(Debug, Clone)]
pub struct FunctionView {
    pub namespace: String,
    pub id: String,
    /// Workers providing it, in registration order.
    pub providers: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct BindingView {
    pub id: String,
    pub trigger_type: String,
    pub function_id: String,
    /// Served by a provider now (not parked).
    pub active: bool,
}

impl Snapshot {
    /// Ids of the live workers that reported `name`.
    pub fn workers_named(&self, name: &str) -> Vec<Uuid> {
        self.workers
            .iter()
            .filter(|w| w.name.as_deref() == Some(name))
            .map(|w| w.id)
            .collect()
    }

    pub fn worker(&self, id: Uuid) -> Option<&WorkerView> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// The function `id` in `namespace`, if any live worker provides it.
    pub fn function(&self, namespace: &str, id: &str) -> Option<&FunctionView> {
        self.functions
            .iter()
            .find(|f| f.namespace == namespace && f.id == id)
    }

    /// How many live workers provide `id` in namespace `default`.
    pub fn providers(&self, id: &str) -> usize {
        self.function(crate::protocol::DEFAULT_NAMESPACE, id)
            .map_or(0, |f| f.providers.len())
    }

    /// Calls waiting for `id` in `namespace` to get a worker again.
    pub fn calls_waiting_for(&self, namespace: &str, id: &str) -> usize {
        self.rebinding
            .iter()
            .find(|(ns, f, _)| ns == namespace && f == id)
            .map_or(0, |(_, _, n)| *n)
    }

    /// Handlers of the realtime route `pattern` (0 when it does not exist).
    pub fn route_handlers(&self, pattern: &str) -> usize {
        self.routes
            .iter()
            .find(|(p, _)| p == pattern)
            .map_or(0, |(_, n)| *n)
    }
}
