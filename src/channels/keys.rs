//! Access keys: one random key per end, so the reader's ref cannot open the
//! write end (iii hands both ends the same key). Compared in constant time so
//! response timing does not reveal how much of a guess was right.

use uuid::Uuid;

/// A bearer key for one end of one channel. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey(String);

impl AccessKey {
    /// 244 random bits (two v4 UUIDs from the OS generator), as 64 hex digits:
    /// safe in a URL without encoding.
    pub fn random() -> Self {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        AccessKey(format!("{}{}", a.simple(), b.simple()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant time in the content; only the (public) length short-cuts.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_match_only_themselves() {
        let (a, b) = (AccessKey::random(), AccessKey::random());
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(a.matches(a.expose()));
        assert!(!a.matches(b.expose()));
        assert!(!a.matches(&a.expose()[1..]));
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
