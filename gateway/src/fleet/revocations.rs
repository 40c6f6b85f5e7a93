//! Shared revocations: `gateway token revoke` on any edge is refused on every
//! edge. The CLI writes the local denylist as before; the daemon notices the
//! change, publishes it (key `jti:<id>` or `sub:<id>` in `{prefix}:revocations`)
//! and every other edge writes it into its own `revocations.json` and re-reads
//! it. The denylist is checked on every request, verified-token cache hits and
//! requests on open keep-alive connections included, so a revocation applies
//! from the next request on.

use std::collections::{BTreeMap, HashSet};

use super::{
    blocks::{Refused, check_common},
    stream::Wire,
};
use crate::{
    auth::revocation::{Denylist, Revocation},
    state::{REVOCATIONS, Shared, StateDir, StateError},
};

/// The longest token id or subject accepted from Redis.
const MAX_ID: usize = 512;

/// Which list of the denylist a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Jti,
    Sub,
}

fn list(denylist: &mut Denylist, kind: Kind) -> &mut BTreeMap<String, Revocation> {
    match kind {
        Kind::Jti => &mut denylist.jti,
        Kind::Sub => &mut denylist.sub,
    }
}

fn key(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Jti => format!("jti:{id}"),
        Kind::Sub => format!("sub:{id}"),
    }
}

fn split(key: &str) -> Option<(Kind, &str)> {
    if let Some(id) = key.strip_prefix("jti:") {
        Some((Kind::Jti, id))
    } else {
        key.strip_prefix("sub:").map(|id| (Kind::Sub, id))
    }
}

/// A revocation's version: the fleet's, or (made here) when it was added.
fn version(revocation: &Revocation) -> u64 {
    revocation
        .fleet
        .as_ref()
        .map_or(revocation.added_at.saturating_mul(1000), |shared| {
            shared.version
        })
}

/// Every revocation this edge holds, as it goes to Redis (this node's own
/// and the fleet's alike, so an emptied Redis is made whole again).
pub fn held(denylist: &Denylist, node: &str) -> Vec<Wire> {
    let entries = |kind: Kind, map: &BTreeMap<String, Revocation>| {
        map.iter()
            .map(|(id, revocation)| wire(kind, id, revocation, node))
            .collect::<Vec<_>>()
    };
    let mut all = entries(Kind::Jti, &denylist.jti);
    all.extend(entries(Kind::Sub, &denylist.sub));
    all
}

fn wire(kind: Kind, id: &str, revocation: &Revocation, node: &str) -> Wire {
    Wire {
        key: key(kind, id),
        origin: revocation
            .fleet
            .as_ref()
            .map_or_else(|| node.to_owned(), |shared| shared.origin.clone()),
        reason: revocation.reason.clone(),
        version: version(revocation),
        expires_at_ms: revocation.until.map(|until| until.saturating_mul(1000)),
    }
}

/// What changed locally between `old` and `new` (the CLI wrote the file): the
/// revocations to publish, and the keys removed.
pub fn changes(old: &Denylist, new: &Denylist, node: &str) -> (Vec<Wire>, Vec<String>) {
    let mut puts = Vec::new();
    let mut removed = Vec::new();
    for (kind, before, after) in [
        (Kind::Jti, &old.jti, &new.jti),
        (Kind::Sub, &old.sub, &new.sub),
    ] {
        for (id, revocation) in after {
            if before.get(id) != Some(revocation) {
                puts.push(wire(kind, id, revocation, node));
            }
        }
        removed.extend(
            before
                .keys()
                .filter(|id| !after.contains_key(*id))
                .map(|id| key(kind, id)),
        );
    }
    (puts, removed)
}

/// A revocation read from Redis, or why not.
pub fn accept(wire: &Wire, now_ms: u64) -> Result<(Kind, String, Revocation), Refused> {
    let (kind, id) = split(&wire.key)
        .ok_or_else(|| Refused::Invalid(format!("{:?} is not jti:… or sub:…", wire.key)))?;
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(Refused::Invalid(format!(
            "an id of {} bytes (1 to {MAX_ID}, no control characters)",
            id.len()
        )));
    }
    check_common(wire, now_ms)?;
    Ok((
        kind,
        id.to_owned(),
        Revocation {
            reason: wire.reason.clone(),
            added_at: wire.version / 1000,
            until: wire.expires_at_ms.map(|at| at.div_ceil(1000)),
            fleet: Some(Shared {
                origin: wire.origin.clone(),
                version: wire.version,
                expires_at_ms: wire.expires_at_ms,
            }),
        },
    ))
}

