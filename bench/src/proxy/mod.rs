//! The userspace plane: the gateway as a TLS-terminating reverse proxy in front of an
//! mTLS fleet, next to HAProxy doing the same work and to the fleet itself (the
//! ceiling), all on loopback.
//!
//! The load tool runs pinned to its own CPU; the proxies and the fleet share the
//! others. Every round measures every target once, so the ratios compare figures
//! taken minutes, not hours, apart on a machine whose load changes.

mod jwt;
mod load;
mod peers;
pub mod report;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use gateway::config::{CertificateConfig, HealthConfig, LogOutput};
use gateway_tests::{
    fleet::{EDGE_NAME, FLEET_NAME, Fleet, free_port},
    http::Protocol as ClientProtocol,
    pki::Issued,
};

use crate::{machine::IdleWaiter, stats::Samples};
use load::Handshake;
use peers::Process;
use report::{HandshakeRow, KeepAliveRow};

/// The SNI name under which both proxies present an RSA-2048 certificate (the
/// default, [`EDGE_NAME`], is ECDSA P-256).
pub const RSA_NAME: &str = "rsa.api.test";

/// The issue's scenarios this suite cannot measure yet.
pub const NOT_MEASURED: [report::NotMeasured; 1] = [report::NotMeasured {
    scenario: "gateway with a required ES256 JWT and a scope check, one token reused (the \
               verified-token cache) and a fresh token per connection",
    reason: "needs JWT validation (issue 4) wired into the gateway's `[auth]` config; the \
             tokens, the key and HAProxy's side of it are measured already",
}];

pub struct Options {
    pub runs: usize,
    /// Seconds per keep-alive run.
    pub seconds: u32,
    /// Seconds per handshake run.
    pub handshake_seconds: u32,
    pub connections: Vec<u32>,
    /// The CPU the load tool runs on.
    pub load_cpu: usize,
    /// The CPUs (taskset list) the proxies and the fleet run on.
    pub server_cpus: String,
    /// Worker threads of the gateway's runtime and of HAProxy.
    pub threads: usize,
}

/// Who answers the load tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gateway,
    Haproxy,
    /// HAProxy with `jwt_verify` of an ES256 token, iss/aud/exp and the scope.
    HaproxyJwt,
    Direct,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Self::Gateway => "gateway, no auth",
            Self::Haproxy => "HAProxy 2.6, no auth",
            Self::HaproxyJwt => "HAProxy 2.6, ES256 JWT + scope",
            Self::Direct => "upstreams directly (ceiling)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1 (wrk)",
            Self::Http2 => "HTTP/2 (h2load)",
        }
    }
}

/// One figure of one keep-alive configuration.
#[derive(Clone, Copy, PartialEq)]
struct Key {
    target: Target,
    protocol: Protocol,
    connections: u32,
    metric: Metric,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    RequestsPerS,
    P50,
    P99,
    ProxyCpuUs,
    FleetCpuUs,
    /// Requests per second relative to HAProxy's in the same round.
    VsHaproxy,
}

/// The figures of one kind of handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Rate,
    CpuUs,
    /// Share of the connections the server resumed.
    ResumedShare,
}

/// What the suite measured.
pub struct Results {
    pub keep_alive: Vec<KeepAliveRow>,
    pub handshakes: Vec<HandshakeRow>,
}

/// Everything that runs during the suite; dropping it stops the processes.
struct Rig {
    _fleet: Fleet,
    _gateway: gateway_tests::gateway::Daemon,
    gateway_pid: u32,
    _haproxy: Process,
    haproxy_pid: u32,
    nginx: Process,
    gateway_addr: SocketAddr,
    haproxy_addr: SocketAddr,
    haproxy_jwt_addr: SocketAddr,
    /// `Authorization: Bearer <token>`, one token for every request.
    bearer: String,
    ceiling_addr: SocketAddr,
    edge_ca_pem: String,
    dir: PathBuf,
}

