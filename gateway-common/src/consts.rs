//! Map names, counter indexes and flag bits that both planes must agree on.

/// Map names, as they appear in the object file and as files under the pin directory.
///
/// Each list has one map per address family: IPv4 sources are keyed by their four
/// bytes, IPv6 sources by sixteen, so an IPv4 packet hashes and compares a quarter
/// of the bytes. (Names stay within the kernel's 15 characters.)
pub mod map_names {
    /// LPM trie of the IPv4 CIDRs of both the allowlist and the CIDR blocklist: one
    /// walk per packet for both lists. Each entry's value
    /// ([`crate::maps::CidrRule`]) says what the two lists decide for the sources
    /// under its prefix.
    pub const CIDR_V4: &str = "CIDR4";
    /// The same for IPv6 CIDRs.
    pub const CIDR_V6: &str = "CIDR6";
    /// Hash of exact IPv4 source addresses blocked until an expiry time.
    pub const BLOCKLIST_V4: &str = "BLOCKLIST4";
    /// The same for IPv6 source addresses.
    pub const BLOCKLIST_V6: &str = "BLOCKLIST6";
    /// LRU hash of the token buckets of IPv4 sources, keyed by
    /// [`crate::maps::Addr4`] (IPv4-mapped IPv6 sources included while the IPv6
    /// rate mask keeps their whole address, see `RATE_LIMIT6`).
    pub const RATE_LIMIT_V4: &str = "RATE_LIMIT4";
    /// LRU hash of the token buckets of IPv6 sources, keyed by
    /// [`crate::maps::Addr6`] masked to the configured prefix.
    pub const RATE_LIMIT_V6: &str = "RATE_LIMIT6";
    /// Single-entry array holding [`crate::maps::XdpConfig`].
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU array of [`crate::maps::Counter`], indexed by [`crate::consts::Reason`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Ring buffer of [`crate::maps::RateEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// Array of one `u32` per list map, indexed by [`crate::consts::filled`]: zero
    /// when userspace knows that map is empty, so the program skips its lookup.
    pub const FILLED: &str = "FILLED";

    /// Every map, in the order `gateway xdp status` shows them.
    pub const ALL: [&str; 10] = [
        CIDR_V4,
        CIDR_V6,
        BLOCKLIST_V4,
        BLOCKLIST_V6,
        RATE_LIMIT_V4,
        RATE_LIMIT_V6,
        CONFIG,
        COUNTERS,
        EVENTS,
        FILLED,
    ];
}

/// Slots of the `FILLED` array. A slot is nonzero whenever its map may hold an
/// entry: userspace sets it after every insert, and clears it only after seeing the
/// map empty (then looks again, and sets it back if an insert raced the clear). A
/// lookup in an empty LPM trie still costs a helper call and a walk; most
/// deployments have no CIDR rules, and many have no IPv6 entries at all.
pub mod filled {
    /// The `CIDR4` trie.
    pub const CIDR_V4: u32 = 0;
    /// The exact-address `BLOCKLIST4` hash.
    pub const BLOCKLIST_V4: u32 = 1;
    /// The `CIDR6` trie.
    pub const CIDR_V6: u32 = 2;
    /// The exact-address `BLOCKLIST6` hash.
    pub const BLOCKLIST_V6: u32 = 3;
    /// Number of slots.
    pub const COUNT: u32 = 4;
}

/// Bits of [`crate::maps::CidrRule::flags`]. `ALLOW` and `BLOCK` are what the
/// program reads: the prefix or one of the shorter prefixes containing it is on
/// that list. `ALLOWLISTED` and `BLOCKLISTED` say the prefix itself is, for
/// userspace (which derives the first two from them).
pub mod cidr_flags {
    /// Sources under the prefix are allowlisted until
    /// [`crate::maps::CidrRule::allow_expires_at_ns`].
    pub const ALLOW: u32 = 1 << 0;
    /// Sources under the prefix are CIDR-blocked until
    /// [`crate::maps::CidrRule::block_expires_at_ns`].
    pub const BLOCK: u32 = 1 << 1;
    /// The prefix itself is on the allowlist.
    pub const ALLOWLISTED: u32 = 1 << 2;
    /// The prefix itself is on the CIDR blocklist.
    pub const BLOCKLISTED: u32 = 1 << 3;
}

/// Version of the maps' layout and meaning, stamped into
/// [`crate::maps::XdpConfig::layout`] by every config write. Pinned maps with another
/// version (an older gateway's) are not reused: the loader recreates them and the
/// lists come back from the state directory. 0: expiries on `CLOCK_BOOTTIME`, no
/// `FILLED`; 1: expiries on the coarse `CLOCK_MONOTONIC`, `FILLED`; 2: one map per
/// address family for each list, IPv4 keyed by 4 bytes (before: IPv4 mapped into
/// 16-byte IPv6 keys); 3: one trie per family for both CIDR lists (`CIDR4`,
/// `CIDR6`, values derived by userspace), instead of an allowlist and a CIDR
/// blocklist trie each; 4: one rate-limit map per family (`RATE_LIMIT4` keyed by 4
/// bytes, `RATE_LIMIT6`), instead of one `RATE_LIMIT` keyed by 16.
pub const LAYOUT_VERSION: u32 = 4;

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "gateway_xdp";

/// Default map capacities; userspace may override them at load time.
pub mod capacity {
    /// Per-source token buckets, in each of the IPv4 and the IPv6 map (LRU: the least
    /// recently seen sources of that family are evicted, so a flood from one family
    /// cannot evict the other's buckets). An LRU hash allocates all of its entries
    /// when it is created: 112 bytes of locked memory an entry for IPv4, 120 for
    /// IPv6 (at the default, 117 MB and 126 MB).
    pub const RATE_LIMIT: u32 = 1 << 20;
    /// Exact-address blocks, in each of the IPv4 and the IPv6 map.
    pub const BLOCKLIST: u32 = 131_072;
    /// Prefixes in each family's CIDR trie, of the allowlist and the CIDR blocklist
    /// together (a prefix on both lists is one entry). An LPM trie allocates its
    /// entries as they come, so room costs nothing until used.
    pub const CIDR: u32 = 131_072;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 18;
}

/// How deep the XDP parser walks. A frame framed deeper than this is dropped as
/// malformed (`drop_malformed`), never passed unjudged: the kernel stack would undo
/// the framing and deliver the packet inside.
pub mod parse_limits {
    /// 802.1Q/802.1ad tags. The kernel strips any number of priority tags (VLAN ID 0,
    /// `check_vlan_id` in `__netif_receive_skb_core`), so no bound covers all it
    /// accepts; honest networks stack at most three (a priority tag in front of
    /// 802.1ad + 802.1Q), and nested VLAN devices stop at eight (`MAX_NEST_DEV`).
    pub const VLAN_TAGS: usize = 8;
    /// IPv6 extension headers in front of the upper layer. RFC 8200 allows each once
    /// (Destination Options twice), so an honest chain has at most six: Hop-by-Hop,
    /// Destination Options, Routing, Fragment, AH, Destination Options.
    pub const IPV6_EXT_HEADERS: usize = 8;
}

/// Why the XDP program let a packet through or dropped it; the index into `COUNTERS`.
///
/// Every packet increments exactly one *verdict* counter (`Pass*` or `Drop*`). A rule
/// class in monitor mode increments its `Monitor*` counter instead of dropping and lets
/// the packet continue through the remaining checks, so monitor counters are extra.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Passed every check.
    Pass = 0,
    /// Source is in the allowlist: passed without further checks.
    PassAllowlist = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): handed to the stack.
    PassNonIp = 2,
    /// Truncated or inconsistent Ethernet, VLAN, IP, IPv6 extension or TCP header, or
    /// more VLAN tags or extension headers than [`parse_limits`] allows: dropped,
    /// because the stack would discard it anyway (or, past the limits, deliver what the
    /// filter could not judge) and it must not cost more than a drop.
    DropMalformed = 3,
    /// Source matched the static CIDR blocklist.
    DropCidr = 4,
    /// Source is in the dynamic blocklist and its entry has not expired.
    DropBlocked = 5,
    /// Source ran out of packet tokens.
    DropRateLimit = 6,
    /// Source ran out of TCP SYN tokens.
    DropSynRateLimit = 7,
    /// Would have been [`Reason::DropCidr`], but that class is in monitor mode.
    MonitorCidr = 8,
    /// Would have been [`Reason::DropBlocked`], but that class is in monitor mode.
    MonitorBlocked = 9,
    /// Would have been [`Reason::DropRateLimit`], but that class is in monitor mode.
    MonitorRateLimit = 10,
    /// Would have been [`Reason::DropSynRateLimit`], but that class is in monitor mode.
    MonitorSynRateLimit = 11,
}

impl Reason {
    /// Number of counter slots.
    pub const COUNT: u32 = 12;

    /// Every reason in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Pass,
        Reason::PassAllowlist,
        Reason::PassNonIp,
        Reason::DropMalformed,
        Reason::DropCidr,
        Reason::DropBlocked,
        Reason::DropRateLimit,
        Reason::DropSynRateLimit,
        Reason::MonitorCidr,
        Reason::MonitorBlocked,
        Reason::MonitorRateLimit,
        Reason::MonitorSynRateLimit,
    ];

    /// Stable snake_case name used in CLI output, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Pass => "pass",
            Reason::PassAllowlist => "pass_allowlist",
            Reason::PassNonIp => "pass_non_ip",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropCidr => "drop_cidr",
            Reason::DropBlocked => "drop_blocked",
            Reason::DropRateLimit => "drop_rate_limit",
            Reason::DropSynRateLimit => "drop_syn_rate_limit",
            Reason::MonitorCidr => "monitor_cidr",
            Reason::MonitorBlocked => "monitor_blocked",
            Reason::MonitorRateLimit => "monitor_rate_limit",
            Reason::MonitorSynRateLimit => "monitor_syn_rate_limit",
        }
    }
}

/// Bits of [`crate::maps::XdpConfig::monitor`]: a set bit means "count, don't drop".
pub mod monitor {
    /// The static CIDR blocklist.
    pub const CIDR: u32 = 1 << 0;
    /// The dynamic (exact-address) blocklist.
    pub const BLOCKLIST: u32 = 1 << 1;
    /// Both per-source rate limits (packets and SYN).
    pub const RATE_LIMIT: u32 = 1 << 2;
}

/// Kinds of [`crate::maps::RateEvent`].
pub mod event_kind {
    /// The source ran out of packet tokens.
    pub const RATE_LIMIT: u32 = 1;
    /// The source ran out of TCP SYN tokens.
    pub const SYN_RATE_LIMIT: u32 = 2;
}

/// Reason codes carried by blocklist entries, so the kernel map alone says why.
pub mod block_reason {
    /// Added by an operator (CLI or config).
    pub const MANUAL: u32 = 1;
    /// Added by the daemon's abuse detection.
    pub const ABUSE: u32 = 2;
    /// Restored from the state file at start.
    pub const RESTORED: u32 = 3;
}

/// `expires_at_ns` value meaning "never expires".
pub const NO_EXPIRY: u64 = 0;

/// Minimum spacing of ring-buffer events for one source, in nanoseconds.
pub const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
