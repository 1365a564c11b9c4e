//! The live registry and router: which workers are connected, what functions
//! and trigger types they provide, which calls are in flight, and the rules for
//! routing a call to one of them.
//!
//! - [`connection`]: a worker connection's identity and bounded outbox.
//! - [`state`]: the tables, behind one lock.
//! - [`registry`]: workers and functions (connect, register, disconnect cleanup).
//! - [`router`]: routing calls and their results, deadlines, internal calls.
//! - [`triggers`]: trigger types, bindings, parking and replay.
//! - [`events`]: the engine-provided trigger types that fire on mesh changes.
//! - [`session`]: what one connection's messages mean, in order.

pub mod connection;
pub mod events;
pub mod registry;
pub mod router;
pub mod session;
pub mod state;
pub mod triggers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::config::Config;
pub use connection::{Connection, Outgoing};
pub use state::{CallOutcome, WorkerMeta};

/// Something changed in the mesh; engine-provided triggers and waiting jobs react.
#[derive(Debug, Clone)]
pub enum MeshEvent {
    WorkerConnected(Uuid),
    WorkerDisconnected(Uuid),
    WorkerUpdated(Uuid),
    /// A function gained its first provider or lost its last one.
    FunctionsChanged,
    /// A function now has at least one provider (namespace, id).
    FunctionAvailable(String, String),
}

/// A cheap, cloneable handle on the mesh.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<state::State>,
    config: Config,
    started: Instant,
    events: broadcast::Sender<MeshEvent>,
    draining: AtomicBool,
    queues: OnceLock<crate::queue::Queues>,
    channels: crate::channels::Channels,
    realtime: OnceLock<crate::realtime::Realtime>,
}

/// Counts for `/health`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MeshStats {
    pub workers: usize,
    pub functions: usize,
    pub pending_invocations: usize,
}

impl Mesh {
    pub fn new(config: Config) -> Self {
        let (events, _) = broadcast::channel(4096);
        let channels = crate::channels::Channels::new(config.channels.clone());
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state::State::default()),
                config,
                started: Instant::now(),
                events,
                draining: AtomicBool::new(false),
                queues: OnceLock::new(),
                channels,
                realtime: OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The lock is never held across an await, so a poisoned lock means a bug
    /// panicked mid-update; the tables are still structurally sound, so go on.
    pub(crate) fn lock(&self) -> MutexGuard<'_, state::State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects the durable queue (done once at start, after the store opens).
    pub fn attach_queues(&self, queues: crate::queue::Queues) {
        let _ = self.inner.queues.set(queues);
    }

    pub fn queues(&self) -> Option<&crate::queue::Queues> {
        self.inner.queues.get()
    }

    /// The binary channels this engine brokers.
    pub fn channels(&self) -> &crate::channels::Channels {
        &self.inner.channels
    }

    /// Connects the realtime channel hub (done once at start).
    pub fn attach_realtime(&self, realtime: crate::realtime::Realtime) {
        let _ = self.inner.realtime.set(realtime);
    }

    pub fn realtime(&self) -> Option<&crate::realtime::Realtime> {
        self.inner.realtime.get()
    }

    /// Read-only access to the tables (introspection, tests).
    pub fn inspect<R>(&self, f: impl FnOnce(&state::State) -> R) -> R {
        f(&self.lock())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<MeshEvent> {
        self.inner.events.subscribe()
    }

    pub(crate) fn emit(&self, event: MeshEvent) {
        // No receiver is fine: nobody is interested yet.
        let _ = self.inner.events.send(event);
    }

    pub fn stats(&self) -> MeshStats {
        let st = self.lock();
        MeshStats {
            workers: st.workers.len(),
            functions: st.functions.values().map(|m| m.len()).sum(),
            pending_invocations: st.calls.len(),
        }
    }

    /// Marks the engine as shutting down (new connections are refused).
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Closes every worker connection with `code`.
    pub fn close_all(&self, code: u16, reason: &str) {
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
