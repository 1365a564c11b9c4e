//! The schema migration runner. The steps themselves live in the top-level
//! `migrations/` folder (one `NNNN_name.rs` with its `NNNN_name.md`), listed
//! in order in [`STEPS`].
//!
//! The schema version is a u32 (big-endian) in the `meta` tree. On open: a
//! store newer than the engine is refused; an older one is upgraded step by
//! step, each step idempotent and followed by a flush and a version bump, so
//! a crash mid-upgrade resumes at the step that was running.

use std::path::Path;

use super::StoreError;
use super::layout::{META_TREE, SCHEMA_VERSION_KEY};

/// One schema step: brings a store at `version - 1` to `version`.
pub struct Step {
    pub version: u32,
    pub name: &'static str,
    pub apply: fn(&sled::Db) -> Result<(), StoreError>,
}

#[path = "../../migrations/0001_initial.rs"]
mod m0001_initial;
#[path = "../../migrations/0002_payload_in_job.rs"]
mod m0002_payload_in_job;
#[path = "../../migrations/0003_history_in_job.rs"]
mod m0003_history_in_job;
#[path = "../../migrations/0004_job_features.rs"]
mod m0004_job_features;
#[path = "../../migrations/0005_batch_undo.rs"]
mod m0005_batch_undo;
#[path = "../../migrations/0006_ready_runs.rs"]
mod m0006_ready_runs;
#[path = "../../migrations/0007_job_bundles.rs"]
mod m0007_job_bundles;

/// Every step, in order. The last one's version is the engine's schema version.
pub const STEPS: &[Step] = &[
    Step {
        version: 1,
        name: "initial",
        apply: m0001_initial::apply,
    },
    Step {
        version: 2,
        name: "payload in job",
        apply: m0002_payload_in_job::apply,
    },
    Step {
        version: 3,
        name: "history in job",
        apply: m0003_history_in_job::apply,
    },
    Step {
        version: 4,
        name: "job features",
        apply: m0004_job_features::apply,
    },
    Step {
        version: 5,
        name: "batch undo",
        apply: m0005_batch_undo::apply,
    },
    Step {
        version: 6,
        name: "ready runs",
        apply: m0006_ready_runs::apply,
    },
    Step {
        version: 7,
        name: "job bundles",
        apply: m0007_job_bundles::apply,
    },
];

/// The schema version this engine writes.
#[cfg(test)]
fn current_version() -> u32 {
    STEPS.last().map_or(0, |s| s.version)
}

/// The store's schema version (0 for a store never migrated).
pub fn read_version(db: &sled::Db) -> Result<u32, StoreError> {
    let meta = db.open_tree(META_TREE)?;
    Ok(match meta.get(SCHEMA_VERSION_KEY)? {
        Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
        Some(_) => {
            return Err(StoreError::Migration {
                version: 0,
                reason: "unreadable schema version".into(),
            });
        }
        None => 0,
    })
}

