//! Job bundles: the records of several jobs one batch enqueued, under one
//! key, so a batch of enqueues costs sled one new key per bundle, not one per
//! job, and a batch of ends one rewrite per bundle it touches.
//!
//! Why: job ids ascend, so every new `J` key lands in the same leaf, which
//! sled 0.34.7 splits every eight or so inserts (its fanout is 16), and a
//! split is most of what an insert costs. Removing records at pruning merges
//! leaves the same way.
//!
//! Where a job lives: a bundle's key is `B` + the greatest id it was written
//! with, and bundles never overlap: a new one only takes ids greater than
//! every bundle's key (the store's *high* id, kept in memory). So the only
//! bundle that can hold `id` is the first at or after `B id`; a job it does
//! not hold has its own `J` key. A job stays where it was first written until
//! it is removed, or until its bundle grows past [`MAX_BUNDLE_BYTES`] and its
//! record, among the biggest, moves to a key of its own; an emptied bundle is
//! removed. Jobs enqueued alone, records over [`MAX_MEMBER_BYTES`] and ids
//! not above the high id (a clock that went back) keep a key of their own.
//!
//! A bundle's value: its members by id, each `id(16) len(4, big-endian)
//! record` (the record as `codec` encodes a `JobRecord`).
//!
//! Writers say what they mean ([`JobOp`]); [`resolve`] turns a batch's ops
//! into writes, reading each stored bundle it lands in once (which gives the
//! undo entry its old value, no second read).

use std::collections::BTreeMap;
use uuid::Uuid;

use super::{Before, StoreError, Write, layout};

type Result<T> = std::result::Result<T, StoreError>;

/// At most this many jobs share a bundle.
pub(super) const MAX_MEMBERS: usize = 16;
/// A record longer than this keeps its own key: an end rewrites its whole
/// bundle, so a big payload would be copied once for each of its neighbours.
pub(super) const MAX_MEMBER_BYTES: usize = 1024;
/// A new bundle holds at most this many bytes, leaving room for its jobs'
/// records to grow (an ended attempt, a result) up to [`MAX_BUNDLE_BYTES`].
const NEW_BUNDLE_BYTES: usize = 4 * 1024;
/// A bundle grown past this moves its biggest records to keys of their
/// own: a leaf of 16 bundles (sled's fanout) then stays under the ~128 KiB
/// from which sled 0.34.7 writes a page to a blob file of its own (a
/// quarter of its 512 KiB segment), created and fsynced at each rewrite.
const MAX_BUNDLE_BYTES: usize = 7 * 1024;
const HEADER: usize = 20;

/// One change to a job's record, in a batch's order.
pub(super) enum JobOp {
    /// The job's record becomes `record`; `new`: a job this batch enqueues.
    Put {
        id: Uuid,
        record: Vec<u8>,
        new: bool,
    },
    Remove {
        id: Uuid,
    },
}

impl JobOp {
    fn id(&self) -> Uuid {
        match self {
            JobOp::Put { id, .. } | JobOp::Remove { id } => *id,
        }
    }

    fn into_record(self) -> Option<Vec<u8>> {
        match self {
            JobOp::Put { record, .. } => Some(record),
            JobOp::Remove { .. } => None,
        }
    }
}

/// The record of `id` in a bundle's value, if it holds it.
pub(super) fn member<'a>(value: &'a [u8], id: &Uuid) -> Option<&'a [u8]> {
    members(value).find(|(m, _)| m == id).map(|(_, r)| r)
}

/// A bundle's members, by id. A value cut short ends the list (the undo
/// entry's image and a sled value are never cut: this only guards a read).
pub(super) fn members(value: &[u8]) -> impl Iterator<Item = (Uuid, &[u8])> {
    let mut rest = value;
    std::iter::from_fn(move || {
        let id = Uuid::from_slice(rest.get(..16)?).ok()?;
        let len = u32::from_be_bytes(rest.get(16..HEADER)?.try_into().ok()?) as usize;
        let record = rest.get(HEADER..HEADER + len)?;
        rest = &rest[HEADER + len..];
        Some((id, record))
    })
}

