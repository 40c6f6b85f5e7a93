//! The sliding windows, offence counts, blocks in force and proven addresses
//! behind [`super::Abuse`]: plain data, driven with an explicit `now` so tests
//! control time.
//!
//! Everything is keyed by the address's *key* (see [`super::key_of`]): the
//! IPv4 address, or the IPv6 prefix the XDP rate limiter buckets by, so that an
//! L7 signal from `2001:2::10` and a rate event for `2001:2::/64` add up in the
//! same window and the block covers the host behind both.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{BlockRequest, Evidence, Provenance, shared::FleetWindow};
use crate::{addr::Cidr, clock, config::AbuseSection};

/// Keys with an open window (or a proof of handshake) at most; beyond it new
/// keys are not tracked until old ones expire (a flood of one-off sources
/// must not grow memory without bound).
const MAX_TRACKED: usize = 100_000;

/// Expired windows are swept after this many records.
pub(super) const PRUNE_EVERY: u32 = 4096;

/// One signal as the tracker takes it.
pub(super) struct Observation {
    /// The window it counts in: the address, or its IPv6 prefix.
    pub key: Cidr,
    /// The address that sent it (for a rate event, the masked key address).
    pub host: IpAddr,
    pub weight: u32,
    /// A packet-level signal (its source address proves nothing).
    pub packet: bool,
    pub evidence: Evidence,
}

struct Event {
    at: Instant,
    weight: u32,
    packet: bool,
    evidence: Evidence,
}

#[derive(Default)]
struct Window {
    events: VecDeque<Event>,
    /// The weight of L7 signals (from sources that completed a handshake).
    l7: u32,
    /// The weight of packet-level signals.
    packet: u32,
    /// The last address an L7 signal came from, for a host-only block when
    /// the key's prefix must not be blocked.
    host: Option<IpAddr>,
}

impl Window {
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(event) = self.events.front() {
            if now.duration_since(event.at) < window {
                break;
            }
            if event.packet {
                self.packet -= event.weight;
            } else {
                self.l7 -= event.weight;
            }
            self.events.pop_front();
        }
    }

    /// The weight that counts against the threshold: packet-level signals
    /// count for at most as much as the L7 ones unless the operator trusts
    /// packet sources, so they can corroborate but never block alone.
    fn score(&self, trust_packet_sources: bool) -> u32 {
        let packet = if trust_packet_sources {
            self.packet
        } else {
            self.packet.min(self.l7)
        };
        self.l7.saturating_add(packet)
    }
}

struct Offender {
    offences: u32,
    last: Instant,
    blocked_until: Instant,
}

/// A block in force, as the proxy enforces it at L7 for clients the kernel
/// cannot see (those behind a trusted proxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveBlock {
    /// What the block covers.
    pub cidr: Cidr,
    /// The tracker key the block was decided for.
    key: Cidr,
    pub until: Instant,
    pub offence: u32,
    /// The signals behind it (`waf_block=2 xdp_rate_exceeded=1`).
    pub signals: String,
}

#[derive(Default)]
pub(super) struct Tracker {
    windows: HashMap<Cidr, Window>,
    offenders: HashMap<Cidr, Offender>,
    /// Blocks in force by the CIDR they cover.
    active: HashMap<Cidr, ActiveBlock>,
    /// Blocked keys per /24 or /64, for aggregation.
    prefixes: HashMap<Cidr, Vec<(Cidr, Instant)>>,
    since_prune: u32,
}

impl Tracker {
    /// A block remembered from the state directory: `key` is what it was
    /// decided for, `cidr` what it covers.
    pub(super) fn restore(
        &mut self,
        key: Cidr,
        cidr: Cidr,
        provenance: &Provenance,
        last: Instant,
        blocked_until: Instant,
    ) {
        self.offenders.insert(
            key,
            Offender {
                offences: provenance.offence,
                last,
                blocked_until,
            },
        );
        if blocked_until > last {
            self.active.insert(
                cidr,
                ActiveBlock {
                    cidr,
                    key,
                    until: blocked_until,
                    offence: provenance.offence,
                    signals: summary(&provenance.signals),
                },
            );
        }
    }

