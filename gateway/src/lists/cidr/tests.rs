//! The derivation against a model of the kernel: the trie as the writes leave it,
//! looked up the way the XDP program does (longest prefix, then allow before block).

use std::collections::BTreeMap;

use super::*;

/// The trie as the writes left it.
#[derive(Default)]
struct Kernel {
    trie: BTreeMap<Cidr, CidrRule>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allow,
    Block,
    Neither,
}

impl Kernel {
    fn write(&mut self, writes: &Writes) {
        for (cidr, value) in &writes.put {
            self.trie.insert(*cidr, *value);
        }
        for (cidr, old) in &writes.delete {
            assert_eq!(self.trie.remove(cidr), Some(*old), "{cidr} deleted");
        }
    }

    /// What the program decides for `source` at kernel time `now`.
    fn verdict(&self, source: &str, now: u64) -> Verdict {
        let host: Cidr = source.parse().expect("address");
        let Some(value) = self
            .trie
            .iter()
            .filter(|(cidr, _)| cidr.covers(&host))
            .max_by_key(|(cidr, _)| cidr.prefix_len())
            .map(|(_, value)| value)
        else {
            return Neither;
        };
        let live = |flag, at| value.flags & flag != 0 && (at == NO_EXPIRY || now < at);
        if live(cidr_flags::ALLOW, value.allow_expires_at_ns) {
            Verdict::Allow
        } else if live(cidr_flags::BLOCK, value.block_expires_at_ns) {
            Verdict::Block
        } else {
            Neither
        }
    }
}

/// A union and the kernel trie it keeps in step.
#[derive(Default)]
struct Rig {
    union: Union,
    kernel: Kernel,
}

impl Rig {
    fn change(&mut self, changes: &[(&str, ListKind, Option<u64>)]) -> Vec<bool> {
        let changes: Vec<Change> = changes
            .iter()
            .map(|(cidr, kind, expires)| {
                let rule = expires.map(|expires_at_ns| Rule {
                    expires_at_ns,
                    reason: 1,
                });
                (cidr.parse().expect("cidr"), *kind, rule)
            })
            .collect();
        let (writes, found) = self.union.apply(&changes);
        self.kernel.write(&writes);
        self.check_against_fresh_derivation();
        found
    }

    fn put(&mut self, cidr: &str, kind: ListKind, expires_at_ns: u64) {
        self.change(&[(cidr, kind, Some(expires_at_ns))]);
    }

    fn remove(&mut self, cidr: &str, kind: ListKind) -> bool {
        self.change(&[(cidr, kind, None)])[0]
    }

    /// Whatever the order of changes, the trie equals a derivation from scratch of
    /// what is listed, read back from the trie alone.
    fn check_against_fresh_derivation(&self) {
        let mut fresh = Union::of(self.kernel.trie.iter().map(|(cidr, value)| {
            let own = Own::of(value);
            (*cidr, derive(None, own))
        }));
        let writes = fresh.rederive_all();
        let mut rebuilt = Kernel {
            trie: self
                .kernel
                .trie
                .keys()
                .map(|cidr| (*cidr, derive(None, Own::of(&self.kernel.trie[cidr]))))
                .collect(),
        };
        rebuilt.write(&writes);
        assert_eq!(rebuilt.trie, self.kernel.trie);
    }

    fn verdict(&self, source: &str) -> Verdict {
        self.kernel.verdict(source, 1)
    }
}

const NEVER: u64 = NO_EXPIRY;
use ListKind::{Allow, Block};
use Verdict::{Allow as Pass, Block as Drop, Neither};

#[test]
fn an_allowlisted_prefix_inside_a_blocked_one_passes_and_the_rest_drops() {
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Block, NEVER);
    rig.put("198.18.1.0/24", Allow, NEVER);
    assert_eq!(rig.verdict("198.18.1.5"), Pass);
    assert_eq!(rig.verdict("198.18.2.5"), Drop);
    assert_eq!(rig.verdict("198.19.0.1"), Neither);
}

#[test]
fn a_blocked_prefix_inside_an_allowlisted_one_still_passes() {
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Allow, NEVER);
    rig.put("198.18.1.0/24", Block, NEVER);
    // The longest match is the blocked /24, which carries the /16's allow.
    assert_eq!(rig.verdict("198.18.1.5"), Pass);
    assert_eq!(rig.verdict("198.18.2.5"), Pass);
    // Added the other way round, the same.
    let mut rig = Rig::default();
    rig.put("198.18.1.0/24", Block, NEVER);
    rig.put("198.18.0.0/16", Allow, NEVER);
    assert_eq!(rig.verdict("198.18.1.5"), Pass);
}

#[test]
fn a_prefix_on_both_lists_passes() {
    let mut rig = Rig::default();
    rig.put("198.18.4.0/24", Block, NEVER);
    rig.put("198.18.4.0/24", Allow, NEVER);
    assert_eq!(rig.verdict("198.18.4.9"), Pass);
    assert_eq!(rig.kernel.trie.len(), 1, "one entry for both lists");
    assert!(rig.remove("198.18.4.0/24", Allow));
    assert_eq!(rig.verdict("198.18.4.9"), Drop);
    assert!(rig.remove("198.18.4.0/24", Block));
    assert!(rig.kernel.trie.is_empty(), "on neither list: deleted");
}

