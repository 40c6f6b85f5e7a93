//! `cargo xtask demo --fleet`: two gateways and one Redis, and a block crossing
//! from one edge to the other.
//!
//! Namespaces: a client with one link to each edge (198.18.0.10 towards edge A
//! at 198.18.0.1, 198.18.2.10 towards edge B at 198.18.2.1), the two edges (XDP
//! on their client links) and a Redis namespace linked to each edge
//! (198.18.10.0/24 and 198.18.11.0/24). It blocks the client's address on B's
//! link with `gateway blocklist add --fleet` run on edge A, shows it arrive in
//! B's blocklist with its origin and B dropping the client's packets, prints
//! `gateway fleet status`, and tears everything down. It fails when the block
//! does not cross within 10 s.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util;

const CLIENT_NS: &str = "gwfleet-client";
const REDIS_NS: &str = "gwfleet-redis";
const WORK_DIR: &str = "/tmp/gateway-fleet-demo";
/// The client's address on edge B's link: the one edge A blocks for the fleet.
const BLOCKED: &str = "198.18.2.10";

/// One edge: its namespace, its interfaces and addresses.
struct Edge {
    name: &'static str,
    ns: &'static str,
    /// The client-facing interface (XDP) and the client's peer of it.
    iface: &'static str,
    client_iface: &'static str,
    /// The /24 of the client link: `.1` is the edge, `.10` the client.
    client_net: &'static str,
    /// The Redis-facing interface and Redis's peer of it.
    redis_iface: &'static str,
    redis_peer: &'static str,
    /// The /24 of the Redis link: `.1` is Redis, `.2` the edge.
    redis_net: &'static str,
}

const EDGES: [Edge; 2] = [
    Edge {
        name: "edge-a",
        ns: "gwfleet-a",
        iface: "gwfa0",
        client_iface: "gwfa1",
        client_net: "198.18.0",
        redis_iface: "gwfa2",
        redis_peer: "gwfa3",
        redis_net: "198.18.10",
    },
    Edge {
        name: "edge-b",
        ns: "gwfleet-b",
        iface: "gwfb0",
        client_iface: "gwfb1",
        client_net: "198.18.2",
        redis_iface: "gwfb2",
        redis_peer: "gwfb3",
        redis_net: "198.18.11",
    },
];

impl Edge {
    fn pin_dir(&self) -> String {
        format!("/sys/fs/bpf/gateway-fleet-demo-{}", self.name)
    }

    fn state_dir(&self) -> PathBuf {
        Path::new(WORK_DIR).join(self.name)
    }

    fn config_path(&self) -> PathBuf {
        Path::new(WORK_DIR).join(format!("{}.toml", self.name))
    }

    /// `gateway ARGS` in this edge's namespace, with its pins and state.
    fn gateway(&self, gateway: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(gateway)
            .args(args)
            .env("GATEWAY_PIN_DIR", self.pin_dir())
            .env("GATEWAY_STATE_DIR", self.state_dir());
        command
    }

    fn config(&self) -> String {
        format!(
            "[xdp]\ninterface = {iface:?}\n\n[admin]\nenabled = true\naddress = \"{client}.1:9190\"\nallow = [\"{client}.0/24\"]\n\n\
             [fleet]\nredis_url = \"redis://{redis}.1:6379\"\nnode = {name:?}\n\
             heartbeat = \"500ms\"\nconnect_timeout = \"1s\"\n",
            iface = self.iface,
            client = self.client_net,
            redis = self.redis_net,
            name = self.name,
        )
    }
}

