//! The state directory under pressure, as root with the real binary and the real
//! kernel: concurrent CLI writers, kill -9 of writers and of the daemon, a corrupt
//! state file under a running program, file modes, escaped output, and network
//! namespaces (`ip netns exec` refused, `--netns` working).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{self, Gateway},
    net::{GATEWAY_V4, Topology, start_tcp_echo, tcp_reachable},
};

const TCP_PORT: u16 = 7000;
const GOOD: &str = "198.18.0.10";
const BAD: &str = "198.18.0.11";

fn attached() -> (Topology, Gateway) {
    let topology = Topology::new(&[GOOD, BAD]);
    start_tcp_echo(&topology.gateway, TCP_PORT);
    let gateway = Gateway::new(&topology.gateway);
    gateway.ok(&["xdp", "attach", "--iface", &topology.gw_iface]);
    topology.wait_until_settled();
    (topology, gateway)
}

fn reachable(topology: &Topology, source: &str) -> bool {
    tcp_reachable(
        &topology.client,
        source,
        format!("{GATEWAY_V4}:{TCP_PORT}").parse().expect("address"),
        Duration::from_millis(700),
    )
}

fn spawn(command: &mut Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning gateway")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every `*.json` in the state directory parses and is not empty; returns lists.json.
fn assert_state_files_parse(dir: &Path) -> serde_json::Value {
    for entry in fs::read_dir(dir).expect("state dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".json") || name.ends_with(".json.bak") {
            let text = fs::read_to_string(&path).expect("readable");
            assert!(!text.trim().is_empty(), "{name} is empty");
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|err| panic!("{name} is torn ({err}): {text}"));
        }
    }
    serde_json::from_str(&fs::read_to_string(dir.join("lists.json")).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null)
}

/// The addresses of the live kernel blocklist, as `gateway blocklist list` reads
/// them from the pinned maps.
fn kernel_blocklist(gateway: &Gateway) -> BTreeSet<String> {
    gateway
        .json(&["blocklist", "list"])
        .as_array()
        .expect("array")
        .iter()
        .map(|entry| entry["cidr"].as_str().expect("cidr").to_owned())
        .collect()
}

/// Entries in the exact-address IPv4 blocklist map (every address here is IPv4),
/// counted by bpftool.
fn bpftool_blocklist_entries(gateway: &Gateway) -> usize {
    let output = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(format!("{}/BLOCKLIST4", gateway.pin_dir))
        .output()
        .expect("bpftool (apt-get install bpftool)");
    assert!(output.status.success(), "bpftool: {}", stderr(&output));
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .expect("bpftool JSON")
        .as_array()
        .expect("array")
        .len()
}

#[test]
fn twenty_concurrent_revokes_are_all_kept() {
    let gateway = Gateway::local();
    for round in 0..3 {
        let children: Vec<(String, Child)> = (0..20)
            .map(|i| {
                let id = format!("tok-{round}-{i}");
                let child = spawn(
                    &mut gateway.command(&["token", "revoke", "--jti", &id, "--reason", "test"]),
                );
                (id, child)
            })
            .collect();
        for (id, child) in children {
            let output = child.wait_with_output().expect("wait");
            assert!(
                output.status.success(),
                "revoke {id} failed: {}",
                stderr(&output)
            );
        }
        let list = gateway.json(&["token", "list"]);
        let jti = list["jti"].as_object().expect("jti map");
        for i in 0..20 {
            assert!(
                jti.contains_key(&format!("tok-{round}-{i}")),
                "tok-{round}-{i} acknowledged but missing: {list}"
            );
        }
        assert_eq!(jti.len(), 20 * (round + 1));
    }
}

