//! `cargo xtask demo`: the gateway on a private test network, ready to poke at.
//!
//! Builds everything, creates three network namespaces — a client, the gateway,
//! and a fleet of three mTLS upstream hosts (`test-upstream`) — joined by veth
//! pairs (198.18.0.0/24, 198.18.1.0/24 and 2001:2::/64 only), generates the
//! certificates, starts an identity provider (`demo-idp`: OIDC discovery and a
//! JWKS over HTTPS, in the fleet namespace) that writes the demo tokens, runs
//! `gateway run` with the XDP program on the client side and the proxy in front
//! of the fleet, and once it is ready prints commands that show token checks, the
//! abuse loop blocking a client in XDP, a block, a rate limit, the metrics and
//! `gateway top` at work ([`steps`]). Ctrl-C stops the daemon, the identity
//! provider and the upstreams, detaches the program and removes the namespaces and
//! the demo's files, leaving the host as it was. `--check` ([`check`]) proves all
//! of that by running the printed commands.

mod check;
mod fleet;
mod steps;

pub use self::check::run as check;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::steps::Commands;
use crate::{setup, util, util::Workspace};

const GATEWAY_NS: &str = "gwdemo-gw";
const CLIENT_NS: &str = "gwdemo-client";
const GATEWAY_IF: &str = "gwdemo0";
const CLIENT_IF: &str = "gwdemo1";
const FLEET_NS: &str = "gwdemo-fleet";
/// The gateway's side of the fleet link, and the fleet's.
const FLEET_GW_IF: &str = "gwdemo2";
const FLEET_IF: &str = "gwdemo3";
/// The upstream hosts, each requiring the gateway's client certificate.
const UPSTREAMS: [&str; 3] = ["198.18.1.11:8443", "198.18.1.12:8443", "198.18.1.13:8443"];
/// The identity provider, also in the fleet namespace.
const IDP: &str = "198.18.1.20:443";
const PIN_DIR: &str = "/sys/fs/bpf/gateway-demo";
const WORK_DIR: &str = "/tmp/gateway-demo";
/// Under [`WORK_DIR`]: the printed commands as JSON ([`Commands`]), for the check.
const COMMANDS_FILE: &str = "commands.json";

/// The binaries the demo runs, built by [`build`] into one directory.
const BINARIES: [&str; 4] = ["gateway", "test-upstream", "demo-idp", "demo-certs"];
/// How long the daemon may take to report ready (XDP attached, keys fetched,
/// upstreams healthy).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// Run the demo, every command it prints and check what each promises, then
    /// Ctrl-C it and check that it left nothing behind (also a step of `cargo xtask test`).
    #[arg(long)]
    pub check: bool,
    /// Use the binaries in DIR (gateway, test-upstream, demo-idp, demo-certs) instead
    /// of running setup and building them.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Two gateways and one Redis instead: a block made on one edge crosses to
    /// the other's XDP map (see docs/fleet.md); runs to the end by itself.
    #[arg(long, conflicts_with = "check")]
    pub fleet: bool,
}

pub fn run(ws: &Workspace, args: &Args) -> anyhow::Result<()> {
    if !util::is_root()? {
        bail!(
            "the demo attaches XDP and creates network namespaces: run `sudo -E cargo xtask demo`"
        );
    }
    let bins = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            setup::run(ws)?;
            build(ws)?
        }
    };
    if let Some(missing) = BINARIES.iter().map(|b| bins.join(b)).find(|b| !b.is_file()) {
        bail!(
            "{} does not exist: build it or drop --bin-dir",
            missing.display()
        );
    }
    if args.check {
        return check::run(&bins);
    }
    if args.fleet {
        return fleet::run(&bins);
    }
    let gateway = bins.join("gateway");
    teardown(&gateway);
    let mut children = Vec::new();
    let result = demo(&gateway, &bins, &mut children);
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    teardown(&gateway);
    result
}

/// Builds [`BINARIES`] and returns the directory that holds them.
pub fn build(ws: &Workspace) -> anyhow::Result<PathBuf> {
    let gateway = ws.build_gateway(false)?;
    util::run(
        ws.cargo()
            .args(["build", "--package", "gateway-tests", "--bins"]),
    )?;
    gateway
        .parent()
        .map(Path::to_path_buf)
        .context("the gateway binary has no parent directory")
}

