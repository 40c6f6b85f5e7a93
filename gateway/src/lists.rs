//! The allowlist and the blocklist. Every change goes to the kernel map and to the
//! state directory under one lock, so the CLI, the daemon and a reboot all see the
//! same lists.
//!
//! A single address on the blocklist goes to the exact-address blocklist hash,
//! which counts its hits; a wider CIDR, and every allowlist entry, goes to the CIDR
//! trie, which holds the prefixes of both lists ([`cidr`]: each entry carries what it
//! and the shorter listed prefixes around it decide, so one lookup answers for both).
//! Each of these is two maps, one per address family (`BLOCKLIST4` and `BLOCKLIST6`,
//! `CIDR4` and `CIDR6`); an entry goes to the map of its family, an IPv4-mapped IPv6
//! one (`::ffff:a.b.c.d`) to the IPv4 map.
//!
//! Built for a million entries: kernel maps are read and written in batches, a
//! change appends to `lists.journal` instead of rewriting `lists.json` (see
//! [`journal`]), and the daemon's [`Sweeper`] keeps an [`ExpiryIndex`] so that its
//! per-second sweep costs what expires, not what exists.

mod cidr;
mod expiry;
mod journal;

use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufRead},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::lpm_trie::Key;
use gateway_common::{
    consts::{NO_EXPIRY, block_reason},
    maps::{Addr4, Addr6, BlockEntry, CidrRule},
};
use serde::{Deserialize, Serialize};

use self::cidr::{Change, Rule, Union, Writes};
pub use self::expiry::ExpiryIndex;
use self::journal::Op;
use crate::{
    addr::{Cidr, MapKey},
    clock,
    state::{self, ListsLock, Record, Shared, Source, StateDir, StateError},
    xdp::{KernelMaps, KeyOps, Table, Undo, XdpError},
};

/// The longest TTL a list entry may have. Longer ones are refused, never wrapped or
/// clamped: a year is past any sensible temporary block, and a permanent one is an
/// entry without a TTL.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The longest line `--file` accepts: an address or CIDR with a comment.
const MAX_LINE: usize = 1024;

/// Which list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ListKind {
    #[serde(rename = "allowlist")]
    Allow,
    #[serde(rename = "blocklist")]
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

    /// Whether `cidr` goes to the CIDR trie on this list (else to the host hash).
    fn in_trie(self, cidr: &Cidr) -> bool {
        self == ListKind::Allow || !cidr.is_host()
    }
}

/// A list change failed in the kernel or in the state directory, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ttl(#[from] TtlError),
}

/// A TTL that cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TtlError {
    #[error(
        "a TTL of {0} is longer than the maximum of 365 days; leave the TTL out for a \
         permanent entry"
    )]
    TooLong(String),
}

/// Refuses a TTL longer than [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<(), TtlError> {
    if ttl > MAX_TTL {
        return Err(TtlError::TooLong(
            humantime::format_duration(ttl).to_string(),
        ));
    }
    Ok(())
}

/// A line of an entry file that is not an address or CIDR, or a file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{name}, line {line}: {message}; nothing was applied")]
    Line {
        name: String,
        line: usize,
        message: String,
    },
    #[error("reading {name}: {source}; nothing was applied")]
    Io { name: String, source: io::Error },
}

/// Reads entries from `input` (named `name` in errors), one per line. Blank lines and
/// everything after a `#` are ignored; surrounding whitespace is trimmed. The first
/// bad line fails the whole input.
pub fn read_entries(mut input: impl BufRead, name: &str) -> Result<Vec<Cidr>, InputError> {
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    for line in 1.. {
        buf.clear();
        let read = io::Read::take(&mut input, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| InputError::Io {
                name: name.to_owned(),
                source,
            })?;
        if read == 0 {
            break;
        }
        let bad = |message: String| InputError::Line {
            name: name.to_owned(),
            line,
            message,
        };
        if buf.len() > MAX_LINE {
            return Err(bad(format!("longer than {MAX_LINE} bytes")));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| bad("not UTF-8 text".to_owned()))?;
        let text = if line == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        let text = text.split('#').next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        entries.push(text.parse::<Cidr>().map_err(|err| bad(err.to_string()))?);
    }
    Ok(entries)
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
    /// The fleet node that decided a shared entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// An entry as the kernel holds it.
struct KernelEntry {
    cidr: Cidr,
    expires_at_ns: u64,
    reason: u32,
    hits: Option<(u64, u64)>,
}

/// What a [`Sweeper::sweep`] changed.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Entries whose TTL ran out and that were removed.
    pub expired: Vec<(ListKind, Cidr)>,
}

/// Which shared blocks [`Lists::remove_shared`] removes.
pub enum SharedRemoval<'a> {
    /// These, each unless it is newer than its removal's version.
    Each(&'a [(Cidr, u64)]),
    /// Every shared block older than `before` (ms) that is not in `keep`.
    AllBut {
        keep: &'a HashSet<Cidr>,
        before: u64,
    },
}

/// An entry as it goes into the kernel.
struct Put {
    cidr: Cidr,
    expires_at_ns: u64,
    reason: u32,
}

/// What [`Lists::put_all`] changed in each map, so it can be undone.
#[derive(Default)]
struct Applied {
    hosts_v4: Option<Undo<Addr4, BlockEntry>>,
    hosts_v6: Option<Undo<Addr6, BlockEntry>>,
    tries: TrieUndo,
}

