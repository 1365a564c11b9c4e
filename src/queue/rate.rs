//! Rate limits: `rate = "100/1s"` on a queue lets at most that many of its
//! jobs start per period, whatever the number of workers (the scheduler is
//! the one place jobs start). A token bucket holding at most one period's
//! jobs: a quiet queue may start a period's worth at once, never more.
//! Windows live in memory: after a restart a queue starts with a full bucket.

use serde::{Deserialize, Deserializer};
use std::time::Duration;
use tokio::time::Instant;

/// `N/period`: N job starts per period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub starts: u32,
    pub per: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("rate {s:?}: expected N/period, like \"100/1s\" or \"5000/1m\"");
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let starts: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| bad())?;
        if starts == 0 || per.is_zero() {
            return Err(format!(
                "rate {s:?}: both the count and the period must be > 0"
            ));
        }
        Ok(Rate { starts, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.starts,
            humantime::format_duration(self.per)
        )
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One queue's bucket.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.starts),
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = f64::from(self.rate.starts) / self.rate.per.as_secs_f64();
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        self.tokens = (self.tokens + gained).min(f64::from(self.rate.starts));
        self.at = now;
    }

    /// Jobs that may start now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    /// Whether it holds a whole period's starts again (as a new bucket would).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.rate.starts)
    }

    /// `n` jobs started.
    pub fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// When the next job may start, if none may now.
    pub fn next_start(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            return None;
        }
        let per_sec = f64::from(self.rate.starts) / self.rate.per.as_secs_f64();
        Some(now + Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        let r: Rate = "100/1s".parse().unwrap();
        assert_eq!((r.starts, r.per), (100, Duration::from_secs(1)));
        let r: Rate = "5000 / 1m".parse().unwrap();
        assert_eq!(r.per, Duration::from_secs(60));
        for bad in ["100", "0/1s", "10/0s", "x/1s", "10/soon"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_holds_one_period_and_refills_evenly() {
        let mut l = Limiter::new("10/1s".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(l.available(t0), 10);
        l.take(10);
        assert_eq!(l.available(t0), 0);
        let next = l.next_start(t0).expect("empty") - t0;
        assert!(
            next <= Duration::from_millis(100) && next > Duration::from_millis(95),
            "{next:?}"
        );
        assert_eq!(l.available(t0 + Duration::from_millis(350)), 3);
        assert_eq!(
            l.available(t0 + Duration::from_secs(60)),
            10,
            "never more than a period's worth"
        );
    }
}
