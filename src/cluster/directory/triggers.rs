//! Trigger types and bindings across engines.
//!
//! `qmesh_<cluster>_trigger_types` has one key per (engine, namespace,
//! type) that engine's own workers provide, `<engine>.<b64(namespace)>.<b64(type)>`,
//! the value its description and formats. Every other engine offers it to
//! its mesh as a type of that engine's peer, where no provider has it (one
//! provided here comes first, and the first engine's stays until it goes).
//!
//! `qmesh_<cluster>_bindings` has one key per binding made on one engine
//! (by its worker, or with `engine::register_trigger`) that a type of
//! another engine's peer serves: `<owner engine>.<provider engine>.<b64(id)>`,
//! the value what the binding says (type, function, namespaces, config,
//! metadata). The providing engine binds it in its mesh as its owner's
//! peer's, so its own provider gets `registertrigger` as from a worker of
//! its own, and the function it fires is routed back like any call; the key
//! deleted (an unbind, the owner's worker gone, the owner engine stopping
//! or declared dead) unbinds it, and its provider gets `unregistertrigger`.
//!
//! A binding of an engine type its handler calls cluster-wide (durable
//! topics' `durable:subscriber`) is served by every engine, each with its
//! own handler: its key names [`EVERY_ENGINE`] as provider, and every other
//! engine binds it as its owner's peer's.
//!
//! Like the functions bucket, each key is written and deleted by the engine
//! that owns it while it lives, from what its mesh holds (recomputed at
//! every mesh event), and by the others once it is dead.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Directory, Key, Member, Published, is_peer};
use crate::mesh::state::{BindingOwner, State, TypeProvider};
use crate::protocol::Payload;
use crate::protocol::inbound::{TriggerRegistration, TriggerTypeRegistration};

/// A trigger type's entry.
#[derive(Serialize, Deserialize)]
struct TypeEntry {
    description: String,
    trigger_request_format: Option<Payload>,
    call_request_format: Option<Payload>,
}

/// A binding's entry: what its provider needs to serve it.
#[derive(Serialize, Deserialize)]
struct BindingEntry {
    trigger_type: String,
    function_id: String,
    /// The bound function's namespace.
    namespace: String,
    /// The namespace of the type that serves it (the provider's).
    trigger_namespace: String,
    config: Payload,
    metadata: Option<Payload>,
}

/// The provider part of a binding key every engine serves: `=` can be in a
/// KV key but never in an engine id (`[A-Za-z0-9_-]`).
pub(super) const EVERY_ENGINE: &str = "=";

/// `<owner>.<provider>.<b64(id)>`.
pub(super) fn binding_key(owner: &str, provider: &str, id: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{owner}.{provider}.{}", b64.encode(id))
}

/// `<owner>.<provider>.<b64(id)>` → (owner, provider, id).
pub(super) fn parse_binding_key(key: &str) -> Option<(String, String, String)> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = key.split('.');
    let (owner, provider, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let id = String::from_utf8(b64.decode(id).ok()?).ok()?;
    Some((owner.to_owned(), provider.to_owned(), id))
}

impl Directory {
    /// This engine's entries: the types its own workers provide, and the
    /// bindings made here that another engine's type serves.
    pub(super) fn desired_triggers(&self, st: &State, out: &mut Published) {
        for (key, t) in &st.trigger_types {
            let TypeProvider::Worker(w) = t.provider else {
                continue; // each engine serves its own engine types
            };
            if is_peer(st, w) {
                continue;
            }
            let entry = TypeEntry {
                description: t.description.clone(),
                trigger_request_format: t.trigger_request_format.clone(),
                call_request_format: t.call_request_format.clone(),
            };
            out.trigger_types.insert(
                self.key(&self.names.engine_id, key),
                serde_json::to_vec(&entry).expect("an entry encodes"),
            );
        }
        for b in st.bindings.values() {
            if matches!(b.owner, BindingOwner::Worker(w) if is_peer(st, w)) {
                continue; // handed here by its engine: never handed on
            }
            let Some(key) = &b.active_on else { continue };
            let engine = match st.trigger_types.get(key).map(|t| t.provider) {
                Some(TypeProvider::Worker(p)) => st
                    .workers
                    .get(&p)
                    .and_then(|w| w.meta.as_ref())
                    .and_then(|m| m.engine.as_deref()),
                Some(TypeProvider::Engine) => (st.engine_types.get(&b.trigger_type))
                    .filter(|h| h.cluster_wide())
                    .map(|_| EVERY_ENGINE),
                None => None,
            };
            let Some(engine) = engine else { continue };
            let entry = BindingEntry {
                trigger_type: b.trigger_type.clone(),
                function_id: b.function_id.clone(),
                namespace: b.namespace.clone(),
                trigger_namespace: key.0.clone(),
                config: b.config.clone(),
                metadata: b.metadata.clone(),
            };
            out.bindings.insert(
                binding_key(&self.names.engine_id, engine, &b.id),
                serde_json::to_vec(&entry).expect("an entry encodes"),
            );
        }
    }

