//! `gateway-bench`: the benchmark runner behind `cargo xtask bench`.
//!
//! It is its own crate, not part of xtask, because it links the gateway, the test rigs
//! of `gateway-tests` and the reference XDP object (built by `build.rs` with the eBPF
//! nightly): xtask must build before `cargo xtask setup` has installed that toolchain.
//! It needs root; xtask builds it in release, runs it and cleans up after it.
//!
//! `gateway-bench xdp` measures the kernel plane and writes `xdp.json` and `xdp.md`
//! into `--out`; `gateway-bench proxy` measures the userspace plane and writes
//! `proxy.json` and `proxy.md`; `gateway-bench attack` measures a legitimate client
//! through the gateway under a flood and writes `attack.json` and `attack.md`;
//! `gateway-bench soak` samples the gateway's memory and descriptors under a long
//! steady load and writes `soak.json` and `soak.md`.

mod attack;
mod cost;
mod machine;
mod peers;
mod proxy;
mod references;
mod report;
mod soak;
mod stats;
mod wire;

use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "gateway-bench",
    about = "Benchmarks of the edge gateway (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// The kernel plane: per-packet cost with BPF_PROG_TEST_RUN and drop rates on veth.
    Xdp(XdpArgs),
    /// The userspace plane: the TLS proxy next to HAProxy and the fleet itself.
    Proxy(ProxyArgs),
    /// Both planes together: a legitimate HTTPS client through the gateway while
    /// another namespace floods it, with and without the XDP program.
    Attack(AttackArgs),
    /// Memory under a long steady load: RSS and open descriptors every interval, and
    /// their trend per 1,000 requests, with nothing scraping `/metrics`.
    Soak(SoakArgs),
}

#[derive(clap::Args)]
struct SoakArgs {
    /// Seconds of load (the soak: at least 10 minutes).
    #[arg(long, default_value_t = 600)]
    seconds: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    interval: u32,
    /// wrk's keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// wrk's connections that close after every request (new TLS connections).
    #[arg(long, default_value_t = 2)]
    new_connections: u32,
    /// CPU the load tools run on.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// Directory for soak.json and soak.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct AttackArgs {
    /// Rounds (each measures every scenario once; the median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of wrk per run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// wrk's keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// CPU of the generator (and so of the gateway veth's receive softirq).
    #[arg(long, default_value_t = 0)]
    flood_cpu: usize,
    /// The flood's rate, frames per second (above what the kernel stack absorbs on one
    /// CPU, well below what the XDP program drops).
    #[arg(long, default_value_t = 1_000_000)]
    flood_pps: u32,
    /// CPU of wrk, the gateway and its upstream.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// Flooding sources in the blocklist.
    #[arg(long, default_value_t = 256)]
    blocked_sources: u32,
    /// Flooding sources over their rate limit.
    #[arg(long, default_value_t = 8)]
    limited_sources: u32,
    /// Per-source XDP rate limit, packets per second (and burst).
    #[arg(long, default_value_t = 20_000)]
    limit_pps: u32,
    /// A run waits until the CPUs are less busy than this, in percent of all CPUs...
    #[arg(long, default_value_t = 15.0)]
    max_busy: f64,
    /// ...but no longer than this many seconds per run...
    #[arg(long, default_value_t = 5.0)]
    idle_wait: f64,
    /// ...and no longer than this many seconds over the whole benchmark.
    #[arg(long, default_value_t = 45.0)]
    idle_budget: f64,
    /// Directory for attack.json and attack.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Rounds (each measures every target once; the median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per keep-alive run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Seconds per handshake run.
    #[arg(long, default_value_t = 2)]
    handshake_seconds: u32,
    /// Concurrent keep-alive connections (repeatable).
    #[arg(long, default_values_t = [16, 64])]
    connections: Vec<u32>,
    /// CPU the load tool runs on.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// CPUs (a taskset list) the proxies and the fleet run on.
    #[arg(long, default_value = "1")]
    server_cpus: String,
    /// Worker threads of the gateway's runtime and of HAProxy alike.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Measure only these parts (repeatable; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<proxy::Scenario>,
    /// Requests per second of the open-loop runs; default: --open-loop-share of
    /// HAProxy-with-JWT's HTTP/1.1 rate at the first --connections in this run.
    #[arg(long)]
    open_loop_rate: Option<f64>,
    /// See --open-loop-rate.
    #[arg(long, default_value_t = 0.5)]
    open_loop_share: f64,
    /// Seconds per open-loop run.
    #[arg(long, default_value_t = 10)]
    open_loop_seconds: u32,
    /// The oha binary for the open-loop runs (`cargo xtask bench proxy` installs one).
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// Idle keep-alive connections each proxy holds in the memory run (0: no memory run).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: u32,
    /// A run waits until the CPUs are less busy than this, in percent of all CPUs...
    #[arg(long, default_value_t = 15.0)]
    max_busy: f64,
    /// ...but no longer than this many seconds per run...
    #[arg(long, default_value_t = 5.0)]
    idle_wait: f64,
    /// ...and no longer than this many seconds over the whole benchmark.
    #[arg(long, default_value_t = 60.0)]
    idle_budget: f64,
    /// Instead of the scenarios, count instructions per request with callgrind:
    /// the gateway, the reference forwarder and HAProxy each under valgrind, their
    /// dumps (for `callgrind_annotate`) in this directory.
    #[arg(long)]
    callgrind: Option<PathBuf>,
    /// Requests per target and protocol under --callgrind (h2load -n).
    #[arg(long, default_value_t = 2000)]
    callgrind_requests: u32,
    /// Directory for proxy.json and proxy.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct XdpArgs {
    /// Which part to run.
    #[arg(long, value_enum, default_value_t = Part::All)]
    part: Part,
    /// Runs per figure (the median, min and max are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// BPF_PROG_TEST_RUN repeat count per per-packet run.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Seconds of flooding per on-the-wire run.
    #[arg(long, default_value_t = 2.0)]
    wire_seconds: f64,
    /// Distinct flooding sources (all blocked, or all rate limited).
    #[arg(long, default_value_t = 256)]
    sources: u32,
    /// CPU the generator and the receiving softirq run on.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// A run waits until the CPUs are less busy than this, in percent of all CPUs...
    #[arg(long, default_value_t = 15.0)]
    max_busy: f64,
    /// ...but no longer than this many seconds per run...
    #[arg(long, default_value_t = 5.0)]
    idle_wait: f64,
    /// ...and no longer than this many seconds over the whole benchmark.
    #[arg(long, default_value_t = 90.0)]
    idle_budget: f64,
    /// Directory for xdp.json and xdp.md.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Cost,
    Wire,
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "gateway-bench loads XDP programs and creates network namespaces: it must run as \
             root (`sudo -E cargo xtask bench`)"
        );
    }
    match cli.suite {
        Suite::Xdp(args) => xdp(&args),
        Suite::Proxy(args) => proxy(&args),
        Suite::Attack(args) => attack(&args),
        Suite::Soak(args) => soak(&args),
    }
}

