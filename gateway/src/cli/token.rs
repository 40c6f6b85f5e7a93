//! `gateway token revoke|unrevoke|list`: the token denylist in the state
//! directory. Changes are written atomically and the running daemon is told
//! (SIGUSR2) to re-read them; it audits every change it picks up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use gateway::{
    auth::revocation::{Denylist, Revocation},
    state::REVOCATIONS,
};

use super::{
    Context, TokenCommand, TokenTarget, format_unix, print_json,
    table::{self, escape},
};

pub fn run(ctx: &Context, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Revoke {
            target,
            until,
            reason,
        } => {
            let now = unix_now();
            let until = until.map(|text| parse_until(&text, now)).transpose()?;
            let entry = Revocation {
                reason,
                added_at: now,
                until,
                fleet: None,
            };
            let id = ctx.state.update(REVOCATIONS, |list: &mut Denylist| {
                let (kind, id) = target.pick(list);
                kind.insert(id.clone(), entry);
                id
            })?;
            notify(ctx);
            if ctx.json {
                return print_json(&serde_json::json!({ "revoked": id, "until": until }));
            }
            let until = until.map_or_else(|| "no expiry".to_owned(), format_unix);
            println!(
                "revoked {} ({until}); takes effect on the daemon's next request",
                escape(&id)
            );
        }
        TokenCommand::Unrevoke { target } => {
            let (id, found) = ctx.state.update(REVOCATIONS, |list: &mut Denylist| {
                let (kind, id) = target.pick(list);
                let found = kind.remove(&id).is_some();
                (id, found)
            })?;
            // Idempotent, like revoking twice: the token is accepted either way.
            if found {
                notify(ctx);
            }
            if ctx.json {
                return print_json(&serde_json::json!({ "unrevoked": id, "was_revoked": found }));
            }
            if found {
                println!("unrevoked {}", escape(&id));
            } else {
                eprintln!("note: {} was not revoked (nothing to do)", escape(&id));
            }
        }
        TokenCommand::List => {
            let list = Denylist::load(&ctx.state.revocations_path())?;
            if ctx.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .jti
                .iter()
                .map(|(id, r)| ("jti", id, r))
                .chain(list.sub.iter().map(|(id, r)| ("sub", id, r)))
                .map(|(kind, id, r)| {
                    vec![
                        kind.to_owned(),
                        id.clone(),
                        format_unix(r.added_at),
                        r.until.map_or_else(|| "never".to_owned(), format_unix),
                        r.reason.clone(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no token is revoked");
            } else {
                table::print(&["kind", "id", "added", "until", "reason"], &rows)?;
            }
        }
    }
    Ok(())
}

impl TokenTarget {
    fn pick(
        self,
        list: &mut Denylist,
    ) -> (&mut std::collections::BTreeMap<String, Revocation>, String) {
        match (self.jti, self.sub) {
            (Some(jti), _) => (&mut list.jti, jti),
            (None, Some(sub)) => (&mut list.sub, sub),
            // clap requires exactly one of them.
            (None, None) => (&mut list.jti, String::new()),
        }
    }
}

/// An RFC 3339 time or a duration from now (`2h`, `7d`).
fn parse_until(text: &str, now: u64) -> anyhow::Result<u64> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return now.checked_add(duration.as_secs()).with_context(|| {
            format!("--until {text:?}: too far in the future; leave --until out to revoke forever")
        });
    }
    let time = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("--until {text:?}: give a duration (2h, 7d) or a time (2026-12-01T00:00:00Z)")
    })?;
    Ok(time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Tells a running daemon to re-read the list; without one, the next start reads it.
fn notify(ctx: &Context) {
    let Ok(Some(pid)) = ctx.state.running_daemon() else {
        return;
    };
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGUSR2) } != 0 {
        eprintln!(
            "could not signal the daemon (pid {pid}): {}; it reads the change within a second",
            std::io::Error::last_os_error()
        );
    }
}
