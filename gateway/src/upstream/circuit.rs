//! The pool's circuit breaker on errors: when the fleet keeps failing, answer 503 at
//! once instead of passing every failure through (and every request's wait for it).
//!
//! Closed, it counts request outcomes in one-second buckets over `window`. It opens
//! when, within the window, at least `min_requests` requests ended and at least
//! `failure_percent` of them failed, or when `consecutive_failures` requests in a
//! row failed. Open, every request is refused until `open_for` has passed; then it
//! is half open: up to `half_open_probes` requests go through, and the circuit
//! closes once that many succeeded, or opens again at the first failure.
//!
//! A failure is what the fleet did (5xx, connect failure, reset, timeout); a
//! client's fault (a bad or stalled body) is no outcome at all.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::config::BreakerConfig;

/// The circuit refused a request; it becomes a 503 with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit open after repeated upstream failures; next try in {retry_after:?}")]
pub struct CircuitOpen {
    /// When the circuit lets probes through again.
    pub retry_after: Duration,
}

#[derive(Debug)]
enum State {
    Closed {
        /// `(second since epoch, successes, failures)`, oldest first.
        buckets: VecDeque<(u64, u32, u32)>,
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Probes admitted and not yet ended.
        out: u32,
        succeeded: u32,
    },
}

impl State {
    fn closed() -> Self {
        Self::Closed {
            buckets: VecDeque::new(),
            consecutive: 0,
        }
    }
}

/// One pool's circuit; shared by all its requests.
#[derive(Debug)]
pub struct Circuit {
    config: BreakerConfig,
    epoch: Instant,
    state: Mutex<State>,
}

/// A request the circuit let through. Its outcome is given with [`Ticket::finish`];
/// dropped without one (cancelled, or the client's fault), a probe's place is given
/// back and nothing is counted.
#[derive(Debug)]
pub struct Ticket<'a> {
    circuit: &'a Circuit,
    probe: bool,
    finished: bool,
}

impl Circuit {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            state: Mutex::new(State::closed()),
        }
    }

    fn enabled(&self) -> bool {
        (self.config.min_requests > 0 && self.config.failure_percent > 0)
            || self.config.consecutive_failures > 0
    }

    /// Lets a request through, or refuses it while the circuit is open.
    pub fn admit(&self, now: Instant) -> Result<Ticket<'_>, CircuitOpen> {
        let ticket = |probe| Ticket {
            circuit: self,
            probe,
            finished: false,
        };
        if !self.enabled() {
            return Ok(ticket(false));
        }
        let mut state = self.lock();
        match &mut *state {
            State::Closed { .. } => Ok(ticket(false)),
            State::Open { until } if now < *until => Err(CircuitOpen {
                retry_after: *until - now,
            }),
            State::Open { .. } => {
                *state = State::HalfOpen {
                    out: 1,
                    succeeded: 0,
                };
                Ok(ticket(true))
            }
            State::HalfOpen { out, succeeded } => {
                if out.saturating_add(*succeeded) < self.config.half_open_probes.max(1) {
                    *out += 1;
                    Ok(ticket(true))
                } else {
                    // The probes are out; their answers decide.
                    Err(CircuitOpen {
                        retry_after: Duration::from_secs(1),
                    })
                }
            }
        }
    }

    /// Whether the circuit refuses requests now (for metrics).
    pub fn is_open(&self, now: Instant) -> bool {
        matches!(&*self.lock(), State::Open { until } if now < *until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is valid at every step; a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, probe: bool, ok: bool, now: Instant) {
        let mut state = self.lock();
        let open = State::Open {
            until: now + self.config.open_for,
        };
        match &mut *state {
            State::Closed {
                buckets,
                consecutive,
            } if !probe => {
                let second = now.saturating_duration_since(self.epoch).as_secs();
                let window = self.config.window.as_secs().max(1);
                while buckets
                    .front()
                    .is_some_and(|(s, _, _)| s + window <= second)
                {
                    buckets.pop_front();
                }
                if buckets.back().is_none_or(|(s, _, _)| *s != second) {
                    buckets.push_back((second, 0, 0));
                }
                if let Some((_, successes, failures)) = buckets.back_mut() {
                    if ok {
                        *successes = successes.saturating_add(1);
                    } else {
                        *failures = failures.saturating_add(1);
                    }
                }
                *consecutive = if ok { 0 } else { consecutive.saturating_add(1) };
                let (successes, failures) =
                    buckets.iter().fold((0u64, 0u64), |(s, f), (_, bs, bf)| {
                        (s + u64::from(*bs), f + u64::from(*bf))
                    });
                let total = successes + failures;
                let by_ratio = self.config.min_requests > 0
                    && self.config.failure_percent > 0
                    && total >= u64::from(self.config.min_requests)
                    && failures * 100 >= total * u64::from(self.config.failure_percent);
                let by_run = self.config.consecutive_failures > 0
                    && *consecutive >= self.config.consecutive_failures;
                if by_ratio || by_run {
                    *state = open;
                }
            }
            State::HalfOpen { out, succeeded } if probe => {
                *out = out.saturating_sub(1);
                if !ok {
                    *state = open;
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.config.half_open_probes.max(1) {
                        *state = State::closed();
                    }
                }
            }
            // Requests admitted under an earlier state that end now say nothing
            // about the current one.
            _ => {}
        }
    }

    fn release(&self) {
        if let State::HalfOpen { out, .. } = &mut *self.lock() {
            *out = out.saturating_sub(1);
        }
    }
}

