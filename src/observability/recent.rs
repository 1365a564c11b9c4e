//! A bounded, time-limited window of recent records: the newest `max`
//! records younger than `max_age`. Pruned as records arrive and before each
//! read, so memory never exceeds `max` records and nothing needs a timer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(crate) struct Recent<T> {
    items: VecDeque<(Instant, T)>,
    max: usize,
    max_age: Duration,
}

impl<T> Recent<T> {
    pub(crate) fn new(max: usize, max_age: Duration) -> Self {
        Self {
            items: VecDeque::new(),
            max,
            max_age,
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        self.push_at(Instant::now(), item);
    }

    fn push_at(&mut self, now: Instant, item: T) {
        if self.items.len() >= self.max {
            self.items.pop_front();
        }
        self.items.push_back((now, item));
        self.prune(now);
    }

    /// Records still in the window, oldest first.
    pub(crate) fn iter(&mut self) -> impl Iterator<Item = &T> {
        self.prune(Instant::now());
        self.items.iter().map(|(_, item)| item)
    }

    pub(crate) fn len(&mut self) -> usize {
        self.prune(Instant::now());
        self.items.len()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.items.front() {
            if now.duration_since(*at) <= self.max_age {
                break;
            }
            self.items.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_record_goes_first_when_full() {
        let mut r = Recent::new(3, Duration::from_secs(60));
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn records_past_the_age_limit_are_forgotten() {
        let mut r = Recent::new(10, Duration::from_secs(60));
        let start = Instant::now();
        r.push_at(start, 1);
        r.push_at(start + Duration::from_secs(30), 2);
        r.push_at(start + Duration::from_secs(61), 3);
        assert_eq!(
            r.items.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }
}
