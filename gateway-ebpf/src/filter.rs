//! The verdict pipeline for IP packets, in order: allowlist, CIDR blocklist, dynamic
//! blocklist, per-source rate limit. The lists are looked up in the maps of the
//! source's address family ([`V4`] or [`V6`]); one trie walk answers for both the
//! allowlist and the CIDR blocklist (see `gateway_common::maps::CidrRule`). A rule
//! class in monitor mode counts what it would drop and lets the packet go on to the
//! next check.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    maps::{HashMap, LpmTrie, LruHashMap},
};
use gateway_common::{
    consts::{EVENT_INTERVAL_NS, NO_EXPIRY, Reason, cidr_flags, event_kind, filled, monitor},
    maps::{
        Addr4, Addr6, BlockEntry, CidrRule, IPV4_MAPPED_PREFIX, RateBucket, RateEvent, XdpConfig,
    },
};

use crate::{
    counters,
    maps::{
        BLOCKLIST_V4, BLOCKLIST_V6, CIDR_V4, CIDR_V6, CLOCK, CONFIG, EVENTS, FILLED, RATE_LIMIT_V4,
        RATE_LIMIT_V6,
    },
    parse::{Packet, Src},
};

/// The coarse `CLOCK_MONOTONIC` (the clock userspace writes expiries on), read at
/// most once per packet and only for an entry with an expiry. The precise clock
/// costs as much as a map lookup on a VM (`read_tsc`); the coarse one is the time of
/// the last scheduler tick, so an entry lifts up to one tick (1–10 ms) late. Read
/// from the helper, not through [`coarse_now`]: with that cache inlined at the three
/// expiry checks too, LLVM's output read an uninitialised register and the verifier
/// refused the program.
struct Clock(Option<u64>);

impl Clock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        match self.0 {
            Some(now) => now,
            None => {
                // SAFETY: a helper without arguments or side effects.
                let now = unsafe { bpf_ktime_get_coarse_ns() };
                self.0 = Some(now);
                now
            }
        }
    }
}

/// The coarse `CLOCK_MONOTONIC`: the time of the last scheduler tick, as
/// `bpf_ktime_get_coarse_ns` reads it, but read through a per-CPU cache ([`CLOCK`])
/// that is refreshed only when `jiffies` moved. The helper call cost about 20 ns a
/// packet here (on this VM a helper call and its return are dear), `bpf_jiffies64`
/// the verifier inlines into one load. The coarse time moves a moment after
/// `jiffies` on each tick (`tick_do_update_jiffies64`, then `update_wall_time`), so
/// the cache takes the new `jiffies` only once the time it reads has moved too: until
/// then every packet reads the helper, and a cached time is never a tick older than
/// the helper's.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    let jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: as above.
    let read = || unsafe { bpf_ktime_get_coarse_ns() };
    let Some(cache) = CLOCK.get_ptr_mut(0) else {
        return read();
    };
    // SAFETY: this CPU's slot; XDP runs with preemption disabled, so nothing else
    // touches it meanwhile.
    let cache = unsafe { &mut *cache };
    if cache.jiffies != jiffies {
        let now = read();
        if now != cache.now_ns {
            cache.jiffies = jiffies;
            cache.now_ns = now;
        }
        return now;
    }
    cache.now_ns
}

/// The two list maps of one address family and their `FILLED` slots.
struct Lists<K: 'static> {
    cidr: &'static LpmTrie<K, CidrRule>,
    cidr_slot: u32,
    hosts: &'static HashMap<K, BlockEntry>,
    hosts_slot: u32,
    /// Bits in a key: the prefix length of a single address.
    bits: u32,
}

static V4: Lists<u32> = Lists {
    cidr: &CIDR_V4,
    cidr_slot: filled::CIDR_V4,
    hosts: &BLOCKLIST_V4,
    hosts_slot: filled::BLOCKLIST_V4,
    bits: 32,
};

static V6: Lists<Addr6> = Lists {
    cidr: &CIDR_V6,
    cidr_slot: filled::CIDR_V6,
    hosts: &BLOCKLIST_V6,
    hosts_slot: filled::BLOCKLIST_V6,
    bits: 128,
};

