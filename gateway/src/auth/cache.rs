//! Tokens already verified, so a client reusing its token does not pay for a
//! signature check (or an introspection call) on every request. Keyed by the
//! SHA-256 of the token, never the token; an entry never outlives the token's
//! `exp` or its own TTL, and revocations are checked on every hit by the caller.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_lc_rs::digest;

use super::Verified;

/// The cache key: a hash of the token.
pub type TokenHash = [u8; 32];

/// SHA-256 of a token.
pub fn hash(token: &str) -> TokenHash {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// What may be cached: a verified token, or (for introspection) a refusal.
#[derive(Clone)]
pub enum Cached {
    Valid(Arc<Verified>),
    Inactive,
}

struct Entry {
    value: Cached,
    until: Instant,
}

/// A bounded map from token hash to result.
pub struct TokenCache {
    entries: Mutex<HashMap<TokenHash, Entry>>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The live entry for `key`, if any.
    pub fn get(&self, key: &TokenHash) -> Option<Cached> {
        let mut entries = self.lock();
        let entry = entries.get(key)?;
        if entry.until > Instant::now() {
            return Some(entry.value.clone());
        }
        entries.remove(key);
        None
    }

    /// Remembers `value` for `ttl` (callers cap it at the token's `exp`).
    pub fn insert(&self, key: TokenHash, value: Cached, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.until > now);
            // Still full: make room for a tenth, so eviction is rare and cheap.
            if entries.len() >= self.capacity {
                let drop: Vec<TokenHash> = entries
                    .keys()
                    .take((self.capacity / 10).max(1))
                    .copied()
                    .collect();
                for key in drop {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(
            key,
            Entry {
                value,
                until: now + ttl,
            },
        );
    }

    /// Entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let cache = TokenCache::new(10);
        for i in 0..25 {
            let key = hash(&i.to_string());
            cache.insert(key, Cached::Inactive, Duration::from_secs(60));
            assert!(cache.len() <= 10);
            assert!(cache.get(&key).is_some(), "the newest entry is kept");
        }
        cache.insert(hash("short"), Cached::Inactive, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            cache.get(&hash("short")).is_none(),
            "expired entries are gone"
        );
    }
}
