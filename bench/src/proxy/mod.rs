//! The userspace plane: the gateway as a TLS-terminating reverse proxy in front of an
//! mTLS fleet, next to HAProxy doing the same work and to the fleet itself (the
//! ceiling), all on loopback.
//!
//! The load tool runs pinned to its own CPU; the proxies and the fleet share the
//! others. Every round measures every target once, so the ratios compare figures
//! taken minutes, not hours, apart on a machine whose load changes.

pub mod idle;
mod jwt;
pub mod load;
mod peers;
pub mod profile;
pub mod report;
pub mod verdicts;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use gateway::config::{AuthMode, CertificateConfig, HealthConfig, LogOutput, RouteAuth, WafMode};
use gateway_tests::{
    fleet::{EDGE_NAME, FLEET_NAME, Fleet, free_port, route},
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

/// The path prefix of the gateway's route that requires the bench's JWT; `/` stays
/// open. One listener and one process serve both, as one HAProxy serves both of its
/// frontends.
const JWT_PATH: &str = "/jwt/";

/// The path prefix of the gateway's route without auth and with the WAF off
/// (`[route.waf] mode = "off"`): next to `/` (the WAF on) it prices the WAF.
const NO_WAF_PATH: &str = "/nowaf/";

/// The issue's scenarios this suite cannot measure yet.
pub const NOT_MEASURED: [report::NotMeasured; 1] = [report::NotMeasured {
    scenario: "gateway with a fresh JWT per request over HTTP/2",
    reason: "h2load sends the same headers with every request (it has no per-request \
             scripting), so the fresh-token run is HTTP/1.1 only (wrk with a Lua script)",
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
    /// What to measure.
    pub scenarios: Vec<Scenario>,
    /// The open-loop request rate; none: `open_loop_share` of HAProxy-with-JWT's
    /// HTTP/1.1 rate at the first connection count.
    pub open_loop_rate: Option<f64>,
    pub open_loop_share: f64,
    /// Seconds per open-loop run.
    pub open_loop_seconds: u32,
    /// The oha binary.
    pub oha: PathBuf,
    /// Idle keep-alive connections for the memory run (0: no memory run).
    pub idle_connections: u32,
    /// The open-file limit the runner and its children have.
    pub open_file_limit: u64,
    /// Instead of the scenarios: the proxies under callgrind, their dumps here
    /// (the gateway's through `GATEWAY_BIN`, see [`profile::gateway_wrapper`]).
    pub callgrind: Option<PathBuf>,
    /// Requests per target and protocol under callgrind.
    pub callgrind_requests: u32,
}

/// The parts of the suite, selectable with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Keep-alive runs without auth: the gateway, the reference forwarder, HAProxy
    /// and the upstreams directly.
    NoAuth,
    /// Keep-alive runs of the gateway without auth on a route with the WAF off, next
    /// to the same gateway with it on (and the reference forwarder).
    Waf,
    /// Keep-alive runs with an ES256 JWT and a scope: the gateway with one token
    /// reused and with a fresh token per request, HAProxy.
    Jwt,
    /// New TLS connections per second, full and resumed.
    Handshakes,
    /// Open-loop runs at a fixed rate below saturation, for the tail latency.
    OpenLoop,
    /// Memory with idle keep-alive connections, the gateway's and HAProxy's.
    Idle,
}

/// Who answers the load tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gateway,
    /// The gateway's route without auth and with the WAF off.
    GatewayNoWaf,
    /// The gateway's route with a required ES256 JWT and a scope, one token on every
    /// request: after the first, each is a verified-token cache hit.
    GatewayJwt,
    /// The same route, a token no request has sent before on every request: each one a
    /// full signature and claims check. HTTP/1.1 only (see [`NOT_MEASURED`]).
    GatewayJwtFresh,
    /// The smallest hyper + tokio-rustls forwarder (`reference-proxy`): the floor of
    /// the gateway's stack.
    Reference,
    Haproxy,
    /// HAProxy with `jwt_verify` of an ES256 token, iss/aud/exp and the scope.
    HaproxyJwt,
    Direct,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Self::Gateway => "gateway, no auth",
            Self::GatewayNoWaf => "gateway, no auth, WAF off",
            Self::GatewayJwt => "gateway, ES256 JWT + scope, one token reused",
            Self::GatewayJwtFresh => "gateway, ES256 JWT + scope, fresh token per request",
            Self::Reference => "reference forwarder (hyper + tokio-rustls)",
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
    /// Requests per second relative to HAProxy-with-JWT's in the same round.
    VsHaproxyJwt,
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
    pub open_loop: Option<report::OpenLoop>,
    pub idle_memory: Vec<idle::IdleRow>,
    pub profile: Vec<profile::ProfileRow>,
}

