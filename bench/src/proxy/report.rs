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
    pub open_loop: Option<OpenLoop>,
    /// Memory with idle keep-alive connections.
    pub idle_memory: Vec<super::idle::IdleRow>,
    /// Instructions per request under callgrind (`--callgrind` runs only).
    pub profile: Vec<super::profile::ProfileRow>,
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
    /// Requests per second over HAProxy-with-JWT's in the same round.
    pub vs_haproxy_jwt: Option<Summary>,
}

/// The open-loop runs: one rate for every target.
#[derive(Serialize)]
pub struct OpenLoop {
    /// The load tool as it names itself (`oha 1.16.0`).
    pub tool: String,
    /// Requests per second asked of oha.
    pub rate_per_s: f64,
    pub connections: u32,
    pub seconds: u32,
    pub rows: Vec<OpenLoopRow>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OpenLoopFigure {
    Achieved,
    P50,
    P99,
    P999,
}

/// One target at the open-loop rate; latencies count from when each request was due.
#[derive(Serialize)]
pub struct OpenLoopRow {
    pub target: &'static str,
    pub achieved_per_s: Summary,
    pub p50_ms: Summary,
    pub p99_ms: Summary,
    pub p999_ms: Summary,
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

#[cfg(test)]
impl KeepAliveRow {
    /// One run's HTTP/1.1 row at 16 connections without CPU figures or ratios, for
    /// the tests of what reads rows.
    pub(super) fn one_run(target: Target, requests_per_s: f64, p99_ms: f64) -> Self {
        let summary = |value| Summary::of(vec![value]).expect("one value");
        Self {
            target: target.label(),
            protocol: Protocol::Http1.label(),
            connections: 16,
            requests_per_s: summary(requests_per_s),
            p50_ms: summary(1.0),
            p99_ms: summary(p99_ms),
            proxy_cpu_us_per_request: None,
            fleet_cpu_us_per_request: None,
            vs_haproxy: None,
            vs_haproxy_jwt: None,
        }
    }
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
                    vs_haproxy_jwt: figure(Metric::VsHaproxyJwt),
                });
            }
        }
    }
    rows
}