fn encode<'a>(members: impl Iterator<Item = (&'a Uuid, &'a Vec<u8>)>) -> Vec<u8> {
    let mut v = Vec::new();
    for (id, record) in members {
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(&(record.len() as u32).to_be_bytes());
        v.extend_from_slice(record);
    }
    v
}

/// The stored bundles, as [`resolve`] reads them (before the batch).
pub(super) trait StoredBundles {
    /// The first bundle at or after `id`'s place, with its value.
    fn from(&mut self, id: &Uuid) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
}

/// A stored bundle this batch touches: what it held, and its members as the
/// batch leaves them.
struct Touched {
    before: Vec<u8>,
    members: BTreeMap<Uuid, Vec<u8>>,
}

/// The writes that carry out `ops`: one read per stored bundle an existing
/// job's op lands in, none for new jobs. `high` is the store's high id; it
/// rises past the bundles this batch creates.
pub(super) fn resolve(
    ops: Vec<JobOp>,
    high: &mut Uuid,
    stored: &mut impl StoredBundles,
) -> Result<Vec<Write>> {
    let mut touched: BTreeMap<Vec<u8>, Touched> = BTreeMap::new();
    // Jobs new in this batch, as it leaves them (`None`: removed again).
    let mut fresh: BTreeMap<Uuid, Option<Vec<u8>>> = BTreeMap::new();
    let mut writes = Vec::new();
    for op in ops {
        let id = op.id();
        if let Some(slot) = fresh.get_mut(&id) {
            *slot = op.into_record();
            continue;
        }
        if let JobOp::Put { new: true, .. } = op {
            fresh.insert(id, op.into_record());
            continue;
        }
        let home = if id <= *high {
            bundle_of(&id, &mut touched, stored)?
        } else {
            None
        };
        match home {
            Some(key) => {
                let members = &mut touched.get_mut(&key).expect("located").members;
                match op.into_record() {
                    Some(record) => members.insert(id, record),
                    None => members.remove(&id),
                };
            }
            None => writes.push(Write {
                key: layout::job(&id),
                value: op.into_record(),
                before: Before::Unread,
            }),
        }
    }
    for (key, mut t) in touched {
        // Biggest first, moved out until the bundle fits; they were in it,
        // so their own keys are new.
        let mut bytes: usize = t.members.values().map(|r| HEADER + r.len()).sum();
        while bytes > MAX_BUNDLE_BYTES {
            let (&id, _) = (t.members.iter().max_by_key(|(_, r)| r.len())).expect("not empty");
            let record = t.members.remove(&id).expect("a member");
            bytes -= HEADER + record.len();
            writes.push(own_key(&id, record));
        }
        // An emptied bundle is removed.
        writes.push(Write {
            key,
            value: (!t.members.is_empty()).then(|| encode(t.members.iter())),
            before: Before::Known(t.before),
        });
    }
    bundle_new(fresh, high, &mut writes);
    Ok(writes)
}

/// The key of the bundle holding `id` (read into `touched`), if one does.
fn bundle_of(
    id: &Uuid,
    touched: &mut BTreeMap<Vec<u8>, Touched>,
    stored: &mut impl StoredBundles,
) -> Result<Option<Vec<u8>>> {
    // Bundles never overlap: only the first at or after `id` can hold it.
    if let Some((key, t)) = touched.range(layout::bundle(id)..).next()
        && member(&t.before, id).is_some()
    {
        return Ok(Some(key.clone()));
    }
    let Some((key, before)) = stored.from(id)? else {
        return Ok(None);
    };
    if let Some(t) = touched.get(&key) {
        return Ok(member(&t.before, id).is_some().then_some(key));
    }
    if member(&before, id).is_none() {
        return Ok(None);
    }
    let members = members(&before).map(|(m, r)| (m, r.to_vec())).collect();
    touched.insert(key.clone(), Touched { before, members });
    Ok(Some(key))
}

