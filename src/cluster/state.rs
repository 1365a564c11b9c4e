//! State shared by every engine of a cluster (`[cluster] state =
//! "jetstream"`): the state module's values in the JetStream KV bucket
//! `qmesh_<cluster>_state`, behind the `module::StateBackend` seam.
//!
//! - One key per (scope, key): `<b64(scope)>.k<b64(key)>` (base64url, no
//!   padding: KV keys allow only `[-/_=.A-Za-z0-9]`; the `k` keeps an empty
//!   key a non-empty token).
//! - A write is a compare-and-set: read the key's last entry (value and
//!   revision) from the stream leader, apply the change, then `update` with
//!   that revision (revision 0: the key must not exist) or
//!   `delete_expect_revision`. A conflict (another engine wrote first) reads
//!   again and retries, up to [`MAX_TRIES`]; writers of one key on this
//!   engine take a lock stripe first, so only engines race each other.
//! - A write is answered once JetStream acknowledged it: stored on the
//!   bucket's replicas (fsync'ed first with `sync_interval: always`), so
//!   there is nothing more to wait for and `durable` changes nothing.
//! - Reads go to the stream leader (not the KV's direct gets, which a
//!   lagging replica may answer), so a read after an acknowledged write on
//!   any engine sees it.

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, ClusterConfig, ClusterError};
use crate::module::{BackendError, Refused, StateBackend, ValueChange, ValueWritten};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;

/// Compare-and-set attempts of one write before it gives up.
const MAX_TRIES: u32 = 40;
/// Lock stripes serialising this engine's writers of one key.
const STRIPES: usize = 256;
/// Values of a scope read at once by `list`.
const LIST_READS: usize = 16;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The bucket key of (scope, key).
fn kv_key(scope: &str, key: &str) -> String {
    format!("{}.k{}", b64().encode(scope), b64().encode(key))
}

/// The scope a bucket key belongs to.
fn scope_of(kv_key: &str) -> Option<String> {
    let (scope, _) = kv_key.split_once('.')?;
    String::from_utf8(b64().decode(scope).ok()?).ok()
}

/// The state bucket, as the state module's backend.
pub(super) struct KvState {
    kv: kv::Store,
    client: async_nats::Client,
    stripes: Arc<[Arc<tokio::sync::Mutex<()>>]>,
}

impl Cluster {
    /// Opens (or creates) the state bucket.
    pub(crate) async fn state(
        &self,
        config: &ClusterConfig,
    ) -> Result<Arc<dyn StateBackend>, ClusterError> {
        let bucket = format!("qmesh_{}_state", self.names.cluster);
        let replicas = config.replicas;
        let kv =
            super::kv::open_bucket(&self.client, bucket.clone(), replicas, Duration::ZERO).await?;
        tracing::info!(%bucket, replicas, "state on the cluster's JetStream");
        Ok(Arc::new(SharedState(Arc::new(KvState {
            kv,
            client: self.client.clone(),
            stripes: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }))))
    }
}

/// A key's last entry: its value (`None`: deleted or never set) and the
/// revision a compare-and-set expects (0: the key was never written).
struct Current {
    value: Option<Bytes>,
    revision: u64,
}

impl KvState {
    fn shared(&self, doing: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::Shared(format!(
            "cannot {doing} the cluster's state bucket {}: {e}",
            self.kv.name
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
        let subject = format!("{}{key}", self.kv.prefix);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => {
                let removed = m
                    .headers
                    .get("KV-Operation")
                    .is_some_and(|op| op.as_str() != "PUT");
                Ok(Current {
                    value: (!removed).then_some(m.payload),
                    revision: m.sequence,
                })
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Current {
                value: None,
                revision: 0,
            }),
            Err(e) => Err(self.shared("read", e)),
        }
    }

    async fn modify(&self, key: String, mut change: ValueChange) -> Result<ValueWritten, Refused> {
        self.connected("write")?;
        let stripe = self.stripe(&key);
        let _held = stripe.lock().await;
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
                Err(e) if super::kv::revision_moved(&e) || super::kv::revision_not_checked(&e) => {
                    // Another engine wrote first: read again, after a short,
                    // random pause so the two do not meet again at once.
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
                format!("{MAX_TRIES} compare-and-set attempts lost to other writers of the key; nothing was written"),
            )
            .into())
    }

    /// Every bucket key, live ones only.
    async fn keys(&self) -> Result<Vec<String>, BackendError> {
        self.connected("list")?;
        let keys = self.kv.keys().await.map_err(|e| self.shared("list", e))?;
        keys.try_collect().await.map_err(|e| self.shared("list", e))
    }

    async fn list(self: Arc<Self>, scope: String) -> Result<Vec<Vec<u8>>, BackendError> {
        let prefix = format!("{}.", b64().encode(&scope));
        let mut keys: Vec<String> = self
            .keys()
            .await?
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        // Key order, like the embedded store: the decoded keys' bytes.
        keys.sort_by_cached_key(|k| b64().decode(&k[prefix.len() + 1..]).unwrap_or_default());
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

/// The bucket as the state module sees it: a seam method hands its work to
/// an owned handle, so the future outlives the call.
pub(super) struct SharedState(Arc<KvState>);

impl StateBackend for SharedState {
    fn get(
        &self,
        scope: &str,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>> {
        let (this, key) = (self.0.clone(), kv_key(scope, key));
        Box::pin(async move {
            this.connected("read")?;
            Ok(this.current(&key).await?.value.map(|b| b.to_vec()))
        })
    }

    fn modify(
        &self,
        scope: &str,
        key: &str,
        _durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>> {
        let (this, key) = (self.0.clone(), kv_key(scope, key));
        Box::pin(async move { this.modify(key, change).await })
    }

    fn list(&self, scope: &str) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>> {
        Box::pin(self.0.clone().list(scope.to_owned()))
    }

    fn scopes(&self) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut scopes: Vec<String> = this
                .keys()
                .await?
                .iter()
                .filter_map(|k| scope_of(k))
                .collect();
            scopes.sort();
            scopes.dedup();
            Ok(scopes)
        })
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_keys_and_name_their_scope() {
        for (scope, key) in [("a", ""), ("orders.eu", "k.1"), ("naïve::x", "a b/c*>")] {
            let k = kv_key(scope, key);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{k}"
            );
            assert!(!k.starts_with('.') && !k.ends_with('.'), "{k}");
            assert_eq!(k.matches('.').count(), 1, "{k}");
            assert_eq!(scope_of(&k).as_deref(), Some(scope));
        }
        assert_ne!(kv_key("ab", "c"), kv_key("a", "bc"));
    }
}
