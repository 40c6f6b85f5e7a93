//! Typed access to the pinned maps, from any process.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd},
    path::PathBuf,
};

use aya::maps::{
    Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf,
    lpm_trie::Key,
};
use gateway_common::{
    consts::{LAYOUT_VERSION, Reason, filled, map_names},
    maps::{Addr4, Addr6, BlockEntry, CidrRule, Counter, RateBucket, XdpConfig},
};

use super::{MAP_CAPS, PinDir, XdpError, batch, require};

/// `errno` the kernel returns when a hash has no room for a new key (a trie says
/// `ENOSPC`).
const E2BIG: i32 = libc::E2BIG;
/// `BPF_ANY`: create or replace.
const ANY: u64 = 0;
/// `BPF_NOEXIST`: create only; `EEXIST` when the key is there.
const NOEXIST: u64 = 1;

/// True for the error a lookup or delete of a missing key gives.
fn not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(err) => err.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Handles onto the maps pinned under one [`PinDir`].
pub struct KernelMaps {
    pins: PinDir,
}

/// Packet and SYN rate limits as an operator states them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Packets per second per source; 0 turns the limit off.
    pub pps: u64,
    /// Packets a source may send back to back.
    pub burst: u64,
    /// TCP SYNs per second per source; 0 turns the limit off.
    pub syn_pps: u64,
    /// SYNs a source may send back to back.
    pub syn_burst: u64,
}

impl RateLimit {
    /// The GCRA parameters (interval, burst window) of one limit.
    fn gcra(pps: u64, burst: u64) -> (u64, u64) {
        if pps == 0 {
            return (0, 0);
        }
        let interval = (1_000_000_000 / pps).max(1);
        (interval, interval.saturating_mul(burst.max(1)))
    }

    fn from_gcra(interval: u64, burst_ns: u64) -> (u64, u64) {
        if interval == 0 {
            return (0, 0);
        }
        (1_000_000_000 / interval, burst_ns / interval)
    }

    /// Writes these limits into `config`, leaving its other fields alone.
    pub fn apply_to(&self, config: &mut XdpConfig) {
        (config.rate_interval_ns, config.rate_burst_ns) = Self::gcra(self.pps, self.burst);
        (config.syn_interval_ns, config.syn_burst_ns) = Self::gcra(self.syn_pps, self.syn_burst);
    }

    /// The limits a config holds.
    pub fn from_config(config: &XdpConfig) -> Self {
        let (pps, burst) = Self::from_gcra(config.rate_interval_ns, config.rate_burst_ns);
        let (syn_pps, syn_burst) = Self::from_gcra(config.syn_interval_ns, config.syn_burst_ns);
        Self {
            pps,
            burst,
            syn_pps,
            syn_burst,
        }
    }
}

impl KernelMaps {
    /// Opens the maps pinned under `pins`; [`XdpError::NotAttached`] when there are
    /// none, [`XdpError::OldLayout`] when an older gateway made them.
    pub fn open(pins: &PinDir) -> Result<Self, XdpError> {
        let maps = Self::open_any(pins)?;
        let found = maps.config()?.layout;
        if found != LAYOUT_VERSION {
            return Err(XdpError::OldLayout {
                dir: pins.path().to_owned(),
                found,
                wanted: LAYOUT_VERSION,
            });
        }
        Ok(maps)
    }

    /// [`open`](Self::open) without the layout check, for the loader.
    pub(super) fn open_any(pins: &PinDir) -> Result<Self, XdpError> {
        require("opening the pinned BPF maps", &MAP_CAPS)?;
        if !pins.map(map_names::CONFIG).exists() {
            return Err(super::netns::not_attached(pins));
        }
        Ok(Self { pins: pins.clone() })
    }

