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

/// Every step, in order. The last one's version is the engine's schema version.
pub const STEPS: &[Step] = &[Step {
    version: 1,
    name: "initial",
    apply: m0001_initial::apply,
}];

pub fn current_version() -> u32 {
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

    const TWO: &[Step] = &[
        Step {
            version: 1,
            name: "initial",
            apply: m0001_initial::apply,
        },
        Step {
            version: 2,
            name: "test step",
            apply: bump_marker,
        },
    ];

    #[test]
    fn a_fresh_store_gets_every_step_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(run(&db, dir.path(), TWO).unwrap(), 2);
        assert_eq!(run(&db, dir.path(), TWO).unwrap(), 2);
        assert_eq!(
            db.open_tree("test").unwrap().get("runs").unwrap().unwrap()[0],
            1
        );
    }

    #[test]
    fn an_older_store_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            assert_eq!(
                run(&db, dir.path(), STEPS).unwrap(),
                1,
                "built at version 1"
            );
        }
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(read_version(&db).unwrap(), 1);
        assert_eq!(run(&db, dir.path(), TWO).unwrap(), 2, "upgraded to 2");
        assert_eq!(read_version(&db).unwrap(), 2);
        let err = run(&db, dir.path(), STEPS).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }
}