impl Ticket<'_> {
    /// The request ended: `ok` unless the fleet failed it.
    pub fn finish(mut self, ok: bool) {
        self.finished = true;
        if self.circuit.enabled() {
            self.circuit.record(self.probe, ok, Instant::now());
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.finished && self.probe {
            self.circuit.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_percent: 50,
            min_requests: 4,
            window: Duration::from_secs(10),
            consecutive_failures: 0,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
            ..BreakerConfig::default()
        }
    }

    fn outcome(circuit: &Circuit, at: Instant, ok: bool) {
        let ticket = circuit.admit(at).expect("admitted");
        assert!(!ticket.probe);
        circuit.record(false, ok, at);
        std::mem::forget(ticket);
    }

    #[test]
    fn opens_on_the_failure_ratio_once_enough_requests_ended() {
        let circuit = Circuit::new(config());
        let t = Instant::now();
        outcome(&circuit, t, false);
        outcome(&circuit, t, false);
        outcome(&circuit, t, false);
        // Three failures of three: not yet the minimum of four requests.
        assert!(circuit.admit(t).is_ok());
        outcome(&circuit, t, true);
        // 3 of 4 failed: open, with the time left as Retry-After.
        let refused = circuit.admit(t + Duration::from_secs(1)).expect_err("open");
        assert_eq!(refused.retry_after, Duration::from_secs(4));
        assert!(circuit.is_open(t + Duration::from_secs(1)));
    }

    #[test]
    fn stays_closed_under_the_ratio_and_forgets_old_buckets() {
        let circuit = Circuit::new(config());
        let t = Instant::now();
        for _ in 0..3 {
            outcome(&circuit, t, false);
        }
        // The failures leave the window before the successes arrive.
        let later = t + Duration::from_secs(11);
        for _ in 0..4 {
            outcome(&circuit, later, true);
        }
        outcome(&circuit, later, false);
        assert!(circuit.admit(later).is_ok(), "1 of 5 in the window failed");
    }

    #[test]
    fn opens_on_consecutive_failures() {
        let circuit = Circuit::new(BreakerConfig {
            min_requests: 0,
            consecutive_failures: 3,
            ..config()
        });
        let t = Instant::now();
        outcome(&circuit, t, false);
        outcome(&circuit, t, true);
        outcome(&circuit, t, false);
        outcome(&circuit, t, false);
        assert!(circuit.admit(t).is_ok());
        outcome(&circuit, t, false);
        assert!(circuit.admit(t).is_err());
    }

    #[test]
    fn half_open_probes_close_on_success_and_reopen_on_failure() {
        let circuit = Circuit::new(config());
        let t = Instant::now();
        for _ in 0..4 {
            outcome(&circuit, t, false);
        }
        let after = t + Duration::from_secs(5);
        let first = circuit.admit(after).expect("first probe");
        let second = circuit.admit(after).expect("second probe");
        assert!(first.probe && second.probe);
        assert!(circuit.admit(after).is_err(), "only two probes at a time");
        // A cancelled probe gives its place back.
        drop(first);
        let third = circuit.admit(after).expect("the freed place");
        circuit.record(true, true, after);
        std::mem::forget(second);
        circuit.record(true, true, after);
        std::mem::forget(third);
        assert!(circuit.admit(after).is_ok_and(|t| !t.probe), "closed again");

        for _ in 0..4 {
            outcome(&circuit, after, false);
        }
        let again = after + Duration::from_secs(5);
        let probe = circuit.admit(again).expect("probe");
        circuit.record(true, false, again);
        std::mem::forget(probe);
        assert_eq!(
            circuit.admit(again).expect_err("open again").retry_after,
            Duration::from_secs(5),
            "a failed probe opens the circuit for another open_for"
        );
    }

    #[test]
    fn disabled_when_both_triggers_are_off() {
        let circuit = Circuit::new(BreakerConfig {
            min_requests: 0,
            consecutive_failures: 0,
            ..config()
        });
        let t = Instant::now();
        for _ in 0..100 {
            circuit.admit(t).expect("admitted").finish(false);
        }
        assert!(circuit.admit(t).is_ok());
    }
}