    fn map(&self, name: &str) -> Result<(Map, PathBuf), XdpError> {
        let path = self.pins.map(name);
        let map = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|source| map_error("opening", &path, source))?;
        Ok((map, path))
    }

    fn typed<T>(&self, name: &str) -> Result<(T, PathBuf), XdpError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let (map, path) = self.map(name)?;
        let typed = T::try_from(map).map_err(|source| XdpError::Incompatible {
            path: path.clone(),
            source: Box::new(source),
        })?;
        Ok((typed, path))
    }

    /// The `FILLED` flag of a list map, which every change of that map keeps up.
    fn filled(&self, slot: u32) -> Result<Filled, XdpError> {
        let (flags, path) = self.typed(map_names::FILLED)?;
        Ok(Filled { flags, path, slot })
    }

    /// The exact-address blocklist of IPv4 sources.
    pub fn blocklist_v4(&self) -> Result<HostTable<Addr4>, XdpError> {
        self.list_map(map_names::BLOCKLIST_V4)
    }

    /// The exact-address blocklist of IPv6 sources.
    pub fn blocklist_v6(&self) -> Result<HostTable<Addr6>, XdpError> {
        self.list_map(map_names::BLOCKLIST_V6)
    }

    /// The IPv4 CIDR trie, holding the allowlist's and the CIDR blocklist's prefixes.
    pub fn cidr_v4(&self) -> Result<TrieTable<Addr4>, XdpError> {
        self.list_map(map_names::CIDR_V4)
    }

    /// The IPv6 CIDR trie.
    pub fn cidr_v6(&self) -> Result<TrieTable<Addr6>, XdpError> {
        self.list_map(map_names::CIDR_V6)
    }

    /// A list map with its `FILLED` flag. A key type that does not fit the map
    /// is refused when the map is opened ([`XdpError::Incompatible`]).
    fn list_map<M>(&self, name: &'static str) -> Result<Table<M>, XdpError>
    where
        M: TryFrom<Map, Error = MapError>,
    {
        let slot = match name {
            map_names::CIDR_V4 => filled::CIDR_V4,
            map_names::CIDR_V6 => filled::CIDR_V6,
            map_names::BLOCKLIST_V4 => filled::BLOCKLIST_V4,
            _ => filled::BLOCKLIST_V6,
        };
        let filled = self.filled(slot)?;
        self.typed(name).map(Table::new(name, Some(filled)))
    }

    /// Brings every `FILLED` flag in line with its map: for maps that were filled
    /// before the flags existed or by another tool (bpftool), which sets no flag.
    pub fn refresh_filled(&self) -> Result<(), XdpError> {
        self.blocklist_v4()?.refresh_filled()?;
        self.blocklist_v6()?.refresh_filled()?;
        self.cidr_v4()?.refresh_filled()?;
        self.cidr_v6()?.refresh_filled()
    }

    /// The rate-limit buckets of IPv4 sources.
    pub fn rate_limit_v4(&self) -> Result<RateTable<Addr4>, XdpError> {
        self.typed(map_names::RATE_LIMIT_V4)
            .map(Table::new(map_names::RATE_LIMIT_V4, None))
    }

    /// The rate-limit buckets of IPv6 prefixes.
    pub fn rate_limit_v6(&self) -> Result<RateTable<Addr6>, XdpError> {
        self.typed(map_names::RATE_LIMIT_V6)
            .map(Table::new(map_names::RATE_LIMIT_V6, None))
    }

    /// Forgets every rate-limit bucket of both families; the number forgotten.
    pub fn clear_rate_limits(&self) -> Result<usize, XdpError> {
        Ok(self.rate_limit_v4()?.clear()? + self.rate_limit_v6()?.clear()?)
    }

    /// The `n` rate-limit buckets of either family with the most drops (then the
    /// most passed packets), each named by its address, or for IPv6 the prefix it
    /// covers.
    pub fn top_rate_limited(&self, n: usize) -> Result<Vec<(String, RateBucket)>, XdpError> {
        let ipv6_prefix: u32 = self
            .config()?
            .ipv6_rate_mask
            .iter()
            .map(|b| b.count_ones())
            .sum();
        let v4 = self
            .rate_limit_v4()?
            .entries()?
            .into_iter()
            .map(|(addr, bucket)| (Ipv4Addr::from(addr.to_ne_bytes()).to_string(), bucket));
        let v6 = self
            .rate_limit_v6()?
            .entries()?
            .into_iter()
            .map(|(addr, bucket)| (format!("{}/{ipv6_prefix}", Ipv6Addr::from(addr)), bucket));
        let mut buckets: Vec<_> = v4.chain(v6).collect();
        buckets.sort_by(|a, b| {
            b.1.dropped
                .cmp(&a.1.dropped)
                .then(b.1.passed.cmp(&a.1.passed))
        });
        buckets.truncate(n);
        Ok(buckets)
    }

    /// The runtime settings.
    pub fn config(&self) -> Result<XdpConfig, XdpError> {
        let (config, path): (Array<MapData, XdpConfig>, _) = self.typed(map_names::CONFIG)?;
        config
            .get(&0, 0)
            .map_err(|source| map_error("reading", &path, source))
    }

    /// Replaces the runtime settings; the program sees them on its next packet. The
    /// value is stamped with this gateway's [`LAYOUT_VERSION`].
    pub fn set_config(&self, value: &XdpConfig) -> Result<(), XdpError> {
        let (mut config, path): (Array<MapData, XdpConfig>, _) = self.typed(map_names::CONFIG)?;
        let value = XdpConfig {
            layout: LAYOUT_VERSION,
            ..*value
        };
        config
            .set(0, &value, 0)
            .map_err(|source| map_error("writing", &path, source))
    }

    /// Verdict counters summed over all CPUs, indexed by [`Reason`].
    pub fn counters(&self) -> Result<Vec<Counter>, XdpError> {
        let (counters, path): (PerCpuArray<MapData, Counter>, _) =
            self.typed(map_names::COUNTERS)?;
        (0..Reason::COUNT)
            .map(|index| {
                let per_cpu = counters
                    .get(&index, 0)
                    .map_err(|source| map_error("reading", &path, source))?;
                Ok(per_cpu.iter().fold(Counter::default(), |sum, cpu| Counter {
                    packets: sum.packets + cpu.packets,
                    bytes: sum.bytes + cpu.bytes,
                }))
            })
            .collect()
    }

    /// Number of entries of the hash or trie `name`; `None` for arrays and ring
    /// buffers, where it means nothing.
    pub fn entry_count(&self, name: &'static str) -> Result<Option<usize>, XdpError> {
        Ok(match name {
            map_names::BLOCKLIST_V4 => Some(self.blocklist_v4()?.count()?),
            map_names::BLOCKLIST_V6 => Some(self.blocklist_v6()?.count()?),
            map_names::RATE_LIMIT_V4 => Some(self.rate_limit_v4()?.count()?),
            map_names::RATE_LIMIT_V6 => Some(self.rate_limit_v6()?.count()?),
            map_names::CIDR_V4 => Some(self.cidr_v4()?.count()?),
            map_names::CIDR_V6 => Some(self.cidr_v6()?.count()?),
            _ => None,
        })
    }

    /// Capacity of the map `name`.
    pub fn capacity(&self, name: &str) -> Result<u32, XdpError> {
        let path = self.pins.map(name);
        capacity_of(&path).map_err(|source| map_error("reading", &path, source))
    }

    /// The ring buffer of rate-limit events. Only one process should consume it.
    pub fn events(&self) -> Result<RingBuf<MapData>, XdpError> {
        self.typed(map_names::EVENTS).map(|(ring, _)| ring)
    }
}