/// Decides what happens to an IP packet of `bytes` bytes.
#[inline(always)]
pub fn verdict(packet: &Packet, bytes: u64) -> Reason {
    // An array lookup at index 0 cannot fail; the check only satisfies the verifier.
    let Some(config) = CONFIG.get(0) else {
        return Reason::Pass;
    };
    let listed = match packet.src {
        Src::V4(addr) => lists(&V4, addr, config, bytes),
        Src::V6(addr) => lists(&V6, addr, config, bytes),
    };
    if let Some(reason) = listed {
        return reason;
    }
    match rate_limit(config, packet) {
        RateOutcome::Conform => Reason::Pass,
        RateOutcome::OverPackets
            if enforced(config, monitor::RATE_LIMIT, Reason::MonitorRateLimit, bytes) =>
        {
            Reason::DropRateLimit
        }
        RateOutcome::OverSyn
            if enforced(
                config,
                monitor::RATE_LIMIT,
                Reason::MonitorSynRateLimit,
                bytes,
            ) =>
        {
            Reason::DropSynRateLimit
        }
        RateOutcome::OverPackets | RateOutcome::OverSyn => Reason::Pass,
    }
}

/// The lists, in order: allowlist, CIDR blocklist, dynamic blocklist. `Some` is the
/// verdict of the first that decides; `None` sends the packet on to the rate limit.
#[inline(always)]
fn lists<K: Copy>(maps: &Lists<K>, addr: K, config: &XdpConfig, bytes: u64) -> Option<Reason> {
    let clock = &mut Clock(None);
    if filled(maps.cidr_slot) {
        let listed = cidr_match(maps.cidr, maps.bits, addr, clock);
        if listed.allow {
            return Some(Reason::PassAllowlist);
        }
        if listed.block && enforced(config, monitor::CIDR, Reason::MonitorCidr, bytes) {
            return Some(Reason::DropCidr);
        }
    }
    if filled(maps.hosts_slot)
        && blocked(maps.hosts, &addr, clock, bytes)
        && enforced(config, monitor::BLOCKLIST, Reason::MonitorBlocked, bytes)
    {
        return Some(Reason::DropBlocked);
    }
    None
}

/// False when userspace knows the list map behind `slot` is empty, so its lookup can
/// be skipped (see [`filled`]). An array lookup, inlined by the JIT.
#[inline(always)]
fn filled(slot: u32) -> bool {
    FILLED.get(slot).is_some_and(|flag| *flag != 0)
}

/// True when the matching rule class drops; in monitor mode, counts the would-be drop
/// under `monitor_reason` and returns false.
#[inline(always)]
fn enforced(config: &XdpConfig, class: u32, monitor_reason: Reason, bytes: u64) -> bool {
    if config.monitor & class == 0 {
        return true;
    }
    counters::count(monitor_reason, bytes);
    false
}

/// Reads the clock only for an entry that can expire.
#[inline(always)]
fn expired(expires_at_ns: u64, clock: &mut Clock) -> bool {
    expires_at_ns != NO_EXPIRY && clock.now() >= expires_at_ns
}

/// What the CIDR lists say about a source: allowlisted, CIDR-blocked (both can hold;
/// the allowlist wins).
struct Listed {
    allow: bool,
    block: bool,
}

/// Longest-prefix match of `addr` (`bits` long) in the CIDR trie. The entry found
/// already carries the rules of every shorter listed prefix containing it (userspace
/// derives them), so this one walk decides both lists.
#[inline(always)]
fn cidr_match<K: Copy>(
    trie: &LpmTrie<K, CidrRule>,
    bits: u32,
    addr: K,
    clock: &mut Clock,
) -> Listed {
    match trie.get(&Key::new(bits, addr)) {
        Some(rule) => Listed {
            allow: live(
                rule.flags,
                cidr_flags::ALLOW,
                rule.allow_expires_at_ns,
                clock,
            ),
            block: live(
                rule.flags,
                cidr_flags::BLOCK,
                rule.block_expires_at_ns,
                clock,
            ),
        },
        None => Listed {
            allow: false,
            block: false,
        },
    }
}

