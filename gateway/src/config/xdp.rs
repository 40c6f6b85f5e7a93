//! `[xdp]`: the kernel plane's settings.

use serde::{Deserialize, Serialize};

use crate::{
    addr::Cidr,
    xdp::{Capacity, Mode, RateLimit},
};

/// `[xdp]`: where the program runs and what it enforces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdpSection {
    /// `false` runs the proxy alone, for hosts where BPF is not available.
    pub enabled: bool,
    /// Interface to attach to (required).
    pub interface: String,
    /// Attach mode: `auto`, `driver` or `skb`.
    pub mode: Mode,
    /// Network namespace (a name in `/run/netns`) that `gateway run` enters at
    /// start, before attaching and before its listeners bind; only the network
    /// namespace, so the pin directory stays in the host's bpffs. `--netns`
    /// overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// IPv6 sources share one rate-limit bucket per prefix of this length, so a host
    /// cannot escape its limit by rotating through its own /64.
    pub ipv6_rate_limit_prefix: u8,
    /// CIDRs that always pass and are never rate limited.
    pub allowlist: Vec<Cidr>,
    /// CIDRs (or single addresses) that are always dropped.
    pub blocklist: Vec<Cidr>,
    /// Per-source limits; all zero (the default) means no rate limiting.
    pub rate_limit: RateLimit,
    /// Rule classes that only count what they would drop.
    pub monitor: Monitor,
    /// Map sizes, fixed when the maps are created.
    pub capacity: Capacity,
}

impl Default for XdpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            interface: String::new(),
            mode: Mode::Auto,
            netns: None,
            ipv6_rate_limit_prefix: crate::xdp::DEFAULT_IPV6_RATE_LIMIT_PREFIX,
            allowlist: Vec::new(),
            blocklist: Vec::new(),
            rate_limit: RateLimit::default(),
            monitor: Monitor::default(),
            capacity: Capacity::default(),
        }
    }
}

/// `[xdp.monitor]`: `true` makes a rule class count would-be drops but pass them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Monitor {
    /// The static CIDR blocklist.
    pub cidr: bool,
    /// The dynamic (exact-address) blocklist.
    pub blocklist: bool,
    /// Both per-source rate limits.
    pub rate_limit: bool,
}

impl Monitor {
    /// The bit set the XDP program reads.
    pub fn bits(&self) -> u32 {
        use gateway_common::consts::monitor;
        (if self.cidr { monitor::CIDR } else { 0 })
            | (if self.blocklist {
                monitor::BLOCKLIST
            } else {
                0
            })
            | (if self.rate_limit {
                monitor::RATE_LIMIT
            } else {
                0
            })
    }
}

impl XdpSection {
    /// Every problem, each with its key path.
    pub fn problems(&self) -> Vec<String> {
        let xdp = self;
        let mut problems = Vec::new();
        if xdp.enabled && xdp.interface.trim().is_empty() {
            problems.push("xdp.interface: required, e.g. interface = \"eth0\"".to_owned());
        }
        if !(1..=128).contains(&xdp.ipv6_rate_limit_prefix) {
            problems.push(format!(
                "xdp.ipv6_rate_limit_prefix: {} is not a prefix length between 1 and 128",
                xdp.ipv6_rate_limit_prefix
            ));
        }
        if let Some(name) = &xdp.netns
            && (name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
        {
            problems.push(format!(
                "xdp.netns: {name:?} is not a namespace name (one entry of /run/netns, see `ip netns list`)"
            ));
        }
        problems.extend(rate_limit_problems("xdp.rate_limit", &xdp.rate_limit));
        for (key, value) in [
            ("rate_limit_entries", xdp.capacity.rate_limit_entries),
            ("blocklist_entries", xdp.capacity.blocklist_entries),
            ("cidr_entries", xdp.capacity.cidr_entries),
        ] {
            if value == 0 {
                problems.push(format!("xdp.capacity.{key}: must be at least 1"));
            }
        }
        for cidr in &xdp.blocklist {
            if xdp.allowlist.contains(cidr) {
                problems.push(format!(
                    "xdp.blocklist: {cidr} is also in xdp.allowlist, which always wins; remove one"
                ));
            }
        }
        problems
    }
}

/// Problems with a set of rate limits; `key` prefixes each message.
pub fn rate_limit_problems(key: &str, limit: &RateLimit) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, pps, burst) in [
        ("", limit.pps, limit.burst),
        ("syn_", limit.syn_pps, limit.syn_burst),
    ] {
        if pps > 1_000_000_000 {
            problems.push(format!(
                "{key}.{name}pps: {pps} is above the maximum of 1000000000"
            ));
        }
        if pps > 0 && burst == 0 {
            problems.push(format!(
                "{key}.{name}burst: must be at least 1 when {name}pps is set (try {name}burst = {pps})"
            ));
        }
    }
    problems
}
