//! The lists at scale, as root, through the real binary: entries from a file or
//! stdin (all or nothing), an add past a map's capacity refused without a trace,
//! TTLs bounded, and a daemon with a hundred thousand entries that still expires
//! exactly what is due and restores the rest after a reboot.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{Ipv6Addr, SocketAddr},
    process::{Output, Stdio},
    thread,
    time::Duration,
};

use gateway_tests::{
    gateway::Gateway,
    net::{GATEWAY_V4, Topology, start_tcp_echo, tcp_reachable},
};

const TCP_PORT: u16 = 7100;
/// How long a daemon may take to start with a hundred thousand entries to restore.
const START: Duration = Duration::from_secs(180);
const CLIENT: &str = "198.18.0.40";
const OTHER: &str = "198.18.0.41";

struct Rig {
    topology: Topology,
    gateway: Gateway,
}

impl Rig {
    fn new() -> Self {
        let topology = Topology::new(&[CLIENT, OTHER]);
        start_tcp_echo(&topology.gateway, TCP_PORT);
        let gateway = Gateway::new(&topology.gateway);
        Self { topology, gateway }
    }

    fn attach(&self, extra: &[&str]) {
        let mut args = vec!["xdp", "attach", "--iface", &self.topology.gw_iface];
        args.extend_from_slice(extra);
        self.gateway.ok(&args);
        self.topology.wait_until_settled();
    }

    fn reachable(&self, source: &str) -> bool {
        let dest = SocketAddr::new(GATEWAY_V4.parse().expect("ip"), TCP_PORT);
        tcp_reachable(
            &self.topology.client,
            source,
            dest,
            Duration::from_millis(700),
        )
    }

    /// `gateway <args>` with `input` on stdin.
    fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .gateway
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning gateway");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("writing stdin");
        drop(stdin);
        child.wait_with_output().expect("waiting for gateway")
    }

    /// The entries of a list, as text.
    fn listed(&self, list: &str) -> BTreeSet<String> {
        self.gateway
            .json(&[list, "list"])
            .as_array()
            .expect("array")
            .iter()
            .map(|entry| entry["cidr"].as_str().expect("cidr").to_owned())
            .collect()
    }

    /// The number of entries in a pinned map, from `xdp status`.
    /// Entries of a list in both its maps (`{map}4` for IPv4, `{map}6` for IPv6).
    fn map_entries(&self, map: &str) -> u64 {
        let status = self.gateway.json(&["xdp", "status"]);
        let rows = status["maps"].as_array().expect("maps");
        [4, 6]
            .iter()
            .map(|family| {
                rows.iter()
                    .find(|row| row["name"] == format!("{map}{family}"))
                    .and_then(|row| row["entries"].as_u64())
                    .unwrap_or_else(|| panic!("no {map}{family} row in {status}"))
            })
            .sum()
    }

    fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.gateway.state_dir.path().join(name);
        std::fs::write(&path, text).expect("writing the entry file");
        path.to_str().expect("utf-8").to_owned()
    }
}

/// `count` addresses in 2001:2:0:9::/64, clear of every test source.
fn filler(from: u32, count: u32) -> Vec<String> {
    let base = u128::from(Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, 0));
    (from..from + count)
        .map(|i| Ipv6Addr::from(base + u128::from(i)).to_string())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn entries_from_a_file_or_stdin_apply_all_or_nothing() {
    let rig = Rig::new();
    rig.attach(&[]);
    let file = rig.write_file(
        "block.txt",
        &format!(
            "# scanners seen today\n{CLIENT}\n\n198.18.7.0/24   # a whole range\r\n2001:2:0:7::/64\n"
        ),
    );
    rig.gateway
        .ok(&["blocklist", "add", "--file", &file, "--ttl", "1h"]);
    assert_eq!(
        rig.listed("blocklist"),
        BTreeSet::from([
            CLIENT.to_owned(),
            "198.18.7.0/24".to_owned(),
            "2001:2:0:7::/64".to_owned()
        ])
    );
    assert!(!rig.reachable(CLIENT), "an entry from the file drops");
    assert!(rig.reachable(OTHER));

    // One bad line anywhere: the command fails naming it and applies nothing, not
    // even the good lines before it.
    let before = rig.listed("blocklist");
    let bad = rig.write_file(
        "bad.txt",
        &format!("{OTHER}\n198.18.9.0/24\n# fine\n198.18.0.300\n"),
    );
    let output = rig.gateway.output(&["blocklist", "add", "--file", &bad]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(65), "bad input exits 65: {err}");
    assert!(
        err.contains("line 4") && err.contains("198.18.0.300"),
        "{err}"
    );
    assert_eq!(rig.listed("blocklist"), before, "nothing was applied");
    assert!(
        rig.reachable(OTHER),
        "the good line before the bad one was not applied"
    );
    let output = rig.with_stdin(
        &["blocklist", "add", "-"],
        &format!("{OTHER}\n198.18.0.7/24\n"),
    );
    assert!(
        stderr(&output).contains("stdin, line 2"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        rig.listed("blocklist"),
        before,
        "nothing was applied from stdin"
    );
    let output = rig
        .gateway
        .output(&["blocklist", "add", "--file", "/nonexistent/list"]);
    assert!(!output.status.success() && stderr(&output).contains("/nonexistent/list"));
    // A file of nothing but comments is an error, not a silent no-op.
    let empty = rig.write_file("empty.txt", "# nothing\n\n");
    assert!(
        rig.gateway
            .fails(&["blocklist", "add", "--file", &empty])
            .contains("no entries")
    );

    // Stdin, as `-` and as `--file -`, for remove and for the allowlist too.
    let output = rig.with_stdin(
        &["blocklist", "remove", "-"],
        &format!("{CLIENT}\n2001:2:0:7::/64\n"),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        rig.listed("blocklist"),
        BTreeSet::from(["198.18.7.0/24".to_owned()])
    );
    assert!(rig.reachable(CLIENT), "removed from stdin");
    let output = rig.with_stdin(&["allowlist", "add", "--file", "-"], "198.18.8.0/24\n");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        rig.listed("allowlist"),
        BTreeSet::from(["198.18.8.0/24".to_owned()])
    );
    let err = rig.gateway.fails(&["blocklist", "add", "-", "--file", "-"]);
    assert!(err.contains("only once"), "{err}");
}

