//! The durable queue's view of the store: typed writes gathered in a
//! [`Writes`] batch and typed range reads, so the queue never sees a key, a
//! tree or a sled type. The bytes behind them are [`layout`]'s and
//! [`codec`]'s; another backend (NATS JetStream, later) would implement the
//! same operations.
//!
//! # The contract (what an implementation must guarantee)
//!
//! 1. **Atomic batches.** After a crash, every operation of a [`Writes`]
//!    [`QueueStore::apply`] began is found, or none: a job is never found in
//!    two states or none, its counters never disagree with its index entries
//!    because of a torn batch. (Within the process, a batch is visible once
//!    `apply` returns; contract 5 keeps anyone from reading it half done.)
//! 2. **Read your writes.** A batch is visible to every read as soon as
//!    `apply` returns, before it is durable.
//! 3. **Tickets are ordered; a sync covers what came before it.** `apply`
//!    returns a [`Ticket`] greater than every earlier one. [`QueueStore::durable`]
//!    resolves once a sync covering that ticket has finished; a sync covers
//!    every batch applied before it began, and a finished sync counts even if
//!    nobody waited for it (group commit). A batch nobody waits for is made
//!    durable by the next sync anyone waits for, or the backend's own
//!    periodic sync (sled: the syncer's round every 500 ms) — a crash may lose it, never tear it.
//! 4. **Ordered ranges.** Reads return entries in these orders: ready entries
//!    of a (queue, function) by priority (highest first), then sequence;
//!    due and completed entries by time, then job id; dead letters by their
//!    sequence; a FIFO group's entries by sequence. A [`ReadyPos`] stays
//!    valid after its entry is removed: a scan after it resumes at the next
//!    entry in that order.
//! 5. **One writer.** The queue scheduler is the only writer of these
//!    tables, and it does not apply a batch while it walks a range; an
//!    implementation need not arbitrate concurrent writers, and a range read
//!    need not reflect batches applied after it began.
//!
//! Architecture invariant: this module knows records and keys, nothing of
//! the scheduler, the mesh or the protocol; the queue knows these operations,
//! nothing of keys, trees or sled.
//!
//! # Cost (sled 0.34.7)
//!
//! Each typed write is one sled insert or remove in one tree, except ready
//! positions and job records: a batch's ready positions are gathered into
//! runs (`ready.rs`), one entry per batch's new jobs of a (queue, function,
//! priority), and its new jobs' small records into bundles of up to 16
//! (`bundles.rs`); both are rewritten once per batch that changes them. New
//! keys and removals are what sled pays for (a leaf split every few
//! inserts); overwrites are cheap. The queue keeps a quick job at shares of
//! a bundle, a run and a completed entry, and of their rewrites at its end
//! and pruning: keep it so. A batch of more than one write adds one read per
//! key (what it held before; none for new keys and runs, whose reads give
//! it), its undo entry and that entry's removal ([`Store::apply_logged`]):
//! the entry once per batch, not per job. See [`layout`] for the keys.

use std::ops::Bound;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

use super::bundles::{self, JobOp};
use super::layout;
pub use super::layout::{FnId, QueueId};
use super::ready::{self, ReadyOp};
use super::records::{AttemptRecord, Counts, JobRecord, QueueRecord};
use super::{Before, Store, StoreError, Ticket, Write, codec};

/// The queue tables of a [`Store`].
#[derive(Clone)]
pub struct QueueStore {
    store: Arc<Store>,
    /// Shared by every clone: job reads and [`QueueStore::apply`] find
    /// bundles through it.
    bundles: Arc<Mutex<BundleIndex>>,
}

/// What job reads and writes know of the bundles (`bundles.rs`).
struct BundleIndex {
    /// Every bundle's key is at or below this id; [`QueueStore::apply`]
    /// raises it past the bundles it creates.
    high: Uuid,
    /// The bundle read last, as the store holds it (key, value): dispatch
    /// reads jobs in enqueue order, so the next read is most often of one
    /// of its members. [`QueueStore::apply`] keeps it current.
    last: Option<(sled::IVec, sled::IVec)>,
}

