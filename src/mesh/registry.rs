//! Workers and the functions they provide: connect, register, disconnect.
//!
//! Several live workers may provide one function id; calls are shared among
//! them (see [`super::router`]). A worker's disconnect releases everything it
//! held in one critical section, so no call can be routed to a dead worker.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::access::Access;
use super::connection::{Connection, Outgoing};
use super::provided::ExternalTarget;
use super::session::WORKERS_REGISTER;
use super::state::{FunctionInfo, Key, Provider, Rebinding, State, Worker, WorkerMeta};
use super::{Mesh, MeshEvent};
use crate::protocol::inbound::FunctionRegistration;
use crate::protocol::{ErrorBody, codes, names, outbound};

impl Mesh {
    /// Admits a new worker connection; its first frame is `workerregistered`.
    pub(crate) fn connect(
        &self,
        remote_addr: Option<SocketAddr>,
        access: Arc<Access>,
    ) -> (Arc<Connection>, mpsc::UnboundedReceiver<Outgoing>) {
        let (conn, rx) = Connection::new(
            remote_addr,
            access,
            self.config().limits.max_outbound_queue_bytes,
            self.budget().clone(),
        );
        let conn = Arc::new(conn);
        let _ = conn.send(outbound::worker_registered(&conn.id, &conn.reattach_token));
        self.lock().workers.insert(
            conn.id,
            Worker {
                conn: conn.clone(),
                namespace: crate::protocol::DEFAULT_NAMESPACE.to_owned(),
                meta: None,
                functions: HashSet::new(),
                trigger_types: HashSet::new(),
                bindings: HashSet::new(),
                calls_out: HashSet::new(),
                calls_in: HashSet::new(),
            },
        );
        tracing::info!(worker_id = %conn.id, remote = ?remote_addr, "worker connected");
        self.emit(MeshEvent::WorkerConnected(conn.id));
        (conn, rx)
    }

    /// Releases everything a worker held. Idempotent.
    ///
    /// Its executing calls fail with `invocation_stopped` at once; calls it made
    /// are forgotten (late results are dropped); its functions lose a provider;
    /// its trigger types go and their bindings park; its own bindings are
    /// unbound at their providers.
    pub(crate) fn disconnect(&self, worker_id: Uuid) {
        let mut st = self.lock();
        let Some(worker) = st.take_worker(&worker_id) else {
            return;
        };
        let name = worker.meta.as_ref().and_then(|m| m.name.clone());
        let mut lost_functions = false;
        for key in &worker.functions {
            lost_functions |= st.remove_provider(key, worker_id, true);
        }
        for id in &worker.calls_in {
            if let Some(call) = st.take_call(id) {
                let err = ErrorBody::new(
                    codes::INVOCATION_STOPPED,
                    "Invocation stopped: the worker executing it disconnected",
                );
                st.settle(*id, call, Err(err));
            }
        }
        for id in &worker.calls_out {
            if let Some(mut call) = st.take_call(id) {
                if let Some(span) = call.span.take() {
                    span.end(&call.function_id, super::spans::Ended::Abandoned);
                }
                if let Some(exec) = st.workers.get_mut(&call.executor) {
                    exec.calls_in.remove(id);
                }
            }
        }
        for key in &worker.trigger_types {
            st.remove_trigger_type(key, worker_id);
        }
        for id in &worker.bindings {
            st.remove_binding(id);
        }
        drop(st);
        for gone in &self.provided().worker_gone {
            gone(worker_id);
        }
        tracing::info!(worker_id = %worker_id, name = ?name, "worker disconnected");
        self.emit(MeshEvent::WorkerDisconnected(worker_id));
        if lost_functions {
            self.emit(MeshEvent::FunctionsChanged);
        }
    }

    /// `reattach`: if the token proves the caller was `previous`, tear the old
    /// connection down now, before the replay that follows is applied, so its
    /// cleanup cannot remove what the new connection registers.
    pub(crate) fn reattach(&self, current: Uuid, previous: &str, token: Option<&str>) -> bool {
        let (Ok(prev), Some(Ok(token))) = (Uuid::parse_str(previous), token.map(Uuid::parse_str))
        else {
            return false;
        };
        if prev == current {
            return false;
        }
        let old = {
            let st = self.lock();
            match st.workers.get(&prev) {
                Some(w) if w.conn.reattach_token == token => w.conn.clone(),
                _ => return false,
            }
        };
        old.close(
            codes::close::REPLACED,
            "replaced by a reattaching connection",
        );
        self.disconnect(prev);
        tracing::info!(worker_id = %current, previous = %prev, "worker reattached");
        true
    }

