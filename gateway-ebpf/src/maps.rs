//! The program's maps. Sizes here are defaults: the loader overrides them from the
//! configuration, and pins every map so the CLI and a restarted daemon share them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use gateway_common::{
    consts::{Reason, capacity, filled},
    maps::{Addr, BlockEntry, CidrRule, Counter, RateBucket, XdpConfig},
};

#[map]
pub static ALLOWLIST: LpmTrie<Addr, CidrRule> = LpmTrie::with_max_entries(capacity::CIDR, 0);

#[map]
pub static CIDR_BLOCKLIST: LpmTrie<Addr, CidrRule> = LpmTrie::with_max_entries(capacity::CIDR, 0);

#[map]
pub static BLOCKLIST: HashMap<Addr, BlockEntry> = HashMap::with_max_entries(capacity::BLOCKLIST, 0);

#[map]
pub static RATE_LIMIT: LruHashMap<Addr, RateBucket> =
    LruHashMap::with_max_entries(capacity::RATE_LIMIT, 0);

#[map]
pub static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map]
pub static FILLED: Array<u32> = Array::with_max_entries(filled::COUNT, 0);
