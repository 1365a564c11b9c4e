//! The realtime module's rows: one per open client connection whose route
//! has a disconnect handler, so a crash does not skip its disconnect. The
//! only door realtime has to the store: it sees records and ids, never keys.

use std::sync::Arc;
use uuid::Uuid;

use super::records::RealtimeConnRecord;
use super::{Store, StoreError, Ticket, codec, layout};

/// Open-connection rows, by connection id.
#[derive(Clone)]
pub struct ConnRows {
    store: Arc<Store>,
}

/// A row read back at start: its id, and its record or why it is unreadable.
pub type LeftRow = (Uuid, Result<RealtimeConnRecord, StoreError>);

impl ConnRows {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Writes (or rewrites) a connection's row; durable once `ticket` is.
    pub fn put(&self, id: &Uuid, rec: &RealtimeConnRecord) -> Result<Ticket, StoreError> {
        self.store
            .put(layout::realtime_conn(id), super::record(rec))
    }

    pub fn get(&self, id: &Uuid) -> Result<Option<RealtimeConnRecord>, StoreError> {
        self.store.get(&layout::realtime_conn(id))
    }

    pub fn remove(&self, id: &Uuid) -> Result<Ticket, StoreError> {
        self.store.remove(layout::realtime_conn(id))
    }

    /// Waits until `ticket`'s writes are on disk.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.store.durable(ticket).await
    }

    /// Every row, as the last run left them.
    pub fn all(&self) -> Vec<LeftRow> {
        self.store
            .scan([layout::REALTIME_CONNS])
            .filter_map(|r| r.ok())
            .filter_map(|(key, bytes)| {
                let id = layout::parse_realtime_conn(&key)?;
                Some((id, codec::decode(&bytes).map_err(StoreError::from)))
            })
            .collect()
    }
}