/// Runs the fleet demo with the binaries in `bins`.
pub fn run(bins: &Path) -> anyhow::Result<()> {
    let gateway = bins.join("gateway");
    teardown(&gateway);
    let mut children = Vec::new();
    let result = demo(&gateway, &mut children);
    if result.is_err() {
        // The logs go with the teardown: show their ends first.
        for name in ["edge-a", "edge-b", "redis"] {
            let log = fs::read_to_string(Path::new(WORK_DIR).join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            println!("--- {name}.log (last lines)");
            for line in &lines[lines.len().saturating_sub(15)..] {
                println!("{line}");
            }
        }
    }
    for child in &mut children {
        // SIGTERM first: the daemons drain and stop cleanly.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling a child this process started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    for mut child in children {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    teardown(&gateway);
    result
}

fn demo(gateway: &Path, children: &mut Vec<Child>) -> anyhow::Result<()> {
    network()?;
    fs::create_dir_all(WORK_DIR).with_context(|| format!("creating {WORK_DIR}"))?;
    let redis_log = fs::File::create(Path::new(WORK_DIR).join("redis.log"))
        .context("creating the Redis log")?;
    children.push(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{REDIS_NS}"))
            .arg("redis-server")
            .args(["--port", "6379", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--bind"])
            .args(EDGES.iter().map(|edge| format!("{}.1", edge.redis_net)))
            .stdin(Stdio::null())
            .stdout(redis_log.try_clone().context("Redis log")?)
            .stderr(redis_log)
            .spawn()
            .context("starting redis-server (cargo xtask setup installs it)")?,
    );
    for edge in &EDGES {
        fs::write(edge.config_path(), edge.config()).context("writing an edge's config")?;
        let log = fs::File::create(Path::new(WORK_DIR).join(format!("{}.log", edge.name)))
            .context("creating an edge's log")?;
        let config = edge.config_path().display().to_string();
        children.push(
            edge.gateway(
                gateway,
                &["run", "--log-format", "text", "--config", &config],
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("edge log")?)
            .stderr(log)
            .spawn()
            .context("starting a gateway daemon")?,
        );
    }
    let [a, b] = &EDGES;
    println!(
        "two gateways (edge-a, edge-b) with XDP on their client links, one Redis; logs in {WORK_DIR}"
    );
    // Started: both answer the client (the admin endpoint), both in Redis.
    wait_for("both edges answering", Duration::from_secs(60), || {
        answers(a) && answers(b)
    })?;
    wait_for(
        "both edges in `gateway fleet status`",
        Duration::from_secs(60),
        || {
            let status = output(a.gateway(gateway, &["fleet", "status", "--config", &path(a)]));
            status.contains("edge-a") && status.contains("edge-b")
        },
    )?;
    show(
        "edge-a",
        a.gateway(gateway, &["fleet", "status", "--config", &path(a)]),
    );
    println!(
        "\nthe client asks edge-b for /healthz from {BLOCKED}: {}",
        if answers(b) { "answered" } else { "no answer" }
    );
    let started = Instant::now();
    show(
        "edge-a",
        a.gateway(
            gateway,
            &[
                "blocklist",
                "add",
                BLOCKED,
                "--ttl",
                "10m",
                "--reason",
                "demo",
                "--fleet",
                "--config",
                &path(a),
            ],
        ),
    );
    wait_for("the block at edge-b", Duration::from_secs(10), || {
        output(b.gateway(gateway, &["blocklist", "list"])).contains(BLOCKED)
    })?;
    println!("\nat edge-b's XDP map after {:?}:", started.elapsed());
    show("edge-b", b.gateway(gateway, &["blocklist", "list"]));
    let answered = answers(b);
    println!(
        "\nthe client asks edge-b for /healthz from {BLOCKED}: {}",
        if answered {
            "answered"
        } else {
            "no answer (dropped in XDP)"
        }
    );
    if answered {
        bail!("edge-b holds the shared block but still answered {BLOCKED}");
    }
    show("edge-b", b.gateway(gateway, &["explain", BLOCKED]));
    println!("\nthe block crossed edges; tearing the demo down");
    Ok(())
}

fn path(edge: &Edge) -> String {
    edge.config_path().display().to_string()
}

/// Whether the client, from its address on `edge`'s link, gets an answer from
/// the edge's admin endpoint (`/healthz`) within a second.
fn answers(edge: &Edge) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{CLIENT_NS}"))
        .args(["curl", "-s", "-o", "/dev/null", "-m", "1", "--interface"])
        .arg(format!("{}.10", edge.client_net))
        .arg(format!("http://{}.1:9190/healthz", edge.client_net))
        .output()
        .is_ok_and(|out| out.status.success())
}

fn output(mut command: Command) -> String {
    command
        .output()
        .map(|Output { stdout, stderr, .. }| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            )
        })
        .unwrap_or_default()
}

/// Prints the command's output under a prompt naming `edge`.
fn show(edge: &str, command: Command) {
    let shown: Vec<String> = command
        .get_args()
        .skip(2)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    println!("\n[{edge}]$ gateway {}", shown.join(" "));
    print!("{}", output(command));
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within {limit:?}")
}

fn network() -> anyhow::Result<()> {
    for ns in namespaces() {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    for edge in &EDGES {
        ip(&[
            "link",
            "add",
            edge.iface,
            "netns",
            edge.ns,
            "type",
            "veth",
            "peer",
            "name",
            edge.client_iface,
            "netns",
            CLIENT_NS,
        ])?;
        ip(&[
            "link",
            "add",
            edge.redis_iface,
            "netns",
            edge.ns,
            "type",
            "veth",
            "peer",
            "name",
            edge.redis_peer,
            "netns",
            REDIS_NS,
        ])?;
        for (ns, iface, addr) in [
            (edge.ns, edge.iface, format!("{}.1/24", edge.client_net)),
            (
                CLIENT_NS,
                edge.client_iface,
                format!("{}.10/24", edge.client_net),
            ),
            (
                edge.ns,
                edge.redis_iface,
                format!("{}.2/24", edge.redis_net),
            ),
            (
                REDIS_NS,
                edge.redis_peer,
                format!("{}.1/24", edge.redis_net),
            ),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", iface])?;
            ip(&["-n", ns, "link", "set", iface, "up"])?;
        }
    }
    Ok(())
}

fn namespaces() -> impl Iterator<Item = &'static str> {
    [CLIENT_NS, REDIS_NS]
        .into_iter()
        .chain(EDGES.iter().map(|edge| edge.ns))
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    util::run(Command::new("ip").args(args))
}

/// Removes everything the fleet demo creates; quiet about what is already gone.
fn teardown(gateway: &Path) {
    for edge in &EDGES {
        let _ = edge.gateway(gateway, &["xdp", "detach"]).output();
        let _ = fs::remove_dir_all(edge.pin_dir());
    }
    for ns in namespaces() {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    let _ = fs::remove_dir_all(WORK_DIR);
}
