//! `cargo xtask bench proxy`: the userspace plane, measured by `gateway-bench proxy`
//! (see `bench/src/proxy/mod.rs`): the gateway as a TLS proxy in front of an nginx
//! fleet over mTLS, next to HAProxy doing the same work and to the fleet itself, with
//! wrk, h2load and a handshake client of the runner's own, all on loopback.

use std::time::Duration;

use crate::{bench::xdp::run_bounded, util::Workspace};

/// The peers and load tools the runner drives (`taskset` is in util-linux).
const PACKAGES: &[&str] = &["haproxy", "nginx", "wrk", "nghttp2-client", "util-linux"];
/// A default run takes about six minutes on a busy 2-core machine; past this it is hung.
const TIMEOUT: Duration = Duration::from_secs(12 * 60);

pub fn run(ws: &Workspace, runner_args: &[String]) -> anyhow::Result<()> {
    let mut command = super::runner(ws, "proxy", PACKAGES, runner_args)?;
    // The runner's processes die with it (each is killed when its handle drops) and
    // it makes no namespaces or pins: nothing to clean up after it.
    run_bounded(&mut command, TIMEOUT)?.1
}
