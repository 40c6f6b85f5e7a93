//! Who holds the listeners' connections, so that no client and no flood of
//! idle sockets can lock others out:
//!
//! - each listener has a connection cap (`max_connections`, by default a share
//!   of `RLIMIT_NOFILE` that leaves descriptors for the admin endpoint, health
//!   checks and upstream connections). At the cap the oldest connection with
//!   no request in flight (idle keep-alive, unfinished handshake or head) is
//!   closed for the newcomer; when every connection is busy the newcomer is
//!   closed at once.
//! - one client address (IPv6: one /64) may hold `max_connections_per_client`
//!   connections and `max_requests_per_client` requests in flight; beyond that
//!   its connections are refused and its requests answered 429.
//!
//! Refusals are counted (`gateway_listener_connections_refused_total`) and
//! logged at most once per [`LOG_EVERY`] per listener.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tracing::warn;

use super::listener::Activity;
use crate::config::ListenerLimits;

/// Shortest gap between two log lines about refused connections.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was not admitted; also the metric's `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client address holds `max_connections_per_client` already.
    PerClient,
    /// The listener is at its cap and every connection is busy.
    Full,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::PerClient => "per_client",
            Self::Full => "max_connections",
        }
    }
}

/// Every open client connection of the proxy.
pub struct Connections {
    state: Mutex<State>,
    /// The cap of a listener without `max_connections`, and of all such
    /// listeners together.
    budget: u64,
    /// The most any listener may hold, whatever its `max_connections`: the
    /// descriptors minus the reserve.
    ceiling: u64,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("budget", &self.budget)
            .field("ceiling", &self.ceiling)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Open>,
    /// Connections per listener, and of listeners without their own cap.
    per_listener: HashMap<Arc<str>, u64>,
    budgeted: u64,
    per_client: HashMap<IpAddr, ClientCounts>,
}

struct Open {
    listener: Arc<str>,
    client: IpAddr,
    budgeted: bool,
    activity: Arc<Activity>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct ClientCounts {
    connections: u64,
    requests: u64,
}

impl ClientCounts {
    fn is_empty(&self) -> bool {
        self.connections == 0 && self.requests == 0
    }
}

/// A connection's place in the table; dropping it frees the place.
pub struct ConnectionGuard {
    table: Arc<Connections>,
    id: u64,
    /// Notified when the connection was closed to make room for another.
    pub close: Arc<Notify>,
}

/// One request in flight of a client; dropping it ends the request.
pub struct RequestGuard {
    table: Arc<Connections>,
    key: IpAddr,
}

impl Connections {
    /// The table for a process whose descriptor limit is `nofile`: listeners
    /// without `max_connections` share half of what `reserved` leaves (the
    /// other half is room for upstream connections); no listener ever gets
    /// more than all of it.
    pub fn new(nofile: u64, reserved: u64) -> Self {
        let ceiling = nofile.saturating_sub(reserved).max(16);
        Self {
            state: Mutex::new(State::default()),
            budget: (ceiling / 2).max(16),
            ceiling,
        }
    }

    /// The default cap.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Admits a new connection of `client` on `listener`, closing the oldest
    /// idle connection when the listener is at its cap. `exempt` clients
    /// (trusted proxies) have no per-client limit.
    pub(super) fn admit(
        self: &Arc<Self>,
        listener: &Arc<str>,
        client: IpAddr,
        limits: &ListenerLimits,
        exempt: bool,
        activity: Arc<Activity>,
    ) -> Result<ConnectionGuard, Refusal> {
        let key = client_key(client);
        let mut state = self.lock();
        if !exempt
            && state
                .per_client
                .get(&key)
                .is_some_and(|c| c.connections >= limits.max_connections_per_client)
        {
            return Err(Refusal::PerClient);
        }
        let budgeted = limits.max_connections.is_none();
        let cap = limits
            .max_connections
            .map_or(self.budget, |max| max.min(self.ceiling));
        let on_listener = state.per_listener.get(listener).copied().unwrap_or(0);
        if on_listener >= cap {
            state.evict_idle(|open| open.listener == *listener)?;
        } else if budgeted && state.budgeted >= self.budget {
            state.evict_idle(|open| open.budgeted)?;
        }
        let id = state.next_id;
        state.next_id += 1;
        let close = Arc::new(Notify::new());
        state.open.insert(
            id,
            Open {
                listener: listener.clone(),
                client: key,
                budgeted,
                activity,
                close: close.clone(),
            },
        );
        state.per_client.entry(key).or_default().connections += 1;
        state.count(listener, budgeted, true);
        Ok(ConnectionGuard {
            table: self.clone(),
            id,
            close,
        })
    }

