//! `cargo xtask bench soak`: memory under a long steady load, measured by
//! `gateway-bench soak` (see `bench/src/soak.rs`): the gateway's RSS and open
//! descriptors every 10 s under wrk, nothing scraping `/metrics`, and their
//! trend per 1,000 requests. Default 10 minutes (`-- --seconds N` to change).

use std::time::Duration;

use crate::{bench::xdp::run_bounded, util::Workspace};

/// The load tool (`taskset` is in util-linux).
const PACKAGES: &[&str] = &["wrk", "util-linux"];
/// The runner's default load length, as `bench/src/main.rs` sets it.
const DEFAULT_SECONDS: u64 = 600;
/// Start-up, warm-up and report on top of the load itself; past this it is hung.
const SLACK: Duration = Duration::from_secs(5 * 60);

pub fn run(ws: &Workspace, runner_args: &[String]) -> anyhow::Result<()> {
    let mut command = super::runner(ws, "soak", PACKAGES, runner_args)?;
    // The upstream behind the gateway.
    super::with_test_upstream(ws, &mut command)?;
    let timeout = Duration::from_secs(load_seconds(runner_args)) + SLACK;
    // The runner's processes die with it (each is killed when its handle drops); it
    // works on loopback and makes no namespaces.
    run_bounded(&mut command, timeout)?.1
}

/// The `--seconds` passed on to the runner, or its default.
fn load_seconds(runner_args: &[String]) -> u64 {
    let mut args = runner_args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--seconds") {
            Some("") => args.next().map(String::as_str),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        };
        if let Some(seconds) = value.and_then(|v| v.parse().ok()) {
            return seconds;
        }
    }
    DEFAULT_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_load_length() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(load_seconds(&args(&[])), 600);
        assert_eq!(load_seconds(&args(&["--seconds", "60"])), 60);
        assert_eq!(
            load_seconds(&args(&["--interval", "5", "--seconds=90"])),
            90
        );
    }
}
