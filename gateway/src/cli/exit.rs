//! Exit codes and how errors are reported: one table ([`CODES`]) that every
//! command's failures map onto (sysexits-style), and the error printer, which
//! writes `error: ...` or, with `--json`, one JSON object on stderr with the same
//! exit code. docs/cli.md's table is checked against [`CODES`] by a test.

use std::process::ExitCode;

use gateway::{
    caps::MissingCapability,
    config::ConfigError,
    control::{ControlError, ReloadRejected},
    daemon::DaemonError,
    lists::{InputError, ListError},
    xdp::XdpError,
};
use serde_json::json;

/// One exit code: its number, the `code` in a JSON error, and when it is used.
#[derive(Debug, PartialEq, Eq)]
pub struct Exit {
    pub status: u8,
    pub name: &'static str,
    pub meaning: &'static str,
}

pub const SUCCESS: Exit = Exit {
    status: 0,
    name: "ok",
    meaning: "Done. Removing an entry that is not there succeeds (a note names it; `not_found` in JSON), as adding one that is there does (it is replaced): both are idempotent.",
};
pub const FAILURE: Exit = Exit {
    status: 1,
    name: "failure",
    meaning: "Anything not listed below: a kernel call, a state file or the network failed.",
};
pub const USAGE: Exit = Exit {
    status: 64,
    name: "usage",
    meaning: "The command line or the configuration is wrong: a bad argument, `check` found problems, `run` refused the file, the daemon rejected a `reload`, an interface that does not exist.",
};
pub const DATA: Exit = Exit {
    status: 65,
    name: "data",
    meaning: "A bad line in `--file` or stdin; nothing was applied.",
};
pub const UNAVAILABLE: Exit = Exit {
    status: 69,
    name: "unavailable",
    meaning: "What the command talks to is not there: no daemon runs (`reload`), or nothing is attached (`xdp status`, list changes).",
};
pub const TEMPFAIL: Exit = Exit {
    status: 75,
    name: "tempfail",
    meaning: "Try again later: a map has no room (nothing was changed), or the daemon did not answer `reload` in time.",
};
pub const NOPERM: Exit = Exit {
    status: 77,
    name: "noperm",
    meaning: "Not allowed: the privileges the command needs are missing.",
};

/// Every exit code, in order.
pub const CODES: [&Exit; 7] = [
    &SUCCESS,
    &FAILURE,
    &USAGE,
    &DATA,
    &UNAVAILABLE,
    &TEMPFAIL,
    &NOPERM,
];

/// A wrong argument found after clap parsed the line (`--burst 0`, stdin twice).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for `err`: the first cause in its chain that the table knows.
pub fn classify(err: &anyhow::Error) -> &'static Exit {
    err.chain().find_map(classify_one).unwrap_or(&FAILURE)
}

fn classify_one(cause: &(dyn std::error::Error + 'static)) -> Option<&'static Exit> {
    if cause.is::<ConfigError>()
        || cause.is::<ReloadRejected>()
        || cause.is::<UsageError>()
        || cause.is::<clap::Error>()
    {
        return Some(&USAGE);
    }
    if cause.is::<MissingCapability>() {
        return Some(&NOPERM);
    }
    if cause.is::<InputError>() {
        return Some(&DATA);
    }
    if let Some(err) = cause.downcast_ref::<ControlError>() {
        return Some(match err {
            ControlError::NotRunning { .. } => &UNAVAILABLE,
            ControlError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                &NOPERM
            }
            ControlError::Connect { .. } => &UNAVAILABLE,
            ControlError::Timeout { .. } => &TEMPFAIL,
            ControlError::Io { .. } | ControlError::Protocol(_) => &FAILURE,
        });
    }
    if let Some(ListError::Xdp(err)) = cause.downcast_ref::<ListError>() {
        return xdp(err);
    }
    match cause.downcast_ref::<DaemonError>() {
        Some(DaemonError::Xdp(err)) => return xdp(err),
        Some(DaemonError::Capability(_)) => return Some(&NOPERM),
        _ => {}
    }
    cause.downcast_ref::<XdpError>().and_then(xdp)
}

fn xdp(err: &XdpError) -> Option<&'static Exit> {
    match err {
        XdpError::MapFull { .. } => Some(&TEMPFAIL),
        XdpError::Capability(_) => Some(&NOPERM),
        XdpError::NotAttached { .. } => Some(&UNAVAILABLE),
        XdpError::UnknownInterface(_) => Some(&USAGE),
        _ => None,
    }
}

