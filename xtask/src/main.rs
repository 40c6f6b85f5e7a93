//! `cargo xtask`: the project's build and test driver (`setup`, `build`, `run`, `test`,
//! `bench`, `demo`, `dist`).

mod bench;
mod build;
mod demo;
mod dist;
#[cfg(test)]
mod doc_links;
mod run;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

use crate::util::Workspace;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test the edge gateway"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchains, bpf-linker and the Debian packages the build and tests need.
    ///
    /// Idempotent: once everything is present, a run only checks (a few seconds).
    Setup,
    /// Run `setup`, then build the workspace (the daemon embeds the XDP object).
    Build(build::Args),
    /// Run `setup`, build the `gateway` binary and run it with the given arguments.
    Run(run::Args),
    /// Run `setup`, the lints, the unit tests, the privileged XDP and end-to-end tests,
    /// the demo with every command it prints, and `dist --check`.
    Test(test::Args),
    /// Run the benchmarks (as root) and write target/bench/<suite>.json and .md.
    ///
    /// `xdp`: the kernel plane next to nftables, xdp-filter and reference programs;
    /// `proxy`: the TLS proxy next to HAProxy and the fleet itself; `all`: both.
    Bench(bench::Args),
    /// Build the release artifacts into target/dist: the tarball and the .deb.
    ///
    /// `--check` (as root) then installs the .deb here, runs it as the `gateway`
    /// user with the unit's capabilities on a veth, and purges it.
    Dist(dist::Args),
    /// Run the gateway on a private demo network in namespaces; Ctrl-C tears it down.
    Demo(demo::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ws = Workspace::locate()?;
    match cli.task {
        Task::Setup => setup::run(&ws),
        Task::Build(args) => build::run(&ws, &args),
        Task::Run(args) => run::run(&ws, &args),
        Task::Test(args) => test::run(&ws, &args),
        Task::Bench(args) => bench::run(&ws, &args),
        Task::Demo(args) => demo::run(&ws, &args),
        Task::Dist(args) => dist::run(&ws, &args),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Task};

    #[test]
    fn passes_arguments_through_to_gateway() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["xtask", "run", "--release", "--", "--help"])?;
        let Task::Run(args) = cli.task else {
            anyhow::bail!("not parsed as `run`");
        };
        assert!(args.release);
        assert_eq!(args.args, ["--help"]);
        Ok(())
    }

    #[test]
    fn passes_arguments_through_to_the_privileged_tests() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["xtask", "test", "--no-lint", "--", "verdict", "--exact"])?;
        let Task::Test(args) = cli.task else {
            anyhow::bail!("not parsed as `test`");
        };
        assert!(args.no_lint);
        assert_eq!(args.test_args, ["verdict", "--exact"]);
        Ok(())
    }

    #[test]
    fn bench_defaults_to_every_suite() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from(["xtask", "bench"])?;
        let Task::Bench(args) = cli.task else {
            anyhow::bail!("not parsed as `bench`");
        };
        assert_eq!(args.target, crate::bench::Target::All);
        let cli = Cli::try_parse_from(["xtask", "bench", "xdp", "--", "--runs", "7"])?;
        let Task::Bench(args) = cli.task else {
            anyhow::bail!("not parsed as `bench`");
        };
        assert_eq!(args.target, crate::bench::Target::Xdp);
        assert_eq!(args.runner_args, ["--runs", "7"]);
        Ok(())
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