/// True when `flags` has `flag` and its expiry has not passed (an expired rule is
/// ignored; the daemon's sweeper removes it within a second).
#[inline(always)]
fn live(flags: u32, flag: u32, expires_at_ns: u64, clock: &mut Clock) -> bool {
    flags & flag != 0 && !expired(expires_at_ns, clock)
}

/// True when `addr` has an unexpired dynamic block; records the hit on the entry.
#[inline(always)]
fn blocked<K>(hosts: &HashMap<K, BlockEntry>, addr: &K, clock: &mut Clock, bytes: u64) -> bool {
    let Some(entry) = hosts.get_ptr_mut(addr) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
    let entry = unsafe { &mut *entry };
    if expired(entry.expires_at_ns, clock) {
        return false;
    }
    add(&mut entry.hits, 1);
    add(&mut entry.bytes, bytes);
    true
}

enum RateOutcome {
    Conform,
    OverPackets,
    OverSyn,
}

/// A source's rate-limit key: IPv4 sources (and IPv4-mapped IPv6 ones whose masked
/// key is still mapped, see [`rate_key`]) in `RATE_LIMIT4`, IPv6 prefixes in
/// `RATE_LIMIT6`.
#[derive(Clone, Copy)]
enum RateKey {
    V4(Addr4),
    V6(Addr6),
}

impl RateKey {
    /// The key as events name it: IPv4 mapped into IPv6.
    #[inline(always)]
    fn addr6(self) -> Addr6 {
        match self {
            RateKey::V4(addr) => {
                let mut mapped = [0u8; 16];
                mapped[..12].copy_from_slice(&IPV4_MAPPED_PREFIX);
                mapped[12..].copy_from_slice(&addr.to_ne_bytes());
                mapped
            }
            RateKey::V6(addr) => addr,
        }
    }
}

/// The bucket of `key` in `map`, made (full) for a new source. `None` when the insert
/// failed: the packet then conforms, because the filter never fails closed on its own
/// bookkeeping.
#[inline(always)]
fn bucket<K>(map: &LruHashMap<K, RateBucket>, key: &K) -> Option<*mut RateBucket> {
    if let Some(bucket) = map.get_ptr_mut(key) {
        return Some(bucket);
    }
    // A new source starts with full buckets (tat = 0 is in the past).
    let _ = map.insert(key, &RateBucket::default(), 0);
    map.get_ptr_mut(key)
}

