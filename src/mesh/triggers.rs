//! Trigger types and their bindings.
//!
//! A binding is owned by the worker that asked for it (or by the engine, for
//! `engine::register_trigger`) and served by the provider of its trigger type.
//! With no provider it is *parked*, never refused: it activates when a
//! provider registers, and every re-registration of a type replays all its
//! bindings, which is how bindings survive a provider restart.
//!
//! A connection standing for another engine (`WorkerMeta::engine`) may
//! provide a type too: its bindings are served there. Such a type never
//! takes over one already provided (here, or first by another engine), a
//! binding such a connection owns is served only by a type provided here (a
//! binding is handed on once, never along a chain), and a binding handed to
//! it is acknowledged at once (its provider's verdict does not come back).
//! Every change emits [`MeshEvent::TriggersChanged`].

use tokio::sync::oneshot;
use uuid::Uuid;

use super::state::{Binding, BindingOwner, Key, State, TriggerType, TypeProvider};
use super::{Mesh, MeshEvent};
use crate::protocol::inbound::{
    TriggerRegistration, TriggerRegistrationResult, TriggerTypeRegistration,
};
use crate::protocol::outbound::{self, BindingParts};
use crate::protocol::{ErrorBody, codes, null_payload};

impl Mesh {
    /// `registertriggertype`: replaces any previous worker provider and replays
    /// every binding of the type to the new one.
    pub(crate) fn register_trigger_type(
        &self,
        worker_id: Uuid,
        namespace: &str,
        reg: TriggerTypeRegistration,
    ) {
        let key: Key = (namespace.to_owned(), reg.id);
        let mut st = self.lock();
        if !st.workers.contains_key(&worker_id) {
            return;
        }
        match st.trigger_types.get(&key).map(|t| t.provider) {
            Some(TypeProvider::Engine) => {
                tracing::warn!(worker_id = %worker_id, trigger_type = %key.1, "refused: the engine provides this trigger type");
                return;
            }
            Some(TypeProvider::Worker(old)) if old != worker_id => {
                if st.stands_elsewhere(worker_id) {
                    tracing::debug!(trigger_type = %key.1, "a type provided on another engine leaves the present provider in place");
                    return;
                }
                if let Some(w) = st.workers.get_mut(&old) {
                    w.trigger_types.remove(&key);
                }
                tracing::info!(trigger_type = %key.1, old = %old, new = %worker_id, "trigger type provider replaced");
            }
            _ => {}
        }
        st.trigger_types.insert(
            key.clone(),
            TriggerType {
                provider: TypeProvider::Worker(worker_id),
                description: reg.description,
                trigger_request_format: reg.trigger_request_format,
                call_request_format: reg.call_request_format,
            },
        );
        if let Some(w) = st.workers.get_mut(&worker_id) {
            w.trigger_types.insert(key.clone());
        }
        let replay: Vec<String> = st
            .bindings
            .values()
            .filter(|b| b.trigger_type == key.1)
            .filter(|b| {
                b.active_on.as_ref() == Some(&key)
                    || (b.active_on.is_none() && st.resolve_type(b).as_ref() == Some(&key))
            })
            .map(|b| b.id.clone())
            .collect();
        for id in replay {
            st.activate(&id, key.clone());
        }
        drop(st);
        self.emit(MeshEvent::TriggersChanged);
    }

    /// `unregistertriggertype` (iii ignores it; qmesh honours it): the type goes
    /// and its bindings park until a provider returns.
    pub(crate) fn unregister_trigger_type(&self, worker_id: Uuid, namespace: &str, id: &str) {
        let key: Key = (namespace.to_owned(), id.to_owned());
        let mut st = self.lock();
        if let Some(w) = st.workers.get_mut(&worker_id) {
            w.trigger_types.remove(&key);
        }
        st.remove_trigger_type(&key, worker_id);
        drop(st);
        self.emit(MeshEvent::TriggersChanged);
    }

