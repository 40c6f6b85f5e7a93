//! `gateway fleet status`: the gateways sharing this config's Redis, each
//! one's version and lag, read straight from Redis (no daemon needed).

use std::path::Path;

use anyhow::Context as _;
use gateway::{
    config::Config,
    fleet::{Link, status},
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
    let nodes = runtime.block_on(async {
        link.connect()
            .await
            .with_context(|| format!("connecting to {}", section.redis_url))?;
        status::nodes(&link).await.context("reading the heartbeats")
    })?;
    if ctx.json {
        return print_json(&serde_json::json!({ "nodes": nodes }));
    }
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
    table::print(&["node", "version", "last heartbeat", "rtt"], &rows);
    Ok(())
}
