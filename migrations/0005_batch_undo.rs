//! Schema version 5: the queue tree gains the `U` undo table (see
//! `0005_batch_undo.md`). Nothing to rewrite.

use crate::store::StoreError;

/// Nothing to convert: the step exists so that an engine of schema 4, which
/// would not undo a batch a crash interrupted, refuses the store.
pub fn apply(_db: &sled::Db) -> Result<(), StoreError> {
    Ok(())
}
