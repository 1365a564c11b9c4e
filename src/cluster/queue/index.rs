//! What the operator views and actions of the JetStream queues look up
//! rather than scan for: where a job is by its receipt, and which queues
//! are paused. Two KV buckets, read from their stream leader (a KV direct
//! get may be answered by a replica that lags behind an acknowledged write):
//!
//! - `qmesh_<cluster>_receipts`: `<receipt>` → the job's [`Place`]. Written
//!   after the job's PubAck and before its receipt is answered (the job
//!   stream's sequence; for a delayed job, its scheduled message's), for
//!   every job of a `queue::enqueue_many` before the batch is answered,
//!   again when a delayed job is first looked up after it fired (its job
//!   message's sequence), when the job is dead-lettered (the dead
//!   letter's sequence) and redriven (its new sequence); a flow's parent
//!   while it waits (its waiting message's) and once released. An entry whose
//!   message is gone is a job that completed, or was cancelled, purged or
//!   discarded: JetStream keeps nothing of it. Entries expire [`RECEIPTS_KEPT`] after
//!   their last write.
//! - `qmesh_<cluster>_queues`: `<b64(queue)>` → `{"paused": true}` for each
//!   paused queue (deleted on resume), so that a consumer created after the
//!   pause, and a queue without jobs yet, are paused too.

use base64::Engine as _;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

use super::super::kv;
use super::{JobKey, Lane, Shared, b64};
use crate::protocol::{ErrorBody, codes};

/// How long a receipt's entry is kept after its last write: `queue::get`
/// and `queue::cancel` find a job that waits longer than this only by
/// `queue::peek`.
pub(super) const RECEIPTS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// How far ahead a paused consumer's `pause_until` is set: "until resumed".
const PAUSED_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long a consumer's leader may take to apply a pause or resume.
const PAUSE_APPLIED_WITHIN: Duration = Duration::from_secs(5);

/// Where a job is, by its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Place {
    /// On the job stream at `seq` (unless acknowledged or purged since).
    Jobs { seq: u64 },
    /// A delayed job's scheduled message, on the job stream at `seq` until
    /// it is due; the stream then publishes the job on its lane's subject
    /// (a new sequence, found by its receipt and indexed as `Jobs` on the
    /// next lookup) and deletes the schedule. `target` is that subject.
    Delayed { seq: u64, target: String },
    /// On the dead-letter stream at `seq` (unless discarded since).
    Dead { seq: u64 },
    /// A flow's parent waiting for its children: its message on the job
    /// stream at `seq` (`qmesh.<cluster>.waiting.<queue>.<receipt>`, read
    /// by no consumer) until its last child ends (`flows.rs`).
    Waiting { seq: u64 },
}

/// How long a receipt's indexing is sent again while JetStream answers
/// that it cannot take it yet (the JetStream client's own ack timeout).
const INDEX_RETRY_WITHIN: Duration = Duration::from_secs(5);

pub(super) fn nats_error(what: &str, e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        codes::QUEUE_ERROR,
        format!("cannot {what} on the cluster's JetStream: {e}"),
    )
}

/// A key's value in `bucket`, read from its stream leader (`None` when
/// absent or deleted), and its revision (0 when never written).
async fn read(
    bucket: &async_nats::jetstream::kv::Store,
    key: &str,
) -> Result<(Option<bytes::Bytes>, u64), ErrorBody> {
    crate::cluster::kv::last_entry(bucket, key)
        .await
        .map_err(|e| nats_error("read a bucket", e))
}

