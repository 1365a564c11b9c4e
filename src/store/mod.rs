//! The embedded store: sled, laid out by [`layout`], records by [`codec`] and
//! [`records`], schema steps by [`migrations`]. The durable queue reaches it
//! only through [`queue::QueueStore`] (typed writes and range reads; its
//! contract is written there).
//!
//! Durability: sled's `flush` ends with `sync_file_range`, which neither
//! flushes the drive's cache nor metadata, so after each flush the syncer also
//! `fdatasync`s sled's log file. Writers apply batches (cheap, in memory) and
//! get a [`Ticket`]; [`Store::durable`] resolves once a sync has covered it.
//! One sync covers every batch applied before it started: group commit.
//! A sync runs only when someone waits for one: batches nobody waits on
//! (a job starting, an attempt's outcome) ride along with the next sync, or
//! sled's own periodic flush.
//!
//! Large values: sled 0.34.7 writes any log item bigger than a quarter of its
//! segment (512 KiB, so about 128 KiB: `pagecache/logger.rs`, `segment_size /
//! MINIMUM_ITEMS_PER_SEGMENT - SEG_HEADER_LEN`) to its own file under
//! `blobs/`, and never fsyncs it (`pagecache/blob_io.rs`); the log only holds
//! a pointer. So a sync also fsyncs every blob file it has not synced yet and
//! then the `blobs/` directory, before the log: the log never points at a
//! blob that is not on disk when an acknowledgement goes out. (A bigger
//! segment would keep values inline, but sled refuses to open a store whose
//! segment size changed, and a leaf sled rewrites whole can hold several
//! large values, so no segment size bounds it.)

pub mod codec;
pub mod cron;
pub mod layout;
pub mod migrations;
pub mod queue;
pub mod realtime;
pub mod records;
pub mod state;
pub mod stream;
pub mod topics;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

pub use codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record: {0}")]
    Codec(#[from] CodecError),
    #[error(
        "the store at {path} has schema version {found}, newer than this engine's {supported}; use a newer qmesh"
    )]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("migration to schema version {version} failed: {reason}")]
    Migration { version: u32, reason: String },
    #[error("store sync failed: {0}")]
    Sync(String),
    #[error("the store's disk is full: {0}")]
    Full(String),
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the error says the disk (or the process's file size limit)
    /// has no room: sled reports its IO errors as `sled::Error::Io`.
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Full(_) => true,
            StoreError::Sled(sled::Error::Io(e)) | StoreError::Io(e) => io_is_full(e),
            _ => false,
        }
    }
}

fn io_is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge)
}

/// Why the last sync round failed, as every waiter for it sees it.
#[derive(Clone, Debug)]
pub struct Fault {
    pub full: bool,
    pub message: String,
}

impl Fault {
    fn of(e: &StoreError) -> Self {
        Self {
            full: e.is_full(),
            message: e.to_string(),
        }
    }

    fn to_error(&self) -> StoreError {
        if self.full {
            StoreError::Full(self.message.clone())
        } else {
            StoreError::Sync(self.message.clone())
        }
    }
}

/// Identifies an applied batch; durable once a sync has covered it.
pub type Ticket = u64;

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    syncer: Arc<Syncer>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
}

struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    synced: watch::Sender<Result<Ticket, Fault>>,
    /// The store's last failure (a write sled refused, or a sync), cleared
    /// by the next sync that succeeds: what `/health` reports.
    fault: Mutex<Option<Fault>>,
    /// The last ticket a sync covered, kept apart from `synced`, which holds
    /// the error while syncs fail.
    covered: AtomicU64,
    /// Sync rounds that succeeded, and the time they took (for `/metrics`).
    rounds: AtomicU64,
    round_micros: AtomicU64,
}

/// What the syncer has done since the store opened: rounds that succeeded
/// and the time they took (flush, blob fsyncs and the log's fdatasync).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncStats {
    pub rounds: u64,
    pub seconds: f64,
}

struct SyncState {
    applied: Ticket,
    /// The highest ticket someone waits for.
    wanted: Ticket,
    closed: bool,
}