#[test]
fn two_hundred_concurrent_blocklist_adds_all_reach_the_file_and_the_kernel() {
    let (topology, gateway) = attached();
    // The daemon sweeps and rewrites lists.json meanwhile.
    let daemon = gateway.spawn_daemon(&format!(
        "[xdp]\ninterface = \"{}\"\n[admin]\nenabled = false\n",
        topology.gw_iface
    ));
    let addresses: Vec<String> = (1..=100)
        .map(|i| format!("198.18.1.{i}"))
        .chain((1..=100).map(|i| format!("198.18.2.{i}")))
        .collect();
    let started = Instant::now();
    let children: Vec<(String, Child)> = addresses
        .iter()
        .map(|address| {
            let child = spawn(&mut gateway.command(&[
                "blocklist",
                "add",
                address,
                "--reason",
                "concurrent",
            ]));
            (address.clone(), child)
        })
        .collect();
    for (address, child) in children {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "add {address} failed: {}",
            stderr(&output)
        );
    }
    eprintln!("200 concurrent adds took {:?}", started.elapsed());
    let kernel = kernel_blocklist(&gateway);
    let lists = assert_state_files_parse(gateway.state_dir.path());
    let saved = lists["blocklist"].as_object().expect("blocklist");
    for address in &addresses {
        assert!(
            kernel.contains(address),
            "{address} missing from the kernel"
        );
        assert!(
            saved.contains_key(address),
            "{address} missing from lists.json"
        );
    }
    assert_eq!(bpftool_blocklist_entries(&gateway), 200);
    daemon.stop();
}

