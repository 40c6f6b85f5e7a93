//! Chooses an endpoint for one request among a pool's healthy candidates.
//!
//! The caller filters the pool (health checks, outlier ejection) and hands over
//! what is left; the [`Balancer`] only picks. Hashes here are fixed functions, not
//! std's per-process `RandomState`, so that every gateway in front of the fleet
//! sends the same key to the same endpoint, and keeps doing so after a restart.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::config::Balance;

/// One endpoint the balancer may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The caller's index for the endpoint; [`Balancer::pick`] returns it.
    pub index: usize,
    /// Stable hash of the endpoint's address ([`endpoint_id`]); consistent hashing
    /// ranks endpoints by it, so it must not change while the endpoint lives.
    pub id: u64,
    /// Requests currently sent to the endpoint and not yet answered.
    pub in_flight: usize,
}

/// Picks endpoints with one of the [`Balance`] algorithms; shared by every request
/// to a pool.
#[derive(Debug)]
pub struct Balancer {
    kind: Balance,
    /// Round-robin position; also used by consistent hashing for keyless requests.
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(kind: Balance) -> Self {
        Self {
            kind,
            next: AtomicUsize::new(0),
        }
    }

    /// The algorithm this balancer runs.
    pub fn kind(&self) -> Balance {
        self.kind
    }

    /// The [`Candidate::index`] of the endpoint for the next request, or `None` when
    /// there is no candidate. `key` is only read by consistent hashing (see
    /// [`hash_key`]); without one it falls back to round robin, because a request
    /// with nothing to be sticky about should still spread evenly.
    pub fn pick(&self, candidates: &[Candidate], key: Option<u64>) -> Option<usize> {
        let chosen = match (self.kind, key) {
            (Balance::RoundRobin, _) | (Balance::ConsistentHash, None) => {
                self.round_robin(candidates)
            }
            (Balance::LeastRequest, _) => least_request(candidates),
            (Balance::ConsistentHash, Some(key)) => rendezvous(candidates, key),
        };
        chosen.map(|candidate| candidate.index)
    }

    /// Fair while the candidate set holds still; when it changes the position just
    /// carries on modulo the new length, which costs at most one uneven round.
    fn round_robin<'a>(&self, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
        if candidates.is_empty() {
            return None;
        }
        let position = self.next.fetch_add(1, Ordering::Relaxed);
        candidates.get(position % candidates.len())
    }
}