impl Store {
    /// Opens (or creates) the store in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(128 << 20)
            .flush_every_ms(Some(500))
            .open()?;
        migrations::run(&db, dir, migrations::STEPS)?;
        let tree = db.open_tree(layout::QUEUE_TREE)?;
        let log = File::open(dir.join("db"))?;
        sync_layout(dir)?;
        let mut blobs = Blobs::new(dir.join("blobs"));
        blobs.sync_new().map_err(StoreError::Io)?;
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState {
                applied: 0,
                wanted: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            synced: watch::channel(Ok(0)).0,
            covered: AtomicU64::new(0),
            fault: Mutex::new(None),
            rounds: AtomicU64::new(0),
            round_micros: AtomicU64::new(0),
        });
        let (s, d) = (syncer.clone(), db.clone());
        let sync_thread = std::thread::Builder::new()
            .name("qmesh-store-sync".into())
            .spawn(move || sync_loop(&s, &d, &log, &mut blobs))?;
        Ok(Self {
            db,
            tree,
            syncer,
            sync_thread: Some(sync_thread),
        })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Applies a batch atomically. It is visible at once and durable after [`Store::durable`].
    ///
    /// sled holds every batch back while a sync's flush writes and waits
    /// for the disk (its batch lock is exclusive, its flush shares it). A
    /// write of one key needs no batch: [`Store::put`] and [`Store::remove`]
    /// go past a flush in progress.
    pub fn apply(&self, batch: sled::Batch) -> Result<Ticket, StoreError> {
        let t = std::time::Instant::now();
        let applied = self.tree.apply_batch(batch);
        let us = t.elapsed().as_micros() as u64;
        if us > 300 {
            tracing::trace!(micros = us, "slow apply");
        }
        self.written(applied)
    }

    /// Writes one key (atomic on its own), not held back by a flush.
    /// Visible at once and durable after [`Store::durable`].
    pub fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<Ticket, StoreError> {
        self.written(self.tree.insert(key, value).map(drop))
    }

    /// Removes one key, as [`Store::put`] writes one.
    pub fn remove(&self, key: Vec<u8>) -> Result<Ticket, StoreError> {
        self.written(self.tree.remove(key).map(drop))
    }

    /// The ticket of a write sled took, or its error, kept for `/health`.
    /// The ticket is drawn after the write: a sync that reads `applied`
    /// afterwards flushes past it.
    fn written(&self, result: sled::Result<()>) -> Result<Ticket, StoreError> {
        if let Err(e) = result {
            let e = StoreError::Sled(e);
            *self.syncer.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(Fault::of(&e));
            return Err(e);
        }
        let mut st = self.syncer.state.lock().unwrap_or_else(|e| e.into_inner());
        st.applied += 1;
        Ok(st.applied)
    }

    /// Asks for a sync covering `ticket` now, before anyone waits for it: a
    /// writer that hands the wait to a task would otherwise leave the syncer
    /// idle until that task is polled.
    pub fn want(&self, ticket: Ticket) {
        {
            let mut st = self.syncer.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.wanted >= ticket {
                return;
            }
            st.wanted = ticket;
        }
        self.syncer.wake.notify_one();
    }

    /// Resolves once everything up to `ticket` is on disk (flushed and fdatasync'ed).
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut rx = self.syncer.synced.subscribe();
        self.want(ticket);
        loop {
            match &*rx.borrow_and_update() {
                Ok(done) if *done >= ticket => return Ok(()),
                Ok(_) => {}
                Err(fault) => return Err(fault.to_error()),
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Sync("syncer stopped".into()));
            }
        }
    }

    /// The highest ticket a finished sync has covered.
    pub fn synced(&self) -> Ticket {
        self.syncer.covered.load(Ordering::Acquire)
    }

    /// Changes each time a sync finishes (or fails).
    pub fn sync_events(&self) -> watch::Receiver<Result<Ticket, Fault>> {
        self.syncer.synced.subscribe()
    }

    /// The store's last failure, until a sync succeeds after it.
    /// Sync rounds so far and their total time.
    pub fn sync_stats(&self) -> SyncStats {
        SyncStats {
            rounds: self.syncer.rounds.load(Ordering::Relaxed),
            seconds: self.syncer.round_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// The store's size on disk, as sled counts it (log, snapshots, blobs).
    pub fn bytes_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub fn fault(&self) -> Option<Fault> {
        self.syncer
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }

    /// The distinct leading parts of the keys under `prefix` (scopes,
    /// streams, groups), one read each: `part` names a key's part and the
    /// prefix of every key sharing it, which the scan then skips past.
    pub(crate) fn distinct<T>(
        &self,
        prefix: Vec<u8>,
        part: impl Fn(&[u8]) -> Option<(T, Vec<u8>)>,
    ) -> Result<Vec<T>, StoreError> {
        let end = layout::prefix_end(&prefix);
        let mut from = prefix;
        let mut out = Vec::new();
        while let Some(entry) = self.tree.range(from.clone()..end.clone()).next() {
            let (k, _) = entry?;
            let Some((value, shared)) = part(&k) else {
                break;
            };
            from = layout::prefix_end(&shared);
            out.push(value);
        }
        Ok(out)
    }
}

/// Encodes a record for a batch.
pub fn record<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value)
}

