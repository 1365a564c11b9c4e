//! The syncer: one thread that makes applied writes durable. A round
//! fdatasyncs the blob files closed since the last round (then `blobs/`),
//! flushes sled, syncs the blobs closed meanwhile, and last fdatasyncs the
//! log: sled's flush never writes a pointer to a blob of the round's batches
//! that is not on disk, and the log never becomes durable pointing at one.
//! One round covers every write applied before it started (group commit).
//! Rounds run when someone waits for one, and every [`PERIOD`] while writes
//! nobody waits for are unsynced.
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

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
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

/// Finds the blob files a round must fsync. sled writes each blob whole and
/// closes it before it reserves the log entry that points at it, so every
/// blob a round's batches point at was closed before the round began.
///
/// On Linux an inotify watch on `blobs/` hands over exactly the files closed
/// since the last round (one `read` that usually finds nothing), and never a
/// file still being written: fsyncing a file mid-write and counting it synced
/// would leave its tail unsynced when a later round's batch points at it.
/// Elsewhere, or when inotify is unavailable, each round lists the directory
/// and fsyncs each file it has not synced at its present length (a file
/// still being written is synced again once it has grown).
pub(super) struct Blobs {
    dir: PathBuf,
    #[cfg(target_os = "linux")]
    watch: Option<Watch>,
    /// Without a watch: the length at which each file was last synced.
    synced: HashMap<OsString, u64>,
    /// With a watch, the next round syncs every file in the directory: at
    /// open (files closed before the watch began) and after the watch's
    /// queue overflowed (events were lost).
    rescan: bool,
}

#[cfg(target_os = "linux")]
struct Watch {
    inotify: inotify::Inotify,
    buffer: Vec<u8>,
}

impl Blobs {
    /// Without a watch: each round lists the directory.
    #[cfg(test)]
    fn listing(dir: PathBuf) -> Self {
        Self {
            dir,
            #[cfg(target_os = "linux")]
            watch: None,
            synced: HashMap::new(),
            rescan: false,
        }
    }

    pub(super) fn new(dir: PathBuf) -> Self {
        #[cfg(target_os = "linux")]
        let watch = match watch(&dir) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "no inotify watch on the store's blobs: each sync lists them");
                None
            }
        };
        Self {
            dir,
            #[cfg(target_os = "linux")]
            watch,
            synced: HashMap::new(),
            rescan: true,
        }
    }

    /// fdatasyncs every blob file closed since the last call (or not synced
    /// at its length yet, without a watch), then the directory if any was
    /// new. Returns how many it synced.
    pub(super) fn sync_new(&mut self) -> std::io::Result<usize> {
        #[cfg(target_os = "linux")]
        if let Some(watch) = self.watch.as_mut() {
            let mut closed = HashSet::new();
            self.rescan |= watch.drain(&mut closed)?;
            if std::mem::take(&mut self.rescan) {
                closed.extend(self.list()?.into_keys());
            }
            return sync_files(&self.dir, closed);
        }
        let present = self.list()?;
        let grown = (present.iter())
            .filter(|(name, len)| self.synced.get(*name) != Some(len))
            .map(|(name, _)| name.clone())
            .collect();
        let synced = sync_files(&self.dir, grown)?;
        // Forgets the files sled removed.
        self.synced = present;
        Ok(synced)
    }

    /// The files in `blobs/` now and their lengths (none before sled's
    /// first blob).
    fn list(&self) -> std::io::Result<HashMap<OsString, u64>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(e),
        };
        let mut out = HashMap::new();
        for entry in entries {
            let entry = entry?;
            match entry.metadata() {
                Ok(m) => out.insert(entry.file_name(), m.len()),
                // Removed by sled's garbage collection meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
        }
        Ok(out)
    }
}

/// fdatasyncs each named blob file (skipping those sled removed meanwhile),
/// then the directory, which holds their entries, if any was synced.
fn sync_files(dir: &Path, names: HashSet<OsString>) -> std::io::Result<usize> {
    let mut synced = 0;
    for name in names {
        match File::open(dir.join(&name)) {
            Ok(f) => f.sync_data()?,
            // Removed by sled's garbage collection meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        synced += 1;
    }
    if synced > 0 {
        sync_dir(dir)?;
    }
    Ok(synced)
}

#[cfg(target_os = "linux")]
fn watch(dir: &Path) -> std::io::Result<Watch> {
    // sled creates `blobs/` when it opens; watched before the first listing.
    std::fs::create_dir_all(dir)?;
    let inotify = inotify::Inotify::init()?;
    inotify.watches().add(
        dir,
        inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::MOVED_TO,
    )?;
    Ok(Watch {
        inotify,
        buffer: vec![0; 16 * 1024],
    })
}

#[cfg(target_os = "linux")]
impl Watch {
    /// Adds the files closed after writing since the last drain to `closed`;
    /// true when the kernel's queue overflowed (events were lost: list).
    fn drain(&mut self, closed: &mut HashSet<OsString>) -> std::io::Result<bool> {
        let mut overflowed = false;
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(overflowed),
                Err(e) => return Err(e),
            };
            for event in events {
                if event.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                    overflowed = true;
                }
                if let Some(name) = event.name {
                    closed.insert(name.to_owned());
                }
            }
        }
    }
}

