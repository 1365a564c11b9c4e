//! Schema version 7: jobs enqueued together may share a bundle record (see
//! `0007_job_bundles.md`). Nothing to rewrite.

use crate::store::StoreError;

/// Nothing to convert: every record written before keeps its own `J` key,
/// where a job not in a bundle is still read. The step exists so that an
/// engine of schema 6, which knows no bundles and would find none of the
/// jobs in them, refuses the store.
pub fn apply(_db: &sled::Db) -> Result<(), StoreError> {
    Ok(())
}
