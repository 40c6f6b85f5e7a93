//! `cargo xtask bench attack`: both planes together, measured by `gateway-bench
//! attack` (see `bench/src/attack.rs`): a legitimate HTTPS client's throughput and
//! latency through the gateway while another namespace floods it, with and without the
//! XDP program.

use std::time::Duration;

use crate::{
    bench::xdp::{remove_leftover_namespaces, run_bounded},
    util::Workspace,
};

/// The load tool and what the rig drives (`taskset` and `nsenter` are in util-linux).
const PACKAGES: &[&str] = &["wrk", "ethtool", "iproute2", "util-linux"];
/// A default run takes about three minutes on a busy 2-core machine; past this it is
/// hung.
const TIMEOUT: Duration = Duration::from_secs(8 * 60);

pub fn run(ws: &Workspace, runner_args: &[String]) -> anyhow::Result<()> {
    let mut command = super::runner(ws, "attack", PACKAGES, runner_args)?;
    // The upstream behind the gateway.
    super::with_test_upstream(ws, &mut command)?;
    remove_leftover_namespaces()?;
    let result = run_bounded(&mut command, TIMEOUT)?.1;
    // The namespaces take the veths and the XDP program with them.
    remove_leftover_namespaces()?;
    result
}
