//! Tokens already verified, so a client reusing its token does not pay for a
//! signature check (or an introspection call) on every request. Keyed by the
//! SHA-256 of the token, never the token; an entry is never returned past the
//! token's `exp` or its own TTL, and revocations and key retirement are
//! checked on every hit by the caller.
//!
//! Two bounded concurrent caches (`quick_cache`: sharded, no global lock, and
//! scan-resistant eviction, so a burst of one-off tokens does not flush the
//! tokens clients reuse): verified tokens, and refusals remembered from
//! introspection. They are separate, so garbage tokens filling the negative
//! side can never evict a real verified token.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lc_rs::digest;
use quick_cache::sync::Cache;

use super::{Verified, jwks::Fingerprint};

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

#[derive(Clone)]
struct Valid {
    verified: Arc<Verified>,
    until: Instant,
}

/// Verified tokens and introspection refusals, each bounded.
pub struct TokenCache {
    valid: Cache<TokenHash, Valid>,
    inactive: Cache<TokenHash, Instant>,
}

impl TokenCache {
    /// `capacity` verified tokens and as many refusals.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            valid: Cache::new(capacity),
            inactive: Cache::new(capacity),
        }
    }

    /// The live entry for `key`, if any.
    pub fn get(&self, key: &TokenHash) -> Option<Cached> {
        let now = Instant::now();
        if let Some(entry) = self.valid.get(key) {
            if entry.until > now {
                return Some(Cached::Valid(entry.verified));
            }
            self.valid.remove(key);
        }
        let until = self.inactive.get(key)?;
        if until > now {
            return Some(Cached::Inactive);
        }
        self.inactive.remove(key);
        None
    }

    /// Remembers a verified token for `ttl` (callers cap it at the token's `exp`),
    /// at most [`MAX_ENTRY_TTL`].
    pub fn insert_valid(&self, key: TokenHash, verified: Arc<Verified>, ttl: Duration) {
        let Some(until) = deadline(ttl) else {
            return;
        };
        // A token now valid is no longer inactive (it may have been refused
        // while the provider had not seen it yet).
        self.inactive.remove(&key);
        self.valid.insert(key, Valid { verified, until });
    }

    /// Remembers that introspection refused the token, for `ttl`.
    pub fn insert_inactive(&self, key: TokenHash, ttl: Duration) {
        if let Some(until) = deadline(ttl) {
            self.inactive.insert(key, until);
        }
    }

    /// Forgets a verified token (its key was retired since it was cached).
    pub fn remove(&self, key: &TokenHash) {
        self.valid.remove(key);
    }

    /// Drops every token of issuer `issuer` that was verified with one of the
    /// `retired` keys; returns how many.
    pub fn retire(&self, issuer: &str, retired: &[Fingerprint]) -> usize {
        let before = self.valid.len();
        self.valid.retain(|_, entry| {
            let verified = &entry.verified;
            !(verified.issuer == issuer && verified.key.is_some_and(|key| retired.contains(&key)))
        });
        before.saturating_sub(self.valid.len())
    }

    /// Verified tokens held, expired ones not yet evicted included.
    pub fn len(&self) -> usize {
        self.valid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }

    /// Refusals held.
    pub fn inactive_len(&self) -> usize {
        self.inactive.len()
    }
}