/// What a change of the CIDR tries wrote, so it can be undone.
#[derive(Default)]
struct TrieUndo {
    v4: Option<Undo<Key<Addr4>, CidrRule>>,
    v6: Option<Undo<Key<Addr6>, CidrRule>>,
}

/// Keys and values bound for one map.
struct Batch<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K, V> Default for Batch<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl<K, V> Batch<K, V> {
    fn push(&mut self, key: K, value: V) {
        self.keys.push(key);
        self.values.push(value);
    }
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

    /// Adds (or replaces) entries; they take effect on the next packet. Either all
    /// of them are added or, when a map has no room for them all, none.
    pub fn add(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        reason: &str,
        source: Source,
    ) -> Result<(), ListError> {
        self.add_marked(kind, cidrs, ttl, reason, source, None)
            .map(drop)
    }

    /// [`add`](Self::add), marked as shared with the fleet and decided by
    /// `origin` (this node); returns the mark, for publishing.
    pub fn add_shared(
        &self,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        reason: &str,
        source: Source,
        origin: &str,
    ) -> Result<Shared, ListError> {
        let shared = self.add_marked(ListKind::Block, cidrs, ttl, reason, source, Some(origin))?;
        Ok(shared.unwrap_or_else(|| Shared {
            origin: origin.to_owned(),
            version: 0,
            expires_at_ms: None,
        }))
    }

