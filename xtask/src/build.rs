//! `cargo xtask build`: runs `setup`, then builds the workspace; `gateway/build.rs`
//! compiles the XDP program with the nightly and embeds it in the daemon.

use crate::{setup, util, util::Workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Runs setup and builds the workspace's default members: everything but
/// `gateway-ebpf`, which only builds for `bpfel-unknown-none` (via `gateway/build.rs`).
pub fn run(ws: &Workspace, args: &Args) -> anyhow::Result<()> {
    setup::run(ws)?;
    let mut cmd = ws.cargo();
    cmd.arg("build");
    if args.release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}