    /// Binds a trigger. `namespace` is the bound function's namespace when the
    /// message does not say. Parks when no provider exists yet.
    pub(crate) fn bind_trigger(
        &self,
        owner: BindingOwner,
        namespace: &str,
        reg: TriggerRegistration,
        ack: Option<oneshot::Sender<Result<(), ErrorBody>>>,
    ) {
        let mut st = self.lock();
        if st.would_take_foreign_binding(owner, &reg.id) {
            let msg = format!("trigger id '{}' belongs to another principal", reg.id);
            let err = ErrorBody::new(codes::FORBIDDEN, msg);
            tracing::warn!(binding = %reg.id, "refused a binding that would replace another principal's");
            if let BindingOwner::Worker(w) = owner
                && let Some(worker) = st.workers.get(&w)
            {
                let _ = worker.conn.send(outbound::trigger_registration_result(
                    &reg.id,
                    &reg.trigger_type,
                    &reg.function_id,
                    Some(&err),
                ));
            }
            if let Some(ack) = ack {
                let _ = ack.send(Err(err));
            }
            return;
        }
        if let BindingOwner::Worker(w) = owner {
            let Some(worker) = st.workers.get_mut(&w) else {
                return;
            };
            worker.bindings.insert(reg.id.clone());
        }
        if st.bindings.contains_key(&reg.id) {
            // A replay with the original id (reconnect): replace the old binding cleanly.
            st.remove_binding(&reg.id);
            if let BindingOwner::Worker(w) = owner
                && let Some(worker) = st.workers.get_mut(&w)
            {
                worker.bindings.insert(reg.id.clone());
            }
        }
        let binding = Binding {
            id: reg.id.clone(),
            trigger_type: reg.trigger_type,
            function_id: reg.function_id,
            namespace: reg
                .namespace
                .filter(|ns| !ns.trim().is_empty())
                .unwrap_or_else(|| namespace.to_owned()),
            trigger_namespace: reg.trigger_namespace.filter(|ns| !ns.trim().is_empty()),
            config: reg.config.unwrap_or_else(null_payload),
            metadata: reg.metadata,
            owner,
            active_on: None,
            ack,
        };
        let target = st.resolve_type(&binding);
        let id = binding.id.clone();
        st.bindings.insert(id.clone(), binding);
        match target {
            Some(key) => st.activate(&id, key),
            None => {
                let b = &st.bindings[&id];
                tracing::info!(binding = %id, trigger_type = %b.trigger_type, "no provider for this trigger type yet; binding parked");
                if let Some(b) = st.bindings.get_mut(&id)
                    && let Some(ack) = b.ack.take()
                {
                    let _ = ack.send(Ok(()));
                }
            }
        }
        drop(st);
        self.emit(MeshEvent::TriggersChanged);
    }

    /// Removes a binding. A worker may remove only its own; `None` is the engine
    /// (`engine::unregister_trigger`), which may remove any.
    pub(crate) fn unbind_trigger(&self, requester: Option<Uuid>, id: &str) -> bool {
        let mut st = self.lock();
        let Some(b) = st.bindings.get(id) else {
            return false;
        };
        if let (Some(req), BindingOwner::Worker(owner)) = (requester, b.owner)
            && req != owner
        {
            tracing::warn!(worker_id = %req, binding = %id, "unregistertrigger for a binding this worker does not own; ignored");
            return false;
        }
        st.remove_binding(id);
        drop(st);
        self.emit(MeshEvent::TriggersChanged);
        true
    }

    /// A provider's verdict on a binding. Only the binding's current provider is heard.
    pub(crate) fn trigger_registration_result(&self, from: Uuid, res: TriggerRegistrationResult) {
        let mut st = self.lock();
        let provider = st
            .bindings
            .get(&res.id)
            .and_then(|b| b.active_on.as_ref())
            .and_then(|k| st.trigger_types.get(k))
            .map(|t| t.provider);
        if provider != Some(TypeProvider::Worker(from)) {
            tracing::debug!(worker_id = %from, binding = %res.id, "stray triggerregistrationresult ignored");
            return;
        }
        let b = st.bindings.get_mut(&res.id).expect("checked above");
        let ack = b.ack.take();
        let Some(err) = res.error else {
            if let Some(ack) = ack {
                let _ = ack.send(Ok(()));
            }
            return;
        };
        tracing::warn!(binding = %res.id, trigger_type = %b.trigger_type, error = %err, "provider refused a binding; parked");
        b.active_on = None;
        let owner = b.owner;
        let frame = outbound::trigger_registration_result(
            &b.id,
            &b.trigger_type,
            &b.function_id,
            Some(&err),
        );
        if let Some(ack) = ack {
            let _ = ack.send(Err(err));
        }
        if let BindingOwner::Worker(w) = owner
            && let Some(w) = st.workers.get(&w)
        {
            let _ = w.conn.send(frame);
        }
        drop(st);
        self.emit(MeshEvent::TriggersChanged);
    }
}

impl State {
    /// Whether binding `id` for `owner` would replace a binding another
    /// principal owns (a replay after a reconnect keeps its principal, so it
    /// may; a stranger reusing the id may not). Engine-owned bindings are
    /// replaced only by operators.
    fn would_take_foreign_binding(&self, owner: BindingOwner, id: &str) -> bool {
        let Some(existing) = self.bindings.get(id) else {
            return false;
        };
        let BindingOwner::Worker(me) = owner else {
            return false;
        };
        let Some(mine) = self.workers.get(&me).map(|w| &w.conn.access) else {
            return false;
        };
        match existing.owner {
            BindingOwner::Worker(them) => self
                .workers
                .get(&them)
                .is_some_and(|w| w.conn.access.principal != mine.principal),
            BindingOwner::Engine => !mine.may_operate(),
        }
    }

    /// Which registered trigger type serves a binding: the namespace it names,
    /// else the bound function's namespace, then `default`. A binding handed
    /// on from another engine is served only by a type provided here.
    pub(super) fn resolve_type(&self, b: &Binding) -> Option<Key> {
        let candidates: Vec<&str> = match &b.trigger_namespace {
            Some(ns) => vec![ns.as_str()],
            None => vec![b.namespace.as_str(), crate::protocol::DEFAULT_NAMESPACE],
        };
        let from_elsewhere = matches!(b.owner, BindingOwner::Worker(w) if self.stands_elsewhere(w));
        candidates
            .into_iter()
            .map(|ns| (ns.to_owned(), b.trigger_type.clone()))
            .find(|k| match self.trigger_types.get(k).map(|t| t.provider) {
                None => false,
                Some(TypeProvider::Worker(p)) => !(from_elsewhere && self.stands_elsewhere(p)),
                Some(TypeProvider::Engine) => true,
            })
    }

