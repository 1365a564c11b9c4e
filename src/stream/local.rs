//! The embedded store as the streams module's backend (the default, and the
//! only one without `[cluster] streams = "jetstream"`): every operation is
//! done before the call returns, so the futures it returns are ready, except
//! the wait for the sync that makes a durable write safe.

use futures_util::future::BoxFuture;

use crate::module::{
    BackendError, Refused, StreamBackend, StreamGroups, ValueChange, ValueWritten,
};
use crate::store::StoreError;
use crate::store::stream::StreamItems;

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl StreamBackend for StreamItems {
    fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>> {
        ready(StreamItems::get(self, stream, group, item).map_err(BackendError::from))
    }

    fn modify(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>> {
        let written = match StreamItems::modify(self, stream, group, item, change) {
            Ok(w) => w,
            Err(e) => return ready(Err(e)),
        };
        ready(Ok(ValueWritten::stored(
            written.old,
            written.ticket.filter(|_| durable),
            self.store(),
        )))
    }

    fn list(
        &self,
        stream: &str,
        group: &str,
    ) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>> {
        ready(StreamItems::list(self, stream, group).map_err(BackendError::from))
    }

    fn groups(&self, stream: &str) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        ready(StreamItems::groups(self, stream).map_err(BackendError::from))
    }

    fn streams(&self) -> BoxFuture<'static, Result<StreamGroups, BackendError>> {
        ready(streams_and_groups(self).map_err(BackendError::from))
    }
}

/// Every stream with its groups: one read per stream, then one per group.
fn streams_and_groups(items: &StreamItems) -> Result<StreamGroups, StoreError> {
    let mut all = Vec::new();
    for name in items.streams()? {
        let groups = items.groups(&name)?;
        all.push((name, groups));
    }
    Ok(all)
}
