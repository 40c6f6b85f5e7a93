//! Circuit breaker per upstream pool: bounds the requests a pool may hold so that a
//! slow pool fails fast with 503 instead of piling up requests and memory.
//!
//! Up to `max_concurrent` requests are in flight; up to `max_pending` more wait at
//! most `pending_timeout` for one of those slots, in arrival order; anything beyond
//! is refused at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::BreakerConfig;

/// Why the breaker refused a request; both become a 503 with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BreakerOpen {
    /// Every slot was taken and the waiting line was full.
    #[error(
        "circuit breaker open: {max_concurrent} requests in flight and {max_pending} already waiting"
    )]
    Overloaded {
        max_concurrent: usize,
        max_pending: usize,
    },
    /// The request waited this long without a slot freeing up.
    #[error("circuit breaker open: no request slot freed up within {0:?}")]
    PendingTimeout(Duration),
}

/// The breaker of one pool; share it (e.g. in an `Arc`) between all its requests.
#[derive(Debug)]
pub struct Breaker {
    /// One permit per request slot. Tokio's semaphore is fair, so waiters are
    /// served in order and a newcomer cannot take a slot ahead of them.
    slots: Arc<Semaphore>,
    /// `max_concurrent` as the semaphore holds it (clamped to what it supports).
    max_concurrent: usize,
    max_pending: usize,
    pending_timeout: Duration,
    /// Requests waiting for a slot now.
    pending: AtomicUsize,
}

/// A request slot; dropping it gives the slot back (to the next waiter first).
#[derive(Debug)]
pub struct BreakerPermit {
    _slot: OwnedSemaphorePermit,
}

impl Breaker {
    /// `max_concurrent` above [`Semaphore::MAX_PERMITS`] (about 2^61) is clamped;
    /// 0 (refused by config validation) would make every request wait and fail.
    pub fn new(config: BreakerConfig) -> Self {
        let max_concurrent = config.max_concurrent.min(Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_pending: config.max_pending,
            pending_timeout: config.pending_timeout,
            pending: AtomicUsize::new(0),
        }
    }

    /// A slot for one request: at once if one is free, after waiting if the
    /// waiting line has room, otherwise [`BreakerOpen`]. Cancel-safe: dropping the
    /// future while it waits leaves the line.
    pub async fn acquire(&self) -> Result<BreakerPermit, BreakerOpen> {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(BreakerPermit { _slot: slot });
        }
        let overloaded = BreakerOpen::Overloaded {
            max_concurrent: self.max_concurrent,
            max_pending: self.max_pending,
        };
        self.pending
            .try_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending < self.max_pending).then_some(pending + 1)
            })
            .map_err(|_| overloaded)?;
        let _waiting = Waiting(&self.pending);
        match tokio::time::timeout(
            self.pending_timeout,
            Arc::clone(&self.slots).acquire_owned(),
        )
        .await
        {
            Ok(Ok(slot)) => Ok(BreakerPermit { _slot: slot }),
            // The semaphore is never closed; should that change, refusing is the
            // safe answer.
            Ok(Err(_closed)) => Err(overloaded),
            Err(_elapsed) => Err(BreakerOpen::PendingTimeout(self.pending_timeout)),
        }
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent
            .saturating_sub(self.slots.available_permits())
    }

    /// Whether every slot is taken: new requests wait or are refused.
    pub fn is_open(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// Counts one waiter while alive, so that every way out of [`Breaker::acquire`] —
/// a slot, a timeout, or the future being dropped — leaves the line.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::task::JoinHandle;

    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    fn breaker(max_concurrent: usize, max_pending: usize, pending_timeout: Duration) -> Breaker {
        Breaker::new(BreakerConfig {
            max_concurrent,
            max_pending,
            pending_timeout,
            ..BreakerConfig::default()
        })
    }

    /// A task waiting in `breaker`'s line, returned once it is counted there.
    async fn spawn_waiter(breaker: &Arc<Breaker>) -> JoinHandle<Result<(), BreakerOpen>> {
        let waiter = tokio::spawn({
            let breaker = Arc::clone(breaker);
            async move { breaker.acquire().await.map(drop) }
        });
        while breaker.pending() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        waiter
    }

    #[tokio::test]
    async fn grants_up_to_max_concurrent_and_releases_on_drop() {
        let breaker = breaker(2, 0, SHORT);
        let a = breaker.acquire().await.expect("first slot");
        let _b = breaker.acquire().await.expect("second slot");
        assert_eq!(breaker.in_flight(), 2);
        assert_eq!(
            breaker.acquire().await.expect_err("no slot, no line"),
            BreakerOpen::Overloaded {
                max_concurrent: 2,
                max_pending: 0
            }
        );
        drop(a);
        assert_eq!(breaker.in_flight(), 1);
        let _c = breaker.acquire().await.expect("released slot");
    }

    #[tokio::test]
    async fn full_line_fails_at_once() {
        let breaker = Arc::new(breaker(1, 1, Duration::from_secs(10)));
        let _held = breaker.acquire().await.expect("slot");
        let waiter = spawn_waiter(&breaker).await;
        let started = Instant::now();
        let err = breaker.acquire().await.expect_err("line is full");
        assert!(matches!(err, BreakerOpen::Overloaded { .. }), "{err}");
        assert!(
            started.elapsed() < SHORT,
            "refusal took {:?}",
            started.elapsed()
        );
        assert_eq!(breaker.pending(), 1);
        waiter.abort();
    }

    #[tokio::test]
    async fn waiting_times_out_and_leaves_the_line() {
        let breaker = breaker(1, 4, SHORT);
        let _held = breaker.acquire().await.expect("slot");
        let started = Instant::now();
        assert_eq!(
            breaker.acquire().await.expect_err("nothing freed"),
            BreakerOpen::PendingTimeout(SHORT)
        );
        assert!(started.elapsed() >= SHORT);
        assert_eq!(breaker.pending(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_released_slot() {
        let breaker = Arc::new(breaker(1, 1, Duration::from_secs(10)));
        let held = breaker.acquire().await.expect("slot");
        let waiter = spawn_waiter(&breaker).await;
        drop(held);
        waiter
            .await
            .expect("task")
            .expect("the waiter gets the slot");
        assert_eq!((breaker.in_flight(), breaker.pending()), (0, 0));
    }

    #[tokio::test]
    async fn dropping_a_waiting_acquire_leaves_the_line() {
        let breaker = breaker(1, 1, Duration::from_secs(10));
        let _held = breaker.acquire().await.expect("slot");
        let mut waiting = Box::pin(breaker.acquire());
        tokio::select! {
            biased;
            result = &mut waiting => panic!("no slot was free: {result:?}"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        assert_eq!(breaker.pending(), 1);
        drop(waiting);
        assert_eq!(breaker.pending(), 0);
        // The line has room again: this one waits (and times out) instead of
        // being refused at once.
        let err = tokio::time::timeout(SHORT, breaker.acquire()).await;
        assert!(err.is_err(), "expected to wait, got {err:?}");
    }
}
