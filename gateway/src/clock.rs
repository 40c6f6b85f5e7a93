//! Converts between wall-clock time (what operators and the state file speak) and
//! `CLOCK_MONOTONIC` nanoseconds (what the XDP program compares expiries against).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock `bpf_ktime_get_coarse_ns` reads
/// (to the last scheduler tick, so the program sees an expiry up to a tick late).
pub fn kernel_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Milliseconds since the Unix epoch, now: the fleet's clock for shared expiries.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The kernel-clock instant of a Unix time in ms; the past maps to now.
pub fn kernel_ns_at_unix_ms(unix_ms: u64) -> u64 {
    kernel_ns_after(Duration::from_millis(unix_ms.saturating_sub(unix_now_ms())))
}

/// The kernel-clock instant `ttl` from now.
pub fn kernel_ns_after(ttl: Duration) -> u64 {
    kernel_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
}

/// The kernel-clock instant of a Unix time (seconds); the past maps to now.
pub fn kernel_ns_at_unix(unix_secs: u64) -> u64 {
    kernel_ns_after(Duration::from_secs(unix_secs.saturating_sub(unix_now())))
}

/// The Unix time (seconds) of a kernel-clock instant, rounded up so a block never
/// lifts early after a restore.
pub fn unix_at_kernel_ns(ns: u64) -> u64 {
    let remaining = ns.saturating_sub(kernel_ns());
    unix_now() + remaining.div_ceil(1_000_000_000)
}
