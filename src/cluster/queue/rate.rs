//! Rate limits across the cluster (`rate = "N/period"` on a queue): every
//! engine's starts of the queue's jobs draw on one token bucket in NATS, so
//! N engines do not start N times the rate.
//!
//! The bucket is the local queue's (`crate::queue::rate`): it holds at
//! most one period's starts and refills evenly, a new one full. It is one
//! key per queue in the KV bucket `qmesh_<cluster>_rates` (`<b64(queue)>`:
//! its tokens and the time they were counted at), changed only by a
//! compare-and-set on the key's revision, so two engines never take the
//! same tokens. An engine takes a block at a time (what the rate refills
//! in [`HOLD`], at least the jobs it can start now), so one replicated
//! write is not paid per job, and holds what it did not start for at most
//! [`HOLD`] after the write (then drops it: never given back, never
//! carried over). Hence the bound: in any span of time `t`, at most `N +
//! rate × (t + HOLD)` jobs start across the cluster, against `N + rate ×
//! t` on one engine (plus the rate's worth of the engines' clock skew:
//! each engine refills by its own clock, which never moves the bucket's
//! time back). While NATS cannot take the write, no token is given:
//! starts wait, never exceed.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::b64;
use crate::cluster::kv;
use crate::queue::rate::Rate;
use async_nats::jetstream::kv::Store;
use base64::Engine as _;

/// The longest an engine holds tokens it took before it drops them, and
/// the time whose refill one write takes (a quarter of the period when
/// that is shorter): the bound's slack.
pub(super) const HOLD: Duration = Duration::from_millis(250);
/// How soon the bucket is asked again after NATS refused.
const RETRY: Duration = Duration::from_millis(250);
/// Shortest and longest wait for an empty bucket to refill a token.
const MIN_WAIT: Duration = Duration::from_millis(5);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// One queue's bucket as stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// A new bucket: full, as the local queue's.
    fn full(rate: Rate, now_ms: u64) -> Self {
        Bucket {
            tokens: f64::from(rate.starts),
            at_ms: now_ms,
        }
    }

    fn per_ms(rate: Rate) -> f64 {
        f64::from(rate.starts) / (rate.per.as_secs_f64() * 1000.0)
    }

    /// Refilled up to `now_ms` (a clock behind the bucket's adds nothing,
    /// and never moves its time back), at most one period's starts (also
    /// after the queue's rate was lowered).
    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let gained = now_ms.saturating_sub(self.at_ms) as f64 * Self::per_ms(rate);
        self.tokens = (self.tokens + gained).min(f64::from(rate.starts));
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// How long until it holds one whole token.
    fn until_one(&self, rate: Rate) -> Duration {
        let ms = ((1.0 - self.tokens).max(0.0) / Self::per_ms(rate)).ceil();
        Duration::from_millis(ms as u64).clamp(MIN_WAIT, MAX_WAIT)
    }
}

/// How long taken tokens are held: [`HOLD`], or a quarter of the period.
fn hold(rate: Rate) -> Duration {
    HOLD.min(rate.per / 4)
}

/// The tokens one write takes at least: what the rate refills in [`hold`].
fn block(rate: Rate) -> usize {
    let n = f64::from(rate.starts) * hold(rate).as_secs_f64() / rate.per.as_secs_f64();
    (n.ceil() as usize).max(1)
}

/// Tokens an engine took and has not used yet.
#[derive(Debug, Clone, Copy)]
struct Held {
    tokens: usize,
    until: Instant,
}

/// What one try at the bucket gave.
enum Drawn {
    /// This many tokens, held until then.
    Granted(usize, Instant),
    /// None left: one refills after this long.
    Empty(Duration),
    /// Another engine wrote first: read it again.
    Moved,
}

/// Tokens taken for some starts: used ones are spent, the others go back
/// with [`Rates::unused`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Tokens {
    pub count: usize,
    until: Instant,
}

/// The tokens this engine took and has not used, by queue.
///
/// Invariant: a token is never given out at or after the `until` of the
/// write that took it (tokens put together share the earliest `until`).
#[derive(Default)]
struct Holdings(HashMap<String, Held>);

impl Holdings {
    fn put(&mut self, queue: &str, t: Tokens, now: Instant) {
        if t.count == 0 || t.until <= now {
            return;
        }
        match self.0.get_mut(queue) {
            Some(h) if h.tokens > 0 && h.until > now => {
                h.tokens += t.count;
                h.until = h.until.min(t.until);
            }
            _ => {
                self.0.insert(
                    queue.to_owned(),
                    Held {
                        tokens: t.count,
                        until: t.until,
                    },
                );
            }
        }
    }

    fn take(&mut self, queue: &str, want: usize, now: Instant) -> Option<Tokens> {
        let h = self.0.get_mut(queue)?;
        if h.until <= now || h.tokens == 0 {
            self.0.remove(queue);
            return None;
        }
        let count = h.tokens.min(want);
        h.tokens -= count;
        Some(Tokens {
            count,
            until: h.until,
        })
    }
}

/// The cluster's rate buckets and the tokens this engine holds, by queue.
pub(super) struct Rates {
    bucket: Store,
    held: Mutex<Holdings>,
}

impl Rates {
    pub(super) fn new(bucket: Store) -> Self {
        Rates {
            bucket,
            held: Mutex::new(Holdings::default()),
        }
    }

