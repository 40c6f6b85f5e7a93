//! The proxy suite's results as raw JSON and as the Markdown tables of BENCHMARKS.md.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Figure, Key, Metric, Protocol, Target};
use crate::{
    machine::Idle,
    report::{Run, busy_line, cell},
    stats::{Samples, Summary},
};

/// Everything one `gateway-bench proxy` run measured, with how it was measured.
#[derive(Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: Run,
    pub settings: Settings,
    pub keep_alive: Vec<KeepAliveRow>,
    pub handshakes: Vec<HandshakeRow>,
    /// Memory with idle keep-alive connections.
    pub idle_memory: Vec<super::idle::IdleRow>,
    /// Scenarios of the issue this run could not measure, and why.
    pub not_measured: Vec<NotMeasured>,
    pub idle: Vec<Idle>,
}

#[derive(Serialize)]
pub struct Settings {
    pub runs: usize,
    pub seconds: u32,
    pub handshake_seconds: u32,
    pub load_cpu: usize,
    pub server_cpus: String,
    pub threads: usize,
    pub max_busy_percent: f64,
    pub idle_connections: u32,
    pub open_file_limit: u64,
}

#[derive(Clone, Serialize)]
pub struct NotMeasured {
    pub scenario: &'static str,
    pub reason: &'static str,
}

/// One target, protocol and connection count with keep-alive.
#[derive(Serialize)]
pub struct KeepAliveRow {
    pub target: &'static str,
    pub protocol: &'static str,
    pub connections: u32,
    pub requests_per_s: Summary,
    pub p50_ms: Summary,
    pub p99_ms: Summary,
    /// The proxy's utime+stime per request; none for the ceiling.
    pub proxy_cpu_us_per_request: Option<Summary>,
    /// nginx's utime+stime per request.
    pub fleet_cpu_us_per_request: Option<Summary>,
    /// Requests per second over HAProxy's in the same round.
    pub vs_haproxy: Option<Summary>,
}

#[derive(Clone, Copy, PartialEq)]
pub struct HandshakeKey {
    pub target: Target,
    pub certificate: &'static str,
    pub resumed: bool,
}

/// New TLS connections per second, one kind of handshake against one proxy.
#[derive(Serialize)]
pub struct HandshakeRow {
    pub target: &'static str,
    pub certificate: &'static str,
    pub resumed: bool,
    pub per_s: Summary,
    pub proxy_cpu_us_per_handshake: Summary,
    /// Share of the connections the server resumed (0 for full, 1 for resumed when
    /// resumption works).
    pub resumed_share: Summary,
}

pub(super) fn keep_alive_rows(
    samples: Samples<Key>,
    targets: &[Target],
    protocols: &[Protocol],
    connections: &[u32],
) -> Vec<KeepAliveRow> {
    let summaries = samples.summaries();
    let find = |target, protocol, conns, metric| {
        summaries
            .iter()
            .find(|(key, _)| {
                *key == Key {
                    target,
                    protocol,
                    connections: conns,
                    metric,
                }
            })
            .map(|(_, summary)| summary.clone())
    };
    let mut rows = Vec::new();
    for &protocol in protocols {
        for &conns in connections {
            for &target in targets {
                let figure = |metric| find(target, protocol, conns, metric);
                let (Some(requests_per_s), Some(p50_ms), Some(p99_ms)) = (
                    figure(Metric::RequestsPerS),
                    figure(Metric::P50),
                    figure(Metric::P99),
                ) else {
                    continue;
                };
                rows.push(KeepAliveRow {
                    target: target.label(),
                    protocol: protocol.label(),
                    connections: conns,
                    requests_per_s,
                    p50_ms,
                    p99_ms,
                    proxy_cpu_us_per_request: figure(Metric::ProxyCpuUs),
                    fleet_cpu_us_per_request: figure(Metric::FleetCpuUs),
                    vs_haproxy: figure(Metric::VsHaproxy),
                });
            }
        }
    }
    rows
}

