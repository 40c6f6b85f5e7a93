//! Passive outlier detection: an endpoint that keeps failing real requests is taken
//! out of the pool for a while, before the active health check would notice.
//!
//! One [`Outlier`] per endpoint. The n-th ejection in a row lasts
//! `base_ejection × n`, capped at `max_ejection`, so an endpoint that comes back
//! broken is tried less and less often. The multiplier decays: after an ejection
//! ends, every full `max_ejection` the endpoint goes without being ejected again
//! takes one off it, so a host that failed once last week starts again at
//! `base_ejection` while one that flaps keeps its long ejections.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::config::OutlierConfig;

/// Outlier state of one endpoint; shared by every request to it.
///
/// Reads ([`Outlier::is_ejected`]) and successes touch only atomics, because they
/// happen on every request; failures take a short std mutex so that counting and
/// ejecting happen as one step.
#[derive(Debug)]
pub struct Outlier {
    config: OutlierConfig,
    /// What `ejected_until` counts from.
    epoch: Instant,
    /// Failures since the last success or ejection.
    consecutive: AtomicU32,
    /// End of the current or last ejection, in nanoseconds after `epoch`; 0: never.
    ejected_until: AtomicU64,
    history: Mutex<History>,
}

#[derive(Debug)]
struct History {
    /// How many ejections the next one follows (before decay).
    multiplier: u32,
    /// Decay is counted in whole `max_ejection` periods from here: the end of the
    /// last ejection, moved on by the periods already taken off.
    decay_from: Instant,
}

impl Outlier {
    pub fn new(config: OutlierConfig) -> Self {
        let epoch = Instant::now();
        Self {
            config,
            epoch,
            consecutive: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            history: Mutex::new(History {
                multiplier: 0,
                decay_from: epoch,
            }),
        }
    }

    /// A response that was not a failure: the run of failures is broken.
    pub fn record_success(&self) {
        // Read first so that the common case writes nothing and keeps the cache
        // line shared between cores.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A 5xx or connect failure at `now`. Returns how long the endpoint is ejected
    /// when this failure ejected it. Failures while ejected (requests that were
    /// already in flight) neither extend the ejection nor count toward the next.
    pub fn record_failure(&self, now: Instant) -> Option<Duration> {
        let threshold = self.config.consecutive_failures;
        if threshold == 0 {
            return None;
        }
        // A poisoned lock only means another thread panicked mid-update; the
        // fields are plain numbers that are valid in any state.
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_ejected(now) {
            return None;
        }
        let failures = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < threshold {
            return None;
        }
        self.consecutive.store(0, Ordering::Relaxed);
        self.decay(&mut history, now);
        history.multiplier = history.multiplier.saturating_add(1);
        let ejection = self
            .config
            .base_ejection
            .checked_mul(history.multiplier)
            .unwrap_or(Duration::MAX)
            .min(self.config.max_ejection);
        let until = now.checked_add(ejection).unwrap_or(now);
        history.decay_from = until;
        self.ejected_until
            .store(self.nanos_since_epoch(until), Ordering::Release);
        Some(ejection)
    }

    /// Whether the endpoint is out of the pool at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.nanos_since_epoch(now) < self.ejected_until.load(Ordering::Acquire)
    }

    /// Takes one off the multiplier for every whole `max_ejection` since
    /// `decay_from`. Lazy, so no timer is needed.
    fn decay(&self, history: &mut History, now: Instant) {
        let period = self.config.max_ejection;
        let idle = now.saturating_duration_since(history.decay_from);
        if period.is_zero() {
            // Ejections last no time at all, so there is nothing to remember.
            history.multiplier = 0;
            return;
        }
        let periods = u32::try_from(idle.as_nanos() / period.as_nanos()).unwrap_or(u32::MAX);
        let taken = periods.min(history.multiplier);
        history.multiplier -= taken;
        history.decay_from = history
            .decay_from
            .checked_add(period.saturating_mul(taken))
            .unwrap_or(now);
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn outlier(consecutive_failures: u32) -> Outlier {
        Outlier::new(OutlierConfig {
            consecutive_failures,
            base_ejection: 10 * S,
            max_ejection: 35 * S,
            ..OutlierConfig::default()
        })
    }

    /// Fails `n` times at `at`; the result of the last failure.
    fn fail(outlier: &Outlier, n: u32, at: Instant) -> Option<Duration> {
        (0..n).map(|_| outlier.record_failure(at)).last().flatten()
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let outlier = outlier(3);
        let t0 = Instant::now();
        assert_eq!(fail(&outlier, 2, t0), None);
        outlier.record_success();
        assert_eq!(fail(&outlier, 2, t0), None);
        assert!(!outlier.is_ejected(t0));
        assert_eq!(outlier.record_failure(t0), Some(10 * S));
        assert!(outlier.is_ejected(t0));
        assert!(outlier.is_ejected(t0 + 9 * S));
        assert!(!outlier.is_ejected(t0 + 10 * S));
    }

    #[test]
    fn zero_disables() {
        let outlier = outlier(0);
        let t0 = Instant::now();
        assert_eq!(fail(&outlier, 100, t0), None);
        assert!(!outlier.is_ejected(t0));
    }

    #[test]
    fn failures_while_ejected_do_not_extend_or_count() {
        let outlier = outlier(2);
        let t0 = Instant::now();
        assert_eq!(fail(&outlier, 2, t0), Some(10 * S));
        assert_eq!(fail(&outlier, 5, t0 + 5 * S), None);
        assert!(!outlier.is_ejected(t0 + 10 * S));
        // The in-flight failures did not count: one more is not yet an ejection.
        assert_eq!(outlier.record_failure(t0 + 10 * S), None);
    }

    #[test]
    fn ejections_grow_and_cap() {
        let outlier = outlier(1);
        let mut now = Instant::now();
        for expected in [10, 20, 30, 35, 35] {
            let ejection = outlier.record_failure(now).expect("ejected");
            assert_eq!(ejection, expected * S);
            now += ejection;
        }
    }

    #[test]
    fn multiplier_decays_one_per_max_ejection_without_ejection() {
        let outlier = outlier(1);
        let t0 = Instant::now();
        assert_eq!(outlier.record_failure(t0), Some(10 * S));
        assert_eq!(outlier.record_failure(t0 + 10 * S), Some(20 * S));
        assert_eq!(outlier.record_failure(t0 + 30 * S), Some(30 * S));
        // Ends at t0 + 60 s; multiplier 3. One whole period (35 s) later: 2 left,
        // so the next ejection is the third again.
        let ended = t0 + 60 * S;
        assert_eq!(outlier.record_failure(ended + 36 * S), Some(30 * S));
        // Ends at +126 s; two periods later the multiplier is 3 - 2 = 1 → 20 s.
        let ended = ended + 66 * S;
        assert_eq!(outlier.record_failure(ended + 70 * S), Some(20 * S));
        // Long quiet: back to base.
        let ended = ended + 90 * S;
        assert_eq!(outlier.record_failure(ended + 3600 * S), Some(10 * S));
    }
}
