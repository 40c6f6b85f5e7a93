//! `[abuse]`: how the proxy's observations about a client turn into a block in
//! the kernel's dynamic blocklist.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use crate::addr::Cidr;

/// The feedback loop's thresholds, weights and block lengths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbuseSection {
    /// Whether signals are counted and blocks decided at all. Off by default so
    /// an operator chooses the thresholds before the gateway blocks anyone.
    pub enabled: bool,
    /// The sliding window over which weighted signals add up.
    #[serde(with = "duration")]
    pub window: Duration,
    /// The weighted sum within `window` at which the address is blocked.
    pub threshold: u32,
    /// The first block's length; each further offence doubles it.
    #[serde(with = "duration")]
    pub block_ttl: Duration,
    /// The longest block escalation reaches.
    #[serde(with = "duration")]
    pub max_block_ttl: Duration,
    /// How long an offence counts for escalation: an address that stays clean
    /// this long starts again at `block_ttl`.
    #[serde(with = "duration")]
    pub offence_memory: Duration,
    /// Addresses never blocked, on top of `xdp.allowlist` and
    /// `proxy.trusted_proxies` (which are never blocked either).
    pub exempt: Vec<Cidr>,
    /// Block the whole IPv4 /24 or IPv6 /64 instead of the address once this
    /// many addresses of that prefix were blocked within `offence_memory`;
    /// 0 never aggregates.
    pub aggregate_after: u32,
    /// Whether packet-level signals (XDP rate events) count like L7 signals for
    /// any address. Off by default, and it should stay off unless every path
    /// to the gateway drops forged sources: a packet's source address proves
    /// nothing, so with this on anyone who can forge packets can get any
    /// address blocked. Off, a packet-level signal counts only for an address
    /// that completed a TCP handshake within `window`, and then for at most as
    /// much as that address's L7 signals (it corroborates, never blocks alone).
    pub trust_packet_sources: bool,
    /// The weight of each signal; 0 ignores it.
    pub weights: Weights,
}

/// How much one occurrence of each signal counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// A missing, invalid or expired credential (401).
    pub auth_failure: u32,
    /// A valid caller asking for what it may not have (403 from authorization).
    pub authz_failure: u32,
    /// A request the WAF blocked.
    pub waf_block: u32,
    /// A request rejected by an L7 rate limit or quota (429).
    pub rate_limited: u32,
    /// A request the gateway could not accept as HTTP (400, 414, 431).
    pub malformed: u32,
    /// A TLS handshake that failed or timed out.
    pub tls_handshake_failure: u32,
    /// The kernel plane reported the address out of rate-limit tokens.
    pub xdp_rate_exceeded: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            auth_failure: 2,
            authz_failure: 1,
            waf_block: 5,
            rate_limited: 1,
            malformed: 2,
            tls_handshake_failure: 1,
            xdp_rate_exceeded: 5,
        }
    }
}

impl Default for AbuseSection {
    fn default() -> Self {
        Self {
            enabled: false,
            window: Duration::from_secs(60),
            threshold: 20,
            block_ttl: Duration::from_secs(300),
            max_block_ttl: Duration::from_secs(24 * 3600),
            offence_memory: Duration::from_secs(7 * 24 * 3600),
            exempt: Vec::new(),
            aggregate_after: 0,
            trust_packet_sources: false,
            weights: Weights::default(),
        }
    }
}

impl AbuseSection {
    /// Every problem, each with its key path.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.window.is_zero() {
            problems.push("abuse.window: must be longer than zero".to_owned());
        }
        if self.threshold == 0 {
            problems.push(
                "abuse.threshold: 0 would block every address on its first request; use at least 1"
                    .to_owned(),
            );
        }
        if self.block_ttl < Duration::from_secs(1) {
            problems.push("abuse.block_ttl: must be at least 1s".to_owned());
        }
        if self.max_block_ttl > crate::lists::MAX_TTL {
            problems.push(format!(
                "abuse.max_block_ttl: {} is longer than the longest list TTL (365 days)",
                humantime::format_duration(self.max_block_ttl)
            ));
        }
        if self.max_block_ttl < self.block_ttl {
            problems.push(format!(
                "abuse.max_block_ttl: {} is shorter than abuse.block_ttl ({})",
                humantime::format_duration(self.max_block_ttl),
                humantime::format_duration(self.block_ttl)
            ));
        }
        problems
    }
}