    /// Adds one weighted signal; returns the block when the window crossed the
    /// threshold. `never` are the networks no block may cover.
    pub(super) fn record(
        &mut self,
        config: &AbuseSection,
        never: &[Cidr],
        observation: Observation,
        now: Instant,
    ) -> Option<BlockRequest> {
        let key = observation.key;
        if self.is_blocked(&key, now) {
            // Already blocked (in-flight requests, or XDP is off): the block
            // stands and its TTL does not grow from the same burst.
            return None;
        }
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.prune(config, now);
        }
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_TRACKED {
            metrics::counter!("gateway_abuse_untracked_total").increment(1);
            return None;
        }
        let window = self.windows.entry(key).or_default();
        window.expire(now, config.window);
        if observation.packet {
            window.packet = window.packet.saturating_add(observation.weight);
        } else {
            window.l7 = window.l7.saturating_add(observation.weight);
            window.host = Some(observation.host);
        }
        window.events.push_back(Event {
            at: now,
            weight: observation.weight,
            packet: observation.packet,
            evidence: observation.evidence,
        });
        let score = window.score(config.trust_packet_sources);
        if score < config.threshold {
            return None;
        }
        self.block(config, never, key, score, None, now)
    }

    /// Whether `key` is blocked now: its signals need not be counted (or
    /// shared) any more.
    pub(super) fn is_blocked(&self, key: &Cidr, now: Instant) -> bool {
        self.offenders
            .get(key)
            .is_some_and(|offender| offender.blocked_until > now)
    }

    /// The fleet's summed window for `key` (every edge's L7 signals, this
    /// one's included): blocks when it, with this edge's packet-level signals
    /// (which never leave the edge that saw them), reaches the threshold.
    pub(super) fn record_fleet(
        &mut self,
        config: &AbuseSection,
        never: &[Cidr],
        key: Cidr,
        fleet: &FleetWindow,
        now: Instant,
    ) -> Option<BlockRequest> {
        if self.is_blocked(&key, now) {
            return None;
        }
        let (local_l7, packet) = match self.windows.get_mut(&key) {
            Some(window) => {
                window.expire(now, config.window);
                (window.l7, window.packet)
            }
            None => (0, 0),
        };
        let l7 = local_l7.max(fleet.l7);
        let packet = if config.trust_packet_sources {
            packet
        } else {
            packet.min(l7)
        };
        let score = l7.saturating_add(packet);
        if score < config.threshold {
            return None;
        }
        self.block(config, never, key, score, Some(fleet), now)
    }

    /// Blocks `key` (or its aggregate) for a score that reached the
    /// threshold; its window starts afresh.
    fn block(
        &mut self,
        config: &AbuseSection,
        never: &[Cidr],
        key: Cidr,
        score: u32,
        fleet: Option<&FleetWindow>,
        now: Instant,
    ) -> Option<BlockRequest> {
        let window = self.windows.remove(&key).unwrap_or_default();
        let (cidr, aggregated_from) = match self.aggregate(config, key, now) {
            Some(prefix) => (prefix, Some(key)),
            None => (key, None),
        };
        let Some(cidr) = allowed_cover(cidr, window.host, never) else {
            metrics::counter!("gateway_abuse_not_blocked_total", "reason" => "exempt_overlap")
                .increment(1);
            return None;
        };

        let offender = self.offenders.entry(key).or_insert(Offender {
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

        // The fleet's counts stand for every edge's L7 signals, this one's
        // included; only the packet-level ones are this edge's alone.
        let mut signals = fleet.map(|f| f.signals.clone()).unwrap_or_default();
        for event in window
            .events
            .iter()
            .filter(|event| fleet.is_none() || event.packet)
        {
            *signals.entry(event.evidence.signal.clone()).or_insert(0) += 1;
        }
        self.active.insert(
            cidr,
            ActiveBlock {
                cidr,
                key,
                until: now + ttl,
                offence,
                signals: summary(&signals),
            },
        );
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
                score,
                threshold: config.threshold,
                window_secs: config.window.as_secs(),
                signals,
                first: first.unwrap_or_default(),
                last: last.unwrap_or_default(),
                kernel: false,
                aggregated_from: aggregated_from.filter(|from| *from != cidr),
                unblocked_at: None,
                unblock_reason: None,
                fleet_weights: fleet.map(|f| f.nodes.clone()).unwrap_or_default(),
            },
        })
    }

    /// The block in force that covers `candidates` (an address's key, host
    /// and aggregation prefix), if any.
    pub(super) fn blocked(&self, candidates: &[Cidr], now: Instant) -> Option<ActiveBlock> {
        candidates
            .iter()
            .filter_map(|cidr| self.active.get(cidr))
            .find(|block| block.until > now)
            .cloned()
    }

    /// Ends the block on `cidr` early (an operator removed it); the offence
    /// still counts for escalation.
    pub(super) fn lift(&mut self, cidr: &Cidr, now: Instant) {
        if let Some(block) = self.active.remove(cidr)
            && let Some(offender) = self.offenders.get_mut(&block.key)
        {
            offender.blocked_until = offender.blocked_until.min(now);
        }
    }

    /// The /24 or /64 around `key` once enough keys of that prefix offended;
    /// never narrower than the key itself.
    fn aggregate(&mut self, config: &AbuseSection, key: Cidr, now: Instant) -> Option<Cidr> {
        if config.aggregate_after == 0 {
            return None;
        }
        let prefix_len = if key.addr().is_ipv4() { 24 } else { 64 };
        if key.prefix_len() <= prefix_len {
            return None;
        }
        let prefix = Cidr::network_of(key.addr(), prefix_len);
        let offenders = self.prefixes.entry(prefix).or_default();
        offenders.retain(|(k, at)| *k != key && now.duration_since(*at) <= config.offence_memory);
        offenders.push((key, now));
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
        self.active.retain(|_, block| block.until > now);
        self.prefixes.retain(|_, offenders| {
            offenders.retain(|(_, at)| now.duration_since(*at) <= config.offence_memory);
            !offenders.is_empty()
        });
    }
}