pub fn run(options: &Options, waiter: &mut IdleWaiter) -> anyhow::Result<Results> {
    let rig = Rig::start(options)?;
    let mut samples: Samples<Key> = Samples::default();
    let protocols = [Protocol::Http1, Protocol::Http2];
    let targets = [
        Target::Gateway,
        Target::Haproxy,
        Target::HaproxyJwt,
        Target::Direct,
    ];
    for round in 1..=options.runs {
        for protocol in protocols {
            for &connections in &options.connections {
                let idle = waiter.wait()?;
                println!(
                    "round {round}/{}: {} × {connections} connections (CPU busy {:.0}% before)",
                    options.runs,
                    protocol.label(),
                    idle.busy_percent
                );
                let mut haproxy_rate = None;
                let mut rates = Vec::new();
                for target in targets {
                    let key = |metric| Key {
                        target,
                        protocol,
                        connections,
                        metric,
                    };
                    let (result, proxy_ticks, fleet_ticks) =
                        rig.keep_alive(target, protocol, connections, options)?;
                    let requests = result.requests.max(1.0);
                    samples.push(key(Metric::RequestsPerS), result.requests_per_s);
                    samples.push(key(Metric::P50), result.p50_ms);
                    samples.push(key(Metric::P99), result.p99_ms);
                    if let Some(ticks) = proxy_ticks {
                        samples.push(key(Metric::ProxyCpuUs), ticks_us(ticks) / requests);
                    }
                    samples.push(key(Metric::FleetCpuUs), ticks_us(fleet_ticks) / requests);
                    if target == Target::Haproxy {
                        haproxy_rate = Some(result.requests_per_s);
                    }
                    rates.push((target, result.requests_per_s));
                }
                if let Some(base) = haproxy_rate.filter(|rate| *rate > 0.0) {
                    for (target, rate) in rates {
                        samples.push(
                            Key {
                                target,
                                protocol,
                                connections,
                                metric: Metric::VsHaproxy,
                            },
                            rate / base,
                        );
                    }
                }
            }
        }
    }
    let keep_alive = report::keep_alive_rows(samples, &targets, &protocols, &options.connections);
    let handshakes = handshakes(&rig, options, waiter)?;
    let dir = rig.dir.clone();
    drop(rig);
    let _ = fs::remove_dir_all(dir);
    Ok(Results {
        keep_alive,
        handshakes,
    })
}

/// Full and resumed TLS 1.3 handshakes per second and the proxy's CPU per handshake,
/// ECDSA and RSA, gateway and HAProxy.
fn handshakes(
    rig: &Rig,
    options: &Options,
    waiter: &mut IdleWaiter,
) -> anyhow::Result<Vec<HandshakeRow>> {
    let mut samples: Samples<(report::HandshakeKey, Figure)> = Samples::default();
    for round in 1..=options.runs {
        let idle = waiter.wait()?;
        println!(
            "round {round}/{}: handshakes (CPU busy {:.0}% before)",
            options.runs, idle.busy_percent
        );
        for (certificate, name) in [("ECDSA P-256", EDGE_NAME), ("RSA-2048", RSA_NAME)] {
            for kind in [Handshake::Full, Handshake::Resumed] {
                for target in [Target::Gateway, Target::Haproxy] {
                    let (addr, pid) = match target {
                        Target::Gateway => (rig.gateway_addr, rig.gateway_pid),
                        _ => (rig.haproxy_addr, rig.haproxy_pid),
                    };
                    let before = cpu_ticks(pid)?;
                    let result = load::handshakes(
                        addr,
                        name,
                        &rig.edge_ca_pem,
                        kind,
                        options.handshake_seconds,
                        options.load_cpu,
                    )
                    .with_context(|| format!("{kind:?} handshakes with {}", target.label()))?;
                    let ticks = cpu_ticks(pid)?.saturating_sub(before);
                    let key = report::HandshakeKey {
                        target,
                        certificate,
                        resumed: kind == Handshake::Resumed,
                    };
                    samples.push((key, Figure::Rate), result.per_s);
                    samples.push((key, Figure::CpuUs), ticks_us(ticks) / result.connections);
                    samples.push(
                        (key, Figure::ResumedShare),
                        result.resumed / result.connections,
                    );
                }
            }
        }
    }
    Ok(report::handshake_rows(samples))
}

