//! The durable queue: `Enqueue` calls persisted in the embedded store and
//! delivered later, with retries and dead letters.
//!
//! - [`store`]: sled layout, record codec, schema migrations, group commit.

pub mod store;
