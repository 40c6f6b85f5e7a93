//! `cargo xtask run`: runs `setup`, builds the `gateway` binary and replaces this process
//! with it, so its exit code (and signals) reach the caller unchanged.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use anyhow::Context as _;

use crate::{setup, util, util::Workspace};

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the release binary.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `gateway`, after `--` (e.g. `cargo xtask run -- --help`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "GATEWAY_ARGS"
    )]
    pub args: Vec<String>,
}

/// Runs setup, builds `gateway` and execs it with `args.args`.
pub fn run(ws: &Workspace, args: &Args) -> anyhow::Result<()> {
    setup::run(ws)?;
    let binary = ws.build_gateway(args.release)?;
    let mut gateway = Command::new(&binary);
    gateway.args(&args.args);
    println!("$ {}", util::display(&gateway));
    // `exec` only returns on failure.
    let err = gateway.exec();
    Err(err).with_context(|| format!("could not run {}", binary.display()))
}