/// Samples keyed by target and figure, one row per target that has them all.
pub(super) fn open_loop_rows(
    samples: Samples<(Target, OpenLoopFigure)>,
    targets: &[Target],
) -> Vec<OpenLoopRow> {
    let summaries = samples.summaries();
    let figure = |target: Target, wanted: OpenLoopFigure| {
        summaries
            .iter()
            .find(|((other, figure), _)| *other == target && *figure == wanted)
            .map(|(_, summary)| summary.clone())
    };
    targets
        .iter()
        .filter_map(|&target| {
            Some(OpenLoopRow {
                target: target.label(),
                achieved_per_s: figure(target, OpenLoopFigure::Achieved)?,
                p50_ms: figure(target, OpenLoopFigure::P50)?,
                p99_ms: figure(target, OpenLoopFigure::P99)?,
                p999_ms: figure(target, OpenLoopFigure::P999)?,
            })
        })
        .collect()
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

/// What the JWT rows measure, said once above the keep-alive table.
const JWT_SETUP: &str = "The JWT rows: an ES256 token (P-256 key made by the runner) with \
    `iss`, `aud`, `exp` and the scope `orders:read` among three. The gateway checks it on a \
    second route (`/jwt/`) of the same listener and process: `[auth.issuers.bench]` with a \
    JWKS file, `algorithms = [\"ES256\"]`, `[route.auth] mode = \"required\"`, \
    `scopes_all = [\"orders:read\"]`; it also forwards the caller's identity headers \
    upstream. HAProxy checks it on a second frontend of the same process: `jwt_verify` and \
    ACLs on `alg`, `iss`, `aud`, `exp` and the scope. Before measuring, the runner checks \
    that both answer 401 without a token and with a token signed by another key, 403 \
    without the scope and 200 with the bench's token. \"one token reused\" sends the same \
    token on every request, so after the first each is a verified-token cache hit. \"fresh \
    token per request\" sends a token no request has sent before with every request (wrk \
    with a Lua script reading tokens the runner signed before the run; h2load cannot vary \
    a header per request, so it is HTTP/1.1 only): every request pays the signature and \
    claims check, the work HAProxy does on every request.\n\n";

/// A summary as a cell, or a dash when there is none.
fn optional(summary: &Option<Summary>, digits: usize) -> String {
    summary
        .as_ref()
        .map_or_else(|| "–".to_owned(), |s| cell(s, digits))
}

/// The two proxy goals against a run's JWT rows: the gateway checking a fresh
/// token per request (HAProxy's work) at least HAProxy-with-JWT's rate with a p99 no
/// worse, and with the reused token at least twice it. Empty without them.
fn jwt_goals(rows: &[KeepAliveRow]) -> String {
    let mut out = String::new();
    let find = |protocol: &str, connections: u32, target: Target| {
        rows.iter().find(|row| {
            row.protocol == protocol
                && row.connections == connections
                && row.target == target.label()
        })
    };
    for row in rows {
        let haproxy = match find(row.protocol, row.connections, Target::HaproxyJwt) {
            Some(haproxy) => haproxy,
            None => continue,
        };
        let Some(ratio) = &row.vs_haproxy_jwt else {
            continue;
        };
        let (goal, met) = if row.target == Target::GatewayJwtFresh.label() {
            (
                "≥ 1× HAProxy-with-JWT, p99 no worse",
                ratio.median >= 1.0 && row.p99_ms.median <= haproxy.p99_ms.median,
            )
        } else if row.target == Target::GatewayJwt.label() {
            ("≥ 2× HAProxy-with-JWT", ratio.median >= 2.0)
        } else {
            continue;
        };
        if out.is_empty() {
            out.push_str(
                "### The JWT goals of issue 7, this run\n\n| gateway | protocol | conns | \
                     goal | vs HAProxy JWT | p99 ms gateway / HAProxy JWT | vs HAProxy no \
                     auth | verdict |\n| --- | --- | ---: | --- | ---: | ---: | ---: | --- |\n",
            );
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {goal} | {} | {:.2} / {:.2} | {} | {} |",
            row.target,
            row.protocol,
            row.connections,
            cell(ratio, 2),
            row.p99_ms.median,
            haproxy.p99_ms.median,
            optional(&row.vs_haproxy, 2),
            if met { "met" } else { "missed" },
        );
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
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
             the median of {} runs of {} s (min–max); the ratios to HAProxy and to \
             HAProxy-with-JWT are taken within each round. CPU per request is the process's \
             utime+stime over the run divided by the requests (10 ms clock ticks).\n",
            s.load_cpu, s.server_cpus, s.threads, s.runs, s.seconds
        );
        if !self.keep_alive.is_empty() {
            out.push_str(JWT_SETUP);
            out.push_str(
                "### Keep-alive throughput and latency\n\n| protocol | conns | target | \
                 requests/s | vs HAProxy | vs HAProxy JWT | p50 ms | p99 ms | proxy CPU µs/req \
                 | fleet CPU µs/req |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | \
                 ---: | ---: |\n",
            );
            for row in &self.keep_alive {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.protocol,
                    row.connections,
                    row.target,
                    cell(&row.requests_per_s, 0),
                    optional(&row.vs_haproxy, 2),
                    optional(&row.vs_haproxy_jwt, 2),
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
        if let Some(open_loop) = &self.open_loop {
            let _ = writeln!(
                out,
                "### Open loop below saturation (tail latency)\n\n{}, HTTP/1.1 over TLS \
                 1.3 with keep-alive, {} connections, {} requests/s asked for {} s per run \
                 (`-q`), pinned like wrk. `--latency-correction` counts each latency from when \
                 the request was due, so a stall shows in the tail instead of slowing the \
                 sender (no coordinated omission). The JWT targets get the reused token.\n\n\
                 | target | achieved requests/s | p50 ms | p99 ms | p99.9 ms |\n| --- | ---: | \
                 ---: | ---: | ---: |",
                open_loop.tool, open_loop.connections, open_loop.rate_per_s, open_loop.seconds
            );
            for row in &open_loop.rows {
                let _ = writeln!(
                    out,
                    "| {} | {}{} | {} | {} | {} |",
                    row.target,
                    cell(&row.achieved_per_s, 0),
                    // Then it was not below its saturation, and the tail says little.
                    if row.achieved_per_s.min < 0.95 * open_loop.rate_per_s {
                        " (fell behind)"
                    } else {
                        ""
                    },
                    cell(&row.p50_ms, 2),
                    cell(&row.p99_ms, 2),
                    cell(&row.p999_ms, 2),
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
        out.push_str(&jwt_goals(&self.keep_alive));
        out.push_str(&super::profile::markdown(&self.profile));
        out.push_str(&super::verdicts::markdown(
            &self.keep_alive,
            &self.handshakes,
            &self.idle_memory,
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: Target, requests_per_s: f64, p99_ms: f64, vs_jwt: f64) -> KeepAliveRow {
        KeepAliveRow {
            vs_haproxy_jwt: Summary::of(vec![vs_jwt]),
            ..KeepAliveRow::one_run(target, requests_per_s, p99_ms)
        }
    }

    #[test]
    fn judges_the_jwt_goals_against_haproxy_with_jwt() {
        let rows = [
            row(Target::GatewayJwt, 5000.0, 3.0, 2.5),
            row(Target::GatewayJwtFresh, 2100.0, 5.0, 1.05),
            row(Target::HaproxyJwt, 2000.0, 4.0, 1.0),
        ];
        let text = jwt_goals(&rows);
        let line = |target: Target| {
            text.lines()
                .find(|line| line.starts_with(&format!("| {} |", target.label())))
                .unwrap_or_else(|| panic!("no line for {target:?} in {text}"))
        };
        // Twice HAProxy's rate with the cached token: met.
        assert!(line(Target::GatewayJwt).ends_with("| met |"), "{text}");
        // Faster than HAProxy with fresh tokens, but a worse p99: missed.
        assert!(
            line(Target::GatewayJwtFresh).ends_with("| missed |"),
            "{text}"
        );
        assert!(
            jwt_goals(&rows[..2]).is_empty(),
            "no HAProxy-with-JWT row, no verdict"
        );
    }
}
