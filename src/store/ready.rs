//! The ready table's runs: one `R` entry holds the ready positions of
//! several jobs of one (queue, function, priority), so a batch of enqueues
//! is one new key, not one per job, and a batch of completions one rewrite
//! per run it touches, not one removal per job. sled pays per key changed
//! (a leaf split every eight new keys, a merge after removals), far more
//! than per byte: measured on sled 0.34.7 alone, jobs enqueued then
//! completed 64 at a time cost about half the CPU this way.
//!
//! A job's place in dispatch order is its *position*, what its own key
//! would be (`layout::ready(q, f, priority, seq)`, as [`super::queue::ReadyPos`]
//! holds it). A run's key is a position at or before each of its jobs', and
//! after every job of the run before it: the runs of a (queue, function,
//! priority) partition its positions, so reading them in key order, each
//! one's jobs by sequence, is dispatch order. Its value is the jobs as
//! `seq(8) job_id(16)` pairs by sequence; a value of 16 bytes (every entry
//! up to schema 5) is one job at the key's own position.
//!
//! Writers say what they mean, a job's position added or removed
//! ([`ReadyOp`]); [`resolve`] turns a batch's ops into run writes, reading
//! the runs they land in (which gives the undo entry their old values, no
//! second read). A job just enqueued reads nothing: its sequence number is
//! past every stored position, so it joins the batch's other new jobs.

use std::collections::BTreeMap;
use uuid::Uuid;

use super::{Before, StoreError, Write, layout};

type Result<T> = std::result::Result<T, StoreError>;

/// One change to the ready table, in a batch's order.
pub(super) struct ReadyOp {
    /// The job's position.
    pub position: Vec<u8>,
    /// `Some(job)`: the job becomes ready there; `None`: it leaves.
    pub job: Option<Uuid>,
    /// An add whose sequence number was drawn for this batch: past every
    /// stored position of its group, so no stored run is read for it.
    pub fresh: bool,
}

/// Bytes of a position before its sequence: `R` queue(4) fn(4) priority(1).
const GROUP: usize = 10;
const ITEM: usize = 24;

pub(super) fn group(position: &[u8]) -> &[u8] {
    &position[..GROUP.min(position.len())]
}

fn seq(position: &[u8]) -> u64 {
    layout::ready_seq(position).unwrap_or(0)
}