/// Everything that runs during the suite; dropping it stops the processes.
struct Rig {
    _fleet: Fleet,
    _gateway: gateway_tests::gateway::Daemon,
    gateway_pid: u32,
    _haproxy: Process,
    haproxy_pid: u32,
    _reference: Process,
    reference_pid: u32,
    reference_addr: SocketAddr,
    nginx: Process,
    gateway_addr: SocketAddr,
    haproxy_addr: SocketAddr,
    haproxy_jwt_addr: SocketAddr,
    /// `Authorization: Bearer <token>`, one token for every request.
    bearer: String,
    /// Signs the fresh tokens, with the key both proxies trust.
    issuer: jwt::TokenIssuer,
    /// Fresh tokens signed so far: the next one's subject, so none repeats.
    fresh_tokens: u64,
    ceiling_addr: SocketAddr,
    edge_ca_pem: String,
    /// The same CA as a file, for oha.
    edge_ca: PathBuf,
    dir: PathBuf,
}

pub fn run(options: &Options, waiter: &mut IdleWaiter) -> anyhow::Result<Results> {
    let selected = |scenario| options.scenarios.contains(&scenario);
    // Before minutes of other runs, not after; a callgrind run has no open loop
    // (and `cargo xtask bench proxy` installs no oha for it).
    if selected(Scenario::OpenLoop) && options.callgrind.is_none() {
        load::oha_version(&options.oha)?;
    }
    let mut rig = Rig::start(options)?;
    if let Some(dir) = &options.callgrind {
        let profile = rig.profile(options, dir);
        let rig_dir = rig.dir.clone();
        drop(rig);
        let _ = fs::remove_dir_all(rig_dir);
        return Ok(Results {
            keep_alive: Vec::new(),
            handshakes: Vec::new(),
            open_loop: None,
            idle_memory: Vec::new(),
            profile: profile?,
        });
    }
    let keep_alive =
        if selected(Scenario::NoAuth) || selected(Scenario::Jwt) || selected(Scenario::Waf) {
            keep_alive(&mut rig, options, waiter)?
        } else {
            Vec::new()
        };
    let handshakes = if selected(Scenario::Handshakes) {
        handshakes(&rig, options, waiter)?
    } else {
        Vec::new()
    };
    let open_loop = if selected(Scenario::OpenLoop) {
        Some(open_loop(&rig, options, &keep_alive, waiter)?)
    } else {
        None
    };
    let idle_memory = if selected(Scenario::Idle) {
        rig.idle_memory(options, waiter)?
    } else {
        Vec::new()
    };
    let dir = rig.dir.clone();
    drop(rig);
    let _ = fs::remove_dir_all(dir);
    Ok(Results {
        keep_alive,
        handshakes,
        open_loop,
        idle_memory,
        profile: Vec::new(),
    })
}

/// The keep-alive targets of the selected scenarios, in the order each round runs
/// them: the fresh-token run follows the reused-token one, whose rate bounds how many
/// tokens the fresh run can use.
fn keep_alive_targets(options: &Options) -> Vec<Target> {
    let no_auth = options.scenarios.contains(&Scenario::NoAuth);
    let jwt = options.scenarios.contains(&Scenario::Jwt);
    let waf = options.scenarios.contains(&Scenario::Waf);
    [
        (Target::Gateway, no_auth || waf),
        (Target::GatewayNoWaf, waf),
        (Target::Reference, no_auth || waf),
        (Target::GatewayJwt, jwt),
        (Target::GatewayJwtFresh, jwt),
        (Target::Haproxy, no_auth),
        (Target::HaproxyJwt, jwt),
        (Target::Direct, no_auth),
    ]
    .into_iter()
    .filter_map(|(target, selected)| selected.then_some(target))
    .collect()
}

