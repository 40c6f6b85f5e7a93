//! The CIDR tries: one LPM trie per family holds the prefixes of both the allowlist
//! and the CIDR blocklist, so the XDP program walks one trie for both.
//!
//! An LPM lookup finds the longest listed prefix `P` containing the source, and every
//! listed prefix containing the source is `P` or a shorter prefix containing `P`. So
//! each entry's value carries what `P` and all its listed ancestors decide together
//! ([`derive`]): allowlisted until the latest expiry of any allowlisted one among them,
//! CIDR-blocked likewise. That keeps the documented precedence (the allowlist wins,
//! whatever the prefix lengths) with one walk, and an expired longer prefix no longer
//! hides a live shorter one. The price is paid here: a change to a prefix re-derives
//! it and every listed prefix inside it ([`Union::apply`]).
//!
//! Each entry also keeps its own rules (the `own_*` fields), so the kernel map alone
//! says what is listed: [`Union`] is read back from it before every change, with no
//! need for the state directory (which may hold a million host blocks).

use std::collections::BTreeMap;

use gateway_common::{
    consts::{NO_EXPIRY, cidr_flags},
    maps::CidrRule,
};

use super::ListKind;
use crate::addr::Cidr;

/// One list's rule on one prefix: its expiry (kernel clock, [`NO_EXPIRY`] for
/// never) and reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub expires_at_ns: u64,
    pub reason: u32,
}

/// What the two lists hold for one prefix itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Own {
    pub allow: Option<Rule>,
    pub block: Option<Rule>,
}

impl Own {
    /// The own rules a trie value records.
    pub fn of(value: &CidrRule) -> Self {
        let rule = |flag, expires_at_ns, reason| {
            (value.flags & flag != 0).then_some(Rule {
                expires_at_ns,
                reason,
            })
        };
        Self {
            allow: rule(
                cidr_flags::ALLOWLISTED,
                value.own_allow_expires_at_ns,
                value.own_allow_reason,
            ),
            block: rule(
                cidr_flags::BLOCKLISTED,
                value.own_block_expires_at_ns,
                value.own_block_reason,
            ),
        }
    }

    /// The rule of `kind`.
    pub fn get(&self, kind: ListKind) -> Option<Rule> {
        match kind {
            ListKind::Allow => self.allow,
            ListKind::Block => self.block,
        }
    }

    fn slot(&mut self, kind: ListKind) -> &mut Option<Rule> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Block => &mut self.block,
        }
    }

    fn is_empty(&self) -> bool {
        self.allow.is_none() && self.block.is_none()
    }
}

/// The later-ending of two rules of one list; on a tie `b` (the longer prefix, whose
/// reason is the more specific).
fn later(a: Option<Rule>, b: Option<Rule>) -> Option<Rule> {
    let end = |rule: &Rule| match rule.expires_at_ns {
        NO_EXPIRY => u64::MAX,
        at => at,
    };
    match (a, b) {
        (Some(a), Some(b)) if end(&a) > end(&b) => Some(a),
        (a, None) => a,
        (_, b) => b,
    }
}

/// The trie value of a prefix with `own` rules, under a nearest listed ancestor whose
/// value is `parent` (`None`: no listed prefix contains it).
pub fn derive(parent: Option<&CidrRule>, own: Own) -> CidrRule {
    let inherited = |flag: u32, expiry: fn(&CidrRule) -> u64| {
        parent
            .filter(|parent| parent.flags & flag != 0)
            .map(|parent| Rule {
                expires_at_ns: expiry(parent),
                reason: 0,
            })
    };
    let allow = later(
        inherited(cidr_flags::ALLOW, |p| p.allow_expires_at_ns),
        own.allow,
    );
    let block = later(
        inherited(cidr_flags::BLOCK, |p| p.block_expires_at_ns),
        own.block,
    );
    let mut value = CidrRule::default();
    for (flag, on) in [
        (cidr_flags::ALLOW, allow.is_some()),
        (cidr_flags::BLOCK, block.is_some()),
        (cidr_flags::ALLOWLISTED, own.allow.is_some()),
        (cidr_flags::BLOCKLISTED, own.block.is_some()),
    ] {
        if on {
            value.flags |= flag;
        }
    }
    value.allow_expires_at_ns = allow.map_or(NO_EXPIRY, |rule| rule.expires_at_ns);
    value.block_expires_at_ns = block.map_or(NO_EXPIRY, |rule| rule.expires_at_ns);
    if let Some(rule) = own.allow {
        value.own_allow_expires_at_ns = rule.expires_at_ns;
        value.own_allow_reason = rule.reason;
    }
    if let Some(rule) = own.block {
        value.own_block_expires_at_ns = rule.expires_at_ns;
        value.own_block_reason = rule.reason;
    }
    value
}

/// Roughly what re-deriving from one root costs beyond the prefixes it covers, in
/// entries an ordered pass would visit instead: its ancestor lookups.
const ANCESTOR_LOOKUPS: usize = 64;

/// The prefixes that cover everything: `0.0.0.0/0` and `::/0`.
fn tops() -> Vec<Cidr> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|top| top.parse().ok())
        .collect()
}

