//! Waits on conditions, for the tests and the benches (which include this
//! file with `#[path]`, so it uses nothing else from `tests/common`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How often [`wait_for`] re-checks a condition nothing signals.
pub const POLL: Duration = Duration::from_millis(5);

/// Waits until `check` returns `Ok`, and returns its value; `Err` carries
/// what was seen instead, shown if `within` runs out. For facts the engine
/// does not signal (a count, a state), re-checked every few milliseconds.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `cond` holds (see [`wait_for`]).
pub async fn wait_until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    wait_for(what, within, async || {
        if cond().await {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await
}
