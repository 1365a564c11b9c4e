//! The queues the scheduler knows, by name (enqueues and operators name
//! them) and by id (store keys and job records carry ids).
//!
//! Invariant: both ways agree, ids are never reused, and every queue here is
//! in the store: the scheduler writes a new queue in its own batch before it
//! adds it, so no later failure leaves a queue known in memory only.

use std::collections::HashMap;
use std::ops::Index;

use super::rate::Limiter;
use super::ready::ReadyIndex;
use super::settings::QueueSettings;
use crate::store::queue::{FnId, QueueId};

/// One queue's runtime state.
pub struct QueueRt {
    pub id: QueueId,
    pub name: String,
    pub settings: QueueSettings,
    pub paused: bool,
    /// Slots in use: its attempts in progress.
    pub running: usize,
    pub ready: ReadyIndex,
    /// `settings.rate`'s bucket (in memory: it starts full after a restart).
    pub limiter: Option<Limiter>,
    /// `queue::throttle`: no job starts before this (in memory).
    pub throttled_until: Option<tokio::time::Instant>,
    /// `settings.rate_per_key`'s buckets, one per lane (fair key) that
    /// started jobs lately; full ones are dropped by [`Self::forget_full_buckets`].
    pub lane_limiters: HashMap<FnId, Limiter>,
}

impl QueueRt {
    pub fn new(id: QueueId, name: &str, settings: QueueSettings, paused: bool) -> Self {
        let limiter = settings.rate.map(Limiter::new);
        Self {
            id,
            name: name.to_owned(),
            settings,
            paused,
            running: 0,
            ready: ReadyIndex::default(),
            limiter,
            throttled_until: None,
            lane_limiters: HashMap::new(),
        }
    }

    /// New settings (a queue defined at run time): its bucket follows them.
    pub fn set_settings(&mut self, settings: QueueSettings) {
        self.limiter = settings.rate.map(Limiter::new);
        self.lane_limiters.clear();
        self.settings = settings;
    }

    /// Jobs lane `f` may start now by `rate_per_key`, and when more may, if none can now.
    pub fn lane_startable(
        &mut self,
        f: FnId,
        now: tokio::time::Instant,
    ) -> (usize, Option<tokio::time::Instant>) {
        let Some(rate) = self.settings.rate_per_key else {
            return (usize::MAX, None);
        };
        let l = self
            .lane_limiters
            .entry(f)
            .or_insert_with(|| Limiter::new(rate));
        (l.available(now), l.next_start(now))
    }

    /// Lane `f` started `n` jobs.
    pub fn lane_started(&mut self, f: FnId, n: usize) {
        if let Some(l) = self.lane_limiters.get_mut(&f) {
            l.take(n);
        }
    }

    /// Drops the buckets that have refilled: a new one would be the same.
    pub fn forget_full_buckets(&mut self, now: tokio::time::Instant) {
        self.lane_limiters.retain(|_, l| !l.is_full(now));
    }

    /// Jobs that may start now by its rate limit and throttle (before
    /// concurrency), and when more may, if none can now.
    pub fn startable(
        &mut self,
        now: tokio::time::Instant,
    ) -> (usize, Option<tokio::time::Instant>) {
        if let Some(until) = self.throttled_until {
            if now < until {
                return (0, Some(until));
            }
            self.throttled_until = None;
        }
        match &mut self.limiter {
            None => (usize::MAX, None),
            Some(l) => (l.available(now), l.next_start(now)),
        }
    }
}

#[derive(Default)]
pub struct QueueTable {
    by_name: HashMap<String, QueueRt>,
    names: HashMap<QueueId, String>,
}

impl QueueTable {
    pub fn get(&self, name: &str) -> Option<&QueueRt> {
        self.by_name.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut QueueRt> {
        self.by_name.get_mut(name)
    }

    pub fn by_id(&self, id: QueueId) -> Option<&QueueRt> {
        self.by_name.get(self.names.get(&id)?)
    }

    pub fn by_id_mut(&mut self, id: QueueId) -> Option<&mut QueueRt> {
        self.by_name.get_mut(self.names.get(&id)?)
    }

    /// The id a new queue gets.
    pub fn next_id(&self) -> QueueId {
        self.names.keys().max().map_or(1, |m| m + 1)
    }

    /// Adds a queue already in the store.
    pub fn add(&mut self, rt: QueueRt) {
        self.names.insert(rt.id, rt.name.clone());
        self.by_name.insert(rt.name.clone(), rt);
    }

    pub fn iter(&self) -> impl Iterator<Item = &QueueRt> {
        self.by_name.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut QueueRt> {
        self.by_name.values_mut()
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

/// A queue the caller knows exists (panics otherwise, like a map's index).
impl Index<&str> for QueueTable {
    type Output = QueueRt;

    fn index(&self, name: &str) -> &QueueRt {
        &self.by_name[name]
    }
}