#[test]
fn a_shorter_allow_that_outlives_a_longer_block_keeps_passing() {
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Allow, 200);
    rig.put("198.18.1.0/24", Block, 100);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 150), Pass);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 250), Neither);
    // A block that outlives the allow takes over when the allow ends.
    rig.put("198.18.1.0/24", Block, 300);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 150), Pass);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 250), Drop);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 350), Neither);
}

#[test]
fn an_expired_longer_prefix_never_hides_a_live_shorter_one() {
    let mut rig = Rig::default();
    // A longer allow that ends first: then the shorter block decides.
    rig.put("198.18.0.0/16", Block, 200);
    rig.put("198.18.1.0/24", Allow, 100);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 50), Pass);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 150), Drop);
    // Same list: a permanent /16 outlasts the /24's expiry.
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Block, NEVER);
    rig.put("198.18.1.0/24", Block, 100);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 150), Drop);
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Allow, NEVER);
    rig.put("198.18.1.0/24", Allow, 100);
    rig.put("198.18.1.0/25", Block, NEVER);
    assert_eq!(rig.kernel.verdict("198.18.1.5", 150), Pass);
}

#[test]
fn removing_a_prefix_re_derives_everything_inside_it() {
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Allow, NEVER);
    rig.put("198.18.1.0/24", Block, NEVER);
    rig.put("198.18.1.128/25", Block, NEVER);
    rig.put("198.18.1.7/32", Allow, NEVER);
    rig.put("198.18.2.0/24", Block, NEVER);
    assert_eq!(rig.verdict("198.18.1.200"), Pass);
    assert!(rig.remove("198.18.0.0/16", Allow));
    assert!(
        !rig.kernel
            .trie
            .contains_key(&"198.18.0.0/16".parse().expect("cidr"))
    );
    assert_eq!(rig.verdict("198.18.1.200"), Drop, "in the /25");
    assert_eq!(rig.verdict("198.18.1.5"), Drop, "in the /24");
    assert_eq!(rig.verdict("198.18.1.7"), Pass, "its own allow");
    assert_eq!(rig.verdict("198.18.2.5"), Drop);
    assert_eq!(rig.verdict("198.18.3.5"), Neither);
    // Removing what is not listed finds nothing and changes nothing.
    let before = rig.kernel.trie.clone();
    assert!(!rig.remove("198.18.0.0/16", Allow));
    assert!(
        !rig.remove("198.18.1.0/24", Allow),
        "on the other list only"
    );
    assert_eq!(rig.kernel.trie, before);
}

#[test]
fn a_block_prefix_removed_from_under_an_allow_leaves_the_allow() {
    let mut rig = Rig::default();
    rig.put("198.18.0.0/15", Block, NEVER);
    rig.put("198.18.0.0/16", Allow, NEVER);
    rig.put("198.18.0.0/24", Block, NEVER);
    assert!(rig.remove("198.18.0.0/15", Block));
    assert_eq!(rig.verdict("198.18.0.1"), Pass);
    assert_eq!(rig.verdict("198.19.0.1"), Neither);
    assert!(rig.remove("198.18.0.0/16", Allow));
    assert_eq!(rig.verdict("198.18.0.1"), Drop);
    assert_eq!(rig.verdict("198.18.1.1"), Neither);
}

#[test]
fn the_families_are_apart_and_a_mapped_ipv6_prefix_is_the_ipv4_one() {
    let mut rig = Rig::default();
    rig.put("::/0", Allow, NEVER);
    rig.put("198.18.0.0/16", Block, NEVER);
    rig.put("2001:2::/48", Block, NEVER);
    assert_eq!(rig.verdict("198.18.0.1"), Drop, "::/0 covers IPv6 only");
    assert_eq!(rig.verdict("2001:2::1"), Pass);
    rig.put("0.0.0.0/0", Allow, NEVER);
    assert_eq!(rig.verdict("198.18.0.1"), Pass);
    assert!(rig.remove("::/0", Allow));
    assert_eq!(rig.verdict("2001:2::1"), Drop, "0.0.0.0/0 covers IPv4 only");
    // `::ffff:198.18.0.0/112` is 198.18.0.0/16: allowing it is allowing the /16.
    let mut rig = Rig::default();
    rig.put("198.18.1.0/24", Block, NEVER);
    rig.put("::ffff:198.18.0.0/112", Allow, NEVER);
    assert_eq!(rig.verdict("198.18.1.1"), Pass);
    assert!(rig.remove("198.18.0.0/16", Allow));
    assert_eq!(rig.verdict("198.18.1.1"), Drop);
}