/// An exact-address blocklist keyed by `K` ([`Addr4`] or [`Addr6`]).
pub type HostTable<K> = Table<HashMap<MapData, K, BlockEntry>>;

/// A family's rate-limit buckets keyed by `K` ([`Addr4`] or [`Addr6`]).
pub type RateTable<K> = Table<HashMap<MapData, K, RateBucket>>;

/// A CIDR trie keyed by `K` ([`Addr4`] or [`Addr6`]).
pub type TrieTable<K> = Table<LpmTrie<MapData, K, CidrRule>>;

/// A hash or trie map with the name and path its errors need, and the `FILLED` flag
/// it keeps up (list maps only).
pub struct Table<M> {
    pub map: M,
    name: &'static str,
    path: PathBuf,
    filled: Option<Filled>,
}

/// One slot of the `FILLED` array.
struct Filled {
    flags: Array<MapData, u32>,
    path: PathBuf,
    slot: u32,
}

impl Filled {
    fn set(&mut self, filled: bool) -> Result<(), XdpError> {
        self.flags
            .set(self.slot, &u32::from(filled), 0)
            .map_err(|source| map_error("writing", &self.path, source))
    }
}

/// Every entry of a map, as keys and values.
pub type Pairs<K, V> = Vec<(K, V)>;