    /// Stores what `engine::workers::register` said. Returns the namespace the
    /// connection's registrations belong to (fixed by the first call).
    pub(crate) fn set_worker_meta(&self, worker_id: Uuid, meta: WorkerMeta) -> String {
        let mut st = self.lock();
        let Some(w) = st.workers.get_mut(&worker_id) else {
            return crate::protocol::DEFAULT_NAMESPACE.to_owned();
        };
        if w.meta.is_none()
            && let Some(ns) = meta
                .namespace
                .as_deref()
                .map(str::trim)
                .filter(|ns| names::check("namespace", ns).is_ok())
        {
            w.namespace = ns.to_owned();
        }
        w.meta = Some(meta);
        let ns = w.namespace.clone();
        drop(st);
        self.emit(MeshEvent::WorkerUpdated(worker_id));
        ns
    }

    /// `registerfunction` in `namespace`. Ids the engine itself provides are
    /// refused with a (non-fatal) `registrationrejected`.
    pub(crate) fn register_function(
        &self,
        worker_id: Uuid,
        namespace: &str,
        reg: FunctionRegistration,
    ) {
        // An external function is checked (URL, secrets) before the lock is taken.
        let external = match (&reg.invocation, &self.provided().external) {
            (None, _) => None,
            (Some(spec), Some(ext)) => match ext.accept(&reg.id, spec) {
                Ok(target) => Some(target),
                Err(err) => {
                    // iii only logs it; later calls get function_not_found.
                    tracing::warn!(worker_id = %worker_id, function_id = %reg.id, error = %err, "external function refused; registration dropped");
                    return;
                }
            },
            (Some(_), None) => {
                tracing::warn!(worker_id = %worker_id, function_id = %reg.id, "refused: this engine calls no external functions");
                if let Some(w) = self.lock().workers.get(&worker_id) {
                    let _ = w.conn.send(outbound::function_rejected(namespace, &reg.id));
                }
                return;
            }
        };
        self.add_provider(worker_id, namespace, reg, external);
    }

    /// Registers a function of `worker_id` whose calls go to `target` (set by
    /// engine code, not by a worker's `invocation` spec): a function served
    /// somewhere the engine reaches itself, such as another engine.
    pub(crate) fn register_external(
        &self,
        worker_id: Uuid,
        namespace: &str,
        reg: FunctionRegistration,
        target: Arc<dyn ExternalTarget>,
    ) {
        self.add_provider(worker_id, namespace, reg, Some(target));
    }

    fn add_provider(
        &self,
        worker_id: Uuid,
        namespace: &str,
        reg: FunctionRegistration,
        external: Option<Arc<dyn ExternalTarget>>,
    ) {
        let mut st = self.lock();
        let Some(worker) = st.workers.get_mut(&worker_id) else {
            return;
        };
        if let Err(why) = names::check("function_id", &reg.id) {
            tracing::warn!(worker_id = %worker_id, function_id = ?reg.id, why, "refused a function id");
            let _ = worker
                .conn
                .send(outbound::function_rejected(namespace, &reg.id));
            return;
        }
        if self.is_reserved(&reg.id) {
            tracing::warn!(worker_id = %worker_id, function_id = %reg.id, "refused: the engine provides this function id");
            let _ = worker
                .conn
                .send(outbound::function_rejected(namespace, &reg.id));
            return;
        }
        if let Some(owner) = st.foreign_owner(namespace, &reg.id, worker_id) {
            tracing::warn!(worker_id = %worker_id, function_id = %reg.id, owner, "refused: another principal serves this function id");
            if let Some(w) = st.workers.get(&worker_id) {
                let _ = w.conn.send(outbound::function_rejected(namespace, &reg.id));
            }
            return;
        }
        let Some(worker) = st.workers.get_mut(&worker_id) else {
            return;
        };
        let key: Key = (namespace.to_owned(), reg.id.clone());
        worker.functions.insert(key.clone());
        let info = Arc::new(FunctionInfo {
            description: reg.description,
            request_format: reg.request_format,
            response_format: reg.response_format,
            metadata: reg.metadata,
        });
        let function = st
            .functions
            .entry(key.0.clone())
            .or_default()
            .entry(key.1.clone())
            .or_default();
        let first = function.providers.is_empty();
        match function
            .providers
            .iter_mut()
            .find(|p| p.worker == worker_id)
        {
            Some(p) => {
                p.info = info;
                p.external = external;
            }
            None => function.providers.push(Provider {
                worker: worker_id,
                info,
                external,
            }),
        }
        if first && let Some(waiting) = st.rebinding.remove(&key) {
            for w in waiting.waiters {
                let _ = w.send(());
            }
        }
        drop(st);
        tracing::debug!(worker_id = %worker_id, namespace, function_id = %key.1, "function registered");
        if first {
            self.emit(MeshEvent::FunctionAvailable);
        }
        self.emit(MeshEvent::FunctionsChanged);
    }

