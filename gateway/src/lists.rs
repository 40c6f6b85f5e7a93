//! The allowlist and the blocklist. Every change goes to the kernel map and to the
//! state file under one lock, so the CLI, the daemon and a reboot all see the same
//! lists.
//!
//! A single address on the blocklist goes to the exact-match `BLOCKLIST` hash, which
//! counts its hits; a wider CIDR goes to the `CIDR_BLOCKLIST` trie. Allowlist entries
//! all live in the `ALLOWLIST` trie.

use std::time::Duration;

use gateway_common::{
    consts::{NO_EXPIRY, block_reason, map_names},
    maps::{BlockEntry, CidrRule},
};
use serde::Serialize;

use crate::{
    addr::Cidr,
    clock,
    state::{self, Record, Source, StateDir, StateError},
    xdp::{KernelMaps, XdpError},
};

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Allow => "allowlist",
            ListKind::Block => "blocklist",
        }
    }

    fn records(self, lists: &mut state::Lists) -> &mut std::collections::BTreeMap<Cidr, Record> {
        match self {
            ListKind::Allow => &mut lists.allowlist,
            ListKind::Block => &mut lists.blocklist,
        }
    }
}

/// A list change failed in the kernel or in the state file.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A live list entry, as `list` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub cidr: Cidr,
    pub reason: String,
    pub source: Source,
    /// Unix seconds, when known.
    pub added_at: Option<u64>,
    /// Unix seconds; `None` for never.
    pub expires_at: Option<u64>,
    /// Packets dropped since the block (exact-address blocks only).
    pub hits: Option<u64>,
    /// Bytes of those packets.
    pub bytes: Option<u64>,
}

/// An entry as the kernel holds it.
struct KernelEntry {
    cidr: Cidr,
    expires_at_ns: u64,
    reason: u32,
    hits: Option<(u64, u64)>,
}

/// What a [`Lists::sweep`] changed.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Entries whose TTL ran out and that were removed.
    pub expired: Vec<(ListKind, Cidr)>,
}

/// The lists of one gateway: its pinned maps plus its state directory.
pub struct Lists<'a> {
    maps: &'a KernelMaps,
    state: &'a StateDir,
}

impl<'a> Lists<'a> {
    pub fn new(maps: &'a KernelMaps, state: &'a StateDir) -> Self {
        Self { maps, state }
    }

    /// Adds (or replaces) entries; they take effect on the next packet.
    pub fn add(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        reason: &str,
        source: Source,
    ) -> Result<(), ListError> {
        let lock = self.state.lock_lists()?;
        let mut lists = lock.load()?;
        let expires_at_ns = ttl.map_or(NO_EXPIRY, clock::boot_ns_after);
        let expires_at = ttl.map(|ttl| clock::unix_now() + ttl.as_secs_f64().ceil() as u64);
        for cidr in cidrs {
            self.put(kind, cidr, expires_at_ns, reason_code(source))?;
            kind.records(&mut lists).insert(
                *cidr,
                Record {
                    reason: reason.to_owned(),
                    source,
                    added_at: clock::unix_now(),
                    expires_at,
                },
            );
        }
        lock.save(&lists)?;
        Ok(())
    }

