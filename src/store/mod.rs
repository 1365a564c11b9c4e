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
//! A sync runs when someone waits for one: batches nobody waits on (a job
//! starting, an attempt's outcome) ride along with the next sync, or the
//! syncer's periodic round (500 ms; sled's own periodic flush is off, as it
//! wrote the log before the blobs it points at were synced). The syncer is
//! `syncer.rs`.
//!
//! Failure: a write or sync that fails breaks the store (it refuses reads
//! and writes), and `mender.rs` reopens it once the disk has room again.
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

mod bundles;
pub mod codec;
pub mod cron;
pub mod layout;
mod mender;
pub mod migrations;
pub mod queue;
mod ready;
pub mod realtime;
pub mod records;
pub mod state;
pub mod stream;
mod syncer;
pub mod topics;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;
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
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What the store's threads (syncer, mender) share with it.
struct Shared {
    dir: PathBuf,
    /// The open sled instance; `None` while the mender swaps a broken one
    /// for a fresh one.
    live: RwLock<Option<Arc<Sled>>>,
    /// A write or a sync failed: sled 0.34.7 keeps an IO error for good
    /// (every later write fails, and a read that must split a node retries
    /// its log write forever), so the store refuses reads and writes until
    /// the mender has reopened it.
    broken: AtomicBool,
    state: Mutex<SyncState>,
    /// Wakes the syncer (a sync is wanted, the store reopened or closes).
    wake: Condvar,
    /// Wakes the mender (the store broke or closes).
    mend: Condvar,
    synced: watch::Sender<Result<Ticket, Fault>>,
    /// Counts reopenings: whoever keeps state derived from the store reloads it.
    reopened: watch::Sender<u64>,
    /// The store's last failure (a write sled refused, or a sync), cleared
    /// by the next sync that succeeds or by a reopening: what `/health` reports.
    fault: Mutex<Option<Fault>>,
    /// The last ticket a sync covered, kept apart from `synced`, which holds
    /// the error while syncs fail.
    covered: AtomicU64,
    /// Serialises [`Store::apply_logged`] calls and numbers their undo entries.
    undo: Mutex<u64>,
    /// Sync rounds that succeeded, and the time they took (for `/metrics`).
    rounds: AtomicU64,
    round_micros: AtomicU64,
}

/// One open sled instance: the database, the queue tree, and its log file
/// (which the syncer fdatasyncs after sled's flush).
struct Sled {
    db: sled::Db,
    tree: sled::Tree,
    /// The undo entry of the queue batch being written (see [`Store::apply_logged`]).
    undo: sled::Tree,
    log: File,
}

impl Sled {
    /// Opens (or creates) sled in `dir`, brings the schema up to date and
    /// makes the files sled created durable.
    fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(128 << 20)
            // The syncer's periodic round replaces sled's: see `syncer::PERIOD`.
            .flush_every_ms(None)
            .open()?;
        migrations::run(&db, dir, migrations::STEPS)?;
        let tree = db.open_tree(layout::QUEUE_TREE)?;
        let undo = db.open_tree(layout::UNDO_TREE)?;
        if undo_interrupted(&tree, &undo)? > 0 {
            db.flush()?;
        }
        let log = File::open(dir.join("db"))?;
        syncer::sync_layout(dir)?;
        Ok(Self {
            db,
            tree,
            undo,
            log,
        })
    }
}

/// Undoes the batch a crash interrupted in `tree`, if any (see
/// [`Store::apply_logged`]): every key back to what its entry in `undo`
/// says, in one batch, then the entry removed (a crash in between undoes it
/// again, to the same values). Returns how many entries it undid.
fn undo_interrupted(tree: &sled::Tree, undo: &sled::Tree) -> Result<usize, StoreError> {
    let mut n = 0;
    for entry in undo.iter() {
        let (key, value) = entry?;
        let record: records::UndoRecord = codec::decode(&value)?;
        let mut batch = sled::Batch::default();
        for before in record.before {
            match before.value {
                Some(v) => batch.insert(before.key, v),
                None => batch.remove(before.key),
            }
        }
        tree.apply_batch(batch)?;
        undo.remove(key)?;
        n += 1;
    }
    if n > 0 {
        tracing::info!(
            batches = n,
            "store: undid the batch a crash interrupted (it was never acknowledged)"
        );
    }
    Ok(n)
}

