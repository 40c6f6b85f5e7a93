//! The results as raw JSON and as the Markdown tables BENCHMARKS.md is made of.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    cost::{self, CostRow},
    machine::{Idle, Machine},
    stats::Summary,
    wire::{self, WireRow},
};

/// Where, when and by which command a report was made: the head of every suite's.
#[derive(Serialize)]
pub struct Run {
    pub machine: Machine,
    /// The command line that produced this report.
    pub command: String,
    /// Unix seconds when the run started.
    pub started_at: u64,
}

impl Run {
    /// The machine and the command, as the report's first paragraph.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        format!(
            "Machine: {} ({} cores), kernel {}. Command: `{}`.\n\n",
            m.cpu_model, m.cores, m.kernel, self.command
        )
    }
}

/// Everything one `gateway-bench xdp` run measured, with how it was measured.
#[derive(Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: Run,
    pub settings: Settings,
    pub cost: Vec<CostRow>,
    pub wire: Vec<WireRow>,
    /// The machine's state before each run.
    pub idle: Vec<Idle>,
}

#[derive(Serialize)]
pub struct Settings {
    pub runs: usize,
    pub repeat: u32,
    pub frame_bytes: usize,
    pub wire_seconds: f64,
    pub wire_sources: u32,
    pub generator_cpu: usize,
    pub max_busy_percent: f64,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        out.push_str(&self.run.markdown());
        let _ = writeln!(
            out,
            "{}\n",
            busy_line(&self.idle, self.settings.max_busy_percent)
        );
        if !self.cost.is_empty() {
            let _ = writeln!(
                out,
                "### Per-packet cost (BPF_PROG_TEST_RUN, kernel-reported ns per packet, \
                 repeat {}, {}-byte frames; median of {} runs, min–max)\n",
                s.repeat, s.frame_bytes, s.runs
            );
            out.push_str(&self.cost_tables());
        }
        if !self.wire.is_empty() {
            let _ = writeln!(
                out,
                "### On the wire (veth, live-frames generator on CPU {}, {} sources, {} s per \
                 run; median of {} runs, min–max)\n",
                s.generator_cpu, s.wire_sources, s.wire_seconds, s.runs
            );
            out.push_str(&self.wire_table());
        }
        out
    }

    fn cost_tables(&self) -> String {
        let mut out = String::new();
        out.push_str("| reference program | ns/packet |\n| --- | ---: |\n");
        for row in self.cost.iter().filter(|r| r.scenario == cost::REFERENCE) {
            let _ = writeln!(out, "| {} | {} |", row.program, cell(&row.ns_per_packet, 1));
        }
        let scenarios: Vec<&str> = unique(
            self.cost
                .iter()
                .filter(|r| r.scenario != cost::REFERENCE)
                .map(|r| r.scenario.as_str()),
        );
        let paths: Vec<&str> = unique(
            self.cost
                .iter()
                .filter(|r| r.scenario != cost::REFERENCE)
                .map(|r| r.program.as_str()),
        );
        let _ = write!(out, "\n| gateway path |");
        for scenario in &scenarios {
            let _ = write!(out, " {scenario} |");
        }
        let _ = write!(out, "\n| --- |");
        for _ in &scenarios {
            out.push_str(" ---: |");
        }
        out.push('\n');
        for path in &paths {
            let _ = write!(out, "| {path} |");
            for scenario in &scenarios {
                let value = self
                    .cost
                    .iter()
                    .find(|r| r.scenario == *scenario && r.program == *path)
                    .map_or_else(|| "–".to_owned(), |r| cell(&r.ns_per_packet, 1));
                let _ = write!(out, " {value} |");
            }
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.cost_ratios());
        out
    }

    /// The gateway's paths against the references, medians of the same run.
    fn cost_ratios(&self) -> String {
        let reference = |name: &str| {
            self.cost
                .iter()
                .find(|r| r.scenario == cost::REFERENCE && r.program == name)
                .map(|r| r.ns_per_packet.median)
        };
        let (Some(lookup), Some(filter)) =
            (reference(cost::REF_LOOKUP), reference(cost::REF_XDP_FILTER))
        else {
            return String::new();
        };
        let mut out = String::from(
            "| gateway path, fullest state measured | ns | × single lookup | × xdp-filter |\n\
             | --- | ---: | ---: | ---: |\n",
        );
        for path in unique(
            self.cost
                .iter()
                .filter(|r| r.scenario != cost::REFERENCE)
                .map(|r| r.program.as_str()),
        ) {
            let worst = self
                .cost
                .iter()
                .filter(|r| r.program == path && r.scenario != cost::REFERENCE)
                .max_by(|a, b| a.ns_per_packet.median.total_cmp(&b.ns_per_packet.median));
            if let Some(row) = worst {
                let ns = row.ns_per_packet.median;
                let _ = writeln!(
                    out,
                    "| {path} ({}) | {ns:.0} | {:.2} | {:.2} |",
                    row.scenario,
                    ns / lookup,
                    ns / filter
                );
            }
        }
        out.push('\n');
        out
    }

    fn wire_table(&self) -> String {
        let mut out = String::from(
            "| receiver | received Mpps | dropped by the filter, Mpps | lost at the sender, Mpps \
             | softirq ns/packet | all-CPU ns/packet |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for row in &self.wire {
            let dropped = row
                .dropped_mpps
                .as_ref()
                .map_or_else(|| "–".to_owned(), |d| cell(d, 2));
            let _ = writeln!(
                out,
                "| {} | {} | {dropped} | {} | {} | {} |",
                row.filter,
                cell(&row.received_mpps, 2),
                cell(&row.lost_at_sender_mpps, 2),
                cell(&row.softirq_ns_per_packet, 0),
                cell(&row.cpu_ns_per_packet, 0)
            );
        }
        out.push('\n');
        let rate = |name: &str| {
            self.wire
                .iter()
                .find(|r| r.filter == name)
                .map(|r| r.received_mpps.median)
        };
        if let (Some(gw), Some(nft), Some(xf), Some(bare)) = (
            rate(wire::GATEWAY_BLOCKLIST),
            rate(wire::NFTABLES),
            rate(wire::XDP_FILTER),
            rate(wire::BARE_DROP),
        ) {
            let _ = writeln!(
                out,
                "Gateway blocklist drop rate: {:.2}× nftables, {:.2}× xdp-filter, {:.0}% of the \
                 bare XDP_DROP ceiling.\n",
                gw / nft,
                gw / xf,
                100.0 * gw / bare
            );
        }
        out
    }
}

/// How busy the machine was before the runs, in one sentence.
pub fn busy_line(idle: &[Idle], max_busy_percent: f64) -> String {
    let busy = Summary::of(idle.iter().map(|i| i.busy_percent).collect());
    let load = Summary::of(idle.iter().map(|i| i.load1).collect());
    let waited: f64 = idle.iter().map(|i| i.waited_s).sum();
    let loud = idle.iter().filter(|i| !i.quiet).count();
    match (busy, load) {
        (Some(busy), Some(load)) => format!(
            "Machine load before each of {} runs: CPU busy median {:.0}% (min {:.0}%, max \
             {:.0}%), load average median {:.1} (max {:.1}); waited {waited:.0} s in all for \
             quiet; {loud} runs started above the {max_busy_percent:.0}% threshold.",
            idle.len(),
            busy.median,
            busy.min,
            busy.max,
            load.median,
            load.max,
        ),
        _ => "No runs.".to_owned(),
    }
}

/// `median (min–max)` with `digits` decimals.
pub fn cell(summary: &Summary, digits: usize) -> String {
    format!(
        "{:.digits$} ({:.digits$}–{:.digits$})",
        summary.median, summary.min, summary.max
    )
}

fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}