/// The one-key operations of a hash or trie map, so that the batched operations
/// below are written once for both.
pub trait KeyOps {
    type Key: aya::Pod;
    type Value: aya::Pod;
    fn fd(&self) -> BorrowedFd<'_>;
    /// The value stored for `key`. For a trie this is a longest-prefix match, which
    /// is the exact entry whenever one with `key`'s prefix exists.
    fn get_one(&self, key: &Self::Key) -> Result<Self::Value, MapError>;
    fn insert_one(
        &mut self,
        key: &Self::Key,
        value: &Self::Value,
        flags: u64,
    ) -> Result<(), MapError>;
    fn remove_one(&mut self, key: &Self::Key) -> Result<(), MapError>;
    /// Every entry, one key at a time: for kernels without batch lookups.
    fn walk(&self) -> Result<Pairs<Self::Key, Self::Value>, MapError>;
    /// Whether the map holds no entry (one `BPF_MAP_GET_NEXT_KEY`).
    fn is_empty(&self) -> Result<bool, MapError>;
}

impl<K: aya::Pod, V: aya::Pod> KeyOps for HashMap<MapData, K, V> {
    type Key = K;
    type Value = V;
    fn fd(&self) -> BorrowedFd<'_> {
        IterableMap::map(self).fd().as_fd()
    }
    fn get_one(&self, key: &K) -> Result<V, MapError> {
        self.get(key, 0)
    }
    fn insert_one(&mut self, key: &K, value: &V, flags: u64) -> Result<(), MapError> {
        self.insert(key, value, flags)
    }
    fn remove_one(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
    fn walk(&self) -> Result<Pairs<K, V>, MapError> {
        walk(self.keys(), |key| self.get(key, 0))
    }
    fn is_empty(&self) -> Result<bool, MapError> {
        self.keys().next().transpose().map(|key| key.is_none())
    }
}

impl<K: aya::Pod> KeyOps for LpmTrie<MapData, K, CidrRule> {
    type Key = Key<K>;
    type Value = CidrRule;
    fn fd(&self) -> BorrowedFd<'_> {
        IterableMap::map(self).fd().as_fd()
    }
    fn get_one(&self, key: &Key<K>) -> Result<CidrRule, MapError> {
        self.get(key, 0)
    }
    fn insert_one(&mut self, key: &Key<K>, value: &CidrRule, flags: u64) -> Result<(), MapError> {
        self.insert(key, value, flags)
    }
    fn remove_one(&mut self, key: &Key<K>) -> Result<(), MapError> {
        self.remove(key)
    }
    fn walk(&self) -> Result<Pairs<Key<K>, CidrRule>, MapError> {
        walk(self.keys(), |key| self.get(key, 0))
    }
    fn is_empty(&self) -> Result<bool, MapError> {
        self.keys().next().transpose().map(|key| key.is_none())
    }
}

/// Reads the value of every key `keys` yields; keys that vanish while we walk
/// (LRU eviction, a concurrent delete) are skipped.
fn walk<K, V>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    get: impl Fn(&K) -> Result<V, MapError>,
) -> Result<Pairs<K, V>, MapError> {
    let mut entries = Vec::new();
    for key in keys {
        let key = key?;
        match get(&key) {
            Ok(value) => entries.push((key, value)),
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(entries)
}

/// What [`Table::insert_all`] changed, so that it can be undone.
#[must_use = "an insert is undone with Table::undo, or kept by dropping this"]
pub struct Undo<K, V> {
    /// Keys that were not there before.
    created: Vec<K>,
    /// Keys that were there, with their old values.
    replaced: Vec<(K, V)>,
}

impl<M> Table<M> {
    fn new(name: &'static str, filled: Option<Filled>) -> impl FnOnce((M, PathBuf)) -> Self {
        move |(map, path)| Self {
            map,
            name,
            path,
            filled,
        }
    }

    fn error(&self, what: &'static str, source: MapError) -> XdpError {
        map_error(what, &self.path, source)
    }

    fn batch_error(&self, what: &'static str, source: io::Error) -> XdpError {
        self.error(
            what,
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_batch",
                io_error: source,
            }),
        )
    }

    fn full(&self, room: usize) -> XdpError {
        XdpError::MapFull {
            name: self.name,
            capacity: capacity_of(&self.path).unwrap_or(0),
            room,
        }
    }
}

/// True for the errors of an insert into a hash (`E2BIG`) or trie (`ENOSPC`) that
/// has no room for another key.
fn is_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(E2BIG | libc::ENOSPC))
}

fn os_error(err: &MapError) -> Option<&io::Error> {
    match err {
        MapError::SyscallError(err) => Some(&err.io_error),
        _ => None,
    }
}