fn soak(args: &SoakArgs) -> anyhow::Result<()> {
    let options = soak::Options {
        seconds: args.seconds,
        interval: args.interval,
        connections: args.connections,
        new_connections: args.new_connections,
        load_cpu: args.load_cpu,
    };
    let run = report::Run {
        machine: machine::describe()?,
        command: command_line(),
        started_at: unix_now(),
    };
    println!(
        "soak: {} s of load, a sample every {} s...",
        args.seconds, args.interval
    );
    let report = soak::run(&options, run)?;
    write_report(&args.out, "soak", &report, &report.markdown())
}

fn attack(args: &AttackArgs) -> anyhow::Result<()> {
    // One worker thread, as in the proxy suite.
    // SAFETY: the runner is still single-threaded here.
    unsafe {
        std::env::set_var("TOKIO_WORKER_THREADS", "1");
    }
    let mut waiter = machine::IdleWaiter::new(
        args.max_busy,
        Duration::from_secs_f64(args.idle_wait),
        Duration::from_secs_f64(args.idle_budget),
    );
    let started_at = unix_now();
    let options = attack::Options {
        runs: args.runs,
        seconds: args.seconds,
        connections: args.connections,
        flood_cpu: args.flood_cpu,
        flood_pps: args.flood_pps,
        server_cpu: args.server_cpu,
        blocked_sources: args.blocked_sources,
        limited_sources: args.limited_sources,
        limit_pps: args.limit_pps,
    };
    println!("under attack: {} rounds of every scenario...", args.runs);
    let rows = attack::run(&options, &mut waiter)?;
    let report = attack::Report {
        run: report::Run {
            machine: machine::describe()?,
            command: command_line(),
            started_at,
        },
        settings: attack::Settings {
            options,
            max_busy_percent: args.max_busy,
        },
        rows,
        idle: waiter.history,
    };
    write_report(&args.out, "attack", &report, &report.markdown())
}