/// The longest any entry is kept. A token's `exp` is the client's to choose (a
/// far-future one would overflow the clock); re-verifying once a day costs nothing.
pub const MAX_ENTRY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// When an entry kept for `ttl` from now ends; `None` for a zero `ttl` (not kept).
fn deadline(ttl: Duration) -> Option<Instant> {
    if ttl.is_zero() {
        return None;
    }
    Instant::now().checked_add(ttl.min(MAX_ENTRY_TTL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;

    fn verified(issuer: &str, key: Option<Fingerprint>) -> Arc<Verified> {
        Arc::new(Verified {
            identity: Identity::default(),
            issuer: issuer.to_owned(),
            claims: serde_json::Value::Null,
            jti: None,
            key,
            forwarded: Vec::new(),
            identity_values: Default::default(),
        })
    }

    #[test]
    fn bounded_and_expiring() {
        let cache = TokenCache::new(10);
        for i in 0..25 {
            let key = hash(&i.to_string());
            cache.insert_valid(key, verified("a", None), Duration::from_secs(60));
            assert!(cache.len() <= 20, "bounded: {}", cache.len());
            assert!(cache.get(&key).is_some(), "the newest entry is kept");
        }
        cache.insert_valid(hash("short"), verified("a", None), Duration::from_millis(1));
        cache.insert_inactive(hash("no"), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            cache.get(&hash("short")).is_none(),
            "expired entries are gone"
        );
        assert!(
            cache.get(&hash("no")).is_none(),
            "expired refusals are gone"
        );
        cache.insert_valid(hash("zero"), verified("a", None), Duration::ZERO);
        assert!(
            cache.get(&hash("zero")).is_none(),
            "a token at exp is not cached"
        );
    }

    #[test]
    fn a_far_future_exp_is_cached_for_a_day_without_overflowing_the_clock() {
        let cache = TokenCache::new(10);
        // exp = u64::MAX seconds: the client chose it; the clock must not overflow.
        cache.insert_valid(
            hash("forever"),
            verified("a", None),
            Duration::from_secs(u64::MAX),
        );
        cache.insert_inactive(hash("never"), Duration::MAX);
        assert!(matches!(
            cache.get(&hash("forever")),
            Some(Cached::Valid(_))
        ));
        assert!(cache.get(&hash("never")).is_some());
    }

    #[test]
    fn garbage_refusals_never_evict_verified_tokens() {
        let cache = TokenCache::new(100);
        let kept: Vec<TokenHash> = (0..50).map(|i| hash(&format!("real-{i}"))).collect();
        for key in &kept {
            cache.insert_valid(*key, verified("a", None), Duration::from_secs(60));
        }
        for i in 0..100_000 {
            cache.insert_inactive(hash(&format!("garbage-{i}")), Duration::from_secs(60));
        }
        assert!(cache.inactive_len() <= 200, "{}", cache.inactive_len());
        for key in &kept {
            assert!(matches!(cache.get(key), Some(Cached::Valid(_))));
        }
    }

    #[test]
    fn retiring_a_key_drops_its_tokens_only() {
        let cache = TokenCache::new(100);
        let (old, new) = ([1; 32], [2; 32]);
        cache.insert_valid(
            hash("old"),
            verified("a", Some(old)),
            Duration::from_secs(60),
        );
        cache.insert_valid(
            hash("new"),
            verified("a", Some(new)),
            Duration::from_secs(60),
        );
        cache.insert_valid(
            hash("other"),
            verified("b", Some(old)),
            Duration::from_secs(60),
        );
        cache.insert_valid(hash("opaque"), verified("a", None), Duration::from_secs(60));
        assert_eq!(cache.retire("a", &[old]), 1);
        assert!(cache.get(&hash("old")).is_none());
        for kept in ["new", "other", "opaque"] {
            assert!(cache.get(&hash(kept)).is_some(), "{kept}");
        }
    }

    #[test]
    fn a_valid_answer_replaces_a_refusal() {
        let cache = TokenCache::new(10);
        cache.insert_inactive(hash("t"), Duration::from_secs(60));
        assert!(matches!(cache.get(&hash("t")), Some(Cached::Inactive)));
        cache.insert_valid(hash("t"), verified("a", None), Duration::from_secs(60));
        assert!(matches!(cache.get(&hash("t")), Some(Cached::Valid(_))));
    }

    #[test]
    fn concurrent_callers_keep_the_reused_tokens() {
        let cache = Arc::new(TokenCache::new(1_000));
        let hot: Vec<TokenHash> = (0..20).map(|i| hash(&format!("hot-{i}"))).collect();
        for key in &hot {
            cache.insert_valid(*key, verified("a", None), Duration::from_secs(60));
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cache, hot) = (cache.clone(), hot.clone());
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let key = hash(&format!("{t}-{i}"));
                        cache.insert_valid(key, verified("a", None), Duration::from_secs(60));
                        let _ = cache.get(&hot[i % hot.len()]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert!(cache.len() <= 2_000, "{}", cache.len());
        for key in &hot {
            assert!(
                cache.get(key).is_some(),
                "a token in use was evicted by one-off tokens"
            );
        }
    }

    /// What the cache costs per operation at the default size: a hit, an
    /// insert into a full cache (fresh tokens, the eviction path), and hits
    /// while another thread inserts. A measurement, not a test of speed.
    /// `cargo test --release -p gateway --lib auth::cache::tests::cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run optimised with --ignored --nocapture"]
    fn cost() {
        const CAPACITY: usize = 10_000;
        const FRESH: usize = 200_000;
        let per_op =
            |started: Instant, ops: usize| started.elapsed().as_nanos() as f64 / ops as f64;
        let keys: Vec<TokenHash> = (0..CAPACITY + FRESH)
            .map(|i| hash(&i.to_string()))
            .collect();
        let cache = Arc::new(TokenCache::new(CAPACITY));
        let entry = verified("a", Some([1; 32]));
        let ttl = Duration::from_secs(600);
        for key in &keys[..CAPACITY] {
            cache.insert_valid(*key, entry.clone(), ttl);
        }
        // Half of them are reused (hot), then fresh tokens flood in.
        let hot = &keys[..CAPACITY / 2];
        for key in hot {
            assert!(cache.get(key).is_some());
        }
        let started = Instant::now();
        for key in &keys[CAPACITY..] {
            cache.insert_valid(*key, entry.clone(), ttl);
        }
        let insert = per_op(started, FRESH);
        let kept = hot.iter().filter(|key| cache.get(key).is_some()).count();
        let started = Instant::now();
        for _ in 0..20 {
            for key in hot {
                let _ = cache.get(key);
            }
        }
        let hit = per_op(started, 20 * hot.len());
        let writer = {
            let cache = cache.clone();
            let keys: Vec<TokenHash> = (0..FRESH).map(|i| hash(&format!("w{i}"))).collect();
            let entry = entry.clone();
            std::thread::spawn(move || {
                for key in keys {
                    cache.insert_valid(key, entry.clone(), ttl);
                }
            })
        };
        let mut waits: Vec<u128> = Vec::new();
        while !writer.is_finished() {
            for key in hot.iter().take(1_000) {
                let one = Instant::now();
                let _ = cache.get(key);
                waits.push(one.elapsed().as_nanos());
            }
        }
        writer.join().expect("writer");
        waits.sort_unstable();
        let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
        let contended = format!(
            "p50 {} ns, p99 {} ns, p99.99 {} ns, max {} ns",
            at(0.5),
            at(0.99),
            at(0.9999),
            at(1.0)
        );
        println!(
            "token cache ({CAPACITY} entries): insert into full {insert:.0} ns, lookup {hit:.0} ns, lookup while another thread inserts: {contended}; reused tokens kept through {FRESH} fresh inserts: {kept}/{}",
            hot.len()
        );
    }
}
