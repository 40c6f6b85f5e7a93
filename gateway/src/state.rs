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
//!
//! Every file is written by one helper ([`Locked::save`]): under the file's own
//! advisory lock (`lists.lock`, `revocations.lock`, …, so read-modify-write by the
//! CLI and the daemon never loses a change), into a unique temporary file in the same
//! directory, fsync'ed, renamed over the file, and the directory fsync'ed. A reader
//! sees the old or the new contents, never half of one, and a caller that was told
//! "saved" keeps its change across kill -9 and power loss. Each write also leaves a
//! second copy, `NAME.bak`, in a file of its own, so damage done to one (an editor,
//! a truncating redirect, a bad block) leaves the other: the last good copy that the
//! error names when a file is found unreadable. Files are created 0600 in a 0700
//! directory: they name clients and tokens.

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{addr::Cidr, xdp::Attachment};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";

/// The lists' state file.
pub const LISTS: &str = "lists.json";
/// The token denylist's state file.
pub const REVOCATIONS: &str = "revocations.json";
/// Where the program is attached.
pub const ATTACHMENT: &str = "attachment.json";

/// Mode of a state file (and of its lock and backup): it names clients and tokens.
const FILE_MODE: u32 = 0o600;
/// Mode of the state directory when this process creates it.
const DIR_MODE: u32 = 0o700;

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
    /// A state file exists but cannot be read or parsed. Nothing may start empty
    /// over it: that would forget blocks and revocations the operator was told
    /// were saved.
    #[error("{path} is unreadable ({reason}); {backup}")]
    Unreadable {
        path: PathBuf,
        reason: String,
        backup: Backup,
    },
    /// A line of `lists.journal` (the list changes since `lists.json` was last
    /// written) cannot be parsed.
    #[error(
        "{path} is unreadable at byte {offset} ({reason}); repair that line, or move the file \
         aside to drop the list changes made since lists.json was last written"
    )]
    Journal {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// What the error about an unreadable state file says of its last good copy.
#[derive(Debug)]
pub struct Backup {
    path: PathBuf,
    bak: PathBuf,
    /// Whether the `.bak` exists and parses.
    good: bool,
}

impl fmt::Display for Backup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, bak) = (self.path.display(), self.bak.display());
        if self.good {
            write!(
                f,
                "the last good copy is {bak} (written with the last change): \
                 check it and put it back (`cp {bak} {path}`), or move {path} aside to start empty"
            )
        } else {
            write!(
                f,
                "there is no usable last good copy ({bak} is missing or unreadable too): \
                 repair {path}, or move it aside to start empty"
            )
        }
    }
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
    /// Another gateway of the fleet (see [`Record::fleet`] for which).
    Fleet,
}

impl Source {
    /// The name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::Config => "config",
            Source::Daemon => "daemon",
            Source::Kernel => "kernel",
            Source::Fleet => "fleet",
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
    /// Set when the entry is shared with the fleet: who decided it, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Shared>,
}

/// A shared block's provenance in the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    /// The node that decided it.
    pub origin: String,
    /// When it was decided, ms since the Unix epoch (the origin's clock): a
    /// later put or removal of the same entry wins.
    pub version: u64,
    /// When it ends, ms since the Unix epoch; `None` for never.
    pub expires_at_ms: Option<u64>,
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

/// Exclusive access to one state file while held: the only way to write it.
pub struct Locked {
    _lock: File,
    dir: PathBuf,
    name: &'static str,
}

/// Exclusive access to `lists.json` while held.
pub struct ListsLock(Locked);

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn create(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.0)
            .map_err(|source| StateError::Io {
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
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
        Ok((file, path))
    }

    /// Takes the lock of the state file `name` (`lists.json` → `lists.lock`),
    /// waiting for another holder to finish.
    pub fn lock(&self, name: &'static str) -> Result<Locked, StateError> {
        let stem = name.strip_suffix(".json").unwrap_or(name);
        let (lock, path) = self.open_lock_file(&format!("{stem}.lock"))?;
        lock.lock()
            .map_err(|source| StateError::Io { path, source })?;
        Ok(Locked {
            _lock: lock,
            dir: self.0.clone(),
            name,
        })
    }

    /// Takes the lists lock, waiting for another holder to finish.
    pub fn lock_lists(&self) -> Result<ListsLock, StateError> {
        self.lock(LISTS).map(ListsLock)
    }

    /// Reads `name`, changes it with `change` and saves it, all under its lock, so
    /// concurrent writers (CLIs, the daemon) never lose each other's changes. A
    /// missing file starts from `T::default()`; an unreadable one is an error and
    /// stays as it is. Returns what `change` returned, once the write is durable.
    pub fn update<T, R>(
        &self,
        name: &'static str,
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StateError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let lock = self.lock(name)?;
        let mut value = lock.load()?.unwrap_or_default();
        let result = change(&mut value);
        lock.save(&value)?;
        Ok(result)
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

    /// `revocations.json`, for the daemon to watch.
    pub fn revocations_path(&self) -> PathBuf {
        self.0.join(REVOCATIONS)
    }

    /// Records where the program is attached.
    pub fn save_attachment(&self, attachment: &Attachment) -> Result<(), StateError> {
        self.write_file(ATTACHMENT, attachment)
    }

    /// Where the program was attached, if this state directory knows.
    pub fn attachment(&self) -> Result<Option<Attachment>, StateError> {
        self.read_file(ATTACHMENT)
    }

    /// The JSON state file `name`; `None` when it does not exist yet. Needs no
    /// lock: files are only ever replaced whole.
    pub fn read_file<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        read_json(&self.0.join(name))
    }

    /// Replaces the JSON state file `name` durably, under its lock.
    pub fn write_file<T: Serialize>(
        &self,
        name: &'static str,
        value: &T,
    ) -> Result<(), StateError> {
        self.lock(name)?.save(value)
    }

    /// Forgets the attachment (after a detach).
    pub fn clear_attachment(&self) -> Result<(), StateError> {
        let lock = self.lock(ATTACHMENT)?;
        let path = lock.path();
        match fs::remove_file(&path) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source })
            }
            _ => sync_dir(&self.0),
        }
    }
}

