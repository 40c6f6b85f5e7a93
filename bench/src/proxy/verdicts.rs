//! What one proxy run says about issue 17, derived from its own rows: the stack's
//! floor (the reference forwarder against HAProxy), the gateway's own cost (the
//! gateway against the reference), the WAF's cost (the same route with it on and
//! off), and each goal of the issue met or missed with its ratio.

use std::fmt::Write as _;

use super::{
    Target,
    idle::IdleRow,
    report::{HandshakeRow, KeepAliveRow},
};

/// The gateway's CPU per full ECDSA handshake over HAProxy's when issue 17 was filed:
/// the lead to keep.
const HANDSHAKE_LEAD: f64 = 0.53;
/// The gateway's memory per idle keep-alive connection when issue 17 was filed
/// (VmRSS growth, KiB): not to get worse.
const IDLE_KIB_PER_CONNECTION: f64 = 31.4;

/// The rows of one protocol and connection count.
struct Cell<'a> {
    rows: &'a [KeepAliveRow],
    protocol: &'static str,
    connections: u32,
}

impl<'a> Cell<'a> {
    fn row(&self, target: Target) -> Option<&'a KeepAliveRow> {
        self.rows.iter().find(|row| {
            row.protocol == self.protocol
                && row.connections == self.connections
                && row.target == target.label()
        })
    }

    /// The median proxy CPU per request of `target`, µs.
    fn cpu(&self, target: Target) -> Option<f64> {
        self.row(target)?
            .proxy_cpu_us_per_request
            .as_ref()
            .map(|summary| summary.median)
    }
}

/// The protocol and connection counts the run has rows for, in their order.
fn cells(rows: &[KeepAliveRow]) -> Vec<Cell<'_>> {
    let mut cells: Vec<Cell<'_>> = Vec::new();
    for row in rows {
        if !cells
            .iter()
            .any(|cell| cell.protocol == row.protocol && cell.connections == row.connections)
        {
            cells.push(Cell {
                rows,
                protocol: row.protocol,
                connections: row.connections,
            });
        }
    }
    cells
}

fn figure(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |value| format!("{value:.digits$}"))
}