/// Writes the jobs new in this batch: runs of small records with ids above
/// `high` as bundles (a run of one keeps its own key), the rest each under
/// its own key.
fn bundle_new(fresh: BTreeMap<Uuid, Option<Vec<u8>>>, high: &mut Uuid, writes: &mut Vec<Write>) {
    let mut run: Vec<(Uuid, Vec<u8>)> = Vec::new();
    let mut run_bytes = 0;
    let close = |run: &mut Vec<(Uuid, Vec<u8>)>, high: &mut Uuid, writes: &mut Vec<Write>| {
        match run.len() {
            0 => {}
            1 => {
                let (id, record) = run.pop().expect("one");
                writes.push(own_key(&id, record));
            }
            _ => {
                let last = run.last().expect("a run").0;
                writes.push(Write {
                    key: layout::bundle(&last),
                    value: Some(encode(run.iter().map(|(id, r)| (id, r)))),
                    // Its key holds a new job's id: nobody else writes it.
                    before: Before::Absent,
                });
                *high = last;
                run.clear();
            }
        }
    };
    for (id, record) in fresh {
        let Some(record) = record else { continue };
        if id <= *high || record.len() > MAX_MEMBER_BYTES {
            writes.push(own_key(&id, record));
            continue;
        }
        if run.len() == MAX_MEMBERS || run_bytes + HEADER + record.len() > NEW_BUNDLE_BYTES {
            close(&mut run, high, writes);
            run_bytes = 0;
        }
        run_bytes += HEADER + record.len();
        run.push((id, record));
    }
    close(&mut run, high, writes);
}