/// The keys that completed a TCP handshake recently: the only ones whose
/// packet-level signals may count (a forged source never completes one).
#[derive(Default)]
pub(super) struct Proven {
    seen: HashMap<Cidr, Instant>,
    since_prune: u32,
}

impl Proven {
    /// `key` completed a handshake at `now`; remembered for `memory`. Expired
    /// keys are swept every [`PRUNE_EVERY`] calls, never more often, so a
    /// full record costs a connection from a new address nothing but a lookup.
    pub(super) fn saw(&mut self, key: Cidr, now: Instant, memory: Duration) {
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.since_prune = 0;
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < memory);
        }
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains_key(&key) {
            // Full of live entries: this key's packet signals will not count,
            // which errs on the side of never blocking.
            metrics::counter!("gateway_abuse_untracked_total").increment(1);
            return;
        }
        self.seen.insert(key, now);
    }

    /// Whether `key` completed a handshake within `memory` before `now`.
    pub(super) fn recently(&self, key: &Cidr, now: Instant, memory: Duration) -> bool {
        self.seen
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < memory)
    }
}

/// `cidr` when it covers no never-blocked network; else the single address
/// `host` when that one is not exempt itself; else nothing. A trusted proxy
/// or allowlisted host inside an offender's /64 keeps being served.
fn allowed_cover(cidr: Cidr, host: Option<IpAddr>, never: &[Cidr]) -> Option<Cidr> {
    let clear = |cidr: &Cidr| !never.iter().any(|exempt| overlaps(cidr, exempt));
    if clear(&cidr) {
        return Some(cidr);
    }
    host.map(Cidr::host).filter(|h| *h != cidr && clear(h))
}

/// Whether two networks share an address (one contains the other).
fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    a.addr().is_ipv4() == b.addr().is_ipv4() && (a.contains(b.addr()) || b.contains(a.addr()))
}

/// `signal=count …`, as logs and the L7 refusal show it.
pub(super) fn summary(signals: &BTreeMap<String, u32>) -> String {
    signals
        .iter()
        .map(|(signal, count)| format!("{signal}={count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `base` doubled for every offence after the first, at most `cap`.
fn escalate(base: Duration, cap: Duration, offence: u32) -> Duration {
    let factor = 1u32
        .checked_shl(offence.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}