/// `a` over `b` when both are there.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The stack floor (reference / HAProxy), the gateway's own cost (gateway −
/// reference) and the WAF's (`/` − `/nowaf/`) for each protocol and connection
/// count in `places`, from `cost` (per request, in `unit`, `digits` after the
/// point); the table's rows only, empty without a reference figure.
pub fn cost_rows(
    places: &[(&'static str, u32)],
    cost: impl Fn(Target, &'static str, u32) -> Option<f64>,
    digits: usize,
) -> String {
    let mut out = String::new();
    for &(protocol, connections) in places {
        let at = |target| cost(target, protocol, connections);
        let reference = at(Target::Reference);
        if reference.is_none() {
            continue;
        }
        let (haproxy, gateway, no_waf) = (
            at(Target::Haproxy),
            at(Target::Gateway),
            at(Target::GatewayNoWaf),
        );
        let difference = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        let _ = writeln!(
            out,
            "| {protocol} | {connections} | {} | {} | {} | {} | {} | {} | {} | {} |",
            figure(reference, digits),
            figure(haproxy, digits),
            figure(ratio(reference, haproxy), 2),
            figure(gateway, digits),
            figure(difference(gateway, reference), digits),
            figure(ratio(gateway, reference), 2),
            figure(no_waf, digits),
            figure(difference(gateway, no_waf), digits),
        );
    }
    out
}

/// The header of [`cost_rows`]' table.
pub const COST_HEADER: &str = "| protocol | conns | reference | HAProxy | stack floor \
    (reference / HAProxy) | gateway | gateway's own (− reference) | gateway / reference | \
    WAF off | WAF cost (on − off) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: \
    | ---: | ---: |\n";

/// The cost table of a run's keep-alive rows (proxy CPU µs per request).
fn costs(rows: &[KeepAliveRow]) -> String {
    let places: Vec<_> = cells(rows)
        .iter()
        .map(|cell| (cell.protocol, cell.connections))
        .collect();
    let table = cost_rows(
        &places,
        |target, protocol, connections| {
            Cell {
                rows,
                protocol,
                connections,
            }
            .cpu(target)
        },
        1,
    );
    if table.is_empty() {
        return table;
    }
    format!(
        "### Where the CPU per request goes (issue 17)\n\nProxy CPU µs per request, medians \
         of this run. Stack floor: the reference forwarder (hyper + tokio-rustls, nothing \
         else) over HAProxy. The gateway's own work: the gateway without auth minus the \
         reference. The WAF: the gateway's `/` (WAF on) minus its `/nowaf/` (WAF off), both \
         without auth.\n\n{COST_HEADER}{table}\n"
    )
}

/// One goal's line: what, where, the ratio and whether it holds.
struct Goal {
    goal: &'static str,
    place: String,
    measured: String,
    met: bool,
}

/// Requests per second and p99 of `gateway` against `peer`, with CPU per request.
fn against(cell: &Cell<'_>, gateway: Target, peer: Target, goal: &'static str) -> Option<Goal> {
    let ours = cell.row(gateway)?;
    let theirs = cell.row(peer)?;
    let cpu = ratio(cell.cpu(gateway), cell.cpu(peer))?;
    let rate = ours.requests_per_s.median / theirs.requests_per_s.median.max(f64::MIN_POSITIVE);
    let (p99, peer_p99) = (ours.p99_ms.median, theirs.p99_ms.median);
    Some(Goal {
        goal,
        place: format!("{} × {}", cell.protocol, cell.connections),
        measured: format!(
            "CPU/request {cpu:.2}×, requests/s {rate:.2}×, p99 {p99:.2} vs {peer_p99:.2} ms"
        ),
        met: cpu <= 1.0 && rate >= 1.0 && p99 <= peer_p99,
    })
}

/// Issue 17's goals against the run, one line per goal and place it was measured.
fn goals(keep_alive: &[KeepAliveRow], handshakes: &[HandshakeRow], idle: &[IdleRow]) -> Vec<Goal> {
    let mut goals = Vec::new();
    for cell in cells(keep_alive) {
        goals.extend(against(
            &cell,
            Target::Gateway,
            Target::Haproxy,
            "no auth: CPU/request ≤ HAProxy's, requests/s ≥, p99 no worse",
        ));
        goals.extend(against(
            &cell,
            Target::GatewayJwt,
            Target::HaproxyJwt,
            "ES256 JWT, token reused: CPU/request ≤ HAProxy-with-`jwt_verify`'s, requests/s ≥, p99 no worse",
        ));
        if let Some(cpu) = ratio(
            cell.cpu(Target::GatewayJwtFresh),
            cell.cpu(Target::HaproxyJwt),
        ) {
            goals.push(Goal {
                goal: "fresh token per request: CPU/request ≤ HAProxy-with-`jwt_verify`'s",
                place: format!("{} × {}", cell.protocol, cell.connections),
                measured: format!("CPU/request {cpu:.2}×"),
                met: cpu <= 1.0,
            });
        }
    }
    let handshake = |target: Target| {
        handshakes
            .iter()
            .find(|row| {
                row.target == target.label() && row.certificate == "ECDSA P-256" && !row.resumed
            })
            .map(|row| row.proxy_cpu_us_per_handshake.median)
    };
    if let Some(cpu) = ratio(handshake(Target::Gateway), handshake(Target::Haproxy)) {
        goals.push(Goal {
            goal: "new TLS connections: keep the lead (CPU per full ECDSA handshake ≤ 0.53× HAProxy's)",
            place: "full handshakes".to_owned(),
            measured: format!("{cpu:.2}×"),
            met: cpu <= HANDSHAKE_LEAD,
        });
    }
    if let Some(row) = idle
        .iter()
        .find(|row| row.target == Target::Gateway.label())
    {
        let kib = row.rss_per_connection_kib();
        goals.push(Goal {
            goal: "memory per idle keep-alive connection no worse than when filed (31.4 KiB)",
            place: format!("{} connections", row.connections),
            measured: format!("{kib:.1} KiB ({:.2}×)", kib / IDLE_KIB_PER_CONNECTION),
            met: kib <= IDLE_KIB_PER_CONNECTION,
        });
    }
    goals
}

/// The run's issue-17 tables (empty when it has none of their rows).
pub fn markdown(
    keep_alive: &[KeepAliveRow],
    handshakes: &[HandshakeRow],
    idle: &[IdleRow],
) -> String {
    let mut out = costs(keep_alive);
    let goals = goals(keep_alive, handshakes, idle);
    if !goals.is_empty() {
        out.push_str(
            "### The goals of issue 17, this run\n\nRatios of this run's medians, the \
             gateway over HAProxy doing the same work. Not measured by this suite: peak RSS \
             while streaming.\n\n| goal | where | measured | verdict |\n| --- | --- | --- | \
             --- |\n",
        );
        for goal in goals {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                goal.goal,
                goal.place,
                goal.measured,
                if goal.met { "met" } else { "missed" }
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    fn row(target: Target, requests_per_s: f64, p99_ms: f64, cpu_us: f64) -> KeepAliveRow {
        KeepAliveRow {
            proxy_cpu_us_per_request: Summary::of(vec![cpu_us]),
            ..KeepAliveRow::one_run(target, requests_per_s, p99_ms)
        }
    }

    fn verdict<'a>(text: &'a str, goal: &str) -> &'a str {
        text.lines()
            .find(|line| line.starts_with(&format!("| {goal}")))
            .unwrap_or_else(|| panic!("no line for {goal:?} in {text}"))
    }

    #[test]
    fn derives_the_costs_and_judges_every_goal_on_cpu_rate_and_p99() {
        let rows = [
            row(Target::Gateway, 5000.0, 8.0, 120.0),
            row(Target::GatewayNoWaf, 5200.0, 8.0, 110.0),
            row(Target::Reference, 9000.0, 4.0, 40.0),
            row(Target::Haproxy, 9500.0, 5.0, 65.0),
            // Cheaper and faster than HAProxy-with-JWT, but a worse p99: missed.
            row(Target::GatewayJwt, 4000.0, 9.5, 100.0),
            row(Target::GatewayJwtFresh, 2000.0, 12.0, 200.0),
            row(Target::HaproxyJwt, 3500.0, 9.0, 216.0),
        ];
        let text = markdown(&rows, &[], &[]);
        // Reference / HAProxy, gateway − reference, gateway / reference, WAF on − off.
        assert!(
            text.contains("| 40.0 | 65.0 | 0.62 | 120.0 | 80.0 | 3.00 | 110.0 | 10.0 |"),
            "{text}"
        );
        assert!(verdict(&text, "no auth").ends_with("| missed |"), "{text}");
        assert!(
            verdict(&text, "ES256 JWT, token reused").ends_with("| missed |"),
            "{text}"
        );
        assert!(verdict(&text, "fresh token").ends_with("| met |"), "{text}");
    }

    #[test]
    fn without_a_reference_or_peers_there_is_nothing_to_say() {
        let rows = [row(Target::Gateway, 5000.0, 8.0, 120.0)];
        assert!(markdown(&rows, &[], &[]).is_empty());
    }
}
