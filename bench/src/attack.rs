//! Protection under attack: a legitimate HTTPS client's requests per second and
//! latency through the gateway while the client namespace floods the gateway's
//! namespace with 64-byte UDP, from sources in the blocklist and from sources over
//! their rate limit, with the gateway's XDP program attached and without it.
//!
//! The rig is the on-the-wire one of [`crate::wire`] (two namespaces joined by veth,
//! the live-frames generator sending out of the client's veth) plus the real
//! `gateway run` in the gateway namespace with its TLS listener on the veth address,
//! a `test-upstream` behind it on that namespace's loopback, and wrk in the client
//! namespace from an address that is neither blocked nor over its limit.
//!
//! CPUs: the generator runs on the flood CPU, SCHED_FIFO as in the drop-rate runs but
//! paced to one rate for every scenario, so it leaves that CPU to others while the
//! receiver keeps up (flat out it would starve everything there); the gateway veth's
//! NAPI poll, and with it the XDP program, runs in softirq on that CPU too, where the
//! legitimate client's packets queue behind the flood in the same veth ring, as they
//! would in one NIC queue. wrk, the gateway and the upstream share the server CPU, and
//! RPS on the gateway's veth steers the stack's receive work there in every scenario:
//! on a real host the NIC spreads a flood from many sources over every core's queue,
//! so the stack's cost of a flood lands on the cores the proxy runs on. XDP drops
//! before RPS, in the NAPI poll on the flood CPU; that is the protection measured.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use gateway::{
    config::{HealthConfig, LogOutput},
    xdp::Mode,
};
use gateway_tests::{
    fleet::{FLEET_NAME, Fleet, render},
    gateway::{Daemon, Gateway},
    net::{GATEWAY_V4, Topology},
    upstream::Upstream,
};
use serde::Serialize;

use crate::{
    machine::{IdleWaiter, pin_current_thread},
    proxy::load,
    report::{Run, busy_line, cell},
    stats::{Samples, Summary},
    wire::{self, Generator, Pace, with_flood},
};

/// The legitimate client's address in the client namespace.
const CLIENT: &str = "198.18.0.10";
/// The gateway's TLS port on the veth address.
const PORT: u16 = 8443;
/// An uncounted wrk run after each gateway start.
const WARM_UP_SECONDS: u32 = 2;
/// The rate-limited flood comes from here on, outside the blocked sources.
const LIMITED_FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 130, 0);

#[derive(Clone, Serialize)]
pub struct Options {
    pub runs: usize,
    /// Seconds of wrk per run.
    pub seconds: u32,
    /// wrk's connections.
    pub connections: u32,
    /// Where the generator (and so the gateway veth's softirq) runs.
    pub flood_cpu: usize,
    /// The flood's rate, frames per second: the same attack for every scenario.
    pub flood_pps: u32,
    /// Where wrk, the gateway and the upstream run.
    pub server_cpu: usize,
    /// Flooding sources in the blocklist.
    pub blocked_sources: u32,
    /// Flooding sources under the per-source rate limit (not blocked).
    pub limited_sources: u32,
    /// The per-source limit, packets per second (and burst): above what the legitimate
    /// client sends, far below what each flooding source sends.
    pub limit_pps: u32,
}

/// What runs during one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// No flood, no XDP program: the proxy alone.
    Quiet,
    /// No flood, the XDP program attached with the blocklist and the rate limit set.
    QuietXdp,
    /// The flood reaches the kernel stack, which discards it (no UDP listener).
    FloodNoXdp,
    /// The flood's sources are in the blocklist.
    FloodBlocked,
    /// The flood's sources are over their rate limit.
    FloodLimited,
}

