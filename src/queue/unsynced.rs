//! Enqueues written but not yet durable: a job is started only once the
//! sync covering its enqueue has finished, so a crash can never lose the
//! enqueue of a job that already ran (its side effects would be orphaned,
//! and its producer was never acknowledged).
//!
//! Invariant: tickets and sequence numbers grow together (the scheduler is
//! the only writer, and each batch's jobs take numbers after the previous
//! batch's), so "every job at or after the first sequence number of the
//! oldest unsynced batch" is exactly the set of jobs not yet durable.

use std::collections::VecDeque;

use crate::store::Ticket;

#[derive(Default)]
pub struct Unsynced {
    /// (ticket of an enqueue batch, first sequence number it used), oldest first.
    batches: VecDeque<(Ticket, u64)>,
}

impl Unsynced {
    /// An enqueue batch applied as `ticket`, its jobs numbered from `first_seq`.
    pub fn applied(&mut self, ticket: Ticket, first_seq: u64) {
        self.batches.push_back((ticket, first_seq));
    }

    /// Forgets the batches a sync up to `synced` covered; returns the first
    /// sequence number still waiting for a sync (every job from it on must
    /// not start), or `None` when every enqueue is durable.
    pub fn first_waiting(&mut self, synced: Ticket) -> Option<u64> {
        while self.batches.front().is_some_and(|(t, _)| *t <= synced) {
            self.batches.pop_front();
        }
        self.batches.front().map(|(_, seq)| *seq)
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_releases_the_batches_it_covered_and_no_later_one() {
        let mut u = Unsynced::default();
        assert_eq!(u.first_waiting(0), None);
        u.applied(3, 10);
        u.applied(5, 12);
        assert_eq!(u.first_waiting(2), Some(10));
        assert_eq!(u.first_waiting(4), Some(12));
        assert_eq!(u.first_waiting(5), None);
        assert!(u.is_empty());
    }
}