impl Shared {
    /// Records where the job of `receipt` is now, unless its entry moved
    /// past `revision` (0: unless it has one): `Ok(false)` when another
    /// write came first (the job was dead-lettered before its enqueue or
    /// redrive indexed it, or this is an idempotent enqueue's duplicate).
    /// Answered once replicated.
    pub(super) async fn index(
        &self,
        receipt: Uuid,
        place: Place,
        revision: u64,
    ) -> Result<bool, String> {
        let value = bytes::Bytes::from(serde_json::to_vec(&place).expect("a place encodes"));
        let started = std::time::Instant::now();
        loop {
            let e = match self
                .receipts
                .update(receipt.to_string(), value.clone(), revision)
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            if kv::revision_moved(&e) {
                return Ok(false);
            }
            // The leader cannot check revisions yet (just elected), or no
            // stream took the write (its interest not yet on this node):
            // nothing was stored, so the same write may be sent again.
            let transient = kv::revision_not_checked(&e) || kv::reached_no_stream(&e);
            if !transient || started.elapsed() >= INDEX_RETRY_WITHIN {
                return Err(e.to_string());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Records where the job of `receipt` is now, whatever was there.
    pub(super) async fn index_anyway(&self, receipt: Uuid, place: Place) -> Result<(), String> {
        let value = serde_json::to_vec(&place).expect("a place encodes");
        self.receipts
            .put(receipt.to_string(), value.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Where the job of `receipt` was last recorded, and the entry's revision.
    pub(super) async fn locate_at(&self, receipt: Uuid) -> Result<(Option<Place>, u64), ErrorBody> {
        let (value, revision) = read(&self.receipts, &receipt.to_string()).await?;
        Ok((
            value.and_then(|b| serde_json::from_slice(&b).ok()),
            revision,
        ))
    }

    /// Where the job of `receipt` was last recorded.
    pub(super) async fn locate(&self, receipt: Uuid) -> Result<Option<Place>, ErrorBody> {
        Ok(self.locate_at(receipt).await?.0)
    }

    pub(super) async fn is_paused(&self, queue: &str) -> Result<bool, ErrorBody> {
        Ok(read(&self.queue_flags, &b64().encode(queue))
            .await?
            .0
            .is_some())
    }

    /// Every paused queue.
    pub(super) async fn paused_queues(&self) -> Result<HashSet<String>, ErrorBody> {
        let mut keys = match self.queue_flags.keys().await {
            Ok(keys) => keys,
            Err(e) => return Err(nats_error("list the paused queues", e)),
        };
        let mut out = HashSet::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats_error("list the paused queues", e))?;
            if let Some(q) = b64()
                .decode(&key)
                .ok()
                .and_then(|q| String::from_utf8(q).ok())
            {
                out.insert(q);
            }
        }
        Ok(out)
    }

    /// Stores the queue's pause flag (set, or deleted on resume).
    pub(super) async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), ErrorBody> {
        let key = b64().encode(queue);
        let done = if paused {
            let flag = serde_json::to_vec(&serde_json::json!({"paused": true})).expect("encodes");
            let put = self.queue_flags.put(key, flag.into()).await;
            put.map(|_| ()).map_err(|e| e.to_string())
        } else {
            let purge = self.queue_flags.purge(key).await;
            purge.map_err(|e| e.to_string())
        };
        done.map_err(|e| nats_error("store the queue's pause", e))
    }

    /// Pauses (until resumed) or resumes one consumer of the job stream.
    pub(super) async fn pause_consumer(&self, name: &str, paused: bool) -> Result<(), String> {
        let until = match paused {
            true => Some(
                async_nats::datetime::add_std_duration(async_nats::datetime::now(), PAUSED_FOR)
                    .map_err(|e| e.to_string())?,
            ),
            false => None,
        };
        self.hold_consumer(name, until).await
    }

    /// Pauses one consumer of the job stream until `until_ms` (ms since the
    /// epoch: a throttle's end, `throttle.rs`); the server resumes it then.
    pub(super) async fn throttle_consumer(&self, name: &str, until_ms: u64) -> Result<(), String> {
        let until = async_nats::datetime::from_nanos(i128::from(until_ms) * 1_000_000)
            .map_err(|e| e.to_string())?;
        self.hold_consumer(name, Some(until)).await
    }

    /// Pauses one consumer of the job stream until `until`, or resumes it
    /// (`None`); answers once its leader reports it (or the pause is over).
    async fn hold_consumer(
        &self,
        name: &str,
        until: Option<async_nats::datetime::DateTime>,
    ) -> Result<(), String> {
        let paused = until.is_some();
        let done = match until {
            Some(until) => self.jobs.pause_consumer(name, until).await,
            None => self.jobs.resume_consumer(name).await,
        };
        done.map_err(|e| e.to_string())?;
        // The API answers once the meta leader took the change; the
        // consumer's own leader applies it a moment later, and a job
        // published meanwhile could still be delivered. Its info comes
        // from that leader.
        let deadline = tokio::time::Instant::now() + PAUSE_APPLIED_WITHIN;
        loop {
            match self.jobs.consumer_info(name).await {
                Ok(info) if info.paused == paused => return Ok(()),
                // A throttle that ended meanwhile: nothing left to hold.
                Ok(_) if until.is_some_and(|u| u <= async_nats::datetime::now()) => return Ok(()),
                Ok(_) if tokio::time::Instant::now() < deadline => {}
                Ok(_) => {
                    return Err(format!(
                        "consumer {name} did not report its new pause within {PAUSE_APPLIED_WITHIN:?}"
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A consumer just made for `key`'s `lane` (a priority band or FIFO
    /// lane, maybe the first of its kind since the pause) follows its
    /// queue's pause: the flag is read after the consumer exists, so a pause
    /// stored concurrently either is seen here or lists this consumer among
    /// those it pauses.
    pub(super) async fn follow_pause(&self, key: &JobKey, lane: Lane) -> Result<(), String> {
        if self.is_paused(&key.queue).await.map_err(|e| e.message)? {
            self.pause_consumer(&key.consumer(lane), true).await?;
        } else if let Some(until) =
            (self.throttled_until(&key.queue).await).map_err(|e| e.message)?
        {
            // Likewise its throttle (`throttle.rs`).
            self.throttle_consumer(&key.consumer(lane), until).await?;
        }
        Ok(())
    }
}