/// Closed-loop keep-alive rounds: every selected target once per protocol and
/// connection count, with the ratios to both HAProxy frontends taken within a round.
fn keep_alive(
    rig: &mut Rig,
    options: &Options,
    waiter: &mut IdleWaiter,
) -> anyhow::Result<Vec<KeepAliveRow>> {
    let mut samples: Samples<Key> = Samples::default();
    let protocols = [Protocol::Http1, Protocol::Http2];
    let targets = keep_alive_targets(options);
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
                let mut rates = Vec::new();
                for &target in &targets {
                    let key = |metric| Key {
                        target,
                        protocol,
                        connections,
                        metric,
                    };
                    let (result, proxy_ticks, fleet_ticks) = match target {
                        Target::GatewayJwtFresh if protocol == Protocol::Http2 => continue,
                        Target::GatewayJwtFresh => {
                            let reused = rates
                                .iter()
                                .find(|(target, _)| *target == Target::GatewayJwt)
                                .map_or(0.0, |(_, rate)| *rate);
                            rig.fresh_tokens_keep_alive(reused, connections, options)?
                        }
                        _ => rig.keep_alive(target, protocol, connections, options, None)?,
                    };
                    let requests = result.requests.max(1.0);
                    samples.push(key(Metric::RequestsPerS), result.requests_per_s);
                    samples.push(key(Metric::P50), result.p50_ms);
                    samples.push(key(Metric::P99), result.p99_ms);
                    if let Some(ticks) = proxy_ticks {
                        samples.push(key(Metric::ProxyCpuUs), ticks_us(ticks) / requests);
                    }
                    samples.push(key(Metric::FleetCpuUs), ticks_us(fleet_ticks) / requests);
                    rates.push((target, result.requests_per_s));
                }
                for (base_target, metric) in [
                    (Target::Haproxy, Metric::VsHaproxy),
                    (Target::HaproxyJwt, Metric::VsHaproxyJwt),
                ] {
                    let Some(base) = rates
                        .iter()
                        .find(|(target, rate)| *target == base_target && *rate > 0.0)
                        .map(|(_, rate)| *rate)
                    else {
                        continue;
                    };
                    for &(target, rate) in &rates {
                        samples.push(
                            Key {
                                target,
                                protocol,
                                connections,
                                metric,
                            },
                            rate / base,
                        );
                    }
                }
            }
        }
    }
    Ok(report::keep_alive_rows(
        samples,
        &targets,
        &protocols,
        &options.connections,
    ))
}

