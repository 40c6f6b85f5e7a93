//! `gateway explain ADDRESS`: why the abuse loop blocked an address, from the
//! provenance the daemon saved, next to what the kernel holds for it now.

use std::net::IpAddr;

use anyhow::bail;
use gateway::{
    abuse::{Evidence, ProvenanceFile},
    clock,
    lists::{Entry, ListKind, Lists},
    xdp::KernelMaps,
};

use super::{Context, format_unix, print_json, table::escape};

pub fn run(ctx: &Context, address: IpAddr) -> anyhow::Result<()> {
    let file = ProvenanceFile::load(&ctx.state)?;
    let covering = file.covering(address);
    // The kernel's view is optional: with XDP off (or detached) the decisions
    // are still recorded and explained.
    let kernel: Result<Vec<Entry>, String> = KernelMaps::open(&ctx.pins)
        .map_err(|err| err.to_string())
        .and_then(|maps| {
            Lists::new(&maps, &ctx.state)
                .list(ListKind::Block)
                .map_err(|err| err.to_string())
        });
    let live: Vec<&Entry> = match &kernel {
        Ok(entries) => entries
            .iter()
            .filter(|e| e.cidr.contains(address))
            .collect(),
        Err(_) => Vec::new(),
    };
    // Like grep finding nothing: exit 1, with --json too.
    if covering.is_empty() && live.is_empty() {
        bail!(
            "{address} was never blocked by the abuse loop (state directory {}) and is not on the blocklist",
            ctx.state.path().display()
        );
    }
    if ctx.json {
        let blocks: Vec<_> = covering
            .iter()
            .map(|(cidr, history)| serde_json::json!({ "cidr": cidr, "history": history }))
            .collect();
        return print_json(&serde_json::json!({
            "address": address,
            "blocks": blocks,
            "kernel": match &kernel {
                Ok(_) => serde_json::json!({ "entries": live }),
                Err(err) => serde_json::json!({ "unavailable": err }),
            },
        }));
    }
    let now = clock::unix_now();
    for (cidr, history) in &covering {
        for (i, block) in history.iter().enumerate().rev() {
            let status = match block.unblocked_at {
                Some(at) => format!(
                    "ended {} ({})",
                    format_unix(at),
                    escape(block.unblock_reason.as_deref().unwrap_or("unknown"))
                ),
                None if block.expires_at > now => format!(
                    "BLOCKED until {} ({}s left)",
                    format_unix(block.expires_at),
                    block.expires_at - now
                ),
                None => format!("expired {}", format_unix(block.expires_at)),
            };
            println!(
                "{cidr}: block {} of {} — offence {}, ttl {}s, {status}",
                i + 1,
                history.len(),
                block.offence,
                block.ttl_secs
            );
            println!("  blocked at   {}", format_unix(block.blocked_at));
            println!(
                "  score        {} >= threshold {} within {}s",
                block.score, block.threshold, block.window_secs
            );
            let signals: Vec<String> = block
                .signals
                .iter()
                .map(|(signal, count)| format!("{signal}={count}"))
                .collect();
            println!("  signals      {}", escape(&signals.join(" ")));
            println!("  first        {}", evidence(&block.first));
            println!("  last         {}", evidence(&block.last));
            if let Some(proxy) = block.last.forwarded_by.or(block.first.forwarded_by) {
                println!(
                    "  enforced     at L7 too: requests forwarded by trusted proxies (e.g. {proxy}) are refused 403 blocked"
                );
            }
            if let Some(from) = block.aggregated_from {
                println!("  aggregated   from {from} (many offenders in {cidr})");
            }
            println!(
                "  kernel       {}",
                if block.kernel {
                    "applied to the XDP blocklist"
                } else {
                    "not applied (the kernel plane was off or refused it)"
                }
            );
        }
    }
    match &kernel {
        Ok(_) if live.is_empty() => println!("kernel: {address} is not on the blocklist now"),
        Ok(_) => {
            for entry in live {
                println!(
                    "kernel: {} on the blocklist ({}{}), dropped {} packets / {} bytes since the block{}",
                    entry.cidr,
                    escape(&entry.reason),
                    entry
                        .origin
                        .as_ref()
                        .map(|origin| format!("; shared, decided by fleet node {}", escape(origin)))
                        .unwrap_or_default(),
                    entry.hits.map_or_else(|| "?".to_owned(), |h| h.to_string()),
                    entry
                        .bytes
                        .map_or_else(|| "?".to_owned(), |b| b.to_string()),
                    entry
                        .expires_at
                        .map(|at| format!(", expires {}", format_unix(at)))
                        .unwrap_or_default()
                );
            }
        }
        Err(err) => println!("kernel: not available ({})", escape(err)),
    }
    Ok(())
}

fn evidence(evidence: &Evidence) -> String {
    let mut parts = vec![evidence.signal.clone(), format_unix(evidence.at)];
    for (name, value) in [
        ("code", &evidence.code),
        ("route", &evidence.route),
        ("rule", &evidence.rule),
        ("token", &evidence.token_id),
        ("request", &evidence.request_id),
    ] {
        if let Some(value) = value {
            parts.push(format!("{name}={value}"));
        }
    }
    if let Some(proxy) = evidence.forwarded_by {
        parts.push(format!("via={proxy}"));
    }
    escape(&parts.join(" ")).into_owned()
}