    /// Closes up to `n` idle connections of any listener (the process ran out
    /// of descriptors); returns how many.
    pub fn shed(&self, n: usize) -> usize {
        let mut state = self.lock();
        (0..n)
            .take_while(|_| state.evict_idle(|_| true).is_ok())
            .count()
    }

    /// Starts a request of `client`, unless it already has `limit` in flight.
    pub fn begin_request(
        self: &Arc<Self>,
        client: IpAddr,
        limit: u64,
        exempt: bool,
    ) -> Option<RequestGuard> {
        let key = client_key(client);
        let mut state = self.lock();
        let counts = state.per_client.entry(key).or_default();
        if !exempt && counts.requests >= limit {
            return None;
        }
        counts.requests += 1;
        Some(RequestGuard {
            table: self.clone(),
            key,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Removes the connection that has been idle longest among those `which`
    /// selects and tells it to close; `Full` when every one is busy.
    fn evict_idle(&mut self, which: impl Fn(&Open) -> bool) -> Result<(), Refusal> {
        let victim = self
            .open
            .iter()
            .filter(|(_, open)| which(open))
            .filter_map(|(id, open)| open.activity.idle_since().map(|since| (since, *id)))
            .min()
            .map(|(_, id)| id)
            .ok_or(Refusal::Full)?;
        if let Some(open) = self.remove(victim) {
            open.close.notify_one();
            metrics::counter!("gateway_listener_connections_evicted_total", "listener" => open.listener.to_string())
                .increment(1);
        }
        Ok(())
    }

    fn remove(&mut self, id: u64) -> Option<Open> {
        let open = self.open.remove(&id)?;
        if let Some(counts) = self.per_client.get_mut(&open.client) {
            counts.connections = counts.connections.saturating_sub(1);
            if counts.is_empty() {
                self.per_client.remove(&open.client);
            }
        }
        self.count(&open.listener, open.budgeted, false);
        Some(open)
    }

    /// One connection more or less on `listener`, with its gauge.
    fn count(&mut self, listener: &Arc<str>, budgeted: bool, more: bool) {
        let step = |n: &mut u64| {
            *n = if more { *n + 1 } else { n.saturating_sub(1) };
        };
        let on_listener = self.per_listener.entry(listener.clone()).or_default();
        step(on_listener);
        #[expect(
            clippy::cast_precision_loss,
            reason = "a gauge; connection counts are far below 2^52"
        )]
        let open = *on_listener as f64;
        metrics::gauge!("gateway_listener_connections", "listener" => listener.to_string())
            .set(open);
        if budgeted {
            step(&mut self.budgeted);
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.table.lock().remove(self.id);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.table.lock();
        if let Some(counts) = state.per_client.get_mut(&self.key) {
            counts.requests = counts.requests.saturating_sub(1);
            if counts.is_empty() {
                state.per_client.remove(&self.key);
            }
        }
    }
}

/// The process's descriptor limit, after raising the soft limit to the hard
/// one (the usual soft limit, 1024, is far below what a gateway needs; the
/// hard limit is the operator's choice).
pub fn descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    limit.rlim_cur
}

/// The address a client is counted under: itself (IPv4, IPv4-mapped IPv6 as
/// IPv4) or its /64, the smallest network an IPv6 host is usually given.
fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !0u128 << 64)),
        v4 => v4,
    }
}