impl<M: KeyOps> Table<M> {
    /// The value stored for `key` (for a trie see [`KeyOps::get_one`]).
    fn lookup(&self, key: &M::Key) -> Result<Option<M::Value>, XdpError> {
        match self.map.get_one(key) {
            Ok(value) => Ok(Some(value)),
            Err(err) if not_found(&err) => Ok(None),
            Err(source) => Err(self.error("reading", source)),
        }
    }

    /// Every entry, read in batches of thousands per syscall. Entries that vanish
    /// while we walk (LRU eviction, a concurrent delete) are skipped.
    fn all(&self) -> Result<Pairs<M::Key, M::Value>, XdpError> {
        match batch::lookup_all(self.map.fd()) {
            Ok(entries) => Ok(entries),
            Err(batch::BatchError::Unsupported) => self
                .map
                .walk()
                .map_err(|source| self.error("walking", source)),
            Err(batch::BatchError::Failed { source, .. }) => {
                Err(self.batch_error("walking", source))
            }
        }
    }

    /// Number of entries.
    pub fn count(&self) -> Result<usize, XdpError> {
        self.all().map(|entries| entries.len())
    }

    /// Inserts (or replaces) every `keys[i] = values[i]`. When the map runs out of
    /// room, everything this call changed is undone and the error
    /// ([`XdpError::MapFull`]) says how many new keys would have fitted.
    pub fn insert_all(
        &mut self,
        keys: &[M::Key],
        values: &[M::Value],
    ) -> Result<Undo<M::Key, M::Value>, XdpError> {
        let mut undo = Undo {
            created: Vec::new(),
            replaced: Vec::new(),
        };
        for (key, value) in keys.iter().zip(values) {
            // BPF_NOEXIST tells a new key from a replaced one, whose old value the
            // undo needs; for a trie the lookup then finds exactly that prefix.
            let mut result = self.map.insert_one(key, value, NOEXIST);
            if result.as_ref().is_err_and(|err| {
                os_error(err).and_then(io::Error::raw_os_error) == Some(libc::EEXIST)
            }) {
                if let Some(old) = self.lookup(key)? {
                    undo.replaced.push((*key, old));
                }
                result = self.map.insert_one(key, value, ANY);
            } else if result.is_ok() {
                undo.created.push(*key);
            }
            if let Err(err) = result {
                let full = os_error(&err).is_some_and(is_full);
                let room = undo.created.len();
                self.undo(undo)?;
                return Err(if full {
                    self.full(room)
                } else {
                    self.error("inserting into", err)
                });
            }
        }
        // After the inserts, so that a concurrent refresh that saw the map empty
        // cannot clear the flag behind them (see `refresh_filled`).
        if !keys.is_empty()
            && let Some(filled) = &mut self.filled
            && let Err(err) = filled.set(true)
        {
            self.undo(undo)?;
            return Err(err);
        }
        Ok(undo)
    }

    /// Puts back what an [`insert_all`](Self::insert_all) or a
    /// [`rewrite`](Self::rewrite) changed. New keys go first, so that a full map has
    /// room for the ones a rewrite deleted.
    pub fn undo(&mut self, undo: Undo<M::Key, M::Value>) -> Result<(), XdpError> {
        self.remove_all(&undo.created)?;
        for (key, old) in undo.replaced.iter().rev() {
            self.map
                .insert_one(key, old, ANY)
                .map_err(|source| self.error("restoring", source))?;
        }
        if !undo.replaced.is_empty()
            && let Some(filled) = &mut self.filled
        {
            filled.set(true)?;
        }
        Ok(())
    }

    /// Inserts (or replaces) every `keys[i] = values[i]`, then removes each key of
    /// `gone` (given with the value it holds, for the undo). All or nothing, as
    /// [`insert_all`](Self::insert_all).
    pub fn rewrite(
        &mut self,
        keys: &[M::Key],
        values: &[M::Value],
        gone: Vec<(M::Key, M::Value)>,
    ) -> Result<Undo<M::Key, M::Value>, XdpError> {
        let mut undo = self.insert_all(keys, values)?;
        let gone_keys: Vec<M::Key> = gone.iter().map(|(key, _)| *key).collect();
        if let Err(err) = self.remove_all(&gone_keys) {
            self.undo(undo)?;
            return Err(err);
        }
        undo.replaced.extend(gone);
        Ok(undo)
    }