impl Scenario {
    const ALL: [Self; 5] = [
        Self::Quiet,
        Self::FloodNoXdp,
        Self::QuietXdp,
        Self::FloodBlocked,
        Self::FloodLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Quiet => "no flood, no XDP program (baseline)",
            Self::QuietXdp => "no flood, XDP attached (blocklist + rate limit set)",
            Self::FloodNoXdp => "flood, no XDP program (the kernel stack drops it)",
            Self::FloodBlocked => "flood from blocked sources, XDP attached",
            Self::FloodLimited => "flood from rate-limited sources, XDP attached",
        }
    }

    fn xdp(self) -> bool {
        matches!(
            self,
            Self::QuietXdp | Self::FloodBlocked | Self::FloodLimited
        )
    }

    /// The flood's first source and source count, if there is one.
    fn flood(self, options: &Options) -> Option<(Ipv4Addr, u32)> {
        match self {
            Self::Quiet | Self::QuietXdp => None,
            Self::FloodNoXdp | Self::FloodBlocked => {
                Some((wire::FIRST_SOURCE, options.blocked_sources))
            }
            Self::FloodLimited => Some((LIMITED_FIRST, options.limited_sources)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    RequestsPerS,
    P50,
    P99,
    ReceivedMpps,
    LegitDropped,
}

/// One scenario's figures.
#[derive(Serialize)]
pub struct AttackRow {
    pub scenario: &'static str,
    pub requests_per_s: Summary,
    pub p50_ms: Summary,
    pub p99_ms: Summary,
    /// Frames the gateway's veth took in during the run (flood and legitimate), millions
    /// per second; none without a flood.
    pub received_mpps: Option<Summary>,
    /// Packets of the legitimate client the client veth could not hand on (the
    /// gateway veth's ring was full), per second: TCP retransmits them after at
    /// least 200 ms, which is what a p99 of about 200 ms shows.
    pub legit_dropped_per_s: Summary,
}

/// Everything one `gateway-bench attack` run measured, with how it was measured.
#[derive(Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: Run,
    pub settings: Settings,
    pub rows: Vec<AttackRow>,
    pub idle: Vec<crate::machine::Idle>,
}

/// What the run was asked to do, as the report records it.
#[derive(Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub options: Options,
    pub max_busy_percent: f64,
}

/// The namespaces, the upstream and the gateway's files; the daemon is started per
/// XDP setting.
struct Rig {
    topology: Topology,
    fleet: Fleet,
    upstream: Upstream,
    template: Vec<u8>,
}

pub fn run(options: &Options, waiter: &mut IdleWaiter) -> anyhow::Result<Vec<AttackRow>> {
    let rig = Rig::start(options)?;
    let mut samples: Samples<(Scenario, Metric)> = Samples::default();
    // Every round runs every scenario, so the rows compare figures taken close together.
    for round in 1..=options.runs {
        for xdp in [false, true] {
            let (_gateway, _daemon) = rig.gateway(xdp, options)?;
            for scenario in Scenario::ALL.into_iter().filter(|s| s.xdp() == xdp) {
                let busy = waiter.wait()?.busy_percent;
                println!(
                    "round {round}/{}: {} (CPU busy {busy:.0}% before)",
                    options.runs,
                    scenario.label()
                );
                let (throughput, received_mpps, dropped) = rig
                    .measure(scenario, options)
                    .with_context(|| scenario.label())?;
                samples.push((scenario, Metric::RequestsPerS), throughput.requests_per_s);
                samples.push((scenario, Metric::P50), throughput.p50_ms);
                samples.push((scenario, Metric::P99), throughput.p99_ms);
                if let Some(mpps) = received_mpps {
                    samples.push((scenario, Metric::ReceivedMpps), mpps);
                }
                samples.push((scenario, Metric::LegitDropped), dropped);
            }
        }
    }
    let summaries = samples.summaries();
    let figure = |scenario, metric| {
        summaries
            .iter()
            .find(|(key, _)| *key == (scenario, metric))
            .map(|(_, summary)| summary.clone())
    };
    Ok(Scenario::ALL
        .into_iter()
        .filter_map(|scenario| {
            Some(AttackRow {
                scenario: scenario.label(),
                requests_per_s: figure(scenario, Metric::RequestsPerS)?,
                p50_ms: figure(scenario, Metric::P50)?,
                p99_ms: figure(scenario, Metric::P99)?,
                received_mpps: figure(scenario, Metric::ReceivedMpps),
                legit_dropped_per_s: figure(scenario, Metric::LegitDropped)?,
            })
        })
        .collect())
}

impl Rig {
    fn start(options: &Options) -> anyhow::Result<Self> {
        let topology = Topology::with_prefix(wire::NETNS_PREFIX, &[CLIENT]);
        wire::enable_napi(&topology)?;
        steer_receive(&topology, options.server_cpu)?;
        let template = wire::template_frame(&topology)?;
        let fleet = Fleet::new(0);
        let server = fleet.fleet_ca.issue_server(&[FLEET_NAME]);
        let upstream = on_cpu(options.server_cpu, || {
            Upstream::builder("up-0", &server, fleet.fleet_ca.cert_pem())
                .netns(&topology.gateway)
                .start()
        })?;
        Ok(Self {
            topology,
            fleet,
            upstream,
            template,
        })
    }

