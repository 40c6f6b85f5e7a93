//! Helpers for the end-to-end tests: network namespaces joined by veth, the real
//! `gateway` binary run as a separate process, the real XDP object run through
//! `BPF_PROG_TEST_RUN`, hand-built frames, and the HTTP rig — test certificates
//! ([`pki`]), real mTLS upstream processes ([`upstream`]) and a TLS client ([`http`]).
//!
//! Tests that load BPF programs or create namespaces need root and a BPF-capable
//! kernel; without them they fail with a message saying so ([`require_root`]), they
//! never pass silently. The HTTP rig alone runs on loopback without root.

pub mod fleet;
pub mod frames;
pub mod gateway;
pub mod http;
pub mod idp;
pub mod net;
pub mod pki;
pub mod program;
pub mod raw;
pub mod redis;
pub mod upstream;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// Panics with an explanation unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load BPF programs and create network namespaces: they need root \
         (run `sudo -E cargo xtask test`)"
    );
}

/// A short suffix unique to this process and call, for names that must not collide
/// when test binaries run side by side (interface names are limited to 15 bytes).
pub fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id() & 0xfffff)
}

/// Path of a binary of this workspace: `$<env_var>` if set, else `name` in the target
/// directory this test executable was built into (`target/<profile>/deps/..`). Panics
/// with `build_hint` (how to build it) if there is no such file.
pub fn built_binary(env_var: &str, name: &str, build_hint: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} does not exist: build it first ({build_hint}) or set {env_var}",
        path.display()
    );
    path
}
