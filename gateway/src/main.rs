//! `gateway`: the daemon (`gateway run`) and the CLI that inspects and changes its
//! pinned maps from any other process.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// Exit code for an unusable configuration (EX_CONFIG-style usage error, sysexits 64).
const EXIT_CONFIG: u8 = 64;
/// Exit code for a bad line in a `--file` or stdin list of entries (sysexits EX_DATAERR).
const EXIT_DATA: u8 = 65;
/// Exit code for a list change refused because a map has no room for it; nothing
/// was changed (sysexits EX_TEMPFAIL: remove entries and retry).
const EXIT_FULL: u8 = 75;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !args.is_daemon() {
        // Die quietly on a closed pipe (`gateway stats | head`) like other Unix
        // tools, instead of panicking in println!. Never in the daemon: a client
        // closing its socket mid-response would kill it.
        // SAFETY: called before any other thread exists; SIG_DFL is always valid.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Errors quote what was typed (an interface, a token id, a config value).
            eprintln!("error: {}", cli::table::escape_lines(&format!("{err:#}")));
            if err.downcast_ref::<gateway::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else if err.downcast_ref::<gateway::lists::InputError>().is_some() {
                ExitCode::from(EXIT_DATA)
            } else if let Some(gateway::lists::ListError::Xdp(gateway::xdp::XdpError::MapFull {
                ..
            })) = err.downcast_ref()
            {
                ExitCode::from(EXIT_FULL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
