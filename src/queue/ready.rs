//! A queue's ready index in memory: which functions have ready jobs, the
//! round-robin position among them, and where each function's dispatch scan
//! resumes. The entries themselves are in the store.
//!
//! Invariants:
//! - every function with a ready entry of a job not running is in the set
//!   (it may hold a function with none left: the scan that finds nothing
//!   drops it);
//! - every entry at or before a function's resume point belongs to a job
//!   that started, so a scan may skip it; placing an entry at or before the
//!   resume point drops the point.

use std::collections::{BTreeSet, HashMap};

use crate::store::queue::{FnId, ReadyPos, ReadySlot};

#[derive(Default)]
pub struct ReadyIndex {
    fns: BTreeSet<FnId>,
    /// Round-robin position among `fns`.
    cursor: FnId,
    /// Per function, the last ready entry a dispatch scan read.
    after: HashMap<FnId, ReadyPos>,
}

impl ReadyIndex {
    /// `f` has a ready job.
    pub fn mark(&mut self, f: FnId) {
        self.fns.insert(f);
    }

    pub fn is_empty(&self) -> bool {
        self.fns.is_empty()
    }

    pub fn functions(&self) -> impl Iterator<Item = FnId> + '_ {
        self.fns.iter().copied()
    }

    /// The functions in round-robin order, from the cursor.
    pub fn round(&self) -> Vec<FnId> {
        (self.fns.range(self.cursor..))
            .chain(self.fns.range(..self.cursor))
            .copied()
            .collect()
    }

    /// The function the round-robin is at (the first at or after the cursor).
    pub fn current(&self) -> Option<FnId> {
        self.next_from(self.cursor)
    }

    /// The function after `f` in round-robin order, wrapping around: a fair
    /// queue walks its lanes one by one without listing them all.
    pub fn after(&self, f: FnId) -> Option<FnId> {
        self.next_from(f.saturating_add(1))
    }

    fn next_from(&self, at: FnId) -> Option<FnId> {
        self.fns
            .range(at..)
            .next()
            .or_else(|| self.fns.iter().next())
            .copied()
    }

    pub fn len(&self) -> usize {
        self.fns.len()
    }

    /// Where the next scan of `f` starts (after this entry; from the first when `None`).
    pub fn resume_point(&self, f: FnId) -> Option<&ReadyPos> {
        self.after.get(&f)
    }

    /// A dispatch scan of `f` read up to `last` and took a job or not: a
    /// function that yielded none is dropped, one that did moves the cursor past it.
    pub fn scanned(&mut self, f: FnId, last: Option<ReadyPos>, took: bool) {
        if let Some(pos) = last {
            self.after.insert(f, pos);
        }
        if took {
            self.cursor = f + 1;
        } else {
            self.fns.remove(&f);
        }
    }

    /// An entry is placed at `slot`: a scan resuming after it must still see it.
    pub fn placed(&mut self, slot: &ReadySlot) {
        if self
            .after
            .get(&slot.function)
            .is_some_and(|after| after.reaches(slot))
        {
            self.after.remove(&slot.function);
        }
    }

    /// The next scan of `f` starts from its first entry (a job taken was not started).
    pub fn rescan(&mut self, f: FnId) {
        self.after.remove(&f);
    }

    /// The queue's ready jobs were purged.
    pub fn clear(&mut self) {
        self.fns.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_starts_after_the_last_function_that_yielded() {
        let mut r = ReadyIndex::default();
        for f in [1, 2, 3] {
            r.mark(f);
        }
        assert_eq!(r.round(), vec![1, 2, 3]);
        r.scanned(1, None, true);
        assert_eq!(r.round(), vec![2, 3, 1]);
        r.scanned(2, None, false);
        assert_eq!(
            r.round(),
            vec![3, 1],
            "a function with nothing left is dropped"
        );
        assert_eq!(
            (r.current(), r.after(3), r.after(1)),
            (Some(3), Some(1), Some(3)),
            "wraps"
        );
    }
}
