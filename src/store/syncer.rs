//! The syncer: one thread that makes applied writes durable. A round flushes
//! sled, fdatasyncs the blob files it has not synced yet (then `blobs/`),
//! and last the log, so the log never becomes durable pointing at a blob
//! that is not. One round covers every write applied before it started
//! (group commit); rounds run only while someone waits for one.
//!
//! Under sustained demand (a sync was wanted again before the last round
//! ended) the next round waits until [`GATHER`] after the last one ended,
//! so it covers more batches. Each round has a fixed cost far above its
//! per-batch cost: sled hands its log write to its IO pool, whose condvar
//! wakes all seven idle IO threads one after another, then the write, the
//! `sync_file_range` and our `fdatasync`. Measured under 64 producers: about
//! 1,250 rounds/s of ~23 jobs each, and a quarter of the engine's CPU per
//! job in rounds. A lone writer never waits: nothing was wanted during its
//! round, so its next round starts at once.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Shared, StoreError};

/// sled creates its files and directories without ever fsyncing them or
/// their entries: make the store's skeleton durable at open, before
/// anything is acknowledged (the log's own entry included: `db` may be new).
pub(super) fn sync_layout(dir: &Path) -> Result<(), StoreError> {
    for file in ["conf", "db"] {
        let path = dir.join(file);
        if path.exists() {
            File::open(&path)?.sync_all()?;
        }
    }
    let blobs = dir.join("blobs");
    if blobs.is_dir() {
        sync_dir(&blobs)?;
    }
    sync_dir(dir)?;
    // The store directory's entry in the data directory, and the data
    // directory's in its parent: `open` may have created both.
    for up in dir.ancestors().skip(1).take(2) {
        if !up.as_os_str().is_empty() {
            sync_dir(up)?;
        }
    }
    Ok(())
}

/// fsyncs a directory: its entries (new files, renames) become durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The blob files the syncer has made durable. Kept by name rather than by
/// the highest number: sled may finish writing a blob with a lower number
/// after one with a higher number (its IO buffers are written concurrently).
pub(super) struct Blobs {
    dir: PathBuf,
    synced: HashSet<std::ffi::OsString>,
}

impl Blobs {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            synced: HashSet::new(),
        }
    }

    /// fdatasyncs every blob file not synced yet, then the directory if any
    /// was new. Forgets blobs sled has removed. Returns how many it synced.
    pub(super) fn sync_new(&mut self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            // sled creates the directory with the first blob.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::with_capacity(self.synced.len());
        let mut fresh = 0;
        for entry in entries {
            let name = entry?.file_name();
            if !self.synced.contains(&name) {
                match File::open(self.dir.join(&name)) {
                    Ok(f) => f.sync_data()?,
                    // Removed by sled's garbage collection meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                fresh += 1;
            }
            present.insert(name);
        }
        if fresh > 0 {
            sync_dir(&self.dir)?;
        }
        self.synced = present;
        Ok(fresh)
    }
}

/// How long after a round ends the next waits for more batches, when a
/// sync was wanted again during that round. At most this much latency,
/// only under concurrent load: BENCHMARKS.md ("Fewer sync rounds") has the
/// measurements behind the figure.
pub(super) const GATHER: Duration = Duration::from_micros(500);

/// The syncer's loop, until the store closes. While the store is broken it
/// waits for the mender: a broken sled fails every flush.
pub(super) fn run(s: &Shared, blobs: &mut Blobs) {
    // When the next round may start: set after a round during which a
    // sync was wanted again (sustained demand), else now.
    let mut not_before: Option<Instant> = None;
    loop {
        let (target, synced) = {
            let mut st = s.lock();
            loop {
                let synced = s.covered.load(Ordering::Acquire);
                if st.closed {
                    return;
                }
                if st.wanted > synced && !s.broken.load(Ordering::Acquire) {
                    match not_before.map(|at| at.saturating_duration_since(Instant::now())) {
                        Some(left) if !left.is_zero() => {
                            st = s
                                .wake
                                .wait_timeout(st, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                            continue;
                        }
                        _ => break (st.applied, synced),
                    }
                }
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Ok(sled) = s.live() else { continue };
        let started = std::time::Instant::now();
        // sled holds its batch writers back while it flushes (apply_batch
        // waits), but not during the fdatasync: the two are timed apart.
        let mut flushed_us = 0;
        let mut blob_files = 0;
        let result = sled.db.flush().map_err(StoreError::Sled).and_then(|_| {
            flushed_us = started.elapsed().as_micros() as u64;
            // Blobs first: the log must not become durable pointing at a blob that is not.
            blob_files = blobs.sync_new()?;
            Ok(sled.log.sync_data()?)
        });
        drop(sled);
        let ended = Instant::now();
        not_before = (s.lock().wanted > target).then(|| ended + GATHER);
        match result {
            Ok(()) => {
                let micros = started.elapsed().as_micros() as u64;
                tracing::trace!(
                    batches = target - synced,
                    flush_us = flushed_us,
                    blob_files,
                    micros,
                    "store synced"
                );
                // A reopening in the meantime forgot these tickets (and
                // moved `covered` past them): never report them durable.
                if s.covered.fetch_max(target, Ordering::AcqRel) > target {
                    continue;
                }
                s.rounds.fetch_add(1, Ordering::Relaxed);
                s.round_micros.fetch_add(micros, Ordering::Relaxed);
                *s.fault.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // `send` drops the value when nobody is subscribed, and a waiter
                // arriving later would wait for a round that never comes.
                let _previous = s.synced.send_replace(Ok(target));
            }
            Err(e) => {
                let fault = s.broke(&e);
                let _previous = s.synced.send_replace(Err(fault));
            }
        }
    }
}