/// How long after a round ends the next waits for more batches, when a
/// sync was wanted again during that round. At most this much latency,
/// only under concurrent load: BENCHMARKS.md ("Fewer sync rounds") has the
/// measurements behind the figure.
pub(super) const GATHER: Duration = Duration::from_micros(500);

/// Writes nobody waits for (a job's start, an attempt's outcome, a state
/// write answered at once) are synced by a round at least this often.
/// sled's own periodic flush is off (`Sled::open`): it wrote the log
/// without the blob files the log points at being fsynced first.
pub(super) const PERIOD: Duration = Duration::from_millis(500);

/// The syncer's loop, until the store closes. While the store is broken it
/// waits for the mender: a broken sled fails every flush.
pub(super) fn run(s: &Shared, blobs: &mut Blobs) {
    // When the next round may start: set after a round during which a
    // sync was wanted again (sustained demand).
    let mut not_before: Option<Instant> = None;
    let mut last_round = Instant::now();
    loop {
        // A sleep, not a wait on `wake`: each batch applied meanwhile would
        // wake the syncer for nothing.
        if let Some(at) = not_before.take() {
            let left = at.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
        }
        let (target, synced) = {
            let mut st = s.lock();
            loop {
                let synced = s.covered.load(Ordering::Acquire);
                if st.closed {
                    return;
                }
                let unsynced = st.applied > synced && !s.broken.load(Ordering::Acquire);
                let due = last_round + PERIOD;
                if unsynced && (st.wanted > synced || Instant::now() >= due) {
                    break (st.applied, synced);
                }
                // Timed even with nothing unsynced: a write nobody waits
                // for does not wake the syncer, so it looks again each PERIOD.
                let left = match unsynced {
                    true => due.saturating_duration_since(Instant::now()),
                    false => PERIOD,
                };
                st = (s.wake.wait_timeout(st, left))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let Ok(sled) = s.live() else { continue };
        let started = Instant::now();
        let mut flushed_us = 0;
        let mut blob_files = 0;
        // The blobs the round's batches point at were closed before the
        // round began (sled writes a blob before the log entry pointing at
        // it): synced before sled's flush writes those entries to the log.
        // Then again after it, for blobs of batches that reached the log
        // during the flush, before the log's own fdatasync.
        let result = blobs.sync_new().map_err(StoreError::from).and_then(|n| {
            blob_files = n;
            let flush = Instant::now();
            sled.db.flush().map_err(StoreError::Sled)?;
            flushed_us = flush.elapsed().as_micros() as u64;
            blob_files += blobs.sync_new()?;
            Ok(sled.log.sync_data()?)
        });
        drop(sled);
        let ended = Instant::now();
        last_round = ended;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_blob_is_synced_once_after_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let blobs_dir = dir.path().join("blobs");
        std::fs::create_dir(&blobs_dir).unwrap();
        std::fs::write(blobs_dir.join("1"), b"before open").unwrap();
        let mut blobs = Blobs::new(blobs_dir.clone());
        assert_eq!(blobs.sync_new().unwrap(), 1, "the blobs found at open");
        assert_eq!(blobs.sync_new().unwrap(), 0);

        let mut open = File::create(blobs_dir.join("2")).unwrap();
        open.write_all(b"half").unwrap();
        #[cfg(target_os = "linux")]
        assert_eq!(blobs.sync_new().unwrap(), 0, "still being written");
        open.write_all(b" and the rest").unwrap();
        drop(open);
        assert_eq!(blobs.sync_new().unwrap(), 1);
        assert_eq!(blobs.sync_new().unwrap(), 0, "synced once");
    }

    #[test]
    fn listing_syncs_a_blob_again_once_it_has_grown() {
        let dir = tempfile::tempdir().unwrap();
        let mut blobs = Blobs::listing(dir.path().join("blobs"));
        assert_eq!(blobs.sync_new().unwrap(), 0, "no directory yet");
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        let mut open = File::create(dir.path().join("blobs/7")).unwrap();
        open.write_all(b"half").unwrap();
        assert_eq!(blobs.sync_new().unwrap(), 1);
        assert_eq!(blobs.sync_new().unwrap(), 0);
        open.write_all(b" and the rest").unwrap();
        drop(open);
        assert_eq!(blobs.sync_new().unwrap(), 1, "grown since");
        std::fs::remove_file(dir.path().join("blobs/7")).unwrap();
        assert_eq!(blobs.sync_new().unwrap(), 0);
    }
}
