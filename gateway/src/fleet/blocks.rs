//! Shared blocks: how a blocklist entry travels through Redis and what is
//! accepted back.
//!
//! A shared entry carries its expiry as wall-clock ms, so it ends at the same
//! instant on every edge whose clock agrees (the fleet assumes clocks kept in
//! step by NTP; a skew of `s` makes an edge lift a block up to `s` early or
//! late). Nothing read from Redis is trusted: an entry wider than
//! `fleet.widest_block_v4` / `widest_block_v6`, one inside the IPv4-mapped
//! range, one already expired, one with a TTL past a year or a version from
//! the future, or one that is not an entry at all is refused with a warning
//! (expired ones silently), so another writer cannot block everyone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stream::Wire;
use crate::{
    addr::Cidr,
    config::{FleetSection, fleet::valid_name},
    lists::MAX_TTL,
    state::{Record, Shared, Source, StateDir, StateError},
};

/// How far ahead of this edge's clock a version may be (clock skew between
/// edges); a version further ahead would shadow every later change.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// The longest reason kept from another edge.
const MAX_REASON: usize = 256;

/// What this edge accepts from Redis.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub node: String,
    pub widest_v4: u8,
    pub widest_v6: u8,
}

impl Bounds {
    pub fn new(config: &FleetSection) -> Self {
        Self {
            node: config.node.clone(),
            widest_v4: config.widest_block_v4,
            widest_v6: config.widest_block_v6,
        }
    }
}

/// Why an entry read from Redis was not applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its time is over: not worth a warning (a late event, a slow sweep).
    Expired,
    /// Not an entry this edge accepts; logged.
    Invalid(String),
}

/// A shared block as it goes to Redis.
pub fn wire(cidr: &Cidr, reason: &str, shared: &Shared) -> Wire {
    Wire {
        key: cidr.to_string(),
        origin: shared.origin.clone(),
        reason: reason.to_owned(),
        version: shared.version,
        expires_at_ms: shared.expires_at_ms,
    }
}

/// Checks the parts every shared entry has: origin, version, expiry, reason.
pub fn check_common(wire: &Wire, now_ms: u64) -> Result<(), Refused> {
    let invalid = |why: String| Err(Refused::Invalid(why));
    if !valid_name(&wire.origin) {
        return invalid(format!("origin {:?} is not a node name", wire.origin));
    }
    if wire.version == 0 || wire.version > now_ms.saturating_add(MAX_SKEW_MS) {
        return invalid(format!(
            "version {} is not a time up to {MAX_SKEW_MS} ms ahead of this edge's clock",
            wire.version
        ));
    }
    if let Some(at) = wire.expires_at_ms {
        if at <= now_ms {
            return Err(Refused::Expired);
        }
        let longest = u64::try_from(MAX_TTL.as_millis()).unwrap_or(u64::MAX) + MAX_SKEW_MS;
        if at - now_ms > longest {
            return invalid(format!("expires more than a year from now ({at} ms)"));
        }
    }
    if wire.reason.len() > MAX_REASON || wire.reason.chars().any(char::is_control) {
        return invalid("reason longer than 256 bytes or with control characters".to_owned());
    }
    Ok(())
}

/// A shared block read from Redis as a blocklist record, or why not.
pub fn accept(wire: &Wire, bounds: &Bounds, now_ms: u64) -> Result<(Cidr, Record), Refused> {
    let cidr: Cidr = wire
        .key
        .parse()
        .map_err(|err: crate::addr::CidrError| Refused::Invalid(err.to_string()))?;
    let widest = if cidr.addr().is_ipv4() {
        bounds.widest_v4
    } else {
        bounds.widest_v6
    };
    if cidr.prefix_len() < widest {
        return Err(Refused::Invalid(format!(
            "{cidr} is wider than /{widest} (fleet.widest_block_v4 / widest_block_v6)"
        )));
    }
    check_common(wire, now_ms)?;
    Ok((
        cidr,
        Record {
            reason: wire.reason.clone(),
            source: if wire.origin == bounds.node {
                Source::Daemon
            } else {
                Source::Fleet
            },
            added_at: wire.version / 1000,
            expires_at: wire.expires_at_ms.map(|at| at.div_ceil(1000)),
            fleet: Some(Shared {
                origin: wire.origin.clone(),
                version: wire.version,
                expires_at_ms: wire.expires_at_ms,
            }),
        },
    ))
}

/// `fleet-pending.json`: removals made while Redis was away, published when
/// it returns (so a restart in between does not lose them).
pub const PENDING: &str = "fleet-pending.json";

/// The removals not yet published, per set: key → version (ms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pending {
    pub blocks: BTreeMap<String, u64>,
    pub revocations: BTreeMap<String, u64>,
}

