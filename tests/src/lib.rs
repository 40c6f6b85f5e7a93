//! Helpers for the privileged tests: network namespaces joined by veth, the real
//! `gateway` binary run as a separate process, the real XDP object run through
//! `BPF_PROG_TEST_RUN`, and hand-built frames.
//!
//! Every test needs root and a BPF-capable kernel; without them it fails with a
//! message saying so ([`require_root`]), it never passes silently.

pub mod frames;
pub mod gateway;
pub mod http;
pub mod net;
pub mod pki;
pub mod program;

use std::sync::atomic::{AtomicU32, Ordering};

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
