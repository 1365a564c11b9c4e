//! Which engines of the cluster are alive: heartbeats on core NATS.
//!
//! Every engine publishes an empty message on
//! `qmesh.<cluster>.heartbeat.<engine id>` every `[cluster] heartbeat` and
//! listens to everyone's. An engine not heard from for `engine_timeout` (by
//! this engine's clock, from when each beat arrived: no clocks are compared)
//! is declared dead and its functions leave the directory
//! ([`Directory::sweep`]); a beat from it brings it back.
//!
//! Core NATS rather than a KV entry with a TTL: a beat need not survive
//! anything, so it is not worth a replicated, fsync'ed JetStream write per
//! engine per second, and a missing beat measures what matters, whether
//! messages from that engine still reach this one (the path its calls take).
//!
//! While this engine's own connection is down it hears nobody, so it judges
//! nobody: the timeout runs again from when the connection came back.

use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::directory::Directory;

/// Publishes this engine's heartbeat every `interval`, from now on.
pub(super) async fn beat(client: async_nats::Client, subject: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Offline, the client buffers it; a beat late is still a beat.
        if let Err(e) = client.publish(subject.clone(), bytes::Bytes::new()).await {
            tracing::debug!(error = %e, "cannot publish this engine's heartbeat");
        }
    }
}

/// Records every heartbeat that arrives on `beats` (`…heartbeat.*`).
pub(super) async fn listen(directory: Arc<Directory>, mut beats: async_nats::Subscriber) {
    while let Some(msg) = beats.next().await {
        if let Some(engine) = msg.subject.rsplit('.').next() {
            directory.heard_from(engine);
        }
    }
}

/// Declares dead the engines not heard from for `timeout`, checking a few
/// times per `interval`.
pub(super) async fn sweep(
    directory: Arc<Directory>,
    client: async_nats::Client,
    interval: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let connected = matches!(
            client.connection_state(),
            async_nats::connection::State::Connected
        );
        if !connected {
            connected_since = None;
            continue;
        }
        let since = *connected_since.get_or_insert_with(Instant::now);
        directory.sweep(timeout, since);
    }
}