#[test]
fn kill_9_of_writers_and_of_the_daemon_never_tears_a_file_or_loses_an_acknowledged_entry() {
    let (topology, gateway) = attached();
    let config = format!(
        "[xdp]\ninterface = \"{}\"\n[admin]\nenabled = false\n",
        topology.gw_iface
    );
    let mut daemon = Some(gateway.spawn_daemon(&config));
    let mut acknowledged_blocks = Vec::new();
    let mut acknowledged_revocations = Vec::new();
    let (mut killed, mut daemon_kills) = (0, 0);
    let mut killed_blocks = Vec::new();
    for round in 0..8u32 {
        let mut children = Vec::new();
        for i in 0..12u32 {
            let address = format!("198.18.{}.{}", 10 + round, i + 1);
            // Short-lived entries keep the daemon's sweeper rewriting lists.json.
            let churn = format!("198.18.{}.{}", 30 + round, i + 1);
            let jti = format!("kill-{round}-{i}");
            children.push((
                Some(address.clone()),
                None,
                spawn(&mut gateway.command(&["blocklist", "add", &address])),
            ));
            children.push((
                None,
                None,
                spawn(&mut gateway.command(&["blocklist", "add", &churn, "--ttl", "1s"])),
            ));
            children.push((
                None,
                Some(jti.clone()),
                spawn(&mut gateway.command(&["token", "revoke", "--jti", &jti])),
            ));
        }
        // Kill a third of the writers mid-flight, spread over their lifetimes.
        thread::sleep(Duration::from_millis(u64::from(round) * 7 % 40));
        for (n, (_, _, child)) in children.iter_mut().enumerate() {
            if n % 3 == round as usize % 3 {
                thread::sleep(Duration::from_millis(6));
                let _ = child.kill();
            }
        }
        if round % 2 == 1 {
            // kill -9 of the daemon while it sweeps, then a restart.
            drop(daemon.take());
            daemon_kills += 1;
        }
        for (address, jti, child) in children {
            let output = child.wait_with_output().expect("wait");
            if output.status.success() {
                acknowledged_blocks.extend(address);
                acknowledged_revocations.extend(jti);
            } else if output.status.signal() == Some(libc::SIGKILL) {
                killed += 1;
                killed_blocks.extend(address);
            } else {
                panic!("a writer failed: {}", stderr(&output));
            }
        }
        assert_state_files_parse(gateway.state_dir.path());
        if daemon.is_none() {
            thread::sleep(Duration::from_millis(1100));
            daemon = Some(gateway.spawn_daemon(&config));
        }
    }
    // One more write: it clears what the killed writers left behind.
    gateway.ok(&["blocklist", "add", "198.18.50.1"]);
    acknowledged_blocks.push("198.18.50.1".to_owned());
    let lists = assert_state_files_parse(gateway.state_dir.path());
    let saved = lists["blocklist"].as_object().expect("blocklist");
    let kernel = kernel_blocklist(&gateway);
    for address in &acknowledged_blocks {
        assert!(
            saved.contains_key(address),
            "{address} acknowledged, not in lists.json"
        );
        assert!(
            kernel.contains(address),
            "{address} acknowledged, not in the kernel"
        );
    }
    let revoked = gateway.json(&["token", "list"]);
    for jti in &acknowledged_revocations {
        assert!(
            revoked["jti"].get(jti).is_some(),
            "{jti} acknowledged, not in revocations.json"
        );
    }
    let leftovers: Vec<String> = fs::read_dir(gateway.state_dir.path())
        .expect("state dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.starts_with(".lists.json.") && name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "stale temporaries: {leftovers:?}");
    // Killed after their kernel update, inside the locked read-modify-write.
    let inside = killed_blocks
        .iter()
        .filter(|address| kernel.contains(*address))
        .count();
    eprintln!(
        "{} blocks and {} revocations acknowledged; {killed} writers (of {}) and the daemon {daemon_kills} times killed with SIGKILL mid-flight; {inside} of {} killed adds died inside the locked write",
        acknowledged_blocks.len(),
        acknowledged_revocations.len(),
        8 * 36,
        killed_blocks.len()
    );
    assert!(!acknowledged_blocks.is_empty() && killed > 0 && daemon_kills > 0);
    daemon.take().expect("daemon").stop();
}

#[test]
fn a_corrupt_state_file_stops_the_daemon_before_the_kernel_and_the_cli_names_the_copy() {
    let (topology, gateway) = attached();
    gateway.ok(&["blocklist", "add", BAD, "--reason", "first"]);
    gateway.ok(&["blocklist", "add", "198.18.0.99", "--reason", "second"]);
    let program = gateway.json(&["xdp", "status"])["program_id"].clone();
    assert!(!reachable(&topology, BAD), "blocked before the corruption");
    let state = gateway.state_dir.path();
    fs::write(
        state.join("lists.json"),
        "{\"blocklist\": {\"198.18.0.11\": {\"rea",
    )
    .expect("corrupt");

    let config_path = state.join("gateway.toml");
    fs::write(
        &config_path,
        format!(
            "[xdp]\ninterface = \"{}\"\n[admin]\nenabled = false\n",
            topology.gw_iface
        ),
    )
    .expect("config");
    let output = gateway.output(&["run", "--config", config_path.to_str().expect("utf-8")]);
    let text = format!(
        "{}{}",
        stderr(&output),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!output.status.success(), "the daemon must refuse: {text}");
    assert!(
        text.contains("lists.json is unreadable") && text.contains("lists.json.bak"),
        "the error names the file and its last good copy: {text}"
    );
    assert!(
        !text.contains("attached the XDP program") && !text.contains("adopted"),
        "{text}"
    );

    // The program and its entries are untouched.
    assert_eq!(gateway.json(&["xdp", "status"])["program_id"], program);
    assert_eq!(bpftool_blocklist_entries(&gateway), 2);
    assert!(
        !reachable(&topology, BAD),
        "the attached program still drops"
    );
    assert!(reachable(&topology, GOOD));

    // The CLI refuses the same way, and changes nothing.
    let err = gateway.fails(&["blocklist", "add", GOOD]);
    assert!(
        err.contains("lists.json is unreadable") && err.contains("lists.json.bak"),
        "{err}"
    );
    let err = gateway.fails(&["xdp", "attach", "--iface", &topology.gw_iface]);
    assert!(err.contains("lists.json is unreadable"), "{err}");
    assert!(reachable(&topology, GOOD));

    // The named copy holds every acknowledged entry: put back, the daemon starts
    // with both records.
    fs::copy(state.join("lists.json.bak"), state.join("lists.json")).expect("restore");
    let daemon = gateway.spawn_daemon(&fs::read_to_string(&config_path).expect("config"));
    let listed = gateway.json(&["blocklist", "list"]);
    for (address, reason) in [(BAD, "first"), ("198.18.0.99", "second")] {
        assert!(
            listed
                .as_array()
                .expect("array")
                .iter()
                .any(|e| e["cidr"] == address && e["reason"] == reason && e["source"] == "cli"),
            "{address} with its record: {listed}"
        );
    }
    daemon.stop();

    // A torn revocations.json stops it too: a revoked token must not come back.
    gateway.ok(&["token", "revoke", "--jti", "one"]);
    gateway.ok(&["token", "revoke", "--jti", "two"]);
    fs::write(state.join("revocations.json"), "").expect("truncate");
    let output = gateway.output(&["run", "--config", config_path.to_str().expect("utf-8")]);
    let text = stderr(&output);
    assert!(
        !output.status.success()
            && text.contains("revocations.json is unreadable")
            && text.contains("revocations.json.bak"),
        "{text}"
    );
    let err = gateway.fails(&["token", "revoke", "--jti", "three"]);
    assert!(err.contains("revocations.json.bak"), "{err}");

    // The abuse loop's records too: a block's evidence must not be forgotten.
    fs::copy(
        state.join("revocations.json.bak"),
        state.join("revocations.json"),
    )
    .expect("restore");
    fs::write(state.join("abuse.json"), "{\"blocks\": [").expect("corrupt");
    let output = gateway.output(&["run", "--config", config_path.to_str().expect("utf-8")]);
    let text = stderr(&output);
    assert!(
        !output.status.success() && text.contains("abuse.json is unreadable"),
        "{text}"
    );
    assert_eq!(gateway.json(&["xdp", "status"])["program_id"], program);
    assert!(!reachable(&topology, BAD), "still dropping");
}

#[test]
fn state_files_and_logs_are_private() {
    let (topology, gateway) = attached();
    let root = tempfile::tempdir().expect("tempdir");
    let state = root.path().join("fresh").join("state");
    let logs = root.path().join("logs");
    let with_state = |args: &[&str]| {
        let output = gateway
            .command(args)
            .env("GATEWAY_STATE_DIR", &state)
            .output()
            .expect("gateway");
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    };
    with_state(&["blocklist", "add", BAD, "--reason", "mode"]);
    with_state(&["blocklist", "add", GOOD, "--ttl", "1h"]);
    with_state(&["token", "revoke", "--sub", "mallory"]);
    let config = root.path().join("gateway.toml");
    fs::write(
        &config,
        format!(
            "[xdp]\ninterface = \"{}\"\n[admin]\nenabled = false\n[log]\naudit = \"{}\"\naccess = \"{}\"\n",
            topology.gw_iface,
            logs.join("audit.log").display(),
            logs.join("access.log").display()
        ),
    )
    .expect("config");
    let mut daemon = gateway
        .command(&["run", "--config", config.to_str().expect("utf-8")])
        .env("GATEWAY_STATE_DIR", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("quota.json").exists() && !logs.join("audit.log").exists() {
        assert!(Instant::now() < deadline, "the daemon never started");
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mode = |path: &Path| {
        fs::metadata(path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&state), 0o700, "the state directory");
    for name in [
        "lists.json",
        "lists.json.bak",
        "lists.lock",
        "revocations.json",
        "attachment.json",
        "daemon.lock",
    ] {
        if name == "attachment.json" && !state.join(name).exists() {
            continue; // attached with another state dir; the daemon adopted it
        }
        assert_eq!(mode(&state.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&state.join("audit.log")), 0o640, "the CLI's audit log");
    assert_eq!(mode(&logs), 0o750, "the log directory");
    assert_eq!(
        mode(&logs.join("audit.log")),
        0o640,
        "the daemon's audit log"
    );
}

#[test]
fn operator_text_is_printed_with_control_characters_escaped() {
    let (topology, gateway) = attached();
    let reason = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{1b}[31mred\u{9b}1m\u{202e}txt.exe\r\nforged";
    gateway.ok(&["blocklist", "add", BAD, "--reason", reason]);
    gateway.ok(&[
        "token",
        "revoke",
        "--jti",
        "\u{1b}[1mjti",
        "--reason",
        reason,
    ]);
    assert!(!reachable(&topology, BAD));
    for args in [
        &["blocklist", "list"][..],
        &["token", "list"][..],
        &["explain", BAD][..],
    ] {
        let out = gateway.ok(args);
        assert!(
            !out.contains(['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\r']),
            "{args:?} printed raw control characters: {out:?}"
        );
        assert!(out.contains("\\x1b[2J"), "{args:?}: {out}");
    }
    // Errors that quote what was typed, too.
    let other = Gateway::new(&topology.gateway);
    let err = other.fails(&["xdp", "attach", "--iface", "\u{1b}[2Jeth\u{7}"]);
    assert!(
        !err.contains(['\u{1b}', '\u{7}']) && err.contains("\\x1b[2Jeth\\x07"),
        "{err:?}"
    );
    // JSON keeps the exact text (escaped by JSON itself).
    let list = gateway.json(&["blocklist", "list"]);
    assert_eq!(list[0]["reason"], reason);
}

#[test]
fn ip_netns_exec_is_refused_and_the_netns_option_attaches_for_good() {
    let topology = Topology::new(&[GOOD, BAD]);
    start_tcp_echo(&topology.gateway, TCP_PORT);
    let gateway = Gateway::new(&topology.gateway);
    let env = |command: &mut Command| {
        command
            .env("GATEWAY_PIN_DIR", &gateway.pin_dir)
            .env("GATEWAY_STATE_DIR", gateway.state_dir.path());
    };

    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &topology.gateway.name])
        .arg(gateway::binary())
        .args(["xdp", "attach", "--iface", &topology.gw_iface]);
    env(&mut command);
    let output = command.output().expect("ip netns exec");
    let text = stderr(&output);
    assert!(
        !output.status.success(),
        "ip netns exec must be refused: {text}"
    );
    assert!(
        text.contains("--netns") && text.contains("nsenter --net"),
        "the error says what to run instead: {text}"
    );
    assert!(
        gateway
            .fails(&["xdp", "status"])
            .contains("nothing attached"),
        "nothing was attached"
    );
    // The other commands say the same under `ip netns exec`.
    for args in [
        &["blocklist", "list"][..],
        &["xdp", "status"],
        &["xdp", "detach"],
    ] {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &topology.gateway.name])
            .arg(gateway::binary())
            .args(args);
        env(&mut command);
        let text = stderr(&command.output().expect("ip netns exec"));
        assert!(text.contains("--netns"), "{args:?}: {text}");
    }

    let netns_cli = |args: &[&str]| {
        let mut command = Command::new(gateway::binary());
        command
            .arg("--netns")
            .arg(&topology.gateway.name)
            .args(args);
        env(&mut command);
        command.output().expect("gateway --netns")
    };
    let output = netns_cli(&["xdp", "attach", "--iface", &topology.gw_iface]);
    assert!(
        output.status.success(),
        "--netns attach: {}",
        stderr(&output)
    );
    topology.wait_until_settled();
    // The command has exited; the program stays attached and filtering.
    let status = gateway.json(&["xdp", "status"]);
    assert!(status["program_id"].as_u64().is_some(), "{status}");
    let output = netns_cli(&["blocklist", "add", BAD]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !reachable(&topology, BAD),
        "the program attached by --netns drops"
    );
    assert!(reachable(&topology, GOOD));

    for name in ["../../proc/1/ns/net", "missing-namespace"] {
        let mut command = Command::new(gateway::binary());
        command.args(["--netns", name, "xdp", "status"]);
        env(&mut command);
        let output = command.output().expect("gateway");
        assert!(!output.status.success(), "--netns {name} must fail");
        assert!(
            stderr(&output).contains("ip netns list"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn the_daemon_enters_the_network_namespace_its_config_names() {
    let topology = Topology::new(&[GOOD, BAD]);
    start_tcp_echo(&topology.gateway, TCP_PORT);
    let gateway = Gateway::new(&topology.gateway);
    let state = gateway.state_dir.path();
    let config = state.join("gateway.toml");
    fs::write(
        &config,
        format!(
            "[xdp]\ninterface = \"{}\"\nnetns = \"{}\"\n[admin]\nenabled = false\n",
            topology.gw_iface, topology.gateway.name
        ),
    )
    .expect("config");
    let log = state.join("daemon.log");
    // Started from the host's namespaces: no nsenter, no ip netns exec.
    let mut daemon = Command::new(gateway::binary())
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .env("GATEWAY_PIN_DIR", &gateway.pin_dir)
        .env("GATEWAY_STATE_DIR", state)
        .stdout(fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway run");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("gateway running")
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
    topology.wait_until_settled();
    gateway.ok(&["blocklist", "add", BAD]);
    assert!(
        !reachable(&topology, BAD),
        "the daemon attached in the namespace"
    );
    assert!(reachable(&topology, GOOD));
    let _ = daemon.kill();
    let _ = daemon.wait();
    // kill -9 of the daemon: the program stays attached and filtering.
    assert!(
        gateway.json(&["xdp", "status"])["program_id"]
            .as_u64()
            .is_some()
    );
    assert!(!reachable(&topology, BAD));

    let bad = state.join("bad.toml");
    fs::write(&bad, "[xdp]\ninterface = \"eth0\"\nnetns = \"../x\"\n").expect("config");
    let err = gateway.fails(&["check", "--config", bad.to_str().expect("utf-8")]);
    assert!(err.contains("xdp.netns"), "{err}");
}

/// The rate-limit map of map layout 3, one for both families (layout 4 has one per
/// family).
const LAYOUT_3_RATE_LIMIT: &str = "RATE_LIMIT";

/// Makes the maps pinned under `pin_dir` look like the previous gateway's (map
/// layout 3): a config stamped 3 (and no limits), and the rate-limit buckets pinned
/// under that layout's one name instead of the per-family maps.
fn pin_as_older_gateway(pin_dir: &str) {
    let mut update = Command::new("bpftool");
    update.args([
        "map",
        "update",
        "pinned",
        &format!("{pin_dir}/CONFIG"),
        "key",
    ]);
    update.args(["0", "0", "0", "0", "value"]);
    let mut value = vec!["0"; size_of::<gateway_common::maps::XdpConfig>()];
    value[std::mem::offset_of!(gateway_common::maps::XdpConfig, layout)] = "3";
    update.args(value);
    let output = update.output().expect("bpftool (apt-get install bpftool)");
    assert!(output.status.success(), "bpftool: {}", stderr(&output));
    fs::rename(
        format!("{pin_dir}/RATE_LIMIT4"),
        format!("{pin_dir}/{LAYOUT_3_RATE_LIMIT}"),
    )
    .expect("renaming a pin");
    fs::remove_file(format!("{pin_dir}/RATE_LIMIT6")).expect("removing a pin");
}

#[test]
fn a_daemon_replaces_an_older_gateways_maps_and_restores_every_entry() {
    let (topology, gateway) = attached();
    gateway.ok(&["blocklist", "add", BAD]);
    gateway.ok(&["blocklist", "add", "198.18.77.0/24"]);
    gateway.ok(&["allowlist", "add", "198.18.88.0/24"]);
    assert!(!reachable(&topology, BAD), "blocked before the restart");
    let old_program = gateway.json(&["xdp", "status"])["program_id"].clone();
    pin_as_older_gateway(&gateway.pin_dir);

    // The CLI will not write into maps whose meaning it does not know.
    let refused = gateway.fails(&["blocklist", "add", "198.18.99.1"]);
    assert!(refused.contains("older gateway"), "{refused}");

    let config = format!(
        "[xdp]\ninterface = \"{}\"\n[admin]\nenabled = false\n",
        topology.gw_iface
    );
    let daemon = gateway.spawn_daemon(&config);
    assert!(
        daemon.log().contains("older gateway"),
        "the replacement is logged: {}",
        daemon.log()
    );
    let status = gateway.json(&["xdp", "status"]);
    assert_ne!(status["program_id"], old_program, "a new program: {status}");
    let blocked = kernel_blocklist(&gateway);
    for entry in [BAD, "198.18.77.0/24"] {
        assert!(blocked.contains(entry), "{entry} restored: {blocked:?}");
    }
    let allowed = gateway.json(&["allowlist", "list"]);
    assert_eq!(allowed[0]["cidr"], "198.18.88.0/24", "{allowed}");
    assert!(
        !reachable(&topology, BAD),
        "still blocked after the restart"
    );
    assert!(reachable(&topology, GOOD), "others still pass");
    gateway.ok(&["blocklist", "add", "198.18.99.1"]);
    let pin = |name: &str| format!("{}/{name}", gateway.pin_dir);
    assert!(
        !Path::new(&pin(LAYOUT_3_RATE_LIMIT)).exists(),
        "the old rate-limit map's pin removed"
    );
    for name in ["RATE_LIMIT4", "RATE_LIMIT6"] {
        assert!(Path::new(&pin(name)).exists(), "{name} pinned");
    }
    daemon.stop();
}