    fn add_marked(
        &self,
        kind: ListKind,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        reason: &str,
        source: Source,
        origin: Option<&str>,
    ) -> Result<Option<Shared>, ListError> {
        if let Some(ttl) = ttl {
            check_ttl(ttl)?;
        }
        let cidrs = unique(cidrs);
        let lock = self.state.lock_lists()?;
        let now = clock::unix_now();
        let now_ms = clock::unix_now_ms();
        let fleet = origin.map(|origin| Shared {
            origin: origin.to_owned(),
            version: now_ms,
            expires_at_ms: ttl.map(|ttl| {
                now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            }),
        });
        let expires_at_ns = ttl.map_or(NO_EXPIRY, clock::kernel_ns_after);
        // Rounded up, so a restored block never lifts early.
        let expires_at = ttl.map(|ttl| now + ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0));
        let puts: Vec<Put> = cidrs
            .iter()
            .map(|cidr| Put {
                cidr: *cidr,
                expires_at_ns,
                reason: reason_code(source),
            })
            .collect();
        let applied = self.put_all(kind, &puts)?;
        let ops: Vec<Op> = cidrs
            .iter()
            .map(|cidr| Op::Put {
                list: kind,
                cidr: *cidr,
                record: Record {
                    reason: reason.to_owned(),
                    source,
                    added_at: now,
                    expires_at,
                    fleet: fleet.clone(),
                },
            })
            .collect();
        self.record_or_undo(&lock, &ops, applied)?;
        Ok(fleet)
    }

    /// Makes `ops` durable, or takes `applied` out of the kernel again: what
    /// is not durable is not acknowledged.
    fn record_or_undo(
        &self,
        lock: &ListsLock,
        ops: &[Op],
        applied: Applied,
    ) -> Result<(), ListError> {
        if let Err(err) = self.record(lock, ops) {
            self.undo(applied)?;
            return Err(err);
        }
        Ok(())
    }

    /// Puts shared blocks (decided elsewhere, or this node's own coming back)
    /// on the blocklist with their wall-clock expiry and provenance. Skips
    /// an entry that has expired, one the config put there, and one already
    /// held at the same or a newer version. Returns what it put.
    pub fn put_shared(&self, entries: &[(Cidr, Record)]) -> Result<Vec<Cidr>, ListError> {
        let lock = self.state.lock_lists()?;
        let lists = load(&lock, self.state)?;
        let now_ms = clock::unix_now_ms();
        let fresh: Vec<&(Cidr, Record)> = entries
            .iter()
            .filter(|(cidr, record)| {
                let Some(shared) = &record.fleet else {
                    return false;
                };
                if shared.expires_at_ms.is_some_and(|at| at <= now_ms) {
                    return false;
                }
                match lists.blocklist.get(cidr) {
                    Some(held) if held.source == Source::Config => false,
                    Some(held) => held
                        .fleet
                        .as_ref()
                        .is_none_or(|mine| mine.version < shared.version),
                    None => true,
                }
            })
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let puts: Vec<Put> = fresh
            .iter()
            .map(|(cidr, record)| Put {
                cidr: *cidr,
                expires_at_ns: record
                    .fleet
                    .as_ref()
                    .and_then(|shared| shared.expires_at_ms)
                    .map_or(NO_EXPIRY, clock::kernel_ns_at_unix_ms),
                reason: reason_code(record.source),
            })
            .collect();
        let applied = self.put_all(ListKind::Block, &puts)?;
        let ops: Vec<Op> = fresh
            .iter()
            .map(|(cidr, record)| Op::Put {
                list: ListKind::Block,
                cidr: *cidr,
                record: record.clone(),
            })
            .collect();
        self.record_or_undo(&lock, &ops, applied)?;
        Ok(fresh.iter().map(|(cidr, _)| *cidr).collect())
    }

    /// Removes shared blocks the fleet removed: each entry goes when it is
    /// shared and its version is not newer than the removal's, or, with
    /// `keep`, every shared block not in `keep` that is older than `before`
    /// (a resynchronisation with the fleet's whole set). Returns what it removed.
    pub fn remove_shared(&self, removal: SharedRemoval<'_>) -> Result<Vec<Cidr>, ListError> {
        let lock = self.state.lock_lists()?;
        let lists = load(&lock, self.state)?;
        let gone: Vec<Cidr> = lists
            .blocklist
            .iter()
            .filter_map(|(cidr, record)| {
                let shared = record.fleet.as_ref()?;
                let goes = match &removal {
                    SharedRemoval::Each(entries) => entries
                        .iter()
                        .any(|(gone, version)| gone == cidr && shared.version <= *version),
                    SharedRemoval::AllBut { keep, before } => {
                        !keep.contains(cidr) && shared.version < *before
                    }
                };
                goes.then_some(*cidr)
            })
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        self.delete_all(ListKind::Block, &gone)?;
        let ops: Vec<Op> = gone
            .iter()
            .map(|cidr| Op::Remove {
                list: ListKind::Block,
                cidr: *cidr,
            })
            .collect();
        self.record(&lock, &ops)?;
        Ok(gone)
    }

    /// The unexpired blocklist entries shared with the fleet, whoever decided them.
    pub fn shared(&self) -> Result<Vec<(Cidr, Record)>, ListError> {
        let lists = load(&self.state.lock_lists()?, self.state)?;
        let now_ms = clock::unix_now_ms();
        Ok(lists
            .blocklist
            .into_iter()
            .filter(|(_, record)| {
                record
                    .fleet
                    .as_ref()
                    .is_some_and(|shared| shared.expires_at_ms.is_none_or(|at| at > now_ms))
            })
            .collect())
    }

    /// Removes entries; returns, for each, whether the kernel had it.
    pub fn remove(&self, kind: ListKind, cidrs: &[Cidr]) -> Result<Vec<bool>, ListError> {
        let lock = self.state.lock_lists()?;
        let found = self.delete_all(kind, cidrs)?;
        let ops: Vec<Op> = cidrs
            .iter()
            .map(|cidr| Op::Remove {
                list: kind,
                cidr: *cidr,
            })
            .collect();
        self.record(&lock, &ops)?;
        Ok(found)
    }

    /// Removes every entry of `kind`; returns how many there were.
    pub fn flush(&self, kind: ListKind) -> Result<usize, ListError> {
        let lock = self.state.lock_lists()?;
        let union = Union::of(self.trie_entries(true, true)?);
        let changes: Vec<Change> = union
            .listed(kind)
            .map(|(cidr, _)| (cidr, kind, None))
            .collect();
        let mut removed = changes.len();
        let _done = self.change_tries(&changes)?;
        if kind == ListKind::Block {
            removed += self.maps.blocklist_v4()?.clear()? + self.maps.blocklist_v6()?.clear()?;
        }
        self.record(&lock, &[Op::Flush { list: kind }])?;
        Ok(removed)
    }

    /// The live (unexpired) entries of `kind`, with their provenance.
    pub fn list(&self, kind: ListKind) -> Result<Vec<Entry>, ListError> {
        let mut lists = load(&self.state.lock_lists()?, self.state)?;
        let now = clock::kernel_ns();
        let mut kernel = self.kernel_entries(kind)?;
        kernel.retain(|entry| !expired(entry.expires_at_ns, now));
        kernel.sort_unstable_by_key(|entry| entry.cidr);
        // Both ascend by prefix: one merge pass pairs each kernel entry with its
        // record (a lookup per entry costs seconds at a million).
        let mut records = std::mem::take(kind.records(&mut lists))
            .into_iter()
            .peekable();
        let entries = kernel
            .into_iter()
            .map(|entry| {
                while records.next_if(|(cidr, _)| *cidr < entry.cidr).is_some() {}
                let record = records
                    .next_if(|(cidr, _)| *cidr == entry.cidr)
                    .map(|(_, record)| record);
                let expires_at = match &record {
                    // The record's Unix time is exact; converting the kernel's clock
                    // time back would jitter by a second from one listing to the next.
                    Some(record) => record.expires_at,
                    None => (entry.expires_at_ns != NO_EXPIRY)
                        .then(|| clock::unix_at_kernel_ns(entry.expires_at_ns)),
                };
                Entry {
                    cidr: entry.cidr,
                    source: record.as_ref().map_or(Source::Kernel, |r| r.source),
                    added_at: record.as_ref().map(|r| r.added_at),
                    origin: record
                        .as_ref()
                        .and_then(|r| r.fleet.as_ref())
                        .map(|shared| shared.origin.clone()),
                    reason: record
                        .map_or_else(|| reason_name(entry.reason).to_owned(), |r| r.reason),
                    expires_at,
                    hits: entry.hits.map(|(hits, _)| hits),
                    bytes: entry.hits.map(|(_, bytes)| bytes),
                }
            })
            .collect();
        Ok(entries)
    }

    /// Makes the config's static lists the only entries with [`Source::Config`].
    pub fn replace_config(&self, allow: &[Cidr], block: &[Cidr]) -> Result<(), ListError> {
        let lock = self.state.lock_lists()?;
        let mut lists = load(&lock, self.state)?;
        let mut ops = Vec::new();
        for (kind, wanted) in [(ListKind::Allow, allow), (ListKind::Block, block)] {
            let wanted = unique(wanted);
            let keep: HashSet<&Cidr> = wanted.iter().collect();
            let stale: Vec<Cidr> = kind
                .records(&mut lists)
                .iter()
                .filter(|(cidr, record)| record.source == Source::Config && !keep.contains(cidr))
                .map(|(cidr, _)| *cidr)
                .collect();
            self.delete_all(kind, &stale)?;
            ops.extend(
                stale
                    .into_iter()
                    .map(|cidr| Op::Remove { list: kind, cidr }),
            );
            let puts: Vec<Put> = wanted
                .iter()
                .map(|cidr| Put {
                    cidr: *cidr,
                    expires_at_ns: NO_EXPIRY,
                    reason: block_reason::MANUAL,
                })
                .collect();
            let _kept = self.put_all(kind, &puts)?;
            ops.extend(wanted.into_iter().map(|cidr| Op::Put {
                list: kind,
                cidr,
                record: Record {
                    reason: "config".to_owned(),
                    source: Source::Config,
                    added_at: clock::unix_now(),
                    expires_at: None,
                    fleet: None,
                },
            }));
        }
        self.record(&lock, &ops)
    }

    /// Puts every unexpired saved entry that the kernel lacks back into the kernel,
    /// with its remaining TTL (after a reboot or a detach wiped the maps), and folds
    /// the journal into a fresh `lists.json`. Returns how many were restored.
    pub fn restore(&self) -> Result<usize, ListError> {
        Ok(self.restore_locked(&self.state.lock_lists()?)?.0)
    }

    /// [`restore`](Self::restore) under a lock the caller holds; also returns the
    /// saved lists as they now are.
    fn restore_locked(&self, lock: &ListsLock) -> Result<(usize, state::Lists), ListError> {
        // Entries another tool wrote while no daemon ran set no `FILLED` flag.
        self.maps.refresh_filled()?;
        let mut lists = load(lock, self.state)?;
        let now = clock::unix_now();
        let mut restored = 0;
        let mut dropped = false;
        for kind in [ListKind::Allow, ListKind::Block] {
            let present: HashSet<Cidr> =
                self.kernel_entries(kind)?.iter().map(|e| e.cidr).collect();
            let records = kind.records(&mut lists);
            let before = records.len();
            records.retain(|_, record| record.expires_at.is_none_or(|at| at > now));
            dropped |= records.len() != before;
            let puts: Vec<Put> = records
                .iter()
                .filter(|(cidr, _)| !present.contains(cidr))
                .map(|(cidr, record)| Put {
                    cidr: *cidr,
                    expires_at_ns: record
                        .expires_at
                        .map_or(NO_EXPIRY, clock::kernel_ns_at_unix),
                    reason: reason_code(record.source),
                })
                .collect();
            let _kept = self.put_all(kind, &puts)?;
            restored += puts.len();
        }
        // A writer killed between its trie batches leaves derived values that no
        // longer follow the own rules around them, which the own-entry comparison
        // of the sweep cannot see: every (re)start derives them afresh.
        self.rederive_tries()?;
        let journal = journal::path(self.state);
        if dropped || std::fs::metadata(&journal).is_ok_and(|meta| meta.len() > 0) {
            compact(lock, &journal, &lists)?;
        }
        Ok((restored, lists))
    }

    /// Makes `ops` durable. While the lists are small (and the journal empty) they
    /// go straight into `lists.json`, rewritten whole as before; past that they
    /// are appended to the journal, which is folded into `lists.json` when it has
    /// grown far past it (the daemon does that much earlier; this bounds the
    /// journal when no daemon runs).
    fn record(&self, lock: &ListsLock, ops: &[Op]) -> Result<(), ListError> {
        let path = journal::path(self.state);
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
        if size(&path) == 0 && size(&lock.path()) < SMALL_SNAPSHOT {
            let mut lists = lock.load()?;
            for op in ops {
                op.apply(&mut lists);
            }
            lock.save(&lists)?;
            return Ok(());
        }
        check_shape(lock)?;
        let len = journal::append(&path, ops)?;
        if len > 4 * compact_threshold(self.state) {
            compact(lock, &path, &load(lock, self.state)?)?;
        }
        Ok(())
    }

    /// Inserts `puts` into the kernel; all or, when a map is full, none.
    fn put_all(&self, kind: ListKind, puts: &[Put]) -> Result<Applied, ListError> {
        let mut hosts_v4 = Batch::default();
        let mut hosts_v6 = Batch::default();
        let mut prefixes: Vec<Change> = Vec::new();
        for put in puts {
            if kind.in_trie(&put.cidr) {
                let rule = Rule {
                    expires_at_ns: put.expires_at_ns,
                    reason: put.reason,
                };
                prefixes.push((put.cidr, kind, Some(rule)));
                continue;
            }
            let block = BlockEntry {
                expires_at_ns: put.expires_at_ns,
                reason: put.reason,
                ..BlockEntry::default()
            };
            match put.cidr.key() {
                MapKey::V4 { addr, .. } => hosts_v4.push(addr, block),
                MapKey::V6 { addr, .. } => hosts_v6.push(addr, block),
            }
        }
        let mut applied = Applied::default();
        let result = (|| {
            if !hosts_v4.keys.is_empty() {
                applied.hosts_v4 = Some(insert(self.maps.blocklist_v4()?, &hosts_v4)?);
            }
            if !hosts_v6.keys.is_empty() {
                applied.hosts_v6 = Some(insert(self.maps.blocklist_v6()?, &hosts_v6)?);
            }
            applied.tries = self.change_tries(&prefixes)?.0;
            Ok::<_, XdpError>(())
        })();
        if let Err(err) = result {
            self.undo(applied)?;
            return Err(err.into());
        }
        Ok(applied)
    }

    fn undo(&self, applied: Applied) -> Result<(), XdpError> {
        self.undo_tries(applied.tries)?;
        if let Some(undo) = applied.hosts_v6 {
            self.maps.blocklist_v6()?.undo(undo)?;
        }
        if let Some(undo) = applied.hosts_v4 {
            self.maps.blocklist_v4()?.undo(undo)?;
        }
        Ok(())
    }

    fn undo_tries(&self, undo: TrieUndo) -> Result<(), XdpError> {
        if let Some(undo) = undo.v6 {
            self.maps.cidr_v6()?.undo(undo)?;
        }
        if let Some(undo) = undo.v4 {
            self.maps.cidr_v4()?.undo(undo)?;
        }
        Ok(())
    }

    /// Deletes `cidrs` from the kernel; returns, for each, whether it was there.
    fn delete_all(&self, kind: ListKind, cidrs: &[Cidr]) -> Result<Vec<bool>, XdpError> {
        let mut found = vec![false; cidrs.len()];
        // Each batch keeps the positions of its keys in `cidrs`.
        let mut hosts_v4 = Batch::default();
        let mut hosts_v6 = Batch::default();
        let mut prefixes = Batch::default();
        for (i, cidr) in cidrs.iter().enumerate() {
            if kind.in_trie(cidr) {
                prefixes.push((*cidr, kind, None), i);
                continue;
            }
            match cidr.key() {
                MapKey::V4 { addr, .. } => hosts_v4.push(addr, i),
                MapKey::V6 { addr, .. } => hosts_v6.push(addr, i),
            }
        }
        let mut mark = |positions: &[usize], was: Vec<bool>| {
            for (i, was) in positions.iter().zip(was) {
                found[*i] = was;
            }
        };
        if !hosts_v4.keys.is_empty() {
            mark(
                &hosts_v4.values,
                self.maps.blocklist_v4()?.remove_all(&hosts_v4.keys)?,
            );
        }
        if !hosts_v6.keys.is_empty() {
            mark(
                &hosts_v6.values,
                self.maps.blocklist_v6()?.remove_all(&hosts_v6.keys)?,
            );
        }
        let (_done, was) = self.change_tries(&prefixes.keys)?;
        mark(&prefixes.values, was);
        Ok(found)
    }

    /// Applies `changes` to the CIDR tries of the families they touch: reads those
    /// tries, re-derives the changed prefixes and everything inside them
    /// ([`Union::apply`]) and writes what differs, all or nothing. Returns what it
    /// wrote and, for each change, whether its prefix was on its list before. Callers
    /// hold the lists lock, so nothing else changes the tries in between.
    fn change_tries(&self, changes: &[Change]) -> Result<(TrieUndo, Vec<bool>), XdpError> {
        if changes.is_empty() {
            return Ok((TrieUndo::default(), Vec::new()));
        }
        let is_v4 = |cidr: &Cidr| matches!(cidr.key(), MapKey::V4 { .. });
        let v4 = changes.iter().any(|(cidr, ..)| is_v4(cidr));
        let v6 = changes.iter().any(|(cidr, ..)| !is_v4(cidr));
        let mut union = Union::of(self.trie_entries(v4, v6)?);
        let (writes, found) = union.apply(changes);
        Ok((self.write_tries(writes)?, found))
    }

    /// Re-derives every entry of the CIDR tries from the own rules they hold, for
    /// entries another tool wrote or deleted.
    fn rederive_tries(&self) -> Result<(), XdpError> {
        let mut union = Union::of(self.trie_entries(true, true)?);
        let _done = self.write_tries(union.rederive_all())?;
        Ok(())
    }

    /// True when some trie value is not what the own rules in the tries derive.
    fn tries_stale(&self) -> Result<bool, XdpError> {
        Ok(!Union::of(self.trie_entries(true, true)?)
            .rederive_all()
            .is_empty())
    }

    /// Every entry of the CIDR tries of the families asked for.
    fn trie_entries(&self, v4: bool, v6: bool) -> Result<Vec<(Cidr, CidrRule)>, XdpError> {
        let mut entries = Vec::new();
        if v4 {
            for (len, addr, rule) in self.maps.cidr_v4()?.entries()? {
                entries.extend(Cidr::from_v4_key(len, addr).map(|cidr| (cidr, rule)));
            }
        }
        if v6 {
            for (len, addr, rule) in self.maps.cidr_v6()?.entries()? {
                entries.extend(Cidr::from_v6_key(len, addr).map(|cidr| (cidr, rule)));
            }
        }
        Ok(entries)
    }

    /// Writes `writes` into the tries, all or nothing.
    fn write_tries(&self, writes: Writes) -> Result<TrieUndo, XdpError> {
        let mut put_v4 = Batch::default();
        let mut put_v6 = Batch::default();
        let (mut gone_v4, mut gone_v6) = (Vec::new(), Vec::new());
        for (cidr, value) in writes.put {
            match cidr.key() {
                MapKey::V4 { prefix_len, addr } => put_v4.push(Key::new(prefix_len, addr), value),
                MapKey::V6 { prefix_len, addr } => put_v6.push(Key::new(prefix_len, addr), value),
            }
        }
        for (cidr, old) in writes.delete {
            match cidr.key() {
                MapKey::V4 { prefix_len, addr } => gone_v4.push((Key::new(prefix_len, addr), old)),
                MapKey::V6 { prefix_len, addr } => gone_v6.push((Key::new(prefix_len, addr), old)),
            }
        }
        let mut undo = TrieUndo::default();
        if !put_v4.keys.is_empty() || !gone_v4.is_empty() {
            undo.v4 = Some(
                self.maps
                    .cidr_v4()?
                    .rewrite(&put_v4.keys, &put_v4.values, gone_v4)?,
            );
        }
        if !put_v6.keys.is_empty() || !gone_v6.is_empty() {
            let written = self
                .maps
                .cidr_v6()
                .and_then(|mut trie| trie.rewrite(&put_v6.keys, &put_v6.values, gone_v6));
            match written {
                Ok(written) => undo.v6 = Some(written),
                Err(err) => {
                    self.undo_tries(undo)?;
                    return Err(err);
                }
            }
        }
        Ok(undo)
    }

    fn kernel_entries(&self, kind: ListKind) -> Result<Vec<KernelEntry>, XdpError> {
        let mut entries: Vec<KernelEntry> = Union::of(self.trie_entries(true, true)?)
            .listed(kind)
            .map(|(cidr, rule)| KernelEntry {
                cidr,
                expires_at_ns: rule.expires_at_ns,
                reason: rule.reason,
                hits: None,
            })
            .collect();
        if kind == ListKind::Block {
            let host = |cidr: Option<Cidr>, block: BlockEntry| {
                Some(KernelEntry {
                    cidr: cidr?,
                    expires_at_ns: block.expires_at_ns,
                    reason: block.reason,
                    hits: Some((block.hits, block.bytes)),
                })
            };
            for (addr, block) in self.maps.blocklist_v4()?.entries()? {
                entries.extend(host(Cidr::from_v4_key(32, addr), block));
            }
            for (addr, block) in self.maps.blocklist_v6()?.entries()? {
                entries.extend(host(Cidr::from_v6_key(128, addr), block));
            }
        }
        Ok(entries)
    }
}