fn xdp(args: &XdpArgs) -> anyhow::Result<()> {
    let mut waiter = machine::IdleWaiter::new(
        args.max_busy,
        Duration::from_secs_f64(args.idle_wait),
        Duration::from_secs_f64(args.idle_budget),
    );
    let started_at = unix_now();
    let cost = if args.part == Part::Wire {
        Vec::new()
    } else {
        println!("per-packet cost: {} runs of each figure...", args.runs);
        cost::run(
            &cost::Options {
                runs: args.runs,
                repeat: args.repeat,
            },
            &mut waiter,
        )?
    };
    let wire = if args.part == Part::Cost {
        Vec::new()
    } else {
        println!("on the wire: {} runs of each receiver...", args.runs);
        wire::run(
            &wire::Options {
                runs: args.runs,
                seconds: Duration::from_secs_f64(args.wire_seconds),
                sources: args.sources,
                cpu: args.cpu,
            },
            &mut waiter,
        )?
    };
    let report = report::Report {
        run: report::Run {
            machine: machine::describe()?,
            command: command_line(),
            started_at,
        },
        settings: report::Settings {
            runs: args.runs,
            repeat: args.repeat,
            frame_bytes: cost::FRAME_LEN,
            wire_seconds: args.wire_seconds,
            wire_sources: args.sources,
            generator_cpu: args.cpu,
            max_busy_percent: args.max_busy,
        },
        cost,
        wire,
        idle: waiter.history,
    };
    write_report(&args.out, "xdp", &report, &report.markdown())
}

fn proxy(args: &ProxyArgs) -> anyhow::Result<()> {
    // The gateway's runtime sizes itself from this (tokio reads it when no thread count
    // is set). Its access log is off in its config (`log.access`), as HAProxy's and
    // nginx's are. Set before any thread exists.
    // SAFETY: the runner is still single-threaded here.
    unsafe {
        std::env::set_var("TOKIO_WORKER_THREADS", args.threads.to_string());
    }
    let callgrind = match &args.callgrind {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            let dir = fs::canonicalize(dir)?;
            let wrapper = proxy::profile::gateway_wrapper(&dir, &gateway_tests::gateway::binary())?;
            // SAFETY: as above, still single-threaded.
            unsafe { std::env::set_var("GATEWAY_BIN", wrapper) };
            Some(dir)
        }
        None => None,
    };
    // 10,000 idle connections need more descriptors than the usual soft limit, in the
    // runner (their client side) and in the proxies (their server side).
    let open_file_limit = proxy::idle::raise_open_file_limit()?;
    let mut waiter = machine::IdleWaiter::new(
        args.max_busy,
        Duration::from_secs_f64(args.idle_wait),
        Duration::from_secs_f64(args.idle_budget),
    );
    let started_at = unix_now();
    let results = proxy::run(
        &proxy::Options {
            runs: args.runs,
            seconds: args.seconds,
            handshake_seconds: args.handshake_seconds,
            connections: args.connections.clone(),
            load_cpu: args.load_cpu,
            server_cpus: args.server_cpus.clone(),
            threads: args.threads,
            scenarios: if args.only.is_empty() {
                proxy::Scenario::value_variants().to_vec()
            } else {
                args.only.clone()
            },
            open_loop_rate: args.open_loop_rate,
            open_loop_share: args.open_loop_share,
            open_loop_seconds: args.open_loop_seconds,
            oha: args.oha.clone(),
            idle_connections: args.idle_connections,
            open_file_limit,
            callgrind,
            callgrind_requests: args.callgrind_requests,
        },
        &mut waiter,
    )?;
    let report = proxy::report::Report {
        run: report::Run {
            machine: machine::describe()?,
            command: command_line(),
            started_at,
        },
        settings: proxy::report::Settings {
            runs: args.runs,
            seconds: args.seconds,
            handshake_seconds: args.handshake_seconds,
            load_cpu: args.load_cpu,
            server_cpus: args.server_cpus.clone(),
            threads: args.threads,
            max_busy_percent: args.max_busy,
            idle_connections: args.idle_connections,
            open_file_limit,
        },
        keep_alive: results.keep_alive,
        handshakes: results.handshakes,
        open_loop: results.open_loop,
        idle_memory: results.idle_memory,
        profile: results.profile,
        not_measured: proxy::NOT_MEASURED.to_vec(),
        idle: waiter.history,
    };
    write_report(&args.out, "proxy", &report, &report.markdown())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The command line that produced the report, as xtask passes it on.
fn command_line() -> String {
    std::env::var("GATEWAY_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "))
}

/// Writes `<out>/<stem>.json` and `<out>/<stem>.md` and prints the Markdown.
fn write_report(
    out: &std::path::Path,
    stem: &str,
    report: &impl serde::Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join(format!("{stem}.json"));
    fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join(format!("{stem}.md"));
    fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    println!("\n{markdown}");
    println!("wrote {} and {}", json.display(), md.display());
    Ok(())
}
