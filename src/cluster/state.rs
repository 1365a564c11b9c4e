//! State shared by every engine of a cluster (`[cluster] state =
//! "jetstream"`): the state module's values in the JetStream KV bucket
//! `qmesh_<cluster>_state`, behind the `module::StateBackend` seam.
//!
//! One key per (scope, key): `<b64(scope)>.k<b64(key)>`. Reads, writes
//! (compare-and-set on the key's revision, answered once replicated) and
//! listings are the bucket's, in `values.rs`; a scope's values are listed
//! from the keys under `<b64(scope)>.`.

use futures_util::future::BoxFuture;
use std::sync::Arc;

use super::values::{self, KvValues};
use super::{Cluster, ClusterConfig, ClusterError};
use crate::module::{BackendError, Refused, StateBackend, ValueChange, ValueWritten};

impl Cluster {
    /// Opens (or creates) the state bucket.
    pub(crate) async fn state(
        &self,
        config: &ClusterConfig,
    ) -> Result<Arc<dyn StateBackend>, ClusterError> {
        Ok(Arc::new(SharedState(self.values(config, "state").await?)))
    }
}

/// The bucket as the state module sees it: a seam method hands its work to
/// an owned handle, so the future outlives the call.
struct SharedState(Arc<KvValues>);

impl StateBackend for SharedState {
    fn get(
        &self,
        scope: &str,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>> {
        let (this, key) = (self.0.clone(), values::key(&[scope], key));
        Box::pin(async move { this.get(&key).await })
    }

    fn modify(
        &self,
        scope: &str,
        key: &str,
        _durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>> {
        let (this, key) = (self.0.clone(), values::key(&[scope], key));
        Box::pin(async move { this.modify(key, change).await })
    }

    fn list(&self, scope: &str) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>> {
        Box::pin(self.0.clone().list(values::prefix(&[scope])))
    }

    fn scopes(&self) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut scopes: Vec<String> = this
                .keys("")
                .await?
                .iter()
                .filter_map(|k| values::names_of(k)?.into_iter().next())
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