/// Inserts a batch into one map, all or nothing (see [`Table::insert_all`]).
fn insert<M: KeyOps>(
    mut table: Table<M>,
    batch: &Batch<M::Key, M::Value>,
) -> Result<Undo<M::Key, M::Value>, XdpError> {
    table.insert_all(&batch.keys, &batch.values)
}

/// Up to this size `lists.json` is rewritten on every change (a few milliseconds);
/// past it changes go to the journal.
const SMALL_SNAPSHOT: u64 = 1 << 20;

/// Refuses to journal over a `lists.json` that is visibly damaged (empty, cut
/// short, not a JSON object) without parsing all of it, which at a million entries
/// costs more than the change. The daemon parses it in full when it starts.
fn check_shape(lock: &ListsLock) -> Result<(), StateError> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let path = lock.path();
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let (mut head, mut tail) = ([0u8; 1], [0u8; 2]);
    let looks_whole = file.read_exact(&mut head).is_ok()
        && file.seek(SeekFrom::End(-2)).is_ok()
        && file.read_exact(&mut tail).is_ok()
        && head == *b"{"
        && tail == *b"}\n";
    if looks_whole {
        return Ok(());
    }
    // Parse it for the error that names the file and its last good copy.
    lock.load().map(drop)
}

/// Reads the saved lists in full, for the error when they cannot be read.
pub fn check_saved(state: &StateDir) -> Result<(), StateError> {
    load(&state.lock_lists()?, state).map(drop)
}

