//! Open connections in the store, so a crash does not skip presence cleanup.
//!
//! A connection whose route has a disconnect handler gets a row before its
//! connect handler runs (and the row is durable by then); the row goes when
//! its disconnect has run. Rows found at start belong to connections a crash
//! cut off: each becomes a durable-queue job that calls the disconnect handler
//! once with reason `engine_restart` (idempotency key = channel id, so a crash
//! during recovery does not double it), and the row is removed once the job is
//! on disk. Workers reconnect after the engine, and the queue waits for them.

use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use uuid::Uuid;

use super::routes::Event;
use super::{Client, ClosedBy, Realtime, dispatch};
use crate::protocol::codes::close;
use crate::protocol::to_payload;
use crate::store::realtime::LeftRow;
use crate::store::records::RealtimeConnRecord;

fn id(ch: &Client) -> Option<Uuid> {
    Uuid::parse_str(&ch.id).ok()
}

fn snapshot_bytes(ch: &Client) -> Vec<u8> {
    let mut snap = ch.snapshot();
    if let Some(obj) = snap.as_object_mut() {
        obj.remove("state");
    }
    serde_json::to_vec(&snap).unwrap_or_default()
}

/// Records an opening connection when its route has a disconnect handler.
/// Returns whether a row was written (and made durable).
pub async fn opened(hub: &Realtime, ch: &Client) -> bool {
    let (Some(rows), Some(id)) = (hub.rows(), id(ch)) else {
        return false;
    };
    let Ok(Some(t)) = dispatch::target(hub, ch, Event::Disconnect, None) else {
        return false;
    };
    let rec = RealtimeConnRecord {
        channel: snapshot_bytes(ch),
        namespace: t.namespace,
        function_id: t.function_id,
        opened_ms: ch.connected_at,
    };
    let ticket = match rows.put(&id, &rec) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(channel_id = %ch.id, error = %e, "cannot record the open connection; a crash would skip its disconnect");
            return false;
        }
    };
    ch.recorded.store(true, Ordering::Relaxed);
    if let Err(e) = rows.durable(ticket).await {
        tracing::warn!(channel_id = %ch.id, error = %e, "open connection recorded but not synced");
    }
    true
}

/// Rewrites a recorded connection's row (topics or auth changed). Not awaited:
/// what a crash loses here is only the newest topic or auth context.
pub fn refresh(hub: &Realtime, ch: &Client) {
    if !ch.recorded.load(Ordering::Relaxed) {
        return;
    }
    let (Some(rows), Some(id)) = (hub.rows(), id(ch)) else {
        return;
    };
    let Ok(Some(mut rec)) = rows.get(&id) else {
        return;
    };
    rec.channel = snapshot_bytes(ch);
    if let Err(e) = rows.put(&id, &rec) {
        tracing::warn!(channel_id = %ch.id, error = %e, "cannot update the open connection's row");
    }
}

/// Removes the row once the disconnect has run.
pub fn closed(hub: &Realtime, ch: &Client) {
    let (Some(rows), Some(id)) = (hub.rows(), id(ch)) else {
        return;
    };
    if let Err(e) = rows.remove(&id) {
        tracing::warn!(channel_id = %ch.id, error = %e, "cannot remove the closed connection's row; it will get an extra disconnect after a restart");
    }
}

/// Rows the last run left: read at start, before any new connection can add one.
pub fn leftovers(hub: &Realtime) -> Vec<LeftRow> {
    hub.rows().map(|rows| rows.all()).unwrap_or_default()
}

/// Turns the rows a crash left ([`leftovers`]) into `engine_restart`
/// disconnects. Returns how many were queued.
pub async fn recover(hub: &Realtime, left: Vec<LeftRow>) -> usize {
    let (Some(rows), Some(queues)) = (hub.rows(), hub.queues()) else {
        return 0;
    };
    let mut done = 0;
    for (id, rec) in left {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "unreadable open-connection row; removed");
                let _ = rows.remove(&id);
                continue;
            }
        };
        let channel: Value = serde_json::from_slice(&rec.channel).unwrap_or(Value::Null);
        let channel_id = channel["channel_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let payload = json!({
            "channel": channel,
            "event": "disconnect",
            "seq": 0,
            "data": null,
            "reason": { "code": close::SERVICE_RESTART, "text": "engine restarted", "by": ClosedBy::EngineRestart.as_str() },
        });
        let req = crate::queue::EnqueueRequest {
            queue: hub.config().restart_queue.clone(),
            namespace: rec.namespace,
            function_id: rec.function_id.clone(),
            payload: to_payload(&payload),
            traceparent: None,
            baggage: None,
            run_at_ms: None,
            priority: 0,
            idempotency_key: Some(format!("disconnect:{channel_id}")),
            expires_at_ms: None,
        };
        match queues.enqueue(req).await {
            Ok(_) => {
                if let Err(e) = rows.remove(&id) {
                    tracing::warn!(error = %e, "cannot remove a recovered connection row");
                }
                done += 1;
            }
            Err(e) => {
                tracing::warn!(channel_id, function_id = %rec.function_id, error = %e, "cannot queue the disconnect owed after a restart; kept for the next start");
            }
        }
    }
    if done > 0 {
        tracing::info!(
            connections = done,
            "queued disconnect handlers for client connections the last run lost"
        );
    }
    done
}