/// Counts refused connections and writes at most one log line per
/// [`LOG_EVERY`], saying how many were refused since the last one.
pub struct RefusalLog {
    listener: Arc<str>,
    last: Mutex<Option<Instant>>,
    since_last: AtomicU64,
}

impl RefusalLog {
    pub fn new(listener: Arc<str>) -> Self {
        Self {
            listener,
            last: Mutex::new(None),
            since_last: AtomicU64::new(0),
        }
    }

    /// Records one refusal for `reason` (`detail` says more, e.g. the accept
    /// error).
    pub fn refused(&self, reason: &'static str, detail: &dyn std::fmt::Display) {
        metrics::counter!(
            "gateway_listener_connections_refused_total",
            "listener" => self.listener.to_string(),
            "reason" => reason
        )
        .increment(1);
        let count = self.since_last.fetch_add(1, Ordering::AcqRel) + 1;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            return;
        }
        *last = Some(now);
        self.since_last.fetch_sub(count, Ordering::AcqRel);
        warn!(
            listener = &*self.listener,
            reason,
            refused = count,
            "connections refused ({detail}); at most one such line per {}s",
            LOG_EVERY.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u64, per_client: u64) -> ListenerLimits {
        ListenerLimits {
            max_connections: Some(max),
            max_connections_per_client: per_client,
            ..ListenerLimits::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let table = Arc::new(Connections::new(1024, 0));
        let name: Arc<str> = Arc::from("public");
        let limits = limits(2, 10);
        let old = Arc::new(Activity::new());
        let busy = Arc::new(Activity::new());
        busy.begin();
        let first = table
            .admit(&name, ip("198.18.0.1"), &limits, false, old)
            .expect("room");
        let _second = table
            .admit(&name, ip("198.18.0.2"), &limits, false, busy.clone())
            .expect("room");
        let third = table
            .admit(
                &name,
                ip("198.18.0.3"),
                &limits,
                false,
                Arc::new(Activity::new()),
            )
            .expect("the idle one makes room");
        // The evicted one was told to close (a stored permit) and its place freed.
        assert!(futures_ready(&first.close));
        drop(first);
        // Now one busy and one idle (the third): a fourth evicts the third…
        let _fourth = table
            .admit(&name, ip("198.18.0.4"), &limits, false, busy.clone())
            .expect("the third makes room");
        assert!(futures_ready(&third.close));
        // …and a fifth finds only busy connections.
        assert_eq!(
            table
                .admit(
                    &name,
                    ip("198.18.0.5"),
                    &limits,
                    false,
                    Arc::new(Activity::new())
                )
                .err(),
            Some(Refusal::Full)
        );
    }

    #[test]
    fn one_address_or_one_ipv6_64_is_bounded_unless_exempt() {
        let table = Arc::new(Connections::new(1024, 0));
        let name: Arc<str> = Arc::from("public");
        let limits = limits(100, 2);
        let admit = |client: &str, exempt: bool| {
            table.admit(
                &name,
                ip(client),
                &limits,
                exempt,
                Arc::new(Activity::new()),
            )
        };
        let mut held = vec![
            admit("2001:2::1", false).expect("room"),
            admit("2001:2::ffff:1", false).expect("room"),
        ];
        assert_eq!(admit("2001:2::9", false).err(), Some(Refusal::PerClient));
        assert!(admit("2001:2:0:1::9", false).is_ok(), "another /64");
        assert!(admit("2001:2::9", true).is_ok(), "exempt");
        held.pop();
        assert!(admit("2001:2::9", false).is_ok(), "a place was freed");

        let a = table
            .begin_request(ip("198.18.0.1"), 1, false)
            .expect("first");
        assert!(
            table
                .begin_request(ip("::ffff:198.18.0.1"), 1, false)
                .is_none()
        );
        drop(a);
        assert!(table.begin_request(ip("198.18.0.1"), 1, false).is_some());
    }

    /// Whether a `notify_one` is waiting to be taken.
    fn futures_ready(notify: &Notify) -> bool {
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable()
    }
}
