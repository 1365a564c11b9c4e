//! Streams shared by every engine of a cluster (`[cluster] streams =
//! "jetstream"`): the streams module's items in the JetStream KV bucket
//! `qmesh_<cluster>_streams`, behind the `module::StreamBackend` seam.
//!
//! One key per (stream, group, item): `<b64(stream)>.<b64(group)>.k<b64(item)>`.
//! Reads, writes (compare-and-set on the key's revision, answered once
//! replicated) and listings are the bucket's, in `values.rs`, as state's
//! are: a group's items are listed from the keys under
//! `<b64(stream)>.<b64(group)>.`, a stream's groups from those under
//! `<b64(stream)>.`.

use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::values::{self, KvValues};
use super::{Cluster, ClusterConfig, ClusterError};
use crate::module::{
    BackendError, Refused, StreamBackend, StreamGroups, ValueChange, ValueWritten,
};

impl Cluster {
    /// Opens (or creates) the streams bucket.
    pub(crate) async fn streams(
        &self,
        config: &ClusterConfig,
    ) -> Result<Arc<dyn StreamBackend>, ClusterError> {
        Ok(Arc::new(SharedStreams(
            self.values(config, "streams").await?,
        )))
    }
}

/// The bucket as the streams module sees it.
struct SharedStreams(Arc<KvValues>);

/// The (stream, group) a bucket key belongs to.
fn group_of(key: &str) -> Option<(String, String)> {
    match <[String; 2]>::try_from(values::names_of(key)?) {
        Ok([stream, group]) => Some((stream, group)),
        Err(_) => None,
    }
}

impl StreamBackend for SharedStreams {
    fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>> {
        let (this, key) = (self.0.clone(), values::key(&[stream, group], item));
        Box::pin(async move { this.get(&key).await })
    }

    fn modify(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        _durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>> {
        let (this, key) = (self.0.clone(), values::key(&[stream, group], item));
        Box::pin(async move { this.modify(key, change).await })
    }

    fn list(
        &self,
        stream: &str,
        group: &str,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>> {
        Box::pin(self.0.clone().list(values::prefix(&[stream, group])))
    }

    fn groups(&self, stream: &str) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        let (this, prefix) = (self.0.clone(), values::prefix(&[stream]));
        Box::pin(async move {
            let groups: BTreeSet<String> = this
                .keys(&prefix)
                .await?
                .iter()
                .filter_map(|k| Some(group_of(k)?.1))
                .collect();
            Ok(groups.into_iter().collect())
        })
    }

    fn streams(&self) -> BoxFuture<'static, Result<StreamGroups, BackendError>> {
        let this = self.0.clone();
        Box::pin(async move {
            let mut streams: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (stream, group) in this.keys("").await?.iter().filter_map(|k| group_of(k)) {
                streams.entry(stream).or_default().insert(group);
            }
            Ok(streams
                .into_iter()
                .map(|(s, g)| (s, g.into_iter().collect()))
                .collect())
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
    fn a_key_names_its_stream_and_group() {
        for (stream, group, item) in [
            ("chat", "room-1", ""),
            ("a.b", "c.d", "e.f"),
            ("s", "g", "ü>*"),
        ] {
            let key = values::key(&[stream, group], item);
            assert_eq!(group_of(&key), Some((stream.to_owned(), group.to_owned())));
            assert!(key.starts_with(&values::prefix(&[stream, group])));
        }
        assert_eq!(group_of(&values::key(&["scope"], "key")), None);
    }
}
