//! JSON values in a JetStream KV bucket every engine of a cluster reads and
//! writes: what shared state (`state.rs`) and shared streams (`streams.rs`)
//! have in common.
//!
//! - Keys: a value's path of names, each base64url (no padding: KV keys
//!   allow only `[-/_=.A-Za-z0-9]`) as one token, then `k` and its last
//!   part, e.g. `<b64(scope)>.k<b64(key)>` (the `k` keeps an empty last
//!   part a non-empty token). Every value under one path of names is under
//!   one subject prefix, so a listing asks the server for that prefix only.
//! - A write is a compare-and-set: read the key's last entry (value and
//!   revision) from the stream leader, apply the change, then `update` with
//!   that revision (revision 0: the key must not exist) or
//!   `delete_expect_revision`. A conflict (another engine wrote first) reads
//!   again and retries, up to [`MAX_TRIES`], and so does a write no stream
//!   took (NATS found no responder: not stored); writers of one key on this
//!   engine take a lock stripe first, so only engines race each other.
//! - A write is answered once JetStream acknowledged it: stored on the
//!   bucket's replicas (fsync'ed first with `sync_interval: always`), so
//!   there is nothing more to wait for and `durable` changes nothing.
//! - Reads go to the stream leader (not the KV's direct gets, which a
//!   lagging replica may answer), so a read after an acknowledged write on
//!   any engine sees it.

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, ClusterConfig, ClusterError};
use crate::module::{BackendError, Refused, ValueChange, ValueWritten};
use async_nats::jetstream::kv;

