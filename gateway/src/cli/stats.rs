//! `gateway stats [--watch]`.

use std::{thread, time::Duration};

use gateway::xdp::KernelMaps;
use gateway_common::{consts::Reason, maps::Counter};
use serde::Serialize;

use super::{Context, print_json, table};

#[derive(Serialize)]
struct Row {
    reason: &'static str,
    packets: u64,
    bytes: u64,
    /// Packets per second since the previous refresh (watch mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pps: Option<f64>,
    /// Bits per second since the previous refresh (watch mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    bps: Option<f64>,
}

pub fn run(
    ctx: &Context,
    watch: bool,
    interval: Duration,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let maps = KernelMaps::open(&ctx.pins)?;
    let mut previous = maps.counters()?;
    if !watch {
        return print(ctx, &previous, None);
    }
    let mut refreshes = 0;
    while count.is_none_or(|count| refreshes < count) {
        thread::sleep(interval);
        let current = maps.counters()?;
        print(ctx, &current, Some((&previous, interval)))?;
        previous = current;
        refreshes += 1;
    }
    Ok(())
}

fn print(
    ctx: &Context,
    counters: &[Counter],
    since: Option<(&[Counter], Duration)>,
) -> anyhow::Result<()> {
    let rows: Vec<Row> = Reason::ALL
        .iter()
        .zip(counters)
        .enumerate()
        .map(|(index, (reason, counter))| {
            let rate = since.map(|(previous, interval)| {
                let before = previous.get(index).copied().unwrap_or_default();
                let secs = interval.as_secs_f64();
                (
                    counter.packets.saturating_sub(before.packets) as f64 / secs,
                    counter.bytes.saturating_sub(before.bytes) as f64 * 8.0 / secs,
                )
            });
            Row {
                reason: reason.name(),
                packets: counter.packets,
                bytes: counter.bytes,
                pps: rate.map(|(pps, _)| pps),
                bps: rate.map(|(_, bps)| bps),
            }
        })
        .collect();
    if ctx.json {
        if since.is_some() {
            // One object per line, so a watcher can stream it.
            println!("{}", serde_json::to_string(&rows)?);
            return Ok(());
        }
        return print_json(&rows);
    }
    let mut header = vec!["reason", "packets", "bytes"];
    if since.is_some() {
        header.extend(["pps", "bps"]);
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![
                row.reason.to_owned(),
                row.packets.to_string(),
                row.bytes.to_string(),
            ];
            if let (Some(pps), Some(bps)) = (row.pps, row.bps) {
                cells.extend([format!("{pps:.0}"), format!("{bps:.0}")]);
            }
            cells
        })
        .collect();
    if since.is_some() {
        println!(
            "--- {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
    }
    table::print(&header, &table_rows)?;
    Ok(())
}
