//! The state module's values: one JSON value per (scope, key). The only door
//! state has to the store: it sees scopes, keys and JSON bytes, never store
//! keys or sled types.
//!
//! A read-modify-write of one key (set returning the old value, update,
//! delete) is atomic: writers of the same key take the same lock stripe, read,
//! apply and release. Writers of different keys rarely share a stripe, and
//! readers take no lock at all (sled reads are consistent per key).

use std::sync::{Arc, Mutex, MutexGuard};

use super::records::StateRecord;
use super::{Store, StoreError, Ticket, codec, layout};

/// Lock stripes for read-modify-write of one key.
const STRIPES: usize = 256;

/// State values, by scope and key.
#[derive(Clone)]
pub struct StateValues {
    store: Arc<Store>,
    stripes: Arc<[Mutex<()>]>,
}

/// What a write did: the value before it, and the ticket that makes it
/// durable (none when nothing was written: removing a missing key).
pub struct Written {
    pub old: Option<Vec<u8>>,
    pub ticket: Option<Ticket>,
}

impl StateValues {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        self.stripes[(h as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The JSON stored under (scope, key).
    pub fn get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rec: Option<StateRecord> = self.store.get(&layout::state_value(scope, key))?;
        Ok(rec.map(|r| r.json))
    }

    /// Replaces the value with what `change` makes of the current one (`None`
    /// removes it). `change` runs under the key's lock and may refuse with an
    /// error of its own, which is returned untouched and writes nothing.
    pub fn modify<E: From<StoreError>>(
        &self,
        scope: &str,
        key: &str,
        change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Written, E> {
        let k = layout::state_value(scope, key);
        let _held = self.stripe(&k);
        let old = self
            .store
            .get::<StateRecord>(&k)
            .map_err(E::from)?
            .map(|r| r.json);
        let new = change(old.as_deref())?;
        let written = match &new {
            Some(json) => self
                .store
                .put(k, super::record(&StateRecord { json: json.clone() })),
            None if old.is_some() => self.store.remove(k),
            None => return Ok(Written { old, ticket: None }),
        };
        let ticket = written.map_err(E::from)?;
        Ok(Written {
            old,
            ticket: Some(ticket),
        })
    }

    /// Every value of one scope, in key order.
    pub fn list(&self, scope: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.store.scan(layout::state_scope(scope)) {
            let (_, bytes) = item?;
            let rec: StateRecord = codec::decode(&bytes)?;
            out.push(rec.json);
        }
        Ok(out)
    }

    /// Every scope holding at least one value, sorted (by length, then bytes:
    /// callers sort as they need). One read per scope, not per value.
    pub fn scopes(&self) -> Result<Vec<String>, StoreError> {
        self.store.distinct(vec![layout::STATE_VALUES], |k| {
            let (scope, _) = layout::parse_state_value(k)?;
            let shared = layout::state_scope(&scope);
            Some((scope, shared))
        })
    }

    /// The store under these values (to wait for a write's sync).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_scopes_list_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let values = StateValues::new(Arc::new(Store::open(dir.path()).unwrap()));
        let put = |s: &str, k: &str, v: &str| {
            values
                .modify::<StoreError>(s, k, |_| Ok(Some(v.as_bytes().to_vec())))
                .unwrap()
        };
        assert!(put("b", "1", "1").old.is_none());
        assert_eq!(put("b", "1", "2").old.as_deref(), Some(&b"1"[..]));
        put("b", "2", "3");
        put("a", "x", "4");
        put("ab", "x", "5");
        assert_eq!(
            values.list("b").unwrap(),
            vec![b"2".to_vec(), b"3".to_vec()]
        );
        assert_eq!(values.list("a").unwrap(), vec![b"4".to_vec()]);
        let mut scopes = values.scopes().unwrap();
        scopes.sort();
        assert_eq!(scopes, ["a", "ab", "b"]);
        let gone = values.modify::<StoreError>("a", "x", |_| Ok(None)).unwrap();
        assert_eq!(gone.old.as_deref(), Some(&b"4"[..]));
        assert_eq!(values.get("a", "x").unwrap(), None);
        let nothing = values.modify::<StoreError>("a", "x", |_| Ok(None)).unwrap();
        assert!(nothing.old.is_none() && nothing.ticket.is_none());
    }
}