impl BundleIndex {
    /// The only bundle that can hold `id` (the first at or after its
    /// place), through the one read last.
    fn candidate(
        &mut self,
        store: &Store,
        id: &Uuid,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        if *id > self.high {
            return Ok(None);
        }
        if let Some(last) = &self.last
            && bundles::member(&last.1, id).is_some()
        {
            return Ok(Some(last.clone()));
        }
        let end = layout::prefix_end(&[layout::BUNDLES]);
        let range = (Bound::Included(layout::bundle(id)), Bound::Excluded(end));
        let found = store.range(range).next().transpose()?;
        if found.is_some() {
            self.last = found.clone();
        }
        Ok(found)
    }
}

/// Operations applied together by [`QueueStore::apply`] (atomically).
/// Building one touches nothing: it is only a list of writes.
#[derive(Default)]
pub struct Writes {
    ops: Vec<Write>,
    /// Ready positions added and removed, turned into run writes by
    /// [`QueueStore::apply`] (see `ready.rs`).
    ready: Vec<ReadyOp>,
    /// Job records written and removed, turned into bundle and `J` writes
    /// by [`QueueStore::apply`] (see `bundles.rs`).
    jobs: Vec<JobOp>,
    /// Jobs this batch completes: listed in one entry when it is applied.
    completed: Vec<(u64, Uuid)>,
    touched: bool,
}

/// Where a batch's writes stood: see [`Writes::mark`].
#[derive(Clone, Copy)]
pub struct Mark {
    ops: usize,
    ready: usize,
}

/// Where a ready entry sits in its (queue, function)'s order: a scan can
/// resume after it. Opaque: it is the entry's key in sled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyPos(sled::IVec);

/// A ready entry's place: the job's queue, function, priority and sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadySlot {
    pub queue: QueueId,
    pub function: FnId,
    pub priority: u8,
    pub seq: u64,
}

impl ReadySlot {
    pub fn of(job: &JobRecord) -> Self {
        Self {
            queue: job.queue_id,
            function: job.fn_id,
            priority: job.priority,
            seq: job.seq,
        }
    }

    fn key(&self) -> Vec<u8> {
        layout::ready(self.queue, self.function, self.priority, self.seq)
    }
}

impl ReadyPos {
    /// The sequence number of the job whose entry this is.
    pub fn seq(&self) -> u64 {
        layout::ready_seq(&self.0).unwrap_or(u64::MAX)
    }

    /// Whether `slot` (of the same queue and function) is at or before this
    /// position: a scan resuming here would miss it.
    pub fn reaches(&self, slot: &ReadySlot) -> bool {
        slot.key().as_slice() <= self.0.as_ref()
    }
}

/// One completed entry: the jobs one batch completed, for retention.
pub struct CompletedEntry {
    key: sled::IVec,
    pub done_ms: u64,
    pub jobs: Vec<Uuid>,
}

/// An interned function or lane: (namespace, function id, fair key, id).
pub type InternedFn = (String, String, Option<String>, FnId);

/// An entry of the running index: the attempt in progress when it was
/// written, or the reason it could not be read.
pub type RunningEntry = (Uuid, Result<AttemptRecord, StoreError>);

