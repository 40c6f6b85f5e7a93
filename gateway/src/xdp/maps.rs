//! Typed access to the pinned maps, from any process.

use std::path::PathBuf;

use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key,
};
use gateway_common::{
    consts::{Reason, map_names},
    maps::{Addr, BlockEntry, CidrRule, Counter, RateBucket, XdpConfig},
};

use super::{PinDir, XdpError, require_root};

/// `errno` the kernel returns when a hash or trie has no room for a new key.
const E2BIG: i32 = libc::E2BIG;

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
    /// Opens the maps pinned under `pins`; [`XdpError::NotAttached`] when there are none.
    pub fn open(pins: &PinDir) -> Result<Self, XdpError> {
        require_root()?;
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

    /// The exact-address blocklist.
    pub fn blocklist(&self) -> Result<Table<HashMap<MapData, Addr, BlockEntry>>, XdpError> {
        self.typed(map_names::BLOCKLIST)
            .map(Table::new(map_names::BLOCKLIST))
    }

    /// The allowlist or the CIDR blocklist trie.
    pub fn trie(
        &self,
        name: &'static str,
    ) -> Result<Table<LpmTrie<MapData, Addr, CidrRule>>, XdpError> {
        self.typed(name).map(Table::new(name))
    }

    /// The per-source rate-limit buckets.
    pub fn rate_limit(&self) -> Result<Table<HashMap<MapData, Addr, RateBucket>>, XdpError> {
        self.typed(map_names::RATE_LIMIT)
            .map(Table::new(map_names::RATE_LIMIT))
    }

    /// The `n` rate-limit buckets with the most drops (then the most passed
    /// packets), each named by its address, or for IPv6 the prefix it covers.
    pub fn top_rate_limited(&self, n: usize) -> Result<Vec<(String, RateBucket)>, XdpError> {
        let ipv6_prefix: u32 = self
            .config()?
            .ipv6_rate_mask
            .iter()
            .map(|b| b.count_ones())
            .sum();
        let mut buckets = self.rate_limit()?.entries()?;
        buckets.sort_by(|a, b| {
            b.1.dropped
                .cmp(&a.1.dropped)
                .then(b.1.passed.cmp(&a.1.passed))
        });
        Ok(buckets
            .into_iter()
            .take(n)
            .map(|(addr, bucket)| {
                let ip = crate::addr::addr_to_ip(addr);
                let name = if ip.is_ipv6() {
                    format!("{ip}/{ipv6_prefix}")
                } else {
                    ip.to_string()
                };
                (name, bucket)
            })
            .collect())
    }

    /// The runtime settings.
    pub fn config(&self) -> Result<XdpConfig, XdpError> {
        let (config, path): (Array<MapData, XdpConfig>, _) = self.typed(map_names::CONFIG)?;
        config
            .get(&0, 0)
            .map_err(|source| map_error("reading", &path, source))
    }

    /// Replaces the runtime settings; the program sees them on its next packet.
    pub fn set_config(&self, value: &XdpConfig) -> Result<(), XdpError> {
        let (mut config, path): (Array<MapData, XdpConfig>, _) = self.typed(map_names::CONFIG)?;
        config
            .set(0, value, 0)
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
            map_names::BLOCKLIST => Some(self.blocklist()?.map.keys().count()),
            map_names::RATE_LIMIT => Some(self.rate_limit()?.map.keys().count()),
            map_names::ALLOWLIST | map_names::CIDR_BLOCKLIST => {
                Some(self.trie(name)?.map.keys().count())
            }
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

/// A hash or trie map with the name and path its errors need.
pub struct Table<M> {
    pub map: M,
    name: &'static str,
    path: PathBuf,
}

impl<M> Table<M> {
    fn new(name: &'static str) -> impl FnOnce((M, PathBuf)) -> Self {
        move |(map, path)| Self { map, name, path }
    }

    /// Turns a failed insert into [`XdpError::MapFull`] when the map had no room.
    fn insert_error(&self, source: MapError) -> XdpError {
        if let MapError::SyscallError(err) = &source
            && err.io_error.raw_os_error() == Some(E2BIG)
        {
            return XdpError::MapFull {
                name: self.name,
                capacity: capacity_of(&self.path).unwrap_or(0),
            };
        }
        map_error("inserting into", &self.path, source)
    }
}

impl<V: aya::Pod> Table<HashMap<MapData, Addr, V>> {
    pub fn get(&self, key: &Addr) -> Result<Option<V>, XdpError> {
        match self.map.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(err) if not_found(&err) => Ok(None),
            Err(source) => Err(map_error("reading", &self.path, source)),
        }
    }

    pub fn insert(&mut self, key: &Addr, value: &V) -> Result<(), XdpError> {
        self.map
            .insert(key, value, 0)
            .map_err(|source| self.insert_error(source))
    }

    /// Removes `key`; false when it was not there.
    pub fn remove(&mut self, key: &Addr) -> Result<bool, XdpError> {
        match self.map.remove(key) {
            Ok(()) => Ok(true),
            Err(err) if not_found(&err) => Ok(false),
            Err(source) => Err(map_error("removing from", &self.path, source)),
        }
    }

    /// Every entry. Entries that vanish while we walk (LRU eviction, a concurrent
    /// delete) are skipped.
    pub fn entries(&self) -> Result<Vec<(Addr, V)>, XdpError> {
        let mut entries = Vec::new();
        for key in self.map.keys() {
            let key = key.map_err(|source| map_error("walking", &self.path, source))?;
            if let Some(value) = self.get(&key)? {
                entries.push((key, value));
            }
        }
        Ok(entries)
    }

    /// Removes every entry and returns how many there were.
    pub fn clear(&mut self) -> Result<usize, XdpError> {
        let keys = self
            .map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| map_error("walking", &self.path, source))?;
        let mut removed = 0;
        for key in &keys {
            removed += usize::from(self.remove(key)?);
        }
        Ok(removed)
    }
}

