//! Schema version 6: a ready entry holds a run of jobs (see
//! `0006_ready_runs.md`). Nothing to rewrite.

use crate::store::StoreError;

/// Nothing to convert: an entry written before (a 16-byte job id) reads as
/// a run of one job. The step exists so that an engine of schema 5, which
/// would read a run's value as one malformed job id, refuses the store.
pub fn apply(_db: &sled::Db) -> Result<(), StoreError> {
    Ok(())
}
