//! Streams: JSON items by (stream, group, item), kept in the embedded store,
//! and the `stream`, `stream:join` and `stream:leave` trigger types (iii's
//! `iii-stream`, its worker-facing half).
//!
//! - `functions.rs`: `stream::set/get/delete/list/list_groups/list_all/send/update`
//!   with iii's result shapes and error codes;
//! - `watchers.rs`: the `stream` trigger type's bindings and the fan-out of
//!   `create`/`update`/`delete`/`event` envelopes;
//! - `module.rs`: its `Module` impl.
//!
//! Not yet: the client WebSocket (`[streams] listen`, iii's port 3112) that
//! browsers join groups on; until it exists `stream:join` and `stream:leave`
//! accept bindings and never fire. Nor the delegation to custom providers
//! (`stream::<op>(<name>)` functions).
//!
//! Durability is state's: writes are applied before the reply, and a durable
//! call (the default) waits for the sync that covers it.
//!
//! Architecture invariant: streams know the mesh, their store door
//! (`store::stream::StreamItems`), the update ops in `protocol::update_ops`
//! and `module.rs`; nothing of the engine root, the edge or other modules.

mod functions;
pub(crate) mod module;
mod watchers;

use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

use crate::store::stream::StreamItems;
pub(crate) use module::StreamsModule;

/// `[streams]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// Whether a write's reply waits until it is on disk; a call's `durable` overrides it.
    pub durable: bool,
    /// Largest item, as JSON bytes; larger ones are refused (`STREAM_SET_ERROR`,
    /// `STREAM_UPDATE_ERROR`).
    pub max_item_bytes: usize,
    /// Most ops one `stream::update` may carry.
    pub max_update_ops: usize,
    /// How long a binding's condition function may take; a slower one skips the event.
    #[serde(with = "humantime_serde")]
    pub condition_timeout: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            durable: true,
            max_item_bytes: 1 << 20,
            max_update_ops: 1024,
            condition_timeout: Duration::from_secs(30),
        }
    }
}

impl StreamsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_item_bytes == 0 || self.max_update_ops == 0 {
            return Err("streams.max_item_bytes and streams.max_update_ops must be > 0".into());
        }
        if self.condition_timeout.is_zero() {
            return Err("streams.condition_timeout must be greater than 0".into());
        }
        Ok(())
    }
}

/// The module's handle, shared by its functions and its trigger type.
#[derive(Clone)]
pub(crate) struct Streams {
    items: StreamItems,
    config: Arc<StreamsConfig>,
    watchers: watchers::Watchers,
}