impl Table<LpmTrie<MapData, Addr, CidrRule>> {
    /// The rule stored for exactly this prefix (not a longest-prefix match).
    pub fn get_exact(&self, prefix_len: u32, addr: Addr) -> Result<Option<CidrRule>, XdpError> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(p, a, _)| *p == prefix_len && *a == addr)
            .map(|(_, _, rule)| rule))
    }

    pub fn insert(&mut self, prefix_len: u32, addr: Addr, rule: &CidrRule) -> Result<(), XdpError> {
        self.map
            .insert(&Key::new(prefix_len, addr), rule, 0)
            .map_err(|source| self.insert_error(source))
    }

    /// Removes exactly this prefix; false when it was not there.
    pub fn remove(&mut self, prefix_len: u32, addr: Addr) -> Result<bool, XdpError> {
        match self.map.remove(&Key::new(prefix_len, addr)) {
            Ok(()) => Ok(true),
            Err(err) if not_found(&err) => Ok(false),
            Err(source) => Err(map_error("removing from", &self.path, source)),
        }
    }

    /// Every (prefix length, address, rule).
    pub fn entries(&self) -> Result<Vec<(u32, Addr, CidrRule)>, XdpError> {
        let mut entries = Vec::new();
        for key in self.map.keys() {
            let key = key.map_err(|source| map_error("walking", &self.path, source))?;
            match self.map.get(&key, 0) {
                Ok(rule) => entries.push((key.prefix_len(), key.data(), rule)),
                Err(err) if not_found(&err) => {}
                Err(source) => return Err(map_error("reading", &self.path, source)),
            }
        }
        Ok(entries)
    }

    /// Removes every entry and returns how many there were.
    pub fn clear(&mut self) -> Result<usize, XdpError> {
        let mut removed = 0;
        for (prefix_len, addr, _) in self.entries()? {
            removed += usize::from(self.remove(prefix_len, addr)?);
        }
        Ok(removed)
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
