//! What modules share with the same module on the other engines (pub/sub's
//! and realtime's publishes, shared state's changes, shared streams' events), on core
//! NATS: `qmesh.<cluster>.relay.<channel>.<engine id>`, one subject per
//! channel and sending engine. Every engine subscribes to
//! all of them and hands what another engine sent to the mesh's taker of
//! that channel; what it sent itself comes back to it too and is skipped,
//! so each message is delivered once per engine.
//!
//! Best effort, like the pub/sub it carries: nothing is stored, an engine
//! that is not connected at that moment misses the message, and a message
//! that finds the outgoing queue full is dropped (logged).

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Names;
use crate::mesh::Mesh;
use crate::mesh::provided::Relay;

/// Messages waiting for NATS; beyond this they are dropped (an engine cut
/// off from NATS must not grow without bound).
const QUEUE: usize = 4096;

type Outgoing = (&'static str, Vec<u8>);

/// The mesh's relay: a queue in front of one publishing task, which keeps
/// one engine's messages in the order they were sent.
pub(super) struct NatsRelay {
    tx: mpsc::Sender<Outgoing>,
}

impl NatsRelay {
    pub(super) fn new() -> (Self, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (NatsRelay { tx }, rx)
    }
}

impl Relay for NatsRelay {
    fn send(&self, channel: &'static str, message: Vec<u8>) {
        if let Err(e) = self.tx.try_send((channel, message)) {
            tracing::warn!(channel, error = %e, "a message for the other engines was dropped");
        }
    }
}

/// Publishes what the relay queued, in order, until the relay is dropped.
pub(super) async fn publish(
    client: async_nats::Client,
    names: Names,
    mut queued: mpsc::Receiver<Outgoing>,
) {
    while let Some((channel, message)) = queued.recv().await {
        let subject = names.relay_subject(channel, &names.engine_id);
        if let Err(e) = client.publish(subject, message.into()).await {
            tracing::warn!(channel, error = %e, "cannot relay a message to the other engines");
        }
    }
}

/// Hands what other engines relay to this engine's takers.
pub(super) async fn receive(mesh: Mesh, names: Names, mut relayed: async_nats::Subscriber) {
    while let Some(msg) = relayed.next().await {
        let mut tokens = msg.subject.rsplit('.');
        let (Some(origin), Some(channel)) = (tokens.next(), tokens.next()) else {
            continue;
        };
        if origin == names.engine_id {
            continue;
        }
        if !mesh.provided().relayed(&mesh, channel, &msg.payload) {
            tracing::debug!(channel, "a relayed message nobody here takes");
        }
    }
}
