//! Schema version 1: the first layout (see `src/store/layout.rs`).
//! Creates the `queue` tree and its sequence high-water mark.

use crate::store::StoreError;
use crate::store::layout;

pub fn apply(db: &sled::Db) -> Result<(), StoreError> {
    let tree = db.open_tree(layout::QUEUE_TREE)?;
    if tree.get(layout::seq())?.is_none() {
        tree.insert(layout::seq(), &0u64.to_be_bytes())?;
    }
    Ok(())
}
