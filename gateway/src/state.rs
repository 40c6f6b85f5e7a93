//! The state directory (default `/var/lib/gateway`): what must survive a reboot,
//! which wipes bpffs.
//!
//! - `lists.json`: every allowlist and blocklist entry with its provenance and expiry
//!   in Unix time, so a restart restores each block with its remaining TTL.
//! - `attachment.json`: where the program was attached, for `gateway xdp status`.
//! - `revocations.json`: revoked token ids and subjects (`gateway token revoke`),
//!   read by the daemon on change.
//! - `abuse.json`: why the abuse loop blocked each address (see `abuse`).
//! - `quota.json`: the quota counts (see `policy::quota`).
//! - `lists.lock`: serialises the CLI and the daemon, so concurrent changes are not
//!   lost between reading and rewriting `lists.json`.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{addr::Cidr, xdp::Attachment};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";

/// A state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "another gateway daemon (pid {pid}) is running with this state directory (lock {path}); \
         stop it first, or give this one its own --state-dir and --pin-dir"
    )]
    DaemonRunning { path: PathBuf, pid: String },
    #[error("{path} is not a valid state file ({source}); fix it or move it aside to start empty")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Who put an entry on a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `gateway blocklist add` / `gateway allowlist add`.
    Cli,
    /// The config file's static lists (replaced on every config load).
    Config,
    /// The daemon's abuse detection.
    Daemon,
    /// Found in the kernel map with no record (added by another tool).
    Kernel,
}

impl Source {
    /// The name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::Config => "config",
            Source::Daemon => "daemon",
            Source::Kernel => "kernel",
        }
    }
}

/// One list entry's provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub reason: String,
    pub source: Source,
    /// Unix seconds.
    pub added_at: u64,
    /// Unix seconds; `None` for never.
    pub expires_at: Option<u64>,
}

/// The contents of `lists.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lists {
    pub allowlist: BTreeMap<Cidr, Record>,
    pub blocklist: BTreeMap<Cidr, Record>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir(PathBuf);

/// Held by the one daemon that owns a state directory, for as long as it runs.
pub struct DaemonLock {
    _lock: File,
}

/// Exclusive access to `lists.json` while held.
pub struct ListsLock {
    _lock: File,
    path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn create(&self) -> Result<(), StateError> {
        fs::create_dir_all(&self.0).map_err(|source| StateError::Io {
            path: self.0.clone(),
            source,
        })
    }

    /// Opens (creating it and the directory if needed) the lock file `name`.
    fn open_lock_file(&self, name: &str) -> Result<(File, PathBuf), StateError> {
        self.create()?;
        let path = self.0.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        Ok((file, path))
    }

    /// Takes the lists lock, waiting for another holder to finish.
    pub fn lock_lists(&self) -> Result<ListsLock, StateError> {
        let (lock, path) = self.open_lock_file("lists.lock")?;
        lock.lock()
            .map_err(|source| StateError::Io { path, source })?;
        Ok(ListsLock {
            _lock: lock,
            path: self.0.join("lists.json"),
        })
    }

    /// Claims the state directory for this daemon: a second daemon would fight the
    /// first over the event ring buffer and the lists.
    pub fn lock_daemon(&self) -> Result<DaemonLock, StateError> {
        let (mut lock, path) = self.open_lock_file("daemon.lock")?;
        let io_error = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&path)
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                return Err(StateError::DaemonRunning { path, pid });
            }
            Err(fs::TryLockError::Error(source)) => return Err(io_error(source)),
        }
        lock.set_len(0).map_err(io_error)?;
        writeln!(lock, "{}", std::process::id()).map_err(io_error)?;
        Ok(DaemonLock { _lock: lock })
    }

    /// The pid of the daemon holding this state directory, if one runs.
    pub fn running_daemon(&self) -> Result<Option<u32>, StateError> {
        let (lock, path) = self.open_lock_file("daemon.lock")?;
        match lock.try_lock() {
            Ok(()) => Ok(None),
            Err(fs::TryLockError::WouldBlock) => {
                let text = fs::read_to_string(&path).map_err(|source| StateError::Io {
                    path: path.clone(),
                    source,
                })?;
                text.trim().parse().map(Some).map_err(|_| StateError::Io {
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("holds {:?}, not a process id", text.trim()),
                    ),
                    path,
                })
            }
            Err(fs::TryLockError::Error(source)) => Err(StateError::Io { path, source }),
        }
    }

    /// `revocations.json`, creating the directory so the CLI can write it.
    pub fn revocations_path(&self) -> Result<PathBuf, StateError> {
        self.create()?;
        Ok(self.0.join("revocations.json"))
    }

    /// Records where the program is attached.
    pub fn save_attachment(&self, attachment: &Attachment) -> Result<(), StateError> {
        self.create()?;
        write_json(&self.0.join("attachment.json"), attachment)
    }

    /// Where the program was attached, if this state directory knows.
    pub fn attachment(&self) -> Result<Option<Attachment>, StateError> {
        read_json(&self.0.join("attachment.json"))
    }

    /// Another module's JSON state file `name` (e.g. `abuse.json`, `quota.json`);
    /// `None` when it does not exist yet.
    pub fn read_file<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        read_json(&self.0.join(name))
    }

    /// Replaces another module's JSON state file `name` atomically.
    pub fn write_file<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.create()?;
        write_json(&self.0.join(name), value)
    }

    /// Forgets the attachment (after a detach).
    pub fn clear_attachment(&self) -> Result<(), StateError> {
        let path = self.0.join("attachment.json");
        match fs::remove_file(&path) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source })
            }
            _ => Ok(()),
        }
    }
}

impl ListsLock {
    /// The saved lists; empty when there is no file yet.
    pub fn load(&self) -> Result<Lists, StateError> {
        Ok(read_json(&self.path)?.unwrap_or_default())
    }

    /// Replaces the saved lists atomically.
    pub fn save(&self, lists: &Lists) -> Result<(), StateError> {
        write_json(&self.path, lists)
    }
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Writes to a temporary file, syncs it and renames it over `path`, so a crash leaves
/// either the old or the new contents, never half of one.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io_error = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|err| io_error(io::Error::other(err)))?;
    text.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    let mut file = File::create(&tmp).map_err(io_error)?;
    file.write_all(&text).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    fs::rename(&tmp, path).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        let lock = state.lock_lists().expect("lock");
        assert_eq!(lock.load().expect("load"), Lists::default());
        let mut lists = Lists::default();
        lists.blocklist.insert(
            "198.18.0.7".parse().expect("cidr"),
            Record {
                reason: "scanner".into(),
                source: Source::Cli,
                added_at: 10,
                expires_at: Some(20),
            },
        );
        lock.save(&lists).expect("save");
        assert_eq!(lock.load().expect("reload"), lists);
    }

    #[test]
    fn corrupt_file_names_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        fs::write(dir.path().join("lists.json"), "{not json").expect("write");
        let err = state
            .lock_lists()
            .expect("lock")
            .load()
            .expect_err("corrupt");
        let text = err.to_string();
        assert!(
            text.contains("lists.json") && text.contains("move it aside"),
            "{text}"
        );
    }
}
