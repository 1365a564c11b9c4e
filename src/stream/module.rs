//! Streams as an engine module: the `stream::*` functions and the `stream`,
//! `stream:join` and `stream:leave` trigger types.

use std::sync::Arc;

use super::functions as f;
use super::{Streams, StreamsConfig, watchers::Watchers};
use crate::mesh::Provisions;
use crate::mesh::provided::FiredByEngine;
use crate::module::Module;
use crate::store::Store;
use crate::store::stream::StreamItems;

pub(crate) struct StreamsModule {
    streams: Streams,
}

impl StreamsModule {
    pub(crate) fn new(store: Arc<Store>, config: StreamsConfig) -> Self {
        Self {
            streams: Streams {
                items: StreamItems::new(store),
                config: Arc::new(config),
                watchers: Watchers::default(),
            },
        }
    }
}

impl Module for StreamsModule {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn provide(&self, p: &mut Provisions) {
        p.trigger_type(
            "stream",
            "Fires on stream item changes and custom events (create, update, delete, event)",
            Arc::new(self.streams.watchers.clone()),
        );
        // Fired when a client joins or leaves a group on the client socket,
        // which is not served yet: bindings are accepted and never fire.
        p.trigger_type(
            "stream:join",
            "A client joins a stream group",
            Arc::new(FiredByEngine),
        );
        p.trigger_type(
            "stream:leave",
            "A client leaves a stream group",
            Arc::new(FiredByEngine),
        );
        let s = &self.streams;
        p.async_fn("stream::set", s, f::set);
        p.sync_fn("stream::get", s, f::get);
        p.async_fn("stream::delete", s, f::delete);
        p.async_fn("stream::update", s, f::update);
        p.sync_fn("stream::list", s, f::list);
        p.sync_fn("stream::list_groups", s, f::list_groups);
        p.sync_fn("stream::list_all", s, f::list_all);
        p.sync_fn("stream::send", s, f::send);
    }
}
