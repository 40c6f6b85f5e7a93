//! The daemon's view of which list entries exist and when each expires, ordered by
//! deadline, so the per-second sweep looks only at what is due: finding the expired
//! entries costs O(log n + expired), not a walk of every entry.

use std::collections::{BTreeSet, HashMap};

use super::ListKind;
use crate::{addr::Cidr, state};

/// One list entry, as the index names it.
pub type Key = (ListKind, Cidr);

/// Every known entry with its expiry (Unix seconds; `None` for never).
#[derive(Debug, Default)]
pub struct ExpiryIndex {
    deadlines: HashMap<Key, Option<u64>>,
    by_deadline: BTreeSet<(u64, Key)>,
}

impl ExpiryIndex {
    /// The index of everything in `lists`.
    pub fn of(lists: &state::Lists) -> Self {
        let mut index = Self::default();
        for (kind, records) in [
            (ListKind::Allow, &lists.allowlist),
            (ListKind::Block, &lists.blocklist),
        ] {
            for (cidr, record) in records {
                index.insert((kind, *cidr), record.expires_at);
            }
        }
        index
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, key: Key, expires_at: Option<u64>) {
        if let Some(Some(old)) = self.deadlines.insert(key, expires_at) {
            self.by_deadline.remove(&(old, key));
        }
        if let Some(at) = expires_at {
            self.by_deadline.insert((at, key));
        }
    }

    /// Forgets an entry; true when it was known.
    pub fn remove(&mut self, key: &Key) -> bool {
        match self.deadlines.remove(key) {
            Some(Some(at)) => {
                self.by_deadline.remove(&(at, *key));
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Forgets every entry of one list.
    pub fn clear(&mut self, kind: ListKind) {
        self.deadlines.retain(|(k, _), _| *k != kind);
        self.by_deadline.retain(|(_, (k, _))| *k != kind);
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.deadlines.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.deadlines.keys()
    }

    /// The entries whose expiry is at or before `now` (Unix seconds), earliest
    /// first; they stay in the index until [`remove`](Self::remove)d.
    pub fn due(&self, now: u64) -> Vec<Key> {
        self.by_deadline
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| *key)
            .collect()
    }

    /// Applies one journal entry.
    pub fn apply(&mut self, op: &super::journal::Op) {
        use super::journal::Op;
        match op {
            Op::Put { list, cidr, record } => self.insert((*list, *cidr), record.expires_at),
            Op::Remove { list, cidr } => {
                self.remove(&(*list, *cidr));
            }
            Op::Flush { list } => self.clear(*list),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("cidr")
    }

    #[test]
    fn due_returns_exactly_what_expired_earliest_first() {
        let mut index = ExpiryIndex::default();
        index.insert((ListKind::Block, cidr("198.18.0.3")), Some(30));
        index.insert((ListKind::Block, cidr("198.18.0.1")), Some(10));
        index.insert((ListKind::Allow, cidr("198.18.1.0/24")), Some(20));
        index.insert((ListKind::Block, cidr("2001:2::1")), None);
        assert!(index.due(9).is_empty());
        assert_eq!(index.due(10), vec![(ListKind::Block, cidr("198.18.0.1"))]);
        assert_eq!(
            index.due(25),
            vec![
                (ListKind::Block, cidr("198.18.0.1")),
                (ListKind::Allow, cidr("198.18.1.0/24")),
            ]
        );
        // A permanent entry is never due, however late it gets.
        assert_eq!(index.due(u64::MAX).len(), 3);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn replacing_an_entry_moves_its_deadline() {
        let mut index = ExpiryIndex::default();
        let key = (ListKind::Block, cidr("198.18.0.1"));
        index.insert(key, Some(10));
        index.insert(key, Some(100));
        assert!(index.due(50).is_empty(), "the old deadline is gone");
        assert_eq!(index.due(100), vec![key]);
        index.insert(key, None);
        assert!(index.due(u64::MAX).is_empty(), "now permanent");
        assert!(index.contains(&key));
        assert!(index.remove(&key));
        assert!(!index.remove(&key));
        assert!(index.is_empty());
    }

    #[test]
    fn clear_forgets_one_list_only() {
        let mut index = ExpiryIndex::default();
        index.insert((ListKind::Block, cidr("198.18.0.1")), Some(5));
        index.insert((ListKind::Allow, cidr("198.18.0.1")), Some(5));
        index.clear(ListKind::Block);
        assert_eq!(index.due(5), vec![(ListKind::Allow, cidr("198.18.0.1"))]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_large_index_finds_the_few_due_entries() {
        let mut index = ExpiryIndex::default();
        for i in 0..100_000u32 {
            let ip = std::net::Ipv4Addr::from(0xc612_0000 + i);
            index.insert(
                (ListKind::Block, Cidr::host(ip.into())),
                Some(1_000 + u64::from(i)),
            );
        }
        assert_eq!(index.due(1_004).len(), 5);
        for key in index.due(1_004) {
            index.remove(&key);
        }
        assert_eq!(index.len(), 99_995);
        assert!(index.due(1_004).is_empty());
    }
}