/// The saved lists: `lists.json` with the journal replayed on top.
fn load(lock: &ListsLock, state: &StateDir) -> Result<state::Lists, StateError> {
    let mut lists = lock.load()?;
    for op in journal::read_all(&journal::path(state))? {
        op.apply(&mut lists);
    }
    Ok(lists)
}

/// Writes `lists` as the new `lists.json` and empties the journal it includes.
fn compact(lock: &ListsLock, journal: &Path, lists: &state::Lists) -> Result<(), StateError> {
    lock.save(lists)?;
    journal::reset(journal)
}

/// Journal size past which the daemon folds it into `lists.json`: the size of
/// `lists.json` itself (so rewriting it costs at most as much as the changes it
/// absorbs), and at least 32 MiB.
fn compact_threshold(state: &StateDir) -> u64 {
    let snapshot = std::fs::metadata(state.path().join(state::LISTS)).map_or(0, |meta| meta.len());
    snapshot.max(32 << 20)
}

/// `cidrs` without repeats, in their first order.
fn unique(cidrs: &[Cidr]) -> Vec<Cidr> {
    let mut seen = HashSet::with_capacity(cidrs.len());
    cidrs
        .iter()
        .filter(|cidr| seen.insert(**cidr))
        .copied()
        .collect()
}