/// Writes accepted revocations into `revocations.json` (each unless the file
/// holds it at the same or a newer version) and removes those in `removals`
/// not newer than their removal; with `keep`, also every revocation older
/// than `before` that the fleet no longer holds. Returns whether the file
/// changed.
pub fn apply(
    state: &StateDir,
    puts: Vec<(Kind, String, Revocation)>,
    removals: &[(String, u64)],
    keep: Option<(&HashSet<String>, u64)>,
) -> Result<bool, StateError> {
    state.update(REVOCATIONS, |denylist: &mut Denylist| {
        let mut changed = false;
        for (kind, id, revocation) in puts {
            let map = list(denylist, kind);
            if map
                .get(&id)
                .is_none_or(|held| version(held) < version(&revocation))
            {
                map.insert(id, revocation);
                changed = true;
            }
        }
        for (gone, removed_at) in removals {
            if let Some((kind, id)) = split(gone) {
                let map = list(denylist, kind);
                if map.get(id).is_some_and(|held| version(held) <= *removed_at) {
                    map.remove(id);
                    changed = true;
                }
            }
        }
        if let Some((keep, before)) = keep {
            for kind in [Kind::Jti, Kind::Sub] {
                let map = list(denylist, kind);
                let before_len = map.len();
                map.retain(|id, held| keep.contains(&key(kind, id)) || version(held) >= before);
                changed |= map.len() != before_len;
            }
        }
        changed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn revocation(added_at: u64) -> Revocation {
        Revocation {
            reason: "stolen".to_owned(),
            added_at,
            until: None,
            fleet: None,
        }
    }

    #[test]
    fn local_changes_are_published_and_remote_ones_keep_their_origin() {
        let old = Denylist::default();
        let mut new = Denylist::default();
        new.jti.insert("t-1".to_owned(), revocation(1_800_000_000));
        let (puts, removed) = changes(&old, &new, "edge-b");
        assert_eq!(puts.len(), 1);
        assert_eq!(
            (puts[0].key.as_str(), puts[0].origin.as_str()),
            ("jti:t-1", "edge-b")
        );
        assert_eq!(puts[0].version, 1_800_000_000_000);
        assert!(removed.is_empty());
        let (puts, removed) = changes(&new, &old, "edge-b");
        assert!(puts.is_empty());
        assert_eq!(removed, ["jti:t-1"]);

        let (kind, id, accepted) = accept(&puts_of(&new)[0], NOW).expect("valid");
        assert_eq!((kind, id.as_str()), (Kind::Jti, "t-1"));
        assert_eq!(accepted.fleet.expect("shared").origin, "edge-b");
    }

    fn puts_of(list: &Denylist) -> Vec<Wire> {
        held(list, "edge-b")
    }

    #[test]
    fn garbage_keys_and_ids_are_refused() {
        let mut wire = puts_of(&{
            let mut list = Denylist::default();
            list.sub
                .insert("alice".to_owned(), revocation(1_800_000_000));
            list
        })
        .remove(0);
        assert_eq!(wire.key, "sub:alice");
        wire.key = "aud:alice".to_owned();
        assert!(accept(&wire, NOW).is_err());
        wire.key = format!("jti:{}", "x".repeat(MAX_ID + 1));
        assert!(accept(&wire, NOW).is_err());
        wire.key = "jti:".to_owned();
        assert!(accept(&wire, NOW).is_err());
    }

    #[test]
    fn a_newer_removal_wins_and_an_older_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let mut shared = revocation(0);
        shared.fleet = Some(Shared {
            origin: "edge-a".to_owned(),
            version: NOW,
            expires_at_ms: None,
        });
        assert!(
            apply(
                &state,
                vec![(Kind::Jti, "t".into(), shared.clone())],
                &[],
                None
            )
            .expect("put")
        );
        assert!(!apply(&state, vec![(Kind::Jti, "t".into(), shared)], &[], None).expect("again"));
        assert!(!apply(&state, Vec::new(), &[("jti:t".into(), NOW - 1)], None).expect("older"));
        assert!(apply(&state, Vec::new(), &[("jti:t".into(), NOW)], None).expect("newer"));
        assert!(
            Denylist::load(&state.revocations_path())
                .expect("load")
                .jti
                .is_empty()
        );
    }
}
