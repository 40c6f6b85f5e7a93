//! `lists.journal`: the list changes made since `lists.json` was last written, one
//! JSON object per line, appended and fsync'ed under the lists lock before a change
//! is acknowledged.
//!
//! Rewriting `lists.json` on every change costs time proportional to the whole list
//! (seconds at a million entries); appending costs what changed. The saved lists are
//! `lists.json` with the journal replayed on top. Every entry is idempotent (put,
//! remove, flush), so replaying a journal over a snapshot that already holds some of
//! it gives the same lists: a crash between writing a new snapshot and emptying the
//! journal loses nothing. A crash in the middle of an append leaves a last line
//! without its newline; it was never acknowledged, so readers skip it and the next
//! append cuts it off first.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::ListKind;
use crate::{
    addr::Cidr,
    state::{self, Record, StateError},
};

/// One change to a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    /// Adds or replaces an entry.
    Put {
        list: ListKind,
        cidr: Cidr,
        record: Record,
    },
    /// Removes an entry (nothing when it is not there).
    Remove { list: ListKind, cidr: Cidr },
    /// Removes every entry of a list.
    Flush { list: ListKind },
}

impl Op {
    /// Applies this change to `lists`.
    pub fn apply(&self, lists: &mut state::Lists) {
        match self {
            Op::Put { list, cidr, record } => {
                list.records(lists).insert(*cidr, record.clone());
            }
            Op::Remove { list, cidr } => {
                list.records(lists).remove(cidr);
            }
            Op::Flush { list } => list.records(lists).clear(),
        }
    }
}