/// The shortest and longest pause between two checks of the kernel maps for entries
/// that another tool (bpftool) added or removed. In between, the pause is 100 times
/// what the last check took, so the checks cost at most 1% of a core.
const RECONCILE_MIN: Duration = Duration::from_secs(5);
const RECONCILE_MAX: Duration = Duration::from_secs(300);

/// The daemon's side of the lists: follows the journal into an [`ExpiryIndex`] and
/// removes entries when they expire.
pub struct Sweeper {
    index: ExpiryIndex,
    journal: journal::Reader,
    /// `lists.json` as last loaded (held open so that a rewrite is noticed).
    snapshot: Option<File>,
    next_reconcile: Instant,
}

impl Sweeper {
    /// [`Lists::restore`]s the saved lists into the kernel and indexes them; also
    /// returns how many entries were restored.
    pub fn start(lists: &Lists<'_>) -> Result<(Self, usize), ListError> {
        let lock = lists.state.lock_lists()?;
        let (restored, saved) = lists.restore_locked(&lock)?;
        let path = journal::path(lists.state);
        let mut journal = journal::Reader::open(&path)?;
        let mut index = ExpiryIndex::of(&saved);
        // Already in `saved`; replaying them again changes nothing.
        for op in journal.read_new(&path)? {
            index.apply(&op);
        }
        let sweeper = Self {
            index,
            journal,
            snapshot: File::open(lock.path()).ok(),
            next_reconcile: Instant::now() + RECONCILE_MIN,
        };
        Ok((sweeper, restored))
    }