impl Locked {
    /// The file this lock guards.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// The file's contents; `None` when it does not exist yet.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, StateError> {
        read_json(&self.path())
    }

    /// Replaces the file: a unique temporary file in the same directory, written
    /// and fsync'ed, a second copy kept as `.bak`, the rename, and the directory
    /// fsync'ed. Returns once all of it is on disk.
    pub fn save<T: Serialize>(&self, value: &T) -> Result<(), StateError> {
        let path = self.path();
        let io_error = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut text =
            serde_json::to_vec_pretty(value).map_err(|err| io_error(io::Error::other(err)))?;
        text.push(b'\n');
        // Only lock holders write temporary files, so any found now were left by a
        // writer killed mid-write.
        self.remove_stale_temporaries().map_err(io_error)?;
        let tmp = TempFile::write(&self.dir, self.name, &text).map_err(io_error)?;
        let bak = TempFile::write(&self.dir, self.name, &text).map_err(io_error)?;
        bak.rename_to(&backup_path(&path)).map_err(io_error)?;
        tmp.rename_to(&path).map_err(io_error)?;
        sync_dir(&self.dir)
    }

    fn remove_stale_temporaries(&self) -> io::Result<()> {
        let prefix = format!(".{}.", self.name);
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                match fs::remove_file(entry.path()) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl ListsLock {
    /// `lists.json`.
    pub fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// The saved lists; empty when there is no file yet.
    pub fn load(&self) -> Result<Lists, StateError> {
        Ok(self.0.load()?.unwrap_or_default())
    }

    /// Replaces the saved lists durably.
    pub fn save(&self, lists: &Lists) -> Result<(), StateError> {
        self.0.save(lists)
    }
}

/// A temporary file created exclusively (`O_EXCL`, mode 0600) under a name no
/// other writer uses; removed on drop unless it was renamed into place.
struct TempFile {
    file: File,
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// A new temporary file next to `name` holding `text`, fsync'ed.
    fn write(dir: &Path, name: &str, text: &[u8]) -> io::Result<Self> {
        let tmp = Self::create(dir, name)?;
        let mut file = &tmp.file;
        file.write_all(text)?;
        file.sync_all()?;
        Ok(tmp)
    }

    fn create(dir: &Path, name: &str) -> io::Result<Self> {
        loop {
            let path = dir.join(temporary_name(name));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        path,
                        armed: true,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Moves the file into place (atomically replacing what is there).
    fn rename_to(mut self, path: &Path) -> io::Result<()> {
        fs::rename(&self.path, path)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `.NAME.<pid>.<random>.tmp`: hidden, and found again by its prefix after a crash.
fn temporary_name(name: &str) -> String {
    format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// `NAME.bak`, the last good copy of `NAME`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".bak");
    path.with_file_name(name)
}

/// Makes the directory's entries (a rename, a removal) durable.
fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Reads the JSON state file at `path`; `None` when it does not exist. A file
/// that exists but cannot be read or parsed is [`StateError::Unreadable`],
/// naming its last good copy.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match parse_file(path) {
        Ok(value) => Ok(value),
        Err(reason) => {
            let bak = backup_path(path);
            let good = matches!(parse_file::<T>(&bak), Ok(Some(_)));
            Err(StateError::Unreadable {
                path: path.to_owned(),
                reason,
                backup: Backup {
                    path: path.to_owned(),
                    bak,
                    good,
                },
            })
        }
    }
}

fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    if text.is_empty() {
        return Err("empty file".to_owned());
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests;