/// The journal file of a state directory.
pub fn path(state: &state::StateDir) -> PathBuf {
    state.path().join("lists.journal")
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Parses the complete lines of `bytes` (a journal read from `offset`); returns the
/// changes and how many bytes they took. A last line without its newline is left
/// for later: it is an append still under way, or one a crash tore.
pub fn parse(path: &Path, bytes: &[u8], offset: u64) -> Result<(Vec<Op>, usize), StateError> {
    let complete = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let mut ops = Vec::new();
    let mut at = 0;
    for line in bytes[..complete].split_inclusive(|b| *b == b'\n') {
        let text = &line[..line.len() - 1];
        if !text.is_empty() {
            let op = serde_json::from_slice(text).map_err(|err| StateError::Journal {
                path: path.to_owned(),
                offset: offset + at as u64,
                reason: err.to_string(),
            })?;
            ops.push(op);
        }
        at += line.len();
    }
    Ok((ops, complete))
}

/// An open journal and how far it has been read.
pub struct Reader {
    file: File,
    offset: u64,
}

impl Reader {
    /// Opens the journal at `path` (creating it, empty, when there is none).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path))?;
        Ok(Self { file, offset: 0 })
    }

    /// The changes appended since the last call (all of them on the first).
    pub fn read_new(&mut self, path: &Path) -> Result<Vec<Op>, StateError> {
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| self.file.read_to_end(&mut bytes))
            .map_err(io_error(path))?;
        let (ops, used) = parse(path, &bytes, self.offset)?;
        self.offset += used as u64;
        Ok(ops)
    }

    /// Whether `path` is still the file this reader reads: a compaction puts a new
    /// file in its place.
    pub fn is_current(&self, path: &Path) -> Result<bool, StateError> {
        is_same_file(&self.file, path)
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Whether `path` names the open `file`. The open file keeps its inode from being
/// reused, so an equal inode means the same file, not a new one in its place.
pub fn is_same_file(file: &File, path: &Path) -> Result<bool, StateError> {
    let open = file.metadata().map_err(io_error(path))?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == open.dev() && now.ino() == open.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads every change in the journal at `path` (none when there is no file).
pub fn read_all(path: &Path) -> Result<Vec<Op>, StateError> {
    match fs::read(path) {
        Ok(bytes) => parse(path, &bytes, 0).map(|(ops, _)| ops),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Appends `ops` and makes them durable; the caller holds the lists lock. Returns
/// the journal's length afterwards.
pub fn append(path: &Path, ops: &[Op]) -> Result<u64, StateError> {
    let error = io_error(path);
    if ops.is_empty() {
        return match fs::metadata(path) {
            Ok(meta) => Ok(meta.len()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(error(source)),
        };
    }
    let mut text = Vec::with_capacity(ops.len() * 160);
    for op in ops {
        serde_json::to_writer(&mut text, op).map_err(|err| error(io::Error::other(err)))?;
        text.push(b'\n');
    }
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(&error)?;
    let end = cut_torn_tail(&mut file).map_err(&error)?;
    file.seek(SeekFrom::Start(end)).map_err(&error)?;
    file.write_all(&text).map_err(&error)?;
    file.sync_data().map_err(&error)?;
    if created {
        sync_dir(path).map_err(&error)?;
    }
    Ok(end + text.len() as u64)
}

/// Cuts off a last line a crash left without its newline; returns the new length.
fn cut_torn_tail(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(at) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    if end != len {
        file.set_len(end)?;
    }
    Ok(end)
}

/// Replaces the journal with an empty file (after its changes went into a new
/// `lists.json`). A new file, not a truncation, so a reader holding the old one
/// sees that it was replaced.
pub fn reset(path: &Path) -> Result<(), StateError> {
    let error = io_error(path);
    let tmp = path.with_extension(format!("journal.{}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(&error)?;
    file.sync_all().map_err(&error)?;
    fs::rename(&tmp, path).map_err(&error)?;
    sync_dir(path).map_err(&error)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path.parent().unwrap_or(Path::new("."))).and_then(|dir| dir.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Source;

    fn put(cidr: &str, expires_at: Option<u64>) -> Op {
        Op::Put {
            list: ListKind::Block,
            cidr: cidr.parse().expect("cidr"),
            record: Record {
                reason: "test".into(),
                source: Source::Cli,
                added_at: 1,
                expires_at,
                fleet: None,
            },
        }
    }

    #[test]
    fn appended_changes_replay_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lists.journal");
        let ops = vec![
            put("198.18.0.1", Some(10)),
            put("198.18.0.2", None),
            Op::Remove {
                list: ListKind::Block,
                cidr: "198.18.0.1".parse().expect("cidr"),
            },
        ];
        append(&path, &ops[..2]).expect("append");
        append(&path, &ops[2..]).expect("append");
        assert_eq!(read_all(&path).expect("read"), ops);
        let mut lists = state::Lists::default();
        for op in &ops {
            op.apply(&mut lists);
        }
        assert_eq!(
            lists
                .blocklist
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["198.18.0.2"]
        );
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lists.journal");
        append(&path, &[put("198.18.0.1", None)]).expect("append");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"put":{"list":"blockl"#).expect("tear");
        assert_eq!(read_all(&path).expect("read").len(), 1, "torn line skipped");
        append(&path, &[put("198.18.0.2", None)]).expect("append after tear");
        assert_eq!(
            read_all(&path).expect("read"),
            vec![put("198.18.0.1", None), put("198.18.0.2", None)]
        );
    }

    #[test]
    fn a_reader_sees_only_new_changes_and_notices_a_replaced_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lists.journal");
        let mut reader = Reader::open(&path).expect("open");
        assert!(reader.read_new(&path).expect("read").is_empty());
        append(&path, &[put("198.18.0.1", None)]).expect("append");
        assert_eq!(reader.read_new(&path).expect("read").len(), 1);
        assert!(reader.read_new(&path).expect("read").is_empty());
        assert!(reader.is_current(&path).expect("stat"));
        reset(&path).expect("reset");
        assert!(!reader.is_current(&path).expect("stat"));
        assert!(read_all(&path).expect("read").is_empty());
    }

    #[test]
    fn a_corrupt_line_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lists.journal");
        fs::write(&path, "{\"put\":1}\n").expect("write");
        let err = read_all(&path).expect_err("corrupt");
        assert!(err.to_string().contains("lists.journal"), "{err}");
    }
}