    /// Reads `lists.json` and the journal afresh.
    fn reload(&mut self, lock: &ListsLock, state: &StateDir) -> Result<(), StateError> {
        let path = journal::path(state);
        let mut journal = journal::Reader::open(&path)?;
        self.snapshot = File::open(lock.path()).ok();
        let mut index = ExpiryIndex::of(&lock.load()?);
        for op in journal.read_new(&path)? {
            index.apply(&op);
        }
        (self.index, self.journal) = (index, journal);
        Ok(())
    }

    /// Whether `lists.json` is still the one last loaded.
    fn snapshot_is_current(&self, state: &StateDir) -> Result<bool, StateError> {
        let path = state.path().join(state::LISTS);
        match &self.snapshot {
            Some(file) => journal::is_same_file(file, &path),
            None => Ok(!path.exists()),
        }
    }

    /// Whether an entry is on its list (as of the last sweep).
    pub fn contains(&self, kind: ListKind, cidr: &Cidr) -> bool {
        self.index.contains(&(kind, *cidr))
    }

    /// Catches up with the journal; reloads everything when it was replaced.
    fn follow(&mut self, state: &StateDir, lock: Option<&ListsLock>) -> Result<(), ListError> {
        let path = journal::path(state);
        if self.journal.is_current(&path)? && self.snapshot_is_current(state)? {
            for op in self.journal.read_new(&path)? {
                self.index.apply(&op);
            }
            return Ok(());
        }
        match lock {
            Some(lock) => self.reload(lock, state)?,
            None => self.reload(&state.lock_lists()?, state)?,
        }
        Ok(())
    }

    /// Removes the entries whose TTL ran out from the kernel and the state, now and
    /// then adopts or forgets entries another tool changed in the kernel, and folds
    /// a long journal into `lists.json`. Costs what expired; the occasional map walk
    /// and fold are spaced so that they stay a small share of a core.
    pub fn sweep(&mut self, lists: &Lists<'_>) -> Result<Sweep, ListError> {
        let mut sweep = Sweep::default();
        self.follow(lists.state, None)?;
        let now = clock::unix_now();
        if !self.index.due(now).is_empty() {
            let lock = lists.state.lock_lists()?;
            self.follow(lists.state, Some(&lock))?;
            let due = self.index.due(now);
            let mut ops = Vec::with_capacity(due.len());
            for kind in [ListKind::Allow, ListKind::Block] {
                let cidrs: Vec<Cidr> = due
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, c)| *c)
                    .collect();
                lists.delete_all(kind, &cidrs)?;
                for cidr in cidrs {
                    self.index.remove(&(kind, cidr));
                    ops.push(Op::Remove { list: kind, cidr });
                    sweep.expired.push((kind, cidr));
                }
            }
            journal::append(&journal::path(lists.state), &ops)?;
        }
        if Instant::now() >= self.next_reconcile {
            let started = Instant::now();
            self.reconcile(lists)?;
            self.next_reconcile =
                Instant::now() + (started.elapsed() * 100).clamp(RECONCILE_MIN, RECONCILE_MAX);
        }
        if self.journal.offset() > compact_threshold(lists.state) {
            let lock = lists.state.lock_lists()?;
            self.follow(lists.state, Some(&lock))?;
            let path = journal::path(lists.state);
            compact(&lock, &path, &load(&lock, lists.state)?)?;
            self.reload(&lock, lists.state)?;
        }
        Ok(sweep)
    }

    /// Brings the state in line with entries another tool added to or removed from
    /// the kernel. The walk runs without the lock; only when it finds a difference
    /// is it repeated under the lock and the difference recorded.
    fn reconcile(&mut self, lists: &Lists<'_>) -> Result<(), ListError> {
        // Another tool's inserts set no `FILLED` flag; the program skips their map
        // until this sets it.
        lists.maps.refresh_filled()?;
        // A writer killed between its trie batches leaves derived values that its
        // own rules no longer explain. Writers hold the lock, so what still differs
        // under it is such a leftover.
        if lists.tries_stale()? {
            let _lock = lists.state.lock_lists()?;
            lists.rederive_tries()?;
        }
        if self.differences(lists)?.is_empty() {
            return Ok(());
        }
        let lock = lists.state.lock_lists()?;
        self.follow(lists.state, Some(&lock))?;
        let ops = self.differences(lists)?;
        for op in &ops {
            if let Op::Remove { list, cidr } = op
                && !self.index.contains(&(*list, *cidr))
            {
                // Another tool's entry that has expired: the kernel ignores it.
                lists.delete_all(*list, &[*cidr])?;
            }
            self.index.apply(op);
        }
        // Another tool wrote or deleted trie entries without re-deriving the prefixes
        // inside them.
        let in_trie = |op: &Op| match op {
            Op::Put { list, cidr, .. } | Op::Remove { list, cidr } => list.in_trie(cidr),
            Op::Flush { .. } => true,
        };
        if ops.iter().any(in_trie) {
            lists.rederive_tries()?;
        }
        journal::append(&journal::path(lists.state), &ops)?;
        Ok(())
    }

    /// What the state must record to match the kernel: a record for each live entry
    /// it lacks, and a removal for each entry the kernel no longer has (or has only
    /// as an expired entry nobody recorded).
    fn differences(&self, lists: &Lists<'_>) -> Result<Vec<Op>, ListError> {
        let now = clock::kernel_ns();
        let mut ops = Vec::new();
        for kind in [ListKind::Allow, ListKind::Block] {
            let mut seen = HashSet::new();
            for entry in lists.kernel_entries(kind)? {
                let key = (kind, entry.cidr);
                seen.insert(entry.cidr);
                if self.index.contains(&key) {
                    continue;
                }
                if expired(entry.expires_at_ns, now) {
                    ops.push(Op::Remove {
                        list: kind,
                        cidr: entry.cidr,
                    });
                    continue;
                }
                ops.push(Op::Put {
                    list: kind,
                    cidr: entry.cidr,
                    record: Record {
                        reason: reason_name(entry.reason).to_owned(),
                        source: Source::Kernel,
                        added_at: clock::unix_now(),
                        expires_at: (entry.expires_at_ns != NO_EXPIRY)
                            .then(|| clock::unix_at_kernel_ns(entry.expires_at_ns)),
                        fleet: None,
                    },
                });
            }
            ops.extend(
                self.index
                    .keys()
                    .filter(|(k, cidr)| *k == kind && !seen.contains(cidr))
                    .map(|(_, cidr)| Op::Remove {
                        list: kind,
                        cidr: *cidr,
                    }),
            );
        }
        Ok(ops)
    }
}