/// Compare-and-set attempts of one write before it gives up.
const MAX_TRIES: u32 = 40;
/// Lock stripes serialising this engine's writers of one key.
const STRIPES: usize = 256;
/// Values read at once by a listing.
const LIST_READS: usize = 16;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The key prefix of every value under the path `names` (empty: the whole
/// bucket): each name's token and a dot.
pub(super) fn prefix(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{}.", b64().encode(n)))
        .collect()
}

/// The bucket key of the value at `names`, then `last`.
pub(super) fn key(names: &[&str], last: &str) -> String {
    format!("{}k{}", prefix(names), b64().encode(last))
}

/// The path of names a bucket key holds (without its last part).
pub(super) fn names_of(key: &str) -> Option<Vec<String>> {
    let (names, _) = key.rsplit_once('.')?;
    names
        .split('.')
        .map(|t| String::from_utf8(b64().decode(t).ok()?).ok())
        .collect()
}

/// A key's last part, as bytes (what listings sort by, as the embedded
/// store does).
fn last_of(key: &str) -> Vec<u8> {
    let token = key.rsplit_once('.').map_or(key, |(_, t)| t);
    b64()
        .decode(token.strip_prefix('k').unwrap_or(token))
        .unwrap_or_default()
}

/// One KV bucket of JSON values.
pub(super) struct KvValues {
    /// What the bucket holds, for messages ("state", "streams").
    what: &'static str,
    kv: kv::Store,
    client: async_nats::Client,
    stripes: Arc<[Arc<tokio::sync::Mutex<()>>]>,
}

impl Cluster {
    /// Opens (or creates) the bucket `qmesh_<cluster>_<what>`.
    pub(super) async fn values(
        &self,
        config: &ClusterConfig,
        what: &'static str,
    ) -> Result<Arc<KvValues>, ClusterError> {
        let bucket = format!("qmesh_{}_{what}", self.names.cluster);
        let replicas = config.replicas;
        let kv =
            super::kv::open_bucket(&self.client, bucket.clone(), replicas, Duration::ZERO).await?;
        tracing::info!(%bucket, replicas, "{what} on the cluster's JetStream");
        Ok(Arc::new(KvValues {
            what,
            kv,
            client: self.client.clone(),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }))
    }
}

/// A key's last entry: its value (`None`: deleted or never set) and the
/// revision a compare-and-set expects (0: the key was never written).
struct Current {
    value: Option<Bytes>,
    revision: u64,
}

impl KvValues {
    fn shared(&self, doing: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::Shared(format!(
            "cannot {doing} the cluster's {} bucket {}: {e}",
            self.what, self.kv.name
        ))
    }

    /// Refuses at once while this engine is cut off from NATS, rather than
    /// after the JetStream client's timeout.
    fn connected(&self, doing: &str) -> Result<(), BackendError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(self.shared(
                doing,
                format!("this engine is not connected to NATS ({state})"),
            )),
        }
    }

    fn stripe(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        use std::hash::BuildHasher;
        let h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(key);
        self.stripes[(h as usize) % STRIPES].clone()
    }

    /// The key's last entry, from the stream leader.
    async fn current(&self, key: &str) -> Result<Current, BackendError> {
        let (value, revision) = super::kv::last_entry(&self.kv, key)
            .await
            .map_err(|e| self.shared("read", e))?;
        Ok(Current { value, revision })
    }

    /// The value under `key`.
    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.connected("read")?;
        Ok(self.current(key).await?.value.map(|b| b.to_vec()))
    }

    /// Replaces the value under `key` with what `change` makes of it, by
    /// compare-and-set on the key's revision.
    pub(super) async fn modify(
        &self,
        key: String,
        mut change: ValueChange,
    ) -> Result<ValueWritten, Refused> {
        self.connected("write")?;
        let stripe = self.stripe(&key);
        let _held = stripe.lock().await;
        // Why the last attempt did not write, once one did not.
        let mut last_miss = String::new();
        for attempt in 1..=MAX_TRIES {
            let current = self.current(&key).await?;
            let old = current.value.map(|b| b.to_vec());
            let new = change(old.as_deref())?;
            let wrote = match new {
                Some(bytes) => self
                    .kv
                    .update(&key, bytes.into(), current.revision)
                    .await
                    .map(|_| ()),
                None if old.is_some() => {
                    self.kv
                        .delete_expect_revision(&key, Some(current.revision))
                        .await
                }
                None => Ok(()),
            };
            match wrote {
                Ok(()) => {
                    return Ok(ValueWritten {
                        old,
                        until_durable: None,
                    });
                }
                Err(e)
                    if super::kv::revision_moved(&e)
                        || super::kv::revision_not_checked(&e)
                        || super::kv::reached_no_stream(&e) =>
                {
                    // Another engine wrote first (or nothing took the write):
                    // read again, after a short, random pause so the two do
                    // not meet again at once.
                    last_miss = e.to_string();
                    let pause = rand::rng().random_range(0..=attempt.min(10) * 2);
                    tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
                }
                Err(e) => {
                    return Err(self
                        .shared(
                            "write (the write was not acknowledged; it may or may not \
                             have been applied) to",
                            e,
                        )
                        .into());
                }
            }
        }
        Err(self
            .shared(
                "write",
                format!(
                    "{MAX_TRIES} attempts lost to other writers of the key or found no \
                     stream (the last: {last_miss}); nothing was written"
                ),
            )
            .into())
    }

    /// Every live key under `prefix` (from [`prefix`]; empty: the whole
    /// bucket). The server is asked for that subject prefix only: a view
    /// of the bucket whose key prefix is longer lists just those keys.
    pub(super) async fn keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.connected("list")?;
        let mut under = self.kv.clone();
        under.prefix = format!("{}{prefix}", self.kv.prefix);
        let keys = under.keys().await.map_err(|e| self.shared("list", e))?;
        keys.map_ok(|rest| format!("{prefix}{rest}"))
            .try_collect()
            .await
            .map_err(|e| self.shared("list", e))
    }

    /// Every value under `prefix`, in the order of their keys' last parts
    /// (as bytes, like the embedded store's key order).
    pub(super) async fn list(
        self: Arc<Self>,
        prefix: String,
    ) -> Result<Vec<Vec<u8>>, BackendError> {
        let mut keys = self.keys(&prefix).await?;
        keys.sort_by_cached_key(|k| last_of(k));
        let values: Vec<Option<Bytes>> = futures_util::stream::iter(keys)
            .map(|k| {
                let this = self.clone();
                async move { this.current(&k).await.map(|c| c.value) }
            })
            .buffered(LIST_READS)
            .try_collect()
            .await?;
        Ok(values.into_iter().flatten().map(|b| b.to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_name_their_path() {
        for names in [
            vec!["a"],
            vec!["orders.eu"],
            vec!["naïve::x", "a b/c*>"],
            vec!["s", "g.1"],
        ] {
            for last in ["", "k.1", "a b/c*>"] {
                let k = key(&names, last);
                assert!(
                    k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                    "{k}"
                );
                assert!(!k.starts_with('.') && !k.ends_with('.'), "{k}");
                assert_eq!(k.matches('.').count(), names.len(), "{k}");
                assert!(k.starts_with(&prefix(&names)), "{k}");
                assert_eq!(
                    names_of(&k),
                    Some(names.iter().map(|n| n.to_string()).collect())
                );
                assert_eq!(last_of(&k), last.as_bytes());
            }
        }
        assert_ne!(key(&["ab"], "c"), key(&["a"], "bc"));
        assert_ne!(key(&["a", "b"], "c"), key(&["a"], "bc"));
        assert!(!key(&["ab"], "").starts_with(&prefix(&["a"])));
    }
}
