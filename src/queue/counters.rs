//! Jobs per state of each queue, kept in memory and written with the batches
//! that move jobs, so a start reads them instead of scanning jobs.
//!
//! Invariant: after every batch the scheduler applies, the stored counts of
//! each queue are these, except for moves made with [`Counters::shift`]
//! (an attempt's start or unwritten start, which the store does not see
//! yet). Hence the stored running count is never below the number of stored
//! running entries.

use std::collections::{BTreeSet, HashMap};

use crate::store::queue::{QueueId, Writes};
use crate::store::records::{Counts, JobState};

#[derive(Default)]
pub struct Counters {
    by_queue: HashMap<QueueId, Counts>,
    /// Queues whose counts changed since the last batch.
    dirty: BTreeSet<QueueId>,
}

impl Counters {
    /// A queue's counts as stored (at start, or when it is created).
    pub fn load(&mut self, q: QueueId, counts: Counts) {
        self.by_queue.insert(q, counts);
    }

    pub fn of(&self, q: QueueId) -> Counts {
        self.by_queue.get(&q).copied().unwrap_or_default()
    }

    /// A job moved between states (`None` = entering or leaving the store);
    /// written with the next batch.
    pub fn count(&mut self, q: QueueId, from: Option<JobState>, to: Option<JobState>) {
        self.shift(q, from, to);
        self.dirty.insert(q);
    }

    /// A move the store does not see yet: in memory only (the stored counts
    /// follow with the next batch that counts).
    pub fn shift(&mut self, q: QueueId, from: Option<JobState>, to: Option<JobState>) {
        if let Some(c) = self.by_queue.get_mut(&q) {
            c.shift(from, to);
        }
    }

    /// Writes `q`'s counts with the next batch.
    pub fn touch(&mut self, q: QueueId) {
        self.dirty.insert(q);
    }

    /// Adds the counts that changed since the last batch to `batch`.
    pub fn write_dirty(&mut self, batch: &mut Writes) {
        for q in std::mem::take(&mut self.dirty) {
            if let Some(c) = self.by_queue.get(&q) {
                batch.put_counts(q, c);
            }
        }
    }

    /// At start nothing runs: counts of attempts whose start was never
    /// written (the store holds those jobs as ready) go back to ready.
    /// Returns whether any queue had some.
    pub fn requeue_running(&mut self) -> bool {
        let mut any = false;
        for (q, c) in &mut self.by_queue {
            if c.running > 0 {
                c.ready += c.running;
                c.running = 0;
                self.dirty.insert(*q);
                any = true;
            }
        }
        any
    }
}
