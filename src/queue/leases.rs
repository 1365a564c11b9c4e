//! The leases of running attempts and the one timer that watches them: no
//! task or timer per running job.
//!
//! Invariant: the timer is armed for a deadline no later than the soonest
//! lease (after [`Leases::arm`]); it is re-armed only when a lease ends
//! sooner than the one it waits for, because resetting a timer on every turn
//! of the scheduler's loop costs more than the rest of an outcome's handling.
//! A timer that fires for a lease already gone finds nothing expired.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use uuid::Uuid;

/// Running attempts' leases, soonest first.
pub struct Leases {
    by_deadline: BTreeSet<(Instant, Uuid)>,
    timer: Pin<Box<Sleep>>,
    /// The deadline the timer waits for, if armed.
    armed: Option<Instant>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            by_deadline: BTreeSet::new(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl Leases {
    pub fn add(&mut self, until: Instant, job: Uuid) {
        self.by_deadline.insert((until, job));
    }

    pub fn remove(&mut self, until: Instant, job: Uuid) {
        self.by_deadline.remove(&(until, job));
    }

    pub fn next(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(t, _)| *t)
    }

    /// Takes every lease that ran out by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Uuid> {
        let mut out = Vec::new();
        while let Some((t, job)) = self.by_deadline.first().copied() {
            if t > now {
                break;
            }
            self.by_deadline.pop_first();
            out.push(job);
        }
        out
    }

    /// Arms the timer for the soonest lease, if it waits for a later one or none.
    pub fn arm(&mut self) {
        if let Some(next) = self.next()
            && self.armed.is_none_or(|armed| next < armed)
        {
            self.timer.as_mut().reset(next);
            self.armed = Some(next);
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Resolves when the armed timer fires, and disarms it.
    pub async fn fired(&mut self) {
        self.timer.as_mut().await;
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_expire_in_deadline_order_and_once() {
        let now = Instant::now();
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut l = Leases::default();
        l.add(now + Duration::from_secs(2), a);
        l.add(now + Duration::from_secs(1), b);
        l.add(now + Duration::from_secs(3), c);
        l.remove(now + Duration::from_secs(3), c);
        assert_eq!(l.next(), Some(now + Duration::from_secs(1)));
        assert_eq!(l.expired(now + Duration::from_secs(2)), vec![b, a]);
        assert!(l.expired(now + Duration::from_secs(9)).is_empty());
        assert_eq!(l.next(), None);
    }

    #[tokio::test]
    async fn the_timer_waits_for_the_soonest_lease() {
        let now = Instant::now();
        let mut l = Leases::default();
        l.arm();
        assert!(!l.is_armed(), "nothing to wait for");
        l.add(now + Duration::from_secs(60), Uuid::from_u128(1));
        l.arm();
        l.add(now + Duration::from_millis(20), Uuid::from_u128(2));
        l.arm();
        tokio::time::timeout(Duration::from_secs(5), l.fired())
            .await
            .expect("re-armed for the sooner lease");
        assert!(!l.is_armed());
    }
}
