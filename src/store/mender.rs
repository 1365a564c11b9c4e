//! The mender: after a write or a sync failed (a full disk, an IO error),
//! it reopens the store, so the engine recovers by itself once the cause
//! is gone. sled 0.34.7 keeps an IO error for good, so nothing short of a
//! fresh instance can write again; reopening reads the log as a restart
//! would, and loses exactly what a kill -9 at the failure would have lost:
//! writes no sync covered, none of them acknowledged.
//!
//! Each try first checks with a probe file that the log has room to grow
//! (a full disk fails it at once, without reopening sled), then swaps the
//! broken instance for a fresh one. Tries back off from 1 s to 10 s.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Shared, Sled, StoreError};

const FIRST_TRY: Duration = Duration::from_secs(1);
const LAST_TRY_EVERY: Duration = Duration::from_secs(10);
/// What the probe writes: a few of sled's 512 KiB segments.
const PROBE_BYTES: usize = 2 << 20;

pub(super) fn run(s: &Shared) {
    let mut wait = FIRST_TRY;
    loop {
        {
            let mut st = s.lock();
            while !s.broken.load(Ordering::Acquire) && !st.closed {
                wait = FIRST_TRY;
                st = s.mend.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            // Give the cause time to go, waking early only to close.
            let (st, _) = s
                .mend
                .wait_timeout_while(st, wait, |st| !st.closed)
                .unwrap_or_else(|e| e.into_inner());
            if st.closed {
                return;
            }
        }
        match reopen(s) {
            Ok(()) => tracing::warn!("the store is reopened and accepts writes again"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "the store cannot be reopened yet");
                wait = (wait * 2).min(LAST_TRY_EVERY);
            }
        }
    }
}

fn reopen(s: &Shared) -> Result<(), StoreError> {
    probe(&s.dir)?;
    // Let go of the broken instance first: sled locks its files, and a
    // fresh instance opens only once every handle on the old one is gone
    // (an operation still holding one makes this try fail; the next works).
    let old = s.live.write().unwrap_or_else(|e| e.into_inner()).take();
    drop(old);
    let fresh = Sled::open(&s.dir)?;
    let mut st = s.lock();
    let covered = s.covered.load(Ordering::Acquire);
    if st.applied > covered {
        let why = s
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| super::Fault {
                full: false,
                message: "the store was reopened".into(),
            });
        let applied = st.applied;
        st.lost.push((covered + 1, applied, why));
    }
    s.covered.store(st.applied, Ordering::Release);
    *s.live.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(fresh));
    *s.fault.lock().unwrap_or_else(|e| e.into_inner()) = None;
    s.broken.store(false, Ordering::Release);
    let _previous = s.synced.send_replace(Ok(st.applied));
    s.reopened.send_modify(|n| *n += 1);
    s.wake.notify_one();
    Ok(())
}

/// Whether sled's log has room to grow: writes [`PROBE_BYTES`] into a file
/// next to it at the offset the log has reached (the bytes before stay a
/// hole, taking no room), fsyncs and removes it. A full disk and a file size
/// limit both refuse it.
fn probe(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join("reopen-probe");
    let result = (|| {
        let log_len = std::fs::metadata(dir.join("db"))?.len();
        let f = std::fs::File::create(&path)?;
        f.write_all_at(&vec![0u8; PROBE_BYTES], log_len)?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| {
        if super::io_is_full(&e) {
            StoreError::Full(format!("the disk has no room yet: {e}"))
        } else {
            StoreError::Io(e)
        }
    })
}