impl Writes {
    /// Whether the batch holds no operation (tests).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        !self.touched && self.completed.is_empty()
    }

    fn insert(&mut self, k: Vec<u8>, v: impl Into<Vec<u8>>) {
        self.touched = true;
        self.ops.push(Write {
            key: k,
            value: Some(v.into()),
            before: Before::Unread,
        });
    }

    fn remove(&mut self, k: impl Into<Vec<u8>>) {
        self.touched = true;
        self.ops.push(Write {
            key: k.into(),
            value: None,
            before: Before::Unread,
        });
    }

    /// Where the next write goes: with [`Writes::new_keys_since`], marks
    /// the writes of a job just enqueued.
    pub fn mark(&self) -> Mark {
        Mark {
            ops: self.ops.len(),
            ready: self.ready.len(),
        }
    }

    /// Declares the puts since `mark` new keys: a job just enqueued, whose
    /// keys hold its fresh id or sequence number. A crash mid-batch then
    /// undoes them without a read of what they held (nothing), and its
    /// ready position, past every stored one, needs no read of the runs.
    pub fn new_keys_since(&mut self, mark: Mark) {
        for op in self.ops.iter_mut().skip(mark.ops) {
            if op.value.is_some() {
                op.before = Before::Absent;
            }
        }
        for op in self.ready.iter_mut().skip(mark.ready) {
            op.fresh = op.job.is_some();
        }
    }

    pub fn put_queue(&mut self, name: &str, rec: &QueueRecord) {
        self.insert(layout::queue(name), codec::encode(rec));
    }

    /// Interns a function (`lane` = `None`) or one of its fair lanes.
    pub fn put_function(
        &mut self,
        namespace: &str,
        function_id: &str,
        lane: Option<&str>,
        id: FnId,
    ) {
        self.insert(
            layout::function(namespace, function_id, lane),
            &id.to_be_bytes()[..],
        );
    }

    /// Every sequence number below `reserved` may be in use.
    pub fn put_seq_reservation(&mut self, reserved: u64) {
        self.insert(layout::seq(), &reserved.to_be_bytes()[..]);
    }

    pub fn put_counts(&mut self, q: QueueId, counts: &Counts) {
        self.insert(layout::counts(q), codec::encode(counts));
    }

    /// Writes the record of a job already in the store.
    pub fn put_job(&mut self, id: &Uuid, job: &JobRecord) {
        self.job_op(JobOp::Put {
            id: *id,
            record: codec::encode(job),
            new: false,
        });
    }

    /// Writes the record of a job this batch enqueues (its id is new): it
    /// may share a bundle with the batch's other new jobs.
    pub fn put_new_job(&mut self, id: &Uuid, job: &JobRecord) {
        self.job_op(JobOp::Put {
            id: *id,
            record: codec::encode(job),
            new: true,
        });
    }

    pub fn remove_job(&mut self, id: &Uuid) {
        self.job_op(JobOp::Remove { id: *id });
    }

    fn job_op(&mut self, op: JobOp) {
        self.touched = true;
        self.jobs.push(op);
    }

    pub fn put_ready(&mut self, slot: &ReadySlot, id: &Uuid) {
        self.touched = true;
        self.ready.push(ReadyOp {
            position: slot.key(),
            job: Some(*id),
            fresh: false,
        });
    }

    pub fn remove_ready(&mut self, slot: &ReadySlot) {
        self.remove_ready_position(slot.key());
    }

    /// Removes the ready entry found at `pos` (one whose job is gone).
    pub fn remove_ready_at(&mut self, pos: &ReadyPos) {
        self.remove_ready_position(pos.0.to_vec());
    }

    fn remove_ready_position(&mut self, position: Vec<u8>) {
        self.touched = true;
        self.ready.push(ReadyOp {
            position,
            job: None,
            fresh: false,
        });
    }

    pub fn put_due(&mut self, due_ms: u64, id: &Uuid) {
        self.insert(layout::due(due_ms, id), &[][..]);
    }

    pub fn remove_due(&mut self, due_ms: u64, id: &Uuid) {
        self.remove(layout::due(due_ms, id));
    }

    /// The attempt in progress, written once it has run a while.
    pub fn put_running(&mut self, id: &Uuid, attempt: &AttemptRecord) {
        self.insert(layout::running(id), codec::encode(attempt));
    }

    pub fn remove_running(&mut self, id: &Uuid) {
        self.remove(layout::running(id));
    }

    pub fn put_dead(&mut self, q: QueueId, dead_seq: u64, id: &Uuid) {
        self.insert(layout::dead(q, dead_seq), &id.as_bytes()[..]);
    }

    pub fn remove_dead(&mut self, q: QueueId, dead_seq: u64) {
        self.remove(layout::dead(q, dead_seq));
    }

    /// Lists `id` in the one completed entry this batch writes (see
    /// [`layout::completed_ids`]: one new key per batch, not per job).
    pub fn add_completed(&mut self, done_ms: u64, id: &Uuid) {
        self.completed.push((done_ms, *id));
    }

    /// Rewrites a completed entry to list only `kept`, or removes it when empty.
    pub fn keep_completed(&mut self, entry: &CompletedEntry, kept: &[Uuid]) {
        if kept.is_empty() {
            self.remove(entry.key.to_vec());
        } else {
            let k = entry.key.to_vec();
            self.insert(k, layout::completed_value(kept));
        }
    }

    pub fn put_idempotency(&mut self, q: QueueId, key: &str, id: &Uuid) {
        self.insert(layout::idempotency(q, key), &id.as_bytes()[..]);
    }

    pub fn remove_idempotency(&mut self, q: QueueId, key: &str) {
        self.remove(layout::idempotency(q, key));
    }

    pub fn put_group_entry(&mut self, q: QueueId, group: &str, seq: u64, id: &Uuid) {
        self.insert(layout::group_entry(q, group, seq), &id.as_bytes()[..]);
    }

    pub fn remove_group_entry(&mut self, q: QueueId, group: &str, seq: u64) {
        self.remove(layout::group_entry(q, group, seq));
    }

    pub fn put_waiting(&mut self, q: QueueId, seq: u64, id: &Uuid) {
        self.insert(layout::waiting(q, seq), &id.as_bytes()[..]);
    }

    pub fn remove_waiting(&mut self, q: QueueId, seq: u64) {
        self.remove(layout::waiting(q, seq));
    }

    pub fn put_expiry(&mut self, expires_ms: u64, id: &Uuid) {
        self.insert(layout::expiry(expires_ms, id), &[][..]);
    }

    pub fn remove_expiry(&mut self, expires_ms: u64, id: &Uuid) {
        self.remove(layout::expiry(expires_ms, id));
    }

    /// The completed entry: keyed by the latest end time (no job's retention
    /// is cut short) and the first job. (The ready ops are resolved by
    /// [`QueueStore::apply`], which reads the runs they land in.)
    fn finish(mut self) -> Vec<Write> {
        if let Some(&(_, first)) = self.completed.first() {
            let done = self.completed.iter().map(|(t, _)| *t).max().unwrap_or(0);
            let ids: Vec<Uuid> = self.completed.iter().map(|(_, id)| *id).collect();
            self.ops.push(Write {
                key: layout::completed(done, &first),
                value: Some(layout::completed_value(&ids)),
                // Its key holds the first job's id: nobody else writes it.
                before: Before::Absent,
            });
        }
        self.ops
    }
}

