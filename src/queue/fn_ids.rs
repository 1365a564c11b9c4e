//! Interned functions: ready entries name a (namespace, function id) by a
//! small number, so their keys stay short and fixed-width. On a queue with
//! `fair_by`, each (function, fair key) is a lane with an id of its own, so
//! the ready index's round-robin over ids is a round-robin over tenants too.
//!
//! Invariant: ids and lanes map one to one, and every id here is in the
//! store before any ready entry uses it (the scheduler writes an id in its
//! own batch, then interns it).

use std::collections::HashMap;

use crate::store::queue::FnId;

/// (namespace, function id, fair key).
type Lane = (String, String, Option<String>);

#[derive(Default)]
pub struct FnIds {
    /// By namespace, then function id, then fair key (looked up by `&str`).
    ids: HashMap<String, HashMap<String, HashMap<Option<String>, FnId>>>,
    lanes: HashMap<FnId, Lane>,
}

impl FnIds {
    pub fn id(&self, namespace: &str, function_id: &str, lane: Option<&str>) -> Option<FnId> {
        let by_lane = self.ids.get(namespace)?.get(function_id)?;
        match lane {
            None => by_lane.get(&None).copied(),
            // One lookup with an owned key only when lanes are in use.
            Some(l) => by_lane.get(&Some(l.to_owned())).copied(),
        }
    }

    /// (namespace, function id) of an interned function or lane.
    pub fn name(&self, id: FnId) -> Option<(&str, &str)> {
        self.lanes
            .get(&id)
            .map(|(ns, fid, _)| (ns.as_str(), fid.as_str()))
    }

    /// The fair key of a lane (`None` for a plain function).
    pub fn lane_key(&self, id: FnId) -> Option<&str> {
        self.lanes.get(&id).and_then(|(_, _, k)| k.as_deref())
    }

    /// The id the next function gets.
    pub fn next_id(&self) -> FnId {
        self.lanes.keys().max().map_or(1, |m| m + 1)
    }

    /// Records a stored id.
    pub fn intern(
        &mut self,
        namespace: String,
        function_id: String,
        lane: Option<String>,
        id: FnId,
    ) {
        self.ids
            .entry(namespace.clone())
            .or_default()
            .entry(function_id.clone())
            .or_default()
            .insert(lane.clone(), id);
        self.lanes.insert(id, (namespace, function_id, lane));
    }
}