    /// Puts a binding on `key`'s provider, forwarding it to a worker provider.
    pub(super) fn activate(&mut self, binding_id: &str, key: Key) {
        let Some(provider) = self.trigger_types.get(&key).map(|t| t.provider) else {
            return;
        };
        let elsewhere = matches!(provider, TypeProvider::Worker(w) if self.stands_elsewhere(w));
        let Some(b) = self.bindings.get_mut(binding_id) else {
            return;
        };
        b.active_on = Some(key.clone());
        match provider {
            TypeProvider::Engine => {
                let verdict = match self.engine_types.get(&b.trigger_type) {
                    Some(handler) => handler.bind(b),
                    None => Ok(()),
                };
                if let Err(err) = verdict {
                    // A bad or conflicting config: refuse it like a worker
                    // provider would, and keep no record of it (as iii: it is
                    // not listed, and nothing replays it).
                    tracing::warn!(binding = %b.id, trigger_type = %b.trigger_type, function_id = %b.function_id, error = %err, "trigger refused by the engine");
                    let Some(mut b) = self.bindings.remove(binding_id) else {
                        return;
                    };
                    if let BindingOwner::Worker(w) = b.owner
                        && let Some(w) = self.workers.get_mut(&w)
                    {
                        w.bindings.remove(binding_id);
                    }
                    let frame = outbound::trigger_registration_result(
                        &b.id,
                        &b.trigger_type,
                        &b.function_id,
                        Some(&err),
                    );
                    match (b.ack.take(), b.owner) {
                        (Some(ack), _) => drop(ack.send(Err(err))),
                        (None, BindingOwner::Worker(w)) => {
                            if let Some(w) = self.workers.get(&w) {
                                let _ = w.conn.send(frame);
                            }
                        }
                        (None, BindingOwner::Engine) => {}
                    }
                    return;
                }
                if let Some(ack) = b.ack.take() {
                    let _ = ack.send(Ok(()));
                }
            }
            TypeProvider::Worker(w) => {
                if elsewhere && let Some(ack) = b.ack.take() {
                    // Handed on to another engine, whose provider's verdict
                    // does not come back: the binding stands, as when parked.
                    let _ = ack.send(Ok(()));
                }
                let frame = outbound::register_trigger(BindingParts {
                    id: &b.id,
                    trigger_type: &b.trigger_type,
                    function_id: &b.function_id,
                    config: &b.config,
                    metadata: b.metadata.as_deref(),
                    namespace: &b.namespace,
                    trigger_namespace: &key.0,
                });
                if let Some(w) = self.workers.get(&w) {
                    let _ = w.conn.send(frame);
                }
            }
        }
    }

    /// Drops `worker`'s trigger type `key` (if it still provides it) and re-homes
    /// or parks its bindings.
    pub(super) fn remove_trigger_type(&mut self, key: &Key, worker: Uuid) {
        if self.trigger_types.get(key).map(|t| t.provider) != Some(TypeProvider::Worker(worker)) {
            return;
        }
        self.trigger_types.remove(key);
        let orphans: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.active_on.as_ref() == Some(key))
            .map(|b| b.id.clone())
            .collect();
        for id in orphans {
            if let Some(b) = self.bindings.get_mut(&id) {
                b.active_on = None;
            }
            let target = self.bindings.get(&id).and_then(|b| self.resolve_type(b));
            match target {
                Some(k) => self.activate(&id, k),
                None => {
                    tracing::info!(binding = %id, trigger_type = %key.1, "trigger type provider gone; binding parked")
                }
            }
        }
    }

    /// Removes a binding and tells its worker provider.
    pub(super) fn remove_binding(&mut self, id: &str) {
        let Some(b) = self.bindings.remove(id) else {
            return;
        };
        if let BindingOwner::Worker(w) = b.owner
            && let Some(w) = self.workers.get_mut(&w)
        {
            w.bindings.remove(id);
        }
        let provider = b
            .active_on
            .as_ref()
            .and_then(|k| self.trigger_types.get(k))
            .map(|t| t.provider);
        if provider == Some(TypeProvider::Engine)
            && let Some(handler) = self.engine_types.get(&b.trigger_type)
        {
            handler.unbind(id);
        }
        if let Some(TypeProvider::Worker(p)) = provider
            && let Some(p) = self.workers.get(&p)
        {
            let _ = p
                .conn
                .send(outbound::unregister_trigger(&b.id, &b.trigger_type));
        }
        if let Some(ack) = b.ack {
            let _ = ack.send(Err(ErrorBody::new(
                crate::protocol::codes::TRIGGER_REGISTRATION_FAILED,
                "binding removed",
            )));
        }
    }
}
