//! Enqueues written but not yet durable: a job is started only once the
//! sync covering its enqueue has finished, so a crash can never lose the
//! enqueue of a job that already ran (its side effects would be orphaned,
//! and its producer was never acknowledged). The answers those writes owe
//! (receipts, an operation's result) wait here too, and the scheduler gives
//! them when a sync ends: one pass per sync, no task per batch.
//!
//! Invariant: tickets and sequence numbers grow together (the scheduler is
//! the only writer, and each batch's jobs take numbers after the previous
//! batch's), so "every job at or after the first sequence number of the
//! oldest unsynced batch" is exactly the set of jobs not yet durable.

use std::collections::VecDeque;

use crate::store::{Fates, StoreError, Ticket};

/// What a write owes once its fate is known.
pub type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

#[derive(Default)]
pub struct Unsynced {
    /// (ticket of an enqueue batch, first sequence number it used), oldest first.
    batches: VecDeque<(Ticket, u64)>,
    /// Answers waiting for the sync covering their ticket, oldest first
    /// (the scheduler applies every batch, so tickets only grow).
    answers: VecDeque<(Ticket, Answer)>,
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

    /// Holds `answer` until the sync covering `ticket` ends (or fails).
    pub fn answer_when_durable(&mut self, ticket: Ticket, answer: Answer) {
        self.answers.push_back((ticket, answer));
    }

    /// Whether an answer may be due: a sync covered the oldest one, or the
    /// store is broken (its waiters may have failed). Cheap, for every turn
    /// of the scheduler's loop.
    pub fn answers_due(&self, synced: Ticket, broken: bool) -> bool {
        self.answers
            .front()
            .is_some_and(|(t, _)| *t <= synced || broken)
    }

    /// Gives every answer whose fate `fates` settles, oldest first.
    pub fn answer(&mut self, fates: &Fates) {
        while let Some((ticket, _)) = self.answers.front() {
            let Some(fate) = fates.of(*ticket) else {
                return;
            };
            let (_, answer) = self.answers.pop_front().expect("front exists");
            answer(fate);
        }
    }

    /// The answers still waiting, for whoever outlives the scheduler.
    pub fn take_answers(&mut self) -> VecDeque<(Ticket, Answer)> {
        std::mem::take(&mut self.answers)
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_out_oldest_first_once_their_fate_is_known() {
        use crate::store::{Fates, Fault};
        use std::sync::{Arc, Mutex};
        let said = Arc::new(Mutex::new(Vec::new()));
        let mut u = Unsynced::default();
        for t in [3, 5, 8] {
            let said = said.clone();
            u.answer_when_durable(
                t,
                Box::new(move |r| said.lock().unwrap().push((t, r.is_ok()))),
            );
        }
        assert!(!u.answers_due(2, false));
        assert!(u.answers_due(2, true));
        assert!(u.answers_due(5, false));
        u.answer(&Fates::given(Ok(5), Vec::new()));
        assert_eq!(*said.lock().unwrap(), vec![(3, true), (5, true)]);
        assert!(!u.is_empty());
        let fault = Fault {
            full: true,
            message: "full".into(),
        };
        u.answer(&Fates::given(Err(fault), Vec::new()));
        assert_eq!(said.lock().unwrap().last(), Some(&(8, false)));
        assert!(u.is_empty());
    }

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