impl Rig {
    fn start(options: &Options) -> anyhow::Result<Self> {
        let fleet = Fleet::new(0);
        let dir = tempdir()?;
        let write = |issued: &Issued, stem: &str| issued.write(&dir, stem);
        let edge = write(&fleet.edge_ca.issue_server(&[EDGE_NAME]), "edge");
        let edge_rsa = write(&fleet.edge_ca.issue_server_rsa(&[RSA_NAME]), "edge-rsa");
        let server = write(&fleet.fleet_ca.issue_server(&[FLEET_NAME]), "fleet");
        let haproxy_client = write(&fleet.fleet_ca.issue_client("haproxy"), "haproxy");
        let fleet_ca = fleet.fleet_ca.write(&dir, "fleet-ca");

        let upstreams: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
        let ceiling_addr = free_port();
        let nginx_conf = dir.join("nginx.conf");
        fs::write(
            &nginx_conf,
            peers::nginx_config(
                &dir,
                &peers::FleetFiles {
                    server,
                    client_ca: fleet_ca.clone(),
                    ceiling: edge.clone(),
                },
                &upstreams,
                ceiling_addr,
            ),
        )?;
        let mut nginx = Command::new("nginx");
        nginx.arg("-p").arg(&dir).arg("-c").arg(&nginx_conf);
        let mut ready = upstreams.clone();
        ready.push(ceiling_addr);
        let nginx = Process::start(
            "nginx",
            nginx,
            &dir.join("nginx.log"),
            &options.server_cpus,
            &ready,
        )?;

        let gateway_addr = free_port();
        let mut config = fleet.config();
        let listener = &mut config.listeners[0];
        listener.address = gateway_addr;
        listener.certificates = vec![
            CertificateConfig {
                cert: edge.0.clone(),
                key: edge.1.clone(),
                server_names: vec![EDGE_NAME.to_owned()],
            },
            CertificateConfig {
                cert: edge_rsa.0.clone(),
                key: edge_rsa.1.clone(),
                server_names: vec![RSA_NAME.to_owned()],
            },
        ];
        let pool = config
            .upstreams
            .get_mut("fleet")
            .ok_or_else(|| anyhow!("the fleet config has no pool `fleet`"))?;
        pool.endpoints = upstreams.iter().map(ToString::to_string).collect();
        pool.health = HealthConfig::default();
        // HAProxy and nginx log nothing per request here; neither does the gateway.
        config.log.access = LogOutput::Off;
        let gateway = fleet.start(&config);
        let gateway_pid = gateway.pid();
        peers::pin(gateway_pid, &options.server_cpus)?;

        let haproxy_addr = free_port();
        let haproxy_jwt_addr = free_port();
        let issuer = jwt::TokenIssuer::new()?;
        let jwt_key = dir.join("jwt-es256.pem");
        fs::write(&jwt_key, issuer.public_key_pem())?;
        let jwt_rules = peers::jwt_rules(&jwt_key, jwt::ISSUER, jwt::AUDIENCE, jwt::SCOPE);
        let pem = |pair: &(PathBuf, PathBuf), stem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{stem}.pem"));
            fs::write(
                &path,
                fs::read_to_string(&pair.0)? + &fs::read_to_string(&pair.1)?,
            )?;
            Ok(path)
        };
        let haproxy_conf = dir.join("haproxy.cfg");
        fs::write(
            &haproxy_conf,
            peers::haproxy_config(
                &peers::HaproxyFiles {
                    frontend: vec![pem(&edge, "edge")?, pem(&edge_rsa, "edge-rsa")?],
                    fleet_ca,
                    client: pem(&haproxy_client, "haproxy-client")?,
                },
                haproxy_addr,
                &upstreams,
                FLEET_NAME,
                options.threads,
                Some((haproxy_jwt_addr, &jwt_rules)),
            ),
        )?;
        let mut haproxy = Command::new("haproxy");
        haproxy.arg("-db").arg("-f").arg(&haproxy_conf);
        let haproxy = Process::start(
            "haproxy",
            haproxy,
            &dir.join("haproxy.log"),
            &options.server_cpus,
            &[haproxy_addr, haproxy_jwt_addr],
        )?;
        let token = issuer.token("bench-client")?;
        let forged = jwt::TokenIssuer::new()?.token("bench-client")?;
        check_jwt_frontend(&fleet, haproxy_jwt_addr, &token, &forged)?;
        Ok(Self {
            edge_ca_pem: fleet.edge_ca.cert_pem().to_owned(),
            _fleet: fleet,
            _gateway: gateway,
            gateway_pid,
            haproxy_pid: haproxy.pid(),
            _haproxy: haproxy,
            nginx,
            gateway_addr,
            haproxy_addr,
            haproxy_jwt_addr,
            bearer: format!("Authorization: Bearer {token}"),
            ceiling_addr,
            dir,
        })
    }

    /// One keep-alive run against `target`: what the load tool saw, the proxy's CPU
    /// ticks (none for the ceiling) and the fleet's.
    fn keep_alive(
        &self,
        target: Target,
        protocol: Protocol,
        connections: u32,
        options: &Options,
    ) -> anyhow::Result<(load::Throughput, Option<u64>, u64)> {
        let (addr, proxy) = match target {
            Target::Gateway => (self.gateway_addr, Some(self.gateway_pid)),
            Target::Haproxy => (self.haproxy_addr, Some(self.haproxy_pid)),
            Target::HaproxyJwt => (self.haproxy_jwt_addr, Some(self.haproxy_pid)),
            Target::Direct => (self.ceiling_addr, None),
        };
        let headers = match target {
            Target::HaproxyJwt => vec![self.bearer.clone()],
            _ => Vec::new(),
        };
        let url = format!("https://{addr}/");
        let proxy_before = proxy.map(cpu_ticks).transpose()?;
        let fleet_before = self.fleet_ticks()?;
        let result = match protocol {
            Protocol::Http1 => load::wrk(
                &url,
                connections,
                options.seconds,
                options.load_cpu,
                &headers,
            ),
            Protocol::Http2 => load::h2load(
                &url,
                connections,
                options.seconds,
                options.load_cpu,
                &headers,
                &self.dir.join("h2load.log"),
            ),
        }
        .with_context(|| format!("{} with {}", protocol.label(), target.label()))?;
        let proxy_ticks = match (proxy, proxy_before) {
            (Some(pid), Some(before)) => Some(cpu_ticks(pid)?.saturating_sub(before)),
            _ => None,
        };
        let fleet_ticks = self.fleet_ticks()?.saturating_sub(fleet_before);
        Ok((result, proxy_ticks, fleet_ticks))
    }

    /// CPU ticks of nginx's master and workers.
    fn fleet_ticks(&self) -> anyhow::Result<u64> {
        let master = self.nginx.pid();
        let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .context("reading nginx's worker pids")?;
        let mut total = cpu_ticks(master)?;
        for child in children.split_whitespace() {
            total += cpu_ticks(child.parse()?)?;
        }
        Ok(total)
    }
}