/// The problems an error lists one by one (an invalid config, a rejected reload).
fn details(err: &anyhow::Error) -> Vec<String> {
    err.chain()
        .find_map(|cause| {
            if let Some(config) = cause.downcast_ref::<ConfigError>() {
                return Some(config.problems());
            }
            cause
                .downcast_ref::<ReloadRejected>()
                .map(|rejected| rejected.errors.clone())
        })
        .unwrap_or_default()
}

/// Prints `err` on stderr (text or JSON) and returns its exit code.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let exit = classify(err);
    if json {
        let message = format!("{err:#}");
        let mut error = json!({
            "code": exit.name,
            "message": message,
            "exit_code": exit.status,
        });
        let details = details(err);
        if !details.is_empty() {
            error["details"] = json!(details);
        }
        eprintln!("{}", json!({ "error": error }));
    } else {
        // Errors quote what was typed (an interface, a token id, a config value).
        eprintln!("error: {}", super::table::escape_lines(&format!("{err:#}")));
    }
    ExitCode::from(exit.status)
}

/// A command-line parse error: help and version are successes on stdout, the
/// rest usage errors, in JSON when `--json` was among the arguments.
pub fn report_parse(err: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(USAGE.status)
        } else {
            ExitCode::SUCCESS
        };
    }
    if json {
        let message = err.render().to_string();
        let message = message.trim().trim_start_matches("error: ");
        eprintln!(
            "{}",
            json!({ "error": { "code": USAGE.name, "message": message, "exit_code": USAGE.status } })
        );
    } else {
        let _ = err.print();
    }
    ExitCode::from(USAGE.status)
}

/// The exit codes for `gateway --help` (and the man page made from it).
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n");
    for exit in CODES {
        text.push_str(&format!(
            "  {:>3}  {:<12} {}\n",
            exit.status, exit.name, exit.meaning
        ));
    }
    text
}

/// The exit-code table as docs/cli.md carries it.
#[cfg(test)]
fn markdown_table() -> String {
    let mut table = String::from("| code | JSON `code` | meaning |\n| --- | --- | --- |\n");
    for exit in CODES {
        table.push_str(&format!(
            "| {} | `{}` | {} |\n",
            exit.status, exit.name, exit.meaning
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_errors_map_onto_them() {
        for (i, a) in CODES.iter().enumerate() {
            for b in &CODES[i + 1..] {
                assert!(a.status != b.status && a.name != b.name, "{a:?} {b:?}");
            }
        }
        let config = anyhow::Error::new(ConfigError::Invalid {
            path: "c.toml".into(),
            problems: vec!["a: b".into(), "c: d".into()],
        })
        .context("checking");
        assert_eq!(classify(&config), &USAGE);
        assert_eq!(details(&config), ["a: b", "c: d"]);
        let full = anyhow::Error::new(ListError::Xdp(XdpError::MapFull {
            name: "BLOCKLIST4",
            capacity: 2,
            room: 1,
        }));
        assert_eq!(classify(&full), &TEMPFAIL);
        let gone = anyhow::Error::new(ControlError::NotRunning { dir: "/s".into() });
        assert_eq!(classify(&gone), &UNAVAILABLE);
        let rejected = anyhow::Error::new(ReloadRejected {
            errors: vec!["route[0].upstream: no [upstream.x]".into()],
        });
        assert_eq!(classify(&rejected), &USAGE);
        assert_eq!(details(&rejected).len(), 1);
        assert_eq!(classify(&anyhow::anyhow!("disk on fire")), &FAILURE);
    }

    #[test]
    fn the_cli_reference_carries_this_table() {
        let doc = include_str!("../../../docs/cli.md");
        assert!(
            doc.contains(&markdown_table()),
            "docs/cli.md's exit-code table differs from the code; it should read:\n{}",
            markdown_table()
        );
    }
}