/// Samples keyed by handshake and figure, one row per handshake.
pub(super) fn handshake_rows(samples: Samples<(HandshakeKey, Figure)>) -> Vec<HandshakeRow> {
    let summaries = samples.summaries();
    let figure = |key: &HandshakeKey, wanted: Figure| {
        summaries
            .iter()
            .find(|((other, figure), _)| other == key && *figure == wanted)
            .map(|(_, summary)| summary.clone())
    };
    summaries
        .iter()
        .filter(|((_, figure), _)| *figure == Figure::Rate)
        .filter_map(|((key, _), per_s)| {
            Some(HandshakeRow {
                target: key.target.label(),
                certificate: key.certificate,
                resumed: key.resumed,
                per_s: per_s.clone(),
                proxy_cpu_us_per_handshake: figure(key, Figure::CpuUs)?,
                resumed_share: figure(key, Figure::ResumedShare)?,
            })
        })
        .collect()
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        out.push_str(&self.run.markdown());
        let _ = writeln!(out, "{}\n", busy_line(&self.idle, s.max_busy_percent));
        let _ = writeln!(
            out,
            "Setup: loopback; the load tool pinned to CPU {}, the proxy and the nginx fleet \
             pinned to CPUs {}; the gateway's runtime and HAProxy with {} worker thread(s) \
             each (`TOKIO_WORKER_THREADS`, `nbthread`); TLS 1.3 with ECDSA P-256 certificates \
             on both sides; round robin over three nginx servers (one worker process) that \
             require the proxy's client certificate; keep-alive to them; access logs off in \
             all three. wrk and h2load cannot present a client certificate, so the ceiling is \
             the same nginx worker on one extra server block with plain TLS. Each figure is \
             the median of {} runs of {} s (min–max); the ratio to HAProxy is taken within \
             each round. CPU per request is the process's utime+stime over the run divided by \
             the requests (10 ms clock ticks).\n",
            s.load_cpu, s.server_cpus, s.threads, s.runs, s.seconds
        );
        if !self.keep_alive.is_empty() {
            out.push_str(
                "### Keep-alive throughput and latency\n\n| protocol | conns | target | \
                 requests/s | vs HAProxy | p50 ms | p99 ms | proxy CPU µs/req | fleet CPU \
                 µs/req |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
            for row in &self.keep_alive {
                let optional = |summary: &Option<Summary>, digits| {
                    summary
                        .as_ref()
                        .map_or_else(|| "–".to_owned(), |s| cell(s, digits))
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.protocol,
                    row.connections,
                    row.target,
                    cell(&row.requests_per_s, 0),
                    optional(&row.vs_haproxy, 2),
                    cell(&row.p50_ms, 2),
                    cell(&row.p99_ms, 2),
                    optional(&row.proxy_cpu_us_per_request, 1),
                    optional(&row.fleet_cpu_us_per_request, 1),
                );
            }
            out.push('\n');
        }
        if !self.handshakes.is_empty() {
            let _ = writeln!(
                out,
                "### New TLS 1.3 connections (no keep-alive)\n\nThe runner's own rustls client, \
                 {} s per run, one connection after the other: connect, handshake, \
                 close_notify, read to the end (so the session tickets arrive). \"full\" has \
                 no session store; \"resumed\" offers the last ticket, and the share the \
                 server really resumed is counted per connection. One client thread on one \
                 CPU bounds the rate; the proxy's CPU per handshake is the figure to \
                 compare.\n\n| target | certificate | handshake | really resumed | \
                 connections/s | proxy CPU µs/handshake |\n| --- | --- | --- | ---: | ---: | \
                 ---: |",
                s.handshake_seconds
            );
            for row in &self.handshakes {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.0}% | {} | {} |",
                    row.target,
                    row.certificate,
                    if row.resumed { "resumed" } else { "full" },
                    100.0 * row.resumed_share.median,
                    cell(&row.per_s, 0),
                    cell(&row.proxy_cpu_us_per_handshake, 1),
                );
            }
            out.push('\n');
        }
        if !self.idle_memory.is_empty() {
            out.push_str(&super::idle::markdown(
                &self.idle_memory,
                s.idle_connections,
                s.open_file_limit,
            ));
        }
        if !self.not_measured.is_empty() {
            out.push_str("### Not measured yet\n\n");
            for missing in &self.not_measured {
                let _ = writeln!(out, "- {}: {}", missing.scenario, missing.reason);
            }
            out.push('\n');
        }
        out
    }
}
