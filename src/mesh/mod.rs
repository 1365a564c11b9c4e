//! The live registry and router: which workers are connected, what functions
//! and trigger types they provide, which calls are in flight, and the rules for
//! routing a call to one of them.
//!
//! - [`config`]: what the mesh is configured with.
//! - [`connection`]: a worker connection's identity and bounded outbox.
//! - [`state`]: the tables, behind one lock.
//! - [`registry`]: workers and functions (connect, register, disconnect cleanup).
//! - [`router`]: routing calls and their results, deadlines, internal calls.
//! - [`triggers`]: trigger types, bindings, parking and replay.
//! - [`provided`]: what the engine provides (engine functions, engine-served
//!   trigger types, the Enqueue handler), installed once by the engine root.
//! - [`session`]: what one connection's messages mean, in order.
//! - [`metrics`]: calls by function and outcome, for `/metrics`.
//! - [`spans`]: the span the engine opens for each routed call (W3C
//!   `traceparent` in, the engine's span out to the executor).
//! - [`watchers`]: the bindings of an engine trigger type that fires on
//!   events, and their fan-out (state, streams).
//! - [`access`]: who a connection is and what it may do (roles, iii's RBAC
//!   rules); [`rbac`]: the auth call and registration hooks of an RBAC listener.
//!
//! Architecture invariant: the mesh knows no module by name. It routes calls
//! between workers and to the table in [`provided`]; it knows nothing of the
//! store, the queue, realtime routes, binary channels or the network edge.

pub(crate) mod access;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod metrics;
pub(crate) mod provided;
pub(crate) mod rbac;
pub(crate) mod registry;
pub(crate) mod router;
pub(crate) mod session;
pub(crate) mod spans;
pub(crate) mod state;
pub(crate) mod triggers;
pub(crate) mod watchers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use crate::budget::MemoryBudget;
pub use config::MeshConfig;
pub(crate) use connection::{Connection, Outgoing};
pub(crate) use provided::{CallCtx, Provided, Provisions, Reply};

/// Something changed in the mesh; engine-provided triggers and waiting jobs react.
#[derive(Debug, Clone)]
pub(crate) enum MeshEvent {
    WorkerConnected(Uuid),
    WorkerDisconnected(Uuid),
    WorkerUpdated(Uuid),
    /// A function gained its first provider or lost its last one.
    FunctionsChanged,
    /// A function now has at least one provider.
    FunctionAvailable,
    /// A trigger type or a binding came, went, or moved to another provider.
    TriggersChanged,
}

/// A cheap, cloneable handle on the mesh.
#[derive(Clone)]
pub(crate) struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<state::State>,
    config: MeshConfig,
    started: Instant,
    events: broadcast::Sender<MeshEvent>,
    draining: AtomicBool,
    provided: OnceLock<Provided>,
    /// Woken when the last call in flight settles or the last worker leaves
    /// (the engine's drain waits on it instead of polling).
    quiet: Arc<Notify>,
    budget: Arc<MemoryBudget>,
    calls: Arc<metrics::CallMetrics>,
}

/// Counts for `/health`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct MeshStats {
    pub workers: usize,
    pub functions: usize,
    pub pending_invocations: usize,
}

impl Mesh {
    pub(crate) fn new(config: MeshConfig, budget: Arc<MemoryBudget>) -> Self {
        let (events, _) = broadcast::channel(4096);
        let quiet = Arc::new(Notify::new());
        let calls = Arc::new(metrics::CallMetrics::default());
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state::State::new(quiet.clone(), calls.clone())),
                config,
                started: Instant::now(),
                events,
                draining: AtomicBool::new(false),
                provided: OnceLock::new(),
                quiet,
                budget,
                calls,
            }),
        }
    }

    pub(crate) fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// Calls by function and outcome (`/metrics`).
    pub(crate) fn call_metrics(&self) -> &metrics::CallMetrics {
        &self.inner.calls
    }

    /// The engine's memory budget (outboxes count against it).
    pub(crate) fn budget(&self) -> &Arc<MemoryBudget> {
        &self.inner.budget
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The lock is never held across an await, so a poisoned lock means a bug
    /// panicked mid-update; the tables are still structurally sound, so go on.
    pub(crate) fn lock(&self) -> MutexGuard<'_, state::State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs what the modules provide. Done once by the engine root,
    /// before the first connection is accepted.
    pub(crate) fn install(&self, provisions: Provisions) {
        let (provided, trigger_types) = Provided::new(provisions);
        assert!(
            self.inner.provided.set(provided).is_ok(),
            "engine provisions installed twice"
        );
        let mut st = self.lock();
        for t in trigger_types {
            st.add_engine_trigger_type(t.id, t.description, t.handler);
        }
    }

    /// What the engine provides (empty until [`Mesh::install`]).
    pub(crate) fn provided(&self) -> &Provided {
        self.inner.provided.get_or_init(Provided::default)
    }

    /// Read-only access to the tables (introspection).
    pub(crate) fn inspect<R>(&self, f: impl FnOnce(&state::State) -> R) -> R {
        f(&self.lock())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.inner.events.subscribe()
    }

    pub(crate) fn emit(&self, event: MeshEvent) {
        // No receiver is fine: nobody is interested yet.
        let _ = self.inner.events.send(event);
    }

    pub(crate) fn stats(&self) -> MeshStats {
        let st = self.lock();
        MeshStats {
            workers: st.workers.len(),
            functions: st.functions.values().map(|m| m.len()).sum(),
            pending_invocations: st.calls.len(),
        }
    }

    /// Marks the engine as shutting down (new connections are refused).
    pub(crate) fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds, at most until `deadline`; `done` is checked
    /// each time the last call settles or the last worker leaves. Returns
    /// whether it holds.
    pub(crate) async fn wait_quiet(
        &self,
        deadline: tokio::time::Instant,
        done: impl Fn(&state::State) -> bool,
    ) -> bool {
        loop {
            let woken = self.inner.quiet.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.inspect(&done) {
                return true;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.inspect(&done);
            }
        }
    }

    /// Closes every worker connection with `code`.
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        let conns: Vec<_> = self
            .lock()
            .workers
            .values()
            .map(|w| w.conn.clone())
            .collect();
        for c in conns {
            c.close(code, reason);
        }
    }
}