/// What each key `ops` writes holds now (its first write's "before").
fn before_images(tree: &sled::Tree, ops: &[Write]) -> sled::Result<records::UndoRecord> {
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    let mut before = Vec::with_capacity(ops.len());
    for op in ops {
        if seen.insert(op.key.as_slice()) {
            let value = match &op.before {
                Before::Absent => None,
                Before::Known(v) => Some(v.clone()),
                Before::Unread => tree.get(&op.key)?.map(|v| v.to_vec()),
            };
            before.push(records::UndoEntry {
                key: op.key.clone(),
                value,
            });
        }
    }
    Ok(records::UndoRecord { before })
}

/// One write of a batch given to [`Store::apply_logged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: Vec<u8>,
    /// `None` removes the key.
    pub value: Option<Vec<u8>>,
    /// What the key held before the batch, when the writer knows it: its
    /// undo then needs no read.
    pub before: Before,
}

/// What a key of a logged batch held before it, as its writer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// Not known: read at apply time.
    Unread,
    /// Nothing: a new key (it holds an id or a sequence number drawn for
    /// this batch); its undo is a removal.
    Absent,
    /// These bytes.
    Known(Vec<u8>),
}

/// The fate of tickets as of one moment: the last sync's outcome and the
/// tickets a failure lost.
pub struct Fates {
    last: Result<Ticket, Fault>,
    lost: Vec<(Ticket, Ticket, Fault)>,
}

impl Fates {
    /// Fates as given, for tests of code that answers by them.
    #[cfg(test)]
    pub(crate) fn given(last: Result<Ticket, Fault>, lost: Vec<(Ticket, Ticket, Fault)>) -> Self {
        Self { last, lost }
    }

    /// `Some(Ok)` once a sync covered `ticket`, `Some(Err)` once it never
    /// will be durable (a failure lost it, or the last sync failed), `None`
    /// while it waits. A lost ticket stays lost whatever a later sync covers.
    pub fn of(&self, ticket: Ticket) -> Option<Result<(), StoreError>> {
        if let Some((_, _, why)) =
            (self.lost.iter()).find(|(first, last, _)| (*first..=*last).contains(&ticket))
        {
            return Some(Err(why.to_error()));
        }
        match &self.last {
            Ok(done) if *done >= ticket => Some(Ok(())),
            Ok(_) => None,
            Err(fault) => Some(Err(fault.to_error())),
        }
    }
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
    /// Tickets applied to an instance that broke before a sync covered
    /// them: never durable, whatever a later sync covers. (first, last, why)
    lost: Vec<(Ticket, Ticket, Fault)>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open instance, or why there is none to use.
    fn live(&self) -> Result<Arc<Sled>, StoreError> {
        if !self.broken.load(Ordering::Acquire) {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            if let Some(sled) = &*live {
                return Ok(sled.clone());
            }
        }
        Err(self.fault_error())
    }

