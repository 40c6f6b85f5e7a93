//! `gateway blocklist|allowlist add|remove|list|flush`.

use std::{
    fs::File,
    io::{self, BufReader, Write as _},
};

use gateway::{
    addr::Cidr,
    lists::{ListKind, Lists, read_entries},
    state::Source,
    xdp::KernelMaps,
};

use super::{
    AddArgs, Context, EntryArg, EntryArgs, ListCommand, RemoveArgs, exit::UsageError, fleet,
    print_json, table::Table, unix_time,
};

/// Up to this many entries, `add` and `remove` print one line per entry and the
/// audit log names each; past it they summarise.
const ITEMISE: usize = 100;

pub fn run(ctx: &Context, kind: ListKind, command: ListCommand) -> anyhow::Result<()> {
    // Read and check every entry before touching the kernel: a bad line applies nothing.
    let entries = match &command {
        ListCommand::Add(args) => collect(&args.entries)?,
        ListCommand::Remove(args) => collect(&args.entries)?,
        ListCommand::List | ListCommand::Flush => Vec::new(),
    };
    let shared = match &command {
        ListCommand::Add(AddArgs { fleet, .. }) | ListCommand::Remove(RemoveArgs { fleet, .. }) => {
            fleet::shared(kind, fleet)?
        }
        ListCommand::List | ListCommand::Flush => None,
    };
    let maps = KernelMaps::open(&ctx.pins)?;
    let lists = Lists::new(&maps, &ctx.state);
    match command {
        ListCommand::Add(args) => {
            match &shared {
                Some(fleet) => fleet.add(&lists, &entries, args.ttl, &args.reason)?,
                None => lists.add(kind, &entries, args.ttl, &args.reason, Source::Cli)?,
            }
            tracing::info!(
                target: "audit",
                event = "list_add",
                list = kind.name(),
                count = entries.len(),
                entries = %joined(&entries),
                file = args.entries.file.as_ref().map(|path| path.display().to_string()),
                ttl_secs = args.ttl.map(|ttl| ttl.as_secs()),
                reason = %args.reason,
                source = Source::Cli.as_str(),
            );
            if ctx.json {
                return print_json(&serde_json::json!({ "added": entries }));
            }
            let ttl = args.ttl.map_or_else(
                || "no expiry".to_owned(),
                |ttl| format!("expires in {}", humantime::format_duration(ttl)),
            );
            let mut out = io::BufWriter::new(io::stdout().lock());
            if entries.len() > ITEMISE {
                writeln!(
                    out,
                    "{}: added {} entries ({ttl})",
                    kind.name(),
                    entries.len()
                )?;
            } else {
                for cidr in &entries {
                    writeln!(out, "{}: added {cidr} ({ttl})", kind.name())?;
                }
            }
            out.flush()?;
            Ok(())
        }
        ListCommand::Remove(_) => {
            let found = lists.remove(kind, &entries)?;
            if let Some(fleet) = &shared {
                fleet.remove(&ctx.state, &entries);
            }
            let removed: Vec<_> = entries
                .iter()
                .zip(&found)
                .filter(|(_, found)| **found)
                .map(|(cidr, _)| *cidr)
                .collect();
            if !removed.is_empty() {
                tracing::info!(
                    target: "audit",
                    event = "list_remove",
                    list = kind.name(),
                    count = removed.len(),
                    entries = %joined(&removed),
                    source = Source::Cli.as_str(),
                );
            }
            let missing: Vec<String> = entries
                .iter()
                .zip(&found)
                .filter(|(_, found)| !**found)
                .map(|(cidr, _)| cidr.to_string())
                .collect();
            if ctx.json {
                print_json(&serde_json::json!({ "removed": removed.len(), "not_found": missing }))?;
            } else {
                let mut out = io::BufWriter::new(io::stdout().lock());
                if removed.len() > ITEMISE {
                    writeln!(out, "{}: removed {} entries", kind.name(), removed.len())?;
                } else {
                    for cidr in &removed {
                        writeln!(out, "{}: removed {cidr}", kind.name())?;
                    }
                }
                out.flush()?;
            }
            // Idempotent, like adding an entry that is there already: the
            // entries are not on the list either way; say which were not.
            if !missing.is_empty() && !ctx.json {
                let shown = missing.len().min(ITEMISE);
                let more = if missing.len() > shown {
                    format!(" and {} more", missing.len() - shown)
                } else {
                    String::new()
                };
                eprintln!(
                    "note: not on the {} (nothing to remove): {}{more}",
                    kind.name(),
                    missing[..shown].join(", "),
                );
            }
            Ok(())
        }
        ListCommand::List => {
            let entries = lists.list(kind)?;
            if ctx.json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("the {} is empty", kind.name());
                return Ok(());
            }
            let mut table = Table::new(&["entry", "expires", "hits", "source", "reason"]);
            for entry in &entries {
                table.cell(entry.cidr);
                match entry.expires_at {
                    Some(secs) => table.cell(unix_time(secs)),
                    None => table.cell("never"),
                }
                match entry.hits {
                    Some(hits) => table.cell(hits),
                    None => table.cell("-"),
                }
                match &entry.origin {
                    Some(origin) => {
                        table.cell(format_args!("{} ({origin})", entry.source.as_str()))
                    }
                    None => table.cell(entry.source.as_str()),
                }
                table.cell(&entry.reason);
            }
            table.print()?;
            Ok(())
        }
        ListCommand::Flush => {
            let removed = lists.flush(kind)?;
            tracing::info!(
                target: "audit",
                event = "list_flush",
                list = kind.name(),
                removed,
                source = Source::Cli.as_str(),
            );
            if ctx.json {
                print_json(&serde_json::json!({ "removed": removed }))
            } else {
                println!("{}: removed {removed} entries", kind.name());
                Ok(())
            }
        }
    }
}

/// The entries named on the command line, then those of `--file` or stdin (`-`),
/// each read and checked in full.
fn collect(args: &EntryArgs) -> anyhow::Result<Vec<Cidr>> {
    let stdin_args = args
        .entries
        .iter()
        .filter(|entry| matches!(entry, EntryArg::Stdin))
        .count();
    let file_is_stdin = args
        .file
        .as_ref()
        .is_some_and(|path| path.as_os_str() == "-");
    if stdin_args + usize::from(file_is_stdin) > 1 {
        return Err(UsageError("stdin (`-`) can be read only once per command".to_owned()).into());
    }
    let mut entries: Vec<Cidr> = args
        .entries
        .iter()
        .filter_map(|entry| match entry {
            EntryArg::Cidr(cidr) => Some(*cidr),
            EntryArg::Stdin => None,
        })
        .collect();
    if stdin_args == 1 || file_is_stdin {
        entries.extend(read_entries(io::stdin().lock(), "stdin")?);
    } else if let Some(path) = &args.file {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| gateway::lists::InputError::Io {
            name: name.clone(),
            source,
        })?;
        entries.extend(read_entries(BufReader::new(file), &name)?);
    }
    if entries.is_empty() {
        return Err(UsageError(
            "no entries given (the input held only blank lines and comments)".to_owned(),
        )
        .into());
    }
    Ok(entries)
}

/// Entries as one audit field: `198.18.0.1,198.18.2.0/24`, the first [`ITEMISE`]
/// of them and a count of the rest.
fn joined(entries: &[Cidr]) -> String {
    let mut text = entries
        .iter()
        .take(ITEMISE)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if entries.len() > ITEMISE {
        text.push_str(&format!(",... ({} more)", entries.len() - ITEMISE));
    }
    text
}
