//! Why an address was blocked: `abuse.json` in the state directory, written by
//! the daemon on every block and unblock, read by `gateway explain`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Evidence;
use crate::{
    addr::Cidr,
    state::{StateDir, StateError},
};

/// The state file's name.
pub const FILE: &str = "abuse.json";

/// How many blocks of one address the file remembers.
const HISTORY: usize = 16;

/// One block, with the evidence that led to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Unix seconds.
    pub blocked_at: u64,
    pub ttl_secs: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// 1 for a first offence; the TTL doubles with each.
    pub offence: u32,
    /// The weighted sum that crossed the threshold.
    pub score: u32,
    pub threshold: u32,
    pub window_secs: u64,
    /// How many of each signal the window held.
    pub signals: BTreeMap<String, u32>,
    pub first: Evidence,
    pub last: Evidence,
    /// Whether the block reached the kernel (false when XDP is off).
    pub kernel: bool,
    /// The address this block was decided for, when the block covers its
    /// whole prefix (aggregation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregated_from: Option<Cidr>,
    /// Unix seconds, once the block ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unblocked_at: Option<u64>,
    /// Why it ended (`expired`, `removed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unblock_reason: Option<String>,
    /// The L7 weight each fleet node saw in the window, when the fleet's
    /// summed score decided the block (`[fleet]` with `share.abuse`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fleet_weights: BTreeMap<String, u32>,
}

/// The contents of `abuse.json`: the latest blocks of every address, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvenanceFile {
    pub blocks: BTreeMap<Cidr, Vec<Provenance>>,
}

impl ProvenanceFile {
    pub fn load(state: &StateDir) -> Result<Self, StateError> {
        Ok(state.read_file(FILE)?.unwrap_or_default())
    }

    pub fn save(&self, state: &StateDir) -> Result<(), StateError> {
        state.write_file(FILE, self)
    }

    /// Adds a block to `cidr`'s history.
    pub fn push(&mut self, cidr: Cidr, provenance: Provenance) {
        let history = self.blocks.entry(cidr).or_default();
        history.push(provenance);
        if history.len() > HISTORY {
            history.remove(0);
        }
    }

    /// Marks `cidr`'s open block as ended; returns it when there was one.
    pub fn end(&mut self, cidr: &Cidr, at: u64, reason: &str) -> Option<&Provenance> {
        let last = self.blocks.get_mut(cidr)?.last_mut()?;
        if last.unblocked_at.is_some() {
            return None;
        }
        last.unblocked_at = Some(at);
        last.unblock_reason = Some(reason.to_owned());
        Some(last)
    }

    /// The blocks that cover `ip`: its own and its prefix's, most specific first.
    pub fn covering(&self, ip: std::net::IpAddr) -> Vec<(Cidr, &[Provenance])> {
        let mut found: Vec<(Cidr, &[Provenance])> = self
            .blocks
            .iter()
            .filter(|(cidr, _)| cidr.contains(ip))
            .map(|(cidr, history)| (*cidr, history.as_slice()))
            .collect();
        found.sort_by_key(|(cidr, _)| std::cmp::Reverse(cidr.prefix_len()));
        found
    }
}