/// A change to one list's rule on one prefix: `Some` puts (or replaces) it, `None`
/// removes it.
pub type Change = (Cidr, ListKind, Option<Rule>);

/// What the trie must become: new values to write and prefixes to delete, each with
/// the value the trie held before (for an undo).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Writes {
    /// Prefixes and their new values.
    pub put: Vec<(Cidr, CidrRule)>,
    /// Prefixes on neither list any more, with their old values.
    pub delete: Vec<(Cidr, CidrRule)>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// The listed prefixes (both families) with their own rules and their values as the
/// trie holds them (`None`: not in the trie yet).
#[derive(Debug, Default)]
pub struct Union {
    entries: BTreeMap<Cidr, (Own, Option<CidrRule>)>,
}

impl Union {
    /// The union as read from the tries: every (prefix, value).
    pub fn of(entries: impl IntoIterator<Item = (Cidr, CidrRule)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(cidr, value)| (cidr, (Own::of(&value), Some(value))))
                .collect(),
        }
    }

    /// Every prefix on `kind`'s list, with its rule.
    pub fn listed(&self, kind: ListKind) -> impl Iterator<Item = (Cidr, Rule)> + '_ {
        self.entries
            .iter()
            .filter_map(move |(cidr, (own, _))| own.get(kind).map(|rule| (*cidr, rule)))
    }

    /// Applies `changes` and returns the writes that bring the trie in line: the
    /// changed prefixes and every listed prefix inside one of them, re-derived, and
    /// the changed prefixes that are on neither list any more, deleted. Also returns,
    /// for each change, whether its prefix was on its list before.
    pub fn apply(&mut self, changes: &[Change]) -> (Writes, Vec<bool>) {
        let mut found = Vec::with_capacity(changes.len());
        let mut old: BTreeMap<Cidr, Option<CidrRule>> = BTreeMap::new();
        for (cidr, kind, rule) in changes {
            let before = self.entries.get(cidr).and_then(|(_, value)| *value);
            old.entry(*cidr).or_insert(before);
            let (own, _) = self.entries.entry(*cidr).or_default();
            found.push(own.get(*kind).is_some());
            *own.slot(*kind) = *rule;
        }
        let mut writes = Writes::default();
        for (cidr, before) in &old {
            if self
                .entries
                .get(cidr)
                .is_some_and(|(own, _)| own.is_empty())
            {
                self.entries.remove(cidr);
                if let Some(before) = before {
                    writes.delete.push((*cidr, *before));
                }
            }
        }
        // Each changed prefix not inside another changed one roots a re-derivation of
        // everything it covers (`old` is in order, so a root precedes what it covers).
        let mut roots: Vec<Cidr> = Vec::new();
        for cidr in old.keys() {
            if roots.last().is_none_or(|root| !root.covers(cidr)) {
                roots.push(*cidr);
            }
        }
        // A root first looks up each of its up to 128 possible ancestors; past a
        // point one ordered pass over everything is cheaper (a bulk add).
        if roots.len().saturating_mul(ANCESTOR_LOOKUPS) > self.entries.len() {
            roots = tops();
        }
        for root in roots {
            self.rederive(root, &mut writes);
        }
        (writes, found)
    }

    /// Re-derives every listed prefix and deletes entries that list nothing: for
    /// entries another tool wrote.
    pub fn rederive_all(&mut self) -> Writes {
        let mut writes = Writes::default();
        self.entries.retain(|cidr, (own, value)| {
            if let (true, Some(value)) = (own.is_empty(), value) {
                writes.delete.push((*cidr, *value));
            }
            !own.is_empty()
        });
        for top in tops() {
            self.rederive(top, &mut writes);
        }
        writes
    }

    /// Re-derives `root` (if listed) and every listed prefix it covers, in one ordered
    /// pass with a stack of the ancestors seen, into `writes` where a value changes.
    fn rederive(&mut self, root: Cidr, writes: &mut Writes) {
        let above = self.inherited(&root);
        let mut stack: Vec<(Cidr, CidrRule)> = Vec::new();
        for (cidr, (own, value)) in self.entries.range_mut(root..=root.last_covered()) {
            while stack.last().is_some_and(|(top, _)| !top.covers(cidr)) {
                stack.pop();
            }
            let parent = stack.last().map(|(_, value)| value).or(above.as_ref());
            let derived = derive(parent, *own);
            stack.push((*cidr, derived));
            if *value != Some(derived) {
                writes.put.push((*cidr, derived));
                *value = Some(derived);
            }
        }
    }

    /// The value of `cidr`'s nearest listed ancestor, derived from all of them.
    fn inherited(&self, cidr: &Cidr) -> Option<CidrRule> {
        let mut ancestors = Vec::new();
        let mut at = cidr.parent();
        while let Some(ancestor) = at {
            ancestors.push(ancestor);
            at = ancestor.parent();
        }
        ancestors
            .iter()
            .rev()
            .fold(None, |above, ancestor| match self.entries.get(ancestor) {
                Some((own, _)) => Some(derive(above.as_ref(), *own)),
                None => above,
            })
    }
}

#[cfg(test)]
mod tests;
