//! The streams module's items: one JSON value per (stream, group, item). The
//! only door streams has to the store: it sees names and JSON bytes, never
//! store keys or sled types. Like `state.rs`, a read-modify-write of one item
//! is atomic (lock stripes), readers take no lock.

use std::sync::{Arc, Mutex, MutexGuard};

use super::records::StateRecord;
use super::state::Written;
use super::{Store, StoreError, codec, layout};

const STRIPES: usize = 256;

/// Stream items, by stream, group and item id.
#[derive(Clone)]
pub struct StreamItems {
    store: Arc<Store>,
    stripes: Arc<[Mutex<()>]>,
}

impl StreamItems {
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

    pub fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let rec: Option<StateRecord> = self.store.get(&layout::stream_item(stream, group, item))?;
        Ok(rec.map(|r| r.json))
    }

    /// Replaces the item with what `change` makes of the current one (`None`
    /// removes it), atomically; `change` may refuse with its own error.
    pub fn modify<E: From<StoreError>>(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Written, E> {
        let k = layout::stream_item(stream, group, item);
        let _held = self.stripe(&k);
        let old = self
            .store
            .get::<StateRecord>(&k)
            .map_err(E::from)?
            .map(|r| r.json);
        let new = change(old.as_deref())?;
        let written = match new {
            Some(json) => self.store.put(k, super::record(&StateRecord { json })),
            None if old.is_some() => self.store.remove(k),
            None => return Ok(Written { old, ticket: None }),
        };
        let ticket = written.map_err(E::from)?;
        Ok(Written {
            old,
            ticket: Some(ticket),
        })
    }

    /// Every item of one group, in item-id order.
    pub fn list(&self, stream: &str, group: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for entry in self.store.scan(layout::stream_group(stream, group)) {
            let (_, bytes) = entry?;
            let rec: StateRecord = codec::decode(&bytes)?;
            out.push(rec.json);
        }
        Ok(out)
    }

    /// The groups of one stream that hold an item: one read per group.
    pub fn groups(&self, stream: &str) -> Result<Vec<String>, StoreError> {
        self.store.distinct(layout::stream_prefix(stream), |k| {
            let (s, g, _) = layout::parse_stream_item(k)?;
            let shared = layout::stream_group(&s, &g);
            Some((g, shared))
        })
    }

    /// Every stream that holds an item: one read per stream.
    pub fn streams(&self) -> Result<Vec<String>, StoreError> {
        self.store.distinct(vec![layout::STREAM_ITEMS], |k| {
            let (s, _, _) = layout::parse_stream_item(k)?;
            let shared = layout::stream_prefix(&s);
            Some((s, shared))
        })
    }

    /// The store under these items (to wait for a write's sync).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}