    /// Removes entries; returns, for each, whether it was there.
    pub fn remove(&self, kind: ListKind, cidrs: &[Cidr]) -> Result<Vec<bool>, ListError> {
        let lock = self.state.lock_lists()?;
        let mut lists = lock.load()?;
        let mut found = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            let in_kernel = self.delete(kind, cidr)?;
            let in_state = kind.records(&mut lists).remove(cidr).is_some();
            found.push(in_kernel || in_state);
        }
        lock.save(&lists)?;
        Ok(found)
    }

    /// Removes every entry of `kind`; returns how many there were.
    pub fn flush(&self, kind: ListKind) -> Result<usize, ListError> {
        let lock = self.state.lock_lists()?;
        let mut lists = lock.load()?;
        let removed = match kind {
            ListKind::Allow => self.maps.trie(map_names::ALLOWLIST)?.clear()?,
            ListKind::Block => {
                self.maps.blocklist()?.clear()?
                    + self.maps.trie(map_names::CIDR_BLOCKLIST)?.clear()?
            }
        };
        kind.records(&mut lists).clear();
        lock.save(&lists)?;
        Ok(removed)
    }

    /// The live (unexpired) entries of `kind`, with their provenance.
    pub fn list(&self, kind: ListKind) -> Result<Vec<Entry>, ListError> {
        let lists = self.state.lock_lists()?.load()?;
        let records = match kind {
            ListKind::Allow => &lists.allowlist,
            ListKind::Block => &lists.blocklist,
        };
        let now = clock::boot_ns();
        let mut entries: Vec<Entry> = self
            .kernel_entries(kind)?
            .into_iter()
            .filter(|entry| !expired(entry.expires_at_ns, now))
            .map(|entry| {
                let record = records.get(&entry.cidr);
                Entry {
                    cidr: entry.cidr,
                    reason: record.map_or_else(
                        || reason_name(entry.reason).to_owned(),
                        |r| r.reason.clone(),
                    ),
                    source: record.map_or(Source::Kernel, |r| r.source),
                    added_at: record.map(|r| r.added_at),
                    // The record's Unix time is exact; converting the kernel's boot
                    // time back would jitter by a second from one listing to the next.
                    expires_at: record.map_or_else(
                        || {
                            (entry.expires_at_ns != NO_EXPIRY)
                                .then(|| clock::unix_at_boot_ns(entry.expires_at_ns))
                        },
                        |r| r.expires_at,
                    ),
                    hits: entry.hits.map(|(hits, _)| hits),
                    bytes: entry.hits.map(|(_, bytes)| bytes),
                }
            })
            .collect();
        entries.sort_by_key(|entry| entry.cidr);
        Ok(entries)
    }

    /// Makes the config's static lists the only entries with [`Source::Config`].
    pub fn replace_config(&self, allow: &[Cidr], block: &[Cidr]) -> Result<(), ListError> {
        let lock = self.state.lock_lists()?;
        let mut lists = lock.load()?;
        for (kind, wanted) in [(ListKind::Allow, allow), (ListKind::Block, block)] {
            let stale: Vec<Cidr> = kind
                .records(&mut lists)
                .iter()
                .filter(|(cidr, record)| record.source == Source::Config && !wanted.contains(cidr))
                .map(|(cidr, _)| *cidr)
                .collect();
            for cidr in stale {
                self.delete(kind, &cidr)?;
                kind.records(&mut lists).remove(&cidr);
            }
            for cidr in wanted {
                self.put(kind, cidr, NO_EXPIRY, block_reason::MANUAL)?;
                kind.records(&mut lists).insert(
                    *cidr,
                    Record {
                        reason: "config".to_owned(),
                        source: Source::Config,
                        added_at: clock::unix_now(),
                        expires_at: None,
                    },
                );
            }
        }
        lock.save(&lists)?;
        Ok(())
    }

    /// Puts every unexpired saved entry that the kernel lacks back into the kernel,
    /// with its remaining TTL (after a reboot or a detach wiped the maps). Returns how
    /// many were restored.
    pub fn restore(&self) -> Result<usize, ListError> {
        let lock = self.state.lock_lists()?;
        let mut lists = lock.load()?;
        let now = clock::unix_now();
        let mut restored = 0;
        for kind in [ListKind::Allow, ListKind::Block] {
            let present: Vec<Cidr> = self.kernel_entries(kind)?.iter().map(|e| e.cidr).collect();
            let records = kind.records(&mut lists);
            records.retain(|_, record| record.expires_at.is_none_or(|at| at > now));
            for (cidr, record) in records.iter() {
                if present.contains(cidr) {
                    continue;
                }
                let expires_at_ns = record.expires_at.map_or(NO_EXPIRY, clock::boot_ns_at_unix);
                self.put(kind, cidr, expires_at_ns, reason_code(record.source))?;
                restored += 1;
            }
        }
        lock.save(&lists)?;
        Ok(restored)
    }

    /// Deletes expired entries from the kernel and brings the state file in line with
    /// the kernel: records of entries that are gone are dropped, entries added by other
    /// tools get a record.
    pub fn sweep(&self) -> Result<Sweep, ListError> {
        let lock = self.state.lock_lists()?;
        let saved = lock.load()?;
        let mut lists = saved.clone();
        let now = clock::boot_ns();
        let mut sweep = Sweep::default();
        for kind in [ListKind::Allow, ListKind::Block] {
            let mut live = Vec::new();
            for entry in self.kernel_entries(kind)? {
                if expired(entry.expires_at_ns, now) {
                    self.delete(kind, &entry.cidr)?;
                    sweep.expired.push((kind, entry.cidr));
                } else {
                    live.push(entry);
                }
            }
            let records = kind.records(&mut lists);
            records.retain(|cidr, _| live.iter().any(|entry| entry.cidr == *cidr));
            for entry in live {
                records.entry(entry.cidr).or_insert_with(|| Record {
                    reason: reason_name(entry.reason).to_owned(),
                    source: Source::Kernel,
                    added_at: clock::unix_now(),
                    expires_at: (entry.expires_at_ns != NO_EXPIRY)
                        .then(|| clock::unix_at_boot_ns(entry.expires_at_ns)),
                });
            }
        }
        if lists != saved {
            lock.save(&lists)?;
        }
        Ok(sweep)
    }

    fn put(
        &self,
        kind: ListKind,
        cidr: &Cidr,
        expires_at_ns: u64,
        reason: u32,
    ) -> Result<(), XdpError> {
        let (prefix_len, addr) = cidr.key();
        let rule = CidrRule {
            expires_at_ns,
            reason,
            reserved: 0,
        };
        match kind {
            ListKind::Block if cidr.is_host() => self.maps.blocklist()?.insert(
                &addr,
                &BlockEntry {
                    expires_at_ns,
                    reason,
                    ..BlockEntry::default()
                },
            ),
            ListKind::Block => self
                .maps
                .trie(map_names::CIDR_BLOCKLIST)?
                .insert(prefix_len, addr, &rule),
            ListKind::Allow => self
                .maps
                .trie(map_names::ALLOWLIST)?
                .insert(prefix_len, addr, &rule),
        }
    }

    fn delete(&self, kind: ListKind, cidr: &Cidr) -> Result<bool, XdpError> {
        let (prefix_len, addr) = cidr.key();
        match kind {
            ListKind::Block if cidr.is_host() => self.maps.blocklist()?.remove(&addr),
            ListKind::Block => self
                .maps
                .trie(map_names::CIDR_BLOCKLIST)?
                .remove(prefix_len, addr),
            ListKind::Allow => self
                .maps
                .trie(map_names::ALLOWLIST)?
                .remove(prefix_len, addr),
        }
    }

    fn kernel_entries(&self, kind: ListKind) -> Result<Vec<KernelEntry>, XdpError> {
        let trie = match kind {
            ListKind::Allow => map_names::ALLOWLIST,
            ListKind::Block => map_names::CIDR_BLOCKLIST,
        };
        let mut entries: Vec<KernelEntry> = self
            .maps
            .trie(trie)?
            .entries()?
            .into_iter()
            .filter_map(|(prefix_len, addr, rule)| {
                Some(KernelEntry {
                    cidr: Cidr::from_key(prefix_len, addr)?,
                    expires_at_ns: rule.expires_at_ns,
                    reason: rule.reason,
                    hits: None,
                })
            })
            .collect();
        if kind == ListKind::Block {
            for (addr, block) in self.maps.blocklist()?.entries()? {
                entries.push(KernelEntry {
                    cidr: Cidr::host(crate::addr::addr_to_ip(addr)),
                    expires_at_ns: block.expires_at_ns,
                    reason: block.reason,
                    hits: Some((block.hits, block.bytes)),
                });
            }
        }
        Ok(entries)
    }
}

fn expired(expires_at_ns: u64, now: u64) -> bool {
    expires_at_ns != NO_EXPIRY && now >= expires_at_ns
}

fn reason_code(source: Source) -> u32 {
    match source {
        Source::Cli | Source::Config => block_reason::MANUAL,
        Source::Daemon => block_reason::ABUSE,
        Source::Kernel => block_reason::RESTORED,
    }
}

fn reason_name(code: u32) -> &'static str {
    match code {
        block_reason::MANUAL => "manual",
        block_reason::ABUSE => "abuse",
        block_reason::RESTORED => "restored",
        _ => "unknown",
    }
}
