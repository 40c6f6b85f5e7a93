//! `cargo xtask bench proxy`: the userspace plane (TLS proxy against HAProxy and the
//! upstreams directly, with wrk, h2load and oha). Not measurable until the proxy exists.

use crate::{bench::Outcome, util::Workspace};

pub fn run(_ws: &Workspace, _runner_args: &[String]) -> anyhow::Result<Outcome> {
    Ok(Outcome::Missing(
        "the TLS proxy is still being written; its benchmarks (issue 7, userspace plane) \
         come with it",
    ))
}
