//! When a failed request may be sent again: only if repeating it is safe, and only
//! while the pool's retry budget lasts, so retries cannot multiply the load on a
//! pool that is already failing (a retry storm).
//!
//! The budget follows linkerd's `TpsBudget` (from Finagle's `RetryBudget`): every
//! first attempt deposits, every retry withdraws, over a sliding window of
//! [`WINDOW_SECS`] seconds. A retry is allowed while, within the window,
//!
//! ```text
//! retries ≤ requests × budget_percent / 100 + min_per_second × WINDOW_SECS
//! ```
//!
//! counting the retry being asked for. The second term is a reserve so that a quiet
//! pool, with too few requests to earn a retry, can still retry a few.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use http::Method;

use crate::config::RetryConfig;

/// Length of the budget's window in seconds: one bucket per second, so the window
/// is the current second plus the nine before it.
pub const WINDOW_SECS: u64 = 10;

/// Whether sending the request again has the same effect as sending it once
/// (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT and DELETE. Others are only
/// retried when they never reached an endpoint (the caller knows that).
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// The retry budget of one pool; shared by all its requests.
///
/// Lock-free: each one-second bucket is two `AtomicU64`s holding the second they
/// count for (high 32 bits) and the count (low 32 bits), so that moving a bucket
/// on to a new second and counting in it are one compare-and-swap and no count is
/// lost at a second boundary.
#[derive(Debug)]
pub struct RetryBudget {
    /// Seconds are counted from here.
    epoch: Instant,
    /// First attempts, per second.
    requests: [AtomicU64; WINDOW_SECS as usize],
    /// Retries granted, per second.
    retries: [AtomicU64; WINDOW_SECS as usize],
    budget_percent: u64,
    /// `min_per_second × WINDOW_SECS`, in retries.
    reserve: u64,
}

impl RetryBudget {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            epoch: Instant::now(),
            requests: Default::default(),
            retries: Default::default(),
            budget_percent: u64::from(config.budget_percent),
            reserve: u64::from(config.min_per_second) * WINDOW_SECS,
        }
    }

    /// A first attempt at `now`: it earns `budget_percent`% of a retry.
    pub fn record_request(&self, now: Instant) {
        add(&self.requests, self.second(now));
    }

    /// Takes one retry from the budget at `now`, or returns false when the window
    /// holds no more. Under concurrency the retry is counted before the check and
    /// handed back if over, so racing callers can only be refused too often, never
    /// overspend.
    pub fn try_retry(&self, now: Instant) -> bool {
        let second = self.second(now);
        add(&self.retries, second);
        let requests = sum(&self.requests, second);
        let retries = sum(&self.retries, second);
        let allowed = retries.saturating_mul(100)
            <= requests
                .saturating_mul(self.budget_percent)
                .saturating_add(self.reserve.saturating_mul(100));
        if !allowed {
            take_back(&self.retries, second);
        }
        allowed
    }

    /// Whole seconds since `epoch`; 32 bits last 136 years.
    fn second(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }
}

fn pack(second: u32, count: u32) -> u64 {
    (u64::from(second) << 32) | u64::from(count)
}

fn unpack(bucket: u64) -> (u32, u32) {
    ((bucket >> 32) as u32, bucket as u32)
}

fn slot(buckets: &[AtomicU64], second: u32) -> Option<&AtomicU64> {
    buckets.get(usize::try_from(u64::from(second) % WINDOW_SECS).ok()?)
}

/// Counts one in `second`'s bucket, starting it afresh when it still holds an
/// older second. A bucket holding a newer second (a caller with a stale `now`)
/// is added to as it is rather than thrown away.
fn add(buckets: &[AtomicU64], second: u32) {
    let Some(bucket) = slot(buckets, second) else {
        return;
    };
    let _ = bucket.try_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
        let (stamp, count) = unpack(packed);
        Some(if stamp >= second {
            pack(stamp, count.saturating_add(1))
        } else {
            pack(second, 1)
        })
    });
}

/// Undoes an [`add`] if the bucket still counts for `second`.
fn take_back(buckets: &[AtomicU64], second: u32) {
    let Some(bucket) = slot(buckets, second) else {
        return;
    };
    let _ = bucket.try_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
        let (stamp, count) = unpack(packed);
        (stamp >= second && count > 0).then(|| pack(stamp, count - 1))
    });
}