    /// Another engine's trigger type (`None`: it went).
    pub(super) fn set_trigger_type(&self, engine: String, key: Key, entry: Option<Vec<u8>>) {
        let mut members = self.members();
        match entry {
            Some(entry) => {
                let member = members.entry(engine.clone()).or_insert_with(Member::new);
                member.trigger_types.insert(key.clone(), entry.clone());
                if member.alive {
                    let peer = self.peer_of(&engine, member);
                    self.offer_type(peer, &key, &entry);
                }
            }
            None => {
                let Some(member) = members.get_mut(&engine) else {
                    return;
                };
                member.trigger_types.remove(&key);
                if let Some(peer) = member.peer {
                    // Its bindings here park, or move to another provider
                    // at the next offer (the mesh event this makes).
                    self.mesh.unregister_trigger_type(peer, &key.0, &key.1);
                }
                self.let_go(&engine, &mut members);
            }
        }
    }

    /// A binding `owner`'s engine made that one of this engine's types
    /// serves, or every engine's (`provider`; `None`: it went).
    pub(super) fn set_binding(
        &self,
        owner: String,
        provider: String,
        id: String,
        entry: Option<Vec<u8>>,
    ) {
        let mut members = self.members();
        match entry {
            Some(entry) => {
                let member = members.entry(owner.clone()).or_insert_with(Member::new);
                if member.bindings.get(&id) == Some(&(provider.clone(), entry.clone())) {
                    return; // the same again (a watch opened anew)
                }
                member
                    .bindings
                    .insert(id.clone(), (provider, entry.clone()));
                if member.alive {
                    let peer = self.peer_of(&owner, member);
                    self.bind(peer, id, &entry);
                }
            }
            None => {
                let Some(member) = members.get_mut(&owner) else {
                    return;
                };
                if member.bindings.remove(&id).is_none() {
                    return;
                }
                if let Some(peer) = member.peer {
                    self.mesh.unbind_trigger(Some(peer), &id);
                }
                self.let_go(&owner, &mut members);
            }
        }
    }

    /// Offers every live engine's types to the mesh again: one of them takes
    /// the place of a type that went (its bindings replay to it).
    pub(super) fn offer_trigger_types(&self) {
        let members = self.members();
        for member in members.values().filter(|m| m.alive) {
            let Some(peer) = member.peer else { continue };
            for (key, entry) in &member.trigger_types {
                self.offer_type(peer, key, entry);
            }
        }
    }

    /// Puts back what `member` had in the mesh, on its new `peer` (it was
    /// declared dead and is heard from again).
    pub(super) fn restore_triggers(&self, peer: Uuid, member: &Member) {
        for (key, entry) in &member.trigger_types {
            self.offer_type(peer, key, entry);
        }
        for (id, (_, entry)) in &member.bindings {
            self.bind(peer, id.clone(), entry);
        }
    }

    /// Registers `key` as `peer`'s type, unless some provider has it.
    fn offer_type(&self, peer: Uuid, key: &Key, entry: &[u8]) {
        if self.mesh.inspect(|st| st.trigger_types.contains_key(key)) {
            return;
        }
        let Ok(entry) = serde_json::from_slice::<TypeEntry>(entry) else {
            tracing::warn!(trigger_type = %key.1, "ignored a malformed trigger type entry");
            return;
        };
        let reg = TriggerTypeRegistration {
            id: key.1.clone(),
            description: entry.description,
            trigger_request_format: entry.trigger_request_format,
            call_request_format: entry.call_request_format,
            namespace: Some(key.0.clone()),
        };
        self.mesh.register_trigger_type(peer, &key.0, reg);
    }

    /// Binds a binding of `peer`'s engine in this mesh, as `peer`'s.
    fn bind(&self, peer: Uuid, id: String, entry: &[u8]) {
        let Ok(entry) = serde_json::from_slice::<BindingEntry>(entry) else {
            tracing::warn!(binding = %id, "ignored a malformed binding entry");
            return;
        };
        let reg = TriggerRegistration {
            id,
            trigger_type: entry.trigger_type,
            function_id: entry.function_id,
            config: Some(entry.config),
            metadata: entry.metadata,
            namespace: Some(entry.namespace.clone()),
            trigger_namespace: Some(entry.trigger_namespace),
        };
        self.mesh
            .bind_trigger(BindingOwner::Worker(peer), &entry.namespace, reg, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_key_names_its_owner_its_provider_and_its_id() {
        let key = binding_key("a", "b", "3f2c.x/y");
        assert_eq!(
            parse_binding_key(&key),
            Some(("a".into(), "b".into(), "3f2c.x/y".into()))
        );
        assert_eq!(parse_binding_key("a.b"), None);
    }
}
