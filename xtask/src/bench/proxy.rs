//! `cargo xtask bench proxy`: the userspace plane, measured by `gateway-bench proxy`
//! (see `bench/src/proxy/mod.rs`): the gateway as a TLS proxy in front of an nginx
//! fleet over mTLS, next to HAProxy doing the same work and to the fleet itself, with
//! wrk, h2load, oha and a handshake client of the runner's own, all on loopback.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    bench::xdp::run_bounded,
    util::{self, Workspace},
};

/// The peers and load tools the runner drives (`taskset` is in util-linux).
const PACKAGES: &[&str] = &["haproxy", "nginx", "wrk", "nghttp2-client", "util-linux"];
/// oha (open-loop load with latency correction) is not in Debian: this release comes
/// from crates.io, into `target/bench-tools`. The runner parses its JSON output.
const OHA_VERSION: &str = "1.16.0";
/// A default run takes about eleven minutes on a busy 2-core machine; past this it is
/// hung.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

pub fn run(ws: &Workspace, runner_args: &[String]) -> anyhow::Result<()> {
    let mut command = super::runner(ws, "proxy", PACKAGES, runner_args)?;
    if needs_oha(runner_args) {
        let oha = install_oha(ws, &ws.target_dir()?.join("bench-tools"))?;
        command.arg("--oha").arg(oha);
    }
    // The runner's processes die with it (each is killed when its handle drops) and
    // it makes no namespaces or pins: nothing to clean up after it.
    run_bounded(&mut command, TIMEOUT)?.1
}

/// Whether the runner's arguments select the open loop, the one part that needs oha
/// (a first install takes many minutes): it runs unless `--only` leaves it out or
/// `--callgrind` replaces every part.
fn needs_oha(runner_args: &[String]) -> bool {
    let mut only: Vec<&str> = Vec::new();
    let mut args = runner_args.iter().map(String::as_str);
    while let Some(arg) = args.next() {
        if arg == "--callgrind" || arg.starts_with("--callgrind=") {
            return false;
        }
        let value = match arg.strip_prefix("--only") {
            Some("") => args.next(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        only.extend(value.into_iter().flat_map(|value| value.split(',')));
    }
    only.is_empty() || only.contains(&"open-loop")
}

/// `<root>/bin/oha` at [`OHA_VERSION`], built with `cargo install --locked` unless it
/// is there already (the first build took 23 minutes on a busy 2-vCPU machine).
fn install_oha(ws: &Workspace, root: &Path) -> anyhow::Result<PathBuf> {
    let oha = root.join("bin").join("oha");
    let wanted = format!("oha {OHA_VERSION}");
    let installed = Command::new(&oha)
        .arg("--version")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == wanted);
    if !installed {
        let started = Instant::now();
        util::run(
            ws.cargo()
                .args([
                    "install",
                    "oha",
                    "--locked",
                    "--version",
                    OHA_VERSION,
                    "--root",
                ])
                .arg(root),
        )?;
        println!(
            "installed {wanted} in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(oha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn oha_is_needed_only_when_the_open_loop_runs() {
        assert!(needs_oha(&[]));
        assert!(needs_oha(&args("--runs 1")));
        assert!(needs_oha(&args("--only jwt,open-loop")));
        assert!(needs_oha(&args("--only=open-loop")));
        assert!(needs_oha(&args("--only no-auth --only open-loop")));
        assert!(!needs_oha(&args("--only no-auth,waf")));
        assert!(!needs_oha(&args("--only=waf --runs 1")));
        assert!(!needs_oha(&args("--callgrind target/callgrind")));
        assert!(!needs_oha(&args("--callgrind=target/callgrind")));
    }
}
