//! `gateway fleet status`: the gateways sharing this config's Redis, each
//! one's version and lag, read straight from Redis (no daemon needed).

use std::path::Path;

use anyhow::Context as _;
use gateway::{
    addr::Cidr,
    config::Config,
    fleet::{
        Link, blocks, status,
        stream::{self, Set},
        sync,
    },
    lists::{ListKind, Lists},
    state::{Source, StateDir},
};

use super::{Context, print_json, table};

pub fn status(ctx: &Context, path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let Some(section) = &config.fleet else {
        anyhow::bail!(
            "{} has no [fleet] section: this gateway shares nothing",
            path.display()
        );
    };
    let link = Link::new(section)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (nodes, shared) = runtime.block_on(async {
        link.connect()
            .await
            .with_context(|| format!("connecting to {}", section.redis_url))?;
        let nodes = status::nodes(&link)
            .await
            .context("reading the heartbeats")?;
        let shared = status::set_sizes(&link)
            .await
            .context("reading the shared sets' sizes")?;
        anyhow::Ok((nodes, shared))
    })?;
    if ctx.json {
        return print_json(&serde_json::json!({ "nodes": nodes, "shared": shared }));
    }
    println!(
        "shared: {} blocks, {} revocations",
        shared.blocks, shared.revocations
    );
    if nodes.is_empty() {
        println!("no gateway has sent a heartbeat yet");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            vec![
                node.beat.node.clone(),
                node.beat.version.clone(),
                format!("{} ms", node.age_ms),
                format!("{:.1} ms", node.beat.rtt_us as f64 / 1000.0),
            ]
        })
        .collect();
    table::print(&["node", "version", "last heartbeat", "rtt"], &rows)?;
    Ok(())
}

/// `blocklist add|remove --fleet`: the change goes to this gateway's lists as
/// usual and straight to the fleet's Redis; when Redis cannot take it now,
/// this gateway's daemon publishes it when the link is back.
pub struct SharedChange {
    link: Link,
    node: String,
    runtime: tokio::runtime::Runtime,
    /// Why Redis cannot be reached, when it cannot.
    unreachable: Option<String>,
}

/// The fleet `args` name, when `--fleet` was given.
pub fn shared(kind: ListKind, args: &super::FleetArgs) -> anyhow::Result<Option<SharedChange>> {
    let (true, Some(path)) = (args.fleet, &args.config) else {
        return Ok(None);
    };
    if kind != ListKind::Block {
        return Err(super::exit::UsageError(
            "--fleet: only the blocklist is shared with the fleet".to_owned(),
        )
        .into());
    }
    let config = Config::load(path)?;
    let Some(section) = &config.fleet else {
        anyhow::bail!(
            "--fleet: {} has no [fleet] section: this gateway shares nothing",
            path.display()
        );
    };
    if !section.share.blocks {
        anyhow::bail!("--fleet: {} has fleet.share.blocks = false", path.display());
    }
    let link = Link::new(section)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let unreachable = runtime
        .block_on(link.connect())
        .err()
        .map(|err| format!("{}: {err}", section.redis_url));
    Ok(Some(SharedChange {
        link,
        node: section.node.clone(),
        runtime,
        unreachable,
    }))
}

impl SharedChange {
    /// Blocks `entries` here, marked as this node's, and publishes them.
    pub fn add(
        &self,
        lists: &Lists<'_>,
        entries: &[Cidr],
        ttl: Option<std::time::Duration>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let shared = lists.add_shared(entries, ttl, reason, Source::Cli, &self.node)?;
        if let Some(why) = &self.unreachable {
            eprintln!(
                "note: Redis unreachable ({why}); blocked on this gateway, and its daemon shares the entries when Redis is back"
            );
            return Ok(());
        }
        let failed = self.runtime.block_on(async {
            let mut failed = 0;
            for cidr in entries {
                let wire = blocks::wire(cidr, reason, &shared);
                if stream::put(&self.link, Set::Blocks, &wire).await.is_err() {
                    failed += 1;
                }
            }
            failed
        });
        if failed > 0 {
            eprintln!(
                "note: {failed} entries could not be shared now; blocked on this gateway, and its daemon shares them when its link to Redis comes back"
            );
        }
        Ok(())
    }

    /// Publishes the removal of `entries` (held for the daemon when Redis
    /// cannot take it now).
    pub fn remove(&self, state: &StateDir, entries: &[Cidr]) {
        let version = gateway::clock::unix_now_ms();
        let removals: Vec<(String, u64)> = entries
            .iter()
            .map(|cidr| (cidr.to_string(), version))
            .collect();
        let shared = self.runtime.block_on(sync::publish_removals(
            &self.link,
            state,
            Set::Blocks,
            &removals,
            true,
        ));
        if !shared {
            let why = self.unreachable.as_deref().unwrap_or("Redis refused");
            eprintln!(
                "note: the removal could not be shared now ({why}); removed here, and this gateway's daemon shares it when Redis is back"
            );
        }
    }
}
