//! `cargo xtask test`: setup, lints, unprivileged unit tests, the privileged XDP
//! verdict and end-to-end tests, the demo with every command it prints, then the
//! release artifacts installed and run (`dist --check`); stops at the first failing
//! step.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{demo, dist, setup, util, util::Workspace};

/// The crate with the tests that load BPF programs and create network namespaces.
const PRIVILEGED_TESTS: &str = "gateway-tests";
/// Only build for `bpfel-unknown-none`; `gateway/build.rs` and `bench/build.rs` build
/// and embed them.
const EBPF_CRATES: [&str; 2] = ["gateway-ebpf", "bench-ebpf"];

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for the privileged test binaries, after `--` (e.g. a test name
    /// filter: `cargo xtask test -- verdict`).
    #[arg(last = true, value_name = "TEST_ARGS")]
    pub test_args: Vec<String>,
}

/// Runs every step in order; the error names the step that failed.
pub fn run(ws: &Workspace, args: &Args) -> anyhow::Result<()> {
    step("a", "setup", || setup::run(ws))?;
    if args.no_lint {
        println!("==> skipping steps b (rustfmt) and c (clippy): --no-lint");
    } else {
        step("b", "rustfmt", || {
            util::run(ws.cargo().args(["fmt", "--all", "--", "--check"]))
        })?;
        step("c", "clippy", || {
            util::run(
                ws.cargo()
                    .args(["clippy", "--workspace"])
                    .args(exclude_ebpf())
                    .args(["--all-targets", "--", "-D", "warnings"]),
            )?;
            // The eBPF crates only build for their own target, with the pinned nightly.
            for krate in EBPF_CRATES {
                util::run(
                    Command::new("cargo")
                        .arg(format!("+{}", setup::EBPF_TOOLCHAIN))
                        .args([
                            "clippy",
                            "--release",
                            "--target",
                            "bpfel-unknown-none",
                            "-Z",
                            "build-std=core",
                            "--",
                            "-D",
                            "warnings",
                        ])
                        .current_dir(ws.root.join(krate)),
                )?;
            }
            Ok(())
        })?;
    }
    step("d", "unit tests", || {
        util::run(
            ws.cargo()
                .args(["test", "--workspace"])
                .args(exclude_ebpf())
                .args(["--exclude", PRIVILEGED_TESTS]),
        )
    })?;
    step("e", "privileged XDP and end-to-end tests", || {
        privileged_tests(ws, &args.test_args)
    })?;
    if args.test_args.is_empty() {
        step("f", "the demo and every command it prints", || {
            demo::check(&demo::build(ws)?)
        })?;
        // The suite's one release build: the .deb, installed and run, then purged.
        step("g", "cargo xtask dist --check", || {
            dist::run(ws, &dist::Args { check: true })
        })?;
    } else {
        println!(
            "==> skipping steps f (the demo) and g (dist): test arguments select privileged \
             tests; `sudo -E cargo xtask demo --check` and `sudo -E cargo xtask dist --check` \
             run them alone"
        );
    }
    println!("all tests passed");
    Ok(())
}

/// `--exclude <crate>` for each of [`EBPF_CRATES`].
fn exclude_ebpf() -> impl Iterator<Item = &'static str> {
    EBPF_CRATES
        .into_iter()
        .flat_map(|krate| ["--exclude", krate])
}

/// Prints a banner for step `id`, runs it and names it in the error if it fails.
fn step(id: &str, name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    println!("==> step {id}: {name}");
    f().with_context(|| format!("test step {id} ({name}) failed"))
}

/// Checks for root and BPF, builds the daemon and runs [`PRIVILEGED_TESTS`] one at a time
/// with `GATEWAY_BIN` pointing at it.
fn privileged_tests(ws: &Workspace, test_args: &[String]) -> anyhow::Result<()> {
    if !util::is_root()? {
        bail!(
            "the XDP verdict and end-to-end tests need root (they load BPF programs and \
             create network namespaces); run `sudo -E cargo xtask test`"
        );
    }
    let bpf_fs = Path::new("/sys/fs/bpf");
    let bpf_sysctl = Path::new("/proc/sys/kernel/unprivileged_bpf_disabled");
    if !bpf_fs.exists() && !bpf_sysctl.exists() {
        bail!(
            "this kernel has no BPF support (neither {} nor {} exists); the XDP verdict \
             and end-to-end tests cannot run here",
            bpf_fs.display(),
            bpf_sysctl.display()
        );
    }

    let gateway = ws.build_gateway(false)?;
    util::run(
        ws.cargo()
            .args([
                "test",
                "--package",
                PRIVILEGED_TESTS,
                "--",
                "--test-threads=1",
            ])
            .args(test_args)
            .env("GATEWAY_BIN", &gateway),
    )
}
