//! Open client sockets and their subscriptions, and the fan-out of stream
//! envelopes to them.
//!
//! A send never waits: each client has an outbox bounded by frames and bytes
//! (its bytes also counted in the engine's memory budget); a full outbox
//! closes that client with 1013 and the event goes on to the others. The
//! table lock is held for lookups only, never across an await or a mesh call.

use axum::extract::ws::{Message, Utf8Bytes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::budget::MemoryBudget;
use crate::protocol::codes::close;

/// Why a socket closed: the close code and text it gets (a client's own
/// close is recorded with `by_client`, and nothing is sent back but the echo).
#[derive(Debug, Clone)]
pub(super) struct Closed {
    pub code: u16,
    pub text: &'static str,
    pub by_client: bool,
}

/// One subscription of a client: a group, or one item of it.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    pub id: String,
    pub stream: String,
    pub group: String,
    pub item: Option<String>,
}

/// One open client socket.
pub(super) struct Client {
    pub id: u64,
    /// The auth function's `context` (null without one).
    pub context: Value,
    outbox: mpsc::Sender<Message>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    budget: Arc<MemoryBudget>,
    closing: CancellationToken,
    reason: Mutex<Option<Closed>>,
    /// By subscription id.
    subscriptions: Mutex<HashMap<String, Subscription>>,
}

impl Client {
    /// Queues one frame without waiting. A full outbox closes the client
    /// (1013); the caller goes on. One frame always fits an empty outbox,
    /// so a large sync is not mistaken for a slow reader.
    pub(super) fn send(&self, text: Utf8Bytes) -> bool {
        if self.is_closing() {
            return false;
        }
        let len = text.len();
        // Counted before it is queued: the writer may send it, and give the
        // bytes back, before this thread runs another line.
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.budget.charge(len);
        let full = before > 0 && before + len > self.max_queued_bytes;
        let queued = !full && self.outbox.try_send(Message::Text(text)).is_ok();
        if !queued {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.budget.release(len);
            if !self.outbox.is_closed() {
                tracing::warn!(
                    client = self.id,
                    "stream client is not reading; closing it as a slow consumer"
                );
                self.close(Closed {
                    code: close::TRY_AGAIN_LATER,
                    text: "slow consumer",
                    by_client: false,
                });
            }
        }
        queued
    }

    /// The writer put a frame on its way.
    pub(super) fn sent(&self, msg: &Message) {
        if let Message::Text(t) = msg {
            self.queued_bytes.fetch_sub(t.len(), Ordering::Relaxed);
            self.budget.release(t.len());
        }
    }

    /// Starts closing; the first reason wins.
    pub(super) fn close(&self, reason: Closed) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.closing.cancel();
        }
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    pub(super) async fn closed(&self) {
        self.closing.cancelled().await
    }

    pub(super) fn reason(&self) -> Option<Closed> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<String, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn has_subscription(&self, id: &str) -> bool {
        self.subs().contains_key(id)
    }

    pub(super) fn subscription_count(&self) -> usize {
        self.subs().len()
    }
}

/// Frames still queued when the client goes were never sent: their bytes
/// leave the engine's budget with it.
impl Drop for Client {
    fn drop(&mut self) {
        self.budget.release(*self.queued_bytes.get_mut());
    }
}

/// A subscriber of one group: which client, and which item (or all).
struct Subscriber {
    client: Arc<Client>,
    subscription_id: String,
    item: Option<String>,
}

#[derive(Default)]
struct Tables {
    clients: HashMap<u64, Arc<Client>>,
    /// stream → group → its subscribers.
    groups: HashMap<String, HashMap<String, Vec<Subscriber>>>,
}

/// The registry of open client sockets.
#[derive(Clone)]
pub(super) struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    tables: Mutex<Tables>,
    budget: Arc<MemoryBudget>,
    next_id: AtomicUsize,
    /// Sockets open or being upgraded (the connection cap counts both).
    slots: AtomicUsize,
    max_connections: usize,
    shutting_down: AtomicBool,
    /// Woken when the last socket leaves (shutdown waits on it).
    emptied: Notify,
}

