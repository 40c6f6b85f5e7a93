//! `cargo xtask bench [xdp|proxy|attack|soak|all]`: installs the peers a suite needs, builds in
//! release, runs the suite as root and writes `target/bench/<suite>.json` and `.md`,
//! from which BENCHMARKS.md is made.
//!
//! Each suite is one module with a `run`; adding a suite is one module and one line in
//! [`SUITES`]. Benchmarks report, they never pass or fail on a number: a suite fails
//! only when it could not measure. A scenario a suite cannot measure yet is listed as
//! such in its own report.

mod attack;
mod proxy;
mod soak;
mod xdp;

use anyhow::bail;

use std::process::Command;

use crate::{
    setup,
    util::{self, Workspace},
};

#[derive(clap::Args)]
pub struct Args {
    /// Which suite to run.
    #[arg(value_enum, default_value_t = Target::All)]
    pub target: Target,
    /// Extra arguments for the suite's runner, after `--` (e.g. `-- --runs 7`; see
    /// `target/release/gateway-bench xdp --help`).
    #[arg(last = true, value_name = "RUNNER_ARGS")]
    pub runner_args: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Target {
    /// The kernel plane: XDP per-packet cost and drop rates on veth.
    Xdp,
    /// The userspace plane: TLS proxy throughput, latency and memory.
    Proxy,
    /// Both planes: a legitimate HTTPS client through the gateway under a flood.
    Attack,
    /// Memory and descriptors under a long steady load (10 minutes by default).
    Soak,
    /// Every suite that exists; says which ones do not yet.
    All,
}

struct Suite {
    target: Target,
    name: &'static str,
    run: fn(&Workspace, &[String]) -> anyhow::Result<()>,
}

const SUITES: [Suite; 4] = [
    Suite {
        target: Target::Xdp,
        name: "xdp",
        run: xdp::run,
    },
    Suite {
        target: Target::Proxy,
        name: "proxy",
        run: proxy::run,
    },
    Suite {
        target: Target::Attack,
        name: "attack",
        run: attack::run,
    },
    Suite {
        target: Target::Soak,
        name: "soak",
        run: soak::run,
    },
];

pub fn run(ws: &Workspace, args: &Args) -> anyhow::Result<()> {
    if !util::is_root()? {
        bail!(
            "the benchmarks load XDP programs, create network namespaces and install their \
             peers with apt-get: run `sudo -E cargo xtask bench`"
        );
    }
    let mut done = Vec::new();
    for suite in SUITES
        .iter()
        .filter(|suite| args.target == Target::All || args.target == suite.target)
    {
        println!("==> bench {}", suite.name);
        (suite.run)(ws, &args.runner_args)?;
        done.push(suite.name);
    }
    println!("bench done: {}", done.join(", "));
    Ok(())
}

/// Installs what suite `name` needs (the toolchains and `packages`), builds the gateway
/// and the runner in release, and returns the command that runs `gateway-bench
/// <name>` with its report going to `target/bench`.
fn runner(
    ws: &Workspace,
    name: &str,
    packages: &[&str],
    runner_args: &[String],
) -> anyhow::Result<Command> {
    setup::run(ws)?;
    setup::install_debian_packages(packages)?;
    util::run(ws.cargo().args([
        "build",
        "--release",
        "--package",
        "gateway",
        "--package",
        "gateway-bench",
    ]))?;
    let release = ws.target_dir()?.join("release");
    let mut command = Command::new(release.join("gateway-bench"));
    command
        .arg(name)
        .arg("--out")
        .arg(ws.target_dir()?.join("bench"))
        .args(runner_args)
        .env("GATEWAY_BIN", release.join("gateway"))
        .env(
            "GATEWAY_BENCH_COMMAND",
            format!("cargo xtask bench {name} {}", runner_args.join(" ")).trim_end(),
        );
    Ok(command)
}

/// Builds `test-upstream` in release and tells the runner `command` where it is: the
/// upstream the suites that run the real daemon put behind it.
fn with_test_upstream(ws: &Workspace, command: &mut Command) -> anyhow::Result<()> {
    util::run(ws.cargo().args([
        "build",
        "--release",
        "--package",
        "gateway-tests",
        "--bin",
        "test-upstream",
    ]))?;
    command.env(
        "TEST_UPSTREAM_BIN",
        ws.target_dir()?.join("release").join("test-upstream"),
    );
    Ok(())
}
