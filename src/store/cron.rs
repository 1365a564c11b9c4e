//! The cron module's positions: the last slot decided per cron trigger id.
//! The only door cron has to the store: it sees trigger ids and slot times,
//! never store keys or sled types.

use std::sync::Arc;

use super::records::CronRecord;
use super::{Store, StoreError, Ticket, layout};

/// Cron positions, by trigger id.
#[derive(Clone)]
pub struct CronPositions {
    store: Arc<Store>,
}

impl CronPositions {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The last slot decided for `trigger_id` (ms since the epoch), if any.
    pub fn last_slot(&self, trigger_id: &str) -> Result<Option<u64>, StoreError> {
        let rec: Option<CronRecord> = self.store.get(&layout::cron_position(trigger_id))?;
        Ok(rec.map(|r| r.last_slot_ms))
    }

    /// Records `slot_ms` as decided and asks for a sync; durable once the
    /// returned ticket is.
    pub fn decide(&self, trigger_id: &str, slot_ms: u64) -> Result<Ticket, StoreError> {
        let ticket = self.store.put(
            layout::cron_position(trigger_id),
            super::record(&CronRecord {
                last_slot_ms: slot_ms,
            }),
        )?;
        self.store.want(ticket);
        Ok(ticket)
    }

    /// Removes every position whose last slot is before `cutoff_ms` (trigger
    /// ids not bound for that long: SDKs draw a new id per registration, so
    /// ids of workers long gone would otherwise pile up). Returns how many.
    pub fn forget_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.store.scan([layout::CRON_POSITIONS]) {
            let (k, v) = item?;
            let rec: CronRecord = super::codec::decode(&v)?;
            if rec.last_slot_ms < cutoff_ms {
                batch.remove(k);
                n += 1;
            }
        }
        if n > 0 {
            self.store.apply(batch)?;
        }
        Ok(n)
    }

    /// Waits until `ticket`'s writes are on disk.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.store.durable(ticket).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_decided_slot_reads_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let p = CronPositions::new(Arc::new(Store::open(dir.path()).unwrap()));
            assert_eq!(p.last_slot("t").unwrap(), None);
            p.decide("t", 1_000).unwrap();
            let t = p.decide("t", 2_000).unwrap();
            p.durable(t).await.unwrap();
        }
        let p = CronPositions::new(Arc::new(Store::open(dir.path()).unwrap()));
        assert_eq!(p.last_slot("t").unwrap(), Some(2_000));
        assert_eq!(p.last_slot("other").unwrap(), None);
        p.decide("old", 500).unwrap();
        assert_eq!(p.forget_before(1_000).unwrap(), 1);
        assert_eq!(p.last_slot("old").unwrap(), None);
        assert_eq!(p.last_slot("t").unwrap(), Some(2_000));
    }
}
