//! The program's maps. Sizes here are defaults: the loader overrides them from the
//! configuration, and pins every map so the CLI and a restarted daemon share them.
//! Each list has one map per address family (see `gateway_common::maps`); the
//! allowlist and the CIDR blocklist share one trie per family, and the rate limiter
//! has one LRU map per family too.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gateway_common::{
    consts::{Reason, capacity, filled},
    maps::{Addr4, Addr6, BlockEntry, CidrRule, Counter, RateBucket, XdpConfig},
};

#[map(name = "CIDR4")]
pub static CIDR_V4: LpmTrie<Addr4, CidrRule> = LpmTrie::with_max_entries(capacity::CIDR, 0);

#[map(name = "CIDR6")]
pub static CIDR_V6: LpmTrie<Addr6, CidrRule> = LpmTrie::with_max_entries(capacity::CIDR, 0);

#[map(name = "BLOCKLIST4")]
pub static BLOCKLIST_V4: HashMap<Addr4, BlockEntry> =
    HashMap::with_max_entries(capacity::BLOCKLIST, 0);

#[map(name = "BLOCKLIST6")]
pub static BLOCKLIST_V6: HashMap<Addr6, BlockEntry> =
    HashMap::with_max_entries(capacity::BLOCKLIST, 0);

#[map(name = "RATE_LIMIT4")]
pub static RATE_LIMIT_V4: LruHashMap<Addr4, RateBucket> =
    LruHashMap::with_max_entries(capacity::RATE_LIMIT, 0);

#[map(name = "RATE_LIMIT6")]
pub static RATE_LIMIT_V6: LruHashMap<Addr6, RateBucket> =
    LruHashMap::with_max_entries(capacity::RATE_LIMIT, 0);

#[map]
pub static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map]
pub static FILLED: Array<u32> = Array::with_max_entries(filled::COUNT, 0);

/// The program's own per-CPU cache of the coarse clock (see `filter::coarse_now`).
/// Not pinned: nothing outside the program reads it, and a new program starts it
/// afresh.
#[map]
pub static CLOCK: PerCpuArray<CoarseClock> = PerCpuArray::with_max_entries(1, 0);

/// One CPU's last reading of the coarse clock.
#[repr(C)]
pub struct CoarseClock {
    /// `jiffies` when it was read.
    pub jiffies: u64,
    /// `bpf_ktime_get_coarse_ns` then.
    pub now_ns: u64,
}