/// Applies every step newer than the store. Returns the resulting version.
pub fn run(db: &sled::Db, dir: &Path, steps: &[Step]) -> Result<u32, StoreError> {
    let latest = steps.last().map_or(0, |s| s.version);
    let found = read_version(db)?;
    if found > latest {
        return Err(StoreError::TooNew {
            path: dir.display().to_string(),
            found,
            supported: latest,
        });
    }
    let meta = db.open_tree(META_TREE)?;
    for step in steps.iter().filter(|s| s.version > found) {
        tracing::info!(
            version = step.version,
            name = step.name,
            "applying store migration"
        );
        (step.apply)(db).map_err(|e| StoreError::Migration {
            version: step.version,
            reason: e.to_string(),
        })?;
        db.flush()?;
        meta.insert(SCHEMA_VERSION_KEY, &step.version.to_be_bytes())?;
        meta.flush()?;
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bump_marker(db: &sled::Db) -> Result<(), StoreError> {
        let t = db.open_tree("test")?;
        let n = t.get("runs")?.map_or(0, |v| v[0]);
        t.insert("runs", &[n + 1])?;
        Ok(())
    }

    /// The real steps, then a test step one version newer.
    fn with_test_step() -> Vec<Step> {
        let mut steps: Vec<Step> = STEPS
            .iter()
            .map(|s| Step {
                version: s.version,
                name: s.name,
                apply: s.apply,
            })
            .collect();
        steps.push(Step {
            version: current_version() + 1,
            name: "test step",
            apply: bump_marker,
        });
        steps
    }

    #[test]
    fn a_fresh_store_gets_every_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let steps = with_test_step();
        let newest = current_version() + 1;
        assert_eq!(run(&db, dir.path(), &steps).unwrap(), newest);
        assert_eq!(run(&db, dir.path(), &steps).unwrap(), newest);
        assert_eq!(
            db.open_tree("test").unwrap().get("runs").unwrap().unwrap()[0],
            1
        );
    }

    /// Opens sled in `dir` once the instance dropped just before has let go
    /// of its file lock, which its IO threads may hold a moment longer.
    fn open_once_released(dir: &Path) -> sled::Db {
        let lock_wait = std::time::Duration::from_secs(10);
        super::super::wait_for_lock_release(&dir.join("db"), lock_wait);
        sled::open(dir).unwrap()
    }

    #[test]
    fn an_older_store_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let current = current_version();
        {
            let db = sled::open(dir.path()).unwrap();
            assert_eq!(run(&db, dir.path(), STEPS).unwrap(), current);
        }
        let db = open_once_released(dir.path());
        assert_eq!(read_version(&db).unwrap(), current);
        let steps = with_test_step();
        assert_eq!(run(&db, dir.path(), &steps).unwrap(), current + 1);
        assert_eq!(read_version(&db).unwrap(), current + 1);
        let err = run(&db, dir.path(), STEPS).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found, supported, .. }
                if found == current + 1 && supported == current),
            "{err}"
        );
    }

    mod v1_to_v2 {
        use super::super::m0002_payload_in_job::{JobRecordV1, JobRecordV2};
        use super::super::*;
        use crate::store::codec;
        use crate::store::layout;
        use crate::store::records::{AttemptRecord, JobState};
        use uuid::Uuid;

        fn v1_job(state: JobState, attempts: u32) -> JobRecordV1 {
            JobRecordV1 {
                queue: "q".into(),
                queue_id: 1,
                namespace: String::new(),
                function_id: "svc::f".into(),
                fn_id: 1,
                state,
                priority: 0,
                seq: 0,
                attempts,
                history_len: attempts,
                max_attempts: 5,
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
            }
        }

        /// A store as a schema 1 engine left it: a ready job and one that was
        /// running when it was killed (record `running`, attempt counted, empty `X`).
        fn build_v1(db: &sled::Db, dir: &Path) -> (Uuid, Uuid) {
            run(db, dir, &STEPS[..1]).unwrap();
            let tree = db.open_tree(layout::QUEUE_TREE).unwrap();
            let (ready, running) = (Uuid::now_v7(), Uuid::now_v7());
            for (id, job, payload) in [
                (ready, v1_job(JobState::Ready, 0), &b"{\"n\":1}"[..]),
                (running, v1_job(JobState::Running, 2), &b"[2]"[..]),
            ] {
                let mut p = vec![layout::PAYLOADS_V1];
                p.extend_from_slice(id.as_bytes());
                tree.insert(p, payload).unwrap();
                tree.insert(layout::job(&id), codec::encode_as(1, &job))
                    .unwrap();
            }
            tree.insert(layout::running(&running), &[]).unwrap();
            (ready, running)
        }

        #[test]
        fn payloads_move_into_jobs_and_running_attempts_into_x() {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            let (ready, running) = build_v1(&db, dir.path());
            assert_eq!(read_version(&db).unwrap(), 1);
            assert_eq!(run(&db, dir.path(), &STEPS[..2]).unwrap(), 2);
            let tree = db.open_tree(layout::QUEUE_TREE).unwrap();
            assert!(
                tree.scan_prefix([layout::PAYLOADS_V1]).next().is_none(),
                "no payload rows are left"
            );
            let get = |id: &Uuid| -> JobRecordV2 {
                codec::decode(&tree.get(layout::job(id)).unwrap().unwrap()).unwrap()
            };
            let r = get(&ready);
            assert_eq!(
                (r.state, r.attempts, &r.payload[..]),
                (JobState::Ready, 0, &b"{\"n\":1}"[..])
            );
            let x = get(&running);
            assert_eq!(
                (x.state, x.attempts, x.history_len, &x.payload[..]),
                (JobState::Ready, 1, 1, &b"[2]"[..]),
                "the interrupted attempt is uncounted until recovery records it"
            );
            let attempt: AttemptRecord =
                codec::decode(&tree.get(layout::running(&running)).unwrap().unwrap()).unwrap();
            assert_eq!(attempt.attempt, 2, "the attempt keeps its number");
            // Run again (as after a crash mid-step): nothing changes.
            db.open_tree(layout::META_TREE)
                .unwrap()
                .insert(layout::SCHEMA_VERSION_KEY, &1u32.to_be_bytes())
                .unwrap();
            assert_eq!(run(&db, dir.path(), &STEPS[..2]).unwrap(), 2);
            assert_eq!(get(&running), x);
            assert_eq!(get(&ready), r);
        }
    }

    mod v2_to_v3 {
        use super::super::m0002_payload_in_job::JobRecordV2;
        use super::super::m0003_history_in_job::attempts_prefix;
        use super::super::m0004_job_features::JobRecordV3;
        use super::super::*;
        use crate::store::codec;
        use crate::store::layout;
        use crate::store::records::{AttemptRecord, JobState};
        use uuid::Uuid;

        fn v2_job(state: JobState, history_len: u32) -> JobRecordV2 {
            JobRecordV2 {
                queue: "q".into(),
                queue_id: 1,
                namespace: String::new(),
                function_id: "svc::f".into(),
                fn_id: 1,
                state,
                priority: 0,
                seq: 0,
                attempts: history_len,
                history_len,
                max_attempts: 2,
                enqueued_ms: 1,
                due_ms: 0,
                finished_ms: 9,
                traceparent: None,
                baggage: None,
                group: None,
                idempotency_key: None,
                result: None,
                last_error: None,
                redrives: 0,
                dead_seq: 0,
                payload: b"{}".to_vec(),
            }
        }

        fn attempt(n: u32) -> AttemptRecord {
            AttemptRecord {
                attempt: n,
                started_ms: 10 * n as u64,
                ended_ms: 10 * n as u64 + 5,
                worker_id: None,
                error: None,
            }
        }

        fn a_key(id: &Uuid, n: u32) -> Vec<u8> {
            let mut k = attempts_prefix(id);
            k.extend_from_slice(&n.to_be_bytes());
            k
        }

        /// A store as a schema 2 engine left it: a dead job with two ended
        /// attempts in `A`, a ready one with none, and an attempt whose job is gone.
        #[test]
        fn attempts_move_into_their_job_records() {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            run(&db, dir.path(), &STEPS[..2]).unwrap();
            let tree = db.open_tree(layout::QUEUE_TREE).unwrap();
            let (dead, ready, gone) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
            for (id, job) in [
                (dead, v2_job(JobState::Dead, 2)),
                (ready, v2_job(JobState::Ready, 0)),
            ] {
                tree.insert(layout::job(&id), codec::encode_as(2, &job))
                    .unwrap();
            }
            for n in [2, 1] {
                tree.insert(a_key(&dead, n), codec::encode_as(2, &attempt(n)))
                    .unwrap();
            }
            tree.insert(a_key(&gone, 1), codec::encode_as(2, &attempt(1)))
                .unwrap();

            assert_eq!(run(&db, dir.path(), &STEPS[..3]).unwrap(), 3);
            assert!(
                tree.scan_prefix([layout::ATTEMPTS_V2]).next().is_none(),
                "no attempt rows are left"
            );
            let get = |id: &Uuid| -> JobRecordV3 {
                codec::decode(&tree.get(layout::job(id)).unwrap().unwrap()).unwrap()
            };
            let d = get(&dead);
            assert_eq!(d.history, vec![attempt(1), attempt(2)], "in attempt order");
            assert_eq!(
                (d.state, d.history_len, &d.payload[..]),
                (JobState::Dead, 2, &b"{}"[..])
            );
            assert!(get(&ready).history.is_empty());
            // Run again (as after a crash mid-step): records already moved are kept.
            db.open_tree(layout::META_TREE)
                .unwrap()
                .insert(layout::SCHEMA_VERSION_KEY, &2u32.to_be_bytes())
                .unwrap();
            assert_eq!(run(&db, dir.path(), &STEPS[..3]).unwrap(), 3);
            assert_eq!(get(&dead), d);
        }
    }

    mod v3_to_v4 {
        use super::super::m0004_job_features::{CountsV3, JobRecordV3};
        use super::super::*;
        use crate::store::codec;
        use crate::store::layout;
        use crate::store::records::{Counts, JobRecord, JobState};
        use uuid::Uuid;

        fn v3_job() -> JobRecordV3 {
            JobRecordV3 {
                queue: "q".into(),
                queue_id: 1,
                namespace: String::new(),
                function_id: "svc::f".into(),
                fn_id: 1,
                state: JobState::Ready,
                priority: 3,
                seq: 7,
                attempts: 1,
                history_len: 1,
                max_attempts: 2,
                enqueued_ms: 1,
                due_ms: 0,
                finished_ms: 0,
                traceparent: Some("00-a-b-01".into()),
                baggage: None,
                group: Some("g".into()),
                idempotency_key: None,
                result: None,
                last_error: None,
                redrives: 0,
                dead_seq: 0,
                payload: b"{\"n\":1}".to_vec(),
                history: Vec::new(),
            }
        }

        /// A store as a schema 3 engine left it: a job and a queue's counts.
        #[test]
        fn jobs_and_counts_gain_the_new_fields() {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            run(&db, dir.path(), &STEPS[..3]).unwrap();
            let tree = db.open_tree(layout::QUEUE_TREE).unwrap();
            let id = Uuid::now_v7();
            tree.insert(layout::job(&id), codec::encode_as(3, &v3_job()))
                .unwrap();
            let counts = CountsV3 {
                ready: 1,
                held: 2,
                ..CountsV3::default()
            };
            tree.insert(layout::counts(1), codec::encode_as(3, &counts))
                .unwrap();

            assert_eq!(run(&db, dir.path(), &STEPS[..4]).unwrap(), 4);
            let job: JobRecord =
                codec::decode(&tree.get(layout::job(&id)).unwrap().unwrap()).unwrap();
            assert_eq!(
                (
                    job.seq,
                    job.priority,
                    &job.payload[..],
                    job.group.as_deref()
                ),
                (7, 3, &b"{\"n\":1}"[..], Some("g"))
            );
            assert_eq!(
                (job.expires_ms, &job.progress, &job.flow),
                (0, &None, &None)
            );
            assert!(job.logs.is_empty());
            let c: Counts = codec::decode(&tree.get(layout::counts(1)).unwrap().unwrap()).unwrap();
            assert_eq!((c.ready, c.held, c.waiting), (1, 2, 0));
            // Run again (as after a crash mid-step): records already rewritten are kept.
            db.open_tree(layout::META_TREE)
                .unwrap()
                .insert(layout::SCHEMA_VERSION_KEY, &3u32.to_be_bytes())
                .unwrap();
            assert_eq!(run(&db, dir.path(), &STEPS[..4]).unwrap(), 4);
            let again: JobRecord =
                codec::decode(&tree.get(layout::job(&id)).unwrap().unwrap()).unwrap();
            assert_eq!(again, job);
        }
    }
}