#[test]
fn putting_what_is_there_writes_nothing() {
    let mut rig = Rig::default();
    rig.put("198.18.0.0/16", Allow, NEVER);
    rig.put("198.18.1.0/24", Block, NEVER);
    let change: Change = (
        "198.18.0.0/16".parse().expect("cidr"),
        Allow,
        Some(Rule {
            expires_at_ns: NEVER,
            reason: 1,
        }),
    );
    let (writes, found) = rig.union.apply(&[change]);
    assert_eq!(found, [true]);
    assert_eq!(writes, Writes::default());
}

#[test]
fn many_changes_at_once_match_the_same_changes_one_by_one() {
    let changes = [
        ("198.18.0.0/16", Block, Some(NEVER)),
        ("198.18.1.0/24", Allow, Some(100)),
        ("198.18.0.0/15", Allow, Some(50)),
        ("198.18.1.128/25", Block, Some(NEVER)),
        ("198.18.0.0/16", Block, None),
        ("2001:2::/48", Allow, Some(NEVER)),
        ("2001:2:0:1::/64", Block, Some(NEVER)),
    ];
    let mut together = Rig::default();
    together.change(&changes);
    let mut one_by_one = Rig::default();
    for change in changes {
        one_by_one.change(&[change]);
    }
    assert_eq!(together.kernel.trie, one_by_one.kernel.trie);
    for now in [10, 75, 150] {
        assert_eq!(
            together.kernel.verdict("198.18.1.200", now),
            one_by_one.kernel.verdict("198.18.1.200", now)
        );
    }
    assert_eq!(together.kernel.verdict("198.18.1.200", 75), Pass);
    assert_eq!(together.kernel.verdict("198.18.1.200", 150), Drop);
    assert_eq!(together.verdict("2001:2:0:1::9"), Pass);
}

#[test]
fn a_rederivation_repairs_values_another_tool_wrote() {
    // Own rules right, derived parts missing (as a bpftool user might write them),
    // and an entry that lists nothing.
    let bare = |own: Own| derive(None, own);
    let rule = Some(Rule {
        expires_at_ns: NEVER,
        reason: 1,
    });
    let entries = [
        (
            "198.18.0.0/16",
            bare(Own {
                allow: rule,
                block: None,
            }),
        ),
        (
            "198.18.1.0/24",
            bare(Own {
                allow: None,
                block: rule,
            }),
        ),
        ("198.18.9.0/24", CidrRule::default()),
    ];
    let mut kernel = Kernel {
        trie: entries
            .iter()
            .map(|(cidr, value)| (cidr.parse().expect("cidr"), *value))
            .collect(),
    };
    assert_eq!(kernel.verdict("198.18.1.1", 1), Drop, "before the repair");
    let mut union = Union::of(kernel.trie.clone());
    kernel.write(&union.rederive_all());
    assert_eq!(kernel.verdict("198.18.1.1", 1), Pass);
    assert_eq!(kernel.trie.len(), 2, "the empty entry is gone");
}

#[test]
fn one_change_among_many_entries_re_derives_what_it_covers_and_nothing_else() {
    let mut rig = Rig::default();
    // Enough entries that a single change re-derives from its own ancestors rather
    // than in one pass over everything.
    let hosts: Vec<String> = (0..200)
        .map(|i| format!("198.18.{}.{}", 200 + i / 100, i % 100))
        .collect();
    let puts: Vec<(&str, ListKind, Option<u64>)> = hosts
        .iter()
        .map(|host| (host.as_str(), Allow, Some(NEVER)))
        .collect();
    rig.change(&puts);
    assert!(rig.union.entries.len() > ANCESTOR_LOOKUPS);
    let apply = |rig: &mut Rig, cidr: &str, kind, rule: Option<u64>| {
        let rule = rule.map(|expires_at_ns| Rule {
            expires_at_ns,
            reason: 1,
        });
        let (writes, _) = rig
            .union
            .apply(&[(cidr.parse().expect("cidr"), kind, rule)]);
        rig.kernel.write(&writes);
        rig.check_against_fresh_derivation();
        writes
    };
    // A block around 100 of the hosts rewrites it and them, nothing else.
    let writes = apply(&mut rig, "198.18.200.0/24", Block, Some(NEVER));
    assert_eq!((writes.put.len(), writes.delete.len()), (101, 0));
    // Beside them: one write.
    assert_eq!(
        apply(&mut rig, "198.18.5.0/24", Allow, Some(NEVER))
            .put
            .len(),
        1
    );
    // Around everything: what gains a block (the /16, the other 100 hosts, the
    // allowed /24); the hosts blocked already keep their value.
    assert_eq!(
        apply(&mut rig, "198.18.0.0/16", Block, Some(NEVER))
            .put
            .len(),
        102
    );
    assert_eq!(rig.verdict("198.18.201.5"), Pass);
    assert_eq!(rig.verdict("198.18.202.5"), Drop);
    // And back.
    let writes = apply(&mut rig, "198.18.0.0/16", Block, None);
    assert_eq!((writes.put.len(), writes.delete.len()), (101, 1));
    assert_eq!(rig.verdict("198.18.200.5"), Pass);
    assert_eq!(rig.verdict("198.18.200.150"), Drop);
    assert_eq!(rig.verdict("198.18.202.5"), Neither);
}