/// Makes sure HAProxy's JWT frontend really checks tokens before it is measured: 401
/// without a token and with one signed by another key, 200 with the bench's token.
fn check_jwt_frontend(
    fleet: &Fleet,
    addr: SocketAddr,
    token: &str,
    forged: &str,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = fleet.client(ClientProtocol::Http1);
    runtime.block_on(async {
        for (bearer, expected) in [(None, 401), (Some(forged), 401), (Some(token), 200)] {
            let mut request = http::Request::get("/");
            if let Some(bearer) = bearer {
                request = request.header("authorization", format!("Bearer {bearer}"));
            }
            let response = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.send(addr, request.body(Bytes::new())?),
            )
            .await
            .context("HAProxy's JWT frontend did not answer within 5 s")??;
            if response.status() != expected {
                bail!(
                    "HAProxy's JWT frontend answered {} where {expected} was due (token: {}); \
                     its config is wrong",
                    response.status(),
                    if bearer.is_some() { "given" } else { "none" }
                );
            }
        }
        Ok(())
    })
}

/// utime + stime of every thread of `pid`, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat: {stat}"))
}

/// Fields 14 and 15 of `stat`, counted after the parenthesised command name (which
/// may itself hold spaces).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks in microseconds.
fn ticks_us(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 * 1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// A fresh directory for the run's certificates, configs and logs (and nginx's temp
/// paths), removed when the run ends well and kept for a look when it fails.
fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = Path::new("/tmp").join(format!("gateway-bench-proxy-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