/// Power of two choices: two distinct random candidates, the less loaded wins.
/// Nearly as good as scanning for the minimum, but without every request herding
/// onto the one endpoint that looked idle a moment ago.
fn least_request(candidates: &[Candidate]) -> Option<&Candidate> {
    match candidates.len() {
        0 => None,
        1 => candidates.first(),
        len => {
            let a = fastrand::usize(..len);
            // Draw from the other len - 1 slots so the two are always distinct.
            let mut b = fastrand::usize(..len - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (candidates.get(a)?, candidates.get(b)?);
            Some(if b.in_flight < a.in_flight { b } else { a })
        }
    }
}

/// Rendezvous (highest random weight) hashing: every candidate scores
/// `mix(key ^ mix(id))` and the highest score wins. Removing an endpoint only moves
/// the keys it was winning, and adding one only takes keys for itself, without a
/// ring to rebuild; O(n) per pick is fine for pools of a few dozen hosts.
fn rendezvous(candidates: &[Candidate], key: u64) -> Option<&Candidate> {
    // Ties (only possible for duplicate ids) go to the higher id, then the earlier
    // candidate, so the answer never depends on the order of equal scores.
    candidates
        .iter()
        .map(|candidate| (mix64(key ^ mix64(candidate.id)), candidate))
        .reduce(|best, next| {
            if (next.0, next.1.id) > (best.0, best.1.id) {
                next
            } else {
                best
            }
        })
        .map(|(_, candidate)| candidate)
}

/// A stable 64-bit hash of a consistent-hashing key (a header value, a client
/// address): FNV-1a, then [`mix64`] because FNV's high bits change little for
/// short keys that differ only at the end.
pub fn hash_key(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let fnv = bytes.iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    mix64(fnv)
}

/// The [`Candidate::id`] of an endpoint: a hash of its IP, port and (IPv6) scope,
/// the same in every process, so gateways agree on where each key goes.
pub fn endpoint_id(addr: &SocketAddr) -> u64 {
    // Family tag, address, port, scope id: at most 1 + 16 + 2 + 4 bytes.
    let mut bytes = [0u8; 23];
    let len = match addr {
        SocketAddr::V4(v4) => {
            bytes[0] = 4;
            bytes[1..5].copy_from_slice(&v4.ip().octets());
            bytes[5..7].copy_from_slice(&v4.port().to_be_bytes());
            7
        }
        SocketAddr::V6(v6) => {
            bytes[0] = 6;
            bytes[1..17].copy_from_slice(&v6.ip().octets());
            bytes[17..19].copy_from_slice(&v6.port().to_be_bytes());
            bytes[19..23].copy_from_slice(&v6.scope_id().to_be_bytes());
            23
        }
    };
    hash_key(&bytes[..len])
}

/// The murmur3 64-bit finalizer: every input bit flips each output bit with
/// probability close to one half, which rendezvous hashing needs for even spread.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|index| Candidate {
                index: index + 100,
                id: endpoint_id(&SocketAddr::from(([10, 0, 0, index as u8 + 1], 8443))),
                in_flight: 0,
            })
            .collect()
    }

    fn counts(
        picks: impl Iterator<Item = Option<usize>>,
    ) -> std::collections::BTreeMap<usize, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for pick in picks {
            *counts.entry(pick.expect("a candidate")).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn no_candidates_no_pick() {
        for kind in [
            Balance::RoundRobin,
            Balance::LeastRequest,
            Balance::ConsistentHash,
        ] {
            assert_eq!(Balancer::new(kind).pick(&[], Some(1)), None, "{kind:?}");
            assert_eq!(Balancer::new(kind).pick(&[], None), None, "{kind:?}");
        }
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let balancer = Balancer::new(Balance::RoundRobin);
        let candidates = pool(3);
        let counts = counts((0..300).map(|_| balancer.pick(&candidates, None)));
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [(100, 100), (101, 100), (102, 100)]
        );
    }

    #[test]
    fn least_request_with_two_always_takes_the_less_loaded() {
        let balancer = Balancer::new(Balance::LeastRequest);
        let mut candidates = pool(2);
        candidates[0].in_flight = 7;
        for _ in 0..200 {
            assert_eq!(balancer.pick(&candidates, None), Some(101));
        }
        assert_eq!(balancer.pick(&candidates[..1], None), Some(100));
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let balancer = Balancer::new(Balance::LeastRequest);
        let mut candidates = pool(3);
        for (candidate, load) in candidates.iter_mut().zip([0, 5, 10]) {
            candidate.in_flight = load;
        }
        let counts = counts((0..3000).map(|_| balancer.pick(&candidates, None)));
        // The idle one wins every pair it is in (2/3 of pairs), the busiest none.
        assert_eq!(counts.get(&102), None, "{counts:?}");
        let idle = counts.get(&100).copied().unwrap_or(0);
        assert!((1700..=2300).contains(&idle), "{counts:?}");
    }

    #[test]
    fn consistent_hash_same_key_same_endpoint() {
        let balancer = Balancer::new(Balance::ConsistentHash);
        let candidates = pool(5);
        for key in (0..100u32).map(|k| hash_key(&k.to_be_bytes())) {
            let first = balancer.pick(&candidates, Some(key));
            assert!(first.is_some());
            for _ in 0..3 {
                assert_eq!(balancer.pick(&candidates, Some(key)), first);
            }
            // The order the caller lists candidates in does not matter.
            let reversed: Vec<_> = candidates.iter().rev().copied().collect();
            assert_eq!(balancer.pick(&reversed, Some(key)), first);
        }
    }

    #[test]
    fn consistent_hash_removal_only_moves_the_removed_endpoints_keys() {
        let balancer = Balancer::new(Balance::ConsistentHash);
        let all = pool(4);
        let without: Vec<_> = all.iter().filter(|c| c.index != 102).copied().collect();
        let mut moved = 0;
        for key in (0..1000u32).map(|k| hash_key(format!("user-{k}").as_bytes())) {
            let before = balancer.pick(&all, Some(key));
            let after = balancer.pick(&without, Some(key));
            if before == Some(102) {
                moved += 1;
                assert_ne!(after, Some(102));
            } else {
                assert_eq!(after, before, "key {key:#x} moved off a surviving endpoint");
            }
        }
        assert!(moved > 0, "the removed endpoint held no keys");
    }

    #[test]
    fn consistent_hash_spreads_keys_roughly_evenly() {
        let balancer = Balancer::new(Balance::ConsistentHash);
        let candidates = pool(3);
        let counts =
            counts((0..3000u32).map(|k| {
                balancer.pick(&candidates, Some(hash_key(format!("10.1.{k}").as_bytes())))
            }));
        assert_eq!(counts.len(), 3);
        for (index, count) in counts {
            assert!(
                (600..=1410).contains(&count),
                "endpoint {index}: {count} of 3000"
            );
        }
    }

    #[test]
    fn consistent_hash_without_key_is_round_robin() {
        let balancer = Balancer::new(Balance::ConsistentHash);
        let candidates = pool(3);
        let picks: Vec<_> = (0..6).map(|_| balancer.pick(&candidates, None)).collect();
        assert_eq!(picks, [100, 101, 102, 100, 101, 102].map(Some));
    }

    #[test]
    fn hashes_are_pinned() {
        // Changing these reshuffles every client's affinity across the whole fleet
        // (and between gateways running different versions): do it on purpose only.
        assert_eq!(hash_key(b""), 17_280_346_270_528_514_342);
        assert_eq!(hash_key(b"user-1"), 4_729_620_347_622_785_477);
        assert_eq!(
            endpoint_id(&"10.0.0.1:8443".parse().expect("addr")),
            9_330_784_781_939_286_824
        );
        assert_ne!(
            endpoint_id(&"10.0.0.1:8443".parse().expect("addr")),
            endpoint_id(&"10.0.0.1:8444".parse().expect("addr"))
        );
        assert_ne!(
            endpoint_id(&"[fe80::1%1]:8443".parse().expect("addr")),
            endpoint_id(&"[fe80::1%2]:8443".parse().expect("addr"))
        );
    }
}