    pub(crate) fn unregister_function(&self, worker_id: Uuid, namespace: &str, id: &str) {
        let key: Key = (namespace.to_owned(), id.to_owned());
        let mut st = self.lock();
        let held = st
            .workers
            .get_mut(&worker_id)
            .is_some_and(|w| w.functions.remove(&key));
        if held && st.remove_provider(&key, worker_id, false) {
            drop(st);
            self.emit(MeshEvent::FunctionsChanged);
        }
    }
}

impl State {
    /// The principal of a worker already serving `function_id`, when it is
    /// not `worker_id`'s: sharing a function id (load balancing) is for
    /// workers of one identity, so a stranger cannot take half of its calls.
    fn foreign_owner(&self, namespace: &str, function_id: &str, worker_id: Uuid) -> Option<String> {
        let mine = &self.workers.get(&worker_id)?.conn.access.principal;
        let function = self.functions.get(namespace)?.get(function_id)?;
        function
            .providers
            .iter()
            .filter_map(|p| self.workers.get(&p.worker))
            .map(|w| &w.conn.access.principal)
            .find(|theirs| *theirs != mine)
            .cloned()
    }

    /// Removes one provider of `key`; returns true if the function is now gone.
    /// When it went because its worker vanished (not by choice), callers get a
    /// grace period to wait for a restarted worker.
    pub(super) fn remove_provider(&mut self, key: &Key, worker_id: Uuid, vanished: bool) -> bool {
        let Some(by_id) = self.functions.get_mut(&key.0) else {
            return false;
        };
        let Some(function) = by_id.get_mut(&key.1) else {
            return false;
        };
        function.providers.retain(|p| p.worker != worker_id);
        if !function.providers.is_empty() {
            return false;
        }
        by_id.remove(&key.1);
        if by_id.is_empty() {
            self.functions.remove(&key.0);
        }
        if vanished {
            self.rebinding.insert(
                key.clone(),
                Rebinding {
                    since: Instant::now(),
                    waiters: Vec::new(),
                },
            );
        }
        true
    }
}

impl Mesh {
    /// Ids no worker may register: everything under `engine::`, and every id the engine answers.
    pub(crate) fn is_reserved(&self, function_id: &str) -> bool {
        function_id.starts_with("engine::")
            || function_id == WORKERS_REGISTER
            || self.provided().function(function_id).is_some()
    }

    /// Whether the connection `worker_id` has the operator role. Engine-made
    /// calls (no such worker) are the engine's own and may.
    pub(crate) fn may_operate(&self, worker_id: Uuid) -> bool {
        self.lock()
            .workers
            .get(&worker_id)
            .is_none_or(|w| w.conn.access.may_operate())
    }

    /// Whether `worker_id` serves `function_id` in `namespace`.
    pub(crate) fn provides(&self, worker_id: Uuid, namespace: &str, function_id: &str) -> bool {
        let key: Key = (namespace.to_owned(), function_id.to_owned());
        self.lock()
            .workers
            .get(&worker_id)
            .is_some_and(|w| w.functions.contains(&key))
    }

    /// The functions `worker_id` serves, as (namespace, function id): what
    /// its engine vouches for when it acts on another engine's clients.
    pub(crate) fn functions_of(&self, worker_id: Uuid) -> Vec<(String, String)> {
        self.lock()
            .workers
            .get(&worker_id)
            .map(|w| w.functions.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A worker function's registered metadata (RBAC `metadata` rules).
    pub(crate) fn function_metadata(
        &self,
        namespace: &str,
        function_id: &str,
    ) -> Option<serde_json::Value> {
        let st = self.lock();
        let f = st.functions.get(namespace)?.get(function_id)?;
        let raw = f.providers.first()?.info.metadata.as_ref()?;
        serde_json::from_str(raw.get()).ok()
    }

    /// Ids of every engine function, for listings.
    pub(crate) fn engine_function_ids(&self) -> Vec<&'static str> {
        let mut ids = self.provided().function_ids();
        ids.push(WORKERS_REGISTER);
        ids.sort_unstable();
        ids
    }
}
