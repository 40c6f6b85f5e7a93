//! Keys and values of the BPF maps.
//!
//! Every list has an IPv4 and an IPv6 map. IPv4 keys are [`Addr4`]: the four address
//! bytes in network order, held in a `u32` (so a hash compares one word and a trie
//! walks at most 32 bits); IPv6 keys are [`Addr6`], sixteen bytes. An IPv4-mapped IPv6
//! source (`::ffff:a.b.c.d`) is looked up as the IPv4 address, so a block of
//! `a.b.c.d` covers it too.
//!
//! The rate limiter has one map per family too: IPv4 sources keyed by [`Addr4`],
//! IPv6 sources by their [`Addr6`] masked to the configured prefix. An IPv4-mapped
//! IPv6 source is an IPv6 source to the rate limiter (masked like any other); while
//! the mask keeps all of the mapped prefix (/96 or longer) its masked key is an IPv4
//! address, and it shares that address's IPv4 bucket.
//!
//! Expiries and the rate limiter's times are `CLOCK_MONOTONIC` nanoseconds, read
//! coarse (`bpf_ktime_get_coarse_ns`: the time of the last scheduler tick, no TSC
//! read; the rate limiter's reading is cached per CPU until `jiffies` moves). An entry therefore lifts up to one tick (1–10 ms) after its expiry, and
//! the kernel's expiry does not advance during suspend (the daemon's sweep, on wall
//! time, removes such entries within a second of their TTL).

/// An IPv4 address as a map key: its four bytes in network order, as they stand in
/// the IP header, read as a native-endian `u32` (`u32::from_ne_bytes(octets)`).
/// The LPM tries match bytes from the first, so this byte order is what makes
/// `a.b.0.0/16` a prefix.
pub type Addr4 = u32;

/// An IPv6 address as a map key.
pub type Addr6 = [u8; 16];

/// The key of an IPv4 address given as its octets.
#[inline(always)]
pub const fn addr4(octets: [u8; 4]) -> Addr4 {
    u32::from_ne_bytes(octets)
}

/// The prefix every IPv4-mapped IPv6 address starts with.
pub const IPV4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Value of the CIDR tries (`CIDR4`, `CIDR6`), which hold the prefixes of both the
/// allowlist and the CIDR blocklist.
///
/// An LPM lookup returns the longest prefix containing the source, and every listed
/// prefix that contains the source is that prefix or a shorter one containing it. So
/// userspace writes into each entry what all of those decide together: the
/// allowlist covers the source when any of them is allowlisted (until the latest of
/// their expiries), the blocklist likewise. The program then needs one walk for both
/// lists and keeps the documented precedence exactly: the allowlist wins whatever the
/// prefix lengths, and an expired longer prefix never hides a live shorter one.
/// Every change re-derives the entries at and below the changed prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrRule {
    /// With [`crate::consts::cidr_flags::ALLOW`]: when the allowlist stops covering
    /// these sources; [`crate::consts::NO_EXPIRY`] for never.
    pub allow_expires_at_ns: u64,
    /// With [`crate::consts::cidr_flags::BLOCK`]: when the CIDR blocklist stops
    /// covering them.
    pub block_expires_at_ns: u64,
    /// With [`crate::consts::cidr_flags::ALLOWLISTED`]: this prefix's own allowlist
    /// expiry (userspace re-derives and lists entries from the own fields).
    pub own_allow_expires_at_ns: u64,
    /// With [`crate::consts::cidr_flags::BLOCKLISTED`]: its own blocklist expiry.
    pub own_block_expires_at_ns: u64,
    /// Bit set of [`crate::consts::cidr_flags`]. Presence needs its own bits: an
    /// expiry of [`crate::consts::NO_EXPIRY`] means "never", not "absent".
    pub flags: u32,
    /// One of [`crate::consts::block_reason`], for the own allowlist entry.
    pub own_allow_reason: u32,
    /// One of [`crate::consts::block_reason`], for the own blocklist entry.
    pub own_block_reason: u32,
    /// Zero; keeps the size a multiple of 8 without implicit padding.
    pub reserved: u32,
}

/// Value of the dynamic blocklist.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// When the block lifts; [`crate::consts::NO_EXPIRY`] for never.
    pub expires_at_ns: u64,
    /// Packets dropped (or, in monitor mode, that would have been) since the block.
    pub hits: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// One of [`crate::consts::block_reason`].
    pub reason: u32,
    /// Zero.
    pub reserved: u32,
}

/// Per-source state of the rate limiter: two GCRA buckets and their outcome counters.
///
/// GCRA keeps one "theoretical arrival time" per bucket instead of a token count: a
/// packet conforms when `max(tat, now) + interval - now <= burst_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    /// Theoretical arrival time of the packet bucket.
    pub tat_ns: u64,
    /// Theoretical arrival time of the TCP SYN bucket.
    pub syn_tat_ns: u64,
    /// Packets that conformed.
    pub passed: u64,
    /// Packets over either limit (dropped, or counted in monitor mode).
    pub dropped: u64,
    /// Time of the last ring-buffer event for this source (0: none yet).
    pub last_event_ns: u64,
}

/// Runtime settings written by userspace into the single `CONFIG` slot.
///
/// A zero interval disables that limit; the all-zero default therefore filters with
/// the lists only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// Nanoseconds per packet token (`1e9 / pps`), 0 = no packet rate limit.
    pub rate_interval_ns: u64,
    /// Burst allowance: `burst * rate_interval_ns`.
    pub rate_burst_ns: u64,
    /// Nanoseconds per SYN token, 0 = no SYN rate limit.
    pub syn_interval_ns: u64,
    /// SYN burst allowance: `syn_burst * syn_interval_ns`.
    pub syn_burst_ns: u64,
    /// Mask applied to IPv6 sources before the rate-limit lookup (e.g. /64), so one
    /// host cannot dodge its limit by rotating through its own prefix.
    pub ipv6_rate_mask: Addr6,
    /// Bit set of [`crate::consts::monitor`] classes.
    pub monitor: u32,
    /// [`crate::consts::LAYOUT_VERSION`] of the gateway that wrote this config (0 from
    /// gateways before the field existed). The program does not read it.
    pub layout: u32,
}

/// A per-CPU packet and byte counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes, counted from the start of the Ethernet header.
    pub bytes: u64,
}

/// Ring-buffer record sent when a source runs out of tokens (at most one per second
/// per source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateEvent {
    /// Rate-limit key of the source (IPv4 mapped into IPv6, IPv6 already masked).
    pub addr: Addr6,
    /// `CLOCK_MONOTONIC` of the drop (read coarse: to the scheduler tick).
    pub timestamp_ns: u64,
    /// One of [`crate::consts::event_kind`].
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::{BlockEntry, CidrRule, Counter, RateBucket, RateEvent, XdpConfig};

    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays, with
    // no implicit padding (pinned by layout_tests), so every bit pattern is valid.
    unsafe impl aya::Pod for CidrRule {}
    unsafe impl aya::Pod for BlockEntry {}
    unsafe impl aya::Pod for RateBucket {}
    unsafe impl aya::Pod for XdpConfig {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for RateEvent {}
}
