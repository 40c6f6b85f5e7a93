//! `gateway blocklist|allowlist add|remove|list|flush`.

use anyhow::bail;
use gateway::{
    addr::Cidr,
    lists::{ListKind, Lists},
    state::Source,
    xdp::KernelMaps,
};

use super::{Context, ListCommand, format_unix, print_json, table};

pub fn run(ctx: &Context, kind: ListKind, command: ListCommand) -> anyhow::Result<()> {
    let maps = KernelMaps::open(&ctx.pins)?;
    let lists = Lists::new(&maps, &ctx.state);
    match command {
        ListCommand::Add(args) => {
            lists.add(kind, &args.entries, args.ttl, &args.reason, Source::Cli)?;
            tracing::info!(
                target: "audit",
                event = "list_add",
                list = kind.name(),
                entries = %joined(&args.entries),
                ttl_secs = args.ttl.map(|ttl| ttl.as_secs()),
                reason = %args.reason,
                source = Source::Cli.as_str(),
            );
            if ctx.json {
                return print_json(&serde_json::json!({ "added": args.entries }));
            }
            let ttl = args.ttl.map_or_else(
                || "no expiry".to_owned(),
                |ttl| format!("expires in {}", humantime::format_duration(ttl)),
            );
            for cidr in &args.entries {
                println!("{}: added {cidr} ({ttl})", kind.name());
            }
            Ok(())
        }
        ListCommand::Remove { entries } => {
            let found = lists.remove(kind, &entries)?;
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
                print_json(
                    &serde_json::json!({ "removed": entries.len() - missing.len(), "not_found": missing }),
                )?;
            } else {
                for (cidr, found) in entries.iter().zip(&found) {
                    if *found {
                        println!("{}: removed {cidr}", kind.name());
                    }
                }
            }
            if !missing.is_empty() {
                bail!(
                    "not on the {}: {}; see `gateway {} list`",
                    kind.name(),
                    missing.join(", "),
                    kind.name()
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
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|entry| {
                    vec![
                        entry.cidr.to_string(),
                        entry
                            .expires_at
                            .map_or_else(|| "never".to_owned(), format_unix),
                        entry.hits.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                        entry.source.as_str().to_owned(),
                        entry.reason.clone(),
                    ]
                })
                .collect();
            table::print(&["entry", "expires", "hits", "source", "reason"], &rows);
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

/// Entries as one audit field: `198.18.0.1,198.18.2.0/24`.
fn joined(entries: &[Cidr]) -> String {
    entries
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
