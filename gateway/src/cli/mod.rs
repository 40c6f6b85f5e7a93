//! The command line: clap definitions and one module per command group.

mod doctor;
pub(crate) mod exit;
mod explain;
mod fleet;
mod generate;
mod lists;
mod ratelimit;
mod stats;
pub(crate) mod table;
mod token;
mod top;
mod xdp;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway::{
    addr::Cidr,
    config::Config,
    state::{DEFAULT_STATE_DIR, StateDir},
    xdp::{DEFAULT_PIN_DIR, Mode, PinDir},
};

/// Edge gateway: an XDP filter that drops abusive clients at the NIC, a TLS proxy in
/// front of the fleet, and the CLI to inspect and change them.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, propagate_version = true, after_long_help = exit::help())]
pub struct Cli {
    /// bpffs directory holding the pinned maps and the XDP link.
    #[arg(long, global = true, env = "GATEWAY_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Directory for state that must survive a reboot (lists, attachment).
    #[arg(long, global = true, env = "GATEWAY_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of tables; errors too, as one JSON object on stderr
    /// (`{"error": {"code", "message", "exit_code"}}`), with the same exit code.
    #[arg(long, global = true)]
    json: bool,
    /// Enter this network namespace (a name in /run/netns, as `ip netns add` makes)
    /// first: the interface to attach to lives there, while the pin directory stays
    /// in the host's bpffs. Use it instead of `ip netns exec`, whose private mount
    /// namespace loses the pinned program. For `run`, overrides `xdp.netns`.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: attach (or adopt the pinned program), apply the config, sweep
    /// expired blocks, log rate-limit events.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Json)]
        log_format: LogFormat,
        /// Run the proxy without the kernel plane (as `xdp.enabled = false`), for
        /// hosts where BPF is not available.
        #[arg(long)]
        no_xdp: bool,
    },
    /// Validate a configuration file, certificates and keys included, and list
    /// every problem with its key path: certificates out of their validity
    /// period, `server_names` a certificate does not cover, a missing XDP
    /// interface; warns about certificates expiring within 30 days and secret
    /// files others can read.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Whether this host can run the gateway: kernel version, BPF features and a
    /// verifier load of the program, native XDP in the interface's driver, the
    /// capabilities held, bpffs, the config check and its ports. Exits 1 when a
    /// check failed.
    Doctor {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/gateway/gateway.toml")]
        config: PathBuf,
    },
    /// Make the running daemon re-read its configuration and wait for its
    /// verdict: exits 0 when the new configuration runs, 64 with the daemon's
    /// reasons when it was rejected (the old one keeps running), 69 when no
    /// daemon runs.
    Reload {
        /// How long to wait for the verdict (exit 75 past it).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Attach, detach and describe the XDP program.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// Addresses and CIDRs whose packets are dropped.
    #[command(subcommand)]
    Blocklist(ListCommand),
    /// Addresses and CIDRs that always pass and are never rate limited.
    #[command(subcommand)]
    Allowlist(ListCommand),
    /// Per-source rate limits.
    #[command(subcommand)]
    Ratelimit(RatelimitCommand),
    /// Revoke bearer tokens by id (`jti`) or subject; takes effect on the
    /// daemon's next request and survives restarts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Why an address is (or was) blocked by the abuse loop: the signals, the
    /// first and last evidence, the TTL, and the kernel's drop counter.
    Explain {
        /// The client address.
        address: std::net::IpAddr,
    },
    /// Man pages and shell completions, made from this command line.
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// The gateways sharing state through the config's `[fleet]` Redis.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Packets and bytes per verdict reason.
    Stats {
        /// Refresh every --interval and show rates.
        #[arg(long)]
        watch: bool,
        /// Refresh interval in watch mode.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (watch mode).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Live view from the admin endpoint: XDP drops, top sources, requests by
    /// route and status, upstream health, recent blocks (q or Ctrl-C quits).
    Top {
        /// The daemon's admin address (`[admin] address`).
        #[arg(long, env = "GATEWAY_ADMIN", default_value_t = gateway::config::observe::DEFAULT_ADMIN_ADDRESS)]
        admin: std::net::SocketAddr,
        /// Refresh interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print one 80×24 frame (rates over one interval) and exit; with
        /// `--json`, one snapshot of the samples as JSON instead.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// The nodes seen (heartbeats), each one's version and lag.
    Status {
        /// Configuration file (TOML) whose `[fleet]` names the Redis.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Refuse tokens with this `jti` or subject.
    Revoke {
        #[command(flatten)]
        target: TokenTarget,
        /// Until this time (RFC 3339) or for this long (2h, 7d); default: forever.
        #[arg(long)]
        until: Option<String>,
        /// Why, for the record.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Accept tokens with this `jti` or subject again.
    Unrevoke {
        #[command(flatten)]
        target: TokenTarget,
    },
    /// Show every revocation.
    List,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct TokenTarget {
    /// The token's `jti`.
    #[arg(long)]
    jti: Option<String>,
    /// The token's subject (`sub`): every token of that caller.
    #[arg(long)]
    sub: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Load the program, attach it to an interface and pin it.
    Attach {
        /// Interface to protect.
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Capacity of each per-source rate-limit map (IPv4, IPv6).
        #[arg(long)]
        rate_limit_entries: Option<u32>,
        /// Capacity of each exact-address blocklist map (IPv4, IPv6).
        #[arg(long)]
        blocklist_entries: Option<u32>,
        /// Capacity of each family's CIDR trie (allowlist and CIDR blocklist together).
        #[arg(long)]
        cidr_entries: Option<u32>,
    },
    /// Detach the program and remove its pinned maps (the state file keeps the lists).
    Detach,
    /// Interface, mode, program id, map sizes and fill.
    Status,
}

#[derive(Debug, Subcommand)]
enum ListCommand {
    /// Add addresses or CIDRs: all of them, or none when the map has no room.
    Add(AddArgs),
    /// Remove addresses or CIDRs.
    Remove(RemoveArgs),
    /// Show the live entries.
    List,
    /// Remove every entry.
    Flush,
}

/// Where a list command's entries come from.
#[derive(Debug, Args)]
struct EntryArgs {
    /// Addresses or CIDRs; `-` reads them from stdin like `--file -`.
    #[arg(value_name = "ADDRESS|CIDR|-", required_unless_present = "file")]
    entries: Vec<EntryArg>,
    /// Read entries from this file (`-`: stdin), one per line; blank lines and
    /// `#` comments are allowed. A bad line fails the command before anything is
    /// applied.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

/// One positional entry: an address or CIDR, or `-` for stdin.
#[derive(Clone, Debug)]
enum EntryArg {
    Cidr(Cidr),
    Stdin,
}

impl std::str::FromStr for EntryArg {
    type Err = gateway::addr::CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "-" {
            return Ok(EntryArg::Stdin);
        }
        text.parse().map(EntryArg::Cidr)
    }
}

#[derive(Debug, Args)]
struct AddArgs {
    #[command(flatten)]
    entries: EntryArgs,
    /// Remove the entry after this long (e.g. 90s, 10m, 12h; at most 365d);
    /// default: never.
    #[arg(long, value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Why, for the record.
    #[arg(long, default_value = "manual")]
    reason: String,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, Args)]
struct RemoveArgs {
    #[command(flatten)]
    entries: EntryArgs,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// `--fleet`: the change is shared with every gateway of the config's `[fleet]`.
#[derive(Debug, Args)]
struct FleetArgs {
    /// Share the change with every gateway of the fleet (blocklist only;
    /// needs --config with a [fleet] section).
    #[arg(long, requires = "config")]
    fleet: bool,
    /// Configuration file (TOML) whose `[fleet]` names the Redis (with --fleet).
    #[arg(long, requires = "fleet")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum RatelimitCommand {
    /// Per-source buckets, most dropped first.
    Show {
        /// Show only the N sources with the most drops.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Set the limits the program enforces from its next packet on.
    Set {
        /// Packets per second per source (0: off).
        #[arg(long)]
        pps: u64,
        /// Packets a source may send back to back.
        #[arg(long)]
        burst: u64,
        /// TCP SYNs per second per source (0: off).
        #[arg(long, default_value_t = 0, requires = "syn_burst")]
        syn_pps: u64,
        /// SYNs a source may send back to back.
        #[arg(long, default_value_t = 0)]
        syn_burst: u64,
    },
    /// Forget every per-source bucket (sources start with full buckets).
    Flush,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text)
        .map_err(|err| format!("'{text}' is not a duration ({err}); use e.g. 90s, 10m or 12h"))?;
    if ttl.is_zero() {
        return Err(
            "a TTL of zero would expire at once; leave --ttl out for a permanent entry".into(),
        );
    }
    gateway::lists::check_ttl(ttl).map_err(|err| err.to_string())?;
    Ok(ttl)
}

impl Cli {
    /// Whether this is `gateway run`, the long-lived daemon.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Run { .. })
    }
}

/// The CLI's audit log, in the state directory; point the daemon's
/// `[log] audit` at the same file to keep one audit trail.
const AUDIT_LOG: &str = "audit.log";

/// What every command needs to find the gateway's state.
struct Context {
    pins: PinDir,
    state: StateDir,
    json: bool,
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if !cli.is_daemon() {
        // First, before any thread or file: root's files would lock the daemon's
        // user out of its own state.
        gateway::caps::act_as_owner_of(&cli.state_dir);
        // Changes to the kernel maps are audited with who made them; the daemon
        // sets up its own streams from its config.
        gateway::observe::logs::init_cli_audit(&cli.state_dir.join(AUDIT_LOG));
    }
    if let Some(name) = cli.netns.as_deref().filter(|_| !cli.is_daemon()) {
        gateway::xdp::netns::enter(name)?;
    }
    let ctx = Context {
        pins: PinDir::new(cli.pin_dir),
        state: StateDir::new(cli.state_dir),
        json: cli.json,
    };
    match cli.command {
        Command::Run {
            config,
            log_format,
            no_xdp,
        } => run_daemon(&ctx, &config, log_format, no_xdp, cli.netns),
        Command::Check { config } => check(&ctx, &config, cli.netns.as_deref()),
        Command::Doctor { config } => doctor::run(&ctx, &config, cli.netns.as_deref()),
        Command::Reload { timeout } => reload(&ctx, timeout),
        Command::Xdp(command) => xdp::run(&ctx, command),
        Command::Blocklist(command) => lists::run(&ctx, gateway::lists::ListKind::Block, command),
        Command::Allowlist(command) => lists::run(&ctx, gateway::lists::ListKind::Allow, command),
        Command::Ratelimit(command) => ratelimit::run(&ctx, command),
        Command::Token(command) => token::run(&ctx, command),
        Command::Explain { address } => explain::run(&ctx, address),
        Command::Fleet(FleetCommand::Status { config }) => fleet::status(&ctx, &config),
        Command::Generate(command) => generate::run(command),
        Command::Stats {
            watch,
            interval,
            count,
        } => stats::run(&ctx, watch, interval, count),
        Command::Top {
            admin,
            interval,
            once,
        } => top::run(admin, interval, once, cli.json),
    }
}

fn check(ctx: &Context, path: &Path, netns: Option<&str>) -> anyhow::Result<()> {
    let config = Config::load_checked(path)?;
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    check_findings(&config, netns, &mut problems, &mut warnings);
    if !problems.is_empty() {
        return Err(gateway::config::ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    if ctx.json {
        return print_json(&serde_json::json!({
            "path": path,
            "valid": true,
            "listeners": config.listeners.len(),
            "routes": config.routes.len(),
            "upstreams": config.upstreams.len(),
            "xdp": config.xdp.enabled,
            "warnings": warnings,
        }));
    }
    for warning in &warnings {
        eprintln!("warning: {}", table::escape(warning));
    }
    println!(
        "{}: valid ({} listener(s), {} route(s), {} upstream pool(s), XDP {})",
        path.display(),
        config.listeners.len(),
        config.routes.len(),
        config.upstreams.len(),
        if config.xdp.enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    Ok(())
}

/// What `check` finds beyond the file's own validation: certificates and the
/// interface.
fn check_findings(
    config: &Config,
    netns: Option<&str>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let findings = gateway::tls::inspect::inspect(config, std::time::SystemTime::now());
    problems.extend(findings.problems);
    warnings.extend(config.warnings());
    warnings.extend(findings.warnings);
    if config.xdp.enabled {
        interface_check(config, netns, problems, warnings);
    }
}

/// Whether `xdp.interface` exists where the daemon will look for it: in
/// `xdp.netns` unless `--netns` was given (and entered already).
fn interface_check(
    config: &Config,
    netns: Option<&str>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let iface = &config.xdp.interface;
    if netns.is_none()
        && let Some(name) = &config.xdp.netns
        && let Err(err) = gateway::xdp::netns::enter(name)
    {
        warnings.push(format!(
            "xdp.interface: not checked, the namespace xdp.netns = {name:?} cannot be entered: {err}"
        ));
        return;
    }
    if gateway::xdp::if_index(iface).is_err() {
        let place = netns.or(config.xdp.netns.as_deref()).map_or_else(
            || "this network namespace".to_owned(),
            |n| format!("network namespace {n:?}"),
        );
        problems.push(format!(
            "xdp.interface: no interface named {iface:?} in {place} (see `ip link`)"
        ));
    }
}

fn reload(ctx: &Context, timeout: Duration) -> anyhow::Result<()> {
    tracing::info!(target: "audit", event = "config_reload_requested");
    let verdict = gateway::control::request_reload(&ctx.state, timeout)?;
    if !verdict.accepted {
        return Err(gateway::control::ReloadRejected {
            errors: verdict.errors,
        }
        .into());
    }
    if ctx.json {
        return print_json(&verdict);
    }
    for warning in &verdict.warnings {
        eprintln!("warning: {}", table::escape(warning));
    }
    println!("configuration reloaded");
    Ok(())
}

fn run_daemon(
    ctx: &Context,
    path: &Path,
    log_format: LogFormat,
    no_xdp: bool,
    netns: Option<String>,
) -> anyhow::Result<()> {
    let mut config = Config::load_checked(path)?;
    if no_xdp {
        config.xdp.enabled = false;
    }
    // Before the runtime starts its threads, so all of them live in it.
    let netns = netns.or_else(|| config.xdp.netns.clone());
    if let Some(name) = &netns {
        gateway::xdp::netns::enter(name)?;
    }
    gateway::observe::logs::init_daemon(&config.log, matches!(log_format, LogFormat::Json))?;
    if let Some(name) = &netns {
        tracing::info!(netns = %name, "entered the network namespace");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(gateway::daemon::run(path, config, &ctx.pins, &ctx.state))?;
    Ok(())
}

/// Prints `value` as pretty JSON.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// RFC 3339 (UTC, seconds) for a Unix time.
fn unix_time(secs: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

fn format_unix(secs: u64) -> String {
    unix_time(secs).to_string()
}