/// A place under `max_connections`, held from the upgrade's start until the
/// socket is gone.
pub(super) struct Slot(Hub);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inner.slots.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hub {
    pub(super) fn new(budget: Arc<MemoryBudget>, max_connections: usize) -> Self {
        Self {
            inner: Arc::new(HubInner {
                tables: Mutex::default(),
                budget,
                next_id: AtomicUsize::new(1),
                slots: AtomicUsize::new(0),
                max_connections,
                shutting_down: AtomicBool::new(false),
                emptied: Notify::new(),
            }),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.inner.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn budget(&self) -> &Arc<MemoryBudget> {
        &self.inner.budget
    }

    /// A place for one more socket, or `None` at `max_connections`.
    pub(super) fn take_slot(&self) -> Option<Slot> {
        let before = self.inner.slots.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(self.clone());
        (before < self.inner.max_connections).then_some(slot)
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// A new client, in the table; its outbox's receiving end goes to the writer.
    pub(super) fn open(
        &self,
        context: Value,
        outbound_messages: usize,
        outbound_bytes: usize,
    ) -> (Arc<Client>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(outbound_messages);
        let client = Arc::new(Client {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed) as u64,
            context,
            outbox: tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: outbound_bytes,
            budget: self.inner.budget.clone(),
            closing: CancellationToken::new(),
            reason: Mutex::new(None),
            subscriptions: Mutex::default(),
        });
        self.tables().clients.insert(client.id, client.clone());
        if self.is_shutting_down() {
            // Upgraded just as shutdown began: close it like the others.
            client.close(Closed {
                code: close::GOING_AWAY,
                text: "engine shutting down",
                by_client: false,
            });
        }
        (client, rx)
    }

    /// Records a subscription: from now on the client gets the group's events.
    pub(super) fn subscribe(&self, client: &Arc<Client>, sub: Subscription) {
        let mut t = self.tables();
        t.groups
            .entry(sub.stream.clone())
            .or_default()
            .entry(sub.group.clone())
            .or_default()
            .push(Subscriber {
                client: client.clone(),
                subscription_id: sub.id.clone(),
                item: sub.item.clone(),
            });
        client.subs().insert(sub.id.clone(), sub);
    }

    /// Forgets one subscription; returns it if it was there.
    pub(super) fn unsubscribe(
        &self,
        client: &Client,
        subscription_id: &str,
    ) -> Option<Subscription> {
        let sub = client.subs().remove(subscription_id)?;
        let mut t = self.tables();
        remove_subscriber(&mut t.groups, &sub, client.id);
        Some(sub)
    }

    /// Forgets a client and returns the subscriptions it still held.
    pub(super) fn remove(&self, client: &Client) -> Vec<Subscription> {
        let subs: Vec<Subscription> = client.subs().drain().map(|(_, s)| s).collect();
        let mut t = self.tables();
        for sub in &subs {
            remove_subscriber(&mut t.groups, sub, client.id);
        }
        t.clients.remove(&client.id);
        if t.clients.is_empty() {
            self.inner.emptied.notify_waiters();
        }
        subs
    }

    /// Queues `frame` for every subscription matching the event: same stream
    /// and group, and no item or the event's item. Once per subscription.
    pub(super) fn publish(&self, stream: &str, group: &str, item: Option<&str>, frame: String) {
        let targets: Vec<Arc<Client>> = {
            let t = self.tables();
            let Some(subs) = t.groups.get(stream).and_then(|g| g.get(group)) else {
                return;
            };
            subs.iter()
                .filter(|s| s.item.is_none() || s.item.as_deref() == item)
                .map(|s| s.client.clone())
                .collect()
        };
        if targets.is_empty() {
            return;
        }
        // Encoded once: every send clones a reference to the same bytes.
        let frame = Utf8Bytes::from(frame);
        for client in targets {
            client.send(frame.clone());
        }
    }

    pub(super) fn open_count(&self) -> usize {
        self.tables().clients.len()
    }

    /// Closes every client with 1001 and waits (at most `within`) until
    /// each has gone, its `stream:leave` handlers fired.
    pub(super) async fn shutdown(&self, within: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let open: Vec<Arc<Client>> = self.tables().clients.values().cloned().collect();
        if !open.is_empty() {
            tracing::info!(clients = open.len(), "closing stream client sockets");
        }
        for c in &open {
            c.close(Closed {
                code: close::GOING_AWAY,
                text: "engine shutting down",
                by_client: false,
            });
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let emptied = self.inner.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.open_count() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                tracing::warn!(
                    clients = self.open_count(),
                    "stream client sockets still open at the end of the grace period"
                );
                break;
            }
        }
    }
}

fn remove_subscriber(
    groups: &mut HashMap<String, HashMap<String, Vec<Subscriber>>>,
    sub: &Subscription,
    client: u64,
) {
    let Some(by_group) = groups.get_mut(&sub.stream) else {
        return;
    };
    if let Some(list) = by_group.get_mut(&sub.group) {
        list.retain(|s| !(s.client.id == client && s.subscription_id == sub.id));
        if list.is_empty() {
            by_group.remove(&sub.group);
        }
    }
    if by_group.is_empty() {
        groups.remove(&sub.stream);
    }
}