impl Drop for Store {
    fn drop(&mut self) {
        self.syncer
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.syncer.wake.notify_one();
        let _ = self.db.flush();
        // The thread holds a handle on the database; join it so the file lock is
        // released when the store is dropped (a restart in the same process reopens it).
        if let Some(t) = self.sync_thread.take() {
            let _ = t.join();
        }
    }
}

/// sled creates its files and directories without ever fsyncing them or
/// their entries: make the store's skeleton durable once, at open, before
/// anything is acknowledged (the log's own entry included: `db` may be new).
fn sync_layout(dir: &Path) -> Result<(), StoreError> {
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
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The blob files the syncer has made durable. Kept by name rather than by
/// the highest number: sled may finish writing a blob with a lower number
/// after one with a higher number (its IO buffers are written concurrently).
struct Blobs {
    dir: PathBuf,
    synced: HashSet<std::ffi::OsString>,
}

impl Blobs {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            synced: HashSet::new(),
        }
    }

    /// fdatasyncs every blob file not synced yet, then the directory if any
    /// was new. Forgets blobs sled has removed. Returns how many it synced.
    fn sync_new(&mut self) -> std::io::Result<usize> {
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

fn sync_loop(s: &Syncer, db: &sled::Db, log: &File, blobs: &mut Blobs) {
    let mut synced: Ticket = 0;
    loop {
        let target = {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.wanted <= synced && !st.closed {
                st = s.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.closed {
                return;
            }
            st.applied
        };
        let started = std::time::Instant::now();
        // sled holds its writers back while it flushes (apply_batch waits),
        // but not during the fdatasync: the two are timed apart.
        let mut flushed_us = 0;
        let mut blob_files = 0;
        let result = db.flush().map_err(StoreError::Sled).and_then(|_| {
            flushed_us = started.elapsed().as_micros() as u64;
            // Blobs first: the log must not become durable pointing at a blob that is not.
            blob_files = blobs.sync_new()?;
            Ok(log.sync_data()?)
        });
        match result {
            Ok(()) => {
                tracing::trace!(
                    batches = target - synced,
                    flush_us = flushed_us,
                    blob_files,
                    micros = started.elapsed().as_micros() as u64,
                    "store synced"
                );
                synced = target;
                s.covered.store(synced, Ordering::Release);
                s.rounds.fetch_add(1, Ordering::Relaxed);
                (s.round_micros).fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                *s.fault.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // `send` drops the value when nobody is subscribed, and a waiter
                // arriving later would wait for a round that never comes.
                let _previous = s.synced.send_replace(Ok(synced));
            }
            Err(e) => {
                tracing::error!(error = %e, "store sync failed; acknowledgements are held back");
                let fault = Fault::of(&e);
                *s.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault.clone());
                let _previous = s.synced.send_replace(Err(fault));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Acknowledgements must not depend on who happened to be waiting when a
    /// sync finished. Batches applied while the syncer is busy are covered by
    /// its next round, which may end when nobody waits; a waiter that comes
    /// afterwards must still see that round (the syncer has no reason to run
    /// again for it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_nobody_waited_for_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let apply = |i: u32| {
            let mut batch = sled::Batch::default();
            batch.insert(&i.to_be_bytes(), &[]);
            store.apply(batch).unwrap()
        };
        let first = apply(0);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.durable(first).await }
        });
        // Apply while the first round is in flight, with nobody waiting on these.
        let mut last = first;
        for i in 1.. {
            last = apply(i);
            if waiter.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        waiter.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::time::timeout(Duration::from_secs(5), store.durable(last))
            .await
            .expect("a batch the syncer already covered is acknowledged")
            .unwrap();
    }
}