    /// `gateway run` in the gateway namespace on the server CPU, with its XDP program
    /// attached natively to the gateway's veth (the flood's sources in the blocklist,
    /// every source under the rate limit) or with XDP off.
    fn gateway(&self, xdp: bool, options: &Options) -> anyhow::Result<(Gateway, Daemon)> {
        let mut config = self.fleet.config();
        let listener = &mut config.listeners[0];
        listener.address = SocketAddr::new(GATEWAY_V4.parse()?, PORT);
        let pool = config
            .upstreams
            .get_mut("fleet")
            .ok_or_else(|| anyhow!("the fleet config has no pool `fleet`"))?;
        pool.endpoints = vec![self.upstream.addr().to_string()];
        // Lenient checks: a check that times out on a busy machine must not take the
        // only upstream out (503s) in the middle of a run.
        pool.health = HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            healthy_threshold: 1,
            unhealthy_threshold: 10,
            ..HealthConfig::default()
        };
        config.xdp.enabled = xdp;
        // No per-request access log, as in the proxy suite.
        config.log.access = LogOutput::Off;
        config.xdp.interface = self.topology.gw_iface.clone();
        config.xdp.mode = Mode::Driver;
        let gateway = Gateway::new(&self.topology.gateway);
        let daemon = on_cpu(options.server_cpu, || {
            gateway.spawn_daemon(&render(&config))
        })?;
        if xdp {
            let mut add = vec!["blocklist".to_owned(), "add".to_owned()];
            add.extend(
                (0..options.blocked_sources)
                    .map(|i| Ipv4Addr::from(u32::from(wire::FIRST_SOURCE) + i).to_string()),
            );
            gateway.ok(&add.iter().map(String::as_str).collect::<Vec<_>>());
            let limit = options.limit_pps.to_string();
            gateway.ok(&["ratelimit", "set", "--pps", &limit, "--burst", &limit]);
        }
        self.topology.wait_until_settled();
        // Connections to the upstream, the first handshakes and the allocator's first
        // growth go into a run that is not counted; so do the errors of a gateway
        // still finding its upstream healthy (the counted runs fail on any error).
        if let Err(err) = self.wrk(options, WARM_UP_SECONDS) {
            println!("warm-up run through the new gateway: {err:#}");
        }
        Ok((gateway, daemon))
    }

    /// One wrk run, under the scenario's flood if it has one; with a flood, also the
    /// rate at which the gateway's veth received frames meanwhile; and the legitimate
    /// packets the client's veth dropped per second.
    fn measure(
        &self,
        scenario: Scenario,
        options: &Options,
    ) -> anyhow::Result<(load::Throughput, Option<f64>, f64)> {
        // The client veth's drops count the generator's frames that found the gateway
        // veth's ring full too; those are its XDP transmit errors.
        let (ns, iface) = (&self.topology.client, self.topology.client_iface.as_str());
        let dropped = || -> anyhow::Result<u64> {
            let all = wire::link_stat(ns, iface, "tx/dropped")?;
            let flood = wire::veth_stat(ns, iface, "tx", "xdp_xmit_errors")?;
            Ok(all.saturating_sub(flood))
        };
        let start = Instant::now();
        let dropped_before = dropped()?;
        let (throughput, received) = self.measure_wrk(scenario, options)?;
        let legit_dropped =
            dropped()?.saturating_sub(dropped_before) as f64 / start.elapsed().as_secs_f64();
        Ok((throughput, received, legit_dropped))
    }

    fn measure_wrk(
        &self,
        scenario: Scenario,
        options: &Options,
    ) -> anyhow::Result<(load::Throughput, Option<f64>)> {
        let wrk = || self.wrk(options, options.seconds);
        let Some((first, sources)) = scenario.flood(options) else {
            return Ok((wrk()?, None));
        };
        let generator = Generator {
            iface: self.topology.client_iface.clone(),
            template: self.template.clone(),
            first,
            sources,
            cpu: options.flood_cpu,
            pace: Pace::Rate(options.flood_pps),
        };
        with_flood(&self.topology.client, generator, || {
            let before = wire::received(&self.topology)?;
            let start = Instant::now();
            let throughput = wrk()?;
            let frames = wire::received(&self.topology)?.saturating_sub(before);
            let mpps = frames as f64 / start.elapsed().as_secs_f64() / 1e6;
            Ok((throughput, Some(mpps)))
        })
    }
}

impl Rig {
    /// wrk in the client namespace against the gateway for `seconds`.
    fn wrk(&self, options: &Options, seconds: u32) -> anyhow::Result<load::Throughput> {
        load::wrk(
            Some(&self.topology.client.path()),
            &format!("https://{GATEWAY_V4}:{PORT}/"),
            options.connections,
            seconds,
            options.server_cpu,
            &[],
            None,
        )
    }
}