/// Sets the demo up and runs the daemon until Ctrl-C; every process it starts goes
/// into `children`, which the caller stops.
fn demo(gateway: &Path, bins: &Path, children: &mut Vec<Child>) -> anyhow::Result<()> {
    network()?;
    let work = PathBuf::from(WORK_DIR);
    fs::create_dir_all(&work).with_context(|| format!("creating {WORK_DIR}"))?;
    let pki = work.join("pki");
    util::run(Command::new(bins.join("demo-certs")).arg(&pki))?;
    // From here on Ctrl-C is for the daemon (same process group), which drains and
    // stops. The upstreams inherit "ignore", so they keep serving while it drains
    // (no spurious pool-down alert) until this process, which ignores it too, stops
    // them and tears down. The daemon and the identity provider install their own
    // handlers, so the inherited "ignore" does not stick to them.
    // SAFETY: SIG_IGN is a valid disposition, set before any other thread exists.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    for (i, address) in UPSTREAMS.iter().enumerate() {
        let log = fs::File::create(work.join(format!("up-{}.log", i + 1)))
            .context("creating an upstream log")?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{FLEET_NS}"))
            .arg(bins.join("test-upstream"))
            .args(["--listen", address, "--name", &format!("up-{}", i + 1)])
            .arg("--cert")
            .arg(pki.join("fleet.crt"))
            .arg("--key")
            .arg(pki.join("fleet.key"))
            .arg("--client-ca")
            .arg(pki.join("fleet-ca.crt"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("upstream log")?)
            .stderr(log)
            .spawn()
            .context("starting a demo upstream")?;
        children.push(child);
    }
    start_idp(bins, &work, children)?;
    let config = work.join("gateway.toml");
    fs::write(&config, demo_config(&pki, &work))
        .with_context(|| format!("writing {}", config.display()))?;

    let mut daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{GATEWAY_NS}"))
        .arg(gateway)
        .args(["run", "--log-format", "text", "--config"])
        .arg(&config)
        .env("GATEWAY_PIN_DIR", PIN_DIR)
        .env("GATEWAY_STATE_DIR", work.join("state"))
        .spawn()
        .context("starting the gateway daemon")?;
    // The commands are printed once they work, below the daemon's start-up lines.
    if wait_ready(&mut daemon)? {
        let commands = Commands::new(&gateway.display().to_string());
        print_commands(&commands);
        let json = serde_json::to_string_pretty(&commands).context("serializing the commands")?;
        let path = work.join(COMMANDS_FILE);
        // Written whole, then renamed: a reader never sees half a file.
        let partial = path.with_extension("partial");
        fs::write(&partial, json).with_context(|| format!("writing {}", partial.display()))?;
        fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    let status = daemon.wait().context("waiting for the gateway daemon")?;
    println!("\ndaemon stopped ({status}); tearing the demo down");
    Ok(())
}

/// Polls the daemon's `/readyz` (the printed command) until it says ready; false if
/// the daemon exited first (Ctrl-C during start-up), an error if it never got ready.
fn wait_ready(daemon: &mut Child) -> anyhow::Result<bool> {
    let readyz = Commands::readyz();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if daemon
            .try_wait()
            .context("waiting for the gateway daemon")?
            .is_some()
        {
            return Ok(false);
        }
        let output = Command::new("bash")
            .args(["-c", &readyz.command])
            .output()
            .context("running bash")?;
        let last = String::from_utf8_lossy(&output.stdout);
        if readyz.expect.verify(&last, None).is_ok() {
            return Ok(true);
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            bail!(
                "the gateway did not get ready within {} s; /readyz said: {}",
                READY_TIMEOUT.as_secs(),
                last.trim()
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// What the demo shows, then the commands to paste.
fn print_commands(commands: &Commands) {
    let text = format!(
        "\n\
         The gateway protects {GATEWAY_IF} (198.18.0.1, 2001:2::1) in namespace {GATEWAY_NS}; a client\n\
         in {CLIENT_NS} sends from 198.18.0.10. Rate limit: 100 packets/s per source, burst 50.\n\
         Behind it, three upstreams in {FLEET_NS} ({fleet}) require its client certificate.\n\
         /orders needs a token from the demo identity provider (https://{IDP}, OIDC discovery\n\
         and JWKS) with scope orders:read; {WORK_DIR}/token-read has it, token-noscope does not,\n\
         token-forged is signed by a key the provider never published. The abuse loop blocks an\n\
         address in XDP for 30 s once its signals reach 10 within 60 s (a bad token weighs 2).\n\
         The gateway is ready. In another root shell, try:\n\n\
         {block}\n\
         The daemon's log continues below (audit lines for the token failures and the abuse\n\
         block; a rate_limit_exceeded line for the flood). Ctrl-C ends the demo.\n",
        fleet = UPSTREAMS.join(", "),
        block = commands.render(),
    );
    // One write, so the daemon's log lines do not land inside the block.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Starts `demo-idp` in the fleet namespace and waits until it has written the
/// tokens and its CA. Its temporary files go under the work directory, which the
/// teardown removes even when the provider is killed.
fn start_idp(bins: &Path, work: &Path, children: &mut Vec<Child>) -> anyhow::Result<()> {
    let log = fs::File::create(work.join("idp.log")).context("creating the provider's log")?;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{FLEET_NS}"))
        .arg(bins.join("demo-idp"))
        .arg(IDP)
        .arg(work)
        .env("TMPDIR", work)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("provider log")?)
        .stderr(log)
        .spawn()
        .context("starting the demo identity provider")?;
    let ready = work.join("idp.ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if let Some(status) = child.try_wait().context("waiting for the provider")? {
            bail!(
                "the demo identity provider exited ({status}); see {}",
                work.join("idp.log").display()
            );
        }
        if Instant::now() > deadline {
            children.push(child);
            bail!("the demo identity provider wrote no tokens within 30 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    children.push(child);
    Ok(())
}

/// The demo's config: XDP on the client link, one TLS listener, the fleet pool,
/// `/orders` behind a token with scope `orders:read` from the demo provider, the
/// abuse loop with a low threshold and a short block, and two alerts that log (a
/// block added, the pool losing every endpoint).
fn demo_config(pki: &Path, work: &Path) -> String {
    let pem = |name: &str| pki.join(name).display().to_string();
    let endpoints = UPSTREAMS.map(|u| format!("{u:?}")).join(", ");
    format!(
        "# The demo's config: see docs/configuration.md for every key.\n\
         [xdp]\ninterface = \"{GATEWAY_IF}\"\n\
         [xdp.rate_limit]\npps = 100\nburst = 50\n\n\
         [[listener]]\nname = \"public\"\naddress = \"198.18.0.1:443\"\n\
         [[listener.certificates]]\ncert = {edge_cert:?}\nkey = {edge_key:?}\nserver_names = [\"api.demo\"]\n\n\
         [auth.issuers.demo]\nissuer = \"https://{IDP}\"\naudiences = [\"api.demo\"]\n\
         discovery_url = \"https://{IDP}/.well-known/openid-configuration\"\nca = {idp_ca:?}\n\n\
         [abuse]\nenabled = true\nwindow = \"60s\"\nthreshold = 10\nblock_ttl = \"30s\"\n\
         # The flood below shows the XDP rate limit alone; a few quick HTTPS requests\n\
         # would also exceed its 50-packet burst, so its events carry no weight here.\n\
         [abuse.weights]\nxdp_rate_exceeded = 0\n\n\
         [[route]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"fleet\"\n\n\
         [[route]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"fleet\"\n\
         [route.auth]\nmode = \"required\"\nissuers = [\"demo\"]\nscopes_all = [\"orders:read\"]\n\n\
         [upstream.fleet]\nendpoints = [{endpoints}]\nserver_name = \"fleet.internal\"\n\
         ca = {fleet_ca:?}\nclient_cert = {client_cert:?}\nclient_key = {client_key:?}\n\n\
         [[alert]]\nname = \"block-added\"\nmetric = \"gateway_xdp_map_entries\"\n\
         labels = {{ map = \"BLOCKLIST4\" }}\ncondition = \"increased\"\n\n\
         [[alert]]\nname = \"pool-down\"\nmetric = \"gateway_upstream_healthy_endpoints\"\n\
         condition = \"below\"\nthreshold = 1\nseverity = \"critical\"\n",
        edge_cert = pem("edge.crt"),
        edge_key = pem("edge.key"),
        fleet_ca = pem("fleet-ca.crt"),
        client_cert = pem("gateway.crt"),
        client_key = pem("gateway.key"),
        idp_ca = work.join("idp-ca.crt").display().to_string(),
    )
}

/// Three namespaces joined by veth pairs, addressed from the benchmarking ranges.
fn network() -> anyhow::Result<()> {
    for ns in [GATEWAY_NS, CLIENT_NS, FLEET_NS] {
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
    ip(&[
        "link",
        "add",
        FLEET_GW_IF,
        "netns",
        GATEWAY_NS,
        "type",
        "veth",
        "peer",
        "name",
        FLEET_IF,
        "netns",
        FLEET_NS,
    ])?;
    let fleet_addrs: Vec<String> = UPSTREAMS
        .iter()
        .filter_map(|u| u.split_once(':'))
        .chain(IDP.split_once(':'))
        .map(|(ip, _)| format!("{ip}/24"))
        .collect();
    for (ns, iface, addrs) in [
        (
            GATEWAY_NS,
            GATEWAY_IF,
            vec!["198.18.0.1/24".to_owned(), "2001:2::1/64".to_owned()],
        ),
        (
            CLIENT_NS,
            CLIENT_IF,
            vec!["198.18.0.10/24".to_owned(), "2001:2::10/64".to_owned()],
        ),
        (GATEWAY_NS, FLEET_GW_IF, vec!["198.18.1.1/24".to_owned()]),
        (FLEET_NS, FLEET_IF, fleet_addrs),
    ] {
        for addr in &addrs {
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
    for ns in [GATEWAY_NS, CLIENT_NS, FLEET_NS] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    let _ = fs::remove_dir_all(WORK_DIR);
}
