//! The engine's one memory budget for bytes it holds on behalf of others:
//! frames queued for worker sockets, binary channel buffers, frames queued
//! for realtime and stream socket clients. Each of those is also bounded per connection; this
//! bounds them all together, so many slow readers cannot add up to more than
//! the machine has.
//!
//! Bytes of work already accepted are always counted (a result is never
//! dropped for lack of room: it frees memory downstream); what the budget
//! refuses is new work. While it is spent, new calls from workers get
//! `engine_overloaded`, new channels and realtime upgrades are refused, and
//! channel writers wait for room.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Woken when use falls below the limit.
    room: Notify,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// Counts `bytes` now held (always: the caller already holds them).
    pub fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` no longer held.
    pub fn release(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        if before >= self.limit && before - bytes < self.limit {
            self.room.notify_waiters();
        }
    }

    /// Counts `bytes` until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.charge(bytes);
        Held {
            budget: self.clone(),
            bytes,
        }
    }

    /// Whether new work must be refused.
    pub fn is_spent(&self) -> bool {
        self.used() >= self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Resolves once the budget is not spent.
    pub async fn room(&self) {
        loop {
            let freed = self.room.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.is_spent() {
                return;
            }
            freed.await;
        }
    }
}

/// Bytes counted against a budget until dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spent_at_the_limit_and_room_again_below_it() {
        let b = MemoryBudget::new(100);
        let held = b.hold(60);
        b.charge(40);
        assert!(b.is_spent());
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        drop(held);
        waiting.await.unwrap();
        assert_eq!(b.used(), 40);
        b.release(40);
        assert_eq!(b.used(), 0);
    }
}