/// The position of the job at `seq` in the run keyed `run_key`.
pub(super) fn position(run_key: &[u8], seq: u64) -> Vec<u8> {
    let mut p = group(run_key).to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// The jobs of a run, by sequence (`None`: a job id that does not parse).
pub(super) fn decode(run_key: &[u8], value: &[u8]) -> Vec<(u64, Option<Uuid>)> {
    if value.len() == 16 {
        return vec![(seq(run_key), Uuid::from_slice(value).ok())];
    }
    value
        .chunks_exact(ITEM)
        .map(|c| {
            let s = u64::from_be_bytes(c[..8].try_into().expect("8 bytes"));
            (s, Uuid::from_slice(&c[8..]).ok())
        })
        .collect()
}

fn encode(jobs: &BTreeMap<u64, Uuid>) -> Vec<u8> {
    let mut v = Vec::with_capacity(jobs.len() * ITEM);
    for (s, id) in jobs {
        v.extend_from_slice(&s.to_be_bytes());
        v.extend_from_slice(id.as_bytes());
    }
    v
}

/// A run this batch touches: its jobs as the batch leaves them, and what
/// its key held before (`None`: a run the batch creates).
struct Touched {
    before: Option<Vec<u8>>,
    jobs: BTreeMap<u64, Uuid>,
    /// Created by a fresh add: every position in it is past the stored ones.
    fresh: bool,
}

impl Touched {
    fn last_seq(&self) -> Option<u64> {
        self.jobs.keys().next_back().copied()
    }
}

/// The stored runs, as [`resolve`] reads them (before the batch).
pub(super) trait StoredRuns {
    /// The run a position falls in: the greatest run key at or before it,
    /// of its group, with the run's value.
    fn cover(&mut self, position: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    /// The key of the run after `run_key` in its group, if any.
    fn next(&mut self, run_key: &[u8]) -> Result<Option<Vec<u8>>>;
}

/// The run writes that carry out `ops`, in order: one read per stored run
/// the batch lands in (and one for where the next run starts), not one per
/// op.
pub(super) fn resolve(ops: Vec<ReadyOp>, stored: &mut impl StoredRuns) -> Result<Vec<Write>> {
    let mut touched: BTreeMap<Vec<u8>, Touched> = BTreeMap::new();
    // Stored runs read so far: key → where the next stored run starts.
    let mut spans: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for op in ops {
        let g = group(&op.position).to_vec();
        if let (true, Some(job)) = (op.fresh, op.job) {
            add_fresh(&mut touched, g, op.position, job);
            continue;
        }
        let known = spans
            .range(g.clone()..=op.position.clone())
            .next_back()
            .filter(|(_, next)| next.as_ref().is_none_or(|n| op.position < *n))
            .map(|(k, _)| k.clone());
        let stored_key = match known {
            Some(k) => Some(k),
            None => match stored.cover(&op.position)? {
                None => None,
                Some((k, value)) => {
                    let next = stored.next(&k)?;
                    spans.insert(k.clone(), next);
                    let jobs = decode(&k, &value)
                        .into_iter()
                        .filter_map(|(q, id)| Some((q, id?)))
                        .collect();
                    touched.entry(k.clone()).or_insert(Touched {
                        before: Some(value),
                        jobs,
                        fresh: false,
                    });
                    Some(k)
                }
            },
        };
        // The covering run as this batch leaves it: the stored one, or a run
        // the batch created after it.
        let key = touched
            .range(g..=op.position.clone())
            .next_back()
            .map(|(k, _)| k.clone())
            .filter(|k| stored_key.as_ref().is_none_or(|s| s <= k))
            .or(stored_key);
        let s = seq(&op.position);
        match op.job {
            Some(job) => {
                // Into the covering run if the position is inside it or the
                // run is new in this batch; past its last job, a run of its own.
                let into = key.filter(|k| {
                    let t = &touched[k];
                    t.before.is_none() || t.last_seq().is_some_and(|last| s < last)
                });
                let k = into.unwrap_or_else(|| op.position.clone());
                let t = touched.entry(k).or_insert(Touched {
                    before: None,
                    jobs: BTreeMap::new(),
                    fresh: false,
                });
                t.jobs.insert(s, job);
            }
            None => {
                if let Some(t) = key.and_then(|k| touched.get_mut(&k)) {
                    t.jobs.remove(&s);
                }
            }
        }
    }
    let mut writes = Vec::with_capacity(touched.len());
    for (key, t) in touched {
        match (t.jobs.is_empty(), t.before) {
            (true, None) => {}
            (true, Some(before)) => writes.push(Write {
                key,
                value: None,
                before: Before::Known(before),
            }),
            (false, before) => writes.push(Write {
                key,
                value: Some(encode(&t.jobs)),
                before: before.map_or(Before::Absent, Before::Known),
            }),
        }
    }
    Ok(writes)
}

/// A fresh add: into the batch's fresh run before it, if any, else a run
/// of its own. Only a fresh run may take it: any other run at or before it
/// may have stored runs between it and the position.
fn add_fresh(touched: &mut BTreeMap<Vec<u8>, Touched>, g: Vec<u8>, position: Vec<u8>, job: Uuid) {
    let s = seq(&position);
    let into = (touched.range(g..=position.clone()).next_back())
        .filter(|(_, t)| t.fresh)
        .map(|(k, _)| k.clone());
    let t = touched.entry(into.unwrap_or(position)).or_insert(Touched {
        before: None,
        jobs: BTreeMap::new(),
        fresh: true,
    });
    t.jobs.insert(s, job);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Applies `ops` to `table` (run key → value) as `resolve` says.
    fn apply(table: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: Vec<ReadyOp>) -> Vec<Write> {
        struct Snapshot(BTreeMap<Vec<u8>, Vec<u8>>);
        impl StoredRuns for Snapshot {
            fn cover(&mut self, p: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
                Ok((self.0.range(group(p).to_vec()..=p.to_vec()).next_back())
                    .map(|(k, v)| (k.clone(), v.clone())))
            }
            fn next(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>> {
                let after = (
                    std::ops::Bound::Excluded(k.to_vec()),
                    std::ops::Bound::Unbounded,
                );
                Ok((self.0.range(after).next())
                    .map(|(k, _)| k.clone())
                    .filter(|n| group(n) == group(k)))
            }
        }
        let writes = resolve(ops, &mut Snapshot(table.clone())).unwrap();
        for w in &writes {
            match &w.value {
                Some(v) => table.insert(w.key.clone(), v.clone()),
                None => table.remove(&w.key),
            };
        }
        writes
    }

    fn jobs_in_order(table: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u64> {
        let mut out = Vec::new();
        for (k, v) in table {
            for (s, _) in decode(k, v) {
                out.push(s);
            }
        }
        out
    }

    fn add(seq: u64) -> ReadyOp {
        ReadyOp {
            position: layout::ready(1, 2, 0, seq),
            job: Some(Uuid::from_u128(seq as u128)),
            fresh: false,
        }
    }

    fn remove(seq: u64) -> ReadyOp {
        ReadyOp {
            position: layout::ready(1, 2, 0, seq),
            job: None,
            fresh: false,
        }
    }

    #[test]
    fn a_batch_of_new_jobs_is_one_run_and_their_ends_rewrite_it() {
        let mut table = BTreeMap::new();
        let w = apply(&mut table, (10..20).map(add).collect());
        assert_eq!(w.len(), 1, "one new key for ten jobs");
        assert_eq!(w[0].before, Before::Absent);
        let w = apply(&mut table, (10..15).map(remove).collect());
        assert_eq!(w.len(), 1, "one rewrite for five ends");
        assert!(matches!(w[0].before, Before::Known(_)));
        assert_eq!(jobs_in_order(&table), (15..20).collect::<Vec<_>>());
        apply(&mut table, (15..20).map(remove).collect());
        assert!(table.is_empty(), "an emptied run is removed");
    }

    #[test]
    fn a_job_back_in_the_middle_keeps_dispatch_order() {
        let mut table = BTreeMap::new();
        apply(&mut table, (10..20).map(add).collect());
        apply(&mut table, (20..30).map(add).collect());
        // A retry (its old sequence) and a newer job in one batch.
        apply(&mut table, vec![remove(12), add(40)]);
        apply(&mut table, vec![add(12), add(41)]);
        let mut want: Vec<u64> = (10..30).chain([40, 41]).collect();
        want.sort();
        assert_eq!(jobs_in_order(&table), want);
        // Positions before every run start one of their own, still in order.
        apply(&mut table, vec![add(3)]);
        assert_eq!(jobs_in_order(&table)[0], 3);
        // A stored run is never extended past its last job (a rewrite costs
        // more than a new key): 3, 10.., 20.., 40, 41.
        let runs: HashMap<_, _> = table
            .iter()
            .map(|(k, v)| (seq(k), v.len() / ITEM))
            .collect();
        assert_eq!(
            runs,
            HashMap::from([(3, 1), (10, 10), (20, 10), (40, 1), (41, 1)])
        );
    }

    #[test]
    fn an_entry_of_schema_5_is_one_job_at_its_own_position() {
        let key = layout::ready(1, 2, 0, 7);
        let id = Uuid::from_u128(7);
        let mut table = BTreeMap::from([(key.clone(), id.as_bytes().to_vec())]);
        assert_eq!(decode(&key, &table[&key]), vec![(7, Some(id))]);
        apply(&mut table, vec![add(5), remove(7)]);
        assert_eq!(jobs_in_order(&table), vec![5]);
    }

    fn fresh(seq: u64) -> ReadyOp {
        ReadyOp {
            fresh: true,
            ..add(seq)
        }
    }

    #[test]
    fn fresh_adds_read_no_run_and_keep_dispatch_order() {
        struct NoReads;
        impl StoredRuns for NoReads {
            fn cover(&mut self, _: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
                panic!("a fresh add read the runs")
            }
            fn next(&mut self, _: &[u8]) -> Result<Option<Vec<u8>>> {
                panic!("a fresh add read the runs")
            }
        }
        let w = resolve((10..20).map(fresh).collect(), &mut NoReads).unwrap();
        assert_eq!(w.len(), 1, "one new run");
        assert_eq!(w[0].before, Before::Absent);

        let mut table = BTreeMap::new();
        apply(&mut table, (10..20).map(add).collect());
        apply(&mut table, (20..30).map(add).collect());
        // A retry before every run starts one of its own in the batch; the
        // fresh jobs may not join it: runs 10.. and 20.. lie between.
        apply(&mut table, vec![remove(5), add(5), fresh(40), fresh(41)]);
        let mut want: Vec<u64> = (10..30).chain([5, 40, 41]).collect();
        want.sort();
        assert_eq!(jobs_in_order(&table), want);
        let runs: Vec<_> = table.keys().map(|k| seq(k)).collect();
        assert_eq!(runs, vec![5, 10, 20, 40]);
    }
}
