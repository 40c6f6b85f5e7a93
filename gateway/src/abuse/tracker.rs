//! The sliding windows and offence counts behind [`super::Abuse`]: plain data,
//! driven with an explicit `now` so tests control time.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{BlockRequest, Evidence, Provenance};
use crate::{addr::Cidr, clock, config::AbuseSection};

/// Addresses with an open window at most; beyond it new addresses are not
/// tracked until old windows expire (a flood of one-off sources must not grow
/// memory without bound).
const MAX_TRACKED: usize = 100_000;

/// Expired windows are swept after this many records.
const PRUNE_EVERY: u32 = 4096;

struct Event {
    at: Instant,
    weight: u32,
    evidence: Evidence,
}

#[derive(Default)]
struct Window {
    events: VecDeque<Event>,
    score: u32,
}

impl Window {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(event) = self.events.front() {
            if now.duration_since(event.at) < window {
                break;
            }
            self.score -= event.weight;
            self.events.pop_front();
        }
    }
}

struct Offender {
    offences: u32,
    last: Instant,
    blocked_until: Instant,
}

#[derive(Default)]
pub(super) struct Tracker {
    windows: HashMap<IpAddr, Window>,
    offenders: HashMap<IpAddr, Offender>,
    /// Blocked addresses per /24 or /64, for aggregation.
    prefixes: HashMap<Cidr, Vec<(IpAddr, Instant)>>,
    since_prune: u32,
}

impl Tracker {
    /// An offence remembered from the state directory.
    pub(super) fn restore(
        &mut self,
        client: IpAddr,
        offences: u32,
        last: Instant,
        blocked_until: Instant,
    ) {
        self.offenders.insert(
            client,
            Offender {
                offences,
                last,
                blocked_until,
            },
        );
    }

    /// Adds one weighted signal; returns the block when the window crossed the
    /// threshold.
    pub(super) fn record(
        &mut self,
        config: &AbuseSection,
        client: IpAddr,
        weight: u32,
        evidence: Evidence,
        now: Instant,
    ) -> Option<BlockRequest> {
        let client = client.to_canonical();
        if self
            .offenders
            .get(&client)
            .is_some_and(|offender| offender.blocked_until > now)
        {
            // Already blocked (in-flight requests, or XDP is off): the block
            // stands and its TTL does not grow from the same burst.
            return None;
        }
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.prune(config, now);
        }
        if !self.windows.contains_key(&client) && self.windows.len() >= MAX_TRACKED {
            metrics::counter!("gateway_abuse_untracked_total").increment(1);
            return None;
        }
        let window = self.windows.entry(client).or_default();
        window.expire(now, config.window);
        window.score = window.score.saturating_add(weight);
        window.events.push_back(Event {
            at: now,
            weight,
            evidence,
        });
        if window.score < config.threshold {
            return None;
        }
        let window = self.windows.remove(&client)?;

        let offender = self.offenders.entry(client).or_insert(Offender {
            offences: 0,
            last: now,
            blocked_until: now,
        });
        if now.duration_since(offender.last) > config.offence_memory {
            offender.offences = 0;
        }
        offender.offences += 1;
        offender.last = now;
        let ttl = escalate(config.block_ttl, config.max_block_ttl, offender.offences);
        offender.blocked_until = now + ttl;
        let offence = offender.offences;

        let (cidr, aggregated_from) = match self.aggregate(config, client, now) {
            Some(prefix) => (prefix, Some(Cidr::host(client))),
            None => (Cidr::host(client), None),
        };
        let mut signals = BTreeMap::new();
        for event in &window.events {
            *signals.entry(event.evidence.signal.clone()).or_insert(0) += 1;
        }
        let first = window.events.front().map(|e| e.evidence.clone());
        let last = window.events.back().map(|e| e.evidence.clone());
        let blocked_at = clock::unix_now();
        Some(BlockRequest {
            cidr,
            ttl,
            provenance: Provenance {
                blocked_at,
                ttl_secs: ttl.as_secs(),
                expires_at: blocked_at + ttl.as_secs(),
                offence,
                score: window.score,
                threshold: config.threshold,
                window_secs: config.window.as_secs(),
                signals,
                first: first.unwrap_or_default(),
                last: last.unwrap_or_default(),
                kernel: false,
                aggregated_from,
                unblocked_at: None,
                unblock_reason: None,
            },
        })
    }

    /// The /24 or /64 around `client` once enough of its addresses offended.
    fn aggregate(&mut self, config: &AbuseSection, client: IpAddr, now: Instant) -> Option<Cidr> {
        if config.aggregate_after == 0 {
            return None;
        }
        let prefix_len = if client.is_ipv4() { 24 } else { 64 };
        let prefix = Cidr::network_of(client, prefix_len);
        let offenders = self.prefixes.entry(prefix).or_default();
        offenders
            .retain(|(ip, at)| *ip != client && now.duration_since(*at) <= config.offence_memory);
        offenders.push((client, now));
        (offenders.len() >= config.aggregate_after as usize).then_some(prefix)
    }

    fn prune(&mut self, config: &AbuseSection, now: Instant) {
        self.since_prune = 0;
        self.windows.retain(|_, window| {
            window.expire(now, config.window);
            !window.events.is_empty()
        });
        self.offenders.retain(|_, offender| {
            offender.blocked_until > now
                || now.duration_since(offender.last) <= config.offence_memory
        });
        self.prefixes.retain(|_, offenders| {
            offenders.retain(|(_, at)| now.duration_since(*at) <= config.offence_memory);
            !offenders.is_empty()
        });
    }
}

/// `base` doubled for every offence after the first, at most `cap`.
fn escalate(base: Duration, cap: Duration, offence: u32) -> Duration {
    let factor = 1u32
        .checked_shl(offence.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}
