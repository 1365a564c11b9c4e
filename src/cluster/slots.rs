//! Which engine fires a slot of a schedule several engines share (the mesh's
//! [`SlotClaims`]): the one whose claim JetStream stores first.
//!
//! A claim is a KV create (an update expecting no revision) of
//! `<sha256(schedule) hex>.<slot ms>` in the bucket `qmesh_<cluster>_cron`
//! (value: the claiming engine's id). It succeeds for one writer only, and only after JetStream's ack, i.e. once
//! the key is on the bucket's replicas (fsync'ed first with `sync_interval:
//! always`): an engine that crashes after claiming leaves the key behind,
//! so no engine (itself restarted included) fires that slot again. Keys
//! expire with the bucket's `max_age`, so they do not pile up; a slot older
//! than [`CLAIMABLE_FOR`] is never claimed, since its key may be gone.
//!
//! An error (NATS unreachable, no quorum, an ack lost) is an error to the
//! caller, which then does not fire the slot: a lost ack may hide a claim
//! that was stored, so at most once is the promise, as for one engine.

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::{ClusterError, Names};
use crate::mesh::provided::{SlotClaimError, SlotClaims};

/// How long the bucket keeps a claim.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Slots older than this are not claimed: their key may have expired (an
/// hour of margin for clocks that differ between engines).
const CLAIMABLE_FOR: Duration = Duration::from_secs(23 * 3600);

pub(super) struct NatsSlotClaims {
    kv: async_nats::jetstream::kv::Store,
    engine_id: String,
}

impl NatsSlotClaims {
    pub(super) async fn open(
        client: &async_nats::Client,
        names: &Names,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let bucket = names.cron_bucket();
        let kv = super::kv::open_bucket(client, bucket, replicas, KEEP).await?;
        Ok(Self {
            kv,
            engine_id: names.engine_id.clone(),
        })
    }
}

/// A slot's key: the schedule hashed (any text, of any length, becomes a
/// valid KV token), then the slot.
fn key(schedule: &str, slot_ms: u64) -> String {
    let hash: String = Sha256::digest(schedule.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hash}.{slot_ms}")
}

impl SlotClaims for NatsSlotClaims {
    fn claim<'a>(
        &'a self,
        schedule: &'a str,
        slot_ms: u64,
    ) -> BoxFuture<'a, Result<bool, SlotClaimError>> {
        Box::pin(async move {
            let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
            if now_ms.saturating_sub(slot_ms) > CLAIMABLE_FOR.as_millis() as u64 {
                tracing::warn!(
                    slot_ms,
                    "cluster: a slot this old is not claimed (its claim may have expired)"
                );
                return Ok(false);
            }
            // An update expecting no previous revision: JetStream stores it
            // only if the key holds nothing, so one claimer wins. (`create`
            // would also re-create a deleted key, which claims never need,
            // and reads the entry back after a refusal, which could fail.)
            let value = self.engine_id.clone().into_bytes().into();
            match self.kv.update(key(schedule, slot_ms), value, 0).await {
                Ok(_) => Ok(true),
                // The key holds a claim: another engine came first.
                Err(e) if super::kv::revision_moved(&e) => Ok(false),
                Err(e) => Err(SlotClaimError(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn a_key_is_a_valid_token_whatever_the_schedule() {
        let k = key("default\0billing::run\0*/5 * * * * *", 1_000);
        let (hash, slot) = k.split_once('.').unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(slot, "1000");
        assert_ne!(k, key("default\0billing::run\0*/6 * * * * *", 1_000));
    }
}