    /// Tokens to start at most `want` (≥ 1) jobs of `queue` now: at least
    /// one, waiting for the bucket to refill (or for NATS) as long as it
    /// takes. Cancel-safe: tokens taken are held before this returns.
    pub(super) async fn take(&self, queue: &str, rate: Rate, want: usize) -> Tokens {
        let want = want.max(1);
        loop {
            if let Some(t) = self.take_held(queue, want) {
                return t;
            }
            match self.draw(queue, rate, want).await {
                Ok(Drawn::Granted(n, until)) => {
                    let count = n.min(want);
                    self.unused(queue, Tokens { count: n, until });
                    if let Some(t) = self.take_held(queue, count) {
                        return t;
                    }
                }
                Ok(Drawn::Empty(wait)) => tokio::time::sleep(wait).await,
                Ok(Drawn::Moved) => {
                    // Engines that met at the key do not meet again at once.
                    let jitter = rand::random::<u64>() % 5;
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => {
                    tracing::debug!(queue, error = %e, "cannot take from the queue's rate bucket; starts wait");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Tokens of `queue` not used for a start: held until they run out.
    pub(super) fn unused(&self, queue: &str, t: Tokens) {
        let mut held = self.held.lock().expect("not poisoned");
        held.put(queue, t, Instant::now());
    }

    /// Up to `want` held tokens that have not run out.
    fn take_held(&self, queue: &str, want: usize) -> Option<Tokens> {
        let mut held = self.held.lock().expect("not poisoned");
        held.take(queue, want, Instant::now())
    }

    /// One compare-and-set on the queue's bucket.
    async fn draw(
        &self,
        queue: &str,
        rate: Rate,
        want: usize,
    ) -> Result<Drawn, Box<dyn std::error::Error + Send + Sync>> {
        let key = b64().encode(queue);
        let (value, revision) = kv::last_entry(&self.bucket, &key).await?;
        let now = crate::queue::now_ms();
        let mut bucket = value
            .and_then(|v| serde_json::from_slice::<Bucket>(&v).ok())
            .unwrap_or_else(|| Bucket::full(rate, now));
        bucket.refill(rate, now);
        let whole = bucket.tokens.floor() as usize;
        if whole == 0 {
            return Ok(Drawn::Empty(bucket.until_one(rate)));
        }
        let n = whole.min(want.max(block(rate)));
        bucket.tokens -= n as f64;
        // Held from before the write: a grant is never used later than
        // `hold` after the bucket counted it out.
        let until = Instant::now() + hold(rate);
        let value = serde_json::to_vec(&bucket).expect("a bucket serializes");
        match self.bucket.update(&key, value.into(), revision).await {
            Ok(_) => Ok(Drawn::Granted(n, until)),
            Err(e)
                if kv::revision_moved(&e)
                    || kv::revision_not_checked(&e)
                    || kv::reached_no_stream(&e) =>
            {
                Ok(Drawn::Moved)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_refills_evenly_up_to_one_period_and_never_goes_back() {
        let r = rate("10/1s");
        let mut b = Bucket::full(r, 1_000);
        b.tokens = 0.0;
        assert_eq!(b.until_one(r), Duration::from_millis(100));
        b.refill(r, 1_350);
        assert!((b.tokens - 3.5).abs() < 1e-9, "{b:?}");
        // A clock behind the bucket's adds nothing and keeps its time.
        b.refill(r, 1_200);
        assert!((b.tokens - 3.5).abs() < 1e-9 && b.at_ms == 1_350, "{b:?}");
        b.refill(r, 100_000);
        assert_eq!(b.tokens, 10.0, "never more than a period's worth");
        // A rate lowered since: the bucket holds the new period's at most.
        b.refill(rate("4/1s"), 100_001);
        assert_eq!(b.tokens, 4.0);
    }

    #[test]
    fn held_tokens_are_never_given_after_their_hold_runs_out() {
        let t0 = Instant::now();
        let mut held = Holdings::default();
        let first = Tokens {
            count: 3,
            until: t0 + HOLD,
        };
        held.put("q", first, t0);
        let got = held.take("q", 2, t0).unwrap();
        assert_eq!((got.count, got.until), (2, t0 + HOLD));
        // A later write's tokens join, held until the earlier one's end.
        let later = Tokens {
            count: 5,
            until: t0 + HOLD * 2,
        };
        held.put("q", later, t0 + HOLD / 2);
        let got = held.take("q", 10, t0 + HOLD / 2).unwrap();
        assert_eq!((got.count, got.until), (6, t0 + HOLD));
        assert!(held.take("q", 1, t0 + HOLD / 2).is_none(), "all given");
        // Put back unused, then out of time: gone, not carried over.
        held.put("q", got, t0 + HOLD / 2);
        assert!(held.take("q", 1, t0 + HOLD).is_none());
        assert!(held.take("other", 1, t0).is_none());
        // Tokens already out of time are not held at all.
        held.put("q", later, t0 + HOLD * 2);
        assert!(held.take("q", 1, t0 + HOLD * 2).is_none());
    }

    #[test]
    fn a_block_is_the_refill_of_the_hold_time() {
        assert_eq!(block(rate("10/1s")), 3);
        assert_eq!(block(rate("1000/1s")), 250);
        assert_eq!(block(rate("1/1m")), 1);
        assert_eq!(hold(rate("10/100ms")), Duration::from_millis(25));
        assert_eq!(block(rate("10/100ms")), 3);
    }
}
