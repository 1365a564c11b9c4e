//! The enqueue sequence: one global, monotonic number per job (it orders
//! ready jobs of equal priority, FIFO groups and dead letters, and goes into
//! job ids).
//!
//! Invariant: every number handed out is below the reservation stored with
//! (or before) the batch that uses it, so a restart, which continues from the
//! stored reservation, never hands out a number a stored job holds. The
//! reservation is raised [`SEQ_STEP`] at a time, so most batches do not write it.

use crate::store::queue::Writes;

/// How far each write of the reservation reaches.
const SEQ_STEP: u64 = 100_000;

pub struct Sequence {
    next: u64,
    /// Every number below this may be in use.
    reserved: u64,
}

impl Sequence {
    /// Continues after a stored reservation (0 in a new store).
    pub fn after(reserved: u64) -> Self {
        Self {
            next: reserved,
            reserved,
        }
    }

    /// The next number; raises the reservation in `batch` when it reaches it.
    pub fn take(&mut self, batch: &mut Writes) -> u64 {
        let seq = self.next;
        self.next += 1;
        if self.next > self.reserved {
            self.reserved = self.next + SEQ_STEP;
            batch.put_seq_reservation(self.reserved);
        }
        seq
    }

    pub fn next(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservation_is_written_only_when_reached() {
        let mut s = Sequence::after(0);
        let mut first = Writes::default();
        assert_eq!(s.take(&mut first), 0);
        assert!(!first.is_empty(), "the first number raises the reservation");
        let mut later = Writes::default();
        for n in 1..SEQ_STEP {
            assert_eq!(s.take(&mut later), n);
        }
        assert!(later.is_empty(), "covered by the first reservation");
        let mut s = Sequence::after(500);
        assert_eq!(
            s.take(&mut Writes::default()),
            500,
            "a restart continues after it"
        );
    }
}
