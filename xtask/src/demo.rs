//! `cargo xtask demo`: the gateway on a private test network, ready to poke at.
//!
//! Builds everything, creates two network namespaces joined by a veth pair
//! (198.18.0.0/24 and 2001:2::/64 only), runs `gateway run` with the XDP program on
//! the gateway side, and prints commands that show a block and a rate limit at work.
//! Ctrl-C stops the daemon, detaches the program and removes the namespaces and the
//! demo's files, leaving the host as it was.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{setup, util, util::Workspace};

const GATEWAY_NS: &str = "gwdemo-gw";
const CLIENT_NS: &str = "gwdemo-client";
const GATEWAY_IF: &str = "gwdemo0";
const CLIENT_IF: &str = "gwdemo1";
const PIN_DIR: &str = "/sys/fs/bpf/gateway-demo";
const WORK_DIR: &str = "/tmp/gateway-demo";

pub fn run(ws: &Workspace) -> anyhow::Result<()> {
    if !util::is_root()? {
        bail!(
            "the demo attaches XDP and creates network namespaces: run `sudo -E cargo xtask demo`"
        );
    }
    setup::run(ws)?;
    let gateway = ws.build_gateway(false)?;
    teardown(&gateway);
    let result = demo(&gateway);
    teardown(&gateway);
    result
}

fn demo(gateway: &Path) -> anyhow::Result<()> {
    network()?;
    let work = PathBuf::from(WORK_DIR);
    fs::create_dir_all(&work).with_context(|| format!("creating {WORK_DIR}"))?;
    let config = work.join("gateway.toml");
    fs::write(
        &config,
        format!(
            "# The demo's config: see README.md for every key.\n\
             [xdp]\ninterface = \"{GATEWAY_IF}\"\n\
             [xdp.rate_limit]\npps = 100\nburst = 50\n"
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;

    let send = |count: u32| {
        format!(
            "ip netns exec {CLIENT_NS} bash -c 'for i in $(seq {count}); do echo hi > /dev/udp/198.18.0.1/9; done'"
        )
    };
    println!(
        "\n\
         The gateway protects {GATEWAY_IF} (198.18.0.1, 2001:2::1) in namespace {GATEWAY_NS}; a client\n\
         in {CLIENT_NS} sends from 198.18.0.10. Rate limit: 100 packets/s per source, burst 50.\n\
         In another root shell, try:\n\n\
         \x20 export GATEWAY_PIN_DIR={PIN_DIR} GATEWAY_STATE_DIR={WORK_DIR}/state\n\
         \x20 alias gateway={gateway}\n\
         \x20 {send10}    # 10 datagrams\n\
         \x20 gateway stats                 # counted under pass\n\
         \x20 gateway blocklist add 198.18.0.10 --ttl 10m --reason demo\n\
         \x20 {send10}\n\
         \x20 gateway stats                 # 10 more under drop_blocked\n\
         \x20 gateway blocklist list        # with the block's hit count\n\
         \x20 gateway blocklist remove 198.18.0.10\n\
         \x20 {send1000}  # a flood\n\
         \x20 gateway ratelimit show        # about 50 passed, the rest dropped in XDP\n\
         \x20 gateway xdp status\n\n\
         The daemon's log follows (a rate_limit_exceeded line appears for the flood). Ctrl-C ends the demo.\n",
        gateway = gateway.display(),
        send10 = send(10),
        send1000 = send(1000),
    );

    // Ctrl-C reaches the daemon (same process group), which stops cleanly; this
    // process ignores it so it can tear down afterwards. The daemon installs its own
    // handler, so the inherited "ignore" does not stick to it.
    // SAFETY: SIG_IGN is a valid disposition, set before any other thread exists.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{GATEWAY_NS}"))
        .arg(gateway)
        .args(["run", "--log-format", "text", "--config"])
        .arg(&config)
        .env("GATEWAY_PIN_DIR", PIN_DIR)
        .env("GATEWAY_STATE_DIR", work.join("state"))
        .status()
        .context("starting the gateway daemon")?;
    println!("\ndaemon stopped ({status}); tearing the demo down");
    Ok(())
}

/// Two namespaces joined by a veth pair, addressed from the benchmarking ranges.
fn network() -> anyhow::Result<()> {
    for ns in [GATEWAY_NS, CLIENT_NS] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // Addresses usable at once, without a second of duplicate address detection.
        let no_dad = "net.ipv6.conf.default.accept_dad=0";
        ip(&["netns", "exec", ns, "sysctl", "-qw", no_dad])?;
    }
    ip(&[
        "link", "add", GATEWAY_IF, "netns", GATEWAY_NS, "type", "veth", "peer", "name", CLIENT_IF,
        "netns", CLIENT_NS,
    ])?;
    for (ns, iface, addrs) in [
        (GATEWAY_NS, GATEWAY_IF, ["198.18.0.1/24", "2001:2::1/64"]),
        (CLIENT_NS, CLIENT_IF, ["198.18.0.10/24", "2001:2::10/64"]),
    ] {
        for addr in addrs {
            ip(&["-n", ns, "addr", "add", addr, "dev", iface])?;
        }
        ip(&["-n", ns, "link", "set", iface, "up"])?;
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    util::run(Command::new("ip").args(args))
}

/// Removes everything the demo creates; quiet about what is already gone, so it also
/// cleans up after an interrupted run.
fn teardown(gateway: &Path) {
    let _ = Command::new(gateway)
        .args(["xdp", "detach"])
        .env("GATEWAY_PIN_DIR", PIN_DIR)
        .env("GATEWAY_STATE_DIR", format!("{WORK_DIR}/state"))
        .output();
    for ns in [GATEWAY_NS, CLIENT_NS] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    let _ = fs::remove_dir_all(WORK_DIR);
}
