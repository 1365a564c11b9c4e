//! The embedded store as the state module's backend (the default, and the
//! only one without `[cluster] state = "jetstream"`): every operation is done
//! before the call returns, so the futures it returns are ready, except the
//! wait for the sync that makes a durable write safe.

use futures_util::future::BoxFuture;

use crate::module::{BackendError, Refused, StateBackend, ValueChange, ValueWritten};
use crate::store::state::StateValues;

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl StateBackend for StateValues {
    fn get(
        &self,
        scope: &str,
        key: &str,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, BackendError>> {
        ready(StateValues::get(self, scope, key).map_err(BackendError::from))
    }

    fn modify(
        &self,
        scope: &str,
        key: &str,
        durable: bool,
        change: ValueChange,
    ) -> BoxFuture<'static, Result<ValueWritten, Refused>> {
        let written = match StateValues::modify(self, scope, key, change) {
            Ok(w) => w,
            Err(e) => return ready(Err(e)),
        };
        ready(Ok(ValueWritten::stored(
            written.old,
            written.ticket.filter(|_| durable),
            self.store(),
        )))
    }

    fn list(&self, scope: &str) -> BoxFuture<'static, Result<Vec<Vec<u8>>, BackendError>> {
        ready(StateValues::list(self, scope).map_err(BackendError::from))
    }

    fn scopes(&self) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        ready(StateValues::scopes(self).map_err(BackendError::from))
    }
}
