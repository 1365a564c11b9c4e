//! Interned functions: ready entries name a (namespace, function id) by a
//! small number, so their keys stay short and fixed-width.
//!
//! Invariant: ids and names map one to one, and every id here is in the
//! store before any ready entry uses it (the scheduler writes an id in its
//! own batch, then interns it).

use std::collections::HashMap;

use crate::store::queue::FnId;

#[derive(Default)]
pub struct FnIds {
    /// By namespace, then function id (looked up by `&str`).
    ids: HashMap<String, HashMap<String, FnId>>,
    names: HashMap<FnId, (String, String)>,
}

impl FnIds {
    pub fn id(&self, namespace: &str, function_id: &str) -> Option<FnId> {
        self.ids.get(namespace)?.get(function_id).copied()
    }

    /// (namespace, function id) of an interned function.
    pub fn name(&self, id: FnId) -> Option<(&str, &str)> {
        self.names
            .get(&id)
            .map(|(ns, fid)| (ns.as_str(), fid.as_str()))
    }

    /// The id the next function gets.
    pub fn next_id(&self) -> FnId {
        self.names.keys().max().map_or(1, |m| m + 1)
    }

    /// Records a stored id.
    pub fn intern(&mut self, namespace: String, function_id: String, id: FnId) {
        self.ids
            .entry(namespace.clone())
            .or_default()
            .insert(function_id.clone(), id);
        self.names.insert(id, (namespace, function_id));
    }
}
