//! The state helper: durable replace, per-file locks, the last good copy, modes.

use std::{os::unix::fs::PermissionsExt as _, sync::Arc, thread};

use super::*;

fn record(reason: &str) -> Record {
    Record {
        reason: reason.into(),
        source: Source::Cli,
        added_at: 10,
        expires_at: Some(20),
        fleet: None,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn lists_round_trip_and_missing_file_is_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path().join("state"));
    let lock = state.lock_lists().expect("lock");
    assert_eq!(lock.load().expect("load"), Lists::default());
    let mut lists = Lists::default();
    lists
        .blocklist
        .insert("198.18.0.7".parse().expect("cidr"), record("scanner"));
    lock.save(&lists).expect("save");
    assert_eq!(lock.load().expect("reload"), lists);
}

#[test]
fn corrupt_file_names_itself_and_its_last_good_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let mut lists = Lists::default();
    lists
        .blocklist
        .insert("198.18.0.7".parse().expect("cidr"), record("first"));
    state
        .lock_lists()
        .expect("lock")
        .save(&lists)
        .expect("save");
    lists
        .blocklist
        .insert("198.18.0.8".parse().expect("cidr"), record("second"));
    state
        .lock_lists()
        .expect("lock")
        .save(&lists)
        .expect("save");
    // Corrupted in place (not through the helper): the .bak is another inode.
    fs::write(dir.path().join("lists.json"), "{not json").expect("write");
    let err = state
        .lock_lists()
        .expect("lock")
        .load()
        .expect_err("corrupt");
    let text = err.to_string();
    assert!(
        text.contains("lists.json is unreadable")
            && text.contains("lists.json.bak")
            && text.contains("the last good copy")
            && text.contains("move"),
        "{text}"
    );
    let bak: Lists = read_json(&dir.path().join("lists.json.bak"))
        .expect("bak parses")
        .expect("bak exists");
    assert_eq!(bak, lists, "the copy holds the last write");

    fs::write(dir.path().join("lists.json.bak"), "").expect("write");
    let text = state
        .lock_lists()
        .expect("lock")
        .load()
        .expect_err("corrupt")
        .to_string();
    assert!(text.contains("no usable last good copy"), "{text}");
}

#[test]
fn an_empty_file_is_unreadable_not_empty_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    fs::write(dir.path().join(REVOCATIONS), "").expect("write");
    let err = state
        .read_file::<serde_json::Value>(REVOCATIONS)
        .expect_err("empty");
    assert!(err.to_string().contains("empty file"), "{err}");
}

#[test]
fn concurrent_updates_are_all_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateDir::new(dir.path()));
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let state = state.clone();
            thread::spawn(move || {
                for j in 0..5 {
                    state
                        .update(REVOCATIONS, |map: &mut BTreeMap<String, u32>| {
                            map.insert(format!("{i}-{j}"), i);
                        })
                        .expect("update");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let map: BTreeMap<String, u32> = state.read_file(REVOCATIONS).expect("read").expect("exists");
    assert_eq!(map.len(), 80);
}

#[test]
fn files_are_private_and_crashed_writers_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path().join("new"));
    // A writer killed between creating its temporary file and the rename.
    state.lock(ATTACHMENT).expect("lock");
    let stale = dir.path().join("new").join(temporary_name(ATTACHMENT));
    fs::write(&stale, "{\"half").expect("stale");
    let other = dir.path().join("new").join(temporary_name(LISTS));
    fs::write(&other, "{").expect("other");
    state.write_file(ATTACHMENT, &1u32).expect("save");
    state.write_file(ATTACHMENT, &2u32).expect("save");
    assert!(!stale.exists(), "the stale temporary file is gone");
    assert!(
        other.exists(),
        "another file's temporaries are left to its lock holder"
    );
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    for name in ["attachment.json", "attachment.json.bak", "attachment.lock"] {
        assert_eq!(mode(&dir.path().join("new").join(name)), 0o600, "{name}");
    }
    let names: Vec<String> = fs::read_dir(dir.path().join("new"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".attachment"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
