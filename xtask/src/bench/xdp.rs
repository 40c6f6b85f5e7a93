//! `cargo xtask bench xdp`: the kernel plane, measured by `gateway-bench xdp` (see
//! `bench/src/main.rs`) next to nftables, xdp-filter and reference XDP programs.

use std::{
    fs, io,
    os::unix::process::CommandExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{util, util::Workspace};

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
/// A whole run took about six minutes on a busy 2-core machine before the tries-empty
/// column (a fifth map state, about a tenth more); past this it is hung.
const TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// Pin directories the `gateway-tests` rigs create under /sys/fs/bpf, named
/// `<prefix><pid in hex><call counter in hex>`.
const PIN_PREFIXES: [&str; 2] = ["gateway-verdict-", "gateway-test-"];
/// The runner makes only a few rigs; the counters of its pin directories stay below this.
const MAX_RIGS: u32 = 64;

pub fn run(ws: &Workspace, runner_args: &[String]) -> anyhow::Result<()> {
    let mut command = super::runner(ws, "xdp", PACKAGES, runner_args)?;
    remove_leftover_namespaces()?;
    let (pid, result) = run_bounded(&mut command, TIMEOUT)?;
    // Whatever happened, leave no namespaces (and so no veths or XDP programs) behind,
    // and, when the runner did not end on its own, none of its pinned maps (a million-
    // entry blocklist holds a lot of kernel memory).
    remove_leftover_namespaces()?;
    if result.is_err() {
        remove_leftover_pins(pid)?;
    }
    result
}

/// Runs `command`, killing it if it outlives `timeout`; returns its pid and whether it
/// succeeded. Ctrl-C stops the runner but not this process, which then cleans up.
pub(super) fn run_bounded(
    command: &mut Command,
    timeout: Duration,
) -> anyhow::Result<(u32, anyhow::Result<()>)> {
    let line = util::display(command);
    println!("$ {line}");
    // An ignored signal stays ignored across exec: give the runner the default back.
    // SAFETY: signal() is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        })
    };
    // SAFETY: SIG_IGN and SIG_DFL are valid dispositions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let spawned = command
        .spawn()
        .with_context(|| format!("could not start `{line}`"));
    let result = spawned.map(|mut child| (child.id(), wait_bounded(&mut child, &line, timeout)));
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    result
}

fn wait_bounded(
    child: &mut std::process::Child,
    line: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
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

/// Deletes the pin directories of a runner with this pid (see [`PIN_PREFIXES`]).
fn remove_leftover_pins(pid: u32) -> anyhow::Result<()> {
    for name in leftover_pin_names(pid) {
        let path = std::path::Path::new("/sys/fs/bpf").join(&name);
        match fs::remove_dir_all(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(())
}

/// The pin directory names a runner with this pid can have made
/// (`gateway_tests::unique_suffix`: the pid's low 20 bits, then a counter, in hex).
fn leftover_pin_names(pid: u32) -> Vec<String> {
    let tag = &format!("{:x}", pid & 0xfffff);
    PIN_PREFIXES
        .iter()
        .flat_map(|prefix| (0..MAX_RIGS).map(move |n| format!("{prefix}{tag}{n:x}")))
        .collect()
}

/// Deletes the namespaces whose names start with [`NETNS_PREFIX`].
pub(super) fn remove_leftover_namespaces() -> anyhow::Result<()> {
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
    fn names_the_runners_pin_directories() {
        let names = leftover_pin_names(0x1a2b);
        assert!(names.contains(&"gateway-verdict-1a2b0".to_owned()));
        assert!(names.contains(&"gateway-test-1a2b3f".to_owned()));
        assert_eq!(names.len(), 2 * MAX_RIGS as usize);
    }

    #[test]
    fn finds_only_our_namespaces() {
        let list = "gwb-gw-1a2b0 (id: 4)\ngwt-gw-99 (id: 3)\ngwb-xf-1a2b1\nother\n";
        assert_eq!(leftover_namespaces(list), ["gwb-gw-1a2b0", "gwb-xf-1a2b1"]);
    }
}