/// The counts of the buckets within the window that ends at `second`.
fn sum(buckets: &[AtomicU64], second: u32) -> u64 {
    buckets
        .iter()
        .map(|bucket| unpack(bucket.load(Ordering::Acquire)))
        .filter(|&(stamp, _)| u64::from(stamp) + WINDOW_SECS > u64::from(second))
        .map(|(_, count)| u64::from(count))
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(budget_percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&RetryConfig {
            budget_percent,
            min_per_second,
            ..RetryConfig::default()
        })
    }

    fn record_requests(budget: &RetryBudget, n: usize, at: Instant) {
        for _ in 0..n {
            budget.record_request(at);
        }
    }

    fn retries_granted(budget: &RetryBudget, now: Instant) -> usize {
        (0..10_000).take_while(|_| budget.try_retry(now)).count()
    }

    #[test]
    fn idempotent_methods_per_rfc_9110() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            assert!(is_idempotent(&method), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "PURGE"] {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            assert!(!is_idempotent(&method), "{method}");
        }
    }

    #[test]
    fn a_burst_of_failures_cannot_retry_beyond_the_budget() {
        let budget = budget(20, 0);
        let now = Instant::now();
        record_requests(&budget, 100, now);
        assert_eq!(retries_granted(&budget, now), 20);
        // Refusals are not counted: the next request earns a fifth of a retry,
        // five earn a whole one.
        record_requests(&budget, 5, now);
        assert_eq!(retries_granted(&budget, now), 1);
    }

    #[test]
    fn racing_threads_never_overspend() {
        let budget = budget(20, 0);
        let now = Instant::now();
        record_requests(&budget, 100, now);
        let granted: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..100).filter(|_| budget.try_retry(now)).count()))
                .collect();
            threads
                .into_iter()
                .map(|thread| thread.join().expect("thread"))
                .sum()
        });
        assert!((1..=20).contains(&granted), "granted {granted} of 20");
    }

    #[test]
    fn the_reserve_adds_to_the_share() {
        let budget = budget(20, 1);
        let now = Instant::now();
        record_requests(&budget, 100, now);
        assert_eq!(retries_granted(&budget, now), 20 + 10);
    }

    #[test]
    fn min_per_second_lets_a_quiet_pool_retry() {
        let quiet = budget(20, 2);
        assert_eq!(retries_granted(&quiet, Instant::now()), 20);
        let without_reserve = budget(20, 0);
        let now = Instant::now();
        record_requests(&without_reserve, 1, now);
        assert_eq!(retries_granted(&without_reserve, now), 0);
    }

    #[test]
    fn old_requests_and_retries_age_out() {
        let budget = budget(50, 0);
        let t0 = Instant::now();
        record_requests(&budget, 10, t0);
        assert_eq!(retries_granted(&budget, t0), 5);
        // Still inside the window: spent.
        assert_eq!(retries_granted(&budget, t0 + Duration::from_secs(5)), 0);
        // Requests five seconds later add to what is still in the window.
        record_requests(&budget, 10, t0 + Duration::from_secs(5));
        assert_eq!(retries_granted(&budget, t0 + Duration::from_secs(5)), 5);
        // Past the window of t0: its 10 requests and 5 retries are gone, the
        // later 10 requests and 5 retries remain, so nothing is left.
        assert_eq!(retries_granted(&budget, t0 + Duration::from_secs(11)), 0);
        // Past both: nothing earned.
        assert_eq!(retries_granted(&budget, t0 + Duration::from_secs(16)), 0);
        record_requests(&budget, 2, t0 + Duration::from_secs(16));
        assert_eq!(retries_granted(&budget, t0 + Duration::from_secs(16)), 1);
    }

    #[test]
    fn a_bucket_is_reused_for_a_later_second() {
        let budget = budget(100, 0);
        let t0 = Instant::now();
        budget.record_request(t0);
        // Same slot (10 s later), new second: the old count does not carry over.
        let later = t0 + Duration::from_secs(10);
        budget.record_request(later);
        assert_eq!(retries_granted(&budget, later), 1);
    }
}
