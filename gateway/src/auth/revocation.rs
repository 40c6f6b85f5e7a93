//! The denylist of token ids (`jti`) and subjects (`sub`), kept in
//! `revocations.json` in the state directory so it survives restarts. The CLI
//! (`gateway token revoke|unrevoke|list`) writes the file and signals the
//! daemon (SIGUSR2), which re-reads it at once; the daemon also notices a
//! changed file within a second. Checked on every request, cache hits included.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// Audits what changed between two versions of the list.
fn audit_changes(old: &Denylist, new: &Denylist) {
    for (kind, before, after) in [("jti", &old.jti, &new.jti), ("sub", &old.sub, &new.sub)] {
        for (id, entry) in after {
            if before.get(id) != Some(entry) {
                info!(target: "audit", event = "token_revoked", kind, id = %id, reason = %entry.reason, until = entry.until, "token revocation added");
            }
        }
        for id in before.keys().filter(|id| !after.contains_key(*id)) {
            info!(target: "audit", event = "token_unrevoked", kind, id = %id, "token revocation removed");
        }
    }
}

use crate::state::{self, StateError};

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Why, for the record.
    pub reason: String,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds after which the entry no longer applies; `None`: forever.
    pub until: Option<u64>,
    /// Set when another gateway of the fleet revoked it (see `fleet::revocations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<state::Shared>,
}

impl Revocation {
    fn applies(&self, now: u64) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// The contents of `revocations.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Denylist {
    pub jti: BTreeMap<String, Revocation>,
    pub sub: BTreeMap<String, Revocation>,
}

impl Denylist {
    /// Reads the file; a missing file is an empty list. Changes go through
    /// [`state::StateDir::update`], under the file's lock.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        Ok(state::read_json(path)?.unwrap_or_default())
    }

    /// Whether a token with this `jti` or subject is revoked now.
    pub fn is_revoked(&self, jti: Option<&str>, sub: &str, now: u64) -> bool {
        jti.and_then(|jti| self.jti.get(jti))
            .is_some_and(|r| r.applies(now))
            || self.sub.get(sub).is_some_and(|r| r.applies(now))
    }
}

/// The daemon's live copy of the denylist.
pub struct Revocations {
    path: Option<PathBuf>,
    list: ArcSwap<Denylist>,
    modified: Mutex<Option<SystemTime>>,
}

impl Revocations {
    /// Loads `path`. The daemon has checked before starting that the file is
    /// readable (a lost revocation must not come back to life); one that turns
    /// unreadable later is logged and the previous list stays.
    pub fn open(path: Option<PathBuf>) -> Self {
        let revocations = Self {
            path,
            list: ArcSwap::from_pointee(Denylist::default()),
            modified: Mutex::new(None),
        };
        if let Some(path) = &revocations.path {
            *revocations
                .modified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                std::fs::metadata(path).and_then(|m| m.modified()).ok();
            // What was revoked before the start was audited when it was revoked.
            revocations.load(path, false);
        }
        revocations
    }

    pub fn current(&self) -> std::sync::Arc<Denylist> {
        self.list.load_full()
    }

    /// Re-reads the file when its modification time changed (including when it
    /// appears or disappears); an absent file stays quiet until it appears.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut seen = self
            .modified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *seen == modified {
            return;
        }
        *seen = modified;
        self.load(path, true);
    }

    /// Re-reads the file now (SIGUSR2 from the CLI).
    pub fn reload(&self) {
        if let Some(path) = &self.path {
            *self
                .modified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                std::fs::metadata(path).and_then(|m| m.modified()).ok();
            self.load(path, true);
        }
    }

    fn load(&self, path: &Path, audit: bool) {
        match Denylist::load(path) {
            Ok(list) => {
                if audit {
                    audit_changes(&self.list.load(), &list);
                }
                info!(
                    jti = list.jti.len(),
                    sub = list.sub.len(),
                    "revocations loaded"
                );
                metrics::gauge!("gateway_auth_revocations")
                    .set((list.jti.len() + list.sub.len()) as f64);
                self.list.store(std::sync::Arc::new(list));
            }
            Err(err) => {
                error!(%err, "reading revocations failed; keeping the previous list");
            }
        }
    }
}
