//! Abuse scores summed over the fleet (`[fleet]` with `share.abuse`).
//!
//! Each edge adds the weight of every L7 signal it counts to the client key's
//! window in Redis and gets the whole fleet's window back; when that sum,
//! with this edge's packet-level signals, reaches `abuse.threshold`, the edge
//! blocks through its own tracker (same exemptions, aggregation and
//! escalation), and the block reaches every edge as a shared block. An
//! attacker who spreads failed logins over three edges is blocked once the
//! three together cross the threshold.
//!
//! Only evidence from sources that proved their address is shared: L7
//! signals come over a completed handshake. Packet-level signals never leave
//! the edge that saw them (their source field proves nothing), and there they
//! count only as the local rules allow.
//!
//! Off the request path: the proxy queues signals (a full queue drops them,
//! counted; the local decision stands either way) and a worker publishes them.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Weak},
    time::Duration,
};

use futures_util::StreamExt as _;
use redis::Script;
use tokio::sync::mpsc;
use tracing::debug;

use super::{Abuse, Signal};
use crate::{addr::Cidr, fleet::Link};

/// Signals waiting to be published, at most; more are dropped (counted).
const QUEUE: usize = 4096;

/// Publications in flight at once.
const CONCURRENCY: usize = 16;

/// Members one key's window keeps, at most: past the threshold a key is
/// blocked and its window cleared, so only a huge threshold gets near this.
const MAX_MEMBERS: u32 = 1024;

/// KEYS[1]: a key's window, a sorted set of `node|nonce|signal|weight` by the
/// Redis server's clock in ms (one timeline for every edge). ARGV: the new
/// member, the window in ms, the most members kept. Returns the window.
static SCORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, -1)
",
    )
});

/// One key's window as the fleet sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetWindow {
    /// The summed L7 weight of every edge.
    pub l7: u32,
    /// How many of each signal.
    pub signals: BTreeMap<String, u32>,
    /// The weight each node contributed.
    pub nodes: BTreeMap<String, u32>,
}

impl FleetWindow {
    /// Sums `node|nonce|signal|weight` members; others are skipped.
    fn parse(members: &[String]) -> Self {
        let mut window = Self::default();
        for member in members {
            let mut fields = member.rsplitn(4, '|');
            let (Some(weight), Some(signal), Some(_nonce), Some(node)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(weight) = weight.parse::<u32>() else {
                continue;
            };
            window.l7 = window.l7.saturating_add(weight);
            *window.signals.entry(signal.to_owned()).or_insert(0) += 1;
            let node = window.nodes.entry(node.to_owned()).or_insert(0);
            *node = node.saturating_add(weight);
        }
        window
    }
}

enum Job {
    /// Add a signal to `key`'s fleet window, then judge the sum.
    Signal {
        key: Cidr,
        signal: Signal,
        weight: u32,
        window: Duration,
    },
    /// `key` was blocked: its window starts afresh everywhere.
    Clear(Cidr),
}

/// The proxy's end of the queue.
pub(super) struct Publisher {
    jobs: mpsc::Sender<Job>,
}

impl Publisher {
    /// Queues one L7 signal of `key`; never waits.
    pub(super) fn signal(&self, key: Cidr, signal: Signal, weight: u32, window: Duration) {
        self.send(Job::Signal {
            key,
            signal,
            weight,
            window,
        });
    }

    /// Queues the clearing of `key`'s fleet window.
    pub(super) fn clear(&self, key: Cidr) {
        self.send(Job::Clear(key));
    }

    fn send(&self, job: Job) {
        if self.jobs.try_send(job).is_err() {
            metrics::counter!("gateway_fleet_fallback_total", "feature" => "abuse", "reason" => "queue_full")
                .increment(1);
        }
    }
}

/// Starts publishing `abuse`'s L7 signals through `link`; ends with the
/// runtime, or when `abuse` is dropped.
pub(super) fn spawn(link: Link, abuse: &Arc<Abuse>) -> (Publisher, tokio::task::JoinHandle<()>) {
    let (jobs, queue) = mpsc::channel(QUEUE);
    let abuse = Arc::downgrade(abuse);
    let stream = futures_util::stream::unfold(queue, |mut queue| async move {
        queue.recv().await.map(|job| (job, queue))
    });
    let worker = tokio::spawn(stream.for_each_concurrent(CONCURRENCY, move |job| {
        let link = link.clone();
        let abuse = abuse.clone();
        async move { run(&link, &abuse, job).await }
    }));
    (Publisher { jobs }, worker)
}

async fn run(link: &Link, abuse: &Weak<Abuse>, job: Job) {
    let limit = link.background_timeout();
    match job {
        Job::Signal {
            key,
            signal,
            weight,
            window,
        } => {
            let redis_key = redis_key(link, &key);
            let member = format!(
                "{}|{:016x}|{}|{weight}",
                link.node(),
                fastrand::u64(..),
                signal.name()
            );
            let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
            let members = link
                .within(limit, |mut conn| async move {
                    SCORE
                        .key(redis_key)
                        .arg(member)
                        .arg(window_ms)
                        .arg(MAX_MEMBERS)
                        .invoke_async::<Vec<String>>(&mut conn)
                        .await
                })
                .await;
            match members {
                Ok(members) => {
                    if let Some(abuse) = abuse.upgrade() {
                        abuse.record_fleet(key, &FleetWindow::parse(&members));
                    }
                }
                Err(err) => {
                    metrics::counter!("gateway_fleet_fallback_total", "feature" => "abuse", "reason" => err.reason()).increment(1);
                    debug!(%key, %err, "abuse signal not shared; this edge's own window decides");
                }
            }
        }
        Job::Clear(key) => {
            let redis_key = redis_key(link, &key);
            if let Err(err) = link
                .within(limit, |mut conn| async move {
                    redis::cmd("DEL")
                        .arg(redis_key)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await
            {
                debug!(%key, %err, "clearing the fleet's abuse window failed; it expires by itself");
            }
        }
    }
}

/// The window of `key`, spread over a Cluster by the key.
fn redis_key(link: &Link, key: &Cidr) -> String {
    link.spread_key(&key.to_string(), "abuse")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sums_weights_per_node_and_signal_and_skips_garbage() {
        let members = [
            "edge-a|00000000000000a1|auth_failure|3",
            "edge-b|00000000000000b1|auth_failure|3",
            "edge-b|00000000000000b2|waf_block|5",
            "no fields",
            "edge-c|1|auth_failure|not-a-number",
        ]
        .map(str::to_owned);
        let window = FleetWindow::parse(&members);
        assert_eq!(window.l7, 11);
        assert_eq!(window.signals.get("auth_failure"), Some(&2));
        assert_eq!(window.signals.get("waf_block"), Some(&1));
        assert_eq!(window.nodes.get("edge-a"), Some(&3));
        assert_eq!(window.nodes.get("edge-b"), Some(&8));
        assert!(!window.nodes.contains_key("edge-c"));
    }
}