impl Pending {
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(state.read_file(PENDING)?.unwrap_or_default())
    }

    /// Records removals to publish later.
    pub fn hold(
        state: &StateDir,
        set: super::stream::Set,
        removals: &[(String, u64)],
    ) -> Result<(), StateError> {
        state.update(PENDING, |pending: &mut Pending| {
            let map = pending.set(set);
            for (key, version) in removals {
                let held = map.entry(key.clone()).or_insert(*version);
                *held = (*held).max(*version);
            }
        })
    }

    /// Forgets removals that were published (unless a newer one came meanwhile).
    pub fn forget(
        state: &StateDir,
        set: super::stream::Set,
        published: &[(String, u64)],
    ) -> Result<(), StateError> {
        state.update(PENDING, |pending: &mut Pending| {
            let map = pending.set(set);
            for (key, version) in published {
                if map.get(key).is_some_and(|held| held <= version) {
                    map.remove(key);
                }
            }
        })
    }

    fn set(&mut self, set: super::stream::Set) -> &mut BTreeMap<String, u64> {
        match set {
            super::stream::Set::Blocks => &mut self.blocks,
            super::stream::Set::Revocations => &mut self.revocations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn bounds() -> Bounds {
        Bounds {
            node: "edge-b".to_owned(),
            widest_v4: 16,
            widest_v6: 32,
        }
    }

    fn entry(key: &str) -> Wire {
        Wire {
            key: key.to_owned(),
            origin: "edge-a".to_owned(),
            reason: "abuse: waf_block=5".to_owned(),
            version: NOW - 10,
            expires_at_ms: Some(NOW + 60_000),
        }
    }

    fn invalid(wire: &Wire) -> String {
        match accept(wire, &bounds(), NOW) {
            Err(Refused::Invalid(why)) => why,
            other => panic!("{wire:?} was not refused as invalid: {other:?}"),
        }
    }

    #[test]
    fn a_good_entry_becomes_a_fleet_record_with_its_provenance() {
        let (cidr, record) = accept(&entry("198.18.0.7"), &bounds(), NOW).expect("valid");
        assert_eq!(cidr.to_string(), "198.18.0.7");
        assert_eq!(record.source, Source::Fleet);
        assert_eq!(record.expires_at, Some((NOW + 60_000) / 1000));
        let shared = record.fleet.expect("shared");
        assert_eq!(
            (shared.origin.as_str(), shared.version),
            ("edge-a", NOW - 10)
        );
        accept(&entry("198.18.0.0/16"), &bounds(), NOW).expect("as wide as allowed");
        accept(&entry("2001:2::/48"), &bounds(), NOW).expect("v6 prefix");
    }

    #[test]
    fn entries_that_would_block_everyone_are_refused() {
        for key in ["0.0.0.0/0", "198.0.0.0/8", "::/0", "2001::/16"] {
            let why = invalid(&entry(key));
            assert!(
                why.contains(key.split('/').next().unwrap_or(key)),
                "{key}: {why}"
            );
        }
        // An IPv4-mapped entry is the IPv4 entry it stands for (the kernel looks
        // mapped sources up in the IPv4 maps), under the IPv4 bound.
        assert!(invalid(&entry("::ffff:0:0/96")).contains("0.0.0.0/0 is wider"));
        let (cidr, _) = accept(&entry("::ffff:198.18.0.7"), &bounds(), NOW).expect("a host");
        assert_eq!(cidr.to_string(), "198.18.0.7");
        assert!(invalid(&entry("198.18.0.7/24")).contains("host bits"));
        assert!(invalid(&entry("not-an-address")).contains("not an IP"));
    }

    #[test]
    fn forged_provenance_times_and_reasons_are_refused() {
        let mut wire = entry("198.18.0.7");
        wire.origin = "edge a; rm -rf".to_owned();
        assert!(invalid(&wire).contains("origin"));
        let mut wire = entry("198.18.0.7");
        wire.version = NOW + MAX_SKEW_MS + 1;
        assert!(invalid(&wire).contains("version"));
        let mut wire = entry("198.18.0.7");
        wire.expires_at_ms = Some(NOW + 400 * 24 * 3600 * 1000);
        assert!(invalid(&wire).contains("year"));
        let mut wire = entry("198.18.0.7");
        wire.reason = "x\u{1b}[2J".to_owned();
        assert!(invalid(&wire).contains("control"));
    }

    #[test]
    fn an_expired_entry_is_not_re_added_and_not_warned_about() {
        let mut wire = entry("198.18.0.7");
        wire.expires_at_ms = Some(NOW);
        assert_eq!(accept(&wire, &bounds(), NOW), Err(Refused::Expired));
        wire.expires_at_ms = None;
        accept(&wire, &bounds(), NOW).expect("a permanent block is kept");
    }
}
