//! `gateway-bench`: the benchmark runner behind `cargo xtask bench`.
//!
//! It is its own crate, not part of xtask, because it links the gateway, the test rigs
//! of `gateway-tests` and the reference XDP object (built by `build.rs` with the eBPF
//! nightly): xtask must build before `cargo xtask setup` has installed that toolchain.
//! It needs root; xtask builds it in release, runs it and cleans up after it.
//!
//! `gateway-bench xdp` measures the kernel plane and writes `xdp.json` and `xdp.md`
//! into `--out`; `gateway-bench proxy` measures the userspace plane and writes
//! `proxy.json` and `proxy.md`.

mod cost;
mod machine;
mod peers;
mod proxy;
mod references;
mod report;
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
    /// A run waits until the CPUs are less busy than this, in percent of all CPUs...
    #[arg(long, default_value_t = 15.0)]
    max_busy: f64,
    /// ...but no longer than this many seconds per run...
    #[arg(long, default_value_t = 5.0)]
    idle_wait: f64,
    /// ...and no longer than this many seconds over the whole benchmark.
    #[arg(long, default_value_t = 60.0)]
    idle_budget: f64,
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
    }
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
        },
        keep_alive: results.keep_alive,
        handshakes: results.handshakes,
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