/// Open-loop rounds at one request rate every target sustains: the gateway and
/// HAProxy, each without auth and with the reused JWT, over HTTP/1.1 with oha.
fn open_loop(
    rig: &Rig,
    options: &Options,
    keep_alive: &[KeepAliveRow],
    waiter: &mut IdleWaiter,
) -> anyhow::Result<report::OpenLoop> {
    let tool = load::oha_version(&options.oha)?;
    let connections = options.connections.first().copied().unwrap_or(16);
    let rate = match options.open_loop_rate {
        Some(rate) => rate,
        None => {
            let saturation = keep_alive
                .iter()
                .find(|row| {
                    row.target == Target::HaproxyJwt.label()
                        && row.protocol == Protocol::Http1.label()
                        && row.connections == connections
                })
                .map(|row| row.requests_per_s.median)
                .ok_or_else(|| {
                    anyhow!(
                        "the open-loop rate is a share of HAProxy-with-JWT's HTTP/1.1 rate, \
                         which this run did not measure: select the `jwt` scenario too or \
                         give --open-loop-rate"
                    )
                })?;
            (saturation * options.open_loop_share).round()
        }
    };
    let targets = [
        Target::Gateway,
        Target::GatewayJwt,
        Target::Haproxy,
        Target::HaproxyJwt,
    ];
    let mut samples: Samples<(Target, report::OpenLoopFigure)> = Samples::default();
    for round in 1..=options.runs {
        let idle = waiter.wait()?;
        println!(
            "round {round}/{}: open loop at {rate} requests/s (CPU busy {:.0}% before)",
            options.runs, idle.busy_percent
        );
        for target in targets {
            let result = rig
                .open_loop(target, rate, connections, options)
                .with_context(|| format!("open loop with {}", target.label()))?;
            for (figure, value) in [
                (report::OpenLoopFigure::Achieved, result.achieved_per_s),
                (report::OpenLoopFigure::P50, result.p50_ms),
                (report::OpenLoopFigure::P99, result.p99_ms),
                (report::OpenLoopFigure::P999, result.p999_ms),
            ] {
                samples.push((target, figure), value);
            }
        }
    }
    Ok(report::OpenLoop {
        tool,
        rate_per_s: rate,
        connections,
        seconds: options.open_loop_seconds,
        rows: report::open_loop_rows(samples, &targets),
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
        let edge_ca = fleet.edge_ca.write(&dir, "edge-ca");

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

        let issuer = jwt::TokenIssuer::new()?;
        let jwks = dir.join("jwks.json");
        fs::write(&jwks, issuer.jwks()?)?;

        let gateway_addr = free_port();
        let mut config = fleet.config();
        let listener = &mut config.listeners[0];
        listener.address = gateway_addr;
        // The idle-connection run holds connections for longer than the default.
        listener.timeouts.idle = idle::IDLE_TIMEOUT;
        // Every load tool connects from 127.0.0.1, one client address: the idle run
        // holds more connections than its default cap (256), which HAProxy has not.
        listener.limits.max_connections_per_client = listener
            .limits
            .max_connections_per_client
            .max(u64::from(options.idle_connections) + 64);
        // Nor may the listener's own cap (half of what RLIMIT_NOFILE leaves) close
        // the oldest idle connections to make room, as it did at 9,872 of 10,000.
        listener.limits.max_connections = Some(u64::from(options.idle_connections) + 64);
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
        config.auth.issuers.insert(
            "bench".to_owned(),
            serde_json::from_value(serde_json::json!({
                "issuer": jwt::ISSUER,
                "audiences": [jwt::AUDIENCE],
                "jwks_file": jwks,
                "algorithms": ["ES256"],
            }))
            .context("the bench's [auth.issuers.bench]")?,
        );
        let mut jwt_route = route("jwt", JWT_PATH);
        jwt_route.auth = RouteAuth {
            mode: AuthMode::Required,
            issuers: vec!["bench".to_owned()],
            scopes_all: vec![jwt::SCOPE.to_owned()],
            ..RouteAuth::default()
        };
        config.routes.push(jwt_route);
        let mut no_waf_route = route("nowaf", NO_WAF_PATH);
        no_waf_route.waf.mode = WafMode::Off;
        config.routes.push(no_waf_route);
        // HAProxy and nginx log nothing per request here; neither does the gateway.
        config.log.access = LogOutput::Off;
        let gateway = fleet.start(&config);
        let gateway_pid = gateway.pid();
        peers::pin(gateway_pid, &options.server_cpus)?;

        let haproxy_addr = free_port();
        let haproxy_jwt_addr = free_port();
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
                idle::haproxy_maxconn(options.open_file_limit),
                Some((haproxy_jwt_addr, &jwt_rules)),
            ),
        )?;
        let mut haproxy = launcher(options, "haproxy", Path::new("haproxy"));
        haproxy.arg("-db").arg("-f").arg(&haproxy_conf);
        let haproxy = Process::start(
            "haproxy",
            haproxy,
            &dir.join("haproxy.log"),
            &options.server_cpus,
            &[haproxy_addr, haproxy_jwt_addr],
        )?;
        let reference_addr = free_port();
        let reference = reference(
            &ReferenceFiles {
                edge: &edge,
                fleet_ca: &fleet.fleet_ca.write(&dir, "reference-fleet-ca"),
                client: &write(&fleet.fleet_ca.issue_client("reference"), "reference"),
            },
            reference_addr,
            &upstreams,
            &dir,
            options,
        )?;
        let token = issuer.token("bench-client")?;
        let tokens = JwtChecks {
            token: &token,
            forged: &jwt::TokenIssuer::new()?.token("bench-client")?,
            unscoped: &issuer.token_with_scopes("bench-client", "profile orders:write")?,
        };
        tokens.check(&fleet, "HAProxy's JWT frontend", haproxy_jwt_addr, "/")?;
        tokens.check(&fleet, "the gateway's JWT route", gateway_addr, JWT_PATH)?;
        // The WAF rows differ in the WAF alone: it refuses an attack on `/` and lets
        // the same request through on the route without it.
        let attack = "?q=%3Cscript%3Ealert(1)%3C/script%3E";
        for (what, addr, path, expected) in [
            (
                "the reference forwarder",
                reference_addr,
                "/".to_owned(),
                200,
            ),
            (
                "the gateway's route without the WAF",
                gateway_addr,
                format!("{NO_WAF_PATH}{attack}"),
                200,
            ),
            (
                "the gateway's route with the WAF",
                gateway_addr,
                format!("/{attack}"),
                403,
            ),
        ] {
            expect_status(&fleet, what, addr, &path, expected)?;
        }
        Ok(Self {
            edge_ca_pem: fleet.edge_ca.cert_pem().to_owned(),
            _fleet: fleet,
            _gateway: gateway,
            gateway_pid,
            haproxy_pid: haproxy.pid(),
            _haproxy: haproxy,
            reference_pid: reference.pid(),
            _reference: reference,
            reference_addr,
            nginx,
            gateway_addr,
            haproxy_addr,
            haproxy_jwt_addr,
            bearer: format!("Authorization: Bearer {token}"),
            issuer,
            fresh_tokens: 0,
            ceiling_addr,
            edge_ca,
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
        script: Option<&load::WrkScript>,
    ) -> anyhow::Result<(load::Throughput, Option<u64>, u64)> {
        let (addr, path) = self.endpoint(target);
        let proxy = match target {
            Target::Gateway
            | Target::GatewayNoWaf
            | Target::GatewayJwt
            | Target::GatewayJwtFresh => Some(self.gateway_pid),
            Target::Reference => Some(self.reference_pid),
            Target::Haproxy | Target::HaproxyJwt => Some(self.haproxy_pid),
            Target::Direct => None,
        };
        let headers = self.headers(target);
        let url = format!("https://{addr}{path}");
        let proxy_before = proxy.map(cpu_ticks).transpose()?;
        let fleet_before = self.fleet_ticks()?;
        let result = match protocol {
            Protocol::Http1 => load::wrk(
                None,
                &url,
                connections,
                options.seconds,
                options.load_cpu,
                &headers,
                script,
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

    /// One open-loop run of oha against `target` (a proxy, with the reused token for
    /// the JWT targets).
    fn open_loop(
        &self,
        target: Target,
        rate: f64,
        connections: u32,
        options: &Options,
    ) -> anyhow::Result<load::OpenLoop> {
        let (addr, path) = self.endpoint(target);
        load::oha(&load::OhaRun {
            oha: &options.oha,
            url: &format!("https://{EDGE_NAME}:{}{path}", addr.port()),
            connect_to: format!(
                "{EDGE_NAME}:{port}:{}:{port}",
                addr.ip(),
                port = addr.port()
            ),
            ca: &self.edge_ca,
            rate,
            connections,
            seconds: options.open_loop_seconds,
            cpu: options.load_cpu,
            headers: &self.headers(target),
        })
    }

    /// Where `target` listens and the path its route has.
    fn endpoint(&self, target: Target) -> (SocketAddr, &'static str) {
        match target {
            Target::Gateway => (self.gateway_addr, "/"),
            Target::GatewayNoWaf => (self.gateway_addr, NO_WAF_PATH),
            Target::Reference => (self.reference_addr, "/"),
            Target::GatewayJwt | Target::GatewayJwtFresh => (self.gateway_addr, JWT_PATH),
            Target::Haproxy => (self.haproxy_addr, "/"),
            Target::HaproxyJwt => (self.haproxy_jwt_addr, "/"),
            Target::Direct => (self.ceiling_addr, "/"),
        }
    }

    /// The headers every request to `target` carries: the reused token for the JWT
    /// targets (the fresh-token run sets its own per request).
    fn headers(&self, target: Target) -> Vec<String> {
        match target {
            Target::GatewayJwt | Target::HaproxyJwt => vec![self.bearer.clone()],
            _ => Vec::new(),
        }
    }

    /// A keep-alive HTTP/1.1 run against the gateway's JWT route with a token no
    /// request has sent before on every request. The tokens are signed before the run:
    /// twice what the reused-token run of the same round (`reused_per_s`) would need,
    /// at least 10,000. If wrk still sent more requests than that (its script then
    /// starts over, and a repeated token may hit the cache), the run is repeated once
    /// with twice as many.
    fn fresh_tokens_keep_alive(
        &mut self,
        reused_per_s: f64,
        connections: u32,
        options: &Options,
    ) -> anyhow::Result<(load::Throughput, Option<u64>, u64)> {
        let script = self.dir.join("fresh-tokens.lua");
        fs::write(&script, load::FRESH_TOKENS_LUA)?;
        let file = self.dir.join("fresh-tokens.txt");
        let needed = 2.0 * reused_per_s * f64::from(options.seconds);
        let mut count = (needed as u64).max(10_000) + u64::from(connections);
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let mut tokens = String::new();
            for _ in 0..count {
                let subject = format!("fresh-{}", self.fresh_tokens);
                self.fresh_tokens += 1;
                tokens.push_str(&self.issuer.token(&subject)?);
                tokens.push('\n');
            }
            fs::write(&file, tokens)?;
            println!(
                "  signed {count} fresh tokens in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let run = self.keep_alive(
                Target::GatewayJwtFresh,
                Protocol::Http1,
                connections,
                options,
                Some(&load::WrkScript {
                    path: &script,
                    args: vec![file.display().to_string()],
                }),
            )?;
            // At most one request per connection is in flight when wrk stops.
            if run.0.requests + f64::from(connections) <= count as f64 {
                return Ok(run);
            }
            count *= 2;
        }
        bail!(
            "wrk sent more requests than the {} fresh tokens signed for the run; the \
             fresh-token figure would include reused tokens",
            count / 2
        )
    }

    /// Instructions per request of every proxy under callgrind, each target without
    /// auth, the gateway's also with the WAF off, the gateway and HAProxy also with
    /// the reused JWT, over
    /// HTTP/1.1 and HTTP/2 at the first connection count.
    fn profile(&self, options: &Options, dir: &Path) -> anyhow::Result<Vec<profile::ProfileRow>> {
        let connections = options.connections.first().copied().unwrap_or(16);
        let mut rows = Vec::new();
        for protocol in [Protocol::Http1, Protocol::Http2] {
            for target in [
                Target::Reference,
                Target::Gateway,
                Target::GatewayNoWaf,
                Target::GatewayJwt,
                Target::Haproxy,
                Target::HaproxyJwt,
            ] {
                let (addr, path) = self.endpoint(target);
                let pid = match target {
                    Target::Reference => self.reference_pid,
                    Target::Haproxy | Target::HaproxyJwt => self.haproxy_pid,
                    _ => self.gateway_pid,
                };
                let row = profile::measure(&profile::Run {
                    target,
                    protocol,
                    pid,
                    url: &format!("https://{addr}{path}"),
                    headers: &self.headers(target),
                    connections,
                    requests: options.callgrind_requests,
                    cpu: options.load_cpu,
                    dir,
                })
                .with_context(|| format!("{} under callgrind", target.label()))?;
                println!(
                    "{} × {connections}, {}: {:.0} instructions per request",
                    row.protocol, row.target, row.instructions_per_request
                );
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Memory with idle keep-alive connections, the gateway's and HAProxy's, once each.
    fn idle_memory(
        &self,
        options: &Options,
        waiter: &mut IdleWaiter,
    ) -> anyhow::Result<Vec<idle::IdleRow>> {
        if options.idle_connections == 0 {
            return Ok(Vec::new());
        }
        let haproxy = idle::haproxy_idle_connections(
            options.idle_connections,
            idle::haproxy_maxconn(options.open_file_limit),
        );
        let mut rows = Vec::new();
        for (target, addr, pid, connections) in [
            (
                Target::Gateway,
                self.gateway_addr,
                self.gateway_pid,
                options.idle_connections,
            ),
            (
                Target::Haproxy,
                self.haproxy_addr,
                self.haproxy_pid,
                haproxy,
            ),
        ] {
            let busy = waiter.wait()?.busy_percent;
            println!(
                "idle connections: {connections} to {} (CPU busy {busy:.0}% before)",
                target.label()
            );
            rows.push(idle::measure(
                &idle::Target {
                    label: target.label(),
                    addr,
                    pid,
                    connections,
                    server_name: EDGE_NAME,
                    ca_pem: &self.edge_ca_pem,
                },
                options.load_cpu,
            )?);
        }
        Ok(rows)
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

/// `program`, under callgrind when the run profiles (`name` names its dumps).
fn launcher(options: &Options, name: &str, program: &Path) -> Command {
    match &options.callgrind {
        Some(dir) => {
            let mut command = profile::valgrind(dir, name);
            command.arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The certificate and key pairs the reference forwarder presents.
struct ReferenceFiles<'a> {
    edge: &'a (PathBuf, PathBuf),
    fleet_ca: &'a Path,
    client: &'a (PathBuf, PathBuf),
}

/// Starts `reference-proxy` (built next to this runner) on `addr` in front of
/// `upstreams`, pinned to `cpus`.
fn reference(
    files: &ReferenceFiles<'_>,
    addr: SocketAddr,
    upstreams: &[SocketAddr],
    dir: &Path,
    options: &Options,
) -> anyhow::Result<Process> {
    let binary = std::env::current_exe()?.with_file_name("reference-proxy");
    let mut command = launcher(options, "reference", &binary);
    command
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--cert")
        .arg(&files.edge.0)
        .arg("--key")
        .arg(&files.edge.1)
        .arg("--upstream-ca")
        .arg(files.fleet_ca)
        .arg("--client-cert")
        .arg(&files.client.0)
        .arg("--client-key")
        .arg(&files.client.1)
        .arg("--server-name")
        .arg(FLEET_NAME);
    for upstream in upstreams {
        command.arg("--upstream").arg(upstream.to_string());
    }
    Process::start(
        "reference-proxy",
        command,
        &dir.join("reference.log"),
        &options.server_cpus,
        &[addr],
    )
    .with_context(|| format!("{} (built with gateway-bench)", binary.display()))
}

/// The tokens that show a JWT check really checks before it is measured.
struct JwtChecks<'a> {
    /// The bench's token: 200.
    token: &'a str,
    /// Signed by another key: 401.
    forged: &'a str,
    /// The bench's key, without the route's scope: 403.
    unscoped: &'a str,
}

impl JwtChecks<'_> {
    /// Sends each token (and none: 401) to `path` at `addr`, which `what` serves.
    fn check(&self, fleet: &Fleet, what: &str, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = fleet.client(ClientProtocol::Http1);
        let cases = [
            ("no token", None, 401),
            ("a token signed by another key", Some(self.forged), 401),
            ("a token without the scope", Some(self.unscoped), 403),
            ("the bench's token", Some(self.token), 200),
        ];
        runtime.block_on(async {
            for (case, bearer, expected) in cases {
                let mut request = http::Request::get(path);
                if let Some(bearer) = bearer {
                    request = request.header("authorization", format!("Bearer {bearer}"));
                }
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    client.send(addr, request.body(Bytes::new())?),
                )
                .await
                .with_context(|| format!("{what} did not answer within 5 s"))??;
                if response.status() != expected {
                    bail!(
                        "{what} answered {} to {case} where {expected} was due; its config is \
                         wrong",
                        response.status(),
                    );
                }
            }
            Ok(())
        })
    }
}

/// Sends `GET path` to `addr` (which `what` serves) and fails unless it answers
/// `expected`.
fn expect_status(
    fleet: &Fleet,
    what: &str,
    addr: SocketAddr,
    path: &str,
    expected: u16,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = fleet.client(ClientProtocol::Http1);
    let request = http::Request::get(path).body(Bytes::new())?;
    let response = runtime
        .block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.send(addr, request),
            )
            .await
        })
        .with_context(|| format!("{what} did not answer within 5 s"))?
        .with_context(|| format!("GET {path} from {what}"))?;
    if response.status() != expected {
        bail!(
            "{what} answered {} to GET {path} where {expected} was due",
            response.status()
        );
    }
    Ok(())
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