#[test]
fn an_add_past_capacity_is_refused_and_changes_nothing() {
    let rig = Rig::new();
    rig.attach(&["--blocklist-entries", "100", "--cidr-entries", "20"]);
    let first = filler(0, 60);
    let file = rig.write_file("first.txt", &first.join("\n"));
    rig.gateway.ok(&["blocklist", "add", "--file", &file]);

    // 10 of these are already there (replacing them needs no room) and 50 are new,
    // but only 40 fit: all are refused, the 10 keep their permanent entry.
    let mut second = filler(50, 60);
    second.push(CLIENT.to_owned());
    let file = rig.write_file("second.txt", &second.join("\n"));
    let output = rig
        .gateway
        .output(&["blocklist", "add", "--file", &file, "--ttl", "1h"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(75), "a full map exits 75: {err}");
    assert!(
        err.contains("BLOCKLIST6 is full")
            && err.contains("room for 40")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(rig.map_entries("BLOCKLIST"), 60, "no new entry stayed");
    let listed = rig.gateway.json(&["blocklist", "list"]);
    let entries = listed.as_array().expect("array");
    assert_eq!(entries.len(), 60);
    assert!(
        entries.iter().all(|entry| entry["expires_at"].is_null()),
        "the replaced entries got their old value back: {listed}"
    );
    assert!(rig.reachable(CLIENT), "the refused add blocks nobody");

    // What fits goes in.
    let third = filler(60, 40);
    let file = rig.write_file("third.txt", &third.join("\n"));
    rig.gateway.ok(&["blocklist", "add", "--file", &file]);
    assert_eq!(rig.map_entries("BLOCKLIST"), 100);
    let err = rig.gateway.fails(&["blocklist", "add", &filler(100, 1)[0]]);
    assert!(err.contains("room for 0"), "{err}");

    // The same for the CIDR trie, and across both maps of the blocklist: a host that
    // fits is taken out again when its CIDRs do not.
    rig.gateway.ok(&["blocklist", "remove", &first[0]]);
    let cidrs: Vec<String> = (0..21)
        .map(|i| format!("198.18.{}.0/24", 100 + i))
        .collect();
    let mut mixed = cidrs.clone();
    mixed.push(CLIENT.to_owned());
    let file = rig.write_file("mixed.txt", &mixed.join("\n"));
    let output = rig.gateway.output(&["blocklist", "add", "--file", &file]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(75), "{err}");
    assert!(
        err.contains("CIDR4 is full") && err.contains("room for 20"),
        "{err}"
    );
    assert_eq!(rig.map_entries("CIDR"), 0);
    assert_eq!(
        rig.map_entries("BLOCKLIST"),
        99,
        "the host went out with the CIDRs"
    );
    assert!(rig.reachable(CLIENT));
    assert!(
        !rig.listed("blocklist").contains(CLIENT),
        "the state file did not record the refused add"
    );

    // Both CIDR lists share the trie: allowlisted prefixes take room from the CIDR
    // blocklist, a prefix on both lists takes one entry.
    let (allowed, blocked) = cidrs.split_at(12);
    let add = |list: &'static str, items: &[String]| {
        let mut args = vec![list, "add"];
        args.extend(items.iter().map(String::as_str));
        let output = rig.gateway.output(&args);
        (output.status.success(), stderr(&output))
    };
    assert!(add("allowlist", allowed).0);
    assert!(add("blocklist", &allowed[..4]).0);
    assert_eq!(rig.map_entries("CIDR"), 12);
    let (added, err) = add("blocklist", blocked);
    assert!(
        !added && err.contains("CIDR4 is full") && err.contains("room for 8"),
        "{err}"
    );
    assert!(add("blocklist", &blocked[..8]).0);
    assert_eq!(rig.map_entries("CIDR"), 20);
}

#[test]
fn ttls_are_bounded_to_a_year() {
    let rig = Rig::new();
    rig.attach(&[]);
    for ttl in ["18446744073709551615s", "366d", "99999999999999999999s"] {
        let output = rig
            .gateway
            .output(&["blocklist", "add", CLIENT, "--ttl", ttl]);
        assert!(!output.status.success(), "--ttl {ttl} must be refused");
        let err = stderr(&output);
        assert!(
            err.contains("maximum of 365 days") || err.contains("is not a duration"),
            "--ttl {ttl}: {err}"
        );
    }
    assert!(rig.listed("blocklist").is_empty(), "nothing was added");
    assert!(rig.reachable(CLIENT));

    rig.gateway
        .ok(&["blocklist", "add", CLIENT, "--ttl", "365d"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let listed = rig.gateway.json(&["blocklist", "list"]);
    let expires_at = listed[0]["expires_at"].as_u64().expect("expiry");
    let year = 365 * 24 * 3600;
    assert!(
        (now + year - 5..=now + year + 5).contains(&expires_at),
        "a year from now, not wrapped: {expires_at} vs {now}"
    );
    assert!(!rig.reachable(CLIENT));

    // The abuse loop's longest block is bounded the same way.
    let config = rig.write_file(
        "gateway-check.toml",
        &format!(
            "[xdp]\ninterface = \"{}\"\n[abuse]\nenabled = true\nmax_block_ttl = \"400d\"\n",
            rig.topology.gw_iface
        ),
    );
    let output = rig.gateway.output(&["check", "--config", &config]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(err.contains("abuse.max_block_ttl"), "{err}");
}

#[test]
fn a_hundred_thousand_entries_expire_on_time_and_survive_a_reboot() {
    const KEPT: u32 = 100_000;
    const SHORT: u32 = 500;
    let rig = Rig::new();
    let config = format!(
        "[xdp]\ninterface = \"{}\"\n[xdp.capacity]\nblocklist_entries = 131072\n[admin]\nenabled = false\n",
        rig.topology.gw_iface
    );
    let daemon = rig.gateway.spawn_daemon_within(&config, START);
    rig.topology.wait_until_settled();
    let mut kept = filler(0, KEPT);
    kept.push(OTHER.to_owned());
    let file = rig.write_file("kept.txt", &kept.join("\n"));
    rig.gateway
        .ok(&["blocklist", "add", "--file", &file, "--ttl", "1h"]);
    let mut short = filler(KEPT, SHORT);
    short.push(CLIENT.to_owned());
    let file = rig.write_file("short.txt", &short.join("\n"));
    rig.gateway
        .ok(&["blocklist", "add", "--file", &file, "--ttl", "3s"]);
    assert_eq!(rig.map_entries("BLOCKLIST"), u64::from(KEPT + SHORT) + 2);
    assert!(!rig.reachable(CLIENT) && !rig.reachable(OTHER));

    // The sweep removes exactly the short-lived entries from the kernel.
    let mut left = 0;
    for _ in 0..60 {
        thread::sleep(Duration::from_millis(500));
        left = rig.map_entries("BLOCKLIST");
        if left == u64::from(KEPT) + 1 {
            break;
        }
    }
    assert_eq!(
        left,
        u64::from(KEPT) + 1,
        "the expired entries left the map, the rest stayed"
    );
    assert!(rig.reachable(CLIENT), "the expired block lifted");
    assert!(!rig.reachable(OTHER), "the long block holds");
    daemon.stop();

    // A reboot wipes bpffs (detach does the same); the next start restores the
    // long-lived entries and not the expired ones.
    rig.gateway.ok(&["xdp", "detach"]);
    let daemon = rig.gateway.spawn_daemon_within(&config, START);
    rig.topology.wait_until_settled();
    assert_eq!(rig.map_entries("BLOCKLIST"), u64::from(KEPT) + 1);
    assert!(!rig.reachable(OTHER), "restored");
    assert!(rig.reachable(CLIENT), "expired entries stay gone");
    let listed = rig.listed("blocklist");
    assert_eq!(listed.len(), KEPT as usize + 1);
    assert!(listed.contains(&filler(KEPT - 1, 1)[0]) && !listed.contains(&filler(KEPT, 1)[0]));

    // Removing in bulk through the running daemon, from stdin.
    let output = rig.with_stdin(
        &["blocklist", "remove", "-"],
        &filler(0, KEPT / 2).join("\n"),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(rig.map_entries("BLOCKLIST"), u64::from(KEPT / 2) + 1);
    daemon.stop();
    let daemon = rig.gateway.spawn_daemon_within(&config, START);
    assert_eq!(
        rig.listed("blocklist").len(),
        KEPT as usize / 2 + 1,
        "the removals were durable across a restart"
    );
    daemon.stop();
}
