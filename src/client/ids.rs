//! Invocation ids without a system call per call.
//!
//! The engine needs ids that parse as UUIDs and are unique among its calls in
//! flight. Each client draws one random v4 UUID when it connects and derives
//! every id from it by counting in the low 64 bits, so ids stay unique per
//! connection and unpredictable across connections, and `getrandom` runs once.

use std::sync::atomic::{AtomicU64, Ordering};
use uuid::{Builder, Uuid};

pub(super) struct InvocationIds {
    high: u64,
    low: u64,
    next: AtomicU64,
}

impl InvocationIds {
    pub fn new() -> Self {
        let seed = Uuid::new_v4().as_u128();
        Self {
            high: (seed >> 64) as u64,
            low: seed as u64,
            next: AtomicU64::new(0),
        }
    }

    /// The next id: a well-formed v4 UUID (version and variant bits set).
    pub fn next(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let bits = (u128::from(self.high) << 64) | u128::from(self.low.wrapping_add(n));
        Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_distinct_v4_uuids() {
        let ids = InvocationIds::new();
        let seen: HashSet<Uuid> = (0..10_000).map(|_| ids.next()).collect();
        assert_eq!(seen.len(), 10_000);
        for id in seen.iter().take(10) {
            assert_eq!(id.get_version_num(), 4);
            assert_eq!(Uuid::parse_str(&id.to_string()).unwrap(), *id);
        }
        assert!(
            !seen.contains(&InvocationIds::new().next()),
            "connections draw their own seed"
        );
    }
}
