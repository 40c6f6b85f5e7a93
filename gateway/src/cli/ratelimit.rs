//! `gateway ratelimit show|set|flush`.

use gateway::{
    config::rate_limit_problems,
    xdp::{KernelMaps, RateLimit},
};
use serde::Serialize;

use super::{Context, RatelimitCommand, exit::UsageError, print_json, table};

/// One source's bucket, as shown.
#[derive(Serialize)]
struct Source {
    /// The address, or for IPv6 the prefix the bucket covers.
    source: String,
    passed: u64,
    dropped: u64,
}

pub fn run(ctx: &Context, command: RatelimitCommand) -> anyhow::Result<()> {
    let maps = KernelMaps::open(&ctx.pins)?;
    match command {
        RatelimitCommand::Show { top } => show(ctx, &maps, top),
        RatelimitCommand::Set {
            pps,
            burst,
            syn_pps,
            syn_burst,
        } => {
            let limit = RateLimit {
                pps,
                burst,
                syn_pps,
                syn_burst,
            };
            let problems = rate_limit_problems("--", &limit);
            if !problems.is_empty() {
                return Err(UsageError(problems.join("; ").replace("--.", "--")).into());
            }
            let mut config = maps.config()?;
            limit.apply_to(&mut config);
            maps.set_config(&config)?;
            let applied = RateLimit::from_config(&config);
            tracing::info!(
                target: "audit",
                event = "ratelimit_set",
                pps = applied.pps,
                burst = applied.burst,
                syn_pps = applied.syn_pps,
                syn_burst = applied.syn_burst,
            );
            if ctx.json {
                print_json(&applied)
            } else {
                println!(
                    "rate limit: {} pps, burst {}; SYN: {} pps, burst {} (0 = off)",
                    applied.pps, applied.burst, applied.syn_pps, applied.syn_burst
                );
                Ok(())
            }
        }
        RatelimitCommand::Flush => {
            let removed = maps.clear_rate_limits()?;
            tracing::info!(target: "audit", event = "ratelimit_flushed", removed);
            if ctx.json {
                print_json(&serde_json::json!({ "removed": removed }))
            } else {
                println!("forgot {removed} rate-limit buckets");
                Ok(())
            }
        }
    }
}

fn show(ctx: &Context, maps: &KernelMaps, top: usize) -> anyhow::Result<()> {
    let config = maps.config()?;
    let sources: Vec<Source> = maps
        .top_rate_limited(top)?
        .into_iter()
        .map(|(source, bucket)| Source {
            source,
            passed: bucket.passed,
            dropped: bucket.dropped,
        })
        .collect();
    let limit = RateLimit::from_config(&config);
    if ctx.json {
        #[derive(Serialize)]
        struct Report {
            limit: RateLimit,
            sources: Vec<Source>,
        }
        return print_json(&Report { limit, sources });
    }
    println!(
        "limit: {} pps, burst {}; SYN: {} pps, burst {} (0 = off)",
        limit.pps, limit.burst, limit.syn_pps, limit.syn_burst
    );
    let rows: Vec<Vec<String>> = sources
        .iter()
        .map(|s| {
            vec![
                s.source.clone(),
                s.passed.to_string(),
                s.dropped.to_string(),
            ]
        })
        .collect();
    table::print(&["source", "passed", "dropped"], &rows)?;
    Ok(())
}