/// Sets RPS on every receive queue of the gateway's veth to `cpu`. `ip netns exec`
/// mounts the namespace's own /sys, where its interfaces' queues are.
fn steer_receive(topology: &Topology, cpu: usize) -> anyhow::Result<()> {
    let mask = format!("{:x}", 1u64 << cpu);
    let script = format!(
        "for q in /sys/class/net/{}/queues/rx-*; do echo {mask} > $q/rps_cpus || exit 1; done",
        topology.gw_iface
    );
    let output = Command::new("ip")
        .args(["netns", "exec", &topology.gateway.name, "sh", "-c", &script])
        .output()
        .context("running ip netns exec")?;
    if !output.status.success() {
        bail!(
            "setting RPS on {}: {}",
            topology.gw_iface,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread pinned to `cpu`, so the processes it starts inherit the pin
/// (and so do all their threads).
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<T> {
                pin_current_thread(cpu)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("a process failed to start (see the panic above)"))?
    })
}

impl Report {
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let s = &self.settings;
        let mut out = self.run.markdown();
        let _ = writeln!(out, "{}\n", busy_line(&self.idle, s.max_busy_percent));
        let _ = writeln!(
            out,
            "### Protection under attack (HTTPS through the gateway while another namespace \
             floods it; median of {} runs, min–max)\n\nSetup: two namespaces joined by veth. \
             The gateway namespace runs `gateway run` (TLS 1.3 listener on {GATEWAY_V4}:{PORT}, \
             one `test-upstream` behind it over mTLS on the namespace's loopback); the client \
             namespace runs wrk (`-t1 -c{}`, {} s, HTTP/1.1 keep-alive, from {CLIENT}) and the \
             live-frames generator (64-byte UDP/IPv4 to the gateway's address, sources \
             rewritten per frame, at most {} frames/s in 50 ms slices: the same attack in \
             every flooded row). The generator runs on CPU {} (SCHED_FIFO, sleeping out \
             each slice once its frames are sent), and so does the gateway veth's NAPI poll \
             (and the XDP program); wrk, the gateway and the upstream share CPU {}, where RPS \
             steers the stack's receive work in every row, as a NIC spreads a flood from many \
             sources over the proxy's cores too. XDP rows: the gateway's program attached natively by the daemon, the {} \
             blocked sources added with `gateway blocklist add`, a per-source limit of {} \
             packets/s (burst the same) with `gateway ratelimit set`; the rate-limited flood \
             comes from {} other sources. Without XDP the same flood reaches the stack, which \
             drops it (no UDP listener).\n",
            s.options.runs,
            s.options.connections,
            s.options.seconds,
            s.options.flood_pps,
            s.options.flood_cpu,
            s.options.server_cpu,
            s.options.blocked_sources,
            s.options.limit_pps,
            s.options.limited_sources
        );
        out.push_str(
            "| scenario | requests/s | vs baseline | p50 ms | p99 ms | received by the gateway \
             veth, Mpps | legitimate packets dropped at the veth, per s |\n| --- | ---: | ---: \
             | ---: | ---: | ---: | ---: |\n",
        );
        let baseline = self
            .rows
            .first()
            .map(|row| row.requests_per_s.median)
            .filter(|rate| *rate > 0.0);
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.scenario,
                cell(&row.requests_per_s, 0),
                baseline.map_or_else(
                    || "–".to_owned(),
                    |base| format!("{:.2}", row.requests_per_s.median / base)
                ),
                cell(&row.p50_ms, 2),
                cell(&row.p99_ms, 2),
                row.received_mpps
                    .as_ref()
                    .map_or_else(|| "–".to_owned(), |mpps| cell(mpps, 2)),
                cell(&row.legit_dropped_per_s, 0),
            );
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_runs_once_per_xdp_setting() {
        let with_xdp = Scenario::ALL.iter().filter(|s| s.xdp()).count();
        assert_eq!(with_xdp, 3);
        assert_eq!(Scenario::ALL.len() - with_xdp, 2);
        let options = Options {
            runs: 1,
            seconds: 1,
            connections: 1,
            flood_cpu: 0,
            flood_pps: 1_000_000,
            server_cpu: 1,
            blocked_sources: 256,
            limited_sources: 8,
            limit_pps: 20_000,
        };
        assert_eq!(Scenario::Quiet.flood(&options), None);
        assert_eq!(
            Scenario::FloodLimited.flood(&options),
            Some((LIMITED_FIRST, 8))
        );
    }

    #[test]
    fn flooding_sources_do_not_overlap_the_client() {
        let blocked_last = u32::from(wire::FIRST_SOURCE) + 255;
        assert!(blocked_last < u32::from(LIMITED_FIRST));
        let client: Ipv4Addr = CLIENT.parse().expect("an address");
        assert!(u32::from(client) < u32::from(wire::FIRST_SOURCE));
    }
}