/// The ready runs in the store, for [`ready::resolve`].
struct TreeRuns<'a>(&'a Store);

impl ready::StoredRuns for TreeRuns<'_> {
    fn cover(&mut self, position: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let group = ready::group(position).to_vec();
        let range = (Bound::Included(group), Bound::Included(position.to_vec()));
        match self.0.range(range).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn next(&mut self, run_key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let end = layout::prefix_end(ready::group(run_key));
        let range = (Bound::Excluded(run_key.to_vec()), Bound::Excluded(end));
        match self.0.range(range).next() {
            Some(kv) => Ok(Some(kv?.0.to_vec())),
            None => Ok(None),
        }
    }
}

/// The job bundles in the store, for [`bundles::resolve`].
struct TreeBundles<'a>(&'a Store, &'a mut BundleIndex);

impl bundles::StoredBundles for TreeBundles<'_> {
    fn from(&mut self, id: &Uuid) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        Ok((self.1.candidate(self.0, id)?).map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}

/// The jobs of ready runs, each with its position, in dispatch order.
fn run_jobs(
    iter: super::Entries,
) -> impl Iterator<Item = Result<(ReadyPos, Option<Uuid>), StoreError>> {
    iter.flat_map(|kv| {
        let jobs: Vec<Result<(ReadyPos, Option<Uuid>), StoreError>> = match kv {
            Ok((k, v)) => ready::decode(&k, &v)
                .into_iter()
                .map(|(seq, id)| Ok((ReadyPos(ready::position(&k, seq).into()), id)))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        jobs
    })
}

fn ids(iter: super::Entries) -> impl DoubleEndedIterator<Item = Uuid> {
    iter.filter_map(|kv| kv.ok().and_then(|(_, v)| layout::uuid_value(&v)))
}

impl QueueStore {
    pub fn new(store: Arc<Store>) -> Result<Self, StoreError> {
        let last = store.scan([layout::BUNDLES]).next_back().transpose()?;
        let high = last.and_then(|(k, _)| layout::parse_bundle(&k));
        let bundles = BundleIndex {
            high: high.unwrap_or(Uuid::nil()),
            last: None,
        };
        Ok(Self {
            store,
            bundles: Arc::new(Mutex::new(bundles)),
        })
    }

    fn bundles(&self) -> std::sync::MutexGuard<'_, BundleIndex> {
        self.bundles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store itself (to rebuild from it).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Whether the store refuses reads and writes until it is reopened.
    pub fn is_broken(&self) -> bool {
        self.store.is_broken()
    }

    /// Why the store refuses now.
    pub fn refusal(&self) -> StoreError {
        self.store.refusal()
    }

    /// Changes each time the store is reopened after a failure.
    pub fn reopenings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.reopenings()
    }

    /// Applies `writes` atomically (contract 1, 2); durable after [`Self::durable`].
    pub fn apply(&self, mut writes: Writes) -> Result<Ticket, StoreError> {
        let ready = std::mem::take(&mut writes.ready);
        let jobs = std::mem::take(&mut writes.jobs);
        let mut ops = writes.finish();
        if !ready.is_empty() {
            ops.extend(ready::resolve(ready, &mut TreeRuns(&self.store))?);
        }
        if jobs.is_empty() {
            return self.store.apply_logged(ops);
        }
        let mut index = self.bundles();
        let mut high = index.high;
        let mut stored = TreeBundles(&self.store, &mut index);
        ops.extend(bundles::resolve(jobs, &mut high, &mut stored)?);
        index.high = high;
        // The bundle read last as this batch leaves it, once it is applied.
        let last = index.last.take().map(|(key, value)| {
            match ops.iter().rev().find(|w| w.key == key.as_ref()) {
                Some(w) => w.value.as_deref().map(|v| (key, sled::IVec::from(v))),
                None => Some((key, value)),
            }
        });
        let ticket = self.store.apply_logged(ops)?;
        index.last = last.flatten();
        Ok(ticket)
    }

    /// Asks for a sync covering `ticket` now, before anyone waits for it.
    pub fn want(&self, ticket: Ticket) {
        self.store.want(ticket);
    }

    /// The highest ticket a finished sync has covered.
    pub fn synced(&self) -> Ticket {
        self.store.synced()
    }

    /// Changes each time a sync finishes (or fails).
    pub fn sync_events(&self) -> tokio::sync::watch::Receiver<Result<Ticket, super::Fault>> {
        self.store.sync_events()
    }

    /// What the syncer has settled so far (see [`super::Fates`]).
    pub fn fates(&self) -> super::Fates {
        self.store.fates()
    }

    /// Resolves once a sync has covered `ticket` (contract 3).
    pub async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.store.durable(ticket).await
    }

    // Small tables, read whole at start.

    /// Every queue ever used, with its name.
    pub fn queues(&self) -> Result<Vec<(String, QueueRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.store.scan([layout::QUEUES]) {
            let (k, v) = kv?;
            out.push((layout::parse_queue(&k), codec::decode(&v)?));
        }
        Ok(out)
    }

    pub fn counts(&self, q: QueueId) -> Result<Option<Counts>, StoreError> {
        self.store.get(&layout::counts(q))
    }

    /// Interned functions and lanes: (namespace, function id, lane, id).
    pub fn functions(&self) -> Result<Vec<InternedFn>, StoreError> {
        let mut out = Vec::new();
        for kv in self.store.scan([layout::FUNCTIONS]) {
            let (k, v) = kv?;
            if let Some((ns, fid, lane)) = layout::parse_function(&k) {
                let id = FnId::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                out.push((ns, fid, lane, id));
            }
        }
        Ok(out)
    }

    /// The sequence reservation (0 in a new store).
    pub fn seq_reservation(&self) -> Result<u64, StoreError> {
        Ok(match self.store.get_raw(&layout::seq())? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    // Jobs.

    /// A job's record: from its bundle, else its own key (`bundles.rs`).
    pub fn job(&self, id: &Uuid) -> Result<Option<JobRecord>, StoreError> {
        let bundle = self.bundles().candidate(&self.store, id)?;
        if let Some((_, value)) = bundle
            && let Some(record) = bundles::member(&value, id)
        {
            return Ok(Some(codec::decode(record)?));
        }
        self.store.get(&layout::job(id))
    }

    /// The job an idempotency key names.
    pub fn idempotency(&self, q: QueueId, key: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self
            .store
            .get_raw(&layout::idempotency(q, key))?
            .and_then(|v| layout::uuid_value(&v)))
    }

    // Ranges.

    /// Ready entries of (queue, function) after `after` (from the first when
    /// `None`), in dispatch order, with each entry's position.
    pub fn ready_after(
        &self,
        q: QueueId,
        f: FnId,
        after: Option<&ReadyPos>,
    ) -> impl Iterator<Item = Result<(ReadyPos, Option<Uuid>), StoreError>> + use<> {
        let prefix = layout::ready_fn_prefix(q, f);
        let end = Bound::Excluded(layout::prefix_end(&prefix));
        // From the run `after` falls in (its jobs past `after` only).
        let from = after.and_then(|pos| {
            let upto = (
                Bound::Included(prefix.clone()),
                Bound::Included(pos.0.to_vec()),
            );
            match self.store.range(upto).next_back() {
                Some(Ok((k, _))) => Some(k.to_vec()),
                _ => None,
            }
        });
        let from = Bound::Included(from.unwrap_or(prefix));
        let after = after.map(|pos| pos.0.clone());
        run_jobs(self.store.range((from, end))).filter(move |r| match (r, &after) {
            (Ok((pos, _)), Some(after)) => pos.0 > *after,
            _ => true,
        })
    }

    /// Jobs of the ready entries of (queue, function), in dispatch order.
    pub fn ready_of_function(&self, q: QueueId, f: FnId) -> impl Iterator<Item = Uuid> + use<> {
        run_jobs(self.store.scan(layout::ready_fn_prefix(q, f)))
            .filter_map(|r| r.ok().and_then(|(_, id)| id))
    }

    /// Jobs of every ready entry of a queue, function by function.
    pub fn ready_of_queue(
        &self,
        q: QueueId,
    ) -> impl Iterator<Item = Result<Option<Uuid>, StoreError>> + use<> {
        run_jobs(self.store.scan(layout::ready_queue_prefix(q))).map(|r| r.map(|(_, id)| id))
    }

    /// The functions with ready entries in a queue: one seek per function,
    /// not one step per entry.
    pub fn ready_functions(&self, q: QueueId) -> Result<Vec<FnId>, StoreError> {
        let mut out = Vec::new();
        let mut from = layout::ready_queue_prefix(q);
        let end = layout::prefix_end(&from);
        while let Some(kv) = self.store.range(from.clone()..end.clone()).next() {
            let (k, _) = kv?;
            let Some(f) = layout::ready_key_fn(&k) else {
                break;
            };
            out.push(f);
            from = layout::prefix_end(&layout::ready_fn_prefix(q, f));
        }
        Ok(out)
    }

    /// Due entries (delayed and backing-off jobs, every queue): (due_ms, job), soonest first.
    pub fn due(&self) -> impl Iterator<Item = Result<(u64, Uuid), StoreError>> + use<> {
        self.store.scan([layout::DUE]).filter_map(|kv| match kv {
            Ok((k, _)) => layout::parse_due(&k).map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    /// The running index: attempts whose start was written and whose end was not.
    pub fn running(&self) -> Result<Vec<RunningEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.store.scan([layout::RUNNING]) {
            let (k, v) = kv?;
            let Some(id) = layout::parse_running(&k) else {
                continue;
            };
            out.push((id, codec::decode(&v).map_err(StoreError::from)));
        }
        Ok(out)
    }

    /// A queue's dead letters in the order they died (reversible: newest first).
    pub fn dead(
        &self,
        q: QueueId,
    ) -> impl DoubleEndedIterator<Item = Result<Option<Uuid>, StoreError>> + use<> {
        self.store
            .scan(layout::dead_prefix(q))
            .map(|kv| Ok(layout::uuid_value(&kv?.1)))
    }

    /// Completed entries, oldest first (every queue).
    pub fn completed(&self) -> impl Iterator<Item = Result<CompletedEntry, StoreError>> + use<> {
        self.store
            .scan([layout::COMPLETED])
            .filter_map(|kv| match kv {
                Ok((k, v)) => {
                    let (done_ms, _) = layout::parse_due(&k)?;
                    let jobs = layout::completed_ids(&k, &v);
                    Some(Ok(CompletedEntry {
                        key: k,
                        done_ms,
                        jobs,
                    }))
                }
                Err(e) => Some(Err(e)),
            })
    }

    /// A FIFO group's unfinished jobs, in enqueue order.
    pub fn group(&self, q: QueueId, group: &str) -> impl Iterator<Item = Uuid> + use<> {
        ids(self.store.scan(layout::group_prefix(q, group)))
    }

    /// Whether a FIFO group has an unfinished job.
    pub fn group_busy(&self, q: QueueId, group: &str) -> bool {
        self.store
            .scan(layout::group_prefix(q, group))
            .next()
            .is_some()
    }

    /// A queue's flow parents waiting for their children, in enqueue order.
    pub fn waiting(&self, q: QueueId) -> impl Iterator<Item = Uuid> + use<> {
        ids(self.store.scan(layout::waiting_of_queue(q)))
    }

    /// Jobs with an expiry, soonest first: (expires_ms, job id).
    pub fn expiries(&self) -> impl Iterator<Item = Result<(u64, Uuid), StoreError>> + use<> {
        self.store.scan([layout::EXPIRY]).filter_map(|kv| match kv {
            // The same shape as a due key: a time, then a job id.
            Ok((k, _)) => layout::parse_due(&k).map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    /// Every unfinished FIFO job of a queue (held ones included), group by group.
    pub fn grouped(
        &self,
        q: QueueId,
    ) -> impl Iterator<Item = Result<Option<Uuid>, StoreError>> + use<> {
        self.store
            .scan(layout::groups_of_queue(q))
            .map(|kv| Ok(layout::uuid_value(&kv?.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, QueueStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        (dir, QueueStore::new(store).unwrap())
    }

    #[test]
    fn ready_scans_resume_after_a_position_even_once_it_is_gone() {
        let (_dir, qs) = open();
        let slot = |priority, seq| ReadySlot {
            queue: 1,
            function: 2,
            priority,
            seq,
        };
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        let mut w = Writes::default();
        w.put_ready(&slot(0, 1), &ids[0]);
        w.put_ready(&slot(5, 2), &ids[1]);
        w.put_ready(&slot(0, 3), &ids[2]);
        qs.apply(w).unwrap();
        let all: Vec<_> = qs.ready_after(1, 2, None).map(|r| r.unwrap()).collect();
        let order: Vec<_> = all.iter().map(|(_, id)| id.unwrap()).collect();
        assert_eq!(
            order,
            vec![ids[1], ids[0], ids[2]],
            "priority, then sequence"
        );
        let first = all[0].0.clone();
        assert!(first.reaches(&slot(5, 2)) && !first.reaches(&slot(0, 1)));

        let mut w = Writes::default();
        w.remove_ready(&slot(5, 2));
        qs.apply(w).unwrap();
        let rest: Vec<_> = qs
            .ready_after(1, 2, Some(&first))
            .map(|r| r.unwrap().1.unwrap())
            .collect();
        assert_eq!(rest, vec![ids[0], ids[2]]);
        assert_eq!(qs.ready_functions(1).unwrap(), vec![2]);
    }

    #[test]
    fn one_completed_entry_per_batch_lists_its_jobs() {
        let (_dir, qs) = open();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut w = Writes::default();
        assert!(w.is_empty());
        w.add_completed(10, &a);
        w.add_completed(12, &b);
        assert!(!w.is_empty());
        qs.apply(w).unwrap();
        let entries: Vec<_> = qs.completed().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].done_ms, entries[0].jobs.clone()),
            (12, vec![a, b])
        );
        let mut w = Writes::default();
        w.keep_completed(&entries[0], &[b]);
        qs.apply(w).unwrap();
        let left: Vec<_> = qs.completed().map(|e| e.unwrap().jobs).collect();
        assert_eq!(left, vec![vec![b]]);
    }

    fn record(seq: u64) -> JobRecord {
        JobRecord {
            queue: "q".into(),
            queue_id: 1,
            namespace: "ns".into(),
            function_id: "svc::f".into(),
            fn_id: 2,
            state: super::super::records::JobState::Ready,
            priority: 0,
            seq,
            attempts: 0,
            history_len: 0,
            max_attempts: 3,
            enqueued_ms: 1,
            due_ms: 0,
            finished_ms: 0,
            traceparent: None,
            baggage: None,
            group: None,
            idempotency_key: None,
            result: None,
            last_error: None,
            redrives: 0,
            dead_seq: 0,
            payload: br#"{"n":1}"#.to_vec(),
            history: Vec::new(),
            expires_ms: 0,
            progress: None,
            logs: Vec::new(),
            logs_dropped: 0,
            flow: None,
        }
    }

    #[test]
    fn bundled_jobs_are_read_current_and_found_again_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<Uuid> = (1..=20).map(Uuid::from_u128).collect();
        {
            let qs = QueueStore::new(Arc::new(Store::open(dir.path()).unwrap())).unwrap();
            let mut w = Writes::default();
            for (n, id) in ids.iter().enumerate() {
                w.put_new_job(id, &record(n as u64));
            }
            qs.apply(w).unwrap();
            assert_eq!(qs.job(&ids[3]).unwrap().unwrap().seq, 3);
            // Read through the bundle read last: it follows the batch's writes.
            let mut changed = record(4);
            changed.attempts = 1;
            let mut w = Writes::default();
            w.put_job(&ids[4], &changed);
            w.remove_job(&ids[5]);
            qs.apply(w).unwrap();
            assert_eq!(qs.job(&ids[4]).unwrap().unwrap().attempts, 1);
            assert!(qs.job(&ids[5]).unwrap().is_none());
            assert!(qs.job(&Uuid::from_u128(99)).unwrap().is_none());
        }
        let qs = QueueStore::new(Arc::new(Store::open(dir.path()).unwrap())).unwrap();
        for (n, id) in ids.iter().enumerate() {
            let found = qs.job(id).unwrap().map(|j| (j.seq, j.attempts));
            let want = match n {
                4 => Some((4, 1)),
                5 => None,
                _ => Some((n as u64, 0)),
            };
            assert_eq!(found, want, "job {n}");
        }
        // The high id came back from the store: a new batch bundles past it.
        let later: Vec<Uuid> = (21..=22).map(Uuid::from_u128).collect();
        let mut w = Writes::default();
        for id in &later {
            w.put_new_job(id, &record(21));
        }
        qs.apply(w).unwrap();
        assert!(later.iter().all(|id| qs.job(id).unwrap().is_some()));
        assert_eq!(
            qs.store.scan([layout::JOBS]).count(),
            0,
            "no job has its own key"
        );
        assert_eq!(qs.store.scan([layout::BUNDLES]).count(), 3);
    }
}
