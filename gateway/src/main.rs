//! `gateway`: the daemon (`gateway run`) and the CLI that inspects and changes its
//! pinned maps from any other process. Exit codes: see [`cli::exit`].

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Known before parsing, so even a command line clap refuses gets a JSON error.
    let json = std::env::args_os()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => return cli::exit::report_parse(&err, json),
    };
    if !args.is_daemon() {
        // Die quietly on a closed pipe (`gateway stats | head`) like other Unix
        // tools, instead of panicking in println!. Never in the daemon: a client
        // closing its socket mid-response would kill it.
        // SAFETY: called before any other thread exists; SIG_DFL is always valid.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::exit::report(&err, json),
    }
}
