//! `cargo xtask bench xdp`: the kernel plane, measured by `gateway-bench xdp` (see
//! `bench/src/main.rs`) next to nftables, xdp-filter and reference XDP programs.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{bench::Outcome, setup, util, util::Workspace};

/// The peers and tools the runner drives.
const PACKAGES: &[&str] = &[
    "xdp-tools",
    "nftables",
    "ethtool",
    "bpftool",
    "iproute2",
    "util-linux",
];
/// Namespace prefix of the runner's rigs (`wire::NETNS_PREFIX` and the xdp-filter
/// namespace of `cost`); what a killed run leaves behind is removed by it.
const NETNS_PREFIX: &str = "gwb-";
/// A whole run takes about five minutes on a busy 2-core machine; past this it is hung.
const TIMEOUT: Duration = Duration::from_secs(9 * 60);

pub fn run(ws: &Workspace, runner_args: &[String]) -> anyhow::Result<Outcome> {
    setup::run(ws)?;
    setup::install_debian_packages(PACKAGES)?;
    util::run(ws.cargo().args([
        "build",
        "--release",
        "--package",
        "gateway",
        "--package",
        "gateway-bench",
    ]))?;
    let release = ws.target_dir()?.join("release");
    let out = ws.target_dir()?.join("bench");
    remove_leftover_namespaces()?;
    let mut command = Command::new(release.join("gateway-bench"));
    command
        .arg("xdp")
        .arg("--out")
        .arg(&out)
        .args(runner_args)
        .env("GATEWAY_BIN", release.join("gateway"))
        .env(
            "GATEWAY_BENCH_COMMAND",
            format!("cargo xtask bench xdp {}", runner_args.join(" ")).trim_end(),
        );
    let result = run_bounded(&mut command, TIMEOUT);
    // Whatever happened, leave no namespaces (and so no veths or XDP programs) behind.
    remove_leftover_namespaces()?;
    result.map(|()| Outcome::Done)
}

/// Runs `command`, killing it if it outlives `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<()> {
    let line = util::display(command);
    println!("$ {line}");
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("`{line}` failed ({status})");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{line}` ran longer than {} s and was stopped",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Deletes the namespaces whose names start with [`NETNS_PREFIX`].
fn remove_leftover_namespaces() -> anyhow::Result<()> {
    let list = util::stdout_of(Command::new("ip").args(["netns", "list"]))?;
    for name in leftover_namespaces(&list) {
        util::run(Command::new("ip").args(["netns", "del", name]))?;
    }
    Ok(())
}

/// Names in `ip netns list` output (`name (id: 3)` or `name`) with our prefix.
fn leftover_namespaces(list: &str) -> Vec<&str> {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_our_namespaces() {
        let list = "gwb-gw-1a2b0 (id: 4)\ngwt-gw-99 (id: 3)\ngwb-xf-1a2b1\nother\n";
        assert_eq!(leftover_namespaces(list), ["gwb-gw-1a2b0", "gwb-xf-1a2b1"]);
    }
}