/// Runs the packet (and, for a SYN, the SYN) bucket of the packet's source.
///
/// The buckets are shared by all CPUs and updated without a lock: two CPUs racing on
/// one source can each let a packet through on the same token. The outcome counters
/// are atomic, so `gateway ratelimit show` stays exact.
#[inline(always)]
fn rate_limit(config: &XdpConfig, packet: &Packet) -> RateOutcome {
    if config.rate_interval_ns == 0 && config.syn_interval_ns == 0 {
        return RateOutcome::Conform;
    }
    let now = rate_now(config);
    let key = rate_key(config, packet);
    let bucket = match key {
        RateKey::V4(addr) => bucket(&RATE_LIMIT_V4, &addr),
        RateKey::V6(addr) => bucket(&RATE_LIMIT_V6, &addr),
    };
    let Some(bucket) = bucket else {
        return RateOutcome::Conform;
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run.
    let bucket = unsafe { &mut *bucket };
    let outcome = if !gcra(
        &mut bucket.tat_ns,
        config.rate_interval_ns,
        config.rate_burst_ns,
        now,
    ) {
        RateOutcome::OverPackets
    } else if packet.tcp_syn
        && !gcra(
            &mut bucket.syn_tat_ns,
            config.syn_interval_ns,
            config.syn_burst_ns,
            now,
        )
    {
        RateOutcome::OverSyn
    } else {
        RateOutcome::Conform
    };
    match outcome {
        RateOutcome::Conform => add(&mut bucket.passed, 1),
        RateOutcome::OverPackets => {
            add(&mut bucket.dropped, 1);
            report(bucket, key, event_kind::RATE_LIMIT, now);
        }
        RateOutcome::OverSyn => {
            add(&mut bucket.dropped, 1);
            report(bucket, key, event_kind::SYN_RATE_LIMIT, now);
        }
    }
    outcome
}

/// The coarse clock moves once per scheduler tick: 1 ms (HZ=1000) to 10 ms (HZ=100).
const COARSE_TICK_NS: u64 = 10_000_000;

/// The rate limiter's time, `CLOCK_MONOTONIC`. Every packet reads it, so it is read
/// coarse ([`coarse_now`]: the time of the last tick, no TSC read, which on a VM
/// costs as much as a map lookup). Every packet of one tick then sees the same time,
/// which is exact enough while each burst window spans a tick; a shorter window would
/// let only `burst` packets through per tick, so such a limit reads the precise clock
/// (`bpf_ktime_get_ns`, the same clock at full resolution).
#[inline(always)]
fn rate_now(config: &XdpConfig) -> u64 {
    let short = |interval_ns: u64, burst_ns: u64| interval_ns != 0 && burst_ns < COARSE_TICK_NS;
    if short(config.rate_interval_ns, config.rate_burst_ns)
        || short(config.syn_interval_ns, config.syn_burst_ns)
    {
        // SAFETY: a helper without arguments or side effects.
        unsafe { bpf_ktime_get_ns() }
    } else {
        coarse_now()
    }
}

/// The rate-limit key. An IPv4 source is its address. An IPv6 source is its address
/// masked to the configured prefix; for an IPv4-mapped one (`::ffff:a.b.c.d`) that is
/// the mapped form masked, and while the mask keeps all 96 bits of the mapped prefix
/// the result is the mapped IPv4 address `a.b.c.d & mask`, so it shares that IPv4
/// key's bucket, exactly as when one 16-byte map held both families.
#[inline(always)]
fn rate_key(config: &XdpConfig, packet: &Packet) -> RateKey {
    let mask = &config.ipv6_rate_mask;
    match packet.src {
        Src::V4(addr) if !packet.is_ipv6 => RateKey::V4(addr),
        // A prefix mask covers bits 88..96 whole only when it is at least /96.
        Src::V4(addr) if mask[11] == 0xff => {
            RateKey::V4(addr & u32::from_ne_bytes([mask[12], mask[13], mask[14], mask[15]]))
        }
        Src::V4(addr) => RateKey::V6(masked(RateKey::V4(addr).addr6(), mask)),
        Src::V6(addr) => RateKey::V6(masked(addr, mask)),
    }
}

#[inline(always)]
fn masked(mut addr: Addr6, mask: &Addr6) -> Addr6 {
    for (byte, mask) in addr.iter_mut().zip(mask.iter()) {
        *byte &= *mask;
    }
    addr
}

/// Generic cell rate algorithm: one packet conforms when the bucket's theoretical
/// arrival time, advanced by one interval, stays within `burst_ns` of now. A zero
/// interval means the limit is off.
#[inline(always)]
fn gcra(tat_ns: &mut u64, interval_ns: u64, burst_ns: u64, now: u64) -> bool {
    if interval_ns == 0 {
        return true;
    }
    let next = if *tat_ns > now { *tat_ns } else { now } + interval_ns;
    if next - now > burst_ns {
        return false;
    }
    *tat_ns = next;
    true
}

/// Atomic add (BPF `lock xadd`) on a map value shared with other CPUs. The BPF target
/// has no compare-and-swap, so `AtomicU64::fetch_add` is unavailable; the intrinsic
/// compiles to the single instruction the verifier accepts.
#[inline(always)]
fn add(counter: &mut u64, value: u64) {
    // SAFETY: `counter` is a valid, aligned u64 inside a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Tells userspace that a source ran out of tokens, at most once per second per source.
#[inline(always)]
fn report(bucket: &mut RateBucket, key: RateKey, kind: u32, now: u64) {
    if bucket.last_event_ns != 0 && now.saturating_sub(bucket.last_event_ns) < EVENT_INTERVAL_NS {
        return;
    }
    bucket.last_event_ns = now;
    let event = RateEvent {
        addr: key.addr6(),
        timestamp_ns: now,
        kind,
        reserved: 0,
    };
    // A full ring buffer loses the event, never the verdict.
    let _ = EVENTS.output(&event, 0);
}