fn own_key(id: &Uuid, record: Vec<u8>) -> Write {
    Write {
        key: layout::job(id),
        value: Some(record),
        // A new job's id: nothing held it.
        before: Before::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `B` and `J` keys with the high id, as the store keeps them.
    #[derive(Default)]
    struct Table {
        keys: BTreeMap<Vec<u8>, Vec<u8>>,
        high: Uuid,
    }

    impl StoredBundles for BTreeMap<Vec<u8>, Vec<u8>> {
        fn from(&mut self, id: &Uuid) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            let end = layout::prefix_end(&[layout::BUNDLES]);
            Ok((self.range(layout::bundle(id)..end).next()).map(|(k, v)| (k.clone(), v.clone())))
        }
    }

    impl Table {
        fn apply(&mut self, ops: Vec<JobOp>) -> Vec<Write> {
            let writes = resolve(ops, &mut self.high, &mut self.keys.clone()).unwrap();
            for w in &writes {
                match &w.value {
                    Some(v) => self.keys.insert(w.key.clone(), v.clone()),
                    None => self.keys.remove(&w.key),
                };
            }
            writes
        }

        /// A job's record, found as `QueueStore::job` finds it.
        fn job(&self, id: u128) -> Option<Vec<u8>> {
            let id = Uuid::from_u128(id);
            if id <= self.high
                && let Some((_, v)) = self.keys.clone().from(&id).unwrap()
                && let Some(r) = member(&v, &id)
            {
                return Some(r.to_vec());
            }
            self.keys.get(&layout::job(&id)).cloned()
        }

        fn bundles(&self) -> Vec<usize> {
            (self.keys.iter())
                .filter(|(k, _)| k[0] == layout::BUNDLES)
                .map(|(_, v)| members(v).count())
                .collect()
        }

        fn own_keys(&self) -> usize {
            self.keys.keys().filter(|k| k[0] == layout::JOBS).count()
        }
    }

    fn new(id: u128) -> JobOp {
        JobOp::Put {
            id: Uuid::from_u128(id),
            record: format!("new {id}").into_bytes(),
            new: true,
        }
    }

    fn put(id: u128, record: &str) -> JobOp {
        JobOp::Put {
            id: Uuid::from_u128(id),
            record: record.as_bytes().to_vec(),
            new: false,
        }
    }

    fn remove(id: u128) -> JobOp {
        JobOp::Remove {
            id: Uuid::from_u128(id),
        }
    }

    #[test]
    fn a_batch_of_new_jobs_is_one_bundle_and_their_ends_rewrite_it_once() {
        let mut t = Table::default();
        let w = t.apply((1..=10).map(new).collect());
        assert_eq!(w.len(), 1, "one new key for ten jobs");
        assert_eq!(w[0].before, Before::Absent);
        assert_eq!(t.job(4).unwrap(), b"new 4");
        let w = t.apply(vec![put(4, "done 4"), remove(5), put(6, "done 6")]);
        assert_eq!(w.len(), 1, "one rewrite for three ends");
        assert!(matches!(w[0].before, Before::Known(_)));
        assert_eq!(t.job(4).unwrap(), b"done 4");
        assert_eq!(t.job(5), None);
        assert_eq!(t.job(7).unwrap(), b"new 7");
        t.apply((1..=10).map(remove).collect());
        assert!(t.keys.is_empty(), "an emptied bundle is removed");
    }

    #[test]
    fn bundles_hold_at_most_sixteen_and_later_ones_start_past_the_high_id() {
        let mut t = Table::default();
        t.apply((1..=40).map(new).collect());
        assert_eq!(t.bundles(), vec![16, 16, 8]);
        assert_eq!(t.high, Uuid::from_u128(40));
        t.apply((41..=45).map(new).collect());
        assert_eq!(t.bundles(), vec![16, 16, 8, 5]);
        for id in 1..=45 {
            assert_eq!(t.job(id).unwrap(), format!("new {id}").as_bytes(), "{id}");
        }
    }

    #[test]
    fn lone_big_and_late_jobs_keep_their_own_keys() {
        let mut t = Table::default();
        t.apply(vec![new(100)]);
        assert_eq!((t.own_keys(), t.high), (1, Uuid::nil()), "alone");
        let big = JobOp::Put {
            id: Uuid::from_u128(205),
            record: vec![7; MAX_MEMBER_BYTES + 1],
            new: true,
        };
        t.apply(vec![new(201), new(202), big, new(210)]);
        assert_eq!(t.bundles(), vec![3]);
        assert_eq!(t.own_keys(), 2, "the big record");
        // A clock that went back: ids below the high id.
        t.apply(vec![new(150), new(151)]);
        assert_eq!(t.own_keys(), 4);
        assert_eq!(t.job(205).unwrap().len(), MAX_MEMBER_BYTES + 1);
        for id in [100, 150, 151, 201, 202, 210] {
            assert_eq!(t.job(id).unwrap(), format!("new {id}").as_bytes(), "{id}");
        }
        // Ends land where each job lives.
        t.apply(vec![put(150, "done"), put(202, "done"), remove(205)]);
        assert_eq!(
            (t.job(150).unwrap(), t.job(202).unwrap()),
            (b"done".to_vec(), b"done".to_vec())
        );
        assert_eq!((t.job(205), t.bundles(), t.own_keys()), (None, vec![3], 3));
    }

    #[test]
    fn a_job_enqueued_and_changed_in_one_batch_is_written_once_as_it_ends() {
        let mut t = Table::default();
        let w = t.apply(vec![new(1), new(2), put(1, "moved"), new(3), remove(3)]);
        assert_eq!(w.len(), 1);
        assert_eq!(t.bundles(), vec![2]);
        assert_eq!(t.job(1).unwrap(), b"moved");
        assert_eq!(t.job(3), None);
    }

    #[test]
    fn a_bundle_grown_too_big_moves_its_biggest_records_out() {
        let mut t = Table::default();
        t.apply((1..=8).map(new).collect());
        assert_eq!(t.bundles(), vec![8]);
        let grown = "r".repeat(4000);
        t.apply(vec![put(2, &grown), put(3, &grown), put(4, "small")]);
        assert_eq!(t.bundles(), vec![7], "one big record moved out");
        assert_eq!(t.own_keys(), 1);
        assert_eq!(t.job(2).unwrap().len() + t.job(3).unwrap().len(), 8000);
        assert_eq!(t.job(4).unwrap(), b"small");
        // Found and changed where it now lives.
        let moved = [2, 3].into_iter().find(|id| {
            let v = &t.keys[&layout::bundle(&Uuid::from_u128(8))];
            member(v, &Uuid::from_u128(*id)).is_none()
        });
        let moved = moved.unwrap();
        t.apply(vec![put(moved, "done")]);
        assert_eq!(t.job(moved).unwrap(), b"done");
        t.apply(vec![remove(moved)]);
        assert_eq!((t.job(moved), t.own_keys()), (None, 0));
    }
}