fn expired(expires_at_ns: u64, now: u64) -> bool {
    expires_at_ns != NO_EXPIRY && now >= expires_at_ns
}

fn reason_code(source: Source) -> u32 {
    match source {
        Source::Cli | Source::Config | Source::Fleet => block_reason::MANUAL,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_up_to_a_year_pass_and_longer_ones_are_refused() {
        assert_eq!(check_ttl(Duration::from_secs(1)), Ok(()));
        assert_eq!(check_ttl(MAX_TTL), Ok(()));
        let err = check_ttl(MAX_TTL + Duration::from_nanos(1)).expect_err("past the bound");
        assert!(err.to_string().contains("maximum of 365 days"), "{err}");
        let err = check_ttl(Duration::from_secs(u64::MAX)).expect_err("u64::MAX seconds");
        assert!(err.to_string().contains("maximum of 365 days"), "{err}");
        // The bound keeps every expiry computation far from overflow.
        assert!(clock::unix_now().checked_add(MAX_TTL.as_secs()).is_some());
        assert!(
            clock::kernel_ns()
                .checked_add(MAX_TTL.as_nanos() as u64)
                .is_some()
        );
    }

    #[test]
    fn entry_files_allow_comments_and_blank_lines() {
        let text = "\u{feff}# scanners\n198.18.0.1\n\n  198.18.1.0/24  # a range\r\n2001:2::7\n";
        let entries = read_entries(text.as_bytes(), "list.txt").expect("valid");
        assert_eq!(
            entries.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["198.18.0.1", "198.18.1.0/24", "2001:2::7"]
        );
        assert!(read_entries(&b""[..], "empty").expect("empty").is_empty());
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let err = read_entries(&b"198.18.0.1\n\n198.18.0.300\n"[..], "list.txt").expect_err("bad");
        let text = err.to_string();
        assert!(
            text.contains("list.txt, line 3") && text.contains("198.18.0.300"),
            "{text}"
        );
        let err = read_entries(&b"198.18.0.7/24\n"[..], "-").expect_err("host bits");
        assert!(err.to_string().contains("line 1"), "{err}");
        let long = format!("198.18.0.1\n{}\n", "1".repeat(MAX_LINE + 10));
        let err = read_entries(long.as_bytes(), "long").expect_err("too long");
        assert!(err.to_string().contains("line 2: longer than"), "{err}");
        let err = read_entries(&b"198.18.0.1\n\xff\xfe\n"[..], "bin").expect_err("binary");
        assert!(err.to_string().contains("line 2: not UTF-8"), "{err}");
        // A line without its newline still counts.
        let err = read_entries(&b"198.18.0.1\nnope"[..], "tail").expect_err("last line");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn unique_keeps_first_order() {
        let cidrs: Vec<Cidr> = ["198.18.0.2", "198.18.0.1", "198.18.0.2"]
            .iter()
            .map(|text| text.parse().expect("cidr"))
            .collect();
        assert_eq!(unique(&cidrs), cidrs[..2]);
    }
}