    fn fault_error(&self) -> StoreError {
        match &*self.fault.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(f) => f.to_error(),
            None => StoreError::Sync("the store is being reopened".into()),
        }
    }

    /// A write or sync failed: keep why, close the store to reads and
    /// writes, and wake the mender.
    fn broke(&self, e: &StoreError) -> Fault {
        let fault = Fault::of(e);
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault.clone());
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "the store failed; it refuses reads and writes until it is reopened");
        }
        let _state = self.lock();
        self.mend.notify_one();
        fault
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let sled = Sled::open(dir)?;
        let mut blobs = syncer::Blobs::new(dir.join("blobs"));
        blobs.sync_new().map_err(StoreError::Io)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            live: RwLock::new(Some(Arc::new(sled))),
            broken: AtomicBool::new(false),
            state: Mutex::new(SyncState {
                applied: 0,
                wanted: 0,
                lost: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            mend: Condvar::new(),
            synced: watch::channel(Ok(0)).0,
            reopened: watch::channel(0).0,
            covered: AtomicU64::new(0),
            fault: Mutex::new(None),
            undo: Mutex::new(0),
            rounds: AtomicU64::new(0),
            round_micros: AtomicU64::new(0),
        });
        let s = shared.clone();
        let sync = std::thread::Builder::new()
            .name("qmesh-store-sync".into())
            .spawn(move || syncer::run(&s, &mut blobs))?;
        let s = shared.clone();
        let mend = std::thread::Builder::new()
            .name("qmesh-store-mend".into())
            .spawn(move || mender::run(&s))?;
        Ok(Self {
            shared,
            threads: vec![sync, mend],
        })
    }

    /// The queue tree of the open instance, or why it may not be read.
    pub(crate) fn tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.shared.live()?.tree.clone())
    }

    /// Applies a batch atomically. It is visible at once and durable after [`Store::durable`].
    ///
    /// sled holds every batch back while a sync's flush writes and waits
    /// for the disk (its batch lock is exclusive, its flush shares it). A
    /// write of one key needs no batch: [`Store::put`] and [`Store::remove`]
    /// go past a flush in progress.
    pub fn apply(&self, batch: sled::Batch) -> Result<Ticket, StoreError> {
        let sled = self.shared.live()?;
        let t = std::time::Instant::now();
        let applied = sled.tree.apply_batch(batch);
        let us = t.elapsed().as_micros() as u64;
        if us > 300 {
            tracing::trace!(micros = us, "slow apply");
        }
        self.written(applied)
    }

    /// Applies `ops` (key, value or `None` to remove) as one unit a crash
    /// cannot tear, without [`Store::apply`]'s wait for a flush in progress:
    /// what each key held before is stored as one undo entry, then the ops
    /// are written key by key, then the entry is removed, each write one that
    /// goes past a flush. sled recovers a prefix of its log, so after a crash
    /// either the entry is gone (and every write before its removal is
    /// there) or it is found at open and the batch undone
    /// ([`undo_interrupted`]): never acknowledged, since the ticket is drawn
    /// after the removal. A single op needs no entry.
    ///
    /// Readers in this process may see the ops half written while this
    /// runs: the tables written this way have one writer, which is their
    /// only reader. Visible when it returns; durable after [`Store::durable`].
    pub fn apply_logged(&self, ops: Vec<Write>) -> Result<Ticket, StoreError> {
        let sled = self.shared.live()?;
        let mut next = self.shared.undo.lock().unwrap_or_else(|e| e.into_inner());
        let t = std::time::Instant::now();
        let tree = &sled.tree;
        let write = |op: Write| match op.value {
            Some(v) => tree.insert(op.key, v).map(drop),
            None => tree.remove(op.key).map(drop),
        };
        let result = if ops.len() <= 1 {
            ops.into_iter().try_for_each(write)
        } else {
            let undo = layout::undo(*next);
            *next += 1;
            before_images(tree, &ops)
                .and_then(|record| sled.undo.insert(undo.clone(), codec::encode(&record)))
                .and_then(|_| ops.into_iter().try_for_each(write))
                .and_then(|()| sled.undo.remove(undo).map(drop))
        };
        let us = t.elapsed().as_micros() as u64;
        if us > 300 {
            tracing::trace!(micros = us, "slow apply");
        }
        self.written(result)
    }

    /// Writes one key (atomic on its own), not held back by a flush.
    /// Visible at once and durable after [`Store::durable`].
    pub fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<Ticket, StoreError> {
        let sled = self.shared.live()?;
        self.written(sled.tree.insert(key, value).map(drop))
    }

    /// Removes one key, as [`Store::put`] writes one.
    pub fn remove(&self, key: Vec<u8>) -> Result<Ticket, StoreError> {
        let sled = self.shared.live()?;
        self.written(sled.tree.remove(key).map(drop))
    }

    /// The ticket of a write sled took, or its error (which breaks the
    /// store). The ticket is drawn after the write: a sync that reads
    /// `applied` afterwards flushes past it.
    fn written(&self, result: sled::Result<()>) -> Result<Ticket, StoreError> {
        if let Err(e) = result {
            let e = StoreError::Sled(e);
            self.shared.broke(&e);
            return Err(e);
        }
        let mut st = self.shared.lock();
        st.applied += 1;
        Ok(st.applied)
    }

    /// Asks for a sync covering `ticket` now, before anyone waits for it: a
    /// writer that hands the wait to a task would otherwise leave the syncer
    /// idle until that task is polled.
    pub fn want(&self, ticket: Ticket) {
        {
            let mut st = self.shared.lock();
            if st.wanted >= ticket {
                return;
            }
            st.wanted = ticket;
        }
        self.shared.wake.notify_one();
    }

    /// Resolves once everything up to `ticket` is on disk (flushed and
    /// fdatasync'ed); fails if the store broke before a sync covered it.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut rx = self.shared.synced.subscribe();
        self.want(ticket);
        loop {
            let last = rx.borrow_and_update().clone();
            if let Some(fate) = self.fates_after(last).of(ticket) {
                return fate;
            }
            if rx.changed().await.is_err() {
                return Err(StoreError::Sync("syncer stopped".into()));
            }
        }
    }

    /// What the syncer has settled so far, to answer many tickets at once
    /// without a task waiting on each (see [`Fates::of`]).
    pub fn fates(&self) -> Fates {
        let last = self.shared.synced.borrow().clone();
        self.fates_after(last)
    }

    fn fates_after(&self, last: Result<Ticket, Fault>) -> Fates {
        let lost = self.shared.lock().lost.clone();
        Fates { last, lost }
    }

    /// The highest ticket a finished sync has covered.
    pub fn synced(&self) -> Ticket {
        self.shared.covered.load(Ordering::Acquire)
    }

    /// Changes each time a sync finishes (or fails).
    pub fn sync_events(&self) -> watch::Receiver<Result<Ticket, Fault>> {
        self.shared.synced.subscribe()
    }

    /// Changes each time the store is reopened after a failure: what was
    /// applied but not synced before it is gone, so state kept in memory
    /// from the store must be read again.
    pub fn reopenings(&self) -> watch::Receiver<u64> {
        self.shared.reopened.subscribe()
    }

    /// Whether the store refuses reads and writes (it failed and is not
    /// reopened yet).
    pub fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire)
    }

    /// Why the store refuses reads and writes now (its last failure).
    pub fn refusal(&self) -> StoreError {
        self.shared.fault_error()
    }

    /// Sync rounds so far and their total time.
    pub fn sync_stats(&self) -> SyncStats {
        SyncStats {
            rounds: self.shared.rounds.load(Ordering::Relaxed),
            seconds: self.shared.round_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// The store's size on disk, as sled counts it (log, snapshots, blobs).
    pub fn bytes_on_disk(&self) -> u64 {
        let live = self.shared.live.read().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .and_then(|s| s.db.size_on_disk().ok())
            .unwrap_or(0)
    }

    /// The store's last failure, until a sync succeeds after it or the
    /// store is reopened.
    pub fn fault(&self) -> Option<Fault> {
        self.shared
            .fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree()?.get(key)? {
            Some(v) => Ok(Some(codec::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.tree()?.get(key)?)
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
        while let Some(entry) = self.range(from.clone()..end.clone()).next() {
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

/// Entries of a scan, in key order: sled's iterator, or the one error that
/// says why the store may not be read now.
#[allow(clippy::large_enum_variant)] // one per scan, never stored: boxing would cost an allocation each
pub(crate) enum Entries {
    Open(sled::Iter),
    Refused(Option<StoreError>),
}

type Entry = Result<(sled::IVec, sled::IVec), StoreError>;

impl Iterator for Entries {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        match self {
            Entries::Open(it) => it.next().map(|r| r.map_err(StoreError::from)),
            Entries::Refused(e) => e.take().map(Err),
        }
    }
}

impl DoubleEndedIterator for Entries {
    fn next_back(&mut self) -> Option<Entry> {
        match self {
            Entries::Open(it) => it.next_back().map(|r| r.map_err(StoreError::from)),
            Entries::Refused(e) => e.take().map(Err),
        }
    }
}

impl Store {
    /// The entries whose keys start with `prefix`.
    pub(crate) fn scan(&self, prefix: impl AsRef<[u8]>) -> Entries {
        match self.tree() {
            Ok(t) => Entries::Open(t.scan_prefix(prefix)),
            Err(e) => Entries::Refused(Some(e)),
        }
    }

    /// The entries whose keys are in `range`.
    pub(crate) fn range(&self, range: impl std::ops::RangeBounds<Vec<u8>>) -> Entries {
        match self.tree() {
            Ok(t) => Entries::Open(t.range(range)),
            Err(e) => Entries::Refused(Some(e)),
        }
    }
}

/// Encodes a record for a batch.
pub fn record<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value)
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.mend.notify_one();
        // The threads hold the instance too; join them, then let go of it,
        // so its file lock is released when the store is dropped (a restart
        // in the same process reopens it).
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let live = self
            .shared
            .live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sled) = live {
            let _ = sled.db.flush();
            drop(sled);
            // sled's IO threads may hold its file lock a moment longer.
            wait_for_lock_release(&self.shared.dir.join("db"), LOCK_RELEASE_WAIT);
        }
    }
}

/// How long a dropped store waits for sled to let go of its file lock.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Waits (bounded) until nobody holds the lock sled takes on `log`, so that
/// a restart in this process finds the store free. flock has no release
/// notification: the lock is polled.
fn wait_for_lock_release(log: &Path, within: Duration) {
    let Ok(file) = File::open(log) else { return };
    let deadline = std::time::Instant::now() + within;
    loop {
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                return;
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the store's file lock is still held after its close");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_settle_covered_lost_and_failed_tickets() {
        let fault = |full| Fault {
            full,
            message: "disk".into(),
        };
        let f = Fates::given(Ok(10), vec![(4, 6, fault(true))]);
        assert!(matches!(f.of(3), Some(Ok(()))));
        // Lost stays lost though a later sync covered past it.
        assert!(matches!(f.of(5), Some(Err(StoreError::Full(_)))));
        assert!(matches!(f.of(10), Some(Ok(()))));
        assert!(f.of(11).is_none());
        let failed = Fates::given(Err(fault(false)), Vec::new());
        assert!(matches!(failed.of(11), Some(Err(StoreError::Sync(_)))));
    }

    /// An engine restarted in the same process (tests, an embedding
    /// application) reopens its store as soon as the old one is dropped:
    /// the drop waits for sled's IO threads to let go of the file lock.
    #[test]
    fn a_dropped_store_can_be_reopened_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..10u8 {
            let store = Store::open(dir.path()).expect("the lock was released");
            for n in 0..200u16 {
                store
                    .put(vec![b'x', round, (n >> 8) as u8, n as u8], vec![7; 4096])
                    .unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.scan(b"x").count(), 2000, "every write kept");
    }

    /// A crash between a logged batch's first and last write leaves its
    /// undo entry behind: the next open puts every key back as it was
    /// before the batch and removes the entry.
    #[test]
    fn a_batch_a_crash_interrupted_is_undone_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let tree = store.tree().unwrap();
            tree.insert(b"Xb", b"old").unwrap();
            tree.insert(b"Xc", b"kept").unwrap();
            let w = |k: &[u8], v: Option<&[u8]>, before| Write {
                key: k.to_vec(),
                value: v.map(<[u8]>::to_vec),
                before,
            };
            let ops = vec![
                w(b"Xa", Some(b"1"), Before::Absent),
                w(b"Xb", None, Before::Unread),
                w(b"Xa", Some(b"2"), Before::Unread),
            ];
            // What a crash after the undo entry and two writes leaves.
            let record = before_images(&tree, &ops).unwrap();
            assert_eq!(record.before.len(), 2, "one entry per key");
            let undo = store.shared.live().unwrap().undo.clone();
            undo.insert(layout::undo(7), codec::encode(&record))
                .unwrap();
            tree.insert(b"Xa", b"1").unwrap();
            tree.remove(b"Xb").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree().unwrap();
        assert_eq!(tree.get(b"Xa").unwrap(), None);
        assert_eq!(tree.get(b"Xb").unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(tree.get(b"Xc").unwrap().as_deref(), Some(&b"kept"[..]));
        let undo = store.shared.live().unwrap().undo.clone();
        assert!(undo.is_empty());

        // A batch written whole leaves no entry, and reads as written.
        let t = store
            .apply_logged(vec![
                Write {
                    key: b"Xd".to_vec(),
                    value: Some(b"4".to_vec()),
                    before: Before::Absent,
                },
                Write {
                    key: b"Xb".to_vec(),
                    value: None,
                    before: Before::Known(b"old".to_vec()),
                },
            ])
            .unwrap();
        assert!(t > 0);
        assert_eq!(tree.get(b"Xd").unwrap().as_deref(), Some(&b"4"[..]));
        assert_eq!(tree.get(b"Xb").unwrap(), None);
        assert!(undo.is_empty());
    }

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