    /// Sets the `FILLED` flag when the map holds an entry; clears it when it holds
    /// none, then looks again and sets it back if an insert came in between (an
    /// inserter sets the flag only after inserting, so one of the two sees the other).
    pub fn refresh_filled(&mut self) -> Result<(), XdpError> {
        let Self {
            map, path, filled, ..
        } = self;
        let Some(filled) = filled else {
            return Ok(());
        };
        let empty = || {
            map.is_empty()
                .map_err(|source| map_error("reading", path, source))
        };
        if !empty()? {
            return filled.set(true);
        }
        filled.set(false)?;
        if !empty()? {
            filled.set(true)?;
        }
        Ok(())
    }

    /// Removes `keys`, in batches; returns, for each, whether it was there. The
    /// `FILLED` flag is cleared when that emptied the map.
    pub fn remove_all(&mut self, keys: &[M::Key]) -> Result<Vec<bool>, XdpError> {
        let found = self.remove_keys(keys)?;
        if found.contains(&true) {
            self.refresh_filled()?;
        }
        Ok(found)
    }

    fn remove_keys(&mut self, keys: &[M::Key]) -> Result<Vec<bool>, XdpError> {
        let mut found = vec![true; keys.len()];
        let mut at = 0;
        while at < keys.len() {
            let end = (at + batch::CHUNK).min(keys.len());
            match batch::delete(self.map.fd(), &keys[at..end]) {
                Ok(()) => at = end,
                // The key at `at + done` is not there; carry on after it.
                Err(batch::BatchError::Failed { done, source })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    found[at + done] = false;
                    at += done + 1;
                }
                Err(batch::BatchError::Failed { source, .. }) => {
                    return Err(self.batch_error("removing from", source));
                }
                Err(batch::BatchError::Unsupported) => {
                    found[at] = match self.map.remove_one(&keys[at]) {
                        Ok(()) => true,
                        Err(err) if not_found(&err) => false,
                        Err(source) => return Err(self.error("removing from", source)),
                    };
                    at += 1;
                }
            }
        }
        Ok(found)
    }

    /// Removes every entry and returns how many there were.
    pub fn clear(&mut self) -> Result<usize, XdpError> {
        let keys: Vec<M::Key> = self.all()?.into_iter().map(|(key, _)| key).collect();
        Ok(self
            .remove_all(&keys)?
            .into_iter()
            .filter(|found| *found)
            .count())
    }
}

impl<K: aya::Pod, V: aya::Pod> Table<HashMap<MapData, K, V>> {
    pub fn get(&self, key: &K) -> Result<Option<V>, XdpError> {
        self.lookup(key)
    }

    pub fn insert(&mut self, key: &K, value: &V) -> Result<(), XdpError> {
        self.insert_all(&[*key], &[*value]).map(drop)
    }

    /// Removes `key`; false when it was not there.
    pub fn remove(&mut self, key: &K) -> Result<bool, XdpError> {
        Ok(self.remove_all(&[*key])?[0])
    }

    /// Every entry.
    pub fn entries(&self) -> Result<Vec<(K, V)>, XdpError> {
        self.all()
    }
}

impl<K: aya::Pod> Table<LpmTrie<MapData, K, CidrRule>> {
    pub fn insert(&mut self, prefix_len: u32, addr: K, rule: &CidrRule) -> Result<(), XdpError> {
        self.insert_all(&[Key::new(prefix_len, addr)], &[*rule])
            .map(drop)
    }

    /// Removes exactly this prefix; false when it was not there.
    pub fn remove(&mut self, prefix_len: u32, addr: K) -> Result<bool, XdpError> {
        Ok(self.remove_all(&[Key::new(prefix_len, addr)])?[0])
    }

    /// Every (prefix length, address, rule).
    pub fn entries(&self) -> Result<Vec<(u32, K, CidrRule)>, XdpError> {
        Ok(self
            .all()?
            .into_iter()
            .map(|(key, rule)| (key.prefix_len(), key.data(), rule))
            .collect())
    }
}

fn capacity_of(path: &std::path::Path) -> Result<u32, MapError> {
    MapData::from_pin(path)
        .and_then(|data| data.info())
        .map(|info| info.max_entries())
}

fn map_error(what: &'static str, path: &std::path::Path, source: MapError) -> XdpError {
    XdpError::Map {
        what,
        path: path.to_owned(),
        source: Box::new(source),
    }
}
